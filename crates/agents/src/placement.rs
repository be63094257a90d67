//! Steering work away from hosts in trouble. A worker looks at its host's record in the host
//! registry (kept by the host's resource monitor); while the host is critical, and a worker of
//! the same type is alive and ready on a host that is not, it stops taking tasks. The broker's
//! competing consumers then hand every new task to the healthy workers. When no healthier
//! worker exists it keeps working: slow is better than nothing.

use std::{collections::HashSet, time::Duration};

use prost::Message;
use redis::aio::ConnectionManager;
use tokio::sync::watch;
use tta_proto::v1 as pb;
use tta_runtime::{Shutdown, hosts, redis::Keyspace};
use tta_types::AgentId;

/// Where a worker runs and who it is, for the placement decision.
#[derive(Debug, Clone)]
pub struct Placement {
    pub agent: AgentId,
    pub host: String,
    pub keys: Keyspace,
}

/// The host of a registered worker that takes tasks now. One that is draining (shutting down,
/// or stepping aside itself), unhealthy, isolated or expired cannot take over this worker's
/// share, so it must not make this one step aside.
fn ready_host(info: &pb::AgentInfo) -> Option<&str> {
    if info.status != pb::AgentStatus::Ready as i32 {
        return None;
    }
    info.labels.get("host").map(String::as_str)
}

/// The ready workers of `agent_type` in the agent registry with the host they report.
async fn peers(
    connection: &mut ConnectionManager,
    keys: &Keyspace,
    agent_type: &str,
) -> redis::RedisResult<Vec<(String, String)>> {
    let names: Vec<String> = redis::cmd("SMEMBERS")
        .arg(keys.agent_index())
        .query_async(connection)
        .await?;
    let instances: Vec<&str> = names
        .iter()
        .filter_map(|name| name.split_once(':'))
        .filter(|(kind, _)| *kind == agent_type)
        .map(|(_, instance)| instance)
        .collect();
    if instances.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for instance in &instances {
        pipe.cmd("GET").arg(keys.agent(agent_type, instance));
    }
    let entries: Vec<Option<Vec<u8>>> = pipe.query_async(connection).await?;
    Ok(instances
        .into_iter()
        .zip(entries)
        .filter_map(|(instance, raw)| {
            let info = pb::AgentInfo::decode(raw?.as_slice()).ok()?;
            let host = ready_host(&info)?.to_owned();
            Some((instance.to_owned(), host))
        })
        .collect())
}

impl Placement {
    /// Whether this worker should stop taking tasks now.
    pub async fn should_pause(
        &self,
        connection: &mut ConnectionManager,
    ) -> redis::RedisResult<bool> {
        let own = hosts::get(connection, &self.keys, &self.host).await?;
        if !own.is_some_and(|record| record.is_critical()) {
            return Ok(false);
        }
        let healthy: HashSet<String> = hosts::list(connection, &self.keys)
            .await?
            .into_iter()
            .filter(|record| !record.is_critical())
            .map(|record| record.host)
            .collect();
        if healthy.is_empty() {
            return Ok(false);
        }
        let peers = peers(connection, &self.keys, self.agent.agent_type.as_str()).await?;
        Ok(peers
            .iter()
            .any(|(instance, host)| *instance != self.agent.instance && healthy.contains(host)))
    }

