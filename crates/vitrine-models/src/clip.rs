//! CLIP (Radford et al. 2021): an image tower and a text tower projected into one space,
//! so a product photo and a shopper's words can be compared ("red summer dress" -> photos).
//!
//! ```text
//! image [B, C, H, W]
//!   vision: ViT with pre-LayerNorm (`pre_norm`), quick GELU, pool = class token,
//!           head = visual_projection (no bias), L2-norm            [B, P]
//! tokens [B, T] (int, <|startoftext|> ... <|endoftext|>)
//!   text: GPT blocks (causal, quick GELU) + final LayerNorm         [B, T, D]
//!   pool the <|endoftext|> position, text_projection, L2-norm       [B, P]
//! logits_per_image = exp(logit_scale) * image · textᵀ
//! ```
//!
//! Both towers are the shared modules (`Vit`, `Gpt`), so the vision tower is an ordinary
//! search encoder. Hugging Face `CLIPModel` names (`openai/clip-vit-base-patch32` layout;
//! torch linear weights [out, in] are transposed):
//!
//! | Hugging Face                                              | here                        |
//! |-----------------------------------------------------------|-----------------------------|
//! | `vision_model.embeddings.class_embedding` [D]             | `vision.cls_token`          |
//! | `vision_model.embeddings.patch_embedding.weight` [D,C,p,p] (no bias) | `vision.patch_embed` (bias 0) |
//! | `vision_model.embeddings.position_embedding.weight` [N+1,D] | `vision.pos_embed`        |
//! | `vision_model.pre_layrnorm`                               | `vision.ln_pre`             |
//! | `vision_model.encoder.layers.{i}.layer_norm1`             | `vision.blocks.{i}.ln_1`    |
//! | `vision_model.encoder.layers.{i}.self_attn.{q,k,v,out}_proj` | `vision.blocks.{i}.attn.{query,key,value,out}` |
//! | `vision_model.encoder.layers.{i}.layer_norm2`             | `vision.blocks.{i}.ln_2`    |
//! | `vision_model.encoder.layers.{i}.mlp.fc1` / `fc2`         | `vision.blocks.{i}.mlp.fc_in` / `fc_out` |
//! | `vision_model.post_layernorm`                             | `vision.ln_final`           |
//! | `visual_projection.weight` [P, D]                         | `vision.head` (bias 0)      |
//! | `text_model.embeddings.token_embedding.weight`            | `text.wte`                  |
//! | `text_model.embeddings.position_embedding.weight`         | `text.wpe`                  |
//! | `text_model.encoder.layers.{i}.*`                         | `text.blocks.{i}.*` (as the vision layers) |
//! | `text_model.final_layer_norm`                             | `text.ln_f`                 |
//! | `text_projection.weight` [P, D]                           | `text_projection` (bias 0)  |
//! | `logit_scale` []                                          | `logit_scale`               |
//!
//! The text embedding is the final state at the end-of-text token: the first
//! `eos_token_id` of each row, or (checkpoints whose `eos_token_id` is the legacy 2) the
//! position of the largest token id, as `transformers` does.

use std::path::Path;

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::error::{invalid, ModelError};
use crate::gpt::{Gpt, GptConfig};
use crate::hf::{load_checkpoint, HfConfig, HfError, Layout, Loaded, Weights};
use crate::l2_normalize;
use crate::vit::{load_clip_layers, Vit, VitConfig};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipConfig {
    pub vision: VitConfig,
    /// The text tower: `vocab_size`, `n_ctx` (= `max_position_embeddings`), blocks.
    pub text: GptConfig,
    pub projection_dim: usize,
    /// The end-of-text token whose state is the text embedding; `None`: the position of
    /// the largest id (legacy CLIP configs).
    pub eos_token_id: Option<u32>,
}

