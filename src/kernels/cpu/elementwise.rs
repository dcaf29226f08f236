//! Element-wise and vector kernels on `wide::f32x8` with scalar tails, plus numerically stable
//! scalar functions. Large arrays are split over threads in fixed chunks (deterministic).

use super::gemm::Act;
use super::Isa;
use rayon::prelude::*;
use wide::{f32x8, i32x8, CmpGt};

const PAR_MIN: usize = 1 << 15;

#[inline]
fn load(x: &[f32]) -> f32x8 {
    f32x8::from(<[f32; 8]>::try_from(&x[..8]).unwrap())
}

/// Vector exp (Cephes-style range reduction + degree-6 polynomial), relative error ~2 ulp;
/// inputs are clamped to [-87.3, 88.3] (outputs stay finite and positive).
#[inline]
pub fn exp8(x: f32x8) -> f32x8 {
    let x = x.max(f32x8::splat(-87.3)).min(f32x8::splat(88.3));
    let n = (x * f32x8::splat(std::f32::consts::LOG2_E)).round();
    let r = x - n * f32x8::splat(0.693_359_4) - n * f32x8::splat(-2.121_944_4e-4);
    let mut p = f32x8::splat(1.987_569_1e-4);
    p = p.mul_add(r, f32x8::splat(1.398_199_9e-3));
    p = p.mul_add(r, f32x8::splat(8.333_452e-3));
    p = p.mul_add(r, f32x8::splat(4.166_579_6e-2));
    p = p.mul_add(r, f32x8::splat(1.666_666_5e-1));
    p = p.mul_add(r, f32x8::splat(0.5));
    let y = p * r * r + r + f32x8::splat(1.0);
    let ni: i32x8 = n.round_int();
    let bits: i32x8 = (ni + i32x8::splat(127)) << 23;
    y * bytemuck::cast::<i32x8, f32x8>(bits)
}

/// e^x as [`exp8`]'s range reduction and polynomial, but every multiply-add fused (two
/// FMAs for the reduction, Horner in FMAs, `p·r² + (r + 1)` in one): the exp inside the
/// vector [`Unary::Sigmoid`], 2.3x faster than the unfused form on AVX-512 and within
/// 1.2e-7 relative. Every path (AVX2, AVX-512, the portable lanes and the scalar tail)
/// performs exactly these operations, so all give the same bits.
#[inline]
fn exp_fused(x: f32) -> f32 {
    let x = x.clamp(-87.3, 88.3);
    let n = (x * std::f32::consts::LOG2_E).round_ties_even();
    let r = (-n).mul_add(0.693_359_4, x);
    let r = (-n).mul_add(-2.121_944_4e-4, r);
    let mut p = 1.987_569_1e-4f32;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 1.666_666_5e-1);
    p = p.mul_add(r, 0.5);
    let y = p.mul_add(r * r, r + 1.0);
    y * f32::from_bits(((n as i32 + 127) << 23) as u32)
}

/// The vector paths' sigmoid, lane by lane: `1 / (1 + e^(0 - x))` with [`exp_fused`]. A
/// quiet NaN comes back as a NaN.
#[inline]
fn sigmoid_lane(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    1.0 / (1.0 + exp_fused(0.0 - x))
}

#[inline]
fn sigmoid8(x: f32x8) -> f32x8 {
    f32x8::from(x.to_array().map(sigmoid_lane))
}

/// Odd numerator coefficients (x^1 .. x^13) and even denominator ones (x^0 .. x^6) of the
/// 13/6-degree rational fit of tanh on [-9, 9] published with Eigen
/// (`generic_fast_tanh_float`); beyond ±9, tanh rounds to ±1 in f32.
const TANH_P: [f32; 7] = [
    4.893_524_6e-3,
    6.372_619_3e-4,
    1.485_722_35e-5,
    5.122_297_3e-8,
    -8.604_672e-11,
    2.000_188e-13,
    -2.760_768_4e-16,
];
const TANH_Q: [f32; 4] = [4.893_525e-3, 2.268_434_7e-3, 1.185_347_1e-4, 1.198_258_4e-6];

