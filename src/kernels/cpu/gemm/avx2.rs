//! AVX2 + FMA micro-kernels (6 x 16 tiles in 12 accumulators, 12 x 8 for a narrow last panel).

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
        (true, true) => kernel_strided_ex::<true, true>(kc, a, rs, cs, pf, b, &mut tile, packed),
        (false, true) => kernel_strided_ex::<false, true>(kc, a, rs, cs, pf, b, &mut tile, packed),
        (true, false) => {
            kernel_strided_ex::<true, false>(kc, a, rs, cs, pf, b, &mut tile, std::ptr::null_mut())
        }
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
            (dst.add(4) as *mut u64).write_unaligned((ap.add(4) as *const u64).read_unaligned());
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
