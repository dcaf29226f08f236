//! Optimizers: Adam (dense), lazy Adam for embedding rows, and SGD. Weight decay is L2
//! added to the gradient (as PyTorch's `Adam(weight_decay=…)`).

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Adam hyper-parameters.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct AdamConfig {
    /// Learning rate.
    pub lr: f32,
    /// First-moment decay.
    pub beta1: f32,
    /// Second-moment decay.
    pub beta2: f32,
    /// Denominator epsilon.
    pub eps: f32,
    /// L2 weight decay.
    pub weight_decay: f32,
}

impl AdamConfig {
    /// PyTorch defaults with the given learning rate.
    pub fn with_lr(lr: f32) -> Self {
        AdamConfig {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// Adam state for a list of parameter tensors.
#[derive(Clone, Debug)]
pub struct Adam {
    /// Hyper-parameters.
    pub cfg: AdamConfig,
    t: u64,
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

impl Adam {
    /// State for tensors of the given sizes.
    pub fn new(cfg: AdamConfig, sizes: &[usize]) -> Self {
        Adam {
            cfg,
            t: 0,
            m: sizes.iter().map(|&s| vec![0.0; s]).collect(),
            v: sizes.iter().map(|&s| vec![0.0; s]).collect(),
        }
    }

    /// Start a step (advances the bias-correction counter). Call once per optimizer step.
    pub fn begin_step(&mut self) {
        self.t += 1;
    }

    /// Bias-corrected step coefficients for the current step.
    fn coefs(&self) -> Coefs {
        let c = self.cfg;
        let t = self.t.max(1) as i32;
        Coefs {
            b1: c.beta1,
            b2: c.beta2,
            step: c.lr / (1.0 - c.beta1.powi(t)),
            inv_bc2: 1.0 / (1.0 - c.beta2.powi(t)),
            eps: c.eps,
            wd: c.weight_decay,
        }
    }

    /// Update tensor `idx` with its gradient.
    pub fn update(&mut self, idx: usize, param: &mut [f32], grad: &[f32]) {
        assert_eq!(param.len(), grad.len());
        assert_eq!(
            param.len(),
            self.m[idx].len(),
            "Adam: tensor {idx} changed size"
        );
        let c = self.coefs();
        let (m, v) = (&mut self.m[idx], &mut self.v[idx]);
        const CH: usize = 4096;
        param
            .par_chunks_mut(CH)
            .zip(grad.par_chunks(CH))
            .zip(m.par_chunks_mut(CH).zip(v.par_chunks_mut(CH)))
            .for_each(|((p, g), (m, v))| adam_slice(&c, p, g, m, v));
    }

    /// Lazy update of selected rows of an embedding table (tensor `idx`, width `d`): only the
    /// rows in `rows` (distinct, any order) move, with `grads` holding their gradients
    /// (`rows.len() x d`). Rows are updated in parallel; the rows' table, m and v lines are
    /// prefetched a few rows ahead (the access is random and latency-bound on large tables).
    ///
    /// # Panics
    /// If a row repeats or is out of range, or `grads` has the wrong length.
    pub fn update_rows(
        &mut self,
        idx: usize,
        table: &mut [f32],
        d: usize,
        rows: &[u32],
        grads: &[f32],
    ) {
        assert_eq!(grads.len(), rows.len() * d, "Adam: gradient rows x d");
        assert_eq!(
            table.len(),
            self.m[idx].len(),
            "Adam: tensor {idx} changed size"
        );
        if d == 0 || rows.is_empty() {
            return;
        }
        let c = self.coefs();
        // visit the rows in increasing order so that the table can be split into disjoint
        // mutable row slices (safe parallelism; a repeated row is a caller bug)
        let mut order: Vec<u32> = (0..rows.len() as u32).collect();
        if !rows.windows(2).all(|w| w[0] < w[1]) {
            order.sort_unstable_by_key(|&k| rows[k as usize]);
        }
        let n_rows = table.len() / d;
        let mut parts: Vec<RowRefs> = Vec::with_capacity(rows.len());
        let (mut t_rest, mut m_rest, mut v_rest) =
            (table, &mut self.m[idx][..], &mut self.v[idx][..]);
        let mut at = 0usize; // first row of the *_rest slices
        let mut last: Option<u32> = None;
        for &k in &order {
            let r = rows[k as usize];
            assert!(
                (r as usize) < n_rows,
                "Adam: row {r} out of range ({n_rows} rows)"
            );
            assert!(last != Some(r), "Adam: row {r} repeats in a lazy update");
            last = Some(r);
            let skip = (r as usize - at) * d;
            let (_, t) = std::mem::take(&mut t_rest).split_at_mut(skip);
            let (_, m) = std::mem::take(&mut m_rest).split_at_mut(skip);
            let (_, v) = std::mem::take(&mut v_rest).split_at_mut(skip);
            let (t, tr) = t.split_at_mut(d);
            let (m, mr) = m.split_at_mut(d);
            let (v, vr) = v.split_at_mut(d);
            (t_rest, m_rest, v_rest) = (tr, mr, vr);
            at = r as usize + 1;
            parts.push(RowRefs {
                p: t,
                m,
                v,
                g: &grads[k as usize * d..(k as usize + 1) * d],
            });
        }
        const AHEAD: usize = 4;
        parts.par_chunks_mut(256).for_each(|chunk| {
            for k in 0..chunk.len() {
                if let Some(next) = chunk.get(k + AHEAD) {
                    prefetch_row(next.p);
                    prefetch_row(next.m);
                    prefetch_row(next.v);
                }
                let r = &mut chunk[k];
                adam_slice(&c, r.p, r.g, r.m, r.v);
            }
        });
    }
}

/// One row of a lazy update: disjoint views into the table, m, v and the gradient.
struct RowRefs<'a> {
    p: &'a mut [f32],
    m: &'a mut [f32],
    v: &'a mut [f32],
    g: &'a [f32],
}

/// Step coefficients (bias corrections folded in).
#[derive(Clone, Copy)]
struct Coefs {
    b1: f32,
    b2: f32,
    step: f32,
    inv_bc2: f32,
    eps: f32,
    wd: f32,
}

/// Hint the cache to load a row (a no-op off x86-64).
#[inline(always)]
fn prefetch_row(row: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        for off in (0..row.len()).step_by(16) {
            // SAFETY: prefetch is a hint and never faults; the address is inside `row`
            unsafe { _mm_prefetch::<_MM_HINT_T0>(row.as_ptr().add(off) as *const i8) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = row;
}

/// The Adam update of one slice, 8 lanes at a time with a scalar tail (same operations in
/// the same order, so lanes and tail agree bit for bit).
#[inline]
fn adam_slice(c: &Coefs, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
    use wide::f32x8;
    let n = p.len();
    debug_assert!(g.len() == n && m.len() == n && v.len() == n);
    let (b1, b2) = (f32x8::splat(c.b1), f32x8::splat(c.b2));
    let (a1, a2) = (f32x8::splat(1.0 - c.b1), f32x8::splat(1.0 - c.b2));
    let (step, ibc2) = (f32x8::splat(c.step), f32x8::splat(c.inv_bc2));
    let (eps, wd) = (f32x8::splat(c.eps), f32x8::splat(c.wd));
    let load = |x: &[f32], k: usize| f32x8::from(<[f32; 8]>::try_from(&x[k..k + 8]).unwrap());
    let mut k = 0;
    while k + 8 <= n {
        let pk = load(p, k);
        let gk = load(g, k) + wd * pk;
        let mk = b1 * load(m, k) + a1 * gk;
        let vk = b2 * load(v, k) + a2 * (gk * gk);
        let pn = pk - step * mk / ((vk * ibc2).sqrt() + eps);
        m[k..k + 8].copy_from_slice(&mk.to_array());
        v[k..k + 8].copy_from_slice(&vk.to_array());
        p[k..k + 8].copy_from_slice(&pn.to_array());
        k += 8;
    }
    for k in k..n {
        let gk = g[k] + c.wd * p[k];
        m[k] = c.b1 * m[k] + (1.0 - c.b1) * gk;
        v[k] = c.b2 * v[k] + (1.0 - c.b2) * (gk * gk);
        p[k] -= c.step * m[k] / ((v[k] * c.inv_bc2).sqrt() + c.eps);
    }
}

/// Plain SGD step `p -= lr (g + wd p)`.
pub fn sgd(param: &mut [f32], grad: &[f32], lr: f32, weight_decay: f32) {
    for (p, g) in param.iter_mut().zip(grad) {
        *p -= lr * (g + weight_decay * *p);
    }
}

/// The distinct rows a batch touches, sorted, and a map from row to its slot among them: how
/// a compact gradient (`rows.len() x d`) for [`Adam::update_rows`] is laid out. The map costs
/// one `u32` per row of the table and is reset row by row after each batch.
#[derive(Clone, Debug, Default)]
pub struct RowSlots {
    slot: Vec<u32>,
}

impl RowSlots {
    const FREE: u32 = u32::MAX;

    /// A map for a table of `n_rows` rows.
    pub fn new(n_rows: usize) -> Self {
        RowSlots {
            slot: vec![Self::FREE; n_rows],
        }
    }

    /// The distinct `rows`, sorted; each gets its slot (its index in the result). Call
    /// [`Self::release`] with the result before the next batch.
    pub fn assign(&mut self, rows: impl IntoIterator<Item = u32>) -> Vec<u32> {
        let mut out = Vec::new();
        for r in rows {
            if self.slot[r as usize] == Self::FREE {
                self.slot[r as usize] = 0;
                out.push(r);
            }
        }
        out.sort_unstable();
        for (k, &r) in out.iter().enumerate() {
            self.slot[r as usize] = k as u32;
        }
        out
    }

    /// The slot of a row given to the last [`Self::assign`].
    #[inline]
    pub fn slot(&self, row: u32) -> usize {
        debug_assert!(
            self.slot[row as usize] != Self::FREE,
            "row {row} has no slot"
        );
        self.slot[row as usize] as usize
    }

    /// Free the slots of `rows` (the result of [`Self::assign`]).
    pub fn release(&mut self, rows: &[u32]) {
        for &r in rows {
            self.slot[r as usize] = Self::FREE;
        }
    }

    /// Rows the map covers.
    pub fn len(&self) -> usize {
        self.slot.len()
    }

    /// Whether the map covers no row.
    pub fn is_empty(&self) -> bool {
        self.slot.is_empty()
    }
}

#[cfg(test)]
mod row_slots_tests {
    use super::RowSlots;

    #[test]
    fn assigns_sorted_distinct_rows_and_releases_them() {
        let mut s = RowSlots::new(10);
        let rows = s.assign([7, 2, 7, 9, 2, 0]);
        assert_eq!(rows, [0, 2, 7, 9]);
        assert_eq!([s.slot(0), s.slot(2), s.slot(7), s.slot(9)], [0, 1, 2, 3]);
        s.release(&rows);
        // every row is free again: a new batch starts from scratch
        assert_eq!(s.assign([9, 3]), [3, 9]);
        assert_eq!((s.slot(3), s.slot(9)), (0, 1));
    }
}
