//! AdaGCL's first view generator, a variational graph auto-encoder (the authors' `vgae`).
//!
//! Encoder: its own embedding table `E` propagated through `Â` (sum of layers) into `x`, then
//! `μ = MLP_μ(x)` and `σ = softplus(MLP_σ(x))` (each Linear–ReLU–Linear), `z = μ + ε ⊙ σ`.
//! Decoder: `p(r, c) = sigmoid(w₂ · relu(W₁ relu(z_r ⊙ z_c) + b₁) + b₂)`.
//! Loss on a batch of (u, i, j): `mean_k [BCE(p(u,i), 1) + BCE(p(u,j), 0)] + 0.1 · mean_nodes KL
//! + BPR(z) / batch + reg · Σ‖θ_encoder‖²` (the KL term over every node, as in their code).
//! The view it generates keeps the edges (and self-loops) with `p ≥ 0.5`, with the kept
//! weights of `Â` scaled by `nnz / kept`.

use super::graph::{propagation_backward, LoopGraph, Propagation};
use super::init::{node_embeddings, torch_linear};
use super::losses::{bpr_nodes, l2_into};
use crate::kernels::cpu::elementwise::{sigmoid, softplus};
use crate::kernels::cpu::spmm::SparseMatrix;
use crate::kernels::cpu::Act;
use crate::nn::{Linear, LinearGrad};
use crate::util::rng::Rng;
use rayon::prelude::*;

/// Weight of the KL term (fixed in the authors' code).
pub const KL_WEIGHT: f32 = 0.1;

/// The VGAE generator.
#[derive(Clone, Debug)]
pub struct Vgae {
    /// Embedding width.
    pub d: usize,
    /// Propagation layers.
    pub layers: usize,
    /// Its own node embeddings, `n x d`.
    pub emb: Vec<f32>,
    /// `[mean1, mean2, std1, std2, dec1, dec2]`.
    pub lin: [Linear; 6],
}

/// Gradients of a [`Vgae`], in the order of [`Vgae::tensors_mut`].
#[derive(Clone, Debug)]
pub struct VgaeGrads {
    /// dL/dE.
    pub emb: Vec<f32>,
    /// Per linear layer.
    pub lin: Vec<LinearGrad>,
}

/// The encoder's forward state.
pub struct Encoded {
    /// `x` (sum of the layers).
    pub x: Vec<f32>,
    /// Hidden layers of the μ and σ MLPs.
    pub hm: Vec<f32>,
    /// Hidden of σ.
    pub hs: Vec<f32>,
    /// μ.
    pub mean: Vec<f32>,
    /// Pre-softplus of σ.
    pub zs: Vec<f32>,
    /// σ.
    pub std: Vec<f32>,
    /// `z = μ + ε ⊙ σ`.
    pub z: Vec<f32>,
}

/// Loss parts of one batch.
#[derive(Clone, Copy, Debug, Default)]
pub struct VgaeLoss {
    /// Edge reconstruction (BCE).
    pub rec: f64,
    /// Weighted KL.
    pub kl: f64,
    /// BPR on z.
    pub bpr: f64,
    /// L2 on the encoder.
    pub reg: f64,
}

impl VgaeLoss {
    /// Sum of the parts.
    pub fn total(&self) -> f64 {
        self.rec + self.kl + self.bpr + self.reg
    }
}

impl Vgae {
    /// A new generator for `n` nodes of which `n_users` users (PyTorch's default initializations).
    pub fn new(n_users: usize, n: usize, d: usize, layers: usize, rng: &mut Rng) -> Self {
        let emb = node_embeddings(n_users, n - n_users, d, rng);
        let lin = [
            torch_linear(d, d, rng),
            torch_linear(d, d, rng),
            torch_linear(d, d, rng),
            torch_linear(d, d, rng),
            torch_linear(d, d, rng),
            torch_linear(d, 1, rng),
        ];
        Vgae {
            d,
            layers,
            emb,
            lin,
        }
    }

    /// Zeroed gradients.
    pub fn zero_grads(&self) -> VgaeGrads {
        VgaeGrads {
            emb: vec![0.0; self.emb.len()],
            lin: self.lin.iter().map(Linear::zero_grad).collect(),
        }
    }

    /// Parameter tensors: E, then each layer's W and b.
    pub fn tensors_mut(&mut self) -> Vec<&mut Vec<f32>> {
        let mut v = vec![&mut self.emb];
        for l in self.lin.iter_mut() {
            v.push(&mut l.w);
            v.push(&mut l.b);
        }
        v
    }

    /// Gradient tensors in the order of [`Self::tensors_mut`].
    pub fn grad_tensors(g: &VgaeGrads) -> Vec<&Vec<f32>> {
        let mut v = vec![&g.emb];
        for l in &g.lin {
            v.push(&l.w);
            v.push(&l.b);
        }
        v
    }

