//! DDRM (Algorithms 1 and 2): two denoisers trained on a frozen backend's embeddings with
//! λ·BPR + (1 − λ)·reconstruction, reweighted by σ(ŝ(u,i))^γ; inference from the mean of a
//! user's liked items, T' reverse posterior-mean steps with the item denoiser, rounding by the
//! fused top-K kernel.

use super::denoiser::{Denoiser, DenoiserCache, DenoiserGrad};
use super::schedule::{Schedule, ScheduleKind};
use crate::backends::graph::Graph;
use crate::backends::sampler::sample_epoch;
use crate::backends::Model;
use crate::data::{Dataset, Split};
use crate::device::Device;
use crate::eval::{eval_users, evaluate_queries, evaluate_queries_on, EarlyStop, Metrics};
use crate::kernels::cpu::elementwise::{axpy, gather_rows, row_dots, sigmoid};
use crate::kernels::cpu::topk::PackedItems;
use crate::kernels::cpu::Act;
use crate::nn::{loss, Adam, AdamConfig, RowSlots};
use crate::util::progress;
use crate::util::rng::Rng;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Where inference starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Inference {
    /// Mean of the user's liked items, noised to step T, then T' reverse steps (the paper).
    Mean,
    /// Pure Gaussian noise, then T' reverse steps (ablation).
    Noise,
    /// The mean of the user's liked items, no reverse steps (isolates the start point).
    StartOnly,
}

/// DDRM hyper-parameters.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DdrmConfig {
    /// Diffusion steps T (training).
    pub steps: usize,
    /// Reverse steps T' at inference (step index clamped to T).
    pub inference_steps: usize,
    /// Schedule family.
    pub schedule: ScheduleKind,
    /// Noise scale s.
    pub noise_scale: f64,
    /// α_min.
    pub noise_min: f64,
    /// α_max.
    pub noise_max: f64,
    /// λ: weight of BPR (1 − λ on reconstruction).
    pub lambda: f32,
    /// γ: reweighting exponent (0 = no reweighting).
    pub gamma: f32,
    /// Denoiser hidden widths, e.g. [1000, 100, 1000] (= d2, d1, d2).
    pub hidden: Vec<usize>,
    /// Activation between denoiser layers.
    pub act: Act,
    /// Step-encoding width.
    pub step_dim: usize,
    /// Dropout on the noisy input during training.
    pub dropout: f32,
    /// Adam learning rate.
    pub lr: f32,
    /// Adam weight decay.
    pub weight_decay: f32,
    /// Batch size.
    pub batch: usize,
    /// Maximum epochs.
    pub epochs: usize,
    /// Validate every N epochs.
    pub eval_every: usize,
    /// Validations without improvement before stopping.
    pub patience: usize,
    /// Seed.
    pub seed: u64,
    /// Inference start.
    pub inference: Inference,
    /// Noise the start point with fresh noise at inference (the authors' code does).
    pub noise_start: bool,
    /// Dynamic noise: scale each embedding's noise by its RMS.
    pub dynamic_noise: bool,
    /// Denoise items only (the user embedding enters BPR un-denoised).
    pub item_only: bool,
    /// LightGCN layers to propagate the backend's embeddings through first (the authors' MF recipe: 4).
    pub propagate: usize,
    /// Cut-offs reported.
    pub ks: Vec<usize>,
    /// Fine-tune the backend's embeddings jointly with the denoisers (the paper's Figure 2
    /// reading) instead of keeping them frozen (the authors' code).
    #[serde(default)]
    pub joint: bool,
    /// Adam learning rate of the backend embeddings under `joint`.
    #[serde(default = "default_joint_lr")]
    pub joint_lr: f32,
    /// Reverse steps sample x_{t-1} ~ N(μ̃_t, β̃_t) instead of taking the posterior mean.
    #[serde(default)]
    pub sample: bool,
    /// How the denoised vector is rounded to items.
    #[serde(default)]
    pub rounding: Rounding,
    /// Denoiser architecture.
    #[serde(default)]
    pub arch: Arch,
    /// Attention tokens per embedding (Transformer; the width must be a multiple).
    #[serde(default = "default_tokens")]
    pub tokens: usize,
}

fn default_tokens() -> usize {
    4
}

/// Denoiser architecture (Table 3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Arch {
    /// MLP over concat(e_t, step, c) (Eq. 15, the paper's choice).
    #[default]
    Mlp,
    /// Cross-attention (query c, key step, value e_t) + residual feed-forward block.
    Transformer,
}

/// A denoiser of the configured architecture for embeddings of width `d`.
pub fn build_denoiser(cfg: &DdrmConfig, d: usize, rng: &mut Rng) -> Result<Denoiser> {
    Ok(match cfg.arch {
        Arch::Mlp => Denoiser::new(d, cfg.step_dim, &cfg.hidden, cfg.act, cfg.dropout, rng),
        Arch::Transformer => {
            if cfg.tokens == 0 || !d.is_multiple_of(cfg.tokens) {
                bail!(
                    "--tokens {} must divide the embedding width {d}",
                    cfg.tokens
                );
            }
            Denoiser::transformer(
                d,
                cfg.step_dim,
                cfg.tokens,
                &cfg.hidden,
                cfg.act,
                cfg.dropout,
                rng,
            )
        }
    })
}

/// Rounding of the denoised item embedding to items (Eq. 24).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Rounding {
    /// Inner product with each item embedding (the paper).
    #[default]
    Inner,
    /// Cosine similarity (item embeddings normalized; the query's norm does not change a
    /// user's ranking).
    Cosine,
}

fn default_joint_lr() -> f32 {
    1e-4
}

