//! `ddrm bench SUITE`.

use super::table::render;
use crate::bench::{self, Ctx, Row};
use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use std::path::PathBuf;

/// Benchmark suites.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Suite {
    /// GEMM at model shapes, SpMM, fused top-K, element-wise.
    Kernels,
    /// One training epoch of MF, LightGCN, SGL and DDRM.
    Epoch,
    /// Full-ranking evaluation and DDRM inference.
    Eval,
    /// Epoch and evaluation time as the Amazon-book-shaped synthetic data grows.
    Scale,
}

/// Options of `ddrm bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Suite to run.
    #[arg(value_enum)]
    pub suite: Suite,
    /// Dataset (name or path) for kernels/epoch/eval.
    #[arg(long, default_value = "ml1m-noisy")]
    pub dataset: String,
    /// Device.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Timed repetitions per row (per A/B round; whole epochs are timed once per round).
    #[arg(long, default_value_t = 10)]
    pub reps: usize,
    /// A/B rounds with --vs: each round times ddrm, then the frameworks right after; the
    /// ratio is the median of the rounds' paired ratios (more rounds: steadier on a shared
    /// machine).
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// Frameworks to compare with: numpy, scipy, faiss, torch (comma separated).
    #[arg(long, value_delimiter = ',')]
    pub vs: Vec<String>,
    /// Python interpreter for the reference script.
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// Scale fractions of the Amazon-book shape (scale suite).
    #[arg(long, value_delimiter = ',', default_value = "0.125,0.25,0.5,1")]
    pub fractions: Vec<f64>,
    /// Models of the epoch suite: mf, lightgcn, sgl, ddrm (comma separated).
    #[arg(long, value_delimiter = ',', default_value = "mf,lightgcn,sgl,ddrm")]
    pub models: Vec<String>,
    /// Kernels suite: run only the rows whose name or shape contains one of these texts
    /// (comma separated, case-insensitive), e.g. `--only dW,spmm`.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Output directory for JSON lines and plots.
    #[arg(long, default_value = "runs/bench")]
    pub out: PathBuf,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Run a suite.
