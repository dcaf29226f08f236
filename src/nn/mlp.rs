//! Multi-layer perceptron: Linear layers with an activation between them (none after the last).

use super::linear::{Linear, LinearGrad};
use crate::kernels::cpu::Act;
use crate::util::rng::Rng;

/// An MLP `dims[0] → dims[1] → … → dims[L]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Mlp {
    /// Layers.
    pub layers: Vec<Linear>,
    /// Activation between layers.
    pub act: Act,
}

/// Per-layer outputs kept from the forward pass for the backward.
#[derive(Default, Debug)]
pub struct MlpCache {
    /// Output of each layer (post-activation), `n x dims[l+1]`.
    pub outs: Vec<Vec<f32>>,
    grad_a: Vec<f32>,
    grad_b: Vec<f32>,
}

impl Mlp {
    /// Xavier-normal initialized MLP.
    pub fn new(dims: &[usize], act: Act, bias_std: f32, rng: &mut Rng) -> Self {
        assert!(
            dims.len() >= 2,
            "an MLP needs at least an input and an output width"
        );
        let layers = dims
            .windows(2)
            .map(|w| Linear::xavier_normal(w[0], w[1], bias_std, rng))
            .collect();
        Mlp { layers, act }
    }

    /// Input width.
    pub fn din(&self) -> usize {
        self.layers[0].din
    }
    /// Output width.
    pub fn dout(&self) -> usize {
        self.layers.last().unwrap().dout
    }

    /// The activation after layer `l` (none after the last).
    pub fn act_of(&self, l: usize) -> Act {
        if l + 1 == self.layers.len() {
            Act::None
        } else {
            self.act
        }
    }

    /// Multiply-accumulates per sample (for FLOP accounting).
    pub fn macs(&self) -> usize {
        self.layers.iter().map(|l| l.din * l.dout).sum()
    }

    /// Zeroed gradients.
    pub fn zero_grad(&self) -> Vec<LinearGrad> {
        self.layers.iter().map(Linear::zero_grad).collect()
    }

