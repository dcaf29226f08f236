//! The three embedding backends — MF-BPR, LightGCN and SGL — as one model type: ego
//! embeddings E0 ((U + I) x d, users first), a propagation (identity for MF; the layer mean of
//! Â^k E0 for LightGCN/SGL) and a BPR step with a hand-written backward through it.

use super::graph::Graph;
use super::mf_step::{self, MfScratch};
use crate::data::Dataset;
use crate::denoising::deca::{Deca, DecaWeights};
use crate::denoising::Objective;
use crate::kernels::cpu::elementwise::{axpy, gather_rows, row_dots, scale};
use crate::kernels::cpu::spmm::{spmm_ex, SpmmEpilogue};
use crate::nn::loss;
use crate::nn::{Adam, AdamConfig};
use crate::util::rng::Rng;
use serde::{Deserialize, Serialize};

/// Which backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Matrix factorization with BPR.
    Mf,
    /// LightGCN.
    Lightgcn,
    /// SGL (LightGCN + self-supervised graph augmentation).
    Sgl,
}

impl Backend {
    /// Name as printed.
    pub fn label(self) -> &'static str {
        match self {
            Backend::Mf => "MF-BPR",
            Backend::Lightgcn => "LightGCN",
            Backend::Sgl => "SGL",
        }
    }
}

/// SGL augmentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Augment {
    /// Edge dropout.
    Ed,
    /// Node dropout.
    Nd,
    /// Random walk (edge dropout drawn independently per layer).
    Rw,
}

/// Model hyper-parameters.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ModelConfig {
    /// Backend.
    pub backend: Backend,
    /// Embedding size.
    pub dim: usize,
    /// Propagation layers (LightGCN/SGL).
    pub layers: usize,
    /// L2 regularization on the batch's ego embeddings.
    pub reg: f32,
    /// Adam learning rate.
    pub lr: f32,
    /// SGL augmentation.
    pub augment: Augment,
    /// SGL drop ratio ρ.
    pub drop_ratio: f64,
    /// SGL temperature τ.
    pub tau: f32,
    /// SGL InfoNCE weight λ_ssl.
    pub ssl_weight: f32,
    /// Training loss: BPR, or a denoising baseline (T-CE, R-CE). Absent in older runs: BPR.
    #[serde(default)]
    pub objective: Objective,
}

/// A trainable backend.
pub struct Model {
    /// Hyper-parameters.
    pub cfg: ModelConfig,
    n_users: usize,
    n_items: usize,
    /// Ego embeddings E0, `(U + I) x d`.
    pub ego: Vec<f32>,
    graph: Option<Graph>,
    views: Vec<Vec<Graph>>, // SGL: per view, one graph (ED/ND) or one per layer (RW)
    adam: Adam,
    // reusable buffers
    fin: Vec<f32>,
    grad: Vec<f32>,
    dego: Vec<f32>, // graph backends: gradient w.r.t. the ego embeddings (scratch)
    layer_bufs: Vec<Vec<f32>>,
    mf: MfScratch,         // MF: row grouping and buffers of the step
    step: u64,             // optimizer steps taken (the T-CE drop schedule, DeCA's phases)
    deca: Option<Deca>,    // DeCA's auxiliary models
    batch_rows: Vec<bool>, // graph backends: the nodes of the current batch
}

/// Loss parts of one batch.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct BatchLoss {
    /// The objective's loss (BPR, or the T-CE / R-CE cross-entropy).
    pub bpr: f64,
    /// L2 regularization term.
    pub reg: f64,
    /// InfoNCE (SGL).
    pub ssl: f64,
}

