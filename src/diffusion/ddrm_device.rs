//! DDRM training (Algorithm 1) written once over the buffer operations of [`Ops`], so that it
//! runs on the CPU ([`CpuOps`](crate::device::ops::CpuOps)) or a GPU with the same code:
//! frozen backend embeddings resident on the device, the MLP denoisers' forward and
//! backward as GEMMs with fused epilogues, the DDRM loss kernel, and Adam, with every buffer
//! allocated once. The host draws the batches and steps from the same random streams as
//! [`super::ddrm::DdrmTrainer`]; the Gaussian noise and dropout masks come either from the
//! CPU trainer's streams too (so both trainers see the same inputs) or, for speed, from
//! counter-based streams drawn on the device ([`NoiseSource`]).
//!
//! The denoiser's first layer takes concat(x_t ⊙ mask, Linear(enc(t)), c); here its weight is
//! kept as three row blocks (x, step, condition) and the layer is three accumulated GEMMs,
//! so no concatenated input is built. Covered: the MLP denoiser with a frozen backend
//! (the authors' setting and `reproduce`'s), item-only included. Not covered (refused with a
//! message): `--joint`, `--dynamic-noise` and the Transformer denoiser, which train on the
//! CPU path.

use super::ddrm::{Ddrm, EpochStats, LossParts};
use super::denoiser::{Denoiser, DenoiserGrad};
use crate::backends::sampler::sample_epoch;
use crate::data::Dataset;
use crate::device::ops::{AdamCoefs, Draw, Ep, Ops};
use crate::kernels::cpu::Act;
use crate::nn::step_embedding::timestep_encoding;
use crate::nn::AdamConfig;
use crate::util::rng::Rng;
use anyhow::{bail, ensure, Context, Result};

/// Parameter slots of a device denoiser, in this order: step layer w, b; layer 0's weight
/// rows for x_t, the step embedding and the condition, and its bias; then w, b of each
/// further layer.
const STEP_W: usize = 0;
const STEP_B: usize = 1;
const W_X: usize = 2;
const W_S: usize = 3;
const W_C: usize = 4;
const B_0: usize = 5;

/// Why a configuration cannot train on a device, or `Ok` when it can (checked before a run
/// writes anything).
pub fn check_supported(cfg: &super::ddrm::DdrmConfig) -> Result<()> {
    ensure!(
        !cfg.joint,
        "DDRM training on a device keeps the backend frozen; --joint trains on the CPU (--device cpu)"
    );
    ensure!(
        !cfg.dynamic_noise,
        "DDRM training on a device does not cover --dynamic-noise (it trains on the CPU: --device cpu)"
    );
    ensure!(
        cfg.arch == super::ddrm::Arch::Mlp,
        "DDRM training on a device covers the MLP denoiser; the Transformer denoiser trains on the CPU (--device cpu)"
    );
    Ok(())
}

/// Where a device epoch draws its Gaussian noise and dropout masks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoiseSource {
    /// The host, from the CPU trainer's streams: the device trains on exactly the CPU
    /// trainer's inputs (to compare the two). About 1–2 s of host work per ML-1M epoch.
    Host,
    /// The device, from counter-based streams ([`crate::util::rng::counter_normal`]) seeded
    /// by the host's stream: nothing is drawn or copied per element on the host.
    Device,
}

/// One denoiser on a device: parameters and forward state, plus the training state when it
/// trains (none for inference, which allocates only what the forward uses).
struct DevDenoiser<O: Ops> {
    p: Vec<O::F>,
    train: Option<DevTrainState<O>>,
    lens: Vec<usize>,
    /// MLP widths: 2d + sd, hidden..., d.
    dims: Vec<usize>,
    sd: usize,
    act: Act,
    dropout: f32,
    enc: O::F,
    temb: O::F,
    xin: O::F,
    outs: Vec<O::F>,
}

/// What only training needs: gradients, Adam moments and the backward's scratch.
struct DevTrainState<O: Ops> {
    g: Vec<O::F>,
    m: Vec<O::F>,
    v: Vec<O::F>,
    ga: O::F,
    gb: O::F,
    dtemb: O::F,
}

