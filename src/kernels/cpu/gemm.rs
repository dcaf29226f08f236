//! Packed, register-blocked SIMD GEMM (f32, row-major), in the style of `matrixmultiply`:
//! panels of A (MR rows) and B (NR columns) are packed into contiguous buffers per KC-deep
//! block, and a 6 x 16 micro-kernel accumulates in registers. Two micro-kernels: AVX2+FMA
//! (chosen at run time with `is_x86_feature_detected!`) and a portable one on `wide::f32x8`.
//!
//! `C = alpha * op(A) * op(B) + beta * C`, then an optional fused epilogue
//! (`+ bias` per column, then an activation) applied while the block of C is in cache.
//! Each element of C is computed by exactly one task in a fixed order of K blocks, so results
//! are bit-identical whatever the thread count.

use super::isa::Isa;
use rayon::prelude::*;

/// Rows of the micro-kernel tile.
pub const MR: usize = 6;
/// Columns of the micro-kernel tile.
pub const NR: usize = 16;
pub(super) const KC: usize = 256;
const MC: usize = 72;
const NC: usize = 2048;
/// How many K steps ahead the first pass over an Aᵀ panel read in place prefetches it (see
/// [`deep_k`]).
#[cfg(target_arch = "x86_64")]
const PF_AHEAD: usize = 16;
/// Largest B (floats, packed to full depth) for the deep-K order: 1 MiB.
#[cfg(target_arch = "x86_64")]
const DEEP_K_MAX_B: usize = 1 << 18;
/// Most rows for the task-local-B order ([`local_b`]): every task runs all of them against
/// its B panels, so A's K block (rows x KC, 288 KiB here) should stay in L2.
#[cfg(target_arch = "x86_64")]
const LOCAL_B_MAX_M: usize = 4 * MC;

/// Element-wise activation applied in a GEMM epilogue or by the nn blocks.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Act {
    /// Identity.
    #[default]
    None,
    /// max(x, 0).
    Relu,
    /// tanh(x).
    Tanh,
    /// 1 / (1 + e^-x).
    Sigmoid,
}

/// Operations fused after the product, in this order: add `bias[j]` to column j, apply
/// `act`, then multiply element (i, j) by the derivative of an activation given its output
/// ([`Self::grad_of`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct Epilogue<'a> {
    /// Per-column bias (length n), or none; with [`Self::bias_rows`], a table of bias rows.
    pub bias: Option<&'a [f32]>,
    /// Row i of C adds row `bias_rows[i]` of the table `bias` (rows of n values) instead of
    /// one bias for every row (length m; each entry below the table's row count).
    pub bias_rows: Option<&'a [u32]>,
    /// Activation.
    pub act: Act,
    /// `(y, a)`: multiply C by `a'` expressed through the activation's output `y` (an
    /// m x n row-major matrix), exactly as [`super::elementwise::activation_backward`] does.
    /// This fuses the backward of the layer below into the product `dy · Wᵀ` that feeds it.
    pub grad_of: Option<(&'a [f32], Act)>,
}

impl Epilogue<'_> {
    /// No bias, no activation.
    pub const NONE: Epilogue<'static> = Epilogue {
        bias: None,
        bias_rows: None,
        act: Act::None,
        grad_of: None,
    };
    fn is_none(&self) -> bool {
        self.bias.is_none()
            && self.act == Act::None
            && self.grad_of.is_none_or(|(_, a)| a == Act::None)
    }
}

#[derive(Clone, Copy)]
pub(super) struct SendPtr(pub(super) *mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    #[inline]
    pub(super) fn get(&self) -> *mut f32 {
        self.0
    }
}

/// Why operands of these lengths cannot hold a GEMM of shape `(m, n, k)`, if they cannot:
/// A needs m·k values, B k·n, C m·n, a bias n and an epilogue's activation output m·n.
/// Shared by the CPU kernel (which panics with it) and the CUDA one (which returns it).
pub fn shape_error(
    (m, n, k): (usize, usize, usize),
    (a, b, c): (usize, usize, usize),
    bias: Option<usize>,
    act_output: Option<usize>,
) -> Option<String> {
    let need = [
        ("A", Some(a), m * k),
        ("B", Some(b), k * n),
        ("C", Some(c), m * n),
        ("bias", bias, n),
        ("the activation output of the epilogue", act_output, m * n),
    ];
    need.iter().find_map(|&(what, have, want)| match have {
        Some(h) if h < want => Some(format!("gemm: {what} has {h} elements, needs {want}")),
        _ => None,
    })
}

/// `C (m x n) = alpha * op(A) * op(B) + beta * C` with `op(A)` m x k and `op(B)` k x n.
/// `ta`: A is stored k x m (use its transpose); `tb`: B is stored n x k. All contiguous
/// row-major. When `beta == 0`, C is not read (it may hold NaN).
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    ta: bool,
    tb: bool,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    b: &[f32],
    beta: f32,
    c: &mut [f32],
) {
    gemm_ex(
        Isa::detect(),
        ta,
        tb,
        m,
        n,
        k,
        alpha,
        a,
        b,
        beta,
        c,
        Epilogue::NONE,
    )
}

/// [`gemm`] with an explicit instruction set and a fused epilogue.
#[allow(clippy::too_many_arguments)]
pub fn gemm_ex(
    isa: Isa,
    ta: bool,
    tb: bool,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    b: &[f32],
    beta: f32,
    c: &mut [f32],
    epi: Epilogue,
) {
    gemm_core(isa, ta, tb, m, n, k, alpha, a, b, beta, c, epi, None, false)
}

/// [`gemm_ex`] always in the K-block-outer order (never the deep-K one), for the property
/// test that both orders give the same bits.
#[doc(hidden)]
#[allow(clippy::too_many_arguments)]
pub fn gemm_ex_block_outer(
    isa: Isa,
    ta: bool,
    tb: bool,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    b: &[f32],
    beta: f32,
    c: &mut [f32],
    epi: Epilogue,
) {
    gemm_core(isa, ta, tb, m, n, k, alpha, a, b, beta, c, epi, None, true)
}

/// [`gemm_ex`] that also writes the column sums of `op(B)` (k x n) into `b_col_sums` (length
/// n), summed while B is packed: each column in row order from 0, the same additions as
/// [`super::elementwise::col_sums`], so the same bits. In a layer's backward
/// `dW = xᵀ · dy` this gives the bias gradient (the column sums of dy) without another pass.
#[allow(clippy::too_many_arguments)]
pub fn gemm_ex_col_sums(
    isa: Isa,
    ta: bool,
    tb: bool,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    b: &[f32],
    beta: f32,
    c: &mut [f32],
    epi: Epilogue,
    b_col_sums: &mut [f32],
) {
    assert_eq!(
        b_col_sums.len(),
        n,
        "gemm: the column sums of B need n = {n} entries"
    );
    b_col_sums.fill(0.0);
    if m == 0 {
        // no product to compute, the sums are still asked for
        for p in 0..k {
            for (j, s) in b_col_sums.iter_mut().enumerate() {
                *s += if tb { b[j * k + p] } else { b[p * n + j] };
            }
        }
        return;
    }
    gemm_core(
        isa,
        ta,
        tb,
        m,
        n,
        k,
        alpha,
        a,
        b,
        beta,
        c,
        epi,
        Some(b_col_sums),
        false,
    )
}

