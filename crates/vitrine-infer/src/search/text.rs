//! An index's text part: a BERT-family sentence encoder (e.g. all-MiniLM-L6-v2) that embeds
//! one metadata column of every item and the words of text queries.

use std::path::Path;

use burn::tensor::backend::Backend;
use vitrine_index::{Index, IndexItem, TextSpace};

use crate::error::{InferError, Result};
use crate::sentence::{SentenceEncoder, TextLimits};

/// Texts per forward pass when embedding a catalogue.
const BATCH: usize = 64;

pub struct TextSide<B: Backend> {
    pub encoder: SentenceEncoder<B>,
    pub space: TextSpace,
    pub limits: TextLimits,
}

impl<B: Backend> TextSide<B> {
    /// A sentence encoder (`model`: a folder or `hf:<repo>`) for a new index's `column`.
    pub fn load(model: &str, column: &str, device: &B::Device) -> Result<Self> {
        if column.trim().is_empty() {
            return Err(InferError::Invalid(
                "name the column to embed (--text-column)".into(),
            ));
        }
        let encoder = SentenceEncoder::<B>::load(model, device)?;
        // Folders are recorded absolute, so the index works from any directory.
        let recorded = if model.starts_with("hf:") {
            model.to_string()
        } else {
            std::fs::canonicalize(Path::new(model))
                .map_or_else(|_| model.to_string(), |p| p.display().to_string())
        };
        let space = TextSpace {
            model: recorded,
            column: column.to_string(),
            dim: encoder.config.d_model,
        };
        Ok(Self {
            encoder,
            space,
            limits: TextLimits::default(),
        })
    }

    /// The text part of an existing index (None when it has none).
    pub fn for_index(index: &Index, device: &B::Device) -> Result<Option<Self>> {
        let Some(space) = &index.model.text else {
            return Ok(None);
        };
        let encoder = SentenceEncoder::<B>::load(&space.model, device).map_err(|e| {
            InferError::Invalid(format!("the index's text model {}: {e}", space.model))
        })?;
        if encoder.config.d_model != space.dim {
            return Err(InferError::Invalid(format!(
                "the index holds {}-d text embeddings but {} makes {}-d ones: rebuild the index",
                space.dim, space.model, encoder.config.d_model
            )));
        }
        Ok(Some(Self {
            encoder,
            space: space.clone(),
            limits: TextLimits::default(),
        }))
    }

    /// Unit-norm embeddings of `texts`, row-major (long texts cut as `limits` says).
    pub fn embed(&self, texts: &[String]) -> Result<Vec<f32>> {
        let mut out = self.encoder.embed(texts, &self.limits, BATCH)?;
        for row in out.chunks_mut(self.space.dim) {
            let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
            if !(norm.is_finite() && norm > 0.0) {
                return Err(InferError::Invalid(format!(
                    "{} made a zero or non-finite text embedding",
                    self.space.model
                )));
            }
            row.iter_mut().for_each(|x| *x /= norm);
        }
        Ok(out)
    }

    /// The text an item is embedded from: its column, or else its title.
    pub fn item_text<'a>(&self, item: &'a IndexItem) -> Result<&'a str> {
        let attrs = &item.attrs;
        attrs
            .get(&self.space.column)
            .or_else(|| attrs.get("title"))
            .map(String::as_str)
            .filter(|t| !t.trim().is_empty())
            .ok_or_else(|| {
                InferError::Invalid(format!(
                    "item {:?} has no {} (nor a title) to embed as text",
                    item.id, self.space.column
                ))
            })
    }
}