    /// Encode with the noise `eps` (`n x d`).
    pub fn encode(&self, g: &LoopGraph, eps: &[f32]) -> Encoded {
        let d = self.d;
        let n = g.n_nodes();
        assert_eq!(eps.len(), n * d);
        let mats: Vec<&SparseMatrix> = (0..self.layers).map(|_| &g.adj).collect();
        let x = Propagation::run(&self.emb, d, &mats).sum();
        let mut hm = vec![0f32; n * d];
        let mut mean = vec![0f32; n * d];
        let mut hs = vec![0f32; n * d];
        let mut zs = vec![0f32; n * d];
        self.lin[0].forward(&x, n, Act::Relu, &mut hm);
        self.lin[1].forward(&hm, n, Act::None, &mut mean);
        self.lin[2].forward(&x, n, Act::Relu, &mut hs);
        self.lin[3].forward(&hs, n, Act::None, &mut zs);
        let std: Vec<f32> = zs.par_iter().map(|&v| softplus(v)).collect();
        let z: Vec<f32> = (mean.par_iter().zip(&std).zip(eps))
            .map(|((m, s), e)| m + e * s)
            .collect();
        Encoded {
            x,
            hm,
            hs,
            mean,
            zs,
            std,
            z,
        }
    }

    /// Decoder logits for `pairs` of node ids, given the rows `z`.
    fn decode_logits(&self, z: &[f32], pairs: &[(u32, u32)]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let d = self.d;
        let m = pairs.len();
        let mut inp = vec![0f32; m * d];
        inp.par_chunks_mut(d).zip(pairs).for_each(|(row, &(r, c))| {
            let (zr, zc) = (
                &z[r as usize * d..(r as usize + 1) * d],
                &z[c as usize * d..(c as usize + 1) * d],
            );
            for k in 0..d {
                row[k] = (zr[k] * zc[k]).max(0.0);
            }
        });
        let mut h = vec![0f32; m * d];
        self.lin[4].forward(&inp, m, Act::Relu, &mut h);
        let mut logit = vec![0f32; m];
        self.lin[5].forward(&h, m, Act::None, &mut logit);
        (inp, h, logit)
    }

