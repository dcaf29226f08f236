//! DiffRec (Wang et al., *Diffusion Recommender Model*, SIGIR 2023), a comparison system of
//! the paper (Table 2): Gaussian diffusion over a user's whole interaction vector, with a
//! hand-written backward.
//!
//! Training: x_0 is the user's binary train row (I items); t is drawn uniformly, or by
//! importance sampling `p_t ∝ sqrt(mean of the last 10 losses at t)` once every step has 10;
//! `x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε`; the denoiser `f(dropout(x_t), Linear(enc(t)))` (an MLP
//! `I + E → hidden… → I`, tanh between layers) predicts x_0; the loss is the per-user mean
//! squared error over items, weighted by `SNR(t − 1) − SNR(t)` (1 at the first step) and
//! divided by `p_t · T` when `reweight` is on (the authors' x_0 reweighting).
//!
//! Inference (the authors' `sampling_steps = 0`, no sampling noise): start at x_T = x_0 (the
//! train row), then `x_{t−1} = c1_t f(x_t, t) + c2_t x_t` for t = T…1. At the last step
//! `c2 = 0`, so the scores are `c1 (h W_L + b_L)` with h the last hidden layer: an inner product
//! of `c1 [h, 1]` with the item rows `[W_Lᵀ | b_L]`, ranked by the fused top-K kernel.

use super::multivae::VaeBatch;
use crate::data::{CsrView, Dataset, Split};
use crate::diffusion::schedule::{Schedule, ScheduleKind};
use crate::eval::{eval_users, evaluate_queries, EarlyStop, Metrics};
use crate::kernels::cpu::topk::PackedItems;
use crate::kernels::cpu::Act;
use crate::nn::step_embedding::timestep_encoding;
use crate::nn::{Adam, AdamConfig, Linear, LinearGrad, Mlp, MlpCache};
use crate::util::progress;
use crate::util::rng::Rng;
use anyhow::Result;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Hyper-parameters (defaults from the authors' ML-1M scripts, with T = 5 steps).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DiffRecConfig {
    /// Hidden widths of the denoiser between the input `I + E` and the output `I`.
    pub hidden: Vec<usize>,
    /// Step embedding width E.
    pub step_dim: usize,
    /// Diffusion steps T.
    pub steps: usize,
    /// Noise scale s.
    pub noise_scale: f64,
    /// α_min.
    pub noise_min: f64,
    /// α_max.
    pub noise_max: f64,
    /// Importance-sampled steps and SNR-difference loss weights.
    pub reweight: bool,
    /// Dropout on the noisy input (training only).
    pub dropout: f32,
    /// Adam learning rate.
    pub lr: f32,
    /// L2 weight decay.
    pub weight_decay: f32,
    /// Users per batch.
    pub batch: usize,
    /// Maximum epochs.
    pub epochs: usize,
    /// Validate every N epochs.
    pub eval_every: usize,
    /// Validations without improvement before stopping.
    pub patience: usize,
    /// Seed.
    pub seed: u64,
    /// Cut-offs reported.
    pub ks: Vec<usize>,
}

impl Default for DiffRecConfig {
    fn default() -> Self {
        DiffRecConfig {
            hidden: vec![600, 200, 600],
            step_dim: 10,
            steps: 5,
            noise_scale: 0.005,
            noise_min: 0.005,
            noise_max: 0.01,
            reweight: true,
            dropout: 0.5,
            lr: 1e-3,
            weight_decay: 0.0,
            batch: 400,
            epochs: 200,
            eval_every: 5,
            patience: 5,
            seed: 2020,
            ks: vec![10, 20],
        }
    }
}

/// The model: step projection and denoising MLP.
#[derive(Clone, Debug, PartialEq)]
pub struct DiffRec {
    /// Items.
    pub n_items: usize,
    /// Step embedding width.
    pub step_dim: usize,
    /// `Linear(E → E)` applied to the sinusoidal step encoding (no activation).
    pub step_layer: Linear,
    /// The MLP `I + E → hidden… → I`.
    pub mlp: Mlp,
}

/// Gradients of a [`DiffRec`].
pub struct DiffRecGrads {
    /// Step layer.
    pub step: LinearGrad,
    /// MLP layers.
    pub mlp: Vec<LinearGrad>,
}

