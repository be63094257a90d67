//! The safety metrics, recorded through the `metrics` facade (rendered by each service's
//! `/metrics`). One place names them, so the gateway and the workers report the same series.
//!
//! - `tta_safety_assessments_total{source,level,action}`: every verdict;
//! - `tta_safety_findings_total{source,category}`: categories behind the verdicts;
//! - `tta_safety_blocked_outputs_total{category}`: agent output withheld, by category;
//! - `tta_safety_escalations_total{reason}`: escalation events written;
//! - `tta_safety_regenerations_total{outcome}`: alternatives asked of agents and how it ended;
//! - `tta_safety_rule_reloads_total{outcome}`: rule reloads applied or rejected.

use crate::verdict::{Action, Assessment, Source};

pub fn record_assessment(assessment: &Assessment, source: Source) {
    metrics::counter!(
        "tta_safety_assessments_total",
        "source" => source.as_str(),
        "level" => assessment.level.as_str(),
        "action" => assessment.action.as_str(),
    )
    .increment(1);
    for category in &assessment.categories {
        metrics::counter!(
            "tta_safety_findings_total",
            "source" => source.as_str(),
            "category" => category.to_string(),
        )
        .increment(1);
        if source == Source::Agent && assessment.action == Action::Block {
            metrics::counter!(
                "tta_safety_blocked_outputs_total",
                "category" => category.to_string(),
            )
            .increment(1);
        }
    }
}

pub fn record_escalation(reason: &'static str) {
    metrics::counter!("tta_safety_escalations_total", "reason" => reason).increment(1);
}

pub fn record_regeneration(outcome: &'static str) {
    metrics::counter!("tta_safety_regenerations_total", "outcome" => outcome).increment(1);
}

pub fn record_reload(applied: bool) {
    let outcome = if applied { "applied" } else { "rejected" };
    metrics::counter!("tta_safety_rule_reloads_total", "outcome" => outcome).increment(1);
}
