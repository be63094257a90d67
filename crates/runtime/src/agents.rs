//! The agent registry in Redis (R8.1): one record per live agent instance
//! (`<prefix>:agents:<type>:<instance>`, an encoded `tta.v1.AgentInfo` that expires unless
//! refreshed) and an index set of `type:instance` names for listing. Built-in workers write it
//! with their heartbeats, other agents through `tta.v1.AgentRegistry` on the gateway; both go
//! through these functions, so the layout is defined once.

use std::{fmt::Write as _, time::Duration};

use prost::Message;
use redis::aio::ConnectionLike;
use tta_proto::v1 as pb;

use crate::redis::Keyspace;

/// Label of an instance's record that names its own task topic.
pub const DIRECT_TOPIC_LABEL: &str = "direct_topic";
/// Label of a WBA's record listing the world ids it serves, sorted and comma-separated.
pub const WORLDS_LABEL: &str = "worlds";

/// Content type of an `AgentTask` on a broker topic.
pub const TASK_CONTENT_TYPE: &str = "application/x-protobuf; type=tta.v1.AgentTask";
/// Content type of an `AgentResult` on a reply topic.
pub const RESULT_CONTENT_TYPE: &str = "application/x-protobuf; type=tta.v1.AgentResult";

/// The topic every instance of an agent type consumes.
pub fn task_topic(agent_type: &str) -> String {
    format!("agent.{agent_type}")
}

/// The task id of a run's step (`<run_id>:<step_id>`); its attempts share it.
pub fn task_id(run_id: &str, step_id: &str) -> String {
    format!("{run_id}:{step_id}")
}

/// Capability every instance built on the shared worker runtime advertises: it hands its output
/// on to `AgentTask.next_steps` itself. The gateway chains steps only through agent types whose
/// every live instance has it; any other agent answers each of its tasks.
pub const NEXT_STEPS_CAPABILITY: &str = "next-steps";

/// The agent types with at least one live instance and no live instance without
/// [`NEXT_STEPS_CAPABILITY`].
pub fn types_handing_on(agents: &[pb::AgentInfo]) -> std::collections::HashSet<String> {
    let mut able = std::collections::HashSet::new();
    let mut unable = std::collections::HashSet::new();
    for info in agents {
        let Some(id) = info.id.as_ref() else { continue };
        if info
            .capabilities
            .iter()
            .any(|capability| capability == NEXT_STEPS_CAPABILITY)
        {
            able.insert(id.agent_type.clone());
        } else {
            unable.insert(id.agent_type.clone());
        }
    }
    able.retain(|agent_type| !unable.contains(agent_type));
    able
}

/// The idempotency key of a task an agent hands on. Apart from the gateway's own
/// ([`task_idempotency_key`]), so a step the gateway dispatches itself after a chain fell
/// silent is enqueued even if the chain's copy of its task is stuck.
pub fn handed_on_idempotency_key(task_id: &str) -> String {
    let mut key = task_idempotency_key(task_id, 1);
    key.push_str(".handed-on");
    key
}

/// The idempotency key of the gateway's publish of a task's attempt: a retried turn enqueues each
/// attempt once.
pub fn task_idempotency_key(task_id: &str, attempt: u32) -> String {
    // Sized once and pushed: every publish of a task builds one.
    let mut key = String::with_capacity(task_id.len() + 32);
    key.push_str("task.");
    // Keys use the shared id alphabet.
    key.extend(task_id.chars().map(|c| {
        if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':') {
            c
        } else {
            '_'
        }
    }));
    key.push('.');
    let _ = write!(key, "{attempt}");
    key
}

/// The topic only this instance consumes, for steps that need capabilities not every instance of
/// the type has (`WorkflowStep.required_capabilities`): `agent.<type>.direct.<instance>`, with
/// the characters topic names do not allow replaced by `.`.
pub fn direct_topic(agent_type: &str, instance: &str) -> String {
    let instance: String = instance
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '.'
            }
        })
        .collect();
    format!("agent.{agent_type}.direct.{instance}")
}

