//! Atomic file writes: readers see either the old file or the complete new
//! one, never a partial write, even if the process dies mid-way.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Distinguishes temp files of concurrent saves within one process.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Atomically replace `path` with `bytes`.
///
/// Creates the parent folder if missing, writes a temp file in the same
/// folder (so the rename cannot cross file systems), syncs it, renames it
/// over `path` and syncs the folder. On failure the temp file is removed and
/// any previous file at `path` is left untouched.
pub fn atomic_save(path: &Path, bytes: &[u8]) -> io::Result<()> {
    atomic_save_with(path, |w| w.write_all(bytes))
}

/// Like [`atomic_save`], but the content is produced by `write`, which
/// streams into a buffered writer over the temp file. If `write` fails the
/// old file is kept and its error is returned (with the path added).
pub fn atomic_save_with(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>,
) -> io::Result<()> {
    let with_path = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not a file path", path.display()),
        )
    })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir).map_err(with_path)?;

    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    // create_new: never clobber a file we did not create.
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(with_path)?;

    let result = (|| {
        let mut w = BufWriter::new(file);
        write(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(with_path(e));
    }
    sync_dir(&dir).map_err(with_path)
}

/// Make the rename durable. Some file systems cannot fsync a directory; the
/// data itself is already synced then, so that case is not an error.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    match File::open(dir).and_then(|d| d.sync_all()) {
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::InvalidInput | io::ErrorKind::Unsupported
            ) =>
        {
            Ok(())
        }
        other => other,
    }
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn writes_content_and_creates_parent() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("a/b/model.json");
        atomic_save(&path, b"hello").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"hello");
        assert_eq!(names(&tmp.path().join("a/b")), vec!["model.json"]);
    }

    #[test]
    fn replaces_existing_file_without_leftovers() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("x.bin");
        atomic_save(&path, b"old content that is longer").unwrap();
        atomic_save(&path, b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(names(tmp.path()), vec!["x.bin"]);
    }

    #[test]
    fn streaming_writer() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("s.txt");
        atomic_save_with(&path, |w| {
            for i in 0..3 {
                writeln!(w, "line {i}")?;
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "line 0\nline 1\nline 2\n"
        );
    }

    #[test]
    fn failing_writer_keeps_old_file_and_removes_temp() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("keep.txt");
        atomic_save(&path, b"precious").unwrap();
        let err = atomic_save_with(&path, |w| {
            w.write_all(b"partial")?;
            w.flush()?;
            Err(io::Error::other("disk on fire"))
        })
        .unwrap_err();
        assert!(err.to_string().contains("disk on fire"), "{err}");
        assert!(err.to_string().contains("keep.txt"), "{err}");
        assert_eq!(fs::read(&path).unwrap(), b"precious");
        assert_eq!(names(tmp.path()), vec!["keep.txt"]);
    }

    #[test]
    fn path_without_file_name_is_an_error() {
        assert!(atomic_save(Path::new("/"), b"x").is_err());
        assert!(atomic_save(Path::new(".."), b"x").is_err());
    }
}
