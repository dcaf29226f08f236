//! AdaGCL's graph: the user–item bipartite adjacency **with self-loops**, `Â = D^-1/2 (A + I)
//! D^-1/2` (the authors' `makeTorchAdj`), stored once as CSR, plus what the views need to
//! re-weight its edges: the row of every stored entry and the position of its mirror entry
//! (so that `Sᵀ` of a re-weighted `S` reuses the same structure).
//!
//! Propagation here is AdaGCL's: `E_{l+1} = S_l E_l`, and the output is the **sum** of the
//! layers `E_0 + … + E_L` (LightGCN takes their mean).

use crate::data::Dataset;
use crate::kernels::cpu::spmm::{spmm, SparseMatrix};
use rayon::prelude::*;

/// The self-looped normalized adjacency and its edge bookkeeping.
#[derive(Clone, Debug)]
pub struct LoopGraph {
    /// Users (nodes `0..n_users`); items are nodes `n_users..`.
    pub n_users: usize,
    /// `Â` (values are the normalized weights).
    pub adj: SparseMatrix,
    /// Row of each stored entry.
    pub rows: Vec<u32>,
    /// For entry `e = (r, c)`, the index of entry `(c, r)`.
    pub mirror: Vec<u32>,
}

impl LoopGraph {
    /// Build from the dataset's train interactions.
    pub fn new(ds: &Dataset) -> Self {
        let (nu, ni) = (ds.n_users(), ds.n_items());
        let train = ds.train();
        let item_users = train.transpose();
        let n = nu + ni;
        let mut indptr = Vec::with_capacity(n + 1);
        let mut indices = Vec::with_capacity(2 * train.nnz() + n);
        indptr.push(0u32);
        for u in 0..nu {
            indices.push(u as u32);
            indices.extend(train.row(u).iter().map(|&i| (nu as u32) + i));
            indptr.push(indices.len() as u32);
        }
        let iv = item_users.view();
        for i in 0..ni {
            indices.extend_from_slice(iv.row(i));
            indices.push((nu + i) as u32);
            indptr.push(indices.len() as u32);
        }
        Self::from_structure(nu, n, indptr, indices)
    }

    /// Build from a symmetric CSR structure with sorted rows (every `(r, c)` has `(c, r)`);
    /// the values become `1 / sqrt(deg_r deg_c)`.
    pub fn from_structure(n_users: usize, n: usize, indptr: Vec<u32>, indices: Vec<u32>) -> Self {
        let nnz = indices.len();
        let mut rows = vec![0u32; nnz];
        for r in 0..n {
            for e in indptr[r] as usize..indptr[r + 1] as usize {
                rows[e] = r as u32;
            }
        }
        let mirror: Vec<u32> = (0..nnz)
            .into_par_iter()
            .map(|e| {
                let (r, c) = (rows[e], indices[e] as usize);
                let lo = indptr[c] as usize;
                let row = &indices[lo..indptr[c + 1] as usize];
                let k = row
                    .binary_search(&r)
                    .expect("LoopGraph: the structure must be symmetric");
                (lo + k) as u32
            })
            .collect();
        let deg: Vec<f64> = (0..n).map(|r| (indptr[r + 1] - indptr[r]) as f64).collect();
        let values = (0..nnz)
            .map(|e| (1.0 / (deg[rows[e] as usize] * deg[indices[e] as usize]).sqrt()) as f32)
            .collect();
        LoopGraph {
            n_users,
            adj: SparseMatrix {
                n_rows: n,
                n_cols: n,
                indptr,
                indices,
                values,
            },
            rows,
            mirror,
        }
    }

    /// Nodes (users + items).
    pub fn n_nodes(&self) -> usize {
        self.adj.n_rows
    }

    /// Stored entries (both directions of each edge, and the self-loops).
    pub fn nnz(&self) -> usize {
        self.adj.nnz()
    }

    /// A matrix with this structure and the given values.
    pub fn with_values(&self, values: Vec<f32>) -> SparseMatrix {
        assert_eq!(values.len(), self.nnz());
        SparseMatrix {
            values,
            ..self.adj.clone()
        }
    }

    /// Overwrite `t`'s values with those of `sᵀ` (both with this structure).
    pub fn transpose_values(&self, s: &SparseMatrix, t: &mut SparseMatrix) {
        t.values
            .par_iter_mut()
            .zip(self.mirror.par_iter())
            .for_each(|(v, &m)| *v = s.values[m as usize]);
    }
}

/// The layers of one propagation: `layers[0] = E_0`, `layers[l+1] = S_l E_l`.
#[derive(Clone, Debug, Default)]
pub struct Propagation {
    /// `E_0..E_L`, each `n x d`.
    pub layers: Vec<Vec<f32>>,
}

impl Propagation {
    /// Propagate `e0` through the matrices `s` (one per layer).
    pub fn run(e0: &[f32], d: usize, s: &[&SparseMatrix]) -> Self {
        let mut layers = vec![e0.to_vec()];
        for m in s {
            let mut next = vec![0f32; e0.len()];
            spmm(m, layers.last().unwrap(), d, &mut next);
            layers.push(next);
        }
        Propagation { layers }
    }

    /// The output `E_0 + … + E_L`.
    pub fn sum(&self) -> Vec<f32> {
        let mut out = self.layers[0].clone();
        for l in &self.layers[1..] {
            out.par_iter_mut()
                .zip(l.par_iter())
                .for_each(|(o, v)| *o += v);
        }
        out
    }
}

/// Backward of the summed propagation with fixed matrices: given `dout = dL/d(Σ E_l)`, returns
/// dL/dE_0. `st[l]` is `S_lᵀ` (the same matrix when `S_l` is symmetric).
pub fn propagation_backward(dout: &[f32], d: usize, st: &[&SparseMatrix]) -> Vec<f32> {
    // g_L = dout; g_l = dout + S_lᵀ g_{l+1}
    let mut g = dout.to_vec();
    let mut tmp = vec![0f32; dout.len()];
    for m in st.iter().rev() {
        spmm(m, &g, d, &mut tmp);
        tmp.par_iter_mut()
            .zip(dout.par_iter())
            .for_each(|(t, o)| *t += o);
        std::mem::swap(&mut g, &mut tmp);
    }
    g
}