#[allow(clippy::too_many_arguments)]
fn gemm_core(
    isa: Isa,
    ta: bool,
    tb: bool,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    b: &[f32],
    beta: f32,
    c: &mut [f32],
    epi: Epilogue,
    mut b_col_sums: Option<&mut [f32]>,
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))] block_outer: bool,
) {
    if let Some(why) = shape_error(
        (m, n, k),
        (a.len(), b.len(), c.len()),
        epi.bias.map(<[f32]>::len),
        epi.grad_of.map(|(y, _)| y.len()),
    ) {
        panic!("{why}");
    }
    if let Some(rows) = epi.bias_rows {
        let table = epi.bias.map_or(0, <[f32]>::len) / n.max(1);
        assert!(
            rows.len() >= m && rows[..m].iter().all(|&r| (r as usize) < table),
            "gemm: bias_rows needs m = {m} entries, each below the bias table's {table} rows"
        );
    }
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c[..m * n]
            .par_chunks_mut(n)
            .enumerate()
            .for_each(|(i, row)| {
                for v in row.iter_mut() {
                    *v = if beta == 0.0 { 0.0 } else { *v * beta };
                }
                apply_epilogue(row, epi_cols(epi, i, n, 0, n), i * n);
            });
        return;
    }
    let threads = rayon::current_num_threads().max(1);
    let m_panels = m.div_ceil(MR);
    let direct_a = cfg!(target_arch = "x86_64") && isa.has_avx2();
    // K spans several blocks and B, packed to its full depth, fits in 1 MiB: the deep-K
    // order keeps each task's tile of C in cache across the blocks (4-8% faster at the
    // denoiser's K = 1000 and K = 2048 shapes; with a larger B, e.g. dW of 138 x 1000 over
    // K = 2048 (8 MB), the block-outer order below is faster)
    // AVX-512, Aᵀ·B over several K blocks (dW = Xᵀ·dY) with rows that fill 32-row strips:
    // both operands read in place, no B packed (dW 1000x100 over K = 2048: 260-300 against
    // 225-250 GFLOP/s, 1000x64 +6-20%, 128x1000 +3%, 2 threads). Its tiles differ from the
    // 6 x 16 ones, whose partial tiles combine blocks as `alpha * acc + C` unfused: with
    // alpha = 1 that is the fused `acc + C` of the full tiles, so only then the same bits.
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512
        && ta
        && !tb
        && k > KC
        && !block_outer
        && alpha == 1.0
        && super::gemm_atb::suits(m)
    {
        super::gemm_atb::atb(m, n, k, alpha, a, b, beta, c, epi, b_col_sums);
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if direct_a && k > KC && n <= NC && n.div_ceil(NR) * NR * k <= DEEP_K_MAX_B && !block_outer {
        deep_k(isa, ta, tb, m, n, k, alpha, a, b, beta, c, epi, b_col_sums);
        return;
    }
    // Aᵀ read in place over several K blocks with a B too large for deep-K and few rows (dW =
    // Xᵀ·dY of a first layer, 138 x 1000): one parallel region over column chunks, each task
    // packing its own B (4-13% faster than the block-outer order at dW 138x1000 over K =
    // 2048, in 14 of 16 quantiles of an interleaved A/B)
    #[cfg(target_arch = "x86_64")]
    if direct_a && ta && k > KC && m <= LOCAL_B_MAX_M && !block_outer {
        local_b(isa, tb, m, n, k, alpha, a, b, beta, c, epi, b_col_sums);
        return;
    }
    // packing buffers reused across calls (taken out of the thread-local, so a nested call
    // on this thread simply allocates its own); fresh buffers cost page faults every call
    let a_len = m_panels * MR * KC.min(k);
    let b_len = NC.min(n).div_ceil(NR) * NR * KC.min(k);
    let (mut ap, mut bp) = PACK.with(|p| std::mem::take(&mut *p.borrow_mut()));
    ap.resize(ap.len().max(a_len), 0.0);
    bp.resize(bp.len().max(b_len), 0.0);
    let cptr = SendPtr(c.as_mut_ptr());
    for jc in (0..n).step_by(NC) {
        let nc = NC.min(n - jc);
        let n_panels = nc.div_ceil(NR);
        for pc in (0..k).step_by(KC) {
            let kc = KC.min(k - pc);
            // pack A (all rows, this K block; on AVX2 only the partial tail panel, full
            // panels are read in place) and B (this N block, this K block)
            if direct_a {
                if !m.is_multiple_of(MR) {
                    let ip = m_panels - 1;
                    pack_a(
                        a,
                        ta,
                        m,
                        k,
                        ip * MR,
                        pc,
                        kc,
                        &mut ap[ip * MR * kc..(ip + 1) * MR * kc],
                    );
                }
            } else {
                ap[..m_panels * MR * kc]
                    .par_chunks_mut(MR * kc)
                    .enumerate()
                    .for_each(|(ip, dst)| pack_a(a, ta, m, k, ip * MR, pc, kc, dst));
            }
            // blocks of K in order, rows in order within a block: column sums in row order
            let sums = b_col_sums.as_deref_mut().map(|s| &mut s[jc..jc + nc]);
            pack_b_panels(b, tb, n, k, jc, nc, pc, kc, &mut bp, sums);
            let beta_eff = if pc == 0 { beta } else { 1.0 };
            let last = pc + kc == k;
            let grid = TaskGrid::new(m, n_panels, threads, isa);
            let (ap, bp) = (&ap, &bp);
            (0..grid.tasks()).into_par_iter().for_each(|task| {
                let (i0, i1, jp0, jp1) = grid.task(task);
                // B micro-panel outer (stays in L1), A micro-panels of the MC block inner
                // (the block stays in L2)
                for (jp, np) in panel_steps(isa, jp0, jp1, nc) {
                    let col = jc + jp * NR;
                    let cols = (np * NR).min(jc + nc - col);
                    let b_panels = &bp[jp * NR * kc..(jp + np) * NR * kc];
                    let pair_rows = direct_a && pair_rows_for(isa, np, cols);
                    for (ip, mp) in row_steps(pair_rows, i0 / MR, i1.div_ceil(MR), m) {
                        let rows = MR.min(m - ip * MR);
                        let a_panel = &ap[ip * MR * kc..(ip + 1) * MR * kc];
                        // SAFETY: each task owns a disjoint (rows, cols) region of C; a
                        // full panel read in place lies inside A (checked on entry).
                        unsafe {
                            let cp = cptr.get().add(ip * MR * n + col);
                            #[cfg(target_arch = "x86_64")]
                            if mp == 2 {
                                let (off, rs, cs) = if ta {
                                    (pc * m + ip * MR, 1, m)
                                } else {
                                    (ip * MR * k + pc, k, 1)
                                };
                                let a0 = a.as_ptr().add(off);
                                tile12(
                                    isa,
                                    np,
                                    cols,
                                    kc,
                                    a0,
                                    a0.add(MR * rs),
                                    rs,
                                    cs,
                                    b_panels.as_ptr(),
                                    NR * kc,
                                    cp,
                                    n,
                                    alpha,
                                    beta_eff,
                                );
                                continue;
                            }
                            #[cfg(target_arch = "x86_64")]
                            if direct_a && rows == MR {
                                let (off, rs, cs) = if ta {
                                    (pc * m + ip * MR, 1, m)
                                } else {
                                    (ip * MR * k + pc, k, 1)
                                };
                                tile_np(
                                    isa,
                                    np,
                                    kc,
                                    a.as_ptr().add(off),
                                    rs,
                                    cs,
                                    b_panels.as_ptr(),
                                    NR * kc,
                                    cp,
                                    n,
                                    rows,
                                    cols,
                                    alpha,
                                    beta_eff,
                                    0,
                                    std::ptr::null_mut(),
                                );
                                continue;
                            }
                            for q in 0..np {
                                micro_kernel(
                                    isa,
                                    kc,
                                    a_panel,
                                    &b_panels[q * NR * kc..],
                                    cp.add(q * NR),
                                    n,
                                    rows,
                                    NR.min(cols - q * NR),
                                    alpha,
                                    beta_eff,
                                );
                            }
                        }
                    }
                }
                if last {
                    let cols = jc + jp0 * NR..(jc + jp1 * NR).min(jc + nc);
                    // SAFETY: same disjoint region as above.
                    unsafe { epilogue_region(cptr.get(), n, i0..i1, cols, epi) };
                }
            });
        }
    }
    PACK.with(|p| *p.borrow_mut() = (ap, bp));
}