/// tanh(x) as the rational fit [`TANH_P`] / [`TANH_Q`] on x clamped to [-9, 9], each
/// polynomial by Horner's rule in fused multiply-adds, then one division and a clamp of the
/// result to [-1, 1]: within 3 ulp of tanh over all of f32, odd, and accurate relative to
/// tanh near 0 too (the former `1 - 2 / (e^2x + 1)` cancelled there: tanh(1e-6) came out
/// 9.54e-7, 5% low). A quiet NaN is returned as it is. The vector paths perform exactly
/// these operations per lane, so every element and every instruction set gives the same bits.
#[inline]
pub fn tanh(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    let x = x.clamp(-9.0, 9.0);
    let x2 = x * x;
    let mut p = x2.mul_add(TANH_P[6], TANH_P[5]);
    for &c in TANH_P[..5].iter().rev() {
        p = p.mul_add(x2, c);
    }
    let q = x2
        .mul_add(TANH_Q[3], TANH_Q[2])
        .mul_add(x2, TANH_Q[1])
        .mul_add(x2, TANH_Q[0]);
    // the fit slightly overshoots 1 towards 9, where tanh rounds to 1 anyway
    ((p * x) / q).clamp(-1.0, 1.0)
}

/// [`tanh`] lane by lane (the portable path: `f32::mul_add` is a fused multiply-add on
/// every target, which `f32x8::mul_add` is not without the FMA feature).
#[inline]
fn tanh8(x: f32x8) -> f32x8 {
    f32x8::from(x.to_array().map(tanh))
}

/// Scalar stable sigmoid.
#[inline]
pub fn sigmoid(x: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// Scalar stable softplus: log(1 + e^x).
#[inline]
pub fn softplus(x: f32) -> f32 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

/// Scalar stable log-sigmoid: log σ(x) = -softplus(-x).
#[inline]
pub fn log_sigmoid(x: f32) -> f32 {
    -softplus(-x)
}

fn map_inplace(x: &mut [f32], v: impl Fn(f32x8) -> f32x8 + Sync, s: impl Fn(f32) -> f32 + Sync) {
    let run = |chunk: &mut [f32]| {
        let mut it = chunk.chunks_exact_mut(8);
        for c in &mut it {
            let r = v(load(c)).to_array();
            c.copy_from_slice(&r);
        }
        for e in it.into_remainder() {
            *e = s(*e);
        }
    };
    if x.len() >= PAR_MIN {
        x.par_chunks_mut(PAR_MIN / 4).for_each(run);
    } else {
        run(x);
    }
}

/// A transcendental element-wise function with a vector path on each instruction set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unary {
    /// e^x (inputs clamped to [-87.3, 88.3]).
    Exp,
    /// 1 / (1 + e^-x).
    Sigmoid,
    /// tanh(x).
    Tanh,
}

/// Apply `op` in place with the given instruction set. The AVX2 and AVX-512 paths perform
/// the portable path's operations in the same order (exp's products and sums not fused;
/// sigmoid's exp ([`exp_fused`]) and tanh fused, `f32::mul_add` per lane on the portable
/// path), so every instruction set gives the same bits. The tail that does not fill a vector
/// uses the same lane function for sigmoid and tanh, libm's `exp` for exp.
pub fn unary_inplace_with(isa: Isa, x: &mut [f32], op: Unary) {
    assert!(
        isa.is_available(),
        "element-wise: instruction set {} is not available on this CPU",
        isa.name()
    );
    let scalar = |v: f32| match op {
        Unary::Exp => v.clamp(-87.3, 88.3).exp(),
        Unary::Sigmoid => sigmoid_lane(v),
        Unary::Tanh => tanh(v),
    };
    let run = |chunk: &mut [f32]| {
        let n8 = chunk.len() / 8 * 8;
        let (body, tail) = chunk.split_at_mut(n8);
        #[cfg(target_arch = "x86_64")]
        let done = if isa == Isa::Avx512 {
            // SAFETY: AVX-512F (with AVX2 and FMA) is available (asserted on entry); `body`
            // holds whole 8-lane vectors.
            unsafe { avx::unary512(body, op) };
            true
        } else if isa.has_avx2() {
            // SAFETY: AVX2 and FMA are available (asserted on entry); `body` holds whole
            // vectors.
            unsafe { avx::unary(body, op) };
            true
        } else {
            false
        };
        #[cfg(not(target_arch = "x86_64"))]
        let done = false;
        if !done {
            let v = match op {
                Unary::Exp => exp8,
                Unary::Sigmoid => sigmoid8,
                Unary::Tanh => tanh8,
            };
            for c in body.chunks_exact_mut(8) {
                let r = v(load(c)).to_array();
                c.copy_from_slice(&r);
            }
        }
        for e in tail {
            *e = scalar(*e);
        }
    };
    if x.len() >= PAR_MIN {
        x.par_chunks_mut(PAR_MIN / 4).for_each(run);
    } else {
        run(x);
    }
}

