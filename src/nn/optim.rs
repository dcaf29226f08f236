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

    /// Update tensor `idx` with its gradient.
    pub fn update(&mut self, idx: usize, param: &mut [f32], grad: &[f32]) {
        assert_eq!(param.len(), grad.len());
        assert_eq!(
            param.len(),
            self.m[idx].len(),
            "Adam: tensor {idx} changed size"
        );
        let c = self.cfg;
        let t = self.t.max(1) as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = 1.0 - c.beta2.powi(t);
        let step = c.lr / bc1;
        let (m, v) = (&mut self.m[idx], &mut self.v[idx]);
        const CH: usize = 4096;
        param
            .par_chunks_mut(CH)
            .zip(grad.par_chunks(CH))
            .zip(m.par_chunks_mut(CH).zip(v.par_chunks_mut(CH)))
            .for_each(|((p, g), (m, v))| {
                for k in 0..p.len() {
                    let gk = g[k] + c.weight_decay * p[k];
                    m[k] = c.beta1 * m[k] + (1.0 - c.beta1) * gk;
                    v[k] = c.beta2 * v[k] + (1.0 - c.beta2) * gk * gk;
                    p[k] -= step * m[k] / ((v[k] / bc2).sqrt() + c.eps);
                }
            });
    }

    /// Lazy update of selected rows of an embedding table (tensor `idx`, width `d`): only the
    /// rows in `rows` (distinct) move, with `grads` holding their gradients (`rows.len() x d`).
    pub fn update_rows(
        &mut self,
        idx: usize,
        table: &mut [f32],
        d: usize,
        rows: &[u32],
        grads: &[f32],
    ) {
        let c = self.cfg;
        let t = self.t.max(1) as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = 1.0 - c.beta2.powi(t);
        let step = c.lr / bc1;
        let (m, v) = (&mut self.m[idx], &mut self.v[idx]);
        for (r, &row) in rows.iter().enumerate() {
            let o = row as usize * d;
            for j in 0..d {
                let gk = grads[r * d + j] + c.weight_decay * table[o + j];
                m[o + j] = c.beta1 * m[o + j] + (1.0 - c.beta1) * gk;
                v[o + j] = c.beta2 * v[o + j] + (1.0 - c.beta2) * gk * gk;
                table[o + j] -= step * m[o + j] / ((v[o + j] / bc2).sqrt() + c.eps);
            }
        }
    }
}

/// Plain SGD step `p -= lr (g + wd p)`.
pub fn sgd(param: &mut [f32], grad: &[f32], lr: f32, weight_decay: f32) {
    for (p, g) in param.iter_mut().zip(grad) {
        *p -= lr * (g + weight_decay * *p);
    }
}
