//! Session memory: one worrying message is a signal, several within half an hour are a pattern.
//! Repeated risk signals in a session raise the level and escalate (ESCALATION_REASON_REPEATED_RISK),
//! and a session raises at most one escalation event per cool-down.
//!
//! [`SessionMemory`] is the storage seam: [`InMemorySessionMemory`] for one process and tests,
//! [`RedisSessionMemory`] for the deployed services (any replica may serve the next turn).
//! [`assess_in_session`] is the policy, written once over either.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use futures::future::BoxFuture;
use tta_runtime::redis::{Keyspace, RedisPool};
use tta_types::SessionId;

use crate::{
    engine::SafetyEngine,
    error::Error,
    escalation::EscalationReason,
    rules::SessionPolicyDoc,
    settings::SessionPolicy,
    verdict::{Action, Assessment, Source},
};

/// Where a session's risk signals are remembered.
pub trait SessionMemory: Send + Sync + std::fmt::Debug {
    /// Records one signal at `at` and returns how many signals (this one included) fall within
    /// `window` before `at`. Entries older than the window may be forgotten; all of the session's
    /// memory may expire `ttl` after its last signal. A signal recorded again for the same
    /// `occasion` (a turn retried after a crash) counts once; `None` is a new occasion each time.
    fn record_signal<'a>(
        &'a self,
        session: &'a SessionId,
        occasion: Option<&'a str>,
        at: SystemTime,
        window: Duration,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<u32, Error>>;

    /// Claims the session's escalation slot: true when no escalation was claimed within
    /// `cooldown` before `at` (and the slot is now taken), or when the same `occasion` holds it
    /// already — so a turn retried after a crash between claim and escalation still escalates.
    /// False otherwise.
    fn claim_escalation<'a>(
        &'a self,
        session: &'a SessionId,
        occasion: Option<&'a str>,
        at: SystemTime,
        cooldown: Duration,
    ) -> BoxFuture<'a, Result<bool, Error>>;
}

#[derive(Debug, Default)]
struct SessionState {
    signals: Vec<(SystemTime, String)>,
    last_escalation: Option<(SystemTime, String)>,
}

/// Session memory inside this process: for tests, the CLI and single-process setups. State is
/// lost on restart and not shared between replicas.
#[derive(Debug, Default, Clone)]
pub struct InMemorySessionMemory {
    sessions: Arc<Mutex<HashMap<SessionId, SessionState>>>,
}

impl InMemorySessionMemory {
    fn with_state<T>(&self, session: &SessionId, f: impl FnOnce(&mut SessionState) -> T) -> T {
        // A poisoned lock only means another thread panicked mid-update of plain data; the data
        // is still usable, so recover it rather than fail every later judgement.
        let mut sessions = self
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(sessions.entry(session.clone()).or_default())
    }
}

impl SessionMemory for InMemorySessionMemory {
    fn record_signal<'a>(
        &'a self,
        session: &'a SessionId,
        occasion: Option<&'a str>,
        at: SystemTime,
        window: Duration,
        _ttl: Duration,
    ) -> BoxFuture<'a, Result<u32, Error>> {
        let occasion = occasion_or_unique(occasion, at);
        let count = self.with_state(session, |state| {
            state.signals.retain(|(signal, seen)| {
                *seen != occasion && at.duration_since(*signal).unwrap_or_default() < window
            });
            state.signals.push((at, occasion));
            u32::try_from(state.signals.len()).unwrap_or(u32::MAX)
        });
        Box::pin(async move { Ok(count) })
    }

    fn claim_escalation<'a>(
        &'a self,
        session: &'a SessionId,
        occasion: Option<&'a str>,
        at: SystemTime,
        cooldown: Duration,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        let occasion = occasion_or_unique(occasion, at);
        let claimed = self.with_state(session, |state| {
            let free = state.last_escalation.as_ref().is_none_or(|(last, holder)| {
                *holder == occasion || at.duration_since(*last).unwrap_or_default() >= cooldown
            });
            if free {
                state.last_escalation = Some((at, occasion));
            }
            free
        });
        Box::pin(async move { Ok(claimed) })
    }
}

/// Trims the window, adds the signal, refreshes the TTL and counts, in one atomic step so two
/// replicas judging turns of one session never lose a signal.
const RECORD_SIGNAL: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (tonumber(ARGV[1]) - tonumber(ARGV[2])))
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return redis.call('ZCOUNT', KEYS[1], '(' .. (tonumber(ARGV[1]) - tonumber(ARGV[2])), '+inf')
";

/// Takes the escalation slot unless another occasion holds it; the holder itself may claim again.
const CLAIM_ESCALATION: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return 1 end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
";

/// Session memory in Redis: a sorted set of signal times at `<prefix>:{<session>}:safety` and an
/// escalation claim at `<prefix>:{<session>}:safety:escalated` (same hash tag, same cluster slot),
/// both expiring on their own.
#[derive(Debug, Clone)]
pub struct RedisSessionMemory {
    pool: RedisPool,
    keys: Keyspace,
    record_script: Arc<redis::Script>,
    claim_script: Arc<redis::Script>,
}