impl Model {
    /// A model with N(0, 0.1²) initial embeddings (LightGCN's initialization).
    pub fn new(cfg: ModelConfig, ds: &Dataset, seed: u64) -> Self {
        let (nu, ni, d) = (ds.n_users(), ds.n_items(), cfg.dim);
        let mut ego = vec![0f32; (nu + ni) * d];
        Rng::stream(seed, 0xE60).fill_normal(&mut ego, 0.1);
        let graph = if cfg.backend == Backend::Mf {
            None
        } else {
            Some(Graph::new(ds))
        };
        let views = if cfg.backend == Backend::Sgl {
            let per = if cfg.augment == Augment::Rw {
                cfg.layers.max(1)
            } else {
                1
            };
            (0..2)
                .map(|_| (0..per).map(|_| Graph::new(ds)).collect())
                .collect()
        } else {
            vec![]
        };
        let adam = Adam::new(AdamConfig::with_lr(cfg.lr), &[ego.len()]);
        let deca = match cfg.objective {
            Objective::Deca { alpha, c1, c2, dim } => Some(Deca::new(
                DecaWeights {
                    alpha: alpha as f64,
                    c1: c1 as f64,
                    c2: c2 as f64,
                },
                dim,
                cfg.lr,
                nu,
                ni,
                seed,
            )),
            _ => None,
        };
        let n = (nu + ni) * d;
        Model {
            cfg,
            n_users: nu,
            n_items: ni,
            ego,
            graph,
            views,
            adam,
            fin: vec![0.0; n],
            grad: vec![0.0; n],
            dego: vec![],
            layer_bufs: vec![],
            mf: MfScratch::default(),
            step: 0,
            batch_rows: vec![],
            deca,
        }
    }

    /// Number of users.
    pub fn n_users(&self) -> usize {
        self.n_users
    }
    /// Number of items.
    pub fn n_items(&self) -> usize {
        self.n_items
    }

    /// The normalized training graph (graph backends only).
    pub fn graph(&self) -> Option<&Graph> {
        self.graph.as_ref()
    }

    /// Per-epoch setup: SGL draws its two augmented views.
    pub fn begin_epoch(&mut self, seed: u64, epoch: u64) {
        if self.cfg.backend != Backend::Sgl {
            return;
        }
        let ratio = self.cfg.drop_ratio;
        for (v, graphs) in self.views.iter_mut().enumerate() {
            for (l, g) in graphs.iter_mut().enumerate() {
                let mut rng = Rng::stream(seed, 0x5617_0000 + epoch * 64 + (v * 16 + l) as u64);
                match self.cfg.augment {
                    Augment::Nd => g.drop_nodes(ratio, &mut rng),
                    Augment::Ed | Augment::Rw => g.drop_edges(ratio, &mut rng),
                }
            }
        }
    }

    /// Propagate `src` through `graphs` (one graph reused for every layer, or one per layer)
    /// for `layers` layers and write the layer mean into `out`. `bufs` are scratch.
    pub fn propagate(
        graphs: &[&Graph],
        layers: usize,
        d: usize,
        src: &[f32],
        out: &mut [f32],
        bufs: &mut Vec<Vec<f32>>,
    ) {
        Self::propagate_rows(graphs, layers, d, src, out, bufs, None)
    }

    /// [`Self::propagate`] where only the rows marked in `rows` of `out` are needed: the last
    /// layer is computed on those rows only (the other rows of `out` are then meaningless).
    pub fn propagate_rows(
        graphs: &[&Graph],
        layers: usize,
        d: usize,
        src: &[f32],
        out: &mut [f32],
        bufs: &mut Vec<Vec<f32>>,
        rows: Option<&[bool]>,
    ) {
        out.copy_from_slice(src);
        if layers == 0 {
            return;
        }
        bufs.resize_with(2, Vec::new);
        for b in bufs.iter_mut() {
            b.resize(src.len(), 0.0);
        }
        let (b0, b1) = bufs.split_at_mut(1);
        let (mut cur, mut nxt) = (&mut b0[0], &mut b1[0]);
        let mean = 1.0 / (layers + 1) as f32;
        for l in 0..layers {
            let g = graphs[l.min(graphs.len() - 1)];
            let last = l + 1 == layers;
            // layer l+1 = Â · layer l, added to the running sum (the mean on the last layer)
            let input: &[f32] = if l == 0 { src } else { cur };
            spmm_ex(
                &g.adj,
                input,
                d,
                nxt,
                if last { rows } else { None },
                None,
                SpmmEpilogue::Accumulate {
                    acc: out,
                    scale: if last { mean } else { 1.0 },
                },
            );
            std::mem::swap(&mut cur, &mut nxt);
        }
    }

