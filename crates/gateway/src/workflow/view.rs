//! What conditions see: agent outputs and sessions as [`Scope`]s, read by proto field name
//! through the descriptor set every service embeds (`tta_proto::FILE_DESCRIPTOR_SET`), plus the
//! registration-time checks that a condition's paths name real fields.
//!
//! How protobuf values read (the leaf mapping):
//! * `bool` → [`Operand::Bool`]; every integer and float kind → [`Operand::Number`]; `string` →
//!   [`Operand::String`]; an enum → [`Operand::Enum`] with its short lowercase name
//!   (`SAFETY_LEVEL_CRITICAL` → `"critical"`). A number the enum does not know (from a newer peer)
//!   reads with its decimal number as name and never equals a known name.
//! * Proto3 scalars have no presence: an unset one reads as its default (`0`, `""`, `false`, the
//!   `_UNSPECIFIED` enum value), so `ipa.intent == ""` is true when the IPA left it empty, and
//!   `ipa.intent == null` is not.
//! * A message read as a leaf is `true` when set and [`Operand::Null`] when unset; every path
//!   below an unset message is `Null` too. `bytes`, repeated fields and maps read as leaves are
//!   `Bool(non-empty)`: conditions test them for truthiness only.
//! * A map with string keys is addressed by key (`session.metadata.mode`). Lists are not
//!   indexed: the grammar's identifiers cannot be numbers, so a path below a list reads `Null`
//!   and is rejected at registration.
//! * A custom agent's `google.protobuf.Struct` output is addressed by its JSON keys, nested
//!   objects too, and so is a `google.protobuf.Struct`/`Value`/`ListValue` field of a message;
//!   JSON `null` reads as `Null`, an object or list as a leaf is `Bool(non-empty)`.

use std::{collections::HashMap, sync::LazyLock};

use prost::Message;
use prost_reflect::{
    DescriptorPool, DynamicMessage, EnumDescriptor, FieldDescriptor, Kind, MapKey,
    MessageDescriptor, ReflectMessage, Value,
};
use tta_proto::v1 as pb;

use super::condition::{Operand, Scope};

/// The `tta.v1` descriptors, decoded once. `Err` only with a broken build (the set is generated
/// and embedded at compile time); every reader then sees `null`, and registration reports it.
static POOL: LazyLock<Result<DescriptorPool, String>> = LazyLock::new(|| {
    DescriptorPool::decode(tta_proto::FILE_DESCRIPTOR_SET)
        .map_err(|err| format!("the embedded tta.v1 descriptor set does not decode: {err}"))
});

/// The descriptor of a `tta.v1` message (or a well-known type) by full name.
pub(crate) fn message_descriptor(full_name: &str) -> Result<MessageDescriptor, String> {
    let pool = POOL.as_ref().map_err(Clone::clone)?;
    pool.get_message_by_name(full_name)
        .ok_or_else(|| format!("message {full_name} is missing from the descriptor set"))
}

/// The message an output of a built-in agent type carries, by agent type.
fn builtin_output_message(agent_type: &str) -> Option<&'static str> {
    match agent_type {
        "ipa" => Some("tta.v1.IpaOutput"),
        "wba" => Some("tta.v1.WbaOutput"),
        "nga" => Some("tta.v1.NgaOutput"),
        _ => None,
    }
}

/// A generated message as a dynamic one. Conditions are evaluated a few times per step, so the
/// re-encoding costs microseconds against agent calls that take milliseconds.
fn dynamic<M: Message>(message: &M, full_name: &str) -> Option<DynamicMessage> {
    let descriptor = message_descriptor(full_name).ok()?;
    DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice()).ok()
}

/// Scope of a step condition: outputs of earlier steps by step id; a path is
/// `[step_id, field, field, ...]` into the output's variant message (IpaOutput for kind `ipa`,
/// and so on), or into the keys of a custom `Struct` output.
#[derive(Debug, Clone, Copy)]
pub struct StepScope<'a> {
    pub outputs: &'a HashMap<String, pb::AgentOutput>,
}

