//! Catalogue readers: a CSV of products plus a folder of images, IDX files
//! (MNIST, Fashion-MNIST), and ImageFolder trees (`root/<label>/<file>`).
//!
//! Opening a catalogue checks every row up front (fields, ids, image files
//! present) so training does not fail hours in on a bad row. With
//! `skip_bad` such rows are skipped and counted instead.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use flate2::read::MultiGzDecoder;
use image::{DynamicImage, GrayImage};
use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::image_io::{self, DecodeLimits};
use crate::transform::{self, Augment, Preprocess};

/// File extensions accepted as images in ImageFolder trees.
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "gif", "bmp", "webp"];

/// Most warnings kept in a [`LoadReport`].
pub const MAX_WARNINGS: usize = 20;

fn default_id_column() -> String {
    "id".into()
}

fn default_image_pattern() -> String {
    "{id}.jpg".into()
}

/// Where the items come from. Selected by the `format` key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "format", rename_all = "kebab-case", deny_unknown_fields)]
pub enum CatalogSource {
    /// A CSV with an id column and attribute columns + a folder of images.
    Csv {
        csv: PathBuf,
        images: PathBuf,
        #[serde(default = "default_id_column")]
        id_column: String,
        /// File name built from the id, e.g. "{id}.jpg"; ignored when
        /// `image_column` is set.
        #[serde(default = "default_image_pattern")]
        image_pattern: String,
        /// Column holding the image file name (relative to `images`).
        #[serde(default)]
        image_column: Option<String>,
    },
    /// idx / idx.gz (MNIST, Fashion-MNIST): images file (+ optional labels
    /// file). gzip is detected by its magic bytes, not by the file name.
    Idx {
        images: PathBuf,
        #[serde(default)]
        labels: Option<PathBuf>,
        /// Names for the numeric labels, indexed by label value.
        #[serde(default)]
        class_names: Option<Vec<String>>,
        /// Prepended to the record index to form the item id.
        #[serde(default)]
        id_prefix: String,
    },
    /// ImageFolder tree: `root/<label>/<file>.{jpg,jpeg,png,gif,bmp,webp}`;
    /// label = folder name, id = "<label>/<file stem>".
    ImageFolder { root: PathBuf },
}

/// A catalogue as configured (e.g. the `[data]` table of a run config).
// `deny_unknown_fields` cannot be combined with `flatten`; unknown keys are
// still refused because they reach the flattened `CatalogSource`, which
// denies them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogConfig {
    #[serde(flatten)]
    pub source: CatalogSource,
    /// Column used as the class for training/evaluation (csv: a column name;
    /// idx: ignored (label = class name or the numeric label); image-folder:
    /// ignored (folder name)).
    #[serde(default)]
    pub label_column: Option<String>,
    /// Column shown as the item's title (csv only), e.g. "productDisplayName".
    #[serde(default)]
    pub title_column: Option<String>,
    #[serde(default)]
    pub limits: DecodeLimits,
    /// Max items kept (0 = all): reading stops once this many usable items
    /// have been read.
    #[serde(default)]
    pub max_items: usize,
}

impl CatalogConfig {
    /// Join every relative path in the source onto `base` (usually the
    /// folder of the config file). Absolute paths are left alone.
    pub fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        match &mut self.source {
            CatalogSource::Csv { csv, images, .. } => {
                fix(csv);
                fix(images);
            }
            CatalogSource::Idx { images, labels, .. } => {
                fix(images);
                if let Some(l) = labels {
                    fix(l);
                }
            }
            CatalogSource::ImageFolder { root } => fix(root),
        }
    }

    /// Check settings that do not need the file system.
    pub fn validate(&self) -> Result<()> {
        self.limits.validate()?;
        if let CatalogSource::Csv {
            id_column,
            image_pattern,
            image_column,
            ..
        } = &self.source
        {
            if id_column.trim().is_empty() {
                return Err(DataError::Config(
                    "data.id_column is empty; name the CSV column holding item ids".into(),
                ));
            }
            if image_column.is_none() && !image_pattern.contains("{id}") {
                return Err(DataError::Config(format!(
                    "data.image_pattern = \"{image_pattern}\" does not contain `{{id}}`; \
                     use e.g. \"{{id}}.jpg\", or set data.image_column"
                )));
            }
        }
        Ok(())
    }
}

/// Where an item's pixels are.
#[derive(Clone)]
pub enum ImageRef {
    /// An encoded image file.
    File(PathBuf),
    /// In-memory grayscale (idx): `data[offset..offset + rows * cols]`.
    Gray {
        data: Arc<Vec<u8>>,
        offset: usize,
        rows: u32,
        cols: u32,
    },
}

// Manual impl: the derived one would print the whole shared pixel buffer.
impl fmt::Debug for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::File(p) => f.debug_tuple("File").field(p).finish(),
            ImageRef::Gray {
                data,
                offset,
                rows,
                cols,
            } => f
                .debug_struct("Gray")
                .field("data_len", &data.len())
                .field("offset", offset)
                .field("rows", rows)
                .field("cols", cols)
                .finish(),
        }
    }
}

/// One catalogue entry.
#[derive(Debug, Clone)]
pub struct Item {
    pub id: String,
    pub label: Option<String>,
    pub title: Option<String>,
    /// Every CSV column except the id (label and title columns included);
    /// `{"label": ..}` for idx and ImageFolder.
    pub attrs: BTreeMap<String, String>,
    pub image: ImageRef,
    /// 1-based data row (CSV line number incl. header, or idx record
    /// index + 1, or position in the ImageFolder listing) for error messages.
    pub row: usize,
}

