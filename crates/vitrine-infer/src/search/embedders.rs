//! What makes an index's rows and its queries: an image encoder (a search run, or a
//! pretrained ViT / CLIP), a sentence encoder over one text column, or both (a hybrid
//! index, see [`vitrine_index::layout`]).

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use vitrine_data::catalog::{Catalog, CatalogConfig};
use vitrine_index::{Index, IndexError, IndexItem, Layout, ModelInfo, TextQuery};

use super::encoder::{item_of, AddReport, Encoder};
use super::text::TextSide;
use crate::error::{InferError, Result};
use crate::progress::progress_bar;

pub struct Embedders<B: Backend> {
    pub image: Option<Encoder<B>>,
    pub text: Option<TextSide<B>>,
}

impl<B: Backend> Embedders<B> {
    /// For a new index: the image encoder of `run`, a sentence encoder `(model, column)`,
    /// or both.
    pub fn new(run: Option<&Path>, text: Option<(&str, &str)>, device: &B::Device) -> Result<Self> {
        if run.is_none() && text.is_none() {
            return Err(InferError::Invalid(
                "an index needs an image encoder (--run), a text model (--text-model with --text-column), or both".into(),
            ));
        }
        Ok(Self {
            image: run.map(|r| Encoder::load(r, device)).transpose()?,
            text: text
                .map(|(m, c)| TextSide::load(m, c, device))
                .transpose()?,
        })
    }

    /// For an existing index: its image encoder (the run it records, or `run`) when its
    /// rows have an image part, and its text model when they have a text part.
    pub fn for_index(index: &Index, run: Option<&Path>, device: &B::Device) -> Result<Self> {
        let layout = Layout::of(index);
        let image = if layout.image > 0 {
            let run = index_run(index, run)?;
            let encoder = Encoder::load(&run, device)?;
            if encoder.config.model.embed_dim() != layout.image {
                return Err(InferError::Invalid(format!(
                    "the index holds {}-d image embeddings but the encoder of {} makes {}-d ones: rebuild the index with this run",
                    layout.image,
                    run.display(),
                    encoder.config.model.embed_dim()
                )));
            }
            Some(encoder)
        } else {
            None
        };
        Ok(Self {
            image,
            text: TextSide::for_index(index, device)?,
        })
    }

    fn layout(&self) -> Layout {
        Layout {
            image: self
                .image
                .as_ref()
                .map_or(0, |e| e.config.model.embed_dim()),
            text: self.text.as_ref().map_or(0, |t| t.space.dim),
        }
    }

    fn model_info(&self) -> ModelInfo {
        let mut info = self
            .image
            .as_ref()
            .map(Encoder::model_info)
            .unwrap_or_default();
        info.text = self.text.as_ref().map(|t| t.space.clone());
        info
    }

    /// Builds a new index of a catalogue (the image run's training catalogue by default).
    pub fn build_index(
        &self,
        catalog: Option<&CatalogConfig>,
        skip_bad: bool,
        quiet: bool,
    ) -> Result<(Index, AddReport)> {
        let catalog = match (catalog, &self.image) {
            (Some(c), _) => c,
            (None, Some(e)) if e.pretrained.is_none() => &e.config.data,
            _ => {
                return Err(InferError::Invalid(
                    "name the items to index (--csv/--images, --image-folder or --idx-images): only a search run has a training catalogue".into(),
                ))
            }
        };
        let mut index = Index::new(self.layout().dim(), self.model_info());
        let report = self.add_catalog(&mut index, catalog, skip_bad, quiet)?;
        Ok((index, report))
    }

    /// Embeds a catalogue's items into `index`: all of them or, on any error (a duplicate
    /// id, an item without text), none. `skip_bad` skips bad images and textless items.
    pub fn add_catalog(
        &self,
        index: &mut Index,
        catalog: &CatalogConfig,
        skip_bad: bool,
        quiet: bool,
    ) -> Result<AddReport> {
        let layout = Layout::of(index);
        if layout != self.layout() {
            return Err(InferError::Invalid(format!(
                "the index's rows are {:?} but these encoders make {:?}",
                layout,
                self.layout()
            )));
        }
        let (cat, mut report) = Catalog::open(catalog, skip_bad)?;
        for item in &cat.items {
            if index.row_of(&item.id).is_some() {
                return Err(IndexError::DuplicateId(item.id.clone()).into());
            }
        }
        let all: Vec<usize> = (0..cat.len()).collect();
        let (kept, mut images) = match &self.image {
            Some(e) => {
                let (kept, emb) = e.embed_items(
                    &cat,
                    &all,
                    &catalog.limits,
                    skip_bad,
                    &mut report,
                    "embed images",
                    quiet,
                )?;
                (kept, Some(emb))
            }
            None => (all, None),
        };
        let mut items: Vec<IndexItem> = kept.iter().map(|&i| item_of(&cat.items[i])).collect();
        let texts = match &self.text {
            Some(t) => {
                let mut texts = Vec::with_capacity(items.len());
                let mut keep = Vec::with_capacity(items.len());
                for item in &items {
                    match t.item_text(item) {
                        Ok(s) => {
                            texts.push(s.to_string());
                            keep.push(true);
                        }
                        Err(e) if skip_bad => {
                            report.skipped += 1;
                            report.kept = report.kept.saturating_sub(1);
                            report.warn(e.to_string());
                            keep.push(false);
                        }
                        Err(e) => return Err(e),
                    }
                }
                retain_rows(&mut items, images.as_mut(), layout.image, &keep);
                let bar = progress_bar(texts.len(), "embed texts", quiet);
                let mut emb = Vec::with_capacity(texts.len() * t.space.dim);
                for chunk in texts.chunks(256) {
                    emb.extend(t.embed(chunk)?);
                    bar.inc(chunk.len() as u64);
                }
                bar.finish_and_clear();
                Some(emb)
            }
            None => None,
        };
        // Validate every row before touching the index, so a failure adds nothing.
        let mut staged = index.clone();
        for (row, item) in items.into_iter().enumerate() {
            let image = images
                .as_deref()
                .map(|e| &e[row * layout.image..(row + 1) * layout.image]);
            let text = texts
                .as_deref()
                .map(|e| &e[row * layout.text..(row + 1) * layout.text]);
            staged.add(item, &layout.row(image, text)?)?;
        }
        let added = staged.len() - index.len();
        *index = staged;
        Ok(AddReport {
            added,
            data: report,
        })
    }