impl<O: Ops> DevDenoiser<O> {
    /// `dn` on the device for batches of up to `cap` rows; `training` adds the gradients,
    /// Adam moments and backward scratch.
    fn new(ops: &O, dn: &Denoiser, cap: usize, training: bool) -> Result<Self> {
        if dn.attn.is_some() {
            bail!(
                "DDRM on a device covers the MLP denoiser; the Transformer denoiser \
                 runs on the CPU (--device cpu)"
            );
        }
        let (d, sd) = (dn.d, dn.step_dim);
        let layers = &dn.mlp.layers;
        let h0 = layers[0].dout;
        let w0 = &layers[0].w;
        let mut host: Vec<&[f32]> = vec![
            &dn.step_layer.w,
            &dn.step_layer.b,
            &w0[..d * h0],
            &w0[d * h0..(d + sd) * h0],
            &w0[(d + sd) * h0..],
            &layers[0].b,
        ];
        for l in &layers[1..] {
            host.push(&l.w);
            host.push(&l.b);
        }
        let lens: Vec<usize> = host.iter().map(|h| h.len()).collect();
        let up = |f: &dyn Fn(&[f32]) -> Result<O::F>| -> Result<Vec<O::F>> {
            host.iter().map(|h| f(h)).collect()
        };
        let p = up(&|h| ops.upload(h))?;
        let mut dims = vec![layers[0].din];
        dims.extend(layers.iter().map(|l| l.dout));
        let widest = *dims.iter().max().unwrap_or(&1);
        let train = if training {
            Some(DevTrainState {
                g: up(&|h| ops.zeros(h.len()))?,
                m: up(&|h| ops.zeros(h.len()))?,
                v: up(&|h| ops.zeros(h.len()))?,
                ga: ops.zeros(cap * widest)?,
                gb: ops.zeros(cap * widest)?,
                dtemb: ops.zeros(cap * sd)?,
            })
        } else {
            None
        };
        Ok(DevDenoiser {
            p,
            train,
            lens,
            sd,
            act: dn.mlp.act,
            dropout: dn.dropout,
            enc: ops.zeros(cap * sd)?,
            temb: ops.zeros(cap * sd)?,
            xin: ops.zeros(cap * d)?,
            outs: layers
                .iter()
                .map(|l| ops.zeros(cap * l.dout))
                .collect::<Result<_>>()?,
            dims,
        })
    }

    fn n_layers(&self) -> usize {
        self.dims.len() - 1
    }

    fn act_of(&self, l: usize) -> Act {
        if l + 1 == self.n_layers() {
            Act::None
        } else {
            self.act
        }
    }

    fn d(&self) -> usize {
        *self.dims.last().unwrap()
    }

    /// Forward `n` rows; `self.xin` already holds the noised, dropped-out input. The output
    /// is `self.outs.last()`.
    fn forward(
        &mut self,
        ops: &O,
        enc_table: &O::F,
        steps: &O::U,
        cond: &O::F,
        n: usize,
    ) -> Result<()> {
        let (d, sd, h0) = (self.d(), self.sd, self.dims[1]);
        ops.gather_rows(enc_table, sd, steps, n, &mut self.enc)?;
        let ep = Ep {
            bias: Some(&self.p[STEP_B]),
            act: Act::None,
            grad_of: None,
        };
        ops.gemm(
            false,
            false,
            n,
            sd,
            sd,
            &self.enc,
            &self.p[STEP_W],
            0.0,
            &mut self.temb,
            ep,
        )?;
        let acts: Vec<Act> = (0..self.n_layers()).map(|l| self.act_of(l)).collect();
        let (first, later) = self.outs.split_at_mut(1);
        let h = &mut first[0];
        ops.gemm(
            false,
            false,
            n,
            h0,
            d,
            &self.xin,
            &self.p[W_X],
            0.0,
            h,
            Ep::none(),
        )?;
        ops.gemm(
            false,
            false,
            n,
            h0,
            sd,
            &self.temb,
            &self.p[W_S],
            1.0,
            h,
            Ep::none(),
        )?;
        let ep0 = Ep {
            bias: Some(&self.p[B_0]),
            act: acts[0],
            grad_of: None,
        };
        ops.gemm(false, false, n, h0, d, cond, &self.p[W_C], 1.0, h, ep0)?;
        let mut prev: &O::F = h;
        for (i, out) in later.iter_mut().enumerate() {
            let l = i + 1;
            let act = acts[l];
            let ep = Ep {
                bias: Some(&self.p[B_0 + 2 * l]),
                act,
                grad_of: None,
            };
            let (din, dout) = (self.dims[l], self.dims[l + 1]);
            ops.gemm(
                false,
                false,
                n,
                dout,
                din,
                prev,
                &self.p[W_C + 2 * l],
                0.0,
                out,
                ep,
            )?;
            prev = out;
        }
        Ok(())
    }

