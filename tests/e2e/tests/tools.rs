//! The tool registry as deployed: `tta tools list|show|deprecate` against a real registry
//! process, and the gateway's `/tools` diagnostics reading it.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context, ensure};
use tta_e2e::tta;
use tta_testkit::{RedisServer, ServiceProcess, free_port, http_get, wait_until};

fn addr() -> anyhow::Result<SocketAddr> {
    Ok(([127, 0, 0, 1], free_port()?).into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_see_and_deprecate_tools_and_the_gateway_reports_them() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let (registry_grpc, registry_admin) = (addr()?, addr()?);
    let registry = ServiceProcess::spawn(
        "tta-tool-registry",
        &[
            "--grpc-addr".into(),
            registry_grpc.to_string(),
            "--admin-addr".into(),
            registry_admin.to_string(),
        ],
        &[("TTA_REDIS_URL", redis.url())],
    )?;
    registry
        .wait_ready(registry_admin, Duration::from_secs(20))
        .await?;
    let endpoint = format!("http://{registry_grpc}");

    // The built-in tools are registered one after the other shortly after start-up.
    wait_until(Duration::from_secs(10), "built-in tools listed", || async {
        let (code, out) = tta(&["tools", "--registry", &endpoint, "list"])
            .await
            .ok()?;
        (code == 0 && out.contains("dice.roll") && out.contains("text.word_count")).then_some(out)
    })
    .await?;

    let (code, out) = tta(&[
        "tools",
        "--registry",
        &endpoint,
        "--json",
        "show",
        "dice.roll",
    ])
    .await?;
    ensure!(code == 0, "show failed: {out}");
    let shown: serde_json::Value = serde_json::from_str(out.trim())?;
    ensure!(
        shown["version"] == "1.0.0" && shown["status"] == "active",
        "{shown}"
    );

    let (code, out) = tta(&[
        "tools",
        "--registry",
        &endpoint,
        "deprecate",
        "text.word_count",
        "1.0.0",
        "--reason",
        "unused",
    ])
    .await?;
    ensure!(
        code == 0 && out.contains("text.word_count@1.0.0 is deprecated"),
        "{out}"
    );
    let (code, out) = tta(&[
        "tools",
        "--registry",
        &endpoint,
        "deprecate",
        "text.word_count",
        "one",
    ])
    .await?;
    ensure!(
        code == 2 && out.contains("version: not a semantic version"),
        "{code}: {out}"
    );
    let (code, out) = tta(&["tools", "--registry", &endpoint, "show", "no.such_tool"]).await?;
    ensure!(code == 1 && out.contains("NotFound"), "{code}: {out}");

    // The gateway's /tools reads the same registry.
    let (gateway_grpc, gateway_admin) = (addr()?, addr()?);
    let gateway = ServiceProcess::spawn(
        "tta-gateway",
        &[
            "--grpc-addr".into(),
            gateway_grpc.to_string(),
            "--admin-addr".into(),
            gateway_admin.to_string(),
        ],
        &[
            ("TTA_REDIS_URL", redis.url()),
            ("TTA_GATEWAY__TOOL_REGISTRY_ENDPOINT", endpoint.clone()),
        ],
    )?;
    let body = wait_until(Duration::from_secs(20), "gateway /tools", || async {
        match http_get(gateway_admin, "/tools").await {
            Ok((200, body)) => Some(body),
            _ => None,
        }
    })
    .await
    .with_context(|| gateway.logs())?;
    let tools: serde_json::Value = serde_json::from_str(&body)?;
    let entries = tools["tools"].as_array().context("no tools list")?;
    let word_count = entries
        .iter()
        .find(|tool| tool["name"] == "text.word_count")
        .with_context(|| format!("text.word_count missing: {body}"))?;
    ensure!(word_count["status"] == "deprecated", "{body}");
    ensure!(tools["policy"]["allow_network_tools"] == false, "{body}");
    ensure!(tools["summary"]["deprecated"] == 1, "{body}");
    Ok(())
}