impl DiffRec {
    /// Xavier-normal weights, N(0, 0.001²) biases.
    ///
    /// # Panics
    /// If `hidden` is empty (the scores need a last hidden layer).
    pub fn new(n_items: usize, step_dim: usize, hidden: &[usize], seed: u64) -> Self {
        assert!(
            !hidden.is_empty(),
            "DiffRec needs at least one hidden layer"
        );
        let mut rng = Rng::stream(seed, 0xD1F0);
        let mut dims = vec![n_items + step_dim];
        dims.extend_from_slice(hidden);
        dims.push(n_items);
        DiffRec {
            n_items,
            step_dim,
            step_layer: Linear::xavier_normal(step_dim, step_dim, 1e-3, &mut rng),
            mlp: Mlp::new(&dims, Act::Tanh, 1e-3, &mut rng),
        }
    }

    /// Zeroed gradients.
    pub fn zero_grads(&self) -> DiffRecGrads {
        DiffRecGrads {
            step: self.step_layer.zero_grad(),
            mlp: self.mlp.zero_grad(),
        }
    }

    /// Parameters in a fixed order (step w, b, then each MLP layer's w, b).
    pub fn params_mut(&mut self) -> Vec<&mut Vec<f32>> {
        let mut v = vec![&mut self.step_layer.w, &mut self.step_layer.b];
        for l in &mut self.mlp.layers {
            v.push(&mut l.w);
            v.push(&mut l.b);
        }
        v
    }

    /// The denoiser input `[x (n x I), Linear(enc(t)) (n x E)]` and the step encodings.
    fn input(&self, x: &[f32], steps: &[usize]) -> (Vec<f32>, Vec<f32>) {
        let (n, ni, e) = (steps.len(), self.n_items, self.step_dim);
        let tf: Vec<f32> = steps.iter().map(|&t| t as f32).collect();
        let mut enc = vec![0f32; n * e];
        timestep_encoding(&tf, e, &mut enc);
        let mut emb = vec![0f32; n * e];
        self.step_layer.forward(&enc, n, Act::None, &mut emb);
        let mut inp = vec![0f32; n * (ni + e)];
        inp.par_chunks_mut(ni + e).enumerate().for_each(|(r, row)| {
            row[..ni].copy_from_slice(&x[r * ni..(r + 1) * ni]);
            row[ni..].copy_from_slice(&emb[r * e..(r + 1) * e]);
        });
        (inp, enc)
    }

    /// Loss and gradients of a batch: `x_t` (already dropped out), targets `x0`, step indices
    /// (0-based), and per-user loss weights `w` (SNR weight / (p_t T)). Returns the mean
    /// weighted loss and each user's unweighted MSE.
    pub fn loss_and_grads(
        &self,
        x_t: &[f32],
        x0: &[f32],
        steps: &[usize],
        w: &[f32],
        g: &mut DiffRecGrads,
    ) -> (f64, Vec<f64>) {
        let (n, ni, e) = (steps.len(), self.n_items, self.step_dim);
        assert!(x_t.len() == n * ni && x0.len() == n * ni && w.len() == n);
        if n == 0 {
            return (0.0, vec![]);
        }
        let (inp, enc) = self.input(x_t, steps);
        let mut cache = MlpCache::default();
        let out = self.mlp.forward(&inp, n, &mut cache).to_vec();
        let mut dout = vec![0f32; n * ni];
        let mse: Vec<f64> = dout
            .par_chunks_mut(ni)
            .enumerate()
            .map(|(r, d)| {
                let (o, t) = (&out[r * ni..(r + 1) * ni], &x0[r * ni..(r + 1) * ni]);
                let c = 2.0 * w[r] / (ni * n) as f32;
                let mut s = 0f64;
                for j in 0..ni {
                    let diff = o[j] - t[j];
                    s += (diff * diff) as f64;
                    d[j] = c * diff;
                }
                s / ni as f64
            })
            .collect();
        let loss = mse.iter().zip(w).map(|(m, &wk)| m * wk as f64).sum::<f64>() / n as f64;
        let mut demb = vec![0f32; n * e];
        self.mlp.backward_input_cols(
            &inp,
            n,
            &mut cache,
            &dout,
            &mut g.mlp,
            ni..ni + e,
            &mut demb,
        );
        self.step_layer
            .backward(&enc, &[], &mut demb, n, Act::None, &mut g.step, None, false);
        (loss, mse)
    }

