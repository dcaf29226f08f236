//! Small shared utilities: randomness, atomic file writes, progress reporting.
pub mod atomic;
pub mod progress;
pub mod rng;
pub mod tensorfile;
