//! Vision Transformer image encoder (Dosovitskiy et al. 2021).
//!
//! ```text
//! image [B, C, H, W]
//!   patchify (p x p, no overlap)            [B, N, C*p*p]     N = (H/p)*(W/p)
//!   patch_embed: Linear(C*p*p -> D)         [B, N, D]
//!   prepend cls token, add position emb.    [B, N+1, D]
//!   n_layers pre-LN blocks                  [B, N+1, D]
//!   ln_final, pool (cls token or mean)      [B, D]
//!   head: Linear(D -> embed_dim), L2-norm   [B, embed_dim]
//! ```
//!
//! The patch embedding is a reshape plus one matrix product instead of a stride-p
//! convolution: the same function, and matmul is Flex's fast path on CPU.
//!
//! Hugging Face `ViTModel` weight names (`google/vit-base-patch16-224-in21k` layout) map
//! onto this module as follows (torch `Linear` weights are [out, in]; Burn's are [in, out],
//! so every linear weight is transposed):
//!
//! | Hugging Face                                              | here                        |
//! |-----------------------------------------------------------|-----------------------------|
//! | `vit.embeddings.cls_token` [1,1,D]                        | `cls_token`                 |
//! | `vit.embeddings.position_embeddings` [1,N+1,D]            | `pos_embed`                 |
//! | `vit.embeddings.patch_embeddings.projection.weight` [D,C,p,p] | `patch_embed.weight` = reshape to [D, C*p*p], transpose |
//! | `vit.embeddings.patch_embeddings.projection.bias`         | `patch_embed.bias`          |
//! | `vit.encoder.layer.{i}.layernorm_before`                  | `blocks.{i}.ln_1`           |
//! | `vit.encoder.layer.{i}.attention.attention.{query,key,value}` | `blocks.{i}.attn.{query,key,value}` |
//! | `vit.encoder.layer.{i}.attention.output.dense`            | `blocks.{i}.attn.out`       |
//! | `vit.encoder.layer.{i}.layernorm_after`                   | `blocks.{i}.ln_2`           |
//! | `vit.encoder.layer.{i}.intermediate.dense`                | `blocks.{i}.mlp.fc_in`      |
//! | `vit.encoder.layer.{i}.output.dense`                      | `blocks.{i}.mlp.fc_out`     |
//! | `vit.layernorm`                                           | `ln_final`                  |
//! | (none: Vitrine's retrieval projection)                    | `head`                      |
//!
//! The flattening order of a patch, (channel, row, column), matches the convolution
//! weight's [D, C, p, p] layout, so the reshape above is exact.

