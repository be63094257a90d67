//! The Redis data model of the registry. Every key shares the hash tag `{tools}`, so the Lua
//! scripts that change several keys at once work on Redis Cluster too:
//!
//! - `tool:<name>` hash: version → spec JSON
//! - `names` sorted set (all scores 0, so lexicographic): every tool name, for prefix listing
//! - `sig` hash: signature → `name@version` of the active version created with it
//! - `used` hash: `name@version` → last use (ms since the epoch)
//! - `stats:<name@version>` hash and `lat:<name@version>` list: usage counters and the latest
//!   invocation durations (µs)
//! - `executors` hash: executor id → registration JSON (with its lease expiry)
//! - `epoch`: a counter bumped by every change, so other replicas drop their caches

use std::collections::HashMap;

use redis::{AsyncCommands, Script};
use serde::{Deserialize, Serialize};
use tta_runtime::redis::{Keyspace, RedisPool};

use crate::{
    error::Error,
    spec::{Status, ToolSpec},
};

/// Latest durations kept per tool version for its percentiles.
pub const LATENCY_WINDOW: isize = 512;
const TAG: &str = "tools";

/// Registers a version unless it (or, for create-or-get, its signature) exists. Returns
/// `{kind, payload}`: `created` with the stored JSON, `exists` with the stored JSON of the same
/// name and version, or `sig` with the `name@version` holding the signature.
const REGISTER: &str = r"
if ARGV[5] == '1' then
  local ref = redis.call('HGET', KEYS[3], ARGV[4])
  if ref then return {'sig', ref} end
end
local existing = redis.call('HGET', KEYS[1], ARGV[1])
if existing then return {'exists', existing} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], 0, ARGV[3])
if redis.call('HEXISTS', KEYS[3], ARGV[4]) == 0 then
  redis.call('HSET', KEYS[3], ARGV[4], ARGV[3] .. '@' .. ARGV[1])
end
redis.call('INCR', KEYS[4])
return {'created', ARGV[2]}
";

/// Replaces a stored version (deprecation) and drops it from the signature index.
const UPDATE: &str = r"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if redis.call('HGET', KEYS[2], ARGV[3]) == ARGV[4] then redis.call('HDEL', KEYS[2], ARGV[3]) end
redis.call('INCR', KEYS[3])
return 1
";

/// Deletes a version and everything kept about it.
const DELETE: &str = r"
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('ZREM', KEYS[2], ARGV[2]) end
if redis.call('HGET', KEYS[3], ARGV[3]) == ARGV[4] then redis.call('HDEL', KEYS[3], ARGV[3]) end
redis.call('HDEL', KEYS[4], ARGV[4])
redis.call('DEL', KEYS[5], KEYS[6])
redis.call('INCR', KEYS[7])
return 1
";

/// What a register attempt found.
#[derive(Debug, Clone, PartialEq)]
pub enum Registered {
    Created(ToolSpec),
    /// The same name and version was already stored (maybe with a different definition).
    Exists(ToolSpec),
    /// An active version with the same signature exists (create-or-get only).
    Signature(String),
}

/// Usage counters of one version.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    pub invocations: u64,
    pub successes: u64,
    pub failures: u64,
    pub timeouts: u64,
    pub denials: u64,
    pub latencies_us: Vec<u64>,
}

/// How an invocation ended, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
    Timeout,
    Denied,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Timeout => "timeout",
            Outcome::Denied => "denied",
        }
    }
}

/// An executor registration as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutorRecord {
    pub id: String,
    pub agent_type: String,
    pub instance: String,
    pub endpoint: String,
    /// `name` or `name@version`.
    pub tools: Vec<String>,
    pub max_concurrency: u32,
    pub expires_at_ms: u64,
}

impl ExecutorRecord {
    pub fn serves(&self, name: &str, version: &str) -> bool {
        self.tools
            .iter()
            .any(|tool| tool == name || *tool == crate::spec::reference(name, version))
    }
}

#[derive(Debug, Clone)]
pub struct Store {
    pool: RedisPool,
    keys: Keyspace,
    register: Script,
    update: Script,
    delete: Script,
}

impl Store {
    pub fn new(pool: RedisPool, keys: Keyspace) -> Self {
        Self {
            pool,
            keys,
            register: Script::new(REGISTER),
            update: Script::new(UPDATE),
            delete: Script::new(DELETE),
        }
    }

    pub fn keys(&self) -> &Keyspace {
        &self.keys
    }

    fn key(&self, parts: &[&str]) -> String {
        self.keys.tagged(TAG, parts)
    }

    /// The key holding every version of `name`.
    pub fn tool_key(&self, name: &str) -> String {
        tool_key(&self.keys, name)
    }

    async fn connection(&self) -> Result<tta_runtime::redis::Connection, Error> {
        self.pool
            .get()
            .await
            .map_err(|err| Error::Unavailable(format!("redis unavailable: {err}")))
    }

