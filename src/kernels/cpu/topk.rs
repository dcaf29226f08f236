//! Fused score + mask + top-K: for a block of queries, inner products against all items are
//! computed tile by tile with the GEMM micro-kernel into a small cache-resident buffer, seen
//! items are masked, and a per-query top-K heap is updated — the queries x items score matrix
//! is never materialized. Serves full-ranking evaluation and DDRM's rounding.
//!
//! Order and ties: higher score first; equal scores rank the lower item id first. NaN scores
//! are never returned. When fewer than K items are unmasked, the list is padded with
//! `u32::MAX` / `-inf`.

use super::gemm::{micro_kernel, MR, NR};
use super::isa::Isa;
use crate::data::CsrView;
use rayon::prelude::*;

const Q_BLOCK: usize = MR * 8; // 48 queries per task
const I_BLOCK: usize = NR * 32; // 512 items per tile

/// Items packed once into NR-wide panels for the micro-kernel.
pub struct PackedItems {
    d: usize,
    n_items: usize,
    data: Vec<f32>,
}

impl PackedItems {
    /// Pack a row-major `n_items x d` item matrix.
    pub fn new(items: &[f32], n_items: usize, d: usize) -> Self {
        assert_eq!(items.len(), n_items * d);
        let panels = n_items.div_ceil(NR);
        let mut data = vec![0f32; panels * NR * d];
        data.par_chunks_mut((NR * d).max(1))
            .enumerate()
            .for_each(|(jp, dst)| {
                for c in 0..NR {
                    let j = jp * NR + c;
                    if j < n_items {
                        for p in 0..d {
                            dst[p * NR + c] = items[j * d + p];
                        }
                    }
                }
            });
        PackedItems { d, n_items, data }
    }
    /// Number of items.
    pub fn n_items(&self) -> usize {
        self.n_items
    }
}

#[inline]
fn better(s: f32, i: u32, t: f32, ti: u32) -> bool {
    s > t || (s == t && i < ti)
}

/// A bounded heap keeping the K best (score, item) pairs; the root is the worst kept.
struct Heap {
    k: usize,
    v: Vec<(f32, u32)>,
}

impl Heap {
    fn push(&mut self, s: f32, i: u32) {
        if self.v.len() < self.k {
            self.v.push((s, i));
            let mut c = self.v.len() - 1;
            while c > 0 {
                let p = (c - 1) / 2;
                // parent must be worse than child
                if better(self.v[p].0, self.v[p].1, self.v[c].0, self.v[c].1) {
                    self.v.swap(p, c);
                    c = p;
                } else {
                    break;
                }
            }
        } else if better(s, i, self.v[0].0, self.v[0].1) {
            self.v[0] = (s, i);
            let n = self.v.len();
            let mut p = 0;
            loop {
                let (l, r) = (2 * p + 1, 2 * p + 2);
                let mut w = p;
                if l < n && better(self.v[w].0, self.v[w].1, self.v[l].0, self.v[l].1) {
                    w = l;
                }
                if r < n && better(self.v[w].0, self.v[w].1, self.v[r].0, self.v[r].1) {
                    w = r;
                }
                if w == p {
                    break;
                }
                self.v.swap(p, w);
                p = w;
            }
        }
    }
    #[inline]
    fn threshold(&self) -> f32 {
        if self.v.len() < self.k {
            f32::NEG_INFINITY
        } else {
            self.v[0].0
        }
    }
}

