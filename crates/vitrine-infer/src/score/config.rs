//! What a click-through scorer run is: its config (`task = "score"`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vitrine_data::ctr::{AbTestsConfig, PairRule};
use vitrine_models::scorer::ScorerConfig;

use crate::config::{absolutize_in, check_task, LoopConfig, RunConfig, TrainExtras, TrainSection};
use crate::error::{InferError, Result};
use crate::run::TaskKind;
use crate::schedule::Schedule;
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
}

impl Default for ScoreTrain {
    fn default() -> Self {
        Self { dev_fraction: 0.1 }
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
    /// A copy run whose tokenizer, trunk size and weights the scorer starts from.
    #[serde(default)]
    pub init: Option<PathBuf>,
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
        self.model.validate()?;
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
            absolutize_in(base, init);
        }
    }

    fn vocab_size_mut(&mut self) -> Option<(&'static str, &mut usize)> {
        Some(("model.gpt.vocab_size", &mut self.model.gpt.vocab_size))
    }
}
