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
use burn::tensor::activation::{self, relu};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{check_range, invalid, ModelError};
use crate::fused;
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

/// How the convolutions run, chosen per backend at each forward pass.
///
/// Burn 0.21's CPU backend (Flex) computes a convolution's input gradient image by image on
/// one core (its transposed convolution loops over the batch, with gemm's own threading off
/// below 192³ multiply-adds) and its weight gradient as a convolution whose kernel is the
/// whole feature map. On Flex a 3x3, stride-1 convolution therefore runs as one matrix
/// product over the whole batch instead (im2col), forward and backward, on activations kept
/// channel-major, [C, B, H, W], so that no layer pays a transpose. Other backends keep
/// their native convolution and the usual [B, C, H, W].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConvPath {
    Native,
    Im2col,
}

impl ConvPath {
    fn for_device<B: Backend>(device: &B::Device) -> Self {
        // `Autodiff<Flex>` calls itself "autodiff<flex>".
        if B::name(device).contains("flex") {
            Self::Im2col
        } else {
            Self::Native
        }
    }
}

/// A 3x3, stride-1, padding-1 convolution as one matrix product over the batch, on
/// channel-major activations: [C, B, H, W] -> [Cout, B, H, W], followed by a ReLU when
/// `relu`. Any other shape of convolution runs natively between two transposes.
///
/// In f32 the whole unit is [`fused::conv3x3_cbhw`] (one op forward and backward). In half
/// precision it is built from Burn ops: each image is zero-padded and flattened, and the
/// output is computed on a grid two columns wider than the image: then the input window of
/// kernel tap (ky, kx) is one contiguous run of every flattened image, starting ky*(W+2)+kx
/// in, so the nine column blocks are plain slices (Flex copies those at memory speed, where
/// it walks a 2-D window element by element). The two extra output columns are dropped at
/// the end.
fn conv_cbhw<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>, relu: bool) -> Tensor<B, 4> {
    let act = |y: Tensor<B, 4>| if relu { activation::relu(y) } else { y };
    let weight = conv.weight.val();
    let [cout, cin, kh, kw] = weight.dims();
    let same_3x3 = [kh, kw] == [3, 3]
        && conv.stride == [1, 1]
        && conv.dilation == [1, 1]
        && conv.groups == 1
        && conv.padding == PaddingConfig2d::Explicit(1, 1, 1, 1);
    if !same_3x3 {
        return act(conv.forward(x.swap_dims(0, 1)).swap_dims(0, 1));
    }
    let [c, b, h, w] = x.dims();
    debug_assert_eq!(c, cin);
    let bias = conv.bias.as_ref().map(|p| p.val());
    let x = match fused::conv3x3_cbhw(x, weight.clone(), bias, relu) {
        Ok(y) => return y,
        Err(x) => x,
    };
    let wide = w + 2;
    let len = h * wide;
    // One spare zero row at the bottom keeps the last tap's run inside the image. (Not
    // `Tensor::pad`: it builds its zeros in the default float type, which breaks f16 maps.)
    let device = x.device();
    let padded = Tensor::zeros([c, b, h + 3, wide], (&device, x.dtype()))
        .slice_assign([0..c, 0..b, 1..h + 1, 1..w + 1], x)
        .reshape([c, b, (h + 3) * wide]);
    let taps = (0..9)
        .map(|k| {
            let start = (k / 3) * wide + k % 3;
            padded.clone().slice([0..c, 0..b, start..start + len])
        })
        .collect();
    let cols = Tensor::stack::<4>(taps, 1).reshape([c * 9, b * len]); // [C*9, B*H*(W+2)]
    let mut y = weight.reshape([cout, c * 9]).matmul(cols); // [Cout, B*H*(W+2)]
    if let Some(bias) = &conv.bias {
        y = y + bias.val().reshape([cout, 1]);
    }
    // The reshape through [Cout, B, H*W] makes the narrowed map contiguous in one pass.
    act(y
        .reshape([cout, b, h, wide])
        .slice([0..cout, 0..b, 0..h, 0..w])
        .reshape([cout, b, h * w])
        .reshape([cout, b, h, w]))
}

