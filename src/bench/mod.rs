//! `ddrm bench`: throughput of ddrm's kernels, epochs and evaluation, beside the machine's
//! measured limits and, with `--vs`, the same operations in NumPy / SciPy / faiss / PyTorch
//! run from `benches/reference.py` in the same process tree, in A/B rounds (`--rounds`).

#[cfg(feature = "cuda")]
pub mod gpu;
pub mod svg;
pub mod timing;

use crate::backends::graph::Graph;
use crate::backends::trainer::TrainConfig;
use crate::backends::{Augment, Backend, Model, ModelConfig};
use crate::data::{Dataset, Split};
use crate::diffusion::ddrm::Ddrm;
use crate::kernels::cpu::topk::{fused_topk, PackedItems};
use crate::kernels::cpu::{gemm, Isa};
use crate::util::rng::Rng;
use anyhow::{Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use timing::{time, Timing};

/// A framework comparison: name, its median ms (median of the A/B rounds' medians), ratio
/// framework / ddrm (median of the rounds' paired ratios), note when missing, and each
/// round's ratio.
pub type Versus = (String, Option<f64>, Option<f64>, String, Vec<f64>);

/// One measured row.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// Suite.
    pub suite: String,
    /// Operation.
    pub name: String,
    /// Shape / data description.
    pub shape: String,
    /// ddrm timing.
    pub ddrm: Timing,
    /// Throughput value in `unit`.
    pub throughput: f64,
    /// Unit of the throughput.
    pub unit: String,
    /// Throughput as a fraction of the machine's measured limit, when meaningful.
    pub frac_of_limit: Option<f64>,
    /// Framework medians (ms) and ratio framework / ddrm (> 1: ddrm faster).
    pub vs: Vec<Versus>,
    /// Peak resident memory of the process after this row (MiB).
    pub peak_rss_mib: Option<f64>,
}

/// Machine limits.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Limits {
    /// Single-precision FMA peak, GFLOP/s.
    pub fma_gflops: f64,
    /// Read bandwidth, GB/s.
    pub bandwidth_gbs: f64,
    /// Threads.
    pub threads: usize,
}

/// Bench context.
pub struct Ctx {
    /// Repetitions.
    pub reps: usize,
    /// A/B rounds (ddrm, then the frameworks) when comparing.
    pub rounds: usize,
    /// Frameworks to compare with.
    pub vs: Vec<String>,
    /// Limits.
    pub limits: Limits,
    /// Python interpreter.
    pub python: String,
    /// Quiet.
    pub quiet: bool,
    /// Kernels suite: run only rows whose name or shape contains one of these (lower case).
    pub only: Vec<String>,
}

impl Ctx {
    /// Whether the row `name` / `shape` passes `--only`.
    pub fn wants(&self, name: &str, shape: &str) -> bool {
        only_matches(&self.only, name, shape)
    }
}

/// Whether the row `name` / `shape` passes `--only` texts `only` (lower case; empty: all).
pub fn only_matches(only: &[String], name: &str, shape: &str) -> bool {
    let text = format!("{name} {shape}").to_lowercase();
    only.is_empty() || only.iter().any(|o| text.contains(o.as_str()))
}

/// The element-wise rows of the CPU kernels suite, on a 2048 x 1000 matrix.
const ELEMENTWISE_ROWS: [&str; 2] = ["sigmoid", "tanh"];
const ELEMENTWISE_SHAPE: &str = "2048x1000";

/// The (name, shape) of every row of the kernels suite, on the GPU or the CPU, as `--only`
/// matches them: known before anything is measured.
pub fn kernel_rows(gpu: bool) -> Vec<(String, String)> {
    let mut rows: Vec<(String, String)> = GEMM_SHAPES
        .iter()
        .map(|&(m, n, k, ta, tb)| (gemm_name(ta, tb).to_string(), gemm_shape(m, n, k, ta, tb)))
        .collect();
    rows.push(("spmm".into(), String::new()));
    rows.push(("fused top-20".into(), String::new()));
    if gpu {
        rows.push(("DDRM inference + evaluation".into(), String::new()));
        rows.push(("DDRM epoch (MF recipe)".into(), String::new()));
    } else {
        rows.extend(
            ELEMENTWISE_ROWS
                .iter()
                .map(|e| (e.to_string(), ELEMENTWISE_SHAPE.to_string())),
        );
    }
    rows
}

