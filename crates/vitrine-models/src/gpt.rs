//! GPT-2-architecture decoder (Radford et al. 2019) for copy generation and language modelling.
//!
//! ```text
//! tokens [B, T] (int)
//!   wte(tokens) + wpe(positions)              [B, T, D]    positions = past .. past+T
//!   dropout
//!   n_layers pre-LN causal blocks             [B, T, D]    (KV cache: keys/values of past)
//!   ln_f                                      [B, T, D]
//!   logits = h · wteᵀ  (tied output head)     [B, T, V]
//! ```
//!
//! Presets ([`GptConfig::preset`]): `tiny` (tests), `nano-cpu` (nanoGPT's CPU recipe:
//! 4 layers, 4 heads, 128 dims), `gpt2-124m` (12/12/768, GPT-2 small).
//!
//! Hugging Face `GPT2LMHeadModel` weight names map onto this module as follows. GPT-2 stores
//! its linear layers as `Conv1D` with weight [in, out], which is Burn's `Linear` layout, so
//! nothing is transposed; the fused `c_attn` [D, 3D] splits along its output axis into
//! query | key | value (columns 0..D, D..2D, 2D..3D), and so does its bias.
//!
//! | Hugging Face                                   | here                                  |
//! |------------------------------------------------|---------------------------------------|
//! | `transformer.wte.weight` [V, D]                | `wte.weight`                          |
//! | `transformer.wpe.weight` [n_ctx, D]            | `wpe.weight`                          |
//! | `transformer.h.{i}.ln_1.{weight,bias}`         | `blocks.{i}.ln_1.{gamma,beta}`        |
//! | `transformer.h.{i}.attn.c_attn.{weight,bias}`  | `blocks.{i}.attn.{query,key,value}`   |
//! | `transformer.h.{i}.attn.c_proj.{weight,bias}`  | `blocks.{i}.attn.out`                 |
//! | `transformer.h.{i}.ln_2.{weight,bias}`         | `blocks.{i}.ln_2.{gamma,beta}`        |
//! | `transformer.h.{i}.mlp.c_fc.{weight,bias}`     | `blocks.{i}.mlp.fc_in`                |
//! | `transformer.h.{i}.mlp.c_proj.{weight,bias}`   | `blocks.{i}.mlp.fc_out`               |
//! | `transformer.ln_f.{weight,bias}`               | `ln_f.{gamma,beta}`                   |
//! | `lm_head.weight` (tied to `wte`)               | (none: the head reuses `wte.weight`)  |
//!
//! With `cross_attention = true` (the decoder of the captioner) every block gains the
//! cross-attention sub-layer of GPT-2 with `add_cross_attention`:
//!
//! | Hugging Face                                          | here                              |
//! |-------------------------------------------------------|-----------------------------------|
//! | `transformer.h.{i}.ln_cross_attn.{weight,bias}`       | `blocks.{i}.cross.ln.{gamma,beta}` |
//! | `transformer.h.{i}.crossattention.q_attn.{weight,bias}` | `blocks.{i}.cross.attn.query`   |
//! | `transformer.h.{i}.crossattention.c_attn.{weight,bias}` [D, 2D] | `blocks.{i}.cross.attn.{key,value}` |
//! | `transformer.h.{i}.crossattention.c_proj.{weight,bias}` | `blocks.{i}.cross.attn.out`     |
//!
//! GPT-2's MLP uses the tanh approximation of GELU (`gelu_new`), as here; LayerNorm ε = 1e-5.

use burn::module::Module;
use burn::nn::{
    Dropout, DropoutConfig, Embedding, EmbeddingConfig, Initializer, LayerNorm, LayerNormConfig,
};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{check_range, invalid, unknown_preset, ModelError};
use crate::hf::{load_checkpoint, Export, HfConfig, HfError, Layout, Loaded, Weights};
use crate::transformer::{Activation, Block, BlockConfig, LayerKv};

/// Decoder hyper-parameters. In TOML, `preset = "nano-cpu"` fills every field the file does
/// not give; the resolved values are what a run saves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "GptConfigFile")]
pub struct GptConfig {
    pub vocab_size: usize,
    /// Context length: the most positions the model can attend over.
    pub n_ctx: usize,
    pub d_model: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub mlp_ratio: usize,
    pub dropout: f64,
    pub layer_norm_eps: f64,
    /// The MLP's non-linearity: GPT-2's tanh GELU unless a checkpoint says otherwise (CLIP's
    /// text tower, a GPT with quick GELU).
    pub activation: Activation,
    /// Cross-attention over an encoder's tokens in every block (encoder-decoder models).
    pub cross_attention: bool,
}

