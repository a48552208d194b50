//! Incremental, crash-safe storage: the index file (the base, rewritten only by compaction)
//! plus an append-only log of adds and removes beside it, `<index>.log`.
//!
//! A write appends one checksummed record and syncs it before it is acknowledged, so a
//! catalogue write costs O(1) instead of rewriting the whole file. Loading reads the base
//! and replays the log. Compaction writes a new base atomically under a fresh `log_id`;
//! a log whose id differs from its base's is stale (its records are already in the base)
//! and is ignored, so a crash at any point leaves either the old base with its log or the
//! new base. A kill -9 during an append leaves a torn last record, which was never
//! acknowledged: loading ignores it and the next writer cuts it off.
//!
//! Log format:
//! ```text
//! b"VTRLOG01"  u64 LE log_id (the base's)
//! records:     u32 LE payload length, u32 LE crc32(payload), payload
//! payload:     0x01 u32 LE json length, item JSON, f32 LE embedding[dim]   (add)
//!              0x02 ids JSON array                                        (remove)
//! ```

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Index, IndexError, IndexItem, Result};

const LOG_MAGIC: &[u8; 8] = b"VTRLOG01";
const LOG_HEADER: u64 = 16;
const OP_ADD: u8 = 1;
const OP_REMOVE: u8 = 2;

/// How catalogue writes are absorbed: when the log is folded into the base file, and when
/// a device copy of the embeddings is refreshed ([`crate::DeviceIndex`]). Both rewrite
/// O(catalogue) only after a proportional number of writes, so a write costs O(1)
/// amortised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Compact once the log is larger than this fraction of the base file...
    pub compact_ratio: f64,
    /// ...and larger than this many bytes, so small indexes are not rewritten constantly.
    pub compact_min_bytes: u64,
    /// Re-upload the device copy once more than this fraction of the rows are scored on the
    /// host (added or moved since the copy was made)...
    pub refresh_ratio: f64,
    /// ...and more than this many rows.
    pub refresh_min_rows: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            compact_ratio: 0.5,
            compact_min_bytes: 8 << 20,
            refresh_ratio: 0.05,
            refresh_min_rows: 1024,
        }
    }
}

impl StoreConfig {
    /// Ratios must be finite and not negative; the error names the field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        for (name, v) in [
            ("compact_ratio", self.compact_ratio),
            ("refresh_ratio", self.refresh_ratio),
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(format!("{name} = {v}: it must be a finite number >= 0"));
            }
        }
        Ok(())
    }
}

/// The log's path for an index file.
pub fn log_path(index: &Path) -> PathBuf {
    let mut name = index.as_os_str().to_owned();
    name.push(".log");
    PathBuf::from(name)
}

/// What replaying a log found.
#[derive(Debug, Default)]
pub(crate) struct LogTail {
    /// The log exists and belongs to the base.
    pub current: bool,
    /// Bytes of whole, valid records (header included).
    pub valid_len: u64,
    /// Ids the replayed records added.
    pub added: std::collections::HashSet<String>,
}

fn format_err(path: &Path, reason: String) -> IndexError {
    IndexError::Format {
        path: path.to_owned(),
        reason,
    }
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> IndexError + '_ {
    move |source| IndexError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Replays `<index>.log` onto a freshly loaded base.
pub(crate) fn replay(index: &mut Index, index_path: &Path) -> Result<LogTail> {
    let path = log_path(index_path);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(LogTail::default()),
        Err(e) => return Err(io_err(&path)(e)),
    };
    // Logs are created whole (atomically), so a short or foreign header is damage.
    if bytes.len() < LOG_HEADER as usize || &bytes[..8] != LOG_MAGIC {
        return Err(format_err(
            &path,
            "not an index log (bad header); remove it to keep only the base's items".into(),
        ));
    }
    let id = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    if id != index.log_id {
        return Ok(LogTail::default());
    }
    let mut at = LOG_HEADER as usize;
    let mut added = std::collections::HashSet::new();
    while at < bytes.len() {
        let rest = &bytes[at..];
        let whole = rest.len() >= 8 && {
            let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
            rest.len() >= 8 + len
        };
        if !whole {
            break; // a torn last record: never acknowledged
        }
        let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        let payload = &rest[8..8 + len];
        if crc32(payload) != crc {
            if at + 8 + len == bytes.len() {
                break; // the last record, torn in place
            }
            return Err(format_err(
                &path,
                format!("record at byte {at} fails its checksum and records follow it: the log is corrupted"),
            ));
        }
        apply(index, payload, &mut added)
            .map_err(|e| format_err(&path, format!("record at byte {at}: {e}")))?;
        at += 8 + len;
    }
    Ok(LogTail {
        current: true,
        valid_len: at as u64,
        added,
    })
}

