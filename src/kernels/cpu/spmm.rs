//! Sparse (CSR, f32 values) times dense row-major matrix, multi-threaded by row blocks.

use rayon::prelude::*;
use wide::f32x8;

use super::Isa;

/// A CSR matrix with f32 values (e.g. the normalized adjacency of a graph).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SparseMatrix {
    /// Rows.
    pub n_rows: usize,
    /// Columns.
    pub n_cols: usize,
    /// Row pointers (length n_rows + 1).
    pub indptr: Vec<u32>,
    /// Column ids.
    pub indices: Vec<u32>,
    /// Values.
    pub values: Vec<f32>,
}

impl SparseMatrix {
    /// Number of stored entries.
    pub fn nnz(&self) -> usize {
        self.indices.len()
    }
    /// Bytes moved by one `spmm` with `d` dense columns (indices, values, gathered rows,
    /// written output): the figure used for effective bandwidth.
    pub fn spmm_bytes(&self, d: usize) -> f64 {
        (self.nnz() * (8 + 4 * d) + self.n_rows * (4 + 4 * d)) as f64
    }
}

const ROWS_PER_TASK: usize = 32;

/// `out (n_rows x d) = A (n_rows x n_cols) · x (n_cols x d)`, overwriting `out`.
pub fn spmm(a: &SparseMatrix, x: &[f32], d: usize, out: &mut [f32]) {
    spmm_with(Isa::detect(), a, x, d, out)
}

/// [`spmm`] with a given instruction set (every set gives the same bits; tests compare them).
pub fn spmm_with(isa: Isa, a: &SparseMatrix, x: &[f32], d: usize, out: &mut [f32]) {
    spmm_ex_with(isa, a, x, d, out, None, None, SpmmEpilogue::Store)
}

/// [`spmm`] on a subset: with `rows`, only the rows `r` with `rows[r]` are computed (the other
/// rows of `out` are left as they are); with `cols`, only the entries whose column `c` has
/// `cols[c]` are summed. When `x` is zero outside `cols`, the result equals [`spmm`]'s bit for
/// bit (the skipped terms are exact zeros); LightGCN uses it for the last forward layer (only
/// the batch's rows are read) and the first backward layer (the gradient is non-zero only on
/// the batch's rows).
pub fn spmm_subset(
    a: &SparseMatrix,
    x: &[f32],
    d: usize,
    out: &mut [f32],
    rows: Option<&[bool]>,
    cols: Option<&[bool]>,
) {
    spmm_ex(a, x, d, out, rows, cols, SpmmEpilogue::Store)
}

/// What a fused SpMM does with each computed row `y = (A·x)[r]` while it is in registers and
/// cache. Every form is the same arithmetic, bit for bit, as the separate passes it replaces
/// (`axpy(1, y, acc)` then `scale`; `copy(base)`, `axpy(1, y, ·)` then `scale`).
pub enum SpmmEpilogue<'a> {
    /// `out[r] = y`.
    Store,
    /// `out[r] = y` and `acc[r] = (acc[r] + y) * scale`: the running layer sum of a
    /// propagation (`scale` 1, or 1/(K+1) on the last layer to give the mean).
    Accumulate {
        /// The running sum (`n_rows x d`).
        acc: &'a mut [f32],
        /// Factor applied after the sum.
        scale: f32,
    },
    /// `out[r] = (base[r] + y) * scale`: a Horner step `h = g + A·h` of the backward.
    AddBase {
        /// The term added (`n_rows x d`).
        base: &'a [f32],
        /// Factor applied after the sum.
        scale: f32,
    },
}

/// [`spmm_subset`] with a fused epilogue (rows skipped by `rows` are not touched in `out` nor
/// in the epilogue's matrix).
pub fn spmm_ex(
    a: &SparseMatrix,
    x: &[f32],
    d: usize,
    out: &mut [f32],
    rows: Option<&[bool]>,
    cols: Option<&[bool]>,
    epi: SpmmEpilogue,
) {
    spmm_ex_with(Isa::detect(), a, x, d, out, rows, cols, epi)
}

