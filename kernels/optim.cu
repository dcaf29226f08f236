// Adam with L2 weight decay folded into the gradient and bias correction, exactly the update
// of src/nn/optim.rs: g' = g + wd p; m = b1 m + (1 - b1) g'; v = b2 v + (1 - b2) g'^2;
// p -= step * m / (sqrt(v * inv_bc2) + eps), with step = lr / (1 - b1^t) and
// inv_bc2 = 1 / (1 - b2^t) computed on the host.
// One parameter's update: p[i], m[i], v[i] with gradient gi.
__device__ __forceinline__ void adam_elem(size_t i, float gi, float* __restrict__ p,
                                          float* __restrict__ m, float* __restrict__ v, float b1,
                                          float b2, float step, float inv_bc2, float eps,
                                          float wd) {
    float gk = gi + wd * p[i];
    float mk = b1 * m[i] + (1.0f - b1) * gk;
    float vk = b2 * v[i] + (1.0f - b2) * (gk * gk);
    m[i] = mk;
    v[i] = vk;
    p[i] -= step * mk / (sqrtf(vk * inv_bc2) + eps);
}

extern "C" __global__ void adam_step(int n, float* __restrict__ p, const float* __restrict__ g,
                                     float* __restrict__ m, float* __restrict__ v, float b1,
                                     float b2, float step, float inv_bc2, float eps, float wd) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    adam_elem(i, g[i], p, m, v, b1, b2, step, inv_bc2, eps, wd);
}

// Lazy Adam on the rows `rows[0..n_rows)` of a table (distinct rows; src/nn/optim.rs,
// update_rows): the update of adam_step on each row's d entries, with the gradient of row
// s in grads[s * d ..]. Rows the batch does not touch keep their values and moments.
extern "C" __global__ void adam_rows(int n_rows, int d, const unsigned* __restrict__ rows,
                                     float* __restrict__ p, const float* __restrict__ grads,
                                     float* __restrict__ m, float* __restrict__ v, float b1,
                                     float b2, float step, float inv_bc2, float eps, float wd) {
    size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= (size_t)n_rows * d) return;
    size_t s = e / d, c = e % d;
    adam_elem((size_t)rows[s] * d + c, grads[e], p, m, v, b1, b2, step, inv_bc2, eps, wd);
}
