//! Small shared utilities: randomness, atomic file writes, progress reporting, the huge-page
//! allocator.
pub mod atomic;
pub mod hugepage;
pub mod progress;
pub mod rng;
pub mod tensorfile;