    /// Backward of [`Self::propagate`]: `out = (1/(K+1)) Σ_k Â_1ᵀ…Â_kᵀ g`, evaluated by
    /// Horner's rule `h = g; h = g + Â_k h (k = K…1)` (each Â is symmetric).
    pub fn propagate_back(
        graphs: &[&Graph],
        layers: usize,
        d: usize,
        g: &[f32],
        out: &mut [f32],
        bufs: &mut Vec<Vec<f32>>,
    ) {
        Self::propagate_back_from(graphs, layers, d, g, out, bufs, None)
    }

    /// [`Self::propagate_back`] when `g` is zero outside the rows marked in `nonzero`: the
    /// first product Â·g sums only those rows' terms (same result, bit for bit).
    pub fn propagate_back_from(
        graphs: &[&Graph],
        layers: usize,
        d: usize,
        g: &[f32],
        out: &mut [f32],
        bufs: &mut Vec<Vec<f32>>,
        nonzero: Option<&[bool]>,
    ) {
        if layers == 0 {
            out.copy_from_slice(g);
            return;
        }
        bufs.resize_with(2, Vec::new);
        for b in bufs.iter_mut() {
            b.resize(g.len(), 0.0);
        }
        let (b0, b1) = bufs.split_at_mut(1);
        let (mut cur, mut nxt) = (&mut b0[0], &mut b1[0]);
        let mean = 1.0 / (layers + 1) as f32;
        for l in (0..layers).rev() {
            let gr = graphs[l.min(graphs.len() - 1)];
            let first = l + 1 == layers;
            // h = g + Â·h, the first h being g itself; the last step writes the mean into out
            let input: &[f32] = if first { g } else { cur };
            let target: &mut [f32] = if l == 0 { out } else { nxt };
            spmm_ex(
                &gr.adj,
                input,
                d,
                target,
                None,
                if first { nonzero } else { None },
                SpmmEpilogue::AddBase {
                    base: g,
                    scale: if l == 0 { mean } else { 1.0 },
                },
            );
            std::mem::swap(&mut cur, &mut nxt);
        }
    }

    /// Final (propagated) embeddings `(U + I) x d` of the main graph.
    pub fn final_embeddings(&mut self) -> Vec<f32> {
        let mut out = vec![0f32; self.ego.len()];
        self.compute_final_into(&mut out);
        out
    }

    fn compute_final_into(&mut self, out: &mut [f32]) {
        match &self.graph {
            None => out.copy_from_slice(&self.ego),
            Some(g) => Self::propagate(
                &[g],
                self.cfg.layers,
                self.cfg.dim,
                &self.ego,
                out,
                &mut self.layer_bufs,
            ),
        }
    }