/// The registered instances of `agent_type`.
pub fn of_type<'a>(
    agents: &'a [pb::AgentInfo],
    agent_type: &'a str,
) -> impl Iterator<Item = &'a pb::AgentInfo> + 'a {
    agents.iter().filter(move |info| {
        info.id
            .as_ref()
            .is_some_and(|id| id.agent_type == agent_type)
    })
}

/// Live instances of `agent_type` that are ready and advertise every one of `capabilities`,
/// with the topic each one consumes alone.
pub fn capable<'a>(
    agents: &'a [pb::AgentInfo],
    agent_type: &'a str,
    capabilities: &'a [String],
) -> impl Iterator<Item = (&'a pb::AgentInfo, &'a str)> + 'a {
    agents.iter().filter_map(move |info| {
        let id = info.id.as_ref()?;
        let ready = info.status == pb::AgentStatus::Ready as i32
            || info.status == pb::AgentStatus::Unspecified as i32;
        let able = capabilities.iter().all(|c| info.capabilities.contains(c));
        let topic = info.labels.get(DIRECT_TOPIC_LABEL)?;
        (id.agent_type == agent_type && ready && able).then_some((info, topic.as_str()))
    })
}

/// How busy an instance says it is, 0.0 to 1.0: the larger of its average `load` since its
/// previous beat and the share of its slots taken at the beat. `load` only counts finished
/// work, so an instance stuck on long tasks would otherwise look idle.
pub fn busyness(info: &pb::AgentInfo) -> f64 {
    let taken = if info.max_in_flight == 0 {
        0.0
    } else {
        f64::from(info.in_flight) / f64::from(info.max_in_flight)
    };
    info.load.max(taken).clamp(0.0, 1.0)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_topics_use_only_characters_topics_allow() {
        assert_eq!(
            direct_topic("nga", "host-1:42"),
            "agent.nga.direct.host-1.42"
        );
    }

    #[test]
    fn task_keys_keep_their_format_and_the_id_alphabet() {
        // The broker deduplicates publishes on these keys: a changed format would enqueue a
        // retried task again across an upgrade.
        assert_eq!(
            task_idempotency_key("run-1:ipa.x_y", 3),
            "task.run-1:ipa.x_y.3"
        );
        assert_eq!(task_idempotency_key("rün/1 ", 1), "task.r_n_1_.1");
        assert_eq!(
            handed_on_idempotency_key("run-1:wba"),
            "task.run-1:wba.1.handed-on"
        );
    }

    #[test]
    fn only_ready_instances_with_every_capability_and_a_direct_topic_are_capable() {
        let info =
            |instance: &str, caps: &[&str], status: pb::AgentStatus, direct: bool| pb::AgentInfo {
                id: Some(pb::AgentId {
                    agent_type: "painter".to_owned(),
                    instance: instance.to_owned(),
                }),
                capabilities: caps.iter().map(|c| (*c).to_owned()).collect(),
                status: status as i32,
                labels: if direct {
                    [(
                        DIRECT_TOPIC_LABEL.to_owned(),
                        direct_topic("painter", instance),
                    )]
                    .into()
                } else {
                    Default::default()
                },
                ..Default::default()
            };
        let agents = vec![
            info("a", &["oil", "watercolor"], pb::AgentStatus::Ready, true),
            info("b", &["oil"], pb::AgentStatus::Ready, true),
            info("c", &["watercolor"], pb::AgentStatus::Draining, true),
            info("d", &["watercolor"], pb::AgentStatus::Ready, false),
        ];
        let wanted = vec!["watercolor".to_owned()];
        let found: Vec<&str> = capable(&agents, "painter", &wanted)
            .map(|(_, topic)| topic)
            .collect();
        assert_eq!(found, ["agent.painter.direct.a"]);
    }
}
