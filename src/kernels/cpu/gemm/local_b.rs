//! The task-local-B order for Aᵀ read in place with a B too large for the deep-K order
//! (see [`local_b()`]).

use super::*;

thread_local! {
    static TASK_B: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    static TASK_A: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The product for Aᵀ read in place (A stored k x m, m ≤ [`LOCAL_B_MAX_M`]) over several K
/// blocks when B is too large for [`deep_k()`]: one parallel region over chunks of B's column
/// panels, no barrier per K block. Each task packs its own panels block by block (each of
/// B's elements is packed once), runs them against every A panel (B panel outer, in L1; A's
/// K block in L2; an A-panel-outer order was slower here), and keeps its columns of C in
/// cache across the blocks. Same sums in the same order as the block-outer loop, so the
/// same bits, column sums of op(B) included.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
pub(super) fn local_b(
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
                                cptr.get().wrapping_add((ip + 2) * MR * n + jp * NR),
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
