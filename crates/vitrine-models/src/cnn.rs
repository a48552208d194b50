//! ResNet-style convolutional image encoder.
//!
//! ```text
//! image [B, C, H, W]
//!   stem: conv3x3(C -> w0) + act                      [B, w0, H, W]
//!   stage 0: d0 residual blocks                       [B, w0, H, W]
//!   stage s>0: downsample /2, conv3x3(w(s-1) -> ws),  [B, ws, H/2^s, W/2^s]
//!              ds residual blocks
//!   global average pool                               [B, w_last]
//!   linear -> embed_dim, L2-normalise                 [B, embed_dim]
//! ```
//!
//! Two choices exist for speed on Burn's CPU backend (see PERF-NOTES): downsampling by
//! 2x2 max-pooling followed by a stride-1 convolution (fast on Flex) or by a stride-2
//! convolution (the classic ResNet; fast on GPUs), and normalisation by BatchNorm or by
//! none, in which case each residual branch is scaled by a learned gate initialised to zero
//! (SkipInit, De & Smith 2020), which trains deep-enough nets without per-step reductions.
//!
//! There is no Hugging Face counterpart: weights come from Vitrine's own runs.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Initializer, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{check_range, invalid, ModelError};
use crate::l2_normalize;

/// How a stage halves the spatial size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Downsample {
    /// 2x2 max-pool, then a stride-1 3x3 convolution that changes the width.
    MaxPool,
    /// One stride-2 3x3 convolution.
    StridedConv,
}

/// How the last feature map becomes one vector before the embedding projection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HeadPool {
    /// Global average: position-invariant, works at any input size.
    Avg,
    /// Flatten the whole map: keeps the layout (which part of the image holds what), which
    /// matters for small, centred images such as Fashion-MNIST; needs the configured size.
    Flatten,
}

/// Normalisation inside the convolutional units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Norm {
    /// No normalisation; residual branches are gated by a zero-initialised scalar.
    None,
    /// BatchNorm after every convolution.
    Batch,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CnnConfig {
    /// Image channels: 1 (grayscale) or 3 (RGB).
    pub in_channels: usize,
    /// Input [height, width]; must be divisible by 2^(stages-1).
    pub input_size: [usize; 2],
    /// Channel width of each stage.
    pub widths: Vec<usize>,
    /// Residual blocks in each stage (0 allowed: the stage is only its transition).
    pub depths: Vec<usize>,
    pub downsample: Downsample,
    pub norm: Norm,
    pub head_pool: HeadPool,
    /// Size of the output embedding.
    pub embed_dim: usize,
}

impl Default for CnnConfig {
    fn default() -> Self {
        Self {
            in_channels: 3,
            input_size: [64, 64],
            widths: vec![32, 64, 128],
            depths: vec![1, 1, 1],
            downsample: Downsample::MaxPool,
            norm: Norm::None,
            head_pool: HeadPool::Avg,
            embed_dim: 128,
        }
    }
}

