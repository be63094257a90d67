//! The JSON messages of the WebSocket endpoint: what a client may send (parsed here into
//! [`Command`]s, with a [`FieldViolation`] naming the field when it cannot be) and the frames
//! the server sends back. Validation of the turn itself (ids, text length, metadata limits) is
//! not repeated here: a turn becomes a `ProcessUserInputRequest` and takes the gRPC path.

use std::collections::HashMap;

use serde_json::{Map, Value, json};
use tta_proto::v1 as pb;
use tta_types::{FieldViolation, ServiceError, TurnId};

use crate::error::Error;

/// What a client asked for.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Run a turn and stream its events; the turn id is the client's, or generated here so
    /// every frame about the turn can carry it.
    Turn(pb::ProcessUserInputRequest),
    /// Stream again the turn a lost connection was following.
    Resume {
        session_id: String,
        turn_id: String,
    },
    Ping,
}

impl Command {
    /// The message type, as the `type` label of the message counter.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::Turn(_) => "turn",
            Command::Resume { .. } => "resume",
            Command::Ping => "ping",
        }
    }

    /// The turn this command is about, if any (echoed in its error frames).
    pub fn turn_id(&self) -> Option<&str> {
        match self {
            Command::Turn(request) => Some(&request.turn_id),
            Command::Resume { turn_id, .. } => Some(turn_id),
            Command::Ping => None,
        }
    }
}

const TURN_FIELDS: &[&str] = &[
    "type",
    "session_id",
    "user_id",
    "text",
    "turn_id",
    "interaction_type",
    "workflow",
    "priority",
    "metadata",
];
const RESUME_FIELDS: &[&str] = &["type", "session_id", "turn_id"];
const PING_FIELDS: &[&str] = &["type"];

/// Why a message was refused: the field at fault (none when the message is not a JSON object
/// at all) and what is wrong, in the words of a [`FieldViolation`].
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub field: Option<String>,
    pub message: String,
}

/// Parses one text frame.
pub fn parse(text: &str) -> Result<Command, Refusal> {
    let not_an_object = |message: String| Refusal {
        field: None,
        message,
    };
    let value: Value = serde_json::from_str(text)
        .map_err(|err| not_an_object(format!("the message is not valid JSON: {err}")))?;
    let Value::Object(object) = value else {
        return Err(not_an_object(
            "the message must be a JSON object".to_owned(),
        ));
    };
    command(&object).map_err(|violation| Refusal {
        message: violation.to_string(),
        field: Some(violation.field),
    })
}

fn command(object: &Map<String, Value>) -> Result<Command, FieldViolation> {
    let kind = string(object, "type")?
        .ok_or_else(|| FieldViolation::new("type", "is required: turn, resume or ping"))?;
    match kind.as_str() {
        "turn" => {
            only(object, TURN_FIELDS)?;
            let turn_id = match string(object, "turn_id")? {
                Some(id) if !id.is_empty() => id,
                _ => TurnId::generate().to_string(),
            };
            Ok(Command::Turn(pb::ProcessUserInputRequest {
                session_id: string(object, "session_id")?.unwrap_or_default(),
                user_id: string(object, "user_id")?.unwrap_or_default(),
                text: string(object, "text")?.unwrap_or_default(),
                turn_id,
                interaction_type: string(object, "interaction_type")?.unwrap_or_default(),
                workflow: string(object, "workflow")?.unwrap_or_default(),
                priority: priority(string(object, "priority")?.as_deref())? as i32,
                metadata: metadata(object)?,
            }))
        }
        "resume" => {
            only(object, RESUME_FIELDS)?;
            Ok(Command::Resume {
                session_id: string(object, "session_id")?.unwrap_or_default(),
                turn_id: string(object, "turn_id")?.unwrap_or_default(),
            })
        }
        "ping" => {
            only(object, PING_FIELDS)?;
            Ok(Command::Ping)
        }
        other => Err(FieldViolation::new(
            "type",
            format!("unknown message type {other:?}; expected turn, resume or ping"),
        )),
    }
}

/// A typo in a field name is an error, not a silently ignored setting.
fn only(object: &Map<String, Value>, known: &[&str]) -> Result<(), FieldViolation> {
    match object.keys().find(|key| !known.contains(&key.as_str())) {
        Some(unknown) => Err(FieldViolation::new(
            unknown.as_str(),
            format!(
                "is not a field of this message; known: {}",
                known.join(", ")
            ),
        )),
        None => Ok(()),
    }
}

/// A string field; absent and `null` read as `None`.
fn string(object: &Map<String, Value>, field: &str) -> Result<Option<String>, FieldViolation> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(FieldViolation::new(field, "must be a string")),
    }
}

