//! Datasets: the `.ddrm` binary format, CSR interaction matrices, importers, noise injection
//! and synthetic generation.
pub mod csr;
pub mod format;
pub mod import;
pub mod info;
pub mod noise;
pub mod npy;
pub mod synth;

pub use csr::{Csr, CsrView, DuplicatePolicy};
pub use format::{open, resolve, Dataset, DatasetParts, Split};
