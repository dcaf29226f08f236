//! AdaGCL's contrastive loss between two views (the authors' `loss_graphcl`): for `n` rows
//! `a_i`, `b_i` (the batch's users, then its positive items, taken from each view),
//! `s_ij = cos(a_i, b_j) / τ` and
//! `L = (1/n) Σ_i [ log Σ_{j≠i} exp(s_ij) − s_ii ]`
//! (the positive pair is left out of the denominator, as in their code).

use crate::kernels::cpu::elementwise::exp_shifted_sum_with;
use crate::kernels::cpu::{gemm, Isa};
use rayon::prelude::*;

fn normalize_rows(x: &[f32], d: usize) -> (Vec<f32>, Vec<f32>) {
    let mut out = x.to_vec();
    let norms: Vec<f32> = out
        .par_chunks_mut(d)
        .map(|row| {
            let nr = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            row.iter_mut().for_each(|v| *v /= nr);
            nr
        })
        .collect();
    (out, norms)
}

/// `dx = (dx̂ − x̂ (x̂·dx̂)) / ‖x‖`, row by row.
fn normalize_backward(xh: &[f32], norms: &[f32], dxh: &[f32], d: usize, dx: &mut [f32]) {
    dx.par_chunks_mut(d).enumerate().for_each(|(r, out)| {
        let (xr, gr) = (&xh[r * d..(r + 1) * d], &dxh[r * d..(r + 1) * d]);
        let dotp: f32 = xr.iter().zip(gr).map(|(p, q)| p * q).sum();
        for j in 0..d {
            out[j] = (gr[j] - xr[j] * dotp) / norms[r];
        }
    });
}

fn exp_shift_sum(row: &mut [f32], shift: f32) -> f64 {
    exp_shifted_sum_with(Isa::detect(), row, shift)
}

/// The contrastive loss with a reusable similarity buffer (`n x n` floats for `n` rows).
#[derive(Default)]
pub struct Contrast {
    buf: Vec<f32>,
}

impl Contrast {
    /// The loss (mean over rows) and, scaled by `scale`, dL/da and (when `db` is given)
    /// dL/db (overwritten).
    #[allow(clippy::too_many_arguments)]
    pub fn loss(
        &mut self,
        a: &[f32],
        b: &[f32],
        d: usize,
        tau: f32,
        scale: f32,
        da: &mut [f32],
        db: Option<&mut [f32]>,
    ) -> f64 {
        assert!(d > 0 && a.len() == b.len() && a.len().is_multiple_of(d) && da.len() == a.len());
        let n = a.len() / d;
        if n < 2 {
            // with one row the denominator is empty: the loss is undefined, no signal
            da.iter_mut().for_each(|v| *v = 0.0);
            if let Some(db) = db {
                db.iter_mut().for_each(|v| *v = 0.0);
            }
            return 0.0;
        }
        let (ah, an) = normalize_rows(a, d);
        let (bh, bn) = normalize_rows(b, d);
        self.buf.resize(n * n, 0.0);
        let s = &mut self.buf;
        let inv_tau = 1.0 / tau;
        gemm(false, true, n, n, d, inv_tau, &ah, &bh, 0.0, s);
        // |s_ij| ≤ 1/τ (cosines), so exp(s − 1/τ) cannot overflow; a row whose terms all
        // underflow is redone with its own maximum. The row becomes e_ij = exp(s_ij − shift)
        // with e_ii = 0; per-row losses are summed in a fixed order.
        let per_row: Vec<(f64, f32)> = s
            .par_chunks_mut(n)
            .enumerate()
            .map(|(i, row)| {
                let diag = row[i];
                row[i] = f32::NEG_INFINITY;
                let mut shift = inv_tau;
                let mut z = exp_shift_sum(row, shift);
                if z < 1e-30 || !z.is_finite() {
                    // recompute the row from the vectors: s_ij = â_i · b̂_j / τ
                    let ai = &ah[i * d..(i + 1) * d];
                    for (j, v) in row.iter_mut().enumerate() {
                        let bj = &bh[j * d..(j + 1) * d];
                        *v = ai.iter().zip(bj).map(|(p, q)| p * q).sum::<f32>() * inv_tau;
                    }
                    row[i] = f32::NEG_INFINITY;
                    shift = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                    z = exp_shift_sum(row, shift);
                }
                row[i] = 0.0;
                (
                    shift as f64 + z.ln() - diag as f64,
                    (scale as f64 / (n as f64 * z)) as f32,
                )
            })
            .collect();
        let loss = per_row.iter().map(|r| r.0).sum::<f64>() / n as f64;
        let c: Vec<f32> = per_row.iter().map(|r| r.1).collect();
        let diag = scale / n as f32;
        // dÂ = diag(c) E B̂ / τ − (scale/n) B̂ / τ
        let mut dh = vec![0f32; n * d];
        gemm(false, false, n, d, n, inv_tau, s, &bh, 0.0, &mut dh);
        dh.par_chunks_mut(d).enumerate().for_each(|(i, row)| {
            for (t, v) in row.iter_mut().enumerate() {
                *v = c[i] * *v - diag * inv_tau * bh[i * d + t];
            }
        });
        normalize_backward(&ah, &an, &dh, d, da);
        if let Some(db) = db {
            // dB̂ = Eᵀ diag(c) Â / τ − (scale/n) Â / τ
            let mut ca = ah.clone();
            ca.par_chunks_mut(d)
                .enumerate()
                .for_each(|(i, row)| row.iter_mut().for_each(|v| *v *= c[i]));
            // as (d x n) = (cÂ)ᵀ E, so that E is read row by row, then transposed
            let mut dt = vec![0f32; d * n];
            gemm(true, false, d, n, n, inv_tau, &ca, s, 0.0, &mut dt);
            dh.par_chunks_mut(d).enumerate().for_each(|(j, row)| {
                for (t, v) in row.iter_mut().enumerate() {
                    *v = dt[t * n + j] - diag * inv_tau * ah[j * d + t];
                }
            });
            normalize_backward(&bh, &bn, &dh, d, db);
        }
        loss
    }
}

/// [`Contrast::loss`] with a fresh buffer.
pub fn contrast_loss(
    a: &[f32],
    b: &[f32],
    d: usize,
    tau: f32,
    scale: f32,
    da: &mut [f32],
    db: Option<&mut [f32]>,
) -> f64 {
    Contrast::default().loss(a, b, d, tau, scale, da, db)
}

/// Rows `users` then `n_users + items` of a node table (`n x d`): the rows the loss contrasts.
pub fn batch_rows(x: &[f32], d: usize, n_users: usize, users: &[u32], items: &[u32]) -> Vec<f32> {
    let mut out = vec![0f32; (users.len() + items.len()) * d];
    let ids = users
        .iter()
        .copied()
        .chain(items.iter().map(|&i| n_users as u32 + i));
    for (row, id) in out.chunks_mut(d).zip(ids) {
        row.copy_from_slice(&x[id as usize * d..(id as usize + 1) * d]);
    }
    out
}

/// Add the gradient of [`batch_rows`]' output into the node table's gradient.
pub fn scatter_batch_rows(
    g: &mut [f32],
    d: usize,
    n_users: usize,
    users: &[u32],
    items: &[u32],
    rows: &[f32],
) {
    let ids = users
        .iter()
        .copied()
        .chain(items.iter().map(|&i| n_users as u32 + i));
    for (row, id) in rows.chunks(d).zip(ids) {
        let dst = &mut g[id as usize * d..(id as usize + 1) * d];
        dst.iter_mut().zip(row).for_each(|(a, b)| *a += b);
    }
}
