//! `ddrm train`, `ddrm eval`, `ddrm recommend`.

use super::run_dir::{RunConfig, RunDir, RunResult};
use super::table::render;
use crate::backends::trainer::TrainConfig;
use crate::backends::{Augment, Backend, ModelConfig};
use crate::data::Split;
use crate::denoising::Objective;
use crate::device::Device;
use crate::eval::Metrics;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;
use std::time::Instant;

/// Options of `ddrm train` for the backends.
#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    /// Model: an embedding backend, or MultiVAE (for `--denoise ddrm` the backend is taken
    /// from the `--from` run).
    #[arg(long, value_enum, required_unless_present = "from")]
    pub model: Option<ModelName>,
    /// Denoising method: `ddrm` trains the diffusion plug-in on a backend run (`--from`);
    /// `tce` and `rce` train the backend itself with the truncated / reweighted BCE loss.
    #[arg(long, value_enum)]
    pub denoise: Option<Denoise>,
    /// T-CE: final fraction of each batch's positives dropped (largest loss first).
    #[arg(long, default_value_t = 0.2)]
    pub tce_drop: f32,
    /// T-CE: optimizer steps over which the drop rate grows linearly from 0.
    #[arg(long, default_value_t = 2000)]
    pub tce_warmup: u64,
    /// R-CE: exponent β of the weight σ(score)^β.
    #[arg(long, default_value_t = 0.1)]
    pub rce_beta: f32,
    /// DeCA: α of α KL(g, f) + (1 − α) KL(f, g) (agreement with the auxiliary model). The
    /// defaults are the authors' recipe for GMF on MovieLens-100k.
    #[arg(long, default_value_t = 1.0)]
    pub deca_alpha: f32,
    /// DeCA: C1, the weight pushing sampled negatives' predictions to 0 on DP steps.
    #[arg(long, default_value_t = 1000.0)]
    pub deca_c1: f32,
    /// DeCA: C2, the weight pushing positives' predictions to 1 on DN steps.
    #[arg(long, default_value_t = 1000.0)]
    pub deca_c2: f32,
    /// DeCA: embedding width of its three auxiliary MF models.
    #[arg(long, default_value_t = 32)]
    pub deca_dim: usize,
    /// DDRM options.
    #[command(flatten)]
    pub ddrm: crate::cli::ddrm_cmd::DdrmArgs,
    /// Dataset name or path.
    #[arg(long, default_value = "ml1m-noisy")]
    pub dataset: String,
    /// Seed.
    #[arg(long, default_value_t = 2020)]
    pub seed: u64,
    /// Run directory to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Embedding size.
    #[arg(long, default_value_t = 64)]
    pub dim: usize,
    /// Propagation layers (LightGCN, SGL).
    #[arg(long, default_value_t = 3)]
    pub layers: usize,
    /// Learning rate (default: per model, see README).
    #[arg(long)]
    pub lr: Option<f32>,
    /// L2 regularization (default: per model).
    #[arg(long)]
    pub reg: Option<f32>,
    /// Batch size (default: per model).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Maximum epochs (default: per model).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Validate every N epochs.
    #[arg(long, default_value_t = 5)]
    pub eval_every: usize,
    /// Validations without improvement before stopping.
    #[arg(long, default_value_t = 5)]
    pub patience: usize,
    /// SGL augmentation.
    #[arg(long, value_enum, default_value_t = Augment::Ed)]
    pub augment: Augment,
    /// SGL drop ratio.
    #[arg(long, default_value_t = 0.1)]
    pub drop_ratio: f64,
    /// SGL temperature.
    #[arg(long, default_value_t = 0.2)]
    pub tau: f32,
    /// SGL InfoNCE weight.
    #[arg(long, default_value_t = 0.1)]
    pub ssl_weight: f32,
    /// Cut-offs to report.
    #[arg(long, value_delimiter = ',', default_value = "10,20")]
    pub k: Vec<usize>,
    /// DiffRec: plain uniform steps and MSE (no importance sampling, no SNR weights).
    #[arg(long)]
    pub no_reweight: bool,
    /// MultiVAE options.
    #[command(flatten)]
    pub vae: crate::cli::multivae_cmd::VaeArgs,
    /// CDAE options.
    #[command(flatten)]
    pub cdae: crate::cli::cdae_cmd::CdaeArgs,
    /// AdaGCL options.
    #[command(flatten)]
    pub adagcl: crate::cli::adagcl_cmd::AdaGclArgs,
    /// Where DDRM trains and evaluates (`--denoise ddrm`): cpu, cuda or cuda:N (a build
    /// with `--features cuda` and a GPU). The other models train on the CPU.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What `ddrm train --model` trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ModelName {
    /// Matrix factorization with BPR.
    Mf,
    /// LightGCN.
    Lightgcn,
    /// SGL.
    Sgl,
    /// MultiVAE (a comparison system; not a backend for DDRM).
    Multivae,
    /// DiffRec (a comparison system: diffusion over interaction vectors).
    Diffrec,
    /// CDAE (a comparison system: collaborative denoising auto-encoder).
    Cdae,
    /// AdaGCL (a comparison system: graph contrastive learning between two learned views).
    Adagcl,
}

