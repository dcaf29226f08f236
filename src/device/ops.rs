//! The buffer-level operations a device training step needs, with the CPU implementation
//! ([`CpuOps`]: `Vec` buffers and the CPU kernels). The CUDA one is `Gpu` (feature `cuda`).
//! Buffers may be longer than an operation uses (they are allocated once for the largest
//! batch); every operation reads and writes the front of each.

use crate::kernels::cpu::elementwise::{sigmoid, softplus};
use crate::kernels::cpu::{gemm_ex, Act, Epilogue, Isa};
use anyhow::{ensure, Result};

/// The epilogue of [`Ops::gemm`]: per-column bias, activation, or the activation gradient
/// through an output `y` (as the CPU [`Epilogue`]).
pub struct Ep<'a, F> {
    /// Per-column bias.
    pub bias: Option<&'a F>,
    /// Activation after the bias.
    pub act: Act,
    /// Multiply by act'(y) for the output `y` (m x n) of activation `Act`.
    pub grad_of: Option<(&'a F, Act)>,
}

impl<F> Ep<'_, F> {
    /// No epilogue.
    pub fn none() -> Self {
        Ep {
            bias: None,
            act: Act::None,
            grad_of: None,
        }
    }
}

/// Adam's per-step coefficients, shared by the devices (see `kernels/optim.cu` and
/// `nn::Adam`): `g' = g + wd p; m = b1 m + (1 − b1) g'; v = b2 v + (1 − b2) g'²;
/// p −= step m / (√(v inv_bc2) + eps)`.
#[derive(Clone, Copy, Debug)]
pub struct AdamCoefs {
    /// β1.
    pub b1: f32,
    /// β2.
    pub b2: f32,
    /// lr / (1 − β1^t).
    pub step: f32,
    /// 1 / (1 − β2^t).
    pub inv_bc2: f32,
    /// ε.
    pub eps: f32,
    /// L2 weight decay.
    pub wd: f32,
}

impl AdamCoefs {
    /// Coefficients of step `t` (1-based).
    pub fn at(lr: f32, b1: f32, b2: f32, eps: f32, wd: f32, t: i32) -> Self {
        AdamCoefs {
            b1,
            b2,
            step: lr / (1.0 - b1.powi(t)),
            inv_bc2: 1.0 / (1.0 - b2.powi(t)),
            eps,
            wd,
        }
    }
}

/// What [`Ops::draw`] draws.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Draw {
    /// Standard normals ([`crate::util::rng::counter_normal`]).
    Normal,
    /// An inverted-dropout mask: `1 / keep` with probability `keep`, else 0
    /// ([`crate::util::rng::counter_uniform`] `< keep`).
    Keep(f32),
}

/// Buffer-level operations of one device.
pub trait Ops {
    /// An f32 buffer on the device.
    type F;
    /// A u32 buffer on the device.
    type U;

