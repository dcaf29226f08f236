//! Host-slice forms of the GPU operations: upload, run, download. For tests, benchmarks
//! and one-off calls; training loops keep their buffers on the device.

use super::device::Gpu;
use super::ops::{GpuCsr, GpuEpilogue};
use crate::data::CsrView;
use crate::kernels::cpu::spmm::SparseMatrix;
use crate::kernels::cpu::Act;
use anyhow::{ensure, Result};

impl Gpu {
    /// [`Gpu::fused_topk`] on host data: `queries` is `rows.len() x d`, `items` is
    /// `n_items x d`; returns `(ids, scores)`, each `rows.len() x k`, best first.
    pub fn topk_host(
        &self,
        queries: &[f32],
        items: &[f32],
        d: usize,
        k: usize,
        masks: &[CsrView],
        rows: &[u32],
    ) -> Result<(Vec<u32>, Vec<f32>)> {
        let n_q = rows.len();
        ensure!(d > 0, "top-K: d must be at least 1");
        ensure!(
            queries.len() == n_q * d,
            "top-K: queries must be {n_q} x {d}"
        );
        ensure!(
            items.len().is_multiple_of(d),
            "top-K: items must be n_items x {d}"
        );
        for m in masks {
            if let Some(&u) = rows.iter().find(|&&u| u as usize >= m.n_rows) {
                anyhow::bail!(
                    "top-K: query row {u} is outside the mask's {} rows",
                    m.n_rows
                );
            }
        }
        let n_items = items.len() / d;
        let gm: Vec<GpuCsr> = masks
            .iter()
            .map(|m| GpuCsr::from_view(self, m))
            .collect::<Result<_>>()?;
        let gmr: Vec<&GpuCsr> = gm.iter().collect();
        let (q, it, r) = (
            self.upload(queries)?,
            self.upload(items)?,
            self.upload(rows)?,
        );
        let mut oi = self.zeros::<u32>(n_q * k)?;
        let mut os = self.zeros::<f32>(n_q * k)?;
        self.fused_topk(&q, &it, n_items, d, k, &r, n_q, &gmr, &mut oi, &mut os)?;
        let mut ids = self.download(&oi)?;
        let mut scores = self.download(&os)?;
        ids.truncate(n_q * k);
        scores.truncate(n_q * k);
        Ok((ids, scores))
    }

    /// [`Gpu::spmm`] on host data: returns `A x` (`n_rows x d`).
    pub fn spmm_host(&self, a: &SparseMatrix, x: &[f32], d: usize) -> Result<Vec<f32>> {
        ensure!(
            x.len() == a.n_cols * d,
            "spmm: x must be {} x {d}",
            a.n_cols
        );
        if let Some(&c) = a.indices.iter().find(|&&c| c as usize >= a.n_cols) {
            anyhow::bail!("spmm: column id {c} out of range ({} columns)", a.n_cols);
        }
        let ga = GpuCsr::from_sparse(self, a)?;
        let gx = self.upload(x)?;
        let mut out = self.zeros::<f32>(a.n_rows * d)?;
        self.spmm(&ga, &gx, d, 0.0, &mut out)?;
        let mut v = self.download(&out)?;
        v.truncate(a.n_rows * d);
        Ok(v)
    }

    /// [`Gpu::gemm`] on host data with an optional bias and activation; `c` is read when
    /// `beta != 0` and overwritten.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_host(
        &self,
        ta: bool,
        tb: bool,
        m: usize,
        n: usize,
        k: usize,
        alpha: f32,
        a: &[f32],
        b: &[f32],
        beta: f32,
        c: &mut [f32],
        bias: Option<&[f32]>,
        act: Act,
        grad_of: Option<(&[f32], Act)>,
    ) -> Result<()> {
        if let Some(why) = crate::kernels::cpu::gemm::shape_error(
            (m, n, k),
            (a.len(), b.len(), c.len()),
            bias.map(<[f32]>::len),
            grad_of.map(|(y, _)| y.len()),
        ) {
            anyhow::bail!(why);
        }
        let (ga, gb) = (self.upload(a)?, self.upload(b)?);
        let mut gc = self.upload(c)?;
        let gbias = bias.map(|v| self.upload(v)).transpose()?;
        let gy = grad_of.map(|(y, _)| self.upload(y)).transpose()?;
        let ep = GpuEpilogue {
            bias: gbias.as_ref(),
            act,
            grad_of: gy.as_ref().zip(grad_of.map(|g| g.1)),
        };
        self.gemm(ta, tb, m, n, k, alpha, &ga, &gb, beta, &mut gc, ep)?;
        let v = self.download(&gc)?;
        c[..m * n].copy_from_slice(&v[..m * n]);
        Ok(())
    }
}
