//! Approximate nearest neighbours: an HNSW graph over an index's embeddings, built and
//! searched by USearch (Apache-2.0; chosen over hnsw_rs for its speed, in-graph filter
//! predicates, removals and serialisation; see docs/search.md for the measurements).
//!
//! Graph keys are a hash of the item id, so they survive the row moves of removals and
//! compaction. The graph is saved beside the index, `<index>.hnsw`, tagged with the base's
//! log id; a graph for another base is rebuilt. After loading, the graph is brought up to
//! date with the log's adds and removes ([`AnnIndex::catch_up`]).
//!
//! Graph file: `b"VTRHNSW1"`, u64 LE log id, u64 LE key count, keys (u64 LE), then the
//! USearch serialisation.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use usearch::{IndexOptions, MetricKind, ScalarKind};

use crate::{Index, IndexError, Result};

const MAGIC: &[u8; 8] = b"VTRHNSW1";

/// HNSW parameters, fixed when the graph is built except `expansion_search`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnnConfig {
    /// Links per node (HNSW's M). More: better recall, more memory, slower build.
    pub connectivity: usize,
    /// Candidate list while inserting (efConstruction).
    pub expansion_add: usize,
    /// Candidate list while searching (efSearch): the recall / speed dial.
    pub expansion_search: usize,
    /// Below this many items search stays exact (a full scan is fast and exact).
    pub exact_below: usize,
    /// A filter passing less than this share of the items is searched exactly over the
    /// items it passes; a wider one inside the graph, with the filter as its predicate.
    pub filter_exact_below: f64,
    /// Threads used to build the graph (0: all cores).
    pub build_threads: usize,
    /// How the graph stores vectors: f32, or f16 / bf16 / i8 (less memory and bandwidth,
    /// slightly coarser distances; queries stay f32).
    pub quantization: Quantization,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quantization {
    #[default]
    F32,
    F16,
    Bf16,
    I8,
}

impl Default for AnnConfig {
    fn default() -> Self {
        Self {
            connectivity: 32,
            expansion_add: 128,
            expansion_search: 64,
            exact_below: 10_000,
            filter_exact_below: 0.05,
            build_threads: 0,
            quantization: Quantization::F32,
        }
    }
}

impl AnnConfig {
    pub fn validate(&self) -> std::result::Result<(), String> {
        for (name, v) in [
            ("connectivity", self.connectivity),
            ("expansion_add", self.expansion_add),
            ("expansion_search", self.expansion_search),
        ] {
            if v == 0 {
                return Err(format!("ann.{name} = 0: it must be at least 1"));
            }
        }
        if self.connectivity < 2 {
            return Err("ann.connectivity = 1: it must be at least 2".into());
        }
        if !(0.0..=1.0).contains(&self.filter_exact_below) {
            return Err(format!(
                "ann.filter_exact_below = {}: it must be within 0..=1",
                self.filter_exact_below
            ));
        }
        Ok(())
    }
}

/// How vectors are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Inner product of unit vectors (the index's embeddings): score = cosine similarity.
    Cosine,
    /// Squared Euclidean distance: score = -distance.
    L2,
}

/// The engine and its version, for reports.
pub fn engine() -> String {
    format!("usearch {}", usearch::version())
}

