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

// Forward noising with the denoiser's input dropout folded in (training):
// out[r, :] = (sqrt_abar[t] * x0[r, :] + sqrt_1m_abar[t] * eps[r, :]) * mask[r, :] (has_mask),
// t = steps[r].
extern "C" __global__ void q_sample_masked(int n, int d, const unsigned* __restrict__ steps,
                                           const float* __restrict__ sqrt_abar,
                                           const float* __restrict__ sqrt_1m_abar,
                                           const float* __restrict__ x0,
                                           const float* __restrict__ eps, int has_mask,
                                           const float* __restrict__ mask,
                                           float* __restrict__ out) {
    size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= (size_t)n * d) return;
    unsigned t = steps[e / d];
    float v = sqrt_abar[t] * x0[e] + sqrt_1m_abar[t] * eps[e];
    out[e] = has_mask ? v * mask[e] : v;
}

// DDRM's loss (src/diffusion/ddrm.rs, ddrm_loss), one warp per row r of width d:
// sp = hu.hi, sn = hu.ej, w = sigmoid(sp)^gamma (1 when gamma = 0, a constant in the
// gradient), z = sn - sp, rec = (|hu - eu|^2 + |hi - ei|^2) / (2d);
// parts[r] = w (lambda softplus(z) + (1 - lambda) rec), parts[n + r] = softplus(z),
// parts[2n + r] = rec (the batch means are the sums / n, taken on the host);
// dhu = cr (hu - eu) - g hi + g ej, dhi = cr (hi - ei) - g hu, with
// g = w lambda sigmoid(z) / n and cr = w (1 - lambda) / (d n).
extern "C" __global__ void ddrm_loss(int n, int d, float lambda, float gamma,
                                     const float* __restrict__ hu, const float* __restrict__ hi,
                                     const float* __restrict__ eu, const float* __restrict__ ei,
                                     const float* __restrict__ ej, float* __restrict__ parts,
                                     float* __restrict__ dhu, float* __restrict__ dhi) {
    int r = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
    if (r >= n) return;
    size_t o = (size_t)r * d;
    float sp = 0.0f, sn = 0.0f, su = 0.0f, si = 0.0f;
    for (int c = lane; c < d; c += 32) {
        float u = hu[o + c], i = hi[o + c];
        float du = u - eu[o + c], di = i - ei[o + c];
        sp = fmaf(u, i, sp);
        sn = fmaf(u, ej[o + c], sn);
        su = fmaf(du, du, su);
        si = fmaf(di, di, si);
    }
    for (int s = 16; s > 0; s >>= 1) {
        sp += __shfl_xor_sync(0xffffffffu, sp, s);
        sn += __shfl_xor_sync(0xffffffffu, sn, s);
        su += __shfl_xor_sync(0xffffffffu, su, s);
        si += __shfl_xor_sync(0xffffffffu, si, s);
    }
    float w = gamma == 0.0f ? 1.0f : powf(1.0f / (1.0f + expf(-sp)), gamma);
    float z = sn - sp;
    float g = w * lambda / (1.0f + expf(-z)) / (float)n;
    float cr = w * (1.0f - lambda) / ((float)d * (float)n);
    for (int c = lane; c < d; c += 32) {
        float u = hu[o + c], i = hi[o + c];
        dhu[o + c] = cr * (u - eu[o + c]) - g * i + g * ej[o + c];
        dhi[o + c] = cr * (i - ei[o + c]) - g * u;
    }
    if (lane == 0) {
        float sz = fmaxf(z, 0.0f) + log1pf(expf(-fabsf(z)));
        float rec = (su + si) / (2.0f * (float)d);
        parts[r] = w * (lambda * sz + (1.0f - lambda) * rec);
        parts[n + r] = sz;
        parts[2 * n + r] = rec;
    }
}

// Counter-based random numbers (src/util/rng.rs, counter_u64): element i of stream `seed` is
// SplitMix64's output for the state seed + i * phi, so each thread draws its own element.
__device__ __forceinline__ unsigned long long counter_u64(unsigned long long seed,
                                                          unsigned long long i) {
    unsigned long long z = seed + i * 0x9E3779B97F4A7C15ull + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// out[i] for i < n: kind 0, a standard normal (Box-Muller on the top and bottom 24 bits);
// kind 1, inverted dropout: `scale` when the uniform from the top 24 bits is below `keep`,
// else 0.
extern "C" __global__ void counter_fill(int n, unsigned long long seed, int kind, float keep,
                                        float scale, float* __restrict__ out) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    unsigned long long h = counter_u64(seed, (unsigned long long)i);
    float u1 = ((float)(h >> 40) + 0.5f) * (1.0f / 16777216.0f);
    if (kind == 1) {
        out[i] = u1 < keep ? scale : 0.0f;
        return;
    }
    float u2 = ((float)(h & 0xFFFFFFull) + 0.5f) * (1.0f / 16777216.0f);
    out[i] = sqrtf(-2.0f * logf(u1)) * cosf(6.28318530717958647692f * u2);
}
