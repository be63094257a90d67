//! The crisis protocol's reply (R5.4): when a player's input is HIGH or CRITICAL, the turn leaves
//! the story and answers with a caring message and the crisis resources of the player's locale.
//! The words and the numbers live in `deploy/safety/resources.yaml`, so they can be reviewed and
//! corrected without a release.

use std::{collections::BTreeMap, path::Path};

use serde::Deserialize;

use crate::{
    error::{Error, RuleIssue, RuleIssues},
    verdict::{Assessment, Level},
};

/// The resource file that ships with the orchestrator, compiled in.
pub const DEFAULT_RESOURCES: &str = include_str!("../../../deploy/safety/resources.yaml");
const DEFAULT_LOCALE: &str = "default";
const PLACEHOLDER: &str = "{resources}";

/// One place a player can turn to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resource {
    pub name: String,
    /// How to reach it ("call or text 988").
    pub contact: String,
    #[serde(default)]
    pub url: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Messages {
    support: String,
    medical: String,
    danger: String,
    others: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResourcesDoc {
    version: u32,
    messages: Messages,
    fallback_reply: String,
    locales: BTreeMap<String, Vec<Resource>>,
}

/// Which message fits the situation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrisisKind {
    /// Suicide, self-harm, eating disorders, repeated distress.
    Support,
    Medical,
    /// Abuse or immediate danger from someone else.
    Danger,
    /// Thoughts of harming someone else.
    Others,
}

impl CrisisKind {
    /// The most urgent kind among the assessment's categories: a medical emergency needs an
    /// ambulance before anything else.
    pub fn of(assessment: &Assessment) -> Self {
        if assessment.has_category("medical_emergency") {
            CrisisKind::Medical
        } else if assessment.has_category("abuse") || assessment.has_category("immediate_danger") {
            CrisisKind::Danger
        } else if assessment.has_category("harm_to_others") {
            CrisisKind::Others
        } else {
            CrisisKind::Support
        }
    }
}

/// The reply of the crisis protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrisisResponse {
    pub kind: CrisisKind,
    /// The full text shown to the player, resources included.
    pub text: String,
    pub resources: Vec<Resource>,
    /// The locale key whose resources were used (`default` when none matched).
    pub locale: String,
}

/// The crisis messages and resources, by locale.
#[derive(Debug, Clone)]
pub struct CrisisResources {
    messages: Messages,
    fallback_reply: String,
    /// Keyed by lowercase locale.
    locales: BTreeMap<String, (String, Vec<Resource>)>,
}

impl CrisisResources {
    pub fn from_yaml(text: &str) -> Result<Self, Error> {
        let invalid = |path: &str, reason: String| {
            Error::InvalidResources(RuleIssues(vec![RuleIssue::new("", path, reason)]))
        };
        let doc: ResourcesDoc =
            serde_yaml::from_str(text).map_err(|err| invalid("document", err.to_string()))?;
        let mut issues = Vec::new();
        if doc.version != 1 {
            issues.push(RuleIssue::new(
                "",
                "version",
                format!(
                    "unsupported version {}; this build reads version 1",
                    doc.version
                ),
            ));
        }
        for (name, message) in [
            ("support", &doc.messages.support),
            ("medical", &doc.messages.medical),
            ("danger", &doc.messages.danger),
            ("others", &doc.messages.others),
        ] {
            if !message.contains(PLACEHOLDER) {
                issues.push(RuleIssue::new(
                    "",
                    format!("messages.{name}"),
                    format!("must contain {PLACEHOLDER} where the resources go"),
                ));
            }
        }
        if doc.fallback_reply.trim().is_empty() {
            issues.push(RuleIssue::new("", "fallback_reply", "must not be empty"));
        }
        match doc.locales.get(DEFAULT_LOCALE) {
            Some(resources) if !resources.is_empty() => {}
            _ => issues.push(RuleIssue::new(
                "",
                "locales.default",
                "is required and must list at least one resource",
            )),
        }
        for (locale, resources) in &doc.locales {
            for (i, resource) in resources.iter().enumerate() {
                if resource.name.trim().is_empty() || resource.contact.trim().is_empty() {
                    issues.push(RuleIssue::new(
                        "",
                        format!("locales.{locale}[{i}]"),
                        "name and contact must not be empty",
                    ));
                }
            }
        }
        if !issues.is_empty() {
            return Err(Error::InvalidResources(RuleIssues(issues)));
        }
        Ok(Self {
            messages: doc.messages,
            fallback_reply: doc.fallback_reply,
            locales: doc
                .locales
                .into_iter()
                .map(|(locale, resources)| (locale.to_ascii_lowercase(), (locale, resources)))
                .collect(),
        })
    }

