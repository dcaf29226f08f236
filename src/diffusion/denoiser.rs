//! The denoising module f(e_t, c, t) of Eq. 15: input concat(e_t (dropout in training),
//! Linear(sinusoidal step encoding), c) → MLP → predicted e_0, with a hand-written backward.
//! The Transformer variant (Table 3) replaces the MLP by a block: cross-attention (query c,
//! key the step embedding, value e_t; see [`super::attention`]) with a residual from e_t,
//! then a residual feed-forward MLP: z = e_t + Attn(c, s, e_t), ê_0 = z + FFN(z).
//!
//! The MLP's first layer is computed split by the rows of its weights W = [W_x; W_s; W_c]:
//! concat(x, s, c)·W + b = [x, c]·[W_x; W_c] + (s·W_s + b). The step embedding s takes one
//! value per distinct step of the batch (at most T), so s·W_s + b is a small table added row
//! by row, and its gradients are formed from the sums of dL/d(pre-activation) over each
//! step's rows: the product over the batch runs over the 2d columns of x and c only (the
//! same function; about 2% of a DDRM epoch saved at the MF recipe's 64 + 10 + 64 → 1000).

use super::attention::{Attention, AttentionCache, AttentionGrad};
use crate::kernels::cpu::{gemm, gemm_ex, gemm_ex_col_sums, Act, Epilogue, Isa};
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
    /// The MLP over concat(e_t, step, c); in the Transformer variant, the feed-forward
    /// block over z (`d -> hidden -> d`).
    pub mlp: Mlp,
    /// Dropout probability on the noisy input (training only).
    pub dropout: f32,
    /// The Transformer variant's cross-attention (None: the MLP denoiser of Eq. 15).
    pub attn: Option<Attention>,
}

/// Forward state kept for the backward.
#[derive(Default, Debug)]
pub struct DenoiserCache {
    /// Transformer variant: the rows' step encodings and step embeddings.
    enc: Vec<f32>,
    temb: Vec<f32>,
    /// The MLP's input without the step part, [x (dropout) | c] (`n x 2d`); the
    /// Transformer's x after dropout (`n x d`).
    input: Vec<f32>,
    mask: Vec<f32>,
    mlp: MlpCache,
    dinput: Vec<f32>,
    /// Transformer variant: encodings of steps 0..table_len (small integers: computed once).
    enc_table: Vec<f32>,
    /// MLP variant: the batch's distinct steps (increasing), each row's index among them,
    /// their encodings and step embeddings, the first layer's table s·W_s + b (one row per
    /// distinct step), W's rows of x and c (`2d x hidden`), and the backward's sums of
    /// dL/d(pre-activation) per distinct step and dW of the rows of x and c.
    steps: Vec<f32>,
    group: Vec<u32>,
    genc: Vec<f32>,
    gtemb: Vec<f32>,
    table: Vec<f32>,
    w_xc: Vec<f32>,
    gsum: Vec<f32>,
    dw_xc: Vec<f32>,
    /// Transformer variant: attention state, z = x + attention, output.
    attn: AttentionCache,
    cond: Vec<f32>,
    z: Vec<f32>,
    y: Vec<f32>,
}