/// The product when K spans several KC blocks (AVX2, A read in place, one N block): B is
/// packed once to its full depth (each NR-column panel contiguous over all of K), and every
/// task runs through the K blocks itself, so its tile of C stays in cache from the first block
/// to the last instead of being written back and re-read once per block. The blocks are
/// summed in the same order as by the block-outer loop, so the bits are the same.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
fn deep_k(
    isa: Isa,
    ta: bool,
    tb: bool,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    b: &[f32],
    beta: f32,
    c: &mut [f32],
    epi: Epilogue,
    b_col_sums: Option<&mut [f32]>,
) {
    let threads = rayon::current_num_threads().max(1);
    let n_panels = n.div_ceil(NR);
    let (mut ap, mut bp) = PACK.with(|p| std::mem::take(&mut *p.borrow_mut()));
    // the partial last panel of A (m not a multiple of MR), packed to its full depth
    pack_a_tail(a, ta, m, k, &mut ap);
    bp.resize(bp.len().max(n_panels * NR * k), 0.0);
    // B panels to full depth; the column sums in row order, panel by panel
    pack_b_panels(b, tb, n, k, 0, n, 0, k, &mut bp, b_col_sums);
    let cptr = SendPtr(c.as_mut_ptr());
    let grid = TaskGrid::new(m, n_panels, threads, isa);
    let (apv, bpv) = (ap, bp);
    let (ap, bp) = (&apv, &bpv);
    (0..grid.tasks()).into_par_iter().for_each(|task| {
        let (i0, i1, jp0, jp1) = grid.task(task);
        // two slots (a pair of A panels on AVX-512), each written (packed copy) and read
        // through these pointers only
        let mut apk = [0f32; 2 * MR * KC];
        let apk = apk.as_mut_ptr();
        for pc in (0..k).step_by(KC) {
            let kc = KC.min(k - pc);
            let beta_eff = if pc == 0 { beta } else { 1.0 };
            // Aᵀ read in place (dW = Xᵀ·dY) takes a cache line per element row of its panel:
            // keep one A panel in L1 across the task's few B panels (deep-K has at most 8 at
            // K = 2048) rather than streaming the strided A panels past one B panel (15-30%
            // faster at the denoiser's dW 1000x100 and 1000x64 in an interleaved A/B)
            let a_outer = ta;
            let steps = panel_steps(isa, jp0, jp1, n);
            let n_steps = steps.clone().count();
            // Aᵀ: the first B step's pass also packs the A panel it reads into `apk`, and the
            // task's other B steps read that contiguous copy (4% faster at dW 1000x100 and
            // 1000x64; the same values in the same order, so the same bits)
            let copy_a = a_outer && n_steps > 1 && NR.min(n - jp0 * NR) == NR;
            // one A panel against one step of B panels (`first`: the task's first step)
            let run = |ip: usize,
                       jp: usize,
                       np: usize,
                       first: bool,
                       packed_ok: &mut bool,
                       slot: *mut f32| {
                let col = jp * NR;
                let cols = (np * NR).min(n - col);
                let rows = MR.min(m - ip * MR);
                // SAFETY: each task owns a disjoint (rows, cols) region of C; a full panel
                // read in place lies inside A (checked on entry), the tail panel is packed;
                // the step's panels lie inside the packed B.
                unsafe {
                    let cp = cptr.get().add(ip * MR * n + col);
                    let (mut ptr, mut rs, mut cs) = a_panel(a, ap, ta, m, k, ip, pc);
                    let full = rows == MR;
                    if *packed_ok {
                        (ptr, rs, cs) = (slot as *const f32, 1, MR);
                    }
                    // the first B step's pass is the first touch of the panel's rows of Aᵀ
                    // (a cache line per K step, a stride the hardware prefetcher misses):
                    // prefetch them PF_AHEAD steps ahead there, and only there (5-6% faster
                    // at dW 1000x100 and 1000x64; same bits)
                    let pf = if a_outer && first { PF_AHEAD * cs } else { 0 };
                    let want_copy = copy_a && full && first && rs == 1 && cs != MR;
                    let dst = if want_copy {
                        slot
                    } else {
                        std::ptr::null_mut()
                    };
                    let b_panels = bp.as_ptr().add(jp * NR * k + pc * NR);
                    tile_np(
                        isa,
                        np,
                        kc,
                        ptr,
                        rs,
                        cs,
                        b_panels,
                        NR * k,
                        cp,
                        n,
                        rows,
                        cols,
                        alpha,
                        beta_eff,
                        pf,
                        dst,
                    );
                    *packed_ok |= want_copy;
                }
            };
            if a_outer {
                // on AVX-512, pairs of full A panels: each packed by its own pass over the
                // first B step, then both read together (12 x 32 tiles) by the later pairs
                // of B panels
                let pair_rows = isa.has_avx2();
                for (ip, mp) in row_steps(pair_rows, i0 / MR, i1.div_ceil(MR), m) {
                    let mut ok = [false; 2];
                    for (s, (jp, np)) in steps.clone().enumerate() {
                        let cols = (np * NR).min(n - jp * NR);
                        if mp == 2 && pair_rows_for(isa, np, cols) && ok == [true, true] {
                            // SAFETY: both slots hold their panel's packed K block (`ok`);
                            // C and B as in `run`.
                            unsafe {
                                tile12(
                                    isa,
                                    np,
                                    cols,
                                    kc,
                                    apk,
                                    apk.add(MR * KC),
                                    1,
                                    MR,
                                    bp.as_ptr().add(jp * NR * k + pc * NR),
                                    NR * k,
                                    cptr.get().add(ip * MR * n + jp * NR),
                                    n,
                                    alpha,
                                    beta_eff,
                                );
                            }
                            continue;
                        }
                        for (q, ok) in ok.iter_mut().enumerate().take(mp) {
                            // SAFETY: slot q lies inside `apk`.
                            let slot = unsafe { apk.add(q * MR * KC) };
                            run(ip + q, jp, np, s == 0, ok, slot);
                        }
                    }
                }
            } else {
                for (s, (jp, np)) in steps.enumerate() {
                    let cols = (np * NR).min(n - jp * NR);
                    let pair_rows = pair_rows_for(isa, np, cols);
                    for (ip, mp) in row_steps(pair_rows, i0 / MR, i1.div_ceil(MR), m) {
                        if mp == 2 {
                            // SAFETY: as in `run`; both A panels are full, read in place.
                            unsafe {
                                let (a0, rs, cs) = a_panel(a, ap, ta, m, k, ip, pc);
                                let (a1, _, _) = a_panel(a, ap, ta, m, k, ip + 1, pc);
                                tile12(
                                    isa,
                                    np,
                                    cols,
                                    kc,
                                    a0,
                                    a1,
                                    rs,
                                    cs,
                                    bp.as_ptr().add(jp * NR * k + pc * NR),
                                    NR * k,
                                    cptr.get().add(ip * MR * n + jp * NR),
                                    n,
                                    alpha,
                                    beta_eff,
                                );
                            }
                        } else {
                            run(ip, jp, np, s == 0, &mut false, apk);
                        }
                    }
                }
            }
        }
        // SAFETY: same disjoint region as above.
        unsafe { epilogue_region(cptr.get(), n, i0..i1, jp0 * NR..(jp1 * NR).min(n), epi) };
    });
    PACK.with(|p| *p.borrow_mut() = (apv, bpv));
}

