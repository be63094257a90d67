//! The JSON view of workflow messages (the proto3 JSON mapping, through the descriptor set the
//! services embed): `fallback_output` structs become `AgentOutput`s, and the workflows file —
//! YAML in the shape of `WorkflowDefinition` — becomes definitions. Durations in the file may be
//! written the human way (`500ms`, `2s`) as well as the proto way (`0.5s`).

use prost_reflect::DynamicMessage;
use tta_proto::v1 as pb;

use super::view::message_descriptor;

/// Decodes the proto3 JSON form of message `name` into `M`.
fn from_json<M: prost::Message + Default>(
    name: &str,
    json: serde_json::Value,
) -> Result<M, String> {
    let descriptor = message_descriptor(name)?;
    let dynamic = DynamicMessage::deserialize(descriptor, json).map_err(|err| err.to_string())?;
    dynamic.transcode_to::<M>().map_err(|err| err.to_string())
}

/// The proto3 JSON form of a message `M` named `name` (lowerCamelCase fields, enums by name,
/// defaults left out), as other clients of the contract read it; the WebSocket endpoint sends
/// `TurnEvent`s this way.
pub(crate) fn to_json<M: prost::Message>(
    name: &str,
    message: &M,
) -> Result<serde_json::Value, String> {
    let descriptor = message_descriptor(name)?;
    let dynamic = DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())
        .map_err(|err| err.to_string())?;
    serde_json::to_value(&dynamic).map_err(|err| err.to_string())
}

/// A `google.protobuf.Struct` as plain JSON.
pub fn struct_to_json(value: &prost_types::Struct) -> serde_json::Value {
    serde_json::Value::Object(
        value
            .fields
            .iter()
            .map(|(key, value)| (key.clone(), value_to_json(value)))
            .collect(),
    )
}

fn value_to_json(value: &prost_types::Value) -> serde_json::Value {
    use prost_types::value::Kind;
    match &value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::StructValue(s)) => struct_to_json(s),
        Some(Kind::ListValue(list)) => {
            serde_json::Value::Array(list.values.iter().map(value_to_json).collect())
        }
    }
}

/// `{"nga": {"text": "..."}}`-style fixed outputs of `WorkflowStep.fallback_output`.
pub fn agent_output_from_struct(value: &prost_types::Struct) -> Result<pb::AgentOutput, String> {
    let json = struct_to_json(value);
    let variants = ["ipa", "wba", "nga", "custom"];
    let keys: Vec<&String> = value.fields.keys().collect();
    if keys.len() != 1 || !variants.contains(&keys[0].as_str()) {
        return Err(format!(
            "must hold exactly one of {}, got {keys:?}",
            variants.join(", ")
        ));
    }
    from_json("tta.v1.AgentOutput", json)
}

/// Keys whose values are `google.protobuf.Duration`s in a workflow definition.
const DURATION_KEYS: [&str; 7] = [
    "timeout",
    "retry_backoff",
    "retryBackoff",
    "total_timeout",
    "totalTimeout",
    "expected_duration",
    "expectedDuration",
];

/// Rewrites `500ms` / `2m` / plain numbers of seconds under duration keys to the proto form.
fn normalize_durations(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                if DURATION_KEYS.contains(&key.as_str()) {
                    let seconds = match &*value {
                        serde_json::Value::String(text) => humantime::parse_duration(text.trim())
                            .ok()
                            .map(|d| d.as_secs_f64()),
                        serde_json::Value::Number(n) => n.as_f64(),
                        _ => None,
                    };
                    if let Some(seconds) = seconds {
                        *value = serde_json::Value::String(format!("{seconds}s"));
                    }
                } else {
                    normalize_durations(value);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(normalize_durations),
        _ => {}
    }
}

