//! Compressed sparse row interaction matrices (u32 row pointers and column ids).

use anyhow::{bail, Result};

/// A borrowed CSR matrix: row `r` holds the sorted, distinct column ids
/// `indices[indptr[r]..indptr[r + 1]]`.
#[derive(Clone, Copy, Debug)]
pub struct CsrView<'a> {
    /// Number of rows.
    pub n_rows: usize,
    /// Number of columns (ids are `< n_cols`).
    pub n_cols: usize,
    /// Row pointers, length `n_rows + 1`.
    pub indptr: &'a [u32],
    /// Column ids, length `nnz`.
    pub indices: &'a [u32],
}

impl<'a> CsrView<'a> {
    /// Number of stored entries.
    pub fn nnz(&self) -> usize {
        self.indices.len()
    }

    /// Column ids of row `r`.
    #[inline]
    pub fn row(&self, r: usize) -> &'a [u32] {
        &self.indices[self.indptr[r] as usize..self.indptr[r + 1] as usize]
    }

    /// Length of row `r`.
    #[inline]
    pub fn row_len(&self, r: usize) -> usize {
        (self.indptr[r + 1] - self.indptr[r]) as usize
    }

    /// Whether row `r` contains column `c` (binary search).
    #[inline]
    pub fn contains(&self, r: usize, c: u32) -> bool {
        self.row(r).binary_search(&c).is_ok()
    }

    /// All (row, col) pairs in row-major order.
    pub fn pairs(&self) -> impl Iterator<Item = (u32, u32)> + 'a {
        let me = *self;
        (0..me.n_rows).flat_map(move |r| me.row(r).iter().map(move |&c| (r as u32, c)))
    }

    /// An owned copy.
    pub fn to_owned(&self) -> Csr {
        Csr {
            n_rows: self.n_rows,
            n_cols: self.n_cols,
            indptr: self.indptr.to_vec(),
            indices: self.indices.to_vec(),
        }
    }

    /// The transpose (column-major view of the same entries), rows sorted.
    pub fn transpose(&self) -> Csr {
        let mut counts = vec![0u32; self.n_cols + 1];
        for &c in self.indices {
            counts[c as usize + 1] += 1;
        }
        for i in 0..self.n_cols {
            counts[i + 1] += counts[i];
        }
        let indptr = counts.clone();
        let mut cursor = counts;
        let mut indices = vec![0u32; self.nnz()];
        for r in 0..self.n_rows {
            for &c in self.row(r) {
                let p = &mut cursor[c as usize];
                indices[*p as usize] = r as u32;
                *p += 1;
            }
        }
        Csr {
            n_rows: self.n_cols,
            n_cols: self.n_rows,
            indptr,
            indices,
        }
    }

    /// Check the CSR invariants: pointers start at 0, never decrease, end at nnz; ids in range
    /// and strictly increasing inside each row. `what` names the matrix in the error.
    pub fn validate(&self, what: &str) -> Result<()> {
        if self.indptr.len() != self.n_rows + 1 {
            bail!(
                "{what}: row-pointer array has {} entries, expected {}",
                self.indptr.len(),
                self.n_rows + 1
            );
        }
        if self.indptr[0] != 0 {
            bail!(
                "{what}: first row pointer is {}, expected 0",
                self.indptr[0]
            );
        }
        if self.indptr[self.n_rows] as usize != self.indices.len() {
            bail!(
                "{what}: last row pointer is {}, but there are {} entries",
                self.indptr[self.n_rows],
                self.indices.len()
            );
        }
        for r in 0..self.n_rows {
            let (a, b) = (self.indptr[r], self.indptr[r + 1]);
            if b < a {
                bail!("{what}: row pointers decrease at row {r}");
            }
            let row = &self.indices[a as usize..b as usize];
            for (k, &c) in row.iter().enumerate() {
                if c as usize >= self.n_cols {
                    bail!(
                        "{what}: row {r} holds id {c}, out of range (< {} expected)",
                        self.n_cols
                    );
                }
                if k > 0 && row[k - 1] >= c {
                    bail!(
                        "{what}: row {r} is not strictly increasing (id {c} after {})",
                        row[k - 1]
                    );
                }
            }
        }
        Ok(())
    }
}

