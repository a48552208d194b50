use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum TrainError {
    #[error(transparent)]
    Data(#[from] vitrine_data::DataError),
    #[error(transparent)]
    Model(#[from] vitrine_models::ModelError),
    #[error(transparent)]
    Hf(#[from] vitrine_models::hf::HfError),
    #[error(transparent)]
    Index(#[from] vitrine_index::IndexError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {origin}: {message}")]
    Config { origin: String, message: String },
    #[error("run directory {path}: {message}")]
    Run { path: PathBuf, message: String },
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    #[error("training diverged at step {step}: loss is {loss}")]
    Diverged { step: usize, loss: f32 },
    #[error("{0}")]
    Invalid(String),
    /// Data-parallel training: another worker stopped, cannot be reached, or disagrees.
    #[error("distributed training: {0}")]
    Collective(String),
    /// The caller stopped the work (e.g. its client went away).
    #[error("{0}")]
    Cancelled(String),
}

pub type Result<T> = std::result::Result<T, TrainError>;

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_owned(),
        source,
    }
}
