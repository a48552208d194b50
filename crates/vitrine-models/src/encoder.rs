//! The image encoder used by search (and later captioning): one of the architectures,
//! chosen by the `arch` key of the `[model]` table.

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::cnn::{Cnn, CnnConfig, Downsample, HeadPool, Norm};
use crate::error::{unknown_preset, ModelError};
use crate::vit::{Pool, Vit, VitConfig};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "arch", rename_all = "kebab-case")]
pub enum ImageEncoderConfig {
    Cnn(CnnConfig),
    Vit(VitConfig),
}

impl Default for ImageEncoderConfig {
    fn default() -> Self {
        Self::Cnn(CnnConfig::default())
    }
}

impl ImageEncoderConfig {
    pub const PRESETS: [&'static str; 4] = ["cnn-fmnist", "cnn-products", "vit-tiny", "vit-s16"];

    /// Named encoders: the two shipped search recipes' CNNs, a ViT small enough for CPU
    /// training, and ViT-S/16 at 224x224 (the smallest ImageNet-size ViT).
    pub fn preset(name: &str) -> Result<Self, ModelError> {
        let cnn = |in_channels, input_size, widths: Vec<usize>, head_pool| {
            Self::Cnn(CnnConfig {
                in_channels,
                input_size,
                depths: vec![0; widths.len()],
                widths,
                downsample: Downsample::MaxPool,
                norm: Norm::None,
                head_pool,
                embed_dim: 128,
            })
        };
        Ok(match name {
            "cnn-fmnist" => cnn(1, [28, 28], vec![16, 32, 64], HeadPool::Flatten),
            "cnn-products" => cnn(3, [64, 48], vec![16, 32, 64, 128], HeadPool::Avg),
            "vit-tiny" => Self::Vit(VitConfig::sized([32, 32], 4, [96, 4, 3], 128)),
            "vit-s16" => Self::Vit(VitConfig {
                pool: Pool::Cls,
                ..VitConfig::sized([224, 224], 16, [384, 12, 6], 256)
            }),
            other => return Err(unknown_preset(other, &Self::PRESETS)),
        })
    }

    pub fn validate(&self) -> Result<(), ModelError> {
        match self {
            Self::Cnn(c) => c.validate(),
            Self::Vit(c) => c.validate(),
        }
    }

    /// [channels, height, width] the encoder expects.
    pub fn input_shape(&self) -> [usize; 3] {
        let (c, [h, w]) = match self {
            Self::Cnn(c) => (c.in_channels, c.input_size),
            Self::Vit(c) => (c.in_channels, c.input_size),
        };
        [c, h, w]
    }

    pub fn embed_dim(&self) -> usize {
        match self {
            Self::Cnn(c) => c.embed_dim,
            Self::Vit(c) => c.embed_dim,
        }
    }

    /// (count, width) of the tokens [`ImageEncoder::forward_tokens`] returns: the cells of
    /// the CNN's last feature map, or the ViT's patches plus its class token.
    pub fn token_shape(&self) -> (usize, usize) {
        match self {
            Self::Cnn(c) => {
                let factor = 1usize << c.widths.len().saturating_sub(1);
                (
                    (c.input_size[0] / factor) * (c.input_size[1] / factor),
                    c.widths.last().copied().unwrap_or(0),
                )
            }
            Self::Vit(c) => (c.num_patches() + 1, c.d_model),
        }
    }

    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<ImageEncoder<B>, ModelError> {
        Ok(match self {
            Self::Cnn(c) => ImageEncoder::Cnn(c.init(device)?),
            Self::Vit(c) => ImageEncoder::Vit(c.init(device)?),
        })
    }
}

#[derive(Module, Debug)]
pub enum ImageEncoder<B: Backend> {
    Cnn(Cnn<B>),
    Vit(Vit<B>),
}

impl<B: Backend> ImageEncoder<B> {
    /// The float type of the parameters (f32 unless cast with `cast_float_params`).
    pub fn float_dtype(&self) -> burn::tensor::DType {
        match self {
            Self::Cnn(m) => m.head.weight.val().dtype(),
            Self::Vit(m) => m.head.weight.val().dtype(),
        }
    }

    /// L2-normalised embeddings: [B, C, H, W] -> [B, embed_dim].
    pub fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        match self {
            Self::Cnn(m) => m.forward(images),
            Self::Vit(m) => m.forward(images),
        }
    }

    /// A grid of feature tokens for cross-attention: [B, C, H, W] -> [B, T, D].
    pub fn forward_tokens(&self, images: Tensor<B, 4>) -> Tensor<B, 3> {
        match self {
            Self::Cnn(m) => m.forward_tokens(images),
            Self::Vit(m) => m.forward_tokens(images),
        }
    }