    /// Re-decides every `interval` until shutdown; `paused` carries the decision to the
    /// consumer. Redis being away keeps the last decision.
    pub async fn run(
        self,
        mut connection: ConnectionManager,
        interval: Duration,
        paused: watch::Sender<bool>,
        shutdown: Shutdown,
    ) {
        let agent_type = self.agent.agent_type.to_string();
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.wait() => return,
            }
            let pause = match self.should_pause(&mut connection).await {
                Ok(pause) => pause,
                Err(err) => {
                    tracing::debug!(error = %err, "cannot read the host registry; keeping the last decision");
                    continue;
                }
            };
            if *paused.borrow() != pause {
                if pause {
                    tracing::warn!(host = %self.host, agent = %self.agent, "host is critical and a healthier worker is alive; taking no new tasks");
                } else {
                    tracing::info!(host = %self.host, agent = %self.agent, "taking tasks again");
                }
                paused.send_replace(pause);
            }
            metrics::gauge!("tta_agent_paused", "agent" => agent_type.clone()).set(if pause {
                1.0
            } else {
                0.0
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tta_runtime::hosts::HostRecord;
    use tta_testkit::{RedisServer, unique_prefix};
    use tta_types::AgentType;

    use pb::AgentStatus::{Draining, Ready};

    async fn register(
        connection: &mut ConnectionManager,
        keys: &Keyspace,
        instance: &str,
        host: &str,
        status: pb::AgentStatus,
    ) {
        let agent = AgentId::new(AgentType::Ipa, instance).unwrap();
        let info = pb::AgentInfo {
            id: Some(pb::AgentId::from(&agent)),
            labels: [("host".to_owned(), host.to_owned())].into(),
            status: status as i32,
            ..Default::default()
        };
        let _: () = redis::pipe()
            .cmd("SET")
            .arg(keys.agent("ipa", instance))
            .arg(info.encode_to_vec())
            .ignore()
            .cmd("SADD")
            .arg(keys.agent_index())
            .arg(agent.to_string())
            .ignore()
            .query_async(connection)
            .await
            .unwrap();
    }

    async fn host(
        connection: &mut ConnectionManager,
        keys: &Keyspace,
        name: &str,
        health: pb::HealthState,
    ) {
        let record = HostRecord {
            host: name.to_owned(),
            endpoint: String::new(),
            health,
            updated_ms: 0,
        };
        hosts::publish(connection, keys, &record, Duration::from_secs(30))
            .await
            .unwrap();
    }

    #[test]
    fn only_a_ready_peer_counts_as_alive() {
        let peer = |status: pb::AgentStatus| pb::AgentInfo {
            labels: [("host".to_owned(), "cool".to_owned())].into(),
            status: status as i32,
            ..Default::default()
        };
        assert_eq!(ready_host(&peer(Ready)), Some("cool"));
        for status in [
            pb::AgentStatus::Unspecified,
            pb::AgentStatus::Starting,
            Draining,
            pb::AgentStatus::Unhealthy,
            pb::AgentStatus::Isolated,
            pb::AgentStatus::Expired,
        ] {
            assert_eq!(ready_host(&peer(status)), None, "{status:?}");
        }
        let hostless = pb::AgentInfo {
            status: Ready as i32,
            ..Default::default()
        };
        assert_eq!(ready_host(&hostless), None);
    }

    #[tokio::test]
    async fn a_worker_on_a_critical_host_steps_aside_only_for_a_healthier_ready_peer() {
        let redis = RedisServer::start().unwrap();
        let client = redis::Client::open(redis.url()).unwrap();
        let mut connection = ConnectionManager::new(client).await.unwrap();
        let keys = Keyspace::new(&unique_prefix("placement"));
        let placement = Placement {
            agent: AgentId::new(AgentType::Ipa, "ipa-hot").unwrap(),
            host: "hot".to_owned(),
            keys: keys.clone(),
        };
        // No record of its host: nothing is known, it keeps working.
        assert!(!placement.should_pause(&mut connection).await.unwrap());

        register(&mut connection, &keys, "ipa-hot", "hot", Ready).await;
        host(&mut connection, &keys, "hot", pb::HealthState::Critical).await;
        // Critical, but no peer anywhere else: it keeps working.
        assert!(!placement.should_pause(&mut connection).await.unwrap());

        // A healthy host, but its worker takes no tasks.
        register(&mut connection, &keys, "ipa-other", "other", Draining).await;
        host(&mut connection, &keys, "other", pb::HealthState::Warn).await;
        assert!(!placement.should_pause(&mut connection).await.unwrap());

        register(&mut connection, &keys, "ipa-other", "other", Ready).await;
        host(&mut connection, &keys, "other", pb::HealthState::Critical).await;
        // The peer's host is just as critical.
        assert!(!placement.should_pause(&mut connection).await.unwrap());

        host(&mut connection, &keys, "other", pb::HealthState::Warn).await;
        assert!(placement.should_pause(&mut connection).await.unwrap());

        host(&mut connection, &keys, "hot", pb::HealthState::Ok).await;
        assert!(!placement.should_pause(&mut connection).await.unwrap());
    }
}
