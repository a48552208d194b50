//! Approximate nearest neighbours: an HNSW graph over an index's embeddings, built and
//! searched by USearch (Apache-2.0; chosen over hnsw_rs for its speed, in-graph filter
//! predicates, removals and serialisation; see docs/search.md for the measurements).
//!
//! Graph keys are a hash of the item id, so they survive the row moves of removals and
//! compaction. The graph is saved beside the index, `<index>.hnsw`, tagged with the base's
//! log id; a graph for another base is rebuilt. After loading, the graph is brought up to
//! date with the log's adds and removes ([`AnnIndex::catch_up`]).
//!
//! Graph file: `b"VTRHNSW2"`, u64 LE log id, the 8-bit codebook (f32 LE `lo`, `step`; both 0
//! when the graph stores floats), u64 LE key count, keys (u64 LE), then the USearch
//! serialisation. Files of the first version (`VTRHNSW1`: no codebook) still load.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use usearch::{IndexOptions, MetricKind, ScalarKind};

use crate::{hugepages, Index, IndexError, Result};

const MAGIC: &[u8; 8] = b"VTRHNSW2";
const MAGIC_V1: &[u8; 8] = b"VTRHNSW1";
/// Adds between two looks for new arenas to ask huge pages for (a look reads
/// `/proc/self/maps`).
const ADVISE_EVERY: usize = 4096;

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
    /// How the graph stores vectors: f32, or f16 / bf16 / i8 / sq8 (less memory and
    /// bandwidth, slightly coarser distances; queries stay f32 at the interface).
    pub quantization: Quantization,
    /// With a graph that stores f16 / bf16 / i8 / sq8, ask it for ⌈k × `rescore`⌉
    /// candidates and rank them by exact f32 scores from the embeddings themselves (Qdrant's
    /// oversampling and rescoring). 1 keeps the graph's k items with exact scores; 0 uses
    /// the graph's scores as they are; otherwise at least 1. Ignored for f32 graphs.
    pub rescore: f64,
    /// Ask the kernel for 2 MiB pages under the graph and the vectors it rescores with
    /// ([`crate::hugepages`]): fewer TLB misses on the walk's scattered loads.
    pub huge_pages: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quantization {
    #[default]
    F32,
    F16,
    Bf16,
    /// USearch's own cast: components times 127, so only for vectors within [-1, 1].
    I8,
    /// 8-bit codes on one range learned from the vectors the graph is built on ([`Sq8`]):
    /// a quarter of f32's bytes per vector, lossless for 0–255 integer data such as pixels.
    Sq8,
}

/// Scalar quantisation to 8 bits with one range for every component, `x ≈ lo + step * code`,
/// so distances between codes keep the order of true distances up to rounding (a range per
/// component would not: the kernels compare codes, never decoded floats). L2 graphs store
/// u8 codes over [min, max] of the build vectors; cosine (inner-product) graphs store i8
/// codes symmetric around 0 over [-max |x|, max |x|] (`lo` = 0: queries are coded alike, so
/// an offset would add lo × the sum of each item's components to its inner product).
/// Vectors added later are clamped into the range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sq8 {
    pub lo: f32,
    pub step: f32,
}

impl Sq8 {
    /// The range of `vectors` for `metric`; an empty set gets unit vectors' range (cosine) or
    /// integer steps from 0 (L2).
    pub fn fit(vectors: &[f32], metric: Metric) -> Self {
        let finite = vectors.iter().copied().filter(|x| x.is_finite());
        match metric {
            Metric::Cosine => {
                let m = finite.fold(0f32, |m, x| m.max(x.abs()));
                let m = if m > 0.0 { m } else { 1.0 };
                Self {
                    lo: 0.0,
                    step: m / 127.0,
                }
            }
            Metric::L2 => {
                let (lo, hi) = finite.fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), x| {
                    (lo.min(x), hi.max(x))
                });
                if lo.is_finite() && hi > lo {
                    Self {
                        lo,
                        step: (hi - lo) / 255.0,
                    }
                } else if lo.is_finite() {
                    Self { lo, step: 1.0 }
                } else {
                    Self { lo: 0.0, step: 1.0 }
                }
            }
        }
    }

    fn encode_u8(&self, x: &[f32]) -> Vec<u8> {
        x.iter()
            .map(|&v| ((v - self.lo) / self.step).round().clamp(0.0, 255.0) as u8)
            .collect()
    }

    fn encode_i8(&self, x: &[f32]) -> Vec<i8> {
        x.iter()
            .map(|&v| (v / self.step).round().clamp(-127.0, 127.0) as i8)
            .collect()
    }

    /// Code-space distances (squared L2, inner product) times this are true ones.
    fn scale(&self) -> f32 {
        self.step * self.step
    }
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
            rescore: 1.0,
            huge_pages: true,
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
        if !(self.rescore == 0.0 || (self.rescore.is_finite() && self.rescore >= 1.0)) {
            return Err(format!(
                "ann.rescore = {}: it must be 0 (off) or at least 1",
                self.rescore
            ));
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
    /// Set when the graph stores 8-bit codes of [`Quantization::Sq8`].
    sq8: Option<Sq8>,
    /// USearch keeps one working context per concurrent caller and refuses a call when all
    /// are taken; callers past that many wait here for one instead.
    contexts: Permits,
    /// With `huge_pages`: the mappings seen so far, to advise the arenas USearch adds.
    pages: Option<std::sync::Mutex<hugepages::Watch>>,
}

