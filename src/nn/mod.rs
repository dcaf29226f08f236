//! Neural-network building blocks with hand-written backward passes, losses and optimizers.
pub mod linear;
pub mod loss;
pub mod mlp;
pub mod optim;
pub mod step_embedding;

pub use linear::{Linear, LinearGrad};
pub use mlp::{Mlp, MlpCache};
pub use optim::{Adam, AdamConfig, RowSlots};