impl RedisSessionMemory {
    pub fn new(pool: RedisPool, keys: Keyspace) -> Self {
        Self {
            pool,
            keys,
            record_script: Arc::new(redis::Script::new(RECORD_SIGNAL)),
            claim_script: Arc::new(redis::Script::new(CLAIM_ESCALATION)),
        }
    }

    pub fn signals_key(&self, session: &SessionId) -> String {
        self.keys.tagged(session.as_str(), &["safety"])
    }

    fn escalation_key(&self, session: &SessionId) -> String {
        self.keys.tagged(session.as_str(), &["safety", "escalated"])
    }
}

fn millis(at: SystemTime) -> u64 {
    u64::try_from(
        at.duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(u64::MAX)
}

fn duration_millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// The occasion's name, or one unique across processes (even within one millisecond) when the
/// caller has none.
fn occasion_or_unique(occasion: Option<&str>, at: SystemTime) -> String {
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    match occasion {
        Some(occasion) => occasion.to_owned(),
        None => format!(
            "{}-{}-{}",
            millis(at),
            std::process::id(),
            SEQUENCE.fetch_add(1, Ordering::Relaxed)
        ),
    }
}

impl SessionMemory for RedisSessionMemory {
    fn record_signal<'a>(
        &'a self,
        session: &'a SessionId,
        occasion: Option<&'a str>,
        at: SystemTime,
        window: Duration,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<u32, Error>> {
        Box::pin(async move {
            let mut connection = self.pool.get().await?;
            let count: u32 = self
                .record_script
                .key(self.signals_key(session))
                .arg(millis(at))
                .arg(duration_millis(window))
                .arg(duration_millis(ttl))
                .arg(occasion_or_unique(occasion, at))
                .invoke_async(&mut connection)
                .await?;
            Ok(count)
        })
    }

    fn claim_escalation<'a>(
        &'a self,
        session: &'a SessionId,
        occasion: Option<&'a str>,
        at: SystemTime,
        cooldown: Duration,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move {
            let mut connection = self.pool.get().await?;
            let claimed: u32 = self
                .claim_script
                .key(self.escalation_key(session))
                .arg(occasion_or_unique(occasion, at))
                .arg(duration_millis(cooldown))
                .invoke_async(&mut connection)
                .await?;
            Ok(claimed == 1)
        })
    }
}

/// What a judgement in a session is about: the session, and the turn when there is one, so a
/// turn retried after a crash counts and escalates once.
#[derive(Debug, Clone, Copy)]
pub struct Occasion<'a> {
    pub session: &'a SessionId,
    pub turn: Option<&'a str>,
}

impl<'a> Occasion<'a> {
    /// A judgement outside any turn: each one is an occasion of its own.
    pub fn untracked(session: &'a SessionId) -> Self {
        Self {
            session,
            turn: None,
        }
    }
}

/// A verdict in the context of its session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionVerdict {
    pub assessment: Assessment,
    /// Signals of this session within the window, this one included (0 when not a signal).
    pub recent_signals: u32,
    /// Set when an escalation event should be raised now: the verdict escalates and the
    /// session's cool-down allowed it.
    pub escalate: Option<EscalationReason>,
}