fn apply(
    index: &mut Index,
    payload: &[u8],
    added: &mut std::collections::HashSet<String>,
) -> std::result::Result<(), String> {
    let (&op, body) = payload.split_first().ok_or("empty record")?;
    match op {
        OP_ADD => {
            if body.len() < 4 {
                return Err("add record too short".into());
            }
            let json_len = u32::from_le_bytes(body[..4].try_into().expect("4 bytes")) as usize;
            let json = body.get(4..4 + json_len).ok_or("add record too short")?;
            let item: IndexItem = serde_json::from_slice(json).map_err(|e| e.to_string())?;
            let floats = &body[4 + json_len..];
            if floats.len() != index.dim * 4 {
                return Err(format!(
                    "add record holds {} embedding bytes, the index needs {}",
                    floats.len(),
                    index.dim * 4
                ));
            }
            let embedding: Vec<f32> = floats
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            added.insert(item.id.clone());
            index.add(item, &embedding).map_err(|e| e.to_string())
        }
        OP_REMOVE => {
            let ids: Vec<String> = serde_json::from_slice(body).map_err(|e| e.to_string())?;
            index.remove(&ids).map(|_| ()).map_err(|e| e.to_string())
        }
        other => Err(format!("unknown record kind {other}")),
    }
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = flate2::Crc::new();
    crc.update(bytes);
    crc.sum()
}

fn record(payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

fn add_payload(item: &IndexItem, embedding: &[f32]) -> Vec<u8> {
    let json = serde_json::to_vec(item).expect("an item serialises");
    let mut p = Vec::with_capacity(5 + json.len() + embedding.len() * 4);
    p.push(OP_ADD);
    p.extend_from_slice(&(json.len() as u32).to_le_bytes());
    p.extend_from_slice(&json);
    for v in embedding {
        p.extend_from_slice(&v.to_le_bytes());
    }
    p
}

fn remove_payload(ids: &[String]) -> Vec<u8> {
    let mut p = vec![OP_REMOVE];
    p.extend_from_slice(&serde_json::to_vec(ids).expect("ids serialise"));
    p
}

/// A writable index on disk: every change is appended to the log and synced before the
/// in-memory index changes, so memory never runs ahead of the disk.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    log: File,
    log_bytes: u64,
    base_bytes: u64,
    config: StoreConfig,
    /// A compaction wrote the new base but could not start its log: appending to the old
    /// one would lose writes, so the store refuses them until reopened.
    broken: bool,
    /// Ids the log added when it was opened.
    replayed_adds: std::collections::HashSet<String>,
}

