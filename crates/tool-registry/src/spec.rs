//! The domain form of a tool version (`ToolSpec`), how a wire spec is validated into it, its
//! stable signature and its stored JSON form.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tta_proto::v1 as pb;
use tta_types::{FieldViolation, convert::agent_id_from_proto};

use crate::schema::{self, SchemaLimits};

pub const MAX_NAME_CHARS: usize = 64;
pub const MAX_DESCRIPTION_CHARS: usize = 1024;
pub const MAX_CAPABILITIES: usize = 32;
pub const MAX_CAPABILITY_CHARS: usize = 64;
pub const MAX_EXAMPLES: usize = 8;
pub const MAX_SCHEMA_BYTES: usize = 64 * 1024;
pub const MAX_REASON_BYTES: usize = 256;

/// Lifecycle state of a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Active,
    Deprecated,
}

/// What a tool may touch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Safety {
    pub network: bool,
    pub filesystem: bool,
    pub process: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    pub description: String,
    pub args_json: String,
    pub result_json: String,
}

/// The agent that owns a tool, as `type` and `instance`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub agent_type: String,
    pub instance: String,
}

/// A validated tool version as stored in Redis (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    pub name: String,
    pub version: String,
    pub description: String,
    /// Canonical JSON text.
    pub parameters_schema: String,
    /// Canonical JSON text; empty means any value.
    pub returns_schema: String,
    /// Sorted, without duplicates.
    pub capabilities: Vec<String>,
    pub safety: Safety,
    pub owner: Option<Owner>,
    pub examples: Vec<Example>,
    pub timeout_ms: Option<u64>,
    pub signature: String,
    pub created_at_ms: u64,
    pub status: Status,
    #[serde(default)]
    pub deprecation_reason: String,
}

impl ToolSpec {
    /// `name@version`, the key of a version in indexes and statistics.
    pub fn reference(&self) -> String {
        reference(&self.name, &self.version)
    }

    pub fn semver(&self) -> Option<semver::Version> {
        semver::Version::parse(&self.version).ok()
    }

    /// Whether two specs describe the same tool version (output-only fields aside).
    pub fn same_definition(&self, other: &ToolSpec) -> bool {
        self.name == other.name
            && self.version == other.version
            && self.description == other.description
            && self.parameters_schema == other.parameters_schema
            && self.returns_schema == other.returns_schema
            && self.capabilities == other.capabilities
            && self.safety == other.safety
            && self.owner == other.owner
            && self.examples == other.examples
            && self.timeout_ms == other.timeout_ms
    }

