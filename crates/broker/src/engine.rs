//! The broker's delivery engine over Redis Streams, independent of gRPC: publish, read for a
//! consumer, ack, nack, reclaim expired leases, promote delayed messages, and the dead-letter
//! queue. Every multi-key change is one Lua script (see `scripts`), so two broker replicas can
//! never deliver, retry or dead-letter the same entry twice.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use redis::{
    AsyncConnectionConfig, Client, Value, aio::ConnectionManager, aio::ConnectionManagerConfig,
    aio::MultiplexedConnection,
};
use tta_proto::v1 as pb;
use tta_runtime::redis::Keyspace;
use tta_types::{
    Priority,
    config::{BrokerConfig, RedisConfig},
};

use crate::{
    envelope::{StoredEntry, encode_stored, now_millis, string_of, timestamp_from_millis},
    error::Error,
    scripts::Scripts,
    topic::{Receipt, TopicKeys, priority_code},
};

/// Suggested wait after a publish was refused for backpressure.
const FULL_RETRY_AFTER: Duration = Duration::from_millis(250);
/// Consumer name under which the reclaimer briefly holds expired entries.
pub const RECLAIMER: &str = "tta-reclaimer";

/// A message to publish, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub topic: String,
    pub priority: Priority,
    pub headers: HashMap<String, String>,
    pub payload: prost::bytes::Bytes,
    pub idempotency_key: Option<String>,
    pub delay: Duration,
    pub content_type: String,
}

/// What happened to one published message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub message_id: String,
    pub duplicate: bool,
    /// When it becomes deliverable (later than now for delayed messages).
    pub visible_at_ms: i64,
}

/// What a publish result needs of a message once the message itself is in the request.
struct Slot {
    index: usize,
    priority: Priority,
    visible_at_ms: i64,
    id: String,
}

/// The publish script's compact answer: one status byte per message, then the first id of
/// each duplicate and the depth of each refusal, in order.
struct PublishReply {
    statuses: Vec<u8>,
    extras: Vec<Value>,
}

impl PublishReply {
    fn parse(reply: Vec<Value>, messages: usize) -> Result<Self, Error> {
        let mut items = reply.into_iter();
        let statuses = match items.next() {
            Some(Value::BulkString(statuses)) => statuses,
            other => {
                return Err(Error::Corrupt(format!(
                    "publish script answered without statuses: {other:?}"
                )));
            }
        };
        if statuses.len() != messages {
            return Err(Error::Corrupt(format!(
                "publish script answered {} results for {messages} messages",
                statuses.len()
            )));
        }
        Ok(Self {
            statuses,
            extras: items.collect(),
        })
    }
}

/// One message handed to a consumer.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivered {
    pub receipt: Receipt,
    pub entry: StoredEntry,
}

/// A consumer's place in a topic.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub keys: Arc<TopicKeys>,
    pub group: String,
    pub consumer: String,
    pub visibility_timeout: Duration,
}

/// Outcome of a nack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NackOutcome {
    /// Deliverable again after this backoff.
    RetryScheduled(Duration),
    DeadLettered,
}

/// Counts of one reclaim pass over a topic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reclaimed {
    pub reclaimed: u64,
    pub dead_lettered: u64,
}

/// How much of a topic's pending entries one [`Engine::reclaim`] call looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sweep {
    /// One bounded pass, going on from where the previous pass stopped (the background
    /// reclaimer).
    Resume,
    /// Passes until every pending entry was looked at (an operator's recovery).
    Whole,
}

/// `XAUTOCLAIM` calls per stream in one reclaim pass; each looks at up to 1,000 pending
/// entries, so a pass holds Redis for a few milliseconds at most.
const RECLAIM_SCANS_PER_PASS: u32 = 5;
/// Most passes of one whole sweep (millions of pending entries).
const MAX_SWEEP_PASSES: usize = 1_000;

/// Where the next reclaim pass of a topic starts in each priority stream's pending list:
/// `0-0` from the beginning, an entry id to go on from there, and (within a whole sweep) the
/// empty string for a stream already swept to its end, which the script skips.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ReclaimCursors([String; 3]);

const SWEPT: &str = "";

impl ReclaimCursors {
    fn start() -> Self {
        Self(["0-0".to_owned(), "0-0".to_owned(), "0-0".to_owned()])
    }

    /// The cursors after a pass answered `returned` (`0-0` = that stream reached its end). A
    /// whole sweep marks such a stream as swept so it is not walked again; the background
    /// reclaimer starts it over on its next pass.
    fn after_pass(&self, returned: [String; 3], sweep: Sweep) -> Self {
        let mut next = returned;
        if sweep == Sweep::Whole {
            for (cursor, before) in next.iter_mut().zip(&self.0) {
                if before == SWEPT || cursor == "0-0" {
                    *cursor = SWEPT.to_owned();
                }
            }
        }
        Self(next)
    }

