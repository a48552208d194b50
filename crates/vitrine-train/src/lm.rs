//! Causal language-model training for the GPT decoder: plain text (the Shakespeare
//! benchmark, random windows as in nanoGPT) and copy corpora (one brief-conditioned example
//! per line, right-padded, padding masked out of the loss). Both go through the shared
//! [`fit`] loop.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use burn::module::AutodiffModule;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use rand::seq::SliceRandom;
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use vitrine_data::copy::{
    normalize, read_copy_corpus, Brief, CopyCorpusConfig, CopyLine, KeywordCase, KeywordExtractor,
    SPECIAL_TOKENS,
};
use vitrine_data::fsio::atomic_save;
use vitrine_data::text::{Tokenizer, EOS};
use vitrine_models::gpt::{Gpt, GptConfig};

use crate::config::absolutize;
use crate::dist::Shard;
use crate::error::{io_err, Result, TrainError};
use crate::run::{save_module, RunDir};
use crate::schedule::Schedule;
use crate::search::mix;
use crate::trainer::{fit, FitOptions, FitSummary, LoopConfig, Task};

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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum TokenizerSource {
    /// One token per character of the training text.
    Char,
    /// Byte-level BPE trained on the training text.
    Bpe { vocab_size: usize },
    /// A `tokenizer.json` (ours or Hugging Face's).
    File { path: PathBuf },
    /// The `tokenizer.json` of the pretrained model named by the run's `init`.
    Pretrained,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LmTrainConfig {
    pub epochs: usize,
    /// Batches per epoch for text windows (copy corpora: one pass over the lines).
    pub steps_per_epoch: usize,
    pub batch_size: usize,
    /// Tokens per training window (text); at most the model's `n_ctx`.
    pub block_size: usize,
    pub schedule: Schedule,
    pub weight_decay: f64,
    pub beta_1: f64,
    pub beta_2: f64,
    pub grad_clip: f64,
    /// Validation batches averaged for the per-epoch estimate on text windows.
    pub eval_batches: usize,
    pub checkpoint_every_steps: usize,
    pub log_every_steps: usize,
}

impl Default for LmTrainConfig {
    fn default() -> Self {
        Self {
            epochs: 10,
            steps_per_epoch: 200,
            batch_size: 12,
            block_size: 64,
            schedule: Schedule::default(),
            weight_decay: 0.1,
            beta_1: 0.9,
            beta_2: 0.99,
            grad_clip: 1.0,
            eval_batches: 20,
            checkpoint_every_steps: 0,
            log_every_steps: 100,
        }
    }
}

/// Every limit of `vitrine generate` (and of the server's generate endpoint).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GenerateLimits {
    /// Largest `n` (candidates returned) a request may ask for.
    pub max_n: usize,
    /// Largest `max_chars` a request may ask for.
    pub max_chars: usize,
    /// Most characters of keywords + tone in a brief.
    pub max_brief_chars: usize,
    /// Candidates sampled per batch.
    pub batch_size: usize,
    /// At most this many candidates are sampled per requested one before giving up.
    pub budget_factor: usize,
    /// Tokens generated per candidate at most (also bounded by the context).
    pub max_new_tokens: usize,
    /// Most `--stop` strings.
    pub max_stop: usize,
    /// How user keywords are cased in the prompt (`auto`: decided from the corpus at
    /// training time and saved resolved).
    pub keyword_case: KeywordCase,
    /// Default logit bonus for the first token of a keyword the line has not used yet
    /// (0 = off); once a keyword is started, its remaining tokens are forced.
    pub keyword_boost: f64,
    /// Largest keyword boost a request may ask for.
    pub max_keyword_boost: f64,
}

impl Default for GenerateLimits {
    fn default() -> Self {
        Self {
            max_n: 64,
            max_chars: 1000,
            max_brief_chars: 2000,
            batch_size: 16,
            budget_factor: 8,
            max_new_tokens: 64,
            max_stop: 8,
            keyword_case: KeywordCase::Auto,
            keyword_boost: 8.0,
            max_keyword_boost: 20.0,
        }
    }
}

