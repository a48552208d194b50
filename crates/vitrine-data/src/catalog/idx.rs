//! IDX catalogues (MNIST, Fashion-MNIST): an images file and an optional labels file, plain
//! or gzip-compressed.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::sync::Arc;

use flate2::read::MultiGzDecoder;

use super::config::CatalogConfig;
use super::item::{Catalog, ImageRef, Item, LoadReport, RowCheck};
use crate::error::{DataError, Result};

pub(super) const IDX_IMAGES_MAGIC: u32 = 0x0000_0803;
pub(super) const IDX_LABELS_MAGIC: u32 = 0x0000_0801;

/// The dimensions and payload of an IDX file of unsigned bytes.
struct IdxData {
    dims: Vec<usize>,
    payload: Vec<u8>,
    trailing: bool,
}

fn idx_error(file: &Path, reason: impl Into<String>) -> DataError {
    DataError::Idx {
        file: file.to_path_buf(),
        reason: reason.into(),
    }
}

/// Read an IDX file (plain or gzip, told apart by the gzip magic bytes)
/// whose magic number must be `expected`.
fn read_idx(path: &Path, expected: u32, what: &str) -> Result<IdxData> {
    let file = File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => idx_error(
            path,
            "no such file (Fashion-MNIST installs with `apt-get install dataset-fashion-mnist`, \
             which scripts/setup.sh runs)",
        ),
        _ => DataError::io(path, e),
    })?;
    let mut buffered = BufReader::new(file);
    let head = buffered.fill_buf().map_err(|e| DataError::io(path, e))?;
    let gz = head.starts_with(&[0x1f, 0x8b]);
    let mut reader: Box<dyn Read> = if gz {
        Box::new(MultiGzDecoder::new(buffered))
    } else {
        Box::new(buffered)
    };
    let read_err = |e: std::io::Error| {
        idx_error(
            path,
            if gz {
                format!("cannot decompress (corrupt gzip?): {e}")
            } else {
                format!("read failed: {e}")
            },
        )
    };

    let mut magic = [0u8; 4];
    let got = read_full(&mut reader, &mut magic).map_err(read_err)?;
    if got < 4 {
        return Err(idx_error(
            path,
            format!("file is too short ({got} bytes) to hold an IDX header; expected {what}"),
        ));
    }
    let magic_u32 = u32::from_be_bytes(magic);
    if magic_u32 != expected {
        let hint = match magic_u32 {
            IDX_IMAGES_MAGIC => " (this is an IDX images file)",
            IDX_LABELS_MAGIC => " (this is an IDX labels file)",
            _ if magic[0] != 0 || magic[1] != 0 => " (not an IDX file)",
            _ if magic[2] != 0x08 => " (IDX, but only unsigned-byte data, type 0x08, is supported)",
            _ => "",
        };
        return Err(idx_error(
            path,
            format!("magic number 0x{magic_u32:08x}; expected 0x{expected:08x} for {what}{hint}"),
        ));
    }
    let ndims = usize::from(magic[3]);
    let mut dims = Vec::with_capacity(ndims);
    for d in 0..ndims {
        let mut b = [0u8; 4];
        let got = read_full(&mut reader, &mut b).map_err(read_err)?;
        if got < 4 {
            return Err(idx_error(
                path,
                format!(
                    "truncated header: dimension {} of {ndims} is missing",
                    d + 1
                ),
            ));
        }
        dims.push(u32::from_be_bytes(b) as usize);
    }
    let total = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| idx_error(path, format!("dimensions {dims:?} overflow")))?;
    // Allocate as data arrives, not from the header's claim, so a lying
    // header on a short file cannot reserve gigabytes.
    let mut payload = Vec::with_capacity(total.min(64 << 20));
    reader
        .by_ref()
        .take(total as u64)
        .read_to_end(&mut payload)
        .map_err(read_err)?;
    if payload.len() < total {
        return Err(idx_error(
            path,
            format!(
                "truncated: the header declares {} ({total} bytes of data) but only {} bytes follow",
                dims.iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(" x "),
                payload.len()
            ),
        ));
    }
    let mut extra = [0u8; 1];
    let trailing = read_full(&mut reader, &mut extra).map_err(read_err)? > 0;
    Ok(IdxData {
        dims,
        payload,
        trailing,
    })
}

/// Fill `buf` as far as the stream allows; returns the bytes read (less
/// than `buf.len()` only at end of stream).
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

