//! Per-session state of a stateful agent (the WBA's world) in Redis, changed atomically and at
//! most once per turn.
//!
//! The state lives in a hash `<prefix>:{session}:world` (`state` as JSON, `version`: a count of
//! commits and a random tag, unique to each commit), and each applied turn's output in
//! `<prefix>:{session}:world:turn:<turn>` for a day. Applying a turn is optimistic: read the
//! state, compute, then a script writes the new state only if the version is still the one
//! read, together with the turn's output. A redelivered task finds its turn's output and
//! returns it without applying the turn again.
//!
//! Each store keeps the states it last committed in memory, so the next turn of a session it
//! serves skips the read: the commit's version check still guards every write, and a state
//! another replica changed in between fails it, after which the turn is read and computed again.

use std::{
    num::NonZeroUsize,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, SystemTime},
};

use lru::LruCache;
use redis::aio::ConnectionManager;
use serde::{Serialize, de::DeserializeOwned};
use tta_runtime::redis::Keyspace;

use crate::worker::TaskError;

/// Attempts before giving up on a contended session. Turns of one session are serialised by the
/// gateway, so a failed commit means a remembered state another replica has moved on since, or
/// a duplicate delivery racing the original.
const MAX_ATTEMPTS: usize = 5;

/// How long a turn's output is kept for a repeated delivery of the same turn. Retries and
/// redeliveries come within minutes; a day bounds what a long session leaves behind.
const TURN_OUTPUT_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// Sessions whose last committed state a store keeps in memory. A world state is about a
/// kilobyte, so this bounds the cache at a few megabytes; a session beyond it is read from Redis
/// as if the cache did not exist.
const CACHED_SESSIONS: NonZeroUsize = match NonZeroUsize::new(4096) {
    Some(sessions) => sessions,
    None => NonZeroUsize::MIN,
};

/// Compare-and-set of the state and the turn's output in one step. KEYS: state, turn output.
/// ARGV: version read, new state ("" when the turn changed nothing), new version, output,
/// retention ms. Returns 0 when the version moved on or the turn was already applied.
const COMMIT: &str = r#"
local current = redis.call('HGET', KEYS[1], 'version')
if (current or '') ~= ARGV[1] then return 0 end
-- A duplicate delivery that committed first: read its output on the next attempt.
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'state', ARGV[2], 'version', ARGV[3]) end
redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[5])
return 1
"#;

/// `(state JSON, version)` as stored.
type StoredState = (Option<String>, Option<String>);

/// A session's state as of a version: what the next turn is computed from.
struct Snapshot<S> {
    /// The `version` field as stored; empty for a session without state.
    version: String,
    state: Option<Arc<S>>,
}

impl<S> Clone for Snapshot<S> {
    fn clone(&self) -> Self {
        Self {
            version: self.version.clone(),
            state: self.state.clone(),
        }
    }
}

pub struct StateStore<S> {
    keys: Keyspace,
    connection: ConnectionManager,
    commit: redis::Script,
    committed: Arc<Mutex<LruCache<String, Snapshot<S>>>>,
}

impl<S> Clone for StateStore<S> {
    fn clone(&self) -> Self {
        Self {
            keys: self.keys.clone(),
            connection: self.connection.clone(),
            commit: self.commit.clone(),
            committed: Arc::clone(&self.committed),
        }
    }
}

impl<S> std::fmt::Debug for StateStore<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

/// The version after `current`: a count of commits and a random tag. The tag makes every
/// version unique, so a remembered state never passes for another one with the same count (as
/// after a Redis failover that lost a commit which another replica then made differently).
fn next_version(current: &str) -> String {
    let count = current
        .split('.')
        .next()
        .and_then(|count| count.parse::<u64>().ok())
        .unwrap_or(0);
    format!("{}.{:016x}", count + 1, fastrand::u64(..))
}

fn unavailable(err: redis::RedisError) -> TaskError {
    TaskError::Retryable(format!("state store: {err}"))
}

fn count_read(source: &'static str) {
    metrics::counter!("tta_agent_state_reads_total", "source" => source).increment(1);
}