/// What a config file may say: a preset and any field overriding it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GptConfigFile {
    preset: Option<String>,
    vocab_size: Option<usize>,
    n_ctx: Option<usize>,
    d_model: Option<usize>,
    n_layers: Option<usize>,
    n_heads: Option<usize>,
    mlp_ratio: Option<usize>,
    dropout: Option<f64>,
    layer_norm_eps: Option<f64>,
    activation: Option<Activation>,
    cross_attention: Option<bool>,
}

impl TryFrom<GptConfigFile> for GptConfig {
    type Error = String;
    fn try_from(f: GptConfigFile) -> Result<Self, String> {
        let base = match &f.preset {
            Some(name) => GptConfig::preset(name).map_err(|e| e.to_string())?,
            None => GptConfig::default(),
        };
        Ok(GptConfig {
            vocab_size: f.vocab_size.unwrap_or(base.vocab_size),
            n_ctx: f.n_ctx.unwrap_or(base.n_ctx),
            d_model: f.d_model.unwrap_or(base.d_model),
            n_layers: f.n_layers.unwrap_or(base.n_layers),
            n_heads: f.n_heads.unwrap_or(base.n_heads),
            mlp_ratio: f.mlp_ratio.unwrap_or(base.mlp_ratio),
            dropout: f.dropout.unwrap_or(base.dropout),
            layer_norm_eps: f.layer_norm_eps.unwrap_or(base.layer_norm_eps),
            activation: f.activation.unwrap_or(base.activation),
            cross_attention: f.cross_attention.unwrap_or(base.cross_attention),
        })
    }
}

impl Default for GptConfig {
    /// The `nano-cpu` preset.
    fn default() -> Self {
        Self {
            vocab_size: 65,
            n_ctx: 64,
            d_model: 128,
            n_layers: 4,
            n_heads: 4,
            mlp_ratio: 4,
            dropout: 0.0,
            layer_norm_eps: 1e-5,
            activation: Activation::GeluTanh,
            cross_attention: false,
        }
    }
}

impl GptConfig {
    pub const PRESETS: [&'static str; 3] = ["tiny", "nano-cpu", "gpt2-124m"];

    /// Named sizes. `vocab_size` of `tiny` and `nano-cpu` is a placeholder: a run sets it
    /// from its tokenizer.
    pub fn preset(name: &str) -> Result<Self, ModelError> {
        Ok(match name {
            "tiny" => Self {
                vocab_size: 32,
                n_ctx: 32,
                d_model: 16,
                n_layers: 2,
                n_heads: 2,
                ..Self::default()
            },
            "nano-cpu" => Self::default(),
            "gpt2-124m" => Self {
                vocab_size: 50257,
                n_ctx: 1024,
                d_model: 768,
                n_layers: 12,
                n_heads: 12,
                ..Self::default()
            },
            other => return Err(unknown_preset(other, &Self::PRESETS)),
        })
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
            cross_attention: self.cross_attention,
        }
    }

    pub fn validate(&self) -> Result<(), ModelError> {
        check_range("vocab_size", self.vocab_size, 1 << 20)?;
        check_range("n_ctx", self.n_ctx, 1 << 16)?;
        check_range("n_layers", self.n_layers, 128)?;
        self.block().validate()
    }

    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<Gpt<B>, ModelError> {
        self.validate()?;
        let normal = Initializer::Normal {
            mean: 0.0,
            std: 0.02,
        };
        let block = self.block();
        Ok(Gpt {
            wte: EmbeddingConfig::new(self.vocab_size, self.d_model)
                .with_initializer(normal.clone())
                .init(device),
            wpe: EmbeddingConfig::new(self.n_ctx, self.d_model)
                .with_initializer(normal)
                .init(device),
            blocks: (0..self.n_layers).map(|_| block.init(device)).collect(),
            ln_f: LayerNormConfig::new(self.d_model)
                .with_epsilon(self.layer_norm_eps)
                .init(device),
            dropout: DropoutConfig::new(self.dropout).init(),
            n_ctx: self.n_ctx,
        })
    }
}

