//! Backend recommenders (MF-BPR, LightGCN, SGL): graph, sampler, model and training loop.
pub mod graph;
pub mod mf_device;
pub mod mf_step;
pub mod model;
pub mod sampler;
pub mod trainer;

pub use model::{Augment, Backend, Model, ModelConfig};
