//! MultiVAE (Liang et al., *Variational Autoencoders for Collaborative Filtering*, WWW 2018),
//! one of the paper's comparison systems (Table 2), with a hand-written backward.
//!
//! A user's binary train row x (I items) is L2-normalized, dropped out (training only) and
//! encoded: `h1 = tanh(x̃ W1 + b1)`, `[μ, log σ²] = h1 W2 + b2`; `z = μ + ε ⊙ σ` (training) or
//! `z = μ` (inference); decoded: `h3 = tanh(z W3 + b3)`, `logits = h3 W4 + b4`. The loss per
//! batch is the multinomial negative log-likelihood plus β·KL, averaged over users:
//! `L = (1/n) Σ_u [ −Σ_i x_ui log softmax(logits_u)_i + β KL(q(z|x_u) ‖ N(0, I)) ]`, with β
//! annealed linearly to `beta_cap` over `anneal_steps` steps.
//!
//! The input is sparse (a user has tens of items out of thousands), so the first layer is a
//! sum of W1 rows and its gradient touches only those rows. The scores `h3 W4 + b4` are an inner
//! product of `[h3, 1]` with the item rows `[W4ᵀ | b4]`, so ranking goes through the same fused
//! score + mask + top-K kernel as every other model.

use crate::data::{CsrView, Dataset, Split};
use crate::eval::{eval_users, evaluate_queries, EarlyStop, Metrics};
use crate::kernels::cpu::elementwise::{axpy, exp_inplace, tanh_inplace};
use crate::kernels::cpu::topk::PackedItems;
use crate::kernels::cpu::Act;
use crate::nn::{Adam, AdamConfig, Linear, LinearGrad};
use crate::util::progress;
use crate::util::rng::Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Hyper-parameters (defaults: the original code's ML-20M settings, also DiffRec's baseline).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct VaeConfig {
    /// Hidden width of the encoder and decoder.
    pub hidden: usize,
    /// Latent width.
    pub latent: usize,
    /// Input dropout probability.
    pub dropout: f32,
    /// Final KL weight β.
    pub beta_cap: f32,
    /// Steps over which β grows linearly from 0 to `beta_cap`.
    pub anneal_steps: u64,
    /// Adam learning rate.
    pub lr: f32,
    /// L2 weight decay (Adam).
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

impl Default for VaeConfig {
    fn default() -> Self {
        VaeConfig {
            hidden: 600,
            latent: 200,
            dropout: 0.5,
            beta_cap: 0.2,
            anneal_steps: 200_000,
            lr: 1e-3,
            weight_decay: 0.0,
            batch: 500,
            epochs: 200,
            eval_every: 5,
            patience: 5,
            seed: 2020,
            ks: vec![10, 20],
        }
    }
}

/// A batch of users: the (dropped-out, normalized) sparse input and the binary targets.
#[derive(Clone, Debug, Default)]
pub struct VaeBatch {
    /// Row pointers of the input (`n + 1`).
    pub in_ptr: Vec<usize>,
    /// Input item ids.
    pub in_idx: Vec<u32>,
    /// Input values.
    pub in_val: Vec<f32>,
    /// Row pointers of the targets (`n + 1`).
    pub tg_ptr: Vec<usize>,
    /// Target item ids (the user's train items; value 1).
    pub tg_idx: Vec<u32>,
}

impl VaeBatch {
    /// Users in the batch.
    pub fn n(&self) -> usize {
        self.in_ptr.len().saturating_sub(1)
    }

    /// The batch for `users` of `train`: rows normalized to unit L2 norm; with `dropout > 0`
    /// each entry is kept with probability `1 − dropout` and scaled by `1 / (1 − dropout)`.
    pub fn build(train: &CsrView, users: &[u32], dropout: f32, rng: &mut Rng) -> Self {
        Self::build_with(train, users, dropout, true, rng)
    }

    /// [`Self::build`] with the normalization optional (`normalize = false`: entries are 1
    /// before dropout scaling).
    pub fn build_with(
        train: &CsrView,
        users: &[u32],
        dropout: f32,
        normalize: bool,
        rng: &mut Rng,
    ) -> Self {
        let mut b = VaeBatch {
            in_ptr: vec![0],
            tg_ptr: vec![0],
            ..Default::default()
        };
        let keep_scale = if dropout > 0.0 {
            1.0 / (1.0 - dropout)
        } else {
            1.0
        };
        for &u in users {
            let row = train.row(u as usize);
            let v = if !normalize {
                1.0
            } else if row.is_empty() {
                0.0
            } else {
                1.0 / (row.len() as f32).sqrt()
            };
            for &i in row {
                b.tg_idx.push(i);
                if dropout > 0.0 && rng.uniform_f32() < dropout {
                    continue;
                }
                b.in_idx.push(i);
                b.in_val.push(v * keep_scale);
            }
            b.in_ptr.push(b.in_idx.len());
            b.tg_ptr.push(b.tg_idx.len());
        }
        b
    }
}

/// Activations kept for the backward.
struct Cache {
    h1: Vec<f32>,
    mu_lv: Vec<f32>,
    z: Vec<f32>,
    h3: Vec<f32>,
    logits: Vec<f32>,
}

/// The model.
#[derive(Clone, Debug, PartialEq)]
pub struct MultVae {
    /// Items.
    pub n_items: usize,
    /// Encoder input layer `I x H` (applied sparsely).
    pub enc1: Linear,
    /// Encoder output layer `H x 2L` (μ then log σ²).
    pub enc2: Linear,
    /// Decoder hidden layer `L x H`.
    pub dec1: Linear,
    /// Decoder output layer `H x I`.
    pub dec2: Linear,
}

/// Gradients of the four layers.
pub struct VaeGrads {
    /// Per layer, in the order enc1, enc2, dec1, dec2.
    pub layers: [LinearGrad; 4],
}

/// Loss parts of one batch (means over its users).
#[derive(Clone, Copy, Debug, Default)]
pub struct VaeLoss {
    /// Multinomial negative log-likelihood.
    pub nll: f64,
    /// KL divergence (unweighted).
    pub kl: f64,
}

impl MultVae {
    /// Xavier-normal weights, N(0, 0.001²) biases (the original initialization).
    pub fn new(n_items: usize, hidden: usize, latent: usize, seed: u64) -> Self {
        let mut rng = Rng::stream(seed, 0x7AE0);
        MultVae {
            n_items,
            enc1: Linear::xavier_normal(n_items, hidden, 1e-3, &mut rng),
            enc2: Linear::xavier_normal(hidden, 2 * latent, 1e-3, &mut rng),
            dec1: Linear::xavier_normal(latent, hidden, 1e-3, &mut rng),
            dec2: Linear::xavier_normal(hidden, n_items, 1e-3, &mut rng),
        }
    }

    /// Latent width.
    pub fn latent(&self) -> usize {
        self.dec1.din
    }

    /// Hidden width.
    pub fn hidden(&self) -> usize {
        self.enc1.dout
    }

    /// Zeroed gradients.
    pub fn zero_grads(&self) -> VaeGrads {
        VaeGrads {
            layers: [
                self.enc1.zero_grad(),
                self.enc2.zero_grad(),
                self.dec1.zero_grad(),
                self.dec2.zero_grad(),
            ],
        }
    }

    /// The four layers, in gradient order.
    pub fn layers_mut(&mut self) -> [&mut Linear; 4] {
        [
            &mut self.enc1,
            &mut self.enc2,
            &mut self.dec1,
            &mut self.dec2,
        ]
    }

    /// `h1 = tanh(x̃ W1 + b1)` for the sparse input.
    fn encode_hidden(&self, b: &VaeBatch) -> Vec<f32> {
        let h = self.hidden();
        let mut h1 = vec![0f32; b.n() * h];
        h1.par_chunks_mut(h).enumerate().for_each(|(r, row)| {
            row.copy_from_slice(&self.enc1.b);
            for p in b.in_ptr[r]..b.in_ptr[r + 1] {
                let i = b.in_idx[p] as usize;
                axpy(b.in_val[p], &self.enc1.w[i * h..(i + 1) * h], row);
            }
            tanh_inplace(row);
        });
        h1
    }

    /// Forward; `eps` (`n x L`) samples z = μ + ε σ, `None` takes z = μ.
    fn forward(&self, b: &VaeBatch, eps: Option<&[f32]>) -> Cache {
        let (n, l) = (b.n(), self.latent());
        let h1 = self.encode_hidden(b);
        let mut mu_lv = vec![0f32; n * 2 * l];
        self.enc2.forward(&h1, n, Act::None, &mut mu_lv);
        let mut z = vec![0f32; n * l];
        for r in 0..n {
            let (mu, lv) = mu_lv[r * 2 * l..(r + 1) * 2 * l].split_at(l);
            for j in 0..l {
                z[r * l + j] = match eps {
                    Some(e) => mu[j] + e[r * l + j] * (0.5 * lv[j]).exp(),
                    None => mu[j],
                };
            }
        }
        let mut h3 = vec![0f32; n * self.hidden()];
        self.dec1.forward(&z, n, Act::Tanh, &mut h3);
        let mut logits = vec![0f32; n * self.n_items];
        self.dec2.forward(&h3, n, Act::None, &mut logits);
        Cache {
            h1,
            mu_lv,
            z,
            h3,
            logits,
        }
    }

    /// Loss of a batch with noise `eps` (`n x L`) and KL weight `beta`; gradients written to
    /// `g` (overwritten).
    pub fn loss_and_grads(
        &self,
        b: &VaeBatch,
        eps: &[f32],
        beta: f32,
        g: &mut VaeGrads,
    ) -> VaeLoss {
        let (n, l, ni, h) = (b.n(), self.latent(), self.n_items, self.hidden());
        assert_eq!(eps.len(), n * l, "MultVae: eps must be n x latent");
        if n == 0 {
            return VaeLoss::default();
        }
        let c = self.forward(b, Some(eps));
        // multinomial NLL: dlogits_u = (N_u softmax(logits_u) − x_u) / n, in place
        let inv_n = 1.0 / n as f32;
        let mut dlogits = c.logits;
        let nll: f64 = dlogits
            .par_chunks_mut(ni)
            .enumerate()
            .map(|(r, row)| {
                let tg = &b.tg_idx[b.tg_ptr[r]..b.tg_ptr[r + 1]];
                let picked: f64 = tg.iter().map(|&i| row[i as usize] as f64).sum();
                let mx = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                row.iter_mut().for_each(|v| *v -= mx);
                exp_inplace(row);
                let zsum: f64 = row.iter().map(|&v| v as f64).sum();
                let nu = tg.len() as f64;
                let s = (nu / zsum) as f32 * inv_n;
                row.iter_mut().for_each(|v| *v *= s);
                for &i in tg {
                    row[i as usize] -= inv_n;
                }
                nu * (mx as f64 + zsum.ln()) - picked
            })
            .collect::<Vec<f64>>()
            .iter()
            .sum::<f64>()
            / n as f64;
        let [g1, g2, g3, g4] = &mut g.layers;
        let mut dh3 = vec![0f32; n * h];
        self.dec2.backward(
            &c.h3,
            &[],
            &mut dlogits,
            n,
            Act::None,
            g4,
            Some(&mut dh3),
            false,
        );
        let mut dz = vec![0f32; n * l];
        self.dec1.backward(
            &c.z,
            &c.h3,
            &mut dh3,
            n,
            Act::Tanh,
            g3,
            Some(&mut dz),
            false,
        );
        // reparameterization and KL = −½ Σ (1 + lv − μ² − e^lv), mean over users
        let mut kl = 0f64;
        let mut dmu_lv = vec![0f32; n * 2 * l];
        for r in 0..n {
            let (mu, lv) = c.mu_lv[r * 2 * l..(r + 1) * 2 * l].split_at(l);
            let (dmu, dlv) = dmu_lv[r * 2 * l..(r + 1) * 2 * l].split_at_mut(l);
            for j in 0..l {
                let (m, v) = (mu[j], lv[j]);
                let ev = v.exp();
                kl += -0.5 * (1.0 + v - m * m - ev) as f64;
                let sd = (0.5 * v).exp();
                let dzj = dz[r * l + j];
                dmu[j] = dzj + beta * m * inv_n;
                dlv[j] = dzj * eps[r * l + j] * 0.5 * sd + beta * 0.5 * (ev - 1.0) * inv_n;
            }
        }
        kl /= n as f64;
        let mut dh1 = vec![0f32; n * h];
        self.enc2.backward(
            &c.h1,
            &[],
            &mut dmu_lv,
            n,
            Act::None,
            g2,
            Some(&mut dh1),
            false,
        );
        // through tanh, then the sparse first layer: dW1[i] += x̃_ui · da1_u
        for (d, y) in dh1.iter_mut().zip(&c.h1) {
            *d *= 1.0 - y * y;
        }
        g1.w.fill(0.0);
        g1.b.fill(0.0);
        for r in 0..n {
            let da = &dh1[r * h..(r + 1) * h];
            axpy(1.0, da, &mut g1.b);
            for p in b.in_ptr[r]..b.in_ptr[r + 1] {
                let i = b.in_idx[p] as usize;
                axpy(b.in_val[p], da, &mut g1.w[i * h..(i + 1) * h]);
            }
        }
        VaeLoss { nll, kl }
    }

    /// Ranking queries `[h3, 1]` (`users x (H + 1)`) from each user's train row, no dropout,
    /// z = μ.
    pub fn queries(&self, train: &CsrView, users: &[u32]) -> Vec<f32> {
        let h = self.hidden();
        let mut rng = Rng::new(0); // unused: no dropout
        let mut q = vec![0f32; users.len() * (h + 1)];
        for (s, chunk) in users.chunks(1024).enumerate() {
            let b = VaeBatch::build(train, chunk, 0.0, &mut rng);
            let c = self.forward(&b, None);
            for r in 0..chunk.len() {
                let o = (s * 1024 + r) * (h + 1);
                q[o..o + h].copy_from_slice(&c.h3[r * h..(r + 1) * h]);
                q[o + h] = 1.0;
            }
        }
        q
    }

    /// Item rows `[W4ᵀ | b4]` (`I x (H + 1)`): a user's scores are `query · row`.
    pub fn item_matrix(&self) -> Vec<f32> {
        let (h, ni) = (self.hidden(), self.n_items);
        let mut m = vec![0f32; ni * (h + 1)];
        m.par_chunks_mut(h + 1).enumerate().for_each(|(i, row)| {
            for k in 0..h {
                row[k] = self.dec2.w[k * ni + i];
            }
            row[h] = self.dec2.b[i];
        });
        m
    }

    /// Full-ranking metrics on `split` (input: the train rows).
    pub fn evaluate(&self, ds: &Dataset, split: Split, ks: &[usize]) -> Metrics {
        let users = eval_users(ds, split);
        let q = self.queries(&ds.train(), &users);
        let items = PackedItems::new(&self.item_matrix(), ds.n_items(), self.hidden() + 1);
        evaluate_queries(ds, split, &users, &q, &items, ks)
    }
}

/// One validation record.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VaeRecord {
    /// Epoch (1-based).
    pub epoch: usize,
    /// Mean NLL over the epoch's batches.
    pub loss: f64,
    /// Mean KL.
    pub kl: f64,
    /// KL weight at the end of the epoch.
    pub beta: f64,
    /// Seconds of training in this epoch.
    pub train_seconds: f64,
    /// Validation metrics.
    pub valid: Metrics,
}

