//! CSV catalogues: a CSV of products (an id column and attributes) plus a folder of images.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Component, Path};

use super::item::{Catalog, ImageRef, Item, LoadReport, RowCheck};
use crate::error::{DataError, Result};

/// A path inside the images folder: relative, no `..`, not empty.
fn is_contained(rel: &Path) -> bool {
    rel.components().next().is_some()
        && rel
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

pub(super) struct CsvSpec<'a> {
    pub csv: &'a Path,
    pub images: &'a Path,
    pub id_column: &'a str,
    pub image_pattern: &'a str,
    pub image_column: Option<&'a str>,
    pub label_column: Option<&'a str>,
    pub title_column: Option<&'a str>,
    pub max_items: usize,
}

pub(super) fn open_csv(
    spec: &CsvSpec<'_>,
    skip_bad: bool,
    report: &mut LoadReport,
) -> Result<Catalog> {
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
    let columns = read_header(&mut reader, &source_name)?;
    let roles = Roles::find(spec, &columns)?;
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
        let item = match read {
            Ok(false) => break,
            Ok(true) => item_of_row(spec, &columns, &roles, &record, row, &seen),
            Err(e) => {
                if let csv::ErrorKind::Io(_) = e.kind() {
                    return Err(DataError::Catalog {
                        source_name,
                        reason: format!("read failed at row {row}: {e}"),
                    });
                }
                // Invalid UTF-8 and the like: the reader has moved past the
                // record, so it can be skipped like any other bad row.
                Err(format!("unreadable row: {e}"))
            }
        };
        data_rows += 1;
        check.report.read += 1;
        match item {
            Ok(item) => {
                seen.insert(item.id.clone(), row);
                items.push(item);
            }
            Err(reason) => check.bad(csv_path, row, reason)?,
        }
    }
    Ok(Catalog {
        items,
        columns,
        source_name,
    })
}

/// The header's column names (a UTF-8 byte-order mark and spaces removed), each once.
fn read_header(
    reader: &mut csv::Reader<BufReader<File>>,
    source_name: &str,
) -> Result<Vec<String>> {
    let header = reader.headers().map_err(|e| DataError::Catalog {
        source_name: source_name.to_string(),
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
                source_name: source_name.to_string(),
                reason: format!("column `{c}` appears more than once in the header"),
            });
        }
    }
    Ok(columns)
}

/// Where the configured columns are in the header.
struct Roles {
    id: usize,
    label: Option<usize>,
    title: Option<usize>,
    image: Option<usize>,
}

impl Roles {
    fn find(spec: &CsvSpec<'_>, columns: &[String]) -> Result<Self> {
        let find = |name: &str, role: &str| {
            columns
                .iter()
                .position(|c| c == name)
                .ok_or_else(|| DataError::MissingColumn {
                    file: spec.csv.to_path_buf(),
                    column: name.to_string(),
                    role: role.to_string(),
                    available: columns.to_vec(),
                })
        };
        let optional = |name: Option<&str>, role: &str| name.map(|c| find(c, role)).transpose();
        Ok(Self {
            id: find(spec.id_column, "id_column")?,
            label: optional(spec.label_column, "label_column")?,
            title: optional(spec.title_column, "title_column")?,
            image: optional(spec.image_column, "image_column")?,
        })
    }
}

/// The item of one data row, or why the row is bad.
fn item_of_row(
    spec: &CsvSpec<'_>,
    columns: &[String],
    roles: &Roles,
    record: &csv::StringRecord,
    row: usize,
    seen: &HashMap<String, usize>,
) -> std::result::Result<Item, String> {
    if record.len() != columns.len() {
        return Err(format!(
            "has {} fields but the header has {} (unquoted comma in a value?)",
            record.len(),
            columns.len()
        ));
    }
    let field = |i: usize| record.get(i).unwrap_or("").trim();
    let id = field(roles.id);
    if id.is_empty() {
        return Err(format!("empty id (column `{}`)", spec.id_column));
    }
    if let Some(first) = seen.get(id) {
        return Err(format!("duplicate id `{id}` (first used on row {first})"));
    }
    let rel = match roles.image {
        Some(i) => field(i).to_string(),
        None => spec.image_pattern.replace("{id}", id),
    };
    if rel.is_empty() {
        return Err(format!(
            "empty image file name (column `{}`)",
            spec.image_column.unwrap_or_default()
        ));
    }
    if !is_contained(Path::new(&rel)) {
        return Err(format!(
            "image path `{rel}` must be relative to the images folder, without `..`"
        ));
    }
    let path = spec.images.join(&rel);
    if !path.is_file() {
        return Err(format!("image file {} does not exist", path.display()));
    }
    let non_empty = |i: Option<usize>| i.map(field).filter(|v| !v.is_empty()).map(str::to_string);
    let attrs = columns
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != roles.id)
        .map(|(i, c)| (c.clone(), field(i).to_string()))
        .collect();
    Ok(Item {
        id: id.to_string(),
        label: non_empty(roles.label),
        title: non_empty(roles.title),
        attrs,
        image: ImageRef::File(path),
        row,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::fixtures::*;
    use crate::catalog::*;
    use crate::image_io::DecodeLimits;
    use crate::transform::Preprocess;
    use std::fs;
    /// Why `cfg` does not open.
    fn open_error(cfg: &CatalogConfig) -> String {
        Catalog::open(cfg, false).unwrap_err().to_string()
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
        let msg = open_error(&cfg);
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
        let msg = open_error(&cfg);
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
