//! MF-BPR's batch step without copies: the triplets' scores are read straight from the
//! embedding table, and the gradient of each row the batch touches is summed, in parallel
//! across rows, from the triplets that touch it. Each row's sum runs in triplet order, so the
//! result does not depend on the thread count and equals the sequential accumulation
//! bit for bit (`tests/backends_mf.rs` checks it against a scalar reference).

use crate::kernels::cpu::elementwise::dot;
use crate::nn::RowSlots;
use rayon::prelude::*;
use wide::f32x8;

/// Which end of a triplet a row is.
const ROLE_USER: u32 = 0;
const ROLE_POS: u32 = 1;
const ROLE_NEG: u32 = 2;

/// Reusable buffers of the step.
#[derive(Default)]
pub struct MfScratch {
    slots: RowSlots,
    /// `start[s]..start[s + 1]`: the entries of slot `s` in `entries`.
    start: Vec<u32>,
    /// `k << 2 | role` of each (triplet, row) pair, grouped by slot, in triplet order.
    entries: Vec<u32>,
    /// Per-triplet L2 halves, summed in triplet order afterwards.
    sq: Vec<f64>,
}

fn row(t: &[f32], d: usize, r: u32) -> &[f32] {
    &t[r as usize * d..(r as usize + 1) * d]
}

/// Scores of the triplets, `sp[k] = <e_u, e_i>`, `sn[k] = <e_u, e_j>` (the same dot as
/// `row_dots` on gathered rows), and the L2 term `½ (‖e_u‖² + ‖e_i‖² + ‖e_j‖²)` of each.
pub fn scores(
    table: &[f32],
    d: usize,
    (users, pos, neg): (&[u32], &[u32], &[u32]),
    sp: &mut [f32],
    sn: &mut [f32],
    sq: &mut [f64],
) {
    assert!(d > 0, "MF step: embedding size 0");
    let n_rows = table.len() / d;
    for ids in [users, pos, neg] {
        assert_eq!(ids.len(), sp.len(), "MF step: triplet lengths differ");
        if let Some(&bad) = ids.iter().find(|&&r| r as usize >= n_rows) {
            panic!("MF step: row {bad} out of range ({n_rows} rows)");
        }
    }
    assert!(sn.len() == sp.len() && sq.len() == sp.len());
    // reported only (the gradient has its own L2 term): the SIMD dot, not a sequential sum
    let sqn = |e: &[f32]| dot(e, e) as f64;
    sp.par_iter_mut()
        .zip(sn.par_iter_mut())
        .zip(sq.par_iter_mut())
        .enumerate()
        .with_min_len(256)
        .for_each(|(k, ((p, n), q))| {
            let (u, i, j) = (
                row(table, d, users[k]),
                row(table, d, pos[k]),
                row(table, d, neg[k]),
            );
            *p = dot(u, i);
            *n = dot(u, j);
            *q = 0.5 * (sqn(u) + sqn(i) + sqn(j));
        });
}

impl MfScratch {
    /// The distinct rows of the batch, sorted (the layout of the compact gradient), and the
    /// (triplet, role) entries of each, grouped by row in triplet order.
    fn group(&mut self, n_rows: usize, users: &[u32], pos: &[u32], neg: &[u32]) -> Vec<u32> {
        assert!(users.len() < 1 << 30, "MF step: batch too large");
        if self.slots.len() != n_rows {
            self.slots = RowSlots::new(n_rows);
        }
        let rows = self
            .slots
            .assign(users.iter().chain(pos).chain(neg).copied());
        self.start.clear();
        self.start.resize(rows.len() + 1, 0);
        for k in 0..users.len() {
            for r in [users[k], pos[k], neg[k]] {
                self.start[self.slots.slot(r) + 1] += 1;
            }
        }
        for s in 0..rows.len() {
            self.start[s + 1] += self.start[s];
        }
        self.entries.clear();
        self.entries.resize(3 * users.len(), 0);
        let mut next: Vec<u32> = self.start[..rows.len()].to_vec();
        for k in 0..users.len() {
            // pos before neg: when a user has seen every item the negative may equal the
            // positive, and the sequential sum adds the positive's term first
            for (r, role) in [
                (users[k], ROLE_USER),
                (pos[k], ROLE_POS),
                (neg[k], ROLE_NEG),
            ] {
                let s = self.slots.slot(r);
                self.entries[next[s] as usize] = (k as u32) << 2 | role;
                next[s] += 1;
            }
        }
        rows
    }

