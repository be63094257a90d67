//! `tool_registry::Error` and its one mapping to gRPC status codes.

use std::time::Duration;

use tta_types::{ErrorCode, FieldViolation, ServiceError};

/// Suggested wait after Redis or an executor went away.
pub const UNAVAILABLE_RETRY_AFTER: Duration = Duration::from_millis(500);
/// Suggested wait when a concurrency limit is saturated.
pub const SATURATED_RETRY_AFTER: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Invalid(#[from] FieldViolation),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("{0}")]
    Saturated(String),
    /// The tool ran and failed; the message is the tool's error.
    #[error("{0}")]
    ToolFailed(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("corrupt tool registry data in redis: {0}")]
    Corrupt(String),
    #[error("redis error: {0}")]
    Redis(String),
}

impl From<redis::RedisError> for Error {
    fn from(err: redis::RedisError) -> Self {
        if tta_runtime::redis::is_unavailable(&err) {
            Error::Unavailable(format!("redis unavailable: {err}"))
        } else {
            Error::Redis(err.to_string())
        }
    }
}

impl Error {
    /// How long a client should wait before trying again, for errors where that helps.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Unavailable(_) => Some(UNAVAILABLE_RETRY_AFTER),
            Error::Saturated(_) => Some(SATURATED_RETRY_AFTER),
            _ => None,
        }
    }
}

impl ServiceError for Error {
    fn error_code(&self) -> ErrorCode {
        match self {
            Error::Invalid(_) => ErrorCode::InvalidArgument,
            Error::PermissionDenied(_) => ErrorCode::PermissionDenied,
            Error::NotFound(_) => ErrorCode::NotFound,
            Error::AlreadyExists(_) => ErrorCode::AlreadyExists,
            Error::FailedPrecondition(_) => ErrorCode::FailedPrecondition,
            Error::DeadlineExceeded(_) => ErrorCode::DeadlineExceeded,
            Error::Saturated(_) => ErrorCode::ResourceExhausted,
            Error::ToolFailed(_) => ErrorCode::FailedPrecondition,
            Error::Unavailable(_) => ErrorCode::Unavailable,
            Error::Corrupt(_) | Error::Redis(_) => ErrorCode::Internal,
        }
    }
}

/// Adds the `retry-after-ms` trailer the contract promises on RESOURCE_EXHAUSTED and
/// UNAVAILABLE; a failed tool is ABORTED, a code the shared vocabulary has no name for.
impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        let code = match err {
            Error::ToolFailed(_) => tonic::Code::Aborted,
            _ => err.error_code().grpc_code(),
        };
        match err.retry_after() {
            Some(wait) => tta_types::error::status_with_retry_hint(code, &err, wait),
            None => tonic::Status::new(code, err.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_tools_answer_aborted_and_saturation_carries_a_retry_hint() {
        let status: tonic::Status = Error::ToolFailed("boom".into()).into();
        assert_eq!(status.code(), tonic::Code::Aborted);
        let status: tonic::Status = Error::Saturated("busy".into()).into();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status.metadata().get("retry-after-ms").is_some());
    }
}