    /// Both of the above from one pass: (tokens [B, T, D], embeddings [B, embed_dim]).
    pub fn forward_tokens_and_embedding(
        &self,
        images: Tensor<B, 4>,
    ) -> (Tensor<B, 3>, Tensor<B, 2>) {
        match self {
            Self::Cnn(m) => {
                let map = m.feature_map(images);
                (Cnn::map_tokens(map.clone()), m.embed_map(map))
            }
            Self::Vit(m) => {
                let tokens = m.forward_tokens(images);
                (tokens.clone(), m.embed_tokens(tokens))
            }
        }
    }
}

/// Checks a batch against the encoder's expected input before running it, so a wrong
/// preprocessing config is an error, not a shape panic deep inside a kernel.
pub fn check_input(config: &ImageEncoderConfig, dims: [usize; 4]) -> Result<(), ModelError> {
    let [c, h, w] = config.input_shape();
    if dims[1..] != [c, h, w] {
        return Err(ModelError::InputShape {
            got: dims.to_vec(),
            expected: vec![dims[0], c, h, w],
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_validate_and_the_cnns_are_the_shipped_recipes() {
        for name in ImageEncoderConfig::PRESETS {
            ImageEncoderConfig::preset(name)
                .unwrap()
                .validate()
                .unwrap();
        }
        assert!(ImageEncoderConfig::preset("resnet-9000").is_err());
        let configs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        for (preset, file) in [
            ("cnn-fmnist", "search-fashion-mnist.toml"),
            ("cnn-products", "search-fashion-products.toml"),
        ] {
            let text = std::fs::read_to_string(configs.join(file)).unwrap();
            let table: toml::Table = toml::from_str(&text).unwrap();
            let recipe: ImageEncoderConfig = table["model"].clone().try_into().unwrap();
            assert_eq!(
                ImageEncoderConfig::preset(preset).unwrap(),
                recipe,
                "{file}"
            );
        }
    }

    #[test]
    fn arch_tag_selects_the_architecture() {
        let c: ImageEncoderConfig =
            toml::from_str("arch = \"vit\"\npatch_size = 4\ninput_size = [8, 8]").unwrap();
        assert!(matches!(&c, ImageEncoderConfig::Vit(v) if v.patch_size == 4));
        assert_eq!(c.input_shape(), [3, 8, 8]);
        let c: ImageEncoderConfig = toml::from_str("arch = \"cnn\"\nin_channels = 1\ninput_size = [28, 28]\nwidths=[8,16,32]\ndepths=[0,0,0]").unwrap();
        assert!(matches!(c, ImageEncoderConfig::Cnn(_)));
        assert!(toml::from_str::<ImageEncoderConfig>("arch = \"resnet-9000\"").is_err());
    }

    #[test]
    fn token_shape_matches_forward_tokens() {
        use burn::backend::Flex;
        let device = Default::default();
        for text in [
            "arch = \"cnn\"\ninput_size = [16, 8]\nwidths = [4, 6, 8]\ndepths = [0, 0, 0]",
            "arch = \"vit\"\ninput_size = [8, 12]\npatch_size = 4\nd_model = 16\nn_heads = 2\nn_layers = 1",
        ] {
            let c: ImageEncoderConfig = toml::from_str(text).unwrap();
            let [ch, h, w] = c.input_shape();
            let m = c.init::<Flex>(&device).unwrap();
            let t = m.forward_tokens(Tensor::zeros([2, ch, h, w], &device));
            let (n, d) = c.token_shape();
            assert_eq!(t.dims(), [2, n, d], "{text}");
            let (t2, e) = m.forward_tokens_and_embedding(Tensor::ones([2, ch, h, w], &device));
            let e1 = m.forward(Tensor::ones([2, ch, h, w], &device));
            let t1 = m.forward_tokens(Tensor::ones([2, ch, h, w], &device));
            let de: f32 = (e - e1).abs().max().into_scalar();
            let dt: f32 = (t2 - t1).abs().max().into_scalar();
            assert!(de < 1e-6 && dt < 1e-6, "{text}: one pass differs ({de}, {dt})");
        }
    }

    #[test]
    fn check_input_names_the_mismatch() {
        let c = ImageEncoderConfig::default();
        assert!(check_input(&c, [2, 3, 64, 64]).is_ok());
        let err = check_input(&c, [2, 1, 64, 64]).unwrap_err();
        assert_eq!(
            err,
            ModelError::InputShape {
                got: vec![2, 1, 64, 64],
                expected: vec![2, 3, 64, 64]
            }
        );
    }
}
