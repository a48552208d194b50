//! Image-to-text (`task = "caption"`): training the encoder-decoder captioner with teacher
//! forcing, and captioning image files with a trained run.
//!
//! The catalogue's title column is the target text. Items are split by id into training
//! and test sets (`split.test_fraction`, seeded; the ids are saved as `split.json`). Each
//! caption is `<|endoftext|> title <|endoftext|>`: the first token starts decoding, the
//! last one ends it. `init.encoder = "runs/<search run>"` starts the image encoder from a
//! visual-search run (its architecture and preprocessing come along) and
//! `init.freeze_encoder` keeps it fixed.

use std::path::{Path, PathBuf};

use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use indicatif::ProgressBar;
use rand::seq::SliceRandom;
use rand::{rngs::StdRng, SeedableRng};
use serde::{Deserialize, Serialize};
use vitrine_data::catalog::{
    decode_pixels, Catalog, CatalogConfig, Item, LoadReport, IMAGE_EXTENSIONS,
};
use vitrine_data::image_io::load_image;
use vitrine_data::split::split_indices;
use vitrine_data::text::{Tokenizer, EOS};
use vitrine_data::transform::{to_pixels, Augment, Preprocess};
use vitrine_models::captioner::{Captioner, CaptionerConfig};

use crate::config::absolutize;
use crate::decode::{decode, CaptionLimits, DecodeConfig, Specials};
use crate::dist::Shard;
use crate::embed::{augmented_batch, batch_tensor, progress_bar};
use crate::error::{io_err, Result, TrainError};
use crate::lm::{
    build_tokenizer, masked_cross_entropy, HostBatch, TokenizerSource, TOKENIZER_FILE,
};
use crate::run::{save_module, RunDir};
use crate::search::mix;
use crate::trainer::{fit, FitOptions, FitSummary, LoopConfig, Task};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CaptionSplit {
    /// Share of the items (by id) held out as the test set.
    pub test_fraction: f32,
    pub seed: u64,
}

