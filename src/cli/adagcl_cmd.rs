//! `ddrm train --model adagcl`: the AdaGCL comparison system. Its checkpoint holds the ranking
//! embeddings (`final`, as the backends' runs), so `eval` and `recommend` read it unchanged.

use super::run_dir::{RunResult, StandaloneRun};
use super::train_cmd::TrainArgs;
use crate::denoising::adagcl::edge_mask::GateConfig;
use crate::denoising::adagcl::{train, AdaGclConfig};
use anyhow::{bail, Result};
use clap::Args;

/// AdaGCL options (`--dim`, `--lr`, `--batch`, `--reg`, `--epochs`, `--seed`, `--eval-every`,
/// `--patience` are shared with the backends).
#[derive(Args, Debug, Clone, Default)]
pub struct AdaGclArgs {
    /// AdaGCL: propagation layers [default: 2].
    #[arg(long)]
    pub adagcl_layers: Option<usize>,
    /// AdaGCL: weight of the contrastive loss between the two views [default: 0.1].
    #[arg(long)]
    pub adagcl_ssl: Option<f32>,
    /// AdaGCL: weight of the information-bottleneck loss [default: 0.1].
    #[arg(long)]
    pub adagcl_ib: Option<f32>,
    /// AdaGCL: temperature of the contrastive losses [default: 0.5].
    #[arg(long)]
    pub adagcl_temp: Option<f32>,
    /// AdaGCL: weight λ₀ of the denoising net's L0 penalty [default: 1e-4].
    #[arg(long)]
    pub adagcl_lambda0: Option<f32>,
    /// AdaGCL: gate temperature at the first epoch [default: 2.0].
    #[arg(long)]
    pub adagcl_gate_temp: Option<f32>,
    /// AdaGCL: per-epoch decay of the gate temperature [default: 0.98].
    #[arg(long)]
    pub adagcl_gate_decay: Option<f32>,
}

/// The configuration from the command line.
pub fn adagcl_config(a: &TrainArgs) -> Result<AdaGclConfig> {
    let d = AdaGclConfig::default();
    let o = &a.adagcl;
    let cfg = AdaGclConfig {
        dim: a.dim,
        layers: o.adagcl_layers.unwrap_or(d.layers),
        lr: a.lr.unwrap_or(d.lr),
        batch: a.batch.unwrap_or(d.batch),
        reg: a.reg.unwrap_or(d.reg),
        ssl: o.adagcl_ssl.unwrap_or(d.ssl),
        ib: o.adagcl_ib.unwrap_or(d.ib),
        temp: o.adagcl_temp.unwrap_or(d.temp),
        gate: GateConfig {
            lambda0: o.adagcl_lambda0.unwrap_or(d.gate.lambda0),
            ..d.gate
        },
        gate_temp: o.adagcl_gate_temp.unwrap_or(d.gate_temp),
        gate_decay: o.adagcl_gate_decay.unwrap_or(d.gate_decay),
        masker_eps: d.masker_eps,
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
    if cfg.layers == 0 {
        bail!("--adagcl-layers must be at least 1");
    }
    for (name, v) in [
        ("--adagcl-ssl", cfg.ssl),
        ("--adagcl-ib", cfg.ib),
        ("--adagcl-lambda0", cfg.gate.lambda0),
    ] {
        if !v.is_finite() || v < 0.0 {
            bail!("{name} must be a finite non-negative number, got {v}");
        }
    }
    for (name, v) in [
        ("--adagcl-temp", cfg.temp),
        ("--adagcl-gate-temp", cfg.gate_temp),
        ("--adagcl-gate-decay", cfg.gate_decay),
    ] {
        if !v.is_finite() || v <= 0.0 {
            bail!("{name} must be a finite positive number, got {v}");
        }
    }
    Ok(cfg)
}

/// Train AdaGCL into a run directory.
pub fn run_train_adagcl(a: &TrainArgs, quiet: bool) -> Result<RunResult> {
    let cfg = adagcl_config(a)?;
    let run = StandaloneRun::start(&a.dataset, &a.out, "adagcl", "AdaGCL", cfg.dim, &cfg, quiet)?;
    let out = train(&run.ds, &cfg, quiet, |rec| {
        run.record(rec, || {
            let l = &rec.losses;
            format!(
                "epoch {:>4}  bpr {:.4}  ssl {:.4}  ib {:.4}  gen1 {:.3}  gen2 {:.3}  view1 kept {:.1}%  valid R@20 {:.4}  N@20 {:.4}  ({:.2} s/epoch)",
                rec.epoch,
                l.bpr,
                l.ssl,
                l.ib,
                l.gen1,
                l.gen2,
                100.0 * l.view1_kept,
                rec.valid.recall(20),
                rec.valid.ndcg(20),
                rec.train_seconds
            )
        })
    });
    let n = run.ds.n_users() + run.ds.n_items();
    run.finish(
        "adagcl",
        &[("final", n, cfg.dim, &out.final_emb)],
        out.best_epoch,
        out.best_valid,
        out.test,
        out.epoch_seconds,
    )
}
