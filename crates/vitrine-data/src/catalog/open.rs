//! Opening a catalogue of any format, and decoding its images to cached pixels.

use super::config::{CatalogConfig, CatalogSource};
use super::csv::{open_csv, CsvSpec};
use super::folder::open_image_folder;
use super::idx::open_idx;
use super::item::{Catalog, LoadReport};
use crate::error::{DataError, Result};
use crate::image_io::DecodeLimits;
use crate::transform::{self, Augment, Preprocess};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::fixtures::*;
    use std::fs;
    #[test]
    fn decode_pixels_with_garbage_image() {
        let (dir, cfg) = csv_fixture(
            "id,kind,name",
            &["1,a,x", "2,b,y", "3,a,z"],
            &["1.png", "3.png"],
        );
        fs::write(dir.path().join("images/2.png"), b"definitely not a png").unwrap();
        let (cat, mut report) = Catalog::open(&cfg, false).unwrap();
        let p = Preprocess::sized(3, 4, 5);
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
        let p = Preprocess::sized(1, 2, 3);
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
}
