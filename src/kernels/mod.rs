//! Compute kernels: CPU (SIMD + rayon) and, with the `cuda` feature, CUDA.
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
