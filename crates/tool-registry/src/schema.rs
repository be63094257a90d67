//! JSON Schema handling for tool parameters and results: parsing, the size limits of the policy
//! (parameter count and nesting depth), compilation with `jsonschema`, argument validation that
//! names the offending field, and the backward-compatibility rule between versions.

use std::{collections::BTreeMap, sync::Arc};

use serde_json::Value;
use tta_types::FieldViolation;

/// Keywords whose value is one subschema.
const SINGLE_SUBSCHEMA: &[&str] = &[
    "items",
    "additionalProperties",
    "contains",
    "not",
    "if",
    "then",
    "else",
    "propertyNames",
    "unevaluatedItems",
    "unevaluatedProperties",
];
/// Keywords whose value is a list of subschemas.
const SUBSCHEMA_LISTS: &[&str] = &["prefixItems", "allOf", "anyOf", "oneOf"];
/// Keywords whose value maps names to subschemas.
const SUBSCHEMA_MAPS: &[&str] = &["properties", "patternProperties", "$defs", "definitions"];

/// Limits a schema must respect (from the policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemaLimits {
    pub max_params: usize,
    pub max_depth: usize,
}

/// A compiled schema, shared by every cached copy of a spec.
#[derive(Clone)]
pub struct Compiled(Arc<jsonschema::Validator>);

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Compiled(..)")
    }
}

/// Parses a schema text and checks it against `limits`; `field` names it in errors.
pub fn parse(field: &str, text: &str, limits: SchemaLimits) -> Result<Value, FieldViolation> {
    let schema: Value = serde_json::from_str(text)
        .map_err(|err| FieldViolation::new(field, format!("not valid JSON: {err}")))?;
    if !schema.is_object() && !schema.is_boolean() {
        return Err(FieldViolation::new(
            field,
            "must be a JSON Schema object or boolean",
        ));
    }
    let depth = depth(&schema);
    if depth > limits.max_depth {
        return Err(FieldViolation::new(
            field,
            format!("nesting depth {depth} exceeds {}", limits.max_depth),
        ));
    }
    let params = count_params(&schema);
    if params > limits.max_params {
        return Err(FieldViolation::new(
            field,
            format!("{params} parameters exceed {}", limits.max_params),
        ));
    }
    Ok(schema)
}

/// Compiles a schema (draft 2020-12). Remote references cannot be resolved: the registry never
/// fetches anything while validating.
pub fn compile(field: &str, schema: &Value) -> Result<Compiled, FieldViolation> {
    jsonschema::draft202012::new(schema)
        .map(|validator| Compiled(Arc::new(validator)))
        .map_err(|err| FieldViolation::new(field, format!("invalid JSON Schema: {err}")))
}

/// Validates `instance`; the first error names the field under `root` (e.g. `args.sides`).
pub fn check(compiled: &Compiled, root: &str, instance: &Value) -> Result<(), FieldViolation> {
    let Some(error) = compiled.0.iter_errors(instance).next() else {
        return Ok(());
    };
    let mut field = root.to_owned();
    for segment in error.instance_path().to_string().split('/') {
        if !segment.is_empty() {
            field.push('.');
            field.push_str(&segment.replace("~1", "/").replace("~0", "~"));
        }
    }
    if let jsonschema::error::ValidationErrorKind::Required { property } = error.kind()
        && let Some(name) = property.as_str()
    {
        field.push('.');
        field.push_str(name);
        return Err(FieldViolation::new(field, "is required"));
    }
    Err(FieldViolation::new(field, error.to_string()))
}

/// Nesting depth in schema levels: a schema without subschemas is 0, an object of scalars is 1.
pub fn depth(schema: &Value) -> usize {
    let children = subschemas(schema);
    if children.is_empty() {
        0
    } else {
        1 + children.into_iter().map(depth).max().unwrap_or(0)
    }
}

/// Parameters declared in total: every entry of every `properties` map, at any depth.
pub fn count_params(schema: &Value) -> usize {
    let own = schema
        .get("properties")
        .and_then(Value::as_object)
        .map_or(0, |properties| properties.len());
    own + subschemas(schema)
        .into_iter()
        .map(count_params)
        .sum::<usize>()
}

fn subschemas(schema: &Value) -> Vec<&Value> {
    let Some(object) = schema.as_object() else {
        return Vec::new();
    };
    let mut children = Vec::new();
    for key in SINGLE_SUBSCHEMA {
        if let Some(child) = object.get(*key).filter(|child| child.is_object()) {
            children.push(child);
        }
    }
    for key in SUBSCHEMA_LISTS {
        if let Some(list) = object.get(*key).and_then(Value::as_array) {
            children.extend(list.iter().filter(|child| child.is_object()));
        }
    }
    for key in SUBSCHEMA_MAPS {
        if let Some(map) = object.get(*key).and_then(Value::as_object) {
            children.extend(map.values().filter(|child| child.is_object()));
        }
    }
    children
}

