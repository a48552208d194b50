//! How a catalogue is configured: its source (CSV + images, IDX, ImageFolder), the
//! columns that give labels and titles, and its decode limits.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::image_io::DecodeLimits;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::fixtures::*;

    /// A run config's `[data]` table.
    #[derive(Deserialize)]
    struct RunConfig {
        data: CatalogConfig,
    }

    /// The catalogue config of a `[data]` table with `body`.
    fn data(body: &str) -> CatalogConfig {
        let run: RunConfig = toml::from_str(&format!("[data]\n{body}")).unwrap();
        run.data
    }
    #[test]
    fn toml_csv_config() {
        let mut cfg = data(
            r#"
format = "csv"
csv = "../shared/data/fashion-products/styles.csv"
images = "../shared/data/fashion-products/images"
label_column = "articleType"
title_column = "productDisplayName"
"#,
        );
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
        let mut cfg = data(
            r#"
format = "idx"
images = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"
labels = "/usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz"
class_names = ["T-shirt/top","Trouser","Pullover","Dress","Coat","Sandal","Shirt","Sneaker","Bag","Ankle boot"]
max_items = 500

[data.limits]
max_width = 64
"#,
        );
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
}
