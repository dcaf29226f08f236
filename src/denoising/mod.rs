//! The paper's comparison systems that are not DDRM: the loss-level denoising baselines T-CE
//! and R-CE (backend objectives, [`objective`]) and the MultiVAE recommender ([`multivae`]).
//! DDRM itself, which denoises the learned embeddings, is in [`crate::diffusion`].
pub mod multivae;
pub mod objective;

pub use objective::Objective;
