//! Losses with hand-written gradients. Each returns the loss (f64) and writes gradients.
//! Per-sample weights (reweighting, R-CE) multiply each sample's loss and are treated as
//! constants.

use crate::kernels::cpu::elementwise::{sigmoid, softplus};
use crate::kernels::cpu::gemm;

/// BPR: `L = (1/B) Σ_b w_b · (−log σ(pos_b − neg_b))`. Writes dL/dpos and dL/dneg.
pub fn bpr(pos: &[f32], neg: &[f32], w: Option<&[f32]>, dpos: &mut [f32], dneg: &mut [f32]) -> f64 {
    let b = pos.len();
    assert!(neg.len() == b && dpos.len() == b && dneg.len() == b);
    if b == 0 {
        return 0.0;
    }
    let mut loss = 0f64;
    for k in 0..b {
        let wk = w.map_or(1.0, |w| w[k]);
        let x = neg[k] - pos[k];
        loss += (wk * softplus(x)) as f64;
        let g = wk * sigmoid(x) / b as f32;
        dpos[k] = -g;
        dneg[k] = g;
    }
    loss / b as f64
}

/// Row-wise mean squared error: `L = (1/B) Σ_b w_b · (1/d) Σ_j (pred − target)²`.
/// Writes dL/dpred; also returns per-row unweighted errors in `row_err` when given.
pub fn mse_rows(
    pred: &[f32],
    target: &[f32],
    d: usize,
    w: Option<&[f32]>,
    dpred: &mut [f32],
) -> f64 {
    assert_eq!(pred.len(), target.len());
    assert_eq!(pred.len(), dpred.len());
    if d == 0 || pred.is_empty() {
        return 0.0;
    }
    let b = pred.len() / d;
    let mut loss = 0f64;
    for r in 0..b {
        let wk = w.map_or(1.0, |w| w[r]);
        let mut s = 0f64;
        for j in r * d..(r + 1) * d {
            let e = pred[j] - target[j];
            s += (e * e) as f64;
            dpred[j] = wk * 2.0 * e / (d * b) as f32;
        }
        loss += wk as f64 * s / d as f64;
    }
    loss / b as f64
}

/// Binary cross-entropy on logits: `L = (1/B) Σ w_b · (softplus(z) − y z)`. Writes dL/dz.
pub fn bce_logits(z: &[f32], y: &[f32], w: Option<&[f32]>, dz: &mut [f32]) -> f64 {
    let b = z.len();
    if b == 0 {
        return 0.0;
    }
    let mut loss = 0f64;
    for k in 0..b {
        let wk = w.map_or(1.0, |w| w[k]);
        loss += (wk * (softplus(z[k]) - y[k] * z[k])) as f64;
        dz[k] = wk * (sigmoid(z[k]) - y[k]) / b as f32;
    }
    loss / b as f64
}

/// InfoNCE between two views (SGL): rows of `a` and `b` (`n x d`) are L2-normalized,
/// `L = (1/n) Σ_i [ logsumexp_j (â_i·b̂_j / τ) − â_i·b̂_i / τ ]`. Writes dL/da and dL/db.
pub fn infonce(a: &[f32], b: &[f32], d: usize, tau: f32, da: &mut [f32], db: &mut [f32]) -> f64 {
    let n = a.len().checked_div(d).unwrap_or(0);
    assert_eq!(a.len(), b.len());
    if n == 0 {
        return 0.0;
    }
    let normalize = |x: &[f32]| -> (Vec<f32>, Vec<f32>) {
        let mut out = x.to_vec();
        let mut norms = vec![0f32; n];
        for r in 0..n {
            let row = &mut out[r * d..(r + 1) * d];
            let nr = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            norms[r] = nr;
            row.iter_mut().for_each(|v| *v /= nr);
        }
        (out, norms)
    };
    let (ah, an) = normalize(a);
    let (bh, bn) = normalize(b);
    // S = Â · B̂ᵀ / τ
    let mut s = vec![0f32; n * n];
    gemm(false, true, n, n, d, 1.0 / tau, &ah, &bh, 0.0, &mut s);
    // P = softmax rows of S; dL/dS = (P − I) / n  (rows in parallel, SIMD exp)
    use rayon::prelude::*;
    // per-row losses summed in a fixed order (deterministic whatever the threads)
    let per_row: Vec<f64> = s
        .par_chunks_mut(n)
        .enumerate()
        .map(|(i, row)| {
            let diag = row[i];
            let mx = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            row.iter_mut().for_each(|v| *v -= mx);
            crate::kernels::cpu::elementwise::exp_inplace(row);
            let z: f64 = row.iter().map(|&v| v as f64).sum();
            let inv = (1.0 / (z * n as f64)) as f32;
            row.iter_mut().for_each(|v| *v *= inv);
            row[i] -= 1.0 / n as f32;
            mx as f64 + z.ln() - diag as f64
        })
        .collect();
    let loss: f64 = per_row.iter().sum();
    // dÂ = dS · B̂ / τ ; dB̂ = dSᵀ · Â / τ
    let mut dah = vec![0f32; n * d];
    let mut dbh = vec![0f32; n * d];
    gemm(false, false, n, d, n, 1.0 / tau, &s, &bh, 0.0, &mut dah);
    gemm(true, false, n, d, n, 1.0 / tau, &s, &ah, 0.0, &mut dbh);
    // through the normalization: dx = (dx̂ − x̂ (x̂·dx̂)) / ‖x‖
    let back = |xh: &[f32], norms: &[f32], dxh: &[f32], dx: &mut [f32]| {
        for r in 0..n {
            let (xr, gr) = (&xh[r * d..(r + 1) * d], &dxh[r * d..(r + 1) * d]);
            let dotp: f32 = xr.iter().zip(gr).map(|(p, q)| p * q).sum();
            for j in 0..d {
                dx[r * d + j] = (gr[j] - xr[j] * dotp) / norms[r];
            }
        }
    };
    back(&ah, &an, &dah, da);
    back(&bh, &bn, &dbh, db);
    loss / n as f64
}
