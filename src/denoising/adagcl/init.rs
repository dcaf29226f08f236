//! PyTorch's default initializations, as the authors' AdaGCL code gets them: `nn.Linear`
//! draws weights and biases from U(−1/√din, 1/√din); the embedding tables are
//! Xavier-uniform.

use crate::nn::Linear;
use crate::util::rng::Rng;

fn uniform(n: usize, bound: f32, rng: &mut Rng) -> Vec<f32> {
    (0..n)
        .map(|_| (rng.uniform_f32() * 2.0 - 1.0) * bound)
        .collect()
}

/// A `din → dout` layer with `nn.Linear`'s default initialization.
pub fn torch_linear(din: usize, dout: usize, rng: &mut Rng) -> Linear {
    let bound = 1.0 / (din.max(1) as f32).sqrt();
    Linear {
        din,
        dout,
        w: uniform(din * dout, bound, rng),
        b: uniform(dout, bound, rng),
    }
}

/// An `n x d` table, Xavier-uniform (fan-in d, fan-out n as PyTorch counts a 2-D tensor).
pub fn xavier_uniform(n: usize, d: usize, rng: &mut Rng) -> Vec<f32> {
    let bound = (6.0 / (n + d) as f64).sqrt() as f32;
    uniform(n * d, bound, rng)
}

/// The user table then the item table, each Xavier-uniform on its own shape (as the authors'
/// `uEmbeds` and `iEmbeds`), concatenated: `(n_users + n_items) x d`.
pub fn node_embeddings(n_users: usize, n_items: usize, d: usize, rng: &mut Rng) -> Vec<f32> {
    let mut e = xavier_uniform(n_users, d, rng);
    e.extend(xavier_uniform(n_items, d, rng));
    e
}
