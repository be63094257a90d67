//! The classifier: one compiled rule set applied to one text. Pure and synchronous (no I/O, no
//! locks), so it can run inline on any thread in microseconds; session memory and escalation are
//! layered on top by the caller (`session`, `escalation`).

use std::{path::Path, sync::Arc};

use crate::{
    error::Error,
    metrics,
    normalize::Normalized,
    rules::{self, RuleSet, document::ThresholdsDoc, matcher::RawMatch},
    settings::{Intensity, SessionPolicy, TherapeuticSettings},
    verdict::{
        Action, Assessment, Finding, Level, MAX_EXCERPT_BYTES, Source, truncate_on_char_boundary,
    },
};

/// The rule set that ships with the orchestrator (`deploy/safety/rules.yaml`), compiled in so
/// the classifier works without any file on disk.
pub const DEFAULT_RULES: &str = include_str!("../../../deploy/safety/rules.yaml");

/// Most findings kept per verdict: enough to explain it, bounded for hostile input.
const MAX_FINDINGS: usize = 32;
/// Category and severity of a finding for an avoided topic.
const AVOIDED_TOPIC: &str = "avoided_topic";

/// A compiled rule set, ready to judge texts.
#[derive(Debug, Clone)]
pub struct SafetyEngine {
    rules: RuleSet,
    default_policy: SessionPolicy,
    avoided_topic: Arc<str>,
}

impl SafetyEngine {
    /// Compiles a rule document; every problem is reported with its rule id and reason.
    pub fn from_yaml(text: &str) -> Result<Self, Error> {
        let rules = rules::load(text)?;
        let default_policy = SessionPolicy {
            rules_version: Arc::clone(&rules.version),
            ..SessionPolicy::default()
        };
        Ok(Self {
            rules,
            default_policy,
            avoided_topic: AVOIDED_TOPIC.into(),
        })
    }