impl DdrmConfig {
    /// Check ranges; errors name the option.
    pub fn validate(&self) -> Result<()> {
        if self.steps == 0 || self.inference_steps == 0 {
            bail!("--steps and --inference-steps must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.lambda) {
            bail!("--lambda must be in [0, 1]");
        }
        if !(self.gamma >= 0.0 && self.gamma.is_finite()) {
            bail!("--gamma must be a finite number >= 0");
        }
        check_dropout(self.dropout)?;
        if self.batch == 0 || self.epochs == 0 || self.step_dim == 0 {
            bail!("--batch, --epochs and --step-dim must be at least 1");
        }
        if self.hidden.contains(&0) {
            bail!("--hidden widths must be positive");
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            bail!("--lr must be positive");
        }
        if !(self.joint_lr > 0.0 && self.joint_lr.is_finite()) {
            bail!("--joint-lr must be positive");
        }
        Schedule::new(
            self.schedule,
            self.steps,
            self.noise_scale,
            self.noise_min,
            self.noise_max,
        )?;
        Ok(())
    }
}

/// Outputs dL/de_u, dL/de_i, dL/de_j of [`ddrm_loss`] (rows of width `d`), for `--joint`.
pub struct TargetGrads<'a> {
    /// Through the user reconstruction target.
    pub eu: &'a mut [f32],
    /// Through the item reconstruction target.
    pub ei: &'a mut [f32],
    /// Through the negative's score.
    pub ej: &'a mut [f32],
}

/// The parts of the DDRM loss of a batch.
#[derive(Clone, Copy, Debug)]
pub struct LossParts {
    /// L_final = mean_b w_b (λ L_bpr + (1 − λ) L_re) (Eq. 20–22).
    pub total: f64,
    /// Mean unweighted BPR loss.
    pub bpr: f64,
    /// Mean unweighted reconstruction loss (Eq. 18: mean of the user and item MSE).
    pub recon: f64,
}

/// DDRM's loss on denoised user/positive embeddings `hat_u`, `hat_i` (rows of width `d`),
/// targets `eu`, `ei` and un-denoised negatives `ej`: BPR on (ê_u·ê_i, ê_u·e_j), reconstruction
/// (‖ê_u − e_u‖² + ‖ê_i − e_i‖²)/(2d), mixed by λ and weighted by w = σ(ê_u·ê_i)^γ (a constant
/// in the gradient). Writes dL/dhat_u and dL/dhat_i; with `dtargets`, also dL/de_u, dL/de_i
/// (through the reconstruction targets) and dL/de_j (the negative), for `--joint`.
#[allow(clippy::too_many_arguments)]
pub fn ddrm_loss(
    hat_u: &[f32],
    hat_i: &[f32],
    eu: &[f32],
    ei: &[f32],
    ej: &[f32],
    d: usize,
    lambda: f32,
    gamma: f32,
    dhu: &mut [f32],
    dhi: &mut [f32],
    dtargets: Option<TargetGrads<'_>>,
) -> LossParts {
    let n = hat_u.len() / d.max(1);
    let (mut sp, mut sn) = (vec![0f32; n], vec![0f32; n]);
    row_dots(hat_u, hat_i, d, &mut sp);
    row_dots(hat_u, ej, d, &mut sn);
    let w: Vec<f32> = sp
        .iter()
        .map(|&s| {
            if gamma == 0.0 {
                1.0
            } else {
                sigmoid(s).powf(gamma)
            }
        })
        .collect();
    let wb: Vec<f32> = w.iter().map(|x| x * lambda).collect();
    let wr: Vec<f32> = w.iter().map(|x| x * (1.0 - lambda) * 0.5).collect();
    let (mut dp, mut dn) = (vec![0f32; n], vec![0f32; n]);
    let l_bpr = loss::bpr(&sp, &sn, Some(&wb), &mut dp, &mut dn);
    let l_ru = loss::mse_rows(hat_u, eu, d, Some(&wr), dhu);
    let l_ri = loss::mse_rows(hat_i, ei, d, Some(&wr), dhi);
    if let Some(t) = dtargets {
        // the reconstruction is symmetric in (prediction, target); BPR touches e_j only
        for k in 0..n * d {
            t.eu[k] = -dhu[k];
            t.ei[k] = -dhi[k];
        }
        for r in 0..n {
            for j in 0..d {
                t.ej[r * d + j] = dn[r] * hat_u[r * d + j];
            }
        }
    }
    for r in 0..n {
        for j in 0..d {
            dhu[r * d + j] += dp[r] * hat_i[r * d + j] + dn[r] * ej[r * d + j];
            dhi[r * d + j] += dp[r] * hat_u[r * d + j];
        }
    }
    let bpr = sp
        .iter()
        .zip(&sn)
        .map(|(p, q)| crate::kernels::cpu::elementwise::softplus(q - p) as f64)
        .sum::<f64>()
        / n.max(1) as f64;
    let mut rec = 0f64;
    for k in 0..n * d {
        rec += ((hat_u[k] - eu[k]).powi(2) + (hat_i[k] - ei[k]).powi(2)) as f64;
    }
    LossParts {
        total: l_bpr + l_ru + l_ri,
        bpr,
        recon: rec / (2 * n * d).max(1) as f64,
    }
}

/// A trained (or training) DDRM on top of fixed backend embeddings.
pub struct Ddrm {
    /// Configuration.
    pub cfg: DdrmConfig,
    /// Schedule.
    pub schedule: Schedule,
    /// User denoiser f_θ (condition: the positive item's embedding).
    pub user_dn: Denoiser,
    /// Item denoiser f_ψ (condition: the user's embedding).
    pub item_dn: Denoiser,
    /// Backend embeddings `(U + I) x d` (frozen, unless `joint`).
    pub emb: Vec<f32>,
    /// The backend's trainable state under `--joint`.
    pub joint: Option<JointBackend>,
    pub(crate) n_users: usize,
    pub(crate) d: usize,
}

