//! The plain triple-loop reference the kernels are tested against.

/// Plain triple-loop reference (f64 accumulation), for tests.
#[allow(clippy::too_many_arguments)]
pub fn gemm_reference(
    ta: bool,
    tb: bool,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    b: &[f32],
    beta: f32,
    c: &mut [f32],
) {
    for i in 0..m {
        for j in 0..n {
            let mut s = 0f64;
            for p in 0..k {
                let av = if ta { a[p * m + i] } else { a[i * k + p] };
                let bv = if tb { b[j * k + p] } else { b[p * n + j] };
                s += av as f64 * bv as f64;
            }
            let old = if beta == 0.0 {
                0.0
            } else {
                beta as f64 * c[i * n + j] as f64
            };
            c[i * n + j] = (alpha as f64 * s + old) as f32;
        }
    }
}
