//! The CUDA path (feature `cuda`): the kernels of `kernels/` compiled to PTX (nvcc at build
//! time, or NVRTC at run time) and loaded by cudarc, with the same operations as the CPU
//! kernels: fused score + mask + top-K, tiled GEMM with fused epilogue, CSR SpMM,
//! activations, BPR, row gather and deterministic scatter-add, Adam, diffusion steps.
//!
//! Status: the kernels compile (checked by `tests/kernels_cuda.rs` through NVRTC, which needs
//! no GPU) and are compared with the CPU kernels by the same tests on a machine with a GPU.
//! Ranking (`ddrm eval|recommend --device cuda`) and DDRM inference run on them through
//! [`crate::device::Device`]; training does not yet. None of it has run on a GPU so far;
//! see the README, "CUDA".

pub mod compile;
pub mod device;
pub mod host;
pub mod ops;
pub mod sources;

pub use compile::{compile_all, nvrtc_available};
pub use device::{unavailable_reason, Gpu};
pub use ops::{AdamCoefs, GpuCsr, GpuEpilogue, GpuScatterPlan, ScatterPlan, TOPK_MAX_K};
