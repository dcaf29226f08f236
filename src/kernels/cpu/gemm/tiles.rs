//! Tile dispatch over the instruction sets: full tiles straight into C, partial ones through
//! a register tile; the portable micro-kernel.

use super::*;

/// Two full A panels (`a0`, `a1`, the same strides; rows 0-5 and 6-11 of C from `c`) against
/// one step of B panels, as [`pair_rows_for`] allows it: a pair of full B panels as one
/// 12 x 32 AVX-512 tile, a narrow last panel (≤ NR / 2 columns) as one 12 x 8 AVX2 pass
/// (12 independent FMA chains; the 6-row pass of [`avx2::kernel_strided_half`] waits on
/// the FMA latency). Each element is the same chain as in the one-panel paths, written back
/// the same way, so the same bits. `next`: the C tile the caller runs next (the 12 x 32
/// tile prefetches its lines; any address, it is never dereferenced).
///
/// # Safety
/// As [`avx2::tile`] for both A panels; `pair_rows_for(isa, np, cols)` must hold.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[inline]
pub(super) unsafe fn tile12(
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
    next: *const f32,
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
        avx512::tile12(kc, a0, a1, rs, cs, b, bs, c, ldc, next, alpha, beta);
    }
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
pub(super) unsafe fn tile_np(
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
pub(super) unsafe fn write_tile(
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
pub(super) fn portable_kernel(kc: usize, a: &[f32], b: &[f32], tile: &mut [f32; MR * NR]) {
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