    pub fn is_builtin(&self) -> bool {
        self.owner.is_none()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// The wire form; `last_used_ms` comes from the usage index.
    pub fn to_proto(&self, last_used_ms: Option<u64>) -> pb::ToolSpec {
        pb::ToolSpec {
            name: self.name.clone(),
            version: self.version.clone(),
            description: self.description.clone(),
            parameters_schema: self.parameters_schema.clone(),
            returns_schema: self.returns_schema.clone(),
            capabilities: self.capabilities.clone(),
            safety: Some(pb::ToolSafetyFlags {
                network: self.safety.network,
                filesystem: self.safety.filesystem,
                process: self.safety.process,
            }),
            owner: self.owner.as_ref().map(|owner| pb::AgentId {
                agent_type: owner.agent_type.clone(),
                instance: owner.instance.clone(),
            }),
            created_at: Some(timestamp(self.created_at_ms)),
            last_used_at: last_used_ms.map(timestamp),
            status: match self.status {
                Status::Active => pb::ToolStatus::Active,
                Status::Deprecated => pb::ToolStatus::Deprecated,
            } as i32,
            examples: self
                .examples
                .iter()
                .map(|example| pb::ToolExample {
                    description: example.description.clone(),
                    args_json: example.args_json.clone(),
                    result_json: example.result_json.clone(),
                })
                .collect(),
            signature: self.signature.clone(),
            timeout: self
                .timeout_ms
                .and_then(|ms| prost_types::Duration::try_from(Duration::from_millis(ms)).ok()),
            deprecation_reason: self.deprecation_reason.clone(),
        }
    }
}

pub fn reference(name: &str, version: &str) -> String {
    format!("{name}@{version}")
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

pub fn timestamp(ms: u64) -> prost_types::Timestamp {
    prost_types::Timestamp::from(UNIX_EPOCH + Duration::from_millis(ms))
}

/// Validates a tool name: 1 to 64 of `[a-z0-9_.-]`, starting with a letter.
pub fn validate_name(field: &str, raw: &str) -> Result<String, FieldViolation> {
    let name = raw.trim();
    if name.is_empty() {
        return Err(FieldViolation::new(field, "must not be empty"));
    }
    if let Some(bad) = name.chars().find(|c| c.is_control()) {
        return Err(FieldViolation::new(
            field,
            format!("contains the control character {bad:?}"),
        ));
    }
    let chars = name.chars().count();
    if chars > MAX_NAME_CHARS {
        return Err(FieldViolation::new(
            field,
            format!("must be at most {MAX_NAME_CHARS} characters, got {chars}"),
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(FieldViolation::new(
            field,
            "must start with a lowercase letter",
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '.')))
    {
        return Err(FieldViolation::new(
            field,
            format!("contains {bad:?}; allowed are lowercase letters, digits, '_', '-' and '.'"),
        ));
    }
    Ok(name.to_owned())
}

/// Validates a semantic version; returns it normalised.
pub fn validate_version(field: &str, raw: &str) -> Result<semver::Version, FieldViolation> {
    if raw.trim().is_empty() {
        return Err(FieldViolation::new(field, "must not be empty"));
    }
    semver::Version::parse(raw.trim())
        .map_err(|err| FieldViolation::new(field, format!("not a semantic version: {err}")))
}

/// Trims a free text, rejects control characters other than newlines and tabs, and bounds it.
fn sanitise_text(field: &str, raw: &str, max_chars: usize) -> Result<String, FieldViolation> {
    let text = raw.trim();
    if text.is_empty() {
        return Err(FieldViolation::new(field, "must not be empty"));
    }
    if let Some(bad) = text
        .chars()
        .find(|c| c.is_control() && !matches!(c, '\n' | '\t'))
    {
        return Err(FieldViolation::new(
            field,
            format!("contains the control character {bad:?}"),
        ));
    }
    let chars = text.chars().count();
    if chars > max_chars {
        return Err(FieldViolation::new(
            field,
            format!("must be at most {max_chars} characters, got {chars}"),
        ));
    }
    Ok(text.to_owned())
}

fn validate_capability(field: &str, raw: &str) -> Result<String, FieldViolation> {
    let capability = raw.trim().to_ascii_lowercase();
    if capability.is_empty() || capability.len() > MAX_CAPABILITY_CHARS {
        return Err(FieldViolation::new(
            field,
            format!("must be 1 to {MAX_CAPABILITY_CHARS} characters"),
        ));
    }
    if let Some(bad) = capability.chars().find(|c| {
        !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '.' | ':'))
    }) {
        return Err(FieldViolation::new(
            field,
            format!(
                "contains {bad:?}; allowed are lowercase letters, digits, '_', '-', '.' and ':'"
            ),
        ));
    }
    Ok(capability)
}

/// A wire spec checked into its domain form, with its compiled schemas.
#[derive(Debug, Clone)]
pub struct Validated {
    pub spec: ToolSpec,
    pub parameters: schema::Compiled,
    pub returns: Option<schema::Compiled>,
}

/// Validates a wire spec; violations are reported under `spec.` (e.g. `spec.version`).
pub fn validate(raw: &pb::ToolSpec, limits: SchemaLimits) -> Result<Validated, FieldViolation> {
    validate_inner(raw, limits).map_err(|violation| violation.within("spec"))
}

fn validate_inner(raw: &pb::ToolSpec, limits: SchemaLimits) -> Result<Validated, FieldViolation> {
    let name = validate_name("name", &raw.name)?;
    let version = validate_version("version", &raw.version)?.to_string();
    let description = sanitise_text("description", &raw.description, MAX_DESCRIPTION_CHARS)?;

    if raw.parameters_schema.trim().is_empty() {
        return Err(FieldViolation::new("parameters_schema", "is required"));
    }
    for (field, text) in [
        ("parameters_schema", &raw.parameters_schema),
        ("returns_schema", &raw.returns_schema),
    ] {
        if text.len() > MAX_SCHEMA_BYTES {
            return Err(FieldViolation::new(
                field,
                format!("must be at most {MAX_SCHEMA_BYTES} bytes"),
            ));
        }
    }
    let parameters = schema::parse("parameters_schema", &raw.parameters_schema, limits)?;
    let describes_object = parameters.get("type").and_then(Value::as_str) == Some("object")
        || (parameters.get("type").is_none() && parameters.get("properties").is_some());
    if !describes_object {
        return Err(FieldViolation::new(
            "parameters_schema",
            "must describe an object (\"type\": \"object\")",
        ));
    }
    let compiled_parameters = schema::compile("parameters_schema", &parameters)?;
    let (returns_text, compiled_returns) = if raw.returns_schema.trim().is_empty() {
        (String::new(), None)
    } else {
        let returns = schema::parse("returns_schema", &raw.returns_schema, limits)?;
        let compiled = schema::compile("returns_schema", &returns)?;
        (schema::canonical(&returns).to_string(), Some(compiled))
    };

    if raw.capabilities.len() > MAX_CAPABILITIES {
        return Err(FieldViolation::new(
            "capabilities",
            format!("at most {MAX_CAPABILITIES} entries"),
        ));
    }
    let mut capabilities = raw
        .capabilities
        .iter()
        .enumerate()
        .map(|(index, raw)| validate_capability(&format!("capabilities[{index}]"), raw))
        .collect::<Result<Vec<_>, _>>()?;
    capabilities.sort();
    capabilities.dedup();

    let owner = raw
        .owner
        .as_ref()
        .map(|owner| {
            agent_id_from_proto("owner", owner).map(|id| Owner {
                agent_type: id.agent_type.to_string(),
                instance: id.instance.clone(),
            })
        })
        .transpose()?;

    if raw.examples.len() > MAX_EXAMPLES {
        return Err(FieldViolation::new(
            "examples",
            format!("at most {MAX_EXAMPLES} entries"),
        ));
    }
    let mut examples = Vec::with_capacity(raw.examples.len());
    for (index, example) in raw.examples.iter().enumerate() {
        let field = format!("examples[{index}]");
        let args: Value = serde_json::from_str(&example.args_json).map_err(|err| {
            FieldViolation::new(
                format!("{field}.args_json"),
                format!("not valid JSON: {err}"),
            )
        })?;
        schema::check(&compiled_parameters, &format!("{field}.args_json"), &args)?;
        if !example.result_json.trim().is_empty() {
            serde_json::from_str::<Value>(&example.result_json).map_err(|err| {
                FieldViolation::new(
                    format!("{field}.result_json"),
                    format!("not valid JSON: {err}"),
                )
            })?;
        }
        examples.push(Example {
            description: example.description.trim().chars().take(256).collect(),
            args_json: example.args_json.clone(),
            result_json: example.result_json.clone(),
        });
    }

    let timeout_ms = raw
        .timeout
        .map(|timeout| {
            Duration::try_from(timeout)
                .ok()
                .filter(|timeout| !timeout.is_zero())
                .map(|timeout| u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX))
                .ok_or_else(|| FieldViolation::new("timeout", "must be positive"))
        })
        .transpose()?;

    let safety = raw
        .safety
        .map(|flags| Safety {
            network: flags.network,
            filesystem: flags.filesystem,
            process: flags.process,
        })
        .unwrap_or_default();
    let parameters_text = schema::canonical(&parameters).to_string();
    let signature = signature(
        &name,
        &parameters_text,
        &returns_text,
        &capabilities,
        safety,
    );
    Ok(Validated {
        spec: ToolSpec {
            name,
            version,
            description,
            parameters_schema: parameters_text,
            returns_schema: returns_text,
            capabilities,
            safety,
            owner,
            examples,
            timeout_ms,
            signature,
            created_at_ms: now_ms(),
            status: Status::Active,
            deprecation_reason: String::new(),
        },
        parameters: compiled_parameters,
        returns: compiled_returns,
    })
}

/// Compiles the schemas of a stored spec (they were valid when it was registered).
pub fn compile_stored(
    spec: &ToolSpec,
) -> Result<(schema::Compiled, Option<schema::Compiled>), String> {
    let parameters: Value =
        serde_json::from_str(&spec.parameters_schema).map_err(|err| err.to_string())?;
    let parameters =
        schema::compile("parameters_schema", &parameters).map_err(|v| v.to_string())?;
    let returns = if spec.returns_schema.is_empty() {
        None
    } else {
        let returns: Value =
            serde_json::from_str(&spec.returns_schema).map_err(|err| err.to_string())?;
        Some(schema::compile("returns_schema", &returns).map_err(|v| v.to_string())?)
    };
    Ok((parameters, returns))
}

/// Hex SHA-256 of the canonical JSON of what makes two tools the same tool: name, schemas,
/// sorted capabilities and safety flags (not the version, description or owner).
pub fn signature(
    name: &str,
    parameters_schema: &str,
    returns_schema: &str,
    capabilities: &[String],
    safety: Safety,
) -> String {
    let parse = |text: &str| serde_json::from_str::<Value>(text).unwrap_or(Value::Null);
    let document = schema::canonical(&json!({
        "name": name,
        "parameters_schema": parse(parameters_schema),
        "returns_schema": if returns_schema.is_empty() { Value::Null } else { parse(returns_schema) },
        "capabilities": capabilities,
        "safety": {"network": safety.network, "filesystem": safety.filesystem, "process": safety.process},
    }));
    let digest = Sha256::digest(document.to_string().as_bytes());
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: SchemaLimits = SchemaLimits {
        max_params: 16,
        max_depth: 5,
    };

    fn wire() -> pb::ToolSpec {
        pb::ToolSpec {
            name: "world.lookup_item".into(),
            version: "1.2.0".into(),
            description: "  Looks up an item  ".into(),
            parameters_schema:
                r#"{"type":"object","properties":{"item":{"type":"string"}},"required":["item"]}"#
                    .into(),
            capabilities: vec!["World:Read".into(), "memory".into(), "memory".into()],
            ..Default::default()
        }
    }

    #[test]
    fn a_valid_spec_is_sanitised() {
        let validated = validate(&wire(), LIMITS).unwrap();
        assert_eq!(validated.spec.description, "Looks up an item");
        assert_eq!(validated.spec.capabilities, vec!["memory", "world:read"]);
        assert_eq!(validated.spec.signature.len(), 64);
        assert_eq!(validated.spec.status, Status::Active);
    }

    #[test]
    fn bad_fields_are_named() {
        type Case = (fn(&mut pb::ToolSpec), &'static str);
        let cases: Vec<Case> = vec![
            (|s| s.name = "Bad Name".into(), "spec.name"),
            (|s| s.name = "x".repeat(65), "spec.name"),
            (|s| s.name = "1abc".into(), "spec.name"),
            (|s| s.version = "1.2".into(), "spec.version"),
            (|s| s.description = "bell\u{7}".into(), "spec.description"),
            (|s| s.description = String::new(), "spec.description"),
            (
                |s| s.parameters_schema = "{".into(),
                "spec.parameters_schema",
            ),
            (
                |s| s.parameters_schema = r#"{"type":"string"}"#.into(),
                "spec.parameters_schema",
            ),
            (
                |s| s.capabilities = vec!["bad cap".into()],
                "spec.capabilities[0]",
            ),
            (
                |s| {
                    s.examples = vec![pb::ToolExample {
                        args_json: r#"{"item": 3}"#.into(),
                        ..Default::default()
                    }]
                },
                "spec.examples[0].args_json.item",
            ),
        ];
        for (mutate, field) in cases {
            let mut spec = wire();
            mutate(&mut spec);
            let err = validate(&spec, LIMITS).unwrap_err();
            assert_eq!(err.field, field, "{err}");
        }
        let mut spec = wire();
        spec.version = "one".into();
        let err = validate(&spec, LIMITS).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("spec.version: not a semantic version")
        );
    }

    #[test]
    fn signatures_ignore_version_description_and_key_order() {
        let a = validate(&wire(), LIMITS).unwrap().spec;
        let mut other = wire();
        other.version = "2.0.0".into();
        other.description = "something else".into();
        other.parameters_schema =
            r#"{"required":["item"],"properties":{"item":{"type":"string"}},"type":"object"}"#
                .into();
        let b = validate(&other, LIMITS).unwrap().spec;
        assert_eq!(a.signature, b.signature);
        let mut networked = wire();
        networked.safety = Some(pb::ToolSafetyFlags {
            network: true,
            ..Default::default()
        });
        assert_ne!(
            validate(&networked, LIMITS).unwrap().spec.signature,
            a.signature
        );
    }

    #[test]
    fn stored_json_round_trips() {
        let spec = validate(&wire(), LIMITS).unwrap().spec;
        let back = ToolSpec::from_json(&spec.to_json()).unwrap();
        assert_eq!(back, spec);
        assert!(compile_stored(&back).is_ok());
    }
}
