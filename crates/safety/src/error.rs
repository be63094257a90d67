//! The errors of the safety crate. A bad rule file is reported rule by rule (id, key path,
//! reason) so an operator can fix every problem in one edit; storage failures are distinct so the
//! caller can answer UNAVAILABLE and retry instead of losing an escalation.

use std::{fmt, path::PathBuf};

use tta_types::{ErrorCode, ServiceError};

/// One problem in a rule or resource file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleIssue {
    /// The offending rule's id; empty when the problem is not inside one rule (YAML syntax, a
    /// top-level key).
    pub rule_id: String,
    /// Path of the offending key, e.g. `rules[12].regexes[0]`.
    pub path: String,
    pub reason: String,
}

impl RuleIssue {
    pub fn new(rule_id: &str, path: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            rule_id: rule_id.to_owned(),
            path: path.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for RuleIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.rule_id.is_empty() {
            write!(f, "{}: {}", self.path, self.reason)
        } else {
            write!(f, "rule {} ({}): {}", self.rule_id, self.path, self.reason)
        }
    }
}

/// Every problem found in one document, reported together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleIssues(pub Vec<RuleIssue>);

impl fmt::Display for RuleIssues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{issue}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The rule set is invalid; nothing of it was applied.
    #[error("invalid safety rules: {0}")]
    InvalidRules(RuleIssues),
    /// The crisis resource file is invalid.
    #[error("invalid crisis resources: {0}")]
    InvalidResources(RuleIssues),
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    /// Redis (session memory or the escalation stream) failed; the operation did not happen.
    #[error("safety storage unavailable: {0}")]
    Storage(String),
    #[error("escalation {0} not found")]
    EscalationNotFound(String),
    /// A stored record could not be read back (written by an incompatible version or by hand).
    #[error("malformed stored escalation {id}: {reason}")]
    Corrupt { id: String, reason: String },
    #[error("{0}")]
    InvalidArgument(#[from] tta_types::FieldViolation),
}

impl Error {
    /// The issues of an invalid rule or resource file; empty for other errors.
    pub fn rule_issues(&self) -> &[RuleIssue] {
        match self {
            Error::InvalidRules(issues) | Error::InvalidResources(issues) => &issues.0,
            _ => &[],
        }
    }
}

impl From<redis::RedisError> for Error {
    fn from(err: redis::RedisError) -> Self {
        Error::Storage(err.to_string())
    }
}

impl From<deadpool_redis::PoolError> for Error {
    fn from(err: deadpool_redis::PoolError) -> Self {
        Error::Storage(err.to_string())
    }
}

impl ServiceError for Error {
    fn error_code(&self) -> ErrorCode {
        match self {
            Error::InvalidRules(_) | Error::InvalidResources(_) | Error::InvalidArgument(_) => {
                ErrorCode::InvalidArgument
            }
            Error::Read { .. } | Error::Storage(_) => ErrorCode::Unavailable,
            Error::EscalationNotFound(_) => ErrorCode::NotFound,
            Error::Corrupt { .. } => ErrorCode::Internal,
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        err.to_status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_issues_name_the_rule_path_and_reason() {
        let err = Error::InvalidRules(RuleIssues(vec![
            RuleIssue::new(
                "crisis.x",
                "rules[3].regexes[0]",
                "invalid regex: unclosed group",
            ),
            RuleIssue::new("", "version", "must be 1"),
        ]));
        assert_eq!(
            err.to_string(),
            "invalid safety rules: rule crisis.x (rules[3].regexes[0]): invalid regex: unclosed group; version: must be 1"
        );
        assert_eq!(err.rule_issues().len(), 2);
    }

    #[test]
    fn storage_failures_are_unavailable_and_bad_rules_invalid_argument() {
        assert_eq!(
            Error::Storage("down".into()).error_code(),
            ErrorCode::Unavailable
        );
        assert_eq!(
            Error::InvalidRules(RuleIssues(Vec::new())).error_code(),
            ErrorCode::InvalidArgument
        );
        let status: tonic::Status = Error::EscalationNotFound("1-0".into()).into();
        assert_eq!(status.code(), tonic::Code::NotFound);
    }
}