/// In-place exp.
pub fn exp_inplace(x: &mut [f32]) {
    unary_inplace_with(Isa::detect(), x, Unary::Exp);
}

/// In-place sigmoid.
pub fn sigmoid_inplace(x: &mut [f32]) {
    unary_inplace_with(Isa::detect(), x, Unary::Sigmoid);
}

/// In-place tanh.
pub fn tanh_inplace(x: &mut [f32]) {
    unary_inplace_with(Isa::detect(), x, Unary::Tanh);
}

#[cfg(target_arch = "x86_64")]
mod avx {
    use super::Unary;
    use std::arch::x86_64::*;

    /// [`super::exp8`] on one AVX register, operation for operation.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn exp8(x: __m256) -> __m256 {
        let s = _mm256_set1_ps;
        let (mul, add, sub) = (_mm256_mul_ps, _mm256_add_ps, _mm256_sub_ps);
        let x = _mm256_min_ps(_mm256_max_ps(x, s(-87.3)), s(88.3));
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(mul(
            x,
            s(std::f32::consts::LOG2_E),
        ));
        let r = sub(sub(x, mul(n, s(0.693_359_4))), mul(n, s(-2.121_944_4e-4)));
        let mut p = s(1.987_569_1e-4);
        p = add(mul(p, r), s(1.398_199_9e-3));
        p = add(mul(p, r), s(8.333_452e-3));
        p = add(mul(p, r), s(4.166_579_6e-2));
        p = add(mul(p, r), s(1.666_666_5e-1));
        p = add(mul(p, r), s(0.5));
        let y = add(add(mul(mul(p, r), r), r), s(1.0));
        let ni = _mm256_cvtps_epi32(n);
        let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(ni, _mm256_set1_epi32(127)));
        mul(y, _mm256_castsi256_ps(bits))
    }

    /// [`super::exp_fused`] on one AVX register, operation for operation; the clamp lets a
    /// NaN through (max/min give their second operand when one is NaN).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn exp8_fused(x: __m256) -> __m256 {
        let s = _mm256_set1_ps;
        let x = _mm256_min_ps(s(88.3), _mm256_max_ps(s(-87.3), x));
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(x, s(std::f32::consts::LOG2_E)),
        );
        let r = _mm256_fnmadd_ps(n, s(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, s(-2.121_944_4e-4), r);
        let mut p = s(1.987_569_1e-4);
        p = _mm256_fmadd_ps(p, r, s(1.398_199_9e-3));
        p = _mm256_fmadd_ps(p, r, s(8.333_452e-3));
        p = _mm256_fmadd_ps(p, r, s(4.166_579_6e-2));
        p = _mm256_fmadd_ps(p, r, s(1.666_666_5e-1));
        p = _mm256_fmadd_ps(p, r, s(0.5));
        let y = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, s(1.0)));
        let ni = _mm256_cvtps_epi32(n);
        let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(ni, _mm256_set1_epi32(127)));
        _mm256_mul_ps(y, _mm256_castsi256_ps(bits))
    }

    /// [`super::exp_fused`] on one AVX-512 register, operation for operation.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn exp16_fused(x: __m512) -> __m512 {
        let s = _mm512_set1_ps;
        let x = _mm512_min_ps(s(88.3), _mm512_max_ps(s(-87.3), x));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, s(std::f32::consts::LOG2_E)),
        );
        let r = _mm512_fnmadd_ps(n, s(0.693_359_4), x);
        let r = _mm512_fnmadd_ps(n, s(-2.121_944_4e-4), r);
        let mut p = s(1.987_569_1e-4);
        p = _mm512_fmadd_ps(p, r, s(1.398_199_9e-3));
        p = _mm512_fmadd_ps(p, r, s(8.333_452e-3));
        p = _mm512_fmadd_ps(p, r, s(4.166_579_6e-2));
        p = _mm512_fmadd_ps(p, r, s(1.666_666_5e-1));
        p = _mm512_fmadd_ps(p, r, s(0.5));
        let y = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, s(1.0)));
        let ni = _mm512_cvtps_epi32(n);
        let bits = _mm512_slli_epi32::<23>(_mm512_add_epi32(ni, _mm512_set1_epi32(127)));
        _mm512_mul_ps(y, _mm512_castsi512_ps(bits))
    }

    /// [`super::exp_shifted_sum_with`] over whole vectors: returns the eight lane sums.
    ///
    /// # Safety
    /// The CPU has AVX2; `x.len()` is a multiple of 8.
    #[target_feature(enable = "avx2")]
    pub unsafe fn exp_shifted_sum(x: &mut [f32], shift: f32) -> [f32; 8] {
        debug_assert!(x.len().is_multiple_of(8));
        let sh = _mm256_set1_ps(shift);
        let mut acc = _mm256_setzero_ps();
        let p = x.as_mut_ptr();
        for i in (0..x.len()).step_by(8) {
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), sh));
            _mm256_storeu_ps(p.add(i), e);
            acc = _mm256_add_ps(acc, e);
        }
        let mut out = [0f32; 8];
        _mm256_storeu_ps(out.as_mut_ptr(), acc);
        out
    }

    /// `g *= act'` through the output `y`, as the portable path: relu `g & (y > 0)`, tanh
    /// `g * (1 - y*y)`, sigmoid `(g * y) * (1 - y)`.
    ///
    /// # Safety
    /// The CPU has AVX2; `y` and `g` have the same length, a multiple of 8.
    #[target_feature(enable = "avx2")]
    pub unsafe fn activation_backward(y: &[f32], g: &mut [f32], act: crate::kernels::cpu::Act) {
        use crate::kernels::cpu::Act;
        debug_assert!(y.len() == g.len() && y.len().is_multiple_of(8));
        let one = _mm256_set1_ps(1.0);
        let zero = _mm256_setzero_ps();
        let (yp, gp) = (y.as_ptr(), g.as_mut_ptr());
        for i in (0..y.len()).step_by(8) {
            let yv = _mm256_loadu_ps(yp.add(i));
            let gv = _mm256_loadu_ps(gp.add(i));
            let r = match act {
                Act::None => gv,
                Act::Relu => _mm256_and_ps(gv, _mm256_cmp_ps::<_CMP_GT_OQ>(yv, zero)),
                Act::Tanh => _mm256_mul_ps(gv, _mm256_sub_ps(one, _mm256_mul_ps(yv, yv))),
                Act::Sigmoid => _mm256_mul_ps(_mm256_mul_ps(gv, yv), _mm256_sub_ps(one, yv)),
            };
            _mm256_storeu_ps(gp.add(i), r);
        }
    }

    /// [`activation_backward`] 16 lanes at a time (a last half vector on AVX2): the same
    /// operations per lane, so the same bits (ReLU zeroes a lane by mask, giving +0.0 as the
    /// AND does).
    ///
    /// # Safety
    /// The CPU has AVX-512F and AVX2; `y` and `g` have the same length, a multiple of 8.
    #[target_feature(enable = "avx512f,avx2")]
    pub unsafe fn activation_backward512(y: &[f32], g: &mut [f32], act: crate::kernels::cpu::Act) {
        use crate::kernels::cpu::Act;
        debug_assert!(y.len() == g.len() && y.len().is_multiple_of(8));
        let n16 = y.len() / 16 * 16;
        let one = _mm512_set1_ps(1.0);
        let zero = _mm512_setzero_ps();
        let (yp, gp) = (y.as_ptr(), g.as_mut_ptr());
        for i in (0..n16).step_by(16) {
            let yv = _mm512_loadu_ps(yp.add(i));
            let gv = _mm512_loadu_ps(gp.add(i));
            let r = match act {
                Act::None => gv,
                Act::Relu => _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_GT_OQ>(yv, zero), gv),
                Act::Tanh => _mm512_mul_ps(gv, _mm512_sub_ps(one, _mm512_mul_ps(yv, yv))),
                Act::Sigmoid => _mm512_mul_ps(_mm512_mul_ps(gv, yv), _mm512_sub_ps(one, yv)),
            };
            _mm512_storeu_ps(gp.add(i), r);
        }
        if n16 < y.len() {
            activation_backward(&y[n16..], &mut g[n16..], act);
        }
    }

    /// [`super::tanh`] on one AVX register, operation for operation (a quiet NaN lane comes
    /// back as it came).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn tanh8(v: __m256) -> __m256 {
        use super::{TANH_P, TANH_Q};
        let s = _mm256_set1_ps;
        // max/min give their second operand when one is NaN: a NaN lane stays that NaN
        // through every step (a blend would be compiled into a masked store, slow on AMD)
        let x = _mm256_min_ps(s(9.0), _mm256_max_ps(s(-9.0), v));
        let x2 = _mm256_mul_ps(x, x);
        let mut p = _mm256_fmadd_ps(x2, s(TANH_P[6]), s(TANH_P[5]));
        for &c in TANH_P[..5].iter().rev() {
            p = _mm256_fmadd_ps(p, x2, s(c));
        }
        let mut q = _mm256_fmadd_ps(x2, s(TANH_Q[3]), s(TANH_Q[2]));
        q = _mm256_fmadd_ps(q, x2, s(TANH_Q[1]));
        q = _mm256_fmadd_ps(q, x2, s(TANH_Q[0]));
        let t = _mm256_div_ps(_mm256_mul_ps(p, x), q);
        _mm256_min_ps(s(1.0), _mm256_max_ps(s(-1.0), t))
    }

    /// [`tanh8`] on one AVX-512 register, operation for operation: the same bits lane by
    /// lane, twice the lanes per instruction (the rational fit is FMA-bound on AVX2).
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn tanh16(v: __m512) -> __m512 {
        use super::{TANH_P, TANH_Q};
        let s = _mm512_set1_ps;
        let x = _mm512_min_ps(s(9.0), _mm512_max_ps(s(-9.0), v));
        let x2 = _mm512_mul_ps(x, x);
        let mut p = _mm512_fmadd_ps(x2, s(TANH_P[6]), s(TANH_P[5]));
        for &c in TANH_P[..5].iter().rev() {
            p = _mm512_fmadd_ps(p, x2, s(c));
        }
        let mut q = _mm512_fmadd_ps(x2, s(TANH_Q[3]), s(TANH_Q[2]));
        q = _mm512_fmadd_ps(q, x2, s(TANH_Q[1]));
        q = _mm512_fmadd_ps(q, x2, s(TANH_Q[0]));
        let t = _mm512_div_ps(_mm512_mul_ps(p, x), q);
        _mm512_min_ps(s(1.0), _mm512_max_ps(s(-1.0), t))
    }

    /// [`exp8`] on one AVX-512 register, operation for operation (the same bits per lane).
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn exp16(x: __m512) -> __m512 {
        let s = _mm512_set1_ps;
        let (mul, add, sub) = (_mm512_mul_ps, _mm512_add_ps, _mm512_sub_ps);
        let x = _mm512_min_ps(_mm512_max_ps(x, s(-87.3)), s(88.3));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(mul(
            x,
            s(std::f32::consts::LOG2_E),
        ));
        let r = sub(sub(x, mul(n, s(0.693_359_4))), mul(n, s(-2.121_944_4e-4)));
        let mut p = s(1.987_569_1e-4);
        p = add(mul(p, r), s(1.398_199_9e-3));
        p = add(mul(p, r), s(8.333_452e-3));
        p = add(mul(p, r), s(4.166_579_6e-2));
        p = add(mul(p, r), s(1.666_666_5e-1));
        p = add(mul(p, r), s(0.5));
        let y = add(add(mul(mul(p, r), r), r), s(1.0));
        let ni = _mm512_cvtps_epi32(n);
        let bits = _mm512_slli_epi32::<23>(_mm512_add_epi32(ni, _mm512_set1_epi32(127)));
        mul(y, _mm512_castsi512_ps(bits))
    }

    /// `op` over `x` (length a multiple of 8): 16 lanes at a time with the same operations
    /// per lane as [`unary`] (so the same bits), a last half vector by [`unary`]. The
    /// polynomial and rational fits are FMA-port-bound on AVX2: twice the lanes per
    /// instruction is 1.45x faster for tanh over 2048 x 1000.
    ///
    /// # Safety
    /// The CPU has AVX-512F, AVX2 and FMA.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn unary512(x: &mut [f32], op: Unary) {
        debug_assert!(x.len().is_multiple_of(8));
        let n16 = x.len() / 16 * 16;
        let one = _mm512_set1_ps(1.0);
        let p = x.as_mut_ptr();
        for i in (0..n16).step_by(16) {
            let v = _mm512_loadu_ps(p.add(i));
            let r = match op {
                Unary::Exp => exp16(v),
                Unary::Sigmoid => {
                    let e = exp16_fused(_mm512_sub_ps(_mm512_setzero_ps(), v));
                    _mm512_div_ps(one, _mm512_add_ps(one, e))
                }
                Unary::Tanh => tanh16(v),
            };
            _mm512_storeu_ps(p.add(i), r);
        }
        unary(&mut x[n16..], op);
    }

    /// `op` over `x` (length a multiple of 8).
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn unary(x: &mut [f32], op: Unary) {
        debug_assert!(x.len().is_multiple_of(8));
        let one = _mm256_set1_ps(1.0);
        let p = x.as_mut_ptr();
        for i in (0..x.len()).step_by(8) {
            let v = _mm256_loadu_ps(p.add(i));
            let r = match op {
                Unary::Exp => exp8(v),
                Unary::Sigmoid => {
                    let e = exp8_fused(_mm256_sub_ps(_mm256_setzero_ps(), v));
                    _mm256_div_ps(one, _mm256_add_ps(one, e))
                }
                Unary::Tanh => tanh8(v),
            };
            _mm256_storeu_ps(p.add(i), r);
        }
    }
}

