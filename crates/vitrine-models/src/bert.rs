//! BERT (Devlin et al. 2019) as a sentence encoder, e.g. `sentence-transformers/all-MiniLM-L6-v2`.
//!
//! ```text
//! tokens [B, T] (int, [CLS] ... [SEP], right-padded), lengths (real tokens per row)
//!   word + position + token-type(0) embeddings, LayerNorm, dropout   [B, T, D]
//!   n_layers post-LayerNorm encoder layers:
//!     x = LN(x + attn(x, key-padding bias))                          [B, T, D]
//!     x = LN(x + fc_out(gelu(fc_in(x))))                             [B, T, D]
//!   pool over the real tokens: mean, or the [CLS] state              [B, D]
//!   L2-normalise when the folder's modules.json lists Normalize      [B, D]
//! ```
//!
//! Padded keys get -inf added to their attention scores, so a row's real positions, and
//! its pooled embedding, do not depend on how far it was padded.
//!
//! Hugging Face `BertModel` names (torch linear weights [out, in] are transposed; a
//! `bert.` prefix, as saved from a task head, is accepted):
//!
//! | Hugging Face                                                  | here                        |
//! |---------------------------------------------------------------|-----------------------------|
//! | `embeddings.word_embeddings.weight` [V, D]                    | `word`                      |
//! | `embeddings.position_embeddings.weight` [P, D]                | `position`                  |
//! | `embeddings.token_type_embeddings.weight` [types, D]          | `token_type`                |
//! | `embeddings.LayerNorm`                                        | `ln_embed`                  |
//! | `encoder.layer.{i}.attention.self.{query,key,value}`          | `layers.{i}.attn.{query,key,value}` |
//! | `encoder.layer.{i}.attention.output.dense`                    | `layers.{i}.attn.out`       |
//! | `encoder.layer.{i}.attention.output.LayerNorm`                | `layers.{i}.ln_attn`        |
//! | `encoder.layer.{i}.intermediate.dense`                        | `layers.{i}.mlp.fc_in`      |
//! | `encoder.layer.{i}.output.dense`                              | `layers.{i}.mlp.fc_out`     |
//! | `encoder.layer.{i}.output.LayerNorm`                          | `layers.{i}.ln_out`         |
//! | `pooler.dense` (tanh over [CLS]; sentence-transformers does not use it) | ignored           |
//! | `embeddings.position_ids` (an integer buffer)                 | ignored                     |
//!
//! The sentence-embedding head comes from the sentence-transformers files beside the
//! weights: `1_Pooling/config.json` (mean or CLS) and `modules.json` (`Normalize`).

use std::path::Path;

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Embedding, EmbeddingConfig, LayerNorm};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::error::{check_range, invalid, ModelError};
use crate::fused;
use crate::gpt::hf_activation;
use crate::hf::{load_checkpoint, HfConfig, HfError, Layout, Loaded, Weights};
use crate::l2_normalize;
use crate::transformer::{Activation, Attention, BlockConfig, Mlp};

/// The sentence-transformers pooling file, relative to the model folder.
pub const POOLING_FILE: &str = "1_Pooling/config.json";
/// The sentence-transformers module list (says whether embeddings are normalised).
pub const MODULES_FILE: &str = "modules.json";

/// How token states become one sentence embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TextPooling {
    /// Mean over the real (unpadded) tokens.
    #[default]
    Mean,
    /// The first token's ([CLS]) state.
    Cls,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BertConfig {
    pub vocab_size: usize,
    /// Longest input in tokens, [CLS] and [SEP] included (`max_position_embeddings`).
    pub max_positions: usize,
    pub type_vocab_size: usize,
    pub d_model: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    /// `intermediate_size / hidden_size`.
    pub mlp_ratio: usize,
    pub layer_norm_eps: f64,
    pub activation: Activation,
    /// Hidden-state dropout while training (BERT's `hidden_dropout_prob`).
    #[serde(default)]
    pub dropout: f64,
    /// Dropout on the attention probabilities while training
    /// (`attention_probs_dropout_prob`).
    #[serde(default)]
    pub attn_dropout: f64,
    #[serde(default)]
    pub pooling: TextPooling,
    /// L2-normalise the pooled embedding.
    #[serde(default)]
    pub normalize: bool,
}