thread_local! {
    static TASK_B: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    static TASK_A: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The product for Aᵀ read in place (A stored k x m, m ≤ [`LOCAL_B_MAX_M`]) over several K
/// blocks when B is too large for [`deep_k`]: one parallel region over chunks of B's column
/// panels, no barrier per K block. Each task packs its own panels block by block (each of
/// B's elements is packed once), runs them against every A panel (B panel outer, in L1; A's
/// K block in L2; an A-panel-outer order was slower here), and keeps its columns of C in
/// cache across the blocks. Same sums in the same order as the block-outer loop, so the
/// same bits, column sums of op(B) included.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
fn local_b(
    isa: Isa,
    tb: bool,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    b: &[f32],
    beta: f32,
    c: &mut [f32],
    epi: Epilogue,
    b_col_sums: Option<&mut [f32]>,
) {
    let threads = rayon::current_num_threads().max(1);
    let m_panels = m.div_ceil(MR);
    let n_panels = n.div_ceil(NR);
    // about four chunks per thread, at most 8 panels (128 KiB of B per K block) each
    let mut per = n_panels.div_ceil(4 * threads).clamp(1, 8);
    if isa == Isa::Avx512 && n_panels > 1 {
        per += per % 2; // whole pairs of panels (see `panel_steps`)
    }
    let n_chunks = n_panels.div_ceil(per);
    let (mut ap, bp) = PACK.with(|p| std::mem::take(&mut *p.borrow_mut()));
    // the partial last panel of A, packed to its full depth
    pack_a_tail(a, true, m, k, &mut ap);
    let cptr = SendPtr(c.as_mut_ptr());
    let sptr = b_col_sums.map(|s| SendPtr(s.as_mut_ptr()));
    let apr = &ap;
    (0..n_chunks).into_par_iter().for_each(|nb| {
        let jp0 = nb * per;
        let jp1 = (jp0 + per).min(n_panels);
        let (c0, c1) = (jp0 * NR, (jp1 * NR).min(n));
        let mut bl = TASK_B.with(|p| std::mem::take(&mut *p.borrow_mut()));
        bl.resize(bl.len().max((jp1 - jp0) * NR * KC), 0.0);
        // the first B panel's pass packs each full A panel of the K block (6 floats per
        // step, read in place anyway) into `al`; the task's other B panels read that packed
        // copy, a contiguous 6 KB, instead of a cache line per step (2-3% faster at dW
        // 138x1000 and 100x1000; same values in the same order, so the same bits)
        let steps = panel_steps(isa, jp0, jp1, n);
        let copy_a = steps.clone().count() > 1 && NR.min(n - jp0 * NR) == NR;
        let mut al = TASK_A.with(|p| std::mem::take(&mut *p.borrow_mut()));
        if copy_a {
            al.resize(al.len().max(m_panels * MR * KC), 0.0);
        }
        for pc in (0..k).step_by(KC) {
            let kc = KC.min(k - pc);
            let beta_eff = if pc == 0 { beta } else { 1.0 };
            for jp in jp0..jp1 {
                let d = &mut bl[(jp - jp0) * NR * kc..(jp - jp0 + 1) * NR * kc];
                pack_b(b, tb, n, k, jp * NR, n, pc, kc, d);
                if let Some(sp) = sptr {
                    let cols = NR.min(n - jp * NR);
                    // SAFETY: this task alone owns columns c0..c1 of the sums.
                    let s = unsafe { std::slice::from_raw_parts_mut(sp.get().add(jp * NR), cols) };
                    add_panel_col_sums(s, d, kc);
                }
            }
            for (jp, np) in steps.clone() {
                // pairs of A panels on the steps that do not pack A (12 x 32 tiles)
                let cols = (np * NR).min(n - jp * NR);
                let pair_rows = pair_rows_for(isa, np, cols) && !(copy_a && jp == jp0);
                for (ip, mp) in row_steps(pair_rows, 0, m_panels, m) {
                    if mp == 2 {
                        // SAFETY: as below; both A panels are full (in place, or packed
                        // into `al` by the first step).
                        unsafe {
                            let (mut a0, rs, cs) = a_panel(a, apr, true, m, k, ip, pc);
                            let (mut a1, _, _) = a_panel(a, apr, true, m, k, ip + 1, pc);
                            let (mut rs, mut cs) = (rs, cs);
                            if copy_a {
                                a0 = al.as_ptr().add(ip * MR * KC);
                                a1 = al.as_ptr().add((ip + 1) * MR * KC);
                                (rs, cs) = (1, MR);
                            }
                            tile12(
                                isa,
                                np,
                                cols,
                                kc,
                                a0,
                                a1,
                                rs,
                                cs,
                                bl.as_ptr().add((jp - jp0) * NR * kc),
                                NR * kc,
                                cptr.get().add(ip * MR * n + jp * NR),
                                n,
                                alpha,
                                beta_eff,
                            );
                        }
                        continue;
                    }
                    let rows = MR.min(m - ip * MR);
                    let col = jp * NR;
                    let cols = (np * NR).min(n - col);
                    let b_panels = &bl[(jp - jp0) * NR * kc..(jp - jp0 + np) * NR * kc];
                    // SAFETY: each task owns columns c0..c1 of C; a full panel read in place
                    // lies inside A (checked on entry), the tail panel is packed.
                    unsafe {
                        let cp = cptr.get().add(ip * MR * n + col);
                        let (mut ptr, mut rs, mut cs) = a_panel(a, apr, true, m, k, ip, pc);
                        let packed_here = copy_a && rows == MR;
                        let dst = al.as_mut_ptr().wrapping_add(ip * MR * KC);
                        if packed_here && jp > jp0 {
                            (ptr, rs, cs) = (dst as *const f32, 1, MR);
                        }
                        // first of the task's B panels: prefetch the strided A rows ahead
                        let pf = if jp == jp0 { PF_AHEAD * cs } else { 0 };
                        let dst = if packed_here && jp == jp0 {
                            dst
                        } else {
                            std::ptr::null_mut()
                        };
                        tile_np(
                            isa,
                            np,
                            kc,
                            ptr,
                            rs,
                            cs,
                            b_panels.as_ptr(),
                            NR * kc,
                            cp,
                            n,
                            rows,
                            cols,
                            alpha,
                            beta_eff,
                            pf,
                            dst,
                        );
                    }
                }
            }
        }
        TASK_B.with(|p| *p.borrow_mut() = bl);
        TASK_A.with(|p| *p.borrow_mut() = al);
        // SAFETY: same disjoint columns as above.
        unsafe { epilogue_region(cptr.get(), n, 0..m, c0..c1, epi) };
    });
    PACK.with(|p| *p.borrow_mut() = (ap, bp));
}

/// For the full-depth orders: pack the partial last MR-row panel of op(A) (when m is not a
/// multiple of MR) to its full depth into `ap`.
#[cfg(target_arch = "x86_64")]
fn pack_a_tail(a: &[f32], ta: bool, m: usize, k: usize, ap: &mut Vec<f32>) {
    if !m.is_multiple_of(MR) {
        ap.resize(ap.len().max(MR * k), 0.0);
        pack_a(
            a,
            ta,
            m,
            k,
            (m.div_ceil(MR) - 1) * MR,
            0,
            k,
            &mut ap[..MR * k],
        );
    }
}

/// Where the micro-kernel reads A panel `ip` at K offset `pc`, as `(pointer, row stride,
/// column stride)`: a full panel in place in A, the partial last one in `tail` (packed to
/// full depth by [`pack_a_tail`]).
///
/// # Safety
/// `ip` must be a panel of A (`ip * MR < m`) and `pc < k`.
#[cfg(target_arch = "x86_64")]
#[inline]
unsafe fn a_panel(
    a: &[f32],
    tail: &[f32],
    ta: bool,
    m: usize,
    k: usize,
    ip: usize,
    pc: usize,
) -> (*const f32, usize, usize) {
    if MR.min(m - ip * MR) < MR {
        (tail.as_ptr().add(pc * MR), 1, MR)
    } else if ta {
        (a.as_ptr().add(pc * m + ip * MR), 1, m)
    } else {
        (a.as_ptr().add(ip * MR * k + pc), k, 1)
    }
}

/// Pack the NR-column panels of `op(B)`'s columns `jc..jc + nc`, rows `p0..p0 + kc`, into
/// `dst` (panel after panel, `kc x NR` each), in parallel over panels. With `sums` (length
/// `nc`), each column's packed entries are added to it in row order.
#[allow(clippy::too_many_arguments)]
fn pack_b_panels(
    b: &[f32],
    tb: bool,
    n: usize,
    k: usize,
    jc: usize,
    nc: usize,
    p0: usize,
    kc: usize,
    dst: &mut [f32],
    sums: Option<&mut [f32]>,
) {
    let n_panels = nc.div_ceil(NR);
    let panels = dst[..n_panels * NR * kc].par_chunks_mut(NR * kc);
    match sums {
        Some(sums) => panels
            .zip(sums.par_chunks_mut(NR))
            .enumerate()
            .for_each(|(jp, (d, s))| {
                pack_b(b, tb, n, k, jc + jp * NR, jc + nc, p0, kc, d);
                add_panel_col_sums(s, d, kc);
            }),
        None => panels
            .enumerate()
            .for_each(|(jp, d)| pack_b(b, tb, n, k, jc + jp * NR, jc + nc, p0, kc, d)),
    }
}

/// Add the column sums of a packed B panel (`kc` rows of NR floats) to `s`, its first
/// `s.len()` columns: each column summed in row order from the value in `s`, the additions of
/// a plain loop, so the same bits; kept in NR accumulators (registers) rather than re-read
/// and re-written through `s` at every row (that took 1% of a DDRM epoch).
#[inline]
fn add_panel_col_sums(s: &mut [f32], d: &[f32], kc: usize) {
    let cols = s.len();
    debug_assert!(cols <= NR && d.len() >= kc * NR);
    let mut acc = [0f32; NR];
    acc[..cols].copy_from_slice(s);
    for row in d[..kc * NR].chunks_exact(NR) {
        for (a, &v) in acc.iter_mut().zip(row) {
            *a += v;
        }
    }
    s.copy_from_slice(&acc[..cols]);
}

/// Column panels `jp0..jp1` of a B with `n` columns as steps `(jp, np)`: on AVX-512, pairs
/// of full panels (`np` = 2, one 6 x 32 tile per A panel, see [`tile_np`]), and single panels
/// where no full pair is left; elsewhere one panel at a time.
fn panel_steps(
    isa: Isa,
    jp0: usize,
    jp1: usize,
    n: usize,
) -> impl Iterator<Item = (usize, usize)> + Clone {
    let pair = isa == Isa::Avx512;
    let mut jp = jp0;
    std::iter::from_fn(move || {
        if jp >= jp1 {
            return None;
        }
        let np = if pair && jp + 1 < jp1 && (jp + 2) * NR <= n {
            2
        } else {
            1
        };
        let step = (jp, np);
        jp += np;
        Some(step)
    })
}

/// Whether a step of `np` B panels holding `cols` columns runs two full A panels at once
/// ([`tile12`]): a pair of full panels on AVX-512, a narrow last panel on AVX2 and up.
fn pair_rows_for(isa: Isa, np: usize, cols: usize) -> bool {
    (isa == Isa::Avx512 && np == 2 && cols == 2 * NR) || (isa.has_avx2() && cols <= NR / 2)
}

/// Two full A panels (`a0`, `a1`, the same strides; rows 0-5 and 6-11 of C from `c`) against
/// one step of B panels, as [`pair_rows_for`] allows it: a pair of full B panels as one
/// 12 x 32 AVX-512 tile, a narrow last panel (≤ NR / 2 columns) as one 12 x 8 AVX2 pass
/// (12 independent FMA chains; the 6-row pass of [`avx2::kernel_strided_half`] waits on
/// the FMA latency). Each element is the same chain as in the one-panel paths, written back
/// the same way, so the same bits.
///
/// # Safety
/// As [`avx2::tile`] for both A panels; `pair_rows_for(isa, np, cols)` must hold.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn tile12(
    isa: Isa,
    np: usize,
    cols: usize,
    kc: usize,
    a0: *const f32,
    a1: *const f32,
    rs: usize,
    cs: usize,
    b: *const f32,
    bs: usize,
    c: *mut f32,
    ldc: usize,
    alpha: f32,
    beta: f32,
) {
    debug_assert!(pair_rows_for(isa, np, cols));
    if cols <= NR / 2 {
        let (mut t0, mut t1) = ([0f32; MR * NR], [0f32; MR * NR]);
        avx2::kernel_strided_half12(kc, a0, a1, rs, cs, b, &mut t0, &mut t1);
        write_tile(&t0, c, ldc, MR, cols, alpha, beta);
        write_tile(&t1, c.add(MR * ldc), ldc, MR, cols, alpha, beta);
    } else {
        avx512::tile12(kc, a0, a1, rs, cs, b, bs, c, ldc, alpha, beta);
    }
}

