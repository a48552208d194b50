//! A search run's encoder (or a pretrained ViT / CLIP): load it, embed image files and
//! catalogues, build and update indexes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use serde::Serialize;
use vitrine_data::catalog::Catalog;
use vitrine_data::catalog::LoadReport;
use vitrine_data::image_io::load_image;
use vitrine_data::transform::{to_pixels, Augment};
use vitrine_index::{IndexItem, ModelInfo};
use vitrine_models::{ImageEncoder, ImageEncoderConfig};

use super::config::SearchRunConfig;
use super::embed::{embed_catalog, embed_pixels};
use crate::error::{InferError, Result};
use crate::pretrained::{is_pretrained, load_vision, TextTower};
use crate::progress::progress_bar;
use crate::run::RunDir;

/// A trained encoder with the preprocessing it was trained with, or a pretrained one
/// (ViT, CLIP) with its own.
pub struct Encoder<B: Backend> {
    pub run: RunDir,
    pub config: SearchRunConfig,
    pub model: ImageEncoder<B>,
    pub device: B::Device,
    /// `vit` / `clip` for a pretrained model (then there is no training catalogue).
    pub pretrained: Option<&'static str>,
    /// CLIP's text tower: text queries.
    pub text: Option<TextTower<B>>,
}

impl<B: Backend> Encoder<B> {
    /// A run directory, or a pretrained model: a Hugging Face folder or `hf:<repo>`.
    pub fn load(run: &Path, device: &B::Device) -> Result<Self> {
        if is_pretrained(run) {
            return Self::load_pretrained(&run.to_string_lossy(), device);
        }
        let run = RunDir::new(run);
        let config: SearchRunConfig = run.load_config()?;
        let model = run.load_encoder::<B>(&config.model, device)?;
        Ok(Self {
            run,
            config,
            model,
            device: device.clone(),
            pretrained: None,
            text: None,
        })
    }

    fn load_pretrained(spec: &str, device: &B::Device) -> Result<Self> {
        let pv = load_vision::<B>(spec, device)?;
        let config = SearchRunConfig::for_pretrained(&pv.dir, pv.config, pv.preprocess);
        Ok(Self {
            run: RunDir::new(&pv.dir),
            config,
            model: pv.encoder,
            device: device.clone(),
            pretrained: Some(pv.arch),
            text: pv.text,
        })
    }

    /// Unit-norm text embeddings (CLIP only), row-major.
    pub fn embed_texts(&self, texts: &[String]) -> Result<Vec<f32>> {
        match &self.text {
            Some(t) => t.embed(texts),
            None => Err(InferError::Invalid(format!(
                "text queries need an index built with a text model (--text-model) or a CLIP model (with its tokenizer.json); {} is {}",
                self.run.path.display(),
                self.pretrained.map_or("a trained image-only run".to_string(), |a| format!("a pretrained {a} image encoder"))
            ))),
        }
    }

    pub fn model_config(&self) -> &ImageEncoderConfig {
        &self.config.model
    }

    /// Decodes (with the run's decode limits), preprocesses and embeds image files.
    pub fn embed_files(&self, paths: &[PathBuf]) -> Result<Vec<f32>> {
        let p = &self.config.preprocess;
        let mut pixels = Vec::new();
        for path in paths {
            let img = load_image(path, &self.config.data.limits)?;
            pixels.extend(to_pixels(&img, p, &Augment::default(), None));
        }
        Ok(embed_pixels(
            &self.model,
            &pixels,
            p,
            self.config.eval.batch_size,
            &self.device,
            None,
        ))
    }

    /// Embeds catalogue items `items` with the run's preprocessing (decoded within
    /// `limits`), showing a progress bar labelled `what`: the kept items and their
    /// embeddings (see [`embed_catalog`]).
    #[allow(clippy::too_many_arguments)]
    pub fn embed_items(
        &self,
        catalog: &Catalog,
        items: &[usize],
        limits: &vitrine_data::image_io::DecodeLimits,
        skip_bad: bool,
        report: &mut LoadReport,
        what: &str,
        quiet: bool,
    ) -> Result<(Vec<usize>, Vec<f32>)> {
        let bar = progress_bar(items.len(), what, quiet);
        let out = embed_catalog(
            &self.model,
            catalog,
            items,
            &self.config.preprocess,
            limits,
            self.config.eval.batch_size,
            skip_bad,
            report,
            &self.device,
            Some(&bar),
        );
        bar.finish_and_clear();
        out
    }

    pub(crate) fn model_info(&self) -> ModelInfo {
        let arch = match (self.pretrained, &self.config.model) {
            (Some(a), _) => a,
            (None, ImageEncoderConfig::Cnn(_)) => "cnn",
            (None, ImageEncoderConfig::Vit(_)) => "vit",
        };
        let run = std::fs::canonicalize(&self.run.path).unwrap_or_else(|_| self.run.path.clone());
        ModelInfo {
            run: run.display().to_string(),
            arch: arch.into(),
            text: None,
        }
    }
}

pub(crate) fn item_of(item: &vitrine_data::catalog::Item) -> IndexItem {
    let mut attrs: BTreeMap<String, String> = item.attrs.clone();
    if let Some(title) = &item.title {
        attrs.entry("title".into()).or_insert_with(|| title.clone());
    }
    if let Some(label) = &item.label {
        attrs.entry("label".into()).or_insert_with(|| label.clone());
    }
    IndexItem {
        id: item.id.clone(),
        attrs,
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct AddReport {
    pub added: usize,
    pub data: LoadReport,
}