    /// One optimizer step on a batch of triplets (`users`, `pos`, `neg` are item ids).
    pub fn train_batch(&mut self, users: &[u32], pos: &[u32], neg: &[u32]) -> BatchLoss {
        let d = self.cfg.dim;
        let b = users.len();
        let nu = self.n_users as u32;
        let pos_n: Vec<u32> = pos.iter().map(|&i| i + nu).collect();
        let neg_n: Vec<u32> = neg.iter().map(|&i| i + nu).collect();
        if self.cfg.backend == Backend::Mf {
            return self.mf_step(users, pos, neg, &pos_n, &neg_n);
        }
        let mut fin = std::mem::take(&mut self.fin);
        // the batch's nodes: only their final embeddings are read, and only their rows of the
        // gradient w.r.t. the final embeddings are non-zero
        let mut batch_rows = std::mem::take(&mut self.batch_rows);
        {
            batch_rows.clear();
            batch_rows.resize(self.n_users + self.n_items, false);
            for &n in users.iter().chain(&pos_n).chain(&neg_n) {
                batch_rows[n as usize] = true;
            }
            let g = self.graph.as_ref().expect("graph backends have a graph");
            Self::propagate_rows(
                &[g],
                self.cfg.layers,
                self.cfg.dim,
                &self.ego,
                &mut fin,
                &mut self.layer_bufs,
                Some(&batch_rows),
            );
        }
        let (mut eu, mut ei, mut ej) = (vec![0f32; b * d], vec![0f32; b * d], vec![0f32; b * d]);
        gather_rows(&fin, d, users, &mut eu);
        gather_rows(&fin, d, &pos_n, &mut ei);
        gather_rows(&fin, d, &neg_n, &mut ej);
        let (mut sp, mut sn) = (vec![0f32; b], vec![0f32; b]);
        row_dots(&eu, &ei, d, &mut sp);
        row_dots(&eu, &ej, d, &mut sn);
        let (mut dp, mut dn) = (vec![0f32; b], vec![0f32; b]);
        let bpr = self.objective_loss(users, pos, neg, &sp, &sn, &mut dp, &mut dn);
        // gradient w.r.t. final embeddings (dense, mostly zero)
        // `grad` is all zeros between batches: only the batch's rows are written, and they
        // are cleared again at the end of the step
        let mut g = std::mem::take(&mut self.grad);
        debug_assert!(g.len() == self.ego.len());
        for k in 0..b {
            let (u, i, j) = (users[k] as usize, pos_n[k] as usize, neg_n[k] as usize);
            for t in 0..d {
                g[u * d + t] += dp[k] * ei[k * d + t] + dn[k] * ej[k * d + t];
                g[i * d + t] += dp[k] * eu[k * d + t];
                g[j * d + t] += dn[k] * eu[k * d + t];
            }
        }
        let mut ssl = 0.0;
        if self.cfg.backend == Backend::Sgl && self.cfg.ssl_weight > 0.0 {
            ssl = self.ssl_step(users, &pos_n, &mut fin);
        }
        // back through the main propagation: dE0 = (1/(K+1)) Σ_k Â^k G
        // overwritten whole by the backward propagation (or the copy)
        let mut dego = std::mem::take(&mut self.dego);
        dego.resize(self.ego.len(), 0.0);
        match &self.graph {
            None => dego.copy_from_slice(&g),
            Some(gr) => Self::propagate_back_from(
                &[gr],
                self.cfg.layers,
                d,
                &g,
                &mut dego,
                &mut self.layer_bufs,
                Some(&batch_rows),
            ),
        }
        self.batch_rows = batch_rows;
        if self.cfg.backend == Backend::Sgl {
            // SGL's view gradients were accumulated into `fin` by ssl_step
            axpy(1.0, &fin, &mut dego);
        }
        // L2 on the batch's ego embeddings: reg/2 · (‖e_u‖² + ‖e_i‖² + ‖e_j‖²) / B
        let mut reg = 0f64;
        let rc = self.cfg.reg / b as f32;
        for k in 0..b {
            for &node in &[users[k] as usize, pos_n[k] as usize, neg_n[k] as usize] {
                let e = &self.ego[node * d..(node + 1) * d];
                reg += 0.5 * e.iter().map(|v| (v * v) as f64).sum::<f64>();
                axpy(rc, e, &mut dego[node * d..(node + 1) * d]);
            }
        }
        self.adam.begin_step();
        self.adam.update(0, &mut self.ego, &dego);
        for &node in users.iter().chain(&pos_n).chain(&neg_n) {
            g[node as usize * d..(node as usize + 1) * d].fill(0.0);
        }
        self.fin = fin;
        self.grad = g;
        self.dego = dego;
        BatchLoss {
            bpr,
            reg: reg * self.cfg.reg as f64 / b as f64,
            ssl,
        }
    }

    /// The objective (or DeCA) on the triplets' scores: loss, and its derivatives w.r.t. the
    /// positive and negative scores. Counts one optimizer step.
    #[allow(clippy::too_many_arguments)]
    fn objective_loss(
        &mut self,
        users: &[u32],
        pos: &[u32],
        neg: &[u32],
        sp: &[f32],
        sn: &[f32],
        dp: &mut [f32],
        dn: &mut [f32],
    ) -> f64 {
        let loss = match self.deca.as_mut() {
            Some(deca) => deca.loss_and_step(self.step, users, pos, neg, sp, sn, dp, dn),
            None => self.cfg.objective.loss(self.step, sp, sn, dp, dn),
        };
        self.step += 1;
        loss
    }

