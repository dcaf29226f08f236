//! `ddrm experiment`: the paper's studies beyond Table 2 (`sweep` and `ablation` have files of
//! their own). Here `noise`, the random-noise study (Figure 3): for each noise ratio, a share
//! of the clean dataset's train and valid interactions is replaced by random unobserved pairs (`ddrm data noise`); the backend, the backend + R-CE and the backend + DDRM are trained
//! on it as `ddrm reproduce` trains them and tested on the untouched test split.

use super::experiment_common::{at20, markdown, pair, write_outputs};
use super::reproduce::{backend_args, ddrm_stage_with, Baseline, Recipe};
use super::table::render;
use super::train_cmd::run_train;
use crate::backends::Backend;
use crate::bench::svg::{linear, Series};
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

/// Experiments.
#[derive(Subcommand, Debug)]
pub enum ExperimentCommand {
    /// Random noise at several ratios: backend vs + R-CE vs + DDRM (paper Figure 3).
    Noise(NoiseArgs),
    /// One DDRM hyper-parameter over a range of values (paper Figure 6).
    Sweep(super::experiment_sweep::SweepArgs),
    /// DDRM with one part switched off or replaced per row (paper Figures 4 and 5).
    Ablation(super::experiment_ablation::AblationArgs),
}

/// Options of `ddrm experiment noise`.
#[derive(Args, Debug)]
pub struct NoiseArgs {
    /// Clean dataset to corrupt (its test split stays clean).
    #[arg(long, default_value = "ml1m-clean")]
    pub dataset: String,
    /// Noise ratios (shares of train and valid interactions replaced), each in [0, 1).
    #[arg(long, value_delimiter = ',', default_value = "0,0.2,0.4,0.6")]
    pub ratios: Vec<f64>,
    /// Backend.
    #[arg(long, value_enum, default_value_t = Backend::Mf)]
    pub model: Backend,
    /// Seed (noise and training).
    #[arg(long, default_value_t = 2020)]
    pub seed: u64,
    /// Output directory (a dataset and three runs per ratio, the table and the plot).
    #[arg(long, default_value = "runs/noise")]
    pub out: PathBuf,
    /// Override the backends' maximum epochs.
    #[arg(long)]
    pub backend_epochs: Option<usize>,
    /// Override DDRM's maximum epochs.
    #[arg(long)]
    pub ddrm_epochs: Option<usize>,
    /// DDRM's dropout on the noisy input (default: the paper preset's, none; the tables made
    /// before 2026-11-24 used 0.5).
    #[arg(long)]
    pub dropout: Option<f32>,
    /// Print the table as JSON.
    #[arg(long)]
    pub json: bool,
}

/// One ratio's results.
#[derive(Debug, Serialize)]
pub struct NoiseRow {
    /// Noise ratio.
    pub ratio: f64,
    /// Test (R@20, N@20) of the backend, + R-CE, + DDRM.
    pub backend: [f64; 2],
    /// + R-CE.
    pub rce: [f64; 2],
    /// + DDRM.
    pub ddrm: [f64; 2],
}

/// Run an experiment.
pub fn run(cmd: &ExperimentCommand, quiet: bool) -> Result<()> {
    match cmd {
        ExperimentCommand::Noise(a) => run_noise(a, quiet),
        ExperimentCommand::Sweep(a) => super::experiment_sweep::run(a, quiet),
        ExperimentCommand::Ablation(a) => super::experiment_ablation::run(a, quiet),
    }
}

fn run_noise(a: &NoiseArgs, quiet: bool) -> Result<()> {
    super::experiment_common::check_dropout(a.dropout)?;
    if a.ratios.is_empty() {
        bail!("--ratios is empty");
    }
    if let Some(r) = a.ratios.iter().find(|r| !(0.0..1.0).contains(*r)) {
        bail!("--ratios: {r} is not in [0, 1)");
    }
    let ds = crate::data::open(&a.dataset)?;
    std::fs::create_dir_all(&a.out)?;
    let t0 = Instant::now();
    let label = a.model.label();
    let mut rows = Vec::new();
    for &ratio in &a.ratios {
        let tag = format!("noise-{ratio}");
        if !quiet {
            eprintln!(
                "== {label} on {} with {:.0}% random noise ==",
                a.dataset,
                100.0 * ratio
            );
        }
        let data_path = a.out.join(format!("{tag}.ddrm"));
        crate::data::noise::add_random_noise(&ds, ratio, a.seed)?.write(&data_path)?;
        let data = data_path.to_string_lossy().to_string();
        let dir = a.out.join(&tag);
        let bdir = dir.join("backend");
        let b = run_train(
            &backend_args(a.model, &data, a.seed, a.backend_epochs, None, bdir.clone()),
            quiet,
        )?;
        let rce = run_train(
            &backend_args(
                a.model,
                &data,
                a.seed,
                a.backend_epochs,
                Some(Baseline::Rce),
                dir.join("rce"),
            ),
            quiet,
        )?;
        let dd = ddrm_stage_with(
            a.model,
            Recipe::Paper,
            &bdir,
            a.seed,
            a.ddrm_epochs,
            &dir.join("ddrm"),
            quiet,
            |d| d.dropout = a.dropout,
        )?;
        rows.push(NoiseRow {
            ratio,
            backend: at20(&b),
            rce: at20(&rce),
            ddrm: at20(&dd),
        });
    }
    let secs = t0.elapsed().as_secs_f64();
    let names = [
        label.to_string(),
        format!("{label}+R-CE"),
        format!("{label}+DDRM"),
    ];
    let header = [
        "noise".to_string(),
        format!("{} R@20 / N@20", names[0]),
        format!("{} R@20 / N@20", names[1]),
        format!("{} R@20 / N@20", names[2]),
    ];
    let trows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                format!("{:.0}%", 100.0 * r.ratio),
                pair(r.backend),
                pair(r.rce),
                pair(r.ddrm),
            ]
        })
        .collect();
    let hdr: Vec<&str> = header.iter().map(|s| s.as_str()).collect();
    let table = render(&hdr, &trows);
    let md = markdown(
        &format!(
            "ddrm experiment noise — {} on {} (test split, seed {})",
            label, a.dataset, a.seed
        ),
        &hdr,
        &trows,
        &format!(
            "Total time: {secs:.0} s on {} threads.",
            rayon::current_num_threads()
        ),
    );
    let series = |k: usize, pick: fn(&NoiseRow) -> [f64; 2]| Series {
        name: names[k].clone(),
        points: rows.iter().map(|r| (r.ratio, pick(r)[0])).collect(),
    };
    let svg = linear(
        &format!("Recall@20 vs random noise ({} test)", a.dataset),
        "noise ratio",
        "Recall@20",
        &[
            series(0, |r| r.backend),
            series(1, |r| r.rce),
            series(2, |r| r.ddrm),
        ],
    );
    let json = serde_json::json!({"dataset": a.dataset, "model": label, "seed": a.seed,
        "seconds": secs, "threads": rayon::current_num_threads(), "rows": rows});
    write_outputs(&a.out, "noise", &json, &md, Some(&svg))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        println!(
            "ddrm experiment noise: {label} on {} (test split, seed {})",
            a.dataset, a.seed
        );
        print!("{table}");
        println!(
            "total {secs:.0} s; written to {} (noise.md, noise.json, noise-recall.svg)",
            a.out.display()
        );
    }
    Ok(())
}
