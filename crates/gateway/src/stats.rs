//! Rolling per-agent and per-workflow figures for `/diagnostics` (R4.1): p50/p95/average step
//! duration and error rate over the most recent steps of each agent type, and how runs of each
//! workflow ended. Prometheus histograms carry the same data for dashboards; these are the
//! numbers an operator reads at a glance, per gateway replica.

use std::{
    collections::{HashMap, VecDeque},
    sync::{LazyLock, Mutex},
    time::Duration,
};

use serde::Serialize;
use tta_proto::v1 as pb;

/// How many recent steps per agent type the figures cover.
const WINDOW: usize = 1024;

struct AgentWindow {
    recent: VecDeque<(Duration, bool)>,
    /// Failed steps among `recent`, kept as steps come and go so the rate costs nothing.
    recent_errors: usize,
    total: u64,
    errors: u64,
    /// `tta_gateway_agent_error_rate{agent}`: the window's error rate for dashboards and
    /// alerts, set with every step. The handle is taken once, when the agent type first shows.
    error_rate: metrics::Gauge,
}

impl AgentWindow {
    fn new(agent_type: &str) -> AgentWindow {
        AgentWindow {
            recent: VecDeque::with_capacity(WINDOW),
            recent_errors: 0,
            total: 0,
            errors: 0,
            error_rate: metrics::gauge!("tta_gateway_agent_error_rate", "agent" => agent_type.to_owned()),
        }
    }

    fn push(&mut self, elapsed: Duration, failed: bool) {
        if self.recent.len() == WINDOW
            && let Some((_, dropped_failed)) = self.recent.pop_front()
        {
            self.recent_errors -= usize::from(dropped_failed);
        }
        self.recent.push_back((elapsed, failed));
        self.recent_errors += usize::from(failed);
        self.total += 1;
        self.errors += u64::from(failed);
        self.error_rate.set(self.error_rate());
    }

    fn error_rate(&self) -> f64 {
        self.recent_errors as f64 / self.recent.len().max(1) as f64
    }
}

#[derive(Default)]
struct Stats {
    agents: HashMap<String, AgentWindow>,
    /// (workflow, status) → count.
    workflows: HashMap<(String, String), u64>,
}

static STATS: LazyLock<Mutex<Stats>> = LazyLock::new(Mutex::default);

fn with_stats<T>(f: impl FnOnce(&mut Stats) -> T) -> T {
    let mut stats = STATS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    f(&mut stats)
}

/// A step ended; skipped steps are not agent work and are not counted.
pub fn record_step(agent_type: &str, elapsed: Duration, outcome: pb::StepOutcome) {
    if outcome == pb::StepOutcome::Skipped {
        return;
    }
    let failed = !matches!(outcome, pb::StepOutcome::Succeeded);
    with_stats(|stats| {
        if let Some(window) = stats.agents.get_mut(agent_type) {
            window.push(elapsed, failed);
        } else {
            let mut window = AgentWindow::new(agent_type);
            window.push(elapsed, failed);
            stats.agents.insert(agent_type.to_owned(), window);
        }
    });
}

/// A run of `workflow` ended with `status` (`ok`, `degraded`, `crisis`, `failed`).
pub fn record_run(workflow: &str, status: &str) {
    with_stats(|stats| {
        *stats
            .workflows
            .entry((workflow.to_owned(), status.to_owned()))
            .or_default() += 1;
    });
}

#[derive(Debug, Serialize, PartialEq)]
pub struct AgentFigures {
    pub agent_type: String,
    /// Steps counted since start.
    pub steps: u64,
    /// Over the recent window.
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub avg_ms: f64,
    pub error_rate: f64,
    pub errors_total: u64,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct WorkflowFigures {
    pub workflow: String,
    pub status: String,
    pub runs: u64,
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

pub fn agents() -> Vec<AgentFigures> {
    with_stats(|stats| {
        let mut figures: Vec<AgentFigures> = stats
            .agents
            .iter()
            .map(|(agent_type, window)| {
                let mut millis: Vec<f64> = window
                    .recent
                    .iter()
                    .map(|(d, _)| d.as_secs_f64() * 1000.0)
                    .collect();
                millis.sort_by(f64::total_cmp);
                let count = millis.len().max(1) as f64;
                AgentFigures {
                    agent_type: agent_type.clone(),
                    steps: window.total,
                    p50_ms: percentile(&millis, 0.5),
                    p95_ms: percentile(&millis, 0.95),
                    avg_ms: millis.iter().sum::<f64>() / count,
                    error_rate: window.error_rate(),
                    errors_total: window.errors,
                }
            })
            .collect();
        figures.sort_by(|a, b| a.agent_type.cmp(&b.agent_type));
        figures
    })
}

pub fn workflows() -> Vec<WorkflowFigures> {
    with_stats(|stats| {
        let mut figures: Vec<WorkflowFigures> = stats
            .workflows
            .iter()
            .map(|((workflow, status), runs)| WorkflowFigures {
                workflow: workflow.clone(),
                status: status.clone(),
                runs: *runs,
            })
            .collect();
        figures.sort_by(|a, b| (&a.workflow, &a.status).cmp(&(&b.workflow, &b.status)));
        figures
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_error_rate_follow_the_recorded_steps() {
        for ms in 1..=100 {
            record_step(
                "stats-test",
                Duration::from_millis(ms),
                pb::StepOutcome::Succeeded,
            );
        }
        record_step(
            "stats-test",
            Duration::from_millis(500),
            pb::StepOutcome::TimedOut,
        );
        record_step("stats-test", Duration::ZERO, pb::StepOutcome::Skipped);
        let figures = agents();
        let mine = figures
            .iter()
            .find(|f| f.agent_type == "stats-test")
            .unwrap();
        assert_eq!(mine.steps, 101);
        assert_eq!(mine.errors_total, 1);
        assert!((mine.p50_ms - 51.0).abs() <= 1.0, "{mine:?}");
        assert!((mine.p95_ms - 96.0).abs() <= 1.0, "{mine:?}");
        assert!((mine.error_rate - 1.0 / 101.0).abs() < 1e-9);

        record_run("stats-flow", "ok");
        record_run("stats-flow", "ok");
        record_run("stats-flow", "degraded");
        let runs: Vec<(String, u64)> = workflows()
            .into_iter()
            .filter(|f| f.workflow == "stats-flow")
            .map(|f| (f.status, f.runs))
            .collect();
        assert_eq!(runs, [("degraded".to_owned(), 1), ("ok".to_owned(), 2)]);
    }

    #[test]
    fn failures_leave_the_error_rate_as_they_leave_the_window() {
        let rate = || {
            agents()
                .into_iter()
                .find(|f| f.agent_type == "stats-evict")
                .map(|f| f.error_rate)
        };
        for _ in 0..WINDOW {
            record_step("stats-evict", Duration::ZERO, pb::StepOutcome::Failed);
        }
        assert_eq!(rate(), Some(1.0));
        for _ in 0..WINDOW / 4 {
            record_step("stats-evict", Duration::ZERO, pb::StepOutcome::Succeeded);
        }
        assert_eq!(rate(), Some(0.75));
        for _ in 0..WINDOW {
            record_step("stats-evict", Duration::ZERO, pb::StepOutcome::Succeeded);
        }
        assert_eq!(rate(), Some(0.0));
    }
}
