//! The resource monitor through its real gRPC service and admin port, in-process: GPU scenarios
//! driven by a scripted probe (this machine has no NVIDIA GPU), reservations with leases, and
//! the GPU-less reality of this host through NVML.

use std::time::Duration;

use tonic::{Code, transport::Channel};
use tta_proto::v1::{self as pb, resource_monitor_client::ResourceMonitorClient};
use tta_resource_monitor::probe::ScriptedProbe;
use tta_runtime::{ServiceKind, service::RunningService};
use tta_testkit::{RedisServer, http_get, start_in_process, test_config, wait_until};
use tta_types::{Config, config::ByteSize};

const GIB: u64 = 1 << 30;
const WAIT: Duration = Duration::from_secs(10);

fn config(redis: &RedisServer, host: &str) -> Config {
    let mut config = test_config(&redis.url(), host);
    config.resource_monitor.host_name = Some(host.to_owned());
    config.monitoring.metrics_interval = Duration::from_millis(100);
    config.monitoring.gpu_mem_warn = 80.0;
    config.monitoring.gpu_mem_crit = 90.0;
    config.monitoring.hysteresis = 5.0;
    config.monitoring.alert_cooldown = Duration::ZERO;
    config
}

async fn start_scripted(config: Config, probe: ScriptedProbe) -> anyhow::Result<RunningService> {
    start_in_process(ServiceKind::ResourceMonitor, config, move |context| {
        tta_resource_monitor::build_with_probe(context, Box::new(probe))
    })
    .await
    .map_err(|err| anyhow::anyhow!("{err}"))
}

async fn client(running: &RunningService) -> anyhow::Result<ResourceMonitorClient<Channel>> {
    let addr = running
        .grpc_addr
        .ok_or_else(|| anyhow::anyhow!("no grpc"))?;
    Ok(ResourceMonitorClient::connect(format!("http://{addr}")).await?)
}

/// The level of the GPU 0 memory alert, or OK when it is not active.
async fn gpu0_level(
    client: &mut ResourceMonitorClient<Channel>,
) -> anyhow::Result<pb::HealthState> {
    let alerts = client
        .get_alerts(pb::GetAlertsRequest::default())
        .await?
        .into_inner()
        .alerts;
    Ok(alerts
        .iter()
        .find(|alert| alert.id == "gpu0.memory")
        .map_or(pb::HealthState::Ok, |alert| alert.level()))
}

async fn wait_level(
    client: &ResourceMonitorClient<Channel>,
    level: pb::HealthState,
) -> anyhow::Result<()> {
    wait_until(WAIT, &format!("gpu0.memory at {level:?}"), || {
        let mut client = client.clone();
        async move { (gpu0_level(&mut client).await.ok()? == level).then_some(()) }
    })
    .await
}

fn transitions(metrics: &str, host: &str, from: &str, to: &str) -> u64 {
    let needle = format!(
        "tta_resource_alert_transitions_total{{service=\"tta-resource-monitor\",host=\"{host}\",alert=\"gpu0.memory\",from=\"{from}\",to=\"{to}\"}} "
    );
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&needle))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_memory_goes_to_warn_and_critical_and_back_with_one_alert_per_transition()
-> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let host = "scripted-alerts";
    let probe = ScriptedProbe::new(vec![
        ScriptedProbe::device(0, 16 * GIB),
        ScriptedProbe::device(1, 16 * GIB),
    ]);
    probe.set_memory_used(0, 8 * GIB);
    let running = start_scripted(config(&redis, host), probe.clone()).await?;
    let mut client = client(&running).await?;

    let snapshot = client
        .get_snapshot(pb::GetSnapshotRequest::default())
        .await?
        .into_inner()
        .snapshot
        .unwrap();
    assert!(snapshot.nvml_available);
    assert_eq!(snapshot.gpus.len(), 2);
    assert_eq!(snapshot.host, host);
    assert_eq!(gpu0_level(&mut client).await?, pb::HealthState::Ok);

    probe.set_memory_used(0, 13 * GIB); // 81 %
    wait_level(&client, pb::HealthState::Warn).await?;
    probe.set_memory_used(0, 15 * GIB); // 94 %
    wait_level(&client, pb::HealthState::Critical).await?;
    // 88 % is below the 90 % threshold but within the 5-point hysteresis: still critical after
    // several more ticks.
    probe.set_memory_used(0, 14 * GIB + GIB / 10);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(gpu0_level(&mut client).await?, pb::HealthState::Critical);
    probe.set_memory_used(0, 4 * GIB); // 25 %
    wait_level(&client, pb::HealthState::Ok).await?;

    let (_, metrics) = http_get(running.admin_addr, "/metrics").await?;
    assert_eq!(transitions(&metrics, host, "ok", "warn"), 1, "{metrics}");
    assert_eq!(transitions(&metrics, host, "warn", "critical"), 1);
    assert_eq!(transitions(&metrics, host, "critical", "ok"), 1);
    assert_eq!(transitions(&metrics, host, "critical", "warn"), 0);

    let history = client
        .get_alerts(pb::GetAlertsRequest {
            include_resolved: true,
            since: None,
        })
        .await?
        .into_inner();
    let gpu: Vec<&pb::ResourceAlert> = history
        .alerts
        .iter()
        .filter(|alert| alert.id == "gpu0.memory")
        .collect();
    assert_eq!(gpu.len(), 2, "{history:?}");
    assert!(gpu.iter().all(|alert| alert.resolved_at.is_some()));
    assert_eq!(gpu[0].level(), pb::HealthState::Critical);
    assert_eq!(gpu[1].level(), pb::HealthState::Warn);
    running.stop(Duration::from_secs(1)).await.ok();
    Ok(())
}