    pub fn from_path(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|err| Error::Read {
            path: path.to_owned(),
            reason: err.to_string(),
        })?;
        Self::from_yaml(&text)
    }

    pub fn builtin() -> Result<Self, Error> {
        Self::from_yaml(DEFAULT_RESOURCES)
    }

    /// The safe reply that replaces agent output no alternative could fix.
    pub fn fallback_reply(&self) -> &str {
        &self.fallback_reply
    }

    /// The resources for `locale`: exact tag, then its language, then `default`.
    pub fn resources_for(&self, locale: &str) -> (&str, &[Resource]) {
        let wanted = locale.trim().to_ascii_lowercase();
        let language = wanted.split('-').next().unwrap_or_default().to_owned();
        for key in [wanted.as_str(), language.as_str(), DEFAULT_LOCALE] {
            if let Some((name, resources)) = self.locales.get(key) {
                return (name, resources);
            }
        }
        ("default", &[])
    }

    /// The crisis reply for a player's input, or `None` when the input does not call for one
    /// (below HIGH and no crisis).
    pub fn response(&self, assessment: &Assessment, locale: &str) -> Option<CrisisResponse> {
        if !assessment.crisis && assessment.level < Level::High {
            return None;
        }
        let kind = CrisisKind::of(assessment);
        let template = match kind {
            CrisisKind::Support => &self.messages.support,
            CrisisKind::Medical => &self.messages.medical,
            CrisisKind::Danger => &self.messages.danger,
            CrisisKind::Others => &self.messages.others,
        };
        let (locale, resources) = self.resources_for(locale);
        let list = resources
            .iter()
            .map(|resource| match &resource.url {
                Some(url) => format!("- {}: {} ({url})", resource.name, resource.contact),
                None => format!("- {}: {}", resource.name, resource.contact),
            })
            .collect::<Vec<_>>()
            .join("\n");
        Some(CrisisResponse {
            kind,
            text: template.replace(PLACEHOLDER, &list),
            resources: resources.to_vec(),
            locale: locale.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SafetyEngine, Source};

    fn crisis(text: &str) -> Assessment {
        SafetyEngine::builtin()
            .unwrap()
            .classify(text, Source::User)
    }

    #[test]
    fn us_players_get_988_and_british_players_samaritans() {
        let resources = CrisisResources::builtin().unwrap();
        let assessment = crisis("i want to kill myself");
        let us = resources.response(&assessment, "en-US").unwrap();
        assert_eq!(us.kind, CrisisKind::Support);
        assert!(us.text.contains("call or text 988"), "{}", us.text);
        assert!(!us.text.contains(PLACEHOLDER));
        let gb = resources.response(&assessment, "en-gb").unwrap();
        assert_eq!(gb.locale, "en-GB");
        assert!(gb.text.contains("116 123"), "{}", gb.text);
    }

    #[test]
    fn an_unknown_locale_falls_back_to_the_international_list() {
        let resources = CrisisResources::builtin().unwrap();
        let response = resources
            .response(&crisis("i want to kill myself"), "pt-BR")
            .unwrap();
        assert_eq!(response.locale, "default");
        assert!(response.text.contains("findahelpline.com"));
        assert!(response.text.contains("local emergency number"));
        // A language with only a national entry does not hand out another country's number.
        assert_eq!(resources.resources_for("de-CH").0, "default");
        assert_eq!(resources.resources_for("de-DE").0, "de-DE");
    }

    #[test]
    fn the_message_fits_the_situation() {
        let resources = CrisisResources::builtin().unwrap();
        let medical = resources
            .response(&crisis("i took 30 pills"), "en-US")
            .unwrap();
        assert_eq!(medical.kind, CrisisKind::Medical);
        assert!(medical.text.contains("medical emergency"));
        let danger = resources
            .response(&crisis("my dad hits me"), "en-US")
            .unwrap();
        assert_eq!(danger.kind, CrisisKind::Danger);
        assert!(danger.text.contains("not your fault"));
    }

    #[test]
    fn no_crisis_response_for_ordinary_input() {
        let resources = CrisisResources::builtin().unwrap();
        assert!(
            resources
                .response(&crisis("I open the chest"), "en-US")
                .is_none()
        );
    }

    #[test]
    fn a_resource_file_without_placeholder_or_default_is_rejected_by_path() {
        let text = DEFAULT_RESOURCES
            .replace(
                "{resources}\n    If you're in danger",
                "If you're in danger",
            )
            .replace("  default:\n", "  xx-XX:\n");
        let err = CrisisResources::from_yaml(&text).unwrap_err();
        let paths: Vec<&str> = err.rule_issues().iter().map(|i| i.path.as_str()).collect();
        assert_eq!(paths, ["messages.support", "locales.default"]);
    }
}
