//! AVX-512F micro-kernels: 6 x 32 and 12 x 32 tiles over pairs of B panels.

use super::{MR, NR};
use std::arch::x86_64::*;

/// Runs `$step` `$kc` times; the first 3·`$rows` runs each first prefetch one cache line of
/// the 32-column tile of C at `$next` (`$rows` rows `$ldc` floats apart; 128 bytes a row,
/// so at most 3 lines): the tile the caller writes next, so that its stores do not all miss
/// at once. A prefetch never faults: `$next` may point anywhere.
macro_rules! k_steps_prefetching_c {
    ($kc:expr, $rows:expr, $next:expr, $ldc:expr, $step:expr) => {
        let ahead = $kc.min(3 * $rows) / 3;
        for r in 0..ahead {
            for off in [0, 16, 31] {
                _mm_prefetch::<_MM_HINT_T0>($next.wrapping_add(r * $ldc + off) as *const i8);
                $step;
            }
        }
        for _ in 3 * ahead..$kc {
            $step;
        }
    };
}
pub(super) use k_steps_prefetching_c;

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
/// The first 36 K steps each prefetch one cache line of the 12 x 32 tile of C at `next`
/// (row stride `ldc`), the one the caller runs next (12 rows below in the row-inner loops;
/// past a block's last rows the lines are simply not used; a prefetch never faults, so
/// `next` may point anywhere): 12 rows of 128 bytes touch at most 3 lines each.
/// Its C lines are then in L1 when the tile is stored, not missed by 24 stores at once:
/// 2048 x 1000 products over K = 100-138, 2 threads, 316-332 → 335-360 GFLOP/s; no change
/// at K = 200-256.
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
    next: *const f32,
    alpha: f32,
    beta: f32,
) {
    let mut acc = [[_mm512_setzero_ps(); 2]; 2 * MR];
    let (mut p0, mut p1) = (a0, a1);
    let mut bp = b;
    macro_rules! step {
        () => {
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
        };
    }
    k_steps_prefetching_c!(kc, 2 * MR, next, ldc, step!());
    let va = _mm512_set1_ps(alpha);
    let vb = _mm512_set1_ps(beta);
    for (r, row) in acc.iter().enumerate() {
        for (q, &v) in row.iter().enumerate() {
            write_back(c.add(r * ldc + q * NR), v, va, vb, beta);
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
            (dst.add(4) as *mut u64).write_unaligned((ap.add(4) as *const u64).read_unaligned());
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
            write_back(c.add(r * ldc + q * NR), v, va, vb, beta);
        }
    }
}

/// The write-back of every AVX-512 tile: `alpha * acc` into `p` when beta = 0 (`p` not
/// read), else `alpha * acc + beta * p` in one fused multiply-add over `beta * p` (`va`,
/// `vb`: alpha and beta broadcast). The AVX2 tiles' instructions per lane, so the same bits.
///
/// # Safety
/// AVX-512F is present; `p` is valid for 16 floats.
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) unsafe fn write_back(p: *mut f32, acc: __m512, va: __m512, vb: __m512, beta: f32) {
    let out = if beta == 0.0 {
        _mm512_mul_ps(va, acc)
    } else {
        _mm512_fmadd_ps(va, acc, _mm512_mul_ps(vb, _mm512_loadu_ps(p)))
    };
    _mm512_storeu_ps(p, out);
}

/// [`write_back`] on the lanes of `mask` only (the others of `p` neither read nor written).
///
/// # Safety
/// AVX-512F is present; `p` is valid for the lanes of `mask`.
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) unsafe fn write_back_masked(
    p: *mut f32,
    mask: __mmask16,
    acc: __m512,
    va: __m512,
    vb: __m512,
    beta: f32,
) {
    let out = if beta == 0.0 {
        _mm512_mul_ps(va, acc)
    } else {
        _mm512_fmadd_ps(va, acc, _mm512_mul_ps(vb, _mm512_maskz_loadu_ps(mask, p)))
    };
    _mm512_mask_storeu_ps(p, mask, out);
}