/// Measure the machine's limits.
pub fn measure_limits() -> Limits {
    Limits {
        fma_gflops: crate::kernels::cpu::peak::fma_peak_gflops(),
        bandwidth_gbs: crate::kernels::cpu::peak::read_bandwidth_gbs(),
        threads: rayon::current_num_threads(),
    }
}

fn reference_script() -> PathBuf {
    let local = PathBuf::from("benches/reference.py");
    if local.is_file() {
        return local;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/reference.py")
}

/// Whether the reference script can run at all (python present).
pub fn python_available(python: &str) -> bool {
    std::process::Command::new(python)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn run_reference(
    ctx: &Ctx,
    op: &str,
    dir: &Path,
    fws: &[&str],
    reps: usize,
    warmup: usize,
) -> serde_json::Value {
    let out = std::process::Command::new(&ctx.python)
        .arg(reference_script())
        .arg(op)
        .arg(dir)
        .args([
            "--threads",
            &ctx.limits.threads.to_string(),
            "--reps",
            &reps.to_string(),
            "--warmup",
            &warmup.to_string(),
            "--frameworks",
            &fws.join(","),
        ])
        .output();
    match out {
        Ok(o) if o.status.success() => {
            serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null)
        }
        Ok(o) => {
            serde_json::json!({"error": String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("failed").to_string()})
        }
        Err(e) => serde_json::json!({"error": e.to_string()}),
    }
}

fn write_raw<T: bytemuck::Pod>(dir: &Path, name: &str, v: &[T]) -> Result<()> {
    std::fs::write(dir.join(name), bytemuck::cast_slice(v))
        .with_context(|| format!("writing {name}"))
}

/// Time ddrm (A) and the frameworks (B) alternately, `ctx.rounds` rounds of A then B, with
/// `ctx.reps` repetitions and one warm-up run each; returns ddrm timing and comparisons.
fn ab(
    ctx: &Ctx,
    op: &str,
    dir: Option<&Path>,
    fws: &[&str],
    f: impl FnMut(),
) -> (Timing, Vec<Versus>) {
    ab_with(ctx, op, dir, fws, ctx.reps, 1, f)
}

/// Median of a non-empty list (mean of the middle two when even).
fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let h = s.len() / 2;
    if s.len() % 2 == 1 {
        s[h]
    } else {
        (s[h - 1] + s[h]) / 2.0
    }
}

/// [`ab`] with explicit repetitions and warm-up runs per side and round (long operations
/// such as whole epochs use 1 and 0). Each round times ddrm, then runs the frameworks right
/// after it, so that a pair sees the same state of a shared machine. The reported medians
/// are the medians of the rounds' medians; a framework's ratio is the median of the rounds'
/// paired ratios (framework / ddrm), and its range is kept per round in the row.
fn ab_with(
    ctx: &Ctx,
    op: &str,
    dir: Option<&Path>,
    fws: &[&str],
    reps: usize,
    warmup: usize,
    mut f: impl FnMut(),
) -> (Timing, Vec<Versus>) {
    let fws: Vec<&str> = fws
        .iter()
        .copied()
        .filter(|f| ctx.vs.iter().any(|v| v == f))
        .collect();
    let Some(dir) = dir.filter(|_| !fws.is_empty()) else {
        return (time(warmup, reps, &mut f), vec![]);
    };
    let mut ours: Vec<Timing> = Vec::new();
    let mut theirs: Vec<serde_json::Value> = Vec::new();
    for _ in 0..ctx.rounds.max(1) {
        ours.push(time(warmup, reps, &mut f));
        theirs.push(run_reference(ctx, op, dir, &fws, reps, warmup));
        // let the system settle after the framework process exits (freeing its memory keeps
        // a core busy for a moment; measured: 2x slower 2-thread GEMM right after); after the
        // last round too, since the next row's ddrm timing comes next
        std::thread::sleep(SETTLE);
    }
    let medians: Vec<f64> = ours.iter().map(|t| t.median_ms).collect();
    let a = Timing {
        median_ms: median(&medians),
        min_ms: ours.iter().map(|t| t.min_ms).fold(f64::INFINITY, f64::min),
        max_ms: ours.iter().map(|t| t.max_ms).fold(0.0, f64::max),
        reps: ours.iter().map(|t| t.reps).sum(),
    };
    let vs = fws
        .iter()
        .map(|fw| {
            // a round's note: the framework's own "missing" reason or the script's error
            let round_note = |b: &serde_json::Value| {
                b[fw]["missing"]
                    .as_str()
                    .or(b["error"].as_str())
                    .unwrap_or("")
                    .to_string()
            };
            // the rounds where the framework ran, paired with ddrm's median of the same round
            let pairs: Vec<(f64, f64)> = theirs
                .iter()
                .zip(&medians)
                .filter_map(|(b, &a)| b[fw]["median_ms"].as_f64().map(|ms| (ms, a)))
                .collect();
            if pairs.is_empty() {
                let note = theirs.iter().map(round_note).find(|n| !n.is_empty());
                return (
                    fw.to_string(),
                    None,
                    None,
                    note.unwrap_or_else(|| "not run".into()),
                    vec![],
                );
            }
            let ms: Vec<f64> = pairs.iter().map(|p| p.0).collect();
            let ratios: Vec<f64> = pairs.iter().map(|(b, a)| b / a).collect();
            let note = if pairs.len() < theirs.len() {
                let why = theirs
                    .iter()
                    .filter(|b| b[fw]["median_ms"].as_f64().is_none())
                    .map(round_note)
                    .find(|n| !n.is_empty())
                    .unwrap_or_else(|| "not run".into());
                format!(
                    "ran in {} of {} rounds (other rounds: {why})",
                    pairs.len(),
                    theirs.len()
                )
            } else {
                String::new()
            };
            (
                fw.to_string(),
                Some(median(&ms)),
                Some(median(&ratios)),
                note,
                ratios,
            )
        })
        .collect();
    (a, vs)
}