impl<S> StateStore<S>
where
    S: Serialize + DeserializeOwned,
{
    pub fn new(keys: Keyspace, connection: ConnectionManager) -> Self {
        Self {
            keys,
            connection,
            commit: redis::Script::new(COMMIT),
            committed: Arc::new(Mutex::new(LruCache::new(CACHED_SESSIONS))),
        }
    }

    fn cached(&self, session: &str) -> Option<Snapshot<S>> {
        let mut committed = self
            .committed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        committed.get(session).cloned()
    }

    fn remember(&self, session: &str, snapshot: Option<Snapshot<S>>) {
        let mut committed = self
            .committed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match snapshot {
            Some(snapshot) => {
                committed.put(session.to_owned(), snapshot);
            }
            None => {
                committed.pop(session);
            }
        }
    }

    /// Applies one turn to the session's state exactly once and returns the turn's output.
    ///
    /// `apply` gets the current state (`None` for a new session) and returns the output to
    /// record and the new state, or `None` as the new state when nothing changed. It may run
    /// more than once for one turn (a state that changed underneath is read and applied
    /// again); only one run's result is ever recorded.
    ///
    /// A task whose `deadline` passed longer ago than outputs are kept (a dead letter replayed
    /// days later) is refused: its turn's output may have expired, and applying it again would
    /// change the world twice for one turn.
    pub async fn apply_once<F>(
        &self,
        session: &str,
        turn: &str,
        deadline: Option<SystemTime>,
        apply: F,
    ) -> Result<Vec<u8>, TaskError>
    where
        F: Fn(Option<&S>) -> Result<(Vec<u8>, Option<S>), TaskError>,
    {
        if let Some(deadline) = deadline
            && deadline + TURN_OUTPUT_RETENTION < SystemTime::now()
        {
            return Err(TaskError::Permanent(format!(
                "turn {turn} of session {session} is older than the {} h its world changes are remembered; not applied",
                TURN_OUTPUT_RETENTION.as_secs() / 3600
            )));
        }
        let state_key = self.keys.tagged(session, &["world"]);
        // One key per turn, so outputs expire one by one instead of piling up in the session.
        let output_key = self.keys.tagged(session, &["world", "turn", turn]);
        let retention_ms = TURN_OUTPUT_RETENTION.as_millis() as u64;
        let mut connection = self.connection.clone();
        let mut cached = self.cached(session);
        for _ in 0..MAX_ATTEMPTS {
            let remembered = cached.is_some();
            let read = match cached.take() {
                Some(snapshot) => {
                    count_read("memory");
                    snapshot
                }
                None => {
                    count_read("redis");
                    let (done, current): (Option<Vec<u8>>, StoredState) = redis::pipe()
                        .cmd("GET")
                        .arg(&output_key)
                        .cmd("HMGET")
                        .arg(&state_key)
                        .arg("state")
                        .arg("version")
                        .query_async(&mut connection)
                        .await
                        .map_err(unavailable)?;
                    if let Some(output) = done {
                        return Ok(output);
                    }
                    let (raw_state, version) = current;
                    let state = raw_state
                        .map(|json| serde_json::from_str::<S>(&json))
                        .transpose()
                        .map_err(|err| {
                            TaskError::Permanent(format!(
                                "stored state of session {session} is unreadable: {err}"
                            ))
                        })?;
                    Snapshot {
                        version: version.unwrap_or_default(),
                        state: state.map(Arc::new),
                    }
                }
            };
            let (output, next) = match apply(read.state.as_deref()) {
                Ok(applied) => applied,
                // A remembered state may be stale: judge the turn on the stored one.
                Err(_) if remembered => {
                    self.remember(session, None);
                    continue;
                }
                Err(err) => return Err(err),
            };
            let next_version = next_version(&read.version);
            let next_json = match &next {
                Some(next) => serde_json::to_string(next).map_err(|err| {
                    TaskError::Permanent(format!("cannot store the new state: {err}"))
                })?,
                // Nothing changed: record the turn's output against the same state.
                None if read.state.is_some() => String::new(),
                None => {
                    return Err(TaskError::Permanent(
                        "a new session must produce a state".to_owned(),
                    ));
                }
            };
            let committed: i64 = self
                .commit
                .key(&state_key)
                .key(&output_key)
                .arg(&read.version)
                .arg(next_json)
                .arg(&next_version)
                .arg(&output)
                .arg(retention_ms)
                .invoke_async(&mut connection)
                .await
                .map_err(unavailable)?;
            if committed == 1 {
                let now = match next {
                    Some(next) => Snapshot {
                        version: next_version,
                        state: Some(Arc::new(next)),
                    },
                    None => read,
                };
                self.remember(session, Some(now));
                return Ok(output);
            }
            // Another replica moved the state on, or this turn was applied already: forget
            // what this store knew and read again.
            self.remember(session, None);
        }
        Err(TaskError::Retryable(format!(
            "session {session} state kept changing underneath"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::next_version;

    #[test]
    fn versions_count_commits_and_never_repeat() {
        let first = next_version("");
        assert!(first.starts_with("1."), "{first}");
        assert!(next_version(&first).starts_with("2."));
        assert!(
            next_version("6").starts_with("7."),
            "a plain count as stored before"
        );
        assert_ne!(next_version("6"), next_version("6"));
    }
}