/// What training produced.
pub struct VaeOutcome {
    /// Epoch with the best valid Recall@20.
    pub best_epoch: usize,
    /// Valid metrics there.
    pub best_valid: Metrics,
    /// Test metrics of the best weights.
    pub test: Metrics,
    /// The best model.
    pub model: MultVae,
    /// Mean seconds per training epoch.
    pub epoch_seconds: f64,
}

/// Train on `ds` with early stopping on valid Recall@20; test at the best epoch.
pub fn train(
    ds: &Dataset,
    cfg: &VaeConfig,
    quiet: bool,
    mut on_record: impl FnMut(&VaeRecord),
) -> VaeOutcome {
    let ni = ds.n_items();
    let mut model = MultVae::new(ni, cfg.hidden, cfg.latent, cfg.seed);
    let sizes: Vec<usize> = model
        .layers_mut()
        .iter()
        .flat_map(|l| [l.w.len(), l.b.len()])
        .collect();
    let mut adam = Adam::new(
        AdamConfig {
            weight_decay: cfg.weight_decay,
            ..AdamConfig::with_lr(cfg.lr)
        },
        &sizes,
    );
    let mut g = model.zero_grads();
    let train_csr = ds.train();
    let mut users: Vec<u32> = (0..ds.n_users() as u32)
        .filter(|&u| train_csr.row_len(u as usize) > 0)
        .collect();
    let mut stop = EarlyStop::new(cfg.patience);
    let (mut step, mut train_time, mut epochs_run) = (0u64, 0f64, 0usize);
    let bar = progress::bar(cfg.epochs as u64, "MultiVAE", quiet);
    let l = cfg.latent;
    for epoch in 1..=cfg.epochs {
        let t0 = Instant::now();
        Rng::stream(cfg.seed, 0x7AE1_0000 + epoch as u64).shuffle(&mut users);
        let (mut nll, mut kl, mut nb, mut beta) = (0f64, 0f64, 0usize, 0f32);
        for chunk in users.chunks(cfg.batch.max(1)) {
            let mut rng = Rng::stream(cfg.seed, 0x7AE2_0000_0000 + step);
            let b = VaeBatch::build(&train_csr, chunk, cfg.dropout, &mut rng);
            let mut eps = vec![0f32; chunk.len() * l];
            rng.fill_normal(&mut eps, 1.0);
            beta = if cfg.anneal_steps == 0 {
                cfg.beta_cap
            } else {
                cfg.beta_cap.min(step as f32 / cfg.anneal_steps as f32)
            };
            let lo = model.loss_and_grads(&b, &eps, beta, &mut g);
            adam.begin_step();
            for (k, layer) in model.layers_mut().into_iter().enumerate() {
                adam.update(2 * k, &mut layer.w, &g.layers[k].w);
                adam.update(2 * k + 1, &mut layer.b, &g.layers[k].b);
            }
            nll += lo.nll;
            kl += lo.kl;
            nb += 1;
            step += 1;
        }
        let secs = t0.elapsed().as_secs_f64();
        train_time += secs;
        epochs_run += 1;
        bar.inc(1);
        let nbf = nb.max(1) as f64;
        bar.set_prefix(format!("nll {:.2} {:.1}s/epoch", nll / nbf, secs));
        if epoch % cfg.eval_every.max(1) == 0 || epoch == cfg.epochs {
            let valid = model.evaluate(ds, Split::Valid, &cfg.ks);
            let rec = VaeRecord {
                epoch,
                loss: nll / nbf,
                kl: kl / nbf,
                beta: beta as f64,
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
    let test = model.evaluate(ds, Split::Test, &cfg.ks);
    VaeOutcome {
        best_epoch,
        best_valid,
        test,
        model,
        epoch_seconds: train_time / epochs_run.max(1) as f64,
    }
}