impl ModelName {
    /// The embedding backend, if this is one.
    pub fn backend(self) -> Option<Backend> {
        match self {
            ModelName::Mf => Some(Backend::Mf),
            ModelName::Lightgcn => Some(Backend::Lightgcn),
            ModelName::Sgl => Some(Backend::Sgl),
            ModelName::Multivae | ModelName::Diffrec | ModelName::Cdae | ModelName::Adagcl => None,
        }
    }

    /// Name as printed.
    pub fn label(self) -> &'static str {
        match self {
            ModelName::Multivae => "MultiVAE",
            ModelName::Diffrec => "DiffRec",
            ModelName::Cdae => "CDAE",
            ModelName::Adagcl => "AdaGCL",
            m => m.backend().map_or("?", |b| b.label()),
        }
    }
}

impl From<Backend> for ModelName {
    fn from(b: Backend) -> Self {
        match b {
            Backend::Mf => ModelName::Mf,
            Backend::Lightgcn => ModelName::Lightgcn,
            Backend::Sgl => ModelName::Sgl,
        }
    }
}

/// Denoising methods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Denoise {
    /// DDRM (the paper's diffusion plug-in, trained on a backend run given by `--from`).
    Ddrm,
    /// T-CE: the backend trained with truncated BCE (Wang et al., WSDM 2021).
    Tce,
    /// R-CE: the backend trained with reweighted BCE (Wang et al., WSDM 2021).
    Rce,
    /// DeCA: the backend trained to agree with auxiliary models (Wang et al., WWW 2022).
    Deca,
}

/// The backend objective that `--denoise` and its options select.
pub fn objective(a: &TrainArgs) -> Objective {
    match a.denoise {
        Some(Denoise::Tce) => Objective::Tce {
            drop: a.tce_drop,
            warmup: a.tce_warmup,
        },
        Some(Denoise::Rce) => Objective::Rce { beta: a.rce_beta },
        Some(Denoise::Deca) => Objective::Deca {
            alpha: a.deca_alpha,
            c1: a.deca_c1,
            c2: a.deca_c2,
            dim: a.deca_dim,
        },
        _ => Objective::Bpr,
    }
}

/// Per-model defaults (chosen on the valid split of ml1m-noisy; see README).
pub fn defaults(b: Backend) -> (f32, f32, usize, usize) {
    // (lr, reg, batch, epochs)
    match b {
        Backend::Mf => (1e-3, 1e-4, 2048, 400),
        Backend::Lightgcn => (1e-3, 1e-4, 2048, 400),
        Backend::Sgl => (1e-3, 1e-4, 2048, 400),
    }
}

