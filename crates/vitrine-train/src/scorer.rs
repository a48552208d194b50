//! Click-through scorer training (`task = "score"`) and inference.
//!
//! Batches are groups of A/B tests: every distinct headline in the group is scored once and
//! the loss is the evidence-weighted pairwise logistic loss (RankNet) over the group's pairs,
//! `Σ w · softplus(-(s_winner - s_loser)) / Σ w`, with `w` from [`PairRule`]. A seeded share
//! of the training tests (`train.dev_fraction`) is held out as a development split; after
//! every epoch its pairwise accuracy picks the best weights (`best-model.mpk`), which become
//! the run's model. The validation split is only reported, never used to choose.
//!
//! `init = "runs/copy-…"` warm-starts the trunk from a copy run: its tokenizer, its model
//! size and its weights; the head starts fresh.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use burn::module::AutodiffModule;
use burn::tensor::activation::softplus;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use rand::seq::SliceRandom;
use rand::{rngs::StdRng, SeedableRng};
use serde::{Deserialize, Serialize};
use vitrine_data::copy::SPECIAL_TOKENS;
use vitrine_data::ctr::{
    pairwise_metrics, read_ab_tests, scorer_input, AbTest, AbTestsConfig, PairRule, Pairs,
    PairwiseMetrics,
};
use vitrine_data::split::split_indices;
use vitrine_data::text::Tokenizer;
use vitrine_models::scorer::{Scorer, ScorerConfig};

