//! Full-ranking evaluation: every user with held-out items is scored against every item by
//! the fused top-K kernel, seen items masked (train; train and valid when testing).

pub mod early_stop;
pub mod metrics;

pub use early_stop::EarlyStop;
pub use metrics::{AtK, Metrics, MetricsAcc};

use crate::data::{Dataset, Split};
use crate::kernels::cpu::topk::{fused_topk, PackedItems};
use crate::kernels::cpu::Isa;

/// Users evaluated on `split`: those with at least one interaction in it.
pub fn eval_users(ds: &Dataset, split: Split) -> Vec<u32> {
    let m = ds.split(split);
    (0..ds.n_users() as u32)
        .filter(|&u| m.row_len(u as usize) > 0)
        .collect()
}

/// The masks for evaluating on `split`: train for valid; train and valid for test.
pub fn masks_for(ds: &Dataset, split: Split) -> Vec<crate::data::CsrView<'_>> {
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
    let kmax = ks.iter().copied().max().unwrap_or(20).min(ds.n_items());
    let masks = masks_for(ds, split);
    let truth = ds.split(split);
    let (top, _) = fused_topk(Isa::detect(), queries, items, kmax, &masks, users);
    let mut acc = MetricsAcc::new(ks);
    for (q, &u) in users.iter().enumerate() {
        acc.add(&top[q * kmax..(q + 1) * kmax], truth.row(u as usize));
    }
    acc.finish()
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