    /// Forward a batch of `n` rows; the output is `cache.outs.last()`.
    pub fn forward<'c>(&self, x: &[f32], n: usize, cache: &'c mut MlpCache) -> &'c [f32] {
        let l0 = &self.layers[0];
        l0.forward(x, n, self.act_of(0), self.first_out(n, cache));
        self.forward_upper(n, cache)
    }

    /// The first layer's output buffer (`n x dims[1]`), for a caller that forms that layer's
    /// output itself and then runs [`Self::forward_upper`].
    pub fn first_out<'c>(&self, n: usize, cache: &'c mut MlpCache) -> &'c mut [f32] {
        cache.outs.resize_with(self.layers.len(), Vec::new);
        let out = &mut cache.outs[0];
        out.resize(n * self.layers[0].dout, 0.0);
        out
    }

    /// Forward of layers 1.. from the first layer's output ([`Self::first_out`]).
    pub fn forward_upper<'c>(&self, n: usize, cache: &'c mut MlpCache) -> &'c [f32] {
        for (l, layer) in self.layers.iter().enumerate().skip(1) {
            let (prev, rest) = cache.outs.split_at_mut(l);
            let out = &mut rest[0];
            out.resize(n * layer.dout, 0.0);
            layer.forward(&prev[l - 1], n, self.act_of(l), out);
        }
        cache.outs.last().unwrap()
    }

    /// Backward from `dout` (dL/doutput, consumed). Writes parameter gradients into `grads`
    /// (overwritten) and dL/dx into `dx` when given.
    pub fn backward(
        &self,
        x: &[f32],
        n: usize,
        cache: &mut MlpCache,
        dout: &[f32],
        grads: &mut [LinearGrad],
        dx: Option<&mut [f32]>,
    ) {
        self.backward_upper(n, cache, dout, grads);
        let ga = &cache.grad_a[..n * self.layers[0].dout];
        self.layers[0].backward_pre(x, ga, n, &mut grads[0], dx.map(|d| (d, None)), false);
    }

    /// The backward of layers 1.. (their parameter gradients into `grads`), down to
    /// dL/d(pre-activation of the first layer), which [`Self::first_pre_grad`] then gives.
    pub fn backward_upper(
        &self,
        n: usize,
        cache: &mut MlpCache,
        dout: &[f32],
        grads: &mut [LinearGrad],
    ) {
        let nl = self.layers.len();
        // the two gradient buffers only grow (to the widest layer), and each layer uses the
        // front of them: every entry it reads was written first, so they are never zeroed
        // (growing one back by 900 columns each step used to cost a 7 MB memset)
        grow(&mut cache.grad_a, dout.len());
        cache.grad_a[..dout.len()].copy_from_slice(dout);
        crate::kernels::cpu::elementwise::activation_backward(
            &cache.outs[nl - 1],
            &mut cache.grad_a[..dout.len()],
            self.act_of(nl - 1),
        );
        for l in (1..nl).rev() {
            let layer = &self.layers[l];
            let input: &[f32] = &cache.outs[l - 1];
            grow(&mut cache.grad_b, n * layer.din);
            let ga = &cache.grad_a[..n * layer.dout];
            let gb = &mut cache.grad_b[..n * layer.din];
            // grad_a holds dL/d(pre-activation) of layer l; the input gradient comes out of
            // the product already through the activation below it
            let target = Some((gb, Some((input, self.act_of(l - 1)))));
            layer.backward_pre(input, ga, n, &mut grads[l], target, false);
            std::mem::swap(&mut cache.grad_a, &mut cache.grad_b);
        }
    }

    /// dL/d(pre-activation of the first layer) (`n x dims[1]`) after
    /// [`Self::backward_upper`] (or [`Self::backward`]).
    pub fn first_pre_grad<'c>(&self, n: usize, cache: &'c MlpCache) -> &'c [f32] {
        &cache.grad_a[..n * self.layers[0].dout]
    }

    /// [`Self::backward`] computing only the input-gradient columns `cols` into `dx`
    /// (`n x cols.len()`): when only part of the input needs a gradient, the rest of the
    /// first layer's `dy · Wᵀ` is skipped.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_input_cols(
        &self,
        x: &[f32],
        n: usize,
        cache: &mut MlpCache,
        dout: &[f32],
        grads: &mut [LinearGrad],
        cols: std::ops::Range<usize>,
        dx: &mut [f32],
    ) {
        self.backward(x, n, cache, dout, grads, None);
        // after the backward, grad_a holds dL/d(pre-activation) of the first layer
        let l0 = &self.layers[0];
        assert!(cols.end <= l0.din && dx.len() == n * cols.len());
        let w = &l0.w[cols.start * l0.dout..cols.end * l0.dout];
        crate::kernels::cpu::gemm(
            false,
            true,
            n,
            cols.len(),
            l0.dout,
            1.0,
            &cache.grad_a[..n * l0.dout],
            w,
            0.0,
            dx,
        );
    }
}

/// Make `v` at least `len` long (new entries zeroed; never shrinks).
fn grow(v: &mut Vec<f32>, len: usize) {
    if v.len() < len {
        v.resize(len, 0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache reused across batches of other sizes (its buffers longer than needed, holding
    /// the last batch's values) gives the bits of a fresh cache.
    #[test]
    fn reused_cache_gives_the_bits_of_a_fresh_one() {
        let mut rng = Rng::new(7);
        let mlp = Mlp::new(&[13, 40, 5, 40, 9], Act::Tanh, 0.1, &mut rng);
        let mut reused = MlpCache::default();
        for (i, n) in [17usize, 3, 29, 3].into_iter().enumerate() {
            let mut x = vec![0f32; n * 13];
            let mut dout = vec![0f32; n * 9];
            rng.fill_normal(&mut x, 1.0);
            rng.fill_normal(&mut dout, 1.0);
            let run = |cache: &mut MlpCache| {
                mlp.forward(&x, n, cache);
                let mut g = mlp.zero_grad();
                let mut dx = vec![0f32; n * 13];
                if i % 2 == 0 {
                    mlp.backward(&x, n, cache, &dout, &mut g, Some(&mut dx));
                } else {
                    let mut cols = vec![0f32; n * 4];
                    mlp.backward_input_cols(&x, n, cache, &dout, &mut g, 2..6, &mut cols);
                    dx = cols;
                }
                let mut bits: Vec<u32> = dx.iter().map(|v| v.to_bits()).collect();
                for lg in &g {
                    bits.extend(lg.w.iter().chain(&lg.b).map(|v| v.to_bits()));
                }
                bits
            };
            assert_eq!(
                run(&mut reused),
                run(&mut MlpCache::default()),
                "batch {i} (n = {n})"
            );
        }
    }
}