    /// Denoiser output for inputs `x` at one step `t` (no dropout); returns the MLP cache so
    /// that the last hidden layer can be read.
    fn denoise(&self, x: &[f32], n: usize, t: usize, cache: &mut MlpCache) {
        let (inp, _) = self.input(x, &vec![t; n]);
        self.mlp.forward(&inp, n, cache);
    }

    /// Ranking queries `c1 [h, 1]` (`users x (H_L + 1)`) by the reverse process from each
    /// user's train row.
    pub fn queries(&self, sched: &Schedule, train: &CsrView, users: &[u32]) -> Vec<f32> {
        let (ni, nl) = (self.n_items, self.mlp.layers.len());
        let hl = self.mlp.layers[nl - 1].din;
        let mut q = vec![0f32; users.len() * (hl + 1)];
        let mut rng = Rng::new(0); // no dropout: unused
        const CHUNK: usize = 256;
        for (s, chunk) in users.chunks(CHUNK).enumerate() {
            let n = chunk.len();
            let b = VaeBatch::build(train, chunk, 0.0, &mut rng);
            let mut x = dense_targets(&b, ni);
            let mut cache = MlpCache::default();
            for t in (0..sched.steps).rev() {
                self.denoise(&x, n, t, &mut cache);
                let (c1, c2) = sched.posterior_coefs(t);
                if t == 0 {
                    // scores = c1 · (h W_L + b_L) + c2 · x, and c2 = 0 at the first step
                    debug_assert!(c2.abs() < 1e-6);
                    let h = &cache.outs[nl - 2]; // hidden is never empty (checked)
                    for r in 0..n {
                        let o = (s * CHUNK + r) * (hl + 1);
                        for k in 0..hl {
                            q[o + k] = c1 * h[r * hl + k];
                        }
                        q[o + hl] = c1;
                    }
                } else {
                    let x0p = cache.outs.last().unwrap();
                    x.par_iter_mut()
                        .zip(x0p.par_iter())
                        .for_each(|(xv, &p)| *xv = c1 * p + c2 * *xv);
                }
            }
        }
        q
    }

    /// Item rows `[W_Lᵀ | b_L]` of the last layer.
    pub fn item_matrix(&self) -> Vec<f32> {
        let last = self.mlp.layers.last().unwrap();
        let (hl, ni) = (last.din, self.n_items);
        let mut m = vec![0f32; ni * (hl + 1)];
        m.par_chunks_mut(hl + 1).enumerate().for_each(|(i, row)| {
            for k in 0..hl {
                row[k] = last.w[k * ni + i];
            }
            row[hl] = last.b[i];
        });
        m
    }

    /// Full-ranking metrics on `split`.
    pub fn evaluate(&self, sched: &Schedule, ds: &Dataset, split: Split, ks: &[usize]) -> Metrics {
        let users = eval_users(ds, split);
        let q = self.queries(sched, &ds.train(), &users);
        let hl = self.mlp.layers.last().unwrap().din;
        let items = PackedItems::new(&self.item_matrix(), ds.n_items(), hl + 1);
        evaluate_queries(ds, split, &users, &q, &items, ks)
    }
}

/// Dense binary rows (`n x I`) of a batch's targets.
fn dense_targets(b: &VaeBatch, ni: usize) -> Vec<f32> {
    let n = b.n();
    let mut x = vec![0f32; n * ni];
    for r in 0..n {
        for &i in &b.tg_idx[b.tg_ptr[r]..b.tg_ptr[r + 1]] {
            x[r * ni + i as usize] = 1.0;
        }
    }
    x
}

/// The schedule of a configuration.
pub fn schedule(cfg: &DiffRecConfig) -> Result<Schedule> {
    Schedule::new(
        ScheduleKind::LinearVar,
        cfg.steps,
        cfg.noise_scale,
        cfg.noise_min,
        cfg.noise_max,
    )
}

