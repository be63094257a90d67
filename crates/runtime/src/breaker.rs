//! A circuit breaker in front of something that fails slowly: a language model endpoint (in the
//! agent workers) or an agent type (in the gateway, R6.1).
//!
//! A dependency that is down costs every caller its whole time budget before the fallback
//! answers. After `failure_threshold` failed calls in a row the breaker opens: for `open_for` no
//! call is made and callers go straight to their fallback. Then it is half-open: one call (the
//! probe) goes through while the others still fall back; the probe's success closes the
//! breaker, its failure opens it for another `open_for`.
//!
//! The state machine takes the time as an argument, so it is tested without clocks.

use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

/// The breaker's state as exported in its gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    HalfOpen,
    Open,
}

impl CircuitState {
    /// The gauge value: 0 closed, 1 half-open, 2 open.
    pub fn gauge(self) -> f64 {
        match self {
            CircuitState::Closed => 0.0,
            CircuitState::HalfOpen => 1.0,
            CircuitState::Open => 2.0,
        }
    }
}

#[derive(Debug)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

/// Where a breaker reports its state: the gauge's name and the value of its `agent` label.
#[derive(Debug, Clone)]
pub struct BreakerName {
    pub gauge: &'static str,
    pub agent: String,
}

#[derive(Debug)]
struct Inner {
    state: State,
    failure_threshold: u32,
    open_for: Duration,
    name: BreakerName,
}

/// One breaker per protected dependency; cheap to clone.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    inner: Arc<Mutex<Inner>>,
}

/// Permission for one call. Report how it went with [`Permit::succeeded`] or
/// [`Permit::failed`]; a permit dropped without a report (the task was cancelled mid-call)
/// counts as a failure, so a half-open breaker never waits forever for a lost probe.
#[derive(Debug)]
pub struct Permit {
    breaker: CircuitBreaker,
    reported: bool,
}

impl Permit {
    pub fn succeeded(self) {
        self.finish(true, Instant::now());
    }

    pub fn failed(self) {
        self.finish(false, Instant::now());
    }

    /// Reports nothing: the call's silence cannot be laid at this breaker's door (it covered
    /// the work of others too). Only for a permit of a closed breaker, which probes nothing.
    pub fn abstain(mut self) {
        self.reported = true;
    }

    fn finish(mut self, success: bool, now: Instant) {
        self.reported = true;
        self.breaker.record(success, now);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.reported {
            self.breaker.record(false, Instant::now());
        }
    }
}

impl CircuitBreaker {
    /// A closed breaker reporting to `name`.
    pub fn new(name: BreakerName, failure_threshold: u32, open_for: Duration) -> CircuitBreaker {
        let breaker = CircuitBreaker {
            inner: Arc::new(Mutex::new(Inner {
                state: State::Closed { failures: 0 },
                failure_threshold: failure_threshold.max(1),
                open_for,
                name,
            })),
        };
        breaker.publish(CircuitState::Closed);
        breaker
    }

    /// A permit for one call now, or `None` while the breaker is open (or half-open with its
    /// probe already out).
    pub fn try_acquire(&self) -> Option<Permit> {
        self.try_acquire_at(Instant::now())
    }

    fn try_acquire_at(&self, now: Instant) -> Option<Permit> {
        let mut inner = self.lock();
        let allowed = match inner.state {
            State::Closed { .. } => true,
            State::Open { until } if now >= until => {
                inner.state = State::HalfOpen { probing: true };
                drop(inner);
                tracing::info!(
                    breaker = %self.name().gauge,
                    agent = %self.name().agent,
                    "circuit half-open; sending a probe"
                );
                self.publish(CircuitState::HalfOpen);
                return Some(self.permit());
            }
            State::Open { .. } => false,
            State::HalfOpen { probing: true } => false,
            State::HalfOpen { probing: false } => {
                inner.state = State::HalfOpen { probing: true };
                true
            }
        };
        drop(inner);
        allowed.then(|| self.permit())
    }

    /// The state as of now.
    pub fn state(&self) -> CircuitState {
        match self.lock().state {
            State::Closed { .. } => CircuitState::Closed,
            State::HalfOpen { .. } => CircuitState::HalfOpen,
            State::Open { .. } => CircuitState::Open,
        }
    }

    fn permit(&self) -> Permit {
        Permit {
            breaker: self.clone(),
            reported: false,
        }
    }