    /// Backward from `dout` (dL/d output, `n x d`) into the parameter gradients `self.g`
    /// (overwritten); `ones` holds at least `n` ones (bias gradients as `1ᵀ·dY`).
    fn backward(&mut self, ops: &O, cond: &O::F, dout: &O::F, ones: &O::F, n: usize) -> Result<()> {
        let nl = self.n_layers();
        let acts: Vec<Act> = (0..nl).map(|l| self.act_of(l)).collect();
        let (d, sd, h0) = (self.d(), self.sd, self.dims[1]);
        let DevDenoiser {
            p,
            train,
            dims,
            outs,
            xin,
            temb,
            enc,
            ..
        } = self;
        let DevTrainState {
            g, ga, gb, dtemb, ..
        } = train
            .as_mut()
            .context("DevDenoiser::backward on an inference-only denoiser")?;
        // `cur` receives the next input gradient; `dy` is the current output gradient
        let (mut cur, mut other): (&mut O::F, &mut O::F) = (ga, gb);
        let mut dy: &O::F = dout;
        for l in (1..nl).rev() {
            let (din, dout_w) = (dims[l], dims[l + 1]);
            let (wi, bi) = (W_C + 2 * l, B_0 + 2 * l);
            let input = &outs[l - 1];
            let (gw, gbias) = two_mut(g, wi, bi);
            ops.gemm(true, false, din, dout_w, n, input, dy, 0.0, gw, Ep::none())?;
            ops.gemm(false, false, 1, dout_w, n, ones, dy, 0.0, gbias, Ep::none())?;
            // dL/d(pre-activation) of layer l - 1, through its activation
            let ep = Ep {
                bias: None,
                act: Act::None,
                grad_of: Some((input, acts[l - 1])),
            };
            ops.gemm(false, true, n, din, dout_w, dy, &p[wi], 0.0, cur, ep)?;
            std::mem::swap(&mut cur, &mut other);
            dy = &*other;
        }
        let none = Ep::none;
        ops.gemm(true, false, d, h0, n, xin, dy, 0.0, &mut g[W_X], none())?;
        ops.gemm(true, false, sd, h0, n, temb, dy, 0.0, &mut g[W_S], none())?;
        ops.gemm(true, false, d, h0, n, cond, dy, 0.0, &mut g[W_C], none())?;
        ops.gemm(false, false, 1, h0, n, ones, dy, 0.0, &mut g[B_0], none())?;
        ops.gemm(false, true, n, sd, h0, dy, &p[W_S], 0.0, dtemb, none())?;
        ops.gemm(
            true,
            false,
            sd,
            sd,
            n,
            enc,
            dtemb,
            0.0,
            &mut g[STEP_W],
            none(),
        )?;
        ops.gemm(
            false,
            false,
            1,
            sd,
            n,
            ones,
            dtemb,
            0.0,
            &mut g[STEP_B],
            none(),
        )?;
        Ok(())
    }

    fn adam(&mut self, ops: &O, c: AdamCoefs) -> Result<()> {
        let tr = self
            .train
            .as_mut()
            .context("DevDenoiser::adam on an inference-only denoiser")?;
        for k in 0..self.p.len() {
            ops.adam(
                &mut self.p[k],
                &tr.g[k],
                &mut tr.m[k],
                &mut tr.v[k],
                self.lens[k],
                c,
            )?;
        }
        Ok(())
    }