impl Scope for StepScope<'_> {
    fn lookup(&self, path: &[String]) -> Operand {
        let Some((step_id, rest)) = path.split_first() else {
            return Operand::Null;
        };
        let Some(output) = self.outputs.get(step_id) else {
            return Operand::Null;
        };
        read_output(output, rest)
    }
}

/// The value at `path` inside one agent output's variant.
fn read_output(output: &pb::AgentOutput, path: &[String]) -> Operand {
    use pb::agent_output::Kind as Variant;

    let (message, variant) = match &output.kind {
        None => return Operand::Null,
        Some(Variant::Custom(custom)) => return read_struct(custom, path),
        Some(Variant::Ipa(ipa)) => (dynamic(ipa, "tta.v1.IpaOutput"), "ipa"),
        Some(Variant::Wba(wba)) => (dynamic(wba, "tta.v1.WbaOutput"), "wba"),
        Some(Variant::Nga(nga)) => (dynamic(nga, "tta.v1.NgaOutput"), "nga"),
    };
    match message {
        Some(message) => read_message(&message, path),
        None => {
            tracing::error!(variant, "agent output could not be viewed by reflection");
            Operand::Null
        }
    }
}

/// Scope of a route condition: `session.<field path of tta.v1.Session>`,
/// `request.metadata.<key>` and `request.interaction_type`.
#[derive(Debug, Clone, Copy)]
pub struct RouteScope<'a> {
    pub session: &'a pb::Session,
    pub metadata: &'a HashMap<String, String>,
    pub interaction_type: &'a str,
}

impl Scope for RouteScope<'_> {
    fn lookup(&self, path: &[String]) -> Operand {
        let Some((root, rest)) = path.split_first() else {
            return Operand::Null;
        };
        match (root.as_str(), rest) {
            ("session", rest) => match dynamic(self.session, "tta.v1.Session") {
                Some(session) => read_message(&session, rest),
                None => Operand::Null,
            },
            ("request", [field]) if field == "interaction_type" => {
                Operand::String(self.interaction_type.to_owned())
            }
            ("request", [field]) if field == "metadata" => Operand::Bool(!self.metadata.is_empty()),
            ("request", [field, key]) if field == "metadata" => self
                .metadata
                .get(key)
                .map_or(Operand::Null, |value| Operand::String(value.clone())),
            _ => Operand::Null,
        }
    }
}

/// Registration-time check of a step-condition path (without the step id) for an agent type:
/// for the built-in types (`ipa`, `wba`, `nga`) every segment must name a field of the output
/// message, e.g. `unknown field "intnt" in tta.v1.IpaOutput`. Custom agent types return free-form
/// `Struct`s, so any path is accepted for them.
pub fn check_output_path(agent_type: &str, path: &[String]) -> Result<(), String> {
    match builtin_output_message(agent_type) {
        Some(full_name) => check_message_path(&message_descriptor(full_name)?, path),
        None => Ok(()),
    }
}

/// Registration-time check of a route-condition path: `session.<field of tta.v1.Session>...`,
/// `request.metadata[.<key>]` or `request.interaction_type`.
pub fn check_route_path(path: &[String]) -> Result<(), String> {
    let Some((root, rest)) = path.split_first() else {
        return Err("empty path".to_owned());
    };
    match root.as_str() {
        "session" => check_message_path(&message_descriptor("tta.v1.Session")?, rest),
        "request" => match rest {
            [] => Err(
                "`request` alone is not a value; use request.metadata.<key> or request.interaction_type"
                    .to_owned(),
            ),
            [field] if field == "interaction_type" || field == "metadata" => Ok(()),
            [field, _key] if field == "metadata" => Ok(()),
            [field, _, deeper, ..] if field == "metadata" => Err(format!(
                "request.metadata values are strings and have no field \"{deeper}\""
            )),
            [field, deeper, ..] if field == "interaction_type" => Err(format!(
                "request.interaction_type is a string and has no field \"{deeper}\""
            )),
            [field, ..] => Err(format!(
                "unknown field \"{field}\" in request (known: metadata, interaction_type)"
            )),
        },
        other => Err(format!(
            "unknown root \"{other}\": route conditions read session.* and request.*"
        )),
    }
}

