//! Honest timing: warm-up runs, repeated measurements, median and range.

use serde::Serialize;
use std::time::Instant;

/// Timing summary in milliseconds.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Timing {
    /// Median.
    pub median_ms: f64,
    /// Fastest.
    pub min_ms: f64,
    /// Slowest.
    pub max_ms: f64,
    /// Repetitions timed.
    pub reps: usize,
}

/// Minimum warm-up time of a timed side (matched by `benches/reference.py`).
pub const WARM_MIN: std::time::Duration = std::time::Duration::from_millis(250);

/// Run `f` untimed (at least `warmup` times and, if `warmup > 0`, for at least [`WARM_MIN`]),
/// then `reps` times timed.
pub fn time(warmup: usize, reps: usize, mut f: impl FnMut()) -> Timing {
    // at least `warmup` runs and, when warming up at all, WARM_MIN of them: on a shared VM the
    // first milliseconds after an idle spell (the framework's turn, the settle pause) run
    // slower, and the framework side warms up for as long (benches/reference.py)
    let t0 = Instant::now();
    let mut k = 0;
    while k < warmup || (warmup > 0 && t0.elapsed() < WARM_MIN) {
        f();
        k += 1;
    }
    let mut v: Vec<f64> = (0..reps.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    v.sort_by(|a, b| a.total_cmp(b));
    Timing {
        median_ms: v[v.len() / 2],
        min_ms: v[0],
        max_ms: v[v.len() - 1],
        reps: v.len(),
    }
}

/// Peak resident memory of this process in MiB (Linux `VmHWM`), if known.
pub fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