/// Sampling used by `vitrine eval copy` on the validation briefs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CopyEvalConfig {
    /// Validation lines whose briefs are generated for (0 = perplexity only).
    pub briefs: usize,
    pub n: usize,
    pub max_chars: usize,
    pub temperature: f64,
    pub top_k: usize,
    pub top_p: f64,
    pub repetition_penalty: f64,
    pub seed: u64,
    /// None = `generate.keyword_boost`.
    pub keyword_boost: Option<f64>,
}

impl Default for CopyEvalConfig {
    fn default() -> Self {
        Self {
            briefs: 100,
            n: 5,
            max_chars: 120,
            temperature: 0.8,
            top_k: 50,
            top_p: 0.95,
            repetition_penalty: 1.1,
            seed: 7,
            keyword_boost: None,
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
    pub train: LmTrainConfig,
    #[serde(default)]
    pub generate: GenerateLimits,
    #[serde(default)]
    pub eval: CopyEvalConfig,
}

impl LmRunConfig {
    pub fn is_copy(&self) -> bool {
        matches!(self.data, LmData::Copy { .. })
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(TrainError::Invalid(m));
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
        self.loop_config().validate()?;
        let t = &self.train;
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
        let g = &self.generate;
        for (name, v, hi) in [
            ("generate.max_n", g.max_n, 10_000),
            ("generate.max_chars", g.max_chars, 100_000),
            ("generate.max_brief_chars", g.max_brief_chars, 1_000_000),
            ("generate.batch_size", g.batch_size, 4096),
            ("generate.budget_factor", g.budget_factor, 1000),
            ("generate.max_new_tokens", g.max_new_tokens, 1 << 16),
        ] {
            if v == 0 || v > hi {
                return bad(format!("{name} = {v} (allowed 1..={hi})"));
            }
        }
        if !(g.max_keyword_boost.is_finite() && g.max_keyword_boost >= 0.0)
            || !(0.0..=g.max_keyword_boost).contains(&g.keyword_boost)
        {
            return bad(format!(
                "generate.keyword_boost = {}, max_keyword_boost = {} (0 <= keyword_boost <= max_keyword_boost, finite)",
                g.keyword_boost, g.max_keyword_boost
            ));
        }
        Ok(())
    }

    /// Makes data paths absolute against `base`, so the saved config works from anywhere.
    pub fn resolve_paths(&mut self, base: &Path) {
        match &mut self.data {
            LmData::Text { path, .. } => *path = absolutize(base, path),
            LmData::Copy { train, valid } => {
                train.csv = absolutize(base, &train.csv);
                valid.csv = absolutize(base, &valid.csv);
            }
        }
        if let TokenizerSource::File { path } = &mut self.tokenizer {
            *path = absolutize(base, path);
        }
        crate::pretrained::resolve_init_path(&mut self.init, base);
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
                path: crate::pretrained::pretrained_tokenizer(&dir)?,
            };
        }
        Ok(Some(dir))
    }

    fn loop_config(&self) -> LoopConfig {
        let t = &self.train;
        LoopConfig {
            epochs: t.epochs,
            batch_size: t.batch_size,
            schedule: t.schedule,
            weight_decay: t.weight_decay,
            beta_1: t.beta_1,
            beta_2: t.beta_2,
            grad_clip: t.grad_clip,
            checkpoint_every_steps: t.checkpoint_every_steps,
            log_every_steps: t.log_every_steps,
        }
    }
}

/// Text split into token sequences ready for batching.
#[derive(Debug, Clone)]
pub enum LmCorpus {
    /// One long stream; batches are random windows of `block + 1` tokens.
    Stream(Vec<u32>),
    /// One sequence per example (already cut to `n_ctx + 1` tokens).
    Examples(Vec<Vec<u32>>),
}

