//! Vitrine's model definitions. Every model is generic over `B: Backend` so the trainer,
//! the evaluator and the server share one definition that runs on CPU, WGPU and CUDA.
//!
//! One file per architecture (`cnn`, `vit`), each with its config (serde, defaults), module,
//! `init`, `forward` with shape comments and the Hugging Face weight-name mapping where one
//! exists. `transformer` holds the pre-LayerNorm blocks shared by the ViT and the GPT
//! decoder (`gpt`).

pub mod captioner;
pub mod cnn;
pub mod encoder;
pub mod error;
pub mod gpt;
pub mod scorer;
pub mod transformer;
pub mod vit;

pub use encoder::{ImageEncoder, ImageEncoderConfig};
pub use error::ModelError;

use burn::tensor::{backend::Backend, Tensor};

/// Scales each row of `x` [batch, dim] to unit L2 norm. `eps` keeps an all-zero row finite.
pub fn l2_normalize<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let norm = x.clone().powi_scalar(2).sum_dim(1).add_scalar(1e-12).sqrt();
    x / norm
}
