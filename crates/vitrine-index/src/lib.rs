//! Embedding index: ids, metadata and L2-normalised embeddings, searched exactly by cosine
//! similarity on the chosen Burn device, with metadata filters applied before top-k.
//!
//! Base file format (written atomically; later adds and removes go to a log beside it,
//! see [`store`]):
//! ```text
//! b"VTRIDX01"                     magic + format version
//! u64 LE  header length
//! header  JSON (IndexHeader): dim, count, model info, columns, items (id + attributes),
//!         crc32 of the embedding block, log id
//! f32 LE  embeddings, count * dim, row-major in item order
//! ```

pub mod ann;
mod filter;
pub mod hugepages;
pub mod layout;
mod search;
pub mod searcher;
pub mod store;

pub use ann::{key_of, AnnConfig, AnnIndex, Metric, Quantization};
pub use filter::Filter;
pub use layout::{Layout, TextQuery, TextSpace};
pub use search::{DeviceIndex, Hit, Selection};
pub use searcher::{Route, Searcher};
pub use store::{Store, StoreConfig};

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

const MAGIC: &[u8; 8] = b"VTRIDX01";

#[derive(Debug, Error)]
pub enum IndexError {
    #[error("cannot read index {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a Vitrine index: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error("embedding has dimension {got}, the index has {expected}")]
    Dim { got: usize, expected: usize },
    #[error("embedding for item {id:?} has a non-finite value")]
    NonFinite { id: String },
    #[error("item id {0:?} is already in the index (remove it first)")]
    DuplicateId(String),
    #[error("item id {0:?} is not in the index")]
    UnknownId(String),
    #[error("item id {0:?} hashes to the graph key of another item; rename it")]
    KeyClash(String),
    #[error("unknown filter column {column:?}; columns are: {available}")]
    UnknownColumn { column: String, available: String },
    #[error("invalid filter {0:?}: expected column=value")]
    BadFilter(String),
    #[error("k = {k} is out of range: 1..={max}")]
    BadK { k: usize, max: usize },
    #[error("backend: {0}")]
    Backend(String),
    #[error("the index is empty")]
    Empty,
    #[error("{0}")]
    Query(String),
}

pub type Result<T> = std::result::Result<T, IndexError>;

/// What produced the embeddings, so a query is embedded with the same model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Run directory the encoder came from (as given when the index was built).
    pub run: String,
    /// Architecture name, e.g. "cnn" (empty for an index of text embeddings only).
    pub arch: String,
    /// Each row also (or only) holds a text embedding of one column ([`layout`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<TextSpace>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexItem {
    pub id: String,
    #[serde(default)]
    pub attrs: BTreeMap<String, String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct IndexHeader {
    dim: usize,
    count: usize,
    model: ModelInfo,
    columns: Vec<String>,
    items: Vec<IndexItem>,
    crc32: u32,
    /// Which log belongs to this base (`store`); 0 in files from before logs.
    #[serde(default)]
    log_id: u64,
    /// Searched through an HNSW graph (`ann`) with these parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ann: Option<AnnConfig>,
}

#[derive(Debug, Clone)]
pub struct Index {
    pub dim: usize,
    pub model: ModelInfo,
    /// Metadata column names (union over items, in first-seen order).
    pub columns: Vec<String>,
    items: Vec<IndexItem>,
    /// Row-major [len, dim].
    embeddings: Vec<f32>,
    rows: HashMap<String, usize>,
    /// Row of each graph key ([`key_of`] the id).
    key_rows: HashMap<u64, usize>,
    /// The log id of the base this index was loaded from or last saved as.
    log_id: u64,
    /// Search through an HNSW graph with these parameters (None: exact only).
    pub ann: Option<AnnConfig>,
}

