//! Recall@K and NDCG@K (binary gains; IDCG over min(|T_u|, K) positions — the LightGCN /
//! DiffRec convention), averaged over users with at least one test item.

use serde::{Deserialize, Serialize};

/// Metrics at one cut-off.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct AtK {
    /// Cut-off.
    pub k: usize,
    /// Mean Recall@K.
    pub recall: f64,
    /// Mean NDCG@K.
    pub ndcg: f64,
}

/// Metrics over all evaluated users.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Metrics {
    /// One entry per cut-off, in the order asked.
    pub at: Vec<AtK>,
    /// Number of users evaluated.
    pub users: usize,
}

impl Metrics {
    /// Recall at cut-off `k` (NaN when `k` was not computed).
    pub fn recall(&self, k: usize) -> f64 {
        self.at
            .iter()
            .find(|a| a.k == k)
            .map_or(f64::NAN, |a| a.recall)
    }
    /// NDCG at cut-off `k` (NaN when `k` was not computed).
    pub fn ndcg(&self, k: usize) -> f64 {
        self.at
            .iter()
            .find(|a| a.k == k)
            .map_or(f64::NAN, |a| a.ndcg)
    }
}

/// Accumulates per-user metrics from ranked lists.
#[derive(Clone, Debug)]
pub struct MetricsAcc {
    ks: Vec<usize>,
    recall: Vec<f64>,
    ndcg: Vec<f64>,
    users: usize,
}

impl MetricsAcc {
    /// For cut-offs `ks`.
    pub fn new(ks: &[usize]) -> Self {
        MetricsAcc {
            ks: ks.to_vec(),
            recall: vec![0.0; ks.len()],
            ndcg: vec![0.0; ks.len()],
            users: 0,
        }
    }

    /// Add one user: `ranked` best first (padding `u32::MAX` ignored), `truth` sorted.
    pub fn add(&mut self, ranked: &[u32], truth: &[u32]) {
        if truth.is_empty() {
            return;
        }
        self.users += 1;
        for (q, &k) in self.ks.iter().enumerate() {
            let mut hits = 0usize;
            let mut dcg = 0f64;
            for (pos, &item) in ranked.iter().take(k).enumerate() {
                if item != u32::MAX && truth.binary_search(&item).is_ok() {
                    hits += 1;
                    dcg += 1.0 / ((pos + 2) as f64).log2();
                }
            }
            let idcg: f64 = (0..truth.len().min(k))
                .map(|p| 1.0 / ((p + 2) as f64).log2())
                .sum();
            self.recall[q] += hits as f64 / truth.len() as f64;
            self.ndcg[q] += dcg / idcg;
        }
    }

    /// Merge another accumulator (same cut-offs).
    pub fn merge(&mut self, o: &MetricsAcc) {
        for q in 0..self.ks.len() {
            self.recall[q] += o.recall[q];
            self.ndcg[q] += o.ndcg[q];
        }
        self.users += o.users;
    }

    /// Averages.
    pub fn finish(&self) -> Metrics {
        let n = self.users.max(1) as f64;
        Metrics {
            at: self
                .ks
                .iter()
                .enumerate()
                .map(|(q, &k)| AtK {
                    k,
                    recall: self.recall[q] / n,
                    ndcg: self.ndcg[q] / n,
                })
                .collect(),
            users: self.users,
        }
    }
}