impl CnnConfig {
    pub fn validate(&self) -> Result<(), ModelError> {
        if !matches!(self.in_channels, 1 | 3) {
            return Err(invalid("in_channels", self.in_channels, "1 or 3"));
        }
        if self.widths.is_empty() || self.widths.len() > 8 {
            return Err(invalid(
                "widths",
                format!("{:?}", self.widths),
                "1 to 8 stages",
            ));
        }
        if self.widths.iter().any(|&w| w == 0 || w > 4096) {
            return Err(invalid(
                "widths",
                format!("{:?}", self.widths),
                "each 1..=4096",
            ));
        }
        if self.depths.len() != self.widths.len() {
            return Err(invalid(
                "depths",
                format!("{:?}", self.depths),
                format!("one entry per stage ({} stages)", self.widths.len()),
            ));
        }
        if self.depths.iter().any(|&d| d > 64) {
            return Err(invalid(
                "depths",
                format!("{:?}", self.depths),
                "each 0..=64",
            ));
        }
        let factor = 1usize << (self.widths.len() - 1);
        for &side in &self.input_size {
            if side == 0 || side % factor != 0 || side > 4096 {
                return Err(invalid(
                    "input_size",
                    format!("{:?}", self.input_size),
                    format!("each side 1..=4096 and divisible by {factor} (2^(stages-1))"),
                ));
            }
        }
        check_range("embed_dim", self.embed_dim, 65536)?;
        Ok(())
    }

    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<Cnn<B>, ModelError> {
        self.validate()?;
        let unit = |c_in: usize, c_out: usize, stride: usize| {
            ConvUnit::new(c_in, c_out, stride, self.norm, device)
        };
        let stem = unit(self.in_channels, self.widths[0], 1);
        let mut stages = Vec::with_capacity(self.widths.len());
        for (s, (&width, &depth)) in self.widths.iter().zip(&self.depths).enumerate() {
            let transition = if s == 0 {
                None
            } else {
                let stride = match self.downsample {
                    Downsample::MaxPool => 1,
                    Downsample::StridedConv => 2,
                };
                Some(unit(self.widths[s - 1], width, stride))
            };
            let blocks = (0..depth)
                .map(|_| ResidualBlock {
                    conv1: unit(width, width, 1),
                    conv2: unit(width, width, 1),
                    gate: match self.norm {
                        Norm::None => Some(Initializer::Zeros.init([1], device)),
                        Norm::Batch => None,
                    },
                })
                .collect();
            stages.push(Stage { transition, blocks });
        }
        let pool = match self.downsample {
            Downsample::MaxPool => Some(MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init()),
            Downsample::StridedConv => None,
        };
        let last = *self.widths.last().unwrap_or(&1);
        let factor = 1usize << (self.widths.len() - 1);
        let head_in = match self.head_pool {
            HeadPool::Avg => last,
            HeadPool::Flatten => {
                last * (self.input_size[0] / factor) * (self.input_size[1] / factor)
            }
        };
        Ok(Cnn {
            stem,
            stages,
            pool,
            head: LinearConfig::new(head_in, self.embed_dim).init(device),
            flatten: self.head_pool == HeadPool::Flatten,
        })
    }
}

/// conv3x3 (+ BatchNorm) + ReLU.
#[derive(Module, Debug)]
pub struct ConvUnit<B: Backend> {
    pub conv: Conv2d<B>,
    pub norm: Option<BatchNorm<B>>,
}

impl<B: Backend> ConvUnit<B> {
    fn new(c_in: usize, c_out: usize, stride: usize, norm: Norm, device: &B::Device) -> Self {
        let conv = Conv2dConfig::new([c_in, c_out], [3, 3])
            .with_stride([stride, stride])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            // BatchNorm supplies the shift; without it the conv keeps its bias.
            .with_bias(norm == Norm::None)
            .with_initializer(Initializer::KaimingNormal {
                gain: std::f64::consts::SQRT_2,
                fan_out_only: false,
            })
            .init(device);
        let norm = match norm {
            Norm::Batch => Some(BatchNormConfig::new(c_out).init(device)),
            Norm::None => None,
        };
        Self { conv, norm }
    }

    /// Convolution and normalisation without the activation.
    fn linear_part(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let x = self.conv.forward(x);
        match &self.norm {
            Some(bn) => bn.forward(x),
            None => x,
        }
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        relu(self.linear_part(x))
    }
}

/// x + gate * conv(relu(conv(x))), then ReLU. Without a gate (BatchNorm) the gate is 1.
#[derive(Module, Debug)]
pub struct ResidualBlock<B: Backend> {
    pub conv1: ConvUnit<B>,
    pub conv2: ConvUnit<B>,
    pub gate: Option<Param<Tensor<B, 1>>>,
}

impl<B: Backend> ResidualBlock<B> {
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let branch = self.conv2.linear_part(self.conv1.forward(x.clone()));
        let branch = match &self.gate {
            Some(gate) => branch * gate.val().reshape([1, 1, 1, 1]),
            None => branch,
        };
        relu(x + branch)
    }
}

#[derive(Module, Debug)]
pub struct Stage<B: Backend> {
    pub transition: Option<ConvUnit<B>>,
    pub blocks: Vec<ResidualBlock<B>>,
}

#[derive(Module, Debug)]
pub struct Cnn<B: Backend> {
    pub stem: ConvUnit<B>,
    pub stages: Vec<Stage<B>>,
    pub pool: Option<MaxPool2d>,
    pub head: Linear<B>,
    pub flatten: bool,
}

impl<B: Backend> Cnn<B> {
    /// Feature map of the last stage: [B, C, H, W] -> [B, w_last, H/2^(S-1), W/2^(S-1)].
    pub fn feature_map(&self, images: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut x = self.stem.forward(images);
        for stage in &self.stages {
            if let Some(transition) = &stage.transition {
                if let Some(pool) = &self.pool {
                    x = pool.forward(x);
                }
                x = transition.forward(x);
            }
            for block in &stage.blocks {
                x = block.forward(x);
            }
        }
        x
    }