/// `x_i ← exp(x_i − shift)` (exp as [`exp8`], inputs clamped likewise) and the sum of the
/// results: eight f32 lane sums over the whole vectors, then the lanes and the tail in f64, in
/// a fixed order (should a lane sum overflow f32, the terms are summed again in f64). One
/// thread (callers parallelize over rows); every instruction set gives the same bits.
pub fn exp_shifted_sum_with(isa: Isa, x: &mut [f32], shift: f32) -> f64 {
    let n8 = x.len() / 8 * 8;
    let (body, tail) = x.split_at_mut(n8);
    #[cfg(target_arch = "x86_64")]
    let lanes: Option<[f32; 8]> = if isa.has_avx2() {
        assert!(
            isa.is_available(),
            "element-wise: instruction set {} is not available on this CPU",
            isa.name()
        );
        // SAFETY: AVX2 is available (asserted); `body` holds whole vectors.
        Some(unsafe { avx::exp_shifted_sum(body, shift) })
    } else {
        None
    };
    #[cfg(not(target_arch = "x86_64"))]
    let lanes: Option<[f32; 8]> = {
        let _ = isa;
        None
    };
    let lanes = lanes.unwrap_or_else(|| {
        let sh = f32x8::splat(shift);
        let mut acc = f32x8::ZERO;
        for c in body.chunks_exact_mut(8) {
            let e = exp8(load(c) - sh);
            c.copy_from_slice(&e.to_array());
            acc += e;
        }
        acc.to_array()
    });
    if lanes.iter().any(|v| v.is_infinite()) {
        // each term is finite (inputs clamped): only the f32 lane sums overflowed
        for v in tail.iter_mut() {
            *v = (*v - shift).clamp(-87.3, 88.3).exp();
        }
        return body.iter().chain(tail.iter()).map(|&v| v as f64).sum();
    }
    let mut z: f64 = lanes.iter().map(|&v| v as f64).sum();
    for v in tail {
        *v = (*v - shift).clamp(-87.3, 88.3).exp();
        z += *v as f64;
    }
    z
}