#[derive(Module, Debug)]
pub struct Gpt<B: Backend> {
    pub wte: Embedding<B>,
    pub wpe: Embedding<B>,
    pub blocks: Vec<Block<B>>,
    pub ln_f: LayerNorm<B>,
    pub dropout: Dropout,
    pub n_ctx: usize,
}

/// Keys and values of every layer for the positions decoded so far, and (encoder-decoder)
/// each layer's keys/values of the encoder's tokens.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    layers: Vec<Option<LayerKv<B>>>,
    len: usize,
    memory: Vec<LayerKv<B>>,
}

impl<B: Backend> KvCache<B> {
    pub fn new(n_layers: usize) -> Self {
        Self {
            layers: vec![None; n_layers],
            len: 0,
            memory: Vec::new(),
        }
    }

    /// The cache of the rows `rows` [R] (indices into the batch, repeats allowed): beam
    /// search keeps the histories of the surviving beams this way.
    pub fn select(&self, rows: Tensor<B, 1, Int>) -> Self {
        let pick = |kv: &LayerKv<B>| LayerKv {
            k: kv.k.clone().select(0, rows.clone()),
            v: kv.v.clone().select(0, rows.clone()),
        };
        Self {
            layers: self.layers.iter().map(|l| l.as_ref().map(pick)).collect(),
            len: self.len,
            memory: self.memory.iter().map(pick).collect(),
        }
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<B: Backend> Gpt<B> {
    pub fn vocab_size(&self) -> usize {
        self.wte.weight.dims()[0]
    }

    pub fn n_layers(&self) -> usize {
        self.blocks.len()
    }

    pub fn new_cache(&self) -> KvCache<B> {
        KvCache::new(self.blocks.len())
    }

    /// Whether the blocks cross-attend to an encoder (then every forward needs a memory).
    pub fn has_cross_attention(&self) -> bool {
        self.blocks.iter().any(|b| b.cross.is_some())
    }

    /// An empty cache holding each layer's keys/values of the encoder tokens `memory`
    /// [B, S, D], computed once and reused at every step.
    pub fn new_cache_with_memory(&self, memory: Tensor<B, 3>) -> Result<KvCache<B>, ModelError> {
        if !self.has_cross_attention() {
            return Err(invalid(
                "cross_attention",
                false,
                "true for a decoder conditioned on image features",
            ));
        }
        let d = self.wte.weight.dims()[1];
        let [b, s, dm] = memory.dims();
        if dm != d || s == 0 {
            return Err(ModelError::InputShape {
                got: vec![b, s, dm],
                expected: vec![b, s.max(1), d],
            });
        }
        let mut cache = self.new_cache();
        cache.memory = self
            .blocks
            .iter()
            .map(|blk| {
                let c = blk.cross.as_ref().expect("every block has cross-attention");
                c.attn.memory_kv(memory.clone())
            })
            .collect();
        Ok(cache)
    }

    /// Full causal forward conditioned on encoder tokens: tokens [B, T], memory [B, S, D]
    /// -> logits [B, T, V] (teacher forcing).
    pub fn forward_with_memory(
        &self,
        tokens: Tensor<B, 2, Int>,
        memory: Tensor<B, 3>,
    ) -> Result<Tensor<B, 3>, ModelError> {
        let mut cache = self.new_cache_with_memory(memory)?;
        let h = self.forward_hidden(tokens, &mut cache, false)?;
        Ok(self.logits(h))
    }

    /// Full causal forward: [B, T] -> logits [B, T, V]. T ≤ n_ctx.
    pub fn forward(&self, tokens: Tensor<B, 2, Int>) -> Result<Tensor<B, 3>, ModelError> {
        let mut cache = self.new_cache();
        let h = self.forward_hidden(tokens, &mut cache, false)?;
        Ok(self.logits(h))
    }

    /// Incremental forward: the new tokens [B, T] continue the positions in `cache`, which
    /// grows by T. Returns logits [B, T, V].
    pub fn forward_cached(
        &self,
        tokens: Tensor<B, 2, Int>,
        cache: &mut KvCache<B>,
    ) -> Result<Tensor<B, 3>, ModelError> {
        let h = self.forward_hidden(tokens, cache, true)?;
        Ok(self.logits(h))
    }

    /// Final hidden states [B, T, D] after `ln_f`; `keep` stores keys/values in `cache`.
    pub fn forward_hidden(
        &self,
        tokens: Tensor<B, 2, Int>,
        cache: &mut KvCache<B>,
        keep: bool,
    ) -> Result<Tensor<B, 3>, ModelError> {
        let [b, t] = tokens.dims();
        let past = cache.len;
        if t == 0 || past + t > self.n_ctx {
            return Err(ModelError::Context {
                len: past + t,
                max: self.n_ctx,
            });
        }
        if self.has_cross_attention() {
            let mb = cache.memory.first().map(|m| m.k.dims()[0]);
            if mb != Some(b) {
                return Err(ModelError::Memory {
                    batch: b,
                    memory_batch: mb,
                });
            }
        }
        let device = tokens.device();
        // [T] -> [B, T]
        let positions = Tensor::<B, 1, Int>::arange(past as i64..(past + t) as i64, &device)
            .reshape([1, t])
            .expand([b, t]);
        let mut x = self
            .dropout
            .forward(self.wte.forward(tokens) + self.wpe.forward(positions));
        for (i, (block, slot)) in self.blocks.iter().zip(cache.layers.iter_mut()).enumerate() {
            // Without `keep` the cache is only read, so it is cloned (cheap: shared buffers).
            let past_kv = if keep { slot.take() } else { slot.clone() };
            let (y, kv) = block.forward_kv(x, past_kv, true, cache.memory.get(i));
            x = y;
            if keep {
                *slot = Some(kv);
            }
        }
        if keep {
            cache.len = past + t;
        }
        Ok(self.ln_f.forward(x))
    }

    /// Tied output head: [B, T, D] -> [B, T, V].
    pub fn logits(&self, h: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, t, d] = h.dims();
        let w = self.wte.weight.val(); // [V, D]
        let v = w.dims()[0];
        h.reshape([b * t, d])
            .matmul(w.transpose())
            .reshape([b, t, v])
    }
}

/// GPT-2's `activation_function` names.
pub(crate) fn hf_activation(c: &HfConfig, key: &str, default: &str) -> Result<Activation, HfError> {
    Ok(
        match c
            .expect_str(
                key,
                default,
                &["gelu_new", "gelu_pytorch_tanh", "gelu", "quick_gelu"],
            )?
            .as_str()
        {
            "gelu" => Activation::Gelu,
            "quick_gelu" => Activation::QuickGelu,
            _ => Activation::GeluTanh,
        },
    )
}

impl GptConfig {
    /// The architecture of a GPT-2 `config.json` (`gpt2`, `distilgpt2`, or the decoder of a
    /// VisionEncoderDecoder with `add_cross_attention`).
    pub fn from_hf(c: &HfConfig) -> Result<Self, HfError> {
        if c.model_type()? != "gpt2" {
            return Err(c.err(format!("model_type {:?} is not GPT-2", c.model_type()?)));
        }
        let d = c.usize("n_embd")?;
        let inner = c.usize_opt("n_inner")?.unwrap_or(4 * d);
        if d == 0 || inner % d != 0 {
            return Err(c.err(format!(
                "n_inner = {inner} is not a multiple of n_embd = {d}"
            )));
        }
        if !c.bool_or("scale_attn_weights", true)?
            || c.bool_or("scale_attn_by_inverse_layer_idx", false)?
        {
            return Err(
                c.err("only GPT-2's standard 1/sqrt(head_dim) attention scaling is supported")
            );
        }
        let config = Self {
            vocab_size: c.usize("vocab_size")?,
            n_ctx: c.usize("n_positions")?,
            d_model: d,
            n_layers: c.usize("n_layer")?,
            n_heads: c.usize("n_head")?,
            mlp_ratio: inner / d,
            dropout: c.f64_or("resid_pdrop", 0.1)?,
            layer_norm_eps: c.f64_or("layer_norm_epsilon", 1e-5)?,
            activation: hf_activation(c, "activation_function", "gelu_new")?,
            cross_attention: c.bool_or("add_cross_attention", false)?,
        };
        config.validate().map_err(|e| c.err(e.to_string()))?;
        Ok(config)
    }