    /// MF: the gradient touches only the batch's rows, so the update is sparse (lazy Adam on
    /// those rows); an epoch costs O(interactions), not O(batches x table). Nothing is
    /// gathered: scores and row gradients read the table in place (`mf_step`).
    fn mf_step(
        &mut self,
        users: &[u32],
        pos: &[u32],
        neg: &[u32],
        pos_n: &[u32],
        neg_n: &[u32],
    ) -> BatchLoss {
        let d = self.cfg.dim;
        let b = users.len();
        let trip = (users, pos_n, neg_n);
        let (mut sp, mut sn) = (vec![0f32; b], vec![0f32; b]);
        let mut sq = self.mf.sq_buf(b);
        mf_step::scores(&self.ego, d, trip, &mut sp, &mut sn, &mut sq);
        let (mut dp, mut dn) = (vec![0f32; b], vec![0f32; b]);
        let bpr = self.objective_loss(users, pos, neg, &sp, &sn, &mut dp, &mut dn);
        let rc = self.cfg.reg / b as f32;
        let (rows, g) = self.mf.gradients(&self.ego, d, trip, &dp, &dn, rc);
        self.adam.begin_step();
        self.adam.update_rows(0, &mut self.ego, d, &rows, &g);
        let reg: f64 = sq.iter().sum();
        self.mf.put_sq(sq);
        BatchLoss {
            bpr,
            reg: reg * self.cfg.reg as f64 / b as f64,
            ssl: 0.0,
        }
    }

    /// SGL: InfoNCE between the two views on the batch's unique users and items. Writes the
    /// gradient w.r.t. E0 into `out` (overwritten) and returns the weighted loss.
    fn ssl_step(&mut self, users: &[u32], pos_n: &[u32], out: &mut [f32]) -> f64 {
        let d = self.cfg.dim;
        let (layers, w, tau) = (self.cfg.layers, self.cfg.ssl_weight, self.cfg.tau);
        let mut uniq_u: Vec<u32> = users.to_vec();
        uniq_u.sort_unstable();
        uniq_u.dedup();
        let mut uniq_i: Vec<u32> = pos_n.to_vec();
        uniq_i.sort_unstable();
        uniq_i.dedup();
        let n = self.ego.len();
        let mut v_emb = [vec![0f32; n], vec![0f32; n]];
        for v in 0..2 {
            let gs: Vec<&Graph> = self.views[v].iter().collect();
            Self::propagate(
                &gs,
                layers,
                d,
                &self.ego,
                &mut v_emb[v],
                &mut self.layer_bufs,
            );
        }
        let mut gv = [vec![0f32; n], vec![0f32; n]];
        let mut total = 0.0;
        for ids in [&uniq_u, &uniq_i] {
            let m = ids.len();
            let (mut a, mut b) = (vec![0f32; m * d], vec![0f32; m * d]);
            gather_rows(&v_emb[0], d, ids, &mut a);
            gather_rows(&v_emb[1], d, ids, &mut b);
            let (mut da, mut db) = (vec![0f32; m * d], vec![0f32; m * d]);
            total += loss::infonce(&a, &b, d, tau, &mut da, &mut db);
            scale(w, &mut da);
            scale(w, &mut db);
            crate::kernels::cpu::elementwise::scatter_add_rows(&mut gv[0], d, ids, &da);
            crate::kernels::cpu::elementwise::scatter_add_rows(&mut gv[1], d, ids, &db);
        }
        out.iter_mut().for_each(|x| *x = 0.0);
        let mut tmp = vec![0f32; n];
        for v in 0..2 {
            let gs: Vec<&Graph> = self.views[v].iter().collect();
            Self::propagate_back(&gs, layers, d, &gv[v], &mut tmp, &mut self.layer_bufs);
            axpy(1.0, &tmp, out);
        }
        w as f64 * total
    }
}
