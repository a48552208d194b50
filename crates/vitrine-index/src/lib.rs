//! Embedding index: ids, metadata and L2-normalised embeddings, searched exactly by cosine
//! similarity on the chosen Burn device, with metadata filters applied before top-k.
//!
//! File format (one file, written atomically):
//! ```text
//! b"VTRIDX01"                     magic + format version
//! u64 LE  header length
//! header  JSON (IndexHeader): dim, count, model info, columns, items (id + attributes),
//!         crc32 of the embedding block
//! f32 LE  embeddings, count * dim, row-major in item order
//! ```

mod filter;
mod search;

pub use filter::Filter;
pub use search::{DeviceIndex, Hit, Selection};

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
}

pub type Result<T> = std::result::Result<T, IndexError>;

/// What produced the embeddings, so a query is embedded with the same model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Run directory the encoder came from (as given when the index was built).
    pub run: String,
    /// Architecture name, e.g. "cnn".
    pub arch: String,
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
        if embedding.len() != self.dim {
            return Err(IndexError::Dim {
                got: embedding.len(),
                expected: self.dim,
            });
        }
        if embedding.iter().any(|v| !v.is_finite()) {
            return Err(IndexError::NonFinite { id: item.id });
        }
        if self.rows.contains_key(&item.id) {
            return Err(IndexError::DuplicateId(item.id));
        }
        for key in item.attrs.keys() {
            if !self.columns.contains(key) {
                self.columns.push(key.clone());
            }
        }
        self.rows.insert(item.id.clone(), self.items.len());
        self.items.push(item);
        self.embeddings.extend_from_slice(embedding);
        Ok(())
    }

    /// Removes items by id; all-or-nothing: an unknown id removes nothing.
    pub fn remove(&mut self, ids: &[String]) -> Result<()> {
        for id in ids {
            if !self.rows.contains_key(id) {
                return Err(IndexError::UnknownId(id.clone()));
            }
        }
        let drop: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
        let dim = self.dim;
        let mut items = Vec::with_capacity(self.items.len());
        let mut embeddings = Vec::with_capacity(self.embeddings.len());
        for (row, item) in self.items.drain(..).enumerate() {
            if !drop.contains(item.id.as_str()) {
                embeddings.extend_from_slice(&self.embeddings[row * dim..(row + 1) * dim]);
                items.push(item);
            }
        }
        self.items = items;
        self.embeddings = embeddings;
        self.rows = self
            .items
            .iter()
            .enumerate()
            .map(|(i, it)| (it.id.clone(), i))
            .collect();
        Ok(())
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
        };
        let header = serde_json::to_vec(&header).expect("index header serialises");
        let mut out = Vec::with_capacity(16 + header.len() + block.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(header.len() as u64).to_le_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(&block);
        out
    }

    /// Writes the index atomically (temp file in the same folder, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        vitrine_data::fsio::atomic_save(path, &self.to_bytes()).map_err(|source| IndexError::Io {
            path: path.to_owned(),
            source,
        })
    }

    pub fn load(path: &Path) -> Result<Self> {
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
        for (i, item) in header.items.iter().enumerate() {
            if rows.insert(item.id.clone(), i).is_some() {
                return Err(bad(format!("duplicate item id {:?}", item.id)));
            }
        }
        Ok(Self {
            dim: header.dim,
            model: header.model,
            columns: header.columns,
            items: header.items,
            embeddings,
            rows,
        })
    }
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
        let ix = small();
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
        ix.remove(&["b".into()]).unwrap();
        assert_eq!(ix.len(), 2);
        assert_eq!(ix.row_of("c"), Some(1));
        assert_eq!(ix.embedding(1).unwrap(), &[0.6, 0.8]);
        assert_eq!(ix.row_of("b"), None);
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