    pub async fn ping(&self) -> Result<(), String> {
        tta_runtime::redis::ping(&self.pool).await
    }

    /// Stores `spec` unless its name and version exist; with `by_signature`, also unless an
    /// active version with its signature exists. Atomic across every registry replica.
    pub async fn register(&self, spec: &ToolSpec, by_signature: bool) -> Result<Registered, Error> {
        let mut connection = self.connection().await?;
        let (kind, payload): (String, String) = self
            .register
            .key(self.tool_key(&spec.name))
            .key(self.key(&["names"]))
            .key(self.key(&["sig"]))
            .key(self.key(&["epoch"]))
            .arg(&spec.version)
            .arg(spec.to_json())
            .arg(&spec.name)
            .arg(&spec.signature)
            .arg(if by_signature { "1" } else { "0" })
            .invoke_async(&mut connection)
            .await?;
        match kind.as_str() {
            "created" => Ok(Registered::Created(parse(&payload)?)),
            "exists" => Ok(Registered::Exists(parse(&payload)?)),
            "sig" => Ok(Registered::Signature(payload)),
            other => Err(Error::Corrupt(format!(
                "register script answered {other:?}"
            ))),
        }
    }

    /// Every stored version of `name`.
    pub async fn versions(&self, name: &str) -> Result<Vec<ToolSpec>, Error> {
        let mut connection = self.connection().await?;
        let raw: HashMap<String, String> = connection.hgetall(self.tool_key(name)).await?;
        raw.values().map(|json| parse(json)).collect()
    }

    pub async fn get(&self, name: &str, version: &str) -> Result<Option<ToolSpec>, Error> {
        let mut connection = self.connection().await?;
        let raw: Option<String> = connection.hget(self.tool_key(name), version).await?;
        raw.map(|json| parse(&json)).transpose()
    }

    /// Tool names starting with `prefix`, in order.
    pub async fn names(&self, prefix: &str) -> Result<Vec<String>, Error> {
        let mut connection = self.connection().await?;
        let (min, max) = if prefix.is_empty() {
            ("-".to_owned(), "+".to_owned())
        } else {
            (format!("[{prefix}"), format!("[{prefix}\u{7f}"))
        };
        Ok(connection
            .zrangebylex(self.key(&["names"]), min, max)
            .await?)
    }

    /// Every version of every tool whose name starts with `prefix`.
    pub async fn all(&self, prefix: &str) -> Result<Vec<ToolSpec>, Error> {
        let names = self.names(prefix).await?;
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let mut connection = self.connection().await?;
        let mut pipe = redis::pipe();
        for name in &names {
            pipe.hgetall(self.tool_key(name));
        }
        let maps: Vec<HashMap<String, String>> = pipe.query_async(&mut connection).await?;
        let mut specs = Vec::new();
        for map in maps {
            for json in map.values() {
                specs.push(parse(json)?);
            }
        }
        Ok(specs)
    }

    /// Stores a changed `spec` (same name and version). False when it no longer exists.
    pub async fn update(&self, spec: &ToolSpec) -> Result<bool, Error> {
        let mut connection = self.connection().await?;
        let changed: i64 = self
            .update
            .key(self.tool_key(&spec.name))
            .key(self.key(&["sig"]))
            .key(self.key(&["epoch"]))
            .arg(&spec.version)
            .arg(spec.to_json())
            .arg(&spec.signature)
            .arg(spec.reference())
            .invoke_async(&mut connection)
            .await?;
        Ok(changed == 1)
    }

    pub async fn delete(&self, spec: &ToolSpec) -> Result<bool, Error> {
        let reference = spec.reference();
        let mut connection = self.connection().await?;
        let deleted: i64 = self
            .delete
            .key(self.tool_key(&spec.name))
            .key(self.key(&["names"]))
            .key(self.key(&["sig"]))
            .key(self.key(&["used"]))
            .key(self.key(&["stats", &reference]))
            .key(self.key(&["lat", &reference]))
            .key(self.key(&["epoch"]))
            .arg(&spec.version)
            .arg(&spec.name)
            .arg(&spec.signature)
            .arg(&reference)
            .invoke_async(&mut connection)
            .await?;
        Ok(deleted == 1)
    }

    /// The change counter; a different value means cached specs may be stale.
    pub async fn epoch(&self) -> Result<u64, Error> {
        let mut connection = self.connection().await?;
        let epoch: Option<u64> = connection.get(self.key(&["epoch"])).await?;
        Ok(epoch.unwrap_or(0))
    }

    /// Records last-use times (batched by the caller), keeping the later of old and new.
    pub async fn touch(&self, uses: &HashMap<String, u64>) -> Result<(), Error> {
        if uses.is_empty() {
            return Ok(());
        }
        let items: Vec<(&String, &u64)> = uses.iter().collect();
        let mut connection = self.connection().await?;
        connection
            .hset_multiple::<_, _, _, ()>(self.key(&["used"]), &items)
            .await?;
        Ok(())
    }