/// Gradients of a [`Denoiser`].
#[derive(Clone, Debug)]
pub struct DenoiserGrad {
    /// Step layer.
    pub step: LinearGrad,
    /// MLP layers.
    pub mlp: Vec<LinearGrad>,
    /// Attention projections (Transformer variant).
    pub attn: Option<AttentionGrad>,
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
            attn: None,
        }
    }

    /// The Transformer variant: `tokens` attention tokens (`d` must be a multiple) and a
    /// feed-forward block `d -> hidden -> d`.
    pub fn transformer(
        d: usize,
        step_dim: usize,
        tokens: usize,
        hidden: &[usize],
        act: Act,
        dropout: f32,
        rng: &mut Rng,
    ) -> Self {
        let step_layer = Linear::xavier_normal(step_dim, step_dim, 0.001, rng);
        let attn = Attention::new(d, step_dim, tokens, rng);
        let mut dims = vec![d];
        dims.extend_from_slice(hidden);
        dims.push(d);
        Denoiser {
            d,
            step_dim,
            step_layer,
            mlp: Mlp::new(&dims, act, 0.001, rng),
            dropout,
            attn: Some(attn),
        }
    }

    /// Tensor names in the order of [`Self::params_mut`] (checkpoint keys).
    pub fn param_names(&self) -> Vec<String> {
        let mut v = vec!["step.w".to_string(), "step.b".to_string()];
        if self.attn.is_some() {
            for p in ["q", "k", "v", "o"] {
                v.push(format!("attn.{p}.w"));
                v.push(format!("attn.{p}.b"));
            }
        }
        for l in 0..self.mlp.layers.len() {
            v.push(format!("mlp.{l}.w"));
            v.push(format!("mlp.{l}.b"));
        }
        v
    }

    /// Zeroed gradients.
    pub fn zero_grad(&self) -> DenoiserGrad {
        DenoiserGrad {
            step: self.step_layer.zero_grad(),
            mlp: self.mlp.zero_grad(),
            attn: self.attn.as_ref().map(|a| a.zero_grad()),
        }
    }

    /// Parameter tensors in a fixed order (for the optimizer).
    pub fn params_mut(&mut self) -> Vec<&mut Vec<f32>> {
        let mut v: Vec<&mut Vec<f32>> = vec![&mut self.step_layer.w, &mut self.step_layer.b];
        if let Some(a) = self.attn.as_mut() {
            for l in a.layers_mut() {
                v.push(&mut l.w);
                v.push(&mut l.b);
            }
        }
        for l in self.mlp.layers.iter_mut() {
            v.push(&mut l.w);
            v.push(&mut l.b);
        }
        v
    }

    /// Gradient tensors in the order of [`Self::params_mut`].
    pub fn grads(g: &DenoiserGrad) -> Vec<&[f32]> {
        let mut v: Vec<&[f32]> = vec![&g.step.w, &g.step.b];
        if let Some(a) = g.attn.as_ref() {
            for l in Attention::grads(a) {
                v.push(&l.w);
                v.push(&l.b);
            }
        }
        for l in &g.mlp {
            v.push(&l.w);
            v.push(&l.b);
        }
        v
    }

    /// Multiply-accumulates per sample of the forward as performed: in the MLP variant the
    /// step's part (its embedding and its rows of the first layer) is formed once per
    /// distinct step of a batch, not per sample, and is left out.
    pub fn macs(&self) -> usize {
        match &self.attn {
            Some(a) => self.mlp.macs() + self.step_dim * self.step_dim + a.macs(),
            None => self.mlp.macs() - self.step_dim * self.mlp.layers[0].dout,
        }
    }

    /// Multiply-accumulates per sample of one training step as [`Self::forward`] and
    /// [`Self::backward`] perform them: the forward, every weight gradient, and the input
    /// gradients the backward computes. The step encoding never gets one; the noisy input and
    /// the condition get theirs only with `input_grads` (`--joint`). In the MLP variant the
    /// step's part is per distinct step, not per sample (left out, as in [`Self::macs`]); in
    /// the Transformer variant the attention's query (from the condition) gets no input
    /// gradient without `input_grads`.
    pub fn train_macs(&self, input_grads: bool) -> usize {
        match &self.attn {
            Some(a) => {
                let full = 3 * self.macs() - self.step_dim * self.step_dim;
                if input_grads {
                    full
                } else {
                    full - a.q.din * a.q.dout
                }
            }
            None => {
                let first = &self.mlp.layers[0];
                let xc = (first.din - self.step_dim) * first.dout;
                let full = 3 * self.macs();
                if input_grads {
                    full
                } else {
                    full - xc
                }
            }
        }
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
        let mask = dropout_rng.map_or_else(Vec::new, |rng| self.dropout_mask(n, rng));
        self.forward_masked(xt, steps, cond, n, mask, cache)
    }

    /// The inverted-dropout mask on `xt` for `n` rows (`n x d` entries of 0 or 1/keep, drawn
    /// row-major from `rng`); empty when the dropout rate is 0.
    pub fn dropout_mask(&self, n: usize, rng: &mut Rng) -> Vec<f32> {
        if self.dropout <= 0.0 {
            return Vec::new();
        }
        let keep = 1.0 - self.dropout;
        let scale = 1.0 / keep;
        // branch-free (a coin flip mispredicts half the time): scale * 1 or scale * 0
        (0..n * self.d)
            .map(|_| scale * f32::from(u8::from(rng.uniform_f32() < keep)))
            .collect()
    }

    /// [`Self::forward`] with the dropout mask drawn beforehand ([`Self::dropout_mask`];
    /// empty: no dropout), so that two denoisers can run at the same time and still see the
    /// masks a sequential run would draw.
    pub fn forward_masked<'c>(
        &self,
        xt: &[f32],
        steps: &[f32],
        cond: &[f32],
        n: usize,
        mask: Vec<f32>,
        cache: &'c mut DenoiserCache,
    ) -> &'c [f32] {
        assert!(
            mask.is_empty() || mask.len() == n * self.d,
            "Denoiser::forward_masked: the mask must be empty or n x d"
        );
        cache.mask = mask;
        let Some(attn) = &self.attn else {
            return self.forward_mlp(xt, steps, cond, n, cache);
        };
        let (d, sd) = (self.d, self.step_dim);
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
        // Transformer: xin = dropout(x_t); z = xin + Attn(c, temb, xin); y = z + FFN(z)
        let mut xin = std::mem::take(&mut cache.input);
        xin.resize(n * d, 0.0);
        for k in 0..n * d {
            xin[k] = if cache.mask.is_empty() {
                xt[k]
            } else {
                xt[k] * cache.mask[k]
            };
        }
        cache.cond.clear();
        cache.cond.extend_from_slice(cond);
        let att = attn.forward(cond, &cache.temb, &xin, n, &mut cache.attn);
        cache.z.clear();
        cache.z.extend(xin.iter().zip(att).map(|(a, b)| a + b));
        cache.input = xin;
        let z = std::mem::take(&mut cache.z);
        let f = self.mlp.forward(&z, n, &mut cache.mlp);
        cache.y.clear();
        cache.y.extend(z.iter().zip(f).map(|(a, b)| a + b));
        cache.z = z;
        &cache.y
    }

    /// The MLP variant's forward (Eq. 15), its first layer split by W's rows (see the module
    /// documentation); `cache.mask` is set.
    fn forward_mlp<'c>(
        &self,
        xt: &[f32],
        steps: &[f32],
        cond: &[f32],
        n: usize,
        cache: &'c mut DenoiserCache,
    ) -> &'c [f32] {
        let (d, sd) = (self.d, self.step_dim);
        let l0 = &self.mlp.layers[0];
        let h = l0.dout;
        let isa = Isa::detect();
        // the distinct steps, their encodings and embeddings, and the table s·W_s + b
        step_groups(steps, &mut cache.steps, &mut cache.group);
        let g = cache.steps.len();
        cache.genc.resize(g * sd, 0.0);
        timestep_encoding(&cache.steps, sd, &mut cache.genc);
        cache.gtemb.resize(g * sd, 0.0);
        self.step_layer
            .forward(&cache.genc, g, Act::None, &mut cache.gtemb);
        cache.table.resize(g * h, 0.0);
        let w_s = &l0.w[d * h..(d + sd) * h];
        let bias = Epilogue {
            bias: Some(&l0.b),
            ..Epilogue::NONE
        };
        gemm_ex(
            isa,
            false,
            false,
            g,
            h,
            sd,
            1.0,
            &cache.gtemb,
            w_s,
            0.0,
            &mut cache.table,
            bias,
        );
        // [x (dropout) | c] and W's rows of x and c
        cache.w_xc.clear();
        cache.w_xc.extend_from_slice(&l0.w[..d * h]);
        cache.w_xc.extend_from_slice(&l0.w[(d + sd) * h..]);
        cache.input.resize(n * 2 * d, 0.0);
        for (r, row) in cache.input.chunks_exact_mut(2 * d).enumerate() {
            let x = &xt[r * d..(r + 1) * d];
            if cache.mask.is_empty() {
                row[..d].copy_from_slice(x);
            } else {
                for j in 0..d {
                    row[j] = x[j] * cache.mask[r * d + j];
                }
            }
            row[d..].copy_from_slice(&cond[r * d..(r + 1) * d]);
        }
        // each row plus its step's row of the table, then the activation, in the epilogue
        let out = self.mlp.first_out(n, &mut cache.mlp);
        gemm_ex(
            isa,
            false,
            false,
            n,
            h,
            2 * d,
            1.0,
            &cache.input,
            &cache.w_xc,
            0.0,
            out,
            Epilogue {
                bias: Some(&cache.table),
                bias_rows: Some(&cache.group),
                act: self.mlp.act_of(0),
                grad_of: None,
            },
        );
        self.mlp.forward_upper(n, &mut cache.mlp)
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
        if self.attn.is_some() {
            self.backward_transformer(n, cache, dout, g, dxt, dcond);
            return;
        }
        let (d, sd) = (self.d, self.step_dim);
        let l0 = &self.mlp.layers[0];
        let h = l0.dout;
        let isa = Isa::detect();
        self.mlp.backward_upper(n, &mut cache.mlp, dout, &mut g.mlp);
        // dz = dL/d(pre-activation of the first layer), n x h
        let dz = self.mlp.first_pre_grad(n, &cache.mlp);
        let gl0 = &mut g.mlp[0];
        // W's rows of x and c: [x | c]ᵀ · dz; the bias: the column sums of dz
        cache.dw_xc.resize(2 * d * h, 0.0);
        gemm_ex_col_sums(
            isa,
            true,
            false,
            2 * d,
            h,
            n,
            1.0,
            &cache.input,
            dz,
            0.0,
            &mut cache.dw_xc,
            Epilogue::NONE,
            &mut gl0.b,
        );
        gl0.w[..d * h].copy_from_slice(&cache.dw_xc[..d * h]);
        gl0.w[(d + sd) * h..].copy_from_slice(&cache.dw_xc[d * h..]);
        // W's rows of the step embedding: Σ over rows of s_rowᵀ dz_row = Σ over distinct
        // steps of sᵀ (the sum of dz over that step's rows), rows summed in order
        let gn = cache.steps.len();
        cache.gsum.clear();
        cache.gsum.resize(gn * h, 0.0);
        for (row, &q) in dz.chunks_exact(h).zip(&cache.group) {
            let q = q as usize;
            for (a, b) in cache.gsum[q * h..(q + 1) * h].iter_mut().zip(row) {
                *a += b;
            }
        }
        let w_s = &l0.w[d * h..(d + sd) * h];
        gemm(
            true,
            false,
            sd,
            h,
            gn,
            1.0,
            &cache.gtemb,
            &cache.gsum,
            0.0,
            &mut gl0.w[d * h..(d + sd) * h],
        );
        // dL/ds per distinct step, then the step layer
        let mut dgtemb = vec![0f32; gn * sd];
        gemm(
            false,
            true,
            gn,
            sd,
            h,
            1.0,
            &cache.gsum,
            w_s,
            0.0,
            &mut dgtemb,
        );
        self.step_layer.backward(
            &cache.genc,
            &cache.gtemb,
            &mut dgtemb,
            gn,
            Act::None,
            &mut g.step,
            None,
            false,
        );
        if dxt.is_none() && dcond.is_none() {
            return;
        }
        // [dx | dc] = dz · [W_x; W_c]ᵀ
        let mut dinput = std::mem::take(&mut cache.dinput);
        dinput.resize(n * 2 * d, 0.0);
        gemm(
            false,
            true,
            n,
            2 * d,
            h,
            1.0,
            dz,
            &cache.w_xc,
            0.0,
            &mut dinput,
        );
        if let Some(dx) = dxt {
            for r in 0..n {
                for j in 0..d {
                    let m = if cache.mask.is_empty() {
                        1.0
                    } else {
                        cache.mask[r * d + j]
                    };
                    dx[r * d + j] = dinput[r * 2 * d + j] * m;
                }
            }
        }
        if let Some(dc) = dcond {
            for r in 0..n {
                dc[r * d..(r + 1) * d].copy_from_slice(&dinput[r * 2 * d + d..(r + 1) * 2 * d]);
            }
        }
        cache.dinput = dinput;
    }

    fn backward_transformer(
        &self,
        n: usize,
        cache: &mut DenoiserCache,
        dout: &[f32],
        g: &mut DenoiserGrad,
        dxt: Option<&mut [f32]>,
        dcond: Option<&mut [f32]>,
    ) {
        let (d, sd) = (self.d, self.step_dim);
        let attn = self.attn.as_ref().expect("transformer denoiser");
        // y = z + FFN(z): dz = dy + FFN'(z)ᵀ dy
        let mut dz = vec![0f32; n * d];
        self.mlp
            .backward(&cache.z, n, &mut cache.mlp, dout, &mut g.mlp, Some(&mut dz));
        for (a, b) in dz.iter_mut().zip(dout) {
            *a += b;
        }
        // z = xin + Attn(c, temb, xin)
        let mut datt = dz.clone();
        let (mut dtemb, mut dx_att) = (vec![0f32; n * sd], vec![0f32; n * d]);
        let ga = g.attn.as_mut().expect("transformer gradients");
        attn.backward(
            &cache.cond,
            &cache.temb,
            &cache.input,
            n,
            &mut cache.attn,
            &mut datt,
            ga,
            &mut dtemb,
            &mut dx_att,
            dcond,
        );
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
            for k in 0..n * d {
                let m = if cache.mask.is_empty() {
                    1.0
                } else {
                    cache.mask[k]
                };
                dx[k] = (dz[k] + dx_att[k]) * m;
            }
        }
    }
}

/// The distinct values of `steps` in increasing order (`uniq`) and each row's index among
/// them (`group`). Values are told apart by their bits (-0 and 0 are two steps), ordered by
/// `f32::total_cmp`, so the result is the same whatever the rows' order.
fn step_groups(steps: &[f32], uniq: &mut Vec<f32>, group: &mut Vec<u32>) {
    uniq.clear();
    uniq.extend_from_slice(steps);
    uniq.sort_unstable_by(f32::total_cmp);
    uniq.dedup_by(|a, b| a.to_bits() == b.to_bits());
    group.clear();
    group.extend(steps.iter().map(|t| {
        uniq.binary_search_by(|u| u.total_cmp(t))
            .expect("every step is among the distinct steps") as u32
    }));
}