impl ClipConfig {
    /// A CLIP `config.json` (`model_type = "clip"`).
    pub fn from_hf(c: &HfConfig) -> Result<Self, HfError> {
        if c.model_type()? != "clip" {
            return Err(c.err(format!("model_type {:?} is not clip", c.model_type()?)));
        }
        let projection_dim = c.usize_opt("projection_dim")?.unwrap_or(512);
        let vision = VitConfig::from_hf_clip_vision(&c.sub("vision_config")?, projection_dim)?;
        let t = c.sub("text_config")?;
        let d = t.usize("hidden_size")?;
        let inner = t.usize("intermediate_size")?;
        if d == 0 || inner % d != 0 {
            return Err(t.err(format!(
                "text_config.intermediate_size = {inner} is not a multiple of hidden_size = {d}"
            )));
        }
        let text = GptConfig {
            vocab_size: t.usize("vocab_size")?,
            n_ctx: t.usize_opt("max_position_embeddings")?.unwrap_or(77),
            d_model: d,
            n_layers: t.usize("num_hidden_layers")?,
            n_heads: t.usize("num_attention_heads")?,
            mlp_ratio: inner / d,
            dropout: 0.0,
            layer_norm_eps: t.f64_or("layer_norm_eps", 1e-5)?,
            activation: crate::gpt::hf_activation(&t, "hidden_act", "quick_gelu")?,
            cross_attention: false,
        };
        text.validate().map_err(|e| t.err(e.to_string()))?;
        let eos = t.usize_opt("eos_token_id")?.unwrap_or(2);
        Ok(Self {
            vision,
            text,
            projection_dim,
            eos_token_id: (eos != 2).then_some(eos as u32),
        })
    }

    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<Clip<B>, ModelError> {
        if self.vision.embed_dim != self.projection_dim {
            return Err(invalid(
                "vision.embed_dim",
                self.vision.embed_dim,
                format!("projection_dim ({})", self.projection_dim),
            ));
        }
        Ok(Clip {
            vision: self.vision.init(device)?,
            text: self.text.init(device)?,
            text_projection: LinearConfig::new(self.text.d_model, self.projection_dim).init(device),
            logit_scale: Param::from_tensor(Tensor::from_data(
                TensorData::new(vec![2.6592f32], [1]),
                device,
            )),
            eos_token_id: self.eos_token_id.map(|e| e as i64).unwrap_or(-1),
        })
    }
}

/// A CLIP checkpoint folder as a [`Clip`].
pub fn load_hf_clip<B: Backend>(dir: &Path, device: &B::Device) -> Loaded<ClipConfig, Clip<B>> {
    let init = |c: &ClipConfig| c.init::<B>(device);
    load_checkpoint(dir, ClipConfig::from_hf, init, |m, w| m.load_hf(w))
}

#[derive(Module, Debug)]
pub struct Clip<B: Backend> {
    pub vision: Vit<B>,
    pub text: Gpt<B>,
    pub text_projection: Linear<B>,
    /// log of the similarity temperature's inverse, as stored by CLIP.
    pub logit_scale: Param<Tensor<B, 1>>,
    /// -1: pool at the largest id (legacy).
    pub eos_token_id: i64,
}

impl<B: Backend> Clip<B> {
    /// Unit-norm image embeddings: [B, C, H, W] -> [B, P].
    pub fn embed_images(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        self.vision.forward(images)
    }