/// Counts of what was read, kept and skipped, for the run summary.
#[derive(Debug, Default, Clone, Serialize)]
pub struct LoadReport {
    pub read: usize,
    pub kept: usize,
    pub skipped: usize,
    /// First few reasons (at most [`MAX_WARNINGS`]) for the summary.
    pub warnings: Vec<String>,
}

impl LoadReport {
    /// Record a warning, keeping only the first [`MAX_WARNINGS`].
    pub fn warn(&mut self, msg: impl Into<String>) {
        if self.warnings.len() < MAX_WARNINGS {
            self.warnings.push(msg.into());
        }
    }

    /// One line such as "read 100, kept 98, skipped 2".
    pub fn summary(&self) -> String {
        format!(
            "read {}, kept {}, skipped {}",
            self.read, self.kept, self.skipped
        )
    }
}

/// The items of an opened catalogue.
#[derive(Debug, Clone)]
pub struct Catalog {
    pub items: Vec<Item>,
    /// Attribute column names (csv), empty otherwise.
    pub columns: Vec<String>,
    /// CSV path, idx images path or ImageFolder root, for messages.
    pub source_name: String,
}

impl Catalog {
    /// Read and check the catalogue. Bad rows are errors naming file and
    /// row, or with `skip_bad` are skipped, counted and described in the
    /// report. A catalogue without a single usable item is an error.
    pub fn open(cfg: &CatalogConfig, skip_bad: bool) -> Result<(Catalog, LoadReport)> {
        cfg.validate()?;
        let mut report = LoadReport::default();
        let catalog = match &cfg.source {
            CatalogSource::Csv {
                csv,
                images,
                id_column,
                image_pattern,
                image_column,
            } => {
                let spec = CsvSpec {
                    csv,
                    images,
                    id_column,
                    image_pattern,
                    image_column: image_column.as_deref(),
                    label_column: cfg.label_column.as_deref(),
                    title_column: cfg.title_column.as_deref(),
                    max_items: cfg.max_items,
                };
                open_csv(&spec, skip_bad, &mut report)?
            }
            CatalogSource::Idx {
                images,
                labels,
                class_names,
                id_prefix,
            } => open_idx(
                images,
                labels.as_deref(),
                class_names.as_deref(),
                id_prefix,
                cfg,
                skip_bad,
                &mut report,
            )?,
            CatalogSource::ImageFolder { root } => {
                open_image_folder(root, cfg.max_items, skip_bad, &mut report)?
            }
        };
        report.kept = catalog.items.len();
        if catalog.items.is_empty() {
            return Err(DataError::Catalog {
                source_name: catalog.source_name,
                reason: format!(
                    "no usable items ({}){}",
                    report.summary(),
                    report
                        .warnings
                        .first()
                        .map(|w| format!("; first problem: {w}"))
                        .unwrap_or_default()
                ),
            });
        }
        Ok((catalog, report))
    }

    /// Decode item `i` within `limits`; errors name the file (or idx path)
    /// and the row.
    pub fn load_image(&self, i: usize, limits: &DecodeLimits) -> Result<DynamicImage> {
        let item = self.items.get(i).ok_or_else(|| DataError::Catalog {
            source_name: self.source_name.clone(),
            reason: format!(
                "item index {i} out of range (the catalogue has {} items)",
                self.items.len()
            ),
        })?;
        let (path, result) = match &item.image {
            ImageRef::File(path) => (path.clone(), image_io::load_image_inner(path, limits)),
            ImageRef::Gray {
                data,
                offset,
                rows,
                cols,
            } => (
                PathBuf::from(&self.source_name),
                gray_image(data, *offset, *rows, *cols, limits),
            ),
        };
        result.map_err(|source| DataError::Image {
            path,
            row: Some(item.row),
            source: Box::new(source),
        })
    }