pub(super) fn open_idx(
    images: &Path,
    labels: Option<&Path>,
    class_names: Option<&[String]>,
    id_prefix: &str,
    cfg: &CatalogConfig,
    skip_bad: bool,
    report: &mut LoadReport,
) -> Result<Catalog> {
    let img = read_idx(images, IDX_IMAGES_MAGIC, "IDX images (N x rows x cols)")?;
    if img.trailing {
        report.warn(format!(
            "{}: extra bytes after the declared image data were ignored",
            images.display()
        ));
    }
    let (n, rows, cols) = match img.dims[..] {
        [n, r, c] => (n, r, c),
        _ => {
            return Err(idx_error(
                images,
                format!("expected 3 dimensions, found {}", img.dims.len()),
            ))
        }
    };
    let (rows_u32, cols_u32) = match (u32::try_from(rows), u32::try_from(cols)) {
        (Ok(r), Ok(c)) if r > 0 && c > 0 => (r, c),
        _ => {
            return Err(idx_error(
                images,
                format!("image size {rows}x{cols} is not usable; rows and cols must be 1..=2^32-1"),
            ))
        }
    };
    if cols_u32 > cfg.limits.max_width || rows_u32 > cfg.limits.max_height {
        return Err(idx_error(
            images,
            format!(
                "images are {cols}x{rows}, larger than limits.max_width x max_height = {}x{}",
                cfg.limits.max_width, cfg.limits.max_height
            ),
        ));
    }

    let label_values = read_labels(labels, n, images, class_names.is_some(), report)?;
    let plane = rows * cols;
    let data = Arc::new(img.payload);
    let limit = if cfg.max_items > 0 {
        cfg.max_items.min(n)
    } else {
        n
    };
    let mut check = RowCheck { skip_bad, report };
    let mut items = Vec::with_capacity(limit);
    for i in 0..n {
        if items.len() >= limit {
            break;
        }
        check.report.read += 1;
        let label = match &label_values {
            None => None,
            Some((lpath, values)) => {
                let v = values.get(i).copied().unwrap_or_default();
                match class_names.map(|names| (names, names.get(usize::from(v)))) {
                    None => Some(v.to_string()),
                    Some((_, Some(name))) => Some(name.clone()),
                    Some((names, None)) => {
                        let reason = format!(
                            "label {v} has no class name (class_names has {} entries)",
                            names.len()
                        );
                        check.bad(lpath, i + 1, reason)?;
                        continue;
                    }
                }
            }
        };
        let attrs = label
            .iter()
            .map(|l| ("label".to_string(), l.clone()))
            .collect();
        items.push(Item {
            id: format!("{id_prefix}{i}"),
            label,
            title: None,
            attrs,
            image: ImageRef::Gray {
                data: Arc::clone(&data),
                offset: i * plane,
                rows: rows_u32,
                cols: cols_u32,
            },
            row: i + 1,
        });
    }
    Ok(Catalog {
        items,
        columns: Vec::new(),
        source_name: images.display().to_string(),
    })
}