    /// A new buffer holding `h`.
    fn upload(&self, h: &[f32]) -> Result<Self::F>;
    /// A new u32 buffer holding `h`.
    fn upload_u32(&self, h: &[u32]) -> Result<Self::U>;
    /// A zeroed buffer of `n` elements.
    fn zeros(&self, n: usize) -> Result<Self::F>;
    /// Copy `src` into the front of `dst`.
    fn write(&self, src: &[f32], dst: &mut Self::F) -> Result<()>;
    /// Copy `src` into the front of `dst`.
    fn write_u32(&self, src: &[u32], dst: &mut Self::U) -> Result<()>;
    /// The first `n` elements of `src`, on the host (waits for the device).
    fn read(&self, src: &Self::F, n: usize) -> Result<Vec<f32>>;
    /// `c (m x n) = op(A) op(B) + beta c`, then the epilogue.
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        ta: bool,
        tb: bool,
        m: usize,
        n: usize,
        k: usize,
        a: &Self::F,
        b: &Self::F,
        beta: f32,
        c: &mut Self::F,
        ep: Ep<'_, Self::F>,
    ) -> Result<()>;
    /// `dst[r,:] = src[idx[r],:]` for `n` rows of width `d`.
    fn gather_rows(
        &self,
        src: &Self::F,
        d: usize,
        idx: &Self::U,
        n: usize,
        dst: &mut Self::F,
    ) -> Result<()>;
    /// Forward noising of `n` rows: `out = (√ᾱ_t x0 + √(1−ᾱ_t) ε) ⊙ mask` (no mask: 1).
    #[allow(clippy::too_many_arguments)]
    fn q_sample(
        &self,
        steps: &Self::U,
        sqrt_abar: &Self::F,
        sqrt_1m_abar: &Self::F,
        x0: &Self::F,
        eps: &Self::F,
        mask: Option<&Self::F>,
        n: usize,
        d: usize,
        out: &mut Self::F,
    ) -> Result<()>;
    /// DDRM's loss of `n` rows (see [`crate::diffusion::ddrm::ddrm_loss`]): writes the per-row
    /// weighted loss, BPR and reconstruction parts into `parts` (`3 x n`: the batch means are
    /// their sums / n) and dL/dhu, dL/dhi.
    #[allow(clippy::too_many_arguments)]
    fn ddrm_loss(
        &self,
        hu: &Self::F,
        hi: &Self::F,
        eu: &Self::F,
        ei: &Self::F,
        ej: &Self::F,
        n: usize,
        d: usize,
        lambda: f32,
        gamma: f32,
        parts: &mut Self::F,
        dhu: &mut Self::F,
        dhi: &mut Self::F,
    ) -> Result<()>;
    /// One Adam step over the first `len` parameters.
    fn adam(
        &self,
        p: &mut Self::F,
        g: &Self::F,
        m: &mut Self::F,
        v: &mut Self::F,
        len: usize,
        c: AdamCoefs,
    ) -> Result<()>;
    /// Elements `0..n` of the counter-based stream `seed` (the same numbers on every
    /// device, up to the last bit of `ln` / `cos`) into the front of `out`.
    fn draw(&self, seed: u64, what: Draw, n: usize, out: &mut Self::F) -> Result<()>;
    /// One reverse diffusion step on `len` values: `x = c1 x̂0 + c2 x`, then `+ sd ε` with
    /// `noise = (sd, ε)`.
    fn posterior_step(
        &self,
        c1: f32,
        c2: f32,
        x0_hat: &Self::F,
        x: &mut Self::F,
        noise: Option<(f32, &Self::F)>,
        len: usize,
    ) -> Result<()>;
    /// `out[r] = a[r,:] · b[r,:]` for `n` rows of width `d`.
    fn row_dots(
        &self,
        a: &Self::F,
        b: &Self::F,
        n: usize,
        d: usize,
        out: &mut Self::F,
    ) -> Result<()>;
    /// BPR of `n` triplets: `loss[r] = softplus(sn − sp)`, `dp = −σ(sn − sp) / n`, `dn = −dp`.
    fn bpr(
        &self,
        sp: &Self::F,
        sn: &Self::F,
        n: usize,
        loss: &mut Self::F,
        dp: &mut Self::F,
        dn: &mut Self::F,
    ) -> Result<()>;
    /// MF-BPR's gradient of each distinct row a batch touches, in the order of `plan`
    /// (see `kernels/elementwise.cu`, `mf_row_grads`), into `out` (`plan.len() x d`).
    #[allow(clippy::too_many_arguments)]
    fn mf_row_grads(
        &self,
        table: &Self::F,
        d: usize,
        plan: &RowPlan<Self::U>,
        trip: [&Self::U; 3],
        dp: &Self::F,
        dn: &Self::F,
        rc: f32,
        out: &mut Self::F,
    ) -> Result<()>;
    /// Lazy Adam on the distinct rows of `plan`: row `plan.rows[s]` of `table` (and of the
    /// moments `m`, `v`) with the gradient row `s` of `grads`.
    #[allow(clippy::too_many_arguments)]
    fn adam_rows(
        &self,
        table: &mut Self::F,
        d: usize,
        plan: &RowPlan<Self::U>,
        grads: &Self::F,
        m: &mut Self::F,
        v: &mut Self::F,
        c: AdamCoefs,
    ) -> Result<()>;
}

/// A batch's distinct rows, sorted, with the (triplet, role) entries of each in triplet
/// order (role 0 user, 1 positive, 2 negative; entry `k << 2 | role`), on a device.
pub struct RowPlan<U> {
    /// Number of distinct rows.
    pub n_unique: usize,
    /// The distinct rows, ascending.
    pub rows: U,
    /// `start[s]..start[s + 1]`: the entries of row `s`.
    pub start: U,
    /// The entries.
    pub entries: U,
}

