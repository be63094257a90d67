//! `gateway::Error` and its one mapping to gRPC status codes.

use tta_types::{ErrorCode, FieldViolation, ServiceError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Invalid(#[from] FieldViolation),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    Aborted(String),
    #[error("redis unavailable: {0}")]
    Unavailable(String),
    #[error("corrupt gateway data in redis: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Internal(String),
}

impl From<redis::RedisError> for Error {
    fn from(err: redis::RedisError) -> Self {
        if tta_runtime::redis::is_unavailable(&err) {
            Error::Unavailable(err.to_string())
        } else {
            Error::Internal(format!("redis: {err}"))
        }
    }
}

impl From<tta_safety::Error> for Error {
    fn from(err: tta_safety::Error) -> Self {
        match err {
            tta_safety::Error::InvalidArgument(violation) => Error::Invalid(violation),
            tta_safety::Error::Storage(reason) => Error::Unavailable(reason),
            tta_safety::Error::EscalationNotFound(id) => {
                Error::NotFound(format!("escalation {id} not found"))
            }
            other => Error::Internal(other.to_string()),
        }
    }
}

impl ServiceError for Error {
    fn error_code(&self) -> ErrorCode {
        match self {
            Error::Invalid(_) => ErrorCode::InvalidArgument,
            Error::NotFound(_) => ErrorCode::NotFound,
            Error::PermissionDenied(_) => ErrorCode::PermissionDenied,
            Error::FailedPrecondition(_) => ErrorCode::FailedPrecondition,
            Error::Busy(_) => ErrorCode::ResourceExhausted,
            Error::Aborted(_) => ErrorCode::Aborted,
            Error::Unavailable(_) => ErrorCode::Unavailable,
            Error::Corrupt(_) | Error::Internal(_) => ErrorCode::Internal,
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        err.to_status()
    }
}