use crate::config::absolutize;
use crate::dist::Shard;
use crate::error::{Result, TrainError};
use crate::generate::Candidate;
use crate::lm::{build_tokenizer, LmRun, TokenizerSource, TOKENIZER_FILE};
use crate::run::{load_module_bytes, save_module, RunDir};
use crate::schedule::Schedule;
use crate::search::mix;
use crate::trainer::{fit, FitOptions, FitSummary, LoopConfig, Task};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreData {
    pub train: AbTestsConfig,
    pub valid: AbTestsConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScoreTrainConfig {
    pub epochs: usize,
    /// A/B tests per batch (all their pairs go in).
    pub batch_size: usize,
    /// Share of the training tests held out to pick the best epoch (0 = keep the last).
    pub dev_fraction: f64,
    pub schedule: Schedule,
    pub weight_decay: f64,
    pub beta_1: f64,
    pub beta_2: f64,
    pub grad_clip: f64,
    pub checkpoint_every_steps: usize,
    pub log_every_steps: usize,
}

impl Default for ScoreTrainConfig {
    fn default() -> Self {
        Self {
            epochs: 6,
            batch_size: 16,
            dev_fraction: 0.1,
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
    pub train: ScoreTrainConfig,
    #[serde(default)]
    pub limits: ScoreLimits,
    #[serde(default)]
    pub eval: ScoreEvalConfig,
}

impl ScoreRunConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(TrainError::Invalid(m));
        if self.task != "score" {
            return bad(format!(
                "task = {:?}: a scorer run has task \"score\"",
                self.task
            ));
        }
        if self.tokenizer.is_none() && self.init.is_none() {
            return bad("give [tokenizer] (e.g. kind = \"bpe\") or init = \"<copy run>\"".into());
        }
        if matches!(self.tokenizer, Some(TokenizerSource::Char)) {
            return bad("tokenizer.kind = \"char\" cannot hold the special tokens a scorer reads: use \"bpe\" or \"file\"".into());
        }
        self.pairs.validate().map_err(TrainError::Invalid)?;
        self.model.validate()?;
        self.loop_config().validate()?;
        let t = &self.train;
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

    /// Makes data paths absolute against `base`, so the saved config works from anywhere.
    pub fn resolve_paths(&mut self, base: &Path) {
        self.data.train.csv = absolutize(base, &self.data.train.csv);
        self.data.valid.csv = absolutize(base, &self.data.valid.csv);
        if let Some(TokenizerSource::File { path }) = &mut self.tokenizer {
            *path = absolutize(base, path);
        }
        if let Some(init) = &mut self.init {
            *init = absolutize(base, init);
        }
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

/// Token ids of a headline as the scorer reads it, cut to `n_ctx` (the final end-of-text
/// kept, so `last` pooling still reads it). Returns (ids, whether it was cut).
fn encode_for_training(tok: &Tokenizer, text: &str, n_ctx: usize) -> Result<(Vec<u32>, bool)> {
    let mut ids = tok.encode(&scorer_input(text))?;
    if ids.len() <= n_ctx {
        return Ok((ids, false));
    }
    let last = *ids.last().expect("non-empty");
    ids.truncate(n_ctx - 1);
    ids.push(last);
    Ok((ids, true))
}

/// Right-pads rows into [rows, t] ids and their lengths.
fn pad<B: Backend>(rows: &[&[u32]], device: &B::Device) -> (Tensor<B, 2, Int>, Vec<usize>) {
    let t = rows.iter().map(|r| r.len()).max().unwrap_or(1).max(1);
    let mut flat = vec![0i64; rows.len() * t];
    for (i, r) in rows.iter().enumerate() {
        for (j, &id) in r.iter().enumerate() {
            flat[i * t + j] = id as i64;
        }
    }
    let lengths = rows.iter().map(|r| r.len()).collect();
    (
        Tensor::from_data(TensorData::new(flat, [rows.len(), t]), device),
        lengths,
    )
}

/// Scores pre-encoded rows in batches of `batch_size`.
fn score_encoded<B: Backend>(
    model: &Scorer<B>,
    rows: &[Vec<u32>],
    batch_size: usize,
    device: &B::Device,
) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(batch_size.max(1)) {
        let refs: Vec<&[u32]> = chunk.iter().map(Vec::as_slice).collect();
        let (tokens, lengths) = pad::<B>(&refs, device);
        let s = model.forward(tokens, &lengths)?;
        let v: Vec<f32> = s.into_data().convert::<f32>().to_vec().map_err(|e| {
            TrainError::Invalid(format!("reading scores back from the device: {e:?}"))
        })?;
        out.extend(v.into_iter().map(f64::from));
    }
    Ok(out)
}

/// A split's pairs with every variant encoded (variants sharing a headline share a row).
pub struct EncodedPairs {
    pub pairs: Pairs,
    /// Distinct headlines, encoded.
    rows: Vec<Vec<u32>>,
    /// Row of each variant.
    row_of: Vec<usize>,
    pub truncated: usize,
}

impl EncodedPairs {
    fn new(tests: &[AbTest], tok: &Tokenizer, n_ctx: usize) -> Result<Self> {
        let pairs = Pairs::build(tests);
        let mut index: HashMap<&str, usize> = HashMap::new();
        let mut rows = Vec::new();
        let mut row_of = Vec::with_capacity(pairs.variants.len());
        let mut truncated = 0;
        for v in &pairs.variants {
            let next = rows.len();
            let r = *index.entry(v.text.as_str()).or_insert(next);
            if r == next {
                let (ids, cut) = encode_for_training(tok, &v.text, n_ctx)?;
                truncated += cut as usize;
                rows.push(ids);
            }
            row_of.push(r);
        }
        Ok(Self {
            pairs,
            rows,
            row_of,
            truncated,
        })
    }

    /// One score per variant.
    pub fn scores<B: Backend>(
        &self,
        model: &Scorer<B>,
        batch_size: usize,
        device: &B::Device,
    ) -> Result<Vec<f64>> {
        let per_row = score_encoded(model, &self.rows, batch_size, device)?;
        Ok(self.row_of.iter().map(|&r| per_row[r]).collect())
    }

    pub fn metrics<B: Backend>(
        &self,
        model: &Scorer<B>,
        rule: &PairRule,
        batch_size: usize,
        device: &B::Device,
    ) -> Result<PairwiseMetrics> {
        let scores = self.scores(model, batch_size, device)?;
        Ok(pairwise_metrics(&self.pairs, &scores, rule.significance_z))
    }
}

/// Training pairs grouped by test: (variant rows, pairs as (winner row, loser row, weight)).
struct TrainGroups {
    rows: Vec<Vec<u32>>,
    /// Per test with at least one kept pair.
    groups: Vec<Vec<(usize, usize, f32)>>,
    pairs: usize,
}

impl TrainGroups {
    fn new(enc: EncodedPairs, rule: &PairRule) -> Self {
        // Ordered by test index, so batches are a pure function of the data and the seed.
        let mut by_test: BTreeMap<usize, Vec<(usize, usize, f32)>> = BTreeMap::new();
        let mut pairs = 0;
        for p in &enc.pairs.pairs {
            if let Some(w) = rule.weight(p.z) {
                by_test.entry(p.test).or_default().push((
                    enc.row_of[p.winner()],
                    enc.row_of[p.loser()],
                    w as f32,
                ));
                pairs += 1;
            }
        }
        Self {
            rows: enc.rows,
            groups: by_test.into_values().collect(),
            pairs,
        }
    }
}

struct ScoreTask<'a, B: AutodiffBackend> {
    train: TrainGroups,
    dev: Option<EncodedPairs>,
    config: &'a ScoreRunConfig,
    run: &'a RunDir,
    best: Option<Best>,
    device: B::Device,
}

/// The best development-split epoch so far (`best.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Best {
    epoch: usize,
    dev_accuracy: f64,
}

const BEST_MODEL_FILE: &str = "best-model.mpk";
const BEST_FILE: &str = "best.json";

impl<B: AutodiffBackend> Task<B, Scorer<B>> for ScoreTask<'_, B> {
    fn batches_per_epoch(&self) -> usize {
        self.train.groups.len() / self.config.train.batch_size
    }

    fn loss(
        &mut self,
        model: &Scorer<B>,
        epoch: usize,
        batch: usize,
        shard: Shard,
    ) -> Result<(Tensor<B, 1>, usize)> {
        let bs = self.config.train.batch_size;
        let mut order: Vec<usize> = (0..self.train.groups.len()).collect();
        order.shuffle(&mut StdRng::seed_from_u64(mix(
            self.config.seed,
            epoch as u64,
        )));
        // Rows of this batch, each scored once.
        let all_rows = &self.train.rows;
        let mut local: HashMap<usize, usize> = HashMap::new();
        let mut rows: Vec<&[u32]> = Vec::new();
        let (mut win, mut lose, mut weight) = (Vec::new(), Vec::new(), Vec::new());
        let mut slot = |r: usize| {
            *local.entry(r).or_insert_with(|| {
                rows.push(&all_rows[r]);
                rows.len() - 1
            }) as i64
        };
        for &g in shard.of(&order[batch * bs..(batch + 1) * bs]) {
            for &(w, l, wt) in &self.train.groups[g] {
                win.push(slot(w));
                lose.push(slot(l));
                weight.push(wt);
            }
        }
        let (tokens, lengths) = pad::<B>(&rows, &self.device);
        let s = model.forward_members(tokens, &lengths)?; // [M, R]
        let members = s.dims()[0];
        let n = win.len();
        let idx =
            |v: Vec<i64>| Tensor::<B, 1, Int>::from_data(TensorData::new(v, [n]), &self.device);
        let margin = s.clone().select(1, idx(win)) - s.select(1, idx(lose)); // [M, P]
        let total: f32 = weight.iter().sum();
        let w = Tensor::<B, 2>::from_data(TensorData::new(weight, [1, n]), &self.device);
        // Each member's own weighted loss, averaged over members.
        let loss = (softplus(margin.neg(), 1.0) * w)
            .sum()
            .div_scalar((total * members as f32).max(1e-12));
        Ok((loss, n))
    }

    fn unit(&self) -> &'static str {
        "pairs"
    }

    fn epoch_end(&mut self, model: &Scorer<B>, epoch: usize) -> Result<serde_json::Value> {
        let Some(dev) = &self.dev else {
            return Ok(serde_json::Value::Null);
        };
        let inner = model.valid();
        let m = dev.metrics(
            &inner,
            &self.config.pairs,
            self.config.limits.batch_size,
            &self.device,
        )?;
        if self
            .best
            .as_ref()
            .is_none_or(|b| m.accuracy > b.dev_accuracy)
        {
            save_module(inner, &self.run.file(BEST_MODEL_FILE))?;
            let best = Best {
                epoch: epoch + 1,
                dev_accuracy: m.accuracy,
            };
            self.run.save_json(BEST_FILE, &best)?;
            self.best = Some(best);
        }
        Ok(serde_json::json!({
            "dev_accuracy": m.accuracy,
            "dev_significant_accuracy": m.significant_accuracy,
            "dev_auc": m.auc,
        }))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ScoreTrainReport {
    pub fit: FitSummary,
    pub train_tests: usize,
    pub train_pairs: usize,
    pub dev_tests: usize,
    pub dev: Option<PairwiseMetrics>,
    /// The epoch whose weights the run keeps (None: the last).
    pub best_epoch: Option<usize>,
    pub truncated_headlines: usize,
    pub parameters: usize,
    pub warm_start: Option<String>,
}

/// Splits training tests into (fit, dev) by a seeded shuffle of the tests.
fn dev_split(tests: Vec<AbTest>, fraction: f64, seed: u64) -> (Vec<AbTest>, Vec<AbTest>) {
    let (fit_idx, dev_idx) = split_indices(tests.len(), fraction as f32, mix(seed, 0xde5));
    let mut slots: Vec<Option<AbTest>> = tests.into_iter().map(Some).collect();
    let mut take = |idx: Vec<usize>| -> Vec<AbTest> {
        idx.into_iter().filter_map(|i| slots[i].take()).collect()
    };
    let fit = take(fit_idx);
    (fit, take(dev_idx))
}

/// Trains (or resumes, when `config` is `None`) a scorer run.
pub fn train_scorer<B: AutodiffBackend>(
    config: Option<ScoreRunConfig>,
    run: &RunDir,
    opts: &FitOptions,
    device: &B::Device,
) -> Result<ScoreTrainReport> {
    let resume = config.is_none();
    let mut config = match config {
        Some(c) => c,
        None => run.load_toml_config()?,
    };
    config.validate()?;
    opts.check_start(run, config.train.batch_size, !resume)?;
    // Only rank 0 of data-parallel training writes the run directory.
    let chief = opts.is_chief();
    let seeded = crate::dist::seed_guard::<B>(device, config.seed);
    let train_tests = read_ab_tests(&config.data.train)?;
    // Tokenizer and initial model: the run's own when resuming (the checkpoint then replaces
    // the weights), the init run's for a warm start, else fresh.
    let (tokenizer, model) = if resume {
        let tok = Tokenizer::from_file(&run.file(TOKENIZER_FILE))?;
        (tok, config.model.init::<B>(device)?)
    } else if let Some(init) = &config.init {
        let lm = LmRun::<B>::load(init, device)?;
        if !lm.config.is_copy() {
            return Err(TrainError::Invalid(format!(
                "init = {}: a scorer warm-starts from a copy run (task \"copy\"), this is task {:?}",
                init.display(),
                lm.config.task
            )));
        }
        config.model.gpt = lm.config.model.clone();
        // Every member starts from the copy model's trunk; their heads differ.
        let trunks = vec![lm.model; config.model.members];
        let model = config.model.with_trunks(trunks, device);
        (lm.tokenizer, model)
    } else {
        let texts: Vec<&str> = train_tests
            .iter()
            .flat_map(|t| t.variants.iter().map(|v| v.text.as_str()))
            .collect();
        let source = config.tokenizer.as_ref().expect("validated");
        let tok = build_tokenizer(source, texts.into_iter(), &SPECIAL_TOKENS)?;
        config.model.gpt.vocab_size = tok.vocab_size();
        (tok, config.model.init::<B>(device)?)
    };
    if tokenizer.vocab_size() != config.model.gpt.vocab_size {
        return Err(TrainError::Run {
            path: run.path.clone(),
            message: format!(
                "tokenizer has {} tokens but model.gpt.vocab_size = {}",
                tokenizer.vocab_size(),
                config.model.gpt.vocab_size
            ),
        });
    }
    if chief && !resume {
        run.create()?;
        tokenizer.save(&run.file(TOKENIZER_FILE))?;
        run.save_toml_config(&config)?;
    }
    let model = seeded.finish(model);
    let n_ctx = config.model.gpt.n_ctx;
    let (fit_tests, dev_tests) = dev_split(train_tests, config.train.dev_fraction, config.seed);
    let fit_enc = EncodedPairs::new(&fit_tests, &tokenizer, n_ctx)?;
    let dev = (!dev_tests.is_empty())
        .then(|| EncodedPairs::new(&dev_tests, &tokenizer, n_ctx))
        .transpose()?;
    let truncated = fit_enc.truncated + dev.as_ref().map_or(0, |d| d.truncated);
    let train = TrainGroups::new(fit_enc, &config.pairs);
    let parameters = burn::module::Module::num_params(&model);
    let best = if resume && run.file(BEST_FILE).exists() {
        Some(run.load_json::<Best>(BEST_FILE)?)
    } else {
        None
    };
    let (train_tests, train_pairs) = (train.groups.len(), train.pairs);
    let mut task = ScoreTask::<B> {
        train,
        dev,
        config: &config,
        run,
        best,
        device: device.clone(),
    };
    let (model, fit_summary) = fit(model, &mut task, &config.loop_config(), run, opts, device)?;
    let best_epoch = task.best.as_ref().map(|b| b.epoch);
    let dev_metrics = match &task.dev {
        _ if !chief => None,
        Some(dev) if !fit_summary.stopped_early => {
            // The kept model: the best dev epoch's weights.
            let bytes = std::fs::read(run.file(BEST_MODEL_FILE))
                .map_err(crate::error::io_err(&run.file(BEST_MODEL_FILE)))?;
            let best = load_module_bytes(model.valid(), bytes, &run.file(BEST_MODEL_FILE), device)?;
            let m = dev.metrics(&best, &config.pairs, config.limits.batch_size, device)?;
            save_module(best, &run.model_path())?;
            Some(m)
        }
        None if !fit_summary.stopped_early => {
            save_module(model.valid(), &run.model_path())?;
            None
        }
        _ => None,
    };
    let report = ScoreTrainReport {
        fit: fit_summary,
        train_tests,
        train_pairs,
        dev_tests: dev_tests.len(),
        dev: dev_metrics,
        best_epoch,
        truncated_headlines: truncated,
        parameters,
        warm_start: config.init.as_ref().map(|p| p.display().to_string()),
    };
    if chief {
        run.save_json("train-report.json", &report)?;
    }
    Ok(report)
}

/// A trained scorer ready for inference.
pub struct ScoreRun<B: Backend> {
    pub config: ScoreRunConfig,
    pub model: Scorer<B>,
    pub tokenizer: Tokenizer,
    pub dir: RunDir,
}

/// One scored line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScoredLine {
    /// 1-based position in the input.
    pub line: usize,
    pub text: String,
    pub score: f64,
}