impl Default for CaptionSplit {
    fn default() -> Self {
        Self {
            test_fraction: 0.1,
            seed: 7,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CaptionInit {
    /// A visual-search run whose trained encoder (architecture, preprocessing and
    /// weights) starts the captioner's encoder.
    pub encoder: Option<PathBuf>,
    /// Train only the projection and the decoder.
    pub freeze_encoder: bool,
    /// Fine-tune a whole pretrained captioner: a Hugging Face ViT-GPT2
    /// VisionEncoderDecoder folder or `hf:<repo>[@revision]` (e.g.
    /// `hf:nlpconnect/vit-gpt2-image-captioning`). `[model]` and `[preprocess]` then come
    /// from the checkpoint; use `tokenizer.kind = "pretrained"`.
    pub model: Option<String>,
}

/// What `vitrine eval caption` runs on the test split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CaptionEvalConfig {
    /// Beam sizes evaluated (1 = greedy); the other decoding settings come from `[decode]`.
    pub beams: Vec<usize>,
    /// A visual-search run for the nearest-neighbour baseline (none: no baseline).
    pub search_run: Option<PathBuf>,
    /// Test images listed with their captions in `eval.json`.
    pub examples: usize,
}

impl Default for CaptionEvalConfig {
    fn default() -> Self {
        Self {
            beams: vec![1, 3],
            search_run: None,
            examples: 20,
        }
    }
}

fn default_tokenizer() -> TokenizerSource {
    TokenizerSource::Bpe { vocab_size: 1000 }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptionRunConfig {
    pub task: String,
    #[serde(default)]
    pub seed: u64,
    /// Images with a title column (the caption).
    pub data: CatalogConfig,
    #[serde(default)]
    pub split: CaptionSplit,
    #[serde(default)]
    pub preprocess: Preprocess,
    #[serde(default)]
    pub augment: Augment,
    #[serde(default = "default_tokenizer")]
    pub tokenizer: TokenizerSource,
    #[serde(default)]
    pub model: CaptionerConfig,
    #[serde(default)]
    pub init: CaptionInit,
    /// `batch_size` counts images.
    #[serde(default)]
    pub train: LoopConfig,
    #[serde(default)]
    pub decode: DecodeConfig,
    #[serde(default)]
    pub limits: CaptionLimits,
    #[serde(default)]
    pub eval: CaptionEvalConfig,
}

impl CaptionRunConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(TrainError::Invalid(m));
        if self.task != "caption" {
            return bad(format!(
                "task = {:?}: this config is for task \"caption\"",
                self.task
            ));
        }
        if self.data.title_column.is_none() {
            return bad("data.title_column is not set: name the column holding each image's caption (e.g. \"productDisplayName\")".into());
        }
        if matches!(self.tokenizer, TokenizerSource::Char) {
            return bad("tokenizer.kind = \"char\" cannot hold the caption markers: use \"bpe\" or \"file\"".into());
        }
        match (&self.init.model, &self.tokenizer) {
            (None, TokenizerSource::Pretrained) => {
                return bad("tokenizer.kind = \"pretrained\" needs init.model".into())
            }
            (Some(m), TokenizerSource::Bpe { .. }) => {
                return bad(format!("init.model = {m:?} with a newly trained tokenizer: use tokenizer.kind = \"pretrained\""))
            }
            (Some(_), _) if self.init.encoder.is_some() => {
                return bad("init.model and init.encoder both set: a pretrained captioner brings its own encoder".into())
            }
            _ => {}
        }
        self.data.validate()?;
        self.model.validate()?;
        self.preprocess.validate()?;
        self.augment.validate()?;
        self.train.validate()?;
        self.limits.validate()?;
        self.decode
            .validate(&self.limits, self.model.decoder.n_ctx)
            .map_err(|e| TrainError::Invalid(format!("decode: {e}")))?;
        let [c, h, w] = self.model.encoder.input_shape();
        let p = &self.preprocess;
        if [p.channels as usize, p.height as usize, p.width as usize] != [c, h, w] {
            return bad(format!(
                "preprocess produces {}x{}x{} (channels x height x width) but the encoder expects {c}x{h}x{w}",
                p.channels, p.height, p.width
            ));
        }
        let f = self.split.test_fraction;
        if !(f > 0.0 && f <= 0.5) {
            return bad(format!("split.test_fraction = {f} (allowed 0 < f <= 0.5)"));
        }
        if self.eval.beams.is_empty()
            || self
                .eval
                .beams
                .iter()
                .any(|&b| b == 0 || b > self.limits.max_beam)
        {
            return bad(format!(
                "eval.beams = {:?} (each 1..={}, limits.max_beam)",
                self.eval.beams, self.limits.max_beam
            ));
        }
        Ok(())
    }

    /// Makes paths absolute against `base`, so the saved config works from anywhere.
    pub fn resolve_paths(&mut self, base: &Path) {
        self.data.resolve_paths(base);
        if let TokenizerSource::File { path } = &mut self.tokenizer {
            *path = absolutize(base, path);
        }
        if let Some(p) = &mut self.init.encoder {
            *p = absolutize(base, p);
        }
        crate::pretrained::resolve_init_path(&mut self.init.model, base);
        if let Some(p) = &mut self.eval.search_run {
            *p = absolutize(base, p);
        }
    }

    /// With `init.model`, takes the pretrained captioner's architecture, preprocessing and
    /// tokenizer; returns its folder.
    fn adopt_pretrained(&mut self) -> Result<Option<PathBuf>> {
        let Some(spec) = &self.init.model else {
            return Ok(None);
        };
        let dir = vitrine_models::hf::resolve(spec)?;
        self.model = CaptionerConfig::from_hf(&vitrine_models::hf::HfConfig::read(&dir)?)?;
        self.preprocess = Preprocess::from_hf(&dir.join(vitrine_models::hf::PREPROCESSOR_FILE))?;
        if matches!(self.tokenizer, TokenizerSource::Pretrained) {
            self.tokenizer = TokenizerSource::File {
                path: crate::pretrained::pretrained_tokenizer(&dir)?,
            };
        }
        Ok(Some(dir))
    }

    /// With `init.encoder`, takes the search run's encoder architecture and preprocessing.
    fn adopt_search_encoder(&mut self) -> Result<()> {
        if let Some(path) = &self.init.encoder {
            let search = RunDir::new(path).load_config().map_err(|e| {
                TrainError::Invalid(format!("init.encoder = {}: {e}", path.display()))
            })?;
            self.model.encoder = search.model;
            self.preprocess = search.preprocess;
        }
        Ok(())
    }
}

/// The train/test split saved as `split.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaptionSplitRecord {
    pub test_fraction: f32,
    pub seed: u64,
    pub train_ids: Vec<String>,
    pub test_ids: Vec<String>,
}