/// Backend embeddings fine-tuned with the denoisers (`--joint`). Without a graph the
/// embeddings are [`Ddrm::emb`] themselves (MF), updated row-sparsely by lazy Adam; with one,
/// `emb` is the propagation of `ego` through `stages` (layers per stage), recomputed before
/// each batch, and the gradient flows back through it to `ego` (dense Adam).
#[derive(Clone)]
pub struct JointBackend {
    /// Layer-0 embeddings `(U + I) x d` (graph backends; empty for MF).
    pub ego: Vec<f32>,
    graph: Option<Graph>,
    stages: Vec<usize>,
    adam: Adam,
    slots: RowSlots,
    bufs: Vec<Vec<f32>>,
    tmp: Vec<f32>,
}

impl JointBackend {
    /// MF: the embeddings themselves are trained.
    pub fn direct(n_rows: usize, d: usize, lr: f32) -> Self {
        JointBackend {
            ego: vec![],
            graph: None,
            stages: vec![],
            adam: Adam::new(AdamConfig::with_lr(lr), &[n_rows * d]),
            slots: RowSlots::new(n_rows),
            bufs: vec![],
            tmp: vec![],
        }
    }

    /// Graph backends: `emb = propagate(ego)` through `stages` of `graph`.
    pub fn propagated(ego: Vec<f32>, graph: Graph, stages: Vec<usize>, lr: f32) -> Self {
        let n = ego.len();
        JointBackend {
            adam: Adam::new(AdamConfig::with_lr(lr), &[n]),
            ego,
            graph: Some(graph),
            stages,
            slots: RowSlots::default(),
            bufs: vec![],
            tmp: vec![],
        }
    }

    /// Recompute `emb` from `ego` (graph backends; no-op for MF).
    pub fn sync(&mut self, emb: &mut [f32], d: usize) {
        let Some(g) = &self.graph else { return };
        emb.copy_from_slice(&self.ego);
        for &l in &self.stages {
            self.tmp.clear();
            self.tmp.extend_from_slice(emb);
            Model::propagate(&[g], l, d, &self.tmp, emb, &mut self.bufs);
        }
    }

    /// Chain rule from dL/d(emb) (dense) to dL/d(ego), written into `out`.
    pub fn back(&mut self, g_emb: &[f32], d: usize, out: &mut Vec<f32>) {
        out.clear();
        out.extend_from_slice(g_emb);
        if let Some(g) = &self.graph {
            for &l in self.stages.iter().rev() {
                self.tmp.clear();
                self.tmp.extend_from_slice(out);
                Model::propagate_back(&[g], l, d, &self.tmp, out, &mut self.bufs);
            }
        }
    }

    /// One Adam step from per-sample gradients `du`, `di`, `dj` of rows `users`, `pos_n`,
    /// `neg_n` (node ids).
    #[allow(clippy::too_many_arguments)]
    fn step(
        &mut self,
        emb: &mut [f32],
        d: usize,
        users: &[u32],
        pos_n: &[u32],
        neg_n: &[u32],
        g: &EmbGrads,
    ) {
        self.adam.begin_step();
        if self.graph.is_none() {
            let rows = self
                .slots
                .assign(users.iter().chain(pos_n).chain(neg_n).copied());
            let mut gr = vec![0f32; rows.len() * d];
            for (ids, src) in [(users, &g.du), (pos_n, &g.di), (neg_n, &g.dj)] {
                for (k, &node) in ids.iter().enumerate() {
                    let s = self.slots.slot(node);
                    axpy(1.0, &src[k * d..(k + 1) * d], &mut gr[s * d..(s + 1) * d]);
                }
            }
            self.adam.update_rows(0, emb, d, &rows, &gr);
            self.slots.release(&rows);
        } else {
            let mut dense = vec![0f32; emb.len()];
            g.scatter(users, pos_n, neg_n, d, &mut dense);
            let mut dego = Vec::new();
            self.back(&dense, d, &mut dego);
            let mut ego = std::mem::take(&mut self.ego);
            self.adam.update(0, &mut ego, &dego);
            self.ego = ego;
        }
    }
}

/// Per-sample gradients of a batch's loss w.r.t. the gathered embeddings e_u, e_i, e_j.
pub struct EmbGrads {
    /// dL/de_u, `n x d`.
    pub du: Vec<f32>,
    /// dL/de_i, `n x d`.
    pub di: Vec<f32>,
    /// dL/de_j, `n x d`.
    pub dj: Vec<f32>,
}

impl EmbGrads {
    /// Accumulate into a dense `(U + I) x d` gradient.
    pub fn scatter(&self, users: &[u32], pos_n: &[u32], neg_n: &[u32], d: usize, out: &mut [f32]) {
        for (ids, src) in [(users, &self.du), (pos_n, &self.di), (neg_n, &self.dj)] {
            for (k, &node) in ids.iter().enumerate() {
                let node = node as usize;
                axpy(
                    1.0,
                    &src[k * d..(k + 1) * d],
                    &mut out[node * d..(node + 1) * d],
                );
            }
        }
    }
}

/// Per-epoch record.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DdrmRecord {
    /// Epoch.
    pub epoch: usize,
    /// Mean weighted total loss.
    pub loss: f64,
    /// Mean BPR part (unweighted).
    pub bpr: f64,
    /// Mean reconstruction part (unweighted).
    pub recon: f64,
    /// Seconds of training in the epoch.
    pub train_seconds: f64,
    /// Achieved GFLOP/s of the denoiser work in the epoch.
    pub gflops: f64,
    /// Valid metrics.
    pub valid: Metrics,
}

