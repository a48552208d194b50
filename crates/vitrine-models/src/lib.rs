//! Vitrine's model definitions. Every model is generic over `B: Backend` so the trainer,
//! the evaluator and the server share one definition that runs on CPU, WGPU and CUDA.
//!
//! One file per architecture (`cnn`, `vit`, `gpt`, `bert`, `clip`), each with its config (serde, defaults), module,
//! `init`, `forward` with shape comments and the Hugging Face weight-name mapping where one
//! exists. `transformer` holds the pre-LayerNorm blocks shared by the ViT and the GPT
//! decoder (`gpt`).

pub mod bert;
pub mod captioner;
pub mod clip;
pub mod cnn;
pub mod cpu;
pub mod encoder;
pub mod error;
pub mod fused;
pub mod gpt;
pub mod hf;
pub mod scorer;
pub mod transformer;
pub mod vit;

/// What the unit tests share: the backend they run on.
#[cfg(test)]
mod testing {
    pub type B = burn::backend::Flex;

    /// Whether `config` with `change` applied passes `validate`.
    pub fn valid_with<C, E>(
        config: &C,
        change: fn(&mut C),
        validate: fn(&C) -> Result<(), E>,
    ) -> bool
    where
        C: Clone,
    {
        let mut c = config.clone();
        change(&mut c);
        validate(&c).is_ok()
    }
}

pub use encoder::{ImageEncoder, ImageEncoderConfig};
pub use error::ModelError;

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{backend::Backend, DType, Tensor};
use serde::{Deserialize, Serialize};

/// Float type for inference (`--precision`): parameters and inputs are cast to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    #[default]
    F32,
    F16,
    Bf16,
}

impl Precision {
    pub fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
            Self::Bf16 => DType::BF16,
        }
    }

    /// `module` with its float parameters in this precision (unchanged for f32).
    pub fn apply<B: Backend, M: Module<B>>(self, module: M) -> M {
        match self {
            Self::F32 => module,
            p => cast_float_params(module, p.dtype()),
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            "bf16" => Ok(Self::Bf16),
            other => Err(format!("unknown precision {other:?}: use f32, f16 or bf16")),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
        })
    }
}

/// Scales each row of `x` [batch, dim] to unit L2 norm. `eps` keeps an all-zero row finite.
pub fn l2_normalize<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let norm = x.clone().powi_scalar(2).sum_dim(1).add_scalar(1e-12).sqrt();
    x / norm
}

/// Casts every float parameter of `module` to `dtype` (e.g. `DType::F16` for half-precision
/// inference). Inputs must be cast to the same type by the caller.
pub fn cast_float_params<B: Backend, M: Module<B>>(module: M, dtype: DType) -> M {
    struct Cast(DType);
    impl<B: Backend> ModuleMapper<B> for Cast {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let (id, tensor, mapper) = param.consume();
            Param::from_mapped_value(id, tensor.cast(self.0), mapper)
        }
    }
    module.map(&mut Cast(dtype))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::B;
    use burn::tensor::{Distribution, Int, TensorData};

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let n = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        dot / (n(a) * n(b))
    }

    fn host(t: Tensor<B, 2>) -> Vec<f32> {
        t.into_data().convert::<f32>().to_vec().unwrap()
    }

    #[test]
    fn half_precision_params_give_close_outputs() {
        let device = Default::default();
        B::seed(&device, 3);
        let config = ImageEncoderConfig::preset("vit-tiny").unwrap();
        let enc = config.init::<B>(&device).unwrap();
        let x = Tensor::<B, 4>::random([2, 3, 32, 32], Distribution::Uniform(-1.0, 1.0), &device);
        let full = host(enc.forward(x.clone()));
        for dtype in [DType::F16, DType::BF16] {
            let half = cast_float_params(enc.clone(), dtype);
            let y = half.forward(x.clone().cast(dtype));
            assert_eq!(y.dtype(), dtype);
            let got = host(y);
            for r in 0..2 {
                let c = cosine(&full[r * 128..(r + 1) * 128], &got[r * 128..(r + 1) * 128]);
                assert!(c > 0.99, "{dtype:?} row {r}: cosine {c}");
            }
        }
        // The decoder too: token ids in, half-precision logits out.
        let gpt = gpt::GptConfig::preset("tiny")
            .unwrap()
            .init::<B>(&device)
            .unwrap();
        let tokens =
            Tensor::<B, 2, Int>::from_data(TensorData::new(vec![1i64, 4, 9, 2], [1, 4]), &device);
        let full = gpt.forward(tokens.clone()).unwrap();
        let half = cast_float_params(gpt, DType::F16).forward(tokens).unwrap();
        assert_eq!(half.dtype(), DType::F16);
        let diff = (full - half.cast(DType::F32)).abs().max().into_scalar();
        assert!(diff < 1e-2, "max |f32 - f16| logits = {diff}");
    }
}