/// In-place ReLU.
pub fn relu_inplace(x: &mut [f32]) {
    map_inplace(x, |v| v.max(f32x8::ZERO), |v| v.max(0.0));
}

/// Apply an activation in place.
pub fn activate_inplace(x: &mut [f32], act: Act) {
    match act {
        Act::None => {}
        Act::Relu => relu_inplace(x),
        Act::Tanh => tanh_inplace(x),
        Act::Sigmoid => sigmoid_inplace(x),
    }
}

/// Backward of an activation given its *output* `y`: `g *= act'(pre)` expressed through y
/// (relu: y > 0; tanh: 1 - y²; sigmoid: y (1 - y)). With `Act::None`, `g` is left as is and
/// `y` is not read (it may be empty).
pub fn activation_backward(y: &[f32], g: &mut [f32], act: Act) {
    if act == Act::None {
        return;
    }
    assert_eq!(y.len(), g.len());
    if y.len() >= PAR_MIN {
        y.par_chunks(PAR_MIN / 4)
            .zip(g.par_chunks_mut(PAR_MIN / 4))
            .for_each(|(yc, gc)| activation_backward_seq(yc, gc, act));
    } else {
        activation_backward_seq(y, g, act);
    }
}

/// [`activation_backward`] on the calling thread (also the GEMM epilogue's
/// [`super::gemm::Epilogue::grad_of`]): the same operations in the same order, so a fused
/// backward gives the same bits as the separate pass.
pub fn activation_backward_seq(y: &[f32], g: &mut [f32], act: Act) {
    activation_backward_seq_with(Isa::detect(), y, g, act);
}

