//! What a worker reports about its own work with each heartbeat: tasks in flight, outcome
//! counters, recent latencies and a load figure. The gateway sends capability-routed steps to
//! the least-loaded instance and shows the rest in diagnostics, so these must be cheap enough to
//! keep on every task (atomics and one short lock) and computed only when a beat goes out.
//!
//! Time is always passed in, never read here, so tests can place tasks anywhere in the window.

use std::{
    collections::VecDeque,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tta_proto::v1 as pb;

/// The recent window holds at most this many tasks...
pub const WINDOW_TASKS: usize = 1000;
/// ...finished no longer ago than this (`AgentStats`: "the last 5 minutes or 1000 tasks").
pub const WINDOW_AGE: Duration = Duration::from_secs(5 * 60);

/// How one task run ended, as the registry counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    /// The engine failed, retryably or not.
    Failed,
    /// The engine gave no output within the task timeout.
    TimedOut,
}

#[derive(Debug, Clone, Copy)]
struct Finished {
    at: Instant,
    duration: Duration,
    error: bool,
}

/// The figures of one worker, shared by its task handlers and its heartbeat.
#[derive(Debug, Default)]
pub struct TaskStats {
    in_flight: AtomicU32,
    succeeded: AtomicU64,
    failed: AtomicU64,
    timed_out: AtomicU64,
    /// Summed run time of every finished task, for the load between two beats.
    busy_nanos: AtomicU64,
    recent: Mutex<VecDeque<Finished>>,
}

/// Counts a task as in flight until dropped, so every way out of a handler — an early
/// return, an error, a cancelled future — gives the slot back.
#[derive(Debug)]
#[must_use = "the task stops counting as in flight when this is dropped"]
pub struct InFlight<'a> {
    stats: &'a TaskStats,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The figures at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub in_flight: u32,
    /// Summed run time of every task finished so far.
    pub busy: Duration,
    pub stats: pb::AgentStats,
}

impl TaskStats {
    /// Marks a task as running until the returned guard is dropped.
    pub fn start(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight { stats: self }
    }

