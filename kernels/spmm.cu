// CSR (f32 values) times a dense row-major matrix: out = A * x + beta * out.
// One warp per row; the lanes split the d columns, so each gathered row of x is read with
// coalesced loads. The terms of a row are summed in CSR order, as on the CPU.
extern "C" __global__ void spmm_csr(int n_rows, int d, const unsigned* __restrict__ indptr,
                                    const unsigned* __restrict__ indices,
                                    const float* __restrict__ values,
                                    const float* __restrict__ x, float beta,
                                    float* __restrict__ out) {
    const int warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    if (warp >= n_rows) return;
    const unsigned lo = indptr[warp], hi = indptr[warp + 1];
    for (int c0 = 0; c0 < d; c0 += 64) {
        const int ca = c0 + lane, cb = c0 + 32 + lane;
        float sa = 0.0f, sb = 0.0f;
        for (unsigned p = lo; p < hi; p++) {
            const float v = values[p];
            const float* xr = x + (size_t)indices[p] * d;
            if (ca < d) sa = fmaf(v, xr[ca], sa);
            if (cb < d) sb = fmaf(v, xr[cb], sb);
        }
        float* o = out + (size_t)warp * d;
        if (ca < d) o[ca] = beta != 0.0f ? sa + beta * o[ca] : sa;
        if (cb < d) o[cb] = beta != 0.0f ? sb + beta * o[cb] : sb;
    }
}
