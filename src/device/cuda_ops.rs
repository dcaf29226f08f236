//! [`Ops`] on a GPU: device buffers (`CudaSlice`) and the kernels of `kernels/`.

use super::ops::{AdamCoefs, Draw, Ep, Ops, RowPlan};
use crate::kernels::cuda::{Gpu, GpuEpilogue};
use anyhow::{anyhow, ensure, Result};
use cudarc::driver::CudaSlice;

fn cu(e: cudarc::driver::DriverError) -> anyhow::Error {
    anyhow!("CUDA: {e}")
}

impl Ops for Gpu {
    type F = CudaSlice<f32>;
    type U = CudaSlice<u32>;

    fn upload(&self, h: &[f32]) -> Result<CudaSlice<f32>> {
        Gpu::upload(self, h)
    }
    fn upload_u32(&self, h: &[u32]) -> Result<CudaSlice<u32>> {
        Gpu::upload(self, h)
    }
    fn zeros(&self, n: usize) -> Result<CudaSlice<f32>> {
        Gpu::zeros(self, n)
    }
    fn write(&self, src: &[f32], dst: &mut CudaSlice<f32>) -> Result<()> {
        ensure!(dst.len() >= src.len(), "write: destination too short");
        if src.is_empty() {
            return Ok(());
        }
        self.stream().memcpy_htod(src, dst).map_err(cu)
    }
    fn write_u32(&self, src: &[u32], dst: &mut CudaSlice<u32>) -> Result<()> {
        ensure!(dst.len() >= src.len(), "write: destination too short");
        if src.is_empty() {
            return Ok(());
        }
        self.stream().memcpy_htod(src, dst).map_err(cu)
    }
    fn read(&self, src: &CudaSlice<f32>, n: usize) -> Result<Vec<f32>> {
        ensure!(src.len() >= n, "read: {} elements, needs {n}", src.len());
        let mut out = vec![0f32; n];
        if n > 0 {
            self.stream()
                .memcpy_dtoh(&src.slice(..n), &mut out)
                .map_err(cu)?;
        }
        self.synchronize()?;
        Ok(out)
    }
    fn gemm(
        &self,
        ta: bool,
        tb: bool,
        m: usize,
        n: usize,
        k: usize,
        a: &CudaSlice<f32>,
        b: &CudaSlice<f32>,
        beta: f32,
        c: &mut CudaSlice<f32>,
        ep: Ep<'_, CudaSlice<f32>>,
    ) -> Result<()> {
        let ep = GpuEpilogue {
            bias: ep.bias,
            act: ep.act,
            grad_of: ep.grad_of,
        };
        Gpu::gemm(self, ta, tb, m, n, k, 1.0, a, b, beta, c, ep)
    }
    fn gather_rows(
        &self,
        src: &CudaSlice<f32>,
        d: usize,
        idx: &CudaSlice<u32>,
        n: usize,
        dst: &mut CudaSlice<f32>,
    ) -> Result<()> {
        Gpu::gather_rows(self, src, d, idx, n, dst)
    }
    fn q_sample(
        &self,
        steps: &CudaSlice<u32>,
        sqrt_abar: &CudaSlice<f32>,
        sqrt_1m_abar: &CudaSlice<f32>,
        x0: &CudaSlice<f32>,
        eps: &CudaSlice<f32>,
        mask: Option<&CudaSlice<f32>>,
        n: usize,
        d: usize,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        self.q_sample_masked(steps, sqrt_abar, sqrt_1m_abar, x0, eps, mask, n, d, out)
    }
    fn ddrm_loss(
        &self,
        hu: &CudaSlice<f32>,
        hi: &CudaSlice<f32>,
        eu: &CudaSlice<f32>,
        ei: &CudaSlice<f32>,
        ej: &CudaSlice<f32>,
        n: usize,
        d: usize,
        lambda: f32,
        gamma: f32,
        parts: &mut CudaSlice<f32>,
        dhu: &mut CudaSlice<f32>,
        dhi: &mut CudaSlice<f32>,
    ) -> Result<()> {
        Gpu::ddrm_loss(
            self, hu, hi, eu, ei, ej, n, d, lambda, gamma, parts, dhu, dhi,
        )
    }
    fn adam(
        &self,
        p: &mut CudaSlice<f32>,
        g: &CudaSlice<f32>,
        m: &mut CudaSlice<f32>,
        v: &mut CudaSlice<f32>,
        len: usize,
        c: AdamCoefs,
    ) -> Result<()> {
        self.adam_step(p, g, m, v, len, c)
    }
    fn row_dots(
        &self,
        a: &CudaSlice<f32>,
        b: &CudaSlice<f32>,
        n: usize,
        d: usize,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        Gpu::row_dots(self, a, b, n, d, out)
    }
    fn bpr(
        &self,
        sp: &CudaSlice<f32>,
        sn: &CudaSlice<f32>,
        n: usize,
        loss: &mut CudaSlice<f32>,
        dp: &mut CudaSlice<f32>,
        dn: &mut CudaSlice<f32>,
    ) -> Result<()> {
        self.bpr_loss(sp, sn, None, 1.0 / n.max(1) as f32, n, loss, dp, dn)
    }
    fn mf_row_grads(
        &self,
        table: &CudaSlice<f32>,
        d: usize,
        plan: &RowPlan<CudaSlice<u32>>,
        trip: [&CudaSlice<u32>; 3],
        dp: &CudaSlice<f32>,
        dn: &CudaSlice<f32>,
        rc: f32,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        Gpu::mf_row_grads(self, table, d, plan, trip, dp, dn, rc, out)
    }
    fn adam_rows(
        &self,
        table: &mut CudaSlice<f32>,
        d: usize,
        plan: &RowPlan<CudaSlice<u32>>,
        grads: &CudaSlice<f32>,
        m: &mut CudaSlice<f32>,
        v: &mut CudaSlice<f32>,
        c: AdamCoefs,
    ) -> Result<()> {
        Gpu::adam_rows(self, table, d, plan, grads, m, v, c)
    }
    fn posterior_step(
        &self,
        c1: f32,
        c2: f32,
        x0_hat: &CudaSlice<f32>,
        x: &mut CudaSlice<f32>,
        noise: Option<(f32, &CudaSlice<f32>)>,
        len: usize,
    ) -> Result<()> {
        Gpu::posterior_step(self, c1, c2, x0_hat, x, noise, len)
    }
    fn draw(&self, seed: u64, what: Draw, n: usize, out: &mut CudaSlice<f32>) -> Result<()> {
        let keep = match what {
            Draw::Normal => None,
            Draw::Keep(k) => Some(k),
        };
        self.counter_fill(seed, keep, n, out)
    }
}
