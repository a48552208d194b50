//! ImageFolder catalogues: `root/<label>/<file>`, label = folder name.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use super::item::{Catalog, ImageRef, Item, LoadReport, RowCheck, IMAGE_EXTENSIONS};
use crate::error::{DataError, Result};

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

pub(super) fn open_image_folder(
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
    use crate::catalog::fixtures::*;
    use crate::catalog::*;
    use crate::image_io::DecodeLimits;
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
}
