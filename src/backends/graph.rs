//! The symmetric-normalized user–item bipartite graph Â = D^-1/2 A D^-1/2 of LightGCN, with
//! users as nodes `0..U` and items as nodes `U..U+I`, and edge dropout for SGL that rebuilds
//! the graph into the same buffers (no reallocation).

use crate::data::Dataset;
use crate::kernels::cpu::spmm::SparseMatrix;
use crate::util::rng::Rng;

/// Normalized adjacency builder holding the full edge list.
#[derive(Clone)]
pub struct Graph {
    n_users: usize,
    n_items: usize,
    /// Train edges (user, item) in user-major order.
    edges: Vec<(u32, u32)>,
    /// The current normalized matrix.
    pub adj: SparseMatrix,
    deg: Vec<u32>,
    keep: Vec<bool>,
}

impl Graph {
    /// Build Â from the dataset's train interactions.
    pub fn new(ds: &Dataset) -> Self {
        let edges: Vec<(u32, u32)> = ds.train().pairs().collect();
        let n = ds.n_users() + ds.n_items();
        let mut g = Graph {
            n_users: ds.n_users(),
            n_items: ds.n_items(),
            keep: vec![true; edges.len()],
            adj: SparseMatrix {
                n_rows: n,
                n_cols: n,
                indptr: vec![0; n + 1],
                indices: Vec::with_capacity(2 * edges.len()),
                values: Vec::with_capacity(2 * edges.len()),
            },
            deg: vec![0; n],
            edges,
        };
        g.rebuild();
        g
    }

    /// Number of nodes (users + items).
    pub fn n_nodes(&self) -> usize {
        self.n_users + self.n_items
    }

    /// Keep each edge with probability `1 − ratio` (SGL edge dropout), re-normalize.
    pub fn drop_edges(&mut self, ratio: f64, rng: &mut Rng) {
        for k in self.keep.iter_mut() {
            *k = rng.uniform() >= ratio;
        }
        self.rebuild();
    }

    /// Drop each node (user or item) with probability `ratio` together with its edges (SGL
    /// node dropout), re-normalize.
    pub fn drop_nodes(&mut self, ratio: f64, rng: &mut Rng) {
        let alive: Vec<bool> = (0..self.n_nodes())
            .map(|_| rng.uniform() >= ratio)
            .collect();
        let nu = self.n_users;
        for (k, &(u, i)) in self.edges.iter().enumerate() {
            self.keep[k] = alive[u as usize] && alive[nu + i as usize];
        }
        self.rebuild();
    }

    /// Restore all edges.
    pub fn keep_all(&mut self) {
        self.keep.iter_mut().for_each(|k| *k = true);
        self.rebuild();
    }

    fn rebuild(&mut self) {
        let nu = self.n_users;
        let n = self.n_nodes();
        self.deg.iter_mut().for_each(|d| *d = 0);
        for (k, &(u, i)) in self.edges.iter().enumerate() {
            if self.keep[k] {
                self.deg[u as usize] += 1;
                self.deg[nu + i as usize] += 1;
            }
        }
        let a = &mut self.adj;
        a.indptr[0] = 0;
        for v in 0..n {
            a.indptr[v + 1] = a.indptr[v] + self.deg[v];
        }
        let nnz = a.indptr[n] as usize;
        a.indices.resize(nnz, 0);
        a.values.resize(nnz, 0.0);
        let mut cursor: Vec<u32> = a.indptr[..n].to_vec();
        let inv = |d: u32| if d == 0 { 0.0 } else { 1.0 / (d as f64).sqrt() };
        // user rows first (items ascending), then item rows (users ascending): edges are
        // user-major with sorted items, so both come out sorted
        for (k, &(u, i)) in self.edges.iter().enumerate() {
            if !self.keep[k] {
                continue;
            }
            let (un, inode) = (u as usize, nu + i as usize);
            let w = (inv(self.deg[un]) * inv(self.deg[inode])) as f32;
            let p = cursor[un] as usize;
            a.indices[p] = inode as u32;
            a.values[p] = w;
            cursor[un] += 1;
            let p = cursor[inode] as usize;
            a.indices[p] = un as u32;
            a.values[p] = w;
            cursor[inode] += 1;
        }
    }
}
