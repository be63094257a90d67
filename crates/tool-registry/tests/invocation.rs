//! Invocation: schema validation naming the field, built-in tools, forwarding to executors,
//! timeouts that never re-run a tool, usage statistics and cleanup of idle tools.

mod common;

use std::{sync::atomic::Ordering, time::Duration};

use common::{CountingExecutor, Harness, owned_spec, serve_executor};
use tta_proto::v1 as pb;

fn invoke(name: &str, args: &str) -> pb::InvokeToolRequest {
    pb::InvokeToolRequest {
        name: name.into(),
        args: Some(pb::invoke_tool_request::Args::ArgsJson(args.into())),
        ..Default::default()
    }
}

#[allow(clippy::expect_used)] // a helper of tests: failing here fails the test
async fn wait_for_builtins(
    client: &mut tta_proto::v1::tool_registry_client::ToolRegistryClient<tonic::transport::Channel>,
) {
    tta_testkit::wait_until(common::WAIT, "built-in tools", || {
        let mut client = client.clone();
        async move {
            client
                .get_tool(pb::GetToolRequest {
                    name: "dice.roll".into(),
                    version: String::new(),
                })
                .await
                .ok()
                .map(|_| ())
        }
    })
    .await
    .expect("built-in tools registered");
}

#[tokio::test]
async fn schema_invalid_arguments_are_refused_naming_the_field() {
    let harness = Harness::start("invalid-args").await.unwrap();
    let mut client = harness.client(0).await;
    wait_for_builtins(&mut client).await;

    let status = client
        .invoke_tool(invoke("dice.roll", r#"{"sides": "six"}"#))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().starts_with("args.sides:"),
        "{}",
        status.message()
    );

    let status = client
        .invoke_tool(invoke("dice.roll", "{}"))
        .await
        .unwrap_err();
    assert_eq!(status.message(), "args.sides: is required");

    let status = client
        .invoke_tool(invoke("dice.roll", "[1]"))
        .await
        .unwrap_err();
    assert!(
        status.message().starts_with("args_json:"),
        "{}",
        status.message()
    );

    let mut too_long = invoke("dice.roll", r#"{"sides": 6}"#);
    too_long.timeout = Some(prost_types::Duration {
        seconds: 3600,
        nanos: 0,
    });
    let status = client.invoke_tool(too_long).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status
            .message()
            .starts_with("timeout: exceeds policy maximum"),
        "{}",
        status.message()
    );
    harness.stop().await;
}

#[tokio::test]
async fn the_seeded_dice_roll_is_reproducible() {
    let harness = Harness::start("dice").await.unwrap();
    let mut client = harness.client(0).await;
    wait_for_builtins(&mut client).await;
    let args = r#"{"sides": 20, "count": 3, "seed": 11}"#;
    let first = client
        .invoke_tool(invoke("dice.roll", args))
        .await
        .unwrap()
        .into_inner();
    let second = client
        .invoke_tool(invoke("dice.roll", args))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.result_json, second.result_json);
    assert_eq!(first.executor_id, "builtin");
    let result: serde_json::Value = serde_json::from_str(&first.result_json).unwrap();
    assert_eq!(result["rolls"].as_array().unwrap().len(), 3);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_tool_times_out_once_and_runs_once() {
    let harness = Harness::start("slow-tool").await.unwrap();
    let mut client = harness.client(0).await;
    let executor = CountingExecutor {
        delay: Duration::from_secs(2),
        ..Default::default()
    };
    let executions = executor.executions.clone();
    let endpoint = serve_executor(executor).await;
    client
        .register_tool(pb::RegisterToolRequest {
            spec: Some(owned_spec("world.slow", "1.0.0")),
        })
        .await
        .unwrap();
    client
        .register_executor(pb::RegisterExecutorRequest {
            agent: Some(pb::AgentId {
                agent_type: "wba".into(),
                instance: "w1".into(),
            }),
            endpoint,
            tools: vec!["world.slow".into()],
            ..Default::default()
        })
        .await
        .unwrap();

    let mut request = invoke("world.slow", r#"{"n": 1}"#);
    request.timeout = Some(prost_types::Duration {
        seconds: 0,
        nanos: 300_000_000,
    });
    let status = client.invoke_tool(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");

    // Long enough for any retry to have reached the executor.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(executions.load(Ordering::SeqCst), 1);

    let stats = client
        .get_tool_stats(pb::GetToolStatsRequest {
            name: "world.slow".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.stats[0].timeouts, 1);
    assert_eq!(stats.stats[0].invocations, 1);

    // Without a timeout field, the caller's gRPC deadline bounds the invocation: it is
    // recorded as a timeout long before the policy default (5 s) would end it.
    let mut request = tonic::Request::new(invoke("world.slow", r#"{"n": 2}"#));
    request.set_timeout(Duration::from_millis(300));
    let status = client.invoke_tool(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let stats = client
        .get_tool_stats(pb::GetToolStatsRequest {
            name: "world.slow".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.stats[0].timeouts, 2);
    assert_eq!(executions.load(Ordering::SeqCst), 2);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invocations_reach_the_owning_executor_and_are_counted() {
    let harness = Harness::start("forward").await.unwrap();
    let mut client = harness.client(0).await;
    let executor = CountingExecutor::default();
    let executions = executor.executions.clone();
    let endpoint = serve_executor(executor).await;
    client
        .register_tool(pb::RegisterToolRequest {
            spec: Some(owned_spec("memory.echo", "1.0.0")),
        })
        .await
        .unwrap();
    let status = client
        .invoke_tool(invoke("memory.echo", r#"{"n": 5}"#))
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        tonic::Code::Unavailable,
        "no executor yet: {status:?}"
    );

    let registered = client
        .register_executor(pb::RegisterExecutorRequest {
            agent: Some(pb::AgentId {
                agent_type: "wba".into(),
                instance: "w1".into(),
            }),
            endpoint: endpoint.clone(),
            tools: vec!["memory.echo@1.0.0".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    for n in 0..3 {
        let response = client
            .invoke_tool(invoke("memory.echo", &format!(r#"{{"n": {n}}}"#)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.result_json, format!(r#"{{"echo":{{"n":{n}}}}}"#));
        assert_eq!(response.executor_id, registered.executor_id);
    }
    assert_eq!(executions.load(Ordering::SeqCst), 3);

    let status = client
        .register_executor(pb::RegisterExecutorRequest {
            agent: Some(pb::AgentId {
                agent_type: "wba".into(),
                instance: "w1".into(),
            }),
            endpoint,
            tools: vec!["no.such_tool".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.message(), "tools[0]: unknown tool \"no.such_tool\"");

    let stats = client
        .get_tool_stats(pb::GetToolStatsRequest {
            name: "memory.echo".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.stats[0].successes, 3);
    assert!(stats.summary.unwrap().executors >= 1);

    assert!(
        client
            .deregister_executor(pb::DeregisterExecutorRequest {
                executor_id: registered.executor_id
            })
            .await
            .unwrap()
            .into_inner()
            .existed
    );
    let status = client
        .invoke_tool(invoke("memory.echo", r#"{"n": 5}"#))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tools_are_deprecated_and_then_deleted() {
    let policy_dir = tempfile::tempdir().unwrap();
    let policy_file = policy_dir.path().join("policy.yaml");
    std::fs::write(&policy_file, "max_idle: 1s\ndelete_after: 1s\n").unwrap();
    let harness = Harness::start_adjusted("cleanup", 1, |config| {
        config.tools.policy_file = Some(policy_file.clone());
    })
    .await
    .unwrap();
    let mut client = harness.client(0).await;
    client
        .register_tool(pb::RegisterToolRequest {
            spec: Some(owned_spec("world.idle", "1.0.0")),
        })
        .await
        .unwrap();
    wait_for_builtins(&mut client).await;

    // The background pass deprecates it once idle, then deletes it. Listing is not a use, so
    // watching does not keep it alive.
    let saw_deprecated = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    tta_testkit::wait_until(common::WAIT, "the idle tool to be deleted", || {
        let mut client = client.clone();
        let saw = saw_deprecated.clone();
        async move {
            let listed = client
                .list_tools(pb::ListToolsRequest {
                    prefix: "world.idle".into(),
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner();
            if listed
                .tools
                .iter()
                .any(|t| t.status == pb::ToolStatus::Deprecated as i32)
            {
                saw.store(true, Ordering::SeqCst);
            }
            (listed.total == 0).then_some(())
        }
    })
    .await
    .unwrap();
    assert!(
        saw_deprecated.load(Ordering::SeqCst),
        "deprecated before being deleted"
    );
    // Built-in tools are never cleaned up.
    let dice = client
        .get_tool(pb::GetToolRequest {
            name: "dice.roll".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .spec
        .unwrap();
    assert_eq!(dice.status, pb::ToolStatus::Active as i32);
    harness.stop().await;
}

#[tokio::test]
async fn a_cleanup_pass_can_be_forced_and_dry_run() {
    let harness = Harness::start("cleanup-rpc").await.unwrap();
    let mut client = harness.client(0).await;
    client
        .register_tool(pb::RegisterToolRequest {
            spec: Some(owned_spec("world.old", "1.0.0")),
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let max_idle = Some(prost_types::Duration {
        seconds: 0,
        nanos: 10_000_000,
    });
    let dry = client
        .cleanup_tools(pb::CleanupToolsRequest {
            max_idle,
            dry_run: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(dry.deprecated, vec!["world.old@1.0.0"]);
    let spec = client
        .get_tool(pb::GetToolRequest {
            name: "world.old".into(),
            version: "1.0.0".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .spec
        .unwrap();
    assert_eq!(spec.status, pb::ToolStatus::Active as i32);
    // That look-up was a use; let the tool go idle again.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let done = client
        .cleanup_tools(pb::CleanupToolsRequest {
            max_idle,
            dry_run: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.deprecated, vec!["world.old@1.0.0"]);
    let spec = client
        .get_tool(pb::GetToolRequest {
            name: "world.old".into(),
            version: "1.0.0".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .spec
        .unwrap();
    assert_eq!(spec.status, pb::ToolStatus::Deprecated as i32);
    assert!(spec.deprecation_reason.starts_with("unused for"));
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_tool_refuses_more_invocations_with_a_retry_hint() {
    let harness = Harness::start("saturated").await.unwrap();
    let mut client = harness.client(0).await;
    let reload = client
        .reload_policy(pb::ReloadPolicyRequest {
            validate_only: false,
            policy_document: "max_concurrency_per_tool: 1\n".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(reload.applied);
    let executor = CountingExecutor {
        delay: Duration::from_millis(800),
        ..Default::default()
    };
    let executions = executor.executions.clone();
    let endpoint = serve_executor(executor).await;
    client
        .register_tool(pb::RegisterToolRequest {
            spec: Some(owned_spec("world.busy", "1.0.0")),
        })
        .await
        .unwrap();
    client
        .register_executor(pb::RegisterExecutorRequest {
            agent: Some(pb::AgentId {
                agent_type: "wba".into(),
                instance: "w1".into(),
            }),
            endpoint,
            tools: vec!["world.busy".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let mut first_client = client.clone();
    let first = tokio::spawn(async move {
        first_client
            .invoke_tool(invoke("world.busy", r#"{"n": 1}"#))
            .await
    });
    tta_testkit::wait_until(
        common::WAIT,
        "the first invocation to reach the executor",
        || {
            let executions = executions.clone();
            async move { (executions.load(Ordering::SeqCst) == 1).then_some(()) }
        },
    )
    .await
    .unwrap();
    let status = client
        .invoke_tool(invoke("world.busy", r#"{"n": 2}"#))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(status.metadata().get("retry-after-ms").is_some());
    assert!(first.await.unwrap().is_ok());
    assert_eq!(executions.load(Ordering::SeqCst), 1);
    harness.stop().await;
}