const SETTLE: std::time::Duration = std::time::Duration::from_secs(2);

fn tmpdir() -> Result<tempfile::TempDir> {
    tempfile::tempdir().context("cannot create a temporary directory")
}

/// (m, n, k, A transposed, B transposed): the forward products of the DDRM denoiser
/// (138-1000-100-1000-64) and of the DiffRec/MultiVAE-sized MLP (138-600-200-64), then the
/// denoiser's backward products: dW = Xᵀ·dY (K = batch) and dX = dY·Wᵀ.
pub const GEMM_SHAPES: &[(usize, usize, usize, bool, bool)] = &[
    (2048, 1000, 138, false, false),
    (2048, 100, 1000, false, false),
    (2048, 1000, 100, false, false),
    (2048, 64, 1000, false, false),
    (2048, 600, 138, false, false),
    (2048, 200, 600, false, false),
    (2048, 64, 200, false, false),
    (138, 1000, 2048, true, false),
    (1000, 100, 2048, true, false),
    (100, 1000, 2048, true, false),
    (1000, 64, 2048, true, false),
    (2048, 1000, 100, false, true),
    (2048, 100, 1000, false, true),
    (2048, 1000, 64, false, true),
];

/// The operands of one GEMM case (normal values, seed 1) and the reference script's folder.
fn gemm_case(
    m: usize,
    n: usize,
    k: usize,
    ta: bool,
    tb: bool,
) -> Result<(Vec<f32>, Vec<f32>, tempfile::TempDir)> {
    let mut r = Rng::new(1);
    let mut a = vec![0f32; m * k];
    let mut b = vec![0f32; k * n];
    r.fill_normal(&mut a, 1.0);
    r.fill_normal(&mut b, 1.0);
    let dir = tmpdir()?;
    std::fs::write(
        dir.path().join("meta.json"),
        serde_json::to_vec(&serde_json::json!({"m": m, "n": n, "k": k, "ta": ta, "tb": tb}))?,
    )?;
    Ok((a, b, dir))
}

/// "m x k · k x n" with the stored transposes shown.
/// The row name of a GEMM form: the forward product, or a layer's backward products
/// dW = Xᵀ·dY and dX = dY·Wᵀ.
pub(crate) fn gemm_name(ta: bool, tb: bool) -> &'static str {
    match (ta, tb) {
        (false, false) => "gemm",
        (true, _) => "gemm dW",
        (false, true) => "gemm dX",
    }
}

fn gemm_shape(m: usize, n: usize, k: usize, ta: bool, tb: bool) -> String {
    match (ta, tb) {
        (false, false) => format!("{m}x{k} · {k}x{n}"),
        (true, _) => format!("({k}x{m})ᵀ · {k}x{n}"),
        (false, true) => format!("{m}x{k} · ({n}x{k})ᵀ"),
    }
}

