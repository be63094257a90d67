//! What the gateway keeps in Redis, all hash-tagged by session so one session's keys share a
//! cluster slot: the session record, its input history, a lock that serialises its turns
//! across gateway replicas, and each turn's run (step results as they arrive, then the final
//! response) — which is what makes a turn durable and a repeated `turn_id` idempotent.

use std::time::Duration;

use prost::Message;
use redis::aio::ConnectionManager;
use tta_proto::v1 as pb;
use tta_runtime::redis::Keyspace;

use crate::error::Error;

/// How long a finished run is kept for idempotent replays.
const RUN_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// Field of a run hash that holds the final response.
const RESPONSE_FIELD: &str = "response";

#[derive(Clone)]
pub struct Store {
    keys: Keyspace,
    connection: ConnectionManager,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

/// Deletes the lock only if we still hold it, so an expired lock taken over by another
/// gateway is never released by the old holder.
const UNLOCK: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

impl Store {
    pub fn new(keys: Keyspace, connection: ConnectionManager) -> Self {
        Self { keys, connection }
    }

    fn connection(&self) -> ConnectionManager {
        self.connection.clone()
    }

    fn session_key(&self, session: &str) -> String {
        self.keys.tagged(session, &["session"])
    }

    fn history_key(&self, session: &str) -> String {
        self.keys.tagged(session, &["history"])
    }

    fn lock_key(&self, session: &str) -> String {
        self.keys.tagged(session, &["lock"])
    }

    fn run_key(&self, session: &str, turn: &str) -> String {
        self.keys.tagged(session, &["run", turn])
    }

    pub async fn load_session(&self, session: &str) -> Result<Option<pb::Session>, Error> {
        let raw: Option<Vec<u8>> = redis::cmd("GET")
            .arg(self.session_key(session))
            .query_async(&mut self.connection())
            .await?;
        raw.map(|bytes| {
            pb::Session::decode(bytes.as_slice())
                .map_err(|err| Error::Corrupt(format!("session {session}: {err}")))
        })
        .transpose()
    }

    pub async fn save_session(&self, session: &pb::Session) -> Result<(), Error> {
        let _: () = redis::cmd("SET")
            .arg(self.session_key(&session.session_id))
            .arg(session.encode_to_vec())
            .query_async(&mut self.connection())
            .await?;
        Ok(())
    }

    /// Stores a new session unless one exists; returns whether it was created.
    pub async fn create_session(&self, session: &pb::Session) -> Result<bool, Error> {
        let created: bool = redis::cmd("SET")
            .arg(self.session_key(&session.session_id))
            .arg(session.encode_to_vec())
            .arg("NX")
            .query_async::<Option<String>>(&mut self.connection())
            .await?
            .is_some();
        Ok(created)
    }

    pub async fn history(&self, session: &str, window: usize) -> Result<Vec<String>, Error> {
        let mut recent: Vec<String> = redis::cmd("LRANGE")
            .arg(self.history_key(session))
            .arg(0)
            .arg(window.saturating_sub(1))
            .query_async(&mut self.connection())
            .await?;
        recent.reverse();
        Ok(recent)
    }

    pub async fn push_history(
        &self,
        session: &str,
        text: &str,
        window: usize,
    ) -> Result<(), Error> {
        let key = self.history_key(session);
        let _: () = redis::pipe()
            .atomic()
            .cmd("LPUSH")
            .arg(&key)
            .arg(text)
            .ignore()
            .cmd("LTRIM")
            .arg(&key)
            .arg(0)
            .arg(window.saturating_sub(1))
            .ignore()
            .query_async(&mut self.connection())
            .await?;
        Ok(())
    }

    /// Takes the session's turn lock, waiting up to `wait`. The lock expires after `hold` so a
    /// crashed gateway cannot block the session for longer.
    pub async fn lock(
        &self,
        session: &str,
        token: &str,
        wait: Duration,
        hold: Duration,
    ) -> Result<bool, Error> {
        let key = self.lock_key(session);
        let deadline = tokio::time::Instant::now() + wait;
        let mut pause = Duration::from_millis(1);
        loop {
            let taken: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(token)
                .arg("NX")
                .arg("PX")
                .arg(hold.as_millis() as u64)
                .query_async(&mut self.connection())
                .await?;
            if taken.is_some() {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    pub async fn unlock(&self, session: &str, token: &str) -> Result<(), Error> {
        let _: i64 = redis::Script::new(UNLOCK)
            .key(self.lock_key(session))
            .arg(token)
            .invoke_async(&mut self.connection())
            .await?;
        Ok(())
    }

    /// The finished response of a turn, if it completed before.
    pub async fn response(
        &self,
        session: &str,
        turn: &str,
    ) -> Result<Option<pb::ProcessUserInputResponse>, Error> {
        let raw: Option<Vec<u8>> = redis::cmd("HGET")
            .arg(self.run_key(session, turn))
            .arg(RESPONSE_FIELD)
            .query_async(&mut self.connection())
            .await?;
        raw.map(|bytes| {
            pb::ProcessUserInputResponse::decode(bytes.as_slice())
                .map_err(|err| Error::Corrupt(format!("turn {turn}: {err}")))
        })
        .transpose()
    }

    /// The results of steps that already finished in an earlier attempt of this turn.
    pub async fn step_results(
        &self,
        session: &str,
        turn: &str,
    ) -> Result<Vec<pb::AgentResult>, Error> {
        let fields: Vec<(String, Vec<u8>)> = redis::cmd("HGETALL")
            .arg(self.run_key(session, turn))
            .query_async(&mut self.connection())
            .await?;
        fields
            .into_iter()
            .filter(|(field, _)| field.starts_with("step:"))
            .map(|(field, bytes)| {
                pb::AgentResult::decode(bytes.as_slice())
                    .map_err(|err| Error::Corrupt(format!("{field}: {err}")))
            })
            .collect()
    }

    /// Records a step result; the first one stored for a step wins (a redelivered task may
    /// answer twice).
    pub async fn record_step(&self, result: &pb::AgentResult) -> Result<(), Error> {
        let key = self.run_key(&result.session_id, &result.turn_id);
        let _: () = redis::pipe()
            .cmd("HSETNX")
            .arg(&key)
            .arg(format!("step:{}", result.step_id))
            .arg(result.encode_to_vec())
            .ignore()
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(RUN_RETENTION.as_millis() as u64)
            .ignore()
            .query_async(&mut self.connection())
            .await?;
        Ok(())
    }

    /// Records the final response; returns the one stored first if another attempt finished
    /// the same turn meanwhile.
    pub async fn record_response(
        &self,
        session: &str,
        turn: &str,
        response: &pb::ProcessUserInputResponse,
    ) -> Result<Option<pb::ProcessUserInputResponse>, Error> {
        let key = self.run_key(session, turn);
        let (stored,): (bool,) = redis::pipe()
            .cmd("HSETNX")
            .arg(&key)
            .arg(RESPONSE_FIELD)
            .arg(response.encode_to_vec())
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(RUN_RETENTION.as_millis() as u64)
            .ignore()
            .query_async(&mut self.connection())
            .await?;
        if stored {
            Ok(None)
        } else {
            self.response(session, turn).await
        }
    }

    pub async fn ping(&self) -> Result<(), Error> {
        let _: String = redis::cmd("PING")
            .query_async(&mut self.connection())
            .await?;
        Ok(())
    }
}
