//! What the gateway keeps in Redis, all hash-tagged by session so one session's keys share a
//! cluster slot: the session record, its input history, a lock that serialises its turns
//! across gateway replicas, and each turn's run (step results as they arrive, then the final
//! response) — which is what makes a turn durable and a repeated `turn_id` idempotent.

use std::{sync::LazyLock, time::Duration};

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
/// Field of a run hash that holds the request of a resumable turn (see [`Store::remember_request`]).
const REQUEST_FIELD: &str = "request";

/// Who holds a session's turn lock: `<replica>/<incarnation>/<turn>/<attempt>`. The
/// incarnation is new for every process start, so a restarted replica recognises its own dead
/// predecessor's locks. The attempt tells apart two attempts of one turn in one process (a
/// client retrying while the first is still running): one attempt never releases a lock the
/// other took after its own had expired.
#[derive(Debug, Clone)]
pub struct LockToken {
    pub replica: String,
    pub incarnation: String,
    pub turn: String,
    pub attempt: u64,
}

impl LockToken {
    pub fn value(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.replica, self.incarnation, self.turn, self.attempt
        )
    }

    fn left_by_earlier_incarnation(&self, holder: &str) -> bool {
        let mut parts = holder.splitn(3, '/');
        let (Some(replica), Some(incarnation)) = (parts.next(), parts.next()) else {
            return false;
        };
        replica == self.replica && incarnation != self.incarnation
    }
}

/// What Redis holds about a turn when it starts (or resumes), read in one round trip.
#[derive(Debug, Default)]
pub struct TurnState {
    pub session: Option<pb::Session>,
    /// The final response, if the turn already finished.
    pub response: Option<pb::ProcessUserInputResponse>,
    /// The workflow version an earlier attempt started with.
    pub workflow: Option<(String, u32)>,
    /// Results stored by earlier attempts.
    pub steps: Vec<pb::AgentResult>,
    /// The session's recent inputs, oldest first, one per line.
    pub history: String,
}

/// A turn whose session lock was taken: its state, and whether taking the lock also claimed the
/// workflow it was asked to (see [`Store::try_lock_and_load`]).
#[derive(Debug)]
pub struct Locked {
    pub state: TurnState,
    pub claimed: bool,
}

impl TurnState {
    /// An earlier attempt of this turn got as far as choosing its workflow.
    pub fn resumed(&self) -> bool {
        self.workflow.is_some() || !self.steps.is_empty()
    }
}

/// A run record's fields: `response`, `workflow` and `step:<id>`.
type RunFields = Vec<(String, Vec<u8>)>;

fn parse_turn_state(
    session: &str,
    turn: &str,
    raw_session: Option<Vec<u8>>,
    run: RunFields,
    history: String,
) -> Result<TurnState, Error> {
    let mut state = TurnState {
        session: raw_session
            .map(|bytes| {
                pb::Session::decode(bytes.as_slice())
                    .map_err(|err| Error::Corrupt(format!("session {session}: {err}")))
            })
            .transpose()?,
        history,
        ..TurnState::default()
    };
    for (field, bytes) in run {
        if field == RESPONSE_FIELD {
            state.response = Some(
                pb::ProcessUserInputResponse::decode(bytes.as_slice())
                    .map_err(|err| Error::Corrupt(format!("turn {turn}: {err}")))?,
            );
        } else if field == WORKFLOW_FIELD {
            let text = String::from_utf8_lossy(&bytes);
            state.workflow = Some(parse_workflow_field(turn, &text)?);
        } else if field.starts_with("step:") {
            state.steps.push(
                pb::AgentResult::decode(bytes.as_slice())
                    .map_err(|err| Error::Corrupt(format!("{field}: {err}")))?,
            );
        }
    }
    Ok(state)
}

