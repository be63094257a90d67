//! Steering work by host health, through real processes: two simulated hosts on this machine,
//! each a resource monitor with its own `host_name` and one worker of each type that says it
//! runs there. Thresholds of 0 make a host critical with real numbers; a long `sustain_for`
//! keeps the other one calm whatever this busy machine's CPU does.

use std::time::Duration;

use anyhow::{Context, ensure};
use tonic::{Code, transport::Channel};
use tta_e2e::{Host, Running, Stack};
use tta_proto::v1::{self as pb, orchestrator_client::OrchestratorClient};
use tta_testkit::{RedisServer, http_get, wait_until};

const WAIT: Duration = Duration::from_secs(30);

fn critical(name: &str) -> Host {
    let zero = || "0".to_owned();
    Host {
        name: name.to_owned(),
        monitor_env: vec![
            ("TTA_MONITORING__CPU_WARN", zero()),
            ("TTA_MONITORING__CPU_CRIT", zero()),
            ("TTA_MONITORING__MEM_WARN", zero()),
            ("TTA_MONITORING__MEM_CRIT", zero()),
        ],
    }
}

fn calm(name: &str) -> Host {
    Host {
        name: name.to_owned(),
        monitor_env: vec![("TTA_MONITORING__SUSTAIN_FOR", "1h".to_owned())],
    }
}

/// The value of the first series of `metric` on a process's `/metrics`, 0 when absent.
async fn metric(process: &Running, metric: &str) -> anyhow::Result<f64> {
    let (_, text) = http_get(process.admin, "/metrics").await?;
    Ok(text
        .lines()
        .filter(|line| line.starts_with(&format!("{metric}{{")))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum())
}

async fn diagnostics(stack: &Stack) -> anyhow::Result<serde_json::Value> {
    let (status, body) = http_get(stack.gateway.admin, "/diagnostics").await?;
    ensure!(status == 200, "/diagnostics answered {status}: {body}");
    Ok(serde_json::from_str(&body)?)
}

async fn wait_pressure(stack: &Stack, pressure: &str, hosts: usize) -> anyhow::Result<()> {
    wait_until(
        WAIT,
        &format!("gateway pressure {pressure}"),
        || async move {
            let report = diagnostics(stack).await.ok()?;
            let capacity = &report["capacity"];
            (capacity["pressure"] == pressure && capacity["hosts"].as_array()?.len() == hosts)
                .then_some(())
        },
    )
    .await
    .with_context(|| stack.gateway.process.logs())
}

fn turn(session: &str, turn: &str, priority: pb::Priority) -> pb::ProcessUserInputRequest {
    pb::ProcessUserInputRequest {
        session_id: session.to_owned(),
        user_id: "player-1".to_owned(),
        text: "look around".to_owned(),
        turn_id: turn.to_owned(),
        priority: priority as i32,
        ..Default::default()
    }
}

/// The IPA, WBA and NGA of one simulated host: a stack on hosts starts them host by host.
fn workers_of(stack: &Stack, host_index: usize) -> &[Running] {
    &stack.workers[host_index * 3..host_index * 3 + 3]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_work_goes_to_the_healthy_host_while_the_other_is_critical() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let stack = Stack::start_on_hosts(
        &redis.url(),
        "steer",
        &[critical("hot-host"), calm("cool-host")],
    )
    .await?;
    wait_pressure(&stack, "normal", 2).await?;

    // Every worker on the critical host steps aside; those on the calm host keep working.
    for worker in workers_of(&stack, 0) {
        wait_until(WAIT, &format!("{} paused", worker.binary), || async move {
            (metric(worker, "tta_agent_paused").await.ok()? == 1.0).then_some(())
        })
        .await
        .with_context(|| worker.process.logs())?;
    }
    for worker in workers_of(&stack, 1) {
        ensure!(
            metric(worker, "tta_agent_paused").await? == 0.0,
            "{} on the calm host paused",
            worker.binary
        );
    }

    let mut client = OrchestratorClient::connect(stack.gateway_url()).await?;
    for n in 0..6 {
        let response = client
            .process_user_input(turn("s-steer", &format!("t{n}"), pb::Priority::Normal))
            .await
            .with_context(|| format!("turn {n}"))?
            .into_inner();
        ensure!(
            !response.degraded,
            "degraded: {:?}",
            response.degraded_reasons
        );
    }
    for worker in workers_of(&stack, 0) {
        let tasks = metric(worker, "tta_agent_tasks_total").await?;
        ensure!(
            tasks == 0.0,
            "{} on the critical host ran {tasks} tasks",
            worker.binary
        );
    }
    for worker in workers_of(&stack, 1) {
        let tasks = metric(worker, "tta_agent_tasks_total").await?;
        ensure!(
            tasks >= 6.0,
            "{} on the calm host ran only {tasks} tasks",
            worker.binary
        );
    }

    let report = diagnostics(&stack).await?;
    let hosts = report["capacity"]["hosts"].as_array().context("no hosts")?;
    let health = |name: &str| {
        hosts
            .iter()
            .find(|host| host["host"] == name)
            .map(|host| host["health"].clone())
    };
    ensure!(health("hot-host") == Some("critical".into()), "{report}");
    ensure!(health("cool-host") == Some("ok".into()), "{report}");
    let (_, agents) = http_get(stack.gateway.admin, "/agents").await?;
    ensure!(agents.contains("AGENT_STATUS_DRAINING"), "{agents}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_host_critical_low_and_new_turns_are_refused_with_a_retry_hint()
-> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let stack = Stack::start_on_hosts(
        &redis.url(),
        "shed",
        &[critical("hot-a"), critical("hot-b")],
    )
    .await?;
    wait_pressure(&stack, "overloaded", 2).await?;
    let mut client: OrchestratorClient<Channel> =
        OrchestratorClient::connect(stack.gateway_url()).await?;

    for (turn_id, priority) in [
        ("t-low", pb::Priority::Low),
        ("t-normal", pb::Priority::Normal),
    ] {
        let refused = client
            .process_user_input(turn("s-shed", turn_id, priority))
            .await
            .expect_err("a shed turn must be refused");
        ensure!(refused.code() == Code::Unavailable, "{refused:?}");
        ensure!(refused.message().contains("retry after"), "{refused:?}");
        let hint: u64 = refused
            .metadata()
            .get("retry-after-ms")
            .context("no retry-after-ms")?
            .to_str()?
            .parse()?;
        ensure!(hint > 0);
    }

    // Crisis care still goes through, on the critical hosts: nobody healthier is there, so the
    // workers keep working rather than the stack collapsing.
    let high = client
        .process_user_input(turn("s-shed", "t-high", pb::Priority::High))
        .await?
        .into_inner();
    ensure!(!high.text.is_empty());
    // A turn that already finished is answered from its record, even now.
    let replay = client
        .process_user_input(turn("s-shed", "t-high", pb::Priority::Low))
        .await?
        .into_inner();
    ensure!(replay.text == high.text);

    let shed = metric(&stack.gateway, "tta_gateway_turns_shed_total").await?;
    ensure!(shed >= 2.0, "shed counter {shed}");
    let report = diagnostics(&stack).await?;
    let advice = report["capacity"]["recommendations"]
        .as_array()
        .context("no recommendations")?;
    ensure!(
        advice.iter().any(|line| line
            .as_str()
            .is_some_and(|l| l.starts_with("every host is critical"))),
        "{report}"
    );
    ensure!(
        advice.iter().any(|line| line
            .as_str()
            .is_some_and(|l| l.contains("hot-a") && l.contains("memory"))),
        "{report}"
    );
    Ok(())
}
