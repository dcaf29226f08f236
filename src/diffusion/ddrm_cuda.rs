//! DDRM inference (Algorithm 2) on the GPU (feature `cuda`): the item denoiser's MLP as a
//! chain of GEMMs with the fused bias + activation epilogue, and the posterior step, on
//! device buffers allocated once per call. The start points and any sampling noise come
//! from the host ([`Ddrm::infer_chunks`]), so the CPU and the GPU denoise the same inputs.
//!
//! The first layer's input is concat(x_t, Linear(enc(t)), e_u). Rather than building it,
//! the layer is split by its weight rows: `x_t · W_x + (e_u · W_c) + (b + temb(t) · W_s)`.
//! The condition term is computed once per chunk (e_u does not change over the steps), and
//! the step term is folded into a per-step bias (every row of a reverse step has the same
//! t), computed on the host.

use super::ddrm::Ddrm;
use crate::data::Dataset;
use crate::kernels::cpu::Act;
use crate::kernels::cuda::{Gpu, GpuEpilogue};
use crate::nn::step_embedding::timestep_encoding;
use anyhow::{anyhow, bail, Result};
use cudarc::driver::CudaSlice;

/// Users per chunk, as on the CPU.
const CHUNK: usize = 2048;

impl Ddrm {
    /// [`Ddrm::infer`] with the reverse steps on `gpu`.
    pub(crate) fn infer_cuda(
        &self,
        gpu: &Gpu,
        ds: &Dataset,
        users: &[u32],
        seed: u64,
    ) -> Result<Vec<f32>> {
        let dn = &self.item_dn;
        if dn.attn.is_some() {
            bail!(
                "--device cuda: DDRM inference on the GPU covers the MLP denoiser; this run \
                 uses the Transformer denoiser, which runs on the CPU only (--device cpu)"
            );
        }
        let (d, sd) = (self.d, dn.step_dim);
        let layers = &dn.mlp.layers;
        let (l0, h0) = (&layers[0], layers[0].dout);
        let n_layers = layers.len();
        let act_of = |l: usize| {
            if l + 1 == n_layers {
                Act::None
            } else {
                dn.mlp.act
            }
        };
        // layer 0's weight rows are [x_t (d) | step (sd) | condition (d)]
        let w_x = gpu.upload(&l0.w[..d * h0])?;
        let w_c = gpu.upload(&l0.w[(d + sd) * h0..])?;
        let rest = layers[1..]
            .iter()
            .map(|l| Ok((gpu.upload(&l.w)?, gpu.upload(&l.b)?)))
            .collect::<Result<Vec<(CudaSlice<f32>, CudaSlice<f32>)>>>()?;
        // the step term folded into layer 0's bias, one vector per step t
        let t_last = self.cfg.steps - 1;
        let mut bias0 = Vec::with_capacity(t_last + 1);
        for t in 0..=t_last.min(self.cfg.inference_steps.saturating_sub(1)) {
            let mut enc = vec![0f32; sd];
            timestep_encoding(&[t as f32], sd, &mut enc);
            let mut temb = vec![0f32; sd];
            dn.step_layer.forward(&enc, 1, Act::None, &mut temb);
            let mut b = l0.b.clone();
            for (s, &e) in temb.iter().enumerate() {
                let w = &l0.w[(d + s) * h0..(d + s + 1) * h0];
                for j in 0..h0 {
                    b[j] += e * w[j];
                }
            }
            bias0.push(gpu.upload(&b)?);
        }
        let cap = users.len().clamp(1, CHUNK);
        let mut x_d = gpu.zeros::<f32>(cap * d)?;
        let mut ue_d = gpu.zeros::<f32>(cap * d)?;
        let mut eps_d = gpu.zeros::<f32>(cap * d)?;
        let mut cond0 = gpu.zeros::<f32>(cap * h0)?;
        let mut outs = layers
            .iter()
            .map(|l| gpu.zeros::<f32>(cap * l.dout))
            .collect::<Result<Vec<_>>>()?;
        let stream = gpu.stream().clone();
        let cu = |e: cudarc::driver::DriverError| anyhow!("CUDA: {e}");
        self.infer_chunks(ds, users, seed, |x, ue, n, rng, eps| -> Result<()> {
            stream.memcpy_htod(&*x, &mut x_d).map_err(cu)?;
            stream.memcpy_htod(ue, &mut ue_d).map_err(cu)?;
            let none = GpuEpilogue::default();
            gpu.gemm(
                false, false, n, h0, d, 1.0, &ue_d, &w_c, 0.0, &mut cond0, none,
            )?;
            for step in (0..self.cfg.inference_steps).rev() {
                let t = step.min(t_last);
                let (first, later) = outs.split_at_mut(1);
                let h = &mut first[0];
                stream.memcpy_dtod(&cond0, h).map_err(cu)?;
                let ep0 = GpuEpilogue {
                    bias: Some(&bias0[t]),
                    act: act_of(0),
                    grad_of: None,
                };
                gpu.gemm(false, false, n, h0, d, 1.0, &x_d, &w_x, 1.0, h, ep0)?;
                let mut prev: &CudaSlice<f32> = h;
                for (i, (out, (w, b))) in later.iter_mut().zip(&rest).enumerate() {
                    let l = &layers[i + 1];
                    let ep = GpuEpilogue {
                        bias: Some(b),
                        act: act_of(i + 1),
                        grad_of: None,
                    };
                    gpu.gemm(false, false, n, l.dout, l.din, 1.0, prev, w, 0.0, out, ep)?;
                    prev = out;
                }
                let (c1, c2) = self.schedule.posterior_coefs(t);
                let noise = match self.sampling_sd(t) {
                    Some(s) => {
                        crate::util::rng::Rng::fill_normal_par(eps, 1.0, rng.next_u64());
                        stream.memcpy_htod(&*eps, &mut eps_d).map_err(cu)?;
                        Some((s, &eps_d))
                    }
                    None => None,
                };
                gpu.posterior_step(c1, c2, prev, &mut x_d, noise, n * d)?;
            }
            stream.memcpy_dtoh(&x_d.slice(..n * d), x).map_err(cu)?;
            stream.synchronize().map_err(cu)
        })
    }
}
