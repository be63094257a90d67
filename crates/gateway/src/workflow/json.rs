//! The JSON view of workflow messages (the proto3 JSON mapping, through the descriptor set the
//! services embed): `fallback_output` structs become `AgentOutput`s, and the workflows file —
//! YAML in the shape of `WorkflowDefinition` — becomes definitions, and definitions become that
//! file again (`tta workflows show`). Durations in the file may be written the human way
//! (`500ms`, `2s`) as well as the proto way (`0.5s`).

use prost::Message;
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

/// Keys of a definition whose values are `google.protobuf.Duration`s, and those of a step.
const DEFINITION_DURATION_KEYS: [&str; 4] = [
    "total_timeout",
    "totalTimeout",
    "expected_duration",
    "expectedDuration",
];
const STEP_DURATION_KEYS: [&str; 3] = ["timeout", "retry_backoff", "retryBackoff"];

/// Rewrites `500ms` / `2m` / plain numbers of seconds under the duration keys of a definition
/// and of its steps to the proto form. Only there: `params` and `fallback_output` are free-form,
/// and a `timeout` key in them is the agent's business.
fn normalize_durations(definition: &mut serde_json::Value) {
    normalize_keys(definition, &DEFINITION_DURATION_KEYS);
    if let Some(steps) = definition
        .get_mut("steps")
        .and_then(serde_json::Value::as_array_mut)
    {
        for step in steps {
            normalize_keys(step, &STEP_DURATION_KEYS);
        }
    }
}

