//! AdaGCL (Jiang et al., KDD 2023), a comparison system of the paper: graph contrastive
//! learning between two **learned** views, trained as the authors' public code trains it.
//!
//! - Main model: node embeddings propagated through `Â = D^-1/2 (A+I) D^-1/2`, summing the
//!   layers ([`graph`]).
//! - View 1: a VGAE generator ([`vgae`]) keeps the edges it reconstructs with p ≥ 0.5.
//! - View 2: a denoising net ([`edge_mask`]) gates each edge per layer.
//! - Each batch takes three optimizer steps on the main model: the contrastive loss between
//!   the views ([`contrast`], weight `ssl`); the information-bottleneck loss between the views
//!   recomputed after that step and the first ones (weight `ib`); then BPR + L2 on `Â`,
//!   together with one step of each generator on its own loss.
//! - Ranking: inner products of the main model's summed layers on `Â`.

pub mod contrast;
pub mod edge_mask;
pub mod graph;
pub mod init;
pub mod losses;
pub mod vgae;

use crate::data::{Dataset, Split};
use crate::eval::{evaluate_embeddings, EarlyStop, Metrics};
use crate::kernels::cpu::spmm::{spmm, SparseMatrix};
use crate::nn::{Adam, AdamConfig};
use crate::util::progress;
use crate::util::rng::Rng;
use contrast::{batch_rows, scatter_batch_rows, Contrast};
use edge_mask::{EdgeMasker, GateConfig};
use graph::{propagation_backward, LoopGraph, Propagation};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::time::Instant;
use vgae::Vgae;

/// Hyper-parameters (defaults: the authors' `Params.py`, embedding width 64 as our backends).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AdaGclConfig {
    /// Embedding width.
    pub dim: usize,
    /// Propagation layers.
    pub layers: usize,
    /// Learning rate of the three Adam optimizers.
    pub lr: f32,
    /// Batch size (BPR sums are divided by it).
    pub batch: usize,
    /// L2 weight on the main model's tables and on each generator.
    pub reg: f32,
    /// Weight of the contrastive loss.
    pub ssl: f32,
    /// Weight of the information-bottleneck loss.
    pub ib: f32,
    /// Temperature of the contrastive loss.
    pub temp: f32,
    /// Gate limits and L0 weight of the denoising net.
    pub gate: GateConfig,
    /// Gate temperature at epoch 0.
    pub gate_temp: f32,
    /// Per-epoch decay of the gate temperature (floored at 0.05).
    pub gate_decay: f32,
    /// Adam epsilon of the denoising net.
    pub masker_eps: f32,
    /// Maximum epochs.
    pub epochs: usize,
    /// Validate every N epochs.
    pub eval_every: usize,
    /// Validations without improvement before stopping.
    pub patience: usize,
    /// Seed.
    pub seed: u64,
    /// Cut-offs.
    pub ks: Vec<usize>,
}

impl Default for AdaGclConfig {
    fn default() -> Self {
        AdaGclConfig {
            dim: 64,
            layers: 2,
            lr: 1e-3,
            batch: 4096,
            reg: 1e-5,
            ssl: 0.1,
            ib: 0.1,
            temp: 0.5,
            gate: GateConfig::default(),
            gate_temp: 2.0,
            gate_decay: 0.98,
            masker_eps: 1e-3,
            epochs: 60,
            eval_every: 5,
            patience: 5,
            seed: 2020,
            ks: vec![10, 20],
        }
    }
}

impl AdaGclConfig {
    /// Gate temperature of a (0-based) epoch.
    pub fn gate_temperature(&self, epoch0: usize) -> f32 {
        (self.gate_temp * self.gate_decay.powi(epoch0 as i32)).max(0.05)
    }
}

/// The model and its two generators.
#[derive(Clone, Debug)]
pub struct AdaGcl {
    /// Hyper-parameters.
    pub cfg: AdaGclConfig,
    /// `Â` with self-loops.
    pub graph: LoopGraph,
    /// Main node embeddings, `n x dim`.
    pub emb: Vec<f32>,
    /// The main embeddings at initialization: the denoising net's training input (the
    /// authors' code hands it `getEmbeds()` once, detached).
    pub features: Vec<f32>,
    /// View 1 generator.
    pub vgae: Vgae,
    /// View 2 generator.
    pub masker: EdgeMasker,
}

/// Mean losses over an epoch's batches.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct AdaGclLosses {
    /// Contrastive loss (weighted).
    pub ssl: f64,
    /// Information bottleneck (weighted).
    pub ib: f64,
    /// Main BPR.
    pub bpr: f64,
    /// Main L2.
    pub reg: f64,
    /// VGAE loss.
    pub gen1: f64,
    /// Denoising-net loss.
    pub gen2: f64,
    /// Fraction of `Â`'s entries view 1 kept.
    pub view1_kept: f64,
}

