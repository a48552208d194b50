//! Click-through scorer: a text trunk with a scalar head. The trunk is our GPT decoder
//! (trained from scratch or warm-started from a copy run) or a pretrained BERT-family
//! sentence encoder (e.g. all-MiniLM-L6-v2, which knows English).
//!
//! ```text
//! tokens [B, T] (int), lengths (≤ T, right padding)
//! for each of M members:
//!   gpt:  forward_hidden (causal, ln_f)          [B, T, D]
//!         pool: last real token | mean of real   [B, D]
//!   bert: embed (its own pooling, normalised)    [B, D]
//!   head (Linear D -> 1) × head_lr_scale         [B]
//! member scores                                  [M, B]
//! score = mean over members                      [B]
//! ```
//!
//! `head_lr_scale` gives the head its own learning rate under Adam-type optimisers, whose
//! steps do not depend on the gradient's scale: the head is stored divided by the scale
//! and multiplied back in `forward`, so each step moves its effective weights `scale`
//! times as far as the trunk's (the trunk at 2e-5 and the head at 1e-4 is scale 5).
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

use crate::bert::{Bert, BertConfig};
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

/// Which text model the scorer reads headlines with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrunkKind {
    /// Our GPT decoder (`[model.gpt]`).
    #[default]
    Gpt,
    /// A BERT-family encoder (`[model.bert]`, filled from the `init` model folder).
    Bert,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScorerConfig {
    #[serde(default)]
    pub trunk: TrunkKind,
    /// The GPT trunk (same presets and fields as a copy model's `[model]`).
    #[serde(default)]
    pub gpt: GptConfig,
    /// The BERT trunk's architecture; written from the init folder's `config.json`.
    #[serde(default)]
    pub bert: Option<BertConfig>,
    /// Pooling of the GPT trunk (a BERT trunk pools as its folder says).
    #[serde(default)]
    pub pooling: Pooling,
    /// Ensemble size (1 = a single scorer).
    #[serde(default = "one")]
    pub members: usize,
    /// The head's learning rate relative to the trunk's (see the module docs).
    #[serde(default = "one_f64")]
    pub head_lr_scale: f64,
}

fn one() -> usize {
    1
}

fn one_f64() -> f64 {
    1.0
}

impl Default for ScorerConfig {
    fn default() -> Self {
        Self {
            trunk: TrunkKind::Gpt,
            gpt: GptConfig::default(),
            bert: None,
            pooling: Pooling::default(),
            members: 1,
            head_lr_scale: 1.0,
        }
    }
}

/// One member's trunk, before it joins a scorer.
#[derive(Debug, Clone)]
pub enum Trunk<B: Backend> {
    Gpt(Gpt<B>),
    Bert(Bert<B>),
}

impl ScorerConfig {
    pub fn validate(&self) -> Result<(), ModelError> {
        check_range("members", self.members, 64)?;
        if !(self.head_lr_scale.is_finite() && (1e-3..=1e4).contains(&self.head_lr_scale)) {
            return Err(invalid("head_lr_scale", self.head_lr_scale, "1e-3..=1e4"));
        }
        match self.trunk {
            TrunkKind::Gpt => self.gpt.validate(),
            TrunkKind::Bert => self.bert_config()?.validate(),
        }
    }

    fn bert_config(&self) -> Result<&BertConfig, ModelError> {
        self.bert.as_ref().ok_or_else(|| {
            invalid(
                "bert",
                "none",
                "a [model.bert] section (training fills it from init = <BERT folder>)",
            )
        })
    }

    /// Width of the trunk's pooled output.
    pub fn d_model(&self) -> usize {
        match (self.trunk, &self.bert) {
            (TrunkKind::Bert, Some(b)) => b.d_model,
            _ => self.gpt.d_model,
        }
    }

