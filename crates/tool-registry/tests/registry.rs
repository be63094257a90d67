//! Registration, look-up, listing, deprecation, version compatibility and fallbacks.

mod common;

use common::{Harness, owned_spec};
use serde_json::json;
use tta_proto::v1 as pb;

fn register(spec: pb::ToolSpec) -> pb::RegisterToolRequest {
    pb::RegisterToolRequest { spec: Some(spec) }
}

#[tokio::test]
async fn registration_is_idempotent_and_conflicts_are_refused() {
    let harness = Harness::start("register").await.unwrap();
    let mut client = harness.client(0).await;
    let first = client
        .register_tool(register(owned_spec("world.item", "1.0.0")))
        .await
        .unwrap()
        .into_inner();
    assert!(first.created);
    let again = client
        .register_tool(register(owned_spec("world.item", "1.0.0")))
        .await
        .unwrap()
        .into_inner();
    assert!(!again.created);
    assert_eq!(again.spec.unwrap().signature, first.spec.unwrap().signature);

    let mut changed = owned_spec("world.item", "1.0.0");
    changed.description = "something else".into();
    let status = client.register_tool(register(changed)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::AlreadyExists);

    let mut bad = owned_spec("world.item", "1.0");
    let status = client
        .register_tool(register(bad.clone()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status
            .message()
            .starts_with("spec.version: not a semantic version")
    );
    bad.version = "1.0.0".into();
    let mut nested = json!({"type": "integer"});
    for _ in 0..7 {
        nested = json!({"type": "object", "properties": {"x": nested}});
    }
    bad.parameters_schema = nested.to_string();
    let status = client.register_tool(register(bad)).await.unwrap_err();
    assert_eq!(
        status.message(),
        "spec.parameters_schema: nesting depth 7 exceeds 5"
    );
    harness.stop().await;
}

#[tokio::test]
async fn minor_versions_must_stay_compatible_and_majors_may_break() {
    let harness = Harness::start("compat").await.unwrap();
    let mut client = harness.client(0).await;
    client
        .register_tool(register(owned_spec("world.map", "1.0.0")))
        .await
        .unwrap();

    let mut retyped = owned_spec("world.map", "1.1.0");
    retyped.parameters_schema =
        json!({"type": "object", "properties": {"n": {"type": "string"}}}).to_string();
    let status = client
        .register_tool(register(retyped.clone()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert!(
        status.message().contains("changed type"),
        "{}",
        status.message()
    );

    let mut removed = owned_spec("world.map", "1.1.0");
    removed.parameters_schema = json!({"type": "object", "properties": {}}).to_string();
    let status = client.register_tool(register(removed)).await.unwrap_err();
    assert!(
        status.message().contains("was removed"),
        "{}",
        status.message()
    );

    let mut added = owned_spec("world.map", "1.2.0");
    added.parameters_schema = json!({"type": "object", "properties": {"n": {"type": "integer"}, "z": {"type": "string"}}, "required": ["n"]}).to_string();
    client.register_tool(register(added)).await.unwrap();
    retyped.version = "2.0.0".into();
    client.register_tool(register(retyped)).await.unwrap();

    let latest = client
        .get_tool(pb::GetToolRequest {
            name: "world.map".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .spec
        .unwrap();
    assert_eq!(latest.version, "2.0.0");
    let exact = client
        .get_tool(pb::GetToolRequest {
            name: "world.map".into(),
            version: "1.2.0".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .spec
        .unwrap();
    assert_eq!(exact.version, "1.2.0");

    client
        .deprecate_tool(pb::DeprecateToolRequest {
            name: "world.map".into(),
            version: "2.0.0".into(),
            reason: "broken".into(),
        })
        .await
        .unwrap();
    let latest = client
        .get_tool(pb::GetToolRequest {
            name: "world.map".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .spec
        .unwrap();
    assert_eq!(latest.version, "1.2.0");
    let status = client
        .get_tool(pb::GetToolRequest {
            name: "world.none".into(),
            version: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    harness.stop().await;
}

#[tokio::test]
async fn listing_filters_sorts_and_pages() {
    let harness = Harness::start("list").await.unwrap();
    let mut client = harness.client(0).await;
    for name in ["world.c", "world.a", "world.b", "memory.x"] {
        client
            .register_tool(register(owned_spec(name, "1.0.0")))
            .await
            .unwrap();
    }
    client
        .deprecate_tool(pb::DeprecateToolRequest {
            name: "world.b".into(),
            version: "1.0.0".into(),
            reason: String::new(),
        })
        .await
        .unwrap();
    let request = pb::ListToolsRequest {
        prefix: "world.".into(),
        page_size: 2,
        ..Default::default()
    };
    let page = client
        .list_tools(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.total, 3);
    let names: Vec<_> = page.tools.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["world.a", "world.b"]);
    let next = client
        .list_tools(pb::ListToolsRequest {
            page_token: page.next_page_token.clone(),
            ..request.clone()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next.tools.len(), 1);
    assert!(next.next_page_token.is_empty());

    let status = client
        .list_tools(pb::ListToolsRequest {
            page_token: page.next_page_token,
            prefix: "memory.".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(status.message().starts_with("page_token:"));

    let active = client
        .list_tools(pb::ListToolsRequest {
            prefix: "world.".into(),
            status: pb::ToolStatus::Active as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(active.total, 2);
    harness.stop().await;
}

#[tokio::test]
async fn refused_creation_returns_the_named_fallback_or_a_clear_denial() {
    let harness = Harness::start("fallback").await.unwrap();
    let mut client = harness.client(0).await;
    client
        .register_tool(register(owned_spec("world.safe", "1.0.0")))
        .await
        .unwrap();
    let mut risky = owned_spec("web.fetch", "1.0.0");
    risky.safety = Some(pb::ToolSafetyFlags {
        network: true,
        ..Default::default()
    });

    let response = client
        .create_or_get_tool(pb::CreateOrGetToolRequest {
            spec: Some(risky.clone()),
            fallback_tool: "world.safe".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.outcome, pb::CreateOrGetOutcome::Fallback as i32);
    assert_eq!(response.spec.unwrap().name, "world.safe");
    assert_eq!(
        response.fallback_reason,
        "spec.safety.network: network tools are not allowed"
    );

    let status = client
        .create_or_get_tool(pb::CreateOrGetToolRequest {
            spec: Some(risky.clone()),
            fallback_tool: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);

    let status = client
        .create_or_get_tool(pb::CreateOrGetToolRequest {
            spec: Some(risky),
            fallback_tool: "world.missing".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert!(status.message().starts_with("fallback_tool:"));
    harness.stop().await;
}
