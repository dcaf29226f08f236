//! `C = alpha * Aᵀ·B + beta * C` on AVX-512 for few rows and a wide B
//! (A stored k x m, B stored k x n, row-major): the weight gradient `dW = Xᵀ·dY` of a
//! layer with a narrow input (100 features in the denoisers) and a wide output (1000),
//! whose rows do not fill the 32-row strips of [`super::atb`].
//!
//! The roles are those of the forward product: row k of B holds 32 consecutive columns of C
//! as two 512-bit vectors, row k of A up to 12 consecutive rows of C as scalars to
//! broadcast (contiguous in A's row), so a 12 x 32 tile of C is 24 accumulators, each a
//! piece of a row of C, stored straight into C. A task owns a chunk of columns and, per K
//! block, runs each pair of B's column panels against all of A's rows: the first row tile
//! reads the pair's rows of B in place (prefetched ahead, their stride being beyond the
//! hardware's), copies them into a contiguous 32-float-wide buffer as it goes and sums B's
//! columns; the later row tiles read that copy, and three of them prefetch (to L2) the block
//! of B that the next pair's first tile reads, a whole pair's work ahead. B is not packed
//! in a pass of its own. A is (from 32 rows on): one parallel pass lays each row tile's
//! strip of a K block out contiguously, so a tile's broadcasts stream through one run of
//! lines instead of 12 of every row's m values.
//!
//! The sums are those of the packed GEMM, element for element: per KC block a chain of
//! fused multiply-adds from zero in K order, then `alpha * acc` into C on the first block
//! (`alpha * acc + beta * C` when beta ≠ 0) and `alpha * acc + C` on the later ones, the
//! packed full tiles' instructions lane by lane. The packed partial tiles write back
//! unfused, the same only for alpha = 1, so the caller takes this path only then. The
//! column sums of B are summed row by row from zero, as packing sums them.

use super::avx512::{k_steps_prefetching_c, write_back_masked};
use super::{epilogue_region, Epilogue, SendPtr, KC};
use rayon::prelude::*;
use std::arch::x86_64::*;

/// Columns of C per tile (two 512-bit vectors).
const TC: usize = 32;
/// How many K steps ahead the first row tile prefetches B's rows (into L1).
const PF_B: usize = 12;
/// Fewest rows for which A is packed (24 rows ran 10-20% slower packed, 36-48 rows 4-10%
/// faster, 100-138 rows 10-14% with the prefetch of the next block; 2 threads).
const PACK_MIN_M: usize = 32;