/// One batch on the host: inputs and targets [rows, t], loss weights (0 on padding).
#[derive(Debug, Clone, PartialEq)]
pub struct HostBatch {
    pub rows: usize,
    pub t: usize,
    pub inputs: Vec<i64>,
    pub targets: Vec<i64>,
    pub mask: Vec<f32>,
}

impl HostBatch {
    pub fn from_rows(rows: Vec<&[u32]>) -> Self {
        let t = rows
            .iter()
            .map(|r| r.len().saturating_sub(1))
            .max()
            .unwrap_or(0);
        let n = rows.len();
        let mut b = HostBatch {
            rows: n,
            t,
            inputs: vec![0; n * t],
            targets: vec![0; n * t],
            mask: vec![0.0; n * t],
        };
        for (i, r) in rows.iter().enumerate() {
            for j in 0..r.len().saturating_sub(1) {
                b.inputs[i * t + j] = r[j] as i64;
                b.targets[i * t + j] = r[j + 1] as i64;
                b.mask[i * t + j] = 1.0;
            }
        }
        b
    }

    /// This shard's rows (all of them for [`Shard::WHOLE`]), padded as in the whole batch.
    pub fn shard(self, shard: Shard) -> Self {
        if shard == Shard::WHOLE {
            return self;
        }
        let r = shard.range(self.rows);
        let cells = r.start * self.t..r.end * self.t;
        HostBatch {
            rows: r.len(),
            t: self.t,
            inputs: self.inputs[cells.clone()].to_vec(),
            targets: self.targets[cells.clone()].to_vec(),
            mask: self.mask[cells].to_vec(),
        }
    }

    pub fn tokens(&self) -> usize {
        self.mask.iter().filter(|&&m| m > 0.0).count()
    }
}

impl LmCorpus {
    /// Batches per epoch: text windows use the configured count; examples one pass.
    pub fn batches_per_epoch(&self, batch_size: usize, steps_per_epoch: usize) -> usize {
        match self {
            Self::Stream(_) => steps_per_epoch,
            Self::Examples(e) => e.len() / batch_size,
        }
    }

    /// Batch `batch` of `epoch`, a pure function of (seed, epoch, batch) so resume replays it.
    pub fn batch(
        &self,
        seed: u64,
        epoch: usize,
        batch: usize,
        batch_size: usize,
        block: usize,
    ) -> HostBatch {
        match self {
            Self::Stream(tokens) => {
                let mut rng = StdRng::seed_from_u64(mix(mix(seed, epoch as u64), batch as u64));
                let span = tokens.len() - block; // checked ≥ 1 when the corpus is built
                let rows = (0..batch_size)
                    .map(|_| {
                        let o = rng.random_range(0..span);
                        &tokens[o..o + block + 1]
                    })
                    .collect();
                HostBatch::from_rows(rows)
            }
            Self::Examples(seqs) => {
                let mut order: Vec<usize> = (0..seqs.len()).collect();
                order.shuffle(&mut StdRng::seed_from_u64(mix(seed, epoch as u64)));
                let rows = order[batch * batch_size..(batch + 1) * batch_size]
                    .iter()
                    .map(|&i| seqs[i].as_slice())
                    .collect();
                HostBatch::from_rows(rows)
            }
        }
    }

    /// Deterministic validation batches: `n` seeded windows for a stream, every example
    /// (in order) otherwise.
    pub fn eval_batches(&self, batch_size: usize, block: usize, n: usize) -> Vec<HostBatch> {
        match self {
            Self::Stream(_) => (0..n)
                .map(|i| self.batch(0x5eed_7a1d, 0, i, batch_size, block))
                .collect(),
            Self::Examples(seqs) => seqs
                .chunks(batch_size)
                .map(|c| HostBatch::from_rows(c.iter().map(Vec::as_slice).collect()))
                .collect(),
        }
    }
}