/// The dataset's normalized graph, a random d-wide x, and the reference script's folder.
fn spmm_case(ds: &Dataset, d: usize) -> Result<(Graph, Vec<f32>, tempfile::TempDir)> {
    let g = Graph::new(ds);
    let n = g.n_nodes();
    let mut x = vec![0f32; n * d];
    Rng::new(2).fill_normal(&mut x, 1.0);
    let dir = tmpdir()?;
    write_raw(dir.path(), "indptr.bin", &g.adj.indptr)?;
    write_raw(dir.path(), "indices.bin", &g.adj.indices)?;
    write_raw(dir.path(), "values.bin", &g.adj.values)?;
    std::fs::write(
        dir.path().join("meta.json"),
        serde_json::to_vec(&serde_json::json!({"n": n, "d": d}))?,
    )?;
    Ok((g, x, dir))
}

/// Top-K evaluation data: every test user's random query (d = 64), random items, and, when
/// frameworks are compared, the merged train + valid mask rows in the reference's folder.
struct TopkCase {
    users: Vec<u32>,
    q: Vec<f32>,
    it: Vec<f32>,
    d: usize,
    k: usize,
    dir: tempfile::TempDir,
}

fn topk_case(ds: &Dataset, write: bool) -> Result<TopkCase> {
    let (d, k) = (64, 20);
    let users = crate::eval::eval_users(ds, Split::Test);
    let (nu, ni) = (users.len(), ds.n_items());
    let mut r = Rng::new(4);
    let mut q = vec![0f32; nu * d];
    let mut it = vec![0f32; ni * d];
    r.fill_normal(&mut q, 0.3);
    r.fill_normal(&mut it, 0.3);
    let masks = [ds.train(), ds.valid()];
    let dir = tmpdir()?;
    if write {
        // merged sorted mask rows of the evaluated users
        let mut ptr = vec![0u32];
        let mut idx: Vec<u32> = Vec::new();
        for &u in &users {
            let mut m: Vec<u32> = masks
                .iter()
                .flat_map(|c| c.row(u as usize).iter().copied())
                .collect();
            m.sort_unstable();
            idx.extend(m);
            ptr.push(idx.len() as u32);
        }
        write_raw(dir.path(), "queries.bin", &q)?;
        write_raw(dir.path(), "items.bin", &it)?;
        write_raw(dir.path(), "mask_indptr.bin", &ptr)?;
        write_raw(dir.path(), "mask_indices.bin", &idx)?;
        std::fs::write(
            dir.path().join("meta.json"),
            serde_json::to_vec(&serde_json::json!({"users": nu, "items": ni, "d": d, "k": k}))?,
        )?;
    }
    Ok(TopkCase {
        users,
        q,
        it,
        d,
        k,
        dir,
    })
}

/// Suite `kernels`: GEMM at the model shapes, SpMM on the dataset graph, fused top-K,
/// element-wise.
pub fn kernels(ctx: &Ctx, ds: &Dataset) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for &(m, n, k, ta, tb) in GEMM_SHAPES {
        if !ctx.wants(gemm_name(ta, tb), &gemm_shape(m, n, k, ta, tb)) {
            continue;
        }
        let (a, b, dir) = gemm_case(m, n, k, ta, tb)?;
        let mut c = vec![0f32; m * n];
        let (t, vs) = ab(ctx, "gemm", Some(dir.path()), &["numpy", "torch"], || {
            gemm(ta, tb, m, n, k, 1.0, &a, &b, 0.0, &mut c)
        });
        let gf = 2.0 * (m * n * k) as f64 / t.median_ms / 1e6;
        rows.push(Row {
            suite: "kernels".into(),
            name: gemm_name(ta, tb).into(),
            shape: gemm_shape(m, n, k, ta, tb),
            ddrm: t,
            throughput: gf,
            unit: "GFLOP/s".into(),
            frac_of_limit: Some(gf / ctx.limits.fma_gflops),
            vs,
            peak_rss_mib: timing::peak_rss_mib(),
        });
    }
    if ctx.wants("spmm", "") {
        rows.push(spmm_row(ctx, ds)?);
    }
    if ctx.wants("fused top-20", "") {
        rows.extend(eval_topk(ctx, ds, "kernels")?);
    }
    // element-wise
    let mut e = vec![0f32; 2048 * 1000];
    Rng::new(3).fill_normal(&mut e, 2.0);
    for (name, f) in ELEMENTWISE_ROWS.into_iter().zip([
        crate::kernels::cpu::elementwise::sigmoid_inplace as fn(&mut [f32]),
        crate::kernels::cpu::elementwise::tanh_inplace,
    ]) {
        if !ctx.wants(name, ELEMENTWISE_SHAPE) {
            continue;
        }
        let t = time(2, ctx.reps, || f(&mut e));
        let gbs = (e.len() * 8) as f64 / t.median_ms / 1e6;
        rows.push(Row {
            suite: "kernels".into(),
            name: name.into(),
            shape: ELEMENTWISE_SHAPE.into(),
            ddrm: t,
            throughput: gbs,
            unit: "GB/s".into(),
            frac_of_limit: Some(gbs / ctx.limits.bandwidth_gbs),
            vs: vec![],
            peak_rss_mib: timing::peak_rss_mib(),
        });
    }
    Ok(rows)
}

