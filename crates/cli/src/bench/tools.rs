//! `tta bench tools`: `GetTool` over gRPC with the registry's lookup cache on and off, against
//! a raw Redis `HGET` of the same stored spec bytes, in one run.
//!
//! C concurrent callers (spread over several HTTP/2 connections) call `GetTool` for one exact
//! version for a fixed time; the baseline does the same number of concurrent `HGET`s on one
//! multiplexed redis-rs connection. Reported: calls per second, p50 and p99, and the ratio of
//! each registry figure to the raw one. By default a private `redis-server` and two registry
//! processes (cache on, cache off) are started, so the run touches no shared data.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde_json::json;
use tokio::task::JoinSet;
use tonic::transport::Channel;
use tta_proto::v1::{self as pb, tool_registry_client::ToolRegistryClient};
use tta_runtime::{Shutdown, redis::Keyspace, service::ServiceKind};
use tta_testkit::{RedisServer, ServiceProcess};

use super::stats::Latencies;

const TOOL: &str = "bench.lookup";
const VERSION: &str = "1.0.0";

#[derive(Debug, Clone, clap::Args)]
pub struct ToolsBenchArgs {
    /// Concurrent callers. Latency grows with queueing past the point the registry saturates
    /// (about 16 callers on 2 cores), so the default sits there.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// HTTP/2 connections the callers share.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Length of each measured run.
    #[arg(long = "for", default_value = "5s", value_parser = humantime::parse_duration)]
    run_for: Duration,
    /// Use this Redis instead of a private redis-server (keys get a unique prefix and are
    /// deleted afterwards).
    #[arg(long, env = "TTA_BENCH_REDIS_URL")]
    redis_url: Option<String>,
    /// Run the registries inside this process instead of as `tta-tool-registry` processes.
    #[arg(long)]
    in_process: bool,
    /// Print one JSON object instead of the report.
    #[arg(long)]
    json: bool,
}

struct RunResult {
    calls: u64,
    elapsed: Duration,
    latencies: Latencies,
}