/// Mean cross-entropy over the unmasked positions: logits [B, T, V] -> [1].
pub fn masked_cross_entropy<B: Backend>(
    logits: Tensor<B, 3>,
    batch: &HostBatch,
    device: &B::Device,
) -> Tensor<B, 1> {
    let [b, t, v] = logits.dims();
    let logp = log_softmax(logits.reshape([b * t, v]), 1);
    let targets =
        Tensor::<B, 2, Int>::from_data(TensorData::new(batch.targets.clone(), [b * t, 1]), device);
    let mask = Tensor::<B, 1>::from_data(TensorData::new(batch.mask.clone(), [b * t]), device);
    let picked = logp.gather(1, targets).reshape([b * t]);
    (picked * mask)
        .sum()
        .neg()
        .div_scalar(batch.tokens().max(1) as f64)
}

fn inputs<B: Backend>(batch: &HostBatch, device: &B::Device) -> Tensor<B, 2, Int> {
    Tensor::from_data(
        TensorData::new(batch.inputs.clone(), [batch.rows, batch.t]),
        device,
    )
}

/// Token-weighted mean loss of `model` over `batches`: (loss, tokens).
pub fn eval_loss<B: Backend>(
    model: &Gpt<B>,
    batches: &[HostBatch],
    device: &B::Device,
) -> Result<(f64, usize)> {
    let (mut sum, mut tokens) = (0.0f64, 0usize);
    for b in batches {
        if b.t == 0 {
            continue;
        }
        let logits = model.forward(inputs::<B>(b, device))?;
        let loss: f32 = masked_cross_entropy(logits, b, device).into_scalar().elem();
        sum += loss as f64 * b.tokens() as f64;
        tokens += b.tokens();
    }
    Ok((sum / tokens.max(1) as f64, tokens))
}

struct LmTask<'a, B: AutodiffBackend> {
    train: &'a LmCorpus,
    valid: Vec<HostBatch>,
    config: &'a LmRunConfig,
    device: B::Device,
}

impl<B: AutodiffBackend> Task<B, Gpt<B>> for LmTask<'_, B> {
    fn batches_per_epoch(&self) -> usize {
        self.train.batches_per_epoch(
            self.config.train.batch_size,
            self.config.train.steps_per_epoch,
        )
    }

    fn loss(
        &mut self,
        model: &Gpt<B>,
        epoch: usize,
        batch: usize,
        shard: Shard,
    ) -> Result<(Tensor<B, 1>, usize)> {
        let t = &self.config.train;
        let b = self
            .train
            .batch(self.config.seed, epoch, batch, t.batch_size, t.block_size)
            .shard(shard);
        let logits = model.forward(inputs::<B>(&b, &self.device))?;
        Ok((masked_cross_entropy(logits, &b, &self.device), b.tokens()))
    }

    fn unit(&self) -> &'static str {
        "tokens"
    }

    fn epoch_end(&mut self, model: &Gpt<B>, _epoch: usize) -> Result<serde_json::Value> {
        let (loss, tokens) = eval_loss(&model.valid(), &self.valid, &self.device)?;
        Ok(serde_json::json!({ "val_loss": loss, "val_tokens": tokens }))
    }
}

/// The run's corpora, encoded.
pub struct LmPrepared {
    pub tokenizer: Tokenizer,
    pub train: LmCorpus,
    pub valid: LmCorpus,
    /// Normalised training lines (copy runs), for `--no-copy` and the copy rate.
    pub train_lines: Vec<String>,
    /// Examples longer than the context, cut to fit.
    pub truncated: usize,
    /// How the corpus cases its words.
    pub keyword_case: KeywordCase,
    /// The brief of every validation line (copy runs), as in training.
    pub valid_briefs: Vec<Brief>,
    pub train_tokens: usize,
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(io_err(path))
}