struct Work {
    ucache: DenoiserCache,
    icache: DenoiserCache,
    ugrad: DenoiserGrad,
    igrad: DenoiserGrad,
}

impl Work {
    fn new(m: &Ddrm) -> Self {
        Work {
            ucache: DenoiserCache::default(),
            icache: DenoiserCache::default(),
            ugrad: m.user_dn.zero_grad(),
            igrad: m.item_dn.zero_grad(),
        }
    }
}

impl Ddrm {
    /// A fresh DDRM over backend embeddings `emb` (`(U + I) x d`).
    pub fn new(cfg: DdrmConfig, emb: Vec<f32>, n_users: usize, d: usize) -> Result<Self> {
        cfg.validate()?;
        let schedule = Schedule::new(
            cfg.schedule,
            cfg.steps,
            cfg.noise_scale,
            cfg.noise_min,
            cfg.noise_max,
        )?;
        let mut rng = Rng::stream(cfg.seed, 0xDD);
        let user_dn = build_denoiser(&cfg, d, &mut rng)?;
        let item_dn = build_denoiser(&cfg, d, &mut rng)?;
        Ok(Ddrm {
            cfg,
            schedule,
            user_dn,
            item_dn,
            emb,
            joint: None,
            n_users,
            d,
        })
    }

    /// FLOPs of one training sample as performed: forward + backward of both denoisers
    /// (of the item denoiser alone with `item_only`), input gradients only under `--joint`
    /// ([`Denoiser::train_macs`]).
    pub fn flops_per_sample(&self) -> f64 {
        let dn = if self.cfg.item_only { 1.0 } else { 2.0 };
        dn * 2.0 * self.item_dn.train_macs(self.joint.is_some()) as f64
    }

    fn noise_into(&self, e0: &[f32], steps: &[usize], eps: &[f32], out: &mut [f32]) {
        let d = self.d;
        for (r, &t) in steps.iter().enumerate() {
            let (a, b) = self.schedule.q_coefs(t);
            let row = &e0[r * d..(r + 1) * d];
            let scale = if self.cfg.dynamic_noise {
                (row.iter().map(|v| v * v).sum::<f32>() / d as f32).sqrt()
            } else {
                1.0
            };
            for j in 0..d {
                out[r * d + j] = a * row[j] + b * scale * eps[r * d + j];
            }
        }
    }

    /// One optimizer step on a batch. Returns (weighted loss, bpr, recon) means.
    fn train_batch(
        &mut self,
        users: &[u32],
        pos: &[u32],
        neg: &[u32],
        rng: &mut Rng,
        opt: &mut [Adam; 2],
        wk: &mut Work,
    ) -> (f64, f64, f64) {
        let (d, n) = (self.d, users.len());
        if let Some(jb) = self.joint.as_mut() {
            jb.sync(&mut self.emb, d);
        }
        let steps: Vec<usize> = (0..n).map(|_| rng.index(self.cfg.steps)).collect();
        let (mut eps_u, mut eps_i) = (vec![0f32; n * d], vec![0f32; n * d]);
        Rng::fill_normal_par(&mut eps_u, 1.0, rng.next_u64());
        Rng::fill_normal_par(&mut eps_i, 1.0, rng.next_u64());
        let mut eg = self.joint.as_ref().map(|_| EmbGrads {
            du: vec![0f32; n * d],
            di: vec![0f32; n * d],
            dj: vec![0f32; n * d],
        });
        let parts = self.forward_backward(
            users,
            pos,
            neg,
            &steps,
            &eps_u,
            &eps_i,
            Some(rng),
            wk,
            eg.as_mut(),
        );
        // the two denoisers' Adam steps are independent: one on each half of the threads
        let [uopt, iopt] = opt;
        let adam_step = |dn: &mut Denoiser, g: &DenoiserGrad, o: &mut Adam| {
            o.begin_step();
            for (i, (p, g)) in dn
                .params_mut()
                .into_iter()
                .zip(Denoiser::grads(g))
                .enumerate()
            {
                o.update(i, p, g);
            }
        };
        let item_only = self.cfg.item_only;
        rayon::join(
            || adam_step(&mut self.item_dn, &wk.igrad, iopt),
            || {
                if !item_only {
                    adam_step(&mut self.user_dn, &wk.ugrad, uopt);
                }
            },
        );
        if let (Some(jb), Some(eg)) = (self.joint.as_mut(), eg.as_ref()) {
            let nu = self.n_users as u32;
            let pos_n: Vec<u32> = pos.iter().map(|&i| i + nu).collect();
            let neg_n: Vec<u32> = neg.iter().map(|&i| i + nu).collect();
            jb.step(&mut self.emb, d, users, &pos_n, &neg_n, eg);
        }
        (parts.total, parts.bpr, parts.recon)
    }