/// The workflows file: `workflows:` followed by a list of definitions. Errors name the entry
/// (`workflows[1]: ...`).
pub fn definitions_from_yaml(text: &str) -> Result<Vec<pb::WorkflowDefinition>, String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        workflows: Vec<serde_json::Value>,
    }
    let file: File = serde_yaml::from_str(text).map_err(|err| err.to_string())?;
    file.workflows
        .into_iter()
        .enumerate()
        .map(|(i, mut json)| {
            normalize_durations(&mut json);
            from_json("tta.v1.WorkflowDefinition", json)
                .map_err(|err| format!("workflows[{i}]: {err}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fixed_narrative_fallback_becomes_an_nga_output() {
        let json = serde_json::json!({"nga": {"text": "You pause.", "suggestions": ["look"]}});
        let value: prost_types::Struct = match json {
            serde_json::Value::Object(map) => prost_types::Struct {
                fields: map
                    .into_iter()
                    .map(|(k, v)| (k, json_to_value(v)))
                    .collect(),
            },
            _ => unreachable!(),
        };
        let output = agent_output_from_struct(&value).unwrap();
        match output.kind {
            Some(pb::agent_output::Kind::Nga(nga)) => {
                assert_eq!(nga.text, "You pause.");
                assert_eq!(nga.suggestions, vec!["look".to_owned()]);
            }
            other => panic!("{other:?}"),
        }
    }

    fn json_to_value(json: serde_json::Value) -> prost_types::Value {
        use prost_types::value::Kind;
        prost_types::Value {
            kind: Some(match json {
                serde_json::Value::Null => Kind::NullValue(0),
                serde_json::Value::Bool(b) => Kind::BoolValue(b),
                serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap()),
                serde_json::Value::String(s) => Kind::StringValue(s),
                serde_json::Value::Array(items) => Kind::ListValue(prost_types::ListValue {
                    values: items.into_iter().map(json_to_value).collect(),
                }),
                serde_json::Value::Object(map) => Kind::StructValue(prost_types::Struct {
                    fields: map
                        .into_iter()
                        .map(|(k, v)| (k, json_to_value(v)))
                        .collect(),
                }),
            }),
        }
    }

    #[test]
    fn two_variants_or_an_unknown_field_are_refused() {
        let two = prost_types::Struct {
            fields: [
                ("nga".to_owned(), json_to_value(serde_json::json!({}))),
                ("ipa".to_owned(), json_to_value(serde_json::json!({}))),
            ]
            .into(),
        };
        assert!(agent_output_from_struct(&two).is_err());
        let unknown = prost_types::Struct {
            fields: [(
                "nga".to_owned(),
                json_to_value(serde_json::json!({"txt": "typo"})),
            )]
            .into(),
        };
        let err = agent_output_from_struct(&unknown).unwrap_err();
        assert!(err.contains("txt"), "{err}");
    }

    #[test]
    fn the_workflows_file_reads_human_durations_and_names_a_bad_entry() {
        let text = r#"
workflows:
  - name: quick-look
    total_timeout: 1500ms
    steps:
      - id: ipa
        agent_type: ipa
        timeout: 500ms
        max_retries: 1
      - id: nga
        agent_type: nga
        depends_on: [ipa]
        timeout: 1
        fallback_output: { nga: { text: "You look around slowly." } }
    route: { interaction_types: [look], precedence: 5 }
"#;
        let definitions = definitions_from_yaml(text).unwrap();
        assert_eq!(definitions.len(), 1);
        let definition = &definitions[0];
        assert_eq!(definition.name, "quick-look");
        assert_eq!(
            definition.total_timeout,
            Some(prost_types::Duration {
                seconds: 1,
                nanos: 500_000_000
            })
        );
        assert_eq!(definition.steps[1].depends_on, vec!["ipa".to_owned()]);
        assert_eq!(
            definition.route.as_ref().unwrap().interaction_types,
            vec!["look".to_owned()]
        );

        let bad = "workflows:\n  - name: x\n  - name: y\n    stepz: []\n";
        let err = definitions_from_yaml(bad).unwrap_err();
        assert!(err.starts_with("workflows[1]:"), "{err}");
    }
}
