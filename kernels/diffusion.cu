// DDRM's diffusion steps.

// Forward noising (Eq. 7), row r at step steps[r]:
// out[r, :] = sqrt_abar[t] * x0[r, :] + sqrt_1m_abar[t] * eps[r, :].
extern "C" __global__ void q_sample(int n, int d, const unsigned* __restrict__ steps,
                                    const float* __restrict__ sqrt_abar,
                                    const float* __restrict__ sqrt_1m_abar,
                                    const float* __restrict__ x0, const float* __restrict__ eps,
                                    float* __restrict__ out) {
    size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= (size_t)n * d) return;
    unsigned t = steps[e / d];
    out[e] = sqrt_abar[t] * x0[e] + sqrt_1m_abar[t] * eps[e];
}

// One reverse step at a common step t (Eq. 11-14): x = c1 * x0_hat + c2 * x, plus sd * eps
// when sampling (has_noise).
extern "C" __global__ void posterior_step(int n, float c1, float c2, const float* __restrict__ x0_hat,
                                          float* __restrict__ x, int has_noise, float sd,
                                          const float* __restrict__ eps) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = c1 * x0_hat[i] + c2 * x[i];
    if (has_noise) v += sd * eps[i];
    x[i] = v;
}
