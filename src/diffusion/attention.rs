//! The cross-attention block of the Transformer denoiser (paper Table 3, "DDRM (Transformer)"):
//! the collaborative condition is the query, the step embedding the key and the noisy
//! embedding the value. Each `d`-wide projection is split into `tokens` tokens of width
//! `h = d / tokens`, so every sample attends over `tokens` keys:
//!
//! Q = c W_q + b_q, K = s W_k + b_k, V = x W_v + b_v (rows reshaped to tokens x h),
//! A = softmax(Q Kᵀ / √h) row-wise, O = A V, out = O W_o + b_o.
//!
//! Forward and backward by hand; the projections run as batched GEMMs, the per-sample
//! tokens x tokens attention in plain loops (it is a few hundred FLOPs per sample).

use crate::kernels::cpu::Act;
use crate::nn::{Linear, LinearGrad};
use crate::util::rng::Rng;
use rayon::prelude::*;

/// Cross-attention over `tokens` tokens of width `d / tokens`.
#[derive(Clone, Debug)]
pub struct Attention {
    /// Tokens per vector.
    pub tokens: usize,
    /// Query projection of the condition (`d -> d`).
    pub q: Linear,
    /// Key projection of the step embedding (`step_dim -> d`).
    pub k: Linear,
    /// Value projection of the noisy embedding (`d -> d`).
    pub v: Linear,
    /// Output projection (`d -> d`).
    pub o: Linear,
}

/// Gradients of an [`Attention`].
#[derive(Clone, Debug)]
pub struct AttentionGrad {
    /// Query projection.
    pub q: LinearGrad,
    /// Key projection.
    pub k: LinearGrad,
    /// Value projection.
    pub v: LinearGrad,
    /// Output projection.
    pub o: LinearGrad,
}

/// Forward state kept for the backward.
#[derive(Default, Debug)]
pub struct AttentionCache {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// Attention weights, `n x tokens x tokens`.
    a: Vec<f32>,
    o: Vec<f32>,
    out: Vec<f32>,
}

impl Attention {
    /// Xavier-normal projections for embeddings of width `d` and step embeddings of width
    /// `step_dim`; `d` must be a multiple of `tokens`.
    pub fn new(d: usize, step_dim: usize, tokens: usize, rng: &mut Rng) -> Self {
        assert!(
            tokens > 0 && d.is_multiple_of(tokens),
            "attention: {d} is not a multiple of {tokens} tokens"
        );
        Attention {
            tokens,
            q: Linear::xavier_normal(d, d, 0.001, rng),
            k: Linear::xavier_normal(step_dim, d, 0.001, rng),
            v: Linear::xavier_normal(d, d, 0.001, rng),
            o: Linear::xavier_normal(d, d, 0.001, rng),
        }
    }

    /// Zeroed gradients.
    pub fn zero_grad(&self) -> AttentionGrad {
        AttentionGrad {
            q: self.q.zero_grad(),
            k: self.k.zero_grad(),
            v: self.v.zero_grad(),
            o: self.o.zero_grad(),
        }
    }

    /// The four projections in a fixed order (q, k, v, o).
    pub fn layers_mut(&mut self) -> [&mut Linear; 4] {
        [&mut self.q, &mut self.k, &mut self.v, &mut self.o]
    }

    /// Gradients in the order of [`Self::layers_mut`].
    pub fn grads(g: &AttentionGrad) -> [&LinearGrad; 4] {
        [&g.q, &g.k, &g.v, &g.o]
    }

    /// Multiply-accumulates per sample.
    pub fn macs(&self) -> usize {
        let d = self.q.dout;
        let h = d / self.tokens;
        self.q.din * d + self.k.din * d + self.v.din * d + d * d + 2 * self.tokens * self.tokens * h
    }

