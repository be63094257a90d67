//! Usage analytics per tool version (calls, errors, latency percentiles) and the
//! recommendations derived from them (R4.5): promote hot dynamic tools, prune dead ones, adjust
//! timeouts, investigate errors, tune the cache.

use std::time::Duration;

use tta_proto::v1 as pb;

use crate::{
    spec::{self, ToolSpec},
    store::Usage,
};

/// Invocations after which a dynamic tool is worth promoting to a built-in one.
pub const PROMOTE_AFTER: u64 = 1000;
/// Smallest sample for error and timeout rates to mean something.
const MIN_SAMPLE: u64 = 20;

pub fn percentile_us(latencies: &[u64], quantile: f64) -> u64 {
    if latencies.is_empty() {
        return 0;
    }
    let mut sorted = latencies.to_vec();
    sorted.sort_unstable();
    let rank = ((quantile * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn duration_us(micros: u64) -> Option<prost_types::Duration> {
    prost_types::Duration::try_from(Duration::from_micros(micros)).ok()
}

pub fn stats(spec: &ToolSpec, usage: &Usage, last_used_ms: Option<u64>) -> pb::ToolUsageStats {
    let mean = if usage.latencies_us.is_empty() {
        0
    } else {
        usage.latencies_us.iter().sum::<u64>() / usage.latencies_us.len() as u64
    };
    pb::ToolUsageStats {
        name: spec.name.clone(),
        version: spec.version.clone(),
        invocations: usage.invocations,
        successes: usage.successes,
        failures: usage.failures,
        timeouts: usage.timeouts,
        policy_denials: usage.denials,
        error_rate: error_rate(usage),
        latency_p50: duration_us(percentile_us(&usage.latencies_us, 0.5)),
        latency_p95: duration_us(percentile_us(&usage.latencies_us, 0.95)),
        latency_avg: duration_us(mean),
        last_used_at: last_used_ms.map(spec::timestamp),
    }
}

fn error_rate(usage: &Usage) -> f64 {
    if usage.invocations == 0 {
        0.0
    } else {
        (usage.failures + usage.timeouts) as f64 / usage.invocations as f64
    }
}

/// Recommendations for one tool version.
pub fn recommend(
    spec: &ToolSpec,
    usage: &Usage,
    idle: Duration,
    max_idle: Duration,
) -> Vec<pb::ToolRecommendation> {
    let mut out = Vec::new();
    let mut push = |kind: pb::ToolRecommendationKind, message: String| {
        out.push(pb::ToolRecommendation {
            kind: kind as i32,
            name: spec.name.clone(),
            version: spec.version.clone(),
            message,
        });
    };
    if !spec.is_builtin() && usage.invocations >= PROMOTE_AFTER {
        push(
            pb::ToolRecommendationKind::PromoteToStatic,
            format!(
                "invoked {} times with an error rate of {:.1}%; make it a built-in tool",
                usage.invocations,
                error_rate(usage) * 100.0
            ),
        );
    }
    if !spec.is_builtin() && usage.invocations == 0 && idle >= max_idle / 2 {
        push(
            pb::ToolRecommendationKind::DeprecateUnused,
            format!(
                "never invoked and unused for {}",
                humantime::format_duration(Duration::from_secs(idle.as_secs()))
            ),
        );
    }
    if usage.invocations >= MIN_SAMPLE && usage.timeouts * 10 >= usage.invocations {
        push(
            pb::ToolRecommendationKind::AdjustTimeout,
            format!(
                "{} of {} invocations timed out (p95 {} ms)",
                usage.timeouts,
                usage.invocations,
                percentile_us(&usage.latencies_us, 0.95) / 1000
            ),
        );
    }
    if usage.invocations >= MIN_SAMPLE && usage.failures * 5 >= usage.invocations {
        push(
            pb::ToolRecommendationKind::InvestigateErrors,
            format!(
                "{} of {} invocations failed",
                usage.failures, usage.invocations
            ),
        );
    }
    out
}

/// A registry-wide cache recommendation, when lookups miss too often.
pub fn recommend_cache(hits: u64, misses: u64, expired_hot: u64) -> Option<pb::ToolRecommendation> {
    let lookups = hits + misses;
    if lookups < 100 || hits * 2 >= lookups {
        return None;
    }
    Some(pb::ToolRecommendation {
        kind: pb::ToolRecommendationKind::AdjustCache as i32,
        name: String::new(),
        version: String::new(),
        message: format!(
            "cache hit rate {:.1}% over {lookups} lookups ({expired_hot} expired while in use); raise tools.cache_ttl or tools.cache_max_items",
            hits as f64 * 100.0 / lookups as f64
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Owner, Safety, Status};

    fn spec(owned: bool) -> ToolSpec {
        ToolSpec {
            name: "t".into(),
            version: "1.0.0".into(),
            description: "d".into(),
            parameters_schema: "{}".into(),
            returns_schema: String::new(),
            capabilities: vec![],
            safety: Safety::default(),
            owner: owned.then(|| Owner {
                agent_type: "wba".into(),
                instance: "w1".into(),
            }),
            examples: vec![],
            timeout_ms: None,
            signature: "s".into(),
            created_at_ms: 0,
            status: Status::Active,
            deprecation_reason: String::new(),
        }
    }

    fn kinds(recs: &[pb::ToolRecommendation]) -> Vec<i32> {
        recs.iter().map(|r| r.kind).collect()
    }

    #[test]
    fn hot_dynamic_tools_are_promoted_and_dead_ones_pruned() {
        let hot = Usage {
            invocations: 1500,
            successes: 1500,
            ..Default::default()
        };
        let day = Duration::from_secs(86_400);
        let recs = recommend(&spec(true), &hot, Duration::ZERO, day);
        assert_eq!(
            kinds(&recs),
            vec![pb::ToolRecommendationKind::PromoteToStatic as i32]
        );
        assert!(recommend(&spec(false), &hot, Duration::ZERO, day).is_empty());
        let recs = recommend(&spec(true), &Usage::default(), day, day);
        assert_eq!(
            kinds(&recs),
            vec![pb::ToolRecommendationKind::DeprecateUnused as i32]
        );
    }

    #[test]
    fn timeouts_and_failures_are_flagged() {
        let usage = Usage {
            invocations: 40,
            successes: 20,
            failures: 10,
            timeouts: 10,
            ..Default::default()
        };
        let recs = recommend(&spec(true), &usage, Duration::ZERO, Duration::from_secs(60));
        assert_eq!(
            kinds(&recs),
            vec![
                pb::ToolRecommendationKind::AdjustTimeout as i32,
                pb::ToolRecommendationKind::InvestigateErrors as i32
            ]
        );
        assert_eq!(stats(&spec(true), &usage, None).error_rate, 0.5);
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile_us(&values, 0.95), 95);
        assert_eq!(percentile_us(&[], 0.5), 0);
        assert!(recommend_cache(10, 190, 5).is_some());
        assert!(recommend_cache(190, 10, 0).is_none());
    }
}
