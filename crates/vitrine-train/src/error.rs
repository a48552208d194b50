use std::path::Path;

use thiserror::Error;
use vitrine_infer::InferError;

/// What can stop training: everything loading and inference can report, and what only
/// the loop can (a diverged loss, a lost worker).
#[derive(Debug, Error)]
pub enum TrainError {
    #[error(transparent)]
    Infer(#[from] InferError),
    #[error("training diverged at step {step}: loss is {loss}")]
    Diverged { step: usize, loss: f32 },
    /// Data-parallel training: another worker stopped, cannot be reached, or disagrees.
    #[error("distributed training: {0}")]
    Collective(String),
}

impl TrainError {
    /// A checkpoint that cannot be read or does not fit the run.
    pub fn checkpoint(path: &Path, message: impl Into<String>) -> Self {
        Self::Infer(InferError::Checkpoint {
            path: path.to_owned(),
            message: message.into(),
        })
    }

    /// A setting or an input that training cannot use; the message names it.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::Infer(InferError::Invalid(message.into()))
    }
}

/// Errors of the crates below inference reach training through [`InferError`].
macro_rules! via_infer {
    ($($source:ty),*) => {$(
        impl From<$source> for TrainError {
            fn from(e: $source) -> Self {
                Self::Infer(e.into())
            }
        }
    )*};
}

via_infer!(
    vitrine_data::DataError,
    vitrine_models::ModelError,
    vitrine_models::hf::HfError,
    vitrine_index::IndexError
);

pub type Result<T> = std::result::Result<T, TrainError>;

/// A file operation's failure, naming the file.
pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| vitrine_data::DataError::io(path, source).into()
}
