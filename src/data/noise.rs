//! The random-noise setting: replace a share of train and valid interactions by uniformly
//! sampled unobserved pairs, keeping every user's counts (and so each split's size).

use super::csr::{Csr, DuplicatePolicy};
use super::format::{Dataset, DatasetParts};
use crate::util::rng::Rng;
use anyhow::{bail, Result};

/// Return a copy of `ds` where a share `ratio` of the train and valid interactions (chosen
/// uniformly with `seed`) is replaced, user by user, by items the user never interacted with
/// in any split (uniform over such items). Test is untouched. Users who have interacted with
/// every item keep their interactions.
#[allow(clippy::needless_range_loop)] // positions index two parallel arrays
pub fn add_random_noise(ds: &Dataset, ratio: f64, seed: u64) -> Result<DatasetParts> {
    if !(0.0..=1.0).contains(&ratio) || ratio.is_nan() {
        bail!("--ratio must be in [0, 1], got {ratio}");
    }
    let mut parts = ds.to_parts();
    let n_items = ds.n_items();
    let mut rng = Rng::new(seed);
    for split in 0..2 {
        let src = if split == 0 { ds.train() } else { ds.valid() };
        let nnz = src.nnz();
        let k = (nnz as f64 * ratio).round() as usize;
        // choose k positions uniformly (partial Fisher-Yates)
        let mut idx: Vec<u32> = (0..nnz as u32).collect();
        for a in 0..k {
            let b = a + rng.index(nnz - a);
            idx.swap(a, b);
        }
        let mut remove = vec![false; nnz];
        for &p in &idx[..k] {
            remove[p as usize] = true;
        }
        let mut pairs: Vec<(u32, u32)> = Vec::with_capacity(nnz);
        for u in 0..ds.n_users() {
            let (a, b) = (src.indptr[u] as usize, src.indptr[u + 1] as usize);
            let n_removed = (a..b).filter(|&p| remove[p]).count();
            let observed = ds.train().row_len(u) + ds.valid().row_len(u) + ds.test().row_len(u);
            let free = n_items.saturating_sub(observed);
            let mut added: Vec<u32> = Vec::new();
            let can_replace = n_removed.min(free);
            for p in a..b {
                if !remove[p] {
                    pairs.push((u as u32, src.indices[p]));
                }
            }
            // keep the removed ones we cannot replace (user saturated)
            let mut kept_back = n_removed - can_replace;
            for p in a..b {
                if remove[p] && kept_back > 0 {
                    pairs.push((u as u32, src.indices[p]));
                    kept_back -= 1;
                }
            }
            while added.len() < can_replace {
                let j = rng.index(n_items) as u32;
                let seen = ds.train().contains(u, j)
                    || ds.valid().contains(u, j)
                    || ds.test().contains(u, j)
                    || added.contains(&j);
                if !seen {
                    added.push(j);
                }
            }
            pairs.extend(added.iter().map(|&j| (u as u32, j)));
        }
        let (m, _) = Csr::from_pairs(ds.n_users(), n_items, &pairs, DuplicatePolicy::Error)?;
        if split == 0 {
            parts.train = m;
        } else {
            parts.valid = m;
        }
    }
    Ok(parts)
}