fn check_args(a: &TrainArgs) -> Result<()> {
    if a.dim == 0 {
        bail!("--dim must be at least 1");
    }
    if a.k.is_empty() || a.k.contains(&0) {
        bail!("--k must list positive cut-offs, e.g. 10,20");
    }
    if !(0.0..1.0).contains(&a.drop_ratio) {
        bail!("--drop-ratio must be in [0, 1)");
    }
    if a.tau <= 0.0 || a.tau.is_nan() {
        bail!("--tau must be positive");
    }
    for (name, v) in [("--lr", a.lr), ("--reg", a.reg)] {
        if let Some(v) = v {
            if !v.is_finite() || v < 0.0 {
                bail!("{name} must be a finite non-negative number");
            }
        }
    }
    if a.batch == Some(0) || a.epochs == Some(0) {
        bail!("--batch and --epochs must be at least 1");
    }
    if a.eval_every == 0 {
        bail!("--eval-every must be at least 1 (validation picks the epoch whose test metrics are reported)");
    }
    if !(0.0..1.0).contains(&a.tce_drop) {
        bail!("--tce-drop must be in [0, 1), got {}", a.tce_drop);
    }
    if !a.rce_beta.is_finite() || a.rce_beta < 0.0 {
        bail!(
            "--rce-beta must be a finite non-negative number, got {}",
            a.rce_beta
        );
    }
    if !(0.0..=1.0).contains(&a.deca_alpha) {
        bail!("--deca-alpha must be in [0, 1], got {}", a.deca_alpha);
    }
    for (name, v) in [("--deca-c1", a.deca_c1), ("--deca-c2", a.deca_c2)] {
        if !v.is_finite() || v < 0.0 {
            bail!("{name} must be a finite non-negative number, got {v}");
        }
    }
    if a.deca_dim == 0 {
        bail!("--deca-dim must be at least 1");
    }
    Ok(())
}

/// Build the training configuration from arguments.
pub fn train_config(a: &TrainArgs) -> Result<TrainConfig> {
    check_args(a)?;
    let Some(model) = a.model.and_then(|m| m.backend()) else {
        bail!("--model mf|lightgcn|sgl is required to train a backend")
    };
    let (lr, reg, batch, epochs) = defaults(model);
    let mut ks = a.k.clone();
    if !ks.contains(&20) {
        ks.push(20); // model selection uses valid Recall@20
    }
    Ok(TrainConfig {
        model: ModelConfig {
            backend: model,
            dim: a.dim,
            layers: if model == Backend::Mf { 0 } else { a.layers },
            reg: a.reg.unwrap_or(reg),
            lr: a.lr.unwrap_or(lr),
            augment: a.augment,
            drop_ratio: a.drop_ratio,
            tau: a.tau,
            ssl_weight: a.ssl_weight,
            objective: objective(a),
        },
        batch: a.batch.unwrap_or(batch),
        epochs: a.epochs.unwrap_or(epochs),
        eval_every: a.eval_every.max(1),
        patience: a.patience.max(1),
        seed: a.seed,
        ks,
    })
}

/// Print metrics as a table (or JSON).
pub fn print_metrics(title: &str, m: &Metrics, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(m)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> =
        m.at.iter()
            .map(|a| {
                vec![
                    format!("{}", a.k),
                    format!("{:.4}", a.recall),
                    format!("{:.4}", a.ndcg),
                ]
            })
            .collect();
    println!("{title} ({} users)", m.users);
    print!("{}", render(&["K", "Recall@K", "NDCG@K"], &rows));
    Ok(())
}

