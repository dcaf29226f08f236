//! `ddrm experiment ablation`: the paper's ablations (Figures 4 and 5) and ours. One backend
//! run, then DDRM (paper recipe) with one part switched off or replaced per row: the losses
//! (reconstruction only, reweighted BPR only), the user denoiser (item only), the inference
//! start (pure noise; the start point with no reverse steps) and the denoiser architecture.

use super::ddrm_cmd::DdrmArgs;
use super::experiment_common::{
    at20, backend_row, gain, markdown, pair, valid20, write_outputs, DdrmExperimentArgs,
    RESULT_COLUMNS,
};
use super::table::render;
use crate::diffusion::ddrm::{Arch, Inference, Rounding};
use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use std::path::PathBuf;
use std::time::Instant;

/// One ablation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    /// DDRM as the recipe sets it.
    Full,
    /// Reconstruction loss with plain BPR: no reweighting (γ = 0; Figure 4).
    ReconOnly,
    /// Reweighted BPR alone: no reconstruction loss (λ = 1; Figure 4).
    ReweightOnly,
    /// Item denoiser only; users keep their backend embeddings (Figure 5).
    ItemOnly,
    /// Inference from pure noise instead of the mean of the user's liked items.
    NoiseStart,
    /// Rank by the mean of the user's liked items, no reverse steps (the start point's share).
    StartOnly,
    /// DDRM with cosine rounding instead of the inner product.
    Cosine,
    /// The start point alone, rounded by cosine.
    StartOnlyCosine,
    /// The Transformer denoiser instead of the MLP (Table 3).
    Transformer,
}

impl Variant {
    fn describe(self) -> &'static str {
        match self {
            Variant::Full => "DDRM",
            Variant::ReconOnly => "recon. loss only (γ = 0)",
            Variant::ReweightOnly => "reweighted loss only (λ = 1)",
            Variant::ItemOnly => "item denoiser only",
            Variant::NoiseStart => "inference from noise",
            Variant::StartOnly => "start point only",
            Variant::Cosine => "cosine rounding",
            Variant::StartOnlyCosine => "start point only, cosine rounding",
            Variant::Transformer => "Transformer denoiser",
        }
    }
    fn apply(self, d: &mut DdrmArgs) {
        match self {
            Variant::Full => {}
            Variant::ReconOnly => d.gamma = Some(0.0),
            Variant::ReweightOnly => d.lambda = Some(1.0),
            Variant::ItemOnly => d.item_only = true,
            Variant::NoiseStart => d.inference = Some(Inference::Noise),
            Variant::StartOnly => d.inference = Some(Inference::StartOnly),
            Variant::Cosine => d.rounding = Some(Rounding::Cosine),
            Variant::StartOnlyCosine => {
                d.inference = Some(Inference::StartOnly);
                d.rounding = Some(Rounding::Cosine);
            }
            Variant::Transformer => d.arch = Some(Arch::Transformer),
        }
    }
    fn tag(self) -> String {
        format!("{self:?}").to_lowercase()
    }
}

/// Options of `ddrm experiment ablation`.
#[derive(Args, Debug)]
pub struct AblationArgs {
    /// Variants to train.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "full,recon-only,reweight-only,item-only,noise-start,start-only,start-only-cosine"
    )]
    pub variants: Vec<Variant>,
    /// Output directory (the backend run, one DDRM run per variant, the table).
    #[arg(long, default_value = "runs/ablation")]
    pub out: PathBuf,
    /// Options shared with the other DDRM experiments.
    #[command(flatten)]
    pub common: DdrmExperimentArgs,
}

/// Run the ablation.
pub fn run(a: &AblationArgs, quiet: bool) -> Result<()> {
    if a.variants.is_empty() {
        bail!("--variants is empty");
    }
    let mut variants: Vec<Variant> = Vec::new();
    for &v in &a.variants {
        if !variants.contains(&v) {
            variants.push(v);
        }
    }
    let t0 = Instant::now();
    let c = &a.common;
    let label = c.model.label();
    let (bdir, b) = c.start(&a.out, quiet)?;
    let base = at20(&b);
    let mut results = Vec::new();
    for &v in &variants {
        if !quiet {
            eprintln!("== {label}+DDRM: {} ==", v.describe());
        }
        // (the start-point variants train nothing: see `train_ddrm`)
        let r = c.variant(&bdir, None, &a.out.join(v.tag()), quiet, |d| v.apply(d))?;
        results.push((v, valid20(&r), at20(&r), r.best_epoch));
    }
    let secs = t0.elapsed().as_secs_f64();
    let mut header = vec!["variant"];
    header.extend(RESULT_COLUMNS);
    let mut rows = vec![backend_row(label, &b)];
    for &(v, val, m, e) in &results {
        rows.push(vec![
            v.describe().to_string(),
            format!("{val:.4}"),
            pair(m),
            gain(m, base),
            e.to_string(),
        ]);
    }
    let title = format!(
        "ddrm experiment ablation — {label}+DDRM on {} (valid and test splits, seed {})",
        c.dataset, c.seed
    );
    let md = markdown(
        &title,
        &header,
        &rows,
        &format!(
            "Total time: {secs:.0} s on {} threads.",
            rayon::current_num_threads()
        ),
    );
    let json = serde_json::json!({"dataset": c.dataset, "model": label, "seed": c.seed,
        "seconds": secs, "threads": rayon::current_num_threads(),
        "backend": {"recall20": base[0], "ndcg20": base[1], "valid_recall20": valid20(&b),
            "best_epoch": b.best_epoch},
        "rows": results.iter().map(|(v, val, m, e)| serde_json::json!({
            "variant": v, "valid_recall20": val, "recall20": m[0], "ndcg20": m[1],
            "best_epoch": e})).collect::<Vec<_>>()});
    write_outputs(&a.out, "ablation", &json, &md, None)?;
    if c.json {
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        println!("{title}");
        print!("{}", render(&header, &rows));
        println!(
            "total {secs:.0} s; written to {} (ablation.md, ablation.json)",
            a.out.display()
        );
    }
    Ok(())
}