/// The host side of a [`RowPlan`]: `(rows, start, entries)` for triplets `(users, pos, neg)`
/// of table rows; within a row the entries keep triplet order, a positive before a negative.
pub fn plan_rows(users: &[u32], pos: &[u32], neg: &[u32]) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    let mut all: Vec<(u32, u32)> = Vec::with_capacity(3 * users.len());
    for k in 0..users.len() {
        for (role, r) in [users[k], pos[k], neg[k]].into_iter().enumerate() {
            all.push((r, (k as u32) << 2 | role as u32));
        }
    }
    // stable: entries of one row stay in triplet order, user / positive / negative
    all.sort_by_key(|&(r, _)| r);
    let (mut rows, mut start) = (Vec::new(), Vec::new());
    for (p, &(r, _)) in all.iter().enumerate() {
        if rows.last() != Some(&r) {
            rows.push(r);
            start.push(p as u32);
        }
    }
    start.push(all.len() as u32);
    (rows, start, all.into_iter().map(|(_, e)| e).collect())
}

/// The CPU: `Vec` buffers, the SIMD kernels.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuOps;

fn fits(what: &str, have: usize, need: usize) -> Result<()> {
    ensure!(have >= need, "{what}: {have} elements, needs {need}");
    Ok(())
}

impl Ops for CpuOps {
    type F = Vec<f32>;
    type U = Vec<u32>;

