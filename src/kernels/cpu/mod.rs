//! CPU kernels: SIMD (`wide`, AVX2 intrinsics behind run-time dispatch) and `rayon`.
pub mod elementwise;
pub mod gemm;
pub mod isa;
pub mod peak;
pub mod spmm;
pub mod topk;

pub use gemm::{gemm, gemm_ex, gemm_ex_col_sums, Act, Epilogue};
pub use isa::Isa;
