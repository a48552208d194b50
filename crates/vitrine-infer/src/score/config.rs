//! What a click-through scorer run is: its config (`task = "score"`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vitrine_data::ctr::{AbTestsConfig, PairRule};
use vitrine_models::scorer::{ScorerConfig, TrunkKind};

use crate::config::{absolutize_in, check_task, LoopConfig, RunConfig, TrainExtras, TrainSection};
use crate::error::{InferError, Result};
use crate::run::TaskKind;
use crate::schedule::Schedule;
use crate::sentence::TextLimits;
use crate::tokenizer::TokenizerSource;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreData {
    pub train: AbTestsConfig,
    pub valid: AbTestsConfig,
}

/// The scorer's own `[train]` fields (the loop's are in [`LoopConfig`]; `batch_size`
/// counts A/B tests, all their pairs go in).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScoreTrain {
    /// Share of the training tests held out to pick the best epoch (0 = keep the last).
    pub dev_fraction: f64,
    /// How the heads start: `random`, or `frozen-lr` (a logistic regression on the
    /// pretrained trunk's frozen embeddings, fitted on the training pairs, its L2 strength
    /// chosen on the dev split) so fine-tuning starts from the frozen baseline.
    pub head_init: HeadInit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HeadInit {
    #[default]
    Random,
    FrozenLr,
}

impl Default for ScoreTrain {
    fn default() -> Self {
        Self {
            dev_fraction: 0.1,
            head_init: HeadInit::Random,
        }
    }
}

impl TrainExtras for ScoreTrain {
    fn loop_defaults() -> LoopConfig {
        LoopConfig {
            epochs: 6,
            batch_size: 16,
            schedule: Schedule {
                lr: 3e-4,
                min_lr: 3e-5,
                warmup_steps: 50,
                decay_steps: 0,
            },
            weight_decay: 0.1,
            beta_1: 0.9,
            beta_2: 0.99,
            epsilon: crate::config::DEFAULT_EPSILON,
            grad_clip: 1.0,
            checkpoint_every_steps: 0,
            log_every_steps: 50,
        }
    }
}

/// Limits of `vitrine score` and of ranking in `vitrine generate --rank-with`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScoreLimits {
    /// Most lines in one request.
    pub max_lines: usize,
    /// Longest line, in characters.
    pub max_chars: usize,
    /// Lines scored per forward pass.
    pub batch_size: usize,
}

impl Default for ScoreLimits {
    fn default() -> Self {
        Self {
            max_lines: 10_000,
            max_chars: 500,
            batch_size: 64,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScoreEvalConfig {
    /// Seed of the random baseline.
    pub random_seed: u64,
}

impl Default for ScoreEvalConfig {
    fn default() -> Self {
        Self { random_seed: 1 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreRunConfig {
    pub task: String,
    #[serde(default)]
    pub seed: u64,
    pub data: ScoreData,
    #[serde(default)]
    pub pairs: PairRule,
    /// Required unless `init` gives the tokenizer.
    #[serde(default)]
    pub tokenizer: Option<TokenizerSource>,
    /// What the trunk starts from: a copy run (its tokenizer, trunk size and weights) for
    /// `model.trunk = "gpt"`; a BERT-family model folder or `hf:<repo>` (its tokenizer,
    /// `config.json` and weights) for `model.trunk = "bert"`.
    #[serde(default)]
    pub init: Option<PathBuf>,
    /// Token limit of a BERT trunk's rows (training cuts or refuses as it says, and so does
    /// scoring).
    #[serde(default)]
    pub text: TextLimits,
    #[serde(default)]
    pub model: ScorerConfig,
    #[serde(default)]
    pub train: TrainSection<ScoreTrain>,
    #[serde(default)]
    pub limits: ScoreLimits,
    #[serde(default)]
    pub eval: ScoreEvalConfig,
}

impl RunConfig for ScoreRunConfig {
    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(InferError::Invalid(m));
        check_task(&self.task, TaskKind::Score)?;
        if self.tokenizer.is_none() && self.init.is_none() {
            return bad("give [tokenizer] (e.g. kind = \"bpe\") or init = \"<copy run>\"".into());
        }
        if matches!(self.tokenizer, Some(TokenizerSource::Char)) {
            return bad("tokenizer.kind = \"char\" cannot hold the special tokens a scorer reads: use \"bpe\" or \"file\"".into());
        }
        self.pairs.validate().map_err(InferError::Invalid)?;
        if self.model.trunk == TrunkKind::Bert {
            if self.init.is_none() && self.model.bert.is_none() {
                return bad(
                    "model.trunk = \"bert\" needs init = \"<BERT model folder or hf:repo>\"".into(),
                );
            }
            self.text
                .validate()
                .map_err(|e| InferError::Invalid(format!("text.{e}")))?;
        } else if self.train.task.head_init == HeadInit::FrozenLr {
            return bad(
                "train.head_init = \"frozen-lr\" needs a pretrained trunk (model.trunk = \"bert\")"
                    .into(),
            );
        }
        if self.model.trunk == TrunkKind::Gpt || self.model.bert.is_some() {
            self.model.validate()?;
        }
        self.train.fit.validate()?;
        let t = &self.train.task;
        if !(0.0..0.5).contains(&t.dev_fraction) {
            return bad(format!(
                "train.dev_fraction = {} (allowed 0 <= f < 0.5)",
                t.dev_fraction
            ));
        }
        let l = &self.limits;
        for (name, v, hi) in [
            ("limits.max_lines", l.max_lines, 10_000_000),
            ("limits.max_chars", l.max_chars, 1_000_000),
            ("limits.batch_size", l.batch_size, 65_536),
        ] {
            if v == 0 || v > hi {
                return bad(format!("{name} = {v} (allowed 1..={hi})"));
            }
        }
        Ok(())
    }

    fn fit(&self) -> (&LoopConfig, u64) {
        (&self.train.fit, self.seed)
    }

    fn resolve_paths(&mut self, base: &Path) {
        absolutize_in(base, &mut self.data.train.csv);
        absolutize_in(base, &mut self.data.valid.csv);
        if let Some(t) = &mut self.tokenizer {
            t.resolve_paths(base);
        }
        if let Some(init) = &mut self.init {
            if !init.to_string_lossy().starts_with("hf:") {
                absolutize_in(base, init);
            }
        }
    }

    /// The GPT trunk's vocabulary is the tokenizer's; a BERT trunk's is its checkpoint's.
    fn vocab_size_mut(&mut self) -> Option<(&'static str, &mut usize)> {
        match self.model.trunk {
            TrunkKind::Gpt => Some(("model.gpt.vocab_size", &mut self.model.gpt.vocab_size)),
            TrunkKind::Bert => None,
        }
    }

    fn embedding_rows(&self) -> Option<usize> {
        match (self.model.trunk, &self.model.bert) {
            (TrunkKind::Bert, Some(b)) => Some(b.vocab_size),
            _ => None,
        }
    }
}
