//! Test fixtures shared by the format readers' tests: small PNGs, CSV catalogues, IDX files.

use std::fs;
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use flate2::Compression;
use image::{DynamicImage, ImageBuffer, ImageFormat, Rgb};
use std::io::Write;

use super::idx::{IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC};
use super::{CatalogConfig, CatalogSource};
use crate::image_io::DecodeLimits;

pub fn write_png(path: &Path, w: u32, h: u32, shade: u8) {
    let img = DynamicImage::ImageRgb8(ImageBuffer::from_pixel(w, h, Rgb([shade, 0, 255 - shade])));
    img.save_with_format(path, ImageFormat::Png).unwrap();
}

/// A CSV fixture: `rows` are written after the header; images named in
/// `images` are created as small PNGs.
pub fn csv_fixture(
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

pub fn idx_bytes(magic: u32, dims: &[u32], payload: &[u8]) -> Vec<u8> {
    let mut out = magic.to_be_bytes().to_vec();
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(payload);
    out
}

pub fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

pub fn idx_config(
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
pub fn idx_fixture(dir: &Path, compress: bool) -> CatalogConfig {
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
