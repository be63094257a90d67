//! The vocabulary of a safety verdict: levels, actions, where a text came from, the findings that
//! explain a verdict and the verdict itself. Ordered enums, so "the most severe" is `max`.

use std::{fmt, str::FromStr, sync::Arc};

use serde::{Deserialize, Serialize};

/// How severe the risk in a text is (`tta.v1.SafetyLevel` without UNSPECIFIED).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    #[default]
    None,
    Low,
    Moderate,
    High,
    Critical,
}

/// What is done with a text because of its verdict (`tta.v1.SafetyAction` without UNSPECIFIED).
/// Ordered by how much it changes the turn, so the strongest action of several wins.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    #[default]
    Allow,
    Warn,
    Block,
    Escalate,
}

/// Who wrote the judged text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The player: judged mainly for crisis signals.
    User,
    /// An agent (narrative, world text): judged for harmful content before the player sees it.
    Agent,
}

macro_rules! lowercase_names {
    ($type:ty, $what:literal, $($variant:ident => $name:literal),+ $(,)?) => {
        impl $type {
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $name,)+
                }
            }
        }

        impl fmt::Display for $type {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $type {
            type Err = String;

            fn from_str(raw: &str) -> Result<Self, Self::Err> {
                match raw {
                    $($name => Ok(Self::$variant),)+
                    _ => Err(format!(
                        concat!("unknown ", $what, " {:?}; expected one of: {}"),
                        raw,
                        [$($name),+].join(", ")
                    )),
                }
            }
        }
    };
}

lowercase_names!(Level, "level", None => "none", Low => "low", Moderate => "moderate", High => "high", Critical => "critical");
lowercase_names!(Action, "action", Allow => "allow", Warn => "warn", Block => "block", Escalate => "escalate");
lowercase_names!(Source, "source", User => "user", Agent => "agent");

/// One rule that matched, with the span of the original text it matched (explainability).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub rule_id: Arc<str>,
    pub category: Arc<str>,
    pub severity: Level,
    /// Byte span in the judged text, on character boundaries.
    pub start: usize,
    pub end: usize,
    /// The matched text, at most [`MAX_EXCERPT_BYTES`], or `***` for sensitive rules.
    pub excerpt: String,
    pub source: Source,
    /// For agent output: the constraint the text broke, in words an agent can act on.
    pub constraint: Option<Arc<str>>,
}

/// Longest excerpt kept in a finding or an escalation (bytes, cut on a character boundary).
pub const MAX_EXCERPT_BYTES: usize = 200;

/// `text` cut to at most `max` bytes on a character boundary.
pub fn truncate_on_char_boundary(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The verdict on one text.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Assessment {
    pub level: Level,
    /// The player may be in crisis (self-harm, suicidal intent, immediate danger).
    pub crisis: bool,
    /// Distinct categories of the findings, sorted.
    pub categories: Vec<Arc<str>>,
    pub action: Action,
    /// The matches behind the verdict, in order of `start`.
    pub findings: Vec<Finding>,
    /// Content hash of the rule set that produced the verdict.
    pub rules_version: Arc<str>,
    /// Session memory raised the level (repeated risk signals in one session).
    pub raised_by_session: bool,
}

impl Assessment {
    /// The constraints the text broke, one line each, deduplicated, for asking the responsible
    /// agent for an alternative (R5.2). Empty unless the text was blocked.
    pub fn violated_constraints(&self) -> Vec<String> {
        if self.action != Action::Block {
            return Vec::new();
        }
        let mut constraints: Vec<String> = Vec::new();
        for finding in &self.findings {
            let line = match &finding.constraint {
                Some(constraint) => constraint.to_string(),
                None => format!("avoid {} content", finding.category.replace('_', " ")),
            };
            if !constraints.contains(&line) {
                constraints.push(line);
            }
        }
        constraints
    }

    pub fn has_category(&self, category: &str) -> bool {
        self.categories.iter().any(|c| &**c == category)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_actions_order_by_severity() {
        assert!(Level::Critical > Level::High && Level::High > Level::Moderate);
        assert!(Level::Low > Level::None);
        assert!(Action::Escalate > Action::Block && Action::Block > Action::Warn);
        assert_eq!(
            [Action::Warn, Action::Escalate, Action::Allow].iter().max(),
            Some(&Action::Escalate)
        );
    }

    #[test]
    fn names_round_trip_and_unknown_names_list_the_choices() {
        for level in [
            Level::None,
            Level::Low,
            Level::Moderate,
            Level::High,
            Level::Critical,
        ] {
            assert_eq!(level.as_str().parse::<Level>(), Ok(level));
        }
        assert_eq!("agent".parse::<Source>(), Ok(Source::Agent));
        let err = "bot".parse::<Source>().unwrap_err();
        assert_eq!(err, "unknown source \"bot\"; expected one of: user, agent");
    }

    #[test]
    fn truncation_never_splits_a_character() {
        assert_eq!(truncate_on_char_boundary("héllo", 2), "h");
        assert_eq!(truncate_on_char_boundary("héllo", 3), "hé");
        assert_eq!(truncate_on_char_boundary("hi", 10), "hi");
    }

    #[test]
    fn only_a_blocked_text_reports_violated_constraints_and_each_once() {
        let finding = |constraint: Option<&str>, category: &str| Finding {
            rule_id: "r".into(),
            category: category.into(),
            severity: Level::High,
            start: 0,
            end: 1,
            excerpt: String::new(),
            source: Source::Agent,
            constraint: constraint.map(Into::into),
        };
        let mut assessment = Assessment {
            action: Action::Block,
            findings: vec![
                finding(Some("no gore"), "graphic_violence"),
                finding(Some("no gore"), "graphic_violence"),
                finding(None, "medical_advice"),
            ],
            ..Assessment::default()
        };
        assert_eq!(
            assessment.violated_constraints(),
            ["no gore", "avoid medical advice content"]
        );
        assessment.action = Action::Warn;
        assert!(assessment.violated_constraints().is_empty());
    }
}