    /// Unit-norm text embeddings of token rows (each `<|startoftext|> ... <|endoftext|>`,
    /// any lengths ≤ the context): -> [B, P].
    pub fn embed_text(&self, rows: &[Vec<u32>]) -> Result<Tensor<B, 2>, ModelError> {
        let device = self.text_projection.weight.device();
        let b = rows.len();
        let t = rows.iter().map(Vec::len).max().unwrap_or(0);
        if b == 0 || rows.iter().any(Vec::is_empty) {
            return Err(ModelError::InputShape {
                got: vec![b, 0],
                expected: vec![b.max(1), 1],
            });
        }
        // Rows are padded after their end token: causal attention keeps the pad out of it.
        let mut flat = Vec::with_capacity(b * t);
        let mut pooled = Vec::with_capacity(b);
        for (r, row) in rows.iter().enumerate() {
            let pos = match self.eos_token_id {
                -1 => row
                    .iter()
                    .enumerate()
                    .max_by_key(|&(i, &id)| (id, std::cmp::Reverse(i)))
                    .map(|(i, _)| i),
                e => row.iter().position(|&id| id as i64 == e),
            }
            .unwrap_or(row.len() - 1);
            pooled.push((r * t + pos) as i64);
            flat.extend(row.iter().map(|&id| id as i64));
            flat.extend(std::iter::repeat_n(0i64, t - row.len()));
        }
        let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(flat, [b, t]), &device);
        let mut cache = self.text.new_cache();
        // [B, T, D]
        let h = self.text.forward_hidden(tokens, &mut cache, false)?;
        let d = h.dims()[2];
        let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(pooled, [b]), &device);
        // [B, D] -> [B, P]
        let eot = h.reshape([b * t, d]).select(0, idx);
        Ok(l2_normalize(self.text_projection.forward(eot)))
    }

    /// exp(logit_scale) · image · textᵀ: [Bi, P], [Bt, P] -> [Bi, Bt].
    pub fn logits_per_image(&self, image: Tensor<B, 2>, text: Tensor<B, 2>) -> Tensor<B, 2> {
        let scale = self.logit_scale.val().exp().reshape([1, 1]);
        image.matmul(text.transpose()) * scale
    }

    /// Copies a `CLIPModel` checkpoint (the table at the top of this file).
    pub fn load_hf(&mut self, w: &mut Weights) {
        self.vision
            .load_hf_clip(w, "vision_model.", "visual_projection");
        let e = "text_model.embeddings";
        w.embedding(&mut self.text.wte, &format!("{e}.token_embedding.weight"));
        w.embedding(
            &mut self.text.wpe,
            &format!("{e}.position_embedding.weight"),
        );
        load_clip_layers(&mut self.text.blocks, w, "text_model.encoder");
        w.layer_norm(&mut self.text.ln_f, "text_model.final_layer_norm");
        w.linear(&mut self.text_projection, "text_projection", Layout::OutIn);
        w.param(&mut self.logit_scale, "logit_scale");
        w.ignore(|n| n == "text_model.embeddings.position_ids");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::B;
    use crate::transformer::Activation;

    fn tiny() -> ClipConfig {
        ClipConfig {
            vision: VitConfig {
                input_size: [16, 16],
                patch_size: 8,
                d_model: 16,
                n_layers: 1,
                n_heads: 2,
                embed_dim: 8,
                pool: crate::vit::Pool::Cls,
                activation: Activation::QuickGelu,
                pre_norm: true,
                ..VitConfig::default()
            },
            text: GptConfig {
                vocab_size: 20,
                n_ctx: 8,
                d_model: 16,
                n_layers: 1,
                n_heads: 2,
                activation: Activation::QuickGelu,
                ..GptConfig::default()
            },
            projection_dim: 8,
            eos_token_id: Some(1),
        }
    }

    /// Padding after the end token changes nothing: each row is pooled at its own end.
    #[test]
    fn text_embedding_ignores_padding_and_is_unit_norm() {
        let m = tiny().init::<B>(&Default::default()).unwrap();
        let alone = m.embed_text(&[vec![0, 5, 6, 1]]).unwrap();
        let batch = m
            .embed_text(&[vec![0, 5, 6, 1], vec![0, 7, 8, 9, 10, 1]])
            .unwrap();
        assert_eq!(batch.dims(), [2, 8]);
        let diff: f32 = (batch.clone().slice([0..1, 0..8]) - alone)
            .abs()
            .max()
            .into_scalar();
        assert!(diff < 1e-5, "{diff}");
        let norms: Vec<f32> = batch
            .powi_scalar(2)
            .sum_dim(1)
            .into_data()
            .to_vec()
            .unwrap();
        assert!(norms.iter().all(|n| (n - 1.0).abs() < 1e-4), "{norms:?}");
        assert!(m.embed_text(&[vec![]]).is_err());
        assert!(
            m.embed_text(&[vec![0; 9]]).is_err(),
            "longer than the context"
        );
    }

    #[test]
    fn projection_width_must_agree() {
        let mut c = tiny();
        c.projection_dim = 4;
        assert!(c.init::<B>(&Default::default()).is_err());
    }
}