/// The same JSON with object keys sorted at every level, so equal schemas hash equally however
/// their text was written.
pub fn canonical(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let sorted: BTreeMap<&String, Value> = map
                .iter()
                .map(|(key, value)| (key, canonical(value)))
                .collect();
            let mut out = serde_json::Map::new();
            for (key, value) in sorted {
                out.insert(key.clone(), value);
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

/// Why `new` is not a backward-compatible successor of `old` (a parameter removed or retyped,
/// a new required parameter), or `None` when it is. Compares the top-level parameters.
pub fn incompatibility(old: &Value, new: &Value) -> Option<String> {
    let empty = serde_json::Map::new();
    let properties = |schema: &Value| -> serde_json::Map<String, Value> {
        schema
            .get("properties")
            .and_then(Value::as_object)
            .unwrap_or(&empty)
            .clone()
    };
    let required = |schema: &Value| -> Vec<String> {
        schema
            .get("required")
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .filter_map(|name| name.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (old_props, new_props) = (properties(old), properties(new));
    for (name, old_schema) in &old_props {
        let Some(new_schema) = new_props.get(name) else {
            return Some(format!("parameter {name:?} was removed"));
        };
        let old_type = old_schema.get("type").map(canonical);
        let new_type = new_schema.get("type").map(canonical);
        if old_type != new_type {
            return Some(format!(
                "parameter {name:?} changed type from {} to {}",
                old_type.map_or("any".to_owned(), |t| t.to_string()),
                new_type.map_or("any".to_owned(), |t| t.to_string()),
            ));
        }
    }
    let old_required = required(old);
    required(new)
        .into_iter()
        .find(|name| !old_required.contains(name))
        .map(|name| format!("parameter {name:?} became required"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const LIMITS: SchemaLimits = SchemaLimits {
        max_params: 16,
        max_depth: 5,
    };

    fn nested(levels: usize) -> Value {
        let mut schema = json!({"type": "integer"});
        for _ in 0..levels {
            schema = json!({"type": "object", "properties": {"inner": schema}});
        }
        schema
    }

    #[test]
    fn depth_counts_levels_of_subschemas() {
        assert_eq!(depth(&json!({"type": "integer"})), 0);
        assert_eq!(depth(&nested(1)), 1);
        assert_eq!(depth(&nested(5)), 5);
        assert!(parse("p", &nested(5).to_string(), LIMITS).is_ok());
        let err = parse("p", &nested(7).to_string(), LIMITS).unwrap_err();
        assert_eq!(err.to_string(), "p: nesting depth 7 exceeds 5");
    }

    #[test]
    fn parameters_are_counted_at_every_level() {
        let mut properties = serde_json::Map::new();
        for index in 0..20 {
            properties.insert(format!("p{index}"), json!({"type": "string"}));
        }
        let schema = json!({"type": "object", "properties": properties});
        let err = parse("spec.parameters_schema", &schema.to_string(), LIMITS).unwrap_err();
        assert_eq!(
            err.to_string(),
            "spec.parameters_schema: 20 parameters exceed 16"
        );
        assert_eq!(count_params(&nested(3)), 3);
    }

    #[test]
    fn argument_errors_name_the_field() {
        let schema = json!({
            "type": "object",
            "properties": {"sides": {"type": "integer"}, "opts": {"type": "object", "properties": {"n": {"type": "integer"}}}},
            "required": ["sides"]
        });
        let compiled = compile("s", &schema).unwrap();
        let err = check(&compiled, "args", &json!({"sides": "six"})).unwrap_err();
        assert_eq!(err.field, "args.sides");
        let err = check(&compiled, "args", &json!({})).unwrap_err();
        assert_eq!(err.to_string(), "args.sides: is required");
        let err = check(&compiled, "args", &json!({"sides": 6, "opts": {"n": "x"}})).unwrap_err();
        assert_eq!(err.field, "args.opts.n");
        assert!(check(&compiled, "args", &json!({"sides": 6})).is_ok());
    }

    #[test]
    fn remote_references_are_not_fetched() {
        let schema = json!({"$ref": "https://example.invalid/schema.json"});
        assert!(compile("s", &schema).is_err());
    }

    #[test]
    fn minor_versions_keep_parameters_and_their_types() {
        let old = json!({"properties": {"a": {"type": "integer"}, "b": {"type": "string"}}, "required": ["a"]});
        let added = json!({"properties": {"a": {"type": "integer"}, "b": {"type": "string"}, "c": {"type": "string"}}, "required": ["a"]});
        assert_eq!(incompatibility(&old, &added), None);
        let removed = json!({"properties": {"a": {"type": "integer"}}});
        assert!(
            incompatibility(&old, &removed)
                .unwrap()
                .contains("\"b\" was removed")
        );
        let retyped = json!({"properties": {"a": {"type": "string"}, "b": {"type": "string"}}});
        assert!(
            incompatibility(&old, &retyped)
                .unwrap()
                .contains("changed type")
        );
        let required = json!({"properties": {"a": {"type": "integer"}, "b": {"type": "string"}}, "required": ["a", "b"]});
        assert!(
            incompatibility(&old, &required)
                .unwrap()
                .contains("became required")
        );
    }

    #[test]
    fn canonical_form_ignores_key_order() {
        let a: Value = serde_json::from_str(r#"{"b": 1, "a": {"y": 2, "x": 1}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a": {"x": 1, "y": 2}, "b": 1}"#).unwrap();
        assert_eq!(canonical(&a).to_string(), canonical(&b).to_string());
    }
}
