//! Sinusoidal diffusion-step encoding (as in DiffRec / DDPM).

/// Write the sinusoidal encoding of each step in `steps` into `out` (`steps.len() x dim`):
/// for `half = dim / 2` frequencies `f_k = exp(-ln(10000) · k / half)`, the row is
/// `[cos(t f_0) … cos(t f_{half-1}), sin(t f_0) … sin(t f_{half-1})]` (a zero column is
/// appended when `dim` is odd). Computed in f64.
pub fn timestep_encoding(steps: &[f32], dim: usize, out: &mut [f32]) {
    assert_eq!(out.len(), steps.len() * dim);
    let half = dim / 2;
    for (r, &t) in steps.iter().enumerate() {
        let row = &mut out[r * dim..(r + 1) * dim];
        for k in 0..half {
            let f = (-(10000f64.ln()) * k as f64 / half as f64).exp();
            let a = t as f64 * f;
            row[k] = a.cos() as f32;
            row[half + k] = a.sin() as f32;
        }
        if dim % 2 == 1 {
            row[dim - 1] = 0.0;
        }
    }
}
