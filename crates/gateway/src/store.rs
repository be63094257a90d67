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
/// Field of a run hash that names the workflow version the turn runs (`name@version`).
const WORKFLOW_FIELD: &str = "workflow";

/// Who holds a session's turn lock: `<replica>/<incarnation>/<turn>`. The incarnation is new
/// for every process start, so a restarted replica recognises its own dead predecessor's locks.
#[derive(Debug, Clone)]
pub struct LockToken {
    pub replica: String,
    pub incarnation: String,
    pub turn: String,
}

impl LockToken {
    pub fn value(&self) -> String {
        format!("{}/{}/{}", self.replica, self.incarnation, self.turn)
    }

    fn left_by_earlier_incarnation(&self, holder: &str) -> bool {
        let mut parts = holder.splitn(3, '/');
        let (Some(replica), Some(incarnation)) = (parts.next(), parts.next()) else {
            return false;
        };
        replica == self.replica && incarnation != self.incarnation
    }
}

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

/// Replaces a lock left by an earlier incarnation of this same replica (it crashed and
/// restarted): ARGV: the stale value seen, the new token, hold ms.
const TAKE_OVER: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"#;

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

    /// Runs a command that answers one stored protobuf message (or nothing) and decodes it;
    /// `what` names it in the error if the bytes are not that message.
    async fn fetch<M: Message + Default>(
        &self,
        command: redis::Cmd,
        what: &str,
    ) -> Result<Option<M>, Error> {
        let raw: Option<Vec<u8>> = command.query_async(&mut self.connection()).await?;
        raw.map(|bytes| {
            M::decode(bytes.as_slice()).map_err(|err| Error::Corrupt(format!("{what}: {err}")))
        })
        .transpose()
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
        let mut command = redis::cmd("GET");
        command.arg(self.session_key(session));
        self.fetch(command, &format!("session {session}")).await
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
    /// crashed gateway cannot block the session for longer; a lock left by an earlier
    /// incarnation of this replica (`replica` prefix, but not `incarnation`) is taken over at
    /// once, since that process is gone.
    pub async fn lock(
        &self,
        session: &str,
        token: &LockToken,
        wait: Duration,
        hold: Duration,
    ) -> Result<bool, Error> {
        let key = self.lock_key(session);
        let value = token.value();
        let deadline = tokio::time::Instant::now() + wait;
        let mut pause = Duration::from_millis(1);
        loop {
            let taken: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(&value)
                .arg("NX")
                .arg("PX")
                .arg(hold.as_millis() as u64)
                .query_async(&mut self.connection())
                .await?;
            if taken.is_some() {
                return Ok(true);
            }
            let holder: Option<String> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut self.connection())
                .await?;
            if let Some(holder) = holder.filter(|holder| token.left_by_earlier_incarnation(holder))
            {
                let replaced: i64 = redis::Script::new(TAKE_OVER)
                    .key(&key)
                    .arg(&holder)
                    .arg(&value)
                    .arg(hold.as_millis() as u64)
                    .invoke_async(&mut self.connection())
                    .await?;
                if replaced == 1 {
                    tracing::info!(session, stale = %holder, "took over a turn lock left by this replica before a restart");
                    return Ok(true);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    pub async fn unlock(&self, session: &str, token: &LockToken) -> Result<(), Error> {
        let _: i64 = redis::Script::new(UNLOCK)
            .key(self.lock_key(session))
            .arg(token.value())
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
        let mut command = redis::cmd("HGET");
        command.arg(self.run_key(session, turn)).arg(RESPONSE_FIELD);
        self.fetch(command, &format!("turn {turn}")).await
    }

    /// Records which workflow version the turn runs, unless an earlier attempt already did;
    /// returns the version of record, so a resumed turn keeps the version it started with.
    pub async fn claim_run_workflow(
        &self,
        session: &str,
        turn: &str,
        name: &str,
        version: u32,
    ) -> Result<(String, u32), Error> {
        let key = self.run_key(session, turn);
        let (_, stored): (bool, String) = redis::pipe()
            .cmd("HSETNX")
            .arg(&key)
            .arg(WORKFLOW_FIELD)
            .arg(format!("{name}@{version}"))
            .cmd("HGET")
            .arg(&key)
            .arg(WORKFLOW_FIELD)
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(RUN_RETENTION.as_millis() as u64)
            .ignore()
            .query_async(&mut self.connection())
            .await?;
        stored
            .rsplit_once('@')
            .and_then(|(name, version)| Some((name.to_owned(), version.parse().ok()?)))
            .ok_or_else(|| Error::Corrupt(format!("turn {turn}: workflow field {stored:?}")))
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

    /// The stored result of one step, if it arrived.
    pub async fn step_result(
        &self,
        session: &str,
        turn: &str,
        step: &str,
    ) -> Result<Option<pb::AgentResult>, Error> {
        let mut command = redis::cmd("HGET");
        command
            .arg(self.run_key(session, turn))
            .arg(format!("step:{step}"));
        self.fetch(command, &format!("step {step}")).await
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

    /// Every worker in the agent registry whose heartbeat has not expired; expired names are
    /// dropped from the index on the way.
    pub async fn agents(&self) -> Result<Vec<pb::AgentInfo>, Error> {
        let index = self.keys.agent_index();
        let mut connection = self.connection();
        let names: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&index)
            .query_async(&mut connection)
            .await?;
        let mut agents = Vec::with_capacity(names.len());
        for name in names {
            let Some((agent_type, instance)) = name.split_once(':') else {
                continue;
            };
            let raw: Option<Vec<u8>> = redis::cmd("GET")
                .arg(self.keys.agent(agent_type, instance))
                .query_async(&mut connection)
                .await?;
            match raw.map(|bytes| pb::AgentInfo::decode(bytes.as_slice())) {
                Some(Ok(info)) => agents.push(info),
                Some(Err(err)) => {
                    tracing::warn!(agent = %name, error = %err, "unreadable registry entry")
                }
                None => {
                    let _: i64 = redis::cmd("SREM")
                        .arg(&index)
                        .arg(&name)
                        .query_async(&mut connection)
                        .await?;
                }
            }
        }
        Ok(agents)
    }

    pub async fn ping(&self) -> Result<(), Error> {
        let _: String = redis::cmd("PING")
            .query_async(&mut self.connection())
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(replica: &str, incarnation: &str) -> LockToken {
        LockToken {
            replica: replica.into(),
            incarnation: incarnation.into(),
            turn: "t1".into(),
        }
    }

    #[test]
    fn only_locks_of_an_earlier_incarnation_of_the_same_replica_are_stale() {
        let mine = token("gw-a", "new");
        assert!(mine.left_by_earlier_incarnation("gw-a/old/t9"));
        assert!(
            !mine.left_by_earlier_incarnation("gw-a/new/t9"),
            "a lock of this very process is live"
        );
        assert!(
            !mine.left_by_earlier_incarnation("gw-b/old/t9"),
            "another replica may still be working"
        );
        assert!(!mine.left_by_earlier_incarnation("garbage"));
        assert_eq!(mine.value(), "gw-a/new/t1");
    }
}