impl<B: Backend> ScoreRun<B> {
    pub fn load(path: &Path, device: &B::Device) -> Result<Self> {
        let dir = RunDir::new(path);
        dir.expect_task("score", "a scorer run")?;
        let config: ScoreRunConfig = dir.load_toml_config()?;
        config.validate()?;
        let tokenizer = dir.load_tokenizer(config.model.gpt.vocab_size)?;
        let model = dir.load_weights(config.model.init::<B>(device)?, device)?;
        Ok(Self {
            config,
            model,
            tokenizer,
            dir,
        })
    }

    /// Encodes a batch of lines, checking each against the limits; every bad line is
    /// reported (1-based numbers), not just the first.
    fn encode_checked(&self, lines: &[String]) -> Result<Vec<Vec<u32>>> {
        let l = &self.config.limits;
        if lines.is_empty() {
            return Err(TrainError::Invalid("no lines to score".into()));
        }
        if lines.len() > l.max_lines {
            return Err(TrainError::Invalid(format!(
                "{} lines, more than limits.max_lines = {}",
                lines.len(),
                l.max_lines
            )));
        }
        let n_ctx = self.model.n_ctx();
        let mut errors = Vec::new();
        let mut rows = Vec::with_capacity(lines.len());
        for (i, text) in lines.iter().enumerate() {
            let chars = text.chars().count();
            if text.trim().is_empty() {
                errors.push(format!("line {}: empty", i + 1));
            } else if chars > l.max_chars {
                errors.push(format!(
                    "line {}: {chars} characters, more than limits.max_chars = {}",
                    i + 1,
                    l.max_chars
                ));
            } else if text.chars().any(char::is_control) {
                errors.push(format!("line {}: contains a control character", i + 1));
            } else {
                let ids = self.tokenizer.encode(&scorer_input(text))?;
                if ids.len() > n_ctx {
                    errors.push(format!(
                        "line {}: {} tokens, more than the model's context of {n_ctx}",
                        i + 1,
                        ids.len()
                    ));
                } else {
                    rows.push(ids);
                }
            }
        }
        if !errors.is_empty() {
            return Err(TrainError::Invalid(errors.join("; ")));
        }
        Ok(rows)
    }