/// The graph's key for an item id (FNV-1a, 64 bits: stable across runs and platforms).
pub fn key_of(id: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in id.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

pub fn graph_path(index: &Path) -> PathBuf {
    let mut name = index.as_os_str().to_owned();
    name.push(".hnsw");
    PathBuf::from(name)
}

fn ann_err(what: &str, e: impl std::fmt::Display) -> IndexError {
    IndexError::Backend(format!("HNSW {what}: {e}"))
}

/// An HNSW graph keyed by [`key_of`] the item id.
pub struct AnnIndex {
    inner: usearch::Index,
    metric: Metric,
    pub config: AnnConfig,
    dim: usize,
}

impl AnnIndex {
    fn empty(dim: usize, metric: Metric, config: &AnnConfig, capacity: usize) -> Result<Self> {
        config.validate().map_err(IndexError::Backend)?;
        let options = IndexOptions {
            dimensions: dim,
            metric: match metric {
                Metric::Cosine => MetricKind::IP,
                Metric::L2 => MetricKind::L2sq,
            },
            quantization: match config.quantization {
                Quantization::F32 => ScalarKind::F32,
                Quantization::F16 => ScalarKind::F16,
                Quantization::Bf16 => ScalarKind::BF16,
                Quantization::I8 => ScalarKind::I8,
            },
            connectivity: config.connectivity,
            expansion_add: config.expansion_add,
            expansion_search: config.expansion_search,
            multi: false,
        };
        let inner = usearch::Index::new(&options).map_err(|e| ann_err("init", e))?;
        let threads = build_threads(config);
        inner
            .reserve_capacity_and_threads(capacity.max(16), threads.max(2))
            .map_err(|e| ann_err("reserve", e))?;
        Ok(Self {
            inner,
            metric,
            config: config.clone(),
            dim,
        })
    }

    /// Builds the graph over vectors (row-major [n, dim]) with the given keys, on
    /// `config.build_threads` threads.
    pub fn build(
        vectors: &[f32],
        keys: &[u64],
        dim: usize,
        metric: Metric,
        config: &AnnConfig,
    ) -> Result<Self> {
        let ann = Self::empty(dim, metric, config, keys.len())?;
        let threads = build_threads(config).min(keys.len().max(1));
        let chunk = keys.len().div_ceil(threads.max(1)).max(1);
        std::thread::scope(|s| {
            let handles: Vec<_> = keys
                .chunks(chunk)
                .enumerate()
                .map(|(t, ks)| {
                    let ann = &ann;
                    s.spawn(move || -> Result<()> {
                        for (i, &key) in ks.iter().enumerate() {
                            let row = t * chunk + i;
                            ann.inner
                                .add(key, &vectors[row * dim..(row + 1) * dim])
                                .map_err(|e| ann_err("add", e))?;
                        }
                        Ok(())
                    })
                })
                .collect();
            handles
                .into_iter()
                .try_for_each(|h| h.join().expect("an HNSW build thread panicked"))
        })?;
        Ok(ann)
    }

    /// The graph over an index's current items (cosine).
    pub fn for_index(index: &Index, config: &AnnConfig) -> Result<Self> {
        let keys: Vec<u64> = index.items().iter().map(|it| key_of(&it.id)).collect();
        Self::build(index.embeddings(), &keys, index.dim, Metric::Cosine, config)
    }

    pub fn len(&self) -> usize {
        self.inner.size()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The SIMD kernels the engine picked on this CPU.
    pub fn hardware(&self) -> String {
        self.inner.hardware_acceleration()
    }

    pub fn memory_bytes(&self) -> usize {
        self.inner.memory_usage()
    }

    pub fn set_expansion_search(&mut self, ef: usize) {
        self.config.expansion_search = ef;
        self.inner.change_expansion_search(ef);
    }

    pub fn contains(&self, key: u64) -> bool {
        self.inner.contains(key)
    }

    pub fn add(&self, key: u64, vector: &[f32]) -> Result<()> {
        if vector.len() != self.dim {
            return Err(IndexError::Dim {
                got: vector.len(),
                expected: self.dim,
            });
        }
        if self.inner.contains(key) {
            return Err(IndexError::Backend(format!(
                "HNSW key {key:#x} is taken: two item ids hash alike; rename one"
            )));
        }
        if self.inner.size() >= self.inner.capacity() {
            let grow = (self.inner.capacity() * 2).max(1024);
            self.inner
                .reserve(grow)
                .map_err(|e| ann_err("reserve", e))?;
        }
        self.inner.add(key, vector).map_err(|e| ann_err("add", e))
    }

    pub fn remove(&self, key: u64) -> Result<()> {
        self.inner
            .remove(key)
            .map(|_| ())
            .map_err(|e| ann_err("remove", e))
    }

    /// The k nearest keys as (key, score), best first; `allow` restricts them (applied
    /// inside the graph walk, so k allowed results come back when k exist and are reached).
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        allow: Option<&(dyn Fn(u64) -> bool + Sync)>,
    ) -> Result<Vec<(u64, f32)>> {
        if query.len() != self.dim {
            return Err(IndexError::Dim {
                got: query.len(),
                expected: self.dim,
            });
        }
        let found = match allow {
            None => self.inner.search(query, k),
            Some(f) => self.inner.filtered_search(query, k, f),
        }
        .map_err(|e| ann_err("search", e))?;
        let metric = self.metric;
        Ok(found
            .keys
            .into_iter()
            .zip(found.distances)
            .map(|(key, d)| {
                let score = match metric {
                    Metric::Cosine => 1.0 - d,
                    Metric::L2 => -d,
                };
                (key, score)
            })
            .collect())
    }

    /// Writes the graph atomically, tagged with `log_id` and holding `keys` (its items).
    pub fn save(&self, path: &Path, log_id: u64, keys: &[u64]) -> Result<()> {
        let mut buf = vec![0u8; self.inner.serialized_length()];
        self.inner
            .save_to_buffer(&mut buf)
            .map_err(|e| ann_err("save", e))?;
        vitrine_data::fsio::atomic_save_with(path, |w| {
            use std::io::Write;
            w.write_all(MAGIC)?;
            w.write_all(&log_id.to_le_bytes())?;
            w.write_all(&(keys.len() as u64).to_le_bytes())?;
            for k in keys {
                w.write_all(&k.to_le_bytes())?;
            }
            w.write_all(&buf)
        })
        .map_err(|source| IndexError::Io {
            path: path.to_owned(),
            source,
        })
    }

    /// The graph saved beside `index_path` for the base with `log_id`: (graph, its keys);
    /// None when there is none or it belongs to another base.
    pub fn load(
        path: &Path,
        log_id: u64,
        dim: usize,
        config: &AnnConfig,
    ) -> Result<Option<(Self, Vec<u64>)>> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(IndexError::Io {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        if bytes.len() < 24 || &bytes[..8] != MAGIC {
            return Ok(None);
        }
        let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        if word(8) != log_id {
            return Ok(None);
        }
        let n = word(16) as usize;
        let body = 24usize
            .checked_add(n.saturating_mul(8))
            .filter(|&end| end <= bytes.len());
        let Some(body) = body else {
            return Ok(None);
        };
        let keys: Vec<u64> = (0..n).map(|i| word(24 + i * 8)).collect();
        let ann = Self::empty(dim, Metric::Cosine, config, n)?;
        if ann.inner.load_from_buffer(&bytes[body..]).is_err() || ann.inner.size() != n {
            return Ok(None);
        }
        ann.inner.change_expansion_search(config.expansion_search);
        // Loading sizes the graph to its items: room to grow, and contexts for threads.
        ann.inner
            .reserve_capacity_and_threads((n * 2).max(1024), build_threads(config).max(2))
            .map_err(|e| ann_err("reserve", e))?;
        Ok(Some((ann, keys)))
    }

    /// Brings a graph holding `had` (the keys it was saved with) up to `index`: adds the
    /// items it lacks, drops the ones gone, and re-adds `changed` ids (added again after a
    /// removal, possibly with another embedding).
    pub fn catch_up(&self, had: &[u64], index: &Index, changed: &HashSet<String>) -> Result<()> {
        let had: HashSet<u64> = had.iter().copied().collect();
        let mut now = HashSet::with_capacity(index.len());
        for (row, item) in index.items().iter().enumerate() {
            let key = key_of(&item.id);
            now.insert(key);
            let stale = changed.contains(&item.id);
            if had.contains(&key) && !stale {
                continue;
            }
            if self.inner.contains(key) {
                self.remove(key)?;
            }
            self.add(key, index.embedding(row).unwrap_or_default())?;
        }
        for key in had.difference(&now) {
            if self.inner.contains(*key) {
                self.remove(*key)?;
            }
        }
        Ok(())
    }
}

fn build_threads(config: &AnnConfig) -> usize {
    match config.build_threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::item;
    use crate::ModelInfo;

    fn unit(x: &mut u64, dim: usize) -> Vec<f32> {
        let mut v: Vec<f32> = (0..dim)
            .map(|_| {
                *x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((*x >> 33) % 2000) as f32 / 1000.0 - 1.0
            })
            .collect();
        let n = v.iter().map(|a| a * a).sum::<f32>().sqrt();
        v.iter_mut().for_each(|a| *a /= n);
        v
    }

    fn index(n: usize, dim: usize) -> Index {
        let mut x = 3;
        let mut ix = Index::new(dim, ModelInfo::default());
        for i in 0..n {
            let colour = if i % 10 == 0 { "red" } else { "blue" };
            ix.add(item(&format!("i{i}"), colour), &unit(&mut x, dim))
                .unwrap();
        }
        ix
    }

    fn exact(ix: &Index, q: &[f32], k: usize) -> Vec<u64> {
        let scores: Vec<f32> = (0..ix.len())
            .map(|r| {
                ix.embedding(r)
                    .unwrap()
                    .iter()
                    .zip(q)
                    .map(|(a, b)| a * b)
                    .sum()
            })
            .collect();
        crate::search::top_k(&scores, k)
            .into_iter()
            .map(|(r, _)| key_of(&ix.item(r).unwrap().id))
            .collect()
    }

    #[test]
    fn finds_the_exact_neighbours_of_a_small_set() {
        let ix = index(2000, 16);
        let ann = AnnIndex::for_index(&ix, &AnnConfig::default()).unwrap();
        assert_eq!(ann.len(), 2000);
        let mut x = 99;
        let mut found = 0;
        for _ in 0..50 {
            let q = unit(&mut x, 16);
            let want = exact(&ix, &q, 10);
            let got: Vec<u64> = ann
                .search(&q, 10, None)
                .unwrap()
                .iter()
                .map(|h| h.0)
                .collect();
            found += got.iter().filter(|k| want.contains(k)).count();
        }
        assert!(found >= 490, "recall@10 {}", found as f64 / 500.0);
    }

    #[test]
    fn filters_apply_inside_the_walk() {
        let ix = index(2000, 16);
        let ann = AnnIndex::for_index(&ix, &AnnConfig::default()).unwrap();
        let red: HashSet<u64> = ix
            .items()
            .iter()
            .filter(|it| it.attrs["colour"] == "red")
            .map(|it| key_of(&it.id))
            .collect();
        let allow = |k: u64| red.contains(&k);
        let hits = ann.search(&unit(&mut 5, 16), 10, Some(&allow)).unwrap();
        assert_eq!(hits.len(), 10);
        assert!(hits.iter().all(|h| red.contains(&h.0)));
        assert!(hits.windows(2).all(|w| w[0].1 >= w[1].1), "best first");
    }

    #[test]
    fn save_load_and_catch_up_with_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.index.hnsw");
        let mut ix = index(500, 8);
        let config = AnnConfig::default();
        let ann = AnnIndex::for_index(&ix, &config).unwrap();
        let keys: Vec<u64> = ix.items().iter().map(|it| key_of(&it.id)).collect();
        ann.save(&path, 42, &keys).unwrap();
        assert!(
            AnnIndex::load(&path, 41, 8, &config).unwrap().is_none(),
            "other base"
        );
        let (back, had) = AnnIndex::load(&path, 42, 8, &config).unwrap().unwrap();
        assert_eq!(had, keys);
        // The log removed i0 and i1, then added i1 again elsewhere and a new item.
        ix.remove(&["i0".into(), "i1".into()]).unwrap();
        let moved = vec![1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        ix.add(item("i1", "red"), &moved).unwrap();
        ix.add(item("new", "red"), &unit(&mut 7, 8)).unwrap();
        back.catch_up(&had, &ix, &["i1".to_string()].into())
            .unwrap();
        assert_eq!(back.len(), ix.len());
        assert!(!back.contains(key_of("i0")));
        assert!(back.contains(key_of("new")));
        let top = back.search(&moved, 1, None).unwrap();
        assert_eq!(top[0].0, key_of("i1"));
        assert!((top[0].1 - 1.0).abs() < 1e-5);
        std::fs::write(&path, b"VTRHNSW1 truncated").unwrap();
        assert!(AnnIndex::load(&path, 42, 8, &config).unwrap().is_none());
    }

    #[test]
    fn bad_parameters_are_clear_errors() {
        let zero = AnnConfig {
            expansion_search: 0,
            ..Default::default()
        };
        assert!(zero.validate().unwrap_err().contains("expansion_search"));
        let wide = AnnConfig {
            filter_exact_below: 1.5,
            ..Default::default()
        };
        assert!(wide.validate().unwrap_err().contains("filter_exact_below"));
        assert!(AnnConfig::default().validate().is_ok());
    }
}