    fn upload(&self, h: &[f32]) -> Result<Vec<f32>> {
        Ok(h.to_vec())
    }
    fn upload_u32(&self, h: &[u32]) -> Result<Vec<u32>> {
        Ok(h.to_vec())
    }
    fn zeros(&self, n: usize) -> Result<Vec<f32>> {
        Ok(vec![0.0; n])
    }
    fn write(&self, src: &[f32], dst: &mut Vec<f32>) -> Result<()> {
        fits("write", dst.len(), src.len())?;
        dst[..src.len()].copy_from_slice(src);
        Ok(())
    }
    fn write_u32(&self, src: &[u32], dst: &mut Vec<u32>) -> Result<()> {
        ensure!(dst.len() >= src.len(), "write: destination too short");
        dst[..src.len()].copy_from_slice(src);
        Ok(())
    }
    fn read(&self, src: &Vec<f32>, n: usize) -> Result<Vec<f32>> {
        fits("read", src.len(), n)?;
        Ok(src[..n].to_vec())
    }
    fn gemm(
        &self,
        ta: bool,
        tb: bool,
        m: usize,
        n: usize,
        k: usize,
        a: &Vec<f32>,
        b: &Vec<f32>,
        beta: f32,
        c: &mut Vec<f32>,
        ep: Ep<'_, Vec<f32>>,
    ) -> Result<()> {
        if let Some(why) = crate::kernels::cpu::gemm::shape_error(
            (m, n, k),
            (a.len(), b.len(), c.len()),
            ep.bias.map(|v| v.len()),
            ep.grad_of.map(|(y, _)| y.len()),
        ) {
            anyhow::bail!(why);
        }
        gemm_ex(
            Isa::detect(),
            ta,
            tb,
            m,
            n,
            k,
            1.0,
            &a[..m * k],
            &b[..k * n],
            beta,
            &mut c[..m * n],
            Epilogue {
                bias: ep.bias.map(|v| &v[..n]),
                bias_rows: None,
                act: ep.act,
                grad_of: ep.grad_of.map(|(y, a)| (&y[..m * n], a)),
            },
        );
        Ok(())
    }
    fn gather_rows(
        &self,
        src: &Vec<f32>,
        d: usize,
        idx: &Vec<u32>,
        n: usize,
        dst: &mut Vec<f32>,
    ) -> Result<()> {
        fits("gather_rows: idx", idx.len(), n)?;
        fits("gather_rows: dst", dst.len(), n * d)?;
        let rows = src.len() / d.max(1);
        if let Some(&bad) = idx[..n].iter().find(|&&i| i as usize >= rows) {
            anyhow::bail!("gather_rows: row {bad} out of range ({rows} rows)");
        }
        crate::kernels::cpu::elementwise::gather_rows(src, d, &idx[..n], &mut dst[..n * d]);
        Ok(())
    }
    fn q_sample(
        &self,
        steps: &Vec<u32>,
        sqrt_abar: &Vec<f32>,
        sqrt_1m_abar: &Vec<f32>,
        x0: &Vec<f32>,
        eps: &Vec<f32>,
        mask: Option<&Vec<f32>>,
        n: usize,
        d: usize,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        fits("q_sample: steps", steps.len(), n)?;
        for (what, len) in [("x0", x0.len()), ("eps", eps.len()), ("out", out.len())] {
            fits(&format!("q_sample: {what}"), len, n * d)?;
        }
        if let Some(m) = mask {
            fits("q_sample: mask", m.len(), n * d)?;
        }
        for r in 0..n {
            let t = steps[r] as usize;
            ensure!(t < sqrt_abar.len(), "q_sample: step {t} out of range");
            let (a, b) = (sqrt_abar[t], sqrt_1m_abar[t]);
            for e in r * d..(r + 1) * d {
                let v = a * x0[e] + b * eps[e];
                out[e] = mask.map_or(v, |m| v * m[e]);
            }
        }
        Ok(())
    }
    fn ddrm_loss(
        &self,
        hu: &Vec<f32>,
        hi: &Vec<f32>,
        eu: &Vec<f32>,
        ei: &Vec<f32>,
        ej: &Vec<f32>,
        n: usize,
        d: usize,
        lambda: f32,
        gamma: f32,
        parts: &mut Vec<f32>,
        dhu: &mut Vec<f32>,
        dhi: &mut Vec<f32>,
    ) -> Result<()> {
        for (what, len) in [
            ("hu", hu.len()),
            ("hi", hi.len()),
            ("eu", eu.len()),
            ("ei", ei.len()),
            ("ej", ej.len()),
            ("dhu", dhu.len()),
            ("dhi", dhi.len()),
        ] {
            fits(&format!("ddrm_loss: {what}"), len, n * d)?;
        }
        fits("ddrm_loss: parts", parts.len(), 3 * n)?;
        for r in 0..n {
            let o = r * d..(r + 1) * d;
            let (u, i, tu, ti, j) = (
                &hu[o.clone()],
                &hi[o.clone()],
                &eu[o.clone()],
                &ei[o.clone()],
                &ej[o.clone()],
            );
            let (mut sp, mut sn, mut su, mut si) = (0f32, 0f32, 0f32, 0f32);
            for c in 0..d {
                sp += u[c] * i[c];
                sn += u[c] * j[c];
                su += (u[c] - tu[c]) * (u[c] - tu[c]);
                si += (i[c] - ti[c]) * (i[c] - ti[c]);
            }
            let (w, z) = (row_weight(sp, gamma), sn - sp);
            let g = w * lambda * sigmoid(z) / n as f32;
            let cr = w * (1.0 - lambda) / (d * n) as f32;
            for c in 0..d {
                dhu[r * d + c] = cr * (u[c] - tu[c]) - g * i[c] + g * j[c];
                dhi[r * d + c] = cr * (i[c] - ti[c]) - g * u[c];
            }
            let rec = (su + si) / (2 * d) as f32;
            parts[r] = w * (lambda * softplus(z) + (1.0 - lambda) * rec);
            parts[n + r] = softplus(z);
            parts[2 * n + r] = rec;
        }
        Ok(())
    }
    fn adam(
        &self,
        p: &mut Vec<f32>,
        g: &Vec<f32>,
        m: &mut Vec<f32>,
        v: &mut Vec<f32>,
        len: usize,
        c: AdamCoefs,
    ) -> Result<()> {
        for (what, l) in [
            ("p", p.len()),
            ("g", g.len()),
            ("m", m.len()),
            ("v", v.len()),
        ] {
            fits(&format!("adam: {what}"), l, len)?;
        }
        for k in 0..len {
            adam_elem(&c, &mut p[k], g[k], &mut m[k], &mut v[k]);
        }
        Ok(())
    }
    fn row_dots(
        &self,
        a: &Vec<f32>,
        b: &Vec<f32>,
        n: usize,
        d: usize,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        fits("row_dots: out", out.len(), n)?;
        fits("row_dots: a", a.len(), n * d)?;
        fits("row_dots: b", b.len(), n * d)?;
        for r in 0..n {
            out[r] = crate::kernels::cpu::elementwise::dot(
                &a[r * d..(r + 1) * d],
                &b[r * d..(r + 1) * d],
            );
        }
        Ok(())
    }
    fn bpr(
        &self,
        sp: &Vec<f32>,
        sn: &Vec<f32>,
        n: usize,
        loss: &mut Vec<f32>,
        dp: &mut Vec<f32>,
        dn: &mut Vec<f32>,
    ) -> Result<()> {
        for (what, len) in [
            ("sp", sp.len()),
            ("sn", sn.len()),
            ("loss", loss.len()),
            ("dp", dp.len()),
            ("dn", dn.len()),
        ] {
            fits(&format!("bpr: {what}"), len, n)?;
        }
        for r in 0..n {
            let z = sn[r] - sp[r];
            loss[r] = softplus(z);
            let g = sigmoid(z) / n as f32;
            dp[r] = -g;
            dn[r] = g;
        }
        Ok(())
    }
    fn mf_row_grads(
        &self,
        table: &Vec<f32>,
        d: usize,
        plan: &RowPlan<Vec<u32>>,
        trip: [&Vec<u32>; 3],
        dp: &Vec<f32>,
        dn: &Vec<f32>,
        rc: f32,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        fits("mf_row_grads: out", out.len(), plan.n_unique * d)?;
        let [users, pos, neg] = trip;
        let row = |r: u32| &table[r as usize * d..(r as usize + 1) * d];
        for s in 0..plan.n_unique {
            let own = row(plan.rows[s]);
            let acc = &mut out[s * d..(s + 1) * d];
            acc.iter_mut().for_each(|v| *v = 0.0);
            for &e in &plan.entries[plan.start[s] as usize..plan.start[s + 1] as usize] {
                let k = (e >> 2) as usize;
                for c in 0..d {
                    let term = match e & 3 {
                        0 => dp[k] * row(pos[k])[c] + dn[k] * row(neg[k])[c],
                        1 => dp[k] * row(users[k])[c],
                        _ => dn[k] * row(users[k])[c],
                    };
                    acc[c] += term + rc * own[c];
                }
            }
        }
        Ok(())
    }
    fn adam_rows(
        &self,
        table: &mut Vec<f32>,
        d: usize,
        plan: &RowPlan<Vec<u32>>,
        grads: &Vec<f32>,
        m: &mut Vec<f32>,
        v: &mut Vec<f32>,
        c: AdamCoefs,
    ) -> Result<()> {
        fits("adam_rows: grads", grads.len(), plan.n_unique * d)?;
        for s in 0..plan.n_unique {
            let r = plan.rows[s] as usize;
            ensure!(
                (r + 1) * d <= table.len(),
                "adam_rows: row {r} out of range"
            );
            for j in 0..d {
                let i = r * d + j;
                adam_elem(&c, &mut table[i], grads[s * d + j], &mut m[i], &mut v[i]);
            }
        }
        Ok(())
    }
    fn posterior_step(
        &self,
        c1: f32,
        c2: f32,
        x0_hat: &Vec<f32>,
        x: &mut Vec<f32>,
        noise: Option<(f32, &Vec<f32>)>,
        len: usize,
    ) -> Result<()> {
        fits("posterior_step: x0", x0_hat.len(), len)?;
        fits("posterior_step: x", x.len(), len)?;
        for k in 0..len {
            x[k] = c1 * x0_hat[k] + c2 * x[k];
        }
        if let Some((sd, eps)) = noise {
            fits("posterior_step: noise", eps.len(), len)?;
            crate::kernels::cpu::elementwise::axpy(sd, &eps[..len], &mut x[..len]);
        }
        Ok(())
    }
    fn draw(&self, seed: u64, what: Draw, n: usize, out: &mut Vec<f32>) -> Result<()> {
        fits("draw", out.len(), n)?;
        if let Draw::Keep(k) = what {
            ensure!(
                k > 0.0 && k <= 1.0,
                "draw: keep probability {k} outside (0, 1]"
            );
        }
        CpuOps::draw_into(seed, what, &mut out[..n]);
        Ok(())
    }
}

