//! Click-through scorer: the GPT decoder trunk as a text encoder with a scalar head.
//!
//! ```text
//! tokens [B, T] (int), lengths (≤ T, right padding)
//! for each of M members:
//!   gpt.forward_hidden (causal, ln_f)          [B, T, D]
//!   pool: last real token | mean of real tokens [B, D]
//!   head (Linear D -> 1)                        [B]
//! member scores                                 [M, B]
//! score = mean over members                     [B]
//! ```
//!
//! `members > 1` is a deep ensemble: members start from different random weights and each
//! is trained on its own pairwise loss (not on the averaged score, which would couple them
//! and shrink their diversity); averaging their scores lowers the variance that dominates
//! on a few thousand noisy A/B outcomes.
//!
//! Causal attention means padding after a row's last token never reaches its real
//! positions, so right-padded batches score exactly as single rows do. `last` pooling
//! reads the final `<|endoftext|>`, which has attended to the whole headline. A score is a
//! logit: `sigmoid(s_a - s_b)` is the model's probability that `a` out-clicks `b`.
//!
//! Hugging Face `GPT2ForSequenceClassification` (`num_labels = 1`) maps onto one member:
//! `transformer.*` onto `members.{i}.gpt.*` as listed in [`crate::gpt`], `score.weight`
//! [1, D] onto `members.{i}.head.weight` [D, 1] (transposed; HF has no bias, so the bias
//! is 0), with `last` pooling (HF pools the last non-padding token).

use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::error::{check_range, invalid, ModelError};
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScorerConfig {
    /// The trunk (same presets and fields as a copy model's `[model]`).
    #[serde(default)]
    pub gpt: GptConfig,
    #[serde(default)]
    pub pooling: Pooling,
    /// Ensemble size (1 = a single scorer).
    #[serde(default = "one")]
    pub members: usize,
}

fn one() -> usize {
    1
}

impl Default for ScorerConfig {
    fn default() -> Self {
        Self {
            gpt: GptConfig::default(),
            pooling: Pooling::default(),
            members: 1,
        }
    }
}

impl ScorerConfig {
    pub fn validate(&self) -> Result<(), ModelError> {
        check_range("members", self.members, 64)?;
        self.gpt.validate()
    }

    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<Scorer<B>, ModelError> {
        self.validate()?;
        let trunks = (0..self.members)
            .map(|_| self.gpt.init(device))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(self.with_trunks(trunks, device))
    }

    /// A scorer whose members start from the given (e.g. copy-trained) trunks, with fresh
    /// heads. Each trunk's parameters get their own identity, so copies of one trunk train
    /// apart (the optimiser and the gradients key parameters by id).
    pub fn with_trunks<B: Backend>(&self, trunks: Vec<Gpt<B>>, device: &B::Device) -> Scorer<B> {
        Scorer {
            members: trunks
                .into_iter()
                .map(|gpt| Member {
                    head: LinearConfig::new(self.gpt.d_model, 1).init(device),
                    gpt: gpt.map(&mut FreshParams),
                })
                .collect(),
            mean_pool: self.pooling == Pooling::Mean,
        }
    }
}

/// Gives every float parameter a new id and its own copy of the values.
struct FreshParams;

impl<B: Backend> ModuleMapper<B> for FreshParams {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (_, tensor, mapper) = param.consume();
        let grad = tensor.is_require_grad();
        let copy = Tensor::from_data(tensor.to_data(), &tensor.device()).set_require_grad(grad);
        Param::from_mapped_value(ParamId::new(), copy, mapper)
    }
}

#[derive(Module, Debug)]
pub struct Member<B: Backend> {
    pub gpt: Gpt<B>,
    pub head: Linear<B>,
}

#[derive(Module, Debug)]
pub struct Scorer<B: Backend> {
    pub members: Vec<Member<B>>,
    pub mean_pool: bool,
}

impl<B: Backend> Scorer<B> {
    pub fn n_ctx(&self) -> usize {
        self.members[0].gpt.n_ctx
    }

    /// Each member's scores [M, B] of right-padded rows `tokens` [B, T] whose real
    /// lengths are `lengths`.
    pub fn forward_members(
        &self,
        tokens: Tensor<B, 2, Int>,
        lengths: &[usize],
    ) -> Result<Tensor<B, 2>, ModelError> {
        let [b, t] = tokens.dims();
        if lengths.len() != b || lengths.iter().any(|&l| l == 0 || l > t) {
            return Err(invalid(
                "lengths",
                format!("{lengths:?}"),
                format!("{b} lengths in 1..={t}"),
            ));
        }
        let device = tokens.device();
        // Pooling weights [B, T, 1]: each row sums to 1 over the positions it reads.
        let mut w = vec![0f32; b * t];
        for (r, &len) in lengths.iter().enumerate() {
            if self.mean_pool {
                w[r * t..r * t + len].fill(1.0 / len as f32);
            } else {
                w[r * t + len - 1] = 1.0;
            }
        }
        let w =
            Tensor::<B, 2>::from_data(TensorData::new(w, [b, t]), &device).unsqueeze_dim::<3>(2);
        let mut scores = Vec::with_capacity(self.members.len());
        for m in &self.members {
            let h = m
                .gpt
                .forward_hidden(tokens.clone(), &mut m.gpt.new_cache(), false)?; // [B, T, D]
            let d = h.dims()[2];
            let pooled = (h * w.clone()).sum_dim(1).reshape([b, d]); // [B, D]
            scores.push(m.head.forward(pooled).reshape([1, b]));
        }
        Ok(Tensor::cat(scores, 0))
    }

