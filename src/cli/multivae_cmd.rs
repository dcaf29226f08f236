//! `ddrm train --model multivae`: the MultiVAE comparison system, and loading its runs for
//! `eval` / `recommend`.

use super::run_dir::{RunConfig, RunResult, StandaloneRun};
use super::train_cmd::TrainArgs;
use crate::data::Dataset;
use crate::denoising::multivae::{train, MultVae, VaeConfig};
use crate::nn::Linear;
use crate::util::tensorfile::TensorFile;
use anyhow::{bail, Context, Result};
use clap::Args;

/// MultiVAE options (`--lr`, `--batch`, `--epochs`, `--reg` as weight decay, `--seed`,
/// `--eval-every`, `--patience` are shared with the backends).
#[derive(Args, Debug, Clone, Default)]
pub struct VaeArgs {
    /// MultiVAE: hidden width of the encoder and decoder [default: 600].
    #[arg(long)]
    pub vae_hidden: Option<usize>,
    /// MultiVAE: latent width [default: 200].
    #[arg(long)]
    pub vae_latent: Option<usize>,
    /// MultiVAE: input dropout [default: 0.5].
    #[arg(long)]
    pub vae_dropout: Option<f32>,
    /// MultiVAE: final KL weight β [default: 0.2].
    #[arg(long)]
    pub vae_beta: Option<f32>,
    /// MultiVAE: optimizer steps over which β grows linearly from 0 [default: 200000].
    #[arg(long)]
    pub vae_anneal: Option<u64>,
}

/// The configuration from the command line.
pub fn vae_config(a: &TrainArgs) -> Result<VaeConfig> {
    let d = VaeConfig::default();
    let v = &a.vae;
    let cfg = VaeConfig {
        hidden: v.vae_hidden.unwrap_or(d.hidden),
        latent: v.vae_latent.unwrap_or(d.latent),
        dropout: v.vae_dropout.unwrap_or(d.dropout),
        beta_cap: v.vae_beta.unwrap_or(d.beta_cap),
        anneal_steps: v.vae_anneal.unwrap_or(d.anneal_steps),
        lr: a.lr.unwrap_or(d.lr),
        weight_decay: a.reg.unwrap_or(d.weight_decay),
        batch: a.batch.unwrap_or(d.batch),
        epochs: a.epochs.unwrap_or(d.epochs),
        eval_every: a.eval_every.max(1),
        patience: a.patience.max(1),
        seed: a.seed,
        ks: {
            let mut ks = a.k.clone();
            if !ks.contains(&20) {
                ks.push(20);
            }
            ks
        },
    };
    if cfg.hidden == 0 || cfg.latent == 0 {
        bail!("--vae-hidden and --vae-latent must be at least 1");
    }
    if !(0.0..1.0).contains(&cfg.dropout) {
        bail!("--vae-dropout must be in [0, 1), got {}", cfg.dropout);
    }
    if !cfg.beta_cap.is_finite() || cfg.beta_cap < 0.0 {
        bail!(
            "--vae-beta must be a finite non-negative number, got {}",
            cfg.beta_cap
        );
    }
    Ok(cfg)
}

/// Train MultiVAE into a run directory.
pub fn run_train_multivae(a: &TrainArgs, quiet: bool) -> Result<RunResult> {
    let cfg = vae_config(a)?;
    let run = StandaloneRun::start(
        &a.dataset,
        &a.out,
        "multivae",
        "MultiVAE",
        cfg.hidden + 1,
        &cfg,
        quiet,
    )?;
    let out = train(&run.ds, &cfg, quiet, |rec| {
        run.record(rec, || {
            format!(
                "epoch {:>4}  nll {:.2}  kl {:.2}  beta {:.4}  valid R@20 {:.4}  N@20 {:.4}  ({:.2} s/epoch)",
                rec.epoch,
                rec.loss,
                rec.kl,
                rec.beta,
                rec.valid.recall(20),
                rec.valid.ndcg(20),
                rec.train_seconds
            )
        })
    });
    let m = &out.model;
    let row = |l: &Linear| l.b.clone();
    let (b1, b2, b3, b4) = (row(&m.enc1), row(&m.enc2), row(&m.dec1), row(&m.dec2));
    run.finish(
        "multivae",
        &[
            ("enc1.w", m.enc1.din, m.enc1.dout, &m.enc1.w),
            ("enc1.b", 1, m.enc1.dout, &b1),
            ("enc2.w", m.enc2.din, m.enc2.dout, &m.enc2.w),
            ("enc2.b", 1, m.enc2.dout, &b2),
            ("dec1.w", m.dec1.din, m.dec1.dout, &m.dec1.w),
            ("dec1.b", 1, m.dec1.dout, &b3),
            ("dec2.w", m.dec2.din, m.dec2.dout, &m.dec2.w),
            ("dec2.b", 1, m.dec2.dout, &b4),
        ],
        out.best_epoch,
        out.best_valid,
        out.test,
        out.epoch_seconds,
    )
}

/// Load a MultiVAE checkpoint, checking every shape against the dataset.
pub fn load(tf: &TensorFile, ds: &Dataset) -> Result<MultVae> {
    let layer = |name: &str| -> Result<Linear> {
        let (w, din, dout) = tf.get(&format!("{name}.w"))?;
        let (b, br, bc) = tf.get(&format!("{name}.b"))?;
        if br != 1 || bc != dout {
            bail!("checkpoint: {name}.b is {br} x {bc}, expected 1 x {dout}");
        }
        Ok(Linear {
            din,
            dout,
            w: w.to_vec(),
            b: b.to_vec(),
        })
    };
    let (enc1, enc2, dec1, dec2) = (
        layer("enc1").context("MultiVAE checkpoint")?,
        layer("enc2").context("MultiVAE checkpoint")?,
        layer("dec1").context("MultiVAE checkpoint")?,
        layer("dec2").context("MultiVAE checkpoint")?,
    );
    let ni = ds.n_items();
    let (h, l) = (enc1.dout, dec1.din);
    if enc1.din != ni
        || enc2.din != h
        || enc2.dout != 2 * l
        || dec1.dout != h
        || dec2.din != h
        || dec2.dout != ni
    {
        bail!(
            "MultiVAE checkpoint shapes ({}x{}, {}x{}, {}x{}, {}x{}) do not fit {} items",
            enc1.din,
            enc1.dout,
            enc2.din,
            enc2.dout,
            dec1.din,
            dec1.dout,
            dec2.din,
            dec2.dout,
            ni
        );
    }
    Ok(MultVae {
        n_items: ni,
        enc1,
        enc2,
        dec1,
        dec2,
    })
}

/// Queries `[h3, 1]` for `users` and the item rows `[W4ᵀ | b4]` of a MultiVAE run.
pub fn multivae_queries(
    tf: &TensorFile,
    rc: &RunConfig,
    ds: &Dataset,
    users: &[u32],
) -> Result<(Vec<f32>, Vec<f32>)> {
    let m = load(tf, ds)?;
    if rc.dim != m.hidden() + 1 {
        bail!(
            "config.json says width {}, the checkpoint has {}",
            rc.dim,
            m.hidden() + 1
        );
    }
    Ok((m.queries(&ds.train(), users), m.item_matrix()))
}