impl CpuOps {
    fn draw_into(seed: u64, what: Draw, out: &mut [f32]) {
        use crate::util::rng::{counter_normal, counter_uniform};
        use rayon::prelude::*;
        out.par_iter_mut()
            .enumerate()
            .with_min_len(4096)
            .for_each(|(i, o)| {
                *o = match what {
                    Draw::Normal => counter_normal(seed, i as u64),
                    Draw::Keep(keep) => {
                        if counter_uniform(seed, i as u64) < keep {
                            1.0 / keep
                        } else {
                            0.0
                        }
                    }
                }
            });
    }
}

/// One Adam update of one parameter (the formula of [`AdamCoefs`], as `kernels/optim.cu`).
#[inline]
fn adam_elem(c: &AdamCoefs, p: &mut f32, g: f32, m: &mut f32, v: &mut f32) {
    let gk = g + c.wd * *p;
    *m = c.b1 * *m + (1.0 - c.b1) * gk;
    *v = c.b2 * *v + (1.0 - c.b2) * (gk * gk);
    *p -= c.step * *m / ((*v * c.inv_bc2).sqrt() + c.eps);
}

/// The reweighting σ(s)^γ of a row (γ = 0: 1).
pub fn row_weight(score: f32, gamma: f32) -> f32 {
    if gamma == 0.0 {
        1.0
    } else {
        sigmoid(score).powf(gamma)
    }
}
