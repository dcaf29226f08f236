//! **DeCA** (Wang et al., *Learning Robust Recommenders through Cross-Model Agreement*, WWW
//! 2022), a model-agnostic denoising objective for any backend, as the authors' public code
//! trains it (the DDRM paper's Table 2 compares against it on MF, LightGCN and SGL).
//!
//! The backend's prediction `f = σ(z)` is read as the probability that the user truly likes
//! the item. Three small MF models of their own (`σ(p_u · q_i)`, embeddings of width `dim`,
//! N(0, 0.01²) initial values) are trained beside it:
//! - `h1` models the observed label of items the user does not truly like (the "DP" term),
//! - `h2` that of items the user truly likes (the "DN" term),
//! - `g`, the auxiliary model, whose prediction the backend's must agree with (KL terms).
//!
//! With `log x := ln(x + 1e-5)` and `KL(a, b) = a log a − a log b + (1−a) log(1−a) −
//! (1−a) log(1−b)`, each sample's loss is `α KL(g, f) + (1−α) KL(f, g) − T`, where the term
//! `T` alternates between optimizer steps (DP on even steps, DN on odd):
//!
//! | step | positive (u, i) | sampled negative (u, j) |
//! |---|---|---|
//! | DP | `log(h1) (1 − f)` | `log(1 − h1) (1 − f) − C1 f` |
//! | DN | `log(h2) f − C2 (1 − f)` | `log(1 − h2) f` |
//!
//! The batch loss is the mean over positives plus the mean over negatives. A DP step updates
//! `h1`, `g` and the backend; a DN step `h2`, `g` and the backend (as the authors'
//! `_on_iteration_end`). The auxiliary models use the row-sparse Adam of our MF (the authors
//! use dense Adam) and no weight decay; the backend keeps its own L2 regularization.

use crate::nn::optim::{Adam, AdamConfig, RowSlots};
use crate::util::rng::Rng;

/// `log` of the authors' code: `ln(x + 1e-5)`.
const EPS: f64 = 1e-5;

/// Which of the two alternating terms a step uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// "Denoise positives": `h1`, the C1 term on negatives.
    Dp,
    /// "Denoise negatives": `h2`, the C2 term on positives.
    Dn,
}

impl Phase {
    /// The phase of optimizer step `step` (0-based): DP first, then alternating.
    pub fn of_step(step: u64) -> Phase {
        if step.is_multiple_of(2) {
            Phase::Dp
        } else {
            Phase::Dn
        }
    }
}

/// DeCA's weights: `alpha` balances the two KL directions, `c1`, `c2` the constant terms.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DecaWeights {
    /// α of `α KL(g, f) + (1 − α) KL(f, g)`.
    pub alpha: f64,
    /// C1 (DP step, negatives).
    pub c1: f64,
    /// C2 (DN step, positives).
    pub c2: f64,
}

/// One sample's loss and its derivatives w.r.t. the three logits: the backend's `z`, the
/// phase's `h` model's `a_h` and the auxiliary model's `a_g`. Computed in f64.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampleGrad {
    /// The sample's loss.
    pub loss: f64,
    /// dL/dz.
    pub dz: f64,
    /// dL/da_h.
    pub dh: f64,
    /// dL/da_g.
    pub dg: f64,
}

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

fn log(x: f64) -> f64 {
    (x + EPS).ln()
}

/// `KL(a, b)` and its partial derivatives w.r.t. `a` and `b`.
fn kl(a: f64, b: f64) -> (f64, f64, f64) {
    let v = a * log(a) - a * log(b) + (1.0 - a) * log(1.0 - a) - (1.0 - a) * log(1.0 - b);
    let da =
        log(a) + a / (a + EPS) - log(b) - log(1.0 - a) - (1.0 - a) / (1.0 - a + EPS) + log(1.0 - b);
    let db = -a / (b + EPS) + (1.0 - a) / (1.0 - b + EPS);
    (v, da, db)
}