    /// Loss of a batch with explicit diffusion steps and noise, its denoiser gradients (into
    /// `wk`) and, with `emb_grads`, its gradients w.r.t. the gathered embeddings (`--joint`).
    /// `dropout_rng` applies dropout (training).
    #[allow(clippy::too_many_arguments)]
    fn forward_backward(
        &self,
        users: &[u32],
        pos: &[u32],
        neg: &[u32],
        steps: &[usize],
        eps_u: &[f32],
        eps_i: &[f32],
        mut dropout_rng: Option<&mut Rng>,
        wk: &mut Work,
        emb_grads: Option<&mut EmbGrads>,
    ) -> LossParts {
        let (d, n) = (self.d, users.len());
        let nu = self.n_users as u32;
        let pos_n: Vec<u32> = pos.iter().map(|&i| i + nu).collect();
        let neg_n: Vec<u32> = neg.iter().map(|&i| i + nu).collect();
        let (mut eu, mut ei, mut ej) = (vec![0f32; n * d], vec![0f32; n * d], vec![0f32; n * d]);
        gather_rows(&self.emb, d, users, &mut eu);
        gather_rows(&self.emb, d, &pos_n, &mut ei);
        gather_rows(&self.emb, d, &neg_n, &mut ej);
        let stepf: Vec<f32> = steps.iter().map(|&t| t as f32).collect();
        let (mut xu, mut xi) = (vec![0f32; n * d], vec![0f32; n * d]);
        self.noise_into(&eu, steps, eps_u, &mut xu);
        self.noise_into(&ei, steps, eps_i, &mut xi);
        // the masks are drawn in the order a sequential run draws them (user, then item), so
        // that the two denoisers can run at the same time: one on each half of the threads,
        // each GEMM then mostly on one core, with no barrier between them
        let item_only = self.cfg.item_only;
        let mask_u = match dropout_rng.as_deref_mut() {
            Some(rng) if !item_only => self.user_dn.dropout_mask(n, rng),
            _ => Vec::new(),
        };
        let mask_i = dropout_rng.map_or_else(Vec::new, |rng| self.item_dn.dropout_mask(n, rng));
        let (ucache, icache) = (&mut wk.ucache, &mut wk.icache);
        let (ugrad, igrad) = (&mut wk.ugrad, &mut wk.igrad);
        let (hat_u, hat_i): (Vec<f32>, Vec<f32>) = rayon::join(
            || {
                if item_only {
                    eu.clone()
                } else {
                    self.user_dn
                        .forward_masked(&xu, &stepf, &ei, n, mask_u, ucache)
                        .to_vec()
                }
            },
            || {
                self.item_dn
                    .forward_masked(&xi, &stepf, &eu, n, mask_i, icache)
                    .to_vec()
            },
        );
        let (mut dhu, mut dhi) = (vec![0f32; n * d], vec![0f32; n * d]);
        let Some(eg) = emb_grads else {
            let parts = ddrm_loss(
                &hat_u,
                &hat_i,
                &eu,
                &ei,
                &ej,
                d,
                self.cfg.lambda,
                self.cfg.gamma,
                &mut dhu,
                &mut dhi,
                None,
            );
            rayon::join(
                || self.item_dn.backward(n, icache, &dhi, igrad, None, None),
                || {
                    if !item_only {
                        self.user_dn.backward(n, ucache, &dhu, ugrad, None, None);
                    }
                },
            );
            return parts;
        };
        let parts = ddrm_loss(
            &hat_u,
            &hat_i,
            &eu,
            &ei,
            &ej,
            d,
            self.cfg.lambda,
            self.cfg.gamma,
            &mut dhu,
            &mut dhi,
            Some(TargetGrads {
                eu: &mut eg.du,
                ei: &mut eg.di,
                ej: &mut eg.dj,
            }),
        );
        // e_u: reconstruction target (above), the item denoiser's condition, and either the
        // user denoiser's noisy input (x_u = a_t e_u + b_t ε) or, item-only, ê_u = e_u itself
        let (mut dx_i, mut dc_i) = (vec![0f32; n * d], vec![0f32; n * d]);
        let (mut dx_u, mut dc_u) = (vec![0f32; n * d], vec![0f32; n * d]);
        rayon::join(
            || {
                self.item_dn
                    .backward(n, icache, &dhi, igrad, Some(&mut dx_i), Some(&mut dc_i))
            },
            || {
                if !item_only {
                    self.user_dn
                        .backward(n, ucache, &dhu, ugrad, Some(&mut dx_u), Some(&mut dc_u));
                }
            },
        );
        // summed in a fixed order (item denoiser's terms first), whatever ran first
        axpy(1.0, &dc_i, &mut eg.du);
        self.add_noised_input_grad(steps, &dx_i, &mut eg.di);
        if item_only {
            axpy(1.0, &dhu, &mut eg.du);
        } else {
            axpy(1.0, &dc_u, &mut eg.di);
            self.add_noised_input_grad(steps, &dx_u, &mut eg.du);
        }
        parts
    }

    /// dL/de_0 += a_t · dL/dx_t row by row (the noise scale of `dynamic_noise` is held
    /// constant in the gradient).
    fn add_noised_input_grad(&self, steps: &[usize], dx: &[f32], out: &mut [f32]) {
        let d = self.d;
        for (r, &t) in steps.iter().enumerate() {
            let (a, _) = self.schedule.q_coefs(t);
            axpy(a, &dx[r * d..(r + 1) * d], &mut out[r * d..(r + 1) * d]);
        }
    }

    /// The loss of one batch with explicit steps, noise and (with `dropout_rng`) dropout,
    /// and the two denoisers' gradients (user, item), without changing anything: the CPU
    /// reference the device trainer ([`super::ddrm_device`]) is compared with.
    #[allow(clippy::too_many_arguments)]
    pub fn batch_grads(
        &self,
        users: &[u32],
        pos: &[u32],
        neg: &[u32],
        steps: &[usize],
        eps_u: &[f32],
        eps_i: &[f32],
        dropout_rng: Option<&mut Rng>,
    ) -> (LossParts, DenoiserGrad, DenoiserGrad) {
        let mut wk = Work::new(self);
        let parts = self.forward_backward(
            users,
            pos,
            neg,
            steps,
            eps_u,
            eps_i,
            dropout_rng,
            &mut wk,
            None,
        );
        (parts, wk.ugrad, wk.igrad)
    }

