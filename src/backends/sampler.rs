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

/// Sample an epoch of triplets with `seed` and `epoch` (deterministic).
pub fn sample_epoch(train: &CsrView, seed: u64, epoch: u64) -> Triplets {
    let mut rng = Rng::stream(seed, 0x5A4D_0000 + epoch);
    let nnz = train.nnz();
    let mut order: Vec<u32> = (0..nnz as u32).collect();
    rng.shuffle(&mut order);
    let mut users = Vec::with_capacity(nnz);
    let mut pos = Vec::with_capacity(nnz);
    let mut neg = Vec::with_capacity(nnz);
    // row of each interaction
    let mut row_of = vec![0u32; nnz];
    for u in 0..train.n_rows {
        for p in train.indptr[u]..train.indptr[u + 1] {
            row_of[p as usize] = u as u32;
        }
    }
    let ni = train.n_cols;
    for &p in &order {
        let u = row_of[p as usize];
        let row = train.row(u as usize);
        users.push(u);
        pos.push(train.indices[p as usize]);
        let j = if row.len() >= ni {
            rng.index(ni) as u32 // user saw everything: no valid negative exists
        } else {
            loop {
                let j = rng.index(ni) as u32;
                if row.binary_search(&j).is_err() {
                    break j;
                }
            }
        };
        neg.push(j);
    }
    Triplets { users, pos, neg }
}
