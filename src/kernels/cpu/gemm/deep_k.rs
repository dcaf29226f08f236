//! The deep-K order: B packed once to its full depth, each task running its tiles through
//! every K block while they stay in cache (see [`deep_k()`]).

use super::*;

/// The product when K spans several KC blocks (AVX2, A read in place, one N block): B is
/// packed once to its full depth (each NR-column panel contiguous over all of K), and every
/// task runs through the K blocks itself, so its tile of C stays in cache from the first block
/// to the last instead of being written back and re-read once per block. The blocks are
/// summed in the same order as by the block-outer loop, so the bits are the same.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
pub(super) fn deep_k(
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
                                    // B steps inner: the next tile is to the right
                                    cptr.get().wrapping_add(ip * MR * n + (jp + np) * NR),
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
                                    cptr.get().wrapping_add((ip + 2) * MR * n + jp * NR),
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
