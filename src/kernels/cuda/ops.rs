//! The operations of `kernels/` on device buffers, each checking its sizes before launching,
//! plus host-slice wrappers (upload, run, download) for tests and benchmarks.

use super::device::{drv, int, Gpu};
use crate::data::CsrView;
use crate::kernels::cpu::spmm::SparseMatrix;
use crate::kernels::cpu::Act;
use anyhow::{bail, ensure, Result};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

/// Largest K the fused top-K kernel keeps per query (its lists live in shared memory).
pub const TOPK_MAX_K: usize = 128;
const TOPK_QUERIES_PER_BLOCK: usize = 16;
const TOPK_THREADS: u32 = 128;

fn act_code(a: Act) -> i32 {
    match a {
        Act::None => 0,
        Act::Relu => 1,
        Act::Tanh => 2,
        Act::Sigmoid => 3,
    }
}

fn blocks(n: usize, per_block: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(per_block).max(1) as u32, 1, 1),
        block_dim: (per_block as u32, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A CSR matrix on the device (graph adjacency or a mask).
pub struct GpuCsr {
    /// Rows.
    pub n_rows: usize,
    /// Columns.
    pub n_cols: usize,
    /// Row pointers.
    pub indptr: CudaSlice<u32>,
    /// Column ids.
    pub indices: CudaSlice<u32>,
    /// Values (empty for masks).
    pub values: Option<CudaSlice<f32>>,
}

impl GpuCsr {
    /// Upload a weighted sparse matrix.
    pub fn from_sparse(gpu: &Gpu, a: &SparseMatrix) -> Result<Self> {
        ensure!(
            a.indptr.len() == a.n_rows + 1,
            "sparse matrix: indptr length"
        );
        Ok(GpuCsr {
            n_rows: a.n_rows,
            n_cols: a.n_cols,
            indptr: gpu.upload(&a.indptr)?,
            indices: gpu.upload(&a.indices)?,
            values: Some(gpu.upload(&a.values)?),
        })
    }
    /// Upload a pattern (e.g. the train items of each user, to mask).
    pub fn from_view(gpu: &Gpu, v: &CsrView) -> Result<Self> {
        Ok(GpuCsr {
            n_rows: v.n_rows,
            n_cols: v.n_cols,
            indptr: gpu.upload(v.indptr)?,
            indices: gpu.upload(v.indices)?,
            values: None,
        })
    }
}

/// The fused epilogue of [`Gpu::gemm`] (the CUDA side of the CPU's `Epilogue`).
#[derive(Clone, Copy, Default)]
pub struct GpuEpilogue<'a> {
    /// Per-column bias (length n).
    pub bias: Option<&'a CudaSlice<f32>>,
    /// Activation applied after the bias.
    pub act: Act,
    /// Multiply by act'(y) for the output `y` (m x n) of activation `Act`.
    pub grad_of: Option<(&'a CudaSlice<f32>, Act)>,
}

impl Gpu {
    /// `C (m x n) = alpha op(A) op(B) + beta C`, then the epilogue; as the CPU `gemm_ex`.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(
        &self,
        ta: bool,
        tb: bool,
        m: usize,
        n: usize,
        k: usize,
        alpha: f32,
        a: &CudaSlice<f32>,
        b: &CudaSlice<f32>,
        beta: f32,
        c: &mut CudaSlice<f32>,
        ep: GpuEpilogue<'_>,
    ) -> Result<()> {
        if let Some(why) = crate::kernels::cpu::gemm::shape_error(
            (m, n, k),
            (a.len(), b.len(), c.len()),
            ep.bias.map(|v| v.len()),
            ep.grad_of.map(|(y, _)| y.len()),
        ) {
            bail!(why);
        }
        if m == 0 || n == 0 {
            return Ok(());
        }
        let (mi, ni, ki) = (int(m, "m")?, int(n, "n")?, int(k, "k")?);
        let (tai, tbi) = (ta as i32, tb as i32);
        let has_bias = ep.bias.is_some() as i32;
        let bias = ep.bias.unwrap_or(&self.dummy_f32);
        let act = act_code(ep.act);
        let (gy, gact) = match ep.grad_of {
            Some((y, a)) => (y, act_code(a)),
            None => (&self.dummy_f32, 0),
        };
        let cfg = LaunchConfig {
            grid_dim: (n.div_ceil(64) as u32, m.div_ceil(64) as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let f = self.func("gemm_f32");
        let mut l = self.stream().launch_builder(f);
        l.arg(&tai).arg(&tbi).arg(&mi).arg(&ni).arg(&ki).arg(&alpha);
        l.arg(a).arg(b).arg(&beta).arg(c).arg(&has_bias).arg(bias);
        l.arg(&act).arg(&gact).arg(gy);
        // SAFETY: the argument list matches gemm_f32's signature and the sizes were checked.
        unsafe { l.launch(cfg) }.map_err(drv)?;
        Ok(())
    }

    /// `out (n_rows x d) = A x + beta out`.
    pub fn spmm(
        &self,
        a: &GpuCsr,
        x: &CudaSlice<f32>,
        d: usize,
        beta: f32,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let Some(values) = a.values.as_ref() else {
            bail!("spmm: the matrix has no values (it was uploaded as a pattern)");
        };
        ensure!(x.len() >= a.n_cols * d, "spmm: x must be n_cols x d");
        ensure!(out.len() >= a.n_rows * d, "spmm: out must be n_rows x d");
        if a.n_rows == 0 || d == 0 {
            return Ok(());
        }
        let (nr, di) = (int(a.n_rows, "rows")?, int(d, "d")?);
        let cfg = blocks(a.n_rows * 32, 256);
        let f = self.func("spmm_csr");
        let mut l = self.stream().launch_builder(f);
        l.arg(&nr)
            .arg(&di)
            .arg(&a.indptr)
            .arg(&a.indices)
            .arg(values);
        l.arg(x).arg(&beta).arg(out);
        // SAFETY: matches spmm_csr's signature; sizes checked above.
        unsafe { l.launch(cfg) }.map_err(drv)?;
        Ok(())
    }

    /// Top-`k` items per query by inner product, skipping the items of row `rows[q]` of each
    /// mask; ties rank the lower item id first. Writes `n_q x k` ids and scores.
    #[allow(clippy::too_many_arguments)]
    pub fn fused_topk(
        &self,
        queries: &CudaSlice<f32>,
        items: &CudaSlice<f32>,
        n_items: usize,
        d: usize,
        k: usize,
        rows: &CudaSlice<u32>,
        n_q: usize,
        masks: &[&GpuCsr],
        out_items: &mut CudaSlice<u32>,
        out_scores: &mut CudaSlice<f32>,
    ) -> Result<()> {
        ensure!(
            (1..=TOPK_MAX_K).contains(&k),
            "top-K on the GPU: K = {k} is outside 1..={TOPK_MAX_K}"
        );
        ensure!(masks.len() <= 2, "top-K on the GPU takes at most 2 masks");
        ensure!(queries.len() >= n_q * d, "top-K: queries must be n_q x d");
        ensure!(
            items.len() >= n_items * d,
            "top-K: items must be n_items x d"
        );
        ensure!(rows.len() >= n_q, "top-K: one mask row per query");
        ensure!(
            out_items.len() >= n_q * k && out_scores.len() >= n_q * k,
            "top-K: outputs must be n_q x k"
        );
        if n_q == 0 {
            return Ok(());
        }
        let (nq, nii, di, ki) = (
            int(n_q, "queries")?,
            int(n_items, "items")?,
            int(d, "d")?,
            int(k, "k")?,
        );
        let nm = masks.len() as i32;
        let (m0p, m0i) = masks
            .first()
            .map_or((&self.dummy_u32, &self.dummy_u32), |m| {
                (&m.indptr, &m.indices)
            });
        let (m1p, m1i) = masks
            .get(1)
            .map_or((&self.dummy_u32, &self.dummy_u32), |m| {
                (&m.indptr, &m.indices)
            });
        let cfg = LaunchConfig {
            grid_dim: (n_q.div_ceil(TOPK_QUERIES_PER_BLOCK) as u32, 1, 1),
            block_dim: (TOPK_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let f = self.func("fused_topk");
        let mut l = self.stream().launch_builder(f);
        l.arg(queries)
            .arg(items)
            .arg(&nq)
            .arg(&nii)
            .arg(&di)
            .arg(&ki)
            .arg(rows);
        l.arg(&nm)
            .arg(m0p)
            .arg(m0i)
            .arg(m1p)
            .arg(m1i)
            .arg(out_items)
            .arg(out_scores);
        // SAFETY: matches fused_topk's signature; sizes checked above. The mask rows are
        // trusted to be < the masks' n_rows (checked by the host wrapper).
        unsafe { l.launch(cfg) }.map_err(drv)?;
        Ok(())
    }

    /// `y = act(x)` element-wise.
    pub fn act_forward(
        &self,
        act: Act,
        x: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
        n: usize,
    ) -> Result<()> {
        ensure!(
            x.len() >= n && y.len() >= n,
            "act_forward: buffers shorter than n"
        );
        if n == 0 {
            return Ok(());
        }
        let (ni, a) = (int(n, "n")?, act_code(act));
        let mut l = self.stream().launch_builder(self.func("act_forward"));
        l.arg(&ni).arg(&a).arg(x).arg(y);
        // SAFETY: matches act_forward's signature.
        unsafe { l.launch(blocks(n, 256)) }.map_err(drv)?;
        Ok(())
    }

    /// `dx = dy * act'(y)` through the activation's output `y`.
    pub fn act_backward(
        &self,
        act: Act,
        y: &CudaSlice<f32>,
        dy: &CudaSlice<f32>,
        dx: &mut CudaSlice<f32>,
        n: usize,
    ) -> Result<()> {
        ensure!(
            y.len() >= n && dy.len() >= n && dx.len() >= n,
            "act_backward: buffers shorter than n"
        );
        if n == 0 {
            return Ok(());
        }
        let (ni, a) = (int(n, "n")?, act_code(act));
        let mut l = self.stream().launch_builder(self.func("act_backward"));
        l.arg(&ni).arg(&a).arg(y).arg(dy).arg(dx);
        // SAFETY: matches act_backward's signature.
        unsafe { l.launch(blocks(n, 256)) }.map_err(drv)?;
        Ok(())
    }

    /// `out[r] = a[r,:] · b[r,:]` for `n` rows of width `d`.
    pub fn row_dots(
        &self,
        a: &CudaSlice<f32>,
        b: &CudaSlice<f32>,
        n: usize,
        d: usize,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        ensure!(
            a.len() >= n * d && b.len() >= n * d && out.len() >= n,
            "row_dots: buffer sizes"
        );
        if n == 0 {
            return Ok(());
        }
        let (ni, di) = (int(n, "n")?, int(d, "d")?);
        let mut l = self.stream().launch_builder(self.func("row_dots"));
        l.arg(&ni).arg(&di).arg(a).arg(b).arg(out);
        // SAFETY: matches row_dots's signature.
        unsafe { l.launch(blocks(n * 32, 256)) }.map_err(drv)?;
        Ok(())
    }

    /// Per-row BPR loss `w softplus(sn - sp)` and its gradients times `scale`.
    #[allow(clippy::too_many_arguments)]
    pub fn bpr_loss(
        &self,
        sp: &CudaSlice<f32>,
        sn: &CudaSlice<f32>,
        w: Option<&CudaSlice<f32>>,
        scale: f32,
        n: usize,
        loss: &mut CudaSlice<f32>,
        dp: &mut CudaSlice<f32>,
        dn: &mut CudaSlice<f32>,
    ) -> Result<()> {
        ensure!(
            sp.len() >= n && sn.len() >= n && loss.len() >= n && dp.len() >= n && dn.len() >= n,
            "bpr_loss: buffer sizes"
        );
        if n == 0 {
            return Ok(());
        }
        let ni = int(n, "n")?;
        let has_w = w.is_some() as i32;
        let w = w.unwrap_or(&self.dummy_f32);
        let mut l = self.stream().launch_builder(self.func("bpr_loss"));
        l.arg(&ni)
            .arg(sp)
            .arg(sn)
            .arg(&has_w)
            .arg(w)
            .arg(&scale)
            .arg(loss)
            .arg(dp)
            .arg(dn);
        // SAFETY: matches bpr_loss's signature.
        unsafe { l.launch(blocks(n, 256)) }.map_err(drv)?;
        Ok(())
    }

    /// `dst[r,:] = src[idx[r],:]` (ids must be < src rows: checked by the host wrappers).
    pub fn gather_rows(
        &self,
        src: &CudaSlice<f32>,
        d: usize,
        idx: &CudaSlice<u32>,
        n: usize,
        dst: &mut CudaSlice<f32>,
    ) -> Result<()> {
        ensure!(
            idx.len() >= n && dst.len() >= n * d,
            "gather_rows: buffer sizes"
        );
        if n * d == 0 {
            return Ok(());
        }
        let (ni, di) = (int(n, "n")?, int(d, "d")?);
        let mut l = self.stream().launch_builder(self.func("gather_rows"));
        l.arg(&ni).arg(&di).arg(idx).arg(src).arg(dst);
        // SAFETY: matches gather_rows's signature.
        unsafe { l.launch(blocks(n * d, 256)) }.map_err(drv)?;
        Ok(())
    }

    /// Deterministic scatter-add of the rows of `src` into `dst` by the plan of
    /// [`ScatterPlan::new`].
    pub fn scatter_add_rows(
        &self,
        plan: &GpuScatterPlan,
        src: &CudaSlice<f32>,
        d: usize,
        dst: &mut CudaSlice<f32>,
    ) -> Result<()> {
        if plan.n_unique == 0 || d == 0 {
            return Ok(());
        }
        let (nu, di) = (int(plan.n_unique, "rows")?, int(d, "d")?);
        let mut l = self.stream().launch_builder(self.func("scatter_add_rows"));
        l.arg(&nu)
            .arg(&di)
            .arg(&plan.rows)
            .arg(&plan.seg)
            .arg(&plan.order)
            .arg(src)
            .arg(dst);
        // SAFETY: matches scatter_add_rows's signature; the plan's ids were bounds-checked.
        unsafe { l.launch(blocks(plan.n_unique * 32, 256)) }.map_err(drv)?;
        Ok(())
    }

    /// One Adam step over `n` parameters (bias-corrected coefficients from the host, as
    /// `nn::Adam`).
    #[allow(clippy::too_many_arguments)]
    pub fn adam_step(
        &self,
        p: &mut CudaSlice<f32>,
        g: &CudaSlice<f32>,
        m: &mut CudaSlice<f32>,
        v: &mut CudaSlice<f32>,
        n: usize,
        c: AdamCoefs,
    ) -> Result<()> {
        ensure!(
            p.len() >= n && g.len() >= n && m.len() >= n && v.len() >= n,
            "adam_step: buffer sizes"
        );
        if n == 0 {
            return Ok(());
        }
        let ni = int(n, "n")?;
        let mut l = self.stream().launch_builder(self.func("adam_step"));
        l.arg(&ni).arg(p).arg(g).arg(m).arg(v).arg(&c.b1).arg(&c.b2);
        l.arg(&c.step).arg(&c.inv_bc2).arg(&c.eps).arg(&c.wd);
        // SAFETY: matches adam_step's signature.
        unsafe { l.launch(blocks(n, 256)) }.map_err(drv)?;
        Ok(())
    }

    /// Forward noising of `n` rows, each at its own step: `out = √ᾱ_t x0 + √(1−ᾱ_t) ε`.
    #[allow(clippy::too_many_arguments)]
    pub fn q_sample(
        &self,
        steps: &CudaSlice<u32>,
        sqrt_abar: &CudaSlice<f32>,
        sqrt_1m_abar: &CudaSlice<f32>,
        x0: &CudaSlice<f32>,
        eps: &CudaSlice<f32>,
        n: usize,
        d: usize,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        ensure!(
            steps.len() >= n && x0.len() >= n * d && eps.len() >= n * d && out.len() >= n * d,
            "q_sample: buffer sizes"
        );
        if n * d == 0 {
            return Ok(());
        }
        let (ni, di) = (int(n, "n")?, int(d, "d")?);
        let mut l = self.stream().launch_builder(self.func("q_sample"));
        l.arg(&ni)
            .arg(&di)
            .arg(steps)
            .arg(sqrt_abar)
            .arg(sqrt_1m_abar)
            .arg(x0)
            .arg(eps)
            .arg(out);
        // SAFETY: matches q_sample's signature; steps are < T (checked by the host wrapper).
        unsafe { l.launch(blocks(n * d, 256)) }.map_err(drv)?;
        Ok(())
    }

    /// One reverse step: `x = c1 x̂0 + c2 x (+ sd ε)`.
    #[allow(clippy::too_many_arguments)]
    pub fn posterior_step(
        &self,
        c1: f32,
        c2: f32,
        x0_hat: &CudaSlice<f32>,
        x: &mut CudaSlice<f32>,
        noise: Option<(f32, &CudaSlice<f32>)>,
        n: usize,
    ) -> Result<()> {
        ensure!(
            x0_hat.len() >= n && x.len() >= n,
            "posterior_step: buffer sizes"
        );
        if n == 0 {
            return Ok(());
        }
        let ni = int(n, "n")?;
        let has = noise.is_some() as i32;
        let (sd, eps) = noise.unwrap_or((0.0, &self.dummy_f32));
        ensure!(
            noise.is_none() || eps.len() >= n,
            "posterior_step: noise shorter than n"
        );
        let mut l = self.stream().launch_builder(self.func("posterior_step"));
        l.arg(&ni)
            .arg(&c1)
            .arg(&c2)
            .arg(x0_hat)
            .arg(x)
            .arg(&has)
            .arg(&sd)
            .arg(eps);
        // SAFETY: matches posterior_step's signature.
        unsafe { l.launch(blocks(n, 256)) }.map_err(drv)?;
        Ok(())
    }
}

pub use crate::device::ops::AdamCoefs;

impl Gpu {
    /// Forward noising with dropout: `out = (√ᾱ_t x0 + √(1−ᾱ_t) ε) ⊙ mask` (`mask` absent: 1).
    #[allow(clippy::too_many_arguments)]
    pub fn q_sample_masked(
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
        ensure!(
            steps.len() >= n && x0.len() >= n * d && eps.len() >= n * d && out.len() >= n * d,
            "q_sample_masked: buffer sizes"
        );
        ensure!(
            mask.is_none_or(|m| m.len() >= n * d),
            "q_sample_masked: mask shorter than n x d"
        );
        if n * d == 0 {
            return Ok(());
        }
        let (ni, di) = (int(n, "n")?, int(d, "d")?);
        let has = mask.is_some() as i32;
        let m = mask.unwrap_or(&self.dummy_f32);
        let mut l = self.stream().launch_builder(self.func("q_sample_masked"));
        l.arg(&ni)
            .arg(&di)
            .arg(steps)
            .arg(sqrt_abar)
            .arg(sqrt_1m_abar);
        l.arg(x0).arg(eps).arg(&has).arg(m).arg(out);
        // SAFETY: matches q_sample_masked's signature; steps are < T (the callers draw them).
        unsafe { l.launch(blocks(n * d, 256)) }.map_err(drv)?;
        Ok(())
    }

    /// MF-BPR's row gradients (`mf_row_grads` in `kernels/elementwise.cu`) for the rows of
    /// `plan`; `trip` holds the batch's table rows (users, positives, negatives).
    #[allow(clippy::too_many_arguments)]
    pub fn mf_row_grads(
        &self,
        table: &CudaSlice<f32>,
        d: usize,
        plan: &crate::device::ops::RowPlan<CudaSlice<u32>>,
        trip: [&CudaSlice<u32>; 3],
        dp: &CudaSlice<f32>,
        dn: &CudaSlice<f32>,
        rc: f32,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        ensure!(
            out.len() >= plan.n_unique * d,
            "mf_row_grads: output shorter than rows x d"
        );
        if plan.n_unique == 0 || d == 0 {
            return Ok(());
        }
        let (nu, di) = (int(plan.n_unique, "rows")?, int(d, "d")?);
        let [u, p, n] = trip;
        let mut l = self.stream().launch_builder(self.func("mf_row_grads"));
        l.arg(&nu)
            .arg(&di)
            .arg(&plan.rows)
            .arg(&plan.start)
            .arg(&plan.entries);
        l.arg(u)
            .arg(p)
            .arg(n)
            .arg(dp)
            .arg(dn)
            .arg(&rc)
            .arg(table)
            .arg(out);
        // SAFETY: matches mf_row_grads's signature; the plan and ids come from the host's
        // checked batch.
        unsafe { l.launch(blocks(plan.n_unique * 32, 256)) }.map_err(drv)?;
        Ok(())
    }

    /// Lazy Adam on the rows of `plan` (`adam_rows` in `kernels/optim.cu`).
    #[allow(clippy::too_many_arguments)]
    pub fn adam_rows(
        &self,
        table: &mut CudaSlice<f32>,
        d: usize,
        plan: &crate::device::ops::RowPlan<CudaSlice<u32>>,
        grads: &CudaSlice<f32>,
        m: &mut CudaSlice<f32>,
        v: &mut CudaSlice<f32>,
        c: AdamCoefs,
    ) -> Result<()> {
        ensure!(
            grads.len() >= plan.n_unique * d && m.len() >= table.len() && v.len() >= table.len(),
            "adam_rows: buffer sizes"
        );
        if plan.n_unique == 0 || d == 0 {
            return Ok(());
        }
        let (nu, di) = (int(plan.n_unique, "rows")?, int(d, "d")?);
        let mut l = self.stream().launch_builder(self.func("adam_rows"));
        l.arg(&nu)
            .arg(&di)
            .arg(&plan.rows)
            .arg(table)
            .arg(grads)
            .arg(m)
            .arg(v);
        l.arg(&c.b1)
            .arg(&c.b2)
            .arg(&c.step)
            .arg(&c.inv_bc2)
            .arg(&c.eps)
            .arg(&c.wd);
        // SAFETY: matches adam_rows's signature; the rows are distinct and in range (host).
        unsafe { l.launch(blocks(plan.n_unique * d, 256)) }.map_err(drv)?;
        Ok(())
    }

    /// Elements `0..n` of the counter-based stream `seed` (`counter_fill`): standard normals,
    /// or with `keep`, an inverted-dropout mask (`1 / keep` with probability `keep`, else 0).
    pub fn counter_fill(
        &self,
        seed: u64,
        keep: Option<f32>,
        n: usize,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        ensure!(out.len() >= n, "counter_fill: output shorter than n");
        if let Some(k) = keep {
            ensure!(
                k > 0.0 && k <= 1.0,
                "counter_fill: keep probability {k} outside (0, 1]"
            );
        }
        if n == 0 {
            return Ok(());
        }
        let ni = int(n, "n")?;
        let kind = keep.is_some() as i32;
        let keep = keep.unwrap_or(1.0);
        let scale = 1.0 / keep;
        let mut l = self.stream().launch_builder(self.func("counter_fill"));
        l.arg(&ni)
            .arg(&seed)
            .arg(&kind)
            .arg(&keep)
            .arg(&scale)
            .arg(out);
        // SAFETY: matches counter_fill's signature; the size was checked.
        unsafe { l.launch(blocks(n, 256)) }.map_err(drv)?;
        Ok(())
    }

    /// DDRM's loss of `n` rows (see `kernels/diffusion.cu`, `ddrm_loss`): per-row parts
    /// (`3 x n`) and dL/dhu, dL/dhi.
    #[allow(clippy::too_many_arguments)]
    pub fn ddrm_loss(
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
        let nd = n * d;
        ensure!(
            [
                hu.len(),
                hi.len(),
                eu.len(),
                ei.len(),
                ej.len(),
                dhu.len(),
                dhi.len()
            ]
            .iter()
            .all(|&l| l >= nd)
                && parts.len() >= 3 * n,
            "ddrm_loss: buffer sizes"
        );
        if n == 0 {
            return Ok(());
        }
        let (ni, di) = (int(n, "n")?, int(d, "d")?);
        let mut l = self.stream().launch_builder(self.func("ddrm_loss"));
        l.arg(&ni).arg(&di).arg(&lambda).arg(&gamma);
        l.arg(hu).arg(hi).arg(eu).arg(ei).arg(ej);
        l.arg(parts).arg(dhu).arg(dhi);
        // SAFETY: matches ddrm_loss's signature; sizes checked above.
        unsafe { l.launch(blocks(n * 32, 256)) }.map_err(drv)?;
        Ok(())
    }
}

/// The batch's ids grouped by target row on the host, so that the scatter-add sums each
/// row's terms in a fixed order (deterministic, no float atomics).
pub struct ScatterPlan {
    /// Distinct target rows, ascending.
    pub rows: Vec<u32>,
    /// Segment bounds into `order`, one more than `rows`.
    pub seg: Vec<u32>,
    /// Source rows, grouped by target and ascending within a group.
    pub order: Vec<u32>,
}

impl ScatterPlan {
    /// Plan `dst[idx[r]] += src[r]` for every r; every id must be `< n_dst`.
    pub fn new(idx: &[u32], n_dst: usize) -> Result<Self> {
        if let Some(&bad) = idx.iter().find(|&&i| i as usize >= n_dst) {
            bail!("scatter-add: row id {bad} out of range (the table has {n_dst} rows)");
        }
        let mut order: Vec<u32> = (0..idx.len() as u32).collect();
        order.sort_by_key(|&r| (idx[r as usize], r));
        let (mut rows, mut seg) = (Vec::new(), vec![0u32]);
        for (p, &r) in order.iter().enumerate() {
            let t = idx[r as usize];
            if rows.last() != Some(&t) {
                if p > 0 {
                    seg.push(p as u32);
                }
                rows.push(t);
            }
        }
        if !order.is_empty() {
            seg.push(order.len() as u32);
        }
        Ok(ScatterPlan { rows, seg, order })
    }
}

/// A [`ScatterPlan`] on the device.
pub struct GpuScatterPlan {
    n_unique: usize,
    rows: CudaSlice<u32>,
    seg: CudaSlice<u32>,
    order: CudaSlice<u32>,
}

impl GpuScatterPlan {
    /// Upload a plan.
    pub fn new(gpu: &Gpu, p: &ScatterPlan) -> Result<Self> {
        Ok(GpuScatterPlan {
            n_unique: p.rows.len(),
            rows: gpu.upload(&p.rows)?,
            seg: gpu.upload(&p.seg)?,
            order: gpu.upload(&p.order)?,
        })
    }
}