fn parse_workflow_field(turn: &str, stored: &str) -> Result<(String, u32), Error> {
    stored
        .rsplit_once('@')
        .and_then(|(name, version)| Some((name.to_owned(), version.parse().ok()?)))
        .ok_or_else(|| Error::Corrupt(format!("turn {turn}: workflow field {stored:?}")))
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

/// Records a turn's final response and advances its session in one step, unless another
/// attempt recorded a response first (then returns that one); either way releases the
/// session lock if the token still holds it, saving the turn a round trip before it answers.
/// KEYS: run, session, history, lock. ARGV: response, retention ms, session, remember input
/// (1/0), input text, history window, lock token.
const FINISH_TURN: &str = r#"
local function release()
  if redis.call('GET', KEYS[4]) == ARGV[7] then redis.call('DEL', KEYS[4]) end
end
if redis.call('HSETNX', KEYS[1], 'response', ARGV[1]) == 0 then
  release()
  return redis.call('HGET', KEYS[1], 'response')
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[3])
if ARGV[4] == '1' then
  redis.call('LPUSH', KEYS[3], ARGV[5])
  redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[6]) - 1)
end
release()
return false
"#;

/// Takes a session's lock and, only if it was free, reads the turn's state and claims the
/// workflow of a turn no attempt has started (an empty run record). KEYS: lock, session, run,
/// history. ARGV: lock token, hold ms, last history index, `name@version` to claim ("" for
/// none), retention ms. Returns nil when the lock is held, else `{session, run fields, history,
/// claimed (1/0)}`; the run fields are those read before the claim, the history is the recent
/// inputs oldest first, one per line (as the agents get it: one reply value to parse, not one
/// per input). A missing session is Lua `false`, which keeps its place in the reply as nil
/// under RESP2, the protocol our connections speak.
const LOCK_AND_LOAD: &str = r#"
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return nil end
local session = redis.call('GET', KEYS[2])
local run = redis.call('HGETALL', KEYS[3])
local newest_first = redis.call('LRANGE', KEYS[4], 0, tonumber(ARGV[3]))
local history = {}
for i = #newest_first, 1, -1 do history[#history + 1] = newest_first[i] end
local claimed = 0
if ARGV[4] ~= '' and #run == 0 then
  redis.call('HSET', KEYS[3], 'workflow', ARGV[4])
  redis.call('PEXPIRE', KEYS[3], ARGV[5])
  claimed = 1
end
return {session, run, table.concat(history, '\n'), claimed}
"#;

