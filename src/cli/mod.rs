//! The `ddrm` command line (a thin layer over the library).

pub mod adagcl_cmd;
mod bench_cmd;
pub mod cdae_cmd;
mod data_cmd;
pub mod ddrm_cmd;
pub mod diffrec_cmd;
pub mod experiment_ablation;
pub mod experiment_cmd;
pub mod experiment_common;
pub mod experiment_sweep;
pub mod multivae_cmd;
pub mod reproduce;
mod reproduce_seeds;
pub mod run_dir;
pub mod table;
pub mod train_cmd;

use clap::{Parser, Subcommand};

/// ddrm: denoising diffusion recommendation, from scratch.
#[derive(Parser, Debug)]
#[command(name = "ddrm", version, about, propagate_version = true)]
pub struct Cli {
    /// Worker threads (default: all cores). Results are deterministic for a seed and thread count.
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    /// Hide progress bars.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Import, inspect, export, corrupt with noise, or synthesize datasets.
    #[command(subcommand)]
    Data(data_cmd::DataCommand),
    /// Train a model (MF-BPR, LightGCN, SGL, their T-CE / R-CE variants, DDRM on a backend
    /// run, CDAE, MultiVAE or DiffRec) into a run directory.
    Train(Box<train_cmd::TrainArgs>),
    /// Evaluate a run on valid or test (full ranking, seen items masked).
    Eval(train_cmd::EvalArgs),
    /// Print the top-K items for one user.
    Recommend(train_cmd::RecommendArgs),
    /// The main job: backends and DDRM on ml1m-noisy, compared with the paper's Table 2.
    Reproduce(reproduce::ReproduceArgs),
    /// Throughput profiling against the machine's limits and framework baselines.
    Bench(bench_cmd::BenchArgs),
    /// The paper's experiments beyond Table 2 (random noise, hyper-parameter sweeps, ablations).
    #[command(subcommand)]
    Experiment(experiment_cmd::ExperimentCommand),
}

/// Parse arguments, run, and return the process exit code. Errors are printed as one clear
/// message (with its causes) and give a non-zero exit.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    if let Some(t) = cli.threads {
        if t == 0 {
            eprintln!("error: --threads must be at least 1");
            return 2;
        }
        if let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
        {
            eprintln!("error: cannot set up {t} threads: {e}");
            return 1;
        }
    }
    let res = match cli.command {
        Command::Data(c) => data_cmd::run(c, cli.quiet),
        Command::Train(a) => train_cmd::run_train(&a, cli.quiet).and_then(|r| {
            train_cmd::print_metrics(
                &format!(
                    "test at best epoch {} ({:.2} s/epoch)",
                    r.best_epoch, r.epoch_seconds
                ),
                &r.test,
                a.json,
            )
        }),
        Command::Eval(a) => train_cmd::run_eval(&a),
        Command::Recommend(a) => train_cmd::run_recommend(&a),
        Command::Reproduce(a) => reproduce::run(&a, cli.quiet),
        Command::Bench(a) => bench_cmd::run(&a, cli.quiet),
        Command::Experiment(c) => experiment_cmd::run(&c, cli.quiet),
    };
    match res {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            1
        }
    }
}