/// The loss of one sample (`positive`: an observed interaction; else a sampled negative) and
/// its gradient, from the three logits.
pub fn sample_loss(
    phase: Phase,
    positive: bool,
    z: f64,
    a_h: f64,
    a_g: f64,
    w: DecaWeights,
) -> SampleGrad {
    let (f, h, g) = (sigmoid(z), sigmoid(a_h), sigmoid(a_g));
    // agreement: α KL(g, f) + (1 − α) KL(f, g)
    let (k1, k1_g, k1_f) = kl(g, f);
    let (k2, k2_f, k2_g) = kl(f, g);
    let mut loss = w.alpha * k1 + (1.0 - w.alpha) * k2;
    let mut df = w.alpha * k1_f + (1.0 - w.alpha) * k2_f;
    let dgp = w.alpha * k1_g + (1.0 - w.alpha) * k2_g;
    // minus the phase's term T(f, h)
    let (t, t_f, t_h) = match (phase, positive) {
        (Phase::Dp, true) => (log(h) * (1.0 - f), -log(h), (1.0 - f) / (h + EPS)),
        (Phase::Dp, false) => (
            log(1.0 - h) * (1.0 - f) - w.c1 * f,
            -log(1.0 - h) - w.c1,
            -(1.0 - f) / (1.0 - h + EPS),
        ),
        (Phase::Dn, true) => (log(h) * f - w.c2 * (1.0 - f), log(h) + w.c2, f / (h + EPS)),
        (Phase::Dn, false) => (log(1.0 - h) * f, log(1.0 - h), -f / (1.0 - h + EPS)),
    };
    loss -= t;
    df -= t_f;
    let dh = -t_h;
    SampleGrad {
        loss,
        dz: df * f * (1.0 - f),
        dh: dh * h * (1.0 - h),
        dg: dgp * g * (1.0 - g),
    }
}

/// The three auxiliary MF models and their optimizer.
#[derive(Clone, Debug)]
pub struct Deca {
    w: DecaWeights,
    n_users: usize,
    dim: usize,
    /// `h1`, `h2`, `g`: each `(U + I) x dim` (users first).
    tables: [Vec<f32>; 3],
    /// One optimizer per model, each counting its own steps (as the authors' three).
    adams: [Adam; 3],
    slots: RowSlots,
}

impl Deca {
    /// Fresh models for `n_users + n_items` nodes, seeded.
    pub fn new(
        w: DecaWeights,
        dim: usize,
        lr: f32,
        n_users: usize,
        n_items: usize,
        seed: u64,
    ) -> Self {
        let n = (n_users + n_items) * dim;
        let tables = [0u64, 1, 2].map(|k| {
            let mut t = vec![0f32; n];
            Rng::stream(seed, 0xDECA + k).fill_normal(&mut t, 0.01);
            t
        });
        Deca {
            w,
            n_users,
            dim,
            adams: [0, 1, 2].map(|_| Adam::new(AdamConfig::with_lr(lr), &[n])),
            tables,
            slots: RowSlots::new(n_users + n_items),
        }
    }

    fn logit(&self, t: usize, u: u32, item: u32) -> f64 {
        let d = self.dim;
        let (pu, qi) = (u as usize * d, (self.n_users + item as usize) * d);
        let tab = &self.tables[t];
        tab[pu..pu + d]
            .iter()
            .zip(&tab[qi..qi + d])
            .map(|(a, b)| *a as f64 * *b as f64)
            .sum()
    }

    /// The logits of the three models (`h1`, `h2`, `g`) for `(user, item)`.
    pub fn logits(&self, user: u32, item: u32) -> [f64; 3] {
        [0, 1, 2].map(|t| self.logit(t, user, item))
    }

    /// Model `t`'s table (`h1`, `h2`, `g` for 0, 1, 2), `(U + I) x dim`, users first.
    pub fn table(&self, t: usize) -> &[f32] {
        &self.tables[t]
    }

    /// The loss of a batch at optimizer step `step`, from the backend's scores `pos`
    /// (user · positive) and `neg` (user · negative); writes dL/dpos and dL/dneg, and takes
    /// one Adam step on the phase's `h` model and on `g`.
    #[allow(clippy::too_many_arguments)]
    pub fn loss_and_step(
        &mut self,
        step: u64,
        users: &[u32],
        pos_items: &[u32],
        neg_items: &[u32],
        pos: &[f32],
        neg: &[f32],
        dpos: &mut [f32],
        dneg: &mut [f32],
    ) -> f64 {
        let g = self.batch_grads(step, users, pos_items, neg_items, pos, neg, dpos, dneg);
        let d = self.dim;
        for (t, grad) in [g.h, 2].into_iter().zip([&g.grad_h, &g.grad_g]) {
            self.adams[t].begin_step();
            self.adams[t].update_rows(0, &mut self.tables[t], d, &g.rows, grad);
        }
        g.loss
    }

