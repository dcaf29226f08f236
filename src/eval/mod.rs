//! Full-ranking evaluation: every user with held-out items is scored against every item by
//! the fused top-K kernel, seen items masked (train; train and valid when testing).

pub mod early_stop;
pub mod metrics;

pub use early_stop::EarlyStop;
pub use metrics::{AtK, Metrics, MetricsAcc};

use crate::data::{CsrView, Dataset, Split};
use crate::device::Device;
use crate::kernels::cpu::topk::{fused_topk, PackedItems};
use crate::kernels::cpu::Isa;
use anyhow::{ensure, Result};

/// Users evaluated on `split`: those with at least one interaction in it.
pub fn eval_users(ds: &Dataset, split: Split) -> Vec<u32> {
    let m = ds.split(split);
    (0..ds.n_users() as u32)
        .filter(|&u| m.row_len(u as usize) > 0)
        .collect()
}

/// The masks for evaluating on `split`: train for valid; train and valid for test.
pub fn masks_for(ds: &Dataset, split: Split) -> Vec<CsrView<'_>> {
    match split {
        Split::Train => vec![],
        Split::Valid => vec![ds.train()],
        Split::Test => vec![ds.train(), ds.valid()],
    }
}

/// Evaluate queries (one row of width `d` per user in `users`) against `items`
/// (`n_items x d`) on `split` at cut-offs `ks`. Works in user blocks so memory stays
/// independent of users x items.
pub fn evaluate_queries(
    ds: &Dataset,
    split: Split,
    users: &[u32],
    queries: &[f32],
    items: &PackedItems,
    ks: &[usize],
) -> Metrics {
    let kmax = kmax_of(ds, ks);
    let masks = masks_for(ds, split);
    let (top, _) = fused_topk(Isa::detect(), queries, items, kmax, &masks, users);
    metrics_of_lists(ds, split, users, &top, kmax, ks)
}

/// The deepest cut-off, at most the number of items.
fn kmax_of(ds: &Dataset, ks: &[usize]) -> usize {
    ks.iter().copied().max().unwrap_or(20).min(ds.n_items())
}

/// Metrics of ranked lists (`users.len() x kmax`, best first) against `split`'s items.
fn metrics_of_lists(
    ds: &Dataset,
    split: Split,
    users: &[u32],
    top: &[u32],
    kmax: usize,
    ks: &[usize],
) -> Metrics {
    let truth = ds.split(split);
    let mut acc = MetricsAcc::new(ks);
    for (q, &u) in users.iter().enumerate() {
        acc.add(&top[q * kmax..(q + 1) * kmax], truth.row(u as usize));
    }
    acc.finish()
}

/// Top-`k` items per query on `device`: `queries` is `rows.len() x d`, `items` is
/// `n_items x d` (row-major); each query skips the items of row `rows[q]` of every mask.
/// Returns `(ids, scores)`, each `rows.len() x k`, best first, ties to the lower id, padded
/// with `u32::MAX` / `-inf` when fewer than `k` items are unmasked (the same rule on both
/// devices).
pub fn rank_on(
    device: &Device,
    queries: &[f32],
    items: &[f32],
    d: usize,
    k: usize,
    masks: &[CsrView],
    rows: &[u32],
) -> Result<(Vec<u32>, Vec<f32>)> {
    ensure!(d > 0, "ranking: the embedding width must be at least 1");
    ensure!(
        queries.len() == rows.len() * d && items.len().is_multiple_of(d),
        "ranking: {} query values for {} queries of width {d}, {} item values",
        queries.len(),
        rows.len(),
        items.len()
    );
    match device {
        Device::Cpu => {
            let packed = PackedItems::new(items, items.len() / d, d);
            Ok(fused_topk(Isa::detect(), queries, &packed, k, masks, rows))
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(gpu) => gpu.topk_host(queries, items, d, k, masks, rows),
    }
}

/// [`evaluate_queries`] on `device`, with the items as a row-major `n_items x d` matrix.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_queries_on(
    device: &Device,
    ds: &Dataset,
    split: Split,
    users: &[u32],
    queries: &[f32],
    items: &[f32],
    d: usize,
    ks: &[usize],
) -> Result<Metrics> {
    ensure!(
        items.len() == ds.n_items() * d,
        "evaluation: {} item values, but the dataset has {} items of width {d}",
        items.len(),
        ds.n_items()
    );
    let kmax = kmax_of(ds, ks);
    let masks = masks_for(ds, split);
    let (top, _) = rank_on(device, queries, items, d, kmax, &masks, users)?;
    Ok(metrics_of_lists(ds, split, users, &top, kmax, ks))
}

/// Evaluate user/item embedding tables (inner-product scores) on `split`.
pub fn evaluate_embeddings(
    ds: &Dataset,
    split: Split,
    user_emb: &[f32],
    item_emb: &[f32],
    d: usize,
    ks: &[usize],
) -> Metrics {
    let users = eval_users(ds, split);
    let mut q = vec![0f32; users.len() * d];
    crate::kernels::cpu::elementwise::gather_rows(user_emb, d, &users, &mut q);
    let items = PackedItems::new(item_emb, ds.n_items(), d);
    evaluate_queries(ds, split, &users, &q, &items, ks)
}