    /// The loss of one batch with explicit steps and noise (no dropout), and its gradient
    /// w.r.t. the embeddings [`Self::emb`] as a dense `(U + I) x d` matrix. No parameter
    /// changes; used to check the `--joint` chain rule against finite differences.
    pub fn batch_loss_and_emb_grad(
        &self,
        users: &[u32],
        pos: &[u32],
        neg: &[u32],
        steps: &[usize],
        eps_u: &[f32],
        eps_i: &[f32],
    ) -> (f64, Vec<f32>) {
        let (d, n) = (self.d, users.len());
        let mut wk = Work::new(self);
        let mut eg = EmbGrads {
            du: vec![0f32; n * d],
            di: vec![0f32; n * d],
            dj: vec![0f32; n * d],
        };
        let parts = self.forward_backward(
            users,
            pos,
            neg,
            steps,
            eps_u,
            eps_i,
            None,
            &mut wk,
            Some(&mut eg),
        );
        let nu = self.n_users as u32;
        let pos_n: Vec<u32> = pos.iter().map(|&i| i + nu).collect();
        let neg_n: Vec<u32> = neg.iter().map(|&i| i + nu).collect();
        let mut dense = vec![0f32; self.emb.len()];
        eg.scatter(users, &pos_n, &neg_n, d, &mut dense);
        (parts.total, dense)
    }

    /// Query vectors (denoised item embeddings, `users.len() x d`) for `users` (Algorithm 2).
    /// Seeded: the same seed gives the same queries.
    pub fn infer(&self, ds: &Dataset, users: &[u32], seed: u64) -> Vec<f32> {
        let d = self.d;
        let mut cache = DenoiserCache::default();
        let run = self.infer_chunks(ds, users, seed, |x, ue, n, rng, eps| {
            let t_last = self.cfg.steps - 1;
            for step in (0..self.cfg.inference_steps).rev() {
                let t = step.min(t_last);
                let stepf = vec![t as f32; n];
                let x0 = self.item_dn.forward(x, &stepf, ue, n, None, &mut cache);
                let (c1, c2) = self.schedule.posterior_coefs(t);
                for k in 0..n * d {
                    x[k] = c1 * x0[k] + c2 * x[k];
                }
                if let Some(sd) = self.sampling_sd(t) {
                    Rng::fill_normal_par(eps, 1.0, rng.next_u64());
                    axpy(sd, eps, x);
                }
            }
            Ok::<(), std::convert::Infallible>(())
        });
        match run {
            Ok(q) => q,
            Err(never) => match never {},
        }
    }

    /// The standard deviation of the noise a reverse step to `t` adds (`--sample`; none at
    /// the last step), or `None` for the posterior mean.
    pub(crate) fn sampling_sd(&self, t: usize) -> Option<f32> {
        (self.cfg.sample && t > 0).then(|| self.schedule.posterior_variance[t].sqrt() as f32)
    }

    /// Algorithm 2's frame, shared by the devices: users in chunks of 2048; for each chunk
    /// the start point (the mean of each user's train items' embeddings, noised to step T
    /// unless configured otherwise) and the user embeddings (the condition), then
    /// `reverse(x, ue, n, rng, eps)` runs the T' reverse steps on `x` in place, drawing any
    /// sampling noise from `rng` into `eps` (`n x d`) so that every device sees the same
    /// noise. Returns the queries, `users.len() x d`.
    pub(crate) fn infer_chunks<E>(
        &self,
        ds: &Dataset,
        users: &[u32],
        seed: u64,
        mut reverse: impl FnMut(&mut [f32], &[f32], usize, &mut Rng, &mut [f32]) -> Result<(), E>,
    ) -> Result<Vec<f32>, E> {
        let d = self.d;
        let nu = self.n_users;
        let train = ds.train();
        let mut out = vec![0f32; users.len() * d];
        const CH: usize = 2048;
        for (c, chunk) in users.chunks(CH).enumerate() {
            let n = chunk.len();
            let mut mean = vec![0f32; n * d];
            for (r, &u) in chunk.iter().enumerate() {
                let items = train.row(u as usize);
                let row = &mut mean[r * d..(r + 1) * d];
                for &i in items {
                    let e = &self.emb[(nu + i as usize) * d..(nu + i as usize + 1) * d];
                    for j in 0..d {
                        row[j] += e[j];
                    }
                }
                if !items.is_empty() {
                    row.iter_mut().for_each(|v| *v /= items.len() as f32);
                }
            }
            let dst = &mut out[c * CH * d..(c * CH + n) * d];
            if self.cfg.inference == Inference::StartOnly {
                dst.copy_from_slice(&mean);
                continue;
            }
            let mut ue = vec![0f32; n * d];
            gather_rows(&self.emb, d, chunk, &mut ue);
            let mut rng = Rng::stream(seed, 0x1F0 + c as u64);
            let mut eps = vec![0f32; n * d];
            let t_last = self.cfg.steps - 1;
            let mut x = vec![0f32; n * d];
            match self.cfg.inference {
                Inference::Noise => Rng::fill_normal_par(&mut x, 1.0, rng.next_u64()),
                _ if self.cfg.noise_start => {
                    Rng::fill_normal_par(&mut eps, 1.0, rng.next_u64());
                    self.noise_into(&mean, &vec![t_last; n], &eps, &mut x);
                }
                _ => x.copy_from_slice(&mean),
            }
            reverse(&mut x, &ue, n, &mut rng, &mut eps)?;
            dst.copy_from_slice(&x);
        }
        Ok(out)
    }

