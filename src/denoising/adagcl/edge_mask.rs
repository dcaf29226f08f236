//! AdaGCL's second view generator, the graph denoising net (the authors' `DenoisingNet`): per
//! layer `l`, each stored entry `e = (r, c)` of `Â` gets a logit
//! `w_e = a_l · [relu(N_l x_r + b) ; relu(S_l x_c + b')] + a₀` from the layer's input `x`,
//! a hard-concrete gate `m_e = clamp(σ((log u − log(1−u) + w_e) / β)(ζ − γ) + γ, 0, 1)` (no
//! noise and β = 1 when generating the view), and the layer propagates with the re-normalized
//! gates `v_e = m_e d_r d_c`, `d_n = min((Σ_{row n} m + ε)^-1/2, 10)`.
//!
//! Its training loss (on the main model's *initial* embeddings, detached, as the authors'
//! code does) is BPR on the summed layers + `reg · Σ‖θ‖²` + `λ₀ Σ_l mean_e σ(w_e − β log(−γ/ζ))`
//! (the L0 penalty). The gradient reaches the gates through the propagation and through the
//! next layer's logits, and the gates' re-normalization.

use super::graph::LoopGraph;
use super::init::torch_linear;
use super::losses::{bpr_nodes, l2_into};
use crate::kernels::cpu::elementwise::sigmoid;
use crate::kernels::cpu::spmm::{spmm, SparseMatrix};
use crate::kernels::cpu::Act;
use crate::nn::{Linear, LinearGrad};
use crate::util::rng::Rng;
use rayon::prelude::*;

/// Hard-concrete stretch limits and the L0 weight.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GateConfig {
    /// Lower stretch limit γ (< 0).
    pub gamma: f32,
    /// Upper stretch limit ζ (> 1).
    pub zeta: f32,
    /// Weight λ₀ of the L0 penalty.
    pub lambda0: f32,
}

impl Default for GateConfig {
    fn default() -> Self {
        GateConfig {
            gamma: -0.45,
            zeta: 1.05,
            lambda0: 1e-4,
        }
    }
}

/// Smallest row sum term of the training forward (`+ 1e-6` in their code).
const ROW_EPS: f32 = 1e-6;
/// Cap on `d_n`.
const DIS_MAX: f32 = 10.0;

/// The denoising net: per layer a neighbour layer, a self layer and an attention layer.
#[derive(Clone, Debug)]
pub struct EdgeMasker {
    /// Embedding width.
    pub d: usize,
    /// `N_l` (d → d, ReLU).
    pub nb: Vec<Linear>,
    /// `S_l` (d → d, ReLU).
    pub slf: Vec<Linear>,
    /// `a_l` (2d → 1).
    pub att: Vec<Linear>,
    /// Gate hyper-parameters.
    pub gate: GateConfig,
}

/// Gradients of an [`EdgeMasker`].
#[derive(Clone, Debug)]
pub struct EdgeMaskerGrads {
    /// Per layer.
    pub nb: Vec<LinearGrad>,
    /// Per layer.
    pub slf: Vec<LinearGrad>,
    /// Per layer.
    pub att: Vec<LinearGrad>,
}

/// Loss parts of one batch.
#[derive(Clone, Copy, Debug, Default)]
pub struct MaskerLoss {
    /// BPR on the denoised propagation.
    pub bpr: f64,
    /// L2.
    pub reg: f64,
    /// Weighted L0 penalty.
    pub l0: f64,
}

impl MaskerLoss {
    /// Sum of the parts.
    pub fn total(&self) -> f64 {
        self.bpr + self.reg + self.l0
    }
}

/// One layer's forward state.
struct LayerState {
    p_hidden: Vec<f32>,
    q_hidden: Vec<f32>,
    gate: Vec<f32>,
    stretched: Vec<f32>,
    mask: Vec<f32>,
    rowsum: Vec<f32>,
    dis: Vec<f32>,
    w: Vec<f32>,
    s: SparseMatrix,
}