    /// Scores [B]: the members' mean.
    pub fn forward(
        &self,
        tokens: Tensor<B, 2, Int>,
        lengths: &[usize],
    ) -> Result<Tensor<B, 1>, ModelError> {
        let s = self.forward_members(tokens, lengths)?; // [M, B]
        let b = s.dims()[1];
        Ok(s.mean_dim(0).reshape([b]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::B;

    fn tokens(rows: &[&[i64]], t: usize) -> Tensor<B, 2, Int> {
        let mut flat = vec![0i64; rows.len() * t];
        for (i, r) in rows.iter().enumerate() {
            flat[i * t..i * t + r.len()].copy_from_slice(r);
        }
        Tensor::from_data(TensorData::new(flat, [rows.len(), t]), &Default::default())
    }

    fn tiny_scorer(pooling: Pooling, members: usize) -> Scorer<B> {
        let gpt = GptConfig::preset("tiny").unwrap();
        let cfg = ScorerConfig {
            gpt,
            pooling,
            members,
        };
        cfg.init::<B>(&Default::default()).unwrap()
    }

    fn scores(s: Tensor<B, 1>) -> Vec<f32> {
        s.into_data().to_vec().unwrap()
    }

    /// A padded batch scores each row as that row alone would, for both poolings.
    #[test]
    fn padded_batch_equals_rows_alone() {
        for pooling in [Pooling::Last, Pooling::Mean] {
            let m = tiny_scorer(pooling, 2);
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
        let m = tiny_scorer(Pooling::Last, 1);
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
        assert_eq!(c.members, 1);
        assert!(serde_json::from_str::<ScorerConfig>(r#"{"pool": "mean"}"#).is_err());
        for (m, ok) in [(0, false), (1, true), (64, true), (65, false)] {
            let c = ScorerConfig {
                members: m,
                ..ScorerConfig::default()
            };
            assert_eq!(c.validate().is_ok(), ok, "members = {m}");
        }
    }

    /// Members built from one trunk share its values but not its parameters.
    #[test]
    fn members_from_one_trunk_are_separate_parameters() {
        let gpt_cfg = GptConfig::preset("tiny").unwrap();
        let cfg = ScorerConfig {
            gpt: gpt_cfg.clone(),
            pooling: Pooling::Last,
            members: 2,
        };
        // A trunk loaded from weights, as a warm start's is (a freshly built one is lazily
        // initialised, and each clone would draw its own values).
        let saved = gpt_cfg
            .init::<B>(&Default::default())
            .unwrap()
            .into_record();
        let trunk = gpt_cfg
            .init::<B>(&Default::default())
            .unwrap()
            .load_record(saved);
        let m = cfg.with_trunks(vec![trunk.clone(), trunk.clone()], &Default::default());
        let (a, b) = (&m.members[0].gpt.wte.weight, &m.members[1].gpt.wte.weight);
        assert_ne!(a.id, b.id);
        assert_ne!(a.id, trunk.wte.weight.id);
        let diff: f32 = (a.val() - trunk.wte.weight.val()).abs().max().into_scalar();
        assert_eq!(diff, 0.0);
    }

    /// The ensemble score is the mean of its members' scores, and members differ.
    #[test]
    fn ensemble_scores_are_the_members_mean() {
        let m = tiny_scorer(Pooling::Last, 3);
        let x: &[i64] = &[1, 2, 3];
        let y: &[i64] = &[4, 5];
        let per: Vec<f32> = m
            .forward_members(tokens(&[x, y], 3), &[3, 2])
            .unwrap()
            .into_data()
            .to_vec()
            .unwrap(); // [3, 2] row-major
        let mean = scores(m.forward(tokens(&[x, y], 3), &[3, 2]).unwrap());
        for col in 0..2 {
            let want = (per[col] + per[2 + col] + per[4 + col]) / 3.0;
            assert!((mean[col] - want).abs() < 1e-6);
        }
        assert!(
            (per[0] - per[2]).abs() > 1e-6,
            "members start from different weights"
        );
    }
}
