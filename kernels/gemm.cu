// Tiled SGEMM with a fused epilogue, the three transposition forms training needs:
//   C (m x n) = act(alpha * op(A) * op(B) + beta * C + bias) [* act'(Y)]
// op(A) is m x k (stored k x m when ta), op(B) is k x n (stored n x k when tb); all
// row-major and contiguous. `bias` (length n) is used when has_bias; `gy` (m x n), when
// grad_act != 0, multiplies each element by the derivative of activation grad_act expressed
// through its output y (relu: y > 0, tanh: 1 - y^2, sigmoid: y (1 - y)), which fuses the
// backward of the layer below into the dY * W^T product. When beta == 0, C is not read.
//
// 64 x 64 tile per block of 256 threads, each thread 4 x 4 outputs strided by 16 (rows
// ty + 16a, columns tx + 16b), K in steps of 16 through shared memory.

#define TM 64
#define TN 64
#define TK 16

#include "activation.cuh"

extern "C" __global__ void gemm_f32(int ta, int tb, int m, int n, int k, float alpha,
                                    const float* __restrict__ a, const float* __restrict__ b,
                                    float beta, float* __restrict__ c, int has_bias,
                                    const float* __restrict__ bias, int act, int grad_act,
                                    const float* __restrict__ gy) {
    __shared__ float as[TK][TM + 4];
    __shared__ float bs[TK][TN + 4];
    const int tid = threadIdx.x;
    const int tx = tid % 16, ty = tid / 16;
    const int m0 = blockIdx.y * TM, n0 = blockIdx.x * TN;
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] = 0.0f;

    for (int k0 = 0; k0 < k; k0 += TK) {
#pragma unroll
        for (int s = 0; s < 4; s++) {
            int e = tid + 256 * s;
            int i, kk;
            float v = 0.0f;
            if (ta) {  // A stored k x m: read along m
                i = e % TM; kk = e / TM;
                if (m0 + i < m && k0 + kk < k) v = a[(size_t)(k0 + kk) * m + m0 + i];
            } else {   // A stored m x k: read along k
                kk = e % TK; i = e / TK;
                if (m0 + i < m && k0 + kk < k) v = a[(size_t)(m0 + i) * k + k0 + kk];
            }
            as[kk][i] = v;
            int j;
            v = 0.0f;
            if (tb) {  // B stored n x k: read along k
                kk = e % TK; j = e / TK;
                if (n0 + j < n && k0 + kk < k) v = b[(size_t)(n0 + j) * k + k0 + kk];
            } else {   // B stored k x n: read along n
                j = e % TN; kk = e / TN;
                if (n0 + j < n && k0 + kk < k) v = b[(size_t)(k0 + kk) * n + n0 + j];
            }
            bs[kk][j] = v;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < TK; kk++) {
            float ra[4], rb[4];
#pragma unroll
            for (int t = 0; t < 4; t++) {
                ra[t] = as[kk][ty + 16 * t];
                rb[t] = bs[kk][tx + 16 * t];
            }
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) acc[i][j] = fmaf(ra[i], rb[j], acc[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; i++) {
        int row = m0 + ty + 16 * i;
        if (row >= m) continue;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            int col = n0 + tx + 16 * j;
            if (col >= n) continue;
            size_t at = (size_t)row * n + col;
            float v = alpha * acc[i][j];
            if (beta != 0.0f) v += beta * c[at];
            if (has_bias) v += bias[col];
            v = act_apply(v, act);
            if (grad_act) v *= act_grad_from_output(gy[at], grad_act);
            c[at] = v;
        }
    }
}
