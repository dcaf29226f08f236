//! Fully connected layer `y = act(x · W + b)` with a hand-written backward.

use crate::kernels::cpu::elementwise::activation_backward;
use crate::kernels::cpu::{gemm_ex, gemm_ex_col_sums, Act, Epilogue, Isa};
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

/// Where a backward writes dL/dx, and the activation whose output x is (when it is one):
/// `(buffer, Some((x, act)))` gives dL/d(pre-activation of the layer below).
pub type InputGrad<'a> = (&'a mut [f32], Option<(&'a [f32], Act)>);

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
                ..Epilogue::NONE
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
        self.backward_pre(x, dy, n, g, dx.map(|d| (d, None)), accumulate);
    }

    /// Backward from `dz` = dL/d(pre-activation) (`n x dout`). Gradients are written to `g`
    /// (added when `accumulate`). `dx = Some((buf, act_of_x))` receives dL/dx (overwritten);
    /// when the input x is itself the output of an activation (`act_of_x = Some((x, a))`,
    /// the layer below), the result is dL/d(that layer's pre-activation), the activation's
    /// backward fused into the product `dz · Wᵀ`.
    pub fn backward_pre(
        &self,
        x: &[f32],
        dz: &[f32],
        n: usize,
        g: &mut LinearGrad,
        dx: Option<InputGrad>,
        accumulate: bool,
    ) {
        assert_eq!(x.len(), n * self.din, "Linear::backward: x must be n x din");
        assert_eq!(
            dz.len(),
            n * self.dout,
            "Linear::backward: dy must be n x dout"
        );
        let beta = if accumulate { 1.0 } else { 0.0 };
        // dW = xᵀ · dz : (din x n) · (n x dout); db = column sums of dz, taken while dz is
        // packed
        let mut db = vec![0f32; self.dout];
        gemm_ex_col_sums(
            Isa::detect(),
            true,
            false,
            self.din,
            self.dout,
            n,
            1.0,
            x,
            dz,
            beta,
            &mut g.w,
            Epilogue::NONE,
            &mut db,
        );
        if accumulate {
            for (a, t) in g.b.iter_mut().zip(&db) {
                *a += t;
            }
        } else {
            g.b.copy_from_slice(&db);
        }
        if let Some((dx, act_of_x)) = dx {
            // dx = dz · Wᵀ : (n x dout) · (dout x din), times act'(x) when x is an activation
            gemm_ex(
                Isa::detect(),
                false,
                true,
                n,
                self.din,
                self.dout,
                1.0,
                dz,
                &self.w,
                0.0,
                dx,
                Epilogue {
                    grad_of: act_of_x,
                    ..Epilogue::NONE
                },
            );
        }
    }
}
