//! The agent registry in Redis (R8.1): one record per live agent instance
//! (`<prefix>:agents:<type>:<instance>`, an encoded `tta.v1.AgentInfo` that expires unless
//! refreshed) and an index set of `type:instance` names for listing. Built-in workers write it
//! with their heartbeats, other agents through `tta.v1.AgentRegistry` on the gateway; both go
//! through these functions, so the layout is defined once.

use std::time::Duration;

use prost::Message;
use redis::aio::ConnectionLike;
use tta_proto::v1 as pb;

use crate::redis::Keyspace;

fn member(agent_type: &str, instance: &str) -> String {
    format!("{agent_type}:{instance}")
}

/// Writes (or refreshes) an instance's record, live for `ttl`.
pub async fn put<C: ConnectionLike>(
    connection: &mut C,
    keys: &Keyspace,
    info: &pb::AgentInfo,
    ttl: Duration,
) -> Result<(), redis::RedisError> {
    let id = info.id.clone().unwrap_or_default();
    redis::pipe()
        .cmd("SET")
        .arg(keys.agent(&id.agent_type, &id.instance))
        .arg(info.encode_to_vec())
        .arg("PX")
        .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1))
        .ignore()
        .cmd("SADD")
        .arg(keys.agent_index())
        .arg(member(&id.agent_type, &id.instance))
        .ignore()
        .query_async(connection)
        .await
}

/// Removes an instance's record; true when it was there.
pub async fn remove<C: ConnectionLike>(
    connection: &mut C,
    keys: &Keyspace,
    agent_type: &str,
    instance: &str,
) -> Result<bool, redis::RedisError> {
    let (deleted,): (u64,) = redis::pipe()
        .cmd("DEL")
        .arg(keys.agent(agent_type, instance))
        .cmd("SREM")
        .arg(keys.agent_index())
        .arg(member(agent_type, instance))
        .ignore()
        .query_async(connection)
        .await?;
    Ok(deleted > 0)
}

/// One instance's record, if it is live. A record that does not decode is reported as such.
pub async fn get<C: ConnectionLike>(
    connection: &mut C,
    keys: &Keyspace,
    agent_type: &str,
    instance: &str,
) -> Result<Option<Result<pb::AgentInfo, prost::DecodeError>>, redis::RedisError> {
    let raw: Option<Vec<u8>> = redis::cmd("GET")
        .arg(keys.agent(agent_type, instance))
        .query_async(connection)
        .await?;
    Ok(raw.map(|bytes| pb::AgentInfo::decode(bytes.as_slice())))
}

/// Every live instance, ordered by agent type then instance; names whose record expired are
/// pruned from the index on the way, unreadable records are skipped with a warning.
pub async fn list<C: ConnectionLike>(
    connection: &mut C,
    keys: &Keyspace,
) -> Result<Vec<pb::AgentInfo>, redis::RedisError> {
    let index = keys.agent_index();
    let mut names: Vec<String> = redis::cmd("SMEMBERS")
        .arg(&index)
        .query_async(connection)
        .await?;
    names.sort();
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let mut fetch = redis::pipe();
    let mut listed = Vec::with_capacity(names.len());
    for name in &names {
        let Some((agent_type, instance)) = name.split_once(':') else {
            continue;
        };
        fetch.cmd("GET").arg(keys.agent(agent_type, instance));
        listed.push(name.clone());
    }
    let records: Vec<Option<Vec<u8>>> = fetch.query_async(connection).await?;
    let mut agents = Vec::with_capacity(records.len());
    let mut expired = Vec::new();
    for (name, raw) in listed.into_iter().zip(records) {
        match raw.map(|bytes| pb::AgentInfo::decode(bytes.as_slice())) {
            Some(Ok(info)) => agents.push(info),
            Some(Err(err)) => {
                tracing::warn!(agent = %name, error = %err, "unreadable registry entry")
            }
            None => expired.push(name),
        }
    }
    if !expired.is_empty() {
        let _: u64 = redis::cmd("SREM")
            .arg(&index)
            .arg(&expired)
            .query_async(connection)
            .await?;
    }
    Ok(agents)
}
