//! Run directories: `config.json`, `metrics.jsonl`, `model.ckpt`, `result.json`.

use crate::data::Dataset;
use crate::eval::Metrics;
use crate::util::tensorfile::TensorFile;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// What `config.json` holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunConfig {
    /// "backend" or "ddrm".
    pub kind: String,
    /// Dataset as given on the command line.
    pub dataset: String,
    /// Dataset fingerprint at training time.
    pub fingerprint: String,
    /// Backend label (MF-BPR, LightGCN, SGL).
    pub backend: String,
    /// Embedding width.
    pub dim: usize,
    /// Full configuration.
    pub config: serde_json::Value,
}

/// What `result.json` holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunResult {
    /// Best epoch.
    pub best_epoch: usize,
    /// Valid metrics at the best epoch.
    pub valid: Metrics,
    /// Test metrics at the best epoch.
    pub test: Metrics,
    /// Mean seconds per training epoch.
    pub epoch_seconds: f64,
    /// Seconds of the whole run.
    pub total_seconds: f64,
}

/// A run directory.
pub struct RunDir {
    /// Its path.
    pub path: PathBuf,
}

impl RunDir {
    /// Create (or reuse) a run directory.
    pub fn create(path: &Path) -> Result<Self> {
        std::fs::create_dir_all(path)
            .with_context(|| format!("cannot create run directory {}", path.display()))?;
        let _ = std::fs::remove_file(path.join("metrics.jsonl"));
        Ok(RunDir {
            path: path.to_path_buf(),
        })
    }
    /// Open an existing run directory.
    pub fn open(path: &Path) -> Result<Self> {
        if !path.join("config.json").is_file() {
            bail!(
                "{} is not a ddrm run directory (no config.json)",
                path.display()
            );
        }
        Ok(RunDir {
            path: path.to_path_buf(),
        })
    }
    /// Write JSON atomically.
    pub fn write_json<T: Serialize>(&self, name: &str, v: &T) -> Result<()> {
        crate::util::atomic::write_atomic(&self.path.join(name), &serde_json::to_vec_pretty(v)?)
    }
    /// Append one JSON line to `metrics.jsonl`.
    pub fn append_metrics<T: Serialize>(&self, v: &T) -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path.join("metrics.jsonl"))?;
        writeln!(f, "{}", serde_json::to_string(v)?)?;
        Ok(())
    }
    /// Read `config.json`.
    pub fn config(&self) -> Result<RunConfig> {
        let p = self.path.join("config.json");
        let b = std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
        serde_json::from_slice(&b).with_context(|| format!("{} is malformed", p.display()))
    }
    /// Open the dataset the run was trained on and check it is the same data.
    pub fn dataset(&self, cfg: &RunConfig) -> Result<Dataset> {
        let ds = crate::data::open(&cfg.dataset)?;
        if ds.fingerprint() != cfg.fingerprint {
            bail!(
                "dataset '{}' is not the data run {} was trained on (fingerprint {} vs {})",
                cfg.dataset,
                self.path.display(),
                ds.fingerprint(),
                cfg.fingerprint
            );
        }
        Ok(ds)
    }
    /// Open `model.ckpt` and check it belongs to this dataset.
    pub fn checkpoint(&self, cfg: &RunConfig) -> Result<TensorFile> {
        let tf = TensorFile::open(&self.path.join("model.ckpt"))?;
        if tf.meta.dataset != cfg.fingerprint {
            bail!(
                "checkpoint of {} was trained on other data ({})",
                self.path.display(),
                tf.meta.dataset
            );
        }
        Ok(tf)
    }
}

/// What every `ddrm train --model X` of a standalone comparison system shares: the run
/// directory with its `config.json`, one `metrics.jsonl` line (and, unless quiet, one printed
/// line) per validation, and at the end the checkpoint and `result.json`.
pub struct StandaloneRun {
    /// The run directory.
    pub rd: RunDir,
    /// The dataset.
    pub ds: Dataset,
    config: serde_json::Value,
    quiet: bool,
    t0: std::time::Instant,
    log_err: std::cell::RefCell<Option<anyhow::Error>>,
}

impl StandaloneRun {
    /// Open the dataset, create the run directory and write `config.json`.
    pub fn start<C: Serialize>(
        dataset: &str,
        out: &Path,
        kind: &str,
        label: &str,
        dim: usize,
        cfg: &C,
        quiet: bool,
    ) -> Result<Self> {
        let ds = crate::data::open(dataset)?;
        let rd = RunDir::create(out)?;
        let t0 = std::time::Instant::now();
        let config = serde_json::to_value(cfg)?;
        rd.write_json(
            "config.json",
            &RunConfig {
                kind: kind.into(),
                dataset: dataset.to_string(),
                fingerprint: ds.fingerprint(),
                backend: label.into(),
                dim,
                config: config.clone(),
            },
        )?;
        Ok(StandaloneRun {
            rd,
            ds,
            config,
            quiet,
            t0,
            log_err: std::cell::RefCell::new(None),
        })
    }

    /// Log one validation record (the first write error is kept for [`Self::finish`]).
    pub fn record<R: Serialize>(&self, rec: &R, line: impl FnOnce() -> String) {
        if let Err(e) = self.rd.append_metrics(rec) {
            self.log_err.borrow_mut().get_or_insert(e);
        }
        if !self.quiet {
            eprintln!("{}", line());
        }
    }

    /// Write the checkpoint (`kind`, the configuration, `tensors`) and `result.json`.
    pub fn finish(
        self,
        kind: &str,
        tensors: &[(&str, usize, usize, &[f32])],
        best_epoch: usize,
        valid: Metrics,
        test: Metrics,
        epoch_seconds: f64,
    ) -> Result<RunResult> {
        if let Some(e) = self.log_err.into_inner() {
            return Err(e.context("writing metrics.jsonl"));
        }
        crate::util::tensorfile::write(
            &self.rd.path.join("model.ckpt"),
            kind,
            &self.ds.fingerprint(),
            self.config,
            tensors,
        )?;
        let res = RunResult {
            best_epoch,
            valid,
            test,
            epoch_seconds,
            total_seconds: self.t0.elapsed().as_secs_f64(),
        };
        self.rd.write_json("result.json", &res)?;
        Ok(res)
    }
}