impl AdaGclLosses {
    fn add(&mut self, o: &AdaGclLosses) {
        self.ssl += o.ssl;
        self.ib += o.ib;
        self.bpr += o.bpr;
        self.reg += o.reg;
        self.gen1 += o.gen1;
        self.gen2 += o.gen2;
        self.view1_kept += o.view1_kept;
    }
    fn scaled(&self, s: f64) -> AdaGclLosses {
        AdaGclLosses {
            ssl: self.ssl * s,
            ib: self.ib * s,
            bpr: self.bpr * s,
            reg: self.reg * s,
            gen1: self.gen1 * s,
            gen2: self.gen2 * s,
            view1_kept: self.view1_kept * s,
        }
    }
}

/// Optimizer state of a training run.
pub struct AdaGclOptim {
    main: Adam,
    gen1: Adam,
    gen2: Adam,
    step: u64,
    contrast: Contrast,
}

const TAG_VIEW: u64 = 0xADA6_0001_0000_0000;
const TAG_VGAE: u64 = 0xADA6_0002_0000_0000;
const TAG_GATE: u64 = 0xADA6_0003_0000_0000;

fn add_into(a: &mut [f32], b: &[f32]) {
    a.par_iter_mut().zip(b).for_each(|(x, y)| *x += y);
}

impl AdaGcl {
    /// A fresh model for `ds`.
    pub fn new(ds: &Dataset, cfg: AdaGclConfig) -> Self {
        let graph = LoopGraph::new(ds);
        let mut rng = Rng::stream(cfg.seed, 0xADA6_0000);
        let emb = init::node_embeddings(ds.n_users(), ds.n_items(), cfg.dim, &mut rng);
        let vgae = Vgae::new(ds.n_users(), graph.n_nodes(), cfg.dim, cfg.layers, &mut rng);
        let masker = EdgeMasker::new(cfg.dim, cfg.layers, cfg.gate, &mut rng);
        AdaGcl {
            features: emb.clone(),
            cfg,
            graph,
            emb,
            vgae,
            masker,
        }
    }

    /// Fresh optimizers.
    pub fn optimizer(&mut self) -> AdaGclOptim {
        let lr = AdamConfig::with_lr(self.cfg.lr);
        let sizes = |v: Vec<&mut Vec<f32>>| v.iter().map(|t| t.len()).collect::<Vec<_>>();
        AdaGclOptim {
            main: Adam::new(lr, &[self.emb.len()]),
            gen1: Adam::new(lr, &sizes(self.vgae.tensors_mut())),
            gen2: Adam::new(
                AdamConfig {
                    eps: self.cfg.masker_eps,
                    ..lr
                },
                &sizes(self.masker.tensors_mut()),
            ),
            step: 0,
            contrast: Contrast::default(),
        }
    }

    /// The main model's summed propagation on `Â` (the ranking embeddings), `n x dim`.
    pub fn final_embeddings(&self) -> Vec<f32> {
        let mats: Vec<&SparseMatrix> = (0..self.cfg.layers).map(|_| &self.graph.adj).collect();
        Propagation::run(&self.emb, self.cfg.dim, &mats).sum()
    }

    /// View 2 of the current embeddings: the per-layer gated matrices and the propagation.
    fn view2(&self) -> (Vec<SparseMatrix>, Vec<f32>) {
        let d = self.cfg.dim;
        let mut mats = Vec::with_capacity(self.cfg.layers);
        let mut x = self.emb.clone();
        let mut out = x.clone();
        for l in 0..self.cfg.layers {
            let m = self.masker.view_matrix(l, &self.graph, &x);
            let mut next = vec![0f32; x.len()];
            spmm(&m, &x, d, &mut next);
            add_into(&mut out, &next);
            x = next;
            mats.push(m);
        }
        (mats, out)
    }

    /// dL/dE of the summed propagation through `mats` (transposed here).
    fn backprop(&self, dout: &[f32], mats: &[SparseMatrix]) -> Vec<f32> {
        let mut t: Vec<SparseMatrix> = Vec::with_capacity(mats.len());
        for m in mats {
            let mut tm = self.graph.adj.clone();
            self.graph.transpose_values(m, &mut tm);
            t.push(tm);
        }
        let refs: Vec<&SparseMatrix> = t.iter().collect();
        propagation_backward(dout, self.cfg.dim, &refs)
    }

    fn main_step(&mut self, opt: &mut AdaGclOptim, grad: &[f32]) {
        opt.main.begin_step();
        opt.main.update(0, &mut self.emb, grad);
    }

