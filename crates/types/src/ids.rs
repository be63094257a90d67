//! Validated identifiers. Every id that crosses a service boundary is parsed once, here, so the
//! rest of the code can rely on it being non-empty, bounded and safe to embed in a Redis key.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

use crate::error::FieldViolation;

/// Longest id we accept; keeps Redis keys and log lines bounded.
pub const MAX_ID_LEN: usize = 128;

/// Why a string was refused as an id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {MAX_ID_LEN} characters, got {0}")]
    TooLong(usize),
    #[error("contains {0:?}; allowed are ASCII letters, digits and '-', '_', '.', ':'")]
    InvalidChar(char),
}

/// Checks the shared id alphabet. `{`, `}` and whitespace are excluded on purpose: braces would
/// break Redis Cluster hash tags and whitespace breaks log parsing.
pub(crate) fn check_id(raw: &str) -> Result<(), IdError> {
    if raw.is_empty() {
        return Err(IdError::Empty);
    }
    let len = raw.chars().count();
    if len > MAX_ID_LEN {
        return Err(IdError::TooLong(len));
    }
    match raw
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')))
    {
        Some(bad) => Err(IdError::InvalidChar(bad)),
        None => Ok(()),
    }
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Parses an id, naming `field` in the error so callers can answer
            /// `INVALID_ARGUMENT` without further mapping.
            pub fn parse_field(field: &str, raw: &str) -> Result<Self, FieldViolation> {
                raw.parse().map_err(|err: IdError| FieldViolation::new(field, err.to_string()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(raw: &str) -> Result<Self, Self::Err> {
                check_id(raw)?;
                Ok(Self(raw.to_owned()))
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(raw: String) -> Result<Self, Self::Error> {
                check_id(&raw)?;
                Ok(Self(raw))
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_id!(
    /// A player's session: the unit of ordering (turns of one session run strictly in order).
    SessionId
);
string_id!(
    /// A player turn; doubles as the idempotency key of `ProcessUserInput`.
    TurnId
);
string_id!(
    /// One execution of a workflow.
    RunId
);
string_id!(
    /// A broker message.
    MessageId
);
string_id!(
    /// The person behind a session, as known to the calling TTA service.
    UserId
);

impl TurnId {
    /// A fresh, time-ordered id for callers that sent none.
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }
}

impl RunId {
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }
}

impl SessionId {
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }
}

/// The kind of an agent. The three built-in kinds are named; any other lowercase name is a
/// custom agent type that registers itself and can be used in workflows without code changes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum AgentType {
    /// Input Processor Agent: understands what the player typed.
    Ipa,
    /// World Builder Agent: owns the world state of a session.
    Wba,
    /// Narrative Generator Agent: writes the reply.
    Nga,
    /// Any other registered agent type.
    Custom(String),
}

/// Why a string was refused as an agent type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "agent type must be 1-32 characters of lowercase letters, digits, '-' or '_', starting with a letter; got {0:?}"
)]
pub struct AgentTypeError(String);

impl AgentType {
    pub const BUILT_IN: [AgentType; 3] = [AgentType::Ipa, AgentType::Wba, AgentType::Nga];

    pub fn as_str(&self) -> &str {
        match self {
            AgentType::Ipa => "ipa",
            AgentType::Wba => "wba",
            AgentType::Nga => "nga",
            AgentType::Custom(name) => name,
        }
    }
}

impl FromStr for AgentType {
    type Err = AgentTypeError;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let lower = raw.to_ascii_lowercase();
        match lower.as_str() {
            "ipa" => return Ok(AgentType::Ipa),
            "wba" => return Ok(AgentType::Wba),
            "nga" => return Ok(AgentType::Nga),
            _ => {}
        }
        let well_formed = (1..=32).contains(&raw.len())
            && raw.starts_with(|c: char| c.is_ascii_lowercase())
            && raw
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if well_formed {
            Ok(AgentType::Custom(raw.to_owned()))
        } else {
            Err(AgentTypeError(raw.to_owned()))
        }
    }
}

impl TryFrom<String> for AgentType {
    type Error = AgentTypeError;
    fn try_from(raw: String) -> Result<Self, Self::Error> {
        raw.parse()
    }
}

impl From<AgentType> for String {
    fn from(agent_type: AgentType) -> String {
        agent_type.as_str().to_owned()
    }
}

impl fmt::Display for AgentType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One running instance of an agent: its type plus an instance name unique within that type.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AgentId {
    pub agent_type: AgentType,
    pub instance: String,
}

impl AgentId {
    pub fn new(agent_type: AgentType, instance: impl Into<String>) -> Result<Self, IdError> {
        let instance = instance.into();
        check_id(&instance)?;
        Ok(Self {
            agent_type,
            instance,
        })
    }

    /// An instance name derived from the host and process id, for workers started without one.
    pub fn generated(agent_type: AgentType, host: &str) -> Self {
        let host: String = host
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .take(64)
            .collect();
        let host = if host.is_empty() {
            "host".to_owned()
        } else {
            host
        };
        Self {
            agent_type,
            instance: format!("{host}-{}", std::process::id()),
        }
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.agent_type, self.instance)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ids_from_the_shared_alphabet() {
        for raw in ["s1", "session-42", "a.b:c_d", &"x".repeat(MAX_ID_LEN)] {
            assert_eq!(
                raw.parse::<SessionId>().map(|id| id.to_string()),
                Ok(raw.to_owned())
            );
        }
    }

    #[test]
    fn rejects_empty_long_and_unsafe_ids() {
        assert_eq!("".parse::<TurnId>(), Err(IdError::Empty));
        assert_eq!(
            "y".repeat(129).parse::<TurnId>(),
            Err(IdError::TooLong(129))
        );
        assert_eq!("a{b}".parse::<TurnId>(), Err(IdError::InvalidChar('{')));
        assert_eq!("a b".parse::<TurnId>(), Err(IdError::InvalidChar(' ')));
    }

    #[test]
    fn parse_field_names_the_field() {
        let err = SessionId::parse_field("session_id", "").unwrap_err();
        assert_eq!(err.field, "session_id");
        assert_eq!(err.reason, "must not be empty");
    }

    #[test]
    fn generated_ids_are_valid_and_distinct() {
        let a = TurnId::generate();
        let b = TurnId::generate();
        assert_ne!(a, b);
        assert!(a.as_str().parse::<TurnId>().is_ok());
    }

    #[test]
    fn agent_types_parse_builtin_and_custom_names() {
        assert_eq!("IPA".parse::<AgentType>(), Ok(AgentType::Ipa));
        assert_eq!("nga".parse::<AgentType>(), Ok(AgentType::Nga));
        assert_eq!(
            "memory-keeper".parse::<AgentType>(),
            Ok(AgentType::Custom("memory-keeper".into()))
        );
        assert!("9lives".parse::<AgentType>().is_err());
        assert!("".parse::<AgentType>().is_err());
        assert!("Has Space".parse::<AgentType>().is_err());
    }

    #[test]
    fn agent_ids_serialise_as_type_and_instance() {
        let id = AgentId::new(AgentType::Wba, "w1").unwrap();
        assert_eq!(id.to_string(), "wba:w1");
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, r#"{"agent_type":"wba","instance":"w1"}"#);
        assert!(AgentId::new(AgentType::Wba, "").is_err());
    }

    #[test]
    fn generated_agent_ids_are_valid_even_for_odd_host_names() {
        let id = AgentId::generated(AgentType::Ipa, "my host{1}");
        assert!(check_id(&id.instance).is_ok());
        assert!(id.instance.starts_with("myhost1-"));
    }
}
