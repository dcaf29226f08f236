// Activations shared by the GEMM epilogue and the element-wise kernels, as on the CPU
// (`kernels::cpu::gemm::Act`). Codes: 0 none, 1 relu, 2 tanh, 3 sigmoid.
// nvcc includes this file; for NVRTC, src/kernels/cuda/compile.rs pastes it in place of the
// #include line (the embedded sources do not read the file system).
#pragma once

// act(x).
__device__ __forceinline__ float act_apply(float x, int act) {
    switch (act) {
        case 1: return x > 0.0f ? x : 0.0f;
        case 2: return tanhf(x);
        case 3: return 1.0f / (1.0f + expf(-x));
        default: return x;
    }
}

// act'(x) expressed through the output y = act(x).
__device__ __forceinline__ float act_grad_from_output(float y, int act) {
    switch (act) {
        case 1: return y > 0.0f ? 1.0f : 0.0f;
        case 2: return 1.0f - y * y;
        case 3: return y * (1.0f - y);
        default: return 1.0f;
    }
}