    /// The `config.json` of [`GptConfig::from_hf`]'s inverse.
    pub fn to_hf(&self) -> serde_json::Value {
        serde_json::json!({
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": self.vocab_size,
            "n_positions": self.n_ctx,
            "n_embd": self.d_model,
            "n_layer": self.n_layers,
            "n_head": self.n_heads,
            "n_inner": self.d_model * self.mlp_ratio,
            "resid_pdrop": self.dropout,
            "embd_pdrop": self.dropout,
            "attn_pdrop": self.dropout,
            "layer_norm_epsilon": self.layer_norm_eps,
            "activation_function": match self.activation {
                Activation::Gelu => "gelu",
                Activation::GeluTanh => "gelu_new",
                Activation::QuickGelu => "quick_gelu",
            },
            "add_cross_attention": self.cross_attention,
            "tie_word_embeddings": true,
        })
    }
}

/// GPT-2's causal-mask buffers (`attn.bias`, `attn.masked_bias`), saved by old checkpoints.
pub(crate) fn is_gpt2_buffer(name: &str) -> bool {
    let mut parts = name.rsplit('.');
    matches!(
        (parts.next(), parts.next()),
        (
            Some("bias" | "masked_bias"),
            Some("attn" | "crossattention")
        )
    )
}

impl<B: Backend> Gpt<B> {
    /// Copies GPT-2 tensors named `{prefix}wte.weight`, `{prefix}h.{i}...` (the table at the
    /// top of this file) into this model, which must have the checkpoint's architecture.
    pub fn load_hf(&mut self, w: &mut Weights, prefix: &str) {
        w.embedding(&mut self.wte, &format!("{prefix}wte.weight"));
        w.embedding(&mut self.wpe, &format!("{prefix}wpe.weight"));
        for (i, block) in self.blocks.iter_mut().enumerate() {
            let h = format!("{prefix}h.{i}");
            w.layer_norm(&mut block.ln_1, &format!("{h}.ln_1"));
            let attn = &mut block.attn;
            let c_attn = format!("{h}.attn.c_attn");
            w.fused_linear(&mut attn.query, &c_attn, 0, 3);
            w.fused_linear(&mut attn.key, &c_attn, 1, 3);
            w.fused_linear(&mut attn.value, &c_attn, 2, 3);
            w.linear(&mut attn.out, &format!("{h}.attn.c_proj"), Layout::InOut);
            if let Some(cross) = block.cross.as_mut() {
                w.layer_norm(&mut cross.ln, &format!("{h}.ln_cross_attn"));
                let x = format!("{h}.crossattention");
                w.linear(&mut cross.attn.query, &format!("{x}.q_attn"), Layout::InOut);
                w.fused_linear(&mut cross.attn.key, &format!("{x}.c_attn"), 0, 2);
                w.fused_linear(&mut cross.attn.value, &format!("{x}.c_attn"), 1, 2);
                w.linear(&mut cross.attn.out, &format!("{x}.c_proj"), Layout::InOut);
            }
            w.layer_norm(&mut block.ln_2, &format!("{h}.ln_2"));
            let mlp = [format!("{h}.mlp.c_fc"), format!("{h}.mlp.c_proj")];
            block
                .mlp
                .load_hf(w, mlp.each_ref().map(String::as_str), Layout::InOut);
        }
        w.layer_norm(&mut self.ln_f, &format!("{prefix}ln_f"));
    }

