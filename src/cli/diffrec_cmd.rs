//! `ddrm train --model diffrec`: the DiffRec comparison system, and loading its runs for
//! `eval` / `recommend`. The diffusion options `--steps --noise-scale --noise-min --noise-max
//! --hidden --step-dim --dropout` are shared with DDRM; `--lr --batch --epochs --reg`
//! (weight decay) with the backends.

use super::run_dir::{RunConfig, RunResult, StandaloneRun};
use super::train_cmd::TrainArgs;
use crate::data::Dataset;
use crate::denoising::diffrec::{schedule, train, DiffRec, DiffRecConfig};
use crate::kernels::cpu::Act;
use crate::nn::{Linear, Mlp};
use crate::util::tensorfile::TensorFile;
use anyhow::{bail, Context, Result};

/// The configuration from the command line.
pub fn diffrec_config(a: &TrainArgs) -> Result<DiffRecConfig> {
    let d = DiffRecConfig::default();
    let o = &a.ddrm;
    let mut ks = a.k.clone();
    if !ks.contains(&20) {
        ks.push(20);
    }
    let cfg = DiffRecConfig {
        hidden: o.hidden.clone().unwrap_or(d.hidden),
        step_dim: o.step_dim.unwrap_or(d.step_dim),
        steps: o.steps.unwrap_or(d.steps),
        noise_scale: o.noise_scale.unwrap_or(d.noise_scale),
        noise_min: o.noise_min.unwrap_or(d.noise_min),
        noise_max: o.noise_max.unwrap_or(d.noise_max),
        reweight: !a.no_reweight,
        dropout: o.dropout.unwrap_or(d.dropout),
        lr: a.lr.unwrap_or(d.lr),
        weight_decay: a.reg.unwrap_or(d.weight_decay),
        batch: a.batch.unwrap_or(d.batch),
        epochs: a.epochs.unwrap_or(d.epochs),
        eval_every: a.eval_every.max(1),
        patience: a.patience.max(1),
        seed: a.seed,
        ks,
    };
    if cfg.hidden.is_empty() || cfg.hidden.contains(&0) {
        bail!("--hidden must list positive widths (DiffRec needs at least one hidden layer)");
    }
    if cfg.step_dim == 0 {
        bail!("--step-dim must be at least 1");
    }
    if !(0.0..1.0).contains(&cfg.dropout) {
        bail!("--dropout must be in [0, 1), got {}", cfg.dropout);
    }
    schedule(&cfg).context("DiffRec noise schedule")?;
    Ok(cfg)
}

/// Train DiffRec into a run directory.
pub fn run_train_diffrec(a: &TrainArgs, quiet: bool) -> Result<RunResult> {
    let cfg = diffrec_config(a)?;
    let hl = *cfg.hidden.last().expect("checked non-empty");
    let run = StandaloneRun::start(
        &a.dataset,
        &a.out,
        "diffrec",
        "DiffRec",
        hl + 1,
        &cfg,
        quiet,
    )?;
    let out = train(&run.ds, &cfg, quiet, |rec| {
        run.record(rec, || {
            format!(
                "epoch {:>4}  loss {:.4}  valid R@20 {:.4}  N@20 {:.4}  ({:.2} s/epoch)",
                rec.epoch,
                rec.loss,
                rec.valid.recall(20),
                rec.valid.ndcg(20),
                rec.train_seconds
            )
        })
    })?;
    let m = &out.model;
    let mut names = vec!["step.w".to_string(), "step.b".to_string()];
    let mut layers: Vec<&Linear> = vec![&m.step_layer];
    for (k, l) in m.mlp.layers.iter().enumerate() {
        names.push(format!("mlp.{k}.w"));
        names.push(format!("mlp.{k}.b"));
        layers.push(l);
    }
    let mut tensors: Vec<(&str, usize, usize, &[f32])> = vec![];
    for (k, l) in layers.iter().enumerate() {
        tensors.push((&names[2 * k], l.din, l.dout, &l.w));
        tensors.push((&names[2 * k + 1], 1, l.dout, &l.b));
    }
    run.finish(
        "diffrec",
        &tensors,
        out.best_epoch,
        out.best_valid,
        out.test,
        out.epoch_seconds,
    )
}

/// Load a DiffRec checkpoint, checking the shapes against its configuration and the dataset.
pub fn load(tf: &TensorFile, rc: &RunConfig, ds: &Dataset) -> Result<(DiffRec, DiffRecConfig)> {
    let cfg: DiffRecConfig =
        serde_json::from_value(rc.config.clone()).context("config.json: DiffRec configuration")?;
    let layer = |name: &str, din: usize, dout: usize| -> Result<Linear> {
        let (w, r, c) = tf.get(&format!("{name}.w"))?;
        let (b, br, bc) = tf.get(&format!("{name}.b"))?;
        if (r, c, br, bc) != (din, dout, 1, dout) {
            bail!("checkpoint: {name} is {r}x{c} (bias {br}x{bc}), expected {din}x{dout}");
        }
        Ok(Linear {
            din,
            dout,
            w: w.to_vec(),
            b: b.to_vec(),
        })
    };
    let ni = ds.n_items();
    let mut dims = vec![ni + cfg.step_dim];
    dims.extend_from_slice(&cfg.hidden);
    dims.push(ni);
    let step_layer = layer("step", cfg.step_dim, cfg.step_dim)?;
    let layers = dims
        .windows(2)
        .enumerate()
        .map(|(k, w)| layer(&format!("mlp.{k}"), w[0], w[1]))
        .collect::<Result<Vec<_>>>()?;
    Ok((
        DiffRec {
            n_items: ni,
            step_dim: cfg.step_dim,
            step_layer,
            mlp: Mlp {
                layers,
                act: Act::Tanh,
            },
        },
        cfg,
    ))
}

/// Queries and item rows of a DiffRec run.
pub fn diffrec_queries(
    tf: &TensorFile,
    rc: &RunConfig,
    ds: &Dataset,
    users: &[u32],
) -> Result<(Vec<f32>, Vec<f32>)> {
    let (m, cfg) = load(tf, rc, ds)?;
    let sched = schedule(&cfg)?;
    Ok((m.queries(&sched, &ds.train(), users), m.item_matrix()))
}