fn reserve(gpu: u64, gpu_index: Option<u32>, ttl: Duration) -> pb::ReserveRequest {
    pb::ReserveRequest {
        agent: Some(pb::AgentId {
            agent_type: "nga".into(),
            instance: "nga-1".into(),
        }),
        amounts: Some(pb::ResourceAmounts {
            gpu_memory_bytes: gpu,
            ..Default::default()
        }),
        gpu_index,
        lease_ttl: prost_types::Duration::try_from(ttl).ok(),
        // The real CPU of a busy test machine may make the host critical; HIGH is granted then.
        priority: pb::Priority::High as i32,
        idempotency_key: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_beyond_the_limit_are_refused_and_expired_leases_free() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let probe = ScriptedProbe::new(vec![
        ScriptedProbe::device(0, 16 * GIB),
        ScriptedProbe::device(1, 16 * GIB),
    ]);
    let mut config = config(&redis, "scripted-leases");
    config.resources.gpu_memory_limit = Some(ByteSize(8 * GIB));
    let running = start_scripted(config, probe).await?;
    let mut client = client(&running).await?;
    let minute = Duration::from_secs(60);

    let first = client
        .reserve(reserve(6 * GIB, Some(0), minute))
        .await?
        .into_inner()
        .reservation
        .unwrap();
    assert_eq!(first.gpu_index, Some(0));
    assert_eq!(first.host, "scripted-leases");

    let refused = client
        .reserve(reserve(3 * GIB, Some(0), minute))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("gpu_memory_bytes"),
        "{refused:?}"
    );
    assert!(refused.metadata().get("retry-after-ms").is_some());

    let bad = client
        .reserve(reserve(GIB, Some(5), minute))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().starts_with("gpu_index"), "{bad:?}");
    let nothing = client.reserve(reserve(0, None, minute)).await.unwrap_err();
    assert!(nothing.message().starts_with("amounts"), "{nothing:?}");

    // A holder that never renews: its lease expires and its memory is free again.
    let short = client
        .reserve(reserve(7 * GIB, Some(1), Duration::from_secs(1)))
        .await?
        .into_inner()
        .reservation
        .unwrap();
    assert!(
        client
            .reserve(reserve(2 * GIB, Some(1), minute))
            .await
            .is_err()
    );
    wait_until(WAIT, "the short lease to expire", || {
        let mut client = client.clone();
        async move {
            let list = client
                .list_reservations(pb::ListReservationsRequest::default())
                .await
                .ok()?
                .into_inner();
            (list.reservations.len() == 1).then_some(list)
        }
    })
    .await
    .map(|list| {
        assert_eq!(list.reserved.unwrap().gpu_memory_bytes, 6 * GIB);
        assert_eq!(list.capacity.unwrap().gpu_memory_bytes, 16 * GIB);
    })?;
    let renew = client
        .renew_lease(pb::RenewLeaseRequest {
            lease_id: short.lease_id.clone(),
            ttl: None,
        })
        .await
        .unwrap_err();
    assert_eq!(renew.code(), Code::NotFound);
    client.reserve(reserve(8 * GIB, Some(1), minute)).await?;

    let renewed = client
        .renew_lease(pb::RenewLeaseRequest {
            lease_id: first.lease_id.clone(),
            ttl: prost_types::Duration::try_from(Duration::from_secs(120)).ok(),
        })
        .await?
        .into_inner()
        .reservation
        .unwrap();
    assert!(renewed.expires_at.unwrap().seconds > first.expires_at.unwrap().seconds);
    let released = client
        .release(pb::ReleaseRequest {
            lease_id: first.lease_id.clone(),
        })
        .await?
        .into_inner();
    assert!(released.released);
    let again = client
        .release(pb::ReleaseRequest {
            lease_id: first.lease_id,
        })
        .await?
        .into_inner();
    assert!(!again.released);
    running.stop(Duration::from_secs(1)).await.ok();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_without_nvml_reports_real_numbers_zero_gpus_and_registers() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let host = "no-gpu-host";
    let config = config(&redis, host);
    let prefix = config.redis.key_prefix.clone();
    let running = start_in_process(
        ServiceKind::ResourceMonitor,
        config,
        tta_resource_monitor::build,
    )
    .await
    .map_err(|err| anyhow::anyhow!("{err}"))?;
    let mut client = client(&running).await?;

    let snapshot = client
        .get_snapshot(pb::GetSnapshotRequest {
            include_processes: true,
        })
        .await?
        .into_inner()
        .snapshot
        .unwrap();
    assert!(!snapshot.nvml_available, "this machine has no NVML");
    assert!(!snapshot.nvml_error.is_empty());
    assert!(snapshot.gpus.is_empty());
    let memory = snapshot.memory.unwrap();
    assert!(memory.total_bytes > 0 && memory.available_bytes <= memory.total_bytes);
    assert!(snapshot.cpu.unwrap().logical_cores >= 1);

    let refused = client
        .reserve(reserve(GIB, None, Duration::from_secs(10)))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    let mut threads = reserve(0, None, Duration::from_secs(10));
    threads.amounts = Some(pb::ResourceAmounts {
        cpu_threads: 1,
        ..Default::default()
    });
    client.reserve(threads).await?;

    let too_fast = client
        .watch_snapshots(pb::WatchSnapshotsRequest {
            interval: prost_types::Duration::try_from(Duration::from_millis(10)).ok(),
            include_processes: false,
        })
        .await
        .unwrap_err();
    assert!(too_fast.message().starts_with("interval"), "{too_fast:?}");
    let mut stream = client
        .watch_snapshots(pb::WatchSnapshotsRequest {
            interval: prost_types::Duration::try_from(Duration::from_millis(100)).ok(),
            include_processes: false,
        })
        .await?
        .into_inner();
    for _ in 0..2 {
        let next = tokio::time::timeout(WAIT, stream.message())
            .await??
            .unwrap();
        assert_eq!(next.snapshot.unwrap().host, host);
    }

    let (_, metrics) = http_get(running.admin_addr, "/metrics").await?;
    assert!(
        metrics.contains(&format!(
            "tta_nvml_up{{service=\"tta-resource-monitor\",host=\"{host}\"}} 0"
        )),
        "{metrics}"
    );
    assert!(metrics.contains(&format!(
        "node_memory_MemTotal_bytes{{service=\"tta-resource-monitor\",host=\"{host}\"}}"
    )));

    // The host record appears in the registry with the monitor's endpoint.
    let grpc = running.grpc_addr.unwrap();
    let redis_client = redis::Client::open(redis.url())?;
    let mut connection = redis_client.get_multiplexed_async_connection().await?;
    let keys = tta_runtime::redis::Keyspace::new(&prefix);
    let record = wait_until(WAIT, "the host record", || {
        let mut connection = connection.clone();
        let keys = keys.clone();
        async move {
            tta_runtime::hosts::get(&mut connection, &keys, host)
                .await
                .ok()?
        }
    })
    .await?;
    assert_eq!(record.endpoint, format!("http://{grpc}"));
    running.stop(Duration::from_secs(2)).await.ok();
    let gone = tta_runtime::hosts::list(&mut connection, &keys).await?;
    assert!(
        gone.is_empty(),
        "a clean stop withdraws the record: {gone:?}"
    );
    Ok(())
}