/// SpMM on the dataset's normalized graph, d = 64, against scipy and torch.
fn spmm_row(ctx: &Ctx, ds: &Dataset) -> Result<Row> {
    let d = 64;
    let (g, x, dir) = spmm_case(ds, d)?;
    let n = g.n_nodes();
    let mut y = vec![0f32; n * d];
    let (t, vs) = ab(ctx, "spmm", Some(dir.path()), &["scipy", "torch"], || {
        crate::kernels::cpu::spmm::spmm(&g.adj, &x, d, &mut y)
    });
    let gbs = g.adj.spmm_bytes(d) / t.median_ms / 1e6;
    Ok(Row {
        suite: "kernels".into(),
        name: "spmm".into(),
        shape: format!("{n} nodes, {} nnz, d={d}", g.adj.nnz()),
        ddrm: t,
        throughput: gbs,
        unit: "GB/s (effective)".into(),
        frac_of_limit: Some(gbs / ctx.limits.bandwidth_gbs),
        vs,
        peak_rss_mib: timing::peak_rss_mib(),
    })
}

/// Full-ranking top-20 of all test users against all items (random embeddings, d = 64,
/// train + valid masked): fused kernel vs NumPy blocks and faiss.
pub fn eval_topk(ctx: &Ctx, ds: &Dataset, suite: &str) -> Result<Vec<Row>> {
    eval_topk_reps(ctx, ds, suite, ctx.reps)
}

fn eval_topk_reps(ctx: &Ctx, ds: &Dataset, suite: &str, reps: usize) -> Result<Vec<Row>> {
    let TopkCase {
        users,
        q,
        it,
        d,
        k,
        dir,
    } = topk_case(ds, !ctx.vs.is_empty())?;
    let (nu, ni) = (users.len(), ds.n_items());
    let masks = [ds.train(), ds.valid()];
    let (t, vs) = ab_with(
        ctx,
        "topk",
        Some(dir.path()),
        &["numpy", "faiss", "torch"],
        reps,
        1,
        || {
            let packed = PackedItems::new(&it, ni, d);
            std::hint::black_box(fused_topk(Isa::detect(), &q, &packed, k, &masks, &users));
        },
    );
    let gf = 2.0 * (nu * ni * d) as f64 / t.median_ms / 1e6;
    Ok(vec![Row {
        suite: suite.into(),
        name: "fused top-20".into(),
        shape: format!("{nu} users x {ni} items, d={d}"),
        ddrm: t,
        throughput: nu as f64 / t.median_ms * 1e3,
        unit: format!("users/s ({gf:.0} GFLOP/s)"),
        frac_of_limit: Some(gf / ctx.limits.fma_gflops),
        vs,
        peak_rss_mib: timing::peak_rss_mib(),
    }])
}

fn backend_cfg(b: Backend) -> TrainConfig {
    TrainConfig {
        model: ModelConfig {
            backend: b,
            dim: 64,
            layers: if b == Backend::Mf { 0 } else { 3 },
            reg: 1e-4,
            lr: 1e-3,
            augment: Augment::Ed,
            drop_ratio: 0.1,
            tau: 0.2,
            ssl_weight: 0.1,
            objective: crate::denoising::Objective::Bpr,
        },
        batch: 2048,
        epochs: 1,
        eval_every: 1,
        patience: 1,
        seed: 1,
        ks: vec![20],
    }
}