    /// Scores of `lines`, in input order.
    pub fn score(&self, lines: &[String], device: &B::Device) -> Result<Vec<f64>> {
        let rows = self.encode_checked(lines)?;
        score_encoded(&self.model, &rows, self.config.limits.batch_size, device)
    }

    /// `lines` with their scores, best first (equal scores keep input order).
    pub fn rank(&self, lines: &[String], device: &B::Device) -> Result<Vec<ScoredLine>> {
        let scores = self.score(lines, device)?;
        let mut out: Vec<ScoredLine> = lines
            .iter()
            .zip(scores)
            .enumerate()
            .map(|(i, (text, score))| ScoredLine {
                line: i + 1,
                text: text.clone(),
                score,
            })
            .collect();
        out.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.line.cmp(&b.line)));
        Ok(out)
    }

    /// Sorts generated candidates best first by score (stable: equal scores keep the
    /// generator's order) and records each score.
    pub fn rank_candidates(
        &self,
        candidates: &mut Vec<Candidate>,
        device: &B::Device,
    ) -> Result<()> {
        if candidates.is_empty() {
            return Ok(());
        }
        let texts: Vec<String> = candidates.iter().map(|c| c.text.clone()).collect();
        let ranked = self.rank(&texts, device)?;
        let mut unranked: Vec<Option<Candidate>> =
            std::mem::take(candidates).into_iter().map(Some).collect();
        *candidates = ranked
            .into_iter()
            .map(|r| {
                let mut c = unranked[r.line - 1]
                    .take()
                    .expect("rank lists each line once");
                c.score = Some(r.score);
                c
            })
            .collect();
        Ok(())
    }

    /// Validation-split pairs, encoded for this model.
    pub fn validation_pairs(&self) -> Result<EncodedPairs> {
        let tests = read_ab_tests(&self.config.data.valid)?;
        EncodedPairs::new(&tests, &self.tokenizer, self.model.n_ctx())
    }
}