/// Walks `path` through the descriptors the way [`read_message`] walks values.
fn check_message_path(descriptor: &MessageDescriptor, path: &[String]) -> Result<(), String> {
    let Some((name, rest)) = path.split_first() else {
        return Ok(());
    };
    let field = descriptor
        .get_field_by_name(name)
        .ok_or_else(|| format!("unknown field \"{name}\" in {}", descriptor.full_name()))?;
    let Some((next, deeper)) = rest.split_first() else {
        return Ok(());
    };
    let location = format!("{}.{name}", descriptor.full_name());
    if field.is_list() {
        return Err(format!(
            "{location} is a list and has no field \"{next}\" (conditions test lists for \
             non-emptiness only)"
        ));
    }
    if field.is_map() {
        let Kind::Message(entry) = field.kind() else {
            return Ok(());
        };
        if !matches!(entry.map_entry_key_field().kind(), Kind::String) {
            return Err(format!("{location} is a map without string keys"));
        }
        return check_element_path(&entry.map_entry_value_field().kind(), deeper, &location);
    }
    check_element_path(&field.kind(), rest, &location)
}

/// Checks the rest of a path below one value of kind `kind` found at `location`.
fn check_element_path(kind: &Kind, path: &[String], location: &str) -> Result<(), String> {
    let Some(next) = path.first() else {
        return Ok(());
    };
    match kind {
        // Nested JSON is free-form: any key may exist.
        Kind::Message(message) if is_json(message.full_name()) => Ok(()),
        Kind::Message(message) => check_message_path(message, path),
        _ => Err(format!(
            "{location} is a {} and has no field \"{next}\"",
            kind_name(kind)
        )),
    }
}

fn is_json(full_name: &str) -> bool {
    matches!(
        full_name,
        "google.protobuf.Struct" | "google.protobuf.Value" | "google.protobuf.ListValue"
    )
}

fn kind_name(kind: &Kind) -> &'static str {
    match kind {
        Kind::Bool => "bool",
        Kind::String => "string",
        Kind::Bytes => "bytes",
        Kind::Enum(_) => "enum",
        Kind::Message(_) => "message",
        Kind::Double | Kind::Float => "float",
        _ => "integer",
    }
}

/// The value at `path` inside a dynamic message; an empty path reads the message itself (true).
fn read_message(message: &DynamicMessage, path: &[String]) -> Operand {
    let Some((name, rest)) = path.split_first() else {
        return Operand::Bool(true);
    };
    let Some(field) = message.descriptor().get_field_by_name(name) else {
        return Operand::Null;
    };
    if is_singular_message(&field) && !message.has_field(&field) {
        return Operand::Null;
    }
    read_value(&message.get_field(&field), &field.kind(), rest)
}

fn is_singular_message(field: &FieldDescriptor) -> bool {
    !field.is_list() && !field.is_map() && matches!(field.kind(), Kind::Message(_))
}

/// The value at `path` below `value`, whose element kind is `kind`.
fn read_value(value: &Value, kind: &Kind, path: &[String]) -> Operand {
    match (value, path.split_first()) {
        // JSON held in protobuf reads like a custom output: by keys and indexes.
        (Value::Message(message), _) if is_json(message.descriptor().full_name()) => {
            read_json(&json_value(message), path)
        }
        (Value::Message(message), _) => read_message(message, path),
        (Value::Map(entries), Some((key, rest))) => {
            let Kind::Message(entry) = kind else {
                return Operand::Null;
            };
            match entries.get(&MapKey::String(key.clone())) {
                Some(item) => read_value(item, &entry.map_entry_value_field().kind(), rest),
                None => Operand::Null,
            }
        }
        (_, Some(_)) => Operand::Null,
        (value, None) => leaf(value, kind),
    }
}

/// A dynamic `google.protobuf.Struct`, `Value` or `ListValue` as a JSON value.
fn json_value(message: &DynamicMessage) -> prost_types::Value {
    use prost_types::value::Kind as Json;

    let kind = match message.descriptor().full_name() {
        "google.protobuf.Value" => return message.transcode_to().unwrap_or_default(),
        "google.protobuf.Struct" => message.transcode_to().ok().map(Json::StructValue),
        _ => message.transcode_to().ok().map(Json::ListValue),
    };
    prost_types::Value { kind }
}