    /// One batch: the three main-model steps and one step of each generator.
    pub fn train_batch(
        &mut self,
        opt: &mut AdaGclOptim,
        users: &[u32],
        pos: &[u32],
        neg: &[u32],
        gate_temp: f32,
    ) -> AdaGclLosses {
        let (d, nl, nu) = (self.cfg.dim, self.cfg.layers, self.graph.n_users);
        let n = self.graph.n_nodes();
        let step = opt.step;
        opt.step += 1;
        let mut lo = AdaGclLosses::default();
        // view 1, generated without gradient
        let mut eps = vec![0f32; n * d];
        Rng::fill_normal_par(&mut eps, 1.0, self.cfg.seed ^ (TAG_VIEW + step));
        let (v1, kept) = self.vgae.view_values(&self.graph, &eps);
        lo.view1_kept = kept as f64 / self.graph.nnz() as f64;
        let s1 = self.graph.with_values(v1);
        let s1_refs: Vec<&SparseMatrix> = vec![&s1; nl];
        // 1. contrastive loss between the views
        let out1 = Propagation::run(&self.emb, d, &s1_refs).sum();
        let (m2, out2) = self.view2();
        let rows1 = batch_rows(&out1, d, nu, users, pos);
        let rows2 = batch_rows(&out2, d, nu, users, pos);
        let mut da = vec![0f32; rows1.len()];
        let mut db = vec![0f32; rows1.len()];
        let (temp, ssl, ib) = (self.cfg.temp, self.cfg.ssl, self.cfg.ib);
        lo.ssl = ssl as f64
            * opt
                .contrast
                .loss(&rows1, &rows2, d, temp, ssl, &mut da, Some(&mut db));
        let mut g1 = vec![0f32; n * d];
        let mut g2 = vec![0f32; n * d];
        scatter_batch_rows(&mut g1, d, nu, users, pos, &da);
        scatter_batch_rows(&mut g2, d, nu, users, pos, &db);
        let mut grad = propagation_backward(&g1, d, &s1_refs);
        add_into(&mut grad, &self.backprop(&g2, &m2));
        self.main_step(opt, &grad);
        // 2. information bottleneck: the views after that step against the first ones
        let out1b = Propagation::run(&self.emb, d, &s1_refs).sum();
        let (m2b, out2b) = self.view2();
        let rows1b = batch_rows(&out1b, d, nu, users, pos);
        let rows2b = batch_rows(&out2b, d, nu, users, pos);
        lo.ib = ib as f64
            * (opt
                .contrast
                .loss(&rows1b, &rows1, d, temp, ib, &mut da, None)
                + opt
                    .contrast
                    .loss(&rows2b, &rows2, d, temp, ib, &mut db, None));
        g1.iter_mut().for_each(|v| *v = 0.0);
        g2.iter_mut().for_each(|v| *v = 0.0);
        scatter_batch_rows(&mut g1, d, nu, users, pos, &da);
        scatter_batch_rows(&mut g2, d, nu, users, pos, &db);
        let mut grad = propagation_backward(&g1, d, &s1_refs);
        add_into(&mut grad, &self.backprop(&g2, &m2b));
        self.main_step(opt, &grad);
        // 3. BPR + L2 on Â, and the generators' own losses
        let adj: Vec<&SparseMatrix> = (0..nl).map(|_| &self.graph.adj).collect();
        let out = Propagation::run(&self.emb, d, &adj).sum();
        let mut dout = vec![0f32; n * d];
        lo.bpr = losses::bpr_nodes(&out, d, nu, users, pos, neg, self.cfg.batch, &mut dout);
        let mut grad = propagation_backward(&dout, d, &adj);
        let reg = self.cfg.reg;
        lo.reg = losses::l2_into([(self.emb.as_slice(), grad.as_mut_slice())], reg);
        let mut eps2 = vec![0f32; n * d];
        Rng::fill_normal_par(&mut eps2, 1.0, self.cfg.seed ^ (TAG_VGAE + step));
        let mut gg1 = self.vgae.zero_grads();
        let l1 = self.vgae.loss_and_grads(
            &self.graph,
            &eps2,
            users,
            pos,
            neg,
            self.cfg.batch,
            reg,
            &mut gg1,
        );
        let nnz = self.graph.nnz();
        let noise: Vec<Vec<f32>> = (0..nl)
            .map(|l| {
                let mut r = Rng::stream(self.cfg.seed ^ (TAG_GATE + step), l as u64);
                (0..nnz)
                    .map(|_| (1e-7 + (1.0 - 2e-7) * r.uniform()) as f32)
                    .collect()
            })
            .collect();
        let mut gg2 = self.masker.zero_grads();
        let l2 = self.masker.loss_and_grads(
            &self.graph,
            &self.features,
            &noise,
            gate_temp,
            users,
            pos,
            neg,
            self.cfg.batch,
            reg,
            &mut gg2,
        );
        lo.gen1 = l1.total();
        lo.gen2 = l2.total();
        self.main_step(opt, &grad);
        opt.gen1.begin_step();
        for (k, (p, g)) in self
            .vgae
            .tensors_mut()
            .into_iter()
            .zip(Vgae::grad_tensors(&gg1))
            .enumerate()
        {
            opt.gen1.update(k, p, g);
        }
        opt.gen2.begin_step();
        for (k, (p, g)) in self
            .masker
            .tensors_mut()
            .into_iter()
            .zip(EdgeMasker::grad_tensors(&gg2))
            .enumerate()
        {
            opt.gen2.update(k, p, g);
        }
        lo
    }