/// The labels file's values, checked to hold one label per image (None: no labels file).
fn read_labels<'a>(
    labels: Option<&'a Path>,
    n: usize,
    images: &Path,
    class_names: bool,
    report: &mut LoadReport,
) -> Result<Option<(&'a Path, Vec<u8>)>> {
    let Some(lpath) = labels else {
        if class_names {
            report.warn("class_names is set but there is no labels file; it is ignored");
        }
        return Ok(None);
    };
    let lab = read_idx(lpath, IDX_LABELS_MAGIC, "IDX labels (N)")?;
    if lab.trailing {
        report.warn(format!(
            "{}: extra bytes after the declared labels were ignored",
            lpath.display()
        ));
    }
    if lab.dims.len() != 1 || lab.dims.first() != Some(&n) {
        return Err(idx_error(
            lpath,
            format!(
                "labels file has dimensions {:?} but the images file {} has {n} images; \
                 they must have the same count",
                lab.dims,
                images.display()
            ),
        ));
    }
    Ok(Some((lpath, lab.payload)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::fixtures::*;
    use crate::catalog::*;
    use std::fs;
    #[test]
    fn idx_round_trip_gz_and_plain() {
        for compress in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let mut cfg = idx_fixture(dir.path(), compress);
            let (cat, report) = Catalog::open(&cfg, false).unwrap();
            assert_eq!((cat.len(), report.read, report.kept), (3, 3, 3));
            assert_eq!(
                cat.labels(),
                vec![Some("2".into()), Some("0".into()), Some("1".into())]
            );
            assert_eq!(cat.items[1].id, "fm-1");
            assert_eq!(cat.items[1].row, 2);
            assert_eq!(
                cat.items[1].attrs.get("label").map(String::as_str),
                Some("0")
            );
            let img = cat.load_image(2, &cfg.limits).unwrap().to_luma8();
            assert_eq!((img.width(), img.height()), (3, 2));
            assert_eq!(img.into_raw(), vec![20, 21, 22, 23, 24, 25]);

            if let CatalogSource::Idx { class_names, .. } = &mut cfg.source {
                *class_names = Some(vec!["zero".into(), "one".into(), "two".into()]);
            }
            cfg.max_items = 2;
            let (cat, _) = Catalog::open(&cfg, false).unwrap();
            assert_eq!(cat.labels(), vec![Some("two".into()), Some("zero".into())]);
        }
    }

    #[test]
    fn idx_without_labels_and_unknown_class() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = idx_fixture(dir.path(), true);
        let CatalogSource::Idx { images, .. } = &cfg.source else {
            unreachable!()
        };
        let (cat, _) = Catalog::open(&idx_config(images.clone(), None, None), false).unwrap();
        assert_eq!(cat.labels(), vec![None, None, None]);
        assert!(cat.items[0].attrs.is_empty());

        let names = Some(vec!["zero".into(), "one".into()]); // label 2 has no name
        let cfg = idx_config(images.clone(), Some(dir.path().join("labels.idx")), names);
        let err = Catalog::open(&cfg, false).unwrap_err();
        assert!(matches!(err, DataError::BadRow { row: 1, .. }), "{err:?}");
        assert!(
            err.to_string().contains("label 2 has no class name"),
            "{err}"
        );
        let (cat, report) = Catalog::open(&cfg, true).unwrap();
        assert_eq!((cat.len(), report.skipped), (2, 1));
    }

    #[test]
    fn idx_errors() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let good = idx_bytes(IDX_IMAGES_MAGIC, &[3, 2, 3], &[7; 18]);
        let check = |name: &str, bytes: Vec<u8>, labels: Option<Vec<u8>>, expect: &str| {
            let p = d.join(name);
            fs::write(&p, bytes).unwrap();
            let lp = labels.map(|l| {
                let lp = d.join(format!("{name}.labels"));
                fs::write(&lp, l).unwrap();
                lp
            });
            let err = Catalog::open(&idx_config(p, lp, None), false).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(name) && msg.contains(expect), "{name}: {msg}");
        };
        check(
            "trunc.idx",
            good[..good.len() - 5].to_vec(),
            None,
            "truncated",
        );
        check(
            "trunc.gz",
            gz(&good[..good.len() - 5]),
            None,
            "only 13 bytes follow",
        );
        check(
            "shortheader.idx",
            good[..6].to_vec(),
            None,
            "truncated header",
        );
        check("empty.idx", Vec::new(), None, "too short (0 bytes)");
        check(
            "labelsfile.idx",
            idx_bytes(IDX_LABELS_MAGIC, &[3], &[0, 1, 2]),
            None,
            "this is an IDX labels file",
        );
        check(
            "text.idx",
            b"hello world, not idx".to_vec(),
            None,
            "not an IDX file",
        );
        check(
            "dims2.idx",
            idx_bytes(0x0000_0802, &[3, 6], &[0; 18]),
            None,
            "expected 0x00000803",
        );
        check(
            "zero.idx",
            idx_bytes(IDX_IMAGES_MAGIC, &[3, 0, 3], &[]),
            None,
            "not usable",
        );
        check(
            "count.idx",
            good.clone(),
            Some(idx_bytes(IDX_LABELS_MAGIC, &[2], &[0, 1])),
            "same count",
        );
        check(
            "badlabels.idx",
            good.clone(),
            Some(idx_bytes(IDX_IMAGES_MAGIC, &[3, 1, 1], &[0, 1, 2])),
            "expected 0x00000801",
        );
        check(
            "corrupt.gz",
            {
                let mut g = gz(&good);
                let n = g.len();
                g[n / 2] ^= 0xff;
                g[n - 8] ^= 0xff; // break the CRC too
                g
            },
            None,
            "",
        );
        check("nofile.idx", Vec::new(), None, "");
        fs::remove_file(d.join("nofile.idx")).unwrap();
        let err = Catalog::open(&idx_config(d.join("nofile.idx"), None, None), false).unwrap_err();
        assert!(matches!(err, DataError::Idx { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("nofile.idx") && msg.contains("apt-get install dataset-fashion-mnist"),
            "{msg}"
        );
    }
}