/// Write the train CSR, the normalized graph (graph backends) and `meta` into `dir` for the
/// reference script's epoch baselines.
fn write_epoch_data(
    dir: &Path,
    ds: &Dataset,
    graph: Option<&Graph>,
    meta: serde_json::Value,
) -> Result<()> {
    let tr = ds.train();
    write_raw(dir, "train_indptr.bin", tr.indptr)?;
    write_raw(dir, "train_indices.bin", tr.indices)?;
    if let Some(g) = graph {
        write_raw(dir, "indptr.bin", &g.adj.indptr)?;
        write_raw(dir, "indices.bin", &g.adj.indices)?;
        write_raw(dir, "values.bin", &g.adj.values)?;
    }
    let mut meta = meta;
    meta["n_users"] = ds.n_users().into();
    meta["n_items"] = ds.n_items().into();
    std::fs::write(dir.join("meta.json"), serde_json::to_vec(&meta)?)?;
    Ok(())
}

/// Suite `epoch`: one training epoch of MF, LightGCN, SGL (batch 2048) and DDRM (MF recipe),
/// each against the same epoch written in PyTorch (`--vs torch`).
pub fn epoch(ctx: &Ctx, ds: &Dataset, models: &[String]) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let nnz = ds.train().nnz();
    let wanted = |name: &str| models.iter().any(|m| m == name);
    for b in [Backend::Mf, Backend::Lightgcn, Backend::Sgl] {
        let key = match b {
            Backend::Mf => "mf",
            Backend::Lightgcn => "lightgcn",
            Backend::Sgl => "sgl",
        };
        if !wanted(key) {
            continue;
        }
        let cfg = backend_cfg(b);
        let mut model = Model::new(cfg.model.clone(), ds, 1);
        let dir = tmpdir()?;
        let (op, fws): (&str, &[&str]) = match b {
            Backend::Mf => ("mf_epoch", &["torch"]),
            Backend::Lightgcn => ("lightgcn_epoch", &["torch"]),
            Backend::Sgl => ("sgl_epoch", &["torch"]),
        };
        if ctx.vs.iter().any(|v| v == "torch") && !fws.is_empty() {
            write_epoch_data(
                dir.path(),
                ds,
                model.graph(),
                serde_json::json!({
                    "d": cfg.model.dim, "layers": cfg.model.layers, "batch": cfg.batch,
                    "lr": cfg.model.lr, "reg": cfg.model.reg,
                    "drop_ratio": cfg.model.drop_ratio, "tau": cfg.model.tau,
                    "ssl_weight": cfg.model.ssl_weight,
                }),
            )?;
        }
        let mut ep = 0u64;
        let reps = if b == Backend::Mf { ctx.reps } else { 1 };
        let (t, vs) = ab_with(ctx, op, Some(dir.path()), fws, reps, 0, || {
            ep += 1;
            crate::backends::trainer::run_epoch(&mut model, ds, 1, ep, cfg.batch);
        });
        rows.push(Row {
            suite: "epoch".into(),
            name: format!("{} epoch", b.label()),
            shape: format!("{nnz} interactions, batch 2048"),
            ddrm: t,
            throughput: nnz as f64 / t.median_ms * 1e3,
            unit: "interactions/s".into(),
            frac_of_limit: None,
            vs,
            peak_rss_mib: timing::peak_rss_mib(),
        });
    }
    if !wanted("ddrm") {
        return Ok(rows);
    }
    let dir = tmpdir()?;
    let mut m = ddrm_epoch_model(ds, dir.path(), ctx.vs.iter().any(|v| v == "torch"))?;
    let mut trainer = crate::diffusion::ddrm::DdrmTrainer::new(&m);
    let flops = m.flops_per_sample() * nnz as f64;
    let mut ep = 0;
    let (t, vs) = ab_with(
        ctx,
        "ddrm_epoch",
        Some(dir.path()),
        &["torch"],
        1,
        0,
        || {
            ep += 1;
            std::hint::black_box(trainer.epoch(&mut m, ds, ep));
        },
    );
    let gf = flops / t.median_ms / 1e6;
    rows.push(Row {
        suite: "epoch".into(),
        name: "DDRM epoch (MF recipe)".into(),
        shape: format!("{nnz} samples, 2 denoisers 138-1000-100-1000-64"),
        ddrm: t,
        throughput: gf,
        unit: "GFLOP/s".into(),
        frac_of_limit: Some(gf / ctx.limits.fma_gflops),
        vs,
        peak_rss_mib: timing::peak_rss_mib(),
    });
    Ok(rows)
}

