//! Pieces shared by the DDRM experiments (`sweep`, `ablation`): the backend they start from
//! (trained once, or an existing run) and how their results are written.

use super::ddrm_cmd::DdrmArgs;
use super::reproduce::{backend_args, ddrm_stage_with, Recipe};
use super::run_dir::{RunDir, RunResult};
use super::train_cmd::run_train;
use crate::backends::Backend;
use crate::util::atomic::write_atomic;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// Options shared by `sweep` and `ablation` (flattened into each command's options).
#[derive(clap::Args, Debug)]
pub struct DdrmExperimentArgs {
    /// Dataset.
    #[arg(long, default_value = "ml1m-noisy")]
    pub dataset: String,
    /// Backend.
    #[arg(long, value_enum, default_value_t = Backend::Mf)]
    pub model: Backend,
    /// Start from this trained backend run instead of training one.
    #[arg(long = "from")]
    pub from: Option<PathBuf>,
    /// Seed.
    #[arg(long, default_value_t = 2020)]
    pub seed: u64,
    /// Override the backend's maximum epochs.
    #[arg(long)]
    pub backend_epochs: Option<usize>,
    /// Override DDRM's maximum epochs.
    #[arg(long)]
    pub ddrm_epochs: Option<usize>,
    /// DDRM's dropout on the noisy input (default: the paper preset's, none; the tables made
    /// before 2026-11-24 used 0.5).
    #[arg(long)]
    pub dropout: Option<f32>,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
}

impl DdrmExperimentArgs {
    /// Check the dataset, create `out`, and get the backend run (trained, or `--from`).
    pub fn start(&self, out: &Path, quiet: bool) -> Result<(PathBuf, RunResult)> {
        check_dropout(self.dropout)?;
        crate::data::open(&self.dataset)?;
        std::fs::create_dir_all(out)?;
        backend_run(
            self.model,
            &self.dataset,
            self.seed,
            self.backend_epochs,
            self.from.as_deref(),
            out,
            quiet,
        )
    }

    /// Train DDRM (the paper recipe with `tweak` applied) from `from` into `out` (`epochs` overrides `--ddrm-epochs`).
    pub fn variant(
        &self,
        from: &Path,
        epochs: Option<usize>,
        out: &Path,
        quiet: bool,
        tweak: impl FnOnce(&mut DdrmArgs),
    ) -> Result<RunResult> {
        ddrm_stage_with(
            self.model,
            Recipe::Paper,
            from,
            self.seed,
            epochs.or(self.ddrm_epochs),
            out,
            quiet,
            |d: &mut DdrmArgs| {
                d.dropout = self.dropout.or(d.dropout);
                tweak(d)
            },
        )
    }
}

/// Refuse a DDRM dropout outside [0, 1) before anything is trained (the DDRM stage would
/// refuse it too, but only after the backend).
pub fn check_dropout(dropout: Option<f32>) -> Result<()> {
    dropout.map_or(Ok(()), crate::diffusion::ddrm::check_dropout)
}

/// The tables' columns after the first: valid R@20 (what to choose by), test R@20 / N@20
/// (what to report), the change against the backend, the best epoch.
pub const RESULT_COLUMNS: [&str; 4] = [
    "valid R@20",
    "test R@20 / N@20",
    "R@20 vs backend",
    "best epoch",
];

/// The table's first row: the backend without DDRM.
pub fn backend_row(label: &str, b: &RunResult) -> Vec<String> {
    vec![
        format!("{label} (no DDRM)"),
        format!("{:.4}", valid20(b)),
        pair(at20(b)),
        "-".into(),
        b.best_epoch.to_string(),
    ]
}

/// R@20 on valid, at the run's best epoch.
pub fn valid20(r: &RunResult) -> f64 {
    r.valid.recall(20)
}

/// (R@20, N@20) on test.
pub fn at20(r: &RunResult) -> [f64; 2] {
    [r.test.recall(20), r.test.ndcg(20)]
}

/// The backend run the experiment builds on: `from` when given (its `result.json` is read,
/// and its backend must be `model`), else a fresh run in `out/backend`.
pub fn backend_run(
    model: Backend,
    dataset: &str,
    seed: u64,
    epochs: Option<usize>,
    from: Option<&Path>,
    out: &Path,
    quiet: bool,
) -> Result<(PathBuf, RunResult)> {
    if let Some(dir) = from {
        let rd = RunDir::open(dir)?;
        let cfg = rd.config()?;
        if cfg.kind != "backend" || cfg.backend != model.label() {
            bail!(
                "--from {}: a {} run of kind {:?}, but the experiment needs a {} backend run",
                dir.display(),
                cfg.backend,
                cfg.kind,
                model.label()
            );
        }
        let text = std::fs::read_to_string(dir.join("result.json")).with_context(|| {
            format!("--from {}: no result.json (run unfinished?)", dir.display())
        })?;
        let r: RunResult = serde_json::from_str(&text)
            .with_context(|| format!("--from {}: malformed result.json", dir.display()))?;
        return Ok((dir.to_path_buf(), r));
    }
    let bdir = out.join("backend");
    let r = run_train(
        &backend_args(model, dataset, seed, epochs, None, bdir.clone()),
        quiet,
    )?;
    Ok((bdir, r))
}

/// Markdown table.
pub fn markdown(title: &str, header: &[&str], rows: &[Vec<String>], footer: &str) -> String {
    let mut md = format!(
        "# {title}\n\n| {} |\n|{}|\n",
        header.join(" | "),
        header.iter().map(|_| "---").collect::<Vec<_>>().join("|")
    );
    for r in rows {
        md += &format!("| {} |\n", r.join(" | "));
    }
    md + "\n" + footer + "\n"
}

/// Write `name.json`, `name.md` (and `name-recall.svg` when given) atomically into `out`.
pub fn write_outputs(
    out: &Path,
    name: &str,
    json: &serde_json::Value,
    md: &str,
    svg: Option<&str>,
) -> Result<()> {
    write_atomic(
        &out.join(format!("{name}.json")),
        &serde_json::to_vec_pretty(json)?,
    )?;
    write_atomic(&out.join(format!("{name}.md")), md.as_bytes())?;
    if let Some(s) = svg {
        write_atomic(&out.join(format!("{name}-recall.svg")), s.as_bytes())?;
    }
    Ok(())
}

/// "0.1234 / 0.0567".
pub fn pair(v: [f64; 2]) -> String {
    format!("{:.4} / {:.4}", v[0], v[1])
}

/// Relative change of R@20 against the backend, as "+1.2%".
pub fn gain(v: [f64; 2], base: [f64; 2]) -> String {
    if base[0] > 0.0 {
        format!("{:+.1}%", 100.0 * (v[0] / base[0] - 1.0))
    } else {
        "-".into()
    }
}