#[allow(clippy::too_many_arguments)]
fn spmm_ex_with(
    isa: Isa,
    a: &SparseMatrix,
    x: &[f32],
    d: usize,
    out: &mut [f32],
    rows: Option<&[bool]>,
    cols: Option<&[bool]>,
    epi: SpmmEpilogue,
) {
    assert!(
        isa.is_available(),
        "spmm: instruction set {} is not available on this CPU",
        isa.name()
    );
    assert_eq!(x.len(), a.n_cols * d, "spmm: x must be n_cols x d");
    assert_eq!(out.len(), a.n_rows * d, "spmm: out must be n_rows x d");
    assert!(
        rows.is_none_or(|m| m.len() == a.n_rows),
        "spmm: row mask length"
    );
    assert!(
        cols.is_none_or(|m| m.len() == a.n_cols),
        "spmm: column mask length"
    );
    // the accumulator is shared by the row tasks as a raw pointer: each task touches only the
    // rows it computes, so the accesses are disjoint
    let (acc, base, scale) = match epi {
        SpmmEpilogue::Store => (None, None, 1.0),
        SpmmEpilogue::Accumulate { acc, scale } => {
            assert_eq!(
                acc.len(),
                a.n_rows * d,
                "spmm: accumulator must be n_rows x d"
            );
            (Some(SendPtr(acc.as_mut_ptr())), None, scale)
        }
        SpmmEpilogue::AddBase { base, scale } => {
            assert_eq!(base.len(), a.n_rows * d, "spmm: base must be n_rows x d");
            (None, Some(base), scale)
        }
    };
    if d == 0 {
        return;
    }
    out.par_chunks_mut(d * ROWS_PER_TASK)
        .enumerate()
        .for_each(|(blk, ob)| {
            let r0 = blk * ROWS_PER_TASK;
            let (mut fc, mut fv) = (Vec::new(), Vec::new());
            for (rr, orow) in ob.chunks_exact_mut(d).enumerate() {
                let r = r0 + rr;
                if rows.is_some_and(|m| !m[r]) {
                    continue;
                }
                let (s, e) = (a.indptr[r] as usize, a.indptr[r + 1] as usize);
                match cols {
                    None => spmm_row(isa, &a.indices[s..e], &a.values[s..e], x, d, orow),
                    Some(m) => {
                        fc.clear();
                        fv.clear();
                        for p in s..e {
                            let c = a.indices[p];
                            if m[c as usize] {
                                fc.push(c);
                                fv.push(a.values[p]);
                            }
                        }
                        spmm_row(isa, &fc, &fv, x, d, orow);
                    }
                }
                if let Some(acc) = &acc {
                    // SAFETY: row r of the accumulator (checked to be n_rows x d) is touched
                    // only by the task that owns row r of `out`.
                    let ar = unsafe { std::slice::from_raw_parts_mut(acc.0.add(r * d), d) };
                    for (a, &y) in ar.iter_mut().zip(orow.iter()) {
                        *a += y;
                    }
                    if scale != 1.0 {
                        ar.iter_mut().for_each(|a| *a *= scale);
                    }
                } else if let Some(base) = base {
                    for (o, &b) in orow.iter_mut().zip(&base[r * d..(r + 1) * d]) {
                        *o += b;
                    }
                    if scale != 1.0 {
                        orow.iter_mut().for_each(|o| *o *= scale);
                    }
                }
            }
        });
}