fn priority(name: Option<&str>) -> Result<pb::Priority, FieldViolation> {
    match name {
        None | Some("" | "normal") => Ok(pb::Priority::Normal),
        Some("high") => Ok(pb::Priority::High),
        Some("low") => Ok(pb::Priority::Low),
        Some(other) => Err(FieldViolation::new(
            "priority",
            format!("unknown priority {other:?}; expected high, normal or low"),
        )),
    }
}

fn metadata(object: &Map<String, Value>) -> Result<HashMap<String, String>, FieldViolation> {
    match object.get("metadata") {
        None | Some(Value::Null) => Ok(HashMap::new()),
        Some(Value::Object(entries)) => entries
            .iter()
            .map(|(key, value)| match value {
                Value::String(text) => Ok((key.clone(), text.clone())),
                _ => Err(FieldViolation::new(
                    format!("metadata[{key:?}]"),
                    "must be a string",
                )),
            })
            .collect(),
        Some(_) => Err(FieldViolation::new(
            "metadata",
            "must be an object of string values",
        )),
    }
}

/// A frame for the client, with its `type` for the message counter.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub kind: &'static str,
    pub text: String,
}

impl Frame {
    fn new(kind: &'static str, value: &Value) -> Self {
        Self {
            kind,
            text: value.to_string(),
        }
    }

    pub fn pong() -> Self {
        Self::new("pong", &json!({ "type": "pong" }))
    }

    /// One event of a turn, the event in the proto3 JSON mapping; a `failed` event also names
    /// its code the way error frames do.
    pub fn event(event: &pb::TurnEvent) -> Self {
        match crate::workflow::json::to_json("tta.v1.TurnEvent", event) {
            Ok(rendered) => {
                let mut frame =
                    json!({ "type": "event", "turn_id": event.turn_id, "event": rendered });
                if let Some(pb::turn_event::Event::Failed(failed)) = &event.event {
                    frame["code"] = json!(code_name(tonic::Code::from_i32(failed.code)));
                }
                Self::new("event", &frame)
            }
            // Only a build whose embedded descriptors lack TurnEvent gets here.
            Err(reason) => Self::error(
                tonic::Code::Internal,
                None,
                &format!("cannot render the event: {reason}"),
                Some(&event.turn_id),
            ),
        }
    }

    /// An error frame; `field` names the offending field of the client's message.
    pub fn error(
        code: tonic::Code,
        field: Option<&str>,
        message: &str,
        turn_id: Option<&str>,
    ) -> Self {
        Self::new(
            "error",
            &error_value(code_name(code), field, message, turn_id),
        )
    }

    /// A turn that could not start, with the code of the one error mapping; a shed turn also
    /// says when to retry.
    pub fn from_error(err: &Error, turn_id: Option<&str>) -> Self {
        let field = match err {
            Error::Invalid(violation) => Some(violation.field.as_str()),
            _ => None,
        };
        let code = code_name(err.error_code().grpc_code());
        let mut value = error_value(code, field, &err.to_string(), turn_id);
        if let Error::Shed { retry_after, .. } = err {
            value["retry_after_ms"] = json!(retry_after.as_millis() as u64);
        }
        Self::new("error", &value)
    }
}

/// A status code as error frames name it: the gRPC code in snake_case, so a client of both
/// APIs reads the same vocabulary.
pub fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Ok => "ok",
        tonic::Code::Cancelled => "cancelled",
        tonic::Code::Unknown => "unknown",
        tonic::Code::InvalidArgument => "invalid_argument",
        tonic::Code::DeadlineExceeded => "deadline_exceeded",
        tonic::Code::NotFound => "not_found",
        tonic::Code::AlreadyExists => "already_exists",
        tonic::Code::PermissionDenied => "permission_denied",
        tonic::Code::ResourceExhausted => "resource_exhausted",
        tonic::Code::FailedPrecondition => "failed_precondition",
        tonic::Code::Aborted => "aborted",
        tonic::Code::OutOfRange => "out_of_range",
        tonic::Code::Unimplemented => "unimplemented",
        tonic::Code::Internal => "internal",
        tonic::Code::Unavailable => "unavailable",
        tonic::Code::DataLoss => "data_loss",
        tonic::Code::Unauthenticated => "unauthenticated",
    }
}