/// The DDRM of the "DDRM epoch" rows: the authors' MF recipe (two denoisers
/// 138-1000-100-1000-64, batch 2048) over random embeddings; with `write`, the data the
/// PyTorch reference reads (`ddrm_epoch` in `benches/reference.py`) goes into `dir`.
pub(crate) fn ddrm_epoch_model(ds: &Dataset, dir: &Path, write: bool) -> Result<Ddrm> {
    let m = authors_mf_model(ds, 1000, &[20])?;
    if write {
        write_raw(dir, "emb.bin", &m.emb)?;
        write_epoch_data(
            dir,
            ds,
            None,
            serde_json::json!({ "d": m.d, "ddrm": m.cfg }),
        )?;
    }
    Ok(m)
}

/// The benchmarks' DDRM: the authors' MF recipe (one epoch, validation every `eval_every`,
/// cut-offs `ks`) over random embeddings of width 64 (seed 5, std 0.3).
fn authors_mf_model(ds: &Dataset, eval_every: usize, ks: &[usize]) -> Result<Ddrm> {
    let cfg = crate::cli::ddrm_cmd::ddrm_config(
        &crate::cli::ddrm_cmd::DdrmArgs {
            preset: Some(crate::cli::ddrm_cmd::Preset::AuthorsMf),
            ..Default::default()
        },
        None,
        None,
        Some(1),
        eval_every,
        1,
        1,
        ks,
    )?;
    let d = 64;
    let mut emb = vec![0f32; (ds.n_users() + ds.n_items()) * d];
    Rng::new(5).fill_normal(&mut emb, 0.3);
    Ddrm::new(cfg, emb, ds.n_users(), d)
}

/// Suite `eval`: full-ranking evaluation and DDRM inference (MF recipe, T' = 20) for all test users.
pub fn eval(ctx: &Ctx, ds: &Dataset) -> Result<Vec<Row>> {
    let mut rows = eval_topk(ctx, ds, "eval")?;
    let (m, shape) = eval_ddrm(ds)?;
    let nu = crate::eval::eval_users(ds, Split::Test).len();
    let t = time(1, ctx.reps, || {
        std::hint::black_box(m.evaluate(ds, Split::Test, 1));
    });
    rows.push(eval_ddrm_row("eval", shape, t, nu));
    Ok(rows)
}

/// The DDRM of the "DDRM inference + evaluation" rows: the authors' MF recipe (MLP
/// 138-1000-100-1000-64, T' = 20) over random embeddings, and its shape label.
pub(crate) fn eval_ddrm(ds: &Dataset) -> Result<(Ddrm, String)> {
    let m = authors_mf_model(ds, 1, &[10, 20])?;
    let nu = crate::eval::eval_users(ds, Split::Test).len();
    let shape = format!("{nu} users, T'=20, 138-1000-100-1000-64");
    Ok((m, shape))
}

/// A "DDRM inference + evaluation" row: `nu` users in `t`.
pub(crate) fn eval_ddrm_row(suite: &str, shape: String, t: timing::Timing, nu: usize) -> Row {
    Row {
        suite: suite.into(),
        name: "DDRM inference + evaluation".into(),
        shape,
        ddrm: t,
        throughput: nu as f64 / t.median_ms * 1e3,
        unit: "users/s".into(),
        frac_of_limit: None,
        vs: vec![],
        peak_rss_mib: timing::peak_rss_mib(),
    }
}

