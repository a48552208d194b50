//! The crate's error type.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T> = std::result::Result<T, DataError>;

/// Everything that can go wrong while reading catalogues and images.
///
/// Variants caused by user data carry enough context (file, row, column,
/// limit) for the message alone to tell the user what to fix.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// An I/O operation on `path` failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The image header declares dimensions beyond the configured limits.
    #[error(
        "image is {width}x{height} pixels, larger than the allowed {max_width}x{max_height} \
         (limits.max_width / limits.max_height)"
    )]
    ImageTooLarge {
        width: u32,
        height: u32,
        max_width: u32,
        max_height: u32,
    },

    /// The image header declares more pixels than `limits.max_pixels`.
    #[error(
        "image is {width}x{height} pixels, more than the allowed {max_pixels} pixels \
         (limits.max_pixels)"
    )]
    TooManyPixels {
        width: u32,
        height: u32,
        max_pixels: u64,
    },

    /// The encoded image is bigger than `limits.max_file_bytes`.
    #[error(
        "image data is {bytes} bytes, more than the allowed {max_bytes} (limits.max_file_bytes)"
    )]
    FileTooLarge { bytes: u64, max_bytes: u64 },

    /// The bytes are not a decodable image (unknown format, truncated, corrupt,
    /// or decoding would exceed the memory limit).
    #[error("cannot decode image: {reason}")]
    Decode { reason: String },

    /// An image-level error with the file (and catalogue row) it came from.
    #[error("{path}{}: {source}", row.map(|r| format!(" (row {r})")).unwrap_or_default())]
    Image {
        path: PathBuf,
        row: Option<usize>,
        #[source]
        source: Box<DataError>,
    },

    /// A catalogue row that cannot be used.
    #[error("{file}, row {row}: {reason}")]
    BadRow {
        file: PathBuf,
        row: usize,
        reason: String,
    },

    /// A configured column is not in the CSV header.
    #[error(
        "{file}: no column `{column}` (configured as {role}); available columns: {}",
        available.join(", ")
    )]
    MissingColumn {
        file: PathBuf,
        column: String,
        /// Which setting named the column, e.g. `label_column`.
        role: String,
        available: Vec<String>,
    },

    /// A tokenizer that cannot be trained, loaded, or applied to a text.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// A malformed IDX (MNIST-style) file.
    #[error("{file}: {reason}")]
    Idx { file: PathBuf, reason: String },

    /// A catalogue-level problem that is not tied to one row.
    #[error("{source_name}: {reason}")]
    Catalog { source_name: String, reason: String },

    /// An invalid configuration value; the message names the field and the
    /// allowed values.
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl DataError {
    /// The innermost error, looking through the file/row context added by
    /// [`DataError::Image`]; use it to match on the kind of failure.
    pub fn root(&self) -> &DataError {
        match self {
            DataError::Image { source, .. } => source.root(),
            other => other,
        }
    }

    /// An I/O failure on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_context_names_file_and_row_and_root_unwraps() {
        let err = DataError::Image {
            path: PathBuf::from("imgs/1.jpg"),
            row: Some(7),
            source: Box::new(DataError::Decode {
                reason: "truncated".into(),
            }),
        };
        let msg = err.to_string();
        assert_eq!(msg, "imgs/1.jpg (row 7): cannot decode image: truncated");
        assert!(matches!(err.root(), DataError::Decode { .. }));
    }

    #[test]
    fn missing_column_lists_available() {
        let err = DataError::MissingColumn {
            file: PathBuf::from("styles.csv"),
            column: "kind".into(),
            role: "label_column".into(),
            available: vec!["id".into(), "gender".into()],
        };
        assert_eq!(
            err.to_string(),
            "styles.csv: no column `kind` (configured as label_column); available columns: id, gender"
        );
    }
}