/// An owned CSR matrix.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Csr {
    /// Number of rows.
    pub n_rows: usize,
    /// Number of columns.
    pub n_cols: usize,
    /// Row pointers, length `n_rows + 1`.
    pub indptr: Vec<u32>,
    /// Column ids.
    pub indices: Vec<u32>,
}

/// What to do with a (row, col) pair given twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum DuplicatePolicy {
    /// Keep one copy (implicit feedback is a set of pairs) and report how many were dropped.
    Drop,
    /// Reject the input.
    Error,
}

impl Csr {
    /// An empty `n_rows x n_cols` matrix.
    pub fn empty(n_rows: usize, n_cols: usize) -> Self {
        Csr {
            n_rows,
            n_cols,
            indptr: vec![0; n_rows + 1],
            indices: Vec::new(),
        }
    }

    /// Build from (row, col) pairs (any order). Returns the matrix and the number of
    /// duplicate pairs removed. Ids must already be in range.
    pub fn from_pairs(
        n_rows: usize,
        n_cols: usize,
        pairs: &[(u32, u32)],
        dup: DuplicatePolicy,
    ) -> Result<(Csr, usize)> {
        let mut counts = vec![0u32; n_rows + 1];
        for &(r, c) in pairs {
            if r as usize >= n_rows || c as usize >= n_cols {
                bail!("pair ({r}, {c}) out of range for a {n_rows} x {n_cols} matrix");
            }
            counts[r as usize + 1] += 1;
        }
        for i in 0..n_rows {
            counts[i + 1] += counts[i];
        }
        let mut cursor = counts.clone();
        let mut indices = vec![0u32; pairs.len()];
        for &(r, c) in pairs {
            let p = &mut cursor[r as usize];
            indices[*p as usize] = c;
            *p += 1;
        }
        // sort and dedupe each row, compacting in place
        let mut out_ptr = vec![0u32; n_rows + 1];
        let mut w = 0usize;
        let mut dropped = 0usize;
        for r in 0..n_rows {
            let (a, b) = (counts[r] as usize, counts[r + 1] as usize);
            indices[a..b].sort_unstable();
            let mut last: Option<u32> = None;
            for k in a..b {
                let c = indices[k];
                if last == Some(c) {
                    if dup == DuplicatePolicy::Error {
                        bail!("duplicate pair (user {r}, item {c})");
                    }
                    dropped += 1;
                    continue;
                }
                last = Some(c);
                indices[w] = c;
                w += 1;
            }
            out_ptr[r + 1] = w as u32;
        }
        indices.truncate(w);
        Ok((
            Csr {
                n_rows,
                n_cols,
                indptr: out_ptr,
                indices,
            },
            dropped,
        ))
    }

    /// Borrowed view.
    pub fn view(&self) -> CsrView<'_> {
        CsrView {
            n_rows: self.n_rows,
            n_cols: self.n_cols,
            indptr: &self.indptr,
            indices: &self.indices,
        }
    }

    /// Number of entries.
    pub fn nnz(&self) -> usize {
        self.indices.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_pairs_sorts_dedupes_and_transposes() {
        let pairs = [(1, 2), (0, 1), (1, 0), (1, 2), (0, 0)];
        let (m, d) = Csr::from_pairs(3, 3, &pairs, DuplicatePolicy::Drop).unwrap();
        assert_eq!(d, 1);
        assert_eq!(m.indptr, vec![0, 2, 4, 4]);
        assert_eq!(m.indices, vec![0, 1, 0, 2]);
        m.view().validate("m").unwrap();
        let t = m.view().transpose();
        assert_eq!(t.indptr, vec![0, 2, 3, 4]);
        assert_eq!(t.indices, vec![0, 1, 0, 1]);
        assert!(Csr::from_pairs(3, 3, &pairs, DuplicatePolicy::Error).is_err());
    }
}
