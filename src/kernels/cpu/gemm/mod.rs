//! Packed, register-blocked SIMD GEMM (f32, row-major), in the style of `matrixmultiply`:
//! panels of A (MR rows) and B (NR columns) are packed into contiguous buffers per KC-deep
//! block (full A panels are read where they lie on x86-64), and register tiles accumulate
//! them: 6 x 16 on AVX2 + FMA (`avx2`), 6 x 32 and 12 x 32 on AVX-512 (`avx512`), a
//! portable 6 x 16 on `wide::f32x8` (`tiles`); the instruction set is chosen at run time.
//!
//! `C = alpha * op(A) * op(B) + beta * C`, then an optional fused epilogue
//! (`+ bias` per column, then an activation; `epilogue`). This file holds the interface and
//! the K-block-outer order; the other orders are `deep_k()` (B packed to its full depth),
//! `local_b()` (Aᵀ with a wide B) and, on AVX-512, `atb` (Aᵀ·B with both operands read in
//! place) and `atb_wide` (Aᵀ·B with few rows and a wide B); `panels` packs, `grid` splits
//! the work into tasks. Each element of C is
//! computed by exactly one task as the same chain of fused multiply-adds per K block, blocks
//! summed in order, so results are bit-identical whatever the order, thread count or
//! instruction set.

use super::isa::Isa;
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
mod atb;
#[cfg(target_arch = "x86_64")]
mod atb_wide;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod deep_k;
mod epilogue;
mod grid;
#[cfg(target_arch = "x86_64")]
mod local_b;
mod panels;
mod reference;
mod tiles;

#[cfg(target_arch = "x86_64")]
use deep_k::deep_k;
use epilogue::*;
use grid::TaskGrid;
#[cfg(target_arch = "x86_64")]
use local_b::local_b;
use panels::*;
pub use reference::gemm_reference;
pub use tiles::micro_kernel;
#[cfg(target_arch = "x86_64")]
use tiles::*;

/// Rows of the micro-kernel tile.
pub const MR: usize = 6;
/// Columns of the micro-kernel tile.
pub const NR: usize = 16;
const KC: usize = 256;
const MC: usize = 72;
const NC: usize = 2048;
/// How many K steps ahead the first pass over an Aᵀ panel read in place prefetches it (see
/// [`deep_k()`]).
#[cfg(target_arch = "x86_64")]
const PF_AHEAD: usize = 16;
/// Largest B (floats, packed to full depth) for the deep-K order: 1 MiB.
#[cfg(target_arch = "x86_64")]
const DEEP_K_MAX_B: usize = 1 << 18;
/// Most rows for the task-local-B order ([`local_b()`]): every task runs all of them against
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
struct SendPtr(*mut f32);
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
    if isa == Isa::Avx512 && ta && !tb && k > KC && !block_outer && alpha == 1.0 && atb::suits(m) {
        atb::atb(m, n, k, alpha, a, b, beta, c, epi, b_col_sums);
        return;
    }
    // AVX-512, the same Aᵀ·B with few rows and a wide B (dW 100x1000): B's rows as vectors
    // of C's rows, A's as broadcasts, nothing packed in a pass of its own (dW 100x1000 over
    // K = 2048, 2 threads, 5-10% faster than the task-local-B order, 1 thread 23%)
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512
        && ta
        && !tb
        && k > KC
        && !block_outer
        && alpha == 1.0
        && atb_wide::suits(m, n, threads)
    {
        atb_wide::atb_wide(m, n, k, alpha, a, b, beta, c, epi, b_col_sums);
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
                    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
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
                                    cp.wrapping_add(2 * MR * n),
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

thread_local! {
    static PACK: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}