static LOCK_AND_LOAD_SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(LOCK_AND_LOAD));
static FINISH_TURN_SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(FINISH_TURN));
static UNLOCK_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(UNLOCK));

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

    /// One protobuf message stored in a field of a run record, if it is there.
    async fn run_field<M: Message + Default>(
        &self,
        session: &str,
        turn: &str,
        field: &str,
        what: &str,
    ) -> Result<Option<M>, Error> {
        let mut command = redis::cmd("HGET");
        command.arg(self.run_key(session, turn)).arg(field);
        self.fetch(command, what).await
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
        let _: i64 = UNLOCK_SCRIPT
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
        self.run_field(session, turn, RESPONSE_FIELD, &format!("turn {turn}"))
            .await
    }

    /// Keeps a turn's request in its run record (the first one stored wins), so a client that
    /// knows only the session and turn ids — a WebSocket client that reconnected, possibly to
    /// a restarted gateway — can run it again and get the one result.
    pub async fn remember_request(
        &self,
        request: &pb::ProcessUserInputRequest,
    ) -> Result<(), Error> {
        self.keep_in_run(
            &request.session_id,
            &request.turn_id,
            &[(REQUEST_FIELD.to_owned(), request.encode_to_vec())],
        )
        .await
    }

    /// The request [`Store::remember_request`] kept for a turn.
    pub async fn request(
        &self,
        session: &str,
        turn: &str,
    ) -> Result<Option<pb::ProcessUserInputRequest>, Error> {
        self.run_field(
            session,
            turn,
            REQUEST_FIELD,
            &format!("request of turn {turn}"),
        )
        .await
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
        parse_workflow_field(turn, &stored)
    }

    /// Removes the workflow claimed for a turn that was then refused (the record holds
    /// nothing else: it was empty when the claim was made under the session lock).
    pub async fn withdraw_run_workflow(&self, session: &str, turn: &str) -> Result<(), Error> {
        let _: () = redis::cmd("HDEL")
            .arg(self.run_key(session, turn))
            .arg(WORKFLOW_FIELD)
            .query_async(&mut self.connection())
            .await?;
        Ok(())
    }

    /// The session, the turn's run record and the session's history, in one round trip.
    pub async fn load_turn(
        &self,
        session: &str,
        turn: &str,
        window: usize,
    ) -> Result<TurnState, Error> {
        let mut pipe = redis::pipe();
        self.add_turn_reads(&mut pipe, session, turn, window);
        let (raw_session, run, mut history): (Option<Vec<u8>>, RunFields, Vec<String>) =
            pipe.query_async(&mut self.connection()).await?;
        history.reverse();
        parse_turn_state(session, turn, raw_session, run, history.join("\n"))
    }

    /// Takes the session's lock if it is free and reads what the turn needs in the same round
    /// trip; `None` when another turn holds the lock (wait for it with [`Self::lock`]). The
    /// reads are only used when the lock was taken, so they see no half-finished turn.
    ///
    /// With `claim`, a turn that no attempt has started yet (its run record is empty) also
    /// records that workflow version as the one it runs, saving [`Self::claim_run_workflow`]
    /// its round trip; [`Locked::claimed`] says whether it did.
    pub async fn try_lock_and_load(
        &self,
        session: &str,
        token: &LockToken,
        hold: Duration,
        turn: &str,
        window: usize,
        claim: Option<(&str, u32)>,
    ) -> Result<Option<Locked>, Error> {
        let claim = claim
            .map(|(name, version)| format!("{name}@{version}"))
            .unwrap_or_default();
        type Reply = Option<(Option<Vec<u8>>, RunFields, String, bool)>;
        let reply: Reply = LOCK_AND_LOAD_SCRIPT
            .key(self.lock_key(session))
            .key(self.session_key(session))
            .key(self.run_key(session, turn))
            .key(self.history_key(session))
            .arg(token.value())
            .arg(hold.as_millis() as u64)
            .arg(window.saturating_sub(1))
            .arg(claim)
            .arg(RUN_RETENTION.as_millis() as u64)
            .invoke_async(&mut self.connection())
            .await?;
        let Some((raw_session, run, history, claimed)) = reply else {
            return Ok(None);
        };
        let state = parse_turn_state(session, turn, raw_session, run, history)?;
        Ok(Some(Locked { state, claimed }))
    }

    fn add_turn_reads(&self, pipe: &mut redis::Pipeline, session: &str, turn: &str, window: usize) {
        pipe.cmd("GET")
            .arg(self.session_key(session))
            .cmd("HGETALL")
            .arg(self.run_key(session, turn))
            .cmd("LRANGE")
            .arg(self.history_key(session))
            .arg(0)
            .arg(window.saturating_sub(1));
    }

    /// Records the turn's response and, if it is the first, saves the session and (when
    /// `remember` is given) appends the input to the history, atomically. Returns the response
    /// recorded first when another attempt won. Releases the session lock `lock` holds, in the
    /// same step.
    pub async fn finish_turn(
        &self,
        turn: &str,
        session: &pb::Session,
        response: &pb::ProcessUserInputResponse,
        remember: Option<(&str, usize)>,
        lock: &LockToken,
    ) -> Result<Option<pb::ProcessUserInputResponse>, Error> {
        let id = &session.session_id;
        let (input, window) = remember.unwrap_or(("", 1));
        let first: Option<Vec<u8>> = FINISH_TURN_SCRIPT
            .key(self.run_key(id, turn))
            .key(self.session_key(id))
            .key(self.history_key(id))
            .key(self.lock_key(id))
            .arg(response.encode_to_vec())
            .arg(RUN_RETENTION.as_millis() as u64)
            .arg(session.encode_to_vec())
            .arg(if remember.is_some() { "1" } else { "0" })
            .arg(input)
            .arg(window.max(1))
            .arg(lock.value())
            .invoke_async(&mut self.connection())
            .await?;
        first
            .map(|bytes| {
                pb::ProcessUserInputResponse::decode(bytes.as_slice())
                    .map_err(|err| Error::Corrupt(format!("turn {turn}: {err}")))
            })
            .transpose()
    }

    /// The stored result of one step, if it arrived.
    pub async fn step_result(
        &self,
        session: &str,
        turn: &str,
        step: &str,
    ) -> Result<Option<pb::AgentResult>, Error> {
        self.run_field(
            session,
            turn,
            &format!("step:{step}"),
            &format!("step {step}"),
        )
        .await
    }

    /// Records step results as they arrived (each an encoded `AgentResult`, by step id: one
    /// answer, or a chain's answer with the results chained before it); the first one stored
    /// for a step wins (a redelivered task may answer twice).
    pub async fn record_steps(
        &self,
        session: &str,
        turn: &str,
        steps: Vec<(String, Vec<u8>)>,
    ) -> Result<(), Error> {
        let fields: Vec<(String, Vec<u8>)> = steps
            .into_iter()
            .map(|(step, encoded)| (format!("step:{step}"), encoded))
            .collect();
        self.keep_in_run(session, turn, &fields).await
    }

    /// Writes fields of a run record, each unless it is there already, and keeps the record for
    /// the retention period, in one round trip.
    async fn keep_in_run(
        &self,
        session: &str,
        turn: &str,
        fields: &[(String, Vec<u8>)],
    ) -> Result<(), Error> {
        let key = self.run_key(session, turn);
        let mut pipe = redis::pipe();
        for (field, value) in fields {
            pipe.cmd("HSETNX").arg(&key).arg(field).arg(value).ignore();
        }
        let _: () = pipe
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(RUN_RETENTION.as_millis() as u64)
            .ignore()
            .query_async(&mut self.connection())
            .await?;
        Ok(())
    }

    /// Every live instance in the agent registry, by type then instance.
    pub async fn agents(&self) -> Result<Vec<pb::AgentInfo>, Error> {
        Ok(tta_runtime::agents::list(&mut self.connection(), &self.keys).await?)
    }

    /// One instance's record, if it is live.
    pub async fn agent(
        &self,
        agent_type: &str,
        instance: &str,
    ) -> Result<Option<pb::AgentInfo>, Error> {
        tta_runtime::agents::get(&mut self.connection(), &self.keys, agent_type, instance)
            .await?
            .transpose()
            .map_err(|err| Error::Corrupt(format!("agent {agent_type}:{instance}: {err}")))
    }

    /// Writes an instance's record, live for `ttl`.
    pub async fn put_agent(&self, info: &pb::AgentInfo, ttl: Duration) -> Result<(), Error> {
        Ok(tta_runtime::agents::put(&mut self.connection(), &self.keys, info, ttl).await?)
    }

    /// Removes an instance's record; true when it was there.
    pub async fn remove_agent(&self, agent_type: &str, instance: &str) -> Result<bool, Error> {
        Ok(
            tta_runtime::agents::remove(&mut self.connection(), &self.keys, agent_type, instance)
                .await?,
        )
    }

    pub async fn ping(&self) -> Result<(), Error> {
        let _: String = redis::cmd("PING")
            .query_async(&mut self.connection())
            .await?;
        Ok(())
    }
}