use burn::module::{Module, Param};
use burn::nn::{Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{check_range, invalid, ModelError};
use crate::gpt::hf_activation;
use crate::hf::{fill, load_checkpoint, set_identity, HfConfig, HfError, Layout, Loaded, Weights};
use crate::l2_normalize;
use crate::transformer::{linear_rows, Activation, Block, BlockConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pool {
    /// The class token's final state.
    Cls,
    /// Mean over patch tokens (the class token excluded).
    Mean,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VitConfig {
    pub in_channels: usize,
    /// Input [height, width]; each divisible by `patch_size`.
    pub input_size: [usize; 2],
    pub patch_size: usize,
    pub d_model: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub mlp_ratio: usize,
    pub dropout: f64,
    pub layer_norm_eps: f64,
    pub pool: Pool,
    pub embed_dim: usize,
    /// The MLP's non-linearity (exact GELU; CLIP's vision tower: quick GELU).
    pub activation: Activation,
    /// A LayerNorm on the embedded tokens before the first block (CLIP's `pre_layrnorm`).
    pub pre_norm: bool,
}

impl Default for VitConfig {
    fn default() -> Self {
        Self {
            in_channels: 3,
            input_size: [64, 64],
            patch_size: 8,
            d_model: 128,
            n_layers: 4,
            n_heads: 4,
            mlp_ratio: 4,
            dropout: 0.0,
            layer_norm_eps: 1e-6,
            pool: Pool::Mean,
            embed_dim: 128,
            activation: Activation::Gelu,
            pre_norm: false,
        }
    }
}

impl VitConfig {
    /// A ViT of the default kind (mean-pooled, erf GELU) at `input_size`, patches of
    /// `patch_size`, `[d_model, n_layers, n_heads]` and an `embed_dim` head.
    pub fn sized(
        input_size: [usize; 2],
        patch_size: usize,
        [d_model, n_layers, n_heads]: [usize; 3],
        embed_dim: usize,
    ) -> Self {
        Self {
            input_size,
            patch_size,
            d_model,
            n_layers,
            n_heads,
            embed_dim,
            ..Self::default()
        }
    }

    fn block(&self) -> BlockConfig {
        BlockConfig {
            d_model: self.d_model,
            n_heads: self.n_heads,
            mlp_ratio: self.mlp_ratio,
            dropout: self.dropout,
            attn_dropout: 0.0,
            layer_norm_eps: self.layer_norm_eps,
            activation: self.activation,
            cross_attention: false,
        }
    }

    /// Number of patch tokens (class token excluded).
    pub fn num_patches(&self) -> usize {
        (self.input_size[0] / self.patch_size.max(1))
            * (self.input_size[1] / self.patch_size.max(1))
    }

    pub fn validate(&self) -> Result<(), ModelError> {
        if !matches!(self.in_channels, 1 | 3) {
            return Err(invalid("in_channels", self.in_channels, "1 or 3"));
        }
        check_range("patch_size", self.patch_size, 256)?;
        for &side in &self.input_size {
            if side == 0 || side > 4096 || side % self.patch_size != 0 {
                return Err(invalid(
                    "input_size",
                    format!("{:?}", self.input_size),
                    format!(
                        "each side 1..=4096 and divisible by patch_size ({})",
                        self.patch_size
                    ),
                ));
            }
        }
        check_range("n_layers", self.n_layers, 64)?;
        check_range("embed_dim", self.embed_dim, 65536)?;
        self.block().validate()
    }

    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<Vit<B>, ModelError> {
        self.validate()?;
        let d = self.d_model;
        let patch_dim = self.in_channels * self.patch_size * self.patch_size;
        let block = self.block();
        let trunc = Initializer::Normal {
            mean: 0.0,
            std: 0.02,
        };
        Ok(Vit {
            patch_embed: LinearConfig::new(patch_dim, d).init(device),
            cls_token: trunc.init([1, 1, d], device),
            pos_embed: trunc.init([1, self.num_patches() + 1, d], device),
            ln_pre: self.pre_norm.then(|| {
                LayerNormConfig::new(d)
                    .with_epsilon(self.layer_norm_eps)
                    .init(device)
            }),
            blocks: (0..self.n_layers).map(|_| block.init(device)).collect(),
            ln_final: LayerNormConfig::new(d)
                .with_epsilon(self.layer_norm_eps)
                .init(device),
            head: LinearConfig::new(d, self.embed_dim).init(device),
            patch_size: self.patch_size,
            mean_pool: self.pool == Pool::Mean,
        })
    }
}

#[derive(Module, Debug)]
pub struct Vit<B: Backend> {
    pub patch_embed: Linear<B>,
    pub cls_token: Param<Tensor<B, 3>>,
    pub pos_embed: Param<Tensor<B, 3>>,
    /// `pre_norm`. Records written before this field existed load with `None`.
    pub ln_pre: Option<LayerNorm<B>>,
    pub blocks: Vec<Block<B>>,
    pub ln_final: LayerNorm<B>,
    pub head: Linear<B>,
    pub patch_size: usize,
    pub mean_pool: bool,
}

impl<B: Backend> Vit<B> {
    /// Final token states: [B, C, H, W] -> [B, N+1, D] (index 0 is the class token).
    pub fn forward_tokens(&self, images: Tensor<B, 4>) -> Tensor<B, 3> {
        let [b, c, h, w] = images.dims();
        let p = self.patch_size;
        let (gh, gw) = (h / p, w / p);
        // [B, C, gh, p, gw, p] -> [B, gh, gw, C, p, p] -> [B, N, C*p*p]
        let patches = images
            .reshape([b, c, gh, p, gw, p])
            .permute([0, 2, 4, 1, 3, 5])
            .reshape([b, gh * gw, c * p * p]);
        let x = linear_rows(&self.patch_embed, patches);
        let d = x.dims()[2];
        let cls = self.cls_token.val().expand([b, 1, d]);
        let mut x = Tensor::cat(vec![cls, x], 1) + self.pos_embed.val();
        if let Some(ln) = &self.ln_pre {
            x = ln.forward(x);
        }
        for block in &self.blocks {
            x = block.forward(x, false);
        }
        self.ln_final.forward(x)
    }

    /// L2-normalised embeddings: [B, C, H, W] -> [B, embed_dim].
    pub fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        self.embed_tokens(self.forward_tokens(images))
    }

    /// The embedding of final token states [B, N+1, D] -> [B, embed_dim].
    pub fn embed_tokens(&self, x: Tensor<B, 3>) -> Tensor<B, 2> {
        let [b, t, d] = x.dims();
        let pooled = if self.mean_pool {
            x.slice([0..b, 1..t, 0..d]).mean_dim(1).reshape([b, d])
        } else {
            x.slice([0..b, 0..1, 0..d]).reshape([b, d])
        };
        l2_normalize(self.head.forward(pooled))
    }
}

impl VitConfig {
    /// The fields ViT and CLIP vision configs share (same key names), with the family's
    /// own LayerNorm ε and activation defaults; class-token pooling.
    fn from_hf_common(c: &HfConfig, eps: f64, act: &str) -> Result<Self, HfError> {
        let d = c.usize("hidden_size")?;
        Ok(Self {
            in_channels: c.usize_opt("num_channels")?.unwrap_or(3),
            input_size: [c.usize("image_size")?; 2],
            patch_size: c.usize("patch_size")?,
            d_model: d,
            n_layers: c.usize("num_hidden_layers")?,
            n_heads: c.usize("num_attention_heads")?,
            mlp_ratio: mlp_ratio(c, d)?,
            dropout: 0.0,
            layer_norm_eps: c.f64_or("layer_norm_eps", eps)?,
            pool: Pool::Cls,
            embed_dim: d,
            activation: hf_activation(c, "hidden_act", act)?,
            pre_norm: false,
        })
    }

    /// A `ViTModel` `config.json` (`google/vit-base-patch16-224-in21k` layout). The
    /// embedding is the final class token through an identity `head`.
    pub fn from_hf_vit(c: &HfConfig) -> Result<Self, HfError> {
        if !c.bool_or("qkv_bias", true)? {
            return Err(c.err("qkv_bias = false is not supported"));
        }
        let config = Self {
            dropout: c.f64_or("hidden_dropout_prob", 0.0)?,
            ..Self::from_hf_common(c, 1e-12, "gelu")?
        };
        config.validate().map_err(|e| c.err(e.to_string()))?;
        Ok(config)
    }

    /// CLIP's vision tower (`vision_config` of a CLIP `config.json`): the embedding is
    /// `visual_projection(post_layernorm(class token))`, `projection_dim` wide.
    pub fn from_hf_clip_vision(c: &HfConfig, projection_dim: usize) -> Result<Self, HfError> {
        let config = Self {
            embed_dim: projection_dim,
            pre_norm: true,
            ..Self::from_hf_common(c, 1e-5, "quick_gelu")?
        };
        config.validate().map_err(|e| c.err(e.to_string()))?;
        Ok(config)
    }
}

fn mlp_ratio(c: &HfConfig, d: usize) -> Result<usize, HfError> {
    let inner = c.usize("intermediate_size")?;
    if d == 0 || inner % d != 0 {
        return Err(c.err(format!(
            "intermediate_size = {inner} is not a multiple of hidden_size = {d}"
        )));
    }
    Ok(inner / d)
}

/// The tensors of one HF `ViTLayer` (see [`Block::load_hf`]).
const VIT_LAYER: &str = "layernorm_before attention.attention.query attention.attention.key attention.attention.value attention.output.dense layernorm_after intermediate.dense output.dense";
/// The tensors of one HF `CLIPEncoderLayer`.
const CLIP_LAYER: &str = "layer_norm1 self_attn.q_proj self_attn.k_proj self_attn.v_proj self_attn.out_proj layer_norm2 mlp.fc1 mlp.fc2";

impl<B: Backend> Vit<B> {
    /// Copies the encoder layers `{prefix}.layer.{i}` of a ViT (HF `ViTLayer` names).
    fn load_hf_vit_layers(&mut self, w: &mut Weights, prefix: &str) {
        for (i, b) in self.blocks.iter_mut().enumerate() {
            b.load_hf(w, &format!("{prefix}.layer.{i}"), VIT_LAYER, Layout::OutIn);
        }
    }

    /// A `ViTModel` checkpoint's tensors under `prefix` (`""`, `vit.` or `encoder.`; the
    /// table at the top of this file). `head` becomes the identity; the pooler is unused.
    pub fn load_hf_vit(&mut self, w: &mut Weights, prefix: &str) {
        w.param(
            &mut self.cls_token,
            &format!("{prefix}embeddings.cls_token"),
        );
        w.param(
            &mut self.pos_embed,
            &format!("{prefix}embeddings.position_embeddings"),
        );
        w.conv_as_linear(
            &mut self.patch_embed,
            &format!("{prefix}embeddings.patch_embeddings.projection.weight"),
        );
        if let Some(b) = self.patch_embed.bias.as_mut() {
            w.param(
                b,
                &format!("{prefix}embeddings.patch_embeddings.projection.bias"),
            );
        }
        self.load_hf_vit_layers(w, &format!("{prefix}encoder"));
        w.layer_norm(&mut self.ln_final, &format!("{prefix}layernorm"));
        set_identity(&mut self.head);
        let pooler = format!("{prefix}pooler.");
        w.ignore(|n| n.starts_with(&pooler));
    }

    /// CLIP's vision tower (`vision_model.*`) and `visual_projection` (see `clip.rs`).
    pub fn load_hf_clip(&mut self, w: &mut Weights, prefix: &str, projection: &str) {
        let e = format!("{prefix}embeddings");
        w.param(&mut self.cls_token, &format!("{e}.class_embedding"));
        w.param(
            &mut self.pos_embed,
            &format!("{e}.position_embedding.weight"),
        );
        w.conv_as_linear(
            &mut self.patch_embed,
            &format!("{e}.patch_embedding.weight"),
        );
        // CLIP's patch convolution has no bias.
        if let Some(b) = self.patch_embed.bias.as_mut() {
            fill(b, 0.0);
        }
        if let Some(ln) = self.ln_pre.as_mut() {
            w.layer_norm(ln, &format!("{prefix}pre_layrnorm"));
        }
        load_clip_layers(&mut self.blocks, w, &format!("{prefix}encoder"));
        w.layer_norm(&mut self.ln_final, &format!("{prefix}post_layernorm"));
        w.linear(&mut self.head, projection, Layout::OutIn);
        w.ignore(|n| n == format!("{e}.position_ids"));
    }
}

/// CLIP encoder layers `{prefix}.layers.{i}` (shared by both towers).
pub(crate) fn load_clip_layers<B: Backend>(blocks: &mut [Block<B>], w: &mut Weights, prefix: &str) {
    for (i, b) in blocks.iter_mut().enumerate() {
        b.load_hf(
            w,
            &format!("{prefix}.layers.{i}"),
            CLIP_LAYER,
            Layout::OutIn,
        );
    }
}

/// A `ViTModel` checkpoint folder as a [`Vit`] search encoder (class-token embedding).
pub fn load_hf_vit<B: Backend>(
    dir: &std::path::Path,
    device: &B::Device,
) -> Loaded<VitConfig, Vit<B>> {
    let read = |c: &HfConfig| match c.model_type()? {
        "vit" => VitConfig::from_hf_vit(c),
        other => Err(c.err(format!("model_type {other:?} is not vit"))),
    };
    let init = |c: &VitConfig| c.init::<B>(device);
    load_checkpoint(dir, read, init, |m, w| {
        let prefix = w.prefix_of("embeddings.cls_token", &["", "vit."]);
        m.load_hf_vit(w, prefix);
        w.ignore(|n| n.starts_with("classifier."));
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::B;
    use burn::tensor::Distribution;

    fn tiny() -> VitConfig {
        VitConfig::sized([8, 12], 4, [16, 2, 2], 5)
    }

    #[test]
    fn shapes_and_unit_norm() {
        let device = Default::default();
        for pool in [Pool::Cls, Pool::Mean] {
            let model = VitConfig { pool, ..tiny() }.init::<B>(&device).unwrap();
            let x = Tensor::<B, 4>::random([2, 3, 8, 12], Distribution::Normal(0.0, 1.0), &device);
            assert_eq!(model.forward_tokens(x.clone()).dims(), [2, 7, 16]);
            let emb = model.forward(x);
            assert_eq!(emb.dims(), [2, 5]);
            let n: Vec<f32> = emb.powi_scalar(2).sum_dim(1).into_data().to_vec().unwrap();
            assert!(n.iter().all(|v| (v - 1.0).abs() < 1e-5), "{n:?}");
        }
    }

    /// The reshape-based patch embedding equals a stride-p convolution with the HF weight
    /// layout [D, C, p, p] reshaped to [C*p*p, D].
    #[test]
    fn patchify_matches_strided_convolution() {
        let device = Default::default();
        let (c, p, d) = (3usize, 4usize, 16usize);
        let model = tiny().init::<B>(&device).unwrap();
        let x = Tensor::<B, 4>::random([2, c, 8, 12], Distribution::Normal(0.0, 1.0), &device);
        // Linear weight [C*p*p, D] -> conv weight [D, C, p, p].
        let w = model.patch_embed.weight.val();
        let conv_w = w.clone().swap_dims(0, 1).reshape([d, c, p, p]);
        let bias = model.patch_embed.bias.as_ref().unwrap().val();
        let conv = burn::tensor::module::conv2d(
            x.clone(),
            conv_w,
            Some(bias),
            burn::tensor::ops::ConvOptions::new([p, p], [0, 0], [1, 1], 1),
        ); // [2, D, 2, 3]
        let conv_tokens = conv.reshape([2, d, 6]).swap_dims(1, 2);
        let patches = x
            .reshape([2, c, 2, p, 3, p])
            .permute([0, 2, 4, 1, 3, 5])
            .reshape([2, 6, c * p * p]);
        let ours = model.patch_embed.forward(patches);
        let diff: f32 = (ours - conv_tokens).abs().max().into_scalar();
        assert!(diff < 1e-4, "max diff {diff}");
    }

    #[test]
    fn validate() {
        assert!(tiny().validate().is_ok());
        let base = tiny();
        let valid = |change| crate::testing::valid_with(&base, change, VitConfig::validate);
        assert!(!valid(|c| c.input_size = [10, 12]));
        assert!(!valid(|c| c.n_heads = 3));
        assert!(!valid(|c| c.patch_size = 0));
    }
}