pub const SPLIT_FILE: &str = "split.json";

/// A caption as a training sequence: `eos` + title + `eos`, cut to `max_len` tokens.
fn encode_caption(
    tok: &Tokenizer,
    eos: u32,
    title: &str,
    max_len: usize,
) -> Result<(Vec<u32>, bool)> {
    let mut ids = vec![eos];
    ids.extend(tok.encode(title)?);
    ids.push(eos);
    let cut = ids.len() > max_len;
    ids.truncate(max_len);
    Ok((ids, cut))
}

fn title_of_item(item: &Item) -> Option<&str> {
    item.title
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The caption of item `i` (only items with one are kept by [`open_caption_data`]).
fn title_of(catalog: &Catalog, i: usize) -> Result<&str> {
    let item = &catalog.items[i];
    title_of_item(item).ok_or_else(|| {
        TrainError::Invalid(format!(
            "{}: item {:?} (row {}) has an empty caption",
            catalog.source_name, item.id, item.row
        ))
    })
}

struct CaptionTask<'a, B: Backend> {
    config: &'a CaptionRunConfig,
    device: B::Device,
    /// Training images, CHW u8, in `seqs` order.
    pixels: Vec<u8>,
    seqs: Vec<Vec<u32>>,
    test_pixels: Vec<u8>,
    test_seqs: Vec<Vec<u32>>,
    epoch_order: Option<(usize, Vec<usize>)>,
}

impl<B: Backend> CaptionTask<'_, B> {
    /// Makes `epoch_order` the seeded shuffle of `epoch`, once per epoch (a pure function
    /// of it, so a resumed run sees the same order).
    fn shuffle_for(&mut self, epoch: usize) {
        if self.epoch_order.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let mut order: Vec<usize> = (0..self.seqs.len()).collect();
            order.shuffle(&mut StdRng::seed_from_u64(mix(
                self.config.seed,
                0xCA9 + epoch as u64,
            )));
            self.epoch_order = Some((epoch, order));
        }
    }
}

fn tokens_tensor<B: Backend>(batch: &HostBatch, device: &B::Device) -> Tensor<B, 2, Int> {
    Tensor::from_data(
        TensorData::new(batch.inputs.clone(), [batch.rows, batch.t]),
        device,
    )
}

/// Token-weighted teacher-forced loss over cached images and their sequences.
pub fn caption_loss<B: Backend>(
    model: &Captioner<B>,
    pixels: &[u8],
    seqs: &[Vec<u32>],
    p: &Preprocess,
    batch_size: usize,
    device: &B::Device,
) -> Result<(f64, usize)> {
    let item = p.pixel_len();
    let (mut sum, mut tokens) = (0.0f64, 0usize);
    for (chunk, px) in seqs
        .chunks(batch_size)
        .zip(pixels.chunks(item * batch_size))
    {
        let hb = HostBatch::from_rows(chunk.iter().map(Vec::as_slice).collect());
        let images = batch_tensor::<B>(px, p, device);
        let logits = model.forward(images, tokens_tensor::<B>(&hb, device))?;
        let loss: f32 = masked_cross_entropy(logits, &hb, device)
            .into_scalar()
            .elem();
        sum += loss as f64 * hb.tokens() as f64;
        tokens += hb.tokens();
    }
    Ok((sum / tokens.max(1) as f64, tokens))
}

