//! The training objective of a backend: BPR (the default), or the two model-agnostic denoising
//! losses of Wang et al., *Denoising Implicit Feedback for Recommendation* (WSDM 2021), which
//! the DDRM paper compares against on every backend (Table 2):
//!
//! - **T-CE** (truncated cross-entropy): binary cross-entropy on the positive and the sampled
//!   negative of each triplet; per batch the positives with the largest loss are dropped. The
//!   drop rate grows linearly from 0 to `drop` over the first `warmup` optimizer steps.
//! - **R-CE** (reweighted cross-entropy): the same BCE, each sample's loss multiplied by
//!   `σ(z)^β` for a positive and `(1 − σ(z))^β` for a negative (treated as a constant, as the
//!   authors' `.detach()`), so that hard, probably noisy positives weigh less.
//!
//! Here `drop` is the fraction of the batch's *positives* that is dropped. The authors' code
//! computes `(1 − rate) · (positives + negatives)` samples to keep and drops only positives, so
//! their rate r with one negative per positive drops 2r of the positives: their 0.1 is our 0.2.

use crate::kernels::cpu::elementwise::{sigmoid, softplus};
use crate::nn::loss;
use serde::{Deserialize, Serialize};

/// What a backend minimizes.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Objective {
    /// BPR on (user, positive, negative) triplets.
    #[default]
    Bpr,
    /// Truncated BCE: drop the largest-loss fraction `drop` of positives, the rate reaching
    /// `drop` after `warmup` optimizer steps.
    Tce {
        /// Final fraction of positives dropped per batch.
        drop: f32,
        /// Optimizer steps over which the rate grows linearly from 0.
        warmup: u64,
    },
    /// Reweighted BCE with exponent `beta`.
    Rce {
        /// Exponent β of the weight.
        beta: f32,
    },
    /// DeCA: agreement with auxiliary models of its own ([`super::deca`]), which the backend
    /// trains beside itself.
    Deca {
        /// α of the two KL directions.
        alpha: f32,
        /// C1 (negatives, DP steps).
        c1: f32,
        /// C2 (positives, DN steps).
        c2: f32,
        /// Embedding width of the auxiliary MF models.
        dim: usize,
    },
}

impl Objective {
    /// Suffix of the model's label ("" for BPR).
    pub fn label(&self) -> &'static str {
        match self {
            Objective::Bpr => "",
            Objective::Tce { .. } => "+T-CE",
            Objective::Rce { .. } => "+R-CE",
            Objective::Deca { .. } => "+DeCA",
        }
    }

    /// The loss of one batch of triplet scores `pos` (user · positive) and `neg`
    /// (user · negative) at optimizer step `step` (0-based); writes dL/dpos and dL/dneg.
    ///
    /// # Panics
    /// On [`Objective::Deca`], whose loss needs its auxiliary models
    /// ([`super::deca::Deca::loss_and_step`]; the backends' `Model` calls that instead).
    pub fn loss(
        &self,
        step: u64,
        pos: &[f32],
        neg: &[f32],
        dpos: &mut [f32],
        dneg: &mut [f32],
    ) -> f64 {
        match *self {
            Objective::Bpr => loss::bpr(pos, neg, None, dpos, dneg),
            Objective::Tce { drop, warmup } => {
                let keep = tce_keep(pos, tce_rate(drop, warmup, step));
                truncated_bce(pos, neg, &keep, dpos, dneg)
            }
            Objective::Rce { beta } => {
                let (wp, wn) = rce_weights(pos, neg, beta);
                reweighted_bce(pos, neg, &wp, &wn, dpos, dneg)
            }
            Objective::Deca { .. } => {
                panic!("Objective::loss: DeCA's loss needs its models (deca::Deca)")
            }
        }
    }
}

/// T-CE drop rate at optimizer step `step`: `drop · min(1, step / warmup)`.
pub fn tce_rate(drop: f32, warmup: u64, step: u64) -> f32 {
    if warmup == 0 || step >= warmup {
        drop
    } else {
        drop * step as f32 / warmup as f32
    }
}

/// Which positives T-CE keeps at `rate`: all but the `floor(rate · B)` with the largest BCE
/// loss `softplus(−z)` (ties broken by index, so the choice is deterministic).
pub fn tce_keep(pos: &[f32], rate: f32) -> Vec<bool> {
    let b = pos.len();
    let n_drop = ((rate.clamp(0.0, 1.0) as f64) * b as f64).floor() as usize;
    let mut keep = vec![true; b];
    if n_drop == 0 {
        return keep;
    }
    // the loss softplus(−z) decreases in z: the largest losses are the smallest scores
    let mut order: Vec<u32> = (0..b as u32).collect();
    order.sort_unstable_by(|&x, &y| pos[x as usize].total_cmp(&pos[y as usize]).then(x.cmp(&y)));
    for &k in &order[..n_drop.min(b)] {
        keep[k as usize] = false;
    }
    keep
}

/// Mean BCE over the kept positives (label 1) and every negative (label 0): `L = (1/n)
/// [Σ_kept softplus(−pos) + Σ softplus(neg)]`, `n` = kept positives + negatives. Dropped
/// positives get zero gradient.
pub fn truncated_bce(
    pos: &[f32],
    neg: &[f32],
    keep: &[bool],
    dpos: &mut [f32],
    dneg: &mut [f32],
) -> f64 {
    let b = pos.len();
    assert!(neg.len() == b && keep.len() == b && dpos.len() == b && dneg.len() == b);
    let n = keep.iter().filter(|&&k| k).count() + b;
    if n == 0 {
        return 0.0;
    }
    let inv = 1.0 / n as f32;
    let mut l = 0f64;
    for k in 0..b {
        if keep[k] {
            l += softplus(-pos[k]) as f64;
            dpos[k] = -sigmoid(-pos[k]) * inv;
        } else {
            dpos[k] = 0.0;
        }
        l += softplus(neg[k]) as f64;
        dneg[k] = sigmoid(neg[k]) * inv;
    }
    l / n as f64
}

/// R-CE weights (constants of the backward): `σ(pos)^β` for positives, `(1 − σ(neg))^β` for
/// negatives.
pub fn rce_weights(pos: &[f32], neg: &[f32], beta: f32) -> (Vec<f32>, Vec<f32>) {
    let wp = pos.iter().map(|&z| sigmoid(z).powf(beta)).collect();
    let wn = neg.iter().map(|&z| sigmoid(-z).powf(beta)).collect();
    (wp, wn)
}

/// Weighted mean BCE over the `2B` samples: `L = (1/2B) [Σ wp·softplus(−pos) + Σ
/// wn·softplus(neg)]`, weights held constant.
pub fn reweighted_bce(
    pos: &[f32],
    neg: &[f32],
    wp: &[f32],
    wn: &[f32],
    dpos: &mut [f32],
    dneg: &mut [f32],
) -> f64 {
    let b = pos.len();
    assert!(neg.len() == b && wp.len() == b && wn.len() == b && dpos.len() == b && dneg.len() == b);
    if b == 0 {
        return 0.0;
    }
    let inv = 1.0 / (2 * b) as f32;
    let mut l = 0f64;
    for k in 0..b {
        l += (wp[k] * softplus(-pos[k]) + wn[k] * softplus(neg[k])) as f64;
        dpos[k] = -wp[k] * sigmoid(-pos[k]) * inv;
        dneg[k] = wn[k] * sigmoid(neg[k]) * inv;
    }
    l / (2 * b) as f64
}