/// Reads the data, trains or loads the tokenizer (`existing`: a resumed run's), encodes.
pub fn prepare(config: &LmRunConfig, existing: Option<Tokenizer>) -> Result<LmPrepared> {
    match &config.data {
        LmData::Text {
            path,
            valid_fraction,
        } => {
            let text = read_text(path)?;
            let chars: Vec<char> = text.chars().collect();
            let cut = ((chars.len() as f64) * (1.0 - valid_fraction)) as usize;
            let train_text: String = chars[..cut].iter().collect();
            let valid_text: String = chars[cut..].iter().collect();
            let tokenizer = match existing {
                Some(t) => t,
                None => build_tokenizer(&config.tokenizer, std::iter::once(text.as_str()), &[])?,
            };
            let train = tokenizer.encode(&train_text)?;
            let valid = tokenizer.encode(&valid_text)?;
            let need = config.train.block_size + 2;
            for (name, toks) in [("training", &train), ("validation", &valid)] {
                if toks.len() < need {
                    return Err(TrainError::Invalid(format!(
                        "{}: the {name} split has {} tokens; train.block_size = {} needs at least {need}",
                        path.display(),
                        toks.len(),
                        config.train.block_size
                    )));
                }
            }
            Ok(LmPrepared {
                tokenizer,
                train_tokens: train.len(),
                train: LmCorpus::Stream(train),
                valid: LmCorpus::Stream(valid),
                train_lines: Vec::new(),
                truncated: 0,
                keyword_case: KeywordCase::AsTyped,
                valid_briefs: Vec::new(),
            })
        }
        LmData::Copy { train, valid } => {
            let train_lines = read_copy_corpus(train)?;
            let valid_lines = read_copy_corpus(valid)?;
            let kx = KeywordExtractor::fit(train_lines.iter().map(|l| l.text.as_str()));
            let tokenizer = match existing {
                Some(t) => t,
                None => build_tokenizer(
                    &config.tokenizer,
                    train_lines.iter().map(|l| l.text.as_str()),
                    &SPECIAL_TOKENS,
                )?,
            };
            let max_len = config.model.n_ctx + 1;
            let mut truncated = 0;
            let mut encode = |lines: &[CopyLine], briefs: &[Brief]| -> Result<Vec<Vec<u32>>> {
                lines
                    .iter()
                    .zip(briefs)
                    .map(|(l, b)| {
                        let mut ids = tokenizer.encode(&b.example(&l.text))?;
                        if ids.len() > max_len {
                            ids.truncate(max_len);
                            truncated += 1;
                        }
                        Ok(ids)
                    })
                    .collect()
            };
            let briefs = |lines: &[CopyLine]| -> Vec<Brief> {
                lines.iter().map(|l| kx.training_brief(l)).collect()
            };
            let valid_briefs = briefs(&valid_lines);
            let train_seqs = encode(&train_lines, &briefs(&train_lines))?;
            let valid_seqs = encode(&valid_lines, &valid_briefs)?;
            Ok(LmPrepared {
                keyword_case: KeywordCase::detect(train_lines.iter().map(|l| l.text.as_str())),
                train_tokens: train_seqs.iter().map(Vec::len).sum(),
                tokenizer,
                train: LmCorpus::Examples(train_seqs),
                valid: LmCorpus::Examples(valid_seqs),
                train_lines: train_lines.iter().map(|l| normalize(&l.text)).collect(),
                truncated,
                valid_briefs,
            })
        }
    }
}

pub(crate) fn build_tokenizer<'a>(
    source: &TokenizerSource,
    texts: impl Iterator<Item = &'a str> + Send,
    special: &[&str],
) -> Result<Tokenizer> {
    let mut tok = match source {
        TokenizerSource::Char => {
            let all: String = texts.collect();
            Tokenizer::build_char(&all)
        }
        TokenizerSource::Bpe { vocab_size } => Tokenizer::train_bpe(texts, *vocab_size, special)?,
        TokenizerSource::File { path } => Tokenizer::from_file(path)?,
        TokenizerSource::Pretrained => {
            return Err(TrainError::Invalid(
                "tokenizer.kind = \"pretrained\" needs the run's init model".into(),
            ))
        }
    };
    tok.ensure_special(special)?;
    Ok(tok)
}