    /// The BPR + L2 gradient of every row the batch touches, `rows.len() x d` (returned with
    /// `rows`), from the scores' derivatives `dp`, `dn` and the L2 factor `rc`:
    /// user `dp·e_i + dn·e_j + rc·e_u`, positive `dp·e_u + rc·e_i`, negative `dn·e_u + rc·e_j`.
    #[allow(clippy::too_many_arguments)]
    pub fn gradients(
        &mut self,
        table: &[f32],
        d: usize,
        (users, pos, neg): (&[u32], &[u32], &[u32]),
        dp: &[f32],
        dn: &[f32],
        rc: f32,
    ) -> (Vec<u32>, Vec<f32>) {
        assert!(dp.len() == users.len() && dn.len() == users.len());
        assert!(d > 0, "MF step: embedding size 0");
        let rows = self.group(table.len() / d, users, pos, neg);
        let mut g = vec![0f32; rows.len() * d];
        let (start, entries) = (&self.start, &self.entries);
        g.par_chunks_mut(d)
            .enumerate()
            .with_min_len(32)
            .for_each(|(s, acc)| {
                let own = row(table, d, rows[s]);
                for &e in &entries[start[s] as usize..start[s + 1] as usize] {
                    let k = (e >> 2) as usize;
                    match e & 3 {
                        ROLE_USER => add3(
                            acc,
                            dp[k],
                            row(table, d, pos[k]),
                            dn[k],
                            row(table, d, neg[k]),
                            rc,
                            own,
                        ),
                        ROLE_POS => add2(acc, dp[k], row(table, d, users[k]), rc, own),
                        _ => add2(acc, dn[k], row(table, d, users[k]), rc, own),
                    }
                }
            });
        self.slots.release(&rows);
        (rows, g)
    }

    /// Triplets' L2 halves buffer, sized for a batch of `b`.
    pub fn sq_buf(&mut self, b: usize) -> Vec<f64> {
        let mut v = std::mem::take(&mut self.sq);
        v.clear();
        v.resize(b, 0.0);
        v
    }

    /// Give the L2 buffer back.
    pub fn put_sq(&mut self, v: Vec<f64>) {
        self.sq = v;
    }
}

fn ld(x: &[f32], t: usize) -> f32x8 {
    f32x8::from(<[f32; 8]>::try_from(&x[t..t + 8]).expect("8 lanes"))
}

fn st(x: &mut [f32], t: usize, v: f32x8) {
    x[t..t + 8].copy_from_slice(&v.to_array());
}

/// `acc += (a·x + b·y) + c·z`, element-wise, unfused multiplies and adds (as the scalar code).
fn add3(acc: &mut [f32], a: f32, x: &[f32], b: f32, y: &[f32], c: f32, z: &[f32]) {
    let (va, vb, vc) = (f32x8::splat(a), f32x8::splat(b), f32x8::splat(c));
    let d8 = acc.len() / 8 * 8;
    for t in (0..d8).step_by(8) {
        let v = ld(acc, t) + (va * ld(x, t) + vb * ld(y, t) + vc * ld(z, t));
        st(acc, t, v);
    }
    for t in d8..acc.len() {
        acc[t] += a * x[t] + b * y[t] + c * z[t];
    }
}

/// `acc += a·x + c·z`, element-wise, unfused.
fn add2(acc: &mut [f32], a: f32, x: &[f32], c: f32, z: &[f32]) {
    let (va, vc) = (f32x8::splat(a), f32x8::splat(c));
    let d8 = acc.len() / 8 * 8;
    for t in (0..d8).step_by(8) {
        let v = ld(acc, t) + (va * ld(x, t) + vc * ld(z, t));
        st(acc, t, v);
    }
    for t in d8..acc.len() {
        acc[t] += a * x[t] + c * z[t];
    }
}
