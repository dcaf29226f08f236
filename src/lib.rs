//! # ddrm
//!
//! A from-scratch numerical engine for denoising recommendation with diffusion models
//! (DDRM, SIGIR 2024): datasets, SIMD/CUDA kernels, hand-written gradients, backend
//! recommenders, the diffusion plug-in, evaluation and a command line.
//!
//! Data flow: dataset ([`data`]) → sampler → model forward/backward ([`nn`], backends) →
//! optimizer → evaluation → report ([`cli`]).
#![warn(missing_docs)]
// Numerical kernels index several parallel arrays by one loop variable; ranges read clearer.
#![allow(clippy::needless_range_loop)]

pub mod backends;
pub mod bench;
pub mod cli;
pub mod data;
pub mod denoising;
pub mod device;
pub mod diffusion;
pub mod eval;
pub mod kernels;
pub mod nn;
pub mod util;