struct SendPtr(*mut f32);
// SAFETY: used only for row-disjoint writes from the row tasks of one call (see spmm_ex).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// One output row. The AVX2, AVX-512 and portable paths perform the same operations in the
/// same order (a product, then a sum: not fused), so their results are identical bit for bit.
#[inline]
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
fn spmm_row(isa: Isa, cols: &[u32], vals: &[f32], x: &[f32], d: usize, orow: &mut [f32]) {
    assert_eq!(
        cols.len(),
        vals.len(),
        "spmm: column ids and values differ in length"
    );
    #[cfg(target_arch = "x86_64")]
    if d >= 16 && isa == Isa::Avx512 {
        assert!(orow.len() >= d, "spmm: output row shorter than d");
        // SAFETY: AVX-512F is present (`Isa::Avx512` is only detected or offered when it
        // is); `cols` and `vals` have one length (checked on entry); the output row lies inside `orow` (checked just above); the kernel checks every
        // gathered row against `x`.
        let c0 = unsafe { avx512::row(cols, vals, x, d, orow) };
        portable_row_from(cols, vals, x, d, orow, c0);
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if d >= 8 && isa.has_avx2() {
        assert!(orow.len() >= d, "spmm: output row shorter than d");
        // SAFETY: AVX2 is present (`Isa::has_avx2` holds only for an ISA detected or offered
        // when it is); `cols` and `vals` have one length (checked on entry); the output row
        // lies inside `orow` (checked just above); the kernel checks every gathered row
        // against `x`.
        let c0 = unsafe { avx::row(cols, vals, x, d, orow) };
        portable_row_from(cols, vals, x, d, orow, c0);
        return;
    }
    portable_row_from(cols, vals, x, d, orow, 0);
}

/// Row `c` of the gathered matrix, which has `rows` rows; panics past them, with one message
/// for every path. The SIMD kernels read rows unchecked after this test, one compare per
/// entry inside their loop (a separate pass over each row's column ids took 20% of an SpMM
/// over the ML-1M graph).
#[inline(always)]
fn gathered(c: u32, rows: usize) -> usize {
    let c = c as usize;
    if c >= rows {
        column_out_of_range(c, rows);
    }
    c
}

#[cold]
#[inline(never)]
fn column_out_of_range(c: usize, rows: usize) -> ! {
    panic!("spmm: column id {c} out of range (x has {rows} rows)")
}

/// The portable row kernel from column `c0` on (`wide` vectors, then scalars).
fn portable_row_from(cols: &[u32], vals: &[f32], x: &[f32], d: usize, orow: &mut [f32], c0: usize) {
    let mut c0 = c0;
    let rows = x.len() / d;
    // 64-wide column chunks held in 8 vector accumulators
    while c0 + 64 <= d {
        let mut acc = [f32x8::ZERO; 8];
        for (&c, &v) in cols.iter().zip(vals) {
            let c = gathered(c, rows);
            let xr = &x[c * d + c0..c * d + c0 + 64];
            let vv = f32x8::splat(v);
            for (q, a) in acc.iter_mut().enumerate() {
                let xv = f32x8::from(<[f32; 8]>::try_from(&xr[q * 8..q * 8 + 8]).unwrap());
                *a = vv.mul_add(xv, *a);
            }
        }
        for (q, a) in acc.iter().enumerate() {
            orow[c0 + q * 8..c0 + q * 8 + 8].copy_from_slice(&a.to_array());
        }
        c0 += 64;
    }
    while c0 + 8 <= d {
        let mut acc = f32x8::ZERO;
        for (&c, &v) in cols.iter().zip(vals) {
            let s = gathered(c, rows) * d + c0;
            let xv = f32x8::from(<[f32; 8]>::try_from(&x[s..s + 8]).unwrap());
            acc = f32x8::splat(v).mul_add(xv, acc);
        }
        orow[c0..c0 + 8].copy_from_slice(&acc.to_array());
        c0 += 8;
    }
    for j in c0..d {
        let mut s = 0.0f32;
        for (&c, &v) in cols.iter().zip(vals) {
            s += v * x[gathered(c, rows) * d + j];
        }
        orow[j] = s;
    }
}

#[cfg(target_arch = "x86_64")]
mod avx {
    use std::arch::x86_64::*;

    /// Entries ahead whose gathered rows are prefetched.
    const PREFETCH: usize = 6;

    /// Columns `[0, c)` of one output row in 64- and 8-wide chunks; returns `c`, where the
    /// portable kernel takes over. Each term is `acc + v * x` with a separate multiply and add,
    /// as in the portable path.
    ///
    /// # Safety
    /// The CPU has AVX2; `cols.len() == vals.len()`; `orow.len() >= d > 0`. A column id
    /// past `x`'s rows panics.
    #[target_feature(enable = "avx2")]
    pub unsafe fn row(cols: &[u32], vals: &[f32], x: &[f32], d: usize, orow: &mut [f32]) -> usize {
        let n = cols.len();
        let rows = x.len() / d;
        let xp = x.as_ptr();
        let op = orow.as_mut_ptr();
        let mut c0 = 0;
        while c0 + 64 <= d {
            let mut acc = [_mm256_setzero_ps(); 8];
            for p in 0..n {
                if p + PREFETCH < n {
                    let r =
                        xp.add(*cols.get_unchecked(p + PREFETCH) as usize * d + c0) as *const i8;
                    _mm_prefetch::<_MM_HINT_T0>(r);
                    _mm_prefetch::<_MM_HINT_T0>(r.add(64));
                    _mm_prefetch::<_MM_HINT_T0>(r.add(128));
                    _mm_prefetch::<_MM_HINT_T0>(r.add(192));
                }
                let v = _mm256_set1_ps(*vals.get_unchecked(p));
                let r = xp.add(super::gathered(*cols.get_unchecked(p), rows) * d + c0);
                for (q, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_add_ps(_mm256_mul_ps(v, _mm256_loadu_ps(r.add(8 * q))), *a);
                }
            }
            for (q, a) in acc.iter().enumerate() {
                _mm256_storeu_ps(op.add(c0 + 8 * q), *a);
            }
            c0 += 64;
        }
        while c0 + 8 <= d {
            let mut a = _mm256_setzero_ps();
            for p in 0..n {
                let v = _mm256_set1_ps(*vals.get_unchecked(p));
                let r = xp.add(super::gathered(*cols.get_unchecked(p), rows) * d + c0);
                a = _mm256_add_ps(_mm256_mul_ps(v, _mm256_loadu_ps(r)), a);
            }
            _mm256_storeu_ps(op.add(c0), a);
            c0 += 8;
        }
        c0
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// Entries ahead whose gathered rows are prefetched.
    const PREFETCH: usize = 6;

    /// Columns `[0, c)` of one output row in 64- and 16-wide chunks of 512-bit vectors;
    /// returns `c`, where the portable kernel takes over. Each term is `acc + v * x` with a
    /// separate multiply and add, per lane the operations of the AVX2 and portable paths, so
    /// the same bits; 4 accumulators and 4 loads per 64 columns where AVX2 needs 8 (ML-1M
    /// graph, d = 64, 2 threads: 1.73 → 1.60 ms, before the table was aligned to a cache
    /// line; see the README).
    ///
    /// # Safety
    /// The CPU has AVX-512F; `cols.len() == vals.len()`; `orow.len() >= d > 0`. A column id
    /// past `x`'s rows panics.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn row(cols: &[u32], vals: &[f32], x: &[f32], d: usize, orow: &mut [f32]) -> usize {
        let n = cols.len();
        let rows = x.len() / d;
        let xp = x.as_ptr();
        let op = orow.as_mut_ptr();
        let mut c0 = 0;
        while c0 + 64 <= d {
            let mut acc = [_mm512_setzero_ps(); 4];
            for p in 0..n {
                if p + PREFETCH < n {
                    let r =
                        xp.add(*cols.get_unchecked(p + PREFETCH) as usize * d + c0) as *const i8;
                    _mm_prefetch::<_MM_HINT_T0>(r);
                    _mm_prefetch::<_MM_HINT_T0>(r.add(64));
                    _mm_prefetch::<_MM_HINT_T0>(r.add(128));
                    _mm_prefetch::<_MM_HINT_T0>(r.add(192));
                }
                let v = _mm512_set1_ps(*vals.get_unchecked(p));
                let r = xp.add(super::gathered(*cols.get_unchecked(p), rows) * d + c0);
                for (q, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_add_ps(_mm512_mul_ps(v, _mm512_loadu_ps(r.add(16 * q))), *a);
                }
            }
            for (q, a) in acc.iter().enumerate() {
                _mm512_storeu_ps(op.add(c0 + 16 * q), *a);
            }
            c0 += 64;
        }
        while c0 + 16 <= d {
            let mut a = _mm512_setzero_ps();
            for p in 0..n {
                let v = _mm512_set1_ps(*vals.get_unchecked(p));
                let r = xp.add(super::gathered(*cols.get_unchecked(p), rows) * d + c0);
                a = _mm512_add_ps(_mm512_mul_ps(v, _mm512_loadu_ps(r)), a);
            }
            _mm512_storeu_ps(op.add(c0), a);
            c0 += 16;
        }
        c0
    }
}

/// Plain scalar reference (f64 accumulation), for tests.
pub fn spmm_reference(a: &SparseMatrix, x: &[f32], d: usize, out: &mut [f32]) {
    for r in 0..a.n_rows {
        for j in 0..d {
            let mut s = 0f64;
            for p in a.indptr[r] as usize..a.indptr[r + 1] as usize {
                s += a.values[p] as f64 * x[a.indices[p] as usize * d + j] as f64;
            }
            out[r * d + j] = s as f32;
        }
    }
}
