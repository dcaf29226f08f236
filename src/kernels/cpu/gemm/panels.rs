//! Packing of A and B panels, and the steps (pairs of panels) the tiles walk through.

use super::*;

/// For the full-depth orders: pack the partial last MR-row panel of op(A) (when m is not a
/// multiple of MR) to its full depth into `ap`.
#[cfg(target_arch = "x86_64")]
pub(super) fn pack_a_tail(a: &[f32], ta: bool, m: usize, k: usize, ap: &mut Vec<f32>) {
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
pub(super) unsafe fn a_panel(
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
pub(super) fn pack_b_panels(
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
pub(super) fn add_panel_col_sums(s: &mut [f32], d: &[f32], kc: usize) {
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
pub(super) fn panel_steps(
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
pub(super) fn pair_rows_for(isa: Isa, np: usize, cols: usize) -> bool {
    (isa == Isa::Avx512 && np == 2 && cols == 2 * NR) || (isa.has_avx2() && cols <= NR / 2)
}

/// Row panels `ip0..ip1` of an A with `m` rows as steps `(ip, mp)`: with `pair`, pairs of
/// full panels (`mp` = 2, one 12 x 32 tile against a pair of B panels, see
/// [`avx512::tile12`]), else one panel at a time.
pub(super) fn row_steps(
    pair: bool,
    ip0: usize,
    ip1: usize,
    m: usize,
) -> impl Iterator<Item = (usize, usize)> {
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

#[allow(clippy::too_many_arguments)]
pub(super) fn pack_a(
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
pub(super) fn pack_b(
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
