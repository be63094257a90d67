//! `resource_monitor::Error` and its one mapping to gRPC status codes.

use std::time::Duration;

use tta_types::{ErrorCode, FieldViolation, ServiceError};

/// The hint on UNAVAILABLE and on RESOURCE_EXHAUSTED without a lease that would free enough.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Invalid(#[from] FieldViolation),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{message}")]
    Exhausted {
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unavailable(String),
}

impl Error {
    /// How long a client should wait before trying again, for errors where that helps.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Exhausted { retry_after, .. } => Some(
                retry_after
                    .unwrap_or(DEFAULT_RETRY_AFTER)
                    .max(Duration::from_millis(1)),
            ),
            Error::Unavailable(_) => Some(DEFAULT_RETRY_AFTER),
            _ => None,
        }
    }
}

impl ServiceError for Error {
    fn error_code(&self) -> ErrorCode {
        match self {
            Error::Invalid(_) => ErrorCode::InvalidArgument,
            Error::FailedPrecondition(_) => ErrorCode::FailedPrecondition,
            Error::Exhausted { .. } => ErrorCode::ResourceExhausted,
            Error::NotFound(_) => ErrorCode::NotFound,
            Error::Unavailable(_) => ErrorCode::Unavailable,
        }
    }
}

/// Adds the `retry-after-ms` trailer and the `(retry after N ms)` suffix the contract promises
/// on RESOURCE_EXHAUSTED and UNAVAILABLE.
impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        let code = err.error_code().grpc_code();
        match err.retry_after() {
            Some(wait) => tta_types::error::status_with_retry_hint(code, &err, wait),
            None => tonic::Status::new(code, err.to_string()),
        }
    }
}
