//! Sparse (CSR, f32 values) times dense row-major matrix, multi-threaded by row blocks.

use rayon::prelude::*;
use wide::f32x8;

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
    assert_eq!(x.len(), a.n_cols * d, "spmm: x must be n_cols x d");
    assert_eq!(out.len(), a.n_rows * d, "spmm: out must be n_rows x d");
    if d == 0 {
        return;
    }
    out.par_chunks_mut(d * ROWS_PER_TASK)
        .enumerate()
        .for_each(|(blk, ob)| {
            let r0 = blk * ROWS_PER_TASK;
            for (rr, orow) in ob.chunks_exact_mut(d).enumerate() {
                let r = r0 + rr;
                let (s, e) = (a.indptr[r] as usize, a.indptr[r + 1] as usize);
                spmm_row(&a.indices[s..e], &a.values[s..e], x, d, orow);
            }
        });
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
    assert_eq!(x.len(), a.n_cols * d, "spmm_subset: x must be n_cols x d");
    assert_eq!(
        out.len(),
        a.n_rows * d,
        "spmm_subset: out must be n_rows x d"
    );
    assert!(
        rows.is_none_or(|m| m.len() == a.n_rows),
        "spmm_subset: row mask length"
    );
    assert!(
        cols.is_none_or(|m| m.len() == a.n_cols),
        "spmm_subset: column mask length"
    );
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
                    None => spmm_row(&a.indices[s..e], &a.values[s..e], x, d, orow),
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
                        spmm_row(&fc, &fv, x, d, orow);
                    }
                }
            }
        });
}

#[inline]
fn spmm_row(cols: &[u32], vals: &[f32], x: &[f32], d: usize, orow: &mut [f32]) {
    let mut c0 = 0;
    // 64-wide column chunks held in 8 vector accumulators
    while c0 + 64 <= d {
        let mut acc = [f32x8::ZERO; 8];
        for (&c, &v) in cols.iter().zip(vals) {
            let xr = &x[c as usize * d + c0..c as usize * d + c0 + 64];
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
            let s = c as usize * d + c0;
            let xv = f32x8::from(<[f32; 8]>::try_from(&x[s..s + 8]).unwrap());
            acc = f32x8::splat(v).mul_add(xv, acc);
        }
        orow[c0..c0 + 8].copy_from_slice(&acc.to_array());
        c0 += 8;
    }
    for j in c0..d {
        let mut s = 0.0f32;
        for (&c, &v) in cols.iter().zip(vals) {
            s += v * x[c as usize * d + j];
        }
        orow[j] = s;
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
