//! The reader type every format produces: a [`Catalog`] of [`Item`]s with their image
//! references, and the [`LoadReport`] of what was kept and skipped.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::{DynamicImage, GrayImage};
use serde::Serialize;

use crate::error::{DataError, Result};
use crate::image_io::{self, DecodeLimits};

/// File extensions accepted as images in ImageFolder trees.
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "gif", "bmp", "webp"];

/// Most warnings kept in a [`LoadReport`].
pub const MAX_WARNINGS: usize = 20;

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

/// Routes a bad row to an error, or (skip_bad) to the report.
pub(super) struct RowCheck<'a> {
    pub skip_bad: bool,
    pub report: &'a mut LoadReport,
}

impl RowCheck<'_> {
    pub fn bad(&mut self, file: &Path, row: usize, reason: String) -> Result<()> {
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
