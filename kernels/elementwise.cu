// Element-wise and row kernels. Activation codes: 0 none, 1 relu, 2 tanh, 3 sigmoid.

#include "activation.cuh"

// Numerically stable softplus log(1 + e^x).
__device__ __forceinline__ float e_softplus(float x) {
    return fmaxf(x, 0.0f) + log1pf(expf(-fabsf(x)));
}

// y = act(x), in place allowed.
extern "C" __global__ void act_forward(int n, int act, const float* __restrict__ x, float* y) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = act_apply(x[i], act);
}

// dx = dy * act'(y), the derivative through the activation's output y.
extern "C" __global__ void act_backward(int n, int act, const float* __restrict__ y,
                                        const float* __restrict__ dy, float* dx) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dx[i] = dy[i] * act_grad_from_output(y[i], act);
}

// out[r] = a[r, :] . b[r, :], one warp per row.
extern "C" __global__ void row_dots(int n, int d, const float* __restrict__ a,
                                    const float* __restrict__ b, float* __restrict__ out) {
    int r = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
    if (r >= n) return;
    float s = 0.0f;
    for (int c = lane; c < d; c += 32) s = fmaf(a[(size_t)r * d + c], b[(size_t)r * d + c], s);
    for (int o = 16; o > 0; o >>= 1) s += __shfl_down_sync(0xffffffffu, s, o);
    if (lane == 0) out[r] = s;
}

// BPR: loss[r] = w_r softplus(sn - sp); dp = -w_r sigma(sn - sp) * scale, dn = -dp.
// `w` may be unused (has_w = 0: weight 1). The mean over the batch is taken on the host.
extern "C" __global__ void bpr_loss(int n, const float* __restrict__ sp, const float* __restrict__ sn,
                                    int has_w, const float* __restrict__ w, float scale,
                                    float* __restrict__ loss, float* __restrict__ dp,
                                    float* __restrict__ dn) {
    int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= n) return;
    float z = sn[r] - sp[r];
    float wr = has_w ? w[r] : 1.0f;
    loss[r] = wr * e_softplus(z);
    float g = wr * scale / (1.0f + expf(-z));
    dp[r] = -g;
    dn[r] = g;
}

// dst[r, :] = src[idx[r], :].
extern "C" __global__ void gather_rows(int n, int d, const unsigned* __restrict__ idx,
                                       const float* __restrict__ src, float* __restrict__ dst) {
    size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= (size_t)n * d) return;
    size_t r = e / d, c = e % d;
    dst[e] = src[(size_t)idx[r] * d + c];
}

// Deterministic scatter-add: dst[rows[u], :] += sum over p in seg[u]..seg[u+1] of
// src[order[p], :], summed in that fixed order (the host sorts the batch's ids once), so no
// float atomics and the same bits on every run. One warp per distinct row.
extern "C" __global__ void scatter_add_rows(int n_unique, int d, const unsigned* __restrict__ rows,
                                            const unsigned* __restrict__ seg,
                                            const unsigned* __restrict__ order,
                                            const float* __restrict__ src, float* __restrict__ dst) {
    int u = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
    if (u >= n_unique) return;
    float* out = dst + (size_t)rows[u] * d;
    for (int c = lane; c < d; c += 32) {
        float s = out[c];
        for (unsigned p = seg[u]; p < seg[u + 1]; p++) s += src[(size_t)order[p] * d + c];
        out[c] = s;
    }
}

// MF-BPR's row gradients (src/backends/mf_step.rs, gradients): for each distinct row s the
// batch touches, in the order the host grouped them (entries[start[s] .. start[s + 1]],
// each k << 2 | role, in triplet order), out[s, :] is the sum of
//   user role: (dp[k] * T[pos[k]] + dn[k] * T[neg[k]]) + rc * T[row]
//   positive:  dp[k] * T[users[k]] + rc * T[row]
//   negative:  dn[k] * T[users[k]] + rc * T[row]
// with T the table; one warp per row, each lane summing its columns in that fixed order.
extern "C" __global__ void mf_row_grads(int n_unique, int d, const unsigned* __restrict__ rows,
                                        const unsigned* __restrict__ start,
                                        const unsigned* __restrict__ entries,
                                        const unsigned* __restrict__ users,
                                        const unsigned* __restrict__ pos,
                                        const unsigned* __restrict__ neg,
                                        const float* __restrict__ dp, const float* __restrict__ dn,
                                        float rc, const float* __restrict__ table,
                                        float* __restrict__ out) {
    int s = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
    if (s >= n_unique) return;
    const float* own = table + (size_t)rows[s] * d;
    for (int c = lane; c < d; c += 32) {
        float acc = 0.0f;
        for (unsigned p = start[s]; p < start[s + 1]; ++p) {
            unsigned e = entries[p], k = e >> 2, role = e & 3u;
            float term;
            if (role == 0u) {
                term = __fadd_rn(__fmul_rn(dp[k], table[(size_t)pos[k] * d + c]),
                                 __fmul_rn(dn[k], table[(size_t)neg[k] * d + c]));
            } else {
                float a = role == 1u ? dp[k] : dn[k];
                term = __fmul_rn(a, table[(size_t)users[k] * d + c]);
            }
            acc = __fadd_rn(acc, __fadd_rn(term, __fmul_rn(rc, own[c])));
        }
        out[(size_t)s * d + c] = acc;
    }
}