    /// [`Self::infer`] on `device`. On a GPU the reverse steps (the item denoiser's MLP and
    /// the posterior step) run there; the start points and any noise are drawn on the host
    /// as on the CPU, so both devices denoise the same inputs.
    pub fn infer_on(
        &self,
        device: &Device,
        ds: &Dataset,
        users: &[u32],
        seed: u64,
    ) -> Result<Vec<f32>> {
        match device {
            Device::Cpu => Ok(self.infer(ds, users, seed)),
            #[cfg(feature = "cuda")]
            Device::Cuda(gpu) => self.infer_with(&**gpu, ds, users, seed),
        }
    }

    /// [`Self::evaluate`] on `device`: inference and rounding there.
    pub fn evaluate_on(
        &self,
        device: &Device,
        ds: &Dataset,
        split: Split,
        seed: u64,
    ) -> Result<Metrics> {
        let users = eval_users(ds, split);
        let q = self.infer_on(device, ds, &users, seed)?;
        let items = self.item_embeddings();
        evaluate_queries_on(device, ds, split, &users, &q, &items, self.d, &self.cfg.ks)
    }

    /// Evaluate on a split: inference for every user with held-out items, then rounding by the
    /// fused top-K kernel against the backend's item embeddings.
    pub fn evaluate(&self, ds: &Dataset, split: Split, seed: u64) -> Metrics {
        let users = eval_users(ds, split);
        let q = self.infer(ds, &users, seed);
        let items = PackedItems::new(&self.item_embeddings(), ds.n_items(), self.d);
        evaluate_queries(ds, split, &users, &q, &items, &self.cfg.ks)
    }

    /// Item embeddings used for rounding (row-normalized under cosine rounding).
    pub fn item_embeddings(&self) -> std::borrow::Cow<'_, [f32]> {
        let items = &self.emb[self.n_users * self.d..];
        match self.cfg.rounding {
            Rounding::Inner => std::borrow::Cow::Borrowed(items),
            Rounding::Cosine => {
                let mut v = items.to_vec();
                for row in v.chunks_mut(self.d.max(1)) {
                    let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
                    if norm > 0.0 {
                        row.iter_mut().for_each(|x| *x /= norm);
                    }
                }
                std::borrow::Cow::Owned(v)
            }
        }
    }
}

/// Result of DDRM training.
pub struct DdrmOutcome {
    /// Best epoch (0 = the untrained start, when no epoch beat it).
    pub best_epoch: usize,
    /// Valid metrics at the best epoch.
    pub best_valid: Metrics,
    /// Test metrics of the best epoch.
    pub test: Metrics,
    /// History.
    pub history: Vec<DdrmRecord>,
    /// Mean seconds per epoch.
    pub epoch_seconds: f64,
    /// Mean GFLOP/s.
    pub gflops: f64,
    /// Seconds of one full test inference + evaluation.
    pub eval_seconds: f64,
}

/// Mean losses of one training epoch.
#[derive(Clone, Copy, Debug)]
pub struct EpochStats {
    /// Mean weighted total loss.
    pub loss: f64,
    /// Mean unweighted BPR loss.
    pub bpr: f64,
    /// Mean unweighted reconstruction loss.
    pub recon: f64,
    /// Training samples (triplets) in the epoch.
    pub samples: usize,
}

/// Optimizer state and scratch of DDRM training; one epoch at a time (also used by
/// `ddrm bench`).
pub struct DdrmTrainer {
    opt: [Adam; 2],
    wk: Work,
}

impl DdrmTrainer {
    /// Fresh Adam state for `model`'s two denoisers.
    pub fn new(model: &Ddrm) -> Self {
        let sizes = |dn: &Denoiser| -> Vec<usize> {
            Denoiser::grads(&dn.zero_grad())
                .iter()
                .map(|g| g.len())
                .collect()
        };
        let mut acfg = AdamConfig::with_lr(model.cfg.lr);
        acfg.weight_decay = model.cfg.weight_decay;
        DdrmTrainer {
            opt: [
                Adam::new(acfg, &sizes(&model.user_dn)),
                Adam::new(acfg, &sizes(&model.item_dn)),
            ],
            wk: Work::new(model),
        }
    }

    /// One epoch of Algorithm 1 over freshly sampled triplets (deterministic in the seed
    /// and `epoch`).
    pub fn epoch(&mut self, model: &mut Ddrm, ds: &Dataset, epoch: usize) -> EpochStats {
        let (seed, batch) = (model.cfg.seed, model.cfg.batch);
        let trip = sample_epoch(&ds.train(), seed, 0xD000 + epoch as u64);
        let mut rng = Rng::stream(seed, 0xDD00_0000 + epoch as u64);
        let (mut l, mut lb, mut lr, mut nb) = (0f64, 0f64, 0f64, 0usize);
        for s in (0..trip.users.len()).step_by(batch) {
            let e = (s + batch).min(trip.users.len());
            let (a, b, c) = model.train_batch(
                &trip.users[s..e],
                &trip.pos[s..e],
                &trip.neg[s..e],
                &mut rng,
                &mut self.opt,
                &mut self.wk,
            );
            l += a;
            lb += b;
            lr += c;
            nb += 1;
        }
        if let Some(jb) = model.joint.as_mut() {
            jb.sync(&mut model.emb, model.d);
        }
        let nbf = nb.max(1) as f64;
        EpochStats {
            loss: l / nbf,
            bpr: lb / nbf,
            recon: lr / nbf,
            samples: trip.users.len(),
        }
    }
}