/// Training-run file names.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const TRAIN_LINES_FILE: &str = "train-lines.txt";

#[derive(Debug, Clone, Serialize)]
pub struct LmTrainReport {
    pub fit: FitSummary,
    pub val_loss: f64,
    pub val_perplexity: f64,
    pub tokens_per_sec: f64,
    pub train_tokens: usize,
    pub vocab_size: usize,
    pub parameters: usize,
    pub truncated_examples: usize,
}

/// Trains (or resumes, when `config` is `None`) a language-model or copy run.
pub fn train_lm<B: AutodiffBackend>(
    config: Option<LmRunConfig>,
    run: &RunDir,
    opts: &FitOptions,
    device: &B::Device,
) -> Result<LmTrainReport> {
    let resume = config.is_none();
    let (config, existing, init_dir) = match config {
        Some(mut c) => {
            let dir = c.apply_init()?;
            (c, None, dir)
        }
        None => {
            let c: LmRunConfig = run.load_toml_config()?;
            let tok = Tokenizer::from_file(&run.file(TOKENIZER_FILE))?;
            (c, Some(tok), None)
        }
    };
    config.validate()?;
    opts.check_start(run, config.train.batch_size, !resume)?;
    // Only rank 0 of data-parallel training writes the run directory.
    let chief = opts.is_chief();
    let mut config = config;
    let prepared = prepare(&config, existing)?;
    if !resume {
        config.model.vocab_size = prepared.tokenizer.vocab_size();
        if config.generate.keyword_case == KeywordCase::Auto {
            config.generate.keyword_case = prepared.keyword_case;
        }
    }
    if chief && !resume {
        run.create()?;
        prepared.tokenizer.save(&run.file(TOKENIZER_FILE))?;
        run.save_toml_config(&config)?;
        if config.is_copy() {
            let path = run.file(TRAIN_LINES_FILE);
            let mut text = prepared.train_lines.join("\n");
            text.push('\n');
            atomic_save(&path, text.as_bytes()).map_err(io_err(&path))?;
        }
    } else if resume && config.model.vocab_size != prepared.tokenizer.vocab_size() {
        return Err(TrainError::Run {
            path: run.path.clone(),
            message: format!(
                "tokenizer.json has {} tokens but config.toml says model.vocab_size = {}",
                prepared.tokenizer.vocab_size(),
                config.model.vocab_size
            ),
        });
    }
    let seeded = crate::dist::seed_guard::<B>(device, config.seed);
    // A resumed run's weights come from its checkpoint (fit loads it), not from `init`.
    let model = match &init_dir {
        // Pretrained weights; tokens the run added (brief markers) get new rows.
        Some(dir) => vitrine_models::gpt::load_hf_gpt2::<B>(dir, device)?
            .1
            .resize_vocab(config.model.vocab_size)?,
        None => config.model.init::<B>(device)?,
    };
    let model = seeded.finish(model);
    let parameters = burn::module::Module::num_params(&model);
    let valid = prepared.valid.eval_batches(
        config.train.batch_size,
        config.train.block_size,
        config.train.eval_batches,
    );
    let mut task = LmTask::<B> {
        train: &prepared.train,
        valid,
        config: &config,
        device: device.clone(),
    };
    let (model, fit_summary) = fit(model, &mut task, &config.loop_config(), run, opts, device)?;
    // Rank 0 reports; the other workers' reports are not shown.
    let (val_loss, _) = if chief {
        eval_loss(&model.valid(), &task.valid, device)?
    } else {
        (f64::NAN, 0)
    };
    if chief && !fit_summary.stopped_early {
        save_module(model, &run.model_path())?;
    }
    let report = LmTrainReport {
        tokens_per_sec: fit_summary.examples_per_sec,
        fit: fit_summary,
        val_loss,
        val_perplexity: val_loss.exp(),
        train_tokens: prepared.train_tokens,
        vocab_size: prepared.tokenizer.vocab_size(),
        parameters,
        truncated_examples: prepared.truncated,
    };
    if chief {
        run.save_json("train-report.json", &report)?;
    }
    Ok(report)
}