/// [`activation_backward_seq`] with the given instruction set. Every instruction set performs
/// the same operations in the same order (products and differences, not fused), so all give
/// the same bits; the tail that does not fill a vector uses the scalar expression.
pub fn activation_backward_seq_with(isa: Isa, y: &[f32], g: &mut [f32], act: Act) {
    if act == Act::None {
        return;
    }
    assert_eq!(
        y.len(),
        g.len(),
        "activation backward: y and g differ in length"
    );
    let n8 = y.len() / 8 * 8;
    #[cfg(target_arch = "x86_64")]
    let done = if isa.has_avx2() {
        assert!(
            isa.is_available(),
            "element-wise: instruction set {} is not available on this CPU",
            isa.name()
        );
        // SAFETY: AVX2 (and AVX-512F for `Isa::Avx512`) is available (asserted); both
        // slices hold `n8` elements.
        unsafe {
            if isa == Isa::Avx512 {
                avx::activation_backward512(&y[..n8], &mut g[..n8], act)
            } else {
                avx::activation_backward(&y[..n8], &mut g[..n8], act)
            }
        };
        true
    } else {
        false
    };
    #[cfg(not(target_arch = "x86_64"))]
    let done = {
        let _ = isa;
        false
    };
    if !done {
        let one = f32x8::splat(1.0);
        let f = |yv: f32x8, gv: f32x8| -> f32x8 {
            match act {
                Act::None => gv,
                Act::Relu => gv & yv.cmp_gt(f32x8::ZERO),
                Act::Tanh => gv * (one - yv * yv),
                Act::Sigmoid => gv * yv * (one - yv),
            }
        };
        for i in (0..n8).step_by(8) {
            let r = f(load(&y[i..]), load(&g[i..])).to_array();
            g[i..i + 8].copy_from_slice(&r);
        }
    }
    for i in n8..y.len() {
        let (yv, gv) = (y[i], g[i]);
        g[i] = match act {
            Act::None => gv,
            Act::Relu => {
                if yv > 0.0 {
                    gv
                } else {
                    0.0
                }
            }
            Act::Tanh => gv * (1.0 - yv * yv),
            Act::Sigmoid => gv * yv * (1.0 - yv),
        };
    }
}