/// A counting semaphore over USearch's per-thread contexts.
struct Permits {
    count: usize,
    free: std::sync::Mutex<usize>,
    freed: std::sync::Condvar,
}

impl Permits {
    fn new(count: usize) -> Self {
        Self {
            count,
            free: std::sync::Mutex::new(count),
            freed: std::sync::Condvar::new(),
        }
    }

    /// Runs `f` holding one context.
    fn with<T>(&self, f: impl FnOnce() -> T) -> T {
        {
            // A poisoned lock only means another caller panicked; the count is still right.
            let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
            while *free == 0 {
                free = self.freed.wait(free).unwrap_or_else(|e| e.into_inner());
            }
            *free -= 1;
        }
        struct Release<'a>(&'a Permits);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                *self.0.free.lock().unwrap_or_else(|e| e.into_inner()) += 1;
                self.0.freed.notify_one();
            }
        }
        let _release = Release(self);
        f()
    }
}

impl AnnIndex {
    fn empty(
        dim: usize,
        metric: Metric,
        config: &AnnConfig,
        capacity: usize,
        sq8: Option<Sq8>,
    ) -> Result<Self> {
        config.validate().map_err(IndexError::Backend)?;
        // Taken first, so the graph's own first allocations count as new.
        let pages = config
            .huge_pages
            .then(|| std::sync::Mutex::new(hugepages::Watch::new()));
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
                Quantization::Sq8 => match metric {
                    Metric::Cosine => ScalarKind::I8,
                    Metric::L2 => ScalarKind::U8,
                },
            },
            connectivity: config.connectivity,
            expansion_add: config.expansion_add,
            expansion_search: config.expansion_search,
            multi: false,
        };
        let inner = usearch::Index::new(&options).map_err(|e| ann_err("init", e))?;
        let threads = build_threads(config).max(2);
        inner
            .reserve_capacity_and_threads(capacity.max(16), threads)
            .map_err(|e| ann_err("reserve", e))?;
        Ok(Self {
            inner,
            metric,
            config: config.clone(),
            dim,
            sq8,
            contexts: Permits::new(threads),
            pages,
        })
    }

    /// Asks for huge pages under what the graph mapped since the last call (no-op without
    /// `huge_pages`).
    fn advise_new_pages(&self) {
        if let Some(w) = &self.pages {
            w.lock().unwrap_or_else(|e| e.into_inner()).advise_new();
        }
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
        let sq8 = (config.quantization == Quantization::Sq8).then(|| Sq8::fit(vectors, metric));
        let ann = Self::empty(dim, metric, config, keys.len(), sq8)?;
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
                            // USearch maps arenas as the graph grows: ask for huge pages
                            // under each new one while it is still mostly untouched.
                            if t == 0 && i.is_multiple_of(ADVISE_EVERY) {
                                ann.advise_new_pages();
                            }
                            let row = t * chunk + i;
                            ann.add_unchecked(key, &vectors[row * dim..(row + 1) * dim])?;
                        }
                        Ok(())
                    })
                })
                .collect();
            handles
                .into_iter()
                .try_for_each(|h| h.join().expect("an HNSW build thread panicked"))
        })?;
        if config.huge_pages {
            ann.advise_new_pages();
            // Rescoring reads `vectors`.
            hugepages::advise_slice(vectors);
        }
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

    /// The 8-bit codebook, when the graph stores codes.
    pub fn sq8(&self) -> Option<Sq8> {
        self.sq8
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
                .reserve_capacity_and_threads(grow, self.contexts.count)
                .map_err(|e| ann_err("reserve", e))?;
        }
        self.add_unchecked(key, vector)?;
        // Catalogue adds after a load grow the graph into new arenas too.
        if self.inner.size().is_multiple_of(ADVISE_EVERY) {
            self.advise_new_pages();
        }
        Ok(())
    }

    /// Adds in the graph's stored form: f32 (USearch casts to its scalar) or our codes.
    fn add_unchecked(&self, key: u64, vector: &[f32]) -> Result<()> {
        self.contexts
            .with(|| match (self.sq8, self.metric) {
                (None, _) => self.inner.add(key, vector),
                (Some(q), Metric::Cosine) => self.inner.add(key, &q.encode_i8(vector)),
                (Some(q), Metric::L2) => self.inner.add(key, &q.encode_u8(vector)),
            })
            .map_err(|e| ann_err("add", e))
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
        let found = match (self.sq8, self.metric) {
            (None, _) => self.search_as(query, k, allow)?,
            (Some(q), Metric::Cosine) => self.search_as(&q.encode_i8(query), k, allow)?,
            (Some(q), Metric::L2) => self.search_as(&q.encode_u8(query), k, allow)?,
        };
        let metric = self.metric;
        let scale = self.sq8.map_or(1.0, |q| q.scale());
        Ok(found
            .keys
            .into_iter()
            .zip(found.distances)
            .map(|(key, d)| {
                // USearch reports 1 - dot for inner products, the squared distance for L2.
                let score = match metric {
                    Metric::Cosine => (1.0 - d) * scale,
                    Metric::L2 => -d * scale,
                };
                (key, score)
            })
            .collect())
    }

    fn search_as<T: usearch::VectorType>(
        &self,
        query: &[T],
        k: usize,
        allow: Option<&(dyn Fn(u64) -> bool + Sync)>,
    ) -> Result<usearch::ffi::Matches> {
        self.contexts
            .with(|| match allow {
                None => self.inner.search(query, k),
                Some(f) => self.inner.filtered_search(query, k, f),
            })
            .map_err(|e| ann_err("search", e))
    }

    /// [`Self::search`], then, for a graph that stores coarser scalars than f32 and
    /// `config.rescore` > 0, k × `rescore` candidates ranked by exact scores against the f32
    /// vectors `vector_of` gives for their keys (a key without one keeps its graph score).
    pub fn search_rescored<'v>(
        &self,
        query: &[f32],
        k: usize,
        allow: Option<&(dyn Fn(u64) -> bool + Sync)>,
        vector_of: impl Fn(u64) -> Option<&'v [f32]>,
    ) -> Result<Vec<(u64, f32)>> {
        let coarse = self.sq8.is_some() || self.config.quantization != Quantization::F32;
        if !coarse || self.config.rescore == 0.0 {
            return self.search(query, k, allow);
        }
        // Never more candidates than items (`as` saturates): a large factor cannot ask for a
        // huge buffer.
        let wanted = ((k as f64 * self.config.rescore).ceil() as usize)
            .min(self.len())
            .max(k);
        let mut found = self.search(query, wanted, allow)?;
        let vectors: Vec<Option<&[f32]>> = found
            .iter()
            .map(|&(key, _)| vector_of(key).filter(|v| v.len() == query.len()))
            .collect();
        // The candidates lie scattered in memory: ask for all their cache lines first, so
        // the loads overlap instead of each product waiting for its own.
        vectors.iter().flatten().for_each(|v| prefetch(v));
        for ((_, score), v) in found.iter_mut().zip(vectors) {
            if let Some(v) = v {
                *score = match self.metric {
                    Metric::Cosine => dot(v, query),
                    Metric::L2 => -squared_l2(v, query),
                };
            }
        }
        found.sort_by(|a, b| b.1.total_cmp(&a.1));
        found.truncate(k);
        Ok(found)
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
            let q = self.sq8.unwrap_or(Sq8 { lo: 0.0, step: 0.0 });
            w.write_all(&q.lo.to_le_bytes())?;
            w.write_all(&q.step.to_le_bytes())?;
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
        // Version 2 puts the codebook (8 bytes) between the log id and the key count.
        let (head, sq8_at) = match bytes.get(..8) {
            Some(m) if m == MAGIC => (32usize, Some(16usize)),
            Some(m) if m == MAGIC_V1 => (24, None),
            _ => return Ok(None),
        };
        if bytes.len() < head {
            return Ok(None);
        }
        let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let float = |at: usize| f32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        if word(8) != log_id {
            return Ok(None);
        }
        let sq8 = sq8_at
            .map(|at| Sq8 {
                lo: float(at),
                step: float(at + 4),
            })
            .filter(|q| q.step != 0.0);
        if sq8.is_some_and(|q| !(q.lo.is_finite() && q.step.is_finite() && q.step > 0.0)) {
            return Ok(None);
        }
        let n = word(head - 8) as usize;
        let body = head
            .checked_add(n.saturating_mul(8))
            .filter(|&end| end <= bytes.len());
        let Some(body) = body else {
            return Ok(None);
        };
        let keys: Vec<u64> = (0..n).map(|i| word(head + i * 8)).collect();
        let ann = Self::empty(dim, Metric::Cosine, config, n, sq8)?;
        if ann.inner.load_from_buffer(&bytes[body..]).is_err() || ann.inner.size() != n {
            return Ok(None);
        }
        ann.inner.change_expansion_search(config.expansion_search);
        // Loading sizes the graph to its items: room to grow, and contexts for threads.
        ann.inner
            .reserve_capacity_and_threads((n * 2).max(1024), ann.contexts.count)
            .map_err(|e| ann_err("reserve", e))?;
        ann.advise_new_pages();
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

/// Hints the CPU to load `v` into the cache (no effect on other architectures).
fn prefetch(v: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in v.chunks(16) {
        // SAFETY: a prefetch hint never faults, and the pointer is inside `v`.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                line.as_ptr().cast(),
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = v;
}

/// Eight running sums, so the compiler vectorises the loop (one sum would be a serial chain).
fn lanes(a: &[f32], b: &[f32], term: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(&x, &y)| term(x, y))
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += term(x[i], y[i]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    lanes(a, b, |x, y| x * y)
}

fn squared_l2(a: &[f32], b: &[f32]) -> f32 {
    lanes(a, b, |x, y| (x - y) * (x - y))
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
    fn huge_pages_change_no_result() {
        // A 20k x 64 graph spans several 2 MiB blocks; one build thread keeps it deterministic.
        let ix = index(20_000, 64);
        let config = |huge_pages| AnnConfig {
            build_threads: 1,
            huge_pages,
            ..AnnConfig::default()
        };
        let on = AnnIndex::for_index(&ix, &config(true)).unwrap();
        let off = AnnIndex::for_index(&ix, &config(false)).unwrap();
        let mut x = 7;
        for _ in 0..20 {
            let q = unit(&mut x, 64);
            assert_eq!(
                on.search(&q, 10, None).unwrap(),
                off.search(&q, 10, None).unwrap()
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.hnsw");
        let keys: Vec<u64> = ix.items().iter().map(|it| key_of(&it.id)).collect();
        off.save(&path, 1, &keys).unwrap();
        // The same file loaded with and without huge pages; each is searched once, so both
        // rotate USearch's contexts (each with its own level generator) alike.
        let load = |huge| {
            AnnIndex::load(&path, 1, 64, &config(huge))
                .unwrap()
                .unwrap()
                .0
        };
        let (back, back_off) = (load(true), load(false));
        let q = unit(&mut x, 64);
        let want = off.search(&q, 10, None).unwrap();
        assert_eq!(back.search(&q, 10, None).unwrap(), want);
        assert_eq!(back_off.search(&q, 10, None).unwrap(), want);
        // Adds after a load cross ADVISE_EVERY, so the loaded graph advises its new arenas;
        // the same adds without huge pages give the same graph.
        for i in 0..ADVISE_EVERY as u64 + 100 {
            let v = unit(&mut x, 64);
            back.add(1 << 40 | i, &v).unwrap();
            back_off.add(1 << 40 | i, &v).unwrap();
        }
        for _ in 0..20 {
            let q = unit(&mut x, 64);
            assert_eq!(
                back.search(&q, 10, None).unwrap(),
                back_off.search(&q, 10, None).unwrap()
            );
        }
        let parsed: AnnConfig = serde_json::from_str(r#"{"huge_pages": false}"#).unwrap();
        assert!(!parsed.huge_pages);
        assert!(AnnConfig::default().huge_pages);
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

    fn sq8() -> AnnConfig {
        AnnConfig {
            quantization: Quantization::Sq8,
            ..Default::default()
        }
    }

    #[test]
    fn sq8_is_lossless_on_integer_pixels() {
        // 0..=255 integers span the u8 range exactly: codes are the values themselves.
        let (n, dim) = (600, 12);
        let mut x = 17u64;
        let mut vectors: Vec<f32> = (0..n * dim)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                ((x >> 33) % 256) as f32
            })
            .collect();
        vectors[0] = 0.0;
        vectors[1] = 255.0;
        let keys: Vec<u64> = (0..n as u64).collect();
        let ann = AnnIndex::build(&vectors, &keys, dim, Metric::L2, &sq8()).unwrap();
        assert_eq!(ann.sq8(), Some(Sq8 { lo: 0.0, step: 1.0 }));
        let q = &vectors[5 * dim..6 * dim];
        let hits = ann.search(q, 5, None).unwrap();
        assert_eq!(
            hits[0],
            (5, 0.0),
            "a stored vector finds itself at distance 0"
        );
        for &(key, score) in &hits {
            let row = &vectors[key as usize * dim..(key as usize + 1) * dim];
            let d: f32 = row.iter().zip(q).map(|(a, b)| (a - b) * (a - b)).sum();
            assert_eq!(score, -d, "code distances are the true ones");
        }
    }

    #[test]
    fn sq8_cosine_finds_the_neighbours_and_scores_near_the_cosine() {
        let ix = index(2000, 16);
        let ann = AnnIndex::for_index(&ix, &sq8()).unwrap();
        let q8 = ann.sq8().expect("codes");
        assert_eq!(q8.lo, 0.0);
        let mut x = 99;
        let mut found = 0;
        for _ in 0..50 {
            let q = unit(&mut x, 16);
            let want = exact(&ix, &q, 10);
            let hits = ann.search(&q, 10, None).unwrap();
            found += hits.iter().filter(|h| want.contains(&h.0)).count();
            for (key, score) in hits {
                let row = ix
                    .items()
                    .iter()
                    .position(|it| key_of(&it.id) == key)
                    .unwrap();
                let cos: f32 = ix
                    .embedding(row)
                    .unwrap()
                    .iter()
                    .zip(&q)
                    .map(|(a, b)| a * b)
                    .sum();
                // Rounding each of 16 components by at most step/2 on both sides.
                assert!((score - cos).abs() < 16.0 * q8.step, "{score} vs {cos}");
            }
        }
        assert!(found >= 450, "recall@10 {}", found as f64 / 500.0);
    }

    #[test]
    fn sq8_codebook_survives_save_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.index.hnsw");
        let ix = index(300, 8);
        let ann = AnnIndex::for_index(&ix, &sq8()).unwrap();
        let keys: Vec<u64> = ix.items().iter().map(|it| key_of(&it.id)).collect();
        ann.save(&path, 7, &keys).unwrap();
        let (back, had) = AnnIndex::load(&path, 7, 8, &AnnConfig::default())
            .unwrap()
            .unwrap();
        assert_eq!(had, keys);
        assert_eq!(
            back.sq8(),
            ann.sq8(),
            "the file's codebook, whatever the config says"
        );
        let q = unit(&mut 3, 8);
        assert_eq!(
            back.search(&q, 5, None).unwrap(),
            ann.search(&q, 5, None).unwrap()
        );
        // A float graph saved in this version loads without a codebook.
        let plain = AnnIndex::for_index(&ix, &AnnConfig::default()).unwrap();
        plain.save(&path, 7, &keys).unwrap();
        let (back, _) = AnnIndex::load(&path, 7, 8, &sq8()).unwrap().unwrap();
        assert_eq!(back.sq8(), None);
        // A damaged codebook is no graph (it is rebuilt), never a panic.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[20..24].copy_from_slice(&f32::NAN.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        assert!(AnnIndex::load(&path, 7, 8, &sq8()).unwrap().is_none());
    }

    #[test]
    fn rescoring_ranks_candidates_by_exact_scores() {
        // Coarse codes: 300 points on a line in [0, 1000] share 256 levels, so code
        // distances tie; rescoring with the f32 vectors recovers the exact order.
        let dim = 4;
        let vectors: Vec<f32> = (0..300)
            .flat_map(|i| {
                let t = i as f32 * 1000.0 / 299.0;
                [t, 1000.0 - t, t * 0.5, 0.0]
            })
            .collect();
        let keys: Vec<u64> = (0..300).collect();
        let row = |key: u64| vectors.get(key as usize * dim..(key as usize + 1) * dim);
        let mut config = AnnConfig {
            rescore: 4.0,
            ..sq8()
        };
        let ann = AnnIndex::build(&vectors, &keys, dim, Metric::L2, &config).unwrap();
        let q = [500.3, 499.7, 250.15, 0.0];
        let truth = |key: u64| {
            -row(key)
                .unwrap()
                .iter()
                .zip(&q)
                .map(|(a, b)| (a - b) * (a - b))
                .sum::<f32>()
        };
        let hits = ann.search_rescored(&q, 5, None, row).unwrap();
        assert_eq!(hits.len(), 5);
        assert_eq!(
            hits.iter().map(|h| h.0).collect::<Vec<_>>(),
            vec![150, 149, 151, 148, 152]
        );
        assert!(hits.iter().all(|&(key, s)| s == truth(key)), "exact scores");
        // rescore 0: the graph's own, coarser scores.
        config.rescore = 0.0;
        let raw = AnnIndex::build(&vectors, &keys, dim, Metric::L2, &config).unwrap();
        let hits = raw.search_rescored(&q, 5, None, row).unwrap();
        assert!(hits.iter().any(|&(key, s)| s != truth(key)));
        // A factor far past the item count asks for at most every item.
        config.rescore = 1e30;
        let all = AnnIndex::build(&vectors, &keys, dim, Metric::L2, &config).unwrap();
        assert_eq!(all.search_rescored(&q, 5, None, row).unwrap().len(), 5);
    }

    #[test]
    fn more_concurrent_searches_than_contexts_wait_instead_of_failing() {
        let ix = index(500, 8);
        let config = AnnConfig {
            build_threads: 2,
            ..Default::default()
        };
        let ann = AnnIndex::for_index(&ix, &config).unwrap();
        assert_eq!(ann.contexts.count, 2);
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..8u64)
                .map(|t| {
                    let ann = &ann;
                    s.spawn(move || {
                        let mut x = t + 1;
                        (0..200).all(|_| {
                            ann.search(&unit(&mut x, 8), 5, None)
                                .is_ok_and(|h| h.len() == 5)
                        })
                    })
                })
                .collect();
            assert!(
                hs.into_iter().all(|h| h.join().unwrap()),
                "every search answered"
            );
        });
    }

    #[test]
    fn sq8_fits_ranges_and_clamps_what_lies_outside() {
        let q = Sq8::fit(&[-2.0, 0.5, 3.0, f32::NAN], Metric::L2);
        assert_eq!((q.lo, q.step), (-2.0, 5.0 / 255.0));
        assert_eq!(q.encode_u8(&[-9.0, -2.0, 3.0, 40.0]), vec![0, 0, 255, 255]);
        let c = Sq8::fit(&[0.25, -0.5], Metric::Cosine);
        assert_eq!((c.lo, c.step), (0.0, 0.5 / 127.0));
        assert_eq!(
            c.encode_i8(&[-0.5, 0.5, 1.0, -1.0]),
            vec![-127, 127, 127, -127]
        );
        assert_eq!(Sq8::fit(&[], Metric::Cosine).step, 1.0 / 127.0);
        assert_eq!(Sq8::fit(&[], Metric::L2), Sq8 { lo: 0.0, step: 1.0 });
        assert_eq!(
            Sq8::fit(&[4.0, 4.0], Metric::L2),
            Sq8 { lo: 4.0, step: 1.0 }
        );
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
        for (rescore, ok) in [
            (0.0, true),
            (1.0, true),
            (1.5, true),
            (0.99, false),
            (f64::NAN, false),
        ] {
            let c = AnnConfig {
                rescore,
                ..Default::default()
            };
            assert_eq!(c.validate().is_ok(), ok, "rescore {rescore}");
        }
        let err = AnnConfig {
            rescore: 0.5,
            ..Default::default()
        };
        assert!(err.validate().unwrap_err().contains("ann.rescore = 0.5"));
    }

    #[test]
    fn rescoring_sums_match_plain_sums() {
        let a: Vec<f32> = (0..19).map(|i| i as f32 * 0.25 - 2.0).collect();
        let b: Vec<f32> = (0..19).map(|i| 1.0 - i as f32 * 0.125).collect();
        let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - plain).abs() < 1e-5);
        let plain: f32 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
        assert!((squared_l2(&a, &b) - plain).abs() < 1e-4);
    }
}
