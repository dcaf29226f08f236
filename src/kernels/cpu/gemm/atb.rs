//! `C = alpha * Aᵀ·B + beta * C` on AVX-512 with both operands read where they lie (A stored
//! k x m, B stored k x n, both row-major): the weight gradient `dW = Xᵀ·dY` of a layer,
//! whose operands are both batch-major.
//!
//! Row k of A holds 32 consecutive rows of C's strip as two 512-bit vectors, and row k of B
//! the columns of C as scalars to broadcast: a 32 x 12 tile of C is 24 accumulators, each a
//! column of the tile. Nothing is packed but the strip's K block of A (a plain copy of 128
//! bytes per step, so that it stays in L1 whatever m's stride), B is read in place (with a
//! prefetch, its stride being beyond the hardware's), and the tile goes through a transposed
//! buffer into C once all K blocks are summed.
//!
//! The sums are those of the packed GEMM, element for element: per KC block a chain of
//! fused multiply-adds from zero in K order (`a·b` is `b·a`, exactly), then
//! `alpha * acc` into C on the first block (`alpha * acc + beta * C` when beta ≠ 0) and
//! `alpha * acc + C` on the later ones, the same instructions lane by lane. So every path
//! gives the same bits; the column sums of B are summed row by row from zero, as packing
//! sums them.

use super::avx512::write_back;
use super::{epilogue_region, Epilogue, SendPtr, KC};
use rayon::prelude::*;
use std::arch::x86_64::*;

/// Rows of C per strip (two 512-bit vectors).
const SI: usize = 32;
/// Columns of C per full tile.
const SJ: usize = 12;
/// How many K steps ahead B's rows are prefetched.
const PF_B: usize = 12;