    /// The row of one item given its image embedding (when the index has an image part):
    /// its text part is embedded from the item's text column.
    pub fn item_row(
        &self,
        index: &Index,
        item: &IndexItem,
        image: Option<&[f32]>,
    ) -> Result<Vec<f32>> {
        let layout = Layout::of(index);
        let text = match &self.text {
            Some(t) => Some(t.embed(&[t.item_text(item)?.to_string()])?),
            None => None,
        };
        Ok(layout.row(image, text.as_deref())?)
    }

    /// The query vector of an image embedding, an item of the index, a text, or an image
    /// (or item) and a text mixed with `text_weight`.
    pub fn query(
        &self,
        index: &Index,
        image: Option<&[f32]>,
        id: Option<&str>,
        text: Option<&str>,
        text_weight: f32,
    ) -> Result<Vec<f32>> {
        let layout = Layout::of(index);
        let item_row = |id: &str| {
            let row = index
                .row_of(id)
                .ok_or_else(|| IndexError::UnknownId(id.to_string()))?;
            Ok::<_, InferError>(index.embedding(row).expect("row exists").to_vec())
        };
        let from_item = match (id, text) {
            // "More like this": the item's whole row.
            (Some(id), None) => return item_row(id),
            (Some(id), Some(_)) => Some(layout.image_part(&item_row(id)?).ok_or_else(|| {
                InferError::Invalid(
                    "this index holds only text embeddings: an item and a text cannot be mixed"
                        .into(),
                )
            })?),
            (None, _) => None,
        };
        let image = image.or(from_item.as_deref());
        let text_emb = match text {
            None => None,
            Some(t) => Some(self.embed_text(t, &layout)?),
        };
        let text_query = text_emb.as_ref().map(|(v, in_text)| {
            if *in_text {
                TextQuery::TextSpace(v)
            } else {
                TextQuery::ImageSpace(v)
            }
        });
        Ok(layout.query(image, text_query, text_weight)?)
    }

    /// A text's embedding and whether it is in the text part (else CLIP's image space).
    fn embed_text(&self, text: &str, layout: &Layout) -> Result<(Vec<f32>, bool)> {
        let texts = [text.to_string()];
        match (&self.text, &self.image) {
            (Some(t), _) if layout.text > 0 => Ok((t.embed(&texts)?, true)),
            (_, Some(e)) => Ok((e.embed_texts(&texts)?, false)),
            _ => Err(InferError::Invalid(
                "this index has no text model: build it with --text-model".into(),
            )),
        }
    }
}

/// Resolves the run an index was built with: the `--run` given, or the one recorded in it.
pub fn index_run(index: &Index, run: Option<&Path>) -> Result<PathBuf> {
    match run {
        Some(r) => Ok(r.to_owned()),
        None if !index.model.run.is_empty() => Ok(PathBuf::from(&index.model.run)),
        None => Err(InferError::Invalid(
            "the index records no run: pass --run".into(),
        )),
    }
}

/// Keeps the items (and their image rows) whose `keep` is true.
fn retain_rows(
    items: &mut Vec<IndexItem>,
    images: Option<&mut Vec<f32>>,
    dim: usize,
    keep: &[bool],
) {
    if keep.iter().all(|k| *k) {
        return;
    }
    let mut flags = keep.iter();
    items.retain(|_| *flags.next().expect("one flag per item"));
    if let Some(images) = images {
        let old = std::mem::take(images);
        for (row, chunk) in old.chunks(dim).enumerate() {
            if keep[row] {
                images.extend_from_slice(chunk);
            }
        }
    }
}