    /// Feature-map cells as tokens: [B, C, H, W] -> [B, h*w, w_last].
    pub fn forward_tokens(&self, images: Tensor<B, 4>) -> Tensor<B, 3> {
        Self::map_tokens(self.feature_map(images))
    }

    /// Feature map [B, C, h, w] -> tokens [B, h*w, C].
    pub fn map_tokens(x: Tensor<B, 4>) -> Tensor<B, 3> {
        let [b, c, h, w] = x.dims();
        x.reshape([b, c, h * w]).swap_dims(1, 2)
    }

    /// L2-normalised embeddings: [B, C, H, W] -> [B, embed_dim].
    pub fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        self.embed_map(self.feature_map(images))
    }

    /// The embedding of a feature map: [B, C, h, w] -> [B, embed_dim].
    pub fn embed_map(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let [b, c, h, w] = x.dims();
        let pooled = if self.flatten {
            x.reshape([b, c * h * w])
        } else {
            // One reduction over the flattened plane: Flex is slow on multi-axis reductions.
            x.reshape([b, c, h * w]).mean_dim(2).reshape([b, c])
        };
        l2_normalize(self.head.forward(pooled))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::B;

    fn tiny(norm: Norm, downsample: Downsample) -> CnnConfig {
        CnnConfig {
            in_channels: 1,
            input_size: [8, 8],
            widths: vec![4, 8],
            depths: vec![1, 1],
            downsample,
            norm,
            head_pool: HeadPool::Avg,
            embed_dim: 6,
        }
    }

    #[test]
    fn shapes_and_unit_norm() {
        let device = Default::default();
        for norm in [Norm::None, Norm::Batch] {
            for ds in [Downsample::MaxPool, Downsample::StridedConv] {
                let model = tiny(norm, ds).init::<B>(&device).unwrap();
                let x = Tensor::<B, 4>::random(
                    [3, 1, 8, 8],
                    burn::tensor::Distribution::Normal(0.0, 1.0),
                    &device,
                );
                let tokens = model.forward_tokens(x.clone());
                assert_eq!(tokens.dims(), [3, 16, 8]);
                let emb = model.forward(x);
                assert_eq!(emb.dims(), [3, 6]);
                let norms: Vec<f32> = emb
                    .powi_scalar(2)
                    .sum_dim(1)
                    .sqrt()
                    .into_data()
                    .to_vec()
                    .unwrap();
                for n in norms {
                    assert!((n - 1.0).abs() < 1e-5, "norm {n}");
                }
            }
        }
    }

    #[test]
    fn flatten_head_keeps_the_layout() {
        let device = Default::default();
        let cfg = CnnConfig {
            head_pool: HeadPool::Flatten,
            ..tiny(Norm::None, Downsample::MaxPool)
        };
        let model = cfg.init::<B>(&device).unwrap();
        // widths [4, 8], one pooling: 8 channels x 4 x 4 feed the projection.
        assert_eq!(model.head.weight.dims(), [8 * 4 * 4, 6]);
        let x = Tensor::<B, 4>::random(
            [2, 1, 8, 8],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        assert_eq!(model.forward(x).dims(), [2, 6]);
    }

    #[test]
    fn validate_rejects_bad_configs() {
        let ok = tiny(Norm::None, Downsample::MaxPool);
        assert!(ok.validate().is_ok());
        let mut c = ok.clone();
        c.in_channels = 2;
        assert!(matches!(
            c.validate(),
            Err(ModelError::InvalidConfig {
                field: "in_channels",
                ..
            })
        ));
        let mut c = ok.clone();
        c.depths = vec![1];
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.input_size = [9, 8];
        assert!(c.validate().is_err());
        let mut c = ok;
        c.embed_dim = 0;
        assert!(c.validate().is_err());
    }

    #[test]
    fn config_parses_from_toml_with_defaults() {
        let c: CnnConfig =
            toml::from_str("widths = [8, 16]\ndepths = [0, 2]\nnorm = \"batch\"").unwrap();
        assert_eq!(c.widths, vec![8, 16]);
        assert_eq!(c.norm, Norm::Batch);
        assert_eq!(c.embed_dim, CnnConfig::default().embed_dim);
        assert!(toml::from_str::<CnnConfig>("widthz = [1]").is_err());
    }
}