impl RunResult {
    fn per_second(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

pub async fn run(args: ToolsBenchArgs) -> anyhow::Result<()> {
    if args.concurrency == 0 || args.connections == 0 {
        bail!("--concurrency and --connections must be at least 1");
    }
    let private_redis = match &args.redis_url {
        Some(_) => None,
        None => Some(RedisServer::start().context("starting a private redis-server")?),
    };
    let redis_url = match (&args.redis_url, &private_redis) {
        (Some(url), _) => url.clone(),
        (None, Some(server)) => server.url(),
        (None, None) => bail!("no redis"),
    };
    let prefix = tta_testkit::unique_prefix("bench-tools");

    progress(&args, "starting the registries (cache on, cache off)");
    let cached = BenchRegistry::start(&args, &redis_url, &prefix, true).await?;
    let uncached = BenchRegistry::start(&args, &redis_url, &prefix, false).await?;
    register_tool(&cached.endpoint).await?;

    progress(&args, "raw redis HGET of the stored spec");
    let raw = raw_run(&args, &redis_url, &prefix).await?;
    progress(&args, "GetTool, cache off");
    let cold = grpc_run(&args, &uncached.endpoint).await?;
    progress(&args, "GetTool, cache on");
    let warm = grpc_run(&args, &cached.endpoint).await?;

    cached.stop().await;
    uncached.stop().await;
    cleanup(&redis_url, &prefix).await;
    report(&args, raw, cold, warm);
    drop(private_redis);
    Ok(())
}

/// One registry under test: its own process (as deployed), or in this process.
struct BenchRegistry {
    endpoint: String,
    process: Option<ServiceProcess>,
    in_process: Option<tta_runtime::service::RunningService>,
}

impl BenchRegistry {
    async fn start(
        args: &ToolsBenchArgs,
        redis_url: &str,
        prefix: &str,
        cache: bool,
    ) -> anyhow::Result<Self> {
        // A zero TTL makes every lookup go to Redis: the cache-off measurement.
        let ttl = if cache { "5m" } else { "0s" };
        let binary = tta_testkit::binary_path("tta-tool-registry");
        if args.in_process || binary.is_err() {
            let mut config = tta_testkit::test_config(redis_url, "bench");
            config.redis.key_prefix = prefix.to_owned();
            if !cache {
                config.tools.cache_ttl_s = Duration::ZERO;
            }
            let running = tta_runtime::service::start(
                ServiceKind::ToolRegistry,
                config,
                Shutdown::new(),
                tta_tool_registry::build,
            )
            .await
            .map_err(|err| anyhow::anyhow!("starting the tool registry: {err}"))?;
            let endpoint = format!(
                "http://{}",
                running.grpc_addr.context("registry without grpc address")?
            );
            return Ok(Self {
                endpoint,
                process: None,
                in_process: Some(running),
            });
        }
        let grpc: SocketAddr = ([127, 0, 0, 1], tta_testkit::free_port()?).into();
        let admin: SocketAddr = ([127, 0, 0, 1], tta_testkit::free_port()?).into();
        let process = ServiceProcess::spawn(
            "tta-tool-registry",
            &[
                "--grpc-addr".into(),
                grpc.to_string(),
                "--admin-addr".into(),
                admin.to_string(),
            ],
            &[
                ("TTA_REDIS_URL", redis_url.to_owned()),
                ("TTA_REDIS__KEY_PREFIX", prefix.to_owned()),
                // Also the registry's own prefix: one inherited from the shell would hide the
                // keys from the raw baseline.
                ("TTA_TOOLS__REDIS_KEY_PREFIX", prefix.to_owned()),
                ("TTA_TOOLS__CACHE_TTL_S", ttl.to_owned()),
                ("TTA_TELEMETRY__LOG_LEVEL", "warn".to_owned()),
            ],
        )?;
        process.wait_ready(admin, Duration::from_secs(20)).await?;
        Ok(Self {
            endpoint: format!("http://{grpc}"),
            process: Some(process),
            in_process: None,
        })
    }

    async fn stop(self) {
        if let Some(mut process) = self.process {
            let _ = process.terminate();
            let _ = process.wait_exit(Duration::from_secs(5)).await;
        }
        if let Some(running) = self.in_process {
            let _ = running.stop(Duration::from_secs(1)).await;
        }
    }
}

/// A realistic spec: a few typed parameters, a result schema, an example.
async fn register_tool(endpoint: &str) -> anyhow::Result<()> {
    let mut client = ToolRegistryClient::new(tta_runtime::grpc::connect_lazy(endpoint)?);
    let spec = pb::ToolSpec {
        name: TOOL.into(),
        version: VERSION.into(),
        description: "Looks up an item of the world by id and returns its description.".into(),
        parameters_schema: json!({
            "type": "object",
            "properties": {
                "item": {"type": "string", "maxLength": 64},
                "location": {"type": "string"},
                "detail": {"type": "integer", "minimum": 0, "maximum": 3}
            },
            "required": ["item"]
        })
        .to_string(),
        returns_schema:
            json!({"type": "object", "properties": {"description": {"type": "string"}}}).to_string(),
        capabilities: vec!["world:read".into()],
        owner: Some(pb::AgentId {
            agent_type: "wba".into(),
            instance: "bench".into(),
        }),
        examples: vec![pb::ToolExample {
            description: "the lantern".into(),
            args_json: r#"{"item": "lantern"}"#.into(),
            result_json: String::new(),
        }],
        ..Default::default()
    };
    client
        .register_tool(pb::RegisterToolRequest { spec: Some(spec) })
        .await
        .context("registering the bench tool")?;
    Ok(())
}

async fn grpc_run(args: &ToolsBenchArgs, endpoint: &str) -> anyhow::Result<RunResult> {
    let channels: Vec<Channel> = (0..args.connections)
        .map(|_| tta_runtime::grpc::connect_lazy(endpoint))
        .collect::<Result<_, _>>()?;
    let request = pb::GetToolRequest {
        name: TOOL.into(),
        version: VERSION.into(),
    };
    // Warm up connections (and the cache, when on).
    for channel in &channels {
        ToolRegistryClient::new(channel.clone())
            .get_tool(request.clone())
            .await?;
    }
    let started = Instant::now();
    let deadline = started + args.run_for;
    let mut tasks = JoinSet::new();
    for index in 0..args.concurrency {
        let mut client = ToolRegistryClient::new(channels[index % channels.len()].clone());
        let request = request.clone();
        tasks.spawn(async move {
            let mut latencies = Latencies::with_capacity(100_000);
            while Instant::now() < deadline {
                let call = Instant::now();
                client.get_tool(request.clone()).await?;
                latencies.record(call.elapsed());
            }
            anyhow::Ok(latencies)
        });
    }
    collect(tasks, started).await
}

async fn raw_run(
    args: &ToolsBenchArgs,
    redis_url: &str,
    prefix: &str,
) -> anyhow::Result<RunResult> {
    let client = tta_runtime::redis::client(redis_url)?;
    let connection = client.get_multiplexed_async_connection().await?;
    let key = tta_tool_registry::store::tool_key(&Keyspace::new(prefix), TOOL);
    let stored: Option<String> = redis::cmd("HGET")
        .arg(&key)
        .arg(VERSION)
        .query_async(&mut connection.clone())
        .await?;
    if stored.is_none() {
        bail!("the bench tool is not stored under {key}");
    }
    let started = Instant::now();
    let deadline = started + args.run_for;
    let mut tasks = JoinSet::new();
    for _ in 0..args.concurrency {
        let mut connection = connection.clone();
        let key = key.clone();
        tasks.spawn(async move {
            let mut latencies = Latencies::with_capacity(100_000);
            while Instant::now() < deadline {
                let call = Instant::now();
                let _: Option<Vec<u8>> = redis::cmd("HGET")
                    .arg(&key)
                    .arg(VERSION)
                    .query_async(&mut connection)
                    .await?;
                latencies.record(call.elapsed());
            }
            anyhow::Ok(latencies)
        });
    }
    collect(tasks, started).await
}

async fn collect(
    mut tasks: JoinSet<anyhow::Result<Latencies>>,
    started: Instant,
) -> anyhow::Result<RunResult> {
    let mut latencies = Latencies::default();
    while let Some(joined) = tasks.join_next().await {
        latencies.merge(joined??);
    }
    Ok(RunResult {
        calls: latencies.len() as u64,
        elapsed: started.elapsed(),
        latencies,
    })
}

async fn cleanup(redis_url: &str, prefix: &str) {
    let Ok(client) = tta_runtime::redis::client(redis_url) else {
        return;
    };
    let Ok(mut connection) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let pattern = format!("{prefix}:*");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(&pattern)
        .query_async(&mut connection)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<(), _> = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut connection)
            .await;
    }
}