/// Suite `scale`: MF epoch and full-ranking evaluation on synthetic datasets of the
/// Amazon-book shape (108,822 x 178,181 x 3.15M) scaled by `fractions`; with `--vs`, the
/// frameworks' times are measured at every size too and drawn beside ddrm's.
pub fn scale(ctx: &Ctx, fractions: &[f64], out: &Path) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    // series name -> points, for the epoch and the evaluation plots
    let mut ep_pts: Vec<(String, Vec<(f64, f64)>)> = vec![("ddrm".into(), vec![])];
    let mut ev_pts: Vec<(String, Vec<(f64, f64)>)> = vec![("ddrm".into(), vec![])];
    let add =
        |series: &mut Vec<(String, Vec<(f64, f64)>)>, name: &str, x: f64, ms: f64| match series
            .iter_mut()
            .find(|s| s.0 == name)
        {
            Some(s) => s.1.push((x, ms / 1e3)),
            None => series.push((name.to_string(), vec![(x, ms / 1e3)])),
        };
    for &f in fractions {
        let (u, i, n) = (
            (108_822.0 * f) as usize,
            (178_181.0 * f) as usize,
            (3_145_223.0 * f) as usize,
        );
        let parts = crate::data::synth::generate(&crate::data::synth::SynthConfig {
            users: u,
            items: i,
            interactions: n,
            item_exponent: 0.9,
            user_exponent: 0.6,
            seed: 1,
        })?;
        let ds = Dataset::from_parts(&parts)?;
        let nnz = ds.train().nnz();
        let cfg = backend_cfg(Backend::Mf);
        let mut model = Model::new(cfg.model.clone(), &ds, 1);
        let dir = tmpdir()?;
        if ctx.vs.iter().any(|v| v == "torch") {
            write_epoch_data(
                dir.path(),
                &ds,
                None,
                serde_json::json!({
                    "d": cfg.model.dim, "layers": 0, "batch": cfg.batch,
                    "lr": cfg.model.lr, "reg": cfg.model.reg,
                }),
            )?;
        }
        let mut ep = 0;
        let (t, vs) = ab_with(ctx, "mf_epoch", Some(dir.path()), &["torch"], 1, 0, || {
            ep += 1;
            crate::backends::trainer::run_epoch(&mut model, &ds, 1, ep, cfg.batch);
        });
        add(&mut ep_pts, "ddrm", nnz as f64, t.median_ms);
        for v in &vs {
            if let Some(ms) = v.1 {
                add(&mut ep_pts, &v.0, nnz as f64, ms);
            }
        }
        rows.push(Row {
            suite: "scale".into(),
            name: "MF epoch".into(),
            shape: format!("x{f}: {u} x {i}, {nnz} train"),
            ddrm: t,
            throughput: nnz as f64 / t.median_ms * 1e3,
            unit: "interactions/s".into(),
            frac_of_limit: None,
            vs,
            peak_rss_mib: timing::peak_rss_mib(),
        });
        let mut ev = eval_topk_reps(ctx, &ds, "scale", 1)?;
        for r in ev.iter_mut() {
            r.shape = format!("x{f}: {}", r.shape);
            let x = (u * i) as f64;
            add(&mut ev_pts, "ddrm", x, r.ddrm.median_ms);
            for v in &r.vs {
                if let Some(ms) = v.1 {
                    add(&mut ev_pts, &v.0, x, ms);
                }
            }
        }
        if !ctx.quiet {
            eprintln!(
                "scale x{f}: MF epoch {:.2} s, full-ranking eval {:.2} s",
                t.median_ms / 1e3,
                ev[0].ddrm.median_ms / 1e3
            );
        }
        rows.extend(ev);
    }
    let series = |pts: &[(String, Vec<(f64, f64)>)]| -> Vec<svg::Series> {
        pts.iter()
            .map(|(name, p)| svg::Series {
                name: format!("{name} (slope {:.2})", svg::loglog_slope(p)),
                points: p.clone(),
            })
            .collect()
    };
    let s1 = svg::loglog(
        "MF-BPR epoch time vs train interactions",
        "train interactions",
        "seconds",
        &series(&ep_pts),
    );
    let s2 = svg::loglog(
        "Full-ranking top-20 time vs users x items",
        "users x items",
        "seconds",
        &series(&ev_pts),
    );
    std::fs::create_dir_all(out)?;
    crate::util::atomic::write_atomic(&out.join("scale-epoch.svg"), s1.as_bytes())?;
    crate::util::atomic::write_atomic(&out.join("scale-eval.svg"), s2.as_bytes())?;
    if !ctx.quiet {
        for (what, pts) in [
            ("MF epoch time ~ interactions", &ep_pts),
            ("eval time ~ (users x items)", &ev_pts),
        ] {
            for (name, p) in pts.iter() {
                eprintln!(
                    "growth exponent, {what}: {name} {:.2}",
                    svg::loglog_slope(p)
                );
            }
        }
        eprintln!("plots: {}", out.display());
    }
    Ok(rows)
}
