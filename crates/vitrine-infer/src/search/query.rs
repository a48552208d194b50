//! Answering queries against an index: embed the query, exact top-k, attach metadata.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use serde::Serialize;
use vitrine_index::{Filter, Index, Searcher};

use super::encoder::Encoder;
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

/// What a query is: image files (one ranking each), an item already in the index, or
/// texts (CLIP indexes; one ranking each).
pub enum Query<'a> {
    Images(&'a [PathBuf]),
    ItemId(&'a str),
    Texts(&'a [String]),
}

/// Embeds the query and answers it through `searcher` (exact or the index's graph).
pub fn search<B: Backend>(
    index: &Index,
    searcher: &Searcher<B>,
    encoder: &Encoder<B>,
    query: Query<'_>,
    k: usize,
    max_k: usize,
    filter: &Filter,
) -> Result<Vec<Vec<SearchResult>>> {
    let queries = query_embeddings(index, encoder, query)?;
    let hits = searcher.search(index, &queries, k, max_k, filter)?;
    Ok(results(index, hits))
}

/// Row-major query embeddings, after checking the encoder makes the index's kind.
pub fn query_embeddings<B: Backend>(
    index: &Index,
    encoder: &Encoder<B>,
    query: Query<'_>,
) -> Result<Vec<f32>> {
    if encoder.config.model.embed_dim() != index.dim {
        return Err(InferError::Invalid(format!(
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
        None => Err(InferError::Invalid(
            "the index records no run: pass --run".into(),
        )),
    }
}
