//! The training loop shared by the backends: BPR triplets per epoch, mini-batches, validation
//! every N epochs on Recall@20, early stopping with patience, best-epoch weights, final test.

use super::model::{Model, ModelConfig};
use super::sampler::sample_epoch;
use crate::data::{Dataset, Split};
use crate::eval::{evaluate_embeddings, EarlyStop, Metrics};
use crate::util::progress;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Loop settings.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrainConfig {
    /// Model hyper-parameters.
    pub model: ModelConfig,
    /// Triplets per batch.
    pub batch: usize,
    /// Maximum epochs.
    pub epochs: usize,
    /// Validate every N epochs.
    pub eval_every: usize,
    /// Stop after this many validations without improvement of valid Recall@20.
    pub patience: usize,
    /// Seed.
    pub seed: u64,
    /// Cut-offs reported.
    pub ks: Vec<usize>,
}

/// One validation record.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EpochRecord {
    /// Epoch (1-based).
    pub epoch: usize,
    /// Mean BPR loss over the epoch.
    pub loss: f64,
    /// Mean SSL loss (SGL).
    pub ssl: f64,
    /// Seconds of training in this epoch.
    pub train_seconds: f64,
    /// Validation metrics.
    pub valid: Metrics,
}

/// What training produced.
pub struct TrainOutcome {
    /// Epoch with the best valid Recall@20.
    pub best_epoch: usize,
    /// Valid metrics there.
    pub best_valid: Metrics,
    /// Test metrics of the best epoch's weights.
    pub test: Metrics,
    /// Validation history.
    pub history: Vec<EpochRecord>,
    /// The trained model (best-epoch weights).
    pub model: Model,
    /// Final embeddings of the best model, `(U + I) x d`.
    pub final_emb: Vec<f32>,
    /// Mean seconds per training epoch.
    pub epoch_seconds: f64,
}

/// One training epoch: augmentation setup, fresh triplets, mini-batches. Returns the summed
/// BPR and SSL losses and the number of batches.
pub fn run_epoch(
    model: &mut Model,
    ds: &Dataset,
    seed: u64,
    epoch: u64,
    batch: usize,
) -> (f64, f64, usize) {
    model.begin_epoch(seed, epoch);
    let trip = sample_epoch(&ds.train(), seed, epoch);
    let (mut lsum, mut ssum, mut nb) = (0f64, 0f64, 0usize);
    for s in (0..trip.users.len()).step_by(batch.max(1)) {
        let e = (s + batch.max(1)).min(trip.users.len());
        let l = model.train_batch(&trip.users[s..e], &trip.pos[s..e], &trip.neg[s..e]);
        lsum += l.bpr;
        ssum += l.ssl;
        nb += 1;
    }
    (lsum, ssum, nb)
}

/// Train a backend. `on_record` sees each validation (for logging to disk).
pub fn train(
    ds: &Dataset,
    cfg: &TrainConfig,
    quiet: bool,
    on_record: impl FnMut(&EpochRecord),
) -> TrainOutcome {
    let model = Model::new(cfg.model.clone(), ds, cfg.seed);
    let d = cfg.model.dim;
    let run = train_with(
        cfg,
        model,
        quiet,
        on_record,
        |model, epoch| {
            Ok::<_, std::convert::Infallible>(run_epoch(model, ds, cfg.seed, epoch, cfg.batch))
        },
        |fin, split| {
            let nu = ds.n_users();
            Ok(evaluate_embeddings(
                ds,
                split,
                &fin[..nu * d],
                &fin[nu * d..],
                d,
                &cfg.ks,
            ))
        },
    );
    match run {
        Ok(out) => out,
        Err(never) => match never {},
    }
}

