//! `tta.v1.AgentRegistry` on an in-process gateway over real gRPC and a private redis-server:
//! an outside agent registers, heartbeats, is listed and filtered, expires when it stops, and
//! leaves cleanly; bad requests name the field.

// Helpers outside #[test] functions unwrap too: in a test a panic is a failed assertion.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tonic::Code;
use tta_proto::v1::{self as pb, agent_registry_client::AgentRegistryClient};
use tta_runtime::service::ServiceKind;
use tta_testkit::{RedisServer, start_in_process, test_config};

fn id(agent_type: &str, instance: &str) -> pb::AgentId {
    pb::AgentId {
        agent_type: agent_type.to_owned(),
        instance: instance.to_owned(),
    }
}

fn agent(agent_type: &str, instance: &str, capabilities: &[&str]) -> pb::AgentInfo {
    pb::AgentInfo {
        id: Some(id(agent_type, instance)),
        capabilities: capabilities.iter().map(|c| (*c).to_owned()).collect(),
        topic: format!("agent.{agent_type}"),
        ..Default::default()
    }
}

#[tokio::test]
async fn an_outside_agent_registers_heartbeats_is_listed_expires_and_leaves() {
    let redis = RedisServer::start().unwrap();
    let mut config = test_config(&redis.url(), "agent-registry");
    config.gateway.broker_endpoint = "http://127.0.0.1:9".to_owned();
    let gateway = start_in_process(ServiceKind::Gateway, config, tta_gateway::build)
        .await
        .unwrap();
    let mut client = AgentRegistryClient::connect(format!("http://{}", gateway.grpc_addr.unwrap()))
        .await
        .unwrap();

    let registered = client
        .register_agent(pb::RegisterAgentRequest {
            agent: Some(agent("memory", "m-1", &["memory", "search"])),
            heartbeat_ttl: prost_types::Duration::try_from(Duration::from_secs(1)).ok(),
        })
        .await
        .unwrap()
        .into_inner();
    let stored = registered.agent.unwrap();
    assert_eq!(stored.status, pb::AgentStatus::Ready as i32);
    assert!(stored.last_heartbeat.is_some());
    assert_eq!(
        registered.heartbeat_interval,
        prost_types::Duration::try_from(Duration::from_secs(1) / 3).ok(),
        "a third of the TTL"
    );
    client
        .register_agent(pb::RegisterAgentRequest {
            agent: Some(agent("critic", "c-1", &["critique"])),
            heartbeat_ttl: None,
        })
        .await
        .unwrap();

    let by_capability = client
        .list_agents(pb::ListAgentsRequest {
            capability: "search".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_capability.agents.len(), 1);
    assert_eq!(by_capability.agents[0].id, Some(id("memory", "m-1")));
    let first_page = client
        .list_agents(pb::ListAgentsRequest {
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first_page.agents[0].id, Some(id("critic", "c-1")));
    let second_page = client
        .list_agents(pb::ListAgentsRequest {
            page_size: 1,
            page_token: first_page.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second_page.agents[0].id, Some(id("memory", "m-1")));
    assert!(second_page.next_page_token.is_empty());

    // Heartbeats keep it alive past its 1 s TTL and carry its load.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        client
            .heartbeat(pb::HeartbeatRequest {
                id: Some(id("memory", "m-1")),
                status: pb::AgentStatus::Ready as i32,
                in_flight: 3,
                load: 0.5,
                stats: None,
            })
            .await
            .unwrap();
    }
    let alive = client
        .get_agent(pb::GetAgentRequest {
            id: Some(id("memory", "m-1")),
        })
        .await
        .unwrap()
        .into_inner()
        .agent
        .unwrap();
    assert_eq!(alive.in_flight, 3);
    assert_eq!(alive.load, 0.5);

    // Without heartbeats it expires and must register again.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let gone = client
        .heartbeat(pb::HeartbeatRequest {
            id: Some(id("memory", "m-1")),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);

    let left = client
        .deregister_agent(pb::DeregisterAgentRequest {
            id: Some(id("critic", "c-1")),
            reason: "shutdown".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(left.existed);
    let again = client
        .deregister_agent(pb::DeregisterAgentRequest {
            id: Some(id("critic", "c-1")),
            reason: "shutdown".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!again.existed);
    let listed = client
        .list_agents(pb::ListAgentsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.agents.is_empty(), "{listed:?}");

    let cases = [
        (
            pb::RegisterAgentRequest {
                agent: Some(pb::AgentInfo {
                    topic: String::new(),
                    ..agent("memory", "m-2", &[])
                }),
                heartbeat_ttl: None,
            },
            "agent.topic",
        ),
        (
            pb::RegisterAgentRequest {
                agent: Some(agent("memory", "bad instance!", &[])),
                heartbeat_ttl: None,
            },
            "agent.id.instance",
        ),
        (
            pb::RegisterAgentRequest {
                agent: Some(agent("memory", "m-2", &[])),
                heartbeat_ttl: prost_types::Duration::try_from(Duration::from_secs(3600)).ok(),
            },
            "heartbeat_ttl",
        ),
    ];
    for (request, field) in cases {
        let status = client.register_agent(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().starts_with(field), "{field}: {status:?}");
    }
    gateway.stop(Duration::from_secs(2)).await.unwrap();
}
