use thiserror::Error;

/// A model configuration that cannot be built, or an input of the wrong shape.
#[derive(Debug, Error, PartialEq)]
pub enum ModelError {
    #[error("invalid model config: {field} = {value} ({allowed})")]
    InvalidConfig {
        field: &'static str,
        value: String,
        allowed: String,
    },
    #[error("{len} positions exceed the model's context of {max} tokens (model.n_ctx)")]
    Context { len: usize, max: usize },
    #[error("input shape {got:?} does not match the model's expected input {expected:?}")]
    InputShape {
        got: Vec<usize>,
        expected: Vec<usize>,
    },
}

pub(crate) fn invalid(
    field: &'static str,
    value: impl ToString,
    allowed: impl ToString,
) -> ModelError {
    ModelError::InvalidConfig {
        field,
        value: value.to_string(),
        allowed: allowed.to_string(),
    }
}
