//! Small shared utilities: randomness (and fast f32 normals), atomic file writes, progress
//! reporting, the huge-page allocator.
pub mod atomic;
pub mod hugepage;
pub mod normal8;
pub mod progress;
pub mod rng;
pub mod tensorfile;