impl Index {
    pub fn new(dim: usize, model: ModelInfo) -> Self {
        Self {
            dim,
            model,
            columns: Vec::new(),
            items: Vec::new(),
            embeddings: Vec::new(),
            rows: HashMap::new(),
            key_rows: HashMap::new(),
            log_id: 0,
            ann: None,
        }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn items(&self) -> &[IndexItem] {
        &self.items
    }

    pub fn item(&self, row: usize) -> Option<&IndexItem> {
        self.items.get(row)
    }

    pub fn row_of(&self, id: &str) -> Option<usize> {
        self.rows.get(id).copied()
    }

    /// The row of the item whose id has graph key `key`.
    pub fn row_of_key(&self, key: u64) -> Option<usize> {
        self.key_rows.get(&key).copied()
    }

    /// Which log belongs to the base this index was loaded from or saved as.
    pub fn log_id(&self) -> u64 {
        self.log_id
    }

    /// Row-major [len, dim] embeddings.
    pub fn embeddings(&self) -> &[f32] {
        &self.embeddings
    }

    pub fn embedding(&self, row: usize) -> Option<&[f32]> {
        self.embeddings.get(row * self.dim..(row + 1) * self.dim)
    }

    /// Adds one item. Refuses duplicate ids, a wrong dimension and non-finite values, so the
    /// index never holds a row that would poison every query.
    pub fn add(&mut self, item: IndexItem, embedding: &[f32]) -> Result<()> {
        self.check_adds([(&item, embedding)])?;
        for key in item.attrs.keys() {
            if !self.columns.contains(key) {
                self.columns.push(key.clone());
            }
        }
        self.rows.insert(item.id.clone(), self.items.len());
        self.key_rows.insert(key_of(&item.id), self.items.len());
        self.items.push(item);
        self.embeddings.extend_from_slice(embedding);
        Ok(())
    }

    /// Checks that items could be added, in order, without changing anything.
    pub fn check_adds<'a>(
        &self,
        adds: impl IntoIterator<Item = (&'a IndexItem, &'a [f32])>,
    ) -> Result<()> {
        let mut batch = std::collections::HashSet::new();
        for (item, embedding) in adds {
            if embedding.len() != self.dim {
                return Err(IndexError::Dim {
                    got: embedding.len(),
                    expected: self.dim,
                });
            }
            if embedding.iter().any(|v| !v.is_finite()) {
                return Err(IndexError::NonFinite {
                    id: item.id.clone(),
                });
            }
            if self.rows.contains_key(&item.id) || !batch.insert(item.id.as_str()) {
                return Err(IndexError::DuplicateId(item.id.clone()));
            }
            if self.key_rows.contains_key(&key_of(&item.id)) {
                return Err(IndexError::KeyClash(item.id.clone()));
            }
        }
        Ok(())
    }

    /// Checks that every id is present.
    pub fn check_removes(&self, ids: &[String]) -> Result<()> {
        match ids.iter().find(|id| !self.rows.contains_key(*id)) {
            Some(id) => Err(IndexError::UnknownId(id.clone())),
            None => Ok(()),
        }
    }

