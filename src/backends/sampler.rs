//! BPR triplet sampling: every train interaction once per epoch in a shuffled order, each
//! with one negative drawn uniformly among the items the user has not interacted with in train.

use crate::data::CsrView;
use crate::util::rng::Rng;

/// One epoch of (user, positive, negative) triplets.
pub struct Triplets {
    /// Users.
    pub users: Vec<u32>,
    /// Positive items.
    pub pos: Vec<u32>,
    /// Negative items.
    pub neg: Vec<u32>,
}

/// Tables up to this many cells get a bitset for the "has the user seen item j" test (32 MiB);
/// larger ones binary-search the user's sorted row.
const BITSET_MAX_CELLS: u128 = 1 << 28;

/// Sample an epoch of triplets with `seed` and `epoch` (deterministic).
pub fn sample_epoch(train: &CsrView, seed: u64, epoch: u64) -> Triplets {
    let mut rng = Rng::stream(seed, 0x5A4D_0000 + epoch);
    let nnz = train.nnz();
    let ni = train.n_cols;
    // every interaction as (user << 32 | item), in CSR order; shuffling these with the same
    // swaps as the interaction indices 0..nnz gives the same order without looking the row
    // and item of each index up again
    let mut order: Vec<u64> = Vec::with_capacity(nnz);
    for u in 0..train.n_rows {
        order.extend(train.row(u).iter().map(|&i| (u as u64) << 32 | i as u64));
    }
    rng.shuffle(&mut order);
    let seen = (train.n_rows as u128 * ni as u128 <= BITSET_MAX_CELLS).then(|| {
        let mut bits = vec![0u64; (train.n_rows * ni).div_ceil(64)];
        for &x in &order {
            let c = (x >> 32) as usize * ni + (x & 0xFFFF_FFFF) as usize;
            bits[c / 64] |= 1 << (c % 64);
        }
        bits
    });
    let has = |u: usize, j: u32| match &seen {
        Some(bits) => {
            let c = u * ni + j as usize;
            bits[c / 64] >> (c % 64) & 1 == 1
        }
        None => train.row(u).binary_search(&j).is_ok(),
    };
    let mut users = Vec::with_capacity(nnz);
    let mut pos = Vec::with_capacity(nnz);
    let mut neg = Vec::with_capacity(nnz);
    for &x in &order {
        let u = (x >> 32) as u32;
        users.push(u);
        pos.push(x as u32);
        let seen_all = train.row_len(u as usize) >= ni;
        let j = if seen_all {
            rng.index(ni) as u32 // user saw everything: no valid negative exists
        } else {
            loop {
                let j = rng.index(ni) as u32;
                if !has(u as usize, j) {
                    break j;
                }
            }
        };
        neg.push(j);
    }
    Triplets { users, pos, neg }
}