fn error_value(code: &str, field: Option<&str>, message: &str, turn_id: Option<&str>) -> Value {
    let mut value = json!({ "type": "error", "code": code, "message": message });
    if let Some(field) = field {
        value["field"] = json!(field);
    }
    if let Some(turn_id) = turn_id.filter(|id| !id.is_empty()) {
        value["turn_id"] = json!(turn_id);
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused_field(text: &str) -> Option<String> {
        parse(text).expect_err("the message must be refused").field
    }

    #[test]
    fn a_turn_becomes_a_request_with_a_turn_id() {
        let Ok(Command::Turn(request)) = parse(
            r#"{"type":"turn","session_id":"s1","user_id":"u1","text":"look","priority":"high","metadata":{"k":"v"}}"#,
        ) else {
            panic!("not a turn");
        };
        assert_eq!(request.session_id, "s1");
        assert_eq!(request.text, "look");
        assert_eq!(request.priority, pb::Priority::High as i32);
        assert_eq!(request.metadata["k"], "v");
        assert!(!request.turn_id.is_empty(), "a turn id is generated");
    }

    #[test]
    fn resume_and_ping_parse() {
        assert_eq!(
            parse(r#"{"type":"resume","session_id":"s1","turn_id":"t1"}"#),
            Ok(Command::Resume {
                session_id: "s1".into(),
                turn_id: "t1".into()
            })
        );
        assert_eq!(parse(r#"{"type":"ping"}"#), Ok(Command::Ping));
    }

    #[test]
    fn refusals_name_the_field() {
        assert_eq!(refused_field("{not json"), None);
        assert_eq!(refused_field("[1]"), None);
        assert_eq!(refused_field(r#"{"text":"hi"}"#).as_deref(), Some("type"));
        assert_eq!(
            refused_field(r#"{"type":"dance"}"#).as_deref(),
            Some("type")
        );
        assert_eq!(
            refused_field(r#"{"type":"turn","session_id":7}"#).as_deref(),
            Some("session_id")
        );
        assert_eq!(
            refused_field(r#"{"type":"turn","sesion_id":"s"}"#).as_deref(),
            Some("sesion_id")
        );
        assert_eq!(
            refused_field(r#"{"type":"turn","priority":"urgent"}"#).as_deref(),
            Some("priority")
        );
        assert_eq!(
            refused_field(r#"{"type":"turn","metadata":{"k":1}}"#).as_deref(),
            Some("metadata[\"k\"]")
        );
        let refusal = parse(r#"{"type":"ping","x":1}"#).unwrap_err();
        assert!(refusal.message.starts_with("x: "), "{refusal:?}");
    }

    #[test]
    fn error_frames_carry_the_code_field_and_turn() {
        let frame = Frame::from_error(
            &Error::Invalid(FieldViolation::new("text", "must not be empty")),
            Some("t1"),
        );
        let value: Value = serde_json::from_str(&frame.text).unwrap();
        assert_eq!(value["type"], "error");
        assert_eq!(value["code"], "invalid_argument");
        assert_eq!(value["field"], "text");
        assert_eq!(value["turn_id"], "t1");

        let shed = Frame::from_error(
            &Error::Shed {
                reason: "capacity overloaded".into(),
                retry_after: std::time::Duration::from_secs(2),
            },
            None,
        );
        let value: Value = serde_json::from_str(&shed.text).unwrap();
        assert_eq!(value["code"], "unavailable");
        assert_eq!(value["retry_after_ms"], 2000);
    }

    #[test]
    fn code_names_are_the_grpc_names_in_snake_case() {
        for number in 0..=16 {
            let code = tonic::Code::from_i32(number);
            let grpc = format!("{code:?}").to_ascii_lowercase();
            assert_eq!(code_name(code).replace('_', ""), grpc);
        }
    }

    #[test]
    fn a_failed_event_names_its_code() {
        let event = pb::TurnEvent {
            turn_id: "t1".into(),
            sequence: 2,
            time: None,
            event: Some(pb::turn_event::Event::Failed(pb::TurnFailed {
                code: tonic::Code::PermissionDenied as i32,
                message: "user_id: session s1 belongs to another user".into(),
                retryable: false,
                retry_after: None,
            })),
        };
        let value: Value = serde_json::from_str(&Frame::event(&event).text).unwrap();
        assert_eq!(value["code"], "permission_denied");
        assert_eq!(value["event"]["failed"]["code"], 7);
    }

    #[test]
    fn events_render_as_proto_json() {
        let event = pb::TurnEvent {
            turn_id: "t1".into(),
            sequence: 3,
            time: None,
            event: Some(pb::turn_event::Event::NarrativeChunk(pb::NarrativeChunk {
                index: 0,
                text: "You wake.".into(),
                last: true,
            })),
        };
        let value: Value = serde_json::from_str(&Frame::event(&event).text).unwrap();
        assert_eq!(value["type"], "event");
        assert_eq!(value["turn_id"], "t1");
        assert_eq!(value["event"]["narrativeChunk"]["text"], "You wake.");
        assert_eq!(value["event"]["sequence"], 3);
    }
}