/// 2x2, stride-2 max pooling: [A, B, H, W] -> [A, B, H/2, W/2]. In f32 on Flex it is
/// [`fused::max_pool_2x2`], one pass each way (Flex's pooling kernel visits every window
/// with scalar bounds checks). Otherwise (half precision) two elementwise maxima: the first
/// over the two contiguous rows of each window, the second over neighbouring columns; a
/// tie sends the gradient to the top row, then to the left column, where Burn's kernel
/// sends it to the first maximum in row-major order, which differs only when the two
/// diagonal cells of a window tie for its maximum. An odd side (never from a validated
/// config) goes to Burn's `pool`, which drops the last row or column.
fn max_pool_2x2<B: Backend>(x: Tensor<B, 4>, pool: &MaxPool2d) -> Tensor<B, 4> {
    let x = match fused::max_pool_2x2(x) {
        Ok(y) => return y,
        Err(x) => x,
    };
    let [a, b, h, w] = x.dims();
    if h % 2 != 0 || w % 2 != 0 {
        return pool.forward(x);
    }
    let m = a * b * h / 2;
    let rows = x.reshape([m, 2, w]);
    // Reshaping a strided half to one dimension copies it into place at memory speed.
    let top = rows.clone().slice([0..m, 0..1, 0..w]).reshape([m * w]);
    let bottom = rows.slice([0..m, 1..2, 0..w]).reshape([m * w]);
    let n = m * w / 2;
    let cols = top.max_pair(bottom).reshape([n, 2]);
    let left = cols.clone().slice([0..n, 0..1]).reshape([n]);
    let right = cols.slice([0..n, 1..2]).reshape([n]);
    left.max_pair(right).reshape([a, b, h / 2, w / 2])
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

    /// Convolution and normalisation without the activation, in `path`'s layout.
    fn linear_part(&self, x: Tensor<B, 4>, path: ConvPath) -> Tensor<B, 4> {
        let x = match path {
            ConvPath::Native => self.conv.forward(x),
            ConvPath::Im2col => conv_cbhw(&self.conv, x, false),
        };
        match (&self.norm, path) {
            (None, _) => x,
            (Some(bn), ConvPath::Native) => bn.forward(x),
            // BatchNorm wants the channels second.
            (Some(bn), ConvPath::Im2col) => bn.forward(x.swap_dims(0, 1)).swap_dims(0, 1),
        }
    }

    fn forward(&self, x: Tensor<B, 4>, path: ConvPath) -> Tensor<B, 4> {
        match (&self.norm, path) {
            // Without normalisation the ReLU joins the convolution's fused op.
            (None, ConvPath::Im2col) => conv_cbhw(&self.conv, x, true),
            _ => relu(self.linear_part(x, path)),
        }
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
    fn forward(&self, x: Tensor<B, 4>, path: ConvPath) -> Tensor<B, 4> {
        let branch = self
            .conv2
            .linear_part(self.conv1.forward(x.clone(), path), path);
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
        let path = ConvPath::for_device::<B>(&images.device());
        self.feature_map_with(images, path)
    }

    /// [`Self::feature_map`] along a given path.
    pub(crate) fn feature_map_with(&self, images: Tensor<B, 4>, path: ConvPath) -> Tensor<B, 4> {
        match path {
            ConvPath::Native => self.stages_forward(images, path),
            ConvPath::Im2col => self
                .stages_forward(images.swap_dims(0, 1), path)
                .swap_dims(0, 1),
        }
    }

    /// Every unit in order, on activations in `path`'s layout.
    fn stages_forward(&self, mut x: Tensor<B, 4>, path: ConvPath) -> Tensor<B, 4> {
        x = self.stem.forward(x, path);
        for stage in &self.stages {
            if let Some(transition) = &stage.transition {
                if let Some(pool) = &self.pool {
                    x = match path {
                        ConvPath::Native => pool.forward(x),
                        // Pooling is per (image, channel) plane: [C, B, H, W] works as is.
                        ConvPath::Im2col => max_pool_2x2(x, pool),
                    };
                }
                x = transition.forward(x, path);
            }
            for block in &stage.blocks {
                x = block.forward(x, path);
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
        let path = ConvPath::for_device::<B>(&images.device());
        self.forward_with(images, path)
    }

    /// [`Self::forward`] along a given path.
    pub(crate) fn forward_with(&self, images: Tensor<B, 4>, path: ConvPath) -> Tensor<B, 2> {
        match path {
            ConvPath::Im2col if !self.flatten => {
                // Average straight from [C, B, h, w]: one reduction, no transpose of the map.
                let x = self.stages_forward(images.swap_dims(0, 1), path);
                let [c, b, h, w] = x.dims();
                let pooled = x.reshape([c, b, h * w]).mean_dim(2).reshape([c, b]);
                l2_normalize(self.head.forward(pooled.transpose()))
            }
            _ => self.embed_map(self.feature_map_with(images, path)),
        }
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

    /// Largest absolute difference between two tensors.
    fn max_diff<Bk: Backend, const D: usize>(a: Tensor<Bk, D>, b: Tensor<Bk, D>) -> f32 {
        use burn::tensor::ElementConversion;
        (a - b).abs().max().into_scalar().elem()
    }

    /// The matrix-product convolution (Flex's path) computes what Burn's convolution does,
    /// forward and backward, for every kind of unit, downsampling and head.
    #[test]
    fn im2col_path_matches_native_convolution() {
        type A = burn::backend::Autodiff<B>;
        let device = Default::default();
        assert_eq!(ConvPath::for_device::<A>(&device), ConvPath::Im2col);
        for norm in [Norm::None, Norm::Batch] {
            for ds in [Downsample::MaxPool, Downsample::StridedConv] {
                for head_pool in [HeadPool::Avg, HeadPool::Flatten] {
                    let cfg = CnnConfig {
                        in_channels: 3,
                        input_size: [8, 6],
                        head_pool,
                        ..tiny(norm, ds)
                    };
                    let mut model = cfg.init::<A>(&device).unwrap();
                    if let Some(gate) = model.stages[1].blocks[0].gate.take() {
                        // A zero gate would hide the residual branch from the comparison.
                        model.stages[1].blocks[0].gate =
                            Some(gate.map(|g| g.ones_like().mul_scalar(0.7)));
                    }
                    let x = Tensor::<A, 4>::random(
                        [3, 3, 8, 6],
                        burn::tensor::Distribution::Normal(0.0, 1.0),
                        &device,
                    );
                    let target = Tensor::<A, 2>::random(
                        [3, 6],
                        burn::tensor::Distribution::Normal(0.0, 1.0),
                        &device,
                    );
                    let run = |path| {
                        let emb = model.forward_with(x.clone(), path);
                        let map = model.feature_map_with(x.clone(), path);
                        let loss = (emb.clone() * target.clone()).sum()
                            + map.clone().powi_scalar(2).mean();
                        let grads = loss.backward();
                        let conv = &model.stages[1].blocks[0].conv2.conv;
                        (
                            emb.inner(),
                            map.inner(),
                            model.stem.conv.weight.grad(&grads).unwrap(),
                            conv.weight.grad(&grads).unwrap(),
                            model.head.weight.grad(&grads).unwrap(),
                        )
                    };
                    let (e1, m1, g1, c1, h1) = run(ConvPath::Native);
                    let (e2, m2, g2, c2, h2) = run(ConvPath::Im2col);
                    let what = format!("{norm:?} {ds:?} {head_pool:?}");
                    assert!(max_diff(e1, e2) < 1e-5, "embeddings, {what}");
                    assert!(max_diff(m1, m2) < 1e-5, "feature map, {what}");
                    assert!(max_diff(g1.clone(), g2) < 1e-4, "stem gradient, {what}");
                    assert!(max_diff(c1.clone(), c2) < 1e-4, "block gradient, {what}");
                    assert!(max_diff(h1, h2) < 1e-4, "head gradient, {what}");
                    // The gradients compared are not trivially zero.
                    assert!(g1.abs().max().into_scalar() > 1e-3, "{what}");
                    assert!(c1.abs().max().into_scalar() > 1e-3, "{what}");
                }
            }
        }
    }

    /// Half-precision inference (`--precision f16`) runs the matrix-product path and agrees
    /// with the native one.
    #[test]
    fn im2col_path_runs_in_half_precision() {
        use burn::tensor::DType;
        let device = Default::default();
        for head_pool in [HeadPool::Avg, HeadPool::Flatten] {
            let cfg = CnnConfig {
                in_channels: 3,
                head_pool,
                ..tiny(Norm::None, Downsample::MaxPool)
            };
            let model = crate::Precision::F16.apply(cfg.init::<B>(&device).unwrap());
            let x = Tensor::<B, 4>::random(
                [2, 3, 8, 8],
                burn::tensor::Distribution::Normal(0.0, 1.0),
                &device,
            )
            .cast(DType::F16);
            let native = model.forward_with(x.clone(), ConvPath::Native);
            let im2col = model.forward_with(x, ConvPath::Im2col);
            assert_eq!(im2col.dtype(), DType::F16);
            let diff = max_diff(native.cast(DType::F32), im2col.cast(DType::F32));
            assert!(diff < 1e-2, "{head_pool:?}: {diff}");
        }
    }

    /// The elementwise 2x2 pooling gives Burn's pooling values and gradients.
    #[test]
    fn max_pool_2x2_matches_burn() {
        type A = burn::backend::Autodiff<B>;
        let device = Default::default();
        let pool = MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init();
        let x = Tensor::<A, 4>::random(
            [2, 3, 6, 4],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        )
        .require_grad();
        let weights = Tensor::<A, 4>::random(
            [2, 3, 3, 2],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let want = pool.forward(x.clone());
        let got = max_pool_2x2(x.clone(), &pool);
        assert_eq!(got.dims(), [2, 3, 3, 2]);
        assert_eq!(max_diff(want.clone().inner(), got.clone().inner()), 0.0);
        let gw = x.grad(&(want * weights.clone()).sum().backward()).unwrap();
        let gg = x.grad(&(got * weights).sum().backward()).unwrap();
        assert_eq!(max_diff(gw, gg), 0.0);
        // An odd side goes to Burn's pooling, which drops the last row.
        let odd = Tensor::<A, 4>::random(
            [1, 2, 5, 4],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let got = max_pool_2x2(odd.clone(), &pool);
        assert_eq!(got.dims(), [1, 2, 2, 2]);
        assert_eq!(max_diff(pool.forward(odd).inner(), got.inner()), 0.0);
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
