//! The per-host resource monitor: the `tta.v1.ResourceMonitor` service. It samples the host
//! every `monitoring.metrics_interval` ([`sampler`]: CPU, load, memory, disks, network, TTA
//! processes; GPUs through a [`probe::GpuProbe`], NVML in production), turns thresholds into
//! alerts with sustain, hysteresis and cooldown ([`alerts`]), grants leased reservations
//! ([`reservations`]), exports Prometheus series ([`export`]) and keeps its host's record in the
//! Redis host registry ([`registration`]) so the gateway and the workers see the host's health.
//! A host without a GPU or without NVML is normal: `nvml_available = false`, zero GPUs.

pub mod alerts;
pub mod error;
pub mod export;
pub mod monitor;
pub mod probe;
pub mod registration;
pub mod reservations;
pub mod sampler;
pub mod service;

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tta_proto::{service_names, v1::resource_monitor_server::ResourceMonitorServer};
use tta_runtime::{BoxError, GrpcServer, ServiceContext, ServiceParts, redis::Keyspace};

use crate::{
    monitor::Monitor, probe::GpuProbe, registration::Registration, sampler::HostSampler,
    service::ResourceMonitorService,
};

/// Builds the service's parts from its context with NVML as the GPU probe; `main` and the test
/// kit both run it.
pub async fn build(context: ServiceContext) -> Result<ServiceParts, BoxError> {
    let probe = tokio::task::spawn_blocking(probe::NvmlProbe::init).await?;
    build_with_probe(context, Box::new(probe)).await
}

/// [`build`] with another GPU probe (a scripted one in tests).
pub async fn build_with_probe(
    context: ServiceContext,
    probe: Box<dyn GpuProbe>,
) -> Result<ServiceParts, BoxError> {
    let config = context.config.clone();
    let settings = &config.resource_monitor;
    let host = settings
        .host_name
        .clone()
        .unwrap_or_else(tta_runtime::hosts::local_host_name);
    let sampler = HostSampler::new(host, probe, settings.track_processes)?;
    let monitor = Monitor::new(config.clone(), sampler);
    // The first tick before serving: a snapshot, capacity and health are there from the start.
    monitor.tick().await?;

    let endpoint = settings
        .advertise_endpoint
        .clone()
        .unwrap_or_else(|| format!("http://{}", settings.listen.grpc));
    let client = tta_runtime::redis::client(&config.redis.url)?;
    let connection = ConnectionManager::new_lazy_with_config(
        client,
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.redis.connect_timeout))
            .set_response_timeout(Some(Duration::from_secs(2))),
    )?;
    let mut registration = Registration::new(
        connection,
        Keyspace::new(&config.redis.key_prefix),
        endpoint.clone(),
    );
    tracing::info!(
        host = %monitor.host(),
        endpoint = %endpoint,
        nvml_available = monitor.latest().nvml_available,
        interval = ?config.monitoring.metrics_interval,
        "resource monitor sampling"
    );

    let service = ResourceMonitorService::new(monitor.clone(), context.shutdown.clone());
    let grpc = GrpcServer::new(context.kind.name())
        .add_service(ResourceMonitorServer::new(service))
        .advertise(service_names::RESOURCE_MONITOR);
    let shutdown = context.shutdown.clone();
    let follower = monitor.clone();
    let changes = context.config_changes.clone();
    let follow_shutdown = context.shutdown.clone();
    Ok(ServiceParts::default()
        .with_grpc(grpc)
        .with_task("apply-config", async move {
            tta_runtime::config_watch::apply_changes(changes, follow_shutdown, |config| {
                tracing::info!(
                    cpu_warn = config.monitoring.cpu_warn,
                    mem_warn = config.monitoring.mem_warn,
                    "alert thresholds and resource limits updated"
                );
                follower.apply(config);
            })
            .await;
            Ok(())
        })
        .with_task("sample-host", async move {
            let mut tick = tokio::time::interval(config.monitoring.metrics_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = shutdown.wait() => break,
                }
                if let Err(err) = monitor.tick().await {
                    tracing::warn!(error = %err, "sampling failed; keeping the last snapshot");
                }
                registration.refresh(&monitor).await;
            }
            registration.withdraw(monitor.host()).await;
            Ok(())
        }))
}
