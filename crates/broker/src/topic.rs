//! Topic names, the Redis keys of a topic, and delivery receipts.
//!
//! Every key of a topic carries the hash tag `{topic}`, so the scripts that touch several of them
//! run on one Redis Cluster slot.

use std::fmt;

use tta_runtime::redis::Keyspace;
use tta_types::{FieldViolation, Priority};

/// Longest topic, group or consumer name.
pub const MAX_NAME_LEN: usize = 128;

/// Checks a topic, group or consumer name: 1-128 characters of ASCII letters, digits, `.`, `_`
/// and `-`. (No `:` — receipts use it as a separator — and no braces, which are hash tags.)
pub fn check_name(field: &str, raw: &str) -> Result<(), FieldViolation> {
    if raw.is_empty() {
        return Err(FieldViolation::new(field, "must not be empty"));
    }
    if raw.len() > MAX_NAME_LEN {
        return Err(FieldViolation::new(
            field,
            format!(
                "must be at most {MAX_NAME_LEN} characters, got {}",
                raw.len()
            ),
        ));
    }
    if let Some(bad) = raw
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(FieldViolation::new(
            field,
            format!("contains {bad:?}; allowed are ASCII letters, digits, '.', '_' and '-'"),
        ));
    }
    Ok(())
}

/// One letter per priority, as stored in receipts and scripts.
pub fn priority_code(priority: Priority) -> &'static str {
    match priority {
        Priority::High => "h",
        Priority::Normal => "n",
        Priority::Low => "l",
    }
}

pub fn priority_from_code(code: &str) -> Option<Priority> {
    match code {
        "h" => Some(Priority::High),
        "n" => Some(Priority::Normal),
        "l" => Some(Priority::Low),
        _ => None,
    }
}

/// The Redis keys of one topic, in the order the scripts expect them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicKeys {
    pub topic: String,
    /// HIGH, NORMAL, LOW streams, the delayed set and the DLQ stream.
    pub script_keys: [String; 5],
    /// Hash with the topic's consumer group and lease length.
    pub meta: String,
}

impl TopicKeys {
    pub fn new(keyspace: &Keyspace, topic: &str) -> Self {
        Self {
            topic: topic.to_owned(),
            script_keys: [
                keyspace.tagged(topic, &["q", "h"]),
                keyspace.tagged(topic, &["q", "n"]),
                keyspace.tagged(topic, &["q", "l"]),
                keyspace.tagged(topic, &["delayed"]),
                keyspace.tagged(topic, &["dlq"]),
            ],
            meta: keyspace.tagged(topic, &["meta"]),
        }
    }

    pub fn stream(&self, priority: Priority) -> &str {
        match priority {
            Priority::High => &self.script_keys[0],
            Priority::Normal => &self.script_keys[1],
            Priority::Low => &self.script_keys[2],
        }
    }

    pub fn streams(&self) -> [&str; 3] {
        [
            &self.script_keys[0],
            &self.script_keys[1],
            &self.script_keys[2],
        ]
    }

    pub fn delayed(&self) -> &str {
        &self.script_keys[3]
    }

    pub fn dlq(&self) -> &str {
        &self.script_keys[4]
    }

    pub fn idempotency(&self, keyspace: &Keyspace, key: &str) -> String {
        keyspace.tagged(&self.topic, &["idem", key])
    }
}

/// Names one delivery so it can be settled later, on any broker replica: topic, priority
/// stream and stream entry id. Opaque to clients.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Receipt {
    pub topic: String,
    pub priority: Priority,
    pub entry_id: String,
}

impl Receipt {
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldViolation> {
        let invalid = || FieldViolation::new(field, "is not a receipt issued by this broker");
        let mut parts = raw.rsplitn(3, ':');
        let entry_id = parts.next().ok_or_else(invalid)?;
        let priority = parts
            .next()
            .and_then(priority_from_code)
            .ok_or_else(invalid)?;
        let topic = parts.next().ok_or_else(invalid)?;
        check_name(field, topic).map_err(|_| invalid())?;
        let well_formed_id = entry_id
            .split_once('-')
            .is_some_and(|(ms, seq)| is_digits(ms) && is_digits(seq));
        if !well_formed_id {
            return Err(invalid());
        }
        Ok(Self {
            topic: topic.to_owned(),
            priority,
            entry_id: entry_id.to_owned(),
        })
    }
}

fn is_digits(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

impl fmt::Display for Receipt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}",
            self.topic,
            priority_code(self.priority),
            self.entry_id
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_use_a_safe_alphabet() {
        assert!(check_name("topic", "agent.ipa_v2-x").is_ok());
        assert_eq!(
            check_name("topic", "").unwrap_err().reason,
            "must not be empty"
        );
        assert!(check_name("topic", "a:b").is_err());
        assert!(check_name("topic", "a{b}").is_err());
        assert!(check_name("topic", &"t".repeat(129)).is_err());
    }

    #[test]
    fn keys_of_a_topic_share_one_hash_tag() {
        let keys = TopicKeys::new(&Keyspace::new("ao"), "agent.ipa");
        assert_eq!(keys.stream(Priority::High), "ao:{agent.ipa}:q:h");
        assert_eq!(keys.delayed(), "ao:{agent.ipa}:delayed");
        assert_eq!(keys.dlq(), "ao:{agent.ipa}:dlq");
        assert!(
            keys.script_keys
                .iter()
                .all(|key| key.contains("{agent.ipa}"))
        );
    }

    #[test]
    fn receipts_round_trip_and_reject_garbage() {
        let receipt = Receipt {
            topic: "agent.nga".into(),
            priority: Priority::Low,
            entry_id: "1700000000000-3".into(),
        };
        let text = receipt.to_string();
        assert_eq!(text, "agent.nga:l:1700000000000-3");
        assert_eq!(Receipt::parse("receipt", &text), Ok(receipt));
        for bad in ["", "x", "t:z:1-1", "t:h:abc", ":h:1-1", "t:h:1-", "t:h:1"] {
            let err = Receipt::parse("receipts[0]", bad).unwrap_err();
            assert_eq!(err.field, "receipts[0]", "{bad}");
        }
    }
}