/// Judges `text` and applies session memory: a player's input at or above
/// `policy.session.signal_at` is recorded; when the session holds `escalate_after` signals within
/// the window, the level is raised to `raise_to`, the verdict becomes a crisis and escalates.
pub async fn assess_in_session(
    engine: &SafetyEngine,
    memory: &dyn SessionMemory,
    occasion: Occasion<'_>,
    text: &str,
    source: Source,
    policy: &SessionPolicy,
    now: SystemTime,
) -> Result<SessionVerdict, Error> {
    let mut assessment = engine.assess(text, source, policy);
    let rules: &SessionPolicyDoc = &engine.rules().policy.session;
    let mut recent_signals = 0;
    if source == Source::User && assessment.level >= rules.signal_at {
        recent_signals = memory
            .record_signal(
                occasion.session,
                occasion.turn,
                now,
                rules.window,
                rules.ttl,
            )
            .await?;
        if recent_signals >= rules.escalate_after && assessment.level < rules.raise_to {
            assessment.level = rules.raise_to;
            assessment.crisis = true;
            assessment.action = Action::Escalate;
            assessment.raised_by_session = true;
        }
    }
    let reason = EscalationReason::for_assessment(&assessment);
    let escalate = match reason {
        Some(reason) => memory
            .claim_escalation(
                occasion.session,
                occasion.turn,
                now,
                rules.escalation_cooldown,
            )
            .await?
            .then_some(reason),
        None => None,
    };
    Ok(SessionVerdict {
        assessment,
        recent_signals,
        escalate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::Level;

    fn session(id: &str) -> SessionId {
        id.parse().unwrap()
    }

    #[tokio::test]
    async fn in_memory_occasions_count_once_and_keep_their_claim() {
        let memory = InMemorySessionMemory::default();
        let s = session("s1");
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let window = Duration::from_secs(60);
        let ttl = Duration::from_secs(600);
        let turn = Some("t1");
        assert_eq!(
            memory
                .record_signal(&s, turn, t0, window, ttl)
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            memory
                .record_signal(&s, turn, t0, window, ttl)
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            memory
                .record_signal(&s, Some("t2"), t0, window, ttl)
                .await
                .unwrap(),
            2
        );
        assert!(memory.claim_escalation(&s, turn, t0, window).await.unwrap());
        assert!(memory.claim_escalation(&s, turn, t0, window).await.unwrap());
        assert!(
            !memory
                .claim_escalation(&s, Some("t2"), t0, window)
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn the_in_memory_window_forgets_old_signals() {
        let memory = InMemorySessionMemory::default();
        let s = session("s1");
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let window = Duration::from_secs(60);
        let ttl = Duration::from_secs(600);
        assert_eq!(
            memory
                .record_signal(&s, None, t0, window, ttl)
                .await
                .unwrap(),
            1
        );
        let t1 = t0 + Duration::from_secs(30);
        assert_eq!(
            memory
                .record_signal(&s, None, t1, window, ttl)
                .await
                .unwrap(),
            2
        );
        let t2 = t0 + Duration::from_secs(75);
        assert_eq!(
            memory
                .record_signal(&s, None, t2, window, ttl)
                .await
                .unwrap(),
            2
        );
        assert_eq!(
            memory
                .record_signal(&session("other"), None, t2, window, ttl)
                .await
                .unwrap(),
            1
        );
    }

    #[tokio::test]
    async fn an_escalation_slot_is_claimed_once_per_cooldown() {
        let memory = InMemorySessionMemory::default();
        let s = session("s1");
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let cooldown = Duration::from_secs(600);
        assert!(
            memory
                .claim_escalation(&s, None, t0, cooldown)
                .await
                .unwrap()
        );
        let soon = t0 + Duration::from_secs(10);
        assert!(
            !memory
                .claim_escalation(&s, None, soon, cooldown)
                .await
                .unwrap()
        );
        let later = t0 + cooldown;
        assert!(
            memory
                .claim_escalation(&s, None, later, cooldown)
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn repeated_moderate_signals_raise_the_level_and_escalate_once() {
        let engine = SafetyEngine::builtin().unwrap();
        let memory = InMemorySessionMemory::default();
        let s = session("player-7");
        let policy = SessionPolicy::default();
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let lines = [
            "i feel hopeless",
            "nobody cares about me",
            "i hate myself",
            "i feel so alone",
        ];
        let mut verdicts = Vec::new();
        for (minute, line) in lines.iter().enumerate() {
            let at = t0 + Duration::from_secs(60 * minute as u64);
            verdicts.push(
                assess_in_session(
                    &engine,
                    &memory,
                    Occasion::untracked(&s),
                    line,
                    Source::User,
                    &policy,
                    at,
                )
                .await
                .unwrap(),
            );
        }
        assert_eq!(verdicts[0].assessment.level, Level::Moderate);
        assert_eq!(verdicts[0].assessment.action, Action::Warn);
        assert!(!verdicts[1].assessment.raised_by_session);
        let third = &verdicts[2];
        assert_eq!(third.recent_signals, 3);
        assert_eq!(third.assessment.level, Level::High);
        assert!(third.assessment.crisis && third.assessment.raised_by_session);
        assert_eq!(third.assessment.action, Action::Escalate);
        assert_eq!(third.escalate, Some(EscalationReason::RepeatedRisk));
        // Still escalating, but within the cool-down: no second event.
        assert_eq!(verdicts[3].assessment.action, Action::Escalate);
        assert_eq!(verdicts[3].escalate, None);
    }

    #[tokio::test]
    async fn signals_spread_beyond_the_window_do_not_escalate() {
        let engine = SafetyEngine::builtin().unwrap();
        let memory = InMemorySessionMemory::default();
        let s = session("player-8");
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        for hour in 0..4 {
            let at = t0 + Duration::from_secs(3600 * hour);
            let verdict = assess_in_session(
                &engine,
                &memory,
                Occasion::untracked(&s),
                "i feel hopeless",
                Source::User,
                &SessionPolicy::default(),
                at,
            )
            .await
            .unwrap();
            assert_eq!(verdict.assessment.level, Level::Moderate);
            assert_eq!(verdict.escalate, None);
        }
    }

    #[tokio::test]
    async fn a_crisis_escalates_at_once_and_agent_text_never_counts() {
        let engine = SafetyEngine::builtin().unwrap();
        let memory = InMemorySessionMemory::default();
        let s = session("player-9");
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let policy = SessionPolicy::default();
        let verdict = assess_in_session(
            &engine,
            &memory,
            Occasion::untracked(&s),
            "kms",
            Source::User,
            &policy,
            now,
        )
        .await
        .unwrap();
        assert_eq!(verdict.escalate, Some(EscalationReason::Crisis));
        let agent = assess_in_session(
            &engine,
            &memory,
            Occasion::untracked(&session("player-10")),
            "You are worthless.",
            Source::Agent,
            &policy,
            now,
        )
        .await
        .unwrap();
        assert_eq!(agent.recent_signals, 0);
        assert_eq!(agent.escalate, None);
    }
}
