//! `tta bench turns`: whole player turns with the built-in agents through every service — a
//! private Redis, the broker, the gateway and the IPA/WBA/NGA workers as their own processes —
//! at several numbers of concurrent sessions.
//!
//! The baseline, measured in the same run, is the agents' own work: the same three engines run
//! one after the other in this process, without broker, gateway or Redis. The difference is
//! what orchestration costs.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tonic::transport::Channel;
use tta_agents::engines::{self, EngineState, World};
use tta_proto::v1::{self as pb, orchestrator_client::OrchestratorClient};
use tta_testkit::{RedisServer, ServiceProcess, free_port};

use super::stats::Latencies;

/// What each simulated player types, round and round.
const SCRIPT: [&str; 6] = [
    "look",
    "go north",
    "look around",
    "go south",
    "i feel calm",
    "inventory",
];

#[derive(Debug, Clone, clap::Args)]
pub struct TurnsBenchArgs {
    /// Concurrent sessions, one run each.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    concurrency: Vec<usize>,
    /// Length of each run.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Directory with the world files.
    #[arg(long, default_value = "deploy/worlds")]
    worlds: PathBuf,
    /// Runtime threads of each service (`server.worker_threads`; 0 = one per core). The
    /// default, 1, is how the single-host stack runs (`make run`, compose): seven processes
    /// share the machine.
    #[arg(long, default_value_t = 1)]
    service_threads: usize,
    /// Print one JSON object instead of the report.
    #[arg(long)]
    json: bool,
}

struct Process {
    running: ServiceProcess,
}

async fn spawn(
    binary: &str,
    grpc: Option<SocketAddr>,
    env: &[(&str, String)],
) -> anyhow::Result<Process> {
    let admin: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let mut args = vec!["--admin-addr".to_owned(), admin.to_string()];
    if let Some(grpc) = grpc {
        args.extend(["--grpc-addr".to_owned(), grpc.to_string()]);
    }
    let running = ServiceProcess::spawn(binary, &args, env)?;
    running.wait_ready(admin, Duration::from_secs(30)).await?;
    Ok(Process { running })
}

struct RunResult {
    concurrency: usize,
    turns: u64,
    elapsed: Duration,
    latencies: Latencies,
    degraded: u64,
}

pub async fn run(args: TurnsBenchArgs) -> anyhow::Result<()> {
    if args.concurrency.is_empty() || args.concurrency.contains(&0) {
        bail!("--concurrency needs numbers of sessions of at least 1");
    }
    let worlds_dir = std::fs::canonicalize(&args.worlds)
        .with_context(|| format!("--worlds {}", args.worlds.display()))?;
    let baseline = baseline(&worlds_dir, args.duration.min(Duration::from_secs(2)))?;

    let redis = RedisServer::start().context("starting a private redis-server")?;
    let broker_grpc: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let gateway_grpc: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let broker_url = format!("http://{broker_grpc}");
    let env = vec![
        ("TTA_REDIS_URL", redis.url()),
        ("TTA_TELEMETRY__LOG_LEVEL", "warn".to_owned()),
        (
            "TTA_SERVER__WORKER_THREADS",
            args.service_threads.to_string(),
        ),
        ("TTA_AGENTS__WORLDS_DIR", worlds_dir.display().to_string()),
        ("TTA_AGENTS__BROKER_ENDPOINT", broker_url.clone()),
        ("TTA_GATEWAY__BROKER_ENDPOINT", broker_url),
    ];
    let mut processes = vec![spawn("tta-broker", Some(broker_grpc), &env).await?];
    for worker in ["tta-ipa", "tta-wba", "tta-nga"] {
        processes.push(spawn(worker, None, &env).await?);
    }
    processes.push(spawn("tta-gateway", Some(gateway_grpc), &env).await?);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{gateway_grpc}"))?
        .tcp_nodelay(true)
        .connect()
        .await?;
    let client = OrchestratorClient::new(channel);

    // Warm up connections, scripts and caches so the first run measures steady state.
    play(client.clone(), 4, Duration::from_millis(500), "warmup").await?;
    let mut runs = Vec::new();
    for concurrency in &args.concurrency {
        if !args.json {
            eprintln!(
                "… {concurrency} concurrent sessions for {:?}",
                args.duration
            );
        }
        runs.push(
            play(
                client.clone(),
                *concurrency,
                args.duration,
                &format!("c{concurrency}"),
            )
            .await?,
        );
    }
    for process in &mut processes {
        let _ = process.running.terminate();
    }
    for process in &mut processes {
        let _ = process.running.wait_exit(Duration::from_secs(5)).await;
    }
    report(&args, baseline, runs);
    Ok(())
}