impl<B: AutodiffBackend> Task<B, Captioner<B>> for CaptionTask<'_, B> {
    fn batches_per_epoch(&self) -> usize {
        self.seqs.len() / self.config.train.batch_size
    }

    fn loss(
        &mut self,
        model: &Captioner<B>,
        epoch: usize,
        batch: usize,
        shard: Shard,
    ) -> Result<(Tensor<B, 1>, usize)> {
        let bs = self.config.train.batch_size;
        self.shuffle_for(epoch);
        let order = &self.epoch_order.as_ref().expect("shuffled above").1;
        let idx = shard.of(&order[batch * bs..(batch + 1) * bs]);
        let images = augmented_batch::<B>(
            &self.pixels,
            idx,
            &self.config.preprocess,
            &self.config.augment,
            mix(self.config.seed, 0xA06 + epoch as u64),
            &self.device,
        );
        let hb = HostBatch::from_rows(idx.iter().map(|&i| self.seqs[i].as_slice()).collect());
        let memory = if self.config.init.freeze_encoder {
            // A frozen encoder runs on the inner backend: no autodiff graph is recorded for
            // it at all (a detached graph of tracked parameters would never be freed).
            let (tokens, embedding) = model
                .encoder
                .valid()
                .forward_tokens_and_embedding(images.inner());
            model.memory_from_features(
                Tensor::from_inner(tokens),
                Some(Tensor::from_inner(embedding)),
            )
        } else {
            model.memory(images)
        };
        let logits = model
            .decoder
            .forward_with_memory(tokens_tensor::<B>(&hb, &self.device), memory)?;
        Ok((masked_cross_entropy(logits, &hb, &self.device), hb.tokens()))
    }

    fn unit(&self) -> &'static str {
        "tokens"
    }

    fn epoch_end(&mut self, model: &Captioner<B>, _epoch: usize) -> Result<serde_json::Value> {
        let (loss, tokens) = caption_loss(
            &model.valid(),
            &self.test_pixels,
            &self.test_seqs,
            &self.config.preprocess,
            self.config.limits.batch_size,
            &self.device,
        )?;
        Ok(serde_json::json!({ "test_loss": loss, "test_tokens": tokens }))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CaptionTrainReport {
    pub fit: FitSummary,
    pub data: LoadReport,
    pub train_images: usize,
    pub test_images: usize,
    pub test_loss: f64,
    pub vocab_size: usize,
    pub parameters: usize,
    pub truncated_captions: usize,
    pub encoder_init: Option<PathBuf>,
}

/// The catalogue opened and split as a caption run says (the split recomputed from its
/// seed; `split.json` records it).
pub struct CaptionData {
    pub catalog: Catalog,
    pub report: LoadReport,
    /// Items left out because their caption is empty (counted in `report.skipped`).
    pub without_caption: usize,
    pub train: Vec<usize>,
    pub test: Vec<usize>,
}

pub fn open_caption_data(config: &CaptionRunConfig, skip_bad: bool) -> Result<CaptionData> {
    let (mut catalog, mut report) = Catalog::open(&config.data, skip_bad)?;
    // An item without a caption can neither be learned from nor scored: it is left out
    // of the task (and counted), not an error in the catalogue.
    let before = catalog.len();
    let mut kept = Vec::with_capacity(before);
    for item in std::mem::take(&mut catalog.items) {
        if title_of_item(&item).is_some() {
            kept.push(item);
        } else {
            report.warn(format!(
                "{}: item {:?} (row {}) has an empty caption: left out",
                catalog.source_name, item.id, item.row
            ));
        }
    }
    catalog.items = kept;
    let without_caption = before - catalog.len();
    report.kept -= without_caption;
    report.skipped += without_caption;
    let (train, test) = split_indices(catalog.len(), config.split.test_fraction, config.split.seed);
    if train.is_empty() || test.is_empty() {
        return Err(TrainError::Invalid(format!(
            "{} items split into {} training and {} test items: both need at least one",
            catalog.len(),
            train.len(),
            test.len()
        )));
    }
    Ok(CaptionData {
        catalog,
        report,
        without_caption,
        train,
        test,
    })
}

/// Trains (or resumes, when `config` is `None`) a caption run.
pub fn train_caption<B: AutodiffBackend>(
    config: Option<CaptionRunConfig>,
    run: &RunDir,
    opts: &FitOptions,
    skip_bad: bool,
    device: &B::Device,
) -> Result<CaptionTrainReport> {
    let resume = config.is_none();
    let (mut config, init_dir) = match config {
        Some(mut c) => {
            if c.init.model.is_some() && c.init.encoder.is_some() {
                c.validate()?;
            }
            let dir = c.adopt_pretrained()?;
            c.adopt_search_encoder()?;
            (c, dir)
        }
        None => (run.load_toml_config()?, None),
    };
    config.validate()?;
    opts.check_start(run, config.train.batch_size, !resume)?;
    // Only rank 0 of data-parallel training writes the run directory.
    let chief = opts.is_chief();
    let CaptionData {
        catalog,
        mut report,
        without_caption,
        train,
        test,
    } = open_caption_data(&config, skip_bad)?;
    let tokenizer = if resume {
        Tokenizer::from_file(&run.file(TOKENIZER_FILE))?
    } else {
        build_tokenizer(
            &config.tokenizer,
            train
                .iter()
                .map(|&i| catalog.items[i].title.as_deref().unwrap_or_default()),
            &[EOS],
        )?
    };
    let eos = tokenizer
        .token_id(EOS)
        .ok_or_else(|| TrainError::Invalid(format!("the tokenizer has no {EOS} token")))?;
    if !resume {
        config.model.decoder.vocab_size = tokenizer.vocab_size();
    }
    if chief && !resume {
        run.create()?;
        tokenizer.save(&run.file(TOKENIZER_FILE))?;
        run.save_toml_config(&config)?;
        if !opts.quiet && without_caption > 0 {
            eprintln!("note: {without_caption} items have an empty caption and are left out");
        }
        let ids = |v: &[usize]| v.iter().map(|&i| catalog.items[i].id.clone()).collect();
        run.save_json(
            SPLIT_FILE,
            &CaptionSplitRecord {
                test_fraction: config.split.test_fraction,
                seed: config.split.seed,
                train_ids: ids(&train),
                test_ids: ids(&test),
            },
        )?;
    } else if resume
        && run.load_json::<CaptionSplitRecord>(SPLIT_FILE)?.test_ids
            != test
                .iter()
                .map(|&i| catalog.items[i].id.clone())
                .collect::<Vec<_>>()
    {
        return Err(TrainError::Run {
            path: run.path.clone(),
            message: format!(
                "the catalogue's test split no longer matches {SPLIT_FILE} (items were added, removed or re-captioned since the run started): start a new run"
            ),
        });
    } else if resume && config.model.decoder.vocab_size != tokenizer.vocab_size() {
        return Err(TrainError::Run {
            path: run.path.clone(),
            message: format!(
                "tokenizer.json has {} tokens but config.toml says model.decoder.vocab_size = {}",
                tokenizer.vocab_size(),
                config.model.decoder.vocab_size
            ),
        });
    }

    let bar = progress_bar(train.len() + test.len(), "decode", opts.quiet());
    let p = &config.preprocess;
    let limits = &config.data.limits;
    let (train_kept, pixels) = decode_pixels(
        &catalog,
        &train,
        p,
        limits,
        skip_bad,
        &mut report,
        Some(&bar),
    )?;
    let (test_kept, test_pixels) = decode_pixels(
        &catalog,
        &test,
        p,
        limits,
        skip_bad,
        &mut report,
        Some(&bar),
    )?;
    bar.finish_and_clear();
    let unreadable = report.skipped - without_caption;
    if !opts.quiet() && unreadable > 0 {
        eprintln!(
            "warning: skipped {unreadable} unreadable images (--skip-bad); first: {}",
            report
                .warnings
                .get(without_caption.min(report.warnings.len().saturating_sub(1)))
                .map_or("", |s| s.as_str())
        );
    }
    let max_len = config.model.decoder.n_ctx + 1;
    let mut truncated = 0;
    let mut encode = |kept: &[usize]| -> Result<Vec<Vec<u32>>> {
        kept.iter()
            .map(|&i| {
                let (ids, cut) = encode_caption(&tokenizer, eos, title_of(&catalog, i)?, max_len)?;
                truncated += usize::from(cut);
                Ok(ids)
            })
            .collect()
    };
    let seqs = encode(&train_kept)?;
    let test_seqs = encode(&test_kept)?;

    let seeded = crate::dist::seed_guard::<B>(device, config.seed);
    // A resumed run's weights come from its checkpoint (fit loads it), not from `init`.
    let mut model = match &init_dir {
        Some(dir) => {
            let mut m = vitrine_models::captioner::load_hf_vit_gpt2::<B>(dir, device)?.1;
            m.decoder = m.decoder.resize_vocab(config.model.decoder.vocab_size)?;
            m
        }
        None => config.model.init::<B>(device)?,
    };
    if let Some(path) = &config.init.encoder {
        if !resume {
            model.encoder = RunDir::new(path).load_encoder::<B>(&config.model.encoder, device)?;
        }
    }
    let model = seeded.finish(model);
    let parameters = burn::module::Module::num_params(&model);
    let mut task = CaptionTask::<B> {
        config: &config,
        device: device.clone(),
        pixels,
        seqs,
        test_pixels,
        test_seqs,
        epoch_order: None,
    };
    let (model, fit_summary) = fit(model, &mut task, &config.train, run, opts, device)?;
    // Rank 0 reports; the other workers' reports are not shown.
    let (test_loss, _) = if chief {
        caption_loss(
            &model.valid(),
            &task.test_pixels,
            &task.test_seqs,
            p,
            config.limits.batch_size,
            device,
        )?
    } else {
        (f64::NAN, 0)
    };
    if chief && !fit_summary.stopped_early {
        save_module(model.valid(), &run.model_path())?;
    }
    let out = CaptionTrainReport {
        fit: fit_summary,
        data: report,
        train_images: train_kept.len(),
        test_images: test_kept.len(),
        test_loss,
        vocab_size: tokenizer.vocab_size(),
        parameters,
        truncated_captions: truncated,
        encoder_init: config.init.encoder.clone(),
    };
    if chief {
        run.save_json("train-report.json", &out)?;
    }
    Ok(out)
}

/// One input of `vitrine caption`: its caption, or why it has none.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CaptionResult {
    pub image: PathBuf,
    pub caption: Option<String>,
    pub error: Option<String>,
}

