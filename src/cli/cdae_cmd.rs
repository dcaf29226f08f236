//! `ddrm train --model cdae`: the CDAE comparison system, and loading its runs for `eval` /
//! `recommend`. `--lr --batch --epochs --reg` (weight decay) are shared with the backends.

use super::run_dir::{RunConfig, RunResult, StandaloneRun};
use super::train_cmd::TrainArgs;
use crate::data::Dataset;
use crate::denoising::cdae::{train, Cdae, CdaeConfig};
use crate::nn::Linear;
use crate::util::tensorfile::TensorFile;
use anyhow::{bail, Result};
use clap::Args;

/// CDAE options.
#[derive(Args, Debug, Clone, Default)]
pub struct CdaeArgs {
    /// CDAE: hidden width [default: 200].
    #[arg(long)]
    pub cdae_hidden: Option<usize>,
    /// CDAE: input corruption (dropout) probability [default: 0.5].
    #[arg(long)]
    pub cdae_corruption: Option<f32>,
}

/// The configuration from the command line.
pub fn cdae_config(a: &TrainArgs) -> Result<CdaeConfig> {
    let d = CdaeConfig::default();
    let mut ks = a.k.clone();
    if !ks.contains(&20) {
        ks.push(20);
    }
    let cfg = CdaeConfig {
        hidden: a.cdae.cdae_hidden.unwrap_or(d.hidden),
        corruption: a.cdae.cdae_corruption.unwrap_or(d.corruption),
        lr: a.lr.unwrap_or(d.lr),
        weight_decay: a.reg.unwrap_or(d.weight_decay),
        batch: a.batch.unwrap_or(d.batch),
        epochs: a.epochs.unwrap_or(d.epochs),
        eval_every: a.eval_every.max(1),
        patience: a.patience.max(1),
        seed: a.seed,
        ks,
    };
    if cfg.hidden == 0 {
        bail!("--cdae-hidden must be at least 1");
    }
    if !(0.0..1.0).contains(&cfg.corruption) {
        bail!(
            "--cdae-corruption must be in [0, 1), got {}",
            cfg.corruption
        );
    }
    Ok(cfg)
}

/// Train CDAE into a run directory.
pub fn run_train_cdae(a: &TrainArgs, quiet: bool) -> Result<RunResult> {
    let cfg = cdae_config(a)?;
    let run = StandaloneRun::start(
        &a.dataset,
        &a.out,
        "cdae",
        "CDAE",
        cfg.hidden + 1,
        &cfg,
        quiet,
    )?;
    let out = train(&run.ds, &cfg, quiet, |rec| {
        run.record(rec, || {
            format!(
                "epoch {:>4}  loss {:.3}  valid R@20 {:.4}  N@20 {:.4}  ({:.2} s/epoch)",
                rec.epoch,
                rec.loss,
                rec.valid.recall(20),
                rec.valid.ndcg(20),
                rec.train_seconds
            )
        })
    });
    let m = &out.model;
    let hd = m.hidden();
    let nu = run.ds.n_users();
    run.finish(
        "cdae",
        &[
            ("enc.w", m.enc.din, m.enc.dout, &m.enc.w),
            ("enc.b", 1, m.enc.dout, &m.enc.b),
            ("user", nu, hd, &m.user),
            ("dec.w", m.dec.din, m.dec.dout, &m.dec.w),
            ("dec.b", 1, m.dec.dout, &m.dec.b),
        ],
        out.best_epoch,
        out.best_valid,
        out.test,
        out.epoch_seconds,
    )
}

/// Load a CDAE checkpoint, checking every shape against the dataset and `hidden`.
pub fn load(tf: &TensorFile, ds: &Dataset, hidden: usize) -> Result<Cdae> {
    let (ni, nu, hd) = (ds.n_items(), ds.n_users(), hidden);
    let get = |name: &str, rows: usize, cols: usize| -> Result<Vec<f32>> {
        let (v, r, c) = tf.get(name)?;
        if (r, c) != (rows, cols) {
            bail!("CDAE checkpoint: {name} is {r} x {c}, expected {rows} x {cols}");
        }
        Ok(v.to_vec())
    };
    Ok(Cdae {
        n_items: ni,
        enc: Linear {
            din: ni,
            dout: hd,
            w: get("enc.w", ni, hd)?,
            b: get("enc.b", 1, hd)?,
        },
        user: get("user", nu, hd)?,
        dec: Linear {
            din: hd,
            dout: ni,
            w: get("dec.w", hd, ni)?,
            b: get("dec.b", 1, ni)?,
        },
    })
}

/// Queries `[h, 1]` and item rows `[W2ᵀ | b2]` of a CDAE run.
pub fn cdae_queries(
    tf: &TensorFile,
    rc: &RunConfig,
    ds: &Dataset,
    users: &[u32],
) -> Result<(Vec<f32>, Vec<f32>)> {
    if rc.dim == 0 {
        bail!("config.json: width 0");
    }
    let m = load(tf, ds, rc.dim - 1)?;
    Ok((m.queries(&ds.train(), users), m.item_matrix()))
}