fn leaf(value: &Value, kind: &Kind) -> Operand {
    match value {
        Value::Bool(value) => Operand::Bool(*value),
        Value::I32(value) => Operand::Number(f64::from(*value)),
        Value::U32(value) => Operand::Number(f64::from(*value)),
        // Precision beyond 2^53 is lost; conditions compare counters and versions far below it.
        Value::I64(value) => Operand::Number(*value as f64),
        Value::U64(value) => Operand::Number(*value as f64),
        Value::F32(value) => Operand::Number(f64::from(*value)),
        Value::F64(value) => Operand::Number(*value),
        Value::String(value) => Operand::String(value.clone()),
        Value::EnumNumber(number) => match kind {
            Kind::Enum(descriptor) => enum_operand(descriptor, *number),
            _ => Operand::Number(f64::from(*number)),
        },
        Value::Bytes(bytes) => Operand::Bool(!bytes.is_empty()),
        Value::List(items) => Operand::Bool(!items.is_empty()),
        Value::Map(entries) => Operand::Bool(!entries.is_empty()),
        Value::Message(_) => Operand::Bool(true),
    }
}

fn enum_operand(descriptor: &EnumDescriptor, number: i32) -> Operand {
    let prefix = format!("{}_", screaming_snake(descriptor.name()));
    let values: Vec<(String, i32)> = descriptor
        .values()
        .map(|value| {
            let name = value.name();
            let short = name.strip_prefix(&prefix).unwrap_or(name);
            (short.to_ascii_lowercase(), value.number())
        })
        .collect();
    let name = values
        .iter()
        .find(|(_, value)| *value == number)
        .map_or_else(|| number.to_string(), |(name, _)| name.clone());
    Operand::Enum {
        name,
        number,
        values,
    }
}