    fn record(&self, success: bool, now: Instant) {
        let mut inner = self.lock();
        let before = state_of(&inner.state);
        inner.state = match (&inner.state, success) {
            (_, true) => State::Closed { failures: 0 },
            (State::Closed { failures }, false) if failures + 1 < inner.failure_threshold => {
                State::Closed {
                    failures: failures + 1,
                }
            }
            // A failure at the threshold, a failed probe, or a late failure of a call that
            // started before the breaker opened: (re)open from now.
            (_, false) => State::Open {
                until: now + inner.open_for,
            },
        };
        let after = state_of(&inner.state);
        let (name, open_for) = (inner.name.clone(), inner.open_for);
        drop(inner);
        if before != after {
            match after {
                CircuitState::Open => tracing::warn!(
                    breaker = name.gauge,
                    agent = %name.agent,
                    open_for_ms = open_for.as_millis() as u64,
                    "circuit open; callers fall back meanwhile"
                ),
                CircuitState::Closed => {
                    tracing::info!(breaker = name.gauge, agent = %name.agent, "circuit closed")
                }
                CircuitState::HalfOpen => {}
            }
            self.publish(after);
        }
    }

    fn publish(&self, state: CircuitState) {
        let name = self.name();
        metrics::gauge!(name.gauge, "agent" => name.agent).set(state.gauge());
    }

    fn name(&self) -> BreakerName {
        self.lock().name.clone()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The state is a few plain values, valid at every step: a panic elsewhere while the
        // lock was held cannot leave it half-changed, so a poisoned lock is still usable.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn state_of(state: &State) -> CircuitState {
    match state {
        State::Closed { .. } => CircuitState::Closed,
        State::HalfOpen { .. } => CircuitState::HalfOpen,
        State::Open { .. } => CircuitState::Open,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN_FOR: Duration = Duration::from_secs(30);

    fn name() -> BreakerName {
        BreakerName {
            gauge: "test_circuit_state",
            agent: "test".to_owned(),
        }
    }

    fn fail(breaker: &CircuitBreaker, now: Instant) {
        breaker
            .try_acquire_at(now)
            .expect("a permit")
            .finish(false, now);
    }

    #[test]
    fn opens_after_the_threshold_of_consecutive_failures() {
        let breaker = CircuitBreaker::new(name(), 3, OPEN_FOR);
        let t0 = Instant::now();
        fail(&breaker, t0);
        fail(&breaker, t0);
        assert_eq!(breaker.state(), CircuitState::Closed);
        fail(&breaker, t0);
        assert_eq!(breaker.state(), CircuitState::Open);
        assert!(breaker.try_acquire_at(t0 + OPEN_FOR / 2).is_none());
    }

    #[test]
    fn a_success_resets_the_count() {
        let breaker = CircuitBreaker::new(name(), 2, OPEN_FOR);
        let t0 = Instant::now();
        fail(&breaker, t0);
        breaker.try_acquire_at(t0).unwrap().finish(true, t0);
        fail(&breaker, t0);
        assert_eq!(breaker.state(), CircuitState::Closed);
    }

    #[test]
    fn half_open_lets_exactly_one_probe_through() {
        let breaker = CircuitBreaker::new(name(), 1, OPEN_FOR);
        let t0 = Instant::now();
        fail(&breaker, t0);
        let later = t0 + OPEN_FOR;
        let probe = breaker.try_acquire_at(later).expect("the probe");
        assert_eq!(breaker.state(), CircuitState::HalfOpen);
        assert!(
            breaker.try_acquire_at(later).is_none(),
            "one probe at a time"
        );
        probe.succeeded();
        assert_eq!(breaker.state(), CircuitState::Closed);
        assert!(breaker.try_acquire_at(later).is_some());
    }

    #[test]
    fn a_failed_probe_reopens_for_another_period() {
        let breaker = CircuitBreaker::new(name(), 1, OPEN_FOR);
        let t0 = Instant::now();
        fail(&breaker, t0);
        let later = t0 + OPEN_FOR;
        fail(&breaker, later);
        assert_eq!(breaker.state(), CircuitState::Open);
        assert!(breaker.try_acquire_at(later + OPEN_FOR / 2).is_none());
        assert!(breaker.try_acquire_at(later + OPEN_FOR).is_some());
    }

    #[test]
    fn a_dropped_probe_counts_as_a_failure() {
        let breaker = CircuitBreaker::new(name(), 1, OPEN_FOR);
        fail(&breaker, Instant::now());
        let probe = breaker.try_acquire_at(Instant::now() + OPEN_FOR);
        assert!(probe.is_some());
        drop(probe);
        assert_eq!(breaker.state(), CircuitState::Open);
    }
}