/// A trained GPT run ready for inference.
pub struct LmRun<B: Backend> {
    pub config: LmRunConfig,
    pub model: Gpt<B>,
    pub tokenizer: Tokenizer,
    /// Normalised training lines (copy runs).
    pub train_lines: HashSet<String>,
    pub dir: RunDir,
}

impl<B: Backend> LmRun<B> {
    pub fn load(path: &Path, device: &B::Device) -> Result<Self> {
        let dir = RunDir::new(path);
        let config: LmRunConfig = dir.load_toml_config()?;
        config.validate()?;
        let tokenizer = dir.load_tokenizer(config.model.vocab_size)?;
        let model = dir.load_weights(config.model.init::<B>(device)?, device)?;
        let train_lines = if config.is_copy() {
            let p = dir.file(TRAIN_LINES_FILE);
            std::fs::read_to_string(&p)
                .map_err(io_err(&p))?
                .lines()
                .map(String::from)
                .collect()
        } else {
            HashSet::new()
        };
        Ok(Self {
            config,
            model,
            tokenizer,
            train_lines,
            dir,
        })
    }

    pub fn eos(&self) -> Option<u32> {
        self.tokenizer.token_id(EOS)
    }
}

/// What [`export_hf`] wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExportReport {
    pub out: PathBuf,
    pub files: Vec<String>,
    pub tensors: usize,
}