    /// Records a finished task that ran for `duration` and ended at `finished_at`.
    pub fn record(&self, outcome: Outcome, duration: Duration, finished_at: Instant) {
        let counter = match outcome {
            Outcome::Succeeded => &self.succeeded,
            Outcome::Failed => &self.failed,
            Outcome::TimedOut => &self.timed_out,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        self.busy_nanos.fetch_add(nanos, Ordering::Relaxed);
        let finished = Finished {
            at: finished_at,
            duration,
            error: outcome != Outcome::Succeeded,
        };
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        if recent.len() >= WINDOW_TASKS {
            recent.pop_front();
        }
        recent.push_back(finished);
    }

    /// The figures as of `now`; tasks that finished more than [`WINDOW_AGE`] before it leave
    /// the window for good.
    pub fn snapshot(&self, now: Instant) -> Snapshot {
        let (mut durations, errors): (Vec<Duration>, usize) = {
            let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
            recent.retain(|task| now.saturating_duration_since(task.at) <= WINDOW_AGE);
            (
                recent.iter().map(|task| task.duration).collect(),
                recent.iter().filter(|task| task.error).count(),
            )
        };
        // Sorted outside the lock: handlers finishing meanwhile must not wait for it.
        durations.sort_unstable();
        let latency = |value: Option<Duration>| value.and_then(|d| d.try_into().ok());
        let stats = pb::AgentStats {
            tasks_succeeded: self.succeeded.load(Ordering::Relaxed),
            tasks_failed: self.failed.load(Ordering::Relaxed),
            tasks_timed_out: self.timed_out.load(Ordering::Relaxed),
            latency_p50: latency(percentile(&durations, 50)),
            latency_p95: latency(percentile(&durations, 95)),
            latency_avg: latency(mean(&durations)),
            error_rate: if durations.is_empty() {
                0.0
            } else {
                errors as f64 / durations.len() as f64
            },
        };
        Snapshot {
            in_flight: self.in_flight.load(Ordering::Relaxed),
            busy: Duration::from_nanos(self.busy_nanos.load(Ordering::Relaxed)),
            stats,
        }
    }
}

/// The nearest-rank percentile of ascending `sorted`; `None` when it is empty.
fn percentile(sorted: &[Duration], percent: usize) -> Option<Duration> {
    let rank = (sorted.len() * percent).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

fn mean(durations: &[Duration]) -> Option<Duration> {
    let count = u32::try_from(durations.len()).ok().filter(|n| *n > 0)?;
    Some(durations.iter().sum::<Duration>() / count)
}

/// Turns the busy time between two beats into the registry's `load`: the share of the
/// worker's slots that were busy, on average, since the previous beat. An average rather than
/// a sample of in-flight tasks, so one beat landing in a lull or a burst does not swing the
/// gateway's choice of instance.
#[derive(Debug, Clone)]
pub struct LoadMeter {
    max_in_flight: u32,
    since: Instant,
    busy_before: Duration,
    last: f64,
}

impl LoadMeter {
    pub fn new(max_in_flight: u32, now: Instant) -> LoadMeter {
        LoadMeter {
            max_in_flight,
            since: now,
            busy_before: Duration::ZERO,
            last: 0.0,
        }
    }

    /// The load since the previous reading, 0.0 to 1.0, given the worker's summed `busy` time
    /// as of `now`.
    pub fn load(&mut self, busy: Duration, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.since);
        // Two beats at the same instant measure nothing; the previous figure still holds.
        if elapsed.is_zero() {
            return self.last;
        }
        let worked = busy.saturating_sub(self.busy_before);
        let capacity = elapsed.as_secs_f64() * f64::from(self.max_in_flight);
        // A task is counted whole when it finishes, so a long one can push a short
        // interval past full.
        self.last = if capacity > 0.0 {
            (worked.as_secs_f64() / capacity).clamp(0.0, 1.0)
        } else {
            0.0
        };
        self.since = now;
        self.busy_before = busy;
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    fn seconds(duration: Option<prost_types::Duration>) -> f64 {
        let duration = duration.unwrap();
        duration.seconds as f64 + f64::from(duration.nanos) / 1e9
    }

    #[test]
    fn each_outcome_has_its_own_cumulative_counter() {
        let stats = TaskStats::default();
        let now = Instant::now();
        stats.record(Outcome::Succeeded, ms(10), now);
        stats.record(Outcome::Succeeded, ms(10), now);
        stats.record(Outcome::Failed, ms(10), now);
        stats.record(Outcome::TimedOut, ms(10), now);
        stats.record(Outcome::TimedOut, ms(10), now);
        stats.record(Outcome::TimedOut, ms(10), now);

        let snapshot = stats.snapshot(now);
        assert_eq!(snapshot.stats.tasks_succeeded, 2);
        assert_eq!(snapshot.stats.tasks_failed, 1);
        assert_eq!(snapshot.stats.tasks_timed_out, 3);
        assert_eq!(snapshot.busy, ms(60));
    }

    #[test]
    fn a_task_is_in_flight_until_its_guard_is_dropped() {
        let stats = TaskStats::default();
        let first = stats.start();
        let second = stats.start();
        assert_eq!(stats.snapshot(Instant::now()).in_flight, 2);
        drop(first);
        assert_eq!(stats.snapshot(Instant::now()).in_flight, 1);
        drop(second);
        assert_eq!(stats.snapshot(Instant::now()).in_flight, 0);
    }

    #[test]
    fn the_window_keeps_the_last_thousand_tasks() {
        let stats = TaskStats::default();
        let now = Instant::now();
        // 200 slow failures first, then 1000 fast successes that push them all out.
        for _ in 0..200 {
            stats.record(Outcome::Failed, ms(900), now);
        }
        for _ in 0..WINDOW_TASKS {
            stats.record(Outcome::Succeeded, ms(5), now);
        }
        let snapshot = stats.snapshot(now);
        assert_eq!(snapshot.stats.error_rate, 0.0);
        assert_eq!(seconds(snapshot.stats.latency_p95), 0.005);
        // The counters are cumulative; only the window forgets.
        assert_eq!(snapshot.stats.tasks_failed, 200);
        assert_eq!(stats.recent.lock().unwrap().len(), WINDOW_TASKS);
    }

    #[test]
    fn tasks_older_than_five_minutes_leave_the_window() {
        let stats = TaskStats::default();
        let start = Instant::now();
        stats.record(Outcome::Failed, ms(800), start);
        stats.record(Outcome::Succeeded, ms(20), start + Duration::from_secs(60));

        let within = stats.snapshot(start + WINDOW_AGE);
        assert_eq!(within.stats.error_rate, 0.5);

        let later = stats.snapshot(start + WINDOW_AGE + ms(1));
        assert_eq!(later.stats.error_rate, 0.0);
        assert_eq!(seconds(later.stats.latency_p50), 0.02);
        assert_eq!(seconds(later.stats.latency_p95), 0.02);

        let all_gone = stats.snapshot(start + Duration::from_secs(60) + WINDOW_AGE + ms(1));
        assert_eq!(all_gone.stats.latency_p50, None);
        assert_eq!(all_gone.stats.latency_avg, None);
        assert_eq!(all_gone.stats.error_rate, 0.0);
        assert_eq!(all_gone.stats.tasks_succeeded, 1);
    }

    #[test]
    fn percentiles_mean_and_error_rate_of_a_known_set() {
        let stats = TaskStats::default();
        let now = Instant::now();
        // 1 ms to 100 ms, recorded out of order; every tenth one failed or timed out.
        for millis in (1..=100).rev() {
            let outcome = match millis % 20 {
                0 => Outcome::Failed,
                10 => Outcome::TimedOut,
                _ => Outcome::Succeeded,
            };
            stats.record(outcome, ms(millis), now);
        }
        let snapshot = stats.snapshot(now);
        assert_eq!(seconds(snapshot.stats.latency_p50), 0.05);
        assert_eq!(seconds(snapshot.stats.latency_p95), 0.095);
        assert_eq!(seconds(snapshot.stats.latency_avg), 0.0505);
        assert_eq!(snapshot.stats.error_rate, 0.1);
    }

    #[test]
    fn load_is_the_busy_share_of_every_slot_since_the_previous_reading() {
        let start = Instant::now();
        let mut meter = LoadMeter::new(4, start);
        // 10 s with 4 slots is 40 slot-seconds; 10 of them were busy.
        assert_eq!(
            meter.load(Duration::from_secs(10), start + Duration::from_secs(10)),
            0.25
        );
        // Only what finished since the previous reading counts: 2 of 4 slot-seconds.
        assert_eq!(
            meter.load(Duration::from_secs(12), start + Duration::from_secs(11)),
            0.5
        );
        // An idle second.
        assert_eq!(
            meter.load(Duration::from_secs(12), start + Duration::from_secs(12)),
            0.0
        );
        // A long task finishing in a short interval is capped at saturated.
        assert_eq!(
            meter.load(Duration::from_secs(100), start + Duration::from_secs(13)),
            1.0
        );
        // No time passed: the previous figure holds.
        assert_eq!(
            meter.load(Duration::from_secs(200), start + Duration::from_secs(13)),
            1.0
        );
    }

    #[test]
    fn a_worker_without_slots_reports_no_load() {
        let start = Instant::now();
        let mut meter = LoadMeter::new(0, start);
        assert_eq!(
            meter.load(Duration::from_secs(5), start + Duration::from_secs(1)),
            0.0
        );
    }
}