    /// Full-ranking metrics of the main model on `split`.
    pub fn evaluate(&self, ds: &Dataset, split: Split) -> Metrics {
        let fin = self.final_embeddings();
        let (d, nu) = (self.cfg.dim, ds.n_users());
        evaluate_embeddings(ds, split, &fin[..nu * d], &fin[nu * d..], d, &self.cfg.ks)
    }
}

/// One validation record.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AdaGclRecord {
    /// Epoch (1-based).
    pub epoch: usize,
    /// Mean losses over the epoch.
    pub losses: AdaGclLosses,
    /// Gate temperature of the epoch.
    pub gate_temp: f32,
    /// Seconds of training in this epoch.
    pub train_seconds: f64,
    /// Validation metrics.
    pub valid: Metrics,
}

/// What training produced.
pub struct AdaGclOutcome {
    /// Epoch with the best valid Recall@20.
    pub best_epoch: usize,
    /// Valid metrics there.
    pub best_valid: Metrics,
    /// Test metrics there.
    pub test: Metrics,
    /// The ranking embeddings (`n x dim`) at the best epoch.
    pub final_emb: Vec<f32>,
    /// Mean seconds per training epoch.
    pub epoch_seconds: f64,
}

/// Train on `ds` with early stopping on valid Recall@20; test at the best epoch.
pub fn train(
    ds: &Dataset,
    cfg: &AdaGclConfig,
    quiet: bool,
    mut on_record: impl FnMut(&AdaGclRecord),
) -> AdaGclOutcome {
    let mut model = AdaGcl::new(ds, cfg.clone());
    let mut opt = model.optimizer();
    let train_csr = ds.train();
    let mut stop = EarlyStop::new(cfg.patience.max(1));
    let (mut train_time, mut epochs_run) = (0f64, 0usize);
    let bar = progress::bar(cfg.epochs as u64, "AdaGCL", quiet);
    for epoch in 1..=cfg.epochs {
        let t0 = Instant::now();
        let trip = crate::backends::sampler::sample_epoch(&train_csr, cfg.seed, epoch as u64);
        let gate_temp = cfg.gate_temperature(epoch - 1);
        let (mut sum, mut nb) = (AdaGclLosses::default(), 0usize);
        let bs = cfg.batch.max(1);
        for s in (0..trip.users.len()).step_by(bs) {
            let e = (s + bs).min(trip.users.len());
            let lo = model.train_batch(
                &mut opt,
                &trip.users[s..e],
                &trip.pos[s..e],
                &trip.neg[s..e],
                gate_temp,
            );
            sum.add(&lo);
            nb += 1;
        }
        let secs = t0.elapsed().as_secs_f64();
        train_time += secs;
        epochs_run += 1;
        bar.inc(1);
        let mean = sum.scaled(1.0 / nb.max(1) as f64);
        bar.set_prefix(format!("bpr {:.4} {:.1}s/epoch", mean.bpr, secs));
        if epoch % cfg.eval_every.max(1) == 0 || epoch == cfg.epochs {
            let valid = model.evaluate(ds, Split::Valid);
            on_record(&AdaGclRecord {
                epoch,
                losses: mean,
                gate_temp,
                train_seconds: secs,
                valid: valid.clone(),
            });
            if stop.observe(epoch, valid, || model.final_embeddings()) {
                break;
            }
        }
    }
    bar.finish_and_clear();
    let (best_epoch, best_valid, final_emb) =
        stop.into_best().expect("at least one validation runs");
    let (d, nu) = (cfg.dim, ds.n_users());
    let test = evaluate_embeddings(
        ds,
        Split::Test,
        &final_emb[..nu * d],
        &final_emb[nu * d..],
        d,
        &cfg.ks,
    );
    AdaGclOutcome {
        best_epoch,
        best_valid,
        test,
        final_emb,
        epoch_seconds: train_time / epochs_run.max(1) as f64,
    }
}
