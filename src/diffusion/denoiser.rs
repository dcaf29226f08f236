//! The denoising module f(e_t, c, t) of Eq. 15: input concat(e_t (dropout in training),
//! Linear(sinusoidal step encoding), c) → MLP → predicted e_0, with a hand-written backward.

use crate::kernels::cpu::Act;
use crate::nn::step_embedding::timestep_encoding;
use crate::nn::{Linear, LinearGrad, Mlp, MlpCache};
use crate::util::rng::Rng;

/// A denoiser for embeddings of width `d`.
#[derive(Clone, Debug)]
pub struct Denoiser {
    /// Embedding width.
    pub d: usize,
    /// Step encoding width.
    pub step_dim: usize,
    /// Linear projection of the step encoding.
    pub step_layer: Linear,
    /// The MLP over concat(e_t, step, c).
    pub mlp: Mlp,
    /// Dropout probability on the noisy input (training only).
    pub dropout: f32,
}

/// Forward state kept for the backward.
#[derive(Default, Debug)]
pub struct DenoiserCache {
    enc: Vec<f32>,
    temb: Vec<f32>,
    input: Vec<f32>,
    mask: Vec<f32>,
    mlp: MlpCache,
    dinput: Vec<f32>,
    /// Encodings of steps 0..table_len (steps are small integers: computed once).
    enc_table: Vec<f32>,
}

/// Gradients of a [`Denoiser`].
#[derive(Clone, Debug)]
pub struct DenoiserGrad {
    /// Step layer.
    pub step: LinearGrad,
    /// MLP layers.
    pub mlp: Vec<LinearGrad>,
}

impl Denoiser {
    /// Xavier-normal weights, N(0, 0.001²) biases (the authors' initialization).
    /// `hidden` are the MLP's hidden widths, e.g. `[1000, 100, 1000]`.
    pub fn new(
        d: usize,
        step_dim: usize,
        hidden: &[usize],
        act: Act,
        dropout: f32,
        rng: &mut Rng,
    ) -> Self {
        let mut dims = vec![2 * d + step_dim];
        dims.extend_from_slice(hidden);
        dims.push(d);
        Denoiser {
            d,
            step_dim,
            step_layer: Linear::xavier_normal(step_dim, step_dim, 0.001, rng),
            mlp: Mlp::new(&dims, act, 0.001, rng),
            dropout,
        }
    }

    /// Zeroed gradients.
    pub fn zero_grad(&self) -> DenoiserGrad {
        DenoiserGrad {
            step: self.step_layer.zero_grad(),
            mlp: self.mlp.zero_grad(),
        }
    }

    /// Parameter tensors in a fixed order (for the optimizer).
    pub fn params_mut(&mut self) -> Vec<&mut Vec<f32>> {
        let mut v: Vec<&mut Vec<f32>> = vec![&mut self.step_layer.w, &mut self.step_layer.b];
        for l in self.mlp.layers.iter_mut() {
            v.push(&mut l.w);
            v.push(&mut l.b);
        }
        v
    }

    /// Gradient tensors in the order of [`Self::params_mut`].
    pub fn grads(g: &DenoiserGrad) -> Vec<&[f32]> {
        let mut v: Vec<&[f32]> = vec![&g.step.w, &g.step.b];
        for l in &g.mlp {
            v.push(&l.w);
            v.push(&l.b);
        }
        v
    }

    /// Multiply-accumulates per sample.
    pub fn macs(&self) -> usize {
        self.mlp.macs() + self.step_dim * self.step_dim
    }