/// `concurrency` players, each in a session of its own, turn after turn for `duration`.
async fn play(
    client: OrchestratorClient<Channel>,
    concurrency: usize,
    duration: Duration,
    label: &str,
) -> anyhow::Result<RunResult> {
    let started = Instant::now();
    let deadline = started + duration;
    let mut players = JoinSet::new();
    for player in 0..concurrency {
        let mut client = client.clone();
        let session = format!("bench-{label}-{player}");
        players.spawn(async move {
            let mut latencies = Latencies::default();
            let mut degraded = 0;
            let mut turn = 0usize;
            while Instant::now() < deadline {
                let request = pb::ProcessUserInputRequest {
                    session_id: session.clone(),
                    user_id: "bench".to_owned(),
                    text: SCRIPT[turn % SCRIPT.len()].to_owned(),
                    turn_id: format!("t{turn}"),
                    ..Default::default()
                };
                let sent = Instant::now();
                let response = client.process_user_input(request).await?.into_inner();
                latencies.record(sent.elapsed());
                degraded += u64::from(response.degraded);
                turn += 1;
            }
            Ok::<_, anyhow::Error>((latencies, degraded))
        });
    }
    let mut latencies = Latencies::default();
    let mut degraded = 0;
    while let Some(joined) = players.join_next().await {
        let (player, player_degraded) = joined??;
        latencies.merge(player);
        degraded += player_degraded;
    }
    Ok(RunResult {
        concurrency,
        turns: latencies.len() as u64,
        elapsed: started.elapsed(),
        latencies,
        degraded,
    })
}

/// The three engines back to back in this process: the work a turn needs without any
/// orchestration.
fn baseline(worlds_dir: &std::path::Path, duration: Duration) -> anyhow::Result<(f64, Latencies)> {
    let worlds: Vec<Arc<World>> = World::load_dir(worlds_dir)?
        .into_iter()
        .map(Arc::new)
        .collect();
    let world_id = worlds
        .first()
        .map(|world| world.id().to_owned())
        .context("no world files")?;
    let mut pipeline = Vec::new();
    for agent in tta_types::AgentType::BUILT_IN {
        pipeline.push(engines::builtin(&agent, &worlds)?.context("no built-in engine")?);
    }
    let mut state = None;
    let mut latencies = Latencies::default();
    let started = Instant::now();
    let mut turn = 0usize;
    while started.elapsed() < duration {
        let sent = Instant::now();
        let mut task = pb::AgentTask {
            turn_id: format!("t{turn}"),
            session_id: "baseline".to_owned(),
            turn: Some(pb::TurnContext {
                text: SCRIPT[turn % SCRIPT.len()].to_owned(),
                world_id: world_id.clone(),
                ..Default::default()
            }),
            ..Default::default()
        };
        for engine in &pipeline {
            let outcome = match engine.agent_type() {
                tta_types::AgentType::Wba => {
                    engine.run(&task, EngineState::World(state.as_ref()))?
                }
                _ => engine.run(&task, EngineState::Stateless)?,
            };
            if outcome.world_state.is_some() {
                state = outcome.world_state;
            }
            task.upstream.push(pb::StepOutput {
                step_id: engine.agent_type().to_string(),
                agent_type: engine.agent_type().to_string(),
                output: Some(outcome.output),
            });
        }
        latencies.record(sent.elapsed());
        turn += 1;
    }
    let per_second = turn as f64 / started.elapsed().as_secs_f64().max(1e-9);
    Ok((per_second, latencies))
}

fn report(args: &TurnsBenchArgs, baseline: (f64, Latencies), runs: Vec<RunResult>) {
    let object = summary(args.service_threads, baseline, runs);
    if args.json {
        println!("{object}");
    } else {
        print!("{}", render_table(&object));
    }
}

