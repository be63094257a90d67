//! `server.worker_threads` sets the size of a service's async runtime: services packed onto a
//! small host can run on one thread each.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context, ensure};
use tta_testkit::{RedisServer, ServiceProcess, free_port, http_get, unique_prefix};

/// The runtime's worker count as the service reports it on `/metrics`.
async fn reported_workers(admin: SocketAddr) -> anyhow::Result<usize> {
    let (status, text) = http_get(admin, "/metrics").await?;
    ensure!(status == 200, "/metrics answered {status}");
    let line = text
        .lines()
        .find(|line| line.starts_with("tta_runtime_worker_threads"))
        .with_context(|| format!("no tta_runtime_worker_threads in:\n{text}"))?;
    let value = line.rsplit(' ').next().unwrap_or_default();
    Ok(value.parse::<f64>().with_context(|| line.to_owned())? as usize)
}

async fn threads_with(setting: Option<&str>, redis: &RedisServer) -> anyhow::Result<usize> {
    let admin: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    // Never the default gRPC port: a stack or another test may hold it.
    let grpc: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let mut env = vec![
        ("TTA_REDIS_URL", redis.url()),
        ("TTA_REDIS__KEY_PREFIX", unique_prefix("threads")),
    ];
    if let Some(threads) = setting {
        env.push(("TTA_SERVER__WORKER_THREADS", threads.to_owned()));
    }
    let mut process = ServiceProcess::spawn(
        "tta-resource-monitor",
        &[
            "--admin-addr".to_owned(),
            admin.to_string(),
            "--grpc-addr".to_owned(),
            grpc.to_string(),
        ],
        &env,
    )?;
    process.wait_ready(admin, Duration::from_secs(20)).await?;
    let threads = reported_workers(admin).await?;
    process.terminate()?;
    process.wait_exit(Duration::from_secs(5)).await?;
    Ok(threads)
}

#[tokio::test]
async fn worker_threads_sizes_the_runtime_and_zero_means_one_per_core() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let cores = std::thread::available_parallelism()?.get();
    let one = threads_with(Some("1"), &redis).await?;
    ensure!(
        one == 1,
        "server.worker_threads=1 ran {one} runtime threads"
    );
    let automatic = threads_with(None, &redis).await?;
    ensure!(
        automatic == cores,
        "the default ran {automatic} runtime threads on {cores} cores"
    );
    Ok(())
}