    /// Every stream of a whole sweep reached its end.
    fn swept(&self) -> bool {
        self.0.iter().all(|cursor| cursor == SWEPT)
    }

    /// Where the background reclaimer goes on (a swept stream starts over).
    fn for_next_sweep(self) -> Self {
        Self(self.0.map(|cursor| {
            if cursor == SWEPT {
                "0-0".to_owned()
            } else {
                cursor
            }
        }))
    }
}

/// A dead-lettered message and why.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub id: String,
    pub entry: StoredEntry,
}

/// Queue depths and consumers of one topic.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TopicStats {
    pub depth: [u64; 3],
    pub delayed: u64,
    pub pending: u64,
    pub dead_letters: u64,
    pub oldest_enqueued_ms: Option<i64>,
    pub group: Option<String>,
    pub consumers: u32,
    pub lag: u64,
}

pub struct Engine {
    keyspace: Keyspace,
    client: Client,
    connection: ConnectionManager,
    config: BrokerConfig,
    scripts: Scripts,
    /// Topic → its consumer group; a group never changes once set, so caching is safe.
    groups: Mutex<HashMap<String, String>>,
    /// Topics this process has registered in the global topic set.
    known_topics: Mutex<HashSet<String>>,
    reclaim_cursors: Mutex<HashMap<String, ReclaimCursors>>,
    /// Topic → its key names, built once: every publish, read and ack needs them.
    topic_keys: Mutex<HashMap<String, Arc<TopicKeys>>>,
}