    /// Host copies of slots `which` (parameters or gradients), reassembled in the order of
    /// [`Denoiser::params_mut`]: step w, step b, then w, b of each MLP layer.
    fn host(&self, ops: &O, of_grads: bool) -> Result<Vec<Vec<f32>>> {
        let src = if of_grads {
            &self
                .train
                .as_ref()
                .context("DevDenoiser::host: no gradients on an inference-only denoiser")?
                .g
        } else {
            &self.p
        };
        let read = |k: usize| ops.read(&src[k], self.lens[k]);
        let mut w0 = read(W_X)?;
        w0.extend(read(W_S)?);
        w0.extend(read(W_C)?);
        let mut out = vec![read(STEP_W)?, read(STEP_B)?, w0, read(B_0)?];
        for k in B_0 + 1..self.p.len() {
            out.push(read(k)?);
        }
        Ok(out)
    }
}

/// Two distinct elements of a slice, mutably.
fn two_mut<T>(v: &mut [T], a: usize, b: usize) -> (&mut T, &mut T) {
    assert!(a < b);
    let (x, y) = v.split_at_mut(b);
    (&mut x[a], &mut y[0])
}

/// A DDRM's denoisers training on a device.
pub struct DeviceDdrm<'o, O: Ops> {
    ops: &'o O,
    cap: usize,
    d: usize,
    n_users: u32,
    rows: usize,
    lambda: f32,
    gamma: f32,
    item_only: bool,
    steps_t: usize,
    acfg: AdamConfig,
    t: i32,
    noise: NoiseSource,
    emb: O::F,
    sqrt_abar: O::F,
    sqrt_1m_abar: O::F,
    enc_table: O::F,
    ones: O::F,
    ids: [O::U; 3],
    steps: O::U,
    e: [O::F; 3],
    eps: [O::F; 2],
    mask: [O::F; 2],
    parts: O::F,
    dh: [O::F; 2],
    /// User denoiser (unused when item-only), item denoiser.
    dn: [DevDenoiser<O>; 2],
}

impl<'o, O: Ops> DeviceDdrm<'o, O> {
    /// Upload `model`'s embeddings, schedule and denoisers (with fresh Adam moments) for
    /// batches of up to `cap` samples.
    pub fn new(ops: &'o O, model: &Ddrm, cap: usize) -> Result<Self> {
        let cfg = &model.cfg;
        check_supported(cfg)?;
        ensure!(
            model.joint.is_none(),
            "DDRM training on a device keeps the backend frozen; --joint trains on the CPU"
        );
        let cap = cap.max(1);
        let (d, sd, t) = (model.d, model.item_dn.step_dim, cfg.steps);
        let sch = &model.schedule;
        let (sa, s1): (Vec<f32>, Vec<f32>) = (0..t).map(|k| sch.q_coefs(k)).unzip();
        let all: Vec<f32> = (0..t).map(|k| k as f32).collect();
        let mut enc = vec![0f32; t * sd];
        timestep_encoding(&all, sd, &mut enc);
        let mut acfg = AdamConfig::with_lr(cfg.lr);
        acfg.weight_decay = cfg.weight_decay;
        let z = |n: usize| ops.zeros(n);
        let zu = |n: usize| ops.upload_u32(&vec![0u32; n]);
        Ok(DeviceDdrm {
            ops,
            cap,
            d,
            n_users: model.n_users as u32,
            rows: model.emb.len() / d.max(1),
            lambda: cfg.lambda,
            gamma: cfg.gamma,
            item_only: cfg.item_only,
            steps_t: t,
            acfg,
            t: 0,
            noise: NoiseSource::Host,
            emb: ops.upload(&model.emb)?,
            sqrt_abar: ops.upload(&sa)?,
            sqrt_1m_abar: ops.upload(&s1)?,
            enc_table: ops.upload(&enc)?,
            ones: ops.upload(&vec![1f32; cap])?,
            ids: [zu(cap)?, zu(cap)?, zu(cap)?],
            steps: zu(cap)?,
            e: [z(cap * d)?, z(cap * d)?, z(cap * d)?],
            eps: [z(cap * d)?, z(cap * d)?],
            mask: [z(cap * d)?, z(cap * d)?],
            parts: z(3 * cap)?,
            dh: [z(cap * d)?, z(cap * d)?],
            dn: [
                DevDenoiser::new(ops, &model.user_dn, cap, true)?,
                DevDenoiser::new(ops, &model.item_dn, cap, true)?,
            ],
        })
    }