impl EdgeMasker {
    /// A new net for `layers` propagation layers.
    pub fn new(d: usize, layers: usize, gate: GateConfig, rng: &mut Rng) -> Self {
        let mut nb = Vec::new();
        let mut slf = Vec::new();
        let mut att = Vec::new();
        for _ in 0..layers {
            nb.push(torch_linear(d, d, rng));
            slf.push(torch_linear(d, d, rng));
        }
        for _ in 0..layers {
            att.push(torch_linear(2 * d, 1, rng));
        }
        EdgeMasker {
            d,
            nb,
            slf,
            att,
            gate,
        }
    }

    /// Layers.
    pub fn layers(&self) -> usize {
        self.nb.len()
    }

    /// Zeroed gradients.
    pub fn zero_grads(&self) -> EdgeMaskerGrads {
        EdgeMaskerGrads {
            nb: self.nb.iter().map(Linear::zero_grad).collect(),
            slf: self.slf.iter().map(Linear::zero_grad).collect(),
            att: self.att.iter().map(Linear::zero_grad).collect(),
        }
    }

    /// Parameter tensors (each layer's W and b: neighbour, self, attention layers).
    pub fn tensors_mut(&mut self) -> Vec<&mut Vec<f32>> {
        let mut v = Vec::new();
        for l in self
            .nb
            .iter_mut()
            .chain(self.slf.iter_mut())
            .chain(self.att.iter_mut())
        {
            v.push(&mut l.w);
            v.push(&mut l.b);
        }
        v
    }

    /// Gradient tensors in the order of [`Self::tensors_mut`].
    pub fn grad_tensors(g: &EdgeMaskerGrads) -> Vec<&Vec<f32>> {
        let mut v = Vec::new();
        for l in g.nb.iter().chain(&g.slf).chain(&g.att) {
            v.push(&l.w);
            v.push(&l.b);
        }
        v
    }

    /// Edge logits of layer `l` for the input `x` (`n x d`), with the hidden layers.
    fn logits(&self, l: usize, g: &LoopGraph, x: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (d, n) = (self.d, g.n_nodes());
        let mut ph = vec![0f32; n * d];
        let mut qh = vec![0f32; n * d];
        self.nb[l].forward(x, n, Act::Relu, &mut ph);
        self.slf[l].forward(x, n, Act::Relu, &mut qh);
        let a = &self.att[l].w;
        let p: Vec<f32> = ph
            .par_chunks(d)
            .map(|r| r.iter().zip(&a[..d]).map(|(x, y)| x * y).sum())
            .collect();
        let q: Vec<f32> = qh
            .par_chunks(d)
            .map(|r| r.iter().zip(&a[d..]).map(|(x, y)| x * y).sum())
            .collect();
        let b0 = self.att[l].b[0];
        let w = (g.rows.par_iter().zip(&g.adj.indices))
            .map(|(&r, &c)| p[r as usize] + q[c as usize] + b0)
            .collect();
        (ph, qh, w)
    }

    /// Re-normalized values from gates: row sums (`+ eps`), `d_n`, `v_e = m_e d_r d_c`.
    fn normalize(g: &LoopGraph, mask: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let ip = &g.adj.indptr;
        let rowsum: Vec<f32> = (0..g.n_nodes())
            .into_par_iter()
            .map(|r| mask[ip[r] as usize..ip[r + 1] as usize].iter().sum::<f32>() + eps)
            .collect();
        // rowsum^-1/2 clamped to [0, 10] (a zero row sum gives inf, clamped to 10)
        let dis: Vec<f32> = rowsum
            .par_iter()
            .map(|&s| (1.0 / s.sqrt()).clamp(0.0, DIS_MAX))
            .collect();
        let values = (mask.par_iter().zip(&g.rows).zip(&g.adj.indices))
            .map(|((&m, &r), &c)| m * dis[r as usize] * dis[c as usize])
            .collect();
        (rowsum, dis, values)
    }

    /// The view's matrix for layer `l` given that layer's input `x` (no noise, β = 1).
    pub fn view_matrix(&self, l: usize, g: &LoopGraph, x: &[f32]) -> SparseMatrix {
        let (_, _, w) = self.logits(l, g, x);
        let (gm, zt) = (self.gate.gamma, self.gate.zeta);
        let mask: Vec<f32> = w
            .par_iter()
            .map(|&v| (sigmoid(v) * (zt - gm) + gm).clamp(0.0, 1.0))
            .collect();
        let (_, _, values) = Self::normalize(g, &mask, 0.0);
        g.with_values(values)
    }

