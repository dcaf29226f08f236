//! Synthetic datasets with power-law item popularity and per-user activity, for scale runs.

use super::csr::{Csr, DuplicatePolicy};
use super::format::DatasetParts;
use crate::util::rng::Rng;
use anyhow::{bail, Result};
use rayon::prelude::*;

/// Shape and skew of a synthetic dataset.
#[derive(Debug, Clone)]
pub struct SynthConfig {
    /// Number of users.
    pub users: usize,
    /// Number of items.
    pub items: usize,
    /// Target number of interactions (all splits together).
    pub interactions: usize,
    /// Zipf exponent of item popularity (p(rank r) ∝ (r + 1)^-a).
    pub item_exponent: f64,
    /// Zipf exponent of user activity.
    pub user_exponent: f64,
    /// Seed.
    pub seed: u64,
}

/// Generate a dataset: every user gets at least 3 interactions, each user's items are split
/// at random 70/10/20 into train/valid/test. Deterministic for a seed, whatever the threads.
pub fn generate(cfg: &SynthConfig) -> Result<DatasetParts> {
    let (nu, ni, n) = (cfg.users, cfg.items, cfg.interactions);
    if nu == 0 || ni < 4 {
        bail!("need at least 1 user and 4 items");
    }
    if n < 3 * nu {
        bail!("--interactions must be at least 3 x users ({})", 3 * nu);
    }
    let max_per_user = ni / 2;
    if n > nu * max_per_user {
        bail!("--interactions {n} exceeds users x items / 2; the matrix would be too dense");
    }
    let mut rng = Rng::new(cfg.seed);
    // user activity: power law over a random rank permutation, scaled to sum to n
    let mut ranks: Vec<u32> = (0..nu as u32).collect();
    rng.shuffle(&mut ranks);
    let w: Vec<f64> = ranks
        .iter()
        .map(|&r| (r as f64 + 1.0).powf(-cfg.user_exponent))
        .collect();
    let wsum: f64 = w.iter().sum();
    let mut counts: Vec<usize> = w
        .iter()
        .map(|&x| ((x / wsum * n as f64).round() as usize).clamp(3, max_per_user))
        .collect();
    // fix the total by walking users round-robin
    let mut total: usize = counts.iter().sum();
    let mut u = 0usize;
    let mut guard = 0usize;
    while total != n && guard < 100 * nu {
        if total < n && counts[u] < max_per_user {
            counts[u] += 1;
            total += 1;
        } else if total > n && counts[u] > 3 {
            counts[u] -= 1;
            total -= 1;
        }
        u = (u + 1) % nu;
        guard += 1;
    }
    // item popularity: cumulative distribution over a random id permutation
    let mut item_of_rank: Vec<u32> = (0..ni as u32).collect();
    rng.shuffle(&mut item_of_rank);
    let mut cdf: Vec<f64> = Vec::with_capacity(ni);
    let mut acc = 0.0;
    for r in 0..ni {
        acc += (r as f64 + 1.0).powf(-cfg.item_exponent);
        cdf.push(acc);
    }
    let seed = cfg.seed;
    let per_user: Vec<Vec<(u8, u32)>> = (0..nu)
        .into_par_iter()
        .map(|u| {
            let mut r = Rng::stream(seed, u as u64 + 1);
            let k = counts[u];
            let mut items: Vec<u32> = Vec::with_capacity(k + 8);
            while items.len() < k {
                let need = k - items.len();
                for _ in 0..need + need / 8 + 1 {
                    let x = r.uniform() * acc;
                    let rank = cdf.partition_point(|&c| c <= x).min(ni - 1);
                    items.push(item_of_rank[rank]);
                }
                items.sort_unstable();
                items.dedup();
                if items.len() > k {
                    // drop a random surplus to keep exactly k
                    r.shuffle(&mut items);
                    items.truncate(k);
                    items.sort_unstable();
                }
            }
            r.shuffle(&mut items);
            let n_train = ((k as f64) * 0.7).round() as usize;
            let n_valid = ((k as f64) * 0.1).round() as usize;
            items
                .iter()
                .enumerate()
                .map(|(p, &i)| {
                    let s = if p < n_train {
                        0u8
                    } else if p < n_train + n_valid {
                        1
                    } else {
                        2
                    };
                    (s, i)
                })
                .collect()
        })
        .collect();
    let mut splits: [Vec<(u32, u32)>; 3] = Default::default();
    for (u, list) in per_user.iter().enumerate() {
        for &(s, i) in list {
            splits[s as usize].push((u as u32, i));
        }
    }
    let mk = |p: &Vec<(u32, u32)>| Csr::from_pairs(nu, ni, p, DuplicatePolicy::Error).map(|x| x.0);
    Ok(DatasetParts {
        n_users: nu,
        n_items: ni,
        train: mk(&splits[0])?,
        valid: mk(&splits[1])?,
        test: mk(&splits[2])?,
        user_ids: Vec::new(),
        item_ids: Vec::new(),
    })
}