    /// Predict e_0 for `n` rows: `xt`, `cond` are `n x d`, `steps` holds each row's step
    /// index. With `dropout_rng`, dropout is applied to `xt` (training).
    pub fn forward<'c>(
        &self,
        xt: &[f32],
        steps: &[f32],
        cond: &[f32],
        n: usize,
        dropout_rng: Option<&mut Rng>,
        cache: &'c mut DenoiserCache,
    ) -> &'c [f32] {
        let (d, sd) = (self.d, self.step_dim);
        let w = 2 * d + sd;
        cache.enc.resize(n * sd, 0.0);
        let integral = steps
            .iter()
            .all(|&t| t >= 0.0 && t.fract() == 0.0 && t < 4096.0);
        if integral {
            let need = steps.iter().fold(0.0f32, |a, &b| a.max(b)) as usize + 1;
            if cache.enc_table.len() < need * sd {
                let all: Vec<f32> = (0..need).map(|t| t as f32).collect();
                cache.enc_table.resize(need * sd, 0.0);
                timestep_encoding(&all, sd, &mut cache.enc_table);
            }
            for (r, &t) in steps.iter().enumerate() {
                let t = t as usize;
                cache.enc[r * sd..(r + 1) * sd]
                    .copy_from_slice(&cache.enc_table[t * sd..(t + 1) * sd]);
            }
        } else {
            timestep_encoding(steps, sd, &mut cache.enc);
        }
        cache.temb.resize(n * sd, 0.0);
        self.step_layer
            .forward(&cache.enc, n, Act::None, &mut cache.temb);
        cache.input.resize(n * w, 0.0);
        cache.mask.clear();
        let keep = 1.0 - self.dropout;
        if let Some(rng) = dropout_rng.filter(|_| self.dropout > 0.0) {
            cache.mask.extend((0..n * d).map(|_| {
                if rng.uniform_f32() < keep {
                    1.0 / keep
                } else {
                    0.0
                }
            }));
        }
        for r in 0..n {
            let row = &mut cache.input[r * w..(r + 1) * w];
            let x = &xt[r * d..(r + 1) * d];
            if cache.mask.is_empty() {
                row[..d].copy_from_slice(x);
            } else {
                for j in 0..d {
                    row[j] = x[j] * cache.mask[r * d + j];
                }
            }
            row[d..d + sd].copy_from_slice(&cache.temb[r * sd..(r + 1) * sd]);
            row[d + sd..].copy_from_slice(&cond[r * d..(r + 1) * d]);
        }
        let input = std::mem::take(&mut cache.input);
        self.mlp.forward(&input, n, &mut cache.mlp);
        cache.input = input;
        cache.mlp.outs.last().unwrap()
    }

    /// Backward from dL/d(output). Writes parameter gradients into `g` (overwritten), and
    /// dL/dxt, dL/dcond when asked.
    pub fn backward(
        &self,
        n: usize,
        cache: &mut DenoiserCache,
        dout: &[f32],
        g: &mut DenoiserGrad,
        dxt: Option<&mut [f32]>,
        dcond: Option<&mut [f32]>,
    ) {
        let (d, sd) = (self.d, self.step_dim);
        let w = 2 * d + sd;
        let input = std::mem::take(&mut cache.input);
        let mut dtemb = vec![0f32; n * sd];
        let need_inputs = dxt.is_some() || dcond.is_some();
        let mut dinput = std::mem::take(&mut cache.dinput);
        if need_inputs {
            dinput.resize(n * w, 0.0);
            self.mlp.backward(
                &input,
                n,
                &mut cache.mlp,
                dout,
                &mut g.mlp,
                Some(&mut dinput),
            );
            for r in 0..n {
                dtemb[r * sd..(r + 1) * sd].copy_from_slice(&dinput[r * w + d..r * w + d + sd]);
            }
        } else {
            // only the step-embedding columns of the input gradient are needed
            self.mlp.backward_input_cols(
                &input,
                n,
                &mut cache.mlp,
                dout,
                &mut g.mlp,
                d..d + sd,
                &mut dtemb,
            );
        }
        self.step_layer.backward(
            &cache.enc,
            &cache.temb,
            &mut dtemb,
            n,
            Act::None,
            &mut g.step,
            None,
            false,
        );
        if let Some(dx) = dxt {
            for r in 0..n {
                for j in 0..d {
                    let m = if cache.mask.is_empty() {
                        1.0
                    } else {
                        cache.mask[r * d + j]
                    };
                    dx[r * d + j] = dinput[r * w + j] * m;
                }
            }
        }
        if let Some(dc) = dcond {
            for r in 0..n {
                dc[r * d..(r + 1) * d].copy_from_slice(&dinput[r * w + d + sd..(r + 1) * w]);
            }
        }
        cache.input = input;
        cache.dinput = dinput;
    }
}