/// Beyond this many cached topics the key cache starts over, so a client inventing topic
/// names cannot grow it without bound.
const MAX_CACHED_TOPIC_KEYS: usize = 4096;

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("keyspace", &self.keyspace)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Connects lazily: the broker starts (and reports not-ready) while Redis is still down, and
    /// reconnects by itself after Redis restarts.
    pub fn new(redis: &RedisConfig, config: BrokerConfig) -> Result<Arc<Self>, Error> {
        let client = tta_runtime::redis::client(&redis.url)
            .map_err(|err| Error::Unavailable(err.to_string()))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(redis.connect_timeout))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let connection = ConnectionManager::new_lazy_with_config(client.clone(), manager_config)?;
        Ok(Arc::new(Self {
            keyspace: Keyspace::new(&redis.key_prefix),
            client,
            connection,
            config,
            scripts: Scripts::new(),
            groups: Mutex::new(HashMap::new()),
            known_topics: Mutex::new(HashSet::new()),
            reclaim_cursors: Mutex::new(HashMap::new()),
            topic_keys: Mutex::new(HashMap::new()),
        }))
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    pub fn keys(&self, topic: &str) -> Arc<TopicKeys> {
        let Ok(mut cached) = self.topic_keys.lock() else {
            return Arc::new(TopicKeys::new(&self.keyspace, topic));
        };
        if let Some(keys) = cached.get(topic) {
            return Arc::clone(keys);
        }
        if cached.len() >= MAX_CACHED_TOPIC_KEYS {
            cached.clear();
        }
        let keys = Arc::new(TopicKeys::new(&self.keyspace, topic));
        cached.insert(topic.to_owned(), Arc::clone(&keys));
        keys
    }

    fn topics_key(&self) -> String {
        self.keyspace.key(&["broker", "topics"])
    }

    fn connection(&self) -> ConnectionManager {
        self.connection.clone()
    }

    /// A connection of its own, for a consumer's blocking reads (which would stall every other
    /// command sharing a multiplexed connection).
    pub async fn dedicated_connection(
        &self,
        block: Duration,
    ) -> Result<MultiplexedConnection, Error> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(block + Duration::from_secs(5)));
        Ok(self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?)
    }

    /// Depth limits per priority: LOW is refused first, HIGH keeps the headroom.
    pub fn limits(&self) -> [u64; 3] {
        let max = self.config.max_topic_depth;
        let headroom = self.config.high_priority_headroom;
        let scaled = |share: f64| ((max as f64) * (1.0 - share)).floor().max(1.0) as u64;
        [max, scaled(headroom), scaled(2.0 * headroom)]
    }

    pub fn max_attempts(&self) -> u32 {
        self.config.retry.max_retries + 1
    }

    async fn remember_topic(&self, topic: &str) -> Result<(), Error> {
        let fresh = self
            .known_topics
            .lock()
            .map(|mut known| known.insert(topic.to_owned()))
            .unwrap_or(true);
        if fresh {
            let _: i64 = redis::cmd("SADD")
                .arg(self.topics_key())
                .arg(topic)
                .query_async(&mut self.connection())
                .await?;
        }
        Ok(())
    }

    /// Adds back the topics this process registered that `listed` lacks (Redis lost its topic
    /// set: restarted without persistence); returns them. Without this, the maintenance loop
    /// would never again promote retries or reclaim leases on those topics.
    pub async fn restore_topics(&self, listed: &[String]) -> Result<Vec<String>, Error> {
        let listed: HashSet<&str> = listed.iter().map(String::as_str).collect();
        let missing: Vec<String> = self
            .known_topics
            .lock()
            .map(|known| {
                known
                    .iter()
                    .filter(|topic| !listed.contains(topic.as_str()))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        if !missing.is_empty() {
            let _: i64 = redis::cmd("SADD")
                .arg(self.topics_key())
                .arg(&missing)
                .query_async(&mut self.connection())
                .await?;
        }
        Ok(missing)
    }

    /// Every topic any broker replica has seen.
    pub async fn topics(&self) -> Result<Vec<String>, Error> {
        let mut topics: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.topics_key())
            .query_async(&mut self.connection())
            .await?;
        topics.sort();
        Ok(topics)
    }

    /// Publishes messages (any mix of topics); one result per message, in order.
    pub async fn publish(&self, messages: Vec<Outgoing>) -> Vec<Result<Published, Error>> {
        let now = now_millis();
        let mut by_topic: HashMap<String, Vec<(usize, Outgoing)>> = HashMap::new();
        for (index, message) in messages.into_iter().enumerate() {
            by_topic
                .entry(message.topic.clone())
                .or_default()
                .push((index, message));
        }
        let total = by_topic.values().map(Vec::len).sum();
        let batches = by_topic
            .into_iter()
            .map(|(topic, batch)| self.publish_to_topic(topic, batch, now));
        let mut results: Vec<Option<Result<Published, Error>>> = (0..total).map(|_| None).collect();
        for batch in futures::future::join_all(batches).await {
            for (index, result) in batch {
                if let Some(slot) = results.get_mut(index) {
                    *slot = Some(result);
                }
            }
        }
        results
            .into_iter()
            .map(|result| {
                result.unwrap_or_else(|| Err(Error::Corrupt("publish result missing".into())))
            })
            .collect()
    }

    async fn publish_to_topic(
        &self,
        topic: String,
        batch: Vec<(usize, Outgoing)>,
        now: i64,
    ) -> Vec<(usize, Result<Published, Error>)> {
        let keys = self.keys(&topic);
        let limits = self.limits();
        let mut invocation = self.scripts.publish.prepare_invoke();
        for key in &keys.script_keys {
            invocation.key(key);
        }
        invocation
            .arg(now)
            .arg(limits[0])
            .arg(limits[1])
            .arg(limits[2])
            .arg(self.config.idempotency_window.as_millis() as u64);
        // What the results need once the messages themselves have moved into the request.
        let mut slots: Vec<Slot> = Vec::with_capacity(batch.len());
        for (index, message) in batch {
            let id = uuid::Uuid::now_v7().to_string();
            let due = if message.delay.is_zero() {
                0
            } else {
                now + message.delay.as_millis() as i64
            };
            let idempotency = message
                .idempotency_key
                .as_deref()
                .map(|key| keys.idempotency(&self.keyspace, key))
                .unwrap_or_default();
            let stored = pb::BrokerMessage {
                id,
                topic: String::new(),
                priority: pb::Priority::from(message.priority) as i32,
                headers: message.headers,
                payload: message.payload,
                attempts: 0,
                idempotency_key: message.idempotency_key.unwrap_or_default(),
                delay: (!message.delay.is_zero()).then(|| prost_types::Duration {
                    seconds: message.delay.as_secs() as i64,
                    nanos: message.delay.subsec_nanos() as i32,
                }),
                published_at: Some(timestamp_from_millis(now)),
                content_type: message.content_type,
                history: Vec::new(),
            };
            // The script reads the id only to remember it under the idempotency key.
            let id_for_script = if idempotency.is_empty() {
                ""
            } else {
                stored.id.as_str()
            };
            invocation
                .arg(priority_code(message.priority))
                .arg(id_for_script)
                .arg(encode_stored(&stored))
                .arg(idempotency)
                .arg(due);
            slots.push(Slot {
                index,
                priority: message.priority,
                visible_at_ms: due.max(now),
                id: stored.id,
            });
        }

        let outcome = async {
            self.remember_topic(&topic).await?;
            let reply: Vec<Value> = invocation.invoke_async(&mut self.connection()).await?;
            Ok::<_, Error>(reply)
        }
        .await;
        let reply = outcome.and_then(|reply| PublishReply::parse(reply, slots.len()));
        match reply {
            Ok(reply) => {
                let mut extras = reply.extras.into_iter();
                slots
                    .into_iter()
                    .zip(reply.statuses)
                    .map(|(slot, status)| {
                        let result = match status {
                            b'0' => Ok(Published {
                                message_id: slot.id,
                                duplicate: false,
                                visible_at_ms: slot.visible_at_ms,
                            }),
                            b'1' => match extras.next() {
                                Some(Value::BulkString(first)) => Ok(Published {
                                    message_id: String::from_utf8_lossy(&first).into_owned(),
                                    duplicate: true,
                                    visible_at_ms: now,
                                }),
                                other => Err(Error::Corrupt(format!(
                                    "publish script gave no first id for a duplicate: {other:?}"
                                ))),
                            },
                            b'2' => match extras.next() {
                                Some(Value::Int(depth)) => Err(Error::Full {
                                    topic: topic.clone(),
                                    priority: slot.priority.as_str(),
                                    depth: depth.max(0) as u64,
                                    limit: limits[priority_index(slot.priority)],
                                    retry_after: FULL_RETRY_AFTER,
                                }),
                                other => Err(Error::Corrupt(format!(
                                    "publish script gave no depth for a refusal: {other:?}"
                                ))),
                            },
                            other => Err(Error::Corrupt(format!(
                                "publish script answered the unknown status {:?}",
                                char::from(other)
                            ))),
                        };
                        (slot.index, result)
                    })
                    .collect()
            }
            Err(err) => {
                let text = err.to_string();
                slots
                    .iter()
                    .map(|slot| {
                        let err = match &err {
                            Error::Unavailable(_) => Error::Unavailable(text.clone()),
                            Error::Corrupt(_) => Error::Corrupt(text.clone()),
                            _ => Error::Redis(text.clone()),
                        };
                        (slot.index, Err(err))
                    })
                    .collect()
            }
        }
    }

    /// Makes `group` the consumer group of the topic (created at the start of its backlog) and
    /// records its lease length. A topic has exactly one group: it is a work queue, and fan-out
    /// publishes to several topics.
    pub async fn subscribe(
        &self,
        topic: &str,
        group: &str,
        visibility_timeout: Duration,
    ) -> Result<Arc<TopicKeys>, Error> {
        let keys = self.keys(topic);
        let mut connection = self.connection();
        let (claimed, existing): (bool, String) = redis::pipe()
            .atomic()
            .cmd("HSETNX")
            .arg(&keys.meta)
            .arg("group")
            .arg(group)
            .cmd("HGET")
            .arg(&keys.meta)
            .arg("group")
            .query_async(&mut connection)
            .await?;
        if !claimed && existing != group {
            return Err(Error::FailedPrecondition(format!(
                "topic {topic} is consumed by group {existing}; a topic is a work queue with one group (use Broadcast to several topics for fan-out)"
            )));
        }
        let _: () = redis::cmd("HSET")
            .arg(&keys.meta)
            .arg("visibility_timeout_ms")
            .arg(visibility_timeout.as_millis() as u64)
            .query_async(&mut connection)
            .await?;
        self.ensure_groups(&keys, group).await?;
        self.remember_topic(topic).await?;
        if let Ok(mut groups) = self.groups.lock() {
            groups.insert(topic.to_owned(), group.to_owned());
        }
        Ok(keys)
    }

    /// Creates the group on each priority stream (idempotent; also after Redis lost its data).
    pub async fn ensure_groups(&self, keys: &TopicKeys, group: &str) -> Result<(), Error> {
        let mut connection = self.connection();
        for stream in keys.streams() {
            let created: Result<(), redis::RedisError> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(stream)
                .arg(group)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut connection)
                .await;
            match created {
                Ok(()) => {}
                Err(err) if err.code() == Some("BUSYGROUP") => {}
                Err(err) => return Err(err.into()),
            }
        }
        Ok(())
    }

    /// The consumer group of a topic, if anyone has subscribed.
    pub async fn group_of(&self, topic: &str) -> Result<Option<String>, Error> {
        if let Some(group) = self
            .groups
            .lock()
            .ok()
            .and_then(|groups| groups.get(topic).cloned())
        {
            return Ok(Some(group));
        }
        let group: Option<String> = redis::cmd("HGET")
            .arg(&self.keys(topic).meta)
            .arg("group")
            .query_async(&mut self.connection())
            .await?;
        if let (Some(group), Ok(mut groups)) = (&group, self.groups.lock()) {
            groups.insert(topic.to_owned(), group.clone());
        }
        Ok(group)
    }

    /// One `XREADGROUP` of new entries for a consumer over the streams of `priorities`, at most
    /// `count` from each. With `block`, waits that long on an empty read; an entry arriving in
    /// any of them ends the wait. Entries come back highest priority first, FIFO within each.
    pub async fn read_streams(
        &self,
        subscription: &Subscription,
        connection: &mut MultiplexedConnection,
        priorities: &[Priority],
        count: usize,
        block: Option<Duration>,
    ) -> Result<Vec<Delivered>, Error> {
        if priorities.is_empty() || count == 0 {
            return Ok(Vec::new());
        }
        let mut command = redis::cmd("XREADGROUP");
        command
            .arg("GROUP")
            .arg(&subscription.group)
            .arg(&subscription.consumer)
            .arg("COUNT")
            .arg(count);
        if let Some(block) = block {
            command.arg("BLOCK").arg(block.as_millis() as u64);
        }
        command.arg("STREAMS");
        for priority in priorities {
            command.arg(subscription.keys.stream(*priority));
        }
        for _ in priorities {
            command.arg(">");
        }
        let reply: Value = command.query_async(connection).await?;
        let mut delivered = parse_stream_read(&subscription.keys, reply)?;
        // Stable: FIFO within a priority survives.
        delivered.sort_by_key(|entry| priority_index(entry.receipt.priority));
        Ok(delivered)
    }

    /// Acknowledges deliveries. Returns the indexes (into `receipts`) that were unknown or
    /// already settled.
    pub async fn ack(&self, receipts: &[Receipt]) -> Result<Vec<usize>, Error> {
        let mut by_topic: HashMap<&str, Vec<usize>> = HashMap::new();
        for (index, receipt) in receipts.iter().enumerate() {
            by_topic
                .entry(receipt.topic.as_str())
                .or_default()
                .push(index);
        }
        let mut unknown = Vec::new();
        for (topic, indexes) in by_topic {
            let Some(group) = self.group_of(topic).await? else {
                unknown.extend(indexes);
                continue;
            };
            let keys = self.keys(topic);
            let mut invocation = self.scripts.ack.prepare_invoke();
            for key in &keys.script_keys {
                invocation.key(key);
            }
            invocation.arg(&group);
            for index in &indexes {
                let receipt = &receipts[*index];
                invocation
                    .arg(priority_code(receipt.priority))
                    .arg(&receipt.entry_id);
            }
            let missing: Vec<usize> = invocation.invoke_async(&mut self.connection()).await?;
            unknown.extend(
                missing
                    .into_iter()
                    .filter_map(|position| indexes.get(position.wrapping_sub(1)).copied()),
            );
        }
        unknown.sort_unstable();
        Ok(unknown)
    }

    /// Acknowledges deliveries and returns how many were pending; the hot path of stream acks,
    /// one `XACK` per priority stream instead of one per entry. [`Engine::ack`] says which
    /// receipts were unknown, for callers that report it.
    pub async fn ack_batch(&self, receipts: &[Receipt]) -> Result<u64, Error> {
        let mut by_stream: HashMap<(&str, Priority), Vec<&str>> = HashMap::new();
        for receipt in receipts {
            by_stream
                .entry((receipt.topic.as_str(), receipt.priority))
                .or_default()
                .push(receipt.entry_id.as_str());
        }
        let mut acked = 0;
        for ((topic, priority), ids) in by_stream {
            let Some(group) = self.group_of(topic).await? else {
                continue;
            };
            let keys = self.keys(topic);
            let mut invocation = self.scripts.ack_batch.prepare_invoke();
            invocation.key(keys.stream(priority)).arg(&group).arg(ids);
            let count: u64 = invocation.invoke_async(&mut self.connection()).await?;
            acked += count;
        }
        Ok(acked)
    }

    /// Rejects a delivery: a transient failure schedules a retry with backoff (or dead-letters
    /// the message when it is out of attempts); a permanent one dead-letters it at once.
    pub async fn nack(
        &self,
        receipt: &Receipt,
        consumer: &str,
        permanent: bool,
        reason: &str,
        retry_after: Option<Duration>,
    ) -> Result<NackOutcome, Error> {
        let group = self.group_of(&receipt.topic).await?.ok_or_else(|| {
            Error::NotFound(format!("receipt {receipt} is unknown or already settled"))
        })?;
        let keys = self.keys(&receipt.topic);
        let retry = &self.config.retry;
        let mut invocation = self.scripts.nack.prepare_invoke();
        for key in &keys.script_keys {
            invocation.key(key);
        }
        invocation
            .arg(&group)
            .arg(priority_code(receipt.priority))
            .arg(&receipt.entry_id)
            .arg(consumer)
            .arg(now_millis())
            .arg(sanitize_reason(reason))
            .arg(if permanent { "1" } else { "0" })
            .arg(self.max_attempts())
            .arg(retry.base_delay.as_millis() as u64)
            .arg(retry.factor)
            .arg(retry.max_delay.as_millis() as u64)
            .arg(jitter_spread(retry.jitter))
            .arg(retry_after.map_or(0, |wait| wait.as_millis() as u64));
        let (outcome, backoff_ms): (i64, u64) =
            invocation.invoke_async(&mut self.connection()).await?;
        match outcome {
            0 => Ok(NackOutcome::RetryScheduled(Duration::from_millis(
                backoff_ms,
            ))),
            1 => Ok(NackOutcome::DeadLettered),
            _ => Err(Error::NotFound(format!(
                "receipt {receipt} is unknown or already settled"
            ))),
        }
    }

    /// Extends the lease of a delivery by resetting its idle time.
    pub async fn extend(
        &self,
        receipt: &Receipt,
        group: &str,
        consumer: &str,
    ) -> Result<bool, Error> {
        let keys = self.keys(&receipt.topic);
        let claimed: Vec<String> = redis::cmd("XCLAIM")
            .arg(keys.stream(receipt.priority))
            .arg(group)
            .arg(consumer)
            .arg(0)
            .arg(&receipt.entry_id)
            .arg("JUSTID")
            .query_async(&mut self.connection())
            .await?;
        Ok(!claimed.is_empty())
    }

    /// Ends the leases of the topic older than its visibility timeout (or `min_idle`): those
    /// messages are retried with backoff, or dead-lettered when out of attempts. One pass looks
    /// at a bounded share of the pending entries and the next one goes on from there, so a
    /// topic with a huge number of deliveries in flight never holds Redis for long; `sweep`
    /// makes passes until every pending entry has been looked at once.
    pub async fn reclaim(
        &self,
        topic: &str,
        min_idle: Option<Duration>,
        sweep: Sweep,
    ) -> Result<Reclaimed, Error> {
        let Some(group) = self.group_of(topic).await? else {
            return Ok(Reclaimed::default());
        };
        let keys = self.keys(topic);
        let min_idle = match min_idle {
            Some(idle) => idle,
            None => {
                let stored: Option<u64> = redis::cmd("HGET")
                    .arg(&keys.meta)
                    .arg("visibility_timeout_ms")
                    .query_async(&mut self.connection())
                    .await?;
                stored.map_or(self.config.visibility_timeout, Duration::from_millis)
            }
        };
        let retry = &self.config.retry;
        let mut total = Reclaimed::default();
        let mut cursors = match sweep {
            Sweep::Resume => self
                .reclaim_cursors
                .lock()
                .ok()
                .and_then(|cursors| cursors.get(topic).cloned())
                .unwrap_or_else(ReclaimCursors::start),
            Sweep::Whole => ReclaimCursors::start(),
        };
        // A whole sweep ends even if deliveries arrive as fast as it walks them.
        for _ in 0..MAX_SWEEP_PASSES {
            let mut invocation = self.scripts.reclaim.prepare_invoke();
            for key in &keys.script_keys {
                invocation.key(key);
            }
            invocation
                .arg(&group)
                .arg(min_idle.as_millis() as u64)
                .arg(1000)
                .arg(now_millis())
                .arg(self.max_attempts())
                .arg(retry.base_delay.as_millis() as u64)
                .arg(retry.factor)
                .arg(retry.max_delay.as_millis() as u64)
                .arg(jitter_spread(retry.jitter))
                .arg(RECLAIM_SCANS_PER_PASS);
            for cursor in &cursors.0 {
                invocation.arg(cursor);
            }
            let (reclaimed, dead_lettered, high, normal, low): (u64, u64, String, String, String) =
                invocation.invoke_async(&mut self.connection()).await?;
            total.reclaimed += reclaimed;
            total.dead_lettered += dead_lettered;
            cursors = cursors.after_pass([high, normal, low], sweep);
            if sweep == Sweep::Resume || cursors.swept() {
                break;
            }
        }
        if let Ok(mut stored) = self.reclaim_cursors.lock() {
            stored.insert(topic.to_owned(), cursors.for_next_sweep());
        }
        Ok(total)
    }

    /// Moves due delayed messages (scheduled publishes and retries) into their streams.
    pub async fn promote(&self, topic: &str) -> Result<u64, Error> {
        let keys = self.keys(topic);
        let mut invocation = self.scripts.promote.prepare_invoke();
        for key in &keys.script_keys {
            invocation.key(key);
        }
        invocation.arg(now_millis()).arg(1000);
        Ok(invocation.invoke_async(&mut self.connection()).await?)
    }

    /// Dead letters of a topic, oldest first, starting after `after` (exclusive).
    pub async fn dead_letters(
        &self,
        topic: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<DeadLetter>, u64), Error> {
        let keys = self.keys(topic);
        let start = after.map_or_else(|| "-".to_owned(), |id| format!("({id}"));
        let mut connection = self.connection();
        let (entries, total): (Value, u64) = redis::pipe()
            .cmd("XRANGE")
            .arg(keys.dlq())
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(limit)
            .cmd("XLEN")
            .arg(keys.dlq())
            .query_async(&mut connection)
            .await?;
        Ok((parse_entries(entries)?, total))
    }

    pub async fn dead_letter(&self, topic: &str, id: &str) -> Result<Option<DeadLetter>, Error> {
        let keys = self.keys(topic);
        let entries: Value = redis::cmd("XRANGE")
            .arg(keys.dlq())
            .arg(id)
            .arg(id)
            .query_async(&mut self.connection())
            .await?;
        Ok(parse_entries(entries)?.into_iter().next())
    }

    /// Moves dead letters back into the topic (the oldest `limit` when `ids` is empty).
    pub async fn replay(
        &self,
        topic: &str,
        ids: &[String],
        priority: Option<Priority>,
        limit: usize,
    ) -> Result<(u64, Vec<String>), Error> {
        let keys = self.keys(topic);
        let mut invocation = self.scripts.replay.prepare_invoke();
        for key in &keys.script_keys {
            invocation.key(key);
        }
        invocation
            .arg(priority.map_or("", priority_code))
            .arg(limit);
        for id in ids {
            invocation.arg(id);
        }
        let (replayed, missing): (u64, Vec<String>) =
            invocation.invoke_async(&mut self.connection()).await?;
        Ok((replayed, missing))
    }

    /// Deletes dead letters: the given ids, those older than `older_than_ms`, or all.
    pub async fn purge(
        &self,
        topic: &str,
        ids: &[String],
        older_than_ms: Option<i64>,
        all: bool,
    ) -> Result<u64, Error> {
        let keys = self.keys(topic);
        let mut connection = self.connection();
        if all {
            let length: u64 = redis::cmd("XLEN")
                .arg(keys.dlq())
                .query_async(&mut connection)
                .await?;
            let _: () = redis::cmd("DEL")
                .arg(keys.dlq())
                .query_async(&mut connection)
                .await?;
            return Ok(length);
        }
        if let Some(cutoff) = older_than_ms {
            let trimmed: u64 = redis::cmd("XTRIM")
                .arg(keys.dlq())
                .arg("MINID")
                .arg(format!("{cutoff}-0"))
                .query_async(&mut connection)
                .await?;
            return Ok(trimmed);
        }
        if ids.is_empty() {
            return Ok(0);
        }
        let deleted: u64 = redis::cmd("XDEL")
            .arg(keys.dlq())
            .arg(ids)
            .query_async(&mut connection)
            .await?;
        Ok(deleted)
    }

    pub async fn stats(&self, topic: &str) -> Result<TopicStats, Error> {
        let keys = self.keys(topic);
        let group = self.group_of(topic).await?;
        let mut connection = self.connection();
        let mut pipe = redis::pipe();
        for stream in keys.streams() {
            pipe.cmd("XLEN").arg(stream);
        }
        pipe.cmd("ZCARD")
            .arg(keys.delayed())
            .cmd("XLEN")
            .arg(keys.dlq());
        for stream in keys.streams() {
            pipe.cmd("XRANGE")
                .arg(stream)
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(1);
        }
        let (high, normal, low, delayed, dead_letters, first_high, first_normal, first_low): (
            u64,
            u64,
            u64,
            u64,
            u64,
            Value,
            Value,
            Value,
        ) = pipe.query_async(&mut connection).await?;
        let oldest_enqueued_ms = [first_high, first_normal, first_low]
            .into_iter()
            .filter_map(|reply| parse_entries(reply).ok())
            .filter_map(|entries| entries.into_iter().next())
            .filter_map(|letter| crate::envelope::entry_id_millis(&letter.id))
            .min();

        let mut stats = TopicStats {
            depth: [high, normal, low],
            delayed,
            dead_letters,
            oldest_enqueued_ms,
            group: group.clone(),
            ..TopicStats::default()
        };
        if let Some(group) = group {
            for stream in keys.streams() {
                let info: Result<Vec<HashMap<String, Value>>, redis::RedisError> =
                    redis::cmd("XINFO")
                        .arg("GROUPS")
                        .arg(stream)
                        .query_async(&mut connection)
                        .await;
                // A stream that vanished (Redis restarted without persistence) has no groups yet.
                let Ok(info) = info else { continue };
                for entry in info.iter().filter(|entry| {
                    entry.get("name").and_then(|v| string_of(v).ok()).as_deref() == Some(&group)
                }) {
                    let number = |field: &str| match entry.get(field) {
                        Some(Value::Int(n)) => u64::try_from(*n).unwrap_or_default(),
                        _ => 0,
                    };
                    stats.pending += number("pending");
                    stats.lag += number("lag");
                    stats.consumers = stats.consumers.max(number("consumers") as u32);
                }
            }
        }
        Ok(stats)
    }

    /// `PING` through the shared connection, for readiness.
    pub async fn ping(&self) -> Result<(), Error> {
        let _: String = redis::cmd("PING")
            .query_async(&mut self.connection())
            .await?;
        Ok(())
    }
}

