//! `broker::Error` and its one mapping to gRPC status codes.

use std::time::Duration;

use tta_types::{ErrorCode, FieldViolation, ServiceError};

/// Suggested wait after Redis went away; the connection manager reconnects meanwhile.
pub const UNAVAILABLE_RETRY_AFTER: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Invalid(#[from] FieldViolation),
    #[error("topic {topic} is full for {priority} priority ({depth} messages, limit {limit})")]
    Full {
        topic: String,
        priority: &'static str,
        depth: u64,
        limit: u64,
        retry_after: Duration,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("redis unavailable: {0}")]
    Unavailable(String),
    #[error("corrupt broker data in redis: {0}")]
    Corrupt(String),
    #[error("redis error: {0}")]
    Redis(String),
}

impl From<redis::RedisError> for Error {
    fn from(err: redis::RedisError) -> Self {
        if tta_runtime::redis::is_unavailable(&err) {
            Error::Unavailable(err.to_string())
        } else {
            Error::Redis(err.to_string())
        }
    }
}

impl Error {
    /// How long a client should wait before trying again, for errors where that helps.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Full { retry_after, .. } => Some(*retry_after),
            Error::Unavailable(_) => Some(UNAVAILABLE_RETRY_AFTER),
            _ => None,
        }
    }
}

impl ServiceError for Error {
    fn error_code(&self) -> ErrorCode {
        match self {
            Error::Invalid(_) => ErrorCode::InvalidArgument,
            Error::Full { .. } => ErrorCode::ResourceExhausted,
            Error::NotFound(_) => ErrorCode::NotFound,
            Error::FailedPrecondition(_) => ErrorCode::FailedPrecondition,
            Error::Unavailable(_) => ErrorCode::Unavailable,
            Error::Corrupt(_) | Error::Redis(_) => ErrorCode::Internal,
        }
    }
}

/// Adds the `retry-after-ms` trailer and the `(retry after N ms)` suffix that the contract
/// promises on RESOURCE_EXHAUSTED and UNAVAILABLE.
impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        let code = err.error_code().grpc_code();
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
    fn full_topics_answer_resource_exhausted_with_a_retry_hint() {
        let status: tonic::Status = Error::Full {
            topic: "t".into(),
            priority: "low",
            depth: 80,
            limit: 80,
            retry_after: Duration::from_millis(250),
        }
        .into();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(
            status.message().ends_with("(retry after 250 ms)"),
            "{}",
            status.message()
        );
        assert_eq!(
            status
                .metadata()
                .get("retry-after-ms")
                .and_then(|v| v.to_str().ok()),
            Some("250")
        );
    }

    #[test]
    fn field_violations_answer_invalid_argument() {
        let status: tonic::Status =
            Error::from(FieldViolation::new("message.topic", "must not be empty")).into();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.message(), "message.topic: must not be empty");
    }
}
