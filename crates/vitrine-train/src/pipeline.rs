//! The visual-search pipeline shared by the CLI and the server: load a run's encoder,
//! embed catalogues and query images, build and update indexes, answer queries.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use serde::Serialize;
use vitrine_data::catalog::LoadReport;
use vitrine_data::catalog::{Catalog, CatalogConfig};
use vitrine_data::image_io::load_image;
use vitrine_data::transform::{to_pixels, Augment};
use vitrine_index::{DeviceIndex, Filter, Index, IndexItem, ModelInfo};
use vitrine_models::{ImageEncoder, ImageEncoderConfig};

use crate::config::SearchRunConfig;
use crate::embed::{embed_catalog, embed_pixels, progress_bar};
use crate::error::{Result, TrainError};
use crate::pretrained::{is_pretrained, load_vision, TextTower};
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
        let config = run.load_config()?;
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
            None => Err(TrainError::Invalid(format!(
                "text queries need an index built with a CLIP model (with its tokenizer.json); {} is {}",
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

    fn model_info(&self) -> ModelInfo {
        let arch = match (self.pretrained, &self.config.model) {
            (Some(a), _) => a,
            (None, ImageEncoderConfig::Cnn(_)) => "cnn",
            (None, ImageEncoderConfig::Vit(_)) => "vit",
        };
        let run = std::fs::canonicalize(&self.run.path).unwrap_or_else(|_| self.run.path.clone());
        ModelInfo {
            run: run.display().to_string(),
            arch: arch.into(),
        }
    }

    /// Embeds a catalogue's items into `index` (all-or-nothing on duplicate ids).
    pub fn add_catalog(
        &self,
        index: &mut Index,
        catalog: &CatalogConfig,
        skip_bad: bool,
        quiet: bool,
    ) -> Result<AddReport> {
        let (cat, mut report) = Catalog::open(catalog, skip_bad)?;
        for item in &cat.items {
            if index.row_of(&item.id).is_some() {
                return Err(vitrine_index::IndexError::DuplicateId(item.id.clone()).into());
            }
        }
        let all: Vec<usize> = (0..cat.len()).collect();
        let bar = progress_bar(all.len(), "embed", quiet);
        let (kept, emb) = embed_catalog(
            &self.model,
            &cat,
            &all,
            &self.config.preprocess,
            &catalog.limits,
            self.config.eval.batch_size,
            skip_bad,
            &mut report,
            &self.device,
            Some(&bar),
        )?;
        bar.finish_and_clear();
        let dim = index.dim;
        // Validate every row before touching the index, so a failure adds nothing.
        let mut staged = index.clone();
        for (row, &i) in kept.iter().enumerate() {
            let item = &cat.items[i];
            staged.add(item_of(item), &emb[row * dim..(row + 1) * dim])?;
        }
        *index = staged;
        Ok(AddReport {
            added: kept.len(),
            data: report,
        })
    }

    /// Builds a new index of a catalogue (the run's training catalogue by default).
    pub fn build_index(
        &self,
        catalog: Option<&CatalogConfig>,
        skip_bad: bool,
        quiet: bool,
    ) -> Result<(Index, AddReport)> {
        if catalog.is_none() && self.pretrained.is_some() {
            return Err(TrainError::Invalid(
                "a pretrained model has no training catalogue: name the items to index (--csv/--images, --image-folder or --idx-images)".into(),
            ));
        }
        let mut index = Index::new(self.config.model.embed_dim(), self.model_info());
        let report = self.add_catalog(
            &mut index,
            catalog.unwrap_or(&self.config.data),
            skip_bad,
            quiet,
        )?;
        Ok((index, report))
    }
}

fn item_of(item: &vitrine_data::catalog::Item) -> IndexItem {
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

/// One ranked result with its metadata.
#[derive(Debug, Clone, Serialize)]
pub struct SearchResult {
    pub rank: usize,
    pub id: String,
    pub score: f32,
    pub title: Option<String>,
    pub attrs: BTreeMap<String, String>,
}

/// What a query is: image files (one ranking each), an item already in the index, or
/// texts (CLIP indexes; one ranking each).
pub enum Query<'a> {
    Images(&'a [PathBuf]),
    ItemId(&'a str),
    Texts(&'a [String]),
}

pub fn search<B: Backend>(
    index: &Index,
    encoder: &Encoder<B>,
    query: Query<'_>,
    k: usize,
    max_k: usize,
    filter: &Filter,
) -> Result<Vec<Vec<SearchResult>>> {
    let queries = query_embeddings(index, encoder, query)?;
    let dev = DeviceIndex::<B>::new(index, &encoder.device);
    let hits = dev.search(index, &queries, k, max_k, filter)?;
    Ok(results(index, hits))
}

/// Row-major query embeddings, after checking the encoder makes the index's kind.
pub fn query_embeddings<B: Backend>(
    index: &Index,
    encoder: &Encoder<B>,
    query: Query<'_>,
) -> Result<Vec<f32>> {
    if encoder.config.model.embed_dim() != index.dim {
        return Err(TrainError::Invalid(format!(
            "the index holds {}-d embeddings but the run's encoder makes {}-d ones: rebuild the index with this run",
            index.dim,
            encoder.config.model.embed_dim()
        )));
    }
    Ok(match query {
        Query::Images(paths) => encoder.embed_files(paths)?,
        Query::Texts(texts) => encoder.embed_texts(texts)?,
        Query::ItemId(id) => {
            let row = index
                .row_of(id)
                .ok_or_else(|| vitrine_index::IndexError::UnknownId(id.to_string()))?;
            index.embedding(row).expect("row exists").to_vec()
        }
    })
}

/// Index hits with their ranks and metadata.
pub fn results(index: &Index, hits: Vec<Vec<vitrine_index::Hit>>) -> Vec<Vec<SearchResult>> {
    hits.into_iter()
        .map(|hits| {
            hits.into_iter()
                .enumerate()
                .map(|(r, h)| {
                    let attrs = index
                        .item(h.row)
                        .map(|it| it.attrs.clone())
                        .unwrap_or_default();
                    SearchResult {
                        rank: r + 1,
                        id: h.id,
                        score: h.score,
                        title: attrs.get("title").cloned(),
                        attrs,
                    }
                })
                .collect()
        })
        .collect()
}

/// Resolves the run an index was built with: the `--run` given, or the one recorded in it.
pub fn index_run(index: &Index, run: Option<&Path>) -> Result<PathBuf> {
    match run {
        Some(r) => Ok(r.to_owned()),
        None if !index.model.run.is_empty() => Ok(PathBuf::from(&index.model.run)),
        None => Err(TrainError::Invalid(
            "the index records no run: pass --run".into(),
        )),
    }
}