impl Store {
    /// Opens an index for writing: loads base + log, cuts a torn last record off, and
    /// starts a log when there is none (or only a stale one).
    pub fn open(path: &Path, config: StoreConfig) -> Result<(Self, Index)> {
        let (index, tail) = Index::load_with_tail(path)?;
        let base_bytes = std::fs::metadata(path).map_err(io_err(path))?.len();
        let lpath = log_path(path);
        let log = if tail.current {
            let file = OpenOptions::new()
                .write(true)
                .open(&lpath)
                .map_err(io_err(&lpath))?;
            if file.metadata().map_err(io_err(&lpath))?.len() != tail.valid_len {
                file.set_len(tail.valid_len).map_err(io_err(&lpath))?;
                file.sync_all().map_err(io_err(&lpath))?;
            }
            file
        } else {
            new_log(&lpath, index.log_id)?
        };
        let mut store = Self {
            path: path.to_owned(),
            log,
            log_bytes: tail.valid_len.max(LOG_HEADER),
            base_bytes,
            config,
            broken: false,
            replayed_adds: tail.added,
        };
        store
            .log
            .seek(SeekFrom::Start(store.log_bytes))
            .map_err(io_err(&lpath))?;
        Ok((store, index))
    }

    /// Writes `index` as a new base (a fresh log id, so any old log becomes stale) and
    /// opens it for writing.
    pub fn create(path: &Path, index: &mut Index, config: StoreConfig) -> Result<Self> {
        index.save(path)?;
        Self::open_fresh(path, index, config)
    }