/// The authors' loss-aware step sampler: uniform until every step has `HIST` recorded losses,
/// then `p_t ∝ sqrt(mean L_t²)` mixed with 0.1% uniform.
pub struct StepSampler {
    hist: Vec<Vec<f64>>,
}

const HIST: usize = 10;

impl StepSampler {
    /// For `steps` steps.
    pub fn new(steps: usize) -> Self {
        StepSampler {
            hist: vec![Vec::with_capacity(HIST); steps],
        }
    }

    /// Draw `n` steps and their `p_t · T` (1 when uniform).
    pub fn sample(&self, n: usize, importance: bool, rng: &mut Rng) -> (Vec<usize>, Vec<f64>) {
        let t_n = self.hist.len();
        if !importance || self.hist.iter().any(|h| h.len() < HIST) {
            return ((0..n).map(|_| rng.index(t_n)).collect(), vec![1.0; n]);
        }
        let w: Vec<f64> = self
            .hist
            .iter()
            .map(|h| (h.iter().map(|v| v * v).sum::<f64>() / h.len() as f64).sqrt())
            .collect();
        let tot: f64 = w.iter().sum();
        let p: Vec<f64> = w
            .iter()
            .map(|v| {
                let base = if tot > 0.0 { v / tot } else { 1.0 / t_n as f64 };
                base * (1.0 - 0.001) + 0.001 / t_n as f64
            })
            .collect();
        let mut ts = Vec::with_capacity(n);
        let mut pt = Vec::with_capacity(n);
        for _ in 0..n {
            let mut u = rng.uniform() * p.iter().sum::<f64>();
            let mut t = t_n - 1;
            for (k, &pk) in p.iter().enumerate() {
                if u < pk {
                    t = k;
                    break;
                }
                u -= pk;
            }
            ts.push(t);
            pt.push(p[t] * t_n as f64);
        }
        (ts, pt)
    }

    /// Record the (weighted, before division by p_t) loss of a sample at step `t`.
    pub fn record(&mut self, t: usize, loss: f64) {
        let h = &mut self.hist[t];
        if h.len() == HIST {
            h.remove(0);
        }
        h.push(loss);
    }
}

/// The x_0 loss weight `SNR(t − 1) − SNR(t)` (0-based t; 1 at t = 0).
pub fn snr_weight(sched: &Schedule, t: usize) -> f64 {
    if t == 0 {
        return 1.0;
    }
    let snr = |k: usize| sched.alphas_cumprod[k] / (1.0 - sched.alphas_cumprod[k]);
    snr(t - 1) - snr(t)
}

/// One validation record.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DiffRecRecord {
    /// Epoch (1-based).
    pub epoch: usize,
    /// Mean weighted loss over the epoch's batches.
    pub loss: f64,
    /// Seconds of training in this epoch.
    pub train_seconds: f64,
    /// Validation metrics.
    pub valid: Metrics,
}

/// What training produced.
pub struct DiffRecOutcome {
    /// Epoch with the best valid Recall@20.
    pub best_epoch: usize,
    /// Valid metrics there.
    pub best_valid: Metrics,
    /// Test metrics of the best weights.
    pub test: Metrics,
    /// The best model.
    pub model: DiffRec,
    /// Mean seconds per training epoch.
    pub epoch_seconds: f64,
}

