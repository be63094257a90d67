//! A session's therapeutic settings (R5.3: interventions fit the player's readiness) and what
//! they change in a verdict: how early agent output is warned about or blocked, and which topics
//! the story must not bring up.
//!
//! Settings arrive on the wire as `tta.v1.TherapeuticSettings`; [`TherapeuticSettings::from_proto`]
//! parses them once at the edge. [`SessionPolicy`] is their compiled form for one rule set: the
//! gateway keeps one per session so the avoided-topic automaton is built once, not per turn.

use std::sync::Arc;

use tta_proto::v1 as pb;
use tta_types::FieldViolation;

use crate::rules::matcher::{Matcher, MatcherBuilder};

/// How strong interventions may be. Gentler sessions are protected more eagerly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Intensity {
    /// The default of the contract for sessions that set nothing.
    #[default]
    Low,
    Medium,
    High,
}

/// The contract's limits on `avoid_topics`.
pub const MAX_AVOID_TOPICS: usize = 64;
pub const MAX_TOPIC_BYTES: usize = 64;
/// The contract's limits on `goals`.
pub const MAX_GOALS: usize = 16;
pub const MAX_GOAL_BYTES: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TherapeuticSettings {
    pub intensity: Intensity,
    /// Lowercase keywords (`drowning`, `family_loss`); see the rule file's `topics`.
    pub avoid_topics: Vec<String>,
    /// BCP 47 tag; empty means the default locale.
    pub locale: String,
}

/// A plausible BCP 47 tag: a 2-8 letter language and optional 1-8 character subtags.
fn is_language_tag(raw: &str) -> bool {
    let mut parts = raw.split('-');
    let language_ok = parts
        .next()
        .is_some_and(|l| (2..=8).contains(&l.len()) && l.bytes().all(|b| b.is_ascii_alphabetic()));
    language_ok
        && parts.all(|p| (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()))
}

impl TherapeuticSettings {
    /// Parses wire settings; violations name the field under `field` (e.g. `settings`).
    pub fn from_proto(field: &str, raw: &pb::TherapeuticSettings) -> Result<Self, FieldViolation> {
        let intensity = match pb::TherapeuticIntensity::try_from(raw.intensity) {
            Ok(pb::TherapeuticIntensity::Unspecified | pb::TherapeuticIntensity::Low) => {
                Intensity::Low
            }
            Ok(pb::TherapeuticIntensity::Medium) => Intensity::Medium,
            Ok(pb::TherapeuticIntensity::High) => Intensity::High,
            Err(_) => {
                return Err(FieldViolation::new(
                    "intensity",
                    format!("unknown intensity {}", raw.intensity),
                )
                .within(field));
            }
        };
        if raw.avoid_topics.len() > MAX_AVOID_TOPICS {
            return Err(FieldViolation::new(
                "avoid_topics",
                format!(
                    "at most {MAX_AVOID_TOPICS} entries, got {}",
                    raw.avoid_topics.len()
                ),
            )
            .within(field));
        }
        let mut avoid_topics = Vec::with_capacity(raw.avoid_topics.len());
        for (i, topic) in raw.avoid_topics.iter().enumerate() {
            let topic = topic.trim();
            let reason = if topic.is_empty() {
                Some("must not be empty".to_owned())
            } else if topic.len() > MAX_TOPIC_BYTES {
                Some(format!("must be at most {MAX_TOPIC_BYTES} bytes"))
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(FieldViolation::new(format!("avoid_topics[{i}]"), reason).within(field));
            }
            avoid_topics.push(topic.to_lowercase());
        }
        if !raw.locale.is_empty() && !is_language_tag(&raw.locale) {
            return Err(FieldViolation::new(
                "locale",
                format!(
                    "{:?} is not a BCP 47 language tag (e.g. \"en-GB\")",
                    raw.locale
                ),
            )
            .within(field));
        }
        Ok(Self {
            intensity,
            avoid_topics,
            locale: raw.locale.clone(),
        })
    }
}

/// A session's therapeutic goals, trimmed, checked against the contract's limits when the
/// session is created. They guide the agents and play no part in the safety verdict, so the
/// policy of every turn ([`TherapeuticSettings::from_proto`]) does not read them: a goal
/// stored before a limit existed must not cost a session its avoided topics.
pub fn parse_goals(field: &str, raw: &[String]) -> Result<Vec<String>, FieldViolation> {
    if raw.len() > MAX_GOALS {
        return Err(FieldViolation::new(
            "goals",
            format!("at most {MAX_GOALS} entries, got {}", raw.len()),
        )
        .within(field));
    }
    let mut goals = Vec::with_capacity(raw.len());
    for (i, goal) in raw.iter().enumerate() {
        let goal = goal.trim();
        let reason = if goal.is_empty() {
            "must not be empty".to_owned()
        } else if goal.len() > MAX_GOAL_BYTES {
            format!("must be at most {MAX_GOAL_BYTES} bytes")
        } else {
            goals.push(goal.to_owned());
            continue;
        };
        return Err(FieldViolation::new(format!("goals[{i}]"), reason).within(field));
    }
    Ok(goals)
}