thread_local! {
    static BUF: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    static APACK: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Rows of the tile starting at row `i` of `m`: 12 where they remain, then the largest of
/// 8, 6, 4, 2, 1 that fits.
fn tile_rows(m: usize, i: usize) -> usize {
    let left = m - i;
    [12, 8, 6, 4, 2, 1]
        .into_iter()
        .find(|&r| r <= left)
        .unwrap_or(1)
}

/// Whether this order suits an m x n product on `threads` threads: at most 160 rows
/// (A's K block read from L2 by every pair of B's panels; at 200 rows it ties the packed
/// orders, at 288 it trails them by 4%) and at least four 32-column tiles per thread (the
/// tasks are column chunks: 200 columns on 2 threads made 7 uneven ones, 7-10% slower).
pub fn suits(m: usize, n: usize, threads: usize) -> bool {
    m <= 160 && n.div_ceil(TC) >= 4 * threads
}

/// `C (m x n) = alpha * Aᵀ·B + beta * C` with A stored k x m and B k x n; the epilogue
/// applied once the product is done; `b_col_sums` (length n, zeroed by the caller) gets
/// the column sums of B. Shapes are checked by the caller.
///
/// # Panics
/// If the CPU lacks AVX-512F.
#[allow(clippy::too_many_arguments)]
pub fn atb_wide(
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
    let col_tiles = n.div_ceil(TC);
    // about four column chunks per thread
    let per = col_tiles.div_ceil(4 * threads).max(1);
    let chunks = col_tiles.div_ceil(per);
    // A's K blocks, each row tile's strip contiguous (see `pack_a`), shared by the tasks
    let mut ap = APACK.with(|p| std::mem::take(&mut *p.borrow_mut()));
    let packed = m >= PACK_MIN_M;
    if packed {
        ap.resize(k * m, 0.0);
        ap.par_chunks_mut(KC * m)
            .enumerate()
            .for_each(|(blk, dst)| pack_a(a, m, blk * KC, dst));
    }
    let ap_ref = &ap;
    let cptr = SendPtr(c.as_mut_ptr());
    let sptr = b_col_sums.map(|s| SendPtr(s.as_mut_ptr()));
    (0..chunks).into_par_iter().for_each(|ch| {
        let (c0, c1) = (ch * per * TC, ((ch + 1) * per * TC).min(n));
        // the K block of the current pair of B's column panels, copied by the first row tile
        // (each value read by a later tile was written by the first in the same block)
        let mut bpk = BUF.with(|p| std::mem::take(&mut *p.borrow_mut()));
        bpk.resize(KC * TC, 0.0);
        for pc in (0..k).step_by(KC) {
            let kc = KC.min(k - pc);
            let beta_eff = if pc == 0 { beta } else { 1.0 };
            for j in (c0..c1).step_by(TC) {
                let cols = TC.min(c1 - j);
                let mut i = 0;
                let mut t = 0;
                // B's block for the next pair (or the next K block's first pair)
                let nb: Option<usize> = if j + TC < c1 {
                    Some(pc * n + j + TC)
                } else if pc + KC < k {
                    Some((pc + KC) * n + c0)
                } else {
                    None
                };
                while i < m {
                    let rows = tile_rows(m, i);
                    // row tiles 1-3 prefetch (to L2) the lines of that block that hold columns
                    // 0, 16 and 31 of its rows
                    let pfn = match nb {
                        Some(o) if (1..=3).contains(&t) => {
                            b.as_ptr().wrapping_add(o + [0, 16, 31][t - 1])
                        }
                        _ => std::ptr::null(),
                    };
                    t += 1;
                    // the row tile below, or the next panel pair's first
                    let next = if i + rows < m {
                        (i + rows) * n + j
                    } else {
                        j + TC
                    };
                    // the first row tile sums B's columns (each task owns its columns)
                    let sums = match sptr {
                        Some(sp) if i == 0 => sp.get().wrapping_add(j),
                        _ => std::ptr::null_mut(),
                    };
                    let (a_tile, lda) = if packed {
                        (ap_ref[pc * m + i * kc..].as_ptr(), rows)
                    } else {
                        (a[pc * m + i..].as_ptr(), m)
                    };
                    let (bsrc, ldb) = if i == 0 {
                        (b[pc * n + j..].as_ptr(), n)
                    } else {
                        (bpk.as_ptr(), TC)
                    };
                    // SAFETY: AVX-512F is present (asserted); A's rows pc..pc+kc hold
                    // columns i..i+rows (packed: the strip's kc·rows values), B's rows
                    // pc..pc+kc columns j..j+cols, C's rows i..i+rows columns j..j+cols (this
                    // task alone owns columns c0..c1); prefetches past an operand's end do
                    // not fault.
                    unsafe {
                        tile(
                            rows,
                            cols,
                            kc,
                            a_tile,
                            lda,
                            bsrc,
                            ldb,
                            cptr.get().add(i * n + j),
                            n,
                            cptr.get().wrapping_add(next),
                            alpha,
                            beta_eff,
                            i == 0,
                            sums,
                            bpk.as_mut_ptr(),
                            pfn,
                            n,
                        );
                    }
                    i += rows;
                }
            }
        }
        BUF.with(|p| *p.borrow_mut() = bpk);
        // SAFETY: this task alone owns columns c0..c1 of C.
        unsafe { epilogue_region(cptr.get(), n, 0..m, c0..c1, epi) };
    });
    APACK.with(|p| *p.borrow_mut() = ap);
}

/// Pack the K block of A (stored k x m) that starts at row `pc` and fills `dst`
/// (`dst.len() / m` steps): the strip of each row tile of [`tile_rows`] (rows `i..i + R`)
/// at `i * kc`, its R values of step p at `p * R`, so a tile reads its A as one contiguous
/// stream (in place, 12 of every row's m values, the stream crossed a line per step and left
/// the block to L2: 12-15% slower at dW 138x1000, 2 threads).
fn pack_a(a: &[f32], m: usize, pc: usize, dst: &mut [f32]) {
    let kc = dst.len() / m;
    let mut i = 0;
    while i < m {
        let rows = tile_rows(m, i);
        let strip = &mut dst[i * kc..(i + rows) * kc];
        for (p, d) in strip.chunks_exact_mut(rows).enumerate() {
            let src = (pc + p) * m + i;
            d.copy_from_slice(&a[src..src + rows]);
        }
        i += rows;
    }
}

/// One K block of a `rows x cols` tile (`rows` one of [`tile_rows`]'s, `cols` ≤ 32);
/// `first`: the pair's first row tile (B in place, copied to `dst`, `sums` if not null);
/// a later tile prefetches a line a step to L2 from `pfn` (`pfld` floats apart) if not null.
///
/// # Safety
/// As [`kernel`].
#[allow(clippy::too_many_arguments)]
unsafe fn tile(
    rows: usize,
    cols: usize,
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    next: *const f32,
    alpha: f32,
    beta: f32,
    first: bool,
    sums: *mut f32,
    dst: *mut f32,
    pfn: *const f32,
    pfld: usize,
) {
    macro_rules! go {
        ($($r:literal)*) => {
            match (rows, cols > 16, first, sums.is_null(), pfn.is_null()) {
                $(
                    ($r, true, true, false, _) => kernel::<$r, 2, true, true, false>(kc, a, lda, b, ldb, cols, c, ldc, next, alpha, beta, sums, dst, pfn, pfld),
                    ($r, true, true, true, _) => kernel::<$r, 2, true, false, false>(kc, a, lda, b, ldb, cols, c, ldc, next, alpha, beta, sums, dst, pfn, pfld),
                    ($r, true, false, _, true) => kernel::<$r, 2, false, false, false>(kc, a, lda, b, ldb, cols, c, ldc, next, alpha, beta, sums, dst, pfn, pfld),
                    ($r, true, false, _, false) => kernel::<$r, 2, false, false, true>(kc, a, lda, b, ldb, cols, c, ldc, next, alpha, beta, sums, dst, pfn, pfld),
                    ($r, false, true, false, _) => kernel::<$r, 1, true, true, false>(kc, a, lda, b, ldb, cols, c, ldc, next, alpha, beta, sums, dst, pfn, pfld),
                    ($r, false, true, true, _) => kernel::<$r, 1, true, false, false>(kc, a, lda, b, ldb, cols, c, ldc, next, alpha, beta, sums, dst, pfn, pfld),
                    ($r, false, false, _, true) => kernel::<$r, 1, false, false, false>(kc, a, lda, b, ldb, cols, c, ldc, next, alpha, beta, sums, dst, pfn, pfld),
                    ($r, false, false, _, false) => kernel::<$r, 1, false, false, true>(kc, a, lda, b, ldb, cols, c, ldc, next, alpha, beta, sums, dst, pfn, pfld),
                )*
                _ => unreachable!("gemm AᵀB wide: a tile of {rows} rows"),
            }
        };
    }
    go!(12 8 6 4 2 1)
}

/// `acc = Σ_p a[p] ⊗ b[p]` over the `kc` steps of the block (`a`: R floats per step, `lda`
/// apart; `b`: `cols` ≤ 16·NV floats per step, `ldb` apart), then C's `R x cols` block at
/// `c`: `alpha * acc` when beta = 0, else `alpha * acc + beta * C`. `FIRST`: prefetch B's
/// rows `PF_B` steps ahead and copy each step's `16·NV` floats (zero past `cols`) to `dst`,
/// 32 floats apart. `SUMS`: add the block's rows of B to `sums` (cols running column sums),
/// row by row. `PF`: prefetch to L2 one line a step at `pfn`, `pfld` floats apart. The
/// first 3·R steps each prefetch a line of the tile at `next` (R rows of C, `ldc` apart).
///
/// # Safety
/// AVX-512F is present; the pointers are valid for those extents (`next` may be anything).
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel<
    const R: usize,
    const NV: usize,
    const FIRST: bool,
    const SUMS: bool,
    const PF: bool,
>(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    cols: usize,
    c: *mut f32,
    ldc: usize,
    next: *const f32,
    alpha: f32,
    beta: f32,
    sums: *mut f32,
    dst: *mut f32,
    pfn: *const f32,
    pfld: usize,
) {
    let mut dp = dst;
    let mut pn = pfn;
    let lanes = |h: usize| -> __mmask16 {
        let w = cols.saturating_sub(16 * h).min(16);
        ((1u32 << w) - 1) as __mmask16
    };
    let mask = [lanes(0), lanes(1)];
    let mut acc = [[_mm512_setzero_ps(); NV]; R];
    let mut sv = [_mm512_setzero_ps(); NV];
    if SUMS {
        for (h, s) in sv.iter_mut().enumerate() {
            *s = _mm512_maskz_loadu_ps(mask[h], sums.add(16 * h));
        }
    }
    let mut ap = a;
    let mut bp = b;
    let pfd = PF_B * ldb;
    macro_rules! step {
        () => {
            if FIRST {
                _mm_prefetch::<_MM_HINT_T0>(bp.wrapping_add(pfd) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(bp.wrapping_add(pfd + 16 * NV - 1) as *const i8);
            }
            if PF {
                _mm_prefetch::<_MM_HINT_T1>(pn as *const i8);
                pn = pn.wrapping_add(pfld);
            }
            let mut bv = [_mm512_setzero_ps(); NV];
            for (h, v) in bv.iter_mut().enumerate() {
                *v = _mm512_maskz_loadu_ps(mask[h], bp.add(16 * h));
            }
            if FIRST {
                for (h, &v) in bv.iter().enumerate() {
                    _mm512_storeu_ps(dp.add(16 * h), v);
                }
                dp = dp.add(TC);
            }
            if SUMS {
                for (s, &v) in sv.iter_mut().zip(&bv) {
                    *s = _mm512_add_ps(*s, v);
                }
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*ap.add(r));
                for (v, &bq) in row.iter_mut().zip(&bv) {
                    *v = _mm512_fmadd_ps(x, bq, *v);
                }
            }
            ap = ap.add(lda);
            bp = bp.add(ldb);
        };
    }
    k_steps_prefetching_c!(kc, R, next, ldc, step!());
    if SUMS {
        for (h, &s) in sv.iter().enumerate() {
            _mm512_mask_storeu_ps(sums.add(16 * h), mask[h], s);
        }
    }
    let va = _mm512_set1_ps(alpha);
    let vb = _mm512_set1_ps(beta);
    for (r, row) in acc.iter().enumerate() {
        for (h, &v) in row.iter().enumerate() {
            write_back_masked(c.add(r * ldc + 16 * h), mask[h], v, va, vb, beta);
        }
    }
}