pub fn run(a: &BenchArgs, quiet: bool) -> Result<()> {
    let cuda = match crate::device::parse_spec(&a.device)? {
        None => false,
        Some(_) if !cfg!(feature = "cuda") => bail!(
            "--device cuda: this ddrm was built without the `cuda` feature \
             (cargo build --release --features cuda)"
        ),
        Some(0) => {
            if a.suite != Suite::Kernels {
                bail!(
                    "--device cuda: on the GPU, `ddrm bench kernels --device cuda` times the \
                     kernels and DDRM inference + evaluation; the training epochs run on the \
                     CPU only so far (see README, 'CUDA')"
                );
            }
            true
        }
        Some(n) => bail!("--device cuda:{n}: the GPU benchmarks run on device 0 (--device cuda)"),
    };
    if a.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    if a.reps == 0 {
        bail!("--reps must be at least 1");
    }
    for v in &a.vs {
        if !["numpy", "scipy", "faiss", "torch", "torch-cuda"].contains(&v.as_str()) {
            bail!("unknown framework '{v}' in --vs (numpy, scipy, faiss, torch, torch-cuda)");
        }
    }
    for m in &a.models {
        if !["mf", "lightgcn", "sgl", "ddrm"].contains(&m.as_str()) {
            bail!("unknown model '{m}' in --models (mf, lightgcn, sgl, ddrm)");
        }
    }
    if !a.only.is_empty() && a.suite != Suite::Kernels {
        bail!("--only selects rows of the kernels suite (`ddrm bench kernels --only dW`)");
    }
    if a.only.iter().any(|o| o.trim().is_empty()) {
        bail!("--only: empty text");
    }
    let only: Vec<String> = a.only.iter().map(|s| s.to_lowercase()).collect();
    let row_names = || {
        let mut names: Vec<String> = Vec::new();
        for (name, _) in bench::kernel_rows(cuda) {
            if !names.contains(&name) {
                names.push(name);
            }
        }
        names.join(", ")
    };
    if !only.is_empty()
        && !bench::kernel_rows(cuda)
            .iter()
            .any(|(name, shape)| bench::only_matches(&only, name, shape))
    {
        bail!(
            "--only {}: no kernel row matches (rows: {}, and their shapes)",
            a.only.join(","),
            row_names()
        );
    }
    if a.fractions.iter().any(|f| !(*f > 0.0 && *f <= 4.0)) {
        bail!("--fractions must be in (0, 4]");
    }
    let mut vs = a.vs.clone();
    if !vs.is_empty() && !bench::python_available(&a.python) {
        eprintln!(
            "note: {} not found: running ddrm alone (no --vs comparison)",
            a.python
        );
        vs.clear();
    }
    // the CPU's limits mean nothing to GPU rows: not measured there
    let limits = if cuda {
        bench::Limits {
            fma_gflops: f64::NAN,
            bandwidth_gbs: f64::NAN,
            threads: rayon::current_num_threads(),
        }
    } else {
        if !quiet {
            eprintln!("measuring machine limits (FMA peak, memory bandwidth)...");
        }
        bench::measure_limits()
    };
    let ctx = Ctx {
        reps: a.reps,
        rounds: a.rounds,
        vs,
        limits,
        python: a.python.clone(),
        quiet,
        only,
    };
    let rows: Vec<Row> = match a.suite {
        #[cfg(feature = "cuda")]
        Suite::Kernels if cuda => bench::gpu::kernels(&ctx, &crate::data::open(&a.dataset)?)?,
        Suite::Kernels => bench::kernels(&ctx, &crate::data::open(&a.dataset)?)?,
        Suite::Epoch => bench::epoch(&ctx, &crate::data::open(&a.dataset)?, &a.models)?,
        Suite::Eval => bench::eval(&ctx, &crate::data::open(&a.dataset)?)?,
        Suite::Scale => bench::scale(&ctx, &a.fractions, &a.out)?,
    };
    if rows.is_empty() && !a.only.is_empty() {
        bail!(
            "--only {}: no kernel row matches (rows: {}, and their shapes)",
            a.only.join(","),
            row_names()
        );
    }
    std::fs::create_dir_all(&a.out)?;
    let mut jl = String::new();
    for r in &rows {
        jl += &serde_json::to_string(r)?;
        jl.push('\n');
    }
    let name = format!("{:?}.jsonl", a.suite).to_lowercase();
    crate::util::atomic::write_atomic(&a.out.join(&name), jl.as_bytes())?;
    if a.json {
        print!("{jl}");
        return Ok(());
    }
    if !cuda {
        println!(
            "machine: {} threads, FMA peak {:.0} GFLOP/s, read bandwidth {:.1} GB/s, ISA {}",
            limits.threads,
            limits.fma_gflops,
            limits.bandwidth_gbs,
            crate::kernels::cpu::Isa::detect().name()
        );
    }
    let mut fws: Vec<String> = Vec::new();
    for r in &rows {
        for v in &r.vs {
            if !fws.contains(&v.0) {
                fws.push(v.0.clone());
            }
        }
    }
    let mut header: Vec<String> = [
        "op",
        "shape",
        "median ms",
        "min-max ms",
        "throughput",
        "of limit",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for f in &fws {
        header.push(format!("{f} ms (ratio, range over rounds)"));
    }
    let trows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut v = vec![
                r.name.clone(),
                r.shape.clone(),
                format!("{:.2}", r.ddrm.median_ms),
                format!("{:.2}-{:.2}", r.ddrm.min_ms, r.ddrm.max_ms),
                format!("{:.3e} {}", r.throughput, r.unit),
                r.frac_of_limit
                    .map_or("-".into(), |f| format!("{:.0}%", 100.0 * f)),
            ];
            for f in &fws {
                v.push(match r.vs.iter().find(|x| &x.0 == f) {
                    Some((_, Some(ms), Some(ratio), _, rounds)) if rounds.len() > 1 => {
                        let lo = rounds.iter().copied().fold(f64::INFINITY, f64::min);
                        let hi = rounds.iter().copied().fold(0.0, f64::max);
                        format!("{ms:.2} ({ratio:.2}x, {lo:.2}-{hi:.2})")
                    }
                    Some((_, Some(ms), Some(ratio), _, _)) => format!("{ms:.2} ({ratio:.2}x)"),
                    Some((_, _, _, note, _)) if !note.is_empty() => "missing".to_string(),
                    _ => "-".into(),
                });
            }
            v
        })
        .collect();
    let hdr: Vec<&str> = header.iter().map(|s| s.as_str()).collect();
    print!("{}", render(&hdr, &trows));
    for r in &rows {
        for (f, _, _, note, _) in &r.vs {
            if !note.is_empty() {
                println!("note: {f}: {note}");
                break;
            }
        }
    }
    if fws.is_empty() {
        println!("JSON lines: {}", a.out.join(&name).display());
    } else {
        println!(
            "ratio = framework time / ddrm time (> 1: ddrm faster), the median of {} A/B \
             rounds' paired ratios. JSON lines: {}",
            a.rounds,
            a.out.join(&name).display()
        );
    }
    Ok(())
}