thread_local! {
    static SHARED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    static BUF: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// Whether C's rows fill the 32-row strips well enough (at most 1/16 of the rows computed
/// go to waste): 1000 rows (32 strips, the last of 8 rows) and 128 do, 100 and 138 do not
/// (the 6-row panels of the packed GEMM are faster there).
pub fn suits(m: usize) -> bool {
    m > 0 && m.div_ceil(SI) * SI - m <= m / 16
}

/// `C (m x n) = alpha * Aᵀ·B + beta * C` with A stored k x m and B k x n; the epilogue
/// applied once the product is done; `b_col_sums` (length n, zeroed by the caller) gets
/// the column sums of B. Shapes are checked by the caller.
///
/// # Panics
/// If the CPU lacks AVX-512F.
#[allow(clippy::too_many_arguments)]
pub fn atb(
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
    assert!(
        std::arch::is_x86_feature_detected!("avx512f"),
        "gemm: the AᵀB kernel needs AVX-512F"
    );
    assert!(a.len() >= k * m && b.len() >= k * n && c.len() >= m * n);
    let threads = rayon::current_num_threads().max(1);
    let strips = m.div_ceil(SI);
    let tiles = n.div_ceil(SJ);
    // about four tasks per thread: a strip each where strips are many; where they are few,
    // all strips in every task and B's columns in chunks, so that each K block of a chunk of
    // B is read from L2 by all strips in turn rather than streamed once per strip
    let target = 4 * threads;
    let (group, chunks) = if strips >= target || tiles < 2 * target {
        (1, 1)
    } else {
        (strips, target.min(tiles))
    };
    let per = tiles.div_ceil(chunks);
    let chunks = tiles.div_ceil(per);
    let groups = strips.div_ceil(group);
    // with several column chunks, every chunk's task would copy each strip's blocks of A
    // again: copy all of A once, strip by strip (kc x 32 per block), and share it
    let mut shared = SHARED.with(|p| std::mem::take(&mut *p.borrow_mut()));
    if chunks > 1 {
        shared.resize(strips * k * SI, 0.0);
        shared
            .par_chunks_mut(k * SI)
            .enumerate()
            .for_each(|(s, dst)| {
                let rows = SI.min(m - s * SI);
                // SAFETY: AVX-512F is present; A's k rows hold columns s*SI..s*SI+rows.
                unsafe { copy_strip(a[s * SI..].as_ptr(), m, k, rows, dst) };
            });
    }
    let shared_a = &shared;
    let cptr = SendPtr(c.as_mut_ptr());
    let sptr = b_col_sums.map(|s| SendPtr(s.as_mut_ptr()));
    (0..groups * chunks).into_par_iter().for_each(|task| {
        let (g, ch) = (task / chunks, task % chunks);
        let (s0, s1) = (g * group, (g * group + group).min(strips));
        let (c0, c1) = (ch * per * SJ, ((ch + 1) * per * SJ).min(n));
        let w = c1 - c0;
        let (mut abuf, mut tbuf) = BUF.with(|p| std::mem::take(&mut *p.borrow_mut()));
        if chunks == 1 {
            abuf.resize(SI * KC, 0.0);
        }
        // the tiles' columns of C (strip by strip, column by column, SI rows each)
        tbuf.resize((s1 - s0) * w * SI, 0.0);
        let rows_of = |s: usize| (s * SI, (s * SI + SI).min(m));
        if beta != 0.0 {
            // C transposed, for the first block's beta * C
            for s in s0..s1 {
                let (i0, i1) = rows_of(s);
                let t = &mut tbuf[(s - s0) * w * SI..(s - s0 + 1) * w * SI];
                for j in c0..c1 {
                    for i in i0..i1 {
                        t[(j - c0) * SI + i - i0] = c[i * n + j];
                    }
                }
            }
        }
        for pc in (0..k).step_by(KC) {
            let kc = KC.min(k - pc);
            let beta_eff = if pc == 0 { beta } else { 1.0 };
            for s in s0..s1 {
                let (i0, i1) = rows_of(s);
                let rows = i1 - i0;
                let ablock = if chunks > 1 {
                    shared_a[(s * k + pc) * SI..].as_ptr()
                } else {
                    // SAFETY: AVX-512F is present; rows pc..pc+kc of A hold columns i0..i1.
                    unsafe { copy_strip(a[(pc * m + i0)..].as_ptr(), m, kc, rows, &mut abuf) };
                    abuf.as_ptr()
                };
                let t = tbuf[(s - s0) * w * SI..].as_mut_ptr();
                for j in (c0..c1).step_by(SJ) {
                    let cols = SJ.min(c1 - j);
                    // strip 0's pass also sums B's columns (its tasks own disjoint columns)
                    let sums = match sptr {
                        Some(sp) if s == 0 => sp.get().wrapping_add(j),
                        _ => std::ptr::null_mut(),
                    };
                    // SAFETY: AVX-512F is present (asserted); A's copy holds kc steps of
                    // SI, B's rows pc..pc+kc hold columns j..j+cols; the strip's tile
                    // buffer holds the chunk's columns (prefetches past B's end do not
                    // fault).
                    unsafe {
                        tile(
                            cols,
                            kc,
                            ablock,
                            b.as_ptr().add(pc * n + j),
                            n,
                            t.add((j - c0) * SI),
                            alpha,
                            beta_eff,
                            sums,
                        );
                    }
                }
            }
        }
        // SAFETY: this task alone owns rows s0*SI..s1*SI, columns c0..c1 of C.
        unsafe {
            let cp = cptr.get();
            for s in s0..s1 {
                let (i0, i1) = rows_of(s);
                let t = &tbuf[(s - s0) * w * SI..(s - s0 + 1) * w * SI];
                store_transposed(t, w, i1 - i0, cp.add(i0 * n + c0), n);
            }
            epilogue_region(cp, n, s0 * SI..(s1 * SI).min(m), c0..c1, epi);
        }
        BUF.with(|p| *p.borrow_mut() = (abuf, tbuf));
    });
    SHARED.with(|p| *p.borrow_mut() = shared);
}

/// Rows 0..kc of a strip of A (`rows` ≤ 32 values from `a`, rows `lda` apart) into `dst`
/// as kc rows of 32 floats, zero past `rows`.
///
/// # Safety
/// AVX-512F is present; `a` is valid for kc rows of `rows` floats; `dst` holds kc x 32.
#[target_feature(enable = "avx512f")]
unsafe fn copy_strip(a: *const f32, lda: usize, kc: usize, rows: usize, dst: &mut [f32]) {
    assert!(dst.len() >= kc * SI && rows <= SI);
    let m0 = if rows >= 16 {
        0xffff
    } else {
        (1u32 << rows) - 1
    } as __mmask16;
    let m1 = if rows >= SI {
        0xffff
    } else {
        (1u32 << rows.saturating_sub(16)) - 1
    } as __mmask16;
    let d = dst.as_mut_ptr();
    for p in 0..kc {
        let src = a.add(p * lda);
        _mm512_storeu_ps(d.add(p * SI), _mm512_maskz_loadu_ps(m0, src));
        _mm512_storeu_ps(d.add(p * SI + 16), _mm512_maskz_loadu_ps(m1, src.add(16)));
    }
}

/// C's `rows x w` block at `c` (row stride `ldc`) from the tile buffer `t` (w columns of 32
/// floats): 16 columns at a time gathered per row, the rest one by one.
///
/// # Safety
/// AVX-512F is present; `c` is valid for that block; `t` holds w x 32 floats.
#[target_feature(enable = "avx512f")]
unsafe fn store_transposed(t: &[f32], w: usize, rows: usize, c: *mut f32, ldc: usize) {
    assert!(t.len() >= w * SI && rows <= SI);
    let idx = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(SI as i32),
    );
    let w16 = w / 16 * 16;
    for i in 0..rows {
        let row = c.add(i * ldc);
        for j in (0..w16).step_by(16) {
            let v = _mm512_i32gather_ps::<4>(idx, t.as_ptr().add(j * SI + i));
            _mm512_storeu_ps(row.add(j), v);
        }
        for j in w16..w {
            *row.add(j) = t[j * SI + i];
        }
    }
}

