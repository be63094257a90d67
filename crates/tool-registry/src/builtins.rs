//! Small pure tools the registry executes itself, so it is useful before any agent registers
//! one: no I/O, no shared state, bounded work. Everything else runs in the agent that owns it.

use serde_json::{Value, json};
use tta_proto::v1 as pb;

/// The executor id reported for built-in tools.
pub const EXECUTOR_ID: &str = "builtin";

/// The wire specs of the built-in tools, registered at start-up.
pub fn specs() -> Vec<pb::ToolSpec> {
    vec![
        pb::ToolSpec {
            name: "dice.roll".into(),
            version: "1.0.0".into(),
            description: "Rolls dice: `count` dice with `sides` sides each. With a `seed` the \
                          rolls are reproducible (replayed turns roll the same)."
                .into(),
            parameters_schema: json!({
                "type": "object",
                "properties": {
                    "sides": {"type": "integer", "minimum": 2, "maximum": 1000},
                    "count": {"type": "integer", "minimum": 1, "maximum": 100},
                    "seed": {"type": "integer", "minimum": 0}
                },
                "required": ["sides"],
                "additionalProperties": false
            })
            .to_string(),
            returns_schema: json!({
                "type": "object",
                "properties": {
                    "rolls": {"type": "array", "items": {"type": "integer"}},
                    "total": {"type": "integer"}
                },
                "required": ["rolls", "total"]
            })
            .to_string(),
            capabilities: vec!["game:dice".into()],
            examples: vec![pb::ToolExample {
                description: "two six-sided dice, seeded".into(),
                args_json: r#"{"sides": 6, "count": 2, "seed": 7}"#.into(),
                result_json: String::new(),
            }],
            ..Default::default()
        },
        pb::ToolSpec {
            name: "text.word_count".into(),
            version: "1.0.0".into(),
            description: "Counts the words and characters of a text.".into(),
            parameters_schema: json!({
                "type": "object",
                "properties": {"text": {"type": "string", "maxLength": 100000}},
                "required": ["text"],
                "additionalProperties": false
            })
            .to_string(),
            returns_schema: json!({
                "type": "object",
                "properties": {"words": {"type": "integer"}, "characters": {"type": "integer"}},
                "required": ["words", "characters"]
            })
            .to_string(),
            capabilities: vec!["text".into()],
            ..Default::default()
        },
    ]
}

/// Runs a built-in tool on validated arguments; `None` when `name` is not built in.
pub fn execute(name: &str, args: &Value) -> Option<Result<Value, String>> {
    match name {
        "dice.roll" => Some(roll(args)),
        "text.word_count" => Some(word_count(args)),
        _ => None,
    }
}

fn roll(args: &Value) -> Result<Value, String> {
    let sides = args
        .get("sides")
        .and_then(Value::as_u64)
        .ok_or("sides: expected an integer")?;
    let count = args.get("count").and_then(Value::as_u64).unwrap_or(1);
    let mut rng = match args.get("seed").and_then(Value::as_u64) {
        Some(seed) => fastrand::Rng::with_seed(seed),
        None => fastrand::Rng::new(),
    };
    let rolls: Vec<u64> = (0..count).map(|_| rng.u64(1..=sides)).collect();
    let total: u64 = rolls.iter().sum();
    Ok(json!({"rolls": rolls, "total": total}))
}

fn word_count(args: &Value) -> Result<Value, String> {
    let text = args
        .get("text")
        .and_then(Value::as_str)
        .ok_or("text: expected a string")?;
    Ok(json!({"words": text.split_whitespace().count(), "characters": text.chars().count()}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_rolls_repeat_and_stay_in_range() {
        let args = json!({"sides": 6, "count": 50, "seed": 42});
        let first = execute("dice.roll", &args).unwrap().unwrap();
        let second = execute("dice.roll", &args).unwrap().unwrap();
        assert_eq!(first, second);
        let rolls = first["rolls"].as_array().unwrap();
        assert_eq!(rolls.len(), 50);
        assert!(rolls.iter().all(|r| (1..=6).contains(&r.as_u64().unwrap())));
        let total: u64 = rolls.iter().map(|r| r.as_u64().unwrap()).sum();
        assert_eq!(first["total"], total);
    }

    #[test]
    fn words_are_counted() {
        let out = execute("text.word_count", &json!({"text": "a quiet  harbour"}))
            .unwrap()
            .unwrap();
        assert_eq!(out, json!({"words": 3, "characters": 16}));
        assert!(execute("nope", &json!({})).is_none());
    }
}
