//! `CreateSession`, `GetSession` and `EndSession` on an in-process gateway over real gRPC and a
//! private redis-server: a session is created once and owned by its player, its settings and
//! metadata are held to the contract's limits, a world no WBA serves is refused, and ending is
//! idempotent.

// Helpers outside #[test] functions unwrap too: in a test a panic is a failed assertion.
#![allow(clippy::unwrap_used)]

use tonic::{Code, transport::Channel};
use tta_proto::v1::{
    self as pb, agent_registry_client::AgentRegistryClient, orchestrator_client::OrchestratorClient,
};
use tta_runtime::service::{RunningService, ServiceKind};
use tta_testkit::{RedisServer, start_in_process, test_config};

async fn gateway(redis: &RedisServer, name: &str) -> (RunningService, Channel) {
    let mut config = test_config(&redis.url(), name);
    config.gateway.broker_endpoint = "http://127.0.0.1:9".to_owned();
    let gateway = start_in_process(ServiceKind::Gateway, config, tta_gateway::build)
        .await
        .unwrap();
    let channel = Channel::from_shared(format!("http://{}", gateway.grpc_addr.unwrap()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    (gateway, channel)
}

fn create(user: &str, session: &str) -> pb::CreateSessionRequest {
    pb::CreateSessionRequest {
        user_id: user.to_owned(),
        session_id: session.to_owned(),
        ..Default::default()
    }
}

/// The status of a refused call, checked to name `field` first.
async fn refused(
    client: &mut OrchestratorClient<Channel>,
    request: pb::CreateSessionRequest,
    field: &str,
) -> Code {
    let status = client.create_session(request).await.unwrap_err();
    assert!(status.message().starts_with(field), "{field}: {status:?}");
    status.code()
}

#[tokio::test]
async fn a_session_is_created_once_owned_by_its_player_and_ended_once() {
    let redis = RedisServer::start().unwrap();
    let (_gateway, channel) = gateway(&redis, "sessions-lifecycle").await;
    let mut client = OrchestratorClient::new(channel);

    let mut request = create("player-1", "garden-walk");
    request.character_name = "Robin".to_owned();
    request.settings = Some(pb::TherapeuticSettings {
        intensity: pb::TherapeuticIntensity::Low as i32,
        avoid_topics: vec!["drowning".to_owned()],
        locale: "en-GB".to_owned(),
        goals: vec!["practise self-compassion".to_owned()],
    });
    request.metadata = [("client".to_owned(), "tests".to_owned())].into();
    let first = client
        .create_session(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert!(first.created);
    let session = first.session.unwrap();
    assert_eq!(session.character_name, "Robin");
    assert_eq!(
        session.settings.as_ref().unwrap().goals,
        ["practise self-compassion"]
    );

    let again = client.create_session(request).await.unwrap().into_inner();
    assert!(!again.created, "a repeat returns the stored session");
    assert_eq!(again.session.as_ref(), Some(&session));

    let taken = client
        .create_session(create("player-2", "garden-walk"))
        .await
        .unwrap_err();
    assert_eq!(taken.code(), Code::AlreadyExists, "{taken:?}");
    assert!(taken.message().starts_with("session_id"), "{taken:?}");

    let read = client
        .get_session(pb::GetSessionRequest {
            session_id: "garden-walk".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.session.as_ref(), Some(&session));

    let too_long = client
        .end_session(pb::EndSessionRequest {
            session_id: "garden-walk".to_owned(),
            reason: "x".repeat(257),
        })
        .await
        .unwrap_err();
    assert_eq!(too_long.code(), Code::InvalidArgument);
    assert!(too_long.message().starts_with("reason"), "{too_long:?}");

    let end = |reason: &str| pb::EndSessionRequest {
        session_id: "garden-walk".to_owned(),
        reason: reason.to_owned(),
    };
    let ended = client
        .end_session(end("player_quit"))
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    assert_eq!(ended.state, pb::SessionState::Ended as i32);
    assert_eq!(ended.end_reason, "player_quit");
    let ended_again = client
        .end_session(end("timeout"))
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    assert_eq!(
        ended_again, ended,
        "ending an ended session changes nothing"
    );

    for unknown in [
        client
            .get_session(pb::GetSessionRequest {
                session_id: "no-such-walk".to_owned(),
            })
            .await
            .unwrap_err(),
        client
            .end_session(pb::EndSessionRequest {
                session_id: "no-such-walk".to_owned(),
                reason: String::new(),
            })
            .await
            .unwrap_err(),
    ] {
        assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
        assert!(unknown.message().starts_with("session_id"), "{unknown:?}");
    }
}

#[tokio::test]
async fn settings_and_metadata_out_of_bounds_are_refused_naming_the_field() {
    let redis = RedisServer::start().unwrap();
    let (_gateway, channel) = gateway(&redis, "sessions-invalid").await;
    let mut client = OrchestratorClient::new(channel);

    let with_settings = |settings: pb::TherapeuticSettings| pb::CreateSessionRequest {
        settings: Some(settings),
        ..create("player-1", "")
    };
    let cases = [
        (
            with_settings(pb::TherapeuticSettings {
                goals: vec!["feel calmer".to_owned(), " ".to_owned()],
                ..Default::default()
            }),
            "settings.goals[1]",
        ),
        (
            with_settings(pb::TherapeuticSettings {
                goals: vec!["g".to_owned(); 17],
                ..Default::default()
            }),
            "settings.goals",
        ),
        (
            with_settings(pb::TherapeuticSettings {
                avoid_topics: vec!["t".to_owned(); 65],
                ..Default::default()
            }),
            "settings.avoid_topics",
        ),
        (
            with_settings(pb::TherapeuticSettings {
                locale: "not a tag".to_owned(),
                ..Default::default()
            }),
            "settings.locale",
        ),
        (
            pb::CreateSessionRequest {
                metadata: (0..33).map(|i| (format!("k{i}"), String::new())).collect(),
                ..create("player-1", "")
            },
            "metadata",
        ),
        (
            pb::CreateSessionRequest {
                metadata: [("note".to_owned(), "v".repeat(1025))].into(),
                ..create("player-1", "")
            },
            "metadata[\"note\"]",
        ),
        (
            pb::CreateSessionRequest {
                world_id: "../etc".to_owned(),
                ..create("player-1", "")
            },
            "world_id",
        ),
        (create("", ""), "user_id"),
    ];
    for (request, field) in cases {
        assert_eq!(
            refused(&mut client, request, field).await,
            Code::InvalidArgument,
            "{field}"
        );
    }
}

#[tokio::test]
async fn a_world_that_no_wba_serves_is_not_found() {
    let redis = RedisServer::start().unwrap();
    let (_gateway, channel) = gateway(&redis, "sessions-worlds").await;
    let mut client = OrchestratorClient::new(channel.clone());
    let in_world = |session: &str, world: &str| pb::CreateSessionRequest {
        world_id: world.to_owned(),
        ..create("player-1", session)
    };

    // No WBA says which worlds it holds: the world may exist, so the session is made.
    let unknown_yet = client
        .create_session(in_world("walk-1", "far-meadow"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unknown_yet.session.unwrap().world_id, "far-meadow");

    AgentRegistryClient::new(channel)
        .register_agent(pb::RegisterAgentRequest {
            agent: Some(pb::AgentInfo {
                id: Some(pb::AgentId {
                    agent_type: "wba".to_owned(),
                    instance: "wba-1".to_owned(),
                }),
                topic: "agent.wba".to_owned(),
                labels: [(
                    tta_runtime::agents::WORLDS_LABEL.to_owned(),
                    "quiet-garden,quiet-harbor".to_owned(),
                )]
                .into(),
                ..Default::default()
            }),
            heartbeat_ttl: None,
        })
        .await
        .unwrap();

    assert_eq!(
        refused(&mut client, in_world("walk-2", "far-meadow"), "world_id").await,
        Code::NotFound
    );
    // A repeat is answered with the stored session, whatever the WBAs serve now.
    let repeat = client
        .create_session(in_world("walk-1", "far-meadow"))
        .await
        .unwrap()
        .into_inner();
    assert!(!repeat.created);
    assert_eq!(
        refused(&mut client, create("player-2", "walk-1"), "session_id").await,
        Code::AlreadyExists
    );
    let served = client
        .create_session(in_world("walk-3", "quiet-garden"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(served.session.unwrap().world_id, "quiet-garden");
}
