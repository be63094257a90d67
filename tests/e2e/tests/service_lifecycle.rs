//! Every service binary, as a real process: it becomes ready, serves gRPC health and reflection
//! over the `tta.v1` contract, exposes Prometheus metrics, and exits 0 soon after SIGTERM.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context, ensure};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};
use tta_proto::service_names;
use tta_testkit::{
    RedisServer, ServiceProcess, free_port, grpc_health, http_get, unique_prefix, wait_until,
};

/// What one binary must offer.
struct Expectation {
    binary: &'static str,
    /// The `tta.v1` services listed through reflection; empty for processes without gRPC.
    services: &'static [&'static str],
}

const EXPECTATIONS: &[Expectation] = &[
    Expectation {
        binary: "tta-gateway",
        services: &[
            service_names::ORCHESTRATOR,
            service_names::AGENT_REGISTRY,
            service_names::SAFETY,
        ],
    },
    Expectation {
        binary: "tta-broker",
        services: &[service_names::BROKER],
    },
    Expectation {
        binary: "tta-tool-registry",
        services: &[service_names::TOOL_REGISTRY],
    },
    Expectation {
        binary: "tta-resource-monitor",
        services: &[service_names::RESOURCE_MONITOR],
    },
    Expectation {
        binary: "tta-ipa",
        services: &[],
    },
    Expectation {
        binary: "tta-wba",
        services: &[],
    },
    Expectation {
        binary: "tta-nga",
        services: &[],
    },
];

/// SIGTERM to exit must take less than this.
const STOP_BUDGET: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_serves_health_reflection_and_metrics_then_stops_on_sigterm()
-> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let checks = EXPECTATIONS
        .iter()
        .map(|expectation| check_lifecycle(expectation, redis.url()));
    for (expectation, result) in EXPECTATIONS
        .iter()
        .zip(futures::future::join_all(checks).await)
    {
        result.with_context(|| format!("{} failed its lifecycle check", expectation.binary))?;
    }
    Ok(())
}

async fn check_lifecycle(expectation: &Expectation, redis_url: String) -> anyhow::Result<()> {
    let admin: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let grpc: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let mut args = vec!["--admin-addr".to_owned(), admin.to_string()];
    let has_grpc = !expectation.services.is_empty();
    if has_grpc {
        args.extend(["--grpc-addr".to_owned(), grpc.to_string()]);
    }
    let mut process = ServiceProcess::spawn(
        expectation.binary,
        &args,
        &[
            ("TTA_REDIS_URL", redis_url),
            ("TTA_REDIS__KEY_PREFIX", unique_prefix(expectation.binary)),
            (
                "TTA_AGENTS__WORLDS_DIR",
                tta_e2e::repository_root()
                    .join("deploy/worlds")
                    .display()
                    .to_string(),
            ),
        ],
    )?;

    let ready = wait_until(Duration::from_secs(30), "/ready to answer 200", || async {
        match http_get(admin, "/ready").await {
            Ok((200, body)) => Some(body),
            _ => None,
        }
    })
    .await;
    let ready = ready.with_context(|| process.logs())?;
    let report: serde_json::Value = serde_json::from_str(&ready)?;
    ensure!(
        report["ready"] == true,
        "unexpected readiness report {report}"
    );

    let (status, body) = http_get(admin, "/health").await?;
    ensure!(status == 200, "/health answered {status}: {body}");

    if has_grpc {
        let endpoint = format!("http://{grpc}");
        ensure!(
            grpc_health(&endpoint, "").await? == ServingStatus::Serving,
            "grpc health is not SERVING"
        );
        let listed = reflection_services(&endpoint).await?;
        for service in expectation.services {
            ensure!(
                listed.iter().any(|name| name == service),
                "reflection lists {listed:?}, missing {service}"
            );
        }
        ensure!(
            listed.iter().any(|name| name == "grpc.health.v1.Health"),
            "reflection lists {listed:?}"
        );
    }

    let (status, metrics) = http_get(admin, "/metrics").await?;
    ensure!(status == 200, "/metrics answered {status}");
    let scrape = prometheus_parse::Scrape::parse(metrics.lines().map(|line| Ok(line.to_owned())))
        .context("/metrics is not Prometheus text")?;
    ensure!(
        scrape
            .samples
            .iter()
            .any(|sample| sample.metric == "tta_build_info"),
        "tta_build_info missing from /metrics:\n{metrics}"
    );
    if has_grpc {
        ensure!(
            scrape
                .samples
                .iter()
                .any(|sample| sample.metric == "tta_grpc_requests_total"),
            "grpc calls were not counted:\n{metrics}"
        );
    }

    process.terminate()?;
    let exit = process.wait_exit(STOP_BUDGET).await?;
    ensure!(
        exit.success(),
        "{} exited with {exit} after SIGTERM; log:\n{}",
        expectation.binary,
        process.logs()
    );
    Ok(())
}

async fn reflection_services(endpoint: &str) -> anyhow::Result<Vec<String>> {
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())?
        .connect()
        .await?;
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await?
        .into_inner();
    let response = responses
        .message()
        .await?
        .context("reflection sent no response")?;
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            Ok(list.service.into_iter().map(|s| s.name).collect())
        }
        other => anyhow::bail!("unexpected reflection response {other:?}"),
    }
}
