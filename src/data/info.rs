//! Summary statistics of a dataset (`ddrm data info`).

use super::format::{Dataset, Split};
use serde::Serialize;

/// Statistics printed by `ddrm data info`.
#[derive(Debug, Clone, Serialize)]
pub struct DatasetInfo {
    /// Where the dataset was read from.
    pub source: String,
    /// Number of users.
    pub users: usize,
    /// Number of items.
    pub items: usize,
    /// Interactions in train.
    pub train: usize,
    /// Interactions in valid.
    pub valid: usize,
    /// Interactions in test.
    pub test: usize,
    /// All interactions over users x items.
    pub density: f64,
    /// Train interactions per item at quantiles 0, 0.25, 0.5, 0.75, 0.9, 0.99, 1.
    pub item_popularity_quantiles: Vec<(f64, u32)>,
    /// Users with no test interaction (not evaluated).
    pub users_without_test: usize,
    /// Users with no train interaction.
    pub users_without_train: usize,
    /// Items with no train interaction.
    pub items_without_train: usize,
    /// Whether raw id maps are stored.
    pub has_id_maps: bool,
    /// Data fingerprint (sizes and checksum).
    pub fingerprint: String,
}

/// Compute the statistics of `ds`.
pub fn info(ds: &Dataset) -> DatasetInfo {
    let by_item = ds.train_by_item();
    let mut pop: Vec<u32> = (0..ds.n_items())
        .map(|i| by_item.row_len(i) as u32)
        .collect();
    pop.sort_unstable();
    let q = |p: f64| -> u32 {
        if pop.is_empty() {
            return 0;
        }
        pop[((pop.len() - 1) as f64 * p).round() as usize]
    };
    let qs = [0.0, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0];
    let total: usize = Split::ALL.iter().map(|&s| ds.split(s).nnz()).sum();
    DatasetInfo {
        source: ds.source.clone(),
        users: ds.n_users(),
        items: ds.n_items(),
        train: ds.train().nnz(),
        valid: ds.valid().nnz(),
        test: ds.test().nnz(),
        density: total as f64 / (ds.n_users() as f64 * ds.n_items() as f64).max(1.0),
        item_popularity_quantiles: qs.iter().map(|&p| (p, q(p))).collect(),
        users_without_test: (0..ds.n_users())
            .filter(|&u| ds.test().row_len(u) == 0)
            .count(),
        users_without_train: (0..ds.n_users())
            .filter(|&u| ds.train().row_len(u) == 0)
            .count(),
        items_without_train: pop.iter().filter(|&&c| c == 0).count(),
        has_id_maps: !ds.user_raw_ids().is_empty(),
        fingerprint: ds.fingerprint(),
    }
}