pub(crate) fn priority_index(priority: Priority) -> usize {
    match priority {
        Priority::High => 0,
        Priority::Normal => 1,
        Priority::Low => 2,
    }
}

/// A random factor in `[1 - jitter, 1 + jitter]` that spreads retries of a burst of failures.
fn jitter_spread(jitter: f64) -> f64 {
    1.0 + jitter * (2.0 * fastrand::f64() - 1.0)
}

/// History lines are `|`- and newline-separated; keep reasons on one line and bounded.
fn sanitize_reason(reason: &str) -> String {
    reason
        .chars()
        .map(|c| if c == '|' || c.is_control() { ' ' } else { c })
        .take(512)
        .collect()
}

/// Parses an `XREADGROUP` reply over the three priority streams, HIGH first.
fn parse_stream_read(keys: &TopicKeys, reply: Value) -> Result<Vec<Delivered>, Error> {
    let streams: Vec<(Value, Value)> = match reply {
        Value::Nil => return Ok(Vec::new()),
        // RESP3 answers a map of stream name → entries.
        Value::Map(pairs) => pairs,
        Value::Array(streams) => streams
            .into_iter()
            .map(|stream| match stream {
                Value::Array(parts) => {
                    let mut parts = parts.into_iter();
                    match (parts.next(), parts.next()) {
                        (Some(name), Some(entries)) => Ok((name, entries)),
                        _ => Err(Error::Corrupt("malformed XREADGROUP stream".into())),
                    }
                }
                _ => Err(Error::Corrupt("malformed XREADGROUP stream".into())),
            })
            .collect::<Result<_, _>>()?,
        other => {
            return Err(Error::Corrupt(format!(
                "unexpected XREADGROUP reply {other:?}"
            )));
        }
    };
    let mut delivered = Vec::new();
    for (name, entries) in streams {
        let name = string_of(&name)?;
        let priority = Priority::DELIVERY_ORDER
            .into_iter()
            .find(|priority| keys.stream(*priority) == name)
            .ok_or_else(|| Error::Corrupt(format!("reply for unknown stream {name}")))?;
        for letter in parse_entries(entries)? {
            delivered.push(Delivered {
                receipt: Receipt {
                    topic: keys.topic.clone(),
                    priority,
                    entry_id: letter.id,
                },
                entry: letter.entry,
            });
        }
    }
    delivered.sort_by_key(|delivery| std::cmp::Reverse(delivery.receipt.priority));
    Ok(delivered)
}