    /// Removes items by id; all-or-nothing: an unknown id removes nothing. Each removed row
    /// is filled with the last row (O(1) per item, so catalogue writes do not cost
    /// O(catalogue)); returns the rows whose content changed that way, in order.
    pub fn remove(&mut self, ids: &[String]) -> Result<Vec<usize>> {
        self.check_removes(ids)?;
        let dim = self.dim;
        let mut changed = Vec::new();
        for id in ids {
            // A repeated id was removed by its first occurrence.
            let Some(row) = self.rows.remove(id) else {
                continue;
            };
            self.key_rows.remove(&key_of(id));
            let last = self.items.len() - 1;
            self.items.swap_remove(row);
            if row != last {
                self.embeddings
                    .copy_within(last * dim..(last + 1) * dim, row * dim);
                let moved = &self.items[row].id;
                self.rows.insert(moved.clone(), row);
                self.key_rows.insert(key_of(moved), row);
                changed.push(row);
            }
            self.embeddings.truncate(last * dim);
        }
        changed.retain(|&r| r < self.items.len());
        changed.sort_unstable();
        changed.dedup();
        Ok(changed)
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut block = Vec::with_capacity(self.embeddings.len() * 4);
        for v in &self.embeddings {
            block.extend_from_slice(&v.to_le_bytes());
        }
        let mut crc = flate2::Crc::new();
        crc.update(&block);
        let header = IndexHeader {
            dim: self.dim,
            count: self.items.len(),
            model: self.model.clone(),
            columns: self.columns.clone(),
            items: self.items.clone(),
            crc32: crc.sum(),
            log_id: self.log_id,
            ann: self.ann.clone(),
        };
        let header = serde_json::to_vec(&header).expect("index header serialises");
        let mut out = Vec::with_capacity(16 + header.len() + block.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(header.len() as u64).to_le_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(&block);
        out
    }

    /// Writes the index atomically (temp file in the same folder, fsync, rename) as a new
    /// base: it gets a fresh log id, so a log left beside `path` no longer applies.
    pub fn save(&mut self, path: &Path) -> Result<()> {
        self.log_id = fresh_log_id();
        vitrine_data::fsio::atomic_save(path, &self.to_bytes()).map_err(|source| {
            IndexError::Io {
                path: path.to_owned(),
                source,
            }
        })?;
        // Stale now; removing it only saves disk space (a crash first is harmless).
        let _ = std::fs::remove_file(store::log_path(path));
        Ok(())
    }

    /// Loads the base file and replays its log (`store`).
    pub fn load(path: &Path) -> Result<Self> {
        Ok(Self::load_with_tail(path)?.0)
    }

    /// Like [`Self::load`], also naming the ids the log added (for [`AnnIndex::catch_up`]).
    pub fn load_replayed(path: &Path) -> Result<(Self, std::collections::HashSet<String>)> {
        let (index, tail) = Self::load_with_tail(path)?;
        Ok((index, tail.added))
    }

    pub(crate) fn load_with_tail(path: &Path) -> Result<(Self, store::LogTail)> {
        let mut index = Self::load_base(path)?;
        let tail = store::replay(&mut index, path)?;
        Ok((index, tail))
    }

    fn load_base(path: &Path) -> Result<Self> {
        let io = |source| IndexError::Io {
            path: path.to_owned(),
            source,
        };
        let bad = |reason: String| IndexError::Format {
            path: path.to_owned(),
            reason,
        };
        let mut file = std::fs::File::open(path).map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();
        let mut head = [0u8; 16];
        file.read_exact(&mut head)
            .map_err(|_| bad("file is shorter than the 16-byte preamble".into()))?;
        if &head[..8] != MAGIC {
            return Err(bad("bad magic bytes (expected VTRIDX01)".into()));
        }
        let header_len = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
        if header_len > file_len.saturating_sub(16) {
            return Err(bad(format!(
                "header length {header_len} exceeds the file size {file_len}"
            )));
        }
        let mut header = vec![0u8; header_len as usize];
        file.read_exact(&mut header).map_err(io)?;
        let header: IndexHeader = serde_json::from_slice(&header)
            .map_err(|e| bad(format!("header is not valid JSON: {e}")))?;
        if let Some(t) = &header.model.text {
            if t.dim == 0 || t.dim > header.dim {
                return Err(bad(format!(
                    "its text embeddings are {}-d but its rows {}-d",
                    t.dim, header.dim
                )));
            }
        }
        if header.items.len() != header.count {
            return Err(bad(format!(
                "header lists {} items but count is {}",
                header.items.len(),
                header.count
            )));
        }
        let expected = (header.count as u64)
            .checked_mul(header.dim as u64)
            .and_then(|n| n.checked_mul(4))
            .ok_or_else(|| bad("count * dim overflows".into()))?;
        let remaining = file_len - 16 - header_len;
        if remaining != expected {
            return Err(bad(format!(
                "embedding block is {remaining} bytes, expected {expected} ({} items x {} dims x 4)",
                header.count, header.dim
            )));
        }
        let mut block = vec![0u8; expected as usize];
        file.read_exact(&mut block).map_err(io)?;
        let mut crc = flate2::Crc::new();
        crc.update(&block);
        if crc.sum() != header.crc32 {
            return Err(bad(
                "embedding checksum mismatch: the file is corrupted".into()
            ));
        }
        let embeddings = block
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let mut rows = HashMap::with_capacity(header.items.len());
        let mut key_rows = HashMap::with_capacity(header.items.len());
        for (i, item) in header.items.iter().enumerate() {
            if rows.insert(item.id.clone(), i).is_some() {
                return Err(bad(format!("duplicate item id {:?}", item.id)));
            }
            key_rows.insert(key_of(&item.id), i);
        }
        if let Some(ann) = &header.ann {
            ann.validate().map_err(bad)?;
        }
        Ok(Self {
            dim: header.dim,
            model: header.model,
            columns: header.columns,
            items: header.items,
            embeddings,
            rows,
            key_rows,
            log_id: header.log_id,
            ann: header.ann,
        })
    }
}

/// A log id unlikely to repeat: time, process and a per-process counter, hashed.
fn fresh_log_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    h.write_u128(now);
    h.write_u32(std::process::id());
    h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    h.finish().max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn item(id: &str, colour: &str) -> IndexItem {
        IndexItem {
            id: id.into(),
            attrs: [("colour".to_string(), colour.to_string())].into(),
        }
    }

