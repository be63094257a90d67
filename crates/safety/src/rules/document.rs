//! The rule file as written: the YAML schema, parsed rule by rule so that a problem in one rule
//! is reported with that rule's id, and every problem in the file is reported at once.
//!
//! ```yaml
//! version: 1
//! exception_sets:
//!   negation: { before: ["not", "dont"], window: 3, stop_words: ["but", "i"] }
//! policy: { ... }            # thresholds per source and intensity, session memory
//! topics:                    # phrases behind the avoid_topics keywords of a session
//!   drowning: ["drown*", "under the water"]
//! rules:
//!   - id: crisis.suicide.ideation
//!     category: suicide
//!     severity: critical
//!     applies_to: user       # user | agent | both
//!     action: escalate       # allow | warn | block | escalate
//!     crisis: true
//!     phrases: ["kms", "kill myself"]
//!     regexes: ['\bwant(ed)? to die\b']
//!     exceptions: [negation, fiction]
//!     unless_before: ["my character"]
//!     unless_after: ["of embarrassment"]
//! ```

use std::{collections::BTreeMap, time::Duration};

use serde::Deserialize;
use serde_yaml::Value;

use crate::{
    error::RuleIssue,
    verdict::{Action, Level},
};

/// Which texts a rule judges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AppliesTo {
    User,
    Agent,
    #[default]
    Both,
}

/// Words around a match that mean it is not what it looks like: a negation ("I don't want to
/// die"), a game context ("my character jumps off the cliff"), an idiom ("dying to know").
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExceptionSetDoc {
    /// Phrases that cancel a match when they occur within `window` words before it.
    #[serde(default)]
    pub before: Vec<String>,
    /// Phrases that cancel a match when they occur within `window` words after it.
    #[serde(default)]
    pub after: Vec<String>,
    /// How many words on each side are looked at.
    #[serde(default = "default_window")]
    pub window: usize,
    /// Words that end the window: the clause before them is a different statement ("I'm not ok,
    /// I want to die": "not" belongs to another clause). Sentence punctuation always ends it.
    #[serde(default)]
    pub stop_words: Vec<String>,
    /// Whether a comma ends the window too.
    #[serde(default)]
    pub stop_at_comma: bool,
}

pub fn default_window() -> usize {
    4
}

/// Thresholds that turn a level into an action, for one kind of text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdsDoc {
    /// At or above this level the action is at least WARN.
    pub warn_at: Level,
    /// At or above this level the action is at least BLOCK (agent output only).
    #[serde(default)]
    pub block_at: Option<Level>,
}

/// Agent-output thresholds per therapeutic intensity (R5.3: gentler sessions warn and block
/// earlier).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentThresholdsDoc {
    pub low: ThresholdsDoc,
    pub medium: ThresholdsDoc,
    pub high: ThresholdsDoc,
}

/// Session memory: repeated risk signals in one session raise the level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionPolicyDoc {
    /// Signals at or above this level count.
    pub signal_at: Level,
    /// How long a signal counts.
    #[serde(with = "tta_types::config::duration")]
    pub window: Duration,
    /// This many signals within the window (the current one included) raise the level to
    /// `raise_to`.
    pub escalate_after: u32,
    pub raise_to: Level,
    /// At most one escalation event per session within this time.
    #[serde(with = "tta_types::config::duration")]
    pub escalation_cooldown: Duration,
    /// How long session memory is kept after the last signal.
    #[serde(with = "tta_types::config::duration")]
    pub ttl: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDoc {
    pub user: ThresholdsDoc,
    pub agent: AgentThresholdsDoc,
    pub session: SessionPolicyDoc,
}