/// A trained caption run ready for inference.
pub struct CaptionRun<B: Backend> {
    pub config: CaptionRunConfig,
    pub model: Captioner<B>,
    pub tokenizer: Tokenizer,
    pub dir: RunDir,
    pub specials: Specials,
    pub device: B::Device,
}

impl<B: Backend> CaptionRun<B> {
    pub fn load(path: &Path, device: &B::Device) -> Result<Self> {
        let dir = RunDir::new(path);
        dir.expect_task("caption", "a caption run")?;
        let config: CaptionRunConfig = dir.load_toml_config()?;
        config.validate()?;
        let tokenizer = dir.load_tokenizer(config.model.decoder.vocab_size)?;
        let eos = tokenizer.token_id(EOS).ok_or_else(|| TrainError::Run {
            path: dir.path.clone(),
            message: format!("tokenizer.json has no {EOS} token"),
        })?;
        let model = dir.load_weights(config.model.init::<B>(device)?, device)?;
        Ok(Self {
            config,
            model,
            tokenizer,
            dir,
            specials: Specials { bos: eos, eos },
            device: device.clone(),
        })
    }

    /// The run's decoding settings with `change` applied, checked against its limits.
    pub fn decode_config(&self, change: impl FnOnce(&mut DecodeConfig)) -> Result<DecodeConfig> {
        let mut cfg = self.config.decode.clone();
        change(&mut cfg);
        cfg.validate(&self.config.limits, self.config.model.decoder.n_ctx)?;
        Ok(cfg)
    }

