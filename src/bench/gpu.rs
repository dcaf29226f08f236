//! `ddrm bench kernels --device cuda` (feature `cuda`): the CUDA kernels at the shapes of the
//! CPU suite (GEMM at the model shapes, SpMM on the dataset graph, fused top-20 of every test
//! user), each timed to completion on the stream, with `--vs torch-cuda` (PyTorch on the same
//! GPU: cuBLAS, cuSPARSE, matmul + topk) interleaved A B A B as on the CPU; and DDRM
//! inference + evaluation and a DDRM training epoch on the GPU, the models of the CPU rows
//! of `ddrm bench eval` and `ddrm bench epoch`.
//!
//! Written without a GPU to run it on: the kernels' correctness is covered by
//! `tests/kernels_cuda.rs`, and this suite has not produced figures yet.

use super::{
    ab, gemm_case, gemm_name, gemm_shape, spmm_case, timing, topk_case, Ctx, Row, TopkCase,
    GEMM_SHAPES,
};
use crate::data::{Dataset, Split};
use crate::device::Device;
use crate::diffusion::ddrm_device::DeviceDdrm;
use crate::kernels::cuda::{Gpu, GpuCsr, GpuEpilogue};
use anyhow::Result;

const FW: &[&str] = &["torch-cuda"];

/// Run `op` once (its error is returned), then time it with a stream synchronization.
fn timed(
    ctx: &Ctx,
    name: &str,
    dir: &std::path::Path,
    gpu: &Gpu,
    mut op: impl FnMut() -> Result<()>,
) -> Result<(timing::Timing, Vec<super::Versus>)> {
    op()?;
    gpu.synchronize()?;
    Ok(ab(ctx, name, Some(dir), FW, || {
        op().expect("a GPU operation failed after succeeding once");
        gpu.synchronize().expect("CUDA stream synchronization");
    }))
}

/// The GPU kernel suite on device 0.
pub fn kernels(ctx: &Ctx, ds: &Dataset) -> Result<Vec<Row>> {
    let dev = Device::open("cuda")?;
    let Device::Cuda(gpu) = &dev else {
        unreachable!("Device::open(\"cuda\") opens a GPU or fails")
    };
    let gpu: &Gpu = gpu;
    if !ctx.quiet {
        eprintln!("GPU: {}", gpu.name());
    }
    let mut rows = Vec::new();
    for &(m, n, k, ta, tb) in GEMM_SHAPES {
        if !ctx.wants(gemm_name(ta, tb), &gemm_shape(m, n, k, ta, tb)) {
            continue;
        }
        let (a, b, dir) = gemm_case(m, n, k, ta, tb)?;
        let (ga, gb) = (gpu.upload(&a)?, gpu.upload(&b)?);
        let mut gc = gpu.zeros::<f32>(m * n)?;
        let (t, vs) = timed(ctx, "gemm", dir.path(), gpu, || {
            gpu.gemm(
                ta,
                tb,
                m,
                n,
                k,
                1.0,
                &ga,
                &gb,
                0.0,
                &mut gc,
                GpuEpilogue::default(),
            )
        })?;
        let gf = 2.0 * (m * n * k) as f64 / t.median_ms / 1e6;
        rows.push(row(
            gemm_name(ta, tb),
            gemm_shape(m, n, k, ta, tb),
            t,
            gf,
            "GFLOP/s",
            vs,
        ));
    }
    if ctx.wants("spmm", "") {
        rows.push(spmm_row(ctx, ds, gpu)?);
    }
    if ctx.wants("fused top-20", "") {
        rows.push(topk_row(ctx, ds, gpu)?);
    }
    if ctx.wants("DDRM inference + evaluation", "") {
        // the same model and users as the CPU row of `ddrm bench eval`
        let (m, shape) = super::eval_ddrm(ds)?;
        let nu = crate::eval::eval_users(ds, Split::Test).len();
        m.evaluate_on(&dev, ds, Split::Test, 1)?;
        let t = timing::time(0, ctx.reps, || {
            std::hint::black_box(
                m.evaluate_on(&dev, ds, Split::Test, 1)
                    .expect("GPU evaluation failed after succeeding once"),
            );
        });
        rows.push(super::eval_ddrm_row("kernels-cuda", shape, t, nu));
    }
    if ctx.wants("DDRM epoch (MF recipe)", "") {
        rows.push(ddrm_epoch_row(ctx, ds, gpu)?);
    }
    Ok(rows)
}

