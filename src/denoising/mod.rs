//! The paper's comparison systems that are not DDRM: the loss-level denoising baselines T-CE,
//! R-CE (backend objectives, [`objective`]) and DeCA ([`deca`]), the AdaGCL graph model
//! ([`adagcl`]), and the CDAE ([`cdae`]), MultiVAE
//! ([`multivae`]) and DiffRec ([`diffrec`]) recommenders.
//! DDRM itself, which denoises the learned embeddings, is in [`crate::diffusion`].
pub mod adagcl;
pub mod cdae;
pub mod deca;
pub mod diffrec;
pub mod multivae;
pub mod objective;

pub use objective::Objective;
