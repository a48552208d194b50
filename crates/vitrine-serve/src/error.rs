//! Errors: [`ServeError`] stops the server from starting; [`ApiError`] answers one request.
//! `ApiError` is the one place errors become HTTP statuses.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use thiserror::Error;
use vitrine_data::DataError;
use vitrine_index::IndexError;
use vitrine_infer::InferError;

#[derive(Debug, Error)]
pub enum ServeError {
    #[error("serve config: {0}")]
    Config(String),
    #[error("loading {what}: {source}")]
    Load {
        what: String,
        #[source]
        source: Box<InferError>,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A request that could not be answered, with the status it maps to.
#[derive(Debug, Clone, Error, PartialEq)]
pub enum ApiError {
    /// A field is missing, malformed or past its limit (422).
    #[error("{message}")]
    Invalid {
        field: Option<String>,
        message: String,
    },
    /// The body is not what the content type says (400).
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The body did not arrive in time (408).
    #[error("{0}")]
    RequestTimeout(String),
    #[error("{0}")]
    NotFound(String),
    /// The item already exists (409).
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    /// The worker's queue is full (429).
    #[error("{message}")]
    Overloaded { message: String, retry_after: u64 },
    /// Busy, not ready, shutting down or timed out (503).
    #[error("{message}")]
    Unavailable { message: String, retry_after: u64 },
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::Invalid {
            field: Some(field.to_string()),
            message: message.into(),
        }
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::Unavailable {
            message: message.into(),
            retry_after: 1,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: self.to_string(),
            field: match self {
                Self::Invalid { field, .. } => field.clone(),
                _ => None,
            },
        }
    }
}

/// The JSON body of every error response.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: String,
    /// The request field at fault, for validation errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (self.status(), axum::Json(self.body())).into_response();
        match &self {
            Self::Overloaded { retry_after, .. } | Self::Unavailable { retry_after, .. } => {
                res.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            Self::Unauthorized(_) => {
                res.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        res
    }
}

impl From<DataError> for ApiError {
    fn from(e: DataError) -> Self {
        match e.root() {
            DataError::Io { .. } => Self::Internal(e.to_string()),
            DataError::ImageTooLarge { .. }
            | DataError::TooManyPixels { .. }
            | DataError::FileTooLarge { .. }
            | DataError::Decode { .. } => Self::invalid("image", e.to_string()),
            _ => Self::Invalid {
                field: None,
                message: e.to_string(),
            },
        }
    }
}

impl From<IndexError> for ApiError {
    fn from(e: IndexError) -> Self {
        match &e {
            IndexError::UnknownId(_) => Self::NotFound(e.to_string()),
            IndexError::BadK { .. } => Self::invalid("k", e.to_string()),
            IndexError::UnknownColumn { .. } | IndexError::BadFilter(_) => {
                Self::invalid("filters", e.to_string())
            }
            IndexError::DuplicateId(_) | IndexError::KeyClash(_) => Self::Conflict(e.to_string()),
            IndexError::NonFinite { .. }
            | IndexError::Dim { .. }
            | IndexError::Empty
            | IndexError::Query(_) => Self::Invalid {
                field: None,
                message: e.to_string(),
            },
            IndexError::Io { .. } | IndexError::Format { .. } | IndexError::Backend(_) => {
                Self::Internal(e.to_string())
            }
        }
    }
}

impl From<InferError> for ApiError {
    fn from(e: InferError) -> Self {
        match e {
            InferError::Data(d) => d.into(),
            InferError::Index(i) => i.into(),
            // Validation messages start with the field name ("top_p = 2: allowed ...").
            InferError::Invalid(m) => {
                let field = m
                    .split([' ', ':'])
                    .next()
                    .filter(|f| {
                        !f.is_empty() && f.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    })
                    .map(String::from);
                Self::Invalid { field, message: m }
            }
            InferError::Cancelled(m) => Self::unavailable(m),
            other => Self::Internal(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_fields() {
        let e: ApiError = InferError::Invalid("top_p = 2: allowed 0 < top_p <= 1".into()).into();
        assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(e.body().field.as_deref(), Some("top_p"));
        let e: ApiError = IndexError::UnknownId("x".into()).into();
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
        let e: ApiError = DataError::TooManyPixels {
            width: 10,
            height: 10,
            max_pixels: 9,
        }
        .into();
        assert_eq!(e.body().field.as_deref(), Some("image"));
        let res = ApiError::Overloaded {
            message: "full".into(),
            retry_after: 2,
        }
        .into_response();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(res.headers()[header::RETRY_AFTER], "2");
    }
}
