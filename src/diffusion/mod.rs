//! DDRM, the diffusion plug-in: noise schedule, denoisers, training and inference.
pub mod attention;
pub mod ddrm;
pub mod ddrm_device;
pub mod denoiser;
pub mod schedule;

pub use ddrm::{Ddrm, DdrmConfig, Inference};