    /// Captions cached CHW u8 images (the run's preprocessing), `limits.batch_size` at a
    /// time.
    pub fn caption_pixels(&self, pixels: &[u8], cfg: &DecodeConfig) -> Result<Vec<String>> {
        cfg.validate(&self.config.limits, self.config.model.decoder.n_ctx)?;
        let p = &self.config.preprocess;
        let item = p.pixel_len();
        let mut out = Vec::with_capacity(pixels.len() / item.max(1));
        for chunk in pixels.chunks(item * self.config.limits.batch_size) {
            let images = batch_tensor::<B>(chunk, p, &self.device);
            for ids in decode(&self.model, images, self.specials, cfg)? {
                out.push(self.tokenizer.decode(&ids)?.trim().to_string());
            }
        }
        Ok(out)
    }

    /// Captions image files. An image that cannot be read or decoded (within the run's
    /// decode limits) gets its error instead; the others are still captioned.
    pub fn caption_files(
        &self,
        paths: &[PathBuf],
        cfg: &DecodeConfig,
        progress: Option<&ProgressBar>,
    ) -> Result<Vec<CaptionResult>> {
        cfg.validate(&self.config.limits, self.config.model.decoder.n_ctx)?;
        let p = &self.config.preprocess;
        let mut out = Vec::with_capacity(paths.len());
        for chunk in paths.chunks(self.config.limits.batch_size) {
            let mut pixels = Vec::new();
            let mut good = Vec::new();
            let start = out.len();
            for path in chunk {
                match load_image(path, &self.config.data.limits) {
                    Ok(img) => {
                        pixels.extend(to_pixels(&img, p, &Augment::default(), None));
                        good.push(out.len());
                        out.push(CaptionResult {
                            image: path.clone(),
                            caption: None,
                            error: None,
                        });
                    }
                    Err(e) => out.push(CaptionResult {
                        image: path.clone(),
                        caption: None,
                        error: Some(e.to_string()),
                    }),
                }
            }
            if !good.is_empty() {
                for (slot, caption) in good.into_iter().zip(self.caption_pixels(&pixels, cfg)?) {
                    out[slot].caption = Some(caption);
                }
            }
            if let Some(bar) = progress {
                bar.inc((out.len() - start) as u64);
            }
        }
        Ok(out)
    }
}

/// Image files directly inside `dir` (by extension, case-insensitive), sorted by name.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        })
        .collect();
    out.sort();
    Ok(out)
}

/// `image,caption,error` CSV of the results (RFC 4180 quoting).
pub fn captions_csv(results: &[CaptionResult]) -> String {
    fn field(s: &str) -> String {
        if s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    }
    let mut out = String::from("image,caption,error\n");
    for r in results {
        out.push_str(&format!(
            "{},{},{}\n",
            field(&r.image.to_string_lossy()),
            field(r.caption.as_deref().unwrap_or("")),
            field(r.error.as_deref().unwrap_or(""))
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_what_needs_quoting() {
        let r = vec![
            CaptionResult {
                image: "a.jpg".into(),
                caption: Some("Nike Men, \"Air\" Shoes".into()),
                error: None,
            },
            CaptionResult {
                image: "b.jpg".into(),
                caption: None,
                error: Some("b.jpg: not an image".into()),
            },
        ];
        assert_eq!(
            captions_csv(&r),
            "image,caption,error\na.jpg,\"Nike Men, \"\"Air\"\" Shoes\",\nb.jpg,,b.jpg: not an image\n"
        );
    }
}
