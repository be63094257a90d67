//! The safety policy (R3.2): every flag against every setting, live reloads that never apply an
//! invalid policy, and secrets that never reach diagnostics or logs.

mod common;

use std::time::Duration;

use common::{Harness, owned_spec};
use tta_proto::v1 as pb;
use tta_testkit::ServiceProcess;

const SECRET: &str = "executor-secret-0123456789";

fn flagged(flag: &str) -> pb::ToolSpec {
    let mut spec = owned_spec(&format!("ext.{flag}"), "1.0.0");
    spec.safety = Some(pb::ToolSafetyFlags {
        network: flag == "network",
        filesystem: flag == "filesystem",
        process: flag == "process",
    });
    spec
}

#[tokio::test]
async fn every_safety_flag_is_denied_unless_its_setting_allows_it() {
    for flag in ["network", "filesystem", "process"] {
        for allowed in [false, true] {
            let harness = Harness::start_adjusted("policy-matrix", 1, |config| match flag {
                "network" => config.tools.allow_network_tools = allowed,
                "filesystem" => config.tools.allow_filesystem_tools = allowed,
                _ => config.tools.allow_process_tools = allowed,
            })
            .await
            .unwrap();
            let mut client = harness.client(0).await;
            let outcome = client
                .register_tool(pb::RegisterToolRequest {
                    spec: Some(flagged(flag)),
                })
                .await;
            match (allowed, outcome) {
                (true, Ok(response)) => assert!(response.into_inner().created),
                (false, Err(status)) => {
                    assert_eq!(status.code(), tonic::Code::PermissionDenied);
                    assert_eq!(
                        status.message(),
                        format!("spec.safety.{flag}: {flag} tools are not allowed")
                    );
                }
                (allowed, outcome) => panic!("{flag} allowed={allowed}: {outcome:?}"),
            }
            // A tool without flags is always fine.
            client
                .register_tool(pb::RegisterToolRequest {
                    spec: Some(owned_spec("plain.tool", "1.0.0")),
                })
                .await
                .unwrap();
            harness.stop().await;
        }
    }
}