/// `SafetyLevel` → `SAFETY_LEVEL`, `HTTPStatus` → `HTTP_STATUS`: the prefix protobuf style puts
/// on every value of an enum.
fn screaming_snake(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::with_capacity(name.len() + 4);
    for (index, c) in chars.iter().enumerate() {
        if index > 0 && c.is_ascii_uppercase() {
            let previous = chars[index - 1];
            let next_is_lower = chars.get(index + 1).is_some_and(char::is_ascii_lowercase);
            if previous.is_ascii_lowercase()
                || previous.is_ascii_digit()
                || (previous.is_ascii_uppercase() && next_is_lower)
            {
                out.push('_');
            }
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// The value at `path` inside a JSON object held as a `google.protobuf.Struct`.
fn read_struct(structure: &prost_types::Struct, path: &[String]) -> Operand {
    let Some((key, rest)) = path.split_first() else {
        return Operand::Bool(!structure.fields.is_empty());
    };
    match structure.fields.get(key) {
        Some(value) => read_json(value, rest),
        None => Operand::Null,
    }
}

fn read_json(value: &prost_types::Value, path: &[String]) -> Operand {
    use prost_types::value::Kind as Json;

    match (&value.kind, path.split_first()) {
        (Some(Json::StructValue(structure)), _) => read_struct(structure, path),
        (_, Some(_)) | (None | Some(Json::NullValue(_)), None) => Operand::Null,
        (Some(Json::BoolValue(value)), None) => Operand::Bool(*value),
        (Some(Json::NumberValue(value)), None) => Operand::Number(*value),
        (Some(Json::StringValue(value)), None) => Operand::String(value.clone()),
        (Some(Json::ListValue(list)), None) => Operand::Bool(!list.values.is_empty()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::condition::Condition;

    fn path(dotted: &str) -> Vec<String> {
        dotted.split('.').map(str::to_owned).collect()
    }

    #[test]
    fn screaming_snake_matches_protobuf_style() {
        assert_eq!(screaming_snake("SafetyLevel"), "SAFETY_LEVEL");
        assert_eq!(
            screaming_snake("TherapeuticIntensity"),
            "THERAPEUTIC_INTENSITY"
        );
        assert_eq!(screaming_snake("HTTPStatus"), "HTTP_STATUS");
        assert_eq!(screaming_snake("Level2Kind"), "LEVEL2_KIND");
        assert_eq!(screaming_snake("A"), "A");
    }

    #[test]
    fn enum_operands_use_short_lowercase_names() {
        let pool = POOL.as_ref().unwrap();
        let level = pool.get_enum_by_name("tta.v1.SafetyLevel").unwrap();
        let Operand::Enum {
            name,
            number,
            values,
        } = enum_operand(&level, 5)
        else {
            panic!("not an enum")
        };
        assert_eq!(name, "critical");
        assert_eq!(number, 5);
        assert_eq!(
            values,
            ["unspecified", "none", "low", "moderate", "high", "critical"]
                .iter()
                .zip(0..)
                .map(|(name, number)| ((*name).to_owned(), number))
                .collect::<Vec<_>>()
        );
        // A value from a newer contract: named by its number, equal to no known name.
        let Operand::Enum { name, .. } = enum_operand(&level, 42) else {
            panic!("not an enum")
        };
        assert_eq!(name, "42");
    }

    #[test]
    fn json_fields_of_messages_read_by_key() {
        use prost_types::value::Kind as Json;

        let object = prost_types::Struct {
            fields: [(
                "room".to_owned(),
                prost_types::Value {
                    kind: Some(Json::StringValue("hall".into())),
                },
            )]
            .into(),
        };
        let change = pb::WorldChange {
            path: "player".into(),
            new_value: Some(prost_types::Value {
                kind: Some(Json::StructValue(object)),
            }),
            old_value: Some(prost_types::Value {
                kind: Some(Json::NumberValue(2.0)),
            }),
            ..Default::default()
        };
        let message = dynamic(&change, "tta.v1.WorldChange").unwrap();
        assert_eq!(
            read_message(&message, &path("new_value.room")),
            Operand::String("hall".into())
        );
        assert_eq!(
            read_message(&message, &path("new_value.other")),
            Operand::Null
        );
        assert_eq!(
            read_message(&message, &path("new_value")),
            Operand::Bool(true)
        );
        assert_eq!(
            read_message(&message, &path("old_value")),
            Operand::Number(2.0)
        );
        assert_eq!(
            read_message(&message, &path("path")),
            Operand::String("player".into())
        );

        let descriptor = message_descriptor("tta.v1.WorldChange").unwrap();
        assert!(check_message_path(&descriptor, &path("new_value.any.key")).is_ok());
        assert!(check_message_path(&descriptor, &path("path.any")).is_err());
    }

    #[test]
    fn route_paths_are_checked() {
        assert!(check_route_path(&path("session.settings.intensity")).is_ok());
        assert!(check_route_path(&path("session.version")).is_ok());
        assert!(check_route_path(&path("session.metadata.anything")).is_ok());
        assert!(check_route_path(&path("session.created_at.seconds")).is_ok());
        assert!(check_route_path(&path("request.metadata.mode")).is_ok());
        assert!(check_route_path(&path("request.interaction_type")).is_ok());
        assert_eq!(
            check_route_path(&path("session.setings")).unwrap_err(),
            "unknown field \"setings\" in tta.v1.Session"
        );
        assert_eq!(
            check_route_path(&path("session.settings.intensty")).unwrap_err(),
            "unknown field \"intensty\" in tta.v1.TherapeuticSettings"
        );
        assert!(
            check_route_path(&path("session.world_id.x"))
                .unwrap_err()
                .contains("tta.v1.Session.world_id is a string")
        );
        assert!(
            check_route_path(&path("request.metadata.mode.x"))
                .unwrap_err()
                .contains("no field \"x\"")
        );
        assert!(
            check_route_path(&path("request.body"))
                .unwrap_err()
                .contains("unknown field \"body\" in request")
        );
        assert!(
            check_route_path(&path("ipa.intent"))
                .unwrap_err()
                .contains("unknown root \"ipa\"")
        );
        assert!(check_route_path(&path("request")).is_err());
    }

    #[test]
    fn condition_over_an_output_parses_and_checks_every_path() {
        let condition =
            Condition::parse(r#"!ipa.safety.crisis && ipa.tone.valence < -0.5"#).unwrap();
        for path in condition.paths() {
            check_output_path("ipa", &path[1..]).unwrap();
        }
    }
}