/// Reads lines to score: blank lines are skipped (returned count), the rest kept verbatim
/// (trailing `\r` removed).
pub fn read_lines(text: &str) -> (Vec<String>, usize) {
    let mut blank = 0;
    let lines = text
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| {
            let empty = l.trim().is_empty();
            blank += empty as usize;
            !empty
        })
        .map(String::from)
        .collect();
    (lines, blank)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_lines_skips_blank_lines_and_counts_them() {
        let (lines, blank) = read_lines("First line\r\n\n   \nSecond, with comma\n");
        assert_eq!(lines, vec!["First line", "Second, with comma"]);
        assert_eq!(blank, 2);
        assert_eq!(read_lines(""), (Vec::<String>::new(), 0));
    }

    #[test]
    fn dev_split_is_seeded_and_disjoint() {
        let tests: Vec<AbTest> = (0..20)
            .map(|i| AbTest {
                id: format!("t{i}"),
                variants: Vec::new(),
            })
            .collect();
        let (fit, dev) = dev_split(tests.clone(), 0.1, 3);
        assert_eq!((fit.len(), dev.len()), (18, 2));
        let (fit2, dev2) = dev_split(tests.clone(), 0.1, 3);
        assert_eq!((fit, dev.clone()), (fit2, dev2));
        let (_, dev3) = dev_split(tests, 0.1, 4);
        assert_ne!(dev, dev3);
    }

    #[test]
    fn training_encoding_keeps_the_final_end_of_text_when_cut() {
        let tok = Tokenizer::train_bpe(["hello world"].into_iter(), 300, &SPECIAL_TOKENS).unwrap();
        let (full, cut) = encode_for_training(&tok, "hello world hello world", 64).unwrap();
        assert!(!cut);
        let (short, cut) = encode_for_training(&tok, "hello world hello world", 4).unwrap();
        assert!(cut);
        assert_eq!(short.len(), 4);
        assert_eq!(short[..3], full[..3]);
        assert_eq!(short.last(), full.last());
    }

    /// Variants sharing a headline share an encoded row; training groups hold only kept
    /// pairs, oriented winner first, with the rule's weights.
    #[test]
    fn training_groups_share_rows_and_keep_weighted_pairs() {
        use vitrine_data::ctr::Variant;
        let v = Variant::new;
        let tests = vec![
            AbTest {
                id: "a".into(),
                // z(0,1) = 1.98 (full weight), z(0,2) = 0.23 (dropped by min_z = 0.5)
                variants: vec![v("one", 100, 10), v("two", 100, 20), v("three", 100, 11)],
            },
            AbTest {
                id: "b".into(),
                variants: vec![v("two", 1000, 10), v("four", 1000, 50)],
            },
            AbTest {
                id: "c".into(),
                variants: vec![v("same", 10, 1), v("same", 10, 5)],
            },
        ];
        let tok = Tokenizer::train_bpe(
            ["one two three four same"].into_iter(),
            300,
            &SPECIAL_TOKENS,
        )
        .unwrap();
        let enc = EncodedPairs::new(&tests, &tok, 64).unwrap();
        // Distinct headlines: one, two, three, four, same.
        assert_eq!(enc.rows.len(), 5);
        assert_eq!(enc.row_of, vec![0, 1, 2, 1, 3, 4, 4]);
        let rule = PairRule {
            min_z: 0.5,
            ..PairRule::default()
        };
        let rows = enc.rows.len();
        let g = TrainGroups::new(enc, &rule);
        assert_eq!(g.rows.len(), rows);
        // Test a: (two beats one) kept at full weight, (three beats one) dropped, (two beats
        // three) at z = 1.76 -> weight 0.90; test b: four beats two; test c: no pair.
        assert_eq!(g.groups.len(), 2);
        assert_eq!(g.pairs, 3);
        let a: Vec<(usize, usize)> = g.groups[0].iter().map(|&(w, l, _)| (w, l)).collect();
        assert_eq!(a, vec![(1, 0), (1, 2)]);
        assert!((g.groups[0][0].2 - 1.0).abs() < 1e-6);
        assert!((g.groups[0][1].2 - 1.7585 / 1.96).abs() < 1e-3);
        assert_eq!(g.groups[1][0].0, 3);
        assert_eq!(g.groups[1][0].1, 1);
    }
}