    /// This model's tensors under GPT-2's names (inverse of [`Gpt::load_hf`]).
    pub fn export_hf(&self, e: &mut Export, prefix: &str) {
        e.param(&format!("{prefix}wte.weight"), &self.wte.weight);
        e.param(&format!("{prefix}wpe.weight"), &self.wpe.weight);
        for (i, block) in self.blocks.iter().enumerate() {
            let h = format!("{prefix}h.{i}");
            e.layer_norm(&format!("{h}.ln_1"), &block.ln_1);
            let a = &block.attn;
            e.fused_linear(&format!("{h}.attn.c_attn"), &[&a.query, &a.key, &a.value]);
            e.linear(&format!("{h}.attn.c_proj"), &a.out, Layout::InOut);
            if let Some(cross) = &block.cross {
                e.layer_norm(&format!("{h}.ln_cross_attn"), &cross.ln);
                let x = format!("{h}.crossattention");
                e.linear(&format!("{x}.q_attn"), &cross.attn.query, Layout::InOut);
                e.fused_linear(
                    &format!("{x}.c_attn"),
                    &[&cross.attn.key, &cross.attn.value],
                );
                e.linear(&format!("{x}.c_proj"), &cross.attn.out, Layout::InOut);
            }
            e.layer_norm(&format!("{h}.ln_2"), &block.ln_2);
            e.linear(&format!("{h}.mlp.c_fc"), &block.mlp.fc_in, Layout::InOut);
            e.linear(&format!("{h}.mlp.c_proj"), &block.mlp.fc_out, Layout::InOut);
        }
        e.layer_norm(&format!("{prefix}ln_f"), &self.ln_f);
    }