    pub(crate) fn small() -> Index {
        let mut ix = Index::new(
            2,
            ModelInfo {
                run: "runs/x".into(),
                arch: "cnn".into(),
                text: None,
            },
        );
        ix.add(item("a", "red"), &[1.0, 0.0]).unwrap();
        ix.add(item("b", "blue"), &[0.0, 1.0]).unwrap();
        ix.add(item("c", "red"), &[0.6, 0.8]).unwrap();
        ix
    }

    #[test]
    fn save_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.index");
        let mut ix = small();
        ix.save(&path).unwrap();
        let back = Index::load(&path).unwrap();
        assert_eq!(back.items(), ix.items());
        assert_eq!(back.embeddings(), ix.embeddings());
        assert_eq!(back.model, ix.model);
        assert_eq!(back.columns, vec!["colour".to_string()]);
        assert_eq!(back.row_of("c"), Some(2));
    }

    #[test]
    fn add_refuses_bad_rows() {
        let mut ix = small();
        assert!(matches!(
            ix.add(item("a", "x"), &[1.0, 0.0]),
            Err(IndexError::DuplicateId(_))
        ));
        assert!(matches!(
            ix.add(item("d", "x"), &[1.0]),
            Err(IndexError::Dim {
                got: 1,
                expected: 2
            })
        ));
        assert!(matches!(
            ix.add(item("d", "x"), &[f32::NAN, 0.0]),
            Err(IndexError::NonFinite { .. })
        ));
        assert_eq!(ix.len(), 3);
    }

    #[test]
    fn remove_is_all_or_nothing() {
        let mut ix = small();
        assert!(matches!(
            ix.remove(&["b".into(), "zzz".into()]),
            Err(IndexError::UnknownId(_))
        ));
        assert_eq!(ix.len(), 3);
        assert_eq!(ix.remove(&["b".into()]).unwrap(), vec![1]);
        assert_eq!(ix.len(), 2);
        assert_eq!(ix.row_of("c"), Some(1));
        assert_eq!(ix.embedding(1).unwrap(), &[0.6, 0.8]);
        assert_eq!(ix.row_of("b"), None);
        // The last row needs no move; a repeated id counts once.
        assert_eq!(
            ix.remove(&["c".into(), "c".into()]).unwrap(),
            Vec::<usize>::new()
        );
        assert_eq!(ix.len(), 1);
    }

    #[test]
    fn removing_many_keeps_rows_and_embeddings_consistent() {
        let mut ix = Index::new(1, ModelInfo::default());
        for i in 0..10 {
            ix.add(item(&i.to_string(), "x"), &[i as f32]).unwrap();
        }
        let gone: Vec<String> = ["0", "9", "3", "8", "5"].map(String::from).to_vec();
        let changed = ix.remove(&gone).unwrap();
        assert_eq!(ix.len(), 5);
        for (row, it) in ix.items().iter().enumerate() {
            assert_eq!(ix.row_of(&it.id), Some(row));
            assert_eq!(ix.embedding(row).unwrap()[0].to_string(), it.id);
        }
        assert!(changed.iter().all(|&r| r < 5), "{changed:?}");
        for id in &gone {
            assert_eq!(ix.row_of(id), None);
        }
    }

    #[test]
    fn corrupted_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.index");
        let bytes = small().to_bytes();
        // Truncated, flipped payload byte, garbage, empty.
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (bytes[..bytes.len() - 3].to_vec(), "embedding block"),
            (
                {
                    let mut b = bytes.clone();
                    let n = b.len();
                    b[n - 1] ^= 0xff;
                    b
                },
                "checksum",
            ),
            (b"hello world, not an index".to_vec(), "magic"),
            (Vec::new(), "shorter"),
            (
                {
                    let mut b = bytes.clone();
                    b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
                    b
                },
                "header length",
            ),
        ];
        for (data, needle) in cases {
            std::fs::write(&path, data).unwrap();
            let err = Index::load(&path).unwrap_err().to_string();
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        }
        assert!(matches!(
            Index::load(&dir.path().join("missing")),
            Err(IndexError::Io { .. })
        ));
    }
}
