//! Configuration changes without a restart (R8.2): a resource monitor started from a file
//! applies new alert thresholds when the file changes, and keeps its settings when the new
//! file is invalid.

use std::{net::SocketAddr, time::Duration};

use anyhow::ensure;
use tta_testkit::{RedisServer, ServiceProcess, free_port, http_get, unique_prefix, wait_until};

/// The memory alert's level on `/metrics` (0 ok, 1 warn, 2 critical), once it is exported.
async fn memory_alert_level(admin: SocketAddr) -> Option<f64> {
    let (_, text) = http_get(admin, "/metrics").await.ok()?;
    text.lines()
        .filter(|line| line.starts_with("tta_resource_alert_level{"))
        .filter(|line| line.contains("alert=\"memory\""))
        .find_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
}

fn thresholds(mem_warn: &str) -> String {
    // Only the memory alert is read: CPU may spike on a busy test machine.
    format!(
        "monitoring:\n  metrics_interval: 200ms\n  sustain_for: 0s\n  mem_warn: {mem_warn}\n  mem_crit: 99.9\n"
    )
}

#[tokio::test]
async fn new_alert_thresholds_apply_without_a_restart_and_a_bad_file_changes_nothing()
-> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("tta.yaml");
    std::fs::write(&file, thresholds("99.8"))?;
    let admin: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let grpc: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let mut monitor = ServiceProcess::spawn(
        "tta-resource-monitor",
        &[
            "--config".to_owned(),
            file.display().to_string(),
            "--admin-addr".to_owned(),
            admin.to_string(),
            "--grpc-addr".to_owned(),
            grpc.to_string(),
        ],
        &[
            ("TTA_REDIS_URL", redis.url()),
            ("TTA_REDIS__KEY_PREFIX", unique_prefix("live-config")),
        ],
    )?;
    monitor.wait_ready(admin, Duration::from_secs(20)).await?;
    let level = |wanted: f64| async move {
        (memory_alert_level(admin).await == Some(wanted)).then_some(())
    };
    wait_until(Duration::from_secs(10), "memory alert ok", || level(0.0)).await?;

    // Any host uses more than 0.5 % of its memory: the lowered threshold raises the alert.
    std::fs::write(&file, thresholds("0.5"))?;
    wait_until(
        Duration::from_secs(15),
        "memory alert warn after the change",
        || level(1.0),
    )
    .await?;

    // A broken file is refused and the running thresholds stay.
    std::fs::write(&file, thresholds("lots"))?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    ensure!(
        memory_alert_level(admin).await == Some(1.0),
        "an invalid file changed the running thresholds"
    );
    let (_, metrics) = http_get(admin, "/metrics").await?;
    ensure!(
        metrics
            .lines()
            .any(|line| line.starts_with("tta_config_reloads_total{")
                && line.contains("outcome=\"rejected\"")),
        "the refused reload is not counted:\n{metrics}"
    );

    std::fs::write(&file, thresholds("99.8"))?;
    wait_until(Duration::from_secs(15), "memory alert ok again", || {
        level(0.0)
    })
    .await?;
    monitor.terminate()?;
    monitor.wait_exit(Duration::from_secs(5)).await?;
    Ok(())
}