    pub fn from_path(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|err| Error::Read {
            path: path.to_owned(),
            reason: err.to_string(),
        })?;
        Self::from_yaml(&text)
    }

    /// The shipped default rule set.
    pub fn builtin() -> Result<Self, Error> {
        Self::from_yaml(DEFAULT_RULES)
    }

    /// Content hash of the rule document.
    pub fn version(&self) -> &str {
        &self.rules.version
    }

    pub fn rule_count(&self) -> usize {
        self.rules.rules.len()
    }

    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    /// Compiles a session's settings against this rule set.
    pub fn policy(&self, settings: &TherapeuticSettings) -> SessionPolicy {
        SessionPolicy::compile(
            settings,
            &self.rules.topics,
            Arc::clone(&self.rules.version),
        )
    }

    /// Judges `text` with default settings (low intensity, no avoided topics).
    pub fn classify(&self, text: &str, source: Source) -> Assessment {
        self.assess(text, source, &self.default_policy)
    }

    /// Judges `text` under a session's settings.
    pub fn assess(&self, text: &str, source: Source, policy: &SessionPolicy) -> Assessment {
        // Most texts match nothing: normalise without the offset map first, and build it only
        // when there is a span to map back (same text, so the same matches).
        let mut normalized = Normalized::text_only(text);
        let mut raw = Vec::new();
        self.rules
            .matcher(source)
            .find(normalized.as_str(), &mut raw);
        let topics = (source == Source::Agent)
            .then_some(policy.topics.as_ref())
            .flatten();
        let topic_hit = topics.is_some_and(|t| t.matcher.any_raw(normalized.as_str()));
        if !raw.is_empty() || topic_hit {
            normalized = Normalized::new(text);
        }
        let mut rule_verdict = RuleVerdict::default();
        let mut findings = self.findings(text, &normalized, source, &mut raw, &mut rule_verdict);
        if source == Source::Agent {
            self.topic_findings(text, &normalized, policy, &mut findings, &mut rule_verdict);
        }
        let assessment = self.verdict(findings, rule_verdict, source, policy.intensity);
        metrics::record_assessment(&assessment, source);
        assessment
    }

    /// Rule matches that survive their exceptions, mapped to the original text. Of several
    /// matches of one rule that overlap, the longest is kept.
    fn findings(
        &self,
        text: &str,
        normalized: &Normalized,
        source: Source,
        raw: &mut [RawMatch],
        rule_verdict: &mut RuleVerdict,
    ) -> Vec<Finding> {
        if raw.is_empty() {
            return Vec::new();
        }
        raw.sort_by_key(|m| (m.rule, m.start, std::cmp::Reverse(m.end)));
        let mut findings = Vec::new();
        let mut last: Option<RawMatch> = None;
        for m in raw.iter().copied() {
            if last.is_some_and(|l| l.rule == m.rule && m.start < l.end) {
                continue;
            }
            let Some(rule) = self.rules.rules.get(m.rule) else {
                continue;
            };
            let cancelled = rule
                .exceptions
                .iter()
                .any(|window| window.cancels(normalized.as_str(), m.start, m.end));
            if cancelled {
                continue;
            }
            last = Some(m);
            rule_verdict.crisis |= rule.crisis && source == Source::User;
            rule_verdict.action = rule_verdict.action.max(rule.action);
            let span = normalized.original_span(m.start..m.end);
            let excerpt = if rule.sensitive {
                "***".to_owned()
            } else {
                truncate_on_char_boundary(&text[span.clone()], MAX_EXCERPT_BYTES).to_owned()
            };
            findings.push(Finding {
                rule_id: Arc::clone(&rule.id),
                category: Arc::clone(&rule.category),
                severity: rule.severity,
                start: span.start,
                end: span.end,
                excerpt,
                source,
                constraint: rule.constraint.clone(),
            });
        }
        findings
    }

    fn topic_findings(
        &self,
        text: &str,
        normalized: &Normalized,
        policy: &SessionPolicy,
        findings: &mut Vec<Finding>,
        rule_verdict: &mut RuleVerdict,
    ) {
        let Some(topics) = &policy.topics else {
            return;
        };
        let mut raw = Vec::new();
        topics.matcher.find(normalized.as_str(), &mut raw);
        raw.sort_by_key(|m| (m.rule, m.start));
        raw.dedup_by_key(|m| m.rule);
        for m in raw {
            let (Some(name), Some(constraint)) =
                (topics.names.get(m.rule), topics.constraints.get(m.rule))
            else {
                continue;
            };
            let span = normalized.original_span(m.start..m.end);
            rule_verdict.action = rule_verdict.action.max(Action::Block);
            findings.push(Finding {
                rule_id: format!("topic.{name}").into(),
                category: Arc::clone(&self.avoided_topic),
                severity: Level::High,
                start: span.start,
                end: span.end,
                excerpt: truncate_on_char_boundary(&text[span], MAX_EXCERPT_BYTES).to_owned(),
                source: Source::Agent,
                constraint: Some(Arc::clone(constraint)),
            });
        }
    }

    /// Level, crisis flag, categories and action from all findings; then the findings are
    /// ordered and bounded for the report.
    fn verdict(
        &self,
        mut findings: Vec<Finding>,
        rule_verdict: RuleVerdict,
        source: Source,
        intensity: Intensity,
    ) -> Assessment {
        let mut level = Level::None;
        let RuleVerdict { crisis, mut action } = rule_verdict;
        let mut categories: Vec<Arc<str>> = Vec::new();
        for finding in &findings {
            level = level.max(finding.severity);
            if !categories.contains(&finding.category) {
                categories.push(Arc::clone(&finding.category));
            }
        }
        categories.sort();
        findings.sort_by_key(|finding| (finding.start, finding.end));
        findings.truncate(MAX_FINDINGS);
        let thresholds = self.thresholds(source, intensity);
        action = action.max(threshold_action(level, thresholds));
        if source == Source::Agent && action == Action::Escalate {
            // An agent cannot be in crisis; what it wrote is withheld instead.
            action = Action::Block;
        }
        if source == Source::User && action == Action::Block {
            // A player's words are never withheld from the story's judgement; they are warned.
            action = Action::Warn;
        }
        Assessment {
            level,
            crisis,
            categories,
            action,
            findings,
            rules_version: Arc::clone(&self.rules.version),
            raised_by_session: false,
        }
    }

    fn thresholds(&self, source: Source, intensity: Intensity) -> &ThresholdsDoc {
        let policy = &self.rules.policy;
        match (source, intensity) {
            (Source::User, _) => &policy.user,
            (Source::Agent, Intensity::Low) => &policy.agent.low,
            (Source::Agent, Intensity::Medium) => &policy.agent.medium,
            (Source::Agent, Intensity::High) => &policy.agent.high,
        }
    }
}

/// What the matched rules themselves ask for, before thresholds.
#[derive(Debug, Default)]
struct RuleVerdict {
    crisis: bool,
    action: Action,
}

fn threshold_action(level: Level, thresholds: &ThresholdsDoc) -> Action {
    if level == Level::None {
        return Action::Allow;
    }
    if thresholds
        .block_at
        .is_some_and(|block_at| level >= block_at)
    {
        Action::Block
    } else if level >= thresholds.warn_at {
        Action::Warn
    } else {
        Action::Allow
    }
}
