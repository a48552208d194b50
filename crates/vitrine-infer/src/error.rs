use std::path::PathBuf;

use thiserror::Error;

/// What can go wrong while loading or using a run: bad input, a missing or foreign run
/// directory, a config that does not parse, a caller that stopped the work.
#[derive(Debug, Error)]
pub enum InferError {
    #[error(transparent)]
    Data(#[from] vitrine_data::DataError),
    #[error(transparent)]
    Model(#[from] vitrine_models::ModelError),
    #[error(transparent)]
    Hf(#[from] vitrine_models::hf::HfError),
    #[error(transparent)]
    Index(#[from] vitrine_index::IndexError),
    #[error("config {origin}: {message}")]
    Config { origin: String, message: String },
    #[error("run directory {path}: {message}")]
    Run { path: PathBuf, message: String },
    /// Weights that do not fit the module they are loaded into.
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    /// A value past its limit or of the wrong kind; the message starts with the field.
    #[error("{0}")]
    Invalid(String),
    /// The caller stopped the work (e.g. its client went away).
    #[error("{0}")]
    Cancelled(String),
}

pub type Result<T> = std::result::Result<T, InferError>;

/// A file operation's failure, naming the file.
pub fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> InferError + '_ {
    move |source| InferError::Data(vitrine_data::DataError::io(path, source))
}