/// One K block of a `32 x cols` tile (`cols` ≤ [`SJ`]).
///
/// # Safety
/// As [`kernel`].
#[allow(clippy::too_many_arguments)]
unsafe fn tile(
    cols: usize,
    kc: usize,
    a: *const f32,
    b: *const f32,
    ldb: usize,
    t: *mut f32,
    alpha: f32,
    beta: f32,
    sums: *mut f32,
) {
    macro_rules! go {
        ($($nj:literal)*) => {
            match (cols, sums.is_null()) {
                $(($nj, true) => kernel::<$nj, false>(kc, a, b, ldb, t, alpha, beta, sums),)*
                $(($nj, false) => kernel::<$nj, true>(kc, a, b, ldb, t, alpha, beta, sums),)*
                _ => unreachable!("gemm AᵀB: a tile of {cols} columns"),
            }
        };
    }
    go!(1 2 3 4 5 6 7 8 9 10 11 12)
}

/// `acc = Σ_p a[p] ⊗ b[p]` over the `kc` steps of the block (`a`: kc rows of 32 floats;
/// `b`: kc rows of `NJ` floats, `ldb` apart), then the tile's columns in `t` (NJ columns of
/// 32 floats): `alpha * acc` when beta = 0, else `alpha * acc + beta * t`. With `SUMS`,
/// the block's rows of B are also added to `sums` (NJ running column sums), row by row.
///
/// # Safety
/// AVX-512F is present; the pointers are valid for those extents.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel<const NJ: usize, const SUMS: bool>(
    kc: usize,
    a: *const f32,
    b: *const f32,
    ldb: usize,
    t: *mut f32,
    alpha: f32,
    beta: f32,
    sums: *mut f32,
) {
    let mut acc = [[_mm512_setzero_ps(); 2]; NJ];
    let mut ap = a;
    let mut bp = b;
    let lanes = ((1u32 << NJ) - 1) as __mmask16;
    let mut sv = if SUMS {
        _mm512_maskz_loadu_ps(lanes, sums)
    } else {
        _mm512_setzero_ps()
    };
    for _ in 0..kc {
        if SUMS {
            sv = _mm512_add_ps(sv, _mm512_maskz_loadu_ps(lanes, bp));
        }
        _mm_prefetch::<_MM_HINT_T0>(bp.wrapping_add(PF_B * ldb) as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(bp.wrapping_add(PF_B * ldb + NJ - 1) as *const i8);
        let a0 = _mm512_loadu_ps(ap);
        let a1 = _mm512_loadu_ps(ap.add(16));
        for (j, col) in acc.iter_mut().enumerate() {
            let x = _mm512_set1_ps(*bp.add(j));
            col[0] = _mm512_fmadd_ps(a0, x, col[0]);
            col[1] = _mm512_fmadd_ps(a1, x, col[1]);
        }
        ap = ap.add(SI);
        bp = bp.add(ldb);
    }
    if SUMS {
        _mm512_mask_storeu_ps(sums, lanes, sv);
    }
    let va = _mm512_set1_ps(alpha);
    let vb = _mm512_set1_ps(beta);
    for (j, col) in acc.iter().enumerate() {
        for (h, &v) in col.iter().enumerate() {
            write_back(t.add(j * SI + 16 * h), v, va, vb, beta);
        }
    }
}