    /// A store over a base just written, with a new empty log.
    fn open_fresh(path: &Path, index: &Index, config: StoreConfig) -> Result<Self> {
        let lpath = log_path(path);
        let mut log = new_log(&lpath, index.log_id)?;
        log.seek(SeekFrom::End(0)).map_err(io_err(&lpath))?;
        let base_bytes = std::fs::metadata(path).map_err(io_err(path))?.len();
        Ok(Self {
            path: path.to_owned(),
            log,
            log_bytes: LOG_HEADER,
            base_bytes,
            config,
            broken: false,
            replayed_adds: Default::default(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Ids the log added when this store opened it (see [`crate::AnnIndex::catch_up`]).
    pub fn replayed_adds(&self) -> &std::collections::HashSet<String> {
        &self.replayed_adds
    }

    /// Bytes in the log beyond its header.
    pub fn log_bytes(&self) -> u64 {
        self.log_bytes - LOG_HEADER
    }

    /// Adds items durably: checked first (a refused batch writes nothing), appended and
    /// synced once, then applied to `index`.
    pub fn add(&mut self, index: &mut Index, items: Vec<(IndexItem, Vec<f32>)>) -> Result<()> {
        index.check_adds(items.iter().map(|(it, e)| (it, e.as_slice())))?;
        let mut buf = Vec::new();
        for (item, emb) in &items {
            record(&add_payload(item, emb), &mut buf);
        }
        self.append(&buf)?;
        for (item, emb) in items {
            index.add(item, &emb)?;
        }
        Ok(())
    }

    /// Removes items durably (all-or-nothing); returns the rows whose content changed
    /// (see [`Index::remove`]).
    pub fn remove(&mut self, index: &mut Index, ids: &[String]) -> Result<Vec<usize>> {
        index.check_removes(ids)?;
        let mut buf = Vec::new();
        record(&remove_payload(ids), &mut buf);
        self.append(&buf)?;
        index.remove(ids)
    }

    fn append(&mut self, bytes: &[u8]) -> Result<()> {
        let lpath = log_path(&self.path);
        let io = io_err(&lpath);
        if self.broken {
            return Err(io(std::io::Error::other(
                "the log could not be restarted after a compaction; reopen the index",
            )));
        }
        let written = self.log.write_all(bytes).and_then(|_| self.log.sync_data());
        if let Err(e) = written {
            // Leave no partial record behind for the next append to follow.
            let _ = self.log.set_len(self.log_bytes);
            let _ = self.log.seek(SeekFrom::Start(self.log_bytes));
            return Err(io(e));
        }
        self.log_bytes += bytes.len() as u64;
        Ok(())
    }

    /// The log has outgrown the configured share of the base.
    pub fn wants_compaction(&self) -> bool {
        let log = self.log_bytes();
        log > self.config.compact_min_bytes
            && log as f64 > self.config.compact_ratio * self.base_bytes as f64
    }

    /// Folds the log into a new base written atomically; `index` must be what base + log
    /// hold (the index this store opened or created, changed only through it).
    pub fn compact(&mut self, index: &mut Index) -> Result<()> {
        index.save(&self.path)?;
        match Self::open_fresh(&self.path, index, self.config.clone()) {
            Ok(fresh) => *self = fresh,
            Err(e) => {
                self.broken = true;
                return Err(e);
            }
        }
        Ok(())
    }

    /// Compacts when [`Self::wants_compaction`] says so; returns whether it did.
    pub fn maybe_compact(&mut self, index: &mut Index) -> Result<bool> {
        if !self.wants_compaction() {
            return Ok(false);
        }
        self.compact(index)?;
        Ok(true)
    }
}

/// A new, empty log for `log_id`, created atomically and opened for appending.
fn new_log(path: &Path, log_id: u64) -> Result<File> {
    let mut header = Vec::with_capacity(LOG_HEADER as usize);
    header.extend_from_slice(LOG_MAGIC);
    header.extend_from_slice(&log_id.to_le_bytes());
    vitrine_data::fsio::atomic_save(path, &header).map_err(io_err(path))?;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    // Appends go after the header.
    file.seek(SeekFrom::End(0)).map_err(io_err(path))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{item, small};

    fn emb(i: usize) -> Vec<f32> {
        let a = i as f32 * 0.37;
        vec![a.cos(), a.sin()]
    }

    fn ids(ix: &Index) -> Vec<String> {
        let mut v: Vec<String> = ix.items().iter().map(|i| i.id.clone()).collect();
        v.sort();
        v
    }

    #[test]
    fn writes_survive_a_reload_without_rewriting_the_base() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.index");
        let mut ix = small();
        let mut store = Store::create(&path, &mut ix, StoreConfig::default()).unwrap();
        let base = std::fs::read(&path).unwrap();
        store
            .add(&mut ix, vec![(item("d", "green"), emb(4))])
            .unwrap();
        assert_eq!(store.remove(&mut ix, &["a".into()]).unwrap(), vec![0]);
        assert_eq!(std::fs::read(&path).unwrap(), base, "the base is untouched");
        assert!(store.log_bytes() > 0);
        let back = Index::load(&path).unwrap();
        assert_eq!(ids(&back), ["b", "c", "d"]);
        assert_eq!(back.items(), ix.items(), "replay gives the same row order");
        assert_eq!(back.embeddings(), ix.embeddings());
        assert_eq!(back.columns, ix.columns);
    }

    #[test]
    fn refused_writes_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.index");
        let mut ix = small();
        let mut store = Store::create(&path, &mut ix, StoreConfig::default()).unwrap();
        let batch = vec![(item("d", "x"), emb(1)), (item("a", "x"), emb(2))];
        assert!(matches!(
            store.add(&mut ix, batch),
            Err(IndexError::DuplicateId(_))
        ));
        let twice = vec![(item("e", "x"), emb(1)), (item("e", "x"), emb(2))];
        assert!(matches!(
            store.add(&mut ix, twice),
            Err(IndexError::DuplicateId(_))
        ));
        assert!(matches!(
            store.remove(&mut ix, &["b".into(), "zz".into()]),
            Err(IndexError::UnknownId(_))
        ));
        assert_eq!(store.log_bytes(), 0);
        assert_eq!(ix.len(), 3);
    }

    #[test]
    fn a_torn_last_record_is_ignored_then_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.index");
        let mut ix = small();
        let mut store = Store::create(&path, &mut ix, StoreConfig::default()).unwrap();
        store.add(&mut ix, vec![(item("d", "x"), emb(1))]).unwrap();
        let good = std::fs::metadata(log_path(&path)).unwrap().len();
        store.add(&mut ix, vec![(item("e", "x"), emb(2))]).unwrap();
        let full = std::fs::read(log_path(&path)).unwrap();
        drop(store);
        // Every cut inside the last record: that write is lost, nothing else is.
        for cut in good as usize..full.len() {
            std::fs::write(log_path(&path), &full[..cut]).unwrap();
            let back = Index::load(&path).unwrap();
            assert_eq!(ids(&back), ["a", "b", "c", "d"], "cut at {cut}");
        }
        // A zeroed (torn in place) last record too.
        let mut zeroed = full.clone();
        zeroed[good as usize + 8..].fill(0);
        std::fs::write(log_path(&path), &zeroed).unwrap();
        assert_eq!(ids(&Index::load(&path).unwrap()), ["a", "b", "c", "d"]);
        // The next writer cuts the torn record off before appending.
        std::fs::write(log_path(&path), &full[..full.len() - 5]).unwrap();
        let (mut store, mut ix) = Store::open(&path, StoreConfig::default()).unwrap();
        store.add(&mut ix, vec![(item("f", "x"), emb(3))]).unwrap();
        assert_eq!(ids(&Index::load(&path).unwrap()), ["a", "b", "c", "d", "f"]);
    }

    #[test]
    fn damage_before_the_last_record_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.index");
        let mut ix = small();
        let mut store = Store::create(&path, &mut ix, StoreConfig::default()).unwrap();
        store.add(&mut ix, vec![(item("d", "x"), emb(1))]).unwrap();
        store.add(&mut ix, vec![(item("e", "x"), emb(2))]).unwrap();
        drop(store);
        let mut bytes = std::fs::read(log_path(&path)).unwrap();
        bytes[LOG_HEADER as usize + 12] ^= 0x55;
        std::fs::write(log_path(&path), &bytes).unwrap();
        let err = Index::load(&path).unwrap_err().to_string();
        assert!(err.contains("corrupted") && err.contains(".log"), "{err}");
        std::fs::write(log_path(&path), b"junk").unwrap();
        let err = Index::load(&path).unwrap_err().to_string();
        assert!(err.contains("not an index log"), "{err}");
    }