#[cfg(test)]
impl Store {
    /// A store on a test's private Redis, its keys under a prefix of their own.
    pub(crate) async fn on(redis: &tta_testkit::RedisServer, test: &str) -> anyhow::Result<Self> {
        let client = tta_runtime::redis::client(&redis.url())?;
        Ok(Self::new(
            Keyspace::new(&tta_testkit::unique_prefix(test)),
            client.get_connection_manager().await?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(replica: &str, incarnation: &str) -> LockToken {
        attempt(replica, incarnation, 1)
    }

    fn attempt(replica: &str, incarnation: &str, attempt: u64) -> LockToken {
        LockToken {
            replica: replica.into(),
            incarnation: incarnation.into(),
            turn: "t1".into(),
            attempt,
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
        assert_eq!(mine.value(), "gw-a/new/t1/1");
    }

    #[tokio::test]
    async fn an_attempt_whose_lock_expired_does_not_release_the_next_attempts_lock()
    -> anyhow::Result<()> {
        let redis = tta_testkit::RedisServer::start()?;
        let store = Store::on(&redis, "lock-attempts").await?;
        let hold = Duration::from_millis(50);
        let first = attempt("gw-a", "now", 1);
        assert!(store.lock("s1", &first, Duration::ZERO, hold).await?);
        tokio::time::sleep(hold * 2).await;

        let second = attempt("gw-a", "now", 2);
        assert!(
            store
                .lock("s1", &second, Duration::ZERO, Duration::from_secs(5))
                .await?
        );
        // The first attempt, late, lets go of what it thinks is its lock.
        store.unlock("s1", &first).await?;

        let third = attempt("gw-a", "now", 3);
        assert!(
            !store.lock("s1", &third, Duration::ZERO, hold).await?,
            "the second attempt still holds the session"
        );
        store.unlock("s1", &second).await?;
        assert!(store.lock("s1", &third, Duration::ZERO, hold).await?);
        Ok(())
    }

    #[tokio::test]
    async fn taking_the_lock_claims_the_workflow_of_a_new_turn_only() -> anyhow::Result<()> {
        let redis = tta_testkit::RedisServer::start()?;
        let store = Store::on(&redis, "lock-claim").await?;
        let hold = Duration::from_secs(5);
        let first = attempt("gw-a", "now", 1);
        let locked = store
            .try_lock_and_load("s1", &first, hold, "t1", 5, Some(("collaborative", 3)))
            .await?
            .ok_or_else(|| anyhow::anyhow!("the session was free"))?;
        assert!(
            locked.claimed,
            "a new turn claims its workflow with the lock"
        );
        assert!(
            !locked.state.resumed(),
            "the state is the one read before the claim"
        );

        // While the lock is held, another attempt neither reads nor claims anything.
        let waiting = attempt("gw-b", "now", 1);
        assert!(
            store
                .try_lock_and_load("s1", &waiting, hold, "t1", 5, Some(("other", 1)))
                .await?
                .is_none()
        );
        store.unlock("s1", &first).await?;

        // The retry of the same turn finds the version the first attempt started with.
        let retry = store
            .try_lock_and_load("s1", &waiting, hold, "t1", 5, Some(("other", 1)))
            .await?
            .ok_or_else(|| anyhow::anyhow!("the session was free again"))?;
        assert!(!retry.claimed);
        assert!(retry.state.resumed());
        assert_eq!(retry.state.workflow, Some(("collaborative".to_owned(), 3)));
        let ttl_ms: i64 = redis::cmd("PTTL")
            .arg(store.run_key("s1", "t1"))
            .query_async(&mut store.connection())
            .await?;
        assert!(ttl_ms > 0, "the claimed run record expires ({ttl_ms} ms)");
        Ok(())
    }

    #[tokio::test]
    async fn a_turn_reads_the_last_inputs_of_its_window_oldest_first() -> anyhow::Result<()> {
        let redis = tta_testkit::RedisServer::start()?;
        let store = Store::on(&redis, "history-window").await?;
        let window = 3;
        for (turn, text) in ["go north", "look", "take lantern", "i feel calm"]
            .into_iter()
            .enumerate()
        {
            let turn = format!("t{turn}");
            let lock = LockToken {
                turn: turn.clone(),
                ..token("gw-a", "now")
            };
            let locked = store
                .try_lock_and_load("s1", &lock, Duration::from_secs(5), &turn, window, None)
                .await?
                .ok_or_else(|| anyhow::anyhow!("the session was free"))?;
            let session = locked.state.session.unwrap_or_else(|| pb::Session {
                session_id: "s1".to_owned(),
                ..pb::Session::default()
            });
            let response = pb::ProcessUserInputResponse::default();
            let replaced = store
                .finish_turn(&turn, &session, &response, Some((text, window)), &lock)
                .await?;
            assert!(replaced.is_none());
        }

        let expected = "look\ntake lantern\ni feel calm";
        let locked = store
            .try_lock_and_load(
                "s1",
                &token("gw-a", "now"),
                Duration::from_secs(5),
                "t9",
                window,
                None,
            )
            .await?
            .ok_or_else(|| anyhow::anyhow!("the session was free"))?;
        assert_eq!(locked.state.history, expected);
        let loaded = store.load_turn("s1", "t9", window).await?;
        assert_eq!(loaded.history, expected, "both reads agree");
        Ok(())
    }
}