fn normalize_keys(object: &mut serde_json::Value, keys: &[&str]) {
    let Some(map) = object.as_object_mut() else {
        return;
    };
    for (key, value) in map.iter_mut() {
        if !keys.contains(&key.as_str()) {
            continue;
        }
        // Whole nanoseconds, not a float, so `1s 500ms` written by `definitions_to_yaml` reads
        // back exactly.
        let proto = match &*value {
            serde_json::Value::String(text) => humantime::parse_duration(text.trim())
                .ok()
                .map(|d| format!("{}.{:09}s", d.as_secs(), d.subsec_nanos())),
            serde_json::Value::Number(n) => n.as_f64().map(|seconds| format!("{seconds}s")),
            _ => None,
        };
        if let Some(proto) = proto {
            *value = serde_json::Value::String(proto);
        }
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

/// One definition in the workflows file's shape: proto field names (`agent_type`, not
/// `agentType`), fields at their default left out, durations the human way (`500ms`,
/// `1s 500ms`). Output-only fields (`version`, `created_at`) are kept when set; clear them for a
/// definition meant to be registered again.
pub fn definition_to_yaml_value(
    definition: &pb::WorkflowDefinition,
) -> Result<serde_yaml::Value, String> {
    let descriptor = message_descriptor("tta.v1.WorkflowDefinition")?;
    let dynamic = DynamicMessage::decode(descriptor, definition.encode_to_vec().as_slice())
        .map_err(|err| err.to_string())?;
    let options = prost_reflect::SerializeOptions::new().use_proto_field_name(true);
    // A YAML mapping keeps the order of the proto's fields, where a JSON map would sort them.
    let mut value = dynamic
        .serialize_with_options(serde_yaml::value::Serializer, &options)
        .map_err(|err| err.to_string())?;
    set_human_duration(&mut value, "total_timeout", definition.total_timeout);
    set_human_duration(
        &mut value,
        "expected_duration",
        definition.expected_duration,
    );
    if let Some(steps) = value
        .get_mut("steps")
        .and_then(serde_yaml::Value::as_sequence_mut)
    {
        for (value, step) in steps.iter_mut().zip(&definition.steps) {
            set_human_duration(value, "timeout", step.timeout);
            set_human_duration(value, "retry_backoff", step.retry_backoff);
        }
    }
    Ok(value)
}

/// Writes `duration` under `key` as `humantime` does (`1s 500ms`), which
/// [`definitions_from_yaml`] reads back exactly; a negative one stays in the proto form.
fn set_human_duration(
    value: &mut serde_yaml::Value,
    key: &str,
    duration: Option<prost_types::Duration>,
) {
    let Some(human) = duration
        .and_then(|duration| std::time::Duration::try_from(duration).ok())
        .map(|duration| humantime::format_duration(duration).to_string())
    else {
        return;
    };
    if let Some(slot) = value.get_mut(key) {
        *slot = serde_yaml::Value::String(human);
    }
}

/// The workflows file holding `definitions`: the inverse of [`definitions_from_yaml`], so a
/// definition can be read, edited and registered again. Output-only fields (`version`,
/// `created_at`) are left out.
pub fn definitions_to_yaml(definitions: &[pb::WorkflowDefinition]) -> Result<String, String> {
    let workflows = definitions
        .iter()
        .map(|definition| {
            definition_to_yaml_value(&pb::WorkflowDefinition {
                version: 0,
                created_at: None,
                ..definition.clone()
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut file = serde_yaml::Mapping::new();
    file.insert("workflows".into(), serde_yaml::Value::Sequence(workflows));
    serde_yaml::to_string(&file).map_err(|err| err.to_string())
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

    fn json_to_struct(json: serde_json::Value) -> prost_types::Struct {
        match json_to_value(json).kind {
            Some(prost_types::value::Kind::StructValue(value)) => value,
            other => panic!("not an object: {other:?}"),
        }
    }

    /// A definition with every field of a definition, a route and a step set.
    fn every_field() -> pb::WorkflowDefinition {
        let millis = |ms: u32| prost_types::Duration {
            seconds: i64::from(ms / 1000),
            nanos: i32::try_from(ms % 1000).unwrap() * 1_000_000,
        };
        pb::WorkflowDefinition {
            name: "every-field".to_owned(),
            version: 0,
            description: "All of it: \"quoted\", multi\nline.".to_owned(),
            steps: vec![
                pb::WorkflowStep {
                    id: "ipa".to_owned(),
                    agent_type: "ipa".to_owned(),
                    timeout: Some(millis(1500)),
                    max_retries: 2,
                    retry_backoff: Some(millis(50)),
                    fallback: Some(pb::workflow_step::Fallback::FallbackStep(
                        "ipa-backup".to_owned(),
                    )),
                    required_capabilities: vec!["fast".to_owned()],
                    ..Default::default()
                },
                pb::WorkflowStep {
                    id: "ipa-backup".to_owned(),
                    agent_type: "ipa".to_owned(),
                    ..Default::default()
                },
                pb::WorkflowStep {
                    id: "nga".to_owned(),
                    agent_type: "nga".to_owned(),
                    depends_on: vec!["ipa".to_owned()],
                    condition: "!ipa.safety.crisis && ipa.intent != \"quit\"".to_owned(),
                    timeout: Some(millis(100)),
                    fallback: Some(pb::workflow_step::Fallback::FallbackOutput(json_to_struct(
                        serde_json::json!({"nga": {"text": "You pause.", "suggestions": ["look"]}}),
                    ))),
                    continue_on_failure: true,
                    params: Some(json_to_struct(serde_json::json!({
                        "timeout": 3.0,
                        "style": "calm",
                        "ratio": 0.25,
                        "tags": ["a", true, null],
                    }))),
                    ..Default::default()
                },
            ],
            total_timeout: Some(millis(2000)),
            route: Some(pb::WorkflowRoute {
                interaction_types: vec!["turn".to_owned(), "look".to_owned()],
                condition: "session.settings.intensity == \"low\"".to_owned(),
                precedence: -3,
                is_default: true,
            }),
            output_step: "nga".to_owned(),
            fallback_reply: "Let's pause.".to_owned(),
            expected_duration: Some(millis(800)),
            created_at: None,
        }
    }

    #[test]
    fn a_definition_written_as_a_workflows_file_reads_back_equal() {
        let example = definitions_from_yaml(include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../deploy/workflows/example.yaml"
        )))
        .unwrap();
        let definitions: Vec<_> = super::super::builtin::definitions()
            .into_iter()
            .chain(example)
            .chain([every_field()])
            .collect();
        let yaml = definitions_to_yaml(&definitions).unwrap();
        assert_eq!(definitions_from_yaml(&yaml).unwrap(), definitions, "{yaml}");
        // Written the way people write the file.
        assert!(
            yaml.starts_with("workflows:\n- name: collaborative\n"),
            "{yaml}"
        );
        assert!(yaml.contains("agent_type: ipa"), "{yaml}");
        assert!(yaml.contains("timeout: 1s 500ms"), "{yaml}");
        assert!(yaml.contains("retry_backoff: 50ms"), "{yaml}");
    }

    #[test]
    fn output_only_fields_stay_out_of_the_file_but_not_out_of_the_value() {
        let stored = pb::WorkflowDefinition {
            version: 3,
            created_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            ..every_field()
        };
        let yaml = definitions_to_yaml(std::slice::from_ref(&stored)).unwrap();
        assert!(!yaml.contains("version"), "{yaml}");
        assert!(!yaml.contains("created_at"), "{yaml}");
        let value = definition_to_yaml_value(&stored).unwrap();
        assert_eq!(value["version"], serde_yaml::Value::from(3));
        assert_eq!(
            value["created_at"],
            serde_yaml::Value::from("2023-11-14T22:13:20Z")
        );
    }

    #[test]
    fn a_timeout_key_in_params_is_not_a_duration() {
        let text = "workflows:\n  - name: x\n    steps:\n      - id: a\n        agent_type: a\n        timeout: 2s\n        params: { timeout: 3 }\n";
        let definitions = definitions_from_yaml(text).unwrap();
        let step = &definitions[0].steps[0];
        assert_eq!(
            step.timeout,
            Some(prost_types::Duration {
                seconds: 2,
                nanos: 0
            })
        );
        let params = struct_to_json(step.params.as_ref().unwrap());
        assert_eq!(params, serde_json::json!({"timeout": 3.0}));
    }
}
