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
    mut on_record: impl FnMut(&EpochRecord),
) -> TrainOutcome {
    let d = cfg.model.dim;
    let nu = ds.n_users();
    let mut model = Model::new(cfg.model.clone(), ds, cfg.seed);
    let mut stop = EarlyStop::new(cfg.patience);
    let mut history = Vec::new();
    let mut train_time = 0f64;
    let mut epochs_run = 0usize;
    let bar = progress::bar(cfg.epochs as u64, cfg.model.backend.label(), quiet);
    for epoch in 1..=cfg.epochs {
        let t0 = Instant::now();
        let (lsum, ssum, nb) = run_epoch(&mut model, ds, cfg.seed, epoch as u64, cfg.batch);
        let secs = t0.elapsed().as_secs_f64();
        train_time += secs;
        epochs_run += 1;
        bar.inc(1);
        let nbf = nb.max(1) as f64;
        bar.set_prefix(format!("loss {:.4} {:.1}s/epoch", lsum / nbf, secs));
        if epoch % cfg.eval_every.max(1) == 0 || epoch == cfg.epochs {
            let fin = model.final_embeddings();
            let valid =
                evaluate_embeddings(ds, Split::Valid, &fin[..nu * d], &fin[nu * d..], d, &cfg.ks);
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
    let test = evaluate_embeddings(ds, Split::Test, &fin[..nu * d], &fin[nu * d..], d, &cfg.ks);
    TrainOutcome {
        best_epoch,
        best_valid,
        test,
        history,
        model,
        final_emb: fin,
        epoch_seconds: train_time / epochs_run.max(1) as f64,
    }
}