    /// Longest row in tokens.
    pub fn n_ctx(&self) -> usize {
        match (self.trunk, &self.bert) {
            (TrunkKind::Bert, Some(b)) => b.max_positions,
            _ => self.gpt.n_ctx,
        }
    }

    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<Scorer<B>, ModelError> {
        self.validate()?;
        let trunks = (0..self.members)
            .map(|_| match self.trunk {
                TrunkKind::Gpt => self.gpt.init(device).map(Trunk::Gpt),
                TrunkKind::Bert => self.bert_config()?.init(device).map(Trunk::Bert),
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.with_trunks(trunks, device)
    }

    /// A scorer whose members start from the given (e.g. copy-trained or pretrained)
    /// trunks, with fresh heads. Each trunk's parameters get their own identity, so copies
    /// of one trunk train apart (the optimiser and the gradients key parameters by id).
    pub fn with_trunks<B: Backend>(
        &self,
        trunks: Vec<Trunk<B>>,
        device: &B::Device,
    ) -> Result<Scorer<B>, ModelError> {
        let scale = self.head_lr_scale as f32;
        let members = trunks
            .into_iter()
            .map(|trunk| {
                let (gpt, bert) = match (trunk, self.trunk) {
                    (Trunk::Gpt(g), TrunkKind::Gpt) => (Some(g.map(&mut FreshParams)), None),
                    (Trunk::Bert(b), TrunkKind::Bert) => (None, Some(b.map(&mut FreshParams))),
                    _ => {
                        return Err(invalid(
                            "trunk",
                            format!("{:?}", self.trunk),
                            "the kind of the trunks given",
                        ))
                    }
                };
                let mut head = LinearConfig::new(self.d_model(), 1).init(device);
                // Stored divided by the scale, so the effective initial head is the usual one.
                head.weight = head.weight.map(|w| w.div_scalar(scale));
                Ok(Member { gpt, bert, head })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Scorer {
            members,
            mean_pool: self.pooling == Pooling::Mean,
            head_scale: scale,
        })
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

/// One ensemble member: exactly one of `gpt` and `bert` is present. (Runs saved before
/// BERT trunks existed hold a plain `gpt`, which loads as `Some`.)
#[derive(Module, Debug)]
pub struct Member<B: Backend> {
    pub gpt: Option<Gpt<B>>,
    pub bert: Option<Bert<B>>,
    pub head: Linear<B>,
}

impl<B: Backend> Member<B> {
    /// Pooled trunk output [B, D] of rows `tokens` [B, T] with real `lengths`; `w` holds the
    /// GPT pooling weights [B, T, 1].
    fn pooled(
        &self,
        tokens: Tensor<B, 2, Int>,
        lengths: &[usize],
        w: &Tensor<B, 3>,
    ) -> Result<Tensor<B, 2>, ModelError> {
        match (&self.gpt, &self.bert) {
            (Some(gpt), _) => {
                let [b, _] = tokens.dims();
                let h = gpt.forward_hidden(tokens, &mut gpt.new_cache(), false)?; // [B, T, D]
                let d = h.dims()[2];
                Ok((h * w.clone()).sum_dim(1).reshape([b, d]))
            }
            (None, Some(bert)) => bert.embed(tokens, lengths),
            (None, None) => Err(invalid("trunk", "none", "a gpt or bert trunk")),
        }
    }
}

#[derive(Module, Debug)]
pub struct Scorer<B: Backend> {
    pub members: Vec<Member<B>>,
    pub mean_pool: bool,
    /// `head_lr_scale`: the head's output is multiplied by it.
    pub head_scale: f32,
}

impl<B: Backend> Scorer<B> {
    pub fn n_ctx(&self) -> usize {
        let m = &self.members[0];
        match (&m.gpt, &m.bert) {
            (Some(g), _) => g.n_ctx,
            (None, Some(b)) => b.max_positions(),
            (None, None) => 0,
        }
    }

    /// Sets every member's head to the effective weights `w` [D] and bias `b` (e.g. a
    /// logistic regression fitted on frozen embeddings).
    pub fn set_heads(&mut self, w: &[f32], b: f32) -> Result<(), ModelError> {
        let scale = self.head_scale;
        for m in &mut self.members {
            let [d, _] = m.head.weight.dims();
            if w.len() != d {
                return Err(ModelError::InputShape {
                    got: vec![w.len()],
                    expected: vec![d],
                });
            }
            let device = m.head.weight.device();
            let stored: Vec<f32> = w.iter().map(|x| x / scale).collect();
            let weight = Tensor::<B, 2>::from_data(TensorData::new(stored, [d, 1]), &device);
            m.head.weight = Param::initialized(ParamId::new(), weight.require_grad());
            if let Some(bias) = &mut m.head.bias {
                let v = Tensor::<B, 1>::from_data(TensorData::new(vec![b / scale], [1]), &device);
                *bias = Param::initialized(ParamId::new(), v.require_grad());
            }
        }
        Ok(())
    }

    /// Pooling weights [B, T, 1] of right-padded rows `tokens` [B, T] whose real lengths
    /// are `lengths`: each row sums to 1 over the positions it reads (all of them for mean
    /// pooling, the last for last-token pooling).
    fn pool_weights(
        &self,
        tokens: &Tensor<B, 2, Int>,
        lengths: &[usize],
    ) -> Result<Tensor<B, 3>, ModelError> {
        let [b, t] = tokens.dims();
        if lengths.len() != b || lengths.iter().any(|&l| l == 0 || l > t) {
            return Err(invalid(
                "lengths",
                format!("{lengths:?}"),
                format!("{b} lengths in 1..={t}"),
            ));
        }
        let mut w = vec![0f32; b * t];
        for (r, &len) in lengths.iter().enumerate() {
            if self.mean_pool {
                w[r * t..r * t + len].fill(1.0 / len as f32);
            } else {
                w[r * t + len - 1] = 1.0;
            }
        }
        Ok(
            Tensor::<B, 2>::from_data(TensorData::new(w, [b, t]), &tokens.device())
                .unsqueeze_dim(2),
        )
    }

    /// Member `m`'s scores [B] given the pooling weights `w` [B, T, 1].
    fn member_scores(
        &self,
        m: &Member<B>,
        tokens: Tensor<B, 2, Int>,
        lengths: &[usize],
        w: &Tensor<B, 3>,
    ) -> Result<Tensor<B, 1>, ModelError> {
        let b = lengths.len();
        let pooled = m.pooled(tokens, lengths, w)?; // [B, D]
        let s = m.head.forward(pooled).reshape([b]);
        Ok(if self.head_scale == 1.0 {
            s
        } else {
            s.mul_scalar(self.head_scale)
        })
    }

    /// Each member's scores [M, B] of right-padded rows `tokens` [B, T] whose real
    /// lengths are `lengths`.
    pub fn forward_members(
        &self,
        tokens: Tensor<B, 2, Int>,
        lengths: &[usize],
    ) -> Result<Tensor<B, 2>, ModelError> {
        let w = self.pool_weights(&tokens, lengths)?;
        let b = lengths.len();
        let mut scores = Vec::with_capacity(self.members.len());
        for m in &self.members {
            let s = self.member_scores(m, tokens.clone(), lengths, &w)?;
            scores.push(s.reshape([1, b]));
        }
        Ok(Tensor::cat(scores, 0))
    }

    /// Member `member`'s scores [B] alone (training gives each member its own batches).
    pub fn forward_member(
        &self,
        member: usize,
        tokens: Tensor<B, 2, Int>,
        lengths: &[usize],
    ) -> Result<Tensor<B, 1>, ModelError> {
        let Some(m) = self.members.get(member) else {
            return Err(invalid(
                "member",
                member.to_string(),
                format!("a member index below {}", self.members.len()),
            ));
        };
        let w = self.pool_weights(&tokens, lengths)?;
        self.member_scores(m, tokens, lengths, &w)
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

    pub(super) fn tokens(rows: &[&[i64]], t: usize) -> Tensor<B, 2, Int> {
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
            ..ScorerConfig::default()
        };
        cfg.init::<B>(&Default::default()).unwrap()
    }

    pub(super) fn scores(s: Tensor<B, 1>) -> Vec<f32> {
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
            ..ScorerConfig::default()
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
        let m = cfg
            .with_trunks(
                vec![Trunk::Gpt(trunk.clone()), Trunk::Gpt(trunk.clone())],
                &Default::default(),
            )
            .unwrap();
        let gpt = |i: usize| m.members[i].gpt.as_ref().unwrap();
        let (a, b) = (&gpt(0).wte.weight, &gpt(1).wte.weight);
        assert_ne!(a.id, b.id);
        assert_ne!(a.id, trunk.wte.weight.id);
        let diff: f32 = (a.val() - trunk.wte.weight.val()).abs().max().into_scalar();
        assert_eq!(diff, 0.0);
    }

    /// Two rows, [1, 2, 3] and [4, 5], padded to 3 tokens: (tokens, lengths).
    fn two_rows() -> (Tensor<B, 2, Int>, [usize; 2]) {
        let (x, y): (&[i64], &[i64]) = (&[1, 2, 3], &[4, 5]);
        (tokens(&[x, y], 3), [3, 2])
    }

    /// Every member's scores of [`two_rows`], [M, 2] row-major.
    fn member_scores(m: &Scorer<B>) -> Vec<f32> {
        let (toks, lengths) = two_rows();
        let per = m.forward_members(toks, &lengths).unwrap();
        per.into_data().to_vec().unwrap()
    }

    /// The ensemble score is the mean of its members' scores, and members differ.
    #[test]
    fn ensemble_scores_are_the_members_mean() {
        let m = tiny_scorer(Pooling::Last, 3);
        let x: &[i64] = &[1, 2, 3];
        let y: &[i64] = &[4, 5];
        let per = member_scores(&m);
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

    /// One member scored alone gives its row of `forward_members`; an index past the last
    /// member is an error, not a panic.
    #[test]
    fn one_member_alone_matches_its_row() {
        let m = tiny_scorer(Pooling::Mean, 3);
        let per = member_scores(&m);
        for member in 0..3 {
            let (toks, lengths) = two_rows();
            let alone = scores(m.forward_member(member, toks, &lengths).unwrap());
            for col in 0..2 {
                assert!((alone[col] - per[member * 2 + col]).abs() < 1e-6);
            }
        }
        let (toks, lengths) = two_rows();
        let err = m.forward_member(3, toks, &lengths).unwrap_err();
        assert!(err.to_string().contains("member"), "{err}");
        let (toks, _) = two_rows();
        assert!(m.forward_member(0, toks, &[3, 4]).is_err());
    }
}

#[cfg(test)]
mod bert_trunk_tests {
    use super::tests::{scores, tokens};
    use super::*;
    use crate::testing::B;

    fn bert_scorer(members: usize, head_lr_scale: f64) -> Scorer<B> {
        // The `tiny` preset is mean-pooled, normalised, erf-GELU and without dropout.
        let bert = BertConfig {
            vocab_size: 40,
            max_positions: 12,
            d_model: 8,
            n_layers: 1,
            n_heads: 2,
            mlp_ratio: 2,
            ..BertConfig::preset("tiny").unwrap()
        };
        ScorerConfig {
            trunk: TrunkKind::Bert,
            bert: Some(bert),
            members,
            head_lr_scale,
            ..ScorerConfig::default()
        }
        .init::<B>(&Default::default())
        .unwrap()
    }

    /// Right padding leaves a BERT-trunk score unchanged; the context is the model's positions.
    #[test]
    fn bert_trunk_scores_padded_rows_as_alone() {
        let m = bert_scorer(2, 1.0);
        assert_eq!(m.n_ctx(), 12);
        let a: &[i64] = &[1, 5, 6, 7, 2];
        let b: &[i64] = &[1, 9, 2];
        let both = scores(m.forward(tokens(&[a, b], 5), &[5, 3]).unwrap());
        let alone = scores(m.forward(tokens(&[b], 3), &[3]).unwrap());
        assert!((both[1] - alone[0]).abs() < 1e-5);
        assert!((both[0] - both[1]).abs() > 1e-6);
        let long = vec![3i64; 13];
        assert!(m.forward(tokens(&[&long], 13), &[13]).is_err());
    }

    /// `set_heads` takes effective weights: the score is w · embedding + b whatever the
    /// head's learning-rate scale.
    #[test]
    fn set_heads_gives_the_same_scores_at_any_scale() {
        let row: &[i64] = &[1, 4, 8, 2];
        let w: Vec<f32> = (0..8).map(|i| 0.1 * i as f32 - 0.3).collect();
        let mut got = Vec::new();
        for scale in [1.0, 5.0] {
            let mut m = bert_scorer(1, scale);
            m.set_heads(&w, 0.25).unwrap();
            let bert = m.members[0].bert.as_ref().unwrap();
            let e: Vec<f32> = bert
                .embed(tokens(&[row], 4), &[4])
                .unwrap()
                .into_data()
                .to_vec()
                .unwrap();
            let want = e.iter().zip(&w).map(|(x, y)| x * y).sum::<f32>() + 0.25;
            let s = scores(m.forward(tokens(&[row], 4), &[4]).unwrap())[0];
            assert!((s - want).abs() < 1e-5, "scale {scale}: {s} vs {want}");
            got.push(
                m.members[0]
                    .head
                    .weight
                    .val()
                    .into_data()
                    .to_vec::<f32>()
                    .unwrap()[1],
            );
            assert!(m.set_heads(&w[..7], 0.0).is_err());
        }
        // Stored weights are divided by the scale.
        assert!((got[0] / got[1] - 5.0).abs() < 1e-4);
    }

    #[test]
    fn a_bert_trunk_needs_its_config_and_a_sane_head_scale() {
        let c = ScorerConfig {
            trunk: TrunkKind::Bert,
            ..ScorerConfig::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("[model.bert]"));
        for (s, ok) in [
            (1e-3, true),
            (1e4, true),
            (0.0, false),
            (1.1e4, false),
            (f64::NAN, false),
        ] {
            let c = ScorerConfig {
                head_lr_scale: s,
                ..ScorerConfig::default()
            };
            assert_eq!(c.validate().is_ok(), ok, "head_lr_scale = {s}");
        }
    }
}