/// `y += a * x`.
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len());
    let av = f32x8::splat(a);
    let n8 = x.len() / 8 * 8;
    for i in (0..n8).step_by(8) {
        let r = av.mul_add(load(&x[i..]), load(&y[i..])).to_array();
        y[i..i + 8].copy_from_slice(&r);
    }
    for i in n8..x.len() {
        y[i] += a * x[i];
    }
}

/// `x *= a`.
pub fn scale(a: f32, x: &mut [f32]) {
    map_inplace(x, |v| v * f32x8::splat(a), |v| v * a);
}

/// Dot product (8 lanes, then a fixed-order horizontal sum: deterministic).
pub fn dot(x: &[f32], y: &[f32]) -> f32 {
    assert_eq!(x.len(), y.len());
    let n8 = x.len() / 8 * 8;
    let mut acc = f32x8::ZERO;
    for i in (0..n8).step_by(8) {
        acc = load(&x[i..]).mul_add(load(&y[i..]), acc);
    }
    let mut s = acc.reduce_add();
    for i in n8..x.len() {
        s += x[i] * y[i];
    }
    s
}

/// Row-wise dot products of two row-major `rows x d` matrices.
pub fn row_dots(x: &[f32], y: &[f32], d: usize, out: &mut [f32]) {
    assert_eq!(x.len(), y.len());
    assert_eq!(x.len(), out.len() * d);
    if d == 0 {
        out.fill(0.0);
        return;
    }
    out.par_iter_mut()
        .with_min_len((64 * 1024 / d).max(1))
        .enumerate()
        .for_each(|(r, o)| *o = dot(&x[r * d..(r + 1) * d], &y[r * d..(r + 1) * d]));
}

