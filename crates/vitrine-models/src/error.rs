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
    #[error("{}", match memory_batch {
        None => format!("this decoder cross-attends to image features: a batch of {batch} needs them (build the cache with new_cache_with_memory)"),
        Some(m) => format!("a batch of {batch} rows was given image features for {m} rows"),
    })]
    Memory {
        batch: usize,
        memory_batch: Option<usize>,
    },
    #[error(transparent)]
    Hf(#[from] crate::hf::HfError),
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

/// A preset name that is not one of `presets`.
pub(crate) fn unknown_preset(name: &str, presets: &[&str]) -> ModelError {
    invalid("preset", name, format!("one of {}", presets.join(", ")))
}

/// `value` of `field` must lie in `1..=max`.
pub(crate) fn check_range(field: &'static str, value: usize, max: usize) -> Result<(), ModelError> {
    if value == 0 || value > max {
        return Err(invalid(field, value, format!("1..={max}")));
    }
    Ok(())
}
