//! A CSV file with a header row, opened the way every reader in this crate needs it: I/O
//! and parse errors name the file, a missing column lists the ones the file has.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};

pub(crate) struct Table {
    pub file: PathBuf,
    pub reader: csv::Reader<File>,
    pub header: csv::StringRecord,
}

impl Table {
    pub fn open(path: &Path) -> Result<Self> {
        let file = path.to_path_buf();
        let mut reader = csv::Reader::from_path(path).map_err(|e| match e.into_kind() {
            csv::ErrorKind::Io(source) => DataError::Io {
                path: file.clone(),
                source,
            },
            other => DataError::BadRow {
                file: file.clone(),
                row: 0,
                reason: format!("{other:?}"),
            },
        })?;
        let header = reader
            .headers()
            .map_err(|e| DataError::BadRow {
                file: file.clone(),
                row: 0,
                reason: format!("unreadable header: {e}"),
            })?
            .clone();
        Ok(Self {
            file,
            reader,
            header,
        })
    }

    /// Position of column `name`, configured as `role` (named in the error).
    pub fn column(&self, name: &str, role: &str) -> Result<usize> {
        self.header
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| DataError::MissingColumn {
                file: self.file.clone(),
                column: name.to_string(),
                role: role.to_string(),
                available: self.header.iter().map(String::from).collect(),
            })
    }
}
