// Fused score + mask + top-K (full-ranking evaluation and DDRM rounding).
//
// A block takes QB queries and streams the items through shared memory in tiles of IT: each
// thread owns one item of the tile and accumulates its inner product with the QB queries
// over d in chunks of DC. The tile's QB x IT scores stay in shared memory; eight threads per
// query filter them against the query's current K-th best and drop masked items (binary
// search in the query's sorted CSR mask rows); one thread per query inserts the survivors
// into its sorted list. Order: higher score first, equal scores the lower item id first
// (the CPU kernel's rule). NaN scores never enter; lists shorter than K are padded with
// 0xFFFFFFFF / -inf, as on the CPU.

#define QB 16
#define IT 128
#define DC 32
#define KMAX 128
#define LANES 8  // threads per query in the filter phase (IT / LANES candidates each)

__device__ __forceinline__ bool tk_better(float s, unsigned i, float ts, unsigned ti) {
    return s > ts || (s == ts && i < ti);
}

__device__ __forceinline__ bool tk_in_row(const unsigned* ptr, const unsigned* idx, unsigned row,
                                          unsigned item) {
    unsigned lo = ptr[row], hi = ptr[row + 1];
    while (lo < hi) {
        unsigned mid = (lo + hi) >> 1;
        unsigned v = idx[mid];
        if (v == item) return true;
        if (v < item) lo = mid + 1; else hi = mid;
    }
    return false;
}

// queries: n_q x d; items: n_items x d; rows[q]: the mask row (user) of query q;
// n_masks in 0..2 masks given as CSR (ptr, idx); out: n_q x k items and scores.
extern "C" __global__ void fused_topk(const float* __restrict__ queries,
                                      const float* __restrict__ items, int n_q, int n_items,
                                      int d, int k, const unsigned* __restrict__ rows,
                                      int n_masks, const unsigned* __restrict__ m0_ptr,
                                      const unsigned* __restrict__ m0_idx,
                                      const unsigned* __restrict__ m1_ptr,
                                      const unsigned* __restrict__ m1_idx,
                                      unsigned* __restrict__ out_items,
                                      float* __restrict__ out_scores) {
    __shared__ float qs[QB][DC];
    __shared__ float its[DC][IT + 1];
    __shared__ float sc[QB][IT];
    __shared__ float ls[QB][KMAX];
    __shared__ unsigned li[QB][KMAX];
    __shared__ unsigned char cand[QB][IT];
    __shared__ int cnt[QB];

    const float NEG_INF = __int_as_float(0xff800000);
    const float NAN_F = __int_as_float(0x7fc00000);
    const int tid = threadIdx.x;  // blockDim.x == IT
    const int q0 = blockIdx.x * QB;
    for (int e = tid; e < QB * KMAX; e += IT) {
        ls[e / KMAX][e % KMAX] = NEG_INF;
        li[e / KMAX][e % KMAX] = 0xFFFFFFFFu;
    }
    if (tid < QB) cnt[tid] = 0;
    __syncthreads();

    const int fr = tid / LANES, lane = tid % LANES;  // filter phase: query fr, lane
    const int fq = q0 + fr;
    const unsigned frow = fq < n_q ? rows[fq] : 0;
    for (int j0 = 0; j0 < n_items; j0 += IT) {
        float acc[QB];
#pragma unroll
        for (int r = 0; r < QB; r++) acc[r] = 0.0f;
        for (int c0 = 0; c0 < d; c0 += DC) {
            for (int e = tid; e < QB * DC; e += IT) {
                int r = e / DC, c = e % DC;
                qs[r][c] = (q0 + r < n_q && c0 + c < d) ? queries[(size_t)(q0 + r) * d + c0 + c] : 0.0f;
            }
            for (int e = tid; e < IT * DC; e += IT) {
                int it = e / DC, c = e % DC;
                its[c][it] = (j0 + it < n_items && c0 + c < d) ? items[(size_t)(j0 + it) * d + c0 + c] : 0.0f;
            }
            __syncthreads();
#pragma unroll 8
            for (int c = 0; c < DC; c++) {
                float x = its[c][tid];
#pragma unroll
                for (int r = 0; r < QB; r++) acc[r] = fmaf(qs[r][c], x, acc[r]);
            }
            __syncthreads();
        }
        const bool valid_item = j0 + tid < n_items;
#pragma unroll
        for (int r = 0; r < QB; r++) sc[r][tid] = valid_item ? acc[r] : NAN_F;
        __syncthreads();

        if (fq < n_q) {
            float ts = ls[fr][k - 1];
            unsigned ti = li[fr][k - 1];
            for (int m = lane; m < IT; m += LANES) {
                float s = sc[fr][m];
                unsigned item = (unsigned)(j0 + m);
                if (!tk_better(s, item, ts, ti)) continue;  // also drops NaN
                bool masked = (n_masks > 0 && tk_in_row(m0_ptr, m0_idx, frow, item)) ||
                              (n_masks > 1 && tk_in_row(m1_ptr, m1_idx, frow, item));
                if (!masked) {
                    int p = atomicAdd(&cnt[fr], 1);
                    cand[fr][p] = (unsigned char)m;
                }
            }
        }
        __syncthreads();
        if (lane == 0 && fq < n_q) {
            int n = cnt[fr];
            for (int c = 0; c < n; c++) {
                int m = cand[fr][c];
                float s = sc[fr][m];
                unsigned item = (unsigned)(j0 + m);
                if (!tk_better(s, item, ls[fr][k - 1], li[fr][k - 1])) continue;
                int p = k - 1;
                while (p > 0 && tk_better(s, item, ls[fr][p - 1], li[fr][p - 1])) {
                    ls[fr][p] = ls[fr][p - 1];
                    li[fr][p] = li[fr][p - 1];
                    p--;
                }
                ls[fr][p] = s;
                li[fr][p] = item;
            }
            cnt[fr] = 0;
        }
        __syncthreads();
    }
    for (int e = tid; e < QB * k; e += IT) {
        int r = e / k, p = e % k;
        if (q0 + r < n_q) {
            out_items[(size_t)(q0 + r) * k + p] = li[r][p];
            out_scores[(size_t)(q0 + r) * k + p] = ls[r][p];
        }
    }
}
