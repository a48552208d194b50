//! Click-through scorer: the GPT decoder trunk as a text encoder with a scalar head.
//!
//! ```text
//! tokens [B, T] (int), lengths (≤ T, right padding)
//!   gpt.forward_hidden (causal, ln_f)          [B, T, D]
//!   pool: last real token | mean of real tokens [B, D]
//!   head (Linear D -> 1)                        [B]
//! ```
//!
//! Causal attention means padding after a row's last token never reaches its real
//! positions, so right-padded batches score exactly as single rows do. `last` pooling
//! reads the final `<|endoftext|>`, which has attended to the whole headline. A score is a
//! logit: `sigmoid(s_a - s_b)` is the model's probability that `a` out-clicks `b`.
//!
//! Hugging Face `GPT2ForSequenceClassification` (`num_labels = 1`) maps onto this module:
//! `transformer.*` onto `gpt.*` as listed in [`crate::gpt`], `score.weight` [1, D] onto
//! `head.weight` [D, 1] (transposed; HF has no bias, so `head.bias` = 0), with `last`
//! pooling (HF pools the last non-padding token).

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::error::{invalid, ModelError};
use crate::gpt::{Gpt, GptConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pooling {
    /// Hidden state of each row's last real token.
    #[default]
    Last,
    /// Mean hidden state over each row's real tokens.
    Mean,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScorerConfig {
    /// The trunk (same presets and fields as a copy model's `[model]`).
    #[serde(default)]
    pub gpt: GptConfig,
    #[serde(default)]
    pub pooling: Pooling,
}

impl ScorerConfig {
    pub fn validate(&self) -> Result<(), ModelError> {
        self.gpt.validate()
    }

    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<Scorer<B>, ModelError> {
        Ok(self.with_trunk(self.gpt.init(device)?, device))
    }

    /// A scorer around an existing (e.g. copy-trained) trunk, with a fresh head.
    pub fn with_trunk<B: Backend>(&self, gpt: Gpt<B>, device: &B::Device) -> Scorer<B> {
        Scorer {
            head: LinearConfig::new(self.gpt.d_model, 1).init(device),
            gpt,
            mean_pool: self.pooling == Pooling::Mean,
        }
    }
}

#[derive(Module, Debug)]
pub struct Scorer<B: Backend> {
    pub gpt: Gpt<B>,
    pub head: Linear<B>,
    pub mean_pool: bool,
}

impl<B: Backend> Scorer<B> {
    pub fn n_ctx(&self) -> usize {
        self.gpt.n_ctx
    }

    /// Scores [B] of right-padded rows `tokens` [B, T] whose real lengths are `lengths`.
    pub fn forward(
        &self,
        tokens: Tensor<B, 2, Int>,
        lengths: &[usize],
    ) -> Result<Tensor<B, 1>, ModelError> {
        let [b, t] = tokens.dims();
        if lengths.len() != b || lengths.iter().any(|&l| l == 0 || l > t) {
            return Err(invalid(
                "lengths",
                format!("{lengths:?}"),
                format!("{b} lengths in 1..={t}"),
            ));
        }
        let device = tokens.device();
        let h = self
            .gpt
            .forward_hidden(tokens, &mut self.gpt.new_cache(), false)?; // [B, T, D]
        let d = h.dims()[2];
        // Pooling weights [B, T]: each row sums to 1 over the positions it reads.
        let mut w = vec![0f32; b * t];
        for (r, &len) in lengths.iter().enumerate() {
            if self.mean_pool {
                w[r * t..r * t + len].fill(1.0 / len as f32);
            } else {
                w[r * t + len - 1] = 1.0;
            }
        }
        let w = Tensor::<B, 2>::from_data(TensorData::new(w, [b, t]), &device);
        let pooled = (h * w.unsqueeze_dim::<3>(2)).sum_dim(1).reshape([b, d]); // [B, D]
        Ok(self.head.forward(pooled).reshape([b]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    type B = Flex;

    fn tokens(rows: &[&[i64]], t: usize) -> Tensor<B, 2, Int> {
        let mut flat = vec![0i64; rows.len() * t];
        for (i, r) in rows.iter().enumerate() {
            flat[i * t..i * t + r.len()].copy_from_slice(r);
        }
        Tensor::from_data(TensorData::new(flat, [rows.len(), t]), &Default::default())
    }

    fn scores(s: Tensor<B, 1>) -> Vec<f32> {
        s.into_data().to_vec().unwrap()
    }

    /// A padded batch scores each row as that row alone would, for both poolings.
    #[test]
    fn padded_batch_equals_rows_alone() {
        for pooling in [Pooling::Last, Pooling::Mean] {
            let cfg = ScorerConfig {
                gpt: GptConfig::preset("tiny").unwrap(),
                pooling,
            };
            let m = cfg.init::<B>(&Default::default()).unwrap();
            let a: &[i64] = &[1, 2, 3, 4, 5];
            let b: &[i64] = &[6, 7];
            let both = scores(m.forward(tokens(&[a, b], 5), &[5, 2]).unwrap());
            let alone_a = scores(m.forward(tokens(&[a], 5), &[5]).unwrap());
            let alone_b = scores(m.forward(tokens(&[b], 2), &[2]).unwrap());
            assert!((both[0] - alone_a[0]).abs() < 1e-5, "{pooling:?}");
            assert!((both[1] - alone_b[0]).abs() < 1e-5, "{pooling:?}");
            // Different text, different score (the head is not constant).
            assert!((both[0] - both[1]).abs() > 1e-6, "{pooling:?}");
        }
    }

    #[test]
    fn bad_lengths_and_context_overflow_are_errors() {
        let cfg = ScorerConfig {
            gpt: GptConfig::preset("tiny").unwrap(),
            pooling: Pooling::Last,
        };
        let m = cfg.init::<B>(&Default::default()).unwrap();
        let x: &[i64] = &[1, 2, 3];
        assert!(m.forward(tokens(&[x], 3), &[4]).is_err());
        assert!(m.forward(tokens(&[x], 3), &[0]).is_err());
        assert!(m.forward(tokens(&[x], 3), &[3, 3]).is_err());
        let long = vec![1i64; 33];
        assert_eq!(
            m.forward(tokens(&[&long], 33), &[33]).unwrap_err(),
            ModelError::Context { len: 33, max: 32 }
        );
        assert!(m.forward(tokens(&[&long[..32]], 32), &[32]).is_ok());
    }

    #[test]
    fn config_reads_a_preset_trunk_and_pooling() {
        let c: ScorerConfig =
            serde_json::from_str(r#"{"gpt": {"preset": "tiny"}, "pooling": "mean"}"#).unwrap();
        assert_eq!(c.pooling, Pooling::Mean);
        assert_eq!(c.gpt.d_model, 16);
        assert!(serde_json::from_str::<ScorerConfig>(r#"{"pool": "mean"}"#).is_err());
    }
}