    /// [`Self::loss_and_step`] without the step: the loss, dL/dpos, dL/dneg, and the
    /// gradients of the phase's `h` table and of `g` on the batch's rows.
    #[allow(clippy::too_many_arguments)]
    pub fn batch_grads(
        &mut self,
        step: u64,
        users: &[u32],
        pos_items: &[u32],
        neg_items: &[u32],
        pos: &[f32],
        neg: &[f32],
        dpos: &mut [f32],
        dneg: &mut [f32],
    ) -> BatchGrads {
        let b = users.len();
        assert!(
            pos_items.len() == b
                && neg_items.len() == b
                && pos.len() == b
                && neg.len() == b
                && dpos.len() == b
                && dneg.len() == b,
            "DeCA: batch arrays of different lengths"
        );
        let phase = Phase::of_step(step);
        let h = match phase {
            Phase::Dp => 0,
            Phase::Dn => 1,
        };
        let inv = 1.0 / b.max(1) as f64;
        // per sample: dL/da of the h model and of g, on (u, i) and on (u, j)
        let mut loss = 0.0;
        let mut dlogit = vec![(0f64, 0f64); 2 * b];
        for k in 0..b {
            let samples = [
                (pos_items[k], pos[k], &mut dpos[k]),
                (neg_items[k], neg[k], &mut dneg[k]),
            ];
            for (s, (item, z, dz)) in samples.into_iter().enumerate() {
                let r = sample_loss(
                    phase,
                    s == 0,
                    z as f64,
                    self.logit(h, users[k], item),
                    self.logit(2, users[k], item),
                    self.w,
                );
                loss += r.loss * inv;
                *dz = (r.dz * inv) as f32;
                dlogit[2 * k + s] = (r.dh * inv, r.dg * inv);
            }
        }
        // the batch's rows, sorted (a deterministic order for the sparse update)
        let d = self.dim;
        let nu = self.n_users as u32;
        let rows = self
            .slots
            .assign((0..b).flat_map(|k| [users[k], nu + pos_items[k], nu + neg_items[k]]));
        let mut grads = [vec![0f32; rows.len() * d], vec![0f32; rows.len() * d]];
        for (which, (tab, grad)) in [h, 2].into_iter().zip(grads.iter_mut()).enumerate() {
            let table = &self.tables[tab];
            for k in 0..b {
                let u = users[k] as usize;
                for (s, item) in [pos_items[k], neg_items[k]].into_iter().enumerate() {
                    let node = self.n_users + item as usize;
                    let (dh, dg) = dlogit[2 * k + s];
                    let dl = if which == 0 { dh } else { dg } as f32;
                    let (su, si) = (self.slots.slot(u as u32), self.slots.slot(node as u32));
                    for c in 0..d {
                        grad[su * d + c] += dl * table[node * d + c];
                        grad[si * d + c] += dl * table[u * d + c];
                    }
                }
            }
        }
        self.slots.release(&rows);
        let [grad_h, grad_g] = grads;
        BatchGrads {
            loss,
            h,
            rows,
            grad_h,
            grad_g,
        }
    }
}

/// The gradients of one DeCA batch w.r.t. its auxiliary tables.
#[derive(Clone, Debug)]
pub struct BatchGrads {
    /// The batch loss.
    pub loss: f64,
    /// The table of the step's phase: 0 (`h1`, DP) or 1 (`h2`, DN).
    pub h: usize,
    /// The batch's nodes (users, then `n_users + item`), sorted.
    pub rows: Vec<u32>,
    /// dL/d(table h) on `rows` (`rows.len() x dim`).
    pub grad_h: Vec<f32>,
    /// dL/d(table g) on `rows`.
    pub grad_g: Vec<f32>,
}