/// Train on `ds` with early stopping on valid Recall@20; test at the best epoch.
pub fn train(
    ds: &Dataset,
    cfg: &DiffRecConfig,
    quiet: bool,
    mut on_record: impl FnMut(&DiffRecRecord),
) -> Result<DiffRecOutcome> {
    let sched = schedule(cfg)?;
    let ni = ds.n_items();
    let mut model = DiffRec::new(ni, cfg.step_dim, &cfg.hidden, cfg.seed);
    let sizes: Vec<usize> = model.params_mut().iter().map(|p| p.len()).collect();
    let mut adam = Adam::new(
        AdamConfig {
            weight_decay: cfg.weight_decay,
            ..AdamConfig::with_lr(cfg.lr)
        },
        &sizes,
    );
    let mut g = model.zero_grads();
    let mut sampler = StepSampler::new(cfg.steps);
    let train_csr = ds.train();
    let mut users: Vec<u32> = (0..ds.n_users() as u32)
        .filter(|&u| train_csr.row_len(u as usize) > 0)
        .collect();
    let mut stop = EarlyStop::new(cfg.patience);
    let (mut step, mut train_time, mut epochs_run) = (0u64, 0f64, 0usize);
    let bar = progress::bar(cfg.epochs as u64, "DiffRec", quiet);
    let keep = 1.0 - cfg.dropout;
    for epoch in 1..=cfg.epochs {
        let t0 = Instant::now();
        Rng::stream(cfg.seed, 0xD1F1_0000 + epoch as u64).shuffle(&mut users);
        let (mut lsum, mut nb) = (0f64, 0usize);
        for chunk in users.chunks(cfg.batch.max(1)) {
            let n = chunk.len();
            let mut rng = Rng::stream(cfg.seed, 0xD1F2_0000_0000 + step);
            let b = VaeBatch::build(&train_csr, chunk, 0.0, &mut rng);
            let x0 = dense_targets(&b, ni);
            let (ts, pt) = sampler.sample(n, cfg.reweight, &mut rng);
            let mut x_t = vec![0f32; n * ni];
            Rng::fill_normal_par(&mut x_t, 1.0, rng.next_u64());
            // x_t = √ᾱ x0 + √(1−ᾱ) ε, then input dropout (kept entries scaled by 1/keep)
            let drop_seed = rng.next_u64();
            x_t.par_chunks_mut(ni).enumerate().for_each(|(r, row)| {
                let (a, s) = sched.q_coefs(ts[r]);
                let mut dr = Rng::stream(drop_seed, r as u64);
                for j in 0..ni {
                    let v = a * x0[r * ni + j] + s * row[j];
                    row[j] = if cfg.dropout > 0.0 {
                        if dr.uniform_f32() < cfg.dropout {
                            0.0
                        } else {
                            v / keep
                        }
                    } else {
                        v
                    };
                }
            });
            let snr_w: Vec<f64> = ts
                .iter()
                .map(|&t| {
                    if cfg.reweight {
                        snr_weight(&sched, t)
                    } else {
                        1.0
                    }
                })
                .collect();
            let w: Vec<f32> = (0..n).map(|r| (snr_w[r] / pt[r]) as f32).collect();
            let (loss, mse) = model.loss_and_grads(&x_t, &x0, &ts, &w, &mut g);
            for r in 0..n {
                sampler.record(ts[r], snr_w[r] * mse[r]);
            }
            adam.begin_step();
            let grads: Vec<&Vec<f32>> = std::iter::once(&g.step.w)
                .chain(std::iter::once(&g.step.b))
                .chain(g.mlp.iter().flat_map(|l| [&l.w, &l.b]))
                .collect();
            for (k, p) in model.params_mut().into_iter().enumerate() {
                adam.update(k, p, grads[k]);
            }
            lsum += loss;
            nb += 1;
            step += 1;
        }
        let secs = t0.elapsed().as_secs_f64();
        train_time += secs;
        epochs_run += 1;
        bar.inc(1);
        let nbf = nb.max(1) as f64;
        bar.set_prefix(format!("loss {:.4} {:.1}s/epoch", lsum / nbf, secs));
        if epoch % cfg.eval_every.max(1) == 0 || epoch == cfg.epochs {
            let valid = model.evaluate(&sched, ds, Split::Valid, &cfg.ks);
            let rec = DiffRecRecord {
                epoch,
                loss: lsum / nbf,
                train_seconds: secs,
                valid: valid.clone(),
            };
            on_record(&rec);
            if stop.observe(epoch, valid, || model.clone()) {
                break;
            }
        }
    }
    bar.finish_and_clear();
    let (best_epoch, best_valid, model) = stop.into_best().expect("at least one validation runs");
    let test = model.evaluate(&sched, ds, Split::Test, &cfg.ks);
    Ok(DiffRecOutcome {
        best_epoch,
        best_valid,
        test,
        model,
        epoch_seconds: train_time / epochs_run.max(1) as f64,
    })
}