/// Row panels `ip0..ip1` of an A with `m` rows as steps `(ip, mp)`: with `pair`, pairs of
/// full panels (`mp` = 2, one 12 x 32 tile against a pair of B panels, see
/// [`avx512::tile12`]), else one panel at a time.
fn row_steps(pair: bool, ip0: usize, ip1: usize, m: usize) -> impl Iterator<Item = (usize, usize)> {
    let mut ip = ip0;
    std::iter::from_fn(move || {
        if ip >= ip1 {
            return None;
        }
        let mp = if pair && ip + 1 < ip1 && (ip + 2) * MR <= m {
            2
        } else {
            1
        };
        let step = (ip, mp);
        ip += mp;
        Some(step)
    })
}

/// One A panel read through `(a, rs, cs)` (see [`avx2::kernel_strided`]) against `np` (1 or
/// 2) adjacent packed B panels `bs` floats apart: C's `rows x cols` block at `c` (row stride
/// `ldc`, `cols` ≤ np · NR), `pf` and `packed` as in [`avx2::tile`]. On AVX-512 a full block
/// runs as one 6 x 16·np tile in 512-bit registers (12 accumulators for a pair: 1.45x the
/// 6 x 16 AVX2 tile's rate in L1 on a Xeon with two 512-bit FMA units); everything else as
/// [`avx2::tile`], panel by panel. Every element of C is the same chain of FMAs over K in
/// every path (`acc = a·b + acc`, then `alpha·acc (+ beta·C)`), so the same bits.
///
/// # Safety
/// As [`avx2::tile`], for each of the `np` panels; the ISA must be available.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn tile_np(
    isa: Isa,
    np: usize,
    kc: usize,
    a: *const f32,
    rs: usize,
    cs: usize,
    b: *const f32,
    bs: usize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    alpha: f32,
    beta: f32,
    pf: usize,
    packed: *mut f32,
) {
    if isa == Isa::Avx512 && rows == MR && cols == np * NR {
        avx512::tile(np, kc, a, rs, cs, b, bs, c, ldc, alpha, beta, pf, packed);
        return;
    }
    for q in 0..np {
        let b_panel = std::slice::from_raw_parts(b.add(q * bs), kc * NR);
        let (pf, packed) = if q == 0 {
            (pf, packed)
        } else {
            (0, std::ptr::null_mut())
        };
        avx2::tile(
            kc,
            a,
            rs,
            cs,
            b_panel,
            c.add(q * NR),
            ldc,
            rows,
            NR.min(cols - q * NR),
            alpha,
            beta,
            pf,
            packed,
        );
    }
}

/// The tasks over C: blocks of at most MC rows times chunks of column panels, about four
/// tasks per thread.
#[derive(Clone, Copy, Debug)]
struct TaskGrid {
    m: usize,
    m_panels: usize,
    m_blocks: usize,
    n_panels: usize,
    n_chunks: usize,
    panels_per_chunk: usize,
}

impl TaskGrid {
    /// Row blocks of whole MR panels, as even as the panels allow, and as many as a multiple
    /// of the threads once there are at least as many as threads: a 2048-row product on 2
    /// threads has 30 blocks of 11-12 panels rather than 28 of 72 rows and one of 32, so
    /// neither thread waits for the other's extra block. Which task computes an element of
    /// C does not change its sum, so the bits are those of any other grid.
    fn new(m: usize, n_panels: usize, threads: usize, isa: Isa) -> Self {
        let m_panels = m.div_ceil(MR);
        let mut m_blocks = m.div_ceil(MC);
        if m_blocks >= threads {
            m_blocks = m_blocks.div_ceil(threads) * threads;
        }
        let m_blocks = m_blocks.min(m_panels);
        let n_chunks = (4 * threads).div_ceil(m_blocks).clamp(1, n_panels);
        let mut panels_per_chunk = n_panels.div_ceil(n_chunks);
        if isa == Isa::Avx512 && n_panels > 1 {
            panels_per_chunk += panels_per_chunk % 2; // whole pairs (see `panel_steps`)
        }
        TaskGrid {
            m,
            m_panels,
            m_blocks,
            n_panels,
            n_chunks: n_panels.div_ceil(panels_per_chunk),
            panels_per_chunk,
        }
    }

    fn tasks(&self) -> usize {
        self.m_blocks * self.n_chunks
    }

    /// Rows `i0..i1` (i0 a multiple of MR) and column panels `jp0..jp1` of `task`.
    fn task(&self, task: usize) -> (usize, usize, usize, usize) {
        let (mb, nb) = (task / self.n_chunks, task % self.n_chunks);
        let i0 = mb * self.m_panels / self.m_blocks * MR;
        let i1 = ((mb + 1) * self.m_panels / self.m_blocks * MR).min(self.m);
        let jp0 = nb * self.panels_per_chunk;
        (
            i0,
            i1,
            jp0,
            (jp0 + self.panels_per_chunk).min(self.n_panels),
        )
    }
}

/// Apply `epi` to the `rows x cols` region of C (row stride `ldc`), once its product is done.
///
/// # Safety
/// `c` must be valid for that region, and no other thread may access it meanwhile.
pub(super) unsafe fn epilogue_region(
    c: *mut f32,
    ldc: usize,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    epi: Epilogue,
) {
    if epi.is_none() {
        return;
    }
    for i in rows {
        let row = std::slice::from_raw_parts_mut(c.add(i * ldc + cols.start), cols.len());
        apply_epilogue(
            row,
            epi_cols(epi, i, ldc, cols.start, cols.end),
            i * ldc + cols.start,
        );
    }
}

