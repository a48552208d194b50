//! What a language-model or copy run is: its config (`task = "lm"` / `"copy"`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vitrine_data::copy::CopyCorpusConfig;
use vitrine_models::gpt::GptConfig;

use super::params::{GenerateLimits, GenerateParams};
use crate::config::{
    absolutize_in, resolve_init_path, LoopConfig, RunConfig, TrainExtras, TrainSection,
};
use crate::error::{InferError, Result};
use crate::pretrained::pretrained_tokenizer;
use crate::schedule::Schedule;
use crate::tokenizer::TokenizerSource;

/// Where the text comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "format", rename_all = "kebab-case", deny_unknown_fields)]
pub enum LmData {
    /// One text file; its last `valid_fraction` (by characters) is the validation split,
    /// as nanoGPT splits Shakespeare (0.1).
    Text { path: PathBuf, valid_fraction: f64 },
    /// Copy lines with briefs: a training and a validation corpus.
    Copy {
        train: CopyCorpusConfig,
        valid: CopyCorpusConfig,
    },
}

/// The language-model task's own `[train]` fields (the loop's are in [`LoopConfig`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LmTrain {
    /// Batches per epoch for text windows (copy corpora: one pass over the lines).
    pub steps_per_epoch: usize,
    /// Tokens per training window (text); at most the model's `n_ctx`.
    pub block_size: usize,
    /// Validation batches averaged for the per-epoch estimate on text windows.
    pub eval_batches: usize,
}

impl Default for LmTrain {
    fn default() -> Self {
        Self {
            steps_per_epoch: 200,
            block_size: 64,
            eval_batches: 20,
        }
    }
}

impl TrainExtras for LmTrain {
    fn loop_defaults() -> LoopConfig {
        LoopConfig {
            epochs: 10,
            batch_size: 12,
            schedule: Schedule::default(),
            weight_decay: 0.1,
            beta_1: 0.9,
            beta_2: 0.99,
            epsilon: crate::config::DEFAULT_EPSILON,
            grad_clip: 1.0,
            checkpoint_every_steps: 0,
            log_every_steps: 100,
        }
    }
}

/// What `vitrine eval copy` generates for the validation briefs: the parameters of
/// `vitrine generate` (their keywords and tone come from each brief).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CopyEvalConfig {
    /// Validation lines whose briefs are generated for (0 = perplexity only).
    pub briefs: usize,
    #[serde(flatten)]
    pub generate: GenerateParams,
}

impl Default for CopyEvalConfig {
    fn default() -> Self {
        Self {
            briefs: 100,
            generate: GenerateParams::default(),
        }
    }
}

/// A language-model run (`task = "lm"`) or a copy-generation run (`task = "copy"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LmRunConfig {
    pub task: String,
    #[serde(default)]
    pub seed: u64,
    pub data: LmData,
    pub tokenizer: TokenizerSource,
    /// Fine-tune from a pretrained GPT-2: a Hugging Face folder or `hf:<repo>[@revision]`.
    /// The architecture (`[model]`) then comes from its `config.json`; the tokenizer must
    /// be `kind = "pretrained"` (its own) or a file compatible with it.
    #[serde(default)]
    pub init: Option<String>,
    #[serde(default)]
    pub model: GptConfig,
    #[serde(default)]
    pub train: TrainSection<LmTrain>,
    #[serde(default)]
    pub generate: GenerateLimits,
    #[serde(default)]
    pub eval: CopyEvalConfig,
}

impl LmRunConfig {
    pub fn is_copy(&self) -> bool {
        matches!(self.data, LmData::Copy { .. })
    }

    /// Whether the copy corpus has a tone column (so briefs may name a tone).
    pub fn has_tone(&self) -> bool {
        matches!(&self.data, LmData::Copy { train, .. } if train.tone_column.is_some())
    }

    /// With `init`: the pretrained model's folder, and the config with its architecture
    /// and tokenizer filled in (a new run's first step).
    pub fn apply_init(&mut self) -> Result<Option<PathBuf>> {
        let Some(spec) = &self.init else {
            return Ok(None);
        };
        let dir = vitrine_models::hf::resolve(spec)?;
        self.model = GptConfig::from_hf(&vitrine_models::hf::HfConfig::read(&dir)?)?;
        if matches!(self.tokenizer, TokenizerSource::Pretrained) {
            self.tokenizer = TokenizerSource::File {
                path: pretrained_tokenizer(&dir)?,
            };
        }
        Ok(Some(dir))
    }
}

impl RunConfig for LmRunConfig {
    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(InferError::Invalid(m));
        match (self.task.as_str(), &self.data) {
            ("lm", LmData::Text { valid_fraction, .. }) => {
                if !(0.0..0.5).contains(valid_fraction) || *valid_fraction == 0.0 {
                    return bad(format!(
                        "data.valid_fraction = {valid_fraction} (allowed 0 < f < 0.5)"
                    ));
                }
            }
            ("copy", LmData::Copy { .. }) => {}
            (task, _) => {
                return bad(format!(
                    "task = {task:?} with data.format = {}: use task \"lm\" with format \"text\", or task \"copy\" with format \"copy\"",
                    match self.data {
                        LmData::Text { .. } => "\"text\"",
                        LmData::Copy { .. } => "\"copy\"",
                    }
                ))
            }
        }
        match (&self.init, &self.tokenizer) {
            (None, TokenizerSource::Pretrained) => {
                return bad("tokenizer.kind = \"pretrained\" needs init = \"<folder or hf:repo>\"".into())
            }
            (Some(init), TokenizerSource::Char | TokenizerSource::Bpe { .. }) => {
                return bad(format!(
                    "init = {init:?} with a newly trained tokenizer: the pretrained embeddings would mean nothing; use tokenizer.kind = \"pretrained\""
                ))
            }
            _ => {}
        }
        if self.is_copy() && matches!(self.tokenizer, TokenizerSource::Char) {
            return bad("tokenizer.kind = \"char\" cannot hold the brief markers of a copy run: use \"bpe\" or \"file\"".into());
        }
        self.model.validate()?;
        self.train.fit.validate()?;
        let t = &self.train.task;
        if t.block_size < 1 || t.block_size > self.model.n_ctx {
            return bad(format!(
                "train.block_size = {} (allowed 1..=model.n_ctx = {})",
                t.block_size, self.model.n_ctx
            ));
        }
        if !self.is_copy() && (t.steps_per_epoch == 0 || t.steps_per_epoch > 10_000_000) {
            return bad(format!(
                "train.steps_per_epoch = {} (allowed 1..=10000000)",
                t.steps_per_epoch
            ));
        }
        self.generate.validate()?;
        if !self.eval.generate.keywords.is_empty() || self.eval.generate.tone.is_some() {
            return bad("eval.keywords / eval.tone: the briefs of `vitrine eval copy` come from the validation lines".into());
        }
        Ok(())
    }

    fn fit(&self) -> (&LoopConfig, u64) {
        (&self.train.fit, self.seed)
    }

    fn resolve_paths(&mut self, base: &Path) {
        match &mut self.data {
            LmData::Text { path, .. } => absolutize_in(base, path),
            LmData::Copy { train, valid } => {
                absolutize_in(base, &mut train.csv);
                absolutize_in(base, &mut valid.csv);
            }
        }
        self.tokenizer.resolve_paths(base);
        resolve_init_path(&mut self.init, base);
        if let Some(p) = &mut self.generate.lexicon_extra {
            absolutize_in(base, p);
        }
    }

    fn vocab_size_mut(&mut self) -> Option<(&'static str, &mut usize)> {
        Some(("model.vocab_size", &mut self.model.vocab_size))
    }
}
