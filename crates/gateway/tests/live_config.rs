//! Gateway settings that change while it runs (R8.2): a new configuration handed to a running
//! gateway applies to the next request, without a restart.

// Helpers outside #[test] functions unwrap too: in a test a panic is a failed assertion.
#![allow(clippy::unwrap_used)]

use std::{sync::Arc, time::Duration};

use tonic::Code;
use tta_proto::v1::{self as pb, orchestrator_client::OrchestratorClient};
use tta_runtime::service::ServiceKind;
use tta_testkit::{RedisServer, start_in_process, test_config, wait_until};

fn turn(text: &str) -> pb::ProcessUserInputRequest {
    pb::ProcessUserInputRequest {
        session_id: "s-live".to_owned(),
        user_id: "player-1".to_owned(),
        text: text.to_owned(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_lowered_input_limit_applies_to_the_next_turn() {
    let redis = RedisServer::start().unwrap();
    let mut config = test_config(&redis.url(), "live-config");
    config.gateway.broker_endpoint = "http://127.0.0.1:9".to_owned();
    let gateway = start_in_process(ServiceKind::Gateway, config.clone(), tta_gateway::build)
        .await
        .unwrap();
    let mut client = OrchestratorClient::connect(format!("http://{}", gateway.grpc_addr.unwrap()))
        .await
        .unwrap();
    let text = "look at the lighthouse";
    // Under the limit it starts with, the text passes validation (with no broker the turn
    // fails later, on something other than `text`).
    let before = client.process_user_input(turn(text)).await;
    assert!(
        before
            .as_ref()
            .err()
            .is_none_or(|status| !status.message().starts_with("text")),
        "{before:?}"
    );

    config.gateway.max_input_chars = 10;
    gateway.config_updates.send_replace(Arc::new(config));
    let refused = wait_until(Duration::from_secs(5), "the new limit", || {
        let mut client = client.clone();
        async move {
            let status = client.process_user_input(turn(text)).await.err()?;
            (status.code() == Code::InvalidArgument).then_some(status)
        }
    })
    .await
    .unwrap();
    assert!(
        refused.message().starts_with("text") && refused.message().contains("the limit is 10"),
        "{refused:?}"
    );
}