/// One rule as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleDoc {
    pub id: String,
    pub category: String,
    pub severity: Level,
    #[serde(default)]
    pub applies_to: AppliesTo,
    pub action: Action,
    /// A match signals that the player may be in crisis.
    #[serde(default)]
    pub crisis: bool,
    #[serde(default)]
    pub description: String,
    /// Literal phrases, matched on word boundaries after normalisation; a trailing `*` matches
    /// any word ending ("suicid*").
    #[serde(default)]
    pub phrases: Vec<String>,
    /// Regular expressions over the normalised text (lowercase, no apostrophes, single spaces).
    #[serde(default)]
    pub regexes: Vec<String>,
    /// Names of exception sets that apply.
    #[serde(default)]
    pub exceptions: Vec<String>,
    /// Extra phrases of this rule only that cancel a match just before it.
    #[serde(default)]
    pub unless_before: Vec<String>,
    /// Extra phrases of this rule only that cancel a match just after it.
    #[serde(default)]
    pub unless_after: Vec<String>,
    /// Window of `unless_before`/`unless_after`, in words.
    #[serde(default = "default_window")]
    pub window: usize,
    /// For agent output: what the agent must do instead, sent back when the text is blocked.
    #[serde(default)]
    pub constraint: Option<String>,
    /// Redact the matched text in findings and escalations.
    #[serde(default)]
    pub sensitive: bool,
}

/// The whole file, after per-rule parsing.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleFileDoc {
    pub version: u32,
    pub exception_sets: BTreeMap<String, ExceptionSetDoc>,
    pub policy: PolicyDoc,
    pub topics: BTreeMap<String, Vec<String>>,
    /// Each rule with its index in the file.
    pub rules: Vec<(usize, RuleDoc)>,
}

const TOP_LEVEL_KEYS: [&str; 5] = ["version", "exception_sets", "policy", "topics", "rules"];

/// Parses `text`, collecting every problem: YAML syntax, unknown top-level keys and each rule
/// that does not fit the schema (with its id when it has one).
pub fn parse(text: &str) -> Result<RuleFileDoc, Vec<RuleIssue>> {
    let document: Value = serde_yaml::from_str(text).map_err(|err| {
        let path = err
            .location()
            .map_or_else(|| "document".to_owned(), |at| format!("line {}", at.line()));
        vec![RuleIssue::new("", path, err.to_string())]
    })?;
    let Value::Mapping(top) = document else {
        return Err(vec![RuleIssue::new(
            "",
            "document",
            "must be a mapping with `version` and `rules`",
        )]);
    };
    let mut issues = Vec::new();
    for key in top.keys() {
        let name = key.as_str().unwrap_or_default();
        if !TOP_LEVEL_KEYS.contains(&name) {
            issues.push(RuleIssue::new(
                "",
                format!("{key:?}"),
                format!("unknown key; expected one of {}", TOP_LEVEL_KEYS.join(", ")),
            ));
        }
    }

    let version = field::<u32>(&top, "version", &mut issues).unwrap_or(0);
    if version != 1 && top.contains_key("version") {
        issues.push(RuleIssue::new(
            "",
            "version",
            format!("unsupported version {version}; this build reads version 1"),
        ));
    }
    let exception_sets = field(&top, "exception_sets", &mut issues).unwrap_or_default();
    let policy = field::<PolicyDoc>(&top, "policy", &mut issues);
    let topics = field(&top, "topics", &mut issues).unwrap_or_default();

    let mut rules = Vec::new();
    match top.get("rules") {
        Some(Value::Sequence(items)) => {
            for (index, item) in items.iter().enumerate() {
                let id = item
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                match serde_yaml::from_value::<RuleDoc>(item.clone()) {
                    Ok(rule) => rules.push((index, rule)),
                    Err(err) => issues.push(RuleIssue::new(
                        &id,
                        format!("rules[{index}]"),
                        err.to_string(),
                    )),
                }
            }
        }
        Some(_) => issues.push(RuleIssue::new("", "rules", "must be a list of rules")),
        None => issues.push(RuleIssue::new("", "rules", "is required")),
    }

    match (policy, issues.is_empty()) {
        (Some(policy), true) => Ok(RuleFileDoc {
            version,
            exception_sets,
            policy,
            topics,
            rules,
        }),
        _ => Err(issues),
    }
}

/// Reads one top-level key, recording a problem (missing or mistyped) under its name.
fn field<T: serde::de::DeserializeOwned>(
    top: &serde_yaml::Mapping,
    key: &str,
    issues: &mut Vec<RuleIssue>,
) -> Option<T> {
    let Some(value) = top.get(key) else {
        if matches!(key, "version" | "policy") {
            issues.push(RuleIssue::new("", key, "is required"));
        }
        return None;
    };
    match serde_yaml::from_value(value.clone()) {
        Ok(parsed) => Some(parsed),
        Err(err) => {
            issues.push(RuleIssue::new("", key, err.to_string()));
            None
        }
    }
}
