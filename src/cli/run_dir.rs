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
