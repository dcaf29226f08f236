//! Model selection shared by every training loop: keep the snapshot with the best valid
//! Recall@20 and stop after `patience` validations without improvement.

use super::Metrics;

/// Cut-off used for model selection.
pub const SELECT_K: usize = 20;

/// Best-so-far tracking with patience.
pub struct EarlyStop<S> {
    best: Option<(usize, Metrics, S)>,
    since_best: usize,
    patience: usize,
}

impl<S> EarlyStop<S> {
    /// Stop after `patience` (at least 1) validations without a better valid Recall@20.
    pub fn new(patience: usize) -> Self {
        EarlyStop {
            best: None,
            since_best: 0,
            patience: patience.max(1),
        }
    }

    /// Record the validation of `epoch`; `snapshot` is taken only when it is the best so far
    /// (strictly higher Recall@20; the first validation always is). Returns true when
    /// training should stop.
    pub fn observe(&mut self, epoch: usize, valid: Metrics, snapshot: impl FnOnce() -> S) -> bool {
        let r = valid.recall(SELECT_K);
        if self.best.as_ref().is_none_or(|b| r > b.1.recall(SELECT_K)) {
            self.best = Some((epoch, valid, snapshot()));
            self.since_best = 0;
            false
        } else {
            self.since_best += 1;
            self.since_best >= self.patience
        }
    }

    /// The best epoch, its valid metrics and its snapshot (None if nothing was observed).
    pub fn into_best(self) -> Option<(usize, Metrics, S)> {
        self.best
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::AtK;

    fn m(r: f64) -> Metrics {
        Metrics {
            at: vec![AtK {
                k: SELECT_K,
                recall: r,
                ndcg: 0.0,
            }],
            users: 1,
        }
    }

    #[test]
    fn keeps_the_best_and_stops_after_patience() {
        let mut s = EarlyStop::new(2);
        assert!(!s.observe(5, m(0.10), || "e5"));
        assert!(!s.observe(10, m(0.20), || "e10"));
        assert!(!s.observe(15, m(0.20), || "e15")); // a tie is no improvement
        assert!(s.observe(20, m(0.15), || "e20"));
        let (epoch, valid, snap) = s.into_best().unwrap();
        assert_eq!((epoch, snap), (10, "e10"));
        assert_eq!(valid.recall(SELECT_K), 0.20);
        assert!(!EarlyStop::<()>::new(0).observe(1, m(0.0), || ()));
    }
}
