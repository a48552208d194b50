//! Answering queries against an index: embed the query (image, item, text or a mix), search,
//! attach metadata.

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::tensor::backend::Backend;
use serde::Serialize;
use vitrine_index::{Filter, Index, Searcher};

use super::embedders::Embedders;
use crate::error::{InferError, Result};

/// One ranked result with its metadata.
#[derive(Debug, Clone, Serialize)]
pub struct SearchResult {
    pub rank: usize,
    pub id: String,
    pub score: f32,
    pub title: Option<String>,
    pub attrs: BTreeMap<String, String>,
}

/// The text's share of a mixed query's score unless one is given (CLI and server).
pub const DEFAULT_TEXT_WEIGHT: f32 = 0.5;

/// What a query is: image files, an item already in the index, texts, or an image (or
/// the item) and a text mixed by `text_weight`. One ranking per image or text; when both
/// are given they pair up in order, and a single one goes with each of the others.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<'a> {
    pub images: &'a [PathBuf],
    pub id: Option<&'a str>,
    pub texts: &'a [String],
    /// Share of the text's similarity in a mixed query, in [0, 1].
    pub text_weight: f32,
}

impl Query<'_> {
    /// How many rankings the query makes.
    pub fn rankings(&self) -> Result<usize> {
        if !self.images.is_empty() && self.id.is_some() {
            return Err(InferError::Invalid(
                "give query images or an item id, not both".into(),
            ));
        }
        let images = if self.id.is_some() {
            1
        } else {
            self.images.len()
        };
        let texts = self.texts.len();
        match (images, texts) {
            (0, 0) => Err(InferError::Invalid(
                "a query needs an image, an item id or a text".into(),
            )),
            (a, b) if a == b || a.min(b) <= 1 => Ok(a.max(b)),
            (a, b) => Err(InferError::Invalid(format!(
                "{a} images and {b} texts: give as many of each, or one of either"
            ))),
        }
    }
}

/// Embeds the query and answers it through `searcher` (exact or the index's graph).
pub fn search<B: Backend>(
    index: &Index,
    searcher: &Searcher<B>,
    embedders: &Embedders<B>,
    query: &Query<'_>,
    k: usize,
    max_k: usize,
    filter: &Filter,
) -> Result<Vec<Vec<SearchResult>>> {
    let queries = query_embeddings(index, embedders, query)?;
    let hits = searcher.search(index, &queries, k, max_k, filter)?;
    Ok(results(index, hits))
}

/// Row-major query vectors, one per ranking.
pub fn query_embeddings<B: Backend>(
    index: &Index,
    embedders: &Embedders<B>,
    query: &Query<'_>,
) -> Result<Vec<f32>> {
    let n = query.rankings()?;
    let images = if query.images.is_empty() {
        Vec::new()
    } else {
        let encoder = embedders.image.as_ref().ok_or_else(|| {
            InferError::Invalid(
                "this index holds only text embeddings: query it with a text or an item id".into(),
            )
        })?;
        encoder.embed_files(query.images)?
    };
    let image_dim = images.len() / query.images.len().max(1);
    let pick = |len: usize, i: usize| if len == 1 { 0 } else { i };
    let mut out = Vec::with_capacity(n * index.dim);
    for i in 0..n {
        let image = (!query.images.is_empty()).then(|| {
            let j = pick(query.images.len(), i);
            &images[j * image_dim..(j + 1) * image_dim]
        });
        let text =
            (!query.texts.is_empty()).then(|| query.texts[pick(query.texts.len(), i)].as_str());
        out.extend(embedders.query(index, image, query.id, text, query.text_weight)?);
    }
    Ok(out)
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