fn progress(args: &ToolsBenchArgs, phase: &str) {
    if !args.json {
        eprintln!("… {phase}");
    }
}

fn report(args: &ToolsBenchArgs, mut raw: RunResult, mut cold: RunResult, mut warm: RunResult) {
    let raw_qps = raw.per_second().max(1e-9);
    let round = |value: f64| (value * 1000.0).round() / 1000.0;
    let object = json!({
        "concurrency": args.concurrency,
        "connections": args.connections,
        "seconds": args.run_for.as_secs_f64(),
        "raw_hget_qps": raw.per_second().round(),
        "raw_p50_ms": raw.latencies.quantile_ms(0.50),
        "raw_p99_ms": raw.latencies.quantile_ms(0.99),
        "uncached_qps": cold.per_second().round(),
        "uncached_p50_ms": cold.latencies.quantile_ms(0.50),
        "uncached_p99_ms": cold.latencies.quantile_ms(0.99),
        "uncached_ratio": round(cold.per_second() / raw_qps),
        "cached_qps": warm.per_second().round(),
        "cached_p50_ms": warm.latencies.quantile_ms(0.50),
        "cached_p99_ms": warm.latencies.quantile_ms(0.99),
        "cached_ratio": round(warm.per_second() / raw_qps),
    });
    if args.json {
        println!("{object}");
        return;
    }
    println!(
        "tools bench: GetTool of one exact version, {} callers over {} connections, {} s per run",
        args.concurrency,
        args.connections,
        args.run_for.as_secs_f64()
    );
    println!(
        "{:<28} {:>12} {:>10} {:>10} {:>8}",
        "run", "calls/s", "p50 ms", "p99 ms", "vs raw"
    );
    for (label, key) in [
        ("raw redis HGET", "raw"),
        ("GetTool, cache off", "uncached"),
        ("GetTool, cache on", "cached"),
    ] {
        let qps = object[format!("{key}_{}", if key == "raw" { "hget_qps" } else { "qps" })]
            .as_f64()
            .unwrap_or_default();
        println!(
            "{label:<28} {qps:>12.0} {:>10.3} {:>10.3} {:>7.2}x",
            object[format!("{key}_p50_ms")].as_f64().unwrap_or_default(),
            object[format!("{key}_p99_ms")].as_f64().unwrap_or_default(),
            qps / raw_qps,
        );
    }
}