/// Train a backend (or DDRM with `--denoise ddrm --from RUN`) into a run directory.
pub fn run_train(a: &TrainArgs, quiet: bool) -> Result<RunResult> {
    let on_cpu = crate::device::parse_spec(&a.device)?.is_none();
    let gpu_model =
        a.denoise == Some(Denoise::Ddrm) || (a.denoise.is_none() && a.model == Some(ModelName::Mf));
    if !on_cpu && !gpu_model {
        bail!(
            "--device {}: on a GPU, `ddrm train` trains MF-BPR (--model mf) and DDRM \
             (--denoise ddrm --from RUN); the other models train on the CPU only so far",
            a.device
        );
    }
    // opened before anything is written: a missing GPU leaves no half-made run behind
    let device = Device::open(&a.device)?;
    if a.denoise == Some(Denoise::Ddrm) {
        check_args(a)?;
        let Some(from) = a.ddrm.from.clone() else {
            bail!("--denoise ddrm needs --from RUN, a trained backend run directory");
        };
        let cfg = crate::cli::ddrm_cmd::ddrm_config(
            &a.ddrm,
            a.lr,
            a.batch,
            a.epochs,
            a.eval_every,
            a.patience,
            a.seed,
            &a.k,
        )?;
        return crate::cli::ddrm_cmd::run_train_ddrm(cfg, &from, &a.out, &device, quiet);
    }
    if let Some(
        m @ (ModelName::Multivae | ModelName::Diffrec | ModelName::Cdae | ModelName::Adagcl),
    ) = a.model
    {
        if a.denoise.is_some() || a.ddrm.from.is_some() {
            bail!(
                "--denoise and --from apply to the embedding backends (mf, lightgcn, sgl), not {}",
                m.label()
            );
        }
        check_args(a)?;
        return match m {
            ModelName::Multivae => crate::cli::multivae_cmd::run_train_multivae(a, quiet),
            ModelName::Diffrec => crate::cli::diffrec_cmd::run_train_diffrec(a, quiet),
            ModelName::Adagcl => crate::cli::adagcl_cmd::run_train_adagcl(a, quiet),
            _ => crate::cli::cdae_cmd::run_train_cdae(a, quiet),
        };
    }
    if a.ddrm.from.is_some() {
        bail!("--from needs --denoise ddrm (T-CE and R-CE train a backend from scratch: give --model)");
    }
    let cfg = train_config(a)?;
    let ds = crate::data::open(&a.dataset)?;
    let rd = RunDir::create(&a.out)?;
    let t0 = Instant::now();
    let rc = RunConfig {
        kind: "backend".into(),
        dataset: a.dataset.clone(),
        fingerprint: ds.fingerprint(),
        backend: format!(
            "{}{}",
            a.model.map_or("?", |m| m.label()),
            cfg.model.objective.label()
        ),
        dim: a.dim,
        config: serde_json::to_value(&cfg)?,
    };
    rd.write_json("config.json", &rc)?;
    let mut log_err: Option<anyhow::Error> = None;
    let out = crate::backends::trainer::train_on(&ds, &cfg, &device, quiet, |rec| {
        if let Err(e) = rd.append_metrics(rec) {
            log_err.get_or_insert(e);
        }
        if !quiet {
            eprintln!(
                "epoch {:>4}  loss {:.4}  valid R@20 {:.4}  N@20 {:.4}  ({:.2} s/epoch)",
                rec.epoch,
                rec.loss,
                rec.valid.recall(20),
                rec.valid.ndcg(20),
                rec.train_seconds
            );
        }
    })?;
    if let Some(e) = log_err {
        return Err(e.context("writing metrics.jsonl"));
    }
    let (nu, ni, d) = (ds.n_users(), ds.n_items(), a.dim);
    crate::util::tensorfile::write(
        &rd.path.join("model.ckpt"),
        "backend",
        &ds.fingerprint(),
        serde_json::to_value(&cfg)?,
        &[
            ("ego", nu + ni, d, &out.model.ego),
            ("final", nu + ni, d, &out.final_emb),
        ],
    )?;
    let res = RunResult {
        best_epoch: out.best_epoch,
        valid: out.best_valid,
        test: out.test,
        epoch_seconds: out.epoch_seconds,
        total_seconds: t0.elapsed().as_secs_f64(),
    };
    rd.write_json("result.json", &res)?;
    Ok(res)
}

/// `ddrm eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Run directory.
    #[arg(long)]
    pub run: PathBuf,
    /// Split to evaluate.
    #[arg(long, value_enum, default_value_t = Split::Test)]
    pub split: Split,
    /// Cut-offs.
    #[arg(long, value_delimiter = ',', default_value = "10,20")]
    pub k: Vec<usize>,
    /// Where ranking (score + mask + top-K) and DDRM's inference run: cpu, cuda or cuda:N
    /// (cuda needs a build with `--features cuda` and a GPU).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// JSON output.
    #[arg(long)]
    pub json: bool,
}

/// `ddrm recommend`.
#[derive(Args, Debug)]
pub struct RecommendArgs {
    /// Run directory.
    #[arg(long)]
    pub run: PathBuf,
    /// User id (dense id of the dataset).
    #[arg(long)]
    pub user: u32,
    /// How many items.
    #[arg(long, default_value_t = 20)]
    pub k: usize,
    /// Also mask valid items (as in testing).
    #[arg(long)]
    pub mask_valid: bool,
    /// Where ranking and DDRM's inference run: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// JSON output.
    #[arg(long)]
    pub json: bool,
}