    /// Loss and gradients (overwritten) on a batch; `batch_norm` is the configured batch size
    /// (the BPR sum is divided by it, as in the authors' code).
    #[allow(clippy::too_many_arguments)]
    pub fn loss_and_grads(
        &self,
        g: &LoopGraph,
        eps: &[f32],
        users: &[u32],
        pos: &[u32],
        neg: &[u32],
        batch_norm: usize,
        reg: f32,
        grads: &mut VgaeGrads,
    ) -> VgaeLoss {
        let d = self.d;
        let n = g.n_nodes();
        let nu = g.n_users as u32;
        let b = users.len();
        assert!(pos.len() == b && neg.len() == b && b > 0);
        let enc = self.encode(g, eps);
        let z = &enc.z;
        // decoder on the positive then the negative pairs
        let pairs: Vec<(u32, u32)> = users
            .iter()
            .zip(pos)
            .map(|(&u, &i)| (u, nu + i))
            .chain(users.iter().zip(neg).map(|(&u, &j)| (u, nu + j)))
            .collect();
        let (inp, h, logit) = self.decode_logits(z, &pairs);
        let mut loss = VgaeLoss::default();
        let mut dlogit = vec![0f32; 2 * b];
        for k in 0..2 * b {
            let y = if k < b { 1.0 } else { 0.0 };
            let s = logit[k];
            // BCE(σ(s), y) = softplus(s) − y s
            loss.rec += (softplus(s) - y * s) as f64;
            dlogit[k] = (sigmoid(s) - y) / b as f32;
        }
        loss.rec /= b as f64;
        let mut dz = vec![0f32; n * d];
        // decoder backward
        let mut dh = vec![0f32; 2 * b * d];
        self.lin[5].backward_pre(
            &h,
            &dlogit,
            2 * b,
            &mut grads.lin[5],
            Some((&mut dh, Some((&h, Act::Relu)))),
            false,
        );
        let mut dinp = vec![0f32; 2 * b * d];
        self.lin[4].backward_pre(
            &inp,
            &dh,
            2 * b,
            &mut grads.lin[4],
            Some((&mut dinp, Some((&inp, Act::Relu)))),
            false,
        );
        for (k, &(r, c)) in pairs.iter().enumerate() {
            let (r, c) = (r as usize, c as usize);
            for t in 0..d {
                let gk = dinp[k * d + t];
                let (zr, zc) = (z[r * d + t], z[c * d + t]);
                dz[r * d + t] += gk * zc;
                dz[c * d + t] += gk * zr;
            }
        }
        // BPR on z
        loss.bpr = bpr_nodes(z, d, nu as usize, users, pos, neg, batch_norm, &mut dz);
        // KL = −0.5 Σ_d (1 + 2 log σ − μ² − σ²), mean over nodes, weighted
        let kw = KL_WEIGHT / n as f32;
        let kl: f64 = enc
            .mean
            .iter()
            .zip(&enc.std)
            .map(|(&m, &s)| (-0.5 * (1.0 + 2.0 * s.ln() - m * m - s * s)) as f64)
            .sum();
        loss.kl = kl * kw as f64;
        // dμ = dz + kw μ ; dσ = dz ε + kw (σ − 1/σ) ; dzs = dσ · sigmoid(zs)
        let dmean: Vec<f32> = (dz.par_iter().zip(&enc.mean))
            .map(|(g, m)| g + kw * m)
            .collect();
        let dzs: Vec<f32> = (0..n * d)
            .into_par_iter()
            .map(|k| {
                let s = enc.std[k];
                (dz[k] * eps[k] + kw * (s - 1.0 / s)) * sigmoid(enc.zs[k])
            })
            .collect();
        let mut dhm = vec![0f32; n * d];
        self.lin[1].backward_pre(
            &enc.hm,
            &dmean,
            n,
            &mut grads.lin[1],
            Some((&mut dhm, Some((&enc.hm, Act::Relu)))),
            false,
        );
        let mut dx = vec![0f32; n * d];
        self.lin[0].backward_pre(
            &enc.x,
            &dhm,
            n,
            &mut grads.lin[0],
            Some((&mut dx, None)),
            false,
        );
        let mut dhs = vec![0f32; n * d];
        self.lin[3].backward_pre(
            &enc.hs,
            &dzs,
            n,
            &mut grads.lin[3],
            Some((&mut dhs, Some((&enc.hs, Act::Relu)))),
            false,
        );
        let mut dx2 = vec![0f32; n * d];
        self.lin[2].backward_pre(
            &enc.x,
            &dhs,
            n,
            &mut grads.lin[2],
            Some((&mut dx2, None)),
            false,
        );
        dx.par_iter_mut().zip(&dx2).for_each(|(a, b)| *a += b);
        let mats: Vec<&SparseMatrix> = (0..self.layers).map(|_| &g.adj).collect();
        grads.emb = propagation_backward(&dx, d, &mats);
        // L2 on the encoder (E, the μ and σ MLPs)
        let mut pairs = vec![(self.emb.as_slice(), grads.emb.as_mut_slice())];
        for (l, g) in self.lin[..4].iter().zip(grads.lin[..4].iter_mut()) {
            pairs.push((l.w.as_slice(), g.w.as_mut_slice()));
            pairs.push((l.b.as_slice(), g.b.as_mut_slice()));
        }
        loss.reg = l2_into(pairs, reg);
        loss
    }

    /// The generated view: `Â`'s entries whose decoded probability is at least 0.5, their
    /// weights scaled by `nnz / kept` (dropped entries weigh 0). Returns the values and the
    /// number kept.
    pub fn view_values(&self, g: &LoopGraph, eps: &[f32]) -> (Vec<f32>, usize) {
        let enc = self.encode(g, eps);
        let nnz = g.nnz();
        // p(r, c) = p(c, r): decode each pair once (r ≤ c) and mirror
        let canon: Vec<u32> = (0..nnz as u32)
            .filter(|&e| g.rows[e as usize] <= g.adj.indices[e as usize])
            .collect();
        let mut keep = vec![false; nnz];
        const CHUNK: usize = 16384;
        for ids in canon.chunks(CHUNK) {
            let pairs: Vec<(u32, u32)> = ids
                .iter()
                .map(|&e| (g.rows[e as usize], g.adj.indices[e as usize]))
                .collect();
            let (_, _, logit) = self.decode_logits(&enc.z, &pairs);
            for (&e, &s) in ids.iter().zip(&logit) {
                // sigmoid(s) ≥ 0.5 ⟺ s ≥ 0 (NaN drops the entry)
                let k = s >= 0.0;
                keep[e as usize] = k;
                keep[g.mirror[e as usize] as usize] = k;
            }
        }
        let kept = keep.iter().filter(|&&k| k).count();
        let scale = if kept == 0 {
            0.0
        } else {
            nnz as f32 / kept as f32
        };
        let values = (g.adj.values.iter().zip(&keep))
            .map(|(&v, &k)| if k { v * scale } else { 0.0 })
            .collect();
        (values, kept)
    }
}