    /// Loss and gradients (overwritten) for a batch. `x0` is the input (detached);
    /// `noise[l]` holds each entry's uniform draw in (0, 1) for layer `l`; `beta` is the gate
    /// temperature.
    #[allow(clippy::too_many_arguments)]
    pub fn loss_and_grads(
        &self,
        g: &LoopGraph,
        x0: &[f32],
        noise: &[Vec<f32>],
        beta: f32,
        users: &[u32],
        pos: &[u32],
        neg: &[u32],
        batch_norm: usize,
        reg: f32,
        grads: &mut EdgeMaskerGrads,
    ) -> MaskerLoss {
        let (d, n, nnz) = (self.d, g.n_nodes(), g.nnz());
        let nl = self.layers();
        assert_eq!(noise.len(), nl);
        let (gm, zt) = (self.gate.gamma, self.gate.zeta);
        let l0_shift = beta * (-gm / zt).ln();
        let mut loss = MaskerLoss::default();
        // forward
        let mut xs = vec![x0.to_vec()];
        let mut states = Vec::with_capacity(nl);
        for (l, u) in noise.iter().enumerate() {
            assert_eq!(u.len(), nnz);
            let (ph, qh, w) = self.logits(l, g, &xs[l]);
            let gate: Vec<f32> = (w.par_iter().zip(u))
                .map(|(&wv, &uv)| sigmoid((uv.ln() - (1.0 - uv).ln() + wv) / beta))
                .collect();
            let stretched: Vec<f32> = gate.par_iter().map(|&v| v * (zt - gm) + gm).collect();
            let mask: Vec<f32> = stretched.par_iter().map(|&v| v.clamp(0.0, 1.0)).collect();
            let (rowsum, dis, values) = Self::normalize(g, &mask, ROW_EPS);
            let s = g.with_values(values);
            let mut next = vec![0f32; n * d];
            spmm(&s, &xs[l], d, &mut next);
            loss.l0 += w.iter().map(|&v| sigmoid(v - l0_shift) as f64).sum::<f64>() / nnz as f64;
            xs.push(next);
            states.push(LayerState {
                p_hidden: ph,
                q_hidden: qh,
                gate,
                stretched,
                mask,
                rowsum,
                dis,
                w,
                s,
            });
        }
        loss.l0 *= self.gate.lambda0 as f64;
        let mut out = xs[0].clone();
        for x in &xs[1..] {
            out.par_iter_mut().zip(x).for_each(|(o, v)| *o += v);
        }
        // BPR on the summed layers
        let mut dout = vec![0f32; n * d];
        loss.bpr = bpr_nodes(&out, d, g.n_users, users, pos, neg, batch_norm, &mut dout);
        // backward, last layer first; gx = dL/dx_{l+1}
        let ip = &g.adj.indptr;
        let mut gx = dout.clone();
        let mut st = g.adj.clone();
        for l in (0..nl).rev() {
            let s = &states[l];
            let x = &xs[l];
            // dv_e = <gx[r], x[c]>
            let dv: Vec<f32> = (g.rows.par_iter().zip(&g.adj.indices))
                .map(|(&r, &c)| {
                    let (a, b) = (
                        &gx[r as usize * d..(r as usize + 1) * d],
                        &x[c as usize * d..(c as usize + 1) * d],
                    );
                    a.iter().zip(b).map(|(p, q)| p * q).sum()
                })
                .collect();
            // dx_l from the propagation (not needed for the detached input)
            let mut dx = if l > 0 {
                g.transpose_values(&s.s, &mut st);
                let mut t = vec![0f32; n * d];
                spmm(&st, &gx, d, &mut t);
                t.par_iter_mut().zip(&dout).for_each(|(a, b)| *a += b);
                t
            } else {
                Vec::new()
            };
            // through v_e = m_e d_r d_c
            let contrib: Vec<f32> = (0..nnz)
                .into_par_iter()
                .map(|e| dv[e] * s.mask[e])
                .collect();
            let ddis: Vec<f32> = (0..n)
                .into_par_iter()
                .map(|r| {
                    let rs = s.rowsum[r];
                    if 1.0 / rs.sqrt() >= DIS_MAX {
                        return 0.0;
                    }
                    let (lo, hi) = (ip[r] as usize, ip[r + 1] as usize);
                    let mut acc = 0f32;
                    for e in lo..hi {
                        let c = g.adj.indices[e] as usize;
                        // (r, c) uses d_r as its row factor; (c, r), its mirror, as its column
                        acc += contrib[e] * s.dis[c];
                        acc += contrib[g.mirror[e] as usize] * s.dis[c];
                    }
                    -0.5 * acc / (rs * rs.sqrt())
                })
                .collect();
            let dw: Vec<f32> = (0..nnz)
                .into_par_iter()
                .map(|e| {
                    let (r, c) = (g.rows[e] as usize, g.adj.indices[e] as usize);
                    let dm = dv[e] * s.dis[r] * s.dis[c] + ddis[r];
                    let sv = s.stretched[e];
                    let dst = if (0.0..=1.0).contains(&sv) { dm } else { 0.0 };
                    let gt = s.gate[e];
                    let sl = sigmoid(s.w[e] - l0_shift);
                    dst * (zt - gm) * gt * (1.0 - gt) / beta
                        + self.gate.lambda0 * sl * (1.0 - sl) / nnz as f32
                })
                .collect();
            // w_e = p[r] + q[c] + b0
            let dp: Vec<f32> = (0..n)
                .into_par_iter()
                .map(|r| dw[ip[r] as usize..ip[r + 1] as usize].iter().sum())
                .collect();
            let dq: Vec<f32> = (0..n)
                .into_par_iter()
                .map(|c| {
                    (ip[c] as usize..ip[c + 1] as usize)
                        .map(|e| dw[g.mirror[e] as usize])
                        .sum()
                })
                .collect();
            let a = &self.att[l].w;
            let ga = &mut grads.att[l];
            ga.b[0] = dw.iter().map(|&v| v as f64).sum::<f64>() as f32;
            for t in 0..d {
                let (mut sp, mut sq) = (0f64, 0f64);
                for r in 0..n {
                    sp += (dp[r] * s.p_hidden[r * d + t]) as f64;
                    sq += (dq[r] * s.q_hidden[r * d + t]) as f64;
                }
                ga.w[t] = sp as f32;
                ga.w[d + t] = sq as f32;
            }
            // dP = dp ⊗ a[..d] through the ReLU, then the layers' backward
            let outer = |dv: &[f32], a: &[f32], h: &[f32]| -> Vec<f32> {
                let mut m = vec![0f32; n * d];
                m.par_chunks_mut(d).enumerate().for_each(|(r, row)| {
                    for t in 0..d {
                        row[t] = if h[r * d + t] > 0.0 {
                            dv[r] * a[t]
                        } else {
                            0.0
                        };
                    }
                });
                m
            };
            let dph = outer(&dp, &a[..d], &s.p_hidden);
            let dqh = outer(&dq, &a[d..], &s.q_hidden);
            if l > 0 {
                let mut t = vec![0f32; n * d];
                self.nb[l].backward_pre(x, &dph, n, &mut grads.nb[l], Some((&mut t, None)), false);
                dx.par_iter_mut().zip(&t).for_each(|(a, b)| *a += b);
                self.slf[l].backward_pre(
                    x,
                    &dqh,
                    n,
                    &mut grads.slf[l],
                    Some((&mut t, None)),
                    false,
                );
                dx.par_iter_mut().zip(&t).for_each(|(a, b)| *a += b);
                gx = dx;
            } else {
                self.nb[l].backward_pre(x, &dph, n, &mut grads.nb[l], None, false);
                self.slf[l].backward_pre(x, &dqh, n, &mut grads.slf[l], None, false);
            }
        }
        // L2 on every parameter
        let all = self.nb.iter().chain(&self.slf).chain(&self.att);
        let gall = grads
            .nb
            .iter_mut()
            .chain(grads.slf.iter_mut())
            .chain(grads.att.iter_mut());
        let pairs = all.zip(gall).flat_map(|(p, gp)| {
            [
                (p.w.as_slice(), gp.w.as_mut_slice()),
                (p.b.as_slice(), gp.b.as_mut_slice()),
            ]
        });
        loss.reg = l2_into(pairs, reg);
        loss
    }
}