    /// The label of every item, in item order.
    pub fn labels(&self) -> Vec<Option<String>> {
        self.items.iter().map(|i| i.label.clone()).collect()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

fn gray_image(
    data: &[u8],
    offset: usize,
    rows: u32,
    cols: u32,
    limits: &DecodeLimits,
) -> Result<DynamicImage> {
    if cols > limits.max_width || rows > limits.max_height {
        return Err(DataError::ImageTooLarge {
            width: cols,
            height: rows,
            max_width: limits.max_width,
            max_height: limits.max_height,
        });
    }
    let len = rows as usize * cols as usize;
    let pixels = offset
        .checked_add(len)
        .and_then(|end| data.get(offset..end))
        .ok_or_else(|| DataError::Decode {
            reason: format!(
                "pixel range {offset}..{} is outside the {}-byte buffer",
                offset.saturating_add(len),
                data.len()
            ),
        })?;
    GrayImage::from_raw(cols, rows, pixels.to_vec())
        .map(DynamicImage::ImageLuma8)
        .ok_or_else(|| DataError::Decode {
            reason: format!("{cols}x{rows} does not match {} pixels", pixels.len()),
        })
}

/// Decode and preprocess `indices` of `catalog` to cached u8 CHW pixels
/// (`p.pixel_len()` bytes each, no augmentation).
///
/// An undecodable image is an error naming file and row, or with `skip_bad`
/// is skipped: it moves from `report.kept` to `report.skipped` (pass the
/// report from [`Catalog::open`]) and its reason is added to the warnings.
/// Returns the kept indices and their pixels concatenated in that order.
pub fn decode_pixels(
    catalog: &Catalog,
    indices: &[usize],
    p: &Preprocess,
    limits: &DecodeLimits,
    skip_bad: bool,
    report: &mut LoadReport,
    progress: Option<&indicatif::ProgressBar>,
) -> Result<(Vec<usize>, Vec<u8>)> {
    p.validate()?;
    limits.validate()?;
    let no_aug = Augment::default();
    let mut kept = Vec::with_capacity(indices.len());
    let mut pixels = Vec::with_capacity(indices.len().saturating_mul(p.pixel_len()));
    for &i in indices {
        match catalog.load_image(i, limits) {
            Ok(img) => {
                pixels.extend_from_slice(&transform::to_pixels(&img, p, &no_aug, None));
                kept.push(i);
            }
            // Only image problems are skippable; a bad index is a bug.
            Err(e @ DataError::Image { .. }) if skip_bad => {
                report.skipped += 1;
                report.kept = report.kept.saturating_sub(1);
                report.warn(e.to_string());
            }
            Err(e) => return Err(e),
        }
        if let Some(pb) = progress {
            pb.inc(1);
        }
    }
    Ok((kept, pixels))
}

/// Routes a bad row to an error, or (skip_bad) to the report.
struct RowCheck<'a> {
    skip_bad: bool,
    report: &'a mut LoadReport,
}

impl RowCheck<'_> {
    fn bad(&mut self, file: &Path, row: usize, reason: String) -> Result<()> {
        if self.skip_bad {
            self.report.skipped += 1;
            self.report
                .warn(format!("{}, row {row}: {reason}", file.display()));
            Ok(())
        } else {
            Err(DataError::BadRow {
                file: file.to_path_buf(),
                row,
                reason,
            })
        }
    }
}

/// A path inside the images folder: relative, no `..`, not empty.
fn is_contained(rel: &Path) -> bool {
    rel.components().next().is_some()
        && rel
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

struct CsvSpec<'a> {
    csv: &'a Path,
    images: &'a Path,
    id_column: &'a str,
    image_pattern: &'a str,
    image_column: Option<&'a str>,
    label_column: Option<&'a str>,
    title_column: Option<&'a str>,
    max_items: usize,
}

fn open_csv(spec: &CsvSpec<'_>, skip_bad: bool, report: &mut LoadReport) -> Result<Catalog> {
    let csv_path = spec.csv;
    let source_name = csv_path.display().to_string();
    let file = File::open(csv_path).map_err(|e| DataError::io(csv_path, e))?;
    if !spec.images.is_dir() {
        return Err(DataError::Catalog {
            source_name,
            reason: format!(
                "images folder {} does not exist or is not a folder",
                spec.images.display()
            ),
        });
    }
    // flexible: rows with the wrong field count are reported by us, with
    // their row, instead of aborting the whole read.
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(BufReader::new(file));
    let header = reader.headers().map_err(|e| DataError::Catalog {
        source_name: source_name.clone(),
        reason: format!("cannot read the CSV header: {e}"),
    })?;
    let columns: Vec<String> = header
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let h = if i == 0 {
                h.trim_start_matches('\u{feff}')
            } else {
                h
            };
            h.trim().to_string()
        })
        .collect();
    for (i, c) in columns.iter().enumerate() {
        if columns[..i].contains(c) {
            return Err(DataError::Catalog {
                source_name,
                reason: format!("column `{c}` appears more than once in the header"),
            });
        }
    }
    let find = |name: &str, role: &str| {
        columns
            .iter()
            .position(|c| c == name)
            .ok_or_else(|| DataError::MissingColumn {
                file: csv_path.to_path_buf(),
                column: name.to_string(),
                role: role.to_string(),
                available: columns.clone(),
            })
    };
    let id_idx = find(spec.id_column, "id_column")?;
    let label_idx = spec
        .label_column
        .map(|c| find(c, "label_column"))
        .transpose()?;
    let title_idx = spec
        .title_column
        .map(|c| find(c, "title_column"))
        .transpose()?;
    let image_idx = spec
        .image_column
        .map(|c| find(c, "image_column"))
        .transpose()?;

    let mut check = RowCheck { skip_bad, report };
    let mut items = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut record = csv::StringRecord::new();
    let mut data_rows = 0usize;
    loop {
        if spec.max_items > 0 && items.len() >= spec.max_items {
            break;
        }
        let read = reader.read_record(&mut record);
        // Row numbers are CSV lines (header = line 1); the reader knows them
        // even when quoted fields span lines.
        let row = match &read {
            Err(e) => e.position().map(|p| p.line() as usize),
            Ok(_) => record.position().map(|p| p.line() as usize),
        }
        .unwrap_or(data_rows + 2);
        match read {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                if let csv::ErrorKind::Io(_) = e.kind() {
                    return Err(DataError::Catalog {
                        source_name,
                        reason: format!("read failed at row {row}: {e}"),
                    });
                }
                // Invalid UTF-8 and the like: the reader has moved past the
                // record, so it can be skipped like any other bad row.
                data_rows += 1;
                check.report.read += 1;
                check.bad(csv_path, row, format!("unreadable row: {e}"))?;
                continue;
            }
        }
        data_rows += 1;
        check.report.read += 1;

        if record.len() != columns.len() {
            check.bad(
                csv_path,
                row,
                format!(
                    "has {} fields but the header has {} (unquoted comma in a value?)",
                    record.len(),
                    columns.len()
                ),
            )?;
            continue;
        }
        let field = |i: usize| record.get(i).unwrap_or("").trim();
        let id = field(id_idx);
        if id.is_empty() {
            check.bad(
                csv_path,
                row,
                format!("empty id (column `{}`)", spec.id_column),
            )?;
            continue;
        }
        if let Some(first) = seen.get(id) {
            check.bad(
                csv_path,
                row,
                format!("duplicate id `{id}` (first used on row {first})"),
            )?;
            continue;
        }
        let rel = match image_idx {
            Some(i) => field(i).to_string(),
            None => spec.image_pattern.replace("{id}", id),
        };
        if rel.is_empty() {
            check.bad(
                csv_path,
                row,
                format!(
                    "empty image file name (column `{}`)",
                    spec.image_column.unwrap_or_default()
                ),
            )?;
            continue;
        }
        if !is_contained(Path::new(&rel)) {
            check.bad(
                csv_path,
                row,
                format!("image path `{rel}` must be relative to the images folder, without `..`"),
            )?;
            continue;
        }
        let path = spec.images.join(&rel);
        if !path.is_file() {
            check.bad(
                csv_path,
                row,
                format!("image file {} does not exist", path.display()),
            )?;
            continue;
        }
        let non_empty =
            |i: Option<usize>| i.map(field).filter(|v| !v.is_empty()).map(str::to_string);
        let attrs = columns
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != id_idx)
            .map(|(i, c)| (c.clone(), field(i).to_string()))
            .collect();
        seen.insert(id.to_string(), row);
        items.push(Item {
            id: id.to_string(),
            label: non_empty(label_idx),
            title: non_empty(title_idx),
            attrs,
            image: ImageRef::File(path),
            row,
        });
    }
    Ok(Catalog {
        items,
        columns,
        source_name,
    })
}