/// Top-K items per query by inner product, excluding each query's masked items.
///
/// `queries`: row-major `n_q x d`; `rows[q]` is the user id of query `q`, used to look up the
/// items to mask in each of `masks` (sorted CSR rows, e.g. train and valid). Returns
/// `(items, scores)`, each `n_q x k`, best first.
pub fn fused_topk(
    isa: Isa,
    queries: &[f32],
    items: &PackedItems,
    k: usize,
    masks: &[CsrView],
    rows: &[u32],
) -> (Vec<u32>, Vec<f32>) {
    let d = items.d;
    let n_q = rows.len();
    assert_eq!(
        queries.len(),
        n_q * d,
        "fused_topk: queries must be n_q x d"
    );
    let mut out_i = vec![u32::MAX; n_q * k];
    let mut out_s = vec![f32::NEG_INFINITY; n_q * k];
    if k == 0 || n_q == 0 {
        return (out_i, out_s);
    }
    let ni = items.n_items;
    out_i
        .par_chunks_mut(Q_BLOCK * k)
        .zip(out_s.par_chunks_mut(Q_BLOCK * k))
        .enumerate()
        .for_each(|(blk, (oi, os))| {
            let q0 = blk * Q_BLOCK;
            let nq = Q_BLOCK.min(n_q - q0);
            // pack this block's queries into MR panels (kc = d)
            let q_panels = nq.div_ceil(MR);
            let mut ap = vec![0f32; q_panels * MR * d.max(1)];
            for ip in 0..q_panels {
                for p in 0..d {
                    for r in 0..MR {
                        let q = ip * MR + r;
                        ap[ip * MR * d + p * MR + r] = if q < nq {
                            queries[(q0 + q) * d + p]
                        } else {
                            0.0
                        };
                    }
                }
            }
            let mut tile = vec![0f32; Q_BLOCK * I_BLOCK];
            let mut heaps: Vec<Heap> = (0..nq)
                .map(|_| Heap {
                    k,
                    v: Vec::with_capacity(k),
                })
                .collect();
            let mut cursors: Vec<Vec<usize>> = vec![vec![0; masks.len()]; nq];
            for i0 in (0..ni).step_by(I_BLOCK) {
                let ib = I_BLOCK.min(ni - i0);
                let panels = ib.div_ceil(NR);
                for ip in 0..q_panels {
                    let rows_here = MR.min(nq - ip * MR);
                    for jp in 0..panels {
                        let gp = i0 / NR + jp;
                        let cols = NR.min(ib - jp * NR);
                        // SAFETY: tile has Q_BLOCK rows of I_BLOCK columns.
                        unsafe {
                            micro_kernel(
                                isa,
                                d,
                                &ap[ip * MR * d..],
                                &items.data[gp * NR * d..],
                                tile.as_mut_ptr().add(ip * MR * I_BLOCK + jp * NR),
                                I_BLOCK,
                                rows_here,
                                cols,
                                1.0,
                                0.0,
                            );
                        }
                    }
                }
                for q in 0..nq {
                    let trow = &mut tile[q * I_BLOCK..q * I_BLOCK + ib];
                    let user = rows[q0 + q] as usize;
                    for (mk, m) in masks.iter().enumerate() {
                        let seen = m.row(user);
                        let c = &mut cursors[q][mk];
                        while *c < seen.len() && (seen[*c] as usize) < i0 + ib {
                            trow[seen[*c] as usize - i0] = f32::NAN;
                            *c += 1;
                        }
                    }
                    let h = &mut heaps[q];
                    let mut thr = h.threshold();
                    for (j, &s) in trow.iter().enumerate() {
                        // NaN (masked) fails the comparison
                        if s >= thr {
                            h.push(s, (i0 + j) as u32);
                            thr = h.threshold();
                        }
                    }
                }
            }
            for (q, h) in heaps.into_iter().enumerate() {
                let mut v = h.v;
                v.sort_by(|a, b| {
                    b.0.partial_cmp(&a.0)
                        .unwrap_or(std::cmp::Ordering::Equal)
                        .then(a.1.cmp(&b.1))
                });
                for (r, (s, i)) in v.into_iter().enumerate() {
                    oi[q * k + r] = i;
                    os[q * k + r] = s;
                }
            }
        });
    (out_i, out_s)
}

/// Naive reference: score everything, drop masked, sort by (score desc, id asc).
pub fn topk_reference(
    queries: &[f32],
    items: &[f32],
    d: usize,
    k: usize,
    masks: &[CsrView],
    rows: &[u32],
) -> Vec<Vec<u32>> {
    let ni = items.len().checked_div(d).unwrap_or(0);
    rows.iter()
        .enumerate()
        .map(|(q, &u)| {
            let mut v: Vec<(f32, u32)> = (0..ni)
                .filter(|&i| !masks.iter().any(|m| m.contains(u as usize, i as u32)))
                .map(|i| {
                    let s: f32 = (0..d).map(|p| queries[q * d + p] * items[i * d + p]).sum();
                    (s, i as u32)
                })
                .filter(|x| !x.0.is_nan())
                .collect();
            v.sort_by(|a, b| {
                b.0.partial_cmp(&a.0)
                    .unwrap_or(std::cmp::Ordering::Equal)
                    .then(a.1.cmp(&b.1))
            });
            v.into_iter().take(k).map(|x| x.1).collect()
        })
        .collect()
}