/// Train DDRM (Algorithm 1) with validation and early stopping on `device`; restores the
/// best epoch. On a GPU the denoisers train there ([`super::ddrm_device`]) and validation
/// runs there; the CPU keeps its own tuned trainer ([`DdrmTrainer`]).
pub fn train_ddrm(
    model: &mut Ddrm,
    ds: &Dataset,
    device: &Device,
    quiet: bool,
    mut on_record: impl FnMut(&DdrmRecord),
) -> Result<DdrmOutcome> {
    let cfg = model.cfg.clone();
    if cfg.inference == Inference::StartOnly && model.joint.is_none() {
        // the start point (mean of the liked items' frozen embeddings) does not depend on the
        // denoisers: there is nothing to train or to select (best epoch 0, no history)
        let best_valid = model.evaluate_on(device, ds, Split::Valid, cfg.seed)?;
        let t0 = Instant::now();
        let test = model.evaluate_on(device, ds, Split::Test, cfg.seed)?;
        return Ok(DdrmOutcome {
            best_epoch: 0,
            best_valid,
            test,
            history: Vec::new(),
            epoch_seconds: 0.0,
            gflops: 0.0,
            eval_seconds: t0.elapsed().as_secs_f64(),
        });
    }
    let mut trainer = EpochRunner::new(device, model)?;
    // best epoch: its denoisers and, under --joint, its embeddings
    type Snapshot = (Denoiser, Denoiser, Option<(Vec<f32>, JointBackend)>);
    let mut stop: EarlyStop<Snapshot> = EarlyStop::new(cfg.patience);
    let mut history = Vec::new();
    let (mut tsum, mut fsum, mut ne) = (0f64, 0f64, 0usize);
    let bar = progress::bar(cfg.epochs as u64, "DDRM", quiet);
    for epoch in 1..=cfg.epochs {
        let t0 = Instant::now();
        let st = trainer.epoch(model, ds, epoch)?;
        let secs = t0.elapsed().as_secs_f64();
        let gf = model.flops_per_sample() * st.samples as f64 / secs / 1e9;
        tsum += secs;
        fsum += gf;
        ne += 1;
        bar.inc(1);
        bar.set_prefix(format!(
            "loss {:.4} {:.1}s/epoch {:.0} GFLOP/s",
            st.loss, secs, gf
        ));
        if epoch % cfg.eval_every == 0 || epoch == cfg.epochs {
            let valid = model.evaluate_on(device, ds, Split::Valid, cfg.seed)?;
            let rec = DdrmRecord {
                epoch,
                loss: st.loss,
                bpr: st.bpr,
                recon: st.recon,
                train_seconds: secs,
                gflops: gf,
                valid: valid.clone(),
            };
            on_record(&rec);
            history.push(rec);
            let snapshot = || {
                let joint = model.joint.as_ref().map(|j| (model.emb.clone(), j.clone()));
                (model.user_dn.clone(), model.item_dn.clone(), joint)
            };
            if stop.observe(epoch, valid, snapshot) {
                break;
            }
        }
    }
    bar.finish_and_clear();
    let (best_epoch, best_valid, (u, i, joint)) =
        stop.into_best().expect("at least one validation");
    if let Some((emb, jb)) = joint {
        model.emb = emb;
        model.joint = Some(jb);
    }
    model.user_dn = u;
    model.item_dn = i;
    let t0 = Instant::now();
    let test = model.evaluate_on(device, ds, Split::Test, cfg.seed)?;
    let eval_seconds = t0.elapsed().as_secs_f64();
    Ok(DdrmOutcome {
        best_epoch,
        best_valid,
        test,
        history,
        epoch_seconds: tsum / ne.max(1) as f64,
        gflops: fsum / ne.max(1) as f64,
        eval_seconds,
    })
}

/// The epoch loop's trainer on each device.
enum EpochRunner<'d> {
    Cpu(Box<DdrmTrainer>),
    #[cfg(feature = "cuda")]
    Gpu(Box<super::ddrm_device::DeviceDdrm<'d, crate::kernels::cuda::Gpu>>),
    #[cfg(not(feature = "cuda"))]
    #[allow(dead_code)]
    Never(std::marker::PhantomData<&'d ()>),
}

impl<'d> EpochRunner<'d> {
    fn new(device: &'d Device, model: &Ddrm) -> Result<Self> {
        Ok(match device {
            Device::Cpu => EpochRunner::Cpu(Box::new(DdrmTrainer::new(model))),
            #[cfg(feature = "cuda")]
            Device::Cuda(gpu) => {
                let mut t = super::ddrm_device::DeviceDdrm::new(&**gpu, model, model.cfg.batch)?;
                // noise and masks drawn on the GPU (drawing them on the host would cost more
                // than the GPU's step)
                t.set_noise(super::ddrm_device::NoiseSource::Device);
                EpochRunner::Gpu(Box::new(t))
            }
        })
    }

    /// One epoch; on a GPU the trained denoisers are then copied into `model` (for
    /// validation and the best-epoch snapshot).
    fn epoch(&mut self, model: &mut Ddrm, ds: &Dataset, epoch: usize) -> Result<EpochStats> {
        match self {
            EpochRunner::Cpu(t) => Ok(t.epoch(model, ds, epoch)),
            #[cfg(feature = "cuda")]
            EpochRunner::Gpu(t) => {
                let st = t.epoch(model, ds, epoch)?;
                t.download_into(model)?;
                Ok(st)
            }
            #[cfg(not(feature = "cuda"))]
            EpochRunner::Never(_) => unreachable!("no GPU trainer without the cuda feature"),
        }
    }
}

/// The dropout rule of [`DdrmConfig::validate`], for callers that check it before training
/// anything: a rate in [0, 1) (NaN refused).
pub fn check_dropout(p: f32) -> Result<()> {
    if !(0.0..1.0).contains(&p) {
        bail!("--dropout must be in [0, 1), got {p}");
    }
    Ok(())
}