#[tokio::test]
async fn tools_already_registered_are_refused_once_the_policy_denies_them() {
    let harness = Harness::start_adjusted("policy-invoke", 1, |config| {
        config.tools.allow_network_tools = true;
    })
    .await
    .unwrap();
    let mut client = harness.client(0).await;
    client
        .register_tool(pb::RegisterToolRequest {
            spec: Some(flagged("network")),
        })
        .await
        .unwrap();
    let reload = client
        .reload_policy(pb::ReloadPolicyRequest {
            validate_only: false,
            policy_document: "allow_network_tools: false\n".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(reload.applied, "{:?}", reload.errors);
    let status = client
        .invoke_tool(pb::InvokeToolRequest {
            name: "ext.network".into(),
            args: Some(pb::invoke_tool_request::Args::ArgsJson(
                r#"{"n": 1}"#.into(),
            )),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    let stats = client
        .get_tool_stats(pb::GetToolStatsRequest {
            name: "ext.network".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.stats[0].policy_denials, 1);
    harness.stop().await;
}

#[tokio::test]
async fn a_capability_and_caller_allowlist_is_enforced() {
    let harness = Harness::start("policy-lists").await.unwrap();
    let mut client = harness.client(0).await;
    let reload = client
        .reload_policy(pb::ReloadPolicyRequest {
            validate_only: false,
            policy_document: "denied_capabilities: [\"shell\"]\nallowed_callers: [\"nga\"]\n"
                .into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(reload.applied);
    let mut shell = owned_spec("os.shell", "1.0.0");
    shell.capabilities = vec!["shell".into()];
    let status = client
        .register_tool(pb::RegisterToolRequest { spec: Some(shell) })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(status.message().starts_with("spec.capabilities:"));

    client
        .register_tool(pb::RegisterToolRequest {
            spec: Some(owned_spec("world.fine", "1.0.0")),
        })
        .await
        .unwrap();
    let status = client
        .invoke_tool(pb::InvokeToolRequest {
            name: "world.fine".into(),
            args: Some(pb::invoke_tool_request::Args::ArgsJson(
                r#"{"n": 1}"#.into(),
            )),
            caller: Some(pb::AgentId {
                agent_type: "ipa".into(),
                instance: "i1".into(),
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert_eq!(status.message(), "caller: not an allowed caller");
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_policy_file_keeps_the_old_policy_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, "allow_network_tools: true\n").unwrap();
    let harness = Harness::start_adjusted("policy-reload", 1, |config| {
        config.tools.policy_file = Some(file.clone());
    })
    .await
    .unwrap();
    let mut client = harness.client(0).await;
    let before = client
        .get_policy(pb::GetPolicyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(before.policy.as_ref().unwrap().allow_network_tools);

    // A valid change is picked up by the watcher.
    std::fs::write(&file, "allow_network_tools: true\nmax_params: 8\n").unwrap();
    let changed = tta_testkit::wait_until(common::WAIT, "the policy file to be reloaded", || {
        let mut client = client.clone();
        async move {
            let policy = client
                .get_policy(pb::GetPolicyRequest {})
                .await
                .ok()?
                .into_inner();
            (policy.policy.as_ref()?.max_params == 8).then_some(policy)
        }
    })
    .await
    .unwrap();
    assert_ne!(changed.version, before.version);

    // An invalid one is rejected, reported and not applied.
    std::fs::write(
        &file,
        "allow_network_tools: false\nmax_schema_depth: 0\nno_such_key: 1\n",
    )
    .unwrap();
    let admin = harness.registries[0].admin_addr;
    let report = tta_testkit::wait_until(
        common::WAIT,
        "the rejected reload to be reported",
        || async move {
            let (status, body) = tta_testkit::http_get(admin, "/policy").await.ok()?;
            let body: serde_json::Value = serde_json::from_str(&body).ok()?;
            (status == 200 && !body["last_reload"]["errors"].as_array()?.is_empty()).then_some(body)
        },
    )
    .await
    .unwrap();
    let paths: Vec<&str> = report["last_reload"]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert!(paths.contains(&"tools.no_such_key"), "{paths:?}");
    let after = client
        .get_policy(pb::GetPolicyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.version, changed.version);
    assert!(after.policy.unwrap().allow_network_tools);

    // The admin RPC reports the same problems and keeps the policy in force too.
    let reload = client
        .reload_policy(pb::ReloadPolicyRequest {
            validate_only: false,
            policy_document: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!reload.applied);
    assert!(
        reload
            .errors
            .iter()
            .any(|e| e.path == "tools.max_schema_depth"),
        "{:?}",
        reload.errors
    );
    assert_eq!(reload.version, changed.version);

    // validate_only never applies even a valid document.
    let check = client
        .reload_policy(pb::ReloadPolicyRequest {
            validate_only: true,
            policy_document: "max_params: 4\n".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!check.applied && check.errors.is_empty());
    assert_eq!(check.policy.unwrap().max_params, 8);
    harness.stop().await;
}

#[tokio::test]
async fn executor_tokens_are_required_and_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, format!("executor_tokens:\n  wba: {SECRET}\n")).unwrap();
    let harness = Harness::start_adjusted("policy-secret", 1, |config| {
        config.tools.policy_file = Some(file.clone());
    })
    .await
    .unwrap();
    let mut client = harness.client(0).await;
    client
        .register_tool(pb::RegisterToolRequest {
            spec: Some(owned_spec("world.owned", "1.0.0")),
        })
        .await
        .unwrap();
    let register = || pb::RegisterExecutorRequest {
        agent: Some(pb::AgentId {
            agent_type: "wba".into(),
            instance: "w1".into(),
        }),
        endpoint: "http://127.0.0.1:1".into(),
        tools: vec!["world.owned".into()],
        ..Default::default()
    };
    let status = client.register_executor(register()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    let mut with_token = tonic::Request::new(register());
    with_token
        .metadata_mut()
        .insert("x-tta-executor-token", SECRET.parse().unwrap());
    client.register_executor(with_token).await.unwrap();

    let policy = client
        .get_policy(pb::GetPolicyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!format!("{policy:?}").contains(SECRET));
    assert_eq!(
        policy.policy.unwrap().redacted_fields,
        vec!["executor_tokens.wba"]
    );
    let (_, body) = tta_testkit::http_get(harness.registries[0].admin_addr, "/policy")
        .await
        .unwrap();
    assert!(!body.contains(SECRET));
    assert!(body.contains("<redacted>"));
    harness.stop().await;
}

#[tokio::test]
async fn secrets_never_reach_the_logs_of_the_real_process() {
    let redis = tta_testkit::RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, format!("executor_tokens:\n  wba: {SECRET}\n")).unwrap();
    let grpc = tta_testkit::free_port().unwrap();
    let admin = tta_testkit::free_port().unwrap();
    let process = ServiceProcess::spawn(
        "tta-tool-registry",
        &[
            "--grpc-addr".into(),
            format!("127.0.0.1:{grpc}"),
            "--admin-addr".into(),
            format!("127.0.0.1:{admin}"),
        ],
        &[
            ("TTA_REDIS_URL", redis.url()),
            (
                "TTA_REDIS__KEY_PREFIX",
                tta_testkit::unique_prefix("secret-logs"),
            ),
            ("TTA_TOOLS__POLICY_FILE", file.display().to_string()),
            ("TTA_TELEMETRY__LOG_LEVEL", "debug".into()),
        ],
    )
    .unwrap();
    let admin_addr = std::net::SocketAddr::from(([127, 0, 0, 1], admin));
    tta_testkit::wait_until(common::WAIT, "the registry to be ready", || async move {
        matches!(
            tta_testkit::http_get(admin_addr, "/ready").await,
            Ok((200, _))
        )
        .then_some(())
    })
    .await
    .unwrap();
    // Rotate the token through the file and reload, so the audit log runs.
    std::fs::write(
        &file,
        format!("executor_tokens:\n  wba: {SECRET}-rotated\n"),
    )
    .unwrap();
    let mut client = tta_proto::v1::tool_registry_client::ToolRegistryClient::connect(format!(
        "http://127.0.0.1:{grpc}"
    ))
    .await
    .unwrap();
    let reload = client
        .reload_policy(pb::ReloadPolicyRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(reload.applied, "{:?}", reload.errors);
    tokio::time::sleep(Duration::from_millis(200)).await;
    process.terminate().unwrap();
    let logs = process.logs();
    assert!(logs.contains("tool policy reloaded"), "{logs}");
    assert!(!logs.contains(SECRET), "{logs}");
}