thread_local! {
    static PACK: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// The epilogue restricted to columns `c0..c1` (the bias slice; `grad_of` keeps its matrix).
/// The epilogue of row `i` of C (row stride `ldc`) restricted to columns `c0..c1` (the bias
/// slice, from the row's table row with `bias_rows`; `grad_of` keeps its matrix).
fn epi_cols(epi: Epilogue, i: usize, ldc: usize, c0: usize, c1: usize) -> Epilogue {
    let at = epi.bias_rows.map_or(0, |r| r[i] as usize * ldc);
    Epilogue {
        bias: epi.bias.map(|b| &b[at + c0..at + c1]),
        bias_rows: None,
        ..epi
    }
}

/// Apply the epilogue to `row`, which starts at flat index `at` of C (for `grad_of`).
fn apply_epilogue(row: &mut [f32], epi: Epilogue, at: usize) {
    if let Some(b) = epi.bias {
        for (v, &bb) in row.iter_mut().zip(b) {
            *v += bb;
        }
    }
    super::elementwise::activate_inplace(row, epi.act);
    if let Some((y, act)) = epi.grad_of {
        super::elementwise::activation_backward_seq(&y[at..at + row.len()], row, act);
    }
}

#[allow(clippy::too_many_arguments)]
fn pack_a(
    a: &[f32],
    ta: bool,
    m: usize,
    k: usize,
    i0: usize,
    p0: usize,
    kc: usize,
    dst: &mut [f32],
) {
    let rows = MR.min(m - i0);
    for p in 0..kc {
        let d = &mut dst[p * MR..(p + 1) * MR];
        for r in 0..MR {
            d[r] = if r < rows {
                let (i, pp) = (i0 + r, p0 + p);
                if ta {
                    a[pp * m + i]
                } else {
                    a[i * k + pp]
                }
            } else {
                0.0
            };
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn pack_b(
    b: &[f32],
    tb: bool,
    n: usize,
    k: usize,
    j0: usize,
    j_end: usize,
    p0: usize,
    kc: usize,
    dst: &mut [f32],
) {
    let cols = NR.min(j_end - j0);
    if !tb && cols == NR {
        for p in 0..kc {
            let src = &b[(p0 + p) * n + j0..(p0 + p) * n + j0 + NR];
            dst[p * NR..(p + 1) * NR].copy_from_slice(src);
        }
        return;
    }
    for p in 0..kc {
        let d = &mut dst[p * NR..(p + 1) * NR];
        for (cc, dv) in d.iter_mut().enumerate() {
            *dv = if cc < cols {
                let (j, pp) = (j0 + cc, p0 + p);
                if tb {
                    b[j * k + pp]
                } else {
                    b[pp * n + j]
                }
            } else {
                0.0
            };
        }
    }
}

/// One MR x NR tile: `C[rows x cols] = alpha * Apanel * Bpanel + beta * C` (C not read when
/// beta == 0). Panels are packed as produced by the packing routines (zero-padded).
///
/// # Safety
/// `c` must be valid for `rows` rows of `cols` elements with row stride `ldc`.
#[allow(clippy::too_many_arguments)]
#[inline]
pub unsafe fn micro_kernel(
    isa: Isa,
    kc: usize,
    a: &[f32],
    b: &[f32],
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    alpha: f32,
    beta: f32,
) {
    debug_assert!(a.len() >= kc * MR && b.len() >= kc * NR);
    #[cfg(target_arch = "x86_64")]
    if isa.has_avx2() && rows == MR && cols == NR {
        avx2::kernel_to_c(
            kc,
            a.as_ptr(),
            1,
            MR,
            b.as_ptr(),
            c,
            ldc,
            alpha,
            beta,
            0,
            std::ptr::null_mut(),
        );
        return;
    }
    let mut tile = [0f32; MR * NR];
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma | Isa::Avx512 if cols <= NR / 2 => {
            avx2::kernel_strided_half(kc, a.as_ptr(), 1, MR, b.as_ptr(), &mut tile)
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma | Isa::Avx512 => avx2::kernel(kc, a.as_ptr(), b.as_ptr(), &mut tile),
        _ => portable_kernel(kc, a, b, &mut tile),
    }
    write_tile(&tile, c, ldc, rows, cols, alpha, beta);
}

/// `C[rows x cols] = alpha * tile + beta * C` (C not read when beta == 0).
///
/// # Safety
/// `c` must be valid for `rows` rows of `cols` elements with row stride `ldc`.
#[inline]
unsafe fn write_tile(
    tile: &[f32; MR * NR],
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    alpha: f32,
    beta: f32,
) {
    for i in 0..rows {
        let cr = c.add(i * ldc);
        let t = &tile[i * NR..i * NR + cols];
        if beta == 0.0 {
            for (j, &v) in t.iter().enumerate() {
                *cr.add(j) = alpha * v;
            }
        } else {
            for (j, &v) in t.iter().enumerate() {
                *cr.add(j) = alpha * v + beta * *cr.add(j);
            }
        }
    }
}

/// Portable micro-kernel on `wide::f32x8`.
fn portable_kernel(kc: usize, a: &[f32], b: &[f32], tile: &mut [f32; MR * NR]) {
    use wide::f32x8;
    let mut acc = [[f32x8::ZERO; 2]; MR];
    for p in 0..kc {
        let bp = &b[p * NR..p * NR + NR];
        let b0 = f32x8::from(<[f32; 8]>::try_from(&bp[..8]).unwrap());
        let b1 = f32x8::from(<[f32; 8]>::try_from(&bp[8..]).unwrap());
        let ap = &a[p * MR..p * MR + MR];
        for i in 0..MR {
            let ai = f32x8::splat(ap[i]);
            acc[i][0] = ai.mul_add(b0, acc[i][0]);
            acc[i][1] = ai.mul_add(b1, acc[i][1]);
        }
    }
    for i in 0..MR {
        tile[i * NR..i * NR + 8].copy_from_slice(&acc[i][0].to_array());
        tile[i * NR + 8..i * NR + 16].copy_from_slice(&acc[i][1].to_array());
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{MR, NR};
    use std::arch::x86_64::*;

    /// The full 6 x 16 tile written straight into C: `C = alpha * acc + beta * C` (C not
    /// read when beta == 0). With `pf > 0`, A is prefetched `pf` floats ahead of each step
    /// ([`kernel_strided_ex`]); the product is the same.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn kernel_to_c(
        kc: usize,
        a: *const f32,
        rs: usize,
        cs: usize,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        alpha: f32,
        beta: f32,
        pf: usize,
        packed: *mut f32,
    ) {
        let mut tile = [0f32; MR * NR];
        match (pf > 0, !packed.is_null()) {
            (true, true) => {
                kernel_strided_ex::<true, true>(kc, a, rs, cs, pf, b, &mut tile, packed)
            }
            (false, true) => {
                kernel_strided_ex::<false, true>(kc, a, rs, cs, pf, b, &mut tile, packed)
            }
            (true, false) => kernel_strided_ex::<true, false>(
                kc,
                a,
                rs,
                cs,
                pf,
                b,
                &mut tile,
                std::ptr::null_mut(),
            ),
            (false, false) => kernel_strided(kc, a, rs, cs, b, &mut tile),
        }
        let va = _mm256_set1_ps(alpha);
        let vb = _mm256_set1_ps(beta);
        let t = tile.as_ptr();
        for i in 0..MR {
            for h in 0..2 {
                let acc = _mm256_loadu_ps(t.add(i * NR + 8 * h));
                let cp = c.add(i * ldc + 8 * h);
                let v = if beta == 0.0 {
                    _mm256_mul_ps(va, acc)
                } else {
                    _mm256_fmadd_ps(va, acc, _mm256_mul_ps(vb, _mm256_loadu_ps(cp)))
                };
                _mm256_storeu_ps(cp, v);
            }
        }
    }

    /// One `rows x cols` tile (at most MR x NR) with A read through `(a, rs, cs)` (see
    /// [`kernel_strided`]): a full tile straight into C, a partial one kept in registers and
    /// only its valid part written. `pf` as in [`kernel_to_c`] (partial tiles ignore it).
    /// With `packed` not null (full tiles only), the A panel read is also written there,
    /// packed (`kc x MR`), for the next tiles that use it.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub unsafe fn tile(
        kc: usize,
        a: *const f32,
        rs: usize,
        cs: usize,
        b_panel: &[f32],
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
        alpha: f32,
        beta: f32,
        pf: usize,
        packed: *mut f32,
    ) {
        debug_assert!(b_panel.len() >= kc * NR);
        debug_assert!(packed.is_null() || (rows == MR && cols == NR));
        if rows == MR && cols == NR {
            kernel_to_c(
                kc,
                a,
                rs,
                cs,
                b_panel.as_ptr(),
                c,
                ldc,
                alpha,
                beta,
                pf,
                packed,
            );
        } else {
            let mut t = [0f32; MR * NR];
            if cols <= NR / 2 {
                // a narrow last panel (n = 100 leaves 4 columns): half the FMAs; each element
                // is the same chain of FMAs over K as in the full kernel, so the same bits
                kernel_strided_half(kc, a, rs, cs, b_panel.as_ptr(), &mut t);
            } else {
                kernel_strided(kc, a, rs, cs, b_panel.as_ptr(), &mut t);
            }
            super::write_tile(&t, c, ldc, rows, cols, alpha, beta);
        }
    }

    /// AVX2 + FMA 6 x 16 micro-kernel: 12 accumulators, 2 B vectors, 1 broadcast.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub unsafe fn kernel(kc: usize, a: *const f32, b: *const f32, tile: &mut [f32; MR * NR]) {
        kernel_strided(kc, a, 1, MR, b, tile)
    }

    /// [`kernel_strided`] for the first NR / 2 columns only (the rest of `tile` is left
    /// as it is): 6 accumulators, 1 B vector, 1 broadcast.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub unsafe fn kernel_strided_half(
        kc: usize,
        a: *const f32,
        rs: usize,
        cs: usize,
        b: *const f32,
        tile: &mut [f32; MR * NR],
    ) {
        let mut c0 = _mm256_setzero_ps();
        let mut c1 = _mm256_setzero_ps();
        let mut c2 = _mm256_setzero_ps();
        let mut c3 = _mm256_setzero_ps();
        let mut c4 = _mm256_setzero_ps();
        let mut c5 = _mm256_setzero_ps();
        let mut ap = a;
        let mut bp = b;
        for _ in 0..kc {
            let b0 = _mm256_loadu_ps(bp);
            c0 = _mm256_fmadd_ps(_mm256_broadcast_ss(&*ap), b0, c0);
            c1 = _mm256_fmadd_ps(_mm256_broadcast_ss(&*ap.add(rs)), b0, c1);
            c2 = _mm256_fmadd_ps(_mm256_broadcast_ss(&*ap.add(2 * rs)), b0, c2);
            c3 = _mm256_fmadd_ps(_mm256_broadcast_ss(&*ap.add(3 * rs)), b0, c3);
            c4 = _mm256_fmadd_ps(_mm256_broadcast_ss(&*ap.add(4 * rs)), b0, c4);
            c5 = _mm256_fmadd_ps(_mm256_broadcast_ss(&*ap.add(5 * rs)), b0, c5);
            ap = ap.add(cs);
            bp = bp.add(NR);
        }
        let t = tile.as_mut_ptr();
        _mm256_storeu_ps(t, c0);
        _mm256_storeu_ps(t.add(NR), c1);
        _mm256_storeu_ps(t.add(2 * NR), c2);
        _mm256_storeu_ps(t.add(3 * NR), c3);
        _mm256_storeu_ps(t.add(4 * NR), c4);
        _mm256_storeu_ps(t.add(5 * NR), c5);
    }

    /// [`kernel_strided_half`] for two 6-row panels at once (`a0`, `a1`, the same strides)
    /// into `t0` and `t1`: 12 accumulators, 1 B vector, 12 broadcasts per step.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn kernel_strided_half12(
        kc: usize,
        a0: *const f32,
        a1: *const f32,
        rs: usize,
        cs: usize,
        b: *const f32,
        t0: &mut [f32; MR * NR],
        t1: &mut [f32; MR * NR],
    ) {
        let mut acc = [_mm256_setzero_ps(); 2 * MR];
        let (mut p0, mut p1) = (a0, a1);
        let mut bp = b;
        for _ in 0..kc {
            let bv = _mm256_loadu_ps(bp);
            for (r, v) in acc.iter_mut().enumerate() {
                let x = if r < MR {
                    _mm256_broadcast_ss(&*p0.add(r * rs))
                } else {
                    _mm256_broadcast_ss(&*p1.add((r - MR) * rs))
                };
                *v = _mm256_fmadd_ps(x, bv, *v);
            }
            p0 = p0.add(cs);
            p1 = p1.add(cs);
            bp = bp.add(NR);
        }
        for (r, v) in acc.iter().enumerate() {
            let t = if r < MR { &mut *t0 } else { &mut *t1 };
            _mm256_storeu_ps(t.as_mut_ptr().add((r % MR) * NR), *v);
        }
    }

    /// The micro-kernel reading A in place: element (r, p) of the 6-row panel at
    /// `a[r * rs + p * cs]` (packed: rs = 1, cs = MR; row-major A: rs = lda, cs = 1;
    /// transposed A: rs = 1, cs = lda).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub unsafe fn kernel_strided(
        kc: usize,
        a: *const f32,
        rs: usize,
        cs: usize,
        b: *const f32,
        tile: &mut [f32; MR * NR],
    ) {
        kernel_strided_ex::<false, false>(kc, a, rs, cs, 0, b, tile, std::ptr::null_mut())
    }

    /// [`kernel_strided`] with two extras that leave the product as it is. When `PF`, it
    /// prefetches the A elements `pf` floats ahead of each step's (both ends of the 6-element
    /// group, which may straddle two lines; a prefetch cannot fault, so one past the end of A
    /// is harmless: the address is formed with `wrapping_add` and never dereferenced). When
    /// `COPY`, it writes the A panel it reads (`rs` = 1: 6 contiguous floats per step) packed
    /// into `packed` (`kc x MR`), for the next passes over the same panel.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn kernel_strided_ex<const PF: bool, const COPY: bool>(
        kc: usize,
        a: *const f32,
        rs: usize,
        cs: usize,
        pf: usize,
        b: *const f32,
        tile: &mut [f32; MR * NR],
        packed: *mut f32,
    ) {
        debug_assert!(!COPY || rs == 1);
        let mut dst = packed;
        let mut c00 = _mm256_setzero_ps();
        let mut c01 = _mm256_setzero_ps();
        let mut c10 = _mm256_setzero_ps();
        let mut c11 = _mm256_setzero_ps();
        let mut c20 = _mm256_setzero_ps();
        let mut c21 = _mm256_setzero_ps();
        let mut c30 = _mm256_setzero_ps();
        let mut c31 = _mm256_setzero_ps();
        let mut c40 = _mm256_setzero_ps();
        let mut c41 = _mm256_setzero_ps();
        let mut c50 = _mm256_setzero_ps();
        let mut c51 = _mm256_setzero_ps();
        let mut ap = a;
        let mut bp = b;
        for _ in 0..kc {
            if PF {
                _mm_prefetch::<_MM_HINT_T0>(ap.wrapping_add(pf) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(ap.wrapping_add(pf + 5 * rs) as *const i8);
            }
            if COPY {
                _mm_storeu_ps(dst, _mm_loadu_ps(ap));
                (dst.add(4) as *mut u64)
                    .write_unaligned((ap.add(4) as *const u64).read_unaligned());
                dst = dst.add(MR);
            }
            let b0 = _mm256_loadu_ps(bp);
            let b1 = _mm256_loadu_ps(bp.add(8));
            let a0 = _mm256_broadcast_ss(&*ap);
            c00 = _mm256_fmadd_ps(a0, b0, c00);
            c01 = _mm256_fmadd_ps(a0, b1, c01);
            let a1 = _mm256_broadcast_ss(&*ap.add(rs));
            c10 = _mm256_fmadd_ps(a1, b0, c10);
            c11 = _mm256_fmadd_ps(a1, b1, c11);
            let a2 = _mm256_broadcast_ss(&*ap.add(2 * rs));
            c20 = _mm256_fmadd_ps(a2, b0, c20);
            c21 = _mm256_fmadd_ps(a2, b1, c21);
            let a3 = _mm256_broadcast_ss(&*ap.add(3 * rs));
            c30 = _mm256_fmadd_ps(a3, b0, c30);
            c31 = _mm256_fmadd_ps(a3, b1, c31);
            let a4 = _mm256_broadcast_ss(&*ap.add(4 * rs));
            c40 = _mm256_fmadd_ps(a4, b0, c40);
            c41 = _mm256_fmadd_ps(a4, b1, c41);
            let a5 = _mm256_broadcast_ss(&*ap.add(5 * rs));
            c50 = _mm256_fmadd_ps(a5, b0, c50);
            c51 = _mm256_fmadd_ps(a5, b1, c51);
            ap = ap.add(cs);
            bp = bp.add(NR);
        }
        let t = tile.as_mut_ptr();
        _mm256_storeu_ps(t, c00);
        _mm256_storeu_ps(t.add(8), c01);
        _mm256_storeu_ps(t.add(16), c10);
        _mm256_storeu_ps(t.add(24), c11);
        _mm256_storeu_ps(t.add(32), c20);
        _mm256_storeu_ps(t.add(40), c21);
        _mm256_storeu_ps(t.add(48), c30);
        _mm256_storeu_ps(t.add(56), c31);
        _mm256_storeu_ps(t.add(64), c40);
        _mm256_storeu_ps(t.add(72), c41);
        _mm256_storeu_ps(t.add(80), c50);
        _mm256_storeu_ps(t.add(88), c51);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{MR, NR};
    use std::arch::x86_64::*;

    /// [`kernel_to_c`] for `np` = 1 or 2 panels, with or without prefetch and copy.
    ///
    /// # Safety
    /// As [`kernel_to_c`]; AVX-512F must be present.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub unsafe fn tile(
        np: usize,
        kc: usize,
        a: *const f32,
        rs: usize,
        cs: usize,
        b: *const f32,
        bs: usize,
        c: *mut f32,
        ldc: usize,
        alpha: f32,
        beta: f32,
        pf: usize,
        packed: *mut f32,
    ) {
        macro_rules! go {
            ($np:literal) => {
                match (pf > 0, !packed.is_null()) {
                    (true, true) => kernel_to_c::<$np, true, true>(
                        kc, a, rs, cs, pf, b, bs, c, ldc, alpha, beta, packed,
                    ),
                    (true, false) => kernel_to_c::<$np, true, false>(
                        kc, a, rs, cs, pf, b, bs, c, ldc, alpha, beta, packed,
                    ),
                    (false, true) => kernel_to_c::<$np, false, true>(
                        kc, a, rs, cs, pf, b, bs, c, ldc, alpha, beta, packed,
                    ),
                    (false, false) => kernel_to_c::<$np, false, false>(
                        kc, a, rs, cs, pf, b, bs, c, ldc, alpha, beta, packed,
                    ),
                }
            };
        }
        if np == 2 {
            go!(2)
        } else {
            go!(1)
        }
    }

    /// Two full A panels (`a0`, `a1`, the same strides; rows 0-5 and 6-11 of C from `c`)
    /// against a pair of B panels: one 12 x 32 tile in 24 accumulators, C as in
    /// [`kernel_to_c`]. Twice the work per B load and per call of a 6 x 32 tile: 229 against
    /// 210 GFLOP/s on one core in L1 (a Xeon with two 512-bit FMA units).
    ///
    /// # Safety
    /// As [`kernel_to_c`] for both panels; AVX-512F must be present.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn tile12(
        kc: usize,
        a0: *const f32,
        a1: *const f32,
        rs: usize,
        cs: usize,
        b: *const f32,
        bs: usize,
        c: *mut f32,
        ldc: usize,
        alpha: f32,
        beta: f32,
    ) {
        let mut acc = [[_mm512_setzero_ps(); 2]; 2 * MR];
        let (mut p0, mut p1) = (a0, a1);
        let mut bp = b;
        for _ in 0..kc {
            let bv = [_mm512_loadu_ps(bp), _mm512_loadu_ps(bp.add(bs))];
            for (r, row) in acc.iter_mut().enumerate() {
                let x = if r < MR {
                    _mm512_set1_ps(*p0.add(r * rs))
                } else {
                    _mm512_set1_ps(*p1.add((r - MR) * rs))
                };
                row[0] = _mm512_fmadd_ps(x, bv[0], row[0]);
                row[1] = _mm512_fmadd_ps(x, bv[1], row[1]);
            }
            p0 = p0.add(cs);
            p1 = p1.add(cs);
            bp = bp.add(NR);
        }
        let va = _mm512_set1_ps(alpha);
        let vb = _mm512_set1_ps(beta);
        for (r, row) in acc.iter().enumerate() {
            for (q, &v) in row.iter().enumerate() {
                let cp = c.add(r * ldc + q * NR);
                let out = if beta == 0.0 {
                    _mm512_mul_ps(va, v)
                } else {
                    _mm512_fmadd_ps(va, v, _mm512_mul_ps(vb, _mm512_loadu_ps(cp)))
                };
                _mm512_storeu_ps(cp, out);
            }
        }
    }

    /// The full 6 x (16·NP) tile of one A panel (element (r, p) at `a[r * rs + p * cs]`)
    /// against NP packed B panels (`bs` floats apart, 16 floats per K step), straight into C:
    /// `C = alpha * acc + beta * C` (C not read when beta == 0). One 512-bit accumulator per
    /// row and panel (12 for a pair), each row's A element broadcast once per step. `PF` and
    /// `COPY` as in [`super::avx2::kernel_strided_ex`]; the product is the same.
    #[target_feature(enable = "avx512f")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn kernel_to_c<const NP: usize, const PF: bool, const COPY: bool>(
        kc: usize,
        a: *const f32,
        rs: usize,
        cs: usize,
        pf: usize,
        b: *const f32,
        bs: usize,
        c: *mut f32,
        ldc: usize,
        alpha: f32,
        beta: f32,
        packed: *mut f32,
    ) {
        debug_assert!(!COPY || rs == 1);
        let mut acc = [[_mm512_setzero_ps(); NP]; MR];
        let mut ap = a;
        let mut bp = b;
        let mut dst = packed;
        for _ in 0..kc {
            if PF {
                _mm_prefetch::<_MM_HINT_T0>(ap.wrapping_add(pf) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(ap.wrapping_add(pf + 5 * rs) as *const i8);
            }
            if COPY {
                _mm_storeu_ps(dst, _mm_loadu_ps(ap));
                (dst.add(4) as *mut u64)
                    .write_unaligned((ap.add(4) as *const u64).read_unaligned());
                dst = dst.add(MR);
            }
            let mut bv = [_mm512_setzero_ps(); NP];
            for (q, v) in bv.iter_mut().enumerate() {
                *v = _mm512_loadu_ps(bp.add(q * bs));
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*ap.add(r * rs));
                for (v, &bq) in row.iter_mut().zip(&bv) {
                    *v = _mm512_fmadd_ps(x, bq, *v);
                }
            }
            ap = ap.add(cs);
            bp = bp.add(NR);
        }
        let va = _mm512_set1_ps(alpha);
        let vb = _mm512_set1_ps(beta);
        for (r, row) in acc.iter().enumerate() {
            for (q, &v) in row.iter().enumerate() {
                let cp = c.add(r * ldc + q * NR);
                let out = if beta == 0.0 {
                    _mm512_mul_ps(va, v)
                } else {
                    _mm512_fmadd_ps(va, v, _mm512_mul_ps(vb, _mm512_loadu_ps(cp)))
                };
                _mm512_storeu_ps(cp, out);
            }
        }
    }
}