/// The whole result as one JSON object: what `--json` prints and what the table is read from.
fn summary(service_threads: usize, baseline: (f64, Latencies), runs: Vec<RunResult>) -> Value {
    let (baseline_per_s, mut baseline_latencies) = baseline;
    let baseline_per_s = baseline_per_s.round();
    let mut rows = Vec::new();
    for mut run in runs {
        let turns_per_s = (run.turns as f64 / run.elapsed.as_secs_f64().max(1e-9)).round();
        rows.push(json!({
            "concurrency": run.concurrency,
            "turns": run.turns,
            "turns_per_s": turns_per_s,
            "ratio_to_baseline": turns_per_s / baseline_per_s.max(1.0),
            "p50_ms": run.latencies.quantile_ms(0.50),
            "p95_ms": run.latencies.quantile_ms(0.95),
            "p99_ms": run.latencies.quantile_ms(0.99),
            "degraded": run.degraded,
        }));
    }
    json!({
        "service_threads": service_threads,
        "runs": rows,
        "baseline": {
            "what": "the three built-in engines back to back in-process, no services",
            "turns_per_s": baseline_per_s,
            "p50_ms": baseline_latencies.quantile_ms(0.50),
            "p99_ms": baseline_latencies.quantile_ms(0.99),
        },
    })
}

/// The human report. Numbers are taken out of the JSON values first: a `Value` prints
/// without honouring width or precision, which would leave the columns ragged.
fn render_table(object: &Value) -> String {
    let threads = match object["service_threads"].as_u64().unwrap_or_default() {
        0 => "one runtime thread per core".to_owned(),
        1 => "1 runtime thread".to_owned(),
        n => format!("{n} runtime threads"),
    };
    let number = |value: &Value| value.as_f64().unwrap_or_default();
    let count = |value: &Value| value.as_u64().unwrap_or_default();
    let mut table = format!(
        "turn bench: built-in agents through broker, gateway and workers (separate processes, {threads} each)\n"
    );
    table.push_str(&format!(
        "{:>11} {:>9} {:>11} {:>9} {:>9} {:>9} {:>9} {:>12}\n",
        "sessions", "turns", "turns/s", "p50 ms", "p95 ms", "p99 ms", "degraded", "vs baseline"
    ));
    for row in object["runs"].as_array().into_iter().flatten() {
        table.push_str(&format!(
            "{:>11} {:>9} {:>11.0} {:>9.3} {:>9.3} {:>9.3} {:>9} {:>12.4}\n",
            count(&row["concurrency"]),
            count(&row["turns"]),
            number(&row["turns_per_s"]),
            number(&row["p50_ms"]),
            number(&row["p95_ms"]),
            number(&row["p99_ms"]),
            count(&row["degraded"]),
            number(&row["ratio_to_baseline"]),
        ));
    }
    let base = &object["baseline"];
    table.push_str(&format!(
        "baseline (engines only, in-process): {:.0} turns/s, p50 {:.3} ms, p99 {:.3} ms\n",
        number(&base["turns_per_s"]),
        number(&base["p50_ms"]),
        number(&base["p99_ms"]),
    ));
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_of(concurrency: usize, turns: u64, millis: &[u64]) -> RunResult {
        let mut latencies = Latencies::default();
        for &ms in millis {
            latencies.record(Duration::from_millis(ms));
        }
        RunResult {
            concurrency,
            turns,
            elapsed: Duration::from_secs(2),
            latencies,
            degraded: 1,
        }
    }

    #[test]
    fn the_table_lines_each_figure_up_under_its_heading() {
        let mut baseline = Latencies::default();
        baseline.record(Duration::from_micros(4));
        let object = summary(
            1,
            (200_000.0, baseline),
            vec![run_of(1, 2_000, &[1, 1, 2]), run_of(16, 13_000, &[2, 3, 4])],
        );
        let table = render_table(&object);
        let lines: Vec<&str> = table.lines().collect();
        // Right-aligned columns end at the same offset on every line: a figure printed
        // without its width would shift everything after it.
        let mut column_ends = Vec::new();
        let mut end = 0;
        for width in [11, 9, 11, 9, 9, 9, 9, 12] {
            end += width;
            column_ends.push(end);
            end += 1;
        }
        for line in &lines[1..4] {
            assert_eq!(line.len(), end - 1, "{table}");
            for &column_end in &column_ends {
                assert_ne!(line.as_bytes()[column_end - 1], b' ', "{table}");
                if column_end < line.len() {
                    assert_eq!(line.as_bytes()[column_end], b' ', "{table}");
                }
            }
        }
        let sixteen = lines[3];
        assert!(sixteen.trim_start().starts_with("16 "), "{table}");
        assert!(sixteen.contains(" 6500 "), "{table}");
        assert!(sixteen.ends_with(" 0.0325"), "{table}");
        assert_eq!(object["runs"][1]["ratio_to_baseline"], json!(0.0325));
        assert!(lines[4].contains("200000 turns/s"), "{table}");
    }
}
