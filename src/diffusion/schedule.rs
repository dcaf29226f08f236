//! Noise schedules and posterior coefficients (paper Eq. 6–14), computed in f64.
//!
//! Steps are indexed `0..T` in code (step index `t` is the paper's step `t + 1`). As in
//! DiffRec/DDRM, the betas come from the variance schedule, β of the first step is fixed to
//! 1e-5, and ᾱ is recomputed as the cumulative product of (1 − β).

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// Schedule family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleKind {
    /// Eq. 8: 1 − ᾱ_t = s·[α_min + (t−1)/(T−1)·(α_max − α_min)].
    LinearVar,
    /// β_t linear from s·α_min to s·α_max.
    Linear,
}

/// A diffusion schedule of `T` steps.
#[derive(Clone, Debug)]
pub struct Schedule {
    /// Number of steps T.
    pub steps: usize,
    /// β_t.
    pub betas: Vec<f64>,
    /// ᾱ_t.
    pub alphas_cumprod: Vec<f64>,
    /// ᾱ_{t−1} (1 for the first step).
    pub alphas_cumprod_prev: Vec<f64>,
    /// c1_t = √ᾱ_{t−1} β_t / (1 − ᾱ_t), the posterior weight of x̂_0.
    pub coef_x0: Vec<f64>,
    /// c2_t = √α_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t), the posterior weight of x_t.
    pub coef_xt: Vec<f64>,
    /// β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t).
    pub posterior_variance: Vec<f64>,
}

impl Schedule {
    /// Build a schedule. `scale` is s, `min`/`max` are α_min/α_max.
    pub fn new(kind: ScheduleKind, steps: usize, scale: f64, min: f64, max: f64) -> Result<Self> {
        if steps == 0 {
            bail!("the number of diffusion steps must be at least 1");
        }
        if !(scale > 0.0 && min > 0.0 && max >= min && scale * max < 1.0) {
            bail!("noise schedule needs s > 0, 0 < α_min <= α_max and s·α_max < 1 (got s={scale}, α_min={min}, α_max={max})");
        }
        let lin = |k: usize| {
            if steps == 1 {
                min
            } else {
                min + (max - min) * k as f64 / (steps - 1) as f64
            }
        };
        let mut betas: Vec<f64> = match kind {
            ScheduleKind::LinearVar => {
                let abar: Vec<f64> = (0..steps).map(|k| 1.0 - scale * lin(k)).collect();
                let mut b = vec![1.0 - abar[0]];
                for k in 1..steps {
                    b.push((1.0 - abar[k] / abar[k - 1]).min(0.999));
                }
                b
            }
            ScheduleKind::Linear => (0..steps).map(|k| scale * lin(k)).collect(),
        };
        betas[0] = 1e-5;
        for b in betas.iter_mut() {
            // keep strictly positive (equal α_min/α_max would otherwise give β = 0)
            *b = b.max(1e-12);
        }
        let mut abar = Vec::with_capacity(steps);
        let mut acc = 1.0;
        for b in &betas {
            acc *= 1.0 - b;
            abar.push(acc);
        }
        let prev: Vec<f64> = (0..steps)
            .map(|k| if k == 0 { 1.0 } else { abar[k - 1] })
            .collect();
        let coef_x0 = (0..steps)
            .map(|k| betas[k] * prev[k].sqrt() / (1.0 - abar[k]))
            .collect();
        let coef_xt = (0..steps)
            .map(|k| (1.0 - prev[k]) * (1.0 - betas[k]).sqrt() / (1.0 - abar[k]))
            .collect();
        let posterior_variance = (0..steps)
            .map(|k| betas[k] * (1.0 - prev[k]) / (1.0 - abar[k]))
            .collect();
        Ok(Schedule {
            steps,
            betas,
            alphas_cumprod: abar,
            alphas_cumprod_prev: prev,
            coef_x0,
            coef_xt,
            posterior_variance,
        })
    }

    /// √ᾱ_t and √(1 − ᾱ_t) for step index `t` (clamped to T − 1).
    pub fn q_coefs(&self, t: usize) -> (f32, f32) {
        let a = self.alphas_cumprod[t.min(self.steps - 1)];
        (a.sqrt() as f32, (1.0 - a).sqrt() as f32)
    }

    /// Posterior-mean coefficients (c1 for x̂_0, c2 for x_t) at step index `t` (clamped).
    pub fn posterior_coefs(&self, t: usize) -> (f32, f32) {
        let t = t.min(self.steps - 1);
        (self.coef_x0[t] as f32, self.coef_xt[t] as f32)
    }
}
