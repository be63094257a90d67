//! One small vocabulary of failure kinds, mapped once to gRPC codes and HTTP statuses, so every
//! service answers the same situation the same way.

use std::{fmt, time::Duration};

/// What kind of failure a service error is, independent of transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The caller sent something malformed; retrying the same request will fail again.
    InvalidArgument,
    NotFound,
    AlreadyExists,
    /// A quota or queue limit was hit; retry later (the message carries a hint).
    ResourceExhausted,
    /// The request is valid but the system is not in a state to run it.
    FailedPrecondition,
    DeadlineExceeded,
    /// A dependency (Redis, another service) is down; retry with backoff.
    Unavailable,
    Cancelled,
    PermissionDenied,
    /// An optimistic-concurrency check failed: someone changed the thing first; re-read and retry.
    Aborted,
    /// A bug or an invariant broke; never the caller's fault.
    Internal,
}

impl ErrorCode {
    pub fn grpc_code(self) -> tonic::Code {
        match self {
            ErrorCode::InvalidArgument => tonic::Code::InvalidArgument,
            ErrorCode::NotFound => tonic::Code::NotFound,
            ErrorCode::AlreadyExists => tonic::Code::AlreadyExists,
            ErrorCode::ResourceExhausted => tonic::Code::ResourceExhausted,
            ErrorCode::FailedPrecondition => tonic::Code::FailedPrecondition,
            ErrorCode::DeadlineExceeded => tonic::Code::DeadlineExceeded,
            ErrorCode::Unavailable => tonic::Code::Unavailable,
            ErrorCode::Cancelled => tonic::Code::Cancelled,
            ErrorCode::PermissionDenied => tonic::Code::PermissionDenied,
            ErrorCode::Aborted => tonic::Code::Aborted,
            ErrorCode::Internal => tonic::Code::Internal,
        }
    }

    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidArgument => 400,
            ErrorCode::NotFound => 404,
            ErrorCode::AlreadyExists => 409,
            ErrorCode::ResourceExhausted => 429,
            ErrorCode::FailedPrecondition => 412,
            ErrorCode::DeadlineExceeded => 504,
            ErrorCode::Unavailable => 503,
            ErrorCode::Cancelled => 499,
            ErrorCode::PermissionDenied => 403,
            ErrorCode::Aborted => 409,
            ErrorCode::Internal => 500,
        }
    }
}

/// Implemented by every crate's error type so transports can map it without knowing the crate.
pub trait ServiceError: std::error::Error {
    fn error_code(&self) -> ErrorCode;

    /// The gRPC status for this error; the message is the error's display text.
    fn to_status(&self) -> tonic::Status {
        tonic::Status::new(self.error_code().grpc_code(), self.to_string())
    }
}

/// The trailer of the contract's retry hint, in milliseconds (on RESOURCE_EXHAUSTED and
/// UNAVAILABLE).
pub const RETRY_AFTER_METADATA: &str = "retry-after-ms";

/// A status with the contract's retry hint: the `(retry after N ms)` suffix on the message and
/// the `retry-after-ms` trailer.
pub fn status_with_retry_hint(
    code: tonic::Code,
    message: impl fmt::Display,
    wait: Duration,
) -> tonic::Status {
    let millis = wait.as_millis();
    let mut status = tonic::Status::new(code, format!("{message} (retry after {millis} ms)"));
    if let Ok(value) = millis.to_string().parse() {
        status.metadata_mut().insert(RETRY_AFTER_METADATA, value);
    }
    status
}

/// The retry hint a status carries in its trailer, if any.
pub fn retry_hint(status: &tonic::Status) -> Option<Duration> {
    status
        .metadata()
        .get(RETRY_AFTER_METADATA)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse::<u64>().ok())
        .map(Duration::from_millis)
}

/// A request field that failed validation. Becomes `INVALID_ARGUMENT` with a message that starts
/// with the field path, e.g. `session_id: must not be empty`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub reason: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Prefixes the field path, for violations found inside a nested message.
    pub fn within(mut self, parent: &str) -> Self {
        self.field = format!("{parent}.{}", self.field);
        self
    }
}

impl fmt::Display for FieldViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl std::error::Error for FieldViolation {}

impl ServiceError for FieldViolation {
    fn error_code(&self) -> ErrorCode {
        ErrorCode::InvalidArgument
    }
}

impl From<FieldViolation> for tonic::Status {
    fn from(violation: FieldViolation) -> Self {
        violation.to_status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_hint_travels_in_the_message_and_the_trailer() {
        let status = status_with_retry_hint(
            tonic::Code::Unavailable,
            "redis is down",
            Duration::from_millis(250),
        );
        assert_eq!(status.message(), "redis is down (retry after 250 ms)");
        assert_eq!(retry_hint(&status), Some(Duration::from_millis(250)));
        assert_eq!(retry_hint(&tonic::Status::unavailable("no hint")), None);
    }

    #[test]
    fn field_violation_becomes_invalid_argument_naming_the_field() {
        let status: tonic::Status = FieldViolation::new("text", "must not be empty")
            .within("request")
            .into();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.message(), "request.text: must not be empty");
    }

    #[test]
    fn every_code_maps_to_a_client_or_server_http_status() {
        let codes = [
            ErrorCode::InvalidArgument,
            ErrorCode::NotFound,
            ErrorCode::AlreadyExists,
            ErrorCode::ResourceExhausted,
            ErrorCode::FailedPrecondition,
            ErrorCode::DeadlineExceeded,
            ErrorCode::Unavailable,
            ErrorCode::Cancelled,
            ErrorCode::PermissionDenied,
            ErrorCode::Aborted,
            ErrorCode::Internal,
        ];
        for code in codes {
            let status = code.http_status();
            assert!((400..600).contains(&status), "{code:?} -> {status}");
            assert_ne!(code.grpc_code(), tonic::Code::Ok);
        }
        assert_eq!(ErrorCode::Unavailable.grpc_code(), tonic::Code::Unavailable);
        assert_eq!(ErrorCode::ResourceExhausted.http_status(), 429);
    }
}
