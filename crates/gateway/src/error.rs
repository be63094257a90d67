//! `gateway::Error` and its one mapping to gRPC status codes.

use std::time::Duration;

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
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    Aborted(String),
    #[error("redis unavailable: {0}")]
    Unavailable(String),
    /// Every host is too loaded for this turn's priority (see `capacity`).
    #[error("{reason}")]
    Shed {
        reason: String,
        retry_after: Duration,
    },
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
            Error::AlreadyExists(_) => ErrorCode::AlreadyExists,
            Error::FailedPrecondition(_) => ErrorCode::FailedPrecondition,
            Error::Busy(_) => ErrorCode::ResourceExhausted,
            Error::Aborted(_) => ErrorCode::Aborted,
            Error::Unavailable(_) | Error::Shed { .. } => ErrorCode::Unavailable,
            Error::Corrupt(_) | Error::Internal(_) => ErrorCode::Internal,
        }
    }
}

/// A shed turn carries the contract's retry hint: the `retry-after-ms` trailer and the
/// `(retry after N ms)` suffix.
impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        match &err {
            Error::Shed { retry_after, .. } => tta_types::error::status_with_retry_hint(
                err.error_code().grpc_code(),
                &err,
                *retry_after,
            ),
            _ => err.to_status(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shed_turn_is_unavailable_with_a_retry_hint() {
        let status: tonic::Status = Error::Shed {
            reason: "capacity overloaded".into(),
            retry_after: Duration::from_secs(4),
        }
        .into();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.message().ends_with("(retry after 4000 ms)"));
        assert_eq!(
            status
                .metadata()
                .get("retry-after-ms")
                .unwrap()
                .to_str()
                .unwrap(),
            "4000"
        );
    }
}
