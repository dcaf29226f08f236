//! CDAE (Wu et al., *Collaborative Denoising Auto-Encoders for Top-N Recommender Systems*,
//! WSDM 2016), a comparison system of the paper (Table 2), with a hand-written backward.
//!
//! The user's binary train row x is corrupted by dropout (kept entries scaled by 1/(1 − q)),
//! encoded with a user-specific input node: `h = σ(x̃ W1 + V_u + b1)`, and decoded to logits
//! `z = h W2 + b2`. The loss is the logistic (binary cross-entropy) loss summed over all items,
//! averaged over the batch's users. Scores are the logits (σ is monotone): the inner product of
//! `[h, 1]` with `[W2ᵀ | b2]`, ranked by the fused top-K kernel.

use super::multivae::VaeBatch;
use crate::data::{CsrView, Dataset, Split};
use crate::eval::{eval_users, evaluate_queries, EarlyStop, Metrics};
use crate::kernels::cpu::elementwise::{axpy, sigmoid, sigmoid_inplace, softplus};
use crate::kernels::cpu::topk::PackedItems;
use crate::kernels::cpu::Act;
use crate::nn::{Adam, AdamConfig, Linear, LinearGrad};
use crate::util::progress;
use crate::util::rng::Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Hyper-parameters.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CdaeConfig {
    /// Hidden width.
    pub hidden: usize,
    /// Input corruption (dropout) probability q.
    pub corruption: f32,
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

impl Default for CdaeConfig {
    fn default() -> Self {
        CdaeConfig {
            hidden: 200,
            corruption: 0.5,
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

/// The model.
#[derive(Clone, Debug, PartialEq)]
pub struct Cdae {
    /// Items.
    pub n_items: usize,
    /// Encoder `I x H` (applied sparsely).
    pub enc: Linear,
    /// User input nodes `U x H`.
    pub user: Vec<f32>,
    /// Decoder `H x I`.
    pub dec: Linear,
}

/// Gradients of a batch.
pub struct CdaeGrads {
    /// Encoder.
    pub enc: LinearGrad,
    /// Rows of the user table for the batch's users (`n x H`, batch order).
    pub user_rows: Vec<f32>,
    /// Decoder.
    pub dec: LinearGrad,
}

impl Cdae {
    /// Xavier-normal weights, N(0, 0.01²) user nodes, N(0, 0.001²) biases.
    pub fn new(n_users: usize, n_items: usize, hidden: usize, seed: u64) -> Self {
        let mut rng = Rng::stream(seed, 0xCDAE);
        let enc = Linear::xavier_normal(n_items, hidden, 1e-3, &mut rng);
        let dec = Linear::xavier_normal(hidden, n_items, 1e-3, &mut rng);
        let mut user = vec![0f32; n_users * hidden];
        rng.fill_normal(&mut user, 0.01);
        Cdae {
            n_items,
            enc,
            user,
            dec,
        }
    }

    /// Hidden width.
    pub fn hidden(&self) -> usize {
        self.enc.dout
    }

    /// Zeroed gradients for a batch of `n` users.
    pub fn zero_grads(&self, n: usize) -> CdaeGrads {
        CdaeGrads {
            enc: self.enc.zero_grad(),
            user_rows: vec![0.0; n * self.hidden()],
            dec: self.dec.zero_grad(),
        }
    }

    /// `h = σ(x̃ W1 + V_u + b1)` for the batch's sparse input.
    fn hidden_layer(&self, users: &[u32], b: &VaeBatch) -> Vec<f32> {
        let h = self.hidden();
        let mut out = vec![0f32; users.len() * h];
        out.par_chunks_mut(h).enumerate().for_each(|(r, row)| {
            let u = users[r] as usize;
            row.copy_from_slice(&self.enc.b);
            axpy(1.0, &self.user[u * h..(u + 1) * h], row);
            for p in b.in_ptr[r]..b.in_ptr[r + 1] {
                let i = b.in_idx[p] as usize;
                axpy(b.in_val[p], &self.enc.w[i * h..(i + 1) * h], row);
            }
            sigmoid_inplace(row);
        });
        out
    }

    /// Loss of a batch (`users` distinct, `b` their corrupted rows and targets); gradients
    /// written to `g` (overwritten; `g.user_rows` resized to the batch).
    pub fn loss_and_grads(&self, users: &[u32], b: &VaeBatch, g: &mut CdaeGrads) -> f64 {
        let (n, ni, hd) = (users.len(), self.n_items, self.hidden());
        assert_eq!(b.n(), n, "CDAE: one batch row per user");
        if n == 0 {
            return 0.0;
        }
        let h = self.hidden_layer(users, b);
        let mut z = vec![0f32; n * ni];
        self.dec.forward(&h, n, Act::None, &mut z);
        // L = (1/n) Σ_u Σ_i softplus(z) − y z ; dz = (σ(z) − y) / n, in place
        let inv_n = 1.0 / n as f32;
        let loss: f64 = z
            .par_chunks_mut(ni)
            .enumerate()
            .map(|(r, row)| {
                let tg = &b.tg_idx[b.tg_ptr[r]..b.tg_ptr[r + 1]];
                let mut l = 0f64;
                for &i in tg {
                    l -= row[i as usize] as f64;
                }
                for v in row.iter_mut() {
                    l += softplus(*v) as f64;
                    *v = sigmoid(*v) * inv_n;
                }
                for &i in tg {
                    row[i as usize] -= inv_n;
                }
                l
            })
            .collect::<Vec<f64>>()
            .iter()
            .sum::<f64>()
            / n as f64;
        let mut dh = vec![0f32; n * hd];
        self.dec.backward(
            &h,
            &[],
            &mut z,
            n,
            Act::None,
            &mut g.dec,
            Some(&mut dh),
            false,
        );
        for (d, y) in dh.iter_mut().zip(&h) {
            *d *= y * (1.0 - y);
        }
        g.enc.w.fill(0.0);
        g.enc.b.fill(0.0);
        for r in 0..n {
            let da = &dh[r * hd..(r + 1) * hd];
            axpy(1.0, da, &mut g.enc.b);
            for p in b.in_ptr[r]..b.in_ptr[r + 1] {
                let i = b.in_idx[p] as usize;
                axpy(b.in_val[p], da, &mut g.enc.w[i * hd..(i + 1) * hd]);
            }
        }
        g.user_rows = dh;
        loss
    }

    /// Ranking queries `[h, 1]` from each user's uncorrupted train row.
    pub fn queries(&self, train: &CsrView, users: &[u32]) -> Vec<f32> {
        let hd = self.hidden();
        let mut rng = Rng::new(0); // no corruption: unused
        let mut q = vec![0f32; users.len() * (hd + 1)];
        for (s, chunk) in users.chunks(1024).enumerate() {
            let b = VaeBatch::build_with(train, chunk, 0.0, false, &mut rng);
            let h = self.hidden_layer(chunk, &b);
            for r in 0..chunk.len() {
                let o = (s * 1024 + r) * (hd + 1);
                q[o..o + hd].copy_from_slice(&h[r * hd..(r + 1) * hd]);
                q[o + hd] = 1.0;
            }
        }
        q
    }

    /// Item rows `[W2ᵀ | b2]`.
    pub fn item_matrix(&self) -> Vec<f32> {
        let (hd, ni) = (self.hidden(), self.n_items);
        let mut m = vec![0f32; ni * (hd + 1)];
        m.par_chunks_mut(hd + 1).enumerate().for_each(|(i, row)| {
            for k in 0..hd {
                row[k] = self.dec.w[k * ni + i];
            }
            row[hd] = self.dec.b[i];
        });
        m
    }

    /// Full-ranking metrics on `split`.
    pub fn evaluate(&self, ds: &Dataset, split: Split, ks: &[usize]) -> Metrics {
        let users = eval_users(ds, split);
        let q = self.queries(&ds.train(), &users);
        let items = PackedItems::new(&self.item_matrix(), ds.n_items(), self.hidden() + 1);
        evaluate_queries(ds, split, &users, &q, &items, ks)
    }
}

/// One validation record.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CdaeRecord {
    /// Epoch (1-based).
    pub epoch: usize,
    /// Mean loss over the epoch's batches.
    pub loss: f64,
    /// Seconds of training in this epoch.
    pub train_seconds: f64,
    /// Validation metrics.
    pub valid: Metrics,
}

/// What training produced.
pub struct CdaeOutcome {
    /// Epoch with the best valid Recall@20.
    pub best_epoch: usize,
    /// Valid metrics there.
    pub best_valid: Metrics,
    /// Test metrics of the best weights.
    pub test: Metrics,
    /// The best model.
    pub model: Cdae,
    /// Mean seconds per training epoch.
    pub epoch_seconds: f64,
}

/// Train on `ds` with early stopping on valid Recall@20; test at the best epoch.
pub fn train(
    ds: &Dataset,
    cfg: &CdaeConfig,
    quiet: bool,
    mut on_record: impl FnMut(&CdaeRecord),
) -> CdaeOutcome {
    let (nu, ni, hd) = (ds.n_users(), ds.n_items(), cfg.hidden);
    let mut model = Cdae::new(nu, ni, hd, cfg.seed);
    let mut adam = Adam::new(
        AdamConfig {
            weight_decay: cfg.weight_decay,
            ..AdamConfig::with_lr(cfg.lr)
        },
        &[
            model.enc.w.len(),
            model.enc.b.len(),
            model.dec.w.len(),
            model.dec.b.len(),
            model.user.len(),
        ],
    );
    let mut g = model.zero_grads(0);
    let train_csr = ds.train();
    let mut users: Vec<u32> = (0..nu as u32)
        .filter(|&u| train_csr.row_len(u as usize) > 0)
        .collect();
    let mut stop = EarlyStop::new(cfg.patience);
    let (mut step, mut train_time, mut epochs_run) = (0u64, 0f64, 0usize);
    let bar = progress::bar(cfg.epochs as u64, "CDAE", quiet);
    for epoch in 1..=cfg.epochs {
        let t0 = Instant::now();
        Rng::stream(cfg.seed, 0xCDA1_0000 + epoch as u64).shuffle(&mut users);
        let (mut lsum, mut nb) = (0f64, 0usize);
        for chunk in users.chunks(cfg.batch.max(1)) {
            let mut rng = Rng::stream(cfg.seed, 0xCDA2_0000_0000 + step);
            let b = VaeBatch::build_with(&train_csr, chunk, cfg.corruption, false, &mut rng);
            let loss = model.loss_and_grads(chunk, &b, &mut g);
            adam.begin_step();
            adam.update(0, &mut model.enc.w, &g.enc.w);
            adam.update(1, &mut model.enc.b, &g.enc.b);
            adam.update(2, &mut model.dec.w, &g.dec.w);
            adam.update(3, &mut model.dec.b, &g.dec.b);
            adam.update_rows(4, &mut model.user, hd, chunk, &g.user_rows);
            lsum += loss;
            nb += 1;
            step += 1;
        }
        let secs = t0.elapsed().as_secs_f64();
        train_time += secs;
        epochs_run += 1;
        bar.inc(1);
        let nbf = nb.max(1) as f64;
        bar.set_prefix(format!("loss {:.2} {:.1}s/epoch", lsum / nbf, secs));
        if epoch % cfg.eval_every.max(1) == 0 || epoch == cfg.epochs {
            let valid = model.evaluate(ds, Split::Valid, &cfg.ks);
            let rec = CdaeRecord {
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
    let test = model.evaluate(ds, Split::Test, &cfg.ks);
    CdaeOutcome {
        best_epoch,
        best_valid,
        test,
        model,
        epoch_seconds: train_time / epochs_run.max(1) as f64,
    }
}