/// Sum of all elements (f64 accumulation, fixed order).
pub fn sum(x: &[f32]) -> f64 {
    x.iter().map(|&v| v as f64).sum()
}

/// Column sums of a row-major `rows x cols` matrix into `out` (overwritten).
pub fn col_sums(x: &[f32], cols: usize, out: &mut [f32]) {
    assert_eq!(out.len(), cols);
    out.fill(0.0);
    if cols == 0 {
        return;
    }
    for row in x.chunks_exact(cols) {
        axpy(1.0, row, out);
    }
}

/// Gather rows: `out[r] = table[ids[r]]` (rows of width d).
pub fn gather_rows(table: &[f32], d: usize, ids: &[u32], out: &mut [f32]) {
    assert_eq!(out.len(), ids.len() * d);
    if d == 0 {
        return;
    }
    // a task copies at least ~128 KiB: finer grains cost more in scheduling than they save
    let min_rows = (32 * 1024 / d).max(1);
    out.par_chunks_mut(d)
        .with_min_len(min_rows)
        .zip(ids.par_iter())
        .for_each(|(o, &id)| {
            let s = id as usize * d;
            o.copy_from_slice(&table[s..s + d]);
        });
}

/// Scatter-add rows: `table[ids[r]] += src[r]` (the gradient of [`gather_rows`]); repeated
/// ids accumulate in the order given (deterministic).
pub fn scatter_add_rows(table: &mut [f32], d: usize, ids: &[u32], src: &[f32]) {
    assert_eq!(src.len(), ids.len() * d);
    for (r, &id) in ids.iter().enumerate() {
        let s = id as usize * d;
        axpy(1.0, &src[r * d..(r + 1) * d], &mut table[s..s + d]);
    }
}
