//! R3.3: agents never create the same tool twice, however many ask at once and whichever
//! registry replica they ask.

mod common;

use std::collections::HashSet;

use common::{Harness, owned_spec};
use tta_proto::v1 as pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_create_or_get_on_two_replicas_creates_exactly_one_tool() {
    let harness = Harness::start_adjusted("cog-race", 2, |_| {})
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for client_index in 0..40 {
        let mut client = harness.client(client_index % 2).await;
        tasks.push(tokio::spawn(async move {
            // Different versions and descriptions, same signature: still one tool.
            let mut spec = owned_spec("memory.search", &format!("1.0.{}", client_index % 4));
            spec.description = format!("search memory (client {client_index})");
            client
                .create_or_get_tool(pb::CreateOrGetToolRequest {
                    spec: Some(spec),
                    fallback_tool: String::new(),
                })
                .await
                .unwrap()
                .into_inner()
        }));
    }
    let mut created = 0;
    let mut returned = HashSet::new();
    let mut signatures = HashSet::new();
    for task in tasks {
        let response = task.await.unwrap();
        if response.outcome == pb::CreateOrGetOutcome::Created as i32 {
            created += 1;
        } else {
            assert_eq!(response.outcome, pb::CreateOrGetOutcome::Existing as i32);
        }
        let spec = response.spec.unwrap();
        returned.insert(format!("{}@{}", spec.name, spec.version));
        signatures.insert(response.signature);
    }
    assert_eq!(created, 1);
    assert_eq!(returned.len(), 1, "{returned:?}");
    assert_eq!(signatures.len(), 1);

    let listed = harness
        .client(1)
        .await
        .list_tools(pb::ListToolsRequest {
            prefix: "memory.".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.total, 1);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_on_one_replica_reaches_the_cache_of_the_other() {
    let harness = Harness::start_adjusted("cache-epoch", 2, |_| {})
        .await
        .unwrap();
    let mut first = harness.client(0).await;
    let mut second = harness.client(1).await;
    first
        .register_tool(pb::RegisterToolRequest {
            spec: Some(owned_spec("world.lookup", "1.0.0")),
        })
        .await
        .unwrap();
    let get = pb::GetToolRequest {
        name: "world.lookup".into(),
        version: String::new(),
    };
    // Warm the second replica's cache with the active version.
    let spec = second
        .get_tool(get.clone())
        .await
        .unwrap()
        .into_inner()
        .spec
        .unwrap();
    assert_eq!(spec.version, "1.0.0");
    first
        .deprecate_tool(pb::DeprecateToolRequest {
            name: "world.lookup".into(),
            version: "1.0.0".into(),
            reason: "replaced".into(),
        })
        .await
        .unwrap();
    tta_testkit::wait_until(
        common::WAIT,
        "the second replica to drop its cached spec",
        || {
            let mut second = second.clone();
            let get = get.clone();
            async move {
                let status = second.get_tool(get).await.err()?;
                (status.code() == tonic::Code::NotFound).then_some(())
            }
        },
    )
    .await
    .unwrap();
    harness.stop().await;
}