/// Writes a trained GPT run as a Hugging Face GPT-2 folder (`config.json`,
/// `model.safetensors`, `tokenizer.json`) that `transformers` loads with
/// `GPT2LMHeadModel.from_pretrained` and Vitrine with `init = "<folder>"`. Each file is
/// written atomically.
pub fn export_hf<B: Backend>(run: &Path, out: &Path, device: &B::Device) -> Result<ExportReport> {
    let lm = LmRun::<B>::load(run, device)?;
    if matches!(lm.tokenizer, Tokenizer::Char(_)) {
        return Err(TrainError::Invalid(format!(
            "{}: a character-level tokenizer has no Hugging Face form; export needs a BPE run",
            run.display()
        )));
    }
    let mut export = vitrine_models::hf::Export::default();
    lm.model.export_hf(&mut export, "transformer.");
    std::fs::create_dir_all(out).map_err(io_err(out))?;
    let mut config = lm.config.model.to_hf();
    if let Some(eos) = lm.eos() {
        config["bos_token_id"] = eos.into();
        config["eos_token_id"] = eos.into();
    }
    let files = [
        (
            vitrine_models::hf::CONFIG_FILE,
            serde_json::to_vec_pretty(&config).expect("JSON value"),
        ),
        (vitrine_models::hf::WEIGHTS_FILE, export.to_safetensors()?),
    ];
    for (name, bytes) in &files {
        let path = out.join(name);
        atomic_save(&path, bytes).map_err(io_err(&path))?;
    }
    lm.tokenizer.save(&out.join(TOKENIZER_FILE))?;
    Ok(ExportReport {
        out: out.to_owned(),
        files: vec![
            vitrine_models::hf::CONFIG_FILE.into(),
            vitrine_models::hf::WEIGHTS_FILE.into(),
            TOKENIZER_FILE.into(),
        ],
        tensors: export.tensors.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_batch_pads_and_masks() {
        let a = [5u32, 6, 7, 8];
        let b = [9u32, 10];
        let hb = HostBatch::from_rows(vec![&a[..], &b[..]]);
        assert_eq!((hb.rows, hb.t), (2, 3));
        assert_eq!(hb.inputs, vec![5, 6, 7, 9, 0, 0]);
        assert_eq!(hb.targets, vec![6, 7, 8, 10, 0, 0]);
        assert_eq!(hb.mask, vec![1.0, 1.0, 1.0, 1.0, 0.0, 0.0]);
        assert_eq!(hb.tokens(), 4);
    }

    #[test]
    fn host_batch_shards_are_its_rows_in_order() {
        let rows: Vec<Vec<u32>> = (0..4).map(|i| vec![i, i + 10, i + 20]).collect();
        let hb = HostBatch::from_rows(rows.iter().map(|r| r.as_slice()).collect());
        let a = hb.clone().shard(Shard { index: 0, count: 2 });
        let b = hb.clone().shard(Shard { index: 1, count: 2 });
        assert_eq!((a.rows, a.t, b.rows), (2, 2, 2));
        assert_eq!(a.tokens() + b.tokens(), hb.tokens());
        assert_eq!([a.inputs, b.inputs].concat(), hb.inputs);
        assert_eq!([a.targets, b.targets].concat(), hb.targets);
        assert_eq!(hb.clone().shard(Shard::WHOLE), hb);
    }

    #[test]
    fn stream_batches_are_seeded_windows() {
        let c = LmCorpus::Stream((0..100).collect());
        let x = c.batch(1, 0, 3, 4, 8);
        assert_eq!(x, c.batch(1, 0, 3, 4, 8));
        assert_ne!(x, c.batch(1, 0, 4, 4, 8));
        assert_eq!((x.rows, x.t), (4, 8));
        for r in 0..4 {
            let row = &x.inputs[r * 8..r * 8 + 8];
            assert!(row.windows(2).all(|w| w[1] == w[0] + 1), "{row:?}");
            assert_eq!(x.targets[r * 8], row[0] + 1);
        }
    }

    #[test]
    fn example_batches_cover_each_example_once_per_epoch() {
        let seqs: Vec<Vec<u32>> = (0..10).map(|i| vec![i, i + 100, i + 200]).collect();
        let c = LmCorpus::Examples(seqs);
        assert_eq!(c.batches_per_epoch(3, 999), 3);
        let mut firsts: Vec<i64> = (0..3)
            .flat_map(|b| {
                let hb = c.batch(2, 1, b, 3, 0);
                (0..3).map(move |r| hb.inputs[r * hb.t]).collect::<Vec<_>>()
            })
            .collect();
        firsts.sort();
        firsts.dedup();
        assert_eq!(firsts.len(), 9);
    }

    /// The masked loss equals the loss over the unpadded rows alone.
    #[test]
    fn padding_does_not_change_the_loss() {
        use burn::backend::Flex;
        type B = Flex;
        let device = Default::default();
        let model = GptConfig::preset("tiny")
            .unwrap()
            .init::<B>(&device)
            .unwrap();
        let long = [1u32, 2, 3, 4, 5];
        let short = [6u32, 7, 8];
        let both = HostBatch::from_rows(vec![&long[..], &short[..]]);
        let (l_both, n_both) = eval_loss(&model, &[both], &device).unwrap();
        let sep = [
            HostBatch::from_rows(vec![&long[..]]),
            HostBatch::from_rows(vec![&short[..]]),
        ];
        let (l_sep, n_sep) = eval_loss(&model, &sep, &device).unwrap();
        assert_eq!(n_both, 6);
        assert_eq!(n_sep, 6);
        assert!((l_both - l_sep).abs() < 1e-5, "{l_both} vs {l_sep}");
        // Near log(V) for an untrained model.
        assert!((l_both - (32f64).ln()).abs() < 0.5, "{l_both}");
    }
}
