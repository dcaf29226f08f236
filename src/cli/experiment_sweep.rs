//! `ddrm experiment sweep`: the paper's hyper-parameter analysis (Figure 6). One backend run,
//! then DDRM (paper recipe) once per value of one hyper-parameter, the others at the recipe's
//! values; valid R@20 (to choose by) and test R@20 / N@20 per value beside the backend's, as a
//! table, JSON and a plot.

use super::experiment_common::{
    at20, backend_row, gain, markdown, pair, valid20, write_outputs, DdrmExperimentArgs,
    RESULT_COLUMNS,
};
use super::table::render;
use crate::bench::svg::{linear, Series};
use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use std::path::PathBuf;
use std::time::Instant;

/// The hyper-parameters of Figure 6.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SweepParam {
    /// Diffusion steps T (inference steps T' set equal: n = 1).
    Steps,
    /// Noise scale s.
    NoiseScale,
    /// Loss balance λ (BPR weight; the reconstruction loss gets 1 - λ).
    Lambda,
    /// Reweighting exponent γ.
    Gamma,
}

impl SweepParam {
    fn label(self) -> &'static str {
        match self {
            SweepParam::Steps => "T",
            SweepParam::NoiseScale => "s",
            SweepParam::Lambda => "lambda",
            SweepParam::Gamma => "gamma",
        }
    }
    /// The values the paper tunes within (Section 4.1.3).
    fn default_values(self) -> Vec<f64> {
        match self {
            SweepParam::Steps => vec![10.0, 20.0, 40.0, 60.0],
            SweepParam::NoiseScale => vec![1e-4, 1e-3, 1e-2, 1e-1],
            SweepParam::Lambda => vec![0.1, 0.2, 0.4, 0.6, 0.8],
            SweepParam::Gamma => vec![0.0, 0.1, 0.3, 0.6, 0.9],
        }
    }
    fn check(self, v: f64) -> Result<()> {
        let ok = match self {
            SweepParam::Steps => v >= 1.0 && v.fract() == 0.0 && v <= 10_000.0,
            SweepParam::NoiseScale => v > 0.0 && v.is_finite(),
            SweepParam::Lambda => (0.0..=1.0).contains(&v),
            SweepParam::Gamma => v >= 0.0 && v.is_finite(),
        };
        if !ok {
            bail!(
                "--values: {v} is not a valid {} ({})",
                self.label(),
                match self {
                    SweepParam::Steps => "a whole number of steps, 1 to 10000",
                    SweepParam::NoiseScale => "a positive number",
                    SweepParam::Lambda => "in [0, 1]",
                    SweepParam::Gamma => "a finite number >= 0",
                }
            );
        }
        Ok(())
    }
}

/// Options of `ddrm experiment sweep`.
#[derive(Args, Debug)]
pub struct SweepArgs {
    /// Hyper-parameter to vary.
    #[arg(long, value_enum)]
    pub param: SweepParam,
    /// Its values (default: the paper's tuning range for it).
    #[arg(long, value_delimiter = ',')]
    pub values: Option<Vec<f64>>,
    /// Output directory (the backend run, one DDRM run per value, table and plot).
    #[arg(long, default_value = "runs/sweep")]
    pub out: PathBuf,
    /// Options shared with the other DDRM experiments.
    #[command(flatten)]
    pub common: DdrmExperimentArgs,
}

/// Run the sweep.
pub fn run(a: &SweepArgs, quiet: bool) -> Result<()> {
    let p = a.param;
    let values = a.values.clone().unwrap_or_else(|| p.default_values());
    if values.is_empty() {
        bail!("--values is empty");
    }
    for &v in &values {
        p.check(v)?;
    }
    let t0 = Instant::now();
    let c = &a.common;
    let label = c.model.label();
    let (bdir, b) = c.start(&a.out, quiet)?;
    let base = at20(&b);
    let mut results = Vec::new();
    for &v in &values {
        if !quiet {
            eprintln!("== {label}+DDRM with {} = {v} ==", p.label());
        }
        let r = c.variant(
            &bdir,
            None,
            &a.out.join(format!("{}-{v}", p.label())),
            quiet,
            |d| match p {
                SweepParam::Steps => {
                    d.steps = Some(v as usize);
                    d.inference_steps = Some(v as usize);
                }
                SweepParam::NoiseScale => d.noise_scale = Some(v),
                SweepParam::Lambda => d.lambda = Some(v as f32),
                SweepParam::Gamma => d.gamma = Some(v as f32),
            },
        )?;
        results.push((v, valid20(&r), at20(&r), r.best_epoch));
    }
    let secs = t0.elapsed().as_secs_f64();
    // the value the valid split picks (the first of equals); test is for reporting only
    let picked = results
        .iter()
        .fold(None::<(f64, f64)>, |best, &(v, val, _, _)| match best {
            Some((_, bv)) if bv >= val => best,
            _ => Some((v, val)),
        })
        .map(|(v, _)| v);
    let mut header = vec![p.label()];
    header.extend(RESULT_COLUMNS);
    let mut rows = vec![backend_row(label, &b)];
    for &(v, val, m, e) in &results {
        let mark = if Some(v) == picked { " *" } else { "" };
        rows.push(vec![
            format!("{v}{mark}"),
            format!("{val:.4}"),
            pair(m),
            gain(m, base),
            e.to_string(),
        ]);
    }
    let note = "* the value with the best valid R@20 (choose by valid; test is for reporting)";
    let title = format!(
        "ddrm experiment sweep — {label}+DDRM over {} on {} (valid and test splits, seed {})",
        p.label(),
        c.dataset,
        c.seed
    );
    let md = markdown(
        &title,
        &header,
        &rows,
        &format!(
            "{note}\n\nTotal time: {secs:.0} s on {} threads.",
            rayon::current_num_threads()
        ),
    );
    let x = |v: f64| {
        if p == SweepParam::NoiseScale {
            v.log10()
        } else {
            v
        }
    };
    let svg = linear(
        &format!("Recall@20 vs {} ({} test)", p.label(), c.dataset),
        if p == SweepParam::NoiseScale {
            "log10 s"
        } else {
            p.label()
        },
        "Recall@20",
        &[
            Series {
                name: format!("{label}+DDRM"),
                points: results.iter().map(|r| (x(r.0), r.2[0])).collect(),
            },
            Series {
                name: label.to_string(),
                points: results.iter().map(|r| (x(r.0), base[0])).collect(),
            },
        ],
    );
    let json = serde_json::json!({"dataset": c.dataset, "model": label, "seed": c.seed,
        "param": p, "seconds": secs, "threads": rayon::current_num_threads(),
        "backend": {"recall20": base[0], "ndcg20": base[1], "valid_recall20": valid20(&b),
            "best_epoch": b.best_epoch},
        "picked_on_valid": picked,
        "rows": results.iter().map(|(v, val, m, e)| serde_json::json!({
            "value": v, "valid_recall20": val, "recall20": m[0], "ndcg20": m[1],
            "best_epoch": e})).collect::<Vec<_>>()});
    write_outputs(&a.out, "sweep", &json, &md, Some(&svg))?;
    if c.json {
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        println!("{title}");
        print!("{}", render(&header, &rows));
        println!("{note}");
        println!(
            "total {secs:.0} s; written to {} (sweep.md, sweep.json, sweep-recall.svg)",
            a.out.display()
        );
    }
    Ok(())
}