/// Avoided topics compiled for one rule set.
#[derive(Debug, Clone)]
pub struct TopicMatcher {
    pub(crate) matcher: Matcher,
    /// Topic name of each matcher "rule" index.
    pub(crate) names: Vec<Arc<str>>,
    /// The constraint sent to an agent, per topic.
    pub(crate) constraints: Vec<Arc<str>>,
}

/// Settings compiled against one rule set. Cheap to share; rebuild it when the rule set's
/// version changes (its topic phrases may have changed).
#[derive(Debug, Clone, Default)]
pub struct SessionPolicy {
    pub intensity: Intensity,
    pub locale: String,
    pub(crate) topics: Option<Arc<TopicMatcher>>,
    /// Version of the rule set the topics were compiled from.
    pub rules_version: Arc<str>,
}

impl SessionPolicy {
    pub(crate) fn compile(
        settings: &TherapeuticSettings,
        lexicon: &std::collections::BTreeMap<String, Vec<String>>,
        rules_version: Arc<str>,
    ) -> Self {
        let mut builder = MatcherBuilder::default();
        let mut names = Vec::new();
        let mut constraints = Vec::new();
        for topic in &settings.avoid_topics {
            if names.iter().any(|known: &Arc<str>| &**known == topic) {
                continue;
            }
            let index = names.len();
            // A topic the lexicon does not know is matched by its own words.
            let fallback = [crate::normalize::Normalized::new(topic).as_str().to_owned()];
            let phrases = lexicon.get(topic).map_or(&fallback[..], Vec::as_slice);
            let mut any = false;
            for phrase in phrases {
                let (body, prefix) = match phrase.strip_suffix('*') {
                    Some(body) => (body, true),
                    None => (phrase.as_str(), false),
                };
                if !body.is_empty() {
                    builder.phrase(index, body, prefix);
                    any = true;
                }
            }
            if any {
                names.push(Arc::from(topic.as_str()));
                constraints.push(Arc::from(format!(
                    "avoid the topic \"{}\": the player asked not to meet it in the story",
                    topic.replace('_', " ")
                )));
            }
        }
        let topics = if names.is_empty() {
            None
        } else {
            builder.build().ok().map(|matcher| {
                Arc::new(TopicMatcher {
                    matcher,
                    names,
                    constraints,
                })
            })
        };
        Self {
            intensity: settings.intensity,
            locale: settings.locale.clone(),
            topics,
            rules_version,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_intensity_means_low_and_topics_are_lowercased() {
        let settings = TherapeuticSettings::from_proto(
            "settings",
            &pb::TherapeuticSettings {
                intensity: 0,
                avoid_topics: vec![" Drowning ".into()],
                locale: "en-GB".into(),
                goals: Vec::new(),
            },
        )
        .unwrap();
        assert_eq!(settings.intensity, Intensity::Low);
        assert_eq!(settings.avoid_topics, ["drowning"]);
    }

    #[test]
    fn bad_settings_name_the_field() {
        let raw = pb::TherapeuticSettings {
            avoid_topics: vec!["ok".into(), String::new()],
            ..Default::default()
        };
        let err = TherapeuticSettings::from_proto("settings", &raw).unwrap_err();
        assert_eq!(
            err.to_string(),
            "settings.avoid_topics[1]: must not be empty"
        );

        let raw = pb::TherapeuticSettings {
            locale: "english please".into(),
            ..Default::default()
        };
        let err = TherapeuticSettings::from_proto("settings", &raw).unwrap_err();
        assert_eq!(err.field, "settings.locale");

        let raw = pb::TherapeuticSettings {
            intensity: 9,
            ..Default::default()
        };
        assert_eq!(
            TherapeuticSettings::from_proto("settings", &raw)
                .unwrap_err()
                .field,
            "settings.intensity"
        );

        let raw = pb::TherapeuticSettings {
            avoid_topics: vec!["x".into(); MAX_AVOID_TOPICS + 1],
            ..Default::default()
        };
        assert_eq!(
            TherapeuticSettings::from_proto("settings", &raw)
                .unwrap_err()
                .field,
            "settings.avoid_topics"
        );
    }

    #[test]
    fn goals_are_trimmed_and_held_to_the_contracts_limits() {
        let goals = |goals: Vec<String>| parse_goals("settings", &goals);
        assert_eq!(
            goals(vec!["  practise self-compassion ".into()]).unwrap(),
            ["practise self-compassion"]
        );
        let field_of = |raw: Vec<String>| goals(raw).unwrap_err().field;
        assert_eq!(field_of(vec!["x".into(); MAX_GOALS + 1]), "settings.goals");
        assert_eq!(
            field_of(vec!["ok".into(), "   ".into()]),
            "settings.goals[1]"
        );
        assert_eq!(
            field_of(vec!["g".repeat(MAX_GOAL_BYTES + 1)]),
            "settings.goals[0]"
        );
        assert!(goals(vec!["g".repeat(MAX_GOAL_BYTES); MAX_GOALS]).is_ok());
        // A stored record with goals past today's limits keeps its safety settings.
        let settings = TherapeuticSettings::from_proto(
            "settings",
            &pb::TherapeuticSettings {
                avoid_topics: vec!["drowning".into()],
                goals: vec![String::new(); MAX_GOALS + 1],
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(settings.avoid_topics, ["drowning"]);
    }
}
