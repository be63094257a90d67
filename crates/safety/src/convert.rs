//! Domain ⇄ `tta.v1` conversions for the safety vocabulary, used at the edge of the gateway's
//! `tta.v1.Safety` service and wherever a `SafetyAssessment` goes on the wire. Parsing rejects bad
//! input with a [`FieldViolation`] naming the field.

use std::time::{SystemTime, UNIX_EPOCH};

use tta_proto::v1 as pb;
use tta_types::FieldViolation;

use crate::{
    error::RuleIssue,
    escalation::{EscalationEvent, EscalationReason},
    verdict::{Action, Assessment, Finding, Level, Source},
};

/// Parses a wire content source; UNSPECIFIED and unknown values are refused.
pub fn source_from_proto(field: &str, raw: i32) -> Result<Source, FieldViolation> {
    match pb::ContentSource::try_from(raw) {
        Ok(pb::ContentSource::User) => Ok(Source::User),
        Ok(pb::ContentSource::Agent) => Ok(Source::Agent),
        _ => Err(FieldViolation::new(field, "must be user or agent")),
    }
}

impl From<Source> for pb::ContentSource {
    fn from(source: Source) -> Self {
        match source {
            Source::User => pb::ContentSource::User,
            Source::Agent => pb::ContentSource::Agent,
        }
    }
}

impl From<Level> for pb::SafetyLevel {
    fn from(level: Level) -> Self {
        match level {
            Level::None => pb::SafetyLevel::None,
            Level::Low => pb::SafetyLevel::Low,
            Level::Moderate => pb::SafetyLevel::Moderate,
            Level::High => pb::SafetyLevel::High,
            Level::Critical => pb::SafetyLevel::Critical,
        }
    }
}

impl From<Action> for pb::SafetyAction {
    fn from(action: Action) -> Self {
        match action {
            Action::Allow => pb::SafetyAction::Allow,
            Action::Warn => pb::SafetyAction::Warn,
            Action::Block => pb::SafetyAction::Block,
            Action::Escalate => pb::SafetyAction::Escalate,
        }
    }
}

impl From<EscalationReason> for pb::EscalationReason {
    fn from(reason: EscalationReason) -> Self {
        match reason {
            EscalationReason::Crisis => pb::EscalationReason::Crisis,
            EscalationReason::CriticalContent => pb::EscalationReason::CriticalContent,
            EscalationReason::RepeatedBlocks => pb::EscalationReason::RepeatedBlocks,
            EscalationReason::RepeatedRisk => pb::EscalationReason::RepeatedRisk,
        }
    }
}

fn offset(value: usize) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

impl From<&Finding> for pb::SafetyFinding {
    fn from(finding: &Finding) -> Self {
        pb::SafetyFinding {
            rule_id: finding.rule_id.to_string(),
            category: finding.category.to_string(),
            severity: pb::SafetyLevel::from(finding.severity) as i32,
            start: offset(finding.start),
            end: offset(finding.end),
            excerpt: finding.excerpt.clone(),
            source: pb::ContentSource::from(finding.source) as i32,
        }
    }
}

impl From<&Assessment> for pb::SafetyAssessment {
    fn from(assessment: &Assessment) -> Self {
        pb::SafetyAssessment {
            level: pb::SafetyLevel::from(assessment.level) as i32,
            crisis: assessment.crisis,
            categories: assessment
                .categories
                .iter()
                .map(|c| c.to_string())
                .collect(),
            action: pb::SafetyAction::from(assessment.action) as i32,
            findings: assessment.findings.iter().map(Into::into).collect(),
            rules_version: assessment.rules_version.to_string(),
        }
    }
}

impl From<&RuleIssue> for pb::RuleError {
    fn from(issue: &RuleIssue) -> Self {
        pb::RuleError {
            rule_id: issue.rule_id.clone(),
            path: issue.path.clone(),
            reason: issue.reason.clone(),
        }
    }
}

fn timestamp(at: SystemTime) -> prost_types::Timestamp {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(since.subsec_nanos()).unwrap_or(0),
    }
}

impl From<&EscalationEvent> for pb::EscalationEvent {
    fn from(event: &EscalationEvent) -> Self {
        pb::EscalationEvent {
            id: event.id.clone(),
            session_id: event.session_id.clone(),
            user_id: event.user_id.clone(),
            turn_id: event.turn_id.clone(),
            level: pb::SafetyLevel::from(event.level) as i32,
            categories: event.categories.clone(),
            reason: pb::EscalationReason::from(event.reason) as i32,
            source: pb::ContentSource::from(event.source) as i32,
            excerpt: event.excerpt.clone(),
            time: Some(timestamp(event.time)),
            acked_by: event.acked_by.clone().unwrap_or_default(),
            acked_at: event.acked_at.map(timestamp),
            note: event.note.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SafetyEngine;

    #[test]
    fn an_unspecified_source_is_refused_naming_the_field() {
        assert_eq!(source_from_proto("source", 1), Ok(Source::User));
        assert_eq!(source_from_proto("source", 2), Ok(Source::Agent));
        let err = source_from_proto("items[3].source", 0).unwrap_err();
        assert_eq!(err.to_string(), "items[3].source: must be user or agent");
        assert!(source_from_proto("source", 7).is_err());
    }

    #[test]
    fn an_assessment_keeps_its_contract_fields_and_findings_on_the_wire() {
        let engine = SafetyEngine::builtin().unwrap();
        let assessment = engine.classify("ok so... i want to die", Source::User);
        let wire = pb::SafetyAssessment::from(&assessment);
        assert_eq!(wire.level(), pb::SafetyLevel::Critical);
        assert_eq!(wire.action(), pb::SafetyAction::Escalate);
        assert!(wire.crisis);
        assert_eq!(wire.categories, ["suicide"]);
        let finding = &wire.findings[0];
        assert_eq!(finding.rule_id, "crisis.suicide.ideation");
        assert_eq!(finding.source(), pb::ContentSource::User);
        let text = "ok so... i want to die";
        assert_eq!(
            &text[finding.start as usize..finding.end as usize],
            "want to die"
        );
        assert_eq!(wire.rules_version, engine.version());
    }
}
