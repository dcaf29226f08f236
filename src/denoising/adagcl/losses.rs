//! The BPR and L2 terms that AdaGCL's main model and its two generators share.

use crate::kernels::cpu::elementwise::{sigmoid, softplus};

/// BPR on node rows `x` (`n x d`, items at `n_users + i`):
/// `Σ_k softplus(−x_u · (x_i − x_j)) / batch_norm` over the triplets (the authors divide by
/// the configured batch size). Adds the gradient into `dx`.
#[allow(clippy::too_many_arguments)]
pub fn bpr_nodes(
    x: &[f32],
    d: usize,
    n_users: usize,
    users: &[u32],
    pos: &[u32],
    neg: &[u32],
    batch_norm: usize,
    dx: &mut [f32],
) -> f64 {
    let bn = batch_norm.max(1) as f32;
    let mut loss = 0f64;
    for k in 0..users.len() {
        let (u, i, j) = (
            users[k] as usize,
            n_users + pos[k] as usize,
            n_users + neg[k] as usize,
        );
        let mut diff = 0f32;
        for t in 0..d {
            diff += x[u * d + t] * (x[i * d + t] - x[j * d + t]);
        }
        loss += (softplus(-diff) / bn) as f64;
        let gd = -sigmoid(-diff) / bn;
        for t in 0..d {
            let (eu, ei, ej) = (x[u * d + t], x[i * d + t], x[j * d + t]);
            dx[u * d + t] += gd * (ei - ej);
            dx[i * d + t] += gd * eu;
            dx[j * d + t] -= gd * eu;
        }
    }
    loss
}

/// `reg · Σ p²` over the tensors (summed in order), adding `2 reg p` into each gradient.
pub fn l2_into<'a>(tensors: impl IntoIterator<Item = (&'a [f32], &'a mut [f32])>, reg: f32) -> f64 {
    let mut sq = 0f64;
    for (p, g) in tensors {
        sq += p.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>();
        g.iter_mut()
            .zip(p)
            .for_each(|(gv, &v)| *gv += 2.0 * reg * v);
    }
    reg as f64 * sq
}