    /// Where [`Self::epoch`] draws the Gaussian noise and the dropout masks (default: the
    /// host).
    pub fn set_noise(&mut self, source: NoiseSource) {
        self.noise = source;
    }

    /// Loss and gradients of one batch with explicit steps (0-based, `< T`), noise and
    /// dropout masks (empty: no dropout; the user mask is ignored item-only), then, with
    /// `update`, one Adam step of both denoisers.
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &mut self,
        users: &[u32],
        pos: &[u32],
        neg: &[u32],
        steps: &[u32],
        eps: [&[f32]; 2],
        masks: [&[f32]; 2],
        update: bool,
    ) -> Result<LossParts> {
        let n = self.load_batch(users, pos, neg, steps)?;
        let d = self.d;
        for (k, (e, m)) in eps.iter().zip(&masks).enumerate() {
            ensure!(
                e.len() == n * d,
                "device DDRM step: noise {k} must be n x d"
            );
            ensure!(
                m.is_empty() || m.len() == n * d,
                "device DDRM step: mask {k} must be empty or n x d"
            );
        }
        let mut has_mask = [false; 2];
        for &k in self.denoisers() {
            self.ops.write(eps[k], &mut self.eps[k])?;
            if !masks[k].is_empty() {
                self.ops.write(masks[k], &mut self.mask[k])?;
                has_mask[k] = true;
            }
        }
        self.run(n, has_mask, update)
    }

    /// The denoisers that train: user (0) and item (1), or the item's alone.
    fn denoisers(&self) -> &'static [usize] {
        if self.item_only {
            &[1]
        } else {
            &[0, 1]
        }
    }

    /// Check a batch, copy its ids and steps to the device and gather its embeddings;
    /// returns its size.
    fn load_batch(
        &mut self,
        users: &[u32],
        pos: &[u32],
        neg: &[u32],
        steps: &[u32],
    ) -> Result<usize> {
        let (n, d, ops) = (users.len(), self.d, self.ops);
        ensure!(
            n <= self.cap && pos.len() == n && neg.len() == n && steps.len() == n,
            "device DDRM step: {n} users, {} positives, {} negatives, {} steps (at most {} rows)",
            pos.len(),
            neg.len(),
            steps.len(),
            self.cap
        );
        ensure!(
            steps.iter().all(|&t| (t as usize) < self.steps_t),
            "device DDRM step: a diffusion step is not below T = {}",
            self.steps_t
        );
        let (nu, rows) = (self.n_users, self.rows);
        let ids = [
            users.to_vec(),
            pos.iter().map(|&i| i + nu).collect::<Vec<u32>>(),
            neg.iter().map(|&i| i + nu).collect::<Vec<u32>>(),
        ];
        for (k, v) in ids.iter().enumerate() {
            if let Some(&bad) = v.iter().find(|&&r| r as usize >= rows) {
                bail!("device DDRM step: embedding row {bad} out of range (list {k}, {rows} rows)");
            }
            ops.write_u32(v, &mut self.ids[k])?;
            ops.gather_rows(&self.emb, d, &self.ids[k], n, &mut self.e[k])?;
        }
        ops.write_u32(steps, &mut self.steps)?;
        Ok(n)
    }

    /// The step on the loaded batch, its noise in `self.eps` and its masks in `self.mask`.
    fn run(&mut self, n: usize, has_mask: [bool; 2], update: bool) -> Result<LossParts> {
        let (d, ops) = (self.d, self.ops);
        let which = self.denoisers();
        // denoiser 0 (user): x = e_u, condition e_i; denoiser 1 (item): x = e_i, condition e_u
        for &k in which {
            let (x0, cond) = (&self.e[k], &self.e[1 - k]);
            let dn = &mut self.dn[k];
            let mask = has_mask[k].then_some(&self.mask[k]);
            ops.q_sample(
                &self.steps,
                &self.sqrt_abar,
                &self.sqrt_1m_abar,
                x0,
                &self.eps[k],
                mask,
                n,
                d,
                &mut dn.xin,
            )?;
            dn.forward(ops, &self.enc_table, &self.steps, cond, n)?;
        }
        let [dh_u, dh_i] = &mut self.dh;
        let hat_i = self.dn[1].outs.last().unwrap();
        let hat_u = if self.item_only {
            &self.e[0]
        } else {
            self.dn[0].outs.last().unwrap()
        };
        ops.ddrm_loss(
            hat_u,
            hat_i,
            &self.e[0],
            &self.e[1],
            &self.e[2],
            n,
            d,
            self.lambda,
            self.gamma,
            &mut self.parts,
            dh_u,
            dh_i,
        )?;
        for &k in which {
            let cond = &self.e[1 - k];
            self.dn[k].backward(ops, cond, &self.dh[k], &self.ones, n)?;
        }
        if update {
            self.t += 1;
            let a = self.acfg;
            let c = AdamCoefs::at(a.lr, a.beta1, a.beta2, a.eps, a.weight_decay, self.t);
            for &k in which {
                self.dn[k].adam(ops, c)?;
            }
        }
        let parts = ops.read(&self.parts, 3 * n)?;
        let mean = |k: usize| {
            parts[k * n..(k + 1) * n]
                .iter()
                .map(|&v| v as f64)
                .sum::<f64>()
                / n.max(1) as f64
        };
        Ok(LossParts {
            total: mean(0),
            bpr: mean(1),
            recon: mean(2),
        })
    }

    /// One epoch over the triplets and steps [`super::ddrm::DdrmTrainer::epoch`] draws for
    /// `model`'s seed. With [`NoiseSource::Host`] the noise and masks are the CPU trainer's
    /// too; with [`NoiseSource::Device`] they are drawn on the device from counter-based
    /// streams seeded by the same host stream (the same distribution, other numbers).
    pub fn epoch(&mut self, model: &Ddrm, ds: &Dataset, epoch: usize) -> Result<EpochStats> {
        let (seed, batch, d) = (model.cfg.seed, model.cfg.batch, self.d);
        let trip = sample_epoch(&ds.train(), seed, 0xD000 + epoch as u64);
        let mut rng = Rng::stream(seed, 0xDD00_0000 + epoch as u64);
        let (mut l, mut lb, mut lr, mut nb) = (0f64, 0f64, 0f64, 0usize);
        for s in (0..trip.users.len()).step_by(batch) {
            let e = (s + batch).min(trip.users.len());
            let n = e - s;
            let steps: Vec<u32> = (0..n).map(|_| rng.index(self.steps_t) as u32).collect();
            let (us, ps, ns) = (&trip.users[s..e], &trip.pos[s..e], &trip.neg[s..e]);
            let p = match self.noise {
                NoiseSource::Host => {
                    let (mut eps_u, mut eps_i) = (vec![0f32; n * d], vec![0f32; n * d]);
                    Rng::fill_normal_par(&mut eps_u, 1.0, rng.next_u64());
                    Rng::fill_normal_par(&mut eps_i, 1.0, rng.next_u64());
                    let mask_u = if self.item_only {
                        Vec::new()
                    } else {
                        model.user_dn.dropout_mask(n, &mut rng)
                    };
                    let mask_i = model.item_dn.dropout_mask(n, &mut rng);
                    self.step(
                        us,
                        ps,
                        ns,
                        &steps,
                        [&eps_u, &eps_i],
                        [&mask_u, &mask_i],
                        true,
                    )?
                }
                NoiseSource::Device => {
                    self.load_batch(us, ps, ns, &steps)?;
                    let mut has_mask = [false; 2];
                    for k in 0..2 {
                        // both seeds are drawn, item-only too, so the stream does not depend on it
                        let (se, sm) = (rng.next_u64(), rng.next_u64());
                        if !self.denoisers().contains(&k) {
                            continue;
                        }
                        self.ops.draw(se, Draw::Normal, n * d, &mut self.eps[k])?;
                        let drop = self.dn[k].dropout;
                        if drop > 0.0 {
                            self.ops
                                .draw(sm, Draw::Keep(1.0 - drop), n * d, &mut self.mask[k])?;
                            has_mask[k] = true;
                        }
                    }
                    self.run(n, has_mask, true)?
                }
            };
            l += p.total;
            lb += p.bpr;
            lr += p.recon;
            nb += 1;
        }
        let nbf = nb.max(1) as f64;
        Ok(EpochStats {
            loss: l / nbf,
            bpr: lb / nbf,
            recon: lr / nbf,
            samples: trip.users.len(),
        })
    }

    /// Copy the denoisers' parameters back into `model`.
    pub fn download_into(&self, model: &mut Ddrm) -> Result<()> {
        for (k, dn) in [&mut model.user_dn, &mut model.item_dn]
            .into_iter()
            .enumerate()
        {
            let host = self.dn[k].host(self.ops, false)?;
            for (p, h) in dn.params_mut().into_iter().zip(host) {
                ensure!(p.len() == h.len(), "device DDRM: a parameter changed size");
                p.copy_from_slice(&h);
            }
        }
        Ok(())
    }

    /// The gradients of the last [`Self::step`], as the CPU's [`DenoiserGrad`] tensors in
    /// the order of [`Denoiser::grads`]: user denoiser, item denoiser.
    pub fn grads(&self) -> Result<[Vec<Vec<f32>>; 2]> {
        Ok([
            self.dn[0].host(self.ops, true)?,
            self.dn[1].host(self.ops, true)?,
        ])
    }
}