/// [`train`] on `device`. On a GPU, MF-BPR trains there ([`super::mf_device`]) and the
/// validation and test rankings run there; the other backends train on the CPU only.
pub fn train_on(
    ds: &Dataset,
    cfg: &TrainConfig,
    device: &crate::device::Device,
    quiet: bool,
    on_record: impl FnMut(&EpochRecord),
) -> anyhow::Result<TrainOutcome> {
    match device {
        crate::device::Device::Cpu => Ok(train(ds, cfg, quiet, on_record)),
        #[cfg(feature = "cuda")]
        crate::device::Device::Cuda(gpu) => {
            let model = Model::new(cfg.model.clone(), ds, cfg.seed);
            let mut dev = super::mf_device::DeviceMf::new(&**gpu, &model, ds.n_users(), cfg.batch)?;
            let d = cfg.model.dim;
            train_with(
                cfg,
                model,
                quiet,
                on_record,
                |model, epoch| {
                    let (lsum, nb) = dev.epoch(ds, cfg.seed, epoch, cfg.batch)?;
                    model.ego = dev.table()?;
                    Ok((lsum, 0.0, nb))
                },
                |fin, split| {
                    let nu = ds.n_users();
                    let users = crate::eval::eval_users(ds, split);
                    let mut q = vec![0f32; users.len() * d];
                    crate::kernels::cpu::elementwise::gather_rows(
                        &fin[..nu * d],
                        d,
                        &users,
                        &mut q,
                    );
                    crate::eval::evaluate_queries_on(
                        device,
                        ds,
                        split,
                        &users,
                        &q,
                        &fin[nu * d..],
                        d,
                        &cfg.ks,
                    )
                },
            )
        }
    }
}

/// The training loop: epochs by `epoch(model, epoch)` (summed BPR and SSL losses, batches),
/// validation every `cfg.eval_every` epochs by `eval(final embeddings, split)`, early
/// stopping on valid Recall@20, the best epoch's weights, the test.
#[allow(clippy::too_many_arguments)]
fn train_with<E>(
    cfg: &TrainConfig,
    mut model: Model,
    quiet: bool,
    mut on_record: impl FnMut(&EpochRecord),
    mut epoch_fn: impl FnMut(&mut Model, u64) -> Result<(f64, f64, usize), E>,
    mut eval: impl FnMut(&[f32], Split) -> Result<Metrics, E>,
) -> Result<TrainOutcome, E> {
    let mut stop = EarlyStop::new(cfg.patience);
    let mut history = Vec::new();
    let mut train_time = 0f64;
    let mut epochs_run = 0usize;
    let bar = progress::bar(cfg.epochs as u64, cfg.model.backend.label(), quiet);
    for epoch in 1..=cfg.epochs {
        let t0 = Instant::now();
        let (lsum, ssum, nb) = epoch_fn(&mut model, epoch as u64)?;
        let secs = t0.elapsed().as_secs_f64();
        train_time += secs;
        epochs_run += 1;
        bar.inc(1);
        let nbf = nb.max(1) as f64;
        bar.set_prefix(format!("loss {:.4} {:.1}s/epoch", lsum / nbf, secs));
        if epoch % cfg.eval_every.max(1) == 0 || epoch == cfg.epochs {
            let fin = model.final_embeddings();
            let valid = eval(&fin, Split::Valid)?;
            let rec = EpochRecord {
                epoch,
                loss: lsum / nbf,
                ssl: ssum / nbf,
                train_seconds: secs,
                valid: valid.clone(),
            };
            on_record(&rec);
            history.push(rec);
            if stop.observe(epoch, valid, || model.ego.clone()) {
                break;
            }
        }
    }
    bar.finish_and_clear();
    let (best_epoch, best_valid, ego) = stop.into_best().expect("at least one validation runs");
    model.ego = ego;
    let fin = model.final_embeddings();
    let test = eval(&fin, Split::Test)?;
    Ok(TrainOutcome {
        best_epoch,
        best_valid,
        test,
        history,
        model,
        final_emb: fin,
        epoch_seconds: train_time / epochs_run.max(1) as f64,
    })
}