/// One DDRM training epoch on the GPU (the model of `ddrm bench epoch`'s DDRM row), against
/// the same epoch in PyTorch on the GPU (`--vs torch-cuda`).
fn ddrm_epoch_row(ctx: &Ctx, ds: &Dataset, gpu: &Gpu) -> Result<Row> {
    let dir = super::tmpdir()?;
    let vs_torch = ctx.vs.iter().any(|v| v == "torch-cuda");
    let m = super::ddrm_epoch_model(ds, dir.path(), vs_torch)?;
    let mut dev = DeviceDdrm::new(gpu, &m, m.cfg.batch)?;
    dev.epoch(&m, ds, 0)?; // warm-up: module loading, first launches
    let mut ep = 0;
    let (t, vs) = super::ab_with(ctx, "ddrm_epoch", Some(dir.path()), FW, 1, 0, || {
        ep += 1;
        std::hint::black_box(
            dev.epoch(&m, ds, ep)
                .expect("a GPU epoch failed after succeeding once"),
        );
    });
    let nnz = ds.train().nnz();
    let gf = m.flops_per_sample() * nnz as f64 / t.median_ms / 1e6;
    let shape = format!("{nnz} samples, 2 denoisers 138-1000-100-1000-64");
    Ok(row("DDRM epoch (MF recipe)", shape, t, gf, "GFLOP/s", vs))
}

/// SpMM on the dataset's normalized graph, d = 64.
fn spmm_row(ctx: &Ctx, ds: &Dataset, gpu: &Gpu) -> Result<Row> {
    let d = 64;
    let (g, x, dir) = spmm_case(ds, d)?;
    let ga = GpuCsr::from_sparse(gpu, &g.adj)?;
    let gx = gpu.upload(&x)?;
    let mut gy = gpu.zeros::<f32>(g.n_nodes() * d)?;
    let (t, vs) = timed(ctx, "spmm", dir.path(), gpu, || {
        gpu.spmm(&ga, &gx, d, 0.0, &mut gy)
    })?;
    let gbs = g.adj.spmm_bytes(d) / t.median_ms / 1e6;
    let shape = format!("{} nodes, {} nnz, d={d}", g.n_nodes(), g.adj.nnz());
    Ok(row("spmm", shape, t, gbs, "GB/s (effective)", vs))
}

/// The fused top-20 of all test users (train and valid masked).
fn topk_row(ctx: &Ctx, ds: &Dataset, gpu: &Gpu) -> Result<Row> {
    let TopkCase {
        users,
        q,
        it,
        d,
        k,
        dir,
    } = topk_case(ds, !ctx.vs.is_empty())?;
    let (nu, ni) = (users.len(), ds.n_items());
    let masks = [
        GpuCsr::from_view(gpu, &ds.train())?,
        GpuCsr::from_view(gpu, &ds.valid())?,
    ];
    let (gq, gi, gu) = (gpu.upload(&q)?, gpu.upload(&it)?, gpu.upload(&users)?);
    let (mut oi, mut os) = (gpu.zeros::<u32>(nu * k)?, gpu.zeros::<f32>(nu * k)?);
    let (t, vs) = timed(ctx, "topk", dir.path(), gpu, || {
        gpu.fused_topk(
            &gq,
            &gi,
            ni,
            d,
            k,
            &gu,
            nu,
            &[&masks[0], &masks[1]],
            &mut oi,
            &mut os,
        )
    })?;
    let gf = 2.0 * (nu * ni * d) as f64 / t.median_ms / 1e6;
    let shape = format!("{nu} users x {ni} items, d={d}");
    Ok(row("fused top-20", shape, t, gf, "GFLOP/s", vs))
}

fn row(
    name: &str,
    shape: String,
    t: timing::Timing,
    throughput: f64,
    unit: &str,
    vs: Vec<super::Versus>,
) -> Row {
    Row {
        suite: "kernels-cuda".into(),
        name: name.into(),
        shape,
        ddrm: t,
        throughput,
        unit: unit.into(),
        frac_of_limit: None,
        vs,
        peak_rss_mib: timing::peak_rss_mib(),
    }
}