/// Parses `[[id, [field, value, …]], …]`, taking ownership so payloads are moved, not copied;
/// entries without fields (deleted) are skipped.
fn parse_entries(reply: Value) -> Result<Vec<DeadLetter>, Error> {
    let entries = match reply {
        Value::Array(entries) => entries,
        Value::Nil => return Ok(Vec::new()),
        other => {
            return Err(Error::Corrupt(format!(
                "unexpected entries reply {other:?}"
            )));
        }
    };
    let mut parsed = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(parts) = entry else {
            return Err(Error::Corrupt("malformed stream entry".into()));
        };
        let mut parts = parts.into_iter();
        let (Some(id), Some(fields)) = (parts.next(), parts.next()) else {
            return Err(Error::Corrupt("malformed stream entry".into()));
        };
        if matches!(fields, Value::Nil) {
            continue;
        }
        parsed.push(DeadLetter {
            id: string_of(&id)?,
            entry: StoredEntry::from_fields(fields)?,
        });
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursors(high: &str, normal: &str, low: &str) -> [String; 3] {
        [high.to_owned(), normal.to_owned(), low.to_owned()]
    }

    #[test]
    fn a_whole_sweep_walks_each_stream_once_however_many_passes_each_needs() {
        // HIGH ends in the first pass, NORMAL in the second, LOW in the third.
        let start = ReclaimCursors::start();
        let first = start.after_pass(cursors("0-0", "7-0", "5-0"), Sweep::Whole);
        assert_eq!(first.0, cursors("", "7-0", "5-0"));
        assert!(!first.swept());
        let second = first.after_pass(cursors("", "0-0", "9-0"), Sweep::Whole);
        assert_eq!(
            second.0,
            cursors("", "", "9-0"),
            "a swept stream stays swept"
        );
        let third = second.after_pass(cursors("", "", "0-0"), Sweep::Whole);
        assert!(third.swept());
        assert_eq!(third.for_next_sweep(), ReclaimCursors::start());
    }

    #[test]
    fn the_background_reclaimer_starts_a_finished_stream_over() {
        let after = ReclaimCursors::start().after_pass(cursors("0-0", "7-0", "0-0"), Sweep::Resume);
        assert_eq!(after.0, cursors("0-0", "7-0", "0-0"));
        assert_eq!(after.clone().for_next_sweep(), after);
    }

    #[test]
    fn jitter_stays_within_its_band() {
        for _ in 0..1000 {
            let spread = jitter_spread(0.1);
            assert!((0.9..=1.1).contains(&spread), "{spread}");
        }
        assert_eq!(jitter_spread(0.0), 1.0);
    }

    #[test]
    fn reasons_are_kept_on_one_bounded_line() {
        assert_eq!(sanitize_reason("bad|input\nhere"), "bad input here");
        assert_eq!(sanitize_reason(&"x".repeat(1000)).len(), 512);
    }
}
