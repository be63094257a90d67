//! The host registry in Redis: each resource monitor keeps one record of its host (endpoint and
//! current health) alive with a TTL, so the gateway finds every monitor without static
//! configuration and an agent worker knows whether its own host is in trouble. A monitor that
//! dies simply stops refreshing its record, and its host drops out after the TTL.
//!
//! Keys share the hash tag `{hosts}` so the index and the records live in one cluster slot:
//! `<prefix>:{hosts}:host:<name>` (a hash) and `<prefix>:{hosts}:index` (a sorted set of host
//! names scored by the expiry of their record, so stale names can be pruned).

use std::{
    collections::HashMap,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use redis::aio::ConnectionLike;
use tta_proto::v1::HealthState;

use crate::redis::Keyspace;

/// What a monitor tells the rest of the stack about its host.
#[derive(Debug, Clone, PartialEq)]
pub struct HostRecord {
    /// The host name (`resource_monitor.host_name`).
    pub host: String,
    /// The monitor's gRPC URL.
    pub endpoint: String,
    /// The worst level among the host's active alerts.
    pub health: HealthState,
    /// When the record was written, in milliseconds since the Unix epoch.
    pub updated_ms: u64,
}

impl HostRecord {
    pub fn is_critical(&self) -> bool {
        self.health == HealthState::Critical
    }
}

/// `ok`, `warn` or `critical`, as stored and shown in diagnostics.
pub fn health_name(health: HealthState) -> &'static str {
    match health {
        HealthState::Critical => "critical",
        HealthState::Warn => "warn",
        HealthState::Ok | HealthState::Unspecified => "ok",
    }
}

fn parse_health(name: &str) -> HealthState {
    match name {
        "critical" => HealthState::Critical,
        "warn" => HealthState::Warn,
        "ok" => HealthState::Ok,
        _ => HealthState::Unspecified,
    }
}

/// This machine's name as the kernel knows it (what `hostname` prints), so a monitor and the
/// workers on the same host agree on it without configuration; `localhost` when unknown.
pub fn local_host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

impl Keyspace {
    /// The record of one host.
    pub fn host(&self, host: &str) -> String {
        self.tagged("hosts", &["host", host])
    }

    /// The names of the hosts with a record, scored by the record's expiry.
    pub fn host_index(&self) -> String {
        self.tagged("hosts", &["index"])
    }
}

/// Writes (or refreshes) `record`, alive for `ttl`.
pub async fn publish<C: ConnectionLike>(
    connection: &mut C,
    keys: &Keyspace,
    record: &HostRecord,
    ttl: Duration,
) -> redis::RedisResult<()> {
    let key = keys.host(&record.host);
    let ttl_ms = ttl.as_millis() as u64;
    redis::pipe()
        .atomic()
        .cmd("HSET")
        .arg(&key)
        .arg("host")
        .arg(&record.host)
        .arg("endpoint")
        .arg(&record.endpoint)
        .arg("health")
        .arg(health_name(record.health))
        .arg("updated_ms")
        .arg(record.updated_ms)
        .ignore()
        .cmd("PEXPIRE")
        .arg(&key)
        .arg(ttl_ms)
        .ignore()
        .cmd("ZADD")
        .arg(keys.host_index())
        .arg(now_ms() + ttl_ms)
        .arg(&record.host)
        .ignore()
        .query_async(connection)
        .await
}

/// Removes a host's record at once (a monitor shutting down cleanly).
pub async fn remove<C: ConnectionLike>(
    connection: &mut C,
    keys: &Keyspace,
    host: &str,
) -> redis::RedisResult<()> {
    redis::pipe()
        .atomic()
        .cmd("DEL")
        .arg(keys.host(host))
        .ignore()
        .cmd("ZREM")
        .arg(keys.host_index())
        .arg(host)
        .ignore()
        .query_async(connection)
        .await
}

fn record_from(fields: HashMap<String, String>) -> Option<HostRecord> {
    Some(HostRecord {
        host: fields.get("host")?.clone(),
        endpoint: fields.get("endpoint").cloned().unwrap_or_default(),
        health: parse_health(fields.get("health").map_or("", String::as_str)),
        updated_ms: fields
            .get("updated_ms")
            .and_then(|ms| ms.parse().ok())
            .unwrap_or(0),
    })
}

/// The record of `host`, if its monitor is alive.
pub async fn get<C: ConnectionLike>(
    connection: &mut C,
    keys: &Keyspace,
    host: &str,
) -> redis::RedisResult<Option<HostRecord>> {
    let fields: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(keys.host(host))
        .query_async(connection)
        .await?;
    Ok(record_from(fields))
}

/// Every host whose monitor is alive, by name.
pub async fn list<C: ConnectionLike>(
    connection: &mut C,
    keys: &Keyspace,
) -> redis::RedisResult<Vec<HostRecord>> {
    let index = keys.host_index();
    let (names,): (Vec<String>,) = redis::pipe()
        .cmd("ZREMRANGEBYSCORE")
        .arg(&index)
        .arg("-inf")
        .arg(now_ms())
        .ignore()
        .cmd("ZRANGE")
        .arg(&index)
        .arg(0)
        .arg(-1)
        .query_async(connection)
        .await?;
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for name in &names {
        pipe.cmd("HGETALL").arg(keys.host(name));
    }
    let all: Vec<HashMap<String, String>> = pipe.query_async(connection).await?;
    let mut records: Vec<HostRecord> = all.into_iter().filter_map(record_from).collect();
    records.sort_by(|a, b| a.host.cmp(&b.host));
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_keys_share_one_hash_tag() {
        let keys = Keyspace::new("ao");
        assert_eq!(keys.host("gpu-1"), "ao:{hosts}:host:gpu-1");
        assert_eq!(keys.host_index(), "ao:{hosts}:index");
    }

    #[test]
    fn records_round_trip_through_their_fields() {
        let fields = HashMap::from([
            ("host".to_owned(), "gpu-1".to_owned()),
            ("endpoint".to_owned(), "http://10.0.0.1:50054".to_owned()),
            ("health".to_owned(), "critical".to_owned()),
            ("updated_ms".to_owned(), "42".to_owned()),
        ]);
        let record = record_from(fields).unwrap();
        assert!(record.is_critical());
        assert_eq!(record.updated_ms, 42);
        assert_eq!(health_name(record.health), "critical");
        assert_eq!(record_from(HashMap::new()), None);
    }
}