    /// `out = Attention(query from cond, key from step, value from x)` for `n` rows.
    pub fn forward<'c>(
        &self,
        cond: &[f32],
        step: &[f32],
        x: &[f32],
        n: usize,
        cache: &'c mut AttentionCache,
    ) -> &'c [f32] {
        let d = self.q.dout;
        let (t, h) = (self.tokens, d / self.tokens);
        for (buf, layer, input) in [
            (&mut cache.q, &self.q, cond),
            (&mut cache.k, &self.k, step),
            (&mut cache.v, &self.v, x),
        ] {
            buf.resize(n * d, 0.0);
            layer.forward(input, n, Act::None, buf);
        }
        cache.a.resize(n * t * t, 0.0);
        cache.o.resize(n * d, 0.0);
        let scale = 1.0 / (h as f32).sqrt();
        let (q, k, v) = (&cache.q, &cache.k, &cache.v);
        cache
            .a
            .par_chunks_mut(t * t)
            .zip(cache.o.par_chunks_mut(d))
            .enumerate()
            .for_each(|(r, (a, o))| {
                let (qr, kr, vr) = (
                    &q[r * d..(r + 1) * d],
                    &k[r * d..(r + 1) * d],
                    &v[r * d..(r + 1) * d],
                );
                for i in 0..t {
                    let row = &mut a[i * t..(i + 1) * t];
                    for (j, s) in row.iter_mut().enumerate() {
                        *s = scale * (0..h).map(|c| qr[i * h + c] * kr[j * h + c]).sum::<f32>();
                    }
                    let mx = row.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
                    let mut z = 0.0;
                    for s in row.iter_mut() {
                        *s = (*s - mx).exp();
                        z += *s;
                    }
                    row.iter_mut().for_each(|s| *s /= z);
                    let orow = &mut o[i * h..(i + 1) * h];
                    orow.fill(0.0);
                    for (j, &w) in row.iter().enumerate() {
                        for c in 0..h {
                            orow[c] += w * vr[j * h + c];
                        }
                    }
                }
            });
        cache.out.resize(n * d, 0.0);
        self.o.forward(&cache.o, n, Act::None, &mut cache.out);
        &cache.out
    }

    /// Backward from dL/d(out) (`dout`, consumed). Writes parameter gradients into `g`
    /// (overwritten), dL/d(step) into `dstep`, dL/dx into `dx`, and dL/dcond into `dcond`
    /// when given. `cond`, `step`, `x` are the forward's inputs.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        cond: &[f32],
        step: &[f32],
        x: &[f32],
        n: usize,
        cache: &mut AttentionCache,
        dout: &mut [f32],
        g: &mut AttentionGrad,
        dstep: &mut [f32],
        dx: &mut [f32],
        dcond: Option<&mut [f32]>,
    ) {
        let d = self.q.dout;
        let (t, h) = (self.tokens, d / self.tokens);
        let mut d_o = vec![0f32; n * d];
        self.o.backward(
            &cache.o,
            &cache.out,
            dout,
            n,
            Act::None,
            &mut g.o,
            Some(&mut d_o),
            false,
        );
        let (mut dq, mut dk, mut dv) = (vec![0f32; n * d], vec![0f32; n * d], vec![0f32; n * d]);
        let scale = 1.0 / (h as f32).sqrt();
        let (q, k, v, a) = (&cache.q, &cache.k, &cache.v, &cache.a);
        dq.par_chunks_mut(d)
            .zip(dk.par_chunks_mut(d))
            .zip(dv.par_chunks_mut(d))
            .enumerate()
            .for_each(|(r, ((dqr, dkr), dvr))| {
                let rows = r * d..(r + 1) * d;
                let (qr, kr, vr, dor) = (
                    &q[rows.clone()],
                    &k[rows.clone()],
                    &v[rows.clone()],
                    &d_o[rows],
                );
                let ar = &a[r * t * t..(r + 1) * t * t];
                dqr.fill(0.0);
                dkr.fill(0.0);
                dvr.fill(0.0);
                let mut ds = vec![0f32; t];
                for i in 0..t {
                    let arow = &ar[i * t..(i + 1) * t];
                    // dA_ij = dO_i · V_j ; dV_j += A_ij dO_i
                    let mut dot = 0.0;
                    for j in 0..t {
                        let mut da = 0.0;
                        for c in 0..h {
                            da += dor[i * h + c] * vr[j * h + c];
                            dvr[j * h + c] += arow[j] * dor[i * h + c];
                        }
                        ds[j] = da;
                        dot += da * arow[j];
                    }
                    // softmax: dS_ij = A_ij (dA_ij − Σ_k dA_ik A_ik), then S = scale Q Kᵀ
                    for j in 0..t {
                        let s = arow[j] * (ds[j] - dot) * scale;
                        for c in 0..h {
                            dqr[i * h + c] += s * kr[j * h + c];
                            dkr[j * h + c] += s * qr[i * h + c];
                        }
                    }
                }
            });
        self.v.backward(
            x,
            &cache.v,
            &mut dv,
            n,
            Act::None,
            &mut g.v,
            Some(dx),
            false,
        );
        self.k.backward(
            step,
            &cache.k,
            &mut dk,
            n,
            Act::None,
            &mut g.k,
            Some(dstep),
            false,
        );
        self.q.backward(
            cond,
            &cache.q,
            &mut dq,
            n,
            Act::None,
            &mut g.q,
            dcond,
            false,
        );
    }
}
