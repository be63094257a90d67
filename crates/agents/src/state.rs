//! Per-session state of a stateful agent (the WBA's world) in Redis, changed atomically and at
//! most once per turn.
//!
//! The state lives in a hash `<prefix>:{session}:world` (`state` as JSON, `version`), and each
//! applied turn's output in `<prefix>:{session}:world:turn:<turn>` for a day. Applying a turn is optimistic: read
//! the state, compute, then a script writes the new state only if the version is still the one
//! read, together with the turn's output. A redelivered task finds its turn's output and
//! returns it without applying the turn again.

use std::time::{Duration, SystemTime};

use redis::aio::ConnectionManager;
use serde::{Serialize, de::DeserializeOwned};
use tta_runtime::redis::Keyspace;

use crate::worker::TaskError;

/// Attempts before giving up on a contended session (turns of one session are serialised by the
/// gateway, so contention means a duplicate delivery racing the original).
const MAX_ATTEMPTS: usize = 5;

/// How long a turn's output is kept for a repeated delivery of the same turn. Retries and
/// redeliveries come within minutes; a day bounds what a long session leaves behind.
const TURN_OUTPUT_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// Compare-and-set of the state and the turn's output in one step. KEYS: state, turn output.
/// ARGV: version read, new state, new version, output, retention ms.
const COMMIT: &str = r#"
local current = redis.call('HGET', KEYS[1], 'version')
if (current or '') ~= ARGV[1] then return 0 end
-- A duplicate delivery that committed first: read its output on the next attempt.
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'version', ARGV[3])
redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[5])
return 1
"#;

/// `(state JSON, version)` as stored.
type StoredState = (Option<String>, Option<String>);

#[derive(Clone)]
pub struct StateStore {
    keys: Keyspace,
    connection: ConnectionManager,
    commit: redis::Script,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

fn unavailable(err: redis::RedisError) -> TaskError {
    TaskError::Retryable(format!("state store: {err}"))
}

impl StateStore {
    pub fn new(keys: Keyspace, connection: ConnectionManager) -> Self {
        Self {
            keys,
            connection,
            commit: redis::Script::new(COMMIT),
        }
    }

    /// Applies one turn to the session's state exactly once and returns the turn's output.
    ///
    /// `apply` gets the current state (`None` for a new session) and returns the output to
    /// record and the new state, or `None` as the new state when nothing changed.
    ///
    /// A task whose `deadline` passed longer ago than outputs are kept (a dead letter replayed
    /// days later) is refused: its turn's output may have expired, and applying it again would
    /// change the world twice for one turn.
    pub async fn apply_once<S, F>(
        &self,
        session: &str,
        turn: &str,
        deadline: Option<SystemTime>,
        apply: F,
    ) -> Result<Vec<u8>, TaskError>
    where
        S: Serialize + DeserializeOwned,
        F: Fn(Option<S>) -> Result<(Vec<u8>, Option<S>), TaskError>,
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
        for _ in 0..MAX_ATTEMPTS {
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
            let state: Option<S> = raw_state
                .map(|json| serde_json::from_str(&json))
                .transpose()
                .map_err(|err| {
                    TaskError::Permanent(format!(
                        "stored state of session {session} is unreadable: {err}"
                    ))
                })?;
            let had_state = state.is_some();
            let (output, next) = apply(state)?;
            let version_read = version.unwrap_or_default();
            let next_version = version_read.parse::<u64>().unwrap_or(0) + 1;
            let next_json = match next {
                Some(next) => serde_json::to_string(&next).map_err(|err| {
                    TaskError::Permanent(format!("cannot store the new state: {err}"))
                })?,
                // Nothing changed: record the turn's output against the same state.
                None if had_state => {
                    let _: () = redis::cmd("SET")
                        .arg(&output_key)
                        .arg(&output)
                        .arg("NX")
                        .arg("PX")
                        .arg(retention_ms)
                        .query_async(&mut connection)
                        .await
                        .map_err(unavailable)?;
                    return Ok(output);
                }
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
                .arg(&version_read)
                .arg(next_json)
                .arg(next_version)
                .arg(&output)
                .arg(retention_ms)
                .invoke_async(&mut connection)
                .await
                .map_err(unavailable)?;
            if committed == 1 {
                return Ok(output);
            }
        }
        Err(TaskError::Retryable(format!(
            "session {session} state kept changing underneath"
        )))
    }
}
