//! The CUDA sources of `kernels/`, embedded, with the entry points each one defines.

/// Headers the sources `#include "NAME"` (pasted in for NVRTC, see `compile::expand`).
pub const HEADERS: &[(&str, &str)] = &[(
    "activation.cuh",
    include_str!("../../../kernels/activation.cuh"),
)];

/// (module name, CUDA source, kernels it defines).
pub const SOURCES: &[(&str, &str, &[&str])] = &[
    (
        "topk",
        include_str!("../../../kernels/topk.cu"),
        &["fused_topk"],
    ),
    (
        "gemm",
        include_str!("../../../kernels/gemm.cu"),
        &["gemm_f32"],
    ),
    (
        "spmm",
        include_str!("../../../kernels/spmm.cu"),
        &["spmm_csr"],
    ),
    (
        "elementwise",
        include_str!("../../../kernels/elementwise.cu"),
        &[
            "act_forward",
            "act_backward",
            "row_dots",
            "bpr_loss",
            "gather_rows",
            "scatter_add_rows",
            "mf_row_grads",
        ],
    ),
    (
        "optim",
        include_str!("../../../kernels/optim.cu"),
        &["adam_step", "adam_rows"],
    ),
    (
        "diffusion",
        include_str!("../../../kernels/diffusion.cu"),
        &[
            "q_sample",
            "posterior_step",
            "q_sample_masked",
            "ddrm_loss",
            "counter_fill",
        ],
    ),
];

include!(concat!(env!("OUT_DIR"), "/ptx.rs"));

/// The virtual architecture every kernel is compiled for: PTX that CUDA 12 and 13 drivers
/// JIT-compile for Ampere, Hopper and newer GPUs.
pub const ARCH: &str = "compute_80";