/// The tensors of a CPU [`DenoiserGrad`] in the order of [`Denoiser::grads`] (to compare).
pub fn grad_tensors(g: &DenoiserGrad) -> Vec<Vec<f32>> {
    Denoiser::grads(g).into_iter().map(|t| t.to_vec()).collect()
}

impl Ddrm {
    /// [`Ddrm::infer`] with the reverse steps on a device: the item denoiser's forward
    /// ([`DevDenoiser::forward`], the training step's) and the posterior step, on buffers
    /// allocated once per call. The frame (chunks, start points, noise) is the CPU's
    /// ([`Ddrm::infer_chunks`]), so every device denoises the same inputs.
    pub fn infer_with<O: Ops>(
        &self,
        ops: &O,
        ds: &Dataset,
        users: &[u32],
        seed: u64,
    ) -> Result<Vec<f32>> {
        let (d, t_steps) = (self.d, self.cfg.steps);
        let cap = users.len().clamp(1, 2048);
        let mut dn = DevDenoiser::new(ops, &self.item_dn, cap, false)?;
        let sd = dn.sd;
        let all: Vec<f32> = (0..t_steps).map(|k| k as f32).collect();
        let mut enc = vec![0f32; t_steps * sd];
        timestep_encoding(&all, sd, &mut enc);
        let enc_table = ops.upload(&enc)?;
        let mut steps = ops.upload_u32(&vec![0u32; cap])?;
        let mut ue = ops.zeros(cap * d)?;
        let mut eps_d = ops.zeros(cap * d)?;
        let t_last = t_steps - 1;
        self.infer_chunks(ds, users, seed, |x, ue_h, n, rng, eps| -> Result<()> {
            ops.write(x, &mut dn.xin)?;
            ops.write(ue_h, &mut ue)?;
            for step in (0..self.cfg.inference_steps).rev() {
                let t = step.min(t_last);
                ops.write_u32(&vec![t as u32; n], &mut steps)?;
                dn.forward(ops, &enc_table, &steps, &ue, n)?;
                let (c1, c2) = self.schedule.posterior_coefs(t);
                let noise = match self.sampling_sd(t) {
                    Some(s) => {
                        Rng::fill_normal_par(eps, 1.0, rng.next_u64());
                        ops.write(eps, &mut eps_d)?;
                        Some((s, &eps_d))
                    }
                    None => None,
                };
                let DevDenoiser { outs, xin, .. } = &mut dn;
                ops.posterior_step(c1, c2, outs.last().unwrap(), xin, noise, n * d)?;
            }
            x.copy_from_slice(&ops.read(&dn.xin, n * d)?);
            Ok(())
        })
    }
}