/// Plain triple-loop reference (f64 accumulation), for tests.
#[allow(clippy::too_many_arguments)]
pub fn gemm_reference(
    ta: bool,
    tb: bool,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    b: &[f32],
    beta: f32,
    c: &mut [f32],
) {
    for i in 0..m {
        for j in 0..n {
            let mut s = 0f64;
            for p in 0..k {
                let av = if ta { a[p * m + i] } else { a[i * k + p] };
                let bv = if tb { b[j * k + p] } else { b[p * n + j] };
                s += av as f64 * bv as f64;
            }
            let old = if beta == 0.0 {
                0.0
            } else {
                beta as f64 * c[i * n + j] as f64
            };
            c[i * n + j] = (alpha as f64 * s + old) as f32;
        }
    }
}

#[cfg(test)]
mod grid_tests {
    use super::*;

    #[test]
    fn task_grid_tiles_c_once_in_whole_panels_and_even_blocks() {
        for threads in 1..=5 {
            for m in (1..700).chain([2048, 4096, 4097]) {
                for (n_panels, isa) in [1, 4, 7, 63]
                    .into_iter()
                    .flat_map(|p| [(p, Isa::Avx2Fma), (p, Isa::Avx512)])
                {
                    let g = TaskGrid::new(m, n_panels, threads, isa);
                    let mut seen = vec![0u8; m * n_panels];
                    let mut sizes = Vec::new();
                    for t in 0..g.tasks() {
                        let (i0, i1, jp0, jp1) = g.task(t);
                        assert!(
                            i0 % MR == 0 && i0 < i1 && i1 - i0 <= MC,
                            "m {m}: rows {i0}..{i1}"
                        );
                        assert!(jp0 < jp1 && jp1 <= n_panels);
                        // AVX-512: chunks of whole pairs of panels
                        assert!(isa != Isa::Avx512 || jp0 % 2 == 0, "chunk at {jp0}");
                        if jp0 == 0 {
                            sizes.push(i1.div_ceil(MR) - i0 / MR);
                        }
                        for i in i0..i1 {
                            for jp in jp0..jp1 {
                                seen[i * n_panels + jp] += 1;
                            }
                        }
                    }
                    assert!(
                        seen.iter().all(|&s| s == 1),
                        "m {m} panels {n_panels} threads {threads}"
                    );
                    // row blocks differ by at most one panel (the last may be a partial one)
                    let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
                    assert!(hi - lo <= 1, "m {m}: block sizes {lo}..{hi}");
                    if m.div_ceil(MC) >= threads {
                        assert_eq!(g.m_blocks % threads, 0, "m {m} threads {threads}");
                    }
                }
            }
        }
    }
}