impl BertConfig {
    /// Architectures by name, for benchmarks and tests (random weights; real ones come from
    /// a model folder): `tiny`, and `minilm-l6` (all-MiniLM-L6-v2's shape).
    pub const PRESETS: [&'static str; 2] = ["tiny", "minilm-l6"];

    pub fn preset(name: &str) -> Result<Self, ModelError> {
        let (vocab_size, max_positions, d_model, n_layers, n_heads) = match name {
            "tiny" => (64, 32, 16, 2, 4),
            "minilm-l6" => (30_522, 512, 384, 6, 12),
            other => return Err(crate::error::unknown_preset(other, &Self::PRESETS)),
        };
        Ok(Self {
            vocab_size,
            max_positions,
            type_vocab_size: 2,
            d_model,
            n_layers,
            n_heads,
            mlp_ratio: 4,
            layer_norm_eps: 1e-12,
            activation: Activation::Gelu,
            dropout: 0.0,
            attn_dropout: 0.0,
            pooling: TextPooling::Mean,
            normalize: true,
        })
    }

    fn block(&self) -> BlockConfig {
        BlockConfig {
            d_model: self.d_model,
            n_heads: self.n_heads,
            mlp_ratio: self.mlp_ratio,
            dropout: self.dropout,
            attn_dropout: self.attn_dropout,
            layer_norm_eps: self.layer_norm_eps,
            activation: self.activation,
            cross_attention: false,
        }
    }

    pub fn validate(&self) -> Result<(), ModelError> {
        check_range("vocab_size", self.vocab_size, 1 << 24)?;
        check_range("max_positions", self.max_positions, 1 << 16)?;
        check_range("type_vocab_size", self.type_vocab_size, 1 << 10)?;
        check_range("n_layers", self.n_layers, 256)?;
        self.block().validate()
    }

    /// A `BertModel` `config.json`, with pooling and normalisation from the
    /// sentence-transformers files in `dir` (mean pooling, no normalisation, when absent).
    pub fn from_hf_dir(c: &HfConfig, dir: &Path) -> Result<Self, HfError> {
        if c.model_type()? != "bert" {
            return Err(c.err(format!("model_type {:?} is not bert", c.model_type()?)));
        }
        if let Some(kind) = c.str("position_embedding_type") {
            if kind != "absolute" {
                return Err(c.err(format!(
                    "position_embedding_type {kind:?} is not supported (only \"absolute\")"
                )));
            }
        }
        let d = c.usize("hidden_size")?;
        let inner = c.usize("intermediate_size")?;
        if d == 0 || inner % d != 0 {
            return Err(c.err(format!(
                "intermediate_size = {inner} is not a multiple of hidden_size = {d}"
            )));
        }
        let config = Self {
            vocab_size: c.usize("vocab_size")?,
            max_positions: c.usize_opt("max_position_embeddings")?.unwrap_or(512),
            type_vocab_size: c.usize_opt("type_vocab_size")?.unwrap_or(2),
            d_model: d,
            n_layers: c.usize("num_hidden_layers")?,
            n_heads: c.usize("num_attention_heads")?,
            mlp_ratio: inner / d,
            layer_norm_eps: c.f64_or("layer_norm_eps", 1e-12)?,
            activation: hf_activation(c, "hidden_act", "gelu")?,
            dropout: c.f64_or("hidden_dropout_prob", 0.1)?,
            attn_dropout: c.f64_or("attention_probs_dropout_prob", 0.1)?,
            pooling: read_pooling(dir)?,
            normalize: read_normalize(dir)?,
        };
        config.validate().map_err(|e| c.err(e.to_string()))?;
        Ok(config)
    }

    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<Bert<B>, ModelError> {
        self.validate()?;
        let (block, d) = (self.block(), self.d_model);
        let layers = (0..self.n_layers)
            .map(|_| BertLayer {
                attn: block.attention(device),
                ln_attn: block.layer_norm(device),
                mlp: block.mlp(device),
                ln_out: block.layer_norm(device),
                dropout: DropoutConfig::new(self.dropout).init(),
                ln_eps: self.layer_norm_eps,
            })
            .collect();
        Ok(Bert {
            word: EmbeddingConfig::new(self.vocab_size, d).init(device),
            position: EmbeddingConfig::new(self.max_positions, d).init(device),
            token_type: EmbeddingConfig::new(self.type_vocab_size, d).init(device),
            ln_embed: block.layer_norm(device),
            layers,
            dropout: DropoutConfig::new(self.dropout).init(),
            cls_pool: self.pooling == TextPooling::Cls,
            normalize: self.normalize,
        })
    }
}

/// `1_Pooling/config.json`: mean or CLS pooling (absent: mean). Other modes are refused
/// rather than silently replaced.
fn read_pooling(dir: &Path) -> Result<TextPooling, HfError> {
    let path = dir.join(POOLING_FILE);
    if !path.is_file() {
        return Ok(TextPooling::Mean);
    }
    let c = HfConfig::read_file(&path)?;
    let on = |key: &str| c.bool_or(key, false);
    let modes = [
        ("pooling_mode_cls_token", TextPooling::Cls),
        ("pooling_mode_mean_tokens", TextPooling::Mean),
    ];
    for other in [
        "pooling_mode_max_tokens",
        "pooling_mode_mean_sqrt_len_tokens",
        "pooling_mode_weightedmean_tokens",
        "pooling_mode_lasttoken",
    ] {
        if on(other)? {
            return Err(c.err(format!("{other} is not supported (mean or CLS pooling)")));
        }
    }
    let mut chosen = None;
    for (key, mode) in modes {
        if on(key)? {
            if chosen.is_some() {
                return Err(c.err("both CLS and mean pooling are on; one is supported"));
            }
            chosen = Some(mode);
        }
    }
    chosen.ok_or_else(|| c.err("no pooling mode is on"))
}

/// Whether `modules.json` lists a `Normalize` module (absent file: no).
fn read_normalize(dir: &Path) -> Result<bool, HfError> {
    let path = dir.join(MODULES_FILE);
    if !path.is_file() {
        return Ok(false);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| HfError::Io {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let modules: serde_json::Value = serde_json::from_str(&text).map_err(|e| HfError::Config {
        path: path.clone(),
        message: format!("not JSON: {e}"),
    })?;
    let list = modules.as_array().ok_or_else(|| HfError::Config {
        path: path.clone(),
        message: "not a list of modules".into(),
    })?;
    Ok(list.iter().any(|m| {
        m.get("type")
            .and_then(|t| t.as_str())
            .is_some_and(|t| t.ends_with(".Normalize"))
    }))
}

/// A BERT checkpoint folder (with its sentence-transformers pooling files) as a [`Bert`].
pub fn load_hf_bert<B: Backend>(dir: &Path, device: &B::Device) -> Loaded<BertConfig, Bert<B>> {
    let init = |c: &BertConfig| c.init::<B>(device);
    let read = |c: &HfConfig| BertConfig::from_hf_dir(c, dir);
    load_checkpoint(dir, read, init, |m, w| m.load_hf(w))
}

#[derive(Module, Debug)]
pub struct BertLayer<B: Backend> {
    pub attn: Attention<B>,
    pub ln_attn: LayerNorm<B>,
    pub mlp: Mlp<B>,
    pub ln_out: LayerNorm<B>,
    pub dropout: Dropout,
    /// The LayerNorms' epsilon, for [`fused::layer_norm`]. Not a weight.
    pub ln_eps: f64,
}

impl<B: Backend> BertLayer<B> {
    /// [B, T, D] -> [B, T, D]; `bias` [B, 1, 1, T] hides padded keys.
    fn forward(&self, x: Tensor<B, 3>, bias: Tensor<B, 4>) -> Tensor<B, 3> {
        let a = self
            .dropout
            .forward(self.attn.forward_biased(x.clone(), bias));
        let x = fused::layer_norm(&self.ln_attn, self.ln_eps, x + a);
        let m = self.dropout.forward(self.mlp.forward(x.clone()));
        fused::layer_norm(&self.ln_out, self.ln_eps, x + m)
    }
}

#[derive(Module, Debug)]
pub struct Bert<B: Backend> {
    pub word: Embedding<B>,
    pub position: Embedding<B>,
    pub token_type: Embedding<B>,
    pub ln_embed: LayerNorm<B>,
    pub layers: Vec<BertLayer<B>>,
    pub dropout: Dropout,
    pub cls_pool: bool,
    pub normalize: bool,
}

impl<B: Backend> Bert<B> {
    pub fn d_model(&self) -> usize {
        self.word.weight.dims()[1]
    }

    /// Longest row in tokens.
    pub fn max_positions(&self) -> usize {
        self.position.weight.dims()[0]
    }

    fn check(&self, dims: [usize; 2], lengths: &[usize]) -> Result<(), ModelError> {
        let [b, t] = dims;
        if lengths.len() != b || lengths.iter().any(|&l| l == 0 || l > t) {
            return Err(invalid(
                "lengths",
                format!("{lengths:?}"),
                format!("{b} lengths in 1..={t}"),
            ));
        }
        if t > self.max_positions() {
            return Err(ModelError::Context {
                len: t,
                max: self.max_positions(),
            });
        }
        Ok(())
    }

    /// Final token states of right-padded rows: [B, T] -> [B, T, D]. States at padded
    /// positions are computed but meaningless.
    pub fn forward_hidden(
        &self,
        tokens: Tensor<B, 2, Int>,
        lengths: &[usize],
    ) -> Result<Tensor<B, 3>, ModelError> {
        let [b, t] = tokens.dims();
        self.check([b, t], lengths)?;
        let device = tokens.device();
        let d = self.d_model();
        // Every row is segment 0 (single sentences).
        let pos = self
            .position
            .weight
            .val()
            .slice([0..t, 0..d])
            .unsqueeze_dim::<3>(0);
        let seg = self
            .token_type
            .weight
            .val()
            .slice([0..1, 0..d])
            .unsqueeze_dim::<3>(0);
        let x = self.word.forward(tokens) + pos + seg; // [B, T, D]
        let mut x = self.dropout.forward(self.ln_embed.forward(x));
        let mut bias = vec![0f32; b * t];
        for (r, &len) in lengths.iter().enumerate() {
            bias[r * t + len..(r + 1) * t].fill(f32::NEG_INFINITY);
        }
        // [B, 1, 1, T]
        let bias = Tensor::<B, 2>::from_data(TensorData::new(bias, [b, t]), &device)
            .reshape([b, 1, 1, t])
            .cast(x.dtype());
        for layer in &self.layers {
            x = layer.forward(x, bias.clone());
        }
        Ok(x)
    }

    /// Sentence embeddings of right-padded rows: [B, T] -> [B, D], pooled and (if the
    /// model says so) L2-normalised.
    pub fn embed(
        &self,
        tokens: Tensor<B, 2, Int>,
        lengths: &[usize],
    ) -> Result<Tensor<B, 2>, ModelError> {
        let [b, t] = tokens.dims();
        let h = self.forward_hidden(tokens, lengths)?; // [B, T, D]
        let device = h.device();
        let d = h.dims()[2];
        // Pooling weights [B, T, 1]: each row sums to 1 over the positions it reads.
        let mut w = vec![0f32; b * t];
        for (r, &len) in lengths.iter().enumerate() {
            if self.cls_pool {
                w[r * t] = 1.0;
            } else {
                w[r * t..r * t + len].fill(1.0 / len as f32);
            }
        }
        let w = Tensor::<B, 2>::from_data(TensorData::new(w, [b, t]), &device)
            .reshape([b, t, 1])
            .cast(h.dtype());
        let pooled = (h * w).sum_dim(1).reshape([b, d]); // [B, D]
        Ok(if self.normalize {
            l2_normalize(pooled)
        } else {
            pooled
        })
    }

    /// Copies a `BertModel` checkpoint (the table at the top of this file).
    pub fn load_hf(&mut self, w: &mut Weights) {
        let p = w.prefix_of("embeddings.word_embeddings.weight", &["", "bert."]);
        w.ignore(|n| n.ends_with("position_ids") || n.contains("pooler.") || n.starts_with("cls."));
        let e = format!("{p}embeddings");
        w.embedding(&mut self.word, &format!("{e}.word_embeddings.weight"));
        w.embedding(
            &mut self.position,
            &format!("{e}.position_embeddings.weight"),
        );
        w.embedding(
            &mut self.token_type,
            &format!("{e}.token_type_embeddings.weight"),
        );
        w.layer_norm(&mut self.ln_embed, &format!("{e}.LayerNorm"));
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let l = format!("{p}encoder.layer.{i}");
            for (lin, name) in [
                (&mut layer.attn.query, "attention.self.query"),
                (&mut layer.attn.key, "attention.self.key"),
                (&mut layer.attn.value, "attention.self.value"),
                (&mut layer.attn.out, "attention.output.dense"),
            ] {
                w.linear(lin, &format!("{l}.{name}"), Layout::OutIn);
            }
            w.layer_norm(
                &mut layer.ln_attn,
                &format!("{l}.attention.output.LayerNorm"),
            );
            layer.mlp.load_hf(
                w,
                [
                    &format!("{l}.intermediate.dense"),
                    &format!("{l}.output.dense"),
                ],
                Layout::OutIn,
            );
            w.layer_norm(&mut layer.ln_out, &format!("{l}.output.LayerNorm"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::B;

    pub(crate) fn tiny() -> BertConfig {
        // The `tiny` preset (16 wide, 2 layers, 4 heads, mean-pooled, normalised, no
        // dropout) with a smaller vocabulary, context and MLP.
        BertConfig {
            vocab_size: 50,
            max_positions: 16,
            mlp_ratio: 2,
            ..BertConfig::preset("tiny").unwrap()
        }
    }

    fn rows(rows: &[&[i64]], t: usize) -> Tensor<B, 2, Int> {
        let mut flat = vec![0i64; rows.len() * t];
        for (i, r) in rows.iter().enumerate() {
            flat[i * t..i * t + r.len()].copy_from_slice(r);
        }
        Tensor::from_data(TensorData::new(flat, [rows.len(), t]), &Default::default())
    }

    fn host(t: Tensor<B, 2>) -> Vec<f32> {
        t.into_data().to_vec().unwrap()
    }

    /// Padding a row (with any ids) does not change its embedding, for both poolings.
    #[test]
    fn padding_does_not_change_the_embedding() {
        for pooling in [TextPooling::Mean, TextPooling::Cls] {
            let m = BertConfig { pooling, ..tiny() }
                .init::<B>(&Default::default())
                .unwrap();
            let a: &[i64] = &[1, 7, 9, 2];
            let alone = host(m.embed(rows(&[a], 4), &[4]).unwrap());
            let mut padded = a.to_vec();
            padded.extend([5, 6, 7, 8]);
            let long: &[i64] = &[1, 3, 3, 3, 3, 3, 3, 2];
            let both = host(m.embed(rows(&[&padded, long], 8), &[4, 8]).unwrap());
            let diff = alone
                .iter()
                .zip(&both[..16])
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max);
            assert!(
                diff < 1e-5,
                "{pooling:?}: padding moved the embedding by {diff}"
            );
            assert!(both[..16]
                .iter()
                .zip(&both[16..])
                .any(|(x, y)| (x - y).abs() > 1e-4));
            let norm: f32 = alone.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5, "normalised: {norm}");
        }
    }

    #[test]
    fn too_long_rows_and_bad_lengths_are_errors() {
        let m = tiny().init::<B>(&Default::default()).unwrap();
        let at_limit = vec![3i64; 16];
        assert!(m.embed(rows(&[&at_limit], 16), &[16]).is_ok());
        let past = vec![3i64; 17];
        assert_eq!(
            m.embed(rows(&[&past], 17), &[17]).unwrap_err(),
            ModelError::Context { len: 17, max: 16 }
        );
        assert!(m.embed(rows(&[&at_limit], 16), &[0]).is_err());
        assert!(m.embed(rows(&[&at_limit], 16), &[17]).is_err());
        assert!(m.embed(rows(&[&at_limit], 16), &[4, 4]).is_err());
    }

    #[test]
    fn validate_limits() {
        assert!(tiny().validate().is_ok());
        let base = tiny();
        let valid = |change| crate::testing::valid_with(&base, change, BertConfig::validate);
        assert!(!valid(|c| c.n_heads = 5));
        assert!(!valid(|c| c.max_positions = 0));
        assert!(valid(|c| c.max_positions = 1 << 16));
        assert!(!valid(|c| c.max_positions = (1 << 16) + 1));
        assert!(!valid(|c| c.n_layers = 0));
        assert!(valid(|c| c.attn_dropout = 0.5));
        assert!(!valid(|c| c.attn_dropout = 1.0));
    }
}