    pub async fn last_used(&self) -> Result<HashMap<String, u64>, Error> {
        let mut connection = self.connection().await?;
        Ok(connection.hgetall(self.key(&["used"])).await?)
    }

    pub async fn record(
        &self,
        reference: &str,
        outcome: Outcome,
        micros: Option<u64>,
    ) -> Result<(), Error> {
        let stats = self.key(&["stats", reference]);
        let mut pipe = redis::pipe();
        if outcome != Outcome::Denied {
            pipe.hincr(&stats, "invocations", 1).ignore();
        }
        let field = match outcome {
            Outcome::Success => "successes",
            Outcome::Failure => "failures",
            Outcome::Timeout => "timeouts",
            Outcome::Denied => "denials",
        };
        pipe.hincr(&stats, field, 1).ignore();
        if let Some(micros) = micros {
            let latencies = self.key(&["lat", reference]);
            pipe.lpush(&latencies, micros).ignore();
            pipe.ltrim(&latencies, 0, LATENCY_WINDOW - 1).ignore();
        }
        if outcome != Outcome::Denied {
            pipe.hset(self.key(&["used"]), reference, crate::spec::now_ms())
                .ignore();
        }
        let mut connection = self.connection().await?;
        pipe.query_async::<()>(&mut connection).await?;
        Ok(())
    }

    pub async fn usage(&self, references: &[String]) -> Result<Vec<Usage>, Error> {
        if references.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for reference in references {
            pipe.hgetall(self.key(&["stats", reference]));
            pipe.lrange(self.key(&["lat", reference]), 0, -1);
        }
        let mut connection = self.connection().await?;
        let replies: Vec<redis::Value> = pipe.query_async(&mut connection).await?;
        let mut usage = Vec::with_capacity(references.len());
        for pair in replies.chunks(2) {
            let counters: HashMap<String, u64> = match pair.first() {
                Some(value) => redis::from_redis_value(value.clone())
                    .map_err(|err| Error::Corrupt(format!("usage counters: {err}")))?,
                None => HashMap::new(),
            };
            let latencies_us: Vec<u64> = match pair.get(1) {
                Some(value) => redis::from_redis_value(value.clone())
                    .map_err(|err| Error::Corrupt(format!("usage counters: {err}")))?,
                None => Vec::new(),
            };
            let count = |name: &str| counters.get(name).copied().unwrap_or(0);
            usage.push(Usage {
                invocations: count("invocations"),
                successes: count("successes"),
                failures: count("failures"),
                timeouts: count("timeouts"),
                denials: count("denials"),
                latencies_us,
            });
        }
        Ok(usage)
    }

    pub async fn put_executor(&self, record: &ExecutorRecord) -> Result<(), Error> {
        let json = serde_json::to_string(record).map_err(|err| Error::Corrupt(err.to_string()))?;
        let mut connection = self.connection().await?;
        connection
            .hset::<_, _, _, ()>(self.key(&["executors"]), &record.id, json)
            .await?;
        Ok(())
    }

    pub async fn remove_executor(&self, id: &str) -> Result<bool, Error> {
        let mut connection = self.connection().await?;
        let removed: i64 = connection.hdel(self.key(&["executors"]), id).await?;
        Ok(removed == 1)
    }

    /// Executors whose lease has not expired; expired ones are removed on the way.
    pub async fn live_executors(&self) -> Result<Vec<ExecutorRecord>, Error> {
        let mut connection = self.connection().await?;
        let raw: HashMap<String, String> = connection.hgetall(self.key(&["executors"])).await?;
        let now = crate::spec::now_ms();
        let mut live = Vec::new();
        let mut expired = Vec::new();
        for (id, json) in raw {
            match serde_json::from_str::<ExecutorRecord>(&json) {
                Ok(record) if record.expires_at_ms > now => live.push(record),
                _ => expired.push(id),
            }
        }
        if !expired.is_empty() {
            connection
                .hdel::<_, _, ()>(self.key(&["executors"]), expired)
                .await?;
        }
        Ok(live)
    }
}

/// The hash holding every version of `name` (field: version, value: spec JSON); public so
/// `tta bench tools` can read the same stored bytes raw.
pub fn tool_key(keys: &Keyspace, name: &str) -> String {
    keys.tagged(TAG, &["tool", name])
}

fn parse(json: &str) -> Result<ToolSpec, Error> {
    ToolSpec::from_json(json).map_err(|err| Error::Corrupt(format!("stored spec: {err}")))
}

/// The latest active version among `versions` (highest semver).
pub fn latest_active(versions: &[ToolSpec]) -> Option<&ToolSpec> {
    versions
        .iter()
        .filter(|spec| spec.status == Status::Active)
        .filter_map(|spec| spec.semver().map(|version| (version, spec)))
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, spec)| spec)
}
