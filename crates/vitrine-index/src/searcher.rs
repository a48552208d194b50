//! One entry point for queries: exact search on the device, or the HNSW graph when the
//! index asks for one and is large enough, with filters applied inside the graph walk or,
//! when they pass few items, exactly over those items.

use std::collections::HashSet;
use std::path::Path;

use burn::tensor::backend::Backend;

use crate::ann::{graph_path, key_of, AnnIndex};
use crate::search::check_query;
use crate::{DeviceIndex, Filter, Hit, Index, Result, StoreConfig};

/// How a query was answered (reported by benchmarks and `--json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Exact,
    Graph,
    GraphFiltered,
    /// A selective filter: exact over the items it passes.
    ExactFiltered,
}

pub struct Searcher<B: Backend> {
    pub exact: DeviceIndex<B>,
    pub ann: Option<AnnIndex>,
}

impl<B: Backend> Searcher<B> {
    /// Exact search only.
    pub fn exact(index: &Index, device: &B::Device) -> Self {
        Self {
            exact: DeviceIndex::new(index, device),
            ann: None,
        }
    }

    /// For an index loaded from `path`: with its graph when the index asks for one, loaded
    /// from `<path>.hnsw` and brought up to date with the log (`replayed_adds`: the ids the
    /// log added), or built when that file is missing or belongs to another base.
    pub fn open(
        index: &Index,
        path: &Path,
        replayed_adds: &HashSet<String>,
        device: &B::Device,
    ) -> Result<Self> {
        let mut s = Self::exact(index, device);
        let Some(config) = &index.ann else {
            return Ok(s);
        };
        let gpath = graph_path(path);
        s.ann = Some(
            match AnnIndex::load(&gpath, index.log_id(), index.dim, config)? {
                Some((ann, had)) => {
                    ann.catch_up(&had, index, replayed_adds)?;
                    if config.huge_pages {
                        // Rescoring reads these rows (a build advises them itself).
                        crate::hugepages::advise_slice(index.embeddings());
                    }
                    ann
                }
                None => {
                    eprintln!(
                        "building the HNSW graph of {} ({} items; {} is missing or stale)",
                        path.display(),
                        index.len(),
                        gpath.display()
                    );
                    let ann = AnnIndex::for_index(index, config)?;
                    // Saved so the next load is quick; a failure only costs that.
                    if let Err(e) = save_graph(&ann, index, path) {
                        eprintln!("could not save {}: {e}", gpath.display());
                    }
                    ann
                }
            },
        );
        Ok(s)
    }

    /// Which way a query with this filter would go.
    pub fn route(&self, index: &Index, allowed: Option<usize>) -> Route {
        let Some(ann) = &self.ann else {
            return match allowed {
                None => Route::Exact,
                Some(_) => Route::ExactFiltered,
            };
        };
        if index.len() < ann.config.exact_below {
            return match allowed {
                None => Route::Exact,
                Some(_) => Route::ExactFiltered,
            };
        }
        match allowed {
            None => Route::Graph,
            Some(n) if (n as f64) < ann.config.filter_exact_below * index.len() as f64 => {
                Route::ExactFiltered
            }
            Some(_) => Route::GraphFiltered,
        }
    }

    /// Top-k rows for each query (row-major [q, dim]), best first; see
    /// [`DeviceIndex::search`] for the arguments.
    pub fn search(
        &self,
        index: &Index,
        queries: &[f32],
        k: usize,
        max_k: usize,
        filter: &Filter,
    ) -> Result<Vec<Vec<Hit>>> {
        let Some(ann) = &self.ann else {
            return self.exact.search(index, queries, k, max_k, filter);
        };
        check_query(index, queries, k, max_k)?;
        let allowed = filter.allowed_rows(index)?;
        let route = self.route(index, allowed.as_ref().map(Vec::len));
        if matches!(route, Route::Exact | Route::ExactFiltered) {
            return self.exact.search_rows(index, queries, k, max_k, allowed);
        }
        let pass: Option<Vec<bool>> = match (&allowed, route) {
            (None, _) => None,
            (Some(rows), _) => {
                let mut bits = vec![false; index.len()];
                rows.iter().for_each(|&r| bits[r] = true);
                Some(bits)
            }
        };
        let allow = |key: u64| {
            index
                .row_of_key(key)
                .is_some_and(|r| pass.as_ref().is_none_or(|b| b[r]))
        };
        // The f32 embedding behind a graph key, for rescoring a coarse graph's candidates.
        let vector_of = |key| index.row_of_key(key).and_then(|r| index.embedding(r));
        queries
            .chunks(index.dim)
            .map(|q| {
                let found = match &pass {
                    None => ann.search_rescored(q, k, None, vector_of)?,
                    Some(_) => ann.search_rescored(q, k, Some(&allow), vector_of)?,
                };
                Ok(found
                    .into_iter()
                    .filter_map(|(key, score)| {
                        let row = index.row_of_key(key)?;
                        let id = index.item(row)?.id.clone();
                        Some(Hit { row, id, score })
                    })
                    .collect())
            })
            .collect()
    }

    /// After `index.add` of the item now at `row`.
    pub fn added(&mut self, index: &Index, row: usize) -> Result<()> {
        if let (Some(ann), Some(item)) = (&self.ann, index.item(row)) {
            ann.add(key_of(&item.id), index.embedding(row).unwrap_or_default())?;
        }
        Ok(())
    }

    /// After `index.remove(ids)` returned `changed`; `len_after` is the index's length.
    pub fn removed(&mut self, ids: &[String], changed: &[usize], len_after: usize) -> Result<()> {
        self.exact.note_removed(changed, len_after);
        if let Some(ann) = &self.ann {
            for id in ids {
                let key = key_of(id);
                if ann.contains(key) {
                    ann.remove(key)?;
                }
            }
        }
        Ok(())
    }

    /// Re-uploads the device copy when enough writes piled up; returns whether it did.
    pub fn maybe_refresh(&mut self, index: &Index, config: &StoreConfig) -> bool {
        let due = self.exact.needs_refresh(index, config);
        if due {
            self.exact.refresh(index);
        }
        due
    }

    /// After the index was saved as a new base (a compaction): the graph is saved for it.
    pub fn saved(&self, index: &Index, path: &Path) -> Result<()> {
        match &self.ann {
            Some(ann) => save_graph(ann, index, path),
            None => Ok(()),
        }
    }
}

/// Saves `ann` beside the index file `path`, for the base `index` was saved as.
pub fn save_graph(ann: &AnnIndex, index: &Index, path: &Path) -> Result<()> {
    let keys: Vec<u64> = index.items().iter().map(|it| key_of(&it.id)).collect();
    ann.save(&graph_path(path), index.log_id(), &keys)
}
