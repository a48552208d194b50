//! What a caption run is: its config (`task = "caption"`), its train/test split, and the
//! catalogue items it captions.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vitrine_data::catalog::{Catalog, CatalogConfig, Item, LoadReport};
use vitrine_data::split::split_indices;
use vitrine_data::transform::{Augment, Preprocess};
use vitrine_models::captioner::CaptionerConfig;

use super::decode::{CaptionLimits, DecodeConfig};
use crate::config::{
    absolutize_in, check_task, resolve_init_path, LoopConfig, NoExtras, RunConfig, TrainSection,
};
use crate::error::{InferError, Result};
use crate::pretrained::pretrained_tokenizer;
use crate::run::RunDir;
use crate::run::TaskKind;
use crate::search::SearchRunConfig;
use crate::tokenizer::TokenizerSource;

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
    pub train: TrainSection<NoExtras>,
    #[serde(default)]
    pub decode: DecodeConfig,
    #[serde(default)]
    pub limits: CaptionLimits,
    #[serde(default)]
    pub eval: CaptionEvalConfig,
}

impl RunConfig for CaptionRunConfig {
    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(InferError::Invalid(m));
        check_task(&self.task, TaskKind::Caption)?;
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
        self.train.fit.validate()?;
        self.limits.validate()?;
        self.decode
            .validate(&self.limits, self.model.decoder.n_ctx)
            .map_err(|e| InferError::Invalid(format!("decode: {e}")))?;
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

    fn fit(&self) -> (&LoopConfig, u64) {
        (&self.train.fit, self.seed)
    }

    fn vocab_size_mut(&mut self) -> Option<(&'static str, &mut usize)> {
        Some((
            "model.decoder.vocab_size",
            &mut self.model.decoder.vocab_size,
        ))
    }

    fn resolve_paths(&mut self, base: &Path) {
        self.data.resolve_paths(base);
        self.tokenizer.resolve_paths(base);
        if let Some(p) = &mut self.init.encoder {
            absolutize_in(base, p);
        }
        resolve_init_path(&mut self.init.model, base);
        if let Some(p) = &mut self.eval.search_run {
            absolutize_in(base, p);
        }
    }
}

impl CaptionRunConfig {
    /// With `init.model`, takes the pretrained captioner's architecture, preprocessing and
    /// tokenizer; returns its folder.
    pub fn adopt_pretrained(&mut self) -> Result<Option<PathBuf>> {
        let Some(spec) = &self.init.model else {
            return Ok(None);
        };
        let dir = vitrine_models::hf::resolve(spec)?;
        self.model = CaptionerConfig::from_hf(&vitrine_models::hf::HfConfig::read(&dir)?)?;
        self.preprocess = Preprocess::from_hf(&dir.join(vitrine_models::hf::PREPROCESSOR_FILE))?;
        if matches!(self.tokenizer, TokenizerSource::Pretrained) {
            self.tokenizer = TokenizerSource::File {
                path: pretrained_tokenizer(&dir)?,
            };
        }
        Ok(Some(dir))
    }

    /// With `init.encoder`, takes the search run's encoder architecture and preprocessing.
    pub fn adopt_search_encoder(&mut self) -> Result<()> {
        if let Some(path) = &self.init.encoder {
            let search: SearchRunConfig = RunDir::new(path).load_config().map_err(|e| {
                InferError::Invalid(format!("init.encoder = {}: {e}", path.display()))
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

pub fn title_of_item(item: &Item) -> Option<&str> {
    item.title
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The caption of item `i` (only items with one are kept by [`open_caption_data`]).
pub fn title_of(catalog: &Catalog, i: usize) -> Result<&str> {
    let item = &catalog.items[i];
    title_of_item(item).ok_or_else(|| {
        InferError::Invalid(format!(
            "{}: item {:?} (row {}) has an empty caption",
            catalog.source_name, item.id, item.row
        ))
    })
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
        return Err(InferError::Invalid(format!(
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