    /// Grows the vocabulary to `vocab_size` rows (tokens a fine-tuning run adds, e.g. its
    /// brief markers); new rows are drawn as GPT-2 initialises embeddings, N(0, 0.02).
    pub fn resize_vocab(mut self, vocab_size: usize) -> Result<Self, ModelError> {
        let [v, d] = self.wte.weight.dims();
        if vocab_size < v {
            return Err(invalid(
                "vocab_size",
                vocab_size,
                format!("at least the pretrained vocabulary ({v})"),
            ));
        }
        if vocab_size > v {
            let device = self.wte.weight.device();
            let extra = Tensor::<B, 2>::random(
                [vocab_size - v, d],
                burn::tensor::Distribution::Normal(0.0, 0.02),
                &device,
            );
            let grown = Tensor::cat(vec![self.wte.weight.val(), extra], 0)
                .detach()
                .require_grad();
            self.wte.weight = burn::module::Param::initialized(self.wte.weight.id, grown);
        }
        Ok(self)
    }
}

/// A GPT-2 checkpoint folder (see [`crate::hf::resolve`]) as a [`Gpt`].
pub fn load_hf_gpt2<B: Backend>(
    dir: &std::path::Path,
    device: &B::Device,
) -> Loaded<GptConfig, Gpt<B>> {
    let init = |c: &GptConfig| c.init::<B>(device);
    load_checkpoint(dir, GptConfig::from_hf, init, |m, w| {
        let prefix = w.prefix_of("wte.weight", &["transformer.", ""]);
        m.load_hf(w, prefix);
        // The output head is tied to wte.
        w.ignore(|n| n == "lm_head.weight" || is_gpt2_buffer(n));
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::B;
    use burn::tensor::TensorData;

    fn tiny() -> GptConfig {
        GptConfig::preset("tiny").unwrap()
    }

    fn tokens(rows: &[Vec<i64>]) -> Tensor<B, 2, Int> {
        let t = rows[0].len();
        let flat: Vec<i64> = rows.iter().flatten().copied().collect();
        Tensor::from_data(TensorData::new(flat, [rows.len(), t]), &Default::default())
    }

    fn max_abs_diff(a: Tensor<B, 3>, b: Tensor<B, 3>) -> f32 {
        (a - b).abs().max().into_scalar()
    }

    #[test]
    fn logits_shape_and_tied_head() {
        let model = tiny().init::<B>(&Default::default()).unwrap();
        let logits = model
            .forward(tokens(&[vec![1, 2, 3], vec![4, 5, 6]]))
            .unwrap();
        assert_eq!(logits.dims(), [2, 3, 32]);
        assert_eq!(model.vocab_size(), 32);
    }

    /// Decoding 20 steps one token at a time with the cache gives the logits of a full
    /// recompute over the whole prefix at every step.
    #[test]
    fn kv_cache_matches_full_recompute_for_20_steps() {
        let model = tiny().init::<B>(&Default::default()).unwrap();
        let seq: Vec<Vec<i64>> = vec![
            (0..24).map(|i| (i * 7 + 3) % 32).collect(),
            (0..24).map(|i| (i * 5 + 1) % 32).collect(),
        ];
        let prompt = 4;
        let mut cache = model.new_cache();
        let first = model
            .forward_cached(
                tokens(&seq.iter().map(|r| r[..prompt].to_vec()).collect::<Vec<_>>()),
                &mut cache,
            )
            .unwrap();
        let full = model
            .forward(tokens(
                &seq.iter().map(|r| r[..prompt].to_vec()).collect::<Vec<_>>(),
            ))
            .unwrap();
        assert!(max_abs_diff(first, full) <= 1e-4);
        for step in 0..20 {
            let pos = prompt + step;
            let next: Vec<Vec<i64>> = seq.iter().map(|r| vec![r[pos]]).collect();
            let cached = model.forward_cached(tokens(&next), &mut cache).unwrap();
            assert_eq!(cache.len(), pos + 1);
            let full = model
                .forward(tokens(
                    &seq.iter().map(|r| r[..=pos].to_vec()).collect::<Vec<_>>(),
                ))
                .unwrap()
                .slice([0..2, pos..pos + 1, 0..32]);
            let diff = max_abs_diff(cached, full);
            assert!(diff <= 1e-4, "step {step}: max abs diff {diff}");
        }
    }

    #[test]
    fn context_overflow_is_an_error_not_a_panic() {
        let model = tiny().init::<B>(&Default::default()).unwrap();
        let at_limit = tokens(&[vec![1; 32]]);
        assert!(model.forward(at_limit).is_ok());
        let over = tokens(&[vec![1; 33]]);
        assert_eq!(
            model.forward(over).unwrap_err(),
            ModelError::Context { len: 33, max: 32 }
        );
        let mut cache = model.new_cache();
        model
            .forward_cached(tokens(&[vec![1; 30]]), &mut cache)
            .unwrap();
        let err = model
            .forward_cached(tokens(&[vec![1; 3]]), &mut cache)
            .unwrap_err();
        assert_eq!(err, ModelError::Context { len: 33, max: 32 });
        // The failed call left the cache usable.
        assert_eq!(cache.len(), 30);
        assert!(model
            .forward_cached(tokens(&[vec![1; 2]]), &mut cache)
            .is_ok());
    }

    #[test]
    fn presets_and_overrides_from_toml() {
        let c: GptConfig =
            serde_json::from_str(r#"{"preset": "nano-cpu", "vocab_size": 65}"#).unwrap();
        assert_eq!((c.n_layers, c.n_heads, c.d_model), (4, 4, 128));
        let c: GptConfig =
            serde_json::from_str(r#"{"preset": "gpt2-124m", "n_ctx": 256}"#).unwrap();
        assert_eq!(
            (c.n_layers, c.d_model, c.n_ctx, c.vocab_size),
            (12, 768, 256, 50257)
        );
        // A resolved config round-trips without its preset.
        let back: GptConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        assert!(serde_json::from_str::<GptConfig>(r#"{"preset": "huge"}"#).is_err());
        assert!(serde_json::from_str::<GptConfig>(r#"{"n_layer": 3}"#).is_err());
        assert!(GptConfig {
            n_heads: 3,
            ..tiny()
        }
        .validate()
        .is_err());
    }
    /// Export under GPT-2's names, load back: the same logits (with cross-attention too).
    #[test]
    fn hf_export_round_trips() {
        for cross in [false, true] {
            let config = GptConfig {
                cross_attention: cross,
                ..tiny()
            };
            let model = config.init::<B>(&Default::default()).unwrap();
            let mut e = crate::hf::Export::default();
            model.export_hf(&mut e, "transformer.");
            let mut w = Weights::from_tensors(std::path::Path::new("export"), e.tensors);
            let mut back = config.init::<B>(&Default::default()).unwrap();
            back.load_hf(&mut w, "transformer.");
            w.finish().unwrap();
            let toks = tokens(&[vec![3, 1, 4, 1, 5]]);
            let (a, b) = if cross {
                let mem = Tensor::<B, 3>::ones([1, 3, 16], &Default::default());
                (
                    model
                        .forward_with_memory(toks.clone(), mem.clone())
                        .unwrap(),
                    back.forward_with_memory(toks, mem).unwrap(),
                )
            } else {
                (
                    model.forward(toks.clone()).unwrap(),
                    back.forward(toks).unwrap(),
                )
            };
            assert_eq!(max_abs_diff(a, b), 0.0);
            // And the HF config describes the same architecture.
            let hf = HfConfig {
                path: "config.json".into(),
                value: config.to_hf(),
            };
            assert_eq!(
                GptConfig::from_hf(&hf).unwrap(),
                GptConfig {
                    dropout: 0.0,
                    ..config
                }
            );
        }
    }
}