    #[test]
    fn compaction_folds_the_log_and_a_stale_log_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.index");
        let mut ix = small();
        let config = StoreConfig {
            compact_ratio: 0.0,
            compact_min_bytes: 100,
            ..Default::default()
        };
        let mut store = Store::create(&path, &mut ix, config.clone()).unwrap();
        let old_log = |store: &Store| std::fs::read(log_path(store.path())).unwrap();
        let mut compactions = 0;
        let mut stale = None;
        for i in 0..20 {
            store
                .add(&mut ix, vec![(item(&format!("n{i}"), "x"), emb(i))])
                .unwrap();
            let before = old_log(&store);
            if store.maybe_compact(&mut ix).unwrap() {
                compactions += 1;
                stale = Some(before);
                assert_eq!(store.log_bytes(), 0);
            }
        }
        assert!(compactions >= 2, "{compactions}");
        let want = ids(&ix);
        assert_eq!(ids(&Index::load(&path).unwrap()), want);
        // A crash after the new base but before the new log leaves the old log: ignored.
        std::fs::write(log_path(&path), stale.unwrap()).unwrap();
        assert_eq!(ids(&Index::load(&path).unwrap()), want);
        let (mut store, mut ix) = Store::open(&path, config).unwrap();
        store.add(&mut ix, vec![(item("z", "x"), emb(99))]).unwrap();
        assert_eq!(Index::load(&path).unwrap().len(), want.len() + 1);
    }

    #[test]
    fn compaction_threshold_at_and_past_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.index");
        let mut ix = small();
        let mut store = Store::create(
            &path,
            &mut ix,
            StoreConfig {
                compact_ratio: 0.0,
                compact_min_bytes: 0,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(!store.wants_compaction(), "an empty log is at the limit");
        store.add(&mut ix, vec![(item("d", "x"), emb(1))]).unwrap();
        let one = store.log_bytes();
        store.config.compact_min_bytes = one;
        assert!(!store.wants_compaction(), "at the limit");
        store.config.compact_min_bytes = one - 1;
        assert!(store.wants_compaction(), "one byte past");
    }
}