/// Scores for a run: query rows for `users` and the item matrix. DDRM's inference runs on
/// `device`; the other models' queries are computed on the CPU.
pub fn run_queries(
    rd: &RunDir,
    rc: &RunConfig,
    ds: &crate::data::Dataset,
    users: &[u32],
    device: &Device,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let tf = rd.checkpoint(rc)?;
    let d = rc.dim;
    let nu = ds.n_users();
    if rc.kind == "ddrm" {
        return crate::cli::ddrm_cmd::ddrm_queries(&tf, rc, ds, users, device);
    }
    if rc.kind == "multivae" {
        return crate::cli::multivae_cmd::multivae_queries(&tf, rc, ds, users);
    }
    if rc.kind == "diffrec" {
        return crate::cli::diffrec_cmd::diffrec_queries(&tf, rc, ds, users);
    }
    if rc.kind == "cdae" {
        return crate::cli::cdae_cmd::cdae_queries(&tf, rc, ds, users);
    }
    let (fin, rows, cols) = tf.get("final")?;
    if rows != nu + ds.n_items() || cols != d {
        bail!("checkpoint shape {rows} x {cols} does not match the dataset");
    }
    let mut q = vec![0f32; users.len() * d];
    crate::kernels::cpu::elementwise::gather_rows(fin, d, users, &mut q);
    Ok((q, fin[nu * d..].to_vec()))
}

/// Run `ddrm eval`.
pub fn run_eval(a: &EvalArgs) -> Result<()> {
    if a.k.is_empty() || a.k.contains(&0) {
        bail!("--k must list positive cut-offs");
    }
    let device = Device::open(&a.device)?;
    let rd = RunDir::open(&a.run)?;
    let rc = rd.config()?;
    let ds = rd.dataset(&rc)?;
    let users = crate::eval::eval_users(&ds, a.split);
    let (q, items) = run_queries(&rd, &rc, &ds, &users, &device)?;
    let m =
        crate::eval::evaluate_queries_on(&device, &ds, a.split, &users, &q, &items, rc.dim, &a.k)?;
    let on = if device.is_cpu() {
        String::new()
    } else {
        format!(", on {}", device.name())
    };
    print_metrics(
        &format!("{} on {} ({}{on})", rc.backend, rc.dataset, a.split.name()),
        &m,
        a.json,
    )
}

/// Run `ddrm recommend`.
pub fn run_recommend(a: &RecommendArgs) -> Result<()> {
    let rd = RunDir::open(&a.run)?;
    let rc = rd.config()?;
    let ds = rd.dataset(&rc)?;
    if a.user as usize >= ds.n_users() {
        bail!(
            "user {} out of range: the dataset has {} users (ids 0..{})",
            a.user,
            ds.n_users(),
            ds.n_users() - 1
        );
    }
    if a.k == 0 {
        bail!("--k must be at least 1");
    }
    let device = Device::open(&a.device)?;
    let (q, items) = run_queries(&rd, &rc, &ds, &[a.user], &device)?;
    let masks = if a.mask_valid {
        vec![ds.train(), ds.valid()]
    } else {
        vec![ds.train()]
    };
    let k = a.k.min(ds.n_items());
    let (top, scores) = crate::eval::rank_on(&device, &q, &items, rc.dim, k, &masks, &[a.user])?;
    let raw = ds.item_raw_ids();
    let list: Vec<(u32, f32)> = top
        .iter()
        .zip(&scores)
        .filter(|(i, _)| **i != u32::MAX)
        .map(|(i, s)| (*i, *s))
        .collect();
    if a.json {
        let v: Vec<serde_json::Value> = list
            .iter()
            .enumerate()
            .map(|(r, (i, s))| serde_json::json!({"rank": r + 1, "item": i, "raw_item": raw.get(*i as usize), "score": s}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v).context("json")?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .enumerate()
        .map(|(r, (i, s))| {
            vec![
                format!("{}", r + 1),
                format!("{i}"),
                raw.get(*i as usize).map_or("-".into(), |x| x.to_string()),
                format!("{s:.4}"),
            ]
        })
        .collect();
    println!("top {} for user {} ({})", list.len(), a.user, rc.backend);
    print!("{}", render(&["rank", "item", "raw id", "score"], &rows));
    Ok(())
}
