//! Fully connected layer `y = act(x · W + b)` with a hand-written backward.

use crate::kernels::cpu::elementwise::{activation_backward, col_sums};
use crate::kernels::cpu::{gemm, gemm_ex, Act, Epilogue, Isa};
use crate::util::rng::Rng;

/// A linear layer. `w` is row-major `din x dout`, `b` has `dout` entries.
#[derive(Clone, Debug, PartialEq)]
pub struct Linear {
    /// Input width.
    pub din: usize,
    /// Output width.
    pub dout: usize,
    /// Weights, `din x dout`.
    pub w: Vec<f32>,
    /// Bias, `dout`.
    pub b: Vec<f32>,
}

/// Gradients of a [`Linear`].
#[derive(Clone, Debug, PartialEq)]
pub struct LinearGrad {
    /// dL/dW, `din x dout`.
    pub w: Vec<f32>,
    /// dL/db, `dout`.
    pub b: Vec<f32>,
}

impl Linear {
    /// Xavier-normal weights (std = sqrt(2 / (din + dout))) and N(0, bias_std²) biases.
    pub fn xavier_normal(din: usize, dout: usize, bias_std: f32, rng: &mut Rng) -> Self {
        let std = (2.0 / (din + dout) as f64).sqrt() as f32;
        let mut w = vec![0f32; din * dout];
        rng.fill_normal(&mut w, std);
        let mut b = vec![0f32; dout];
        rng.fill_normal(&mut b, bias_std);
        Linear { din, dout, w, b }
    }

    /// Zeroed gradient buffers of the right shapes.
    pub fn zero_grad(&self) -> LinearGrad {
        LinearGrad {
            w: vec![0.0; self.w.len()],
            b: vec![0.0; self.b.len()],
        }
    }

    /// Forward for a batch of `n` rows: `y (n x dout) = act(x (n x din) · W + b)`.
    pub fn forward(&self, x: &[f32], n: usize, act: Act, y: &mut [f32]) {
        assert_eq!(x.len(), n * self.din, "Linear::forward: x must be n x din");
        assert_eq!(
            y.len(),
            n * self.dout,
            "Linear::forward: y must be n x dout"
        );
        gemm_ex(
            Isa::detect(),
            false,
            false,
            n,
            self.dout,
            self.din,
            1.0,
            x,
            &self.w,
            0.0,
            y,
            Epilogue {
                bias: Some(&self.b),
                act,
            },
        );
    }

    /// Backward. `dy` holds dL/dy (post-activation) and is turned into dL/d(pre-activation)
    /// in place. Gradients are written to `g` (added when `accumulate`); `dx`, when given,
    /// receives dL/dx (overwritten).
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        x: &[f32],
        y: &[f32],
        dy: &mut [f32],
        n: usize,
        act: Act,
        g: &mut LinearGrad,
        dx: Option<&mut [f32]>,
        accumulate: bool,
    ) {
        assert_eq!(dy.len(), n * self.dout);
        activation_backward(y, dy, act);
        let beta = if accumulate { 1.0 } else { 0.0 };
        // dW = xᵀ · dy : (din x n) · (n x dout)
        gemm(
            true, false, self.din, self.dout, n, 1.0, x, dy, beta, &mut g.w,
        );
        if accumulate {
            let mut tmp = vec![0f32; self.dout];
            col_sums(dy, self.dout, &mut tmp);
            for (a, t) in g.b.iter_mut().zip(&tmp) {
                *a += t;
            }
        } else {
            col_sums(dy, self.dout, &mut g.b);
        }
        if let Some(dx) = dx {
            // dx = dy · Wᵀ : (n x dout) · (dout x din)
            gemm(
                false, true, n, self.din, self.dout, 1.0, dy, &self.w, 0.0, dx,
            );
        }
    }
}