const IDX_IMAGES_MAGIC: u32 = 0x0000_0803;
const IDX_LABELS_MAGIC: u32 = 0x0000_0801;

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

fn open_idx(
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

    let label_values = match labels {
        Some(lpath) => {
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
            Some((lpath, lab.payload))
        }
        None => {
            if class_names.is_some() {
                report.warn("class_names is set but there is no labels file; it is ignored");
            }
            None
        }
    };

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
                match class_names {
                    None => Some(v.to_string()),
                    Some(names) => match names.get(usize::from(v)) {
                        Some(name) => Some(name.clone()),
                        None => {
                            check.bad(
                                lpath,
                                i + 1,
                                format!(
                                    "label {v} has no class name (class_names has {} entries)",
                                    names.len()
                                ),
                            )?;
                            continue;
                        }
                    },
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

fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

fn is_hidden(name: &std::ffi::OsStr) -> bool {
    name.to_string_lossy().starts_with('.')
}

/// Sorted entries of a folder (sorted so ids and rows are reproducible).
fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        if !is_hidden(&entry.file_name()) {
            paths.push(entry.path());
        }
    }
    paths.sort();
    Ok(paths)
}

fn open_image_folder(
    root: &Path,
    max_items: usize,
    skip_bad: bool,
    report: &mut LoadReport,
) -> Result<Catalog> {
    let source_name = root.display().to_string();
    if !root.is_dir() {
        return Err(DataError::Catalog {
            source_name,
            reason: "ImageFolder root does not exist or is not a folder".into(),
        });
    }
    let mut ignored = 0usize;
    let mut class_dirs = Vec::new();
    for path in sorted_entries(root)? {
        if path.is_dir() {
            class_dirs.push(path);
        } else {
            ignored += 1;
        }
    }
    if class_dirs.is_empty() {
        return Err(DataError::Catalog {
            source_name,
            reason: "no class folders; expected root/<label>/<image file>".into(),
        });
    }
    let mut check = RowCheck { skip_bad, report };
    let mut items: Vec<Item> = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    'classes: for dir in class_dirs {
        let label = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for path in sorted_entries(&dir)? {
            if !(path.is_file() && has_image_extension(&path)) {
                ignored += 1;
                continue;
            }
            if max_items > 0 && items.len() >= max_items {
                break 'classes;
            }
            check.report.read += 1;
            let row = check.report.read;
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let id = format!("{label}/{stem}");
            if let Some(first) = seen.get(&id) {
                check.bad(
                    &path,
                    row,
                    format!(
                        "duplicate id `{id}` (same file name as row {first}, different extension)"
                    ),
                )?;
                continue;
            }
            seen.insert(id.clone(), row);
            items.push(Item {
                id,
                label: Some(label.clone()),
                title: None,
                attrs: BTreeMap::from([("label".to_string(), label.clone())]),
                image: ImageRef::File(path),
                row,
            });
        }
    }
    if ignored > 0 {
        check.report.warn(format!(
            "{source_name}: ignored {ignored} entries that are not image files inside a class folder \
             (accepted extensions: {})",
            IMAGE_EXTENSIONS.join(", ")
        ));
    }
    Ok(Catalog {
        items,
        columns: Vec::new(),
        source_name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use flate2::Compression;
    use image::{ImageBuffer, ImageFormat, Rgb};
    use std::io::Write;

    fn write_png(path: &Path, w: u32, h: u32, shade: u8) {
        let img =
            DynamicImage::ImageRgb8(ImageBuffer::from_pixel(w, h, Rgb([shade, 0, 255 - shade])));
        img.save_with_format(path, ImageFormat::Png).unwrap();
    }

    /// A CSV fixture: `rows` are written after the header; images named in
    /// `images` are created as small PNGs.
    fn csv_fixture(
        header: &str,
        rows: &[&str],
        images: &[&str],
    ) -> (tempfile::TempDir, CatalogConfig) {
        let dir = tempfile::tempdir().unwrap();
        let img_dir = dir.path().join("images");
        fs::create_dir(&img_dir).unwrap();
        for (k, name) in images.iter().enumerate() {
            write_png(&img_dir.join(name), 6, 4, (k * 40) as u8);
        }
        let mut text = format!("{header}\n");
        for r in rows {
            text.push_str(r);
            text.push('\n');
        }
        fs::write(dir.path().join("styles.csv"), text).unwrap();
        let cfg = CatalogConfig {
            source: CatalogSource::Csv {
                csv: dir.path().join("styles.csv"),
                images: img_dir,
                id_column: "id".into(),
                image_pattern: "{id}.png".into(),
                image_column: None,
            },
            label_column: Some("kind".into()),
            title_column: Some("name".into()),
            limits: DecodeLimits::default(),
            max_items: 0,
        };
        (dir, cfg)
    }

    #[test]
    fn good_csv() {
        let (_dir, cfg) = csv_fixture(
            "id,kind,name,colour",
            &[
                "1,Shirts,Blue shirt,Blue",
                "2,Shoes,\"Shoe, red\",Red",
                "3,,Untitled,",
            ],
            &["1.png", "2.png", "3.png"],
        );
        let (cat, report) = Catalog::open(&cfg, false).unwrap();
        assert_eq!(cat.len(), 3);
        assert!(!cat.is_empty());
        assert_eq!((report.read, report.kept, report.skipped), (3, 3, 0));
        assert_eq!(cat.columns, vec!["id", "kind", "name", "colour"]);
        let second = &cat.items[1];
        assert_eq!(second.id, "2");
        assert_eq!(second.label.as_deref(), Some("Shoes"));
        assert_eq!(second.title.as_deref(), Some("Shoe, red"));
        assert_eq!(second.row, 3);
        assert_eq!(second.attrs.get("colour").map(String::as_str), Some("Red"));
        assert_eq!(second.attrs.get("kind").map(String::as_str), Some("Shoes"));
        assert!(!second.attrs.contains_key("id"));
        // An empty label cell is "unlabelled", not an error.
        assert_eq!(
            cat.labels(),
            vec![Some("Shirts".into()), Some("Shoes".into()), None]
        );
        let img = cat.load_image(0, &cfg.limits).unwrap();
        assert_eq!((img.width(), img.height()), (6, 4));
        assert!(cat.load_image(3, &cfg.limits).is_err());
    }

    #[test]
    fn csv_max_items_and_image_column() {
        let (dir, mut cfg) = csv_fixture(
            "id,kind,name,file",
            &["a,X,n,pics/a.png", "b,Y,n,b.png", "c,Y,n,b.png"],
            &["b.png"],
        );
        fs::create_dir(dir.path().join("images/pics")).unwrap();
        write_png(&dir.path().join("images/pics/a.png"), 2, 2, 9);
        if let CatalogSource::Csv { image_column, .. } = &mut cfg.source {
            *image_column = Some("file".into());
        }
        let (cat, _) = Catalog::open(&cfg, false).unwrap();
        assert_eq!(cat.len(), 3);
        assert!(matches!(&cat.items[0].image, ImageRef::File(p) if p.ends_with("pics/a.png")));
        cfg.max_items = 2;
        let (cat, report) = Catalog::open(&cfg, false).unwrap();
        assert_eq!(cat.len(), 2);
        assert_eq!(report.read, 2);
    }

    #[test]
    fn bad_rows_error_with_file_and_row() {
        let cases: &[(&str, &str, &str)] = &[
            ("1,Shirts,A,Blue\n9,Shoes,B,Red", "row 3", "does not exist"),
            (
                "1,Shirts,A,Blue\n2,Shoes,B",
                "row 3",
                "has 3 fields but the header has 4",
            ),
            ("1,Shirts,A,Blue\n ,Shoes,B,Red", "row 3", "empty id"),
            (
                "1,Shirts,A,Blue\n1,Shoes,B,Red",
                "row 3",
                "duplicate id `1` (first used on row 2)",
            ),
        ];
        for (rows, row, reason) in cases {
            let rows: Vec<&str> = rows.lines().collect();
            let (_dir, cfg) = csv_fixture("id,kind,name,colour", &rows, &["1.png", "2.png"]);
            let err = Catalog::open(&cfg, false).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, DataError::BadRow { row: 3, .. }), "{err:?}");
            assert!(
                msg.contains("styles.csv") && msg.contains(row) && msg.contains(reason),
                "{msg}"
            );
        }
    }

    #[test]
    fn bad_rows_skipped_and_counted() {
        let (_dir, cfg) = csv_fixture(
            "id,kind,name,colour",
            &[
                "1,Shirts,A,Blue",
                "9,Shoes,B,Red", // image missing
                "2,Shoes,B",     // short row
                ",Shoes,B,Red",  // missing id
                "1,Shoes,B,Red", // duplicate id
                "2,Shoes,x,y,z", // long row
                "2,Bags,C,Green",
                "../1,Bags,C,Green", // escapes the images folder
            ],
            &["1.png", "2.png"],
        );
        let (cat, report) = Catalog::open(&cfg, true).unwrap();
        assert_eq!(
            cat.items.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
            vec!["1", "2"]
        );
        assert_eq!(cat.items[1].row, 8);
        assert_eq!((report.read, report.kept, report.skipped), (8, 2, 6));
        assert_eq!(report.warnings.len(), 6);
        assert!(
            report.warnings[0].contains("row 3") && report.warnings[0].contains("does not exist")
        );
        assert!(report.warnings[5].contains("row 9") && report.warnings[5].contains(".."));
        assert_eq!(report.summary(), "read 8, kept 2, skipped 6");
    }

    #[test]
    fn warnings_are_capped() {
        let rows: Vec<String> = (0..30).map(|i| format!("m{i},K,N,C")).collect();
        let mut rows: Vec<&str> = rows.iter().map(String::as_str).collect();
        rows.push("1,K,N,C");
        let (_dir, cfg) = csv_fixture("id,kind,name,colour", &rows, &["1.png"]);
        let (cat, report) = Catalog::open(&cfg, true).unwrap();
        assert_eq!(cat.len(), 1);
        assert_eq!(report.skipped, 30);
        assert_eq!(report.warnings.len(), MAX_WARNINGS);
    }

    #[test]
    fn all_rows_bad_is_an_error() {
        let (_dir, cfg) = csv_fixture("id,kind,name,colour", &["5,K,N,C"], &[]);
        let err = Catalog::open(&cfg, true).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("no usable items") && msg.contains("does not exist"),
            "{msg}"
        );
    }

    #[test]
    fn missing_columns_list_available() {
        let (_dir, mut cfg) = csv_fixture("id,type,name", &["1,a,b"], &["1.png"]);
        let err = Catalog::open(&cfg, false).unwrap_err();
        assert!(
            matches!(&err, DataError::MissingColumn { column, role, .. } if column == "kind" && role == "label_column"),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .contains("available columns: id, type, name"),
            "{err}"
        );

        cfg.label_column = None;
        cfg.title_column = Some("title".into());
        assert!(Catalog::open(&cfg, false)
            .unwrap_err()
            .to_string()
            .contains("no column `title`"));
        cfg.title_column = None;
        if let CatalogSource::Csv { id_column, .. } = &mut cfg.source {
            *id_column = "sku".into();
        }
        assert!(Catalog::open(&cfg, false)
            .unwrap_err()
            .to_string()
            .contains("no column `sku` (configured as id_column)"));
    }

    #[test]
    fn missing_csv_and_images_folder() {
        let (dir, mut cfg) = csv_fixture("id,kind,name", &["1,a,b"], &["1.png"]);
        if let CatalogSource::Csv { images, .. } = &mut cfg.source {
            *images = dir.path().join("nope");
        }
        let msg = Catalog::open(&cfg, false).unwrap_err().to_string();
        assert!(
            msg.contains("images folder") && msg.contains("nope"),
            "{msg}"
        );

        fs::remove_file(dir.path().join("styles.csv")).unwrap();
        let err = Catalog::open(&cfg, false).unwrap_err();
        assert!(matches!(err, DataError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("styles.csv"), "{err}");
    }

    #[test]
    fn pattern_without_id_is_rejected() {
        let (_dir, mut cfg) = csv_fixture("id,kind,name", &["1,a,b"], &["1.png"]);
        if let CatalogSource::Csv { image_pattern, .. } = &mut cfg.source {
            *image_pattern = "photo.png".into();
        }
        let msg = Catalog::open(&cfg, false).unwrap_err().to_string();
        assert!(
            msg.contains("image_pattern") && msg.contains("{id}"),
            "{msg}"
        );
    }

    #[test]
    fn invalid_utf8_row_is_a_bad_row() {
        let (dir, cfg) = csv_fixture("id,kind,name", &[], &["1.png", "2.png"]);
        let mut bytes = b"id,kind,name\n1,a,b\n2,\xff\xfe,c\n".to_vec();
        bytes.extend_from_slice(b"2,a,ok\n");
        fs::write(dir.path().join("styles.csv"), bytes).unwrap();
        let err = Catalog::open(&cfg, false).unwrap_err();
        assert!(matches!(err, DataError::BadRow { row: 3, .. }), "{err:?}");
        let (cat, report) = Catalog::open(&cfg, true).unwrap();
        assert_eq!(cat.len(), 2);
        assert_eq!(report.skipped, 1);
    }

    fn idx_bytes(magic: u32, dims: &[u32], payload: &[u8]) -> Vec<u8> {
        let mut out = magic.to_be_bytes().to_vec();
        for d in dims {
            out.extend_from_slice(&d.to_be_bytes());
        }
        out.extend_from_slice(payload);
        out
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    fn idx_config(
        images: PathBuf,
        labels: Option<PathBuf>,
        class_names: Option<Vec<String>>,
    ) -> CatalogConfig {
        CatalogConfig {
            source: CatalogSource::Idx {
                images,
                labels,
                class_names,
                id_prefix: "fm-".into(),
            },
            label_column: None,
            title_column: None,
            limits: DecodeLimits::default(),
            max_items: 0,
        }
    }

    /// 3 images of 2x3 pixels: image k has pixels 10k..10k+6, labels 2,0,1.
    fn idx_fixture(dir: &Path, compress: bool) -> CatalogConfig {
        let pixels: Vec<u8> = (0..3u8)
            .flat_map(|k| (0..6u8).map(move |p| 10 * k + p))
            .collect();
        let imgs = idx_bytes(IDX_IMAGES_MAGIC, &[3, 2, 3], &pixels);
        let labs = idx_bytes(IDX_LABELS_MAGIC, &[3], &[2, 0, 1]);
        let (imgs, labs) = if compress {
            (gz(&imgs), gz(&labs))
        } else {
            (imgs, labs)
        };
        // Deliberately misleading names: gzip is detected from content.
        fs::write(dir.join("images.idx"), imgs).unwrap();
        fs::write(dir.join("labels.idx"), labs).unwrap();
        idx_config(dir.join("images.idx"), Some(dir.join("labels.idx")), None)
    }

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

    #[test]
    fn image_folder() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for (label, files) in [
            ("shoes", &["b.PNG", "a.png", "notes.txt"][..]),
            ("bags", &["x.png"][..]),
        ] {
            fs::create_dir(root.join(label)).unwrap();
            for f in files {
                if f.ends_with(".txt") {
                    fs::write(root.join(label).join(f), "hi").unwrap();
                } else {
                    write_png(&root.join(label).join(f), 3, 3, 1);
                }
            }
        }
        fs::write(root.join("README"), "x").unwrap();
        let cfg = CatalogConfig {
            source: CatalogSource::ImageFolder {
                root: root.to_path_buf(),
            },
            label_column: None,
            title_column: None,
            limits: DecodeLimits::default(),
            max_items: 0,
        };
        let (cat, report) = Catalog::open(&cfg, false).unwrap();
        let ids: Vec<&str> = cat.items.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, vec!["bags/x", "shoes/a", "shoes/b"]);
        assert_eq!(
            cat.labels(),
            vec![
                Some("bags".into()),
                Some("shoes".into()),
                Some("shoes".into())
            ]
        );
        assert_eq!(
            cat.items[2].attrs.get("label").map(String::as_str),
            Some("shoes")
        );
        assert_eq!(cat.items[2].row, 3);
        assert_eq!(report.kept, 3);
        assert!(
            report.warnings[0].contains("ignored 2 entries"),
            "{:?}",
            report.warnings
        );
        assert_eq!(cat.load_image(1, &cfg.limits).unwrap().width(), 3);

        // a.png and a.jpg in one folder would share an id.
        write_png(&root.join("shoes/a.jpg"), 2, 2, 0);
        let err = Catalog::open(&cfg, false).unwrap_err();
        assert!(err.to_string().contains("duplicate id `shoes/a`"), "{err}");
        let (cat, report) = Catalog::open(&cfg, true).unwrap();
        assert_eq!((cat.len(), report.skipped), (3, 1));

        let empty = tempfile::tempdir().unwrap();
        let cfg = CatalogConfig {
            source: CatalogSource::ImageFolder {
                root: empty.path().to_path_buf(),
            },
            ..cfg
        };
        assert!(Catalog::open(&cfg, false)
            .unwrap_err()
            .to_string()
            .contains("no class folders"));
    }

    #[test]
    fn decode_pixels_with_garbage_image() {
        let (dir, cfg) = csv_fixture(
            "id,kind,name",
            &["1,a,x", "2,b,y", "3,a,z"],
            &["1.png", "3.png"],
        );
        fs::write(dir.path().join("images/2.png"), b"definitely not a png").unwrap();
        let (cat, mut report) = Catalog::open(&cfg, false).unwrap();
        let p = Preprocess {
            height: 4,
            width: 5,
            channels: 3,
            ..Preprocess::default()
        };
        let err =
            decode_pixels(&cat, &[0, 1, 2], &p, &cfg.limits, false, &mut report, None).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("2.png")
                && msg.contains("row 3")
                && msg.contains("unrecognised image format"),
            "{msg}"
        );

        let pb = indicatif::ProgressBar::hidden();
        let (kept, pixels) = decode_pixels(
            &cat,
            &[0, 1, 2],
            &p,
            &cfg.limits,
            true,
            &mut report,
            Some(&pb),
        )
        .unwrap();
        assert_eq!(kept, vec![0, 2]);
        assert_eq!(pixels.len(), 2 * p.pixel_len());
        assert_eq!(pb.position(), 3);
        assert_eq!((report.read, report.kept, report.skipped), (3, 2, 1));
        assert!(report.warnings[0].contains("2.png"));
        // The cached pixels are exactly what to_pixels gives.
        let first = transform::to_pixels(
            &cat.load_image(0, &cfg.limits).unwrap(),
            &p,
            &Augment::default(),
            None,
        );
        assert_eq!(&pixels[..p.pixel_len()], &first[..]);

        // A bad index is a bug, not a skippable image.
        assert!(decode_pixels(&cat, &[7], &p, &cfg.limits, true, &mut report, None).is_err());
    }

    #[test]
    fn decode_pixels_from_idx() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = idx_fixture(dir.path(), true);
        let (cat, mut report) = Catalog::open(&cfg, false).unwrap();
        let p = Preprocess {
            height: 2,
            width: 3,
            channels: 1,
            ..Preprocess::default()
        };
        let (kept, pixels) =
            decode_pixels(&cat, &[1, 0], &p, &cfg.limits, false, &mut report, None).unwrap();
        assert_eq!(kept, vec![1, 0]);
        assert_eq!(pixels, vec![10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5]);

        // Images over the limits are refused with the idx path and row.
        let tiny = DecodeLimits {
            max_width: 2,
            ..DecodeLimits::default()
        };
        let err = cat.load_image(0, &tiny).unwrap_err();
        assert!(matches!(err.root(), DataError::ImageTooLarge { .. }));
        assert!(err.to_string().contains("images.idx (row 1)"), "{err}");
    }

    #[derive(Deserialize)]
    struct RunConfig {
        data: CatalogConfig,
    }

    #[test]
    fn toml_csv_config() {
        let run: RunConfig = toml::from_str(
            r#"
[data]
format = "csv"
csv = "../shared/data/fashion-products/styles.csv"
images = "../shared/data/fashion-products/images"
label_column = "articleType"
title_column = "productDisplayName"
"#,
        )
        .unwrap();
        let mut cfg = run.data;
        assert_eq!(
            cfg.source,
            CatalogSource::Csv {
                csv: "../shared/data/fashion-products/styles.csv".into(),
                images: "../shared/data/fashion-products/images".into(),
                id_column: "id".into(),
                image_pattern: "{id}.jpg".into(),
                image_column: None,
            }
        );
        assert_eq!(cfg.label_column.as_deref(), Some("articleType"));
        assert_eq!(cfg.title_column.as_deref(), Some("productDisplayName"));
        assert_eq!(cfg.limits, DecodeLimits::default());
        assert_eq!(cfg.max_items, 0);

        cfg.resolve_paths(Path::new("/srv/vitrine"));
        let CatalogSource::Csv { csv, images, .. } = &cfg.source else {
            unreachable!()
        };
        assert_eq!(
            csv,
            Path::new("/srv/vitrine/../shared/data/fashion-products/styles.csv")
        );
        assert_eq!(
            images,
            Path::new("/srv/vitrine/../shared/data/fashion-products/images")
        );
    }

    #[test]
    fn toml_idx_config() {
        let run: RunConfig = toml::from_str(
            r#"
[data]
format = "idx"
images = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"
labels = "/usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz"
class_names = ["T-shirt/top","Trouser","Pullover","Dress","Coat","Sandal","Shirt","Sneaker","Bag","Ankle boot"]
max_items = 500

[data.limits]
max_width = 64
"#,
        )
        .unwrap();
        let mut cfg = run.data;
        let CatalogSource::Idx {
            class_names,
            labels,
            id_prefix,
            ..
        } = &cfg.source
        else {
            panic!("{cfg:?}")
        };
        assert_eq!(class_names.as_ref().map(Vec::len), Some(10));
        assert!(labels.is_some());
        assert_eq!(id_prefix, "");
        assert_eq!(cfg.max_items, 500);
        assert_eq!(cfg.limits.max_width, 64);
        assert_eq!(cfg.limits.max_height, 8192);
        let before = cfg.clone();
        cfg.resolve_paths(Path::new("/elsewhere")); // absolute paths stay
        assert_eq!(cfg, before);

        let folder: RunConfig =
            toml::from_str("[data]\nformat = \"image-folder\"\nroot = \"photos\"").unwrap();
        assert_eq!(
            folder.data.source,
            CatalogSource::ImageFolder {
                root: "photos".into()
            }
        );
    }

    #[test]
    fn toml_config_rejects_typos_and_unknown_formats() {
        let typo = "[data]\nformat = \"csv\"\ncsv = \"a.csv\"\nimages = \"i\"\nlabel_colum = \"x\"";
        let err = toml::from_str::<RunConfig>(typo)
            .err()
            .expect("typo must be rejected");
        assert!(err.to_string().contains("label_colum"), "{err}");
        let err = toml::from_str::<RunConfig>("[data]\nformat = \"parquet\"\nroot = \"x\"")
            .err()
            .expect("unknown format must be rejected");
        assert!(err.to_string().contains("parquet"), "{err}");
        let missing = toml::from_str::<RunConfig>("[data]\nformat = \"csv\"\ncsv = \"a.csv\"");
        assert!(missing
            .err()
            .expect("missing images")
            .to_string()
            .contains("images"));
    }

    #[test]
    fn json_round_trip() {
        let (_dir, cfg) = csv_fixture("id,kind,name", &["1,a,b"], &["1.png"]);
        let text = serde_json::to_string(&cfg).unwrap();
        assert!(text.contains("\"format\":\"csv\""), "{text}");
        let back: CatalogConfig = serde_json::from_str(&text).unwrap();
        assert_eq!(back, cfg);
    }

    /// Runs against the real product catalogue when it is present.
    #[test]
    fn shared_fashion_products_if_present() {
        let base =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/fashion-products");
        let csv = base.join("styles.csv");
        if !csv.is_file() {
            eprintln!("skipping: {} not present", csv.display());
            return;
        }
        let cfg = CatalogConfig {
            source: CatalogSource::Csv {
                csv,
                images: base.join("images"),
                id_column: "id".into(),
                image_pattern: "{id}.jpg".into(),
                image_column: None,
            },
            label_column: Some("articleType".into()),
            title_column: Some("productDisplayName".into()),
            limits: DecodeLimits::default(),
            max_items: 200,
        };
        let (cat, report) = Catalog::open(&cfg, true).unwrap();
        assert!(!cat.is_empty(), "{report:?}");
        let p = Preprocess::default();
        let mut report = report;
        let (kept, pixels) =
            decode_pixels(&cat, &[0, 1, 2], &p, &cfg.limits, true, &mut report, None).unwrap();
        assert_eq!(pixels.len(), kept.len() * p.pixel_len());
    }
}
