//! The gateway's view of every host's resources, and what it does with it. Monitors are found in
//! the host registry (each registers itself) and in `gateway.resource_monitor_endpoints`; every
//! `gateway.capacity_refresh` each is asked for a snapshot. From their health follows the
//! pressure on the whole stack:
//!
//! - **normal** — some host is not critical: every turn is admitted (workers on critical hosts
//!   step aside by themselves, see `tta_agents::placement`);
//! - **strained** — no host is OK and some are critical: LOW priority turns are shed;
//! - **overloaded** — every host is critical: LOW and NORMAL turns are shed, HIGH (crisis care)
//!   is still admitted.
//!
//! A shed turn is answered `UNAVAILABLE` with a retry hint instead of queueing work the hosts
//! cannot do. Without any monitor there is no pressure: nothing is shed on missing data.

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures::future::join_all;
use redis::aio::ConnectionManager;
use serde_json::{Value, json};
use tokio::sync::watch;
use tonic::transport::Channel;
use tta_proto::v1::{self as pb, resource_monitor_client::ResourceMonitorClient};
use tta_runtime::{Shutdown, grpc, hosts, redis::Keyspace};
use tta_types::{Config, Priority};

use crate::error::Error;

/// How long one monitor may take to answer before it counts as unreachable this round.
const POLL_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Pressure {
    Normal,
    Strained,
    Overloaded,
}

impl Pressure {
    pub fn name(self) -> &'static str {
        match self {
            Pressure::Normal => "normal",
            Pressure::Strained => "strained",
            Pressure::Overloaded => "overloaded",
        }
    }

    /// The lowest priority still admitted.
    fn admits(self, priority: Priority) -> bool {
        match self {
            Pressure::Normal => true,
            Pressure::Strained => priority >= Priority::Normal,
            Pressure::Overloaded => priority >= Priority::High,
        }
    }
}

/// One host as the gateway last saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct HostView {
    pub host: String,
    pub endpoint: String,
    /// `registered` (host registry) or `configured` (gateway.resource_monitor_endpoints).
    pub source: &'static str,
    /// None when neither the monitor nor its record says.
    pub health: Option<pb::HealthState>,
    pub error: Option<String>,
    pub snapshot: Option<pb::HostSnapshot>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CapacityView {
    pub hosts: Vec<HostView>,
    pub pressure: Pressure,
}

/// The pressure that follows from the hosts' health; hosts of unknown health do not count.
pub fn pressure_of(hosts: &[HostView]) -> Pressure {
    let known: Vec<pb::HealthState> = hosts.iter().filter_map(|host| host.health).collect();
    if known.is_empty() {
        return Pressure::Normal;
    }
    let critical = known
        .iter()
        .filter(|health| **health == pb::HealthState::Critical)
        .count();
    let ok = known
        .iter()
        .filter(|health| matches!(health, pb::HealthState::Ok | pb::HealthState::Unspecified))
        .count();
    if critical == known.len() {
        Pressure::Overloaded
    } else if critical > 0 && ok == 0 {
        Pressure::Strained
    } else {
        Pressure::Normal
    }
}

/// A shared handle on the current view; cheap to clone.
#[derive(Debug, Clone)]
pub struct Capacity {
    view: watch::Receiver<Arc<CapacityView>>,
    retry_after: Duration,
}

impl Capacity {
    /// Whether a new turn of `priority` may start now; `Error::Shed` when not.
    pub fn admit(&self, priority: Priority) -> Result<(), Error> {
        let view = self.view.borrow().clone();
        if view.pressure.admits(priority) {
            return Ok(());
        }
        metrics::counter!("tta_gateway_turns_shed_total", "priority" => priority.as_str())
            .increment(1);
        let critical = view
            .hosts
            .iter()
            .filter(|host| host.health == Some(pb::HealthState::Critical))
            .count();
        Err(Error::Shed {
            reason: format!(
                "capacity {}: {critical} of {} hosts critical; {} priority turns are shed",
                view.pressure.name(),
                view.hosts.len(),
                priority.as_str()
            ),
            retry_after: self.retry_after,
        })
    }

    pub fn view(&self) -> Arc<CapacityView> {
        self.view.borrow().clone()
    }
}

/// Polls the monitors and publishes the view.
pub struct Poller {
    config: Arc<Config>,
    keys: Keyspace,
    connection: ConnectionManager,
    clients: HashMap<String, ResourceMonitorClient<Channel>>,
    view: watch::Sender<Arc<CapacityView>>,
}

impl std::fmt::Debug for Poller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Poller").finish_non_exhaustive()
    }
}

/// The poller and the handle that reads its view.
pub fn capacity(
    config: Arc<Config>,
    keys: Keyspace,
    connection: ConnectionManager,
) -> (Poller, Capacity) {
    let (view, receiver) = watch::channel(Arc::new(CapacityView {
        hosts: Vec::new(),
        pressure: Pressure::Normal,
    }));
    // Long enough for the next look at the hosts, so a retry can meet a changed view.
    let retry_after = (config.gateway.capacity_refresh * 2).max(Duration::from_secs(1));
    (
        Poller {
            config,
            keys,
            connection,
            clients: HashMap::new(),
            view,
        },
        Capacity {
            view: receiver,
            retry_after,
        },
    )
}

impl Poller {
    fn client(&mut self, endpoint: &str) -> Result<ResourceMonitorClient<Channel>, String> {
        if let Some(client) = self.clients.get(endpoint) {
            return Ok(client.clone());
        }
        let channel = grpc::connect_lazy(endpoint).map_err(|err| err.to_string())?;
        let client = ResourceMonitorClient::new(channel);
        self.clients.insert(endpoint.to_owned(), client.clone());
        Ok(client)
    }

    /// One look at every monitor.
    pub async fn refresh(&mut self) -> Arc<CapacityView> {
        let registered = match hosts::list(&mut self.connection, &self.keys).await {
            Ok(records) => records,
            Err(err) => {
                tracing::debug!(error = %err, "cannot read the host registry");
                Vec::new()
            }
        };
        let mut targets: Vec<(Option<hosts::HostRecord>, String, &'static str)> = registered
            .into_iter()
            .map(|record| {
                let endpoint = record.endpoint.clone();
                (Some(record), endpoint, "registered")
            })
            .collect();
        for endpoint in &self.config.gateway.resource_monitor_endpoints {
            if !targets.iter().any(|(_, known, _)| known == endpoint) {
                targets.push((None, endpoint.clone(), "configured"));
            }
        }
        let polls = targets.into_iter().map(|(record, endpoint, source)| {
            let client = self.client(&endpoint);
            async move {
                let answer = match client {
                    Ok(mut client) => {
                        match tokio::time::timeout(
                            POLL_TIMEOUT,
                            client.get_snapshot(pb::GetSnapshotRequest::default()),
                        )
                        .await
                        {
                            Ok(Ok(response)) => response
                                .into_inner()
                                .snapshot
                                .ok_or_else(|| "empty answer".to_owned()),
                            Ok(Err(status)) => Err(status.message().to_owned()),
                            Err(_) => Err(format!("no answer within {POLL_TIMEOUT:?}")),
                        }
                    }
                    Err(err) => Err(err),
                };
                match answer {
                    Ok(snapshot) => HostView {
                        host: snapshot.host.clone(),
                        endpoint,
                        source,
                        health: Some(snapshot.health()),
                        error: None,
                        snapshot: Some(snapshot),
                    },
                    // The record (refreshed by the monitor) still tells the health.
                    Err(error) => HostView {
                        host: record
                            .as_ref()
                            .map_or_else(|| endpoint.clone(), |r| r.host.clone()),
                        health: record.as_ref().map(|r| r.health),
                        endpoint,
                        source,
                        error: Some(error),
                        snapshot: None,
                    },
                }
            }
        });
        let mut hosts: Vec<HostView> = join_all(polls).await;
        hosts.sort_by(|a, b| a.host.cmp(&b.host));
        let pressure = pressure_of(&hosts);
        let previous = self.view.borrow().pressure;
        if previous != pressure {
            tracing::warn!(
                from = previous.name(),
                to = pressure.name(),
                hosts = hosts.len(),
                "capacity pressure changed"
            );
        }
        metrics::gauge!("tta_gateway_capacity_pressure").set(match pressure {
            Pressure::Normal => 0.0,
            Pressure::Strained => 1.0,
            Pressure::Overloaded => 2.0,
        });
        for state in ["ok", "warn", "critical", "unknown"] {
            let count = hosts
                .iter()
                .filter(|host| host.health.map_or("unknown", hosts::health_name) == state)
                .count();
            metrics::gauge!("tta_gateway_hosts", "health" => state).set(count as f64);
        }
        let view = Arc::new(CapacityView { hosts, pressure });
        self.view.send_replace(view.clone());
        view
    }

    pub async fn run(mut self, shutdown: Shutdown) {
        let mut tick = tokio::time::interval(self.config.gateway.capacity_refresh);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.wait() => return,
            }
            self.refresh().await;
        }
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        (part as f64 * 1000.0 / whole as f64).round() / 10.0
    }
}

/// Concrete advice from the view, most urgent first.
pub fn recommendations(view: &CapacityView) -> Vec<String> {
    let mut advice = Vec::new();
    match view.pressure {
        Pressure::Overloaded => advice.push(format!(
            "every host is critical: LOW and NORMAL turns are refused with UNAVAILABLE; add a host or GPU node, or lower the load (all {} monitored hosts)",
            view.hosts.len()
        )),
        Pressure::Strained => advice.push(
            "no host is healthy and some are critical: LOW priority turns are refused; add capacity before NORMAL turns are refused too".to_owned(),
        ),
        Pressure::Normal => {}
    }
    if view.hosts.is_empty() {
        advice.push("no resource monitor is known: run tta-resource-monitor on every host (DaemonSet) or list them in gateway.resource_monitor_endpoints".to_owned());
    }
    for host in &view.hosts {
        if let Some(error) = &host.error {
            advice.push(format!(
                "host {}: monitor at {} does not answer ({error}); check the tta-resource-monitor pod on that node",
                host.host, host.endpoint
            ));
        }
        let Some(snapshot) = &host.snapshot else {
            continue;
        };
        for alert in &snapshot.active_alerts {
            let level = alert.level();
            let what = match alert.resource.as_str() {
                "cpu" => {
                    "move agent workers off this host or add CPU; workers here stop taking tasks while a healthier host has one of their type"
                }
                "memory" => "reduce agent concurrency or model size on this host, or add memory",
                "gpu.memory" => {
                    "release GPU reservations, use a smaller model or quantisation, or move the instance to another GPU"
                }
                _ => "investigate the resource",
            };
            if level == pb::HealthState::Critical || level == pb::HealthState::Warn {
                advice.push(format!(
                    "host {} {}: {}; {what}",
                    host.host,
                    hosts::health_name(level),
                    alert.message
                ));
            }
        }
        if let Some(memory) = &snapshot.memory
            && memory.swap_used_bytes > 0
            && percent(memory.swap_used_bytes, memory.swap_total_bytes) > 50.0
        {
            advice.push(format!(
                "host {}: over half the swap in use; latency suffers — reduce memory use",
                host.host
            ));
        }
    }
    if !view.hosts.is_empty()
        && view
            .hosts
            .iter()
            .filter_map(|host| host.snapshot.as_ref())
            .all(|snapshot| !snapshot.nvml_available)
    {
        advice.push("no host reports NVML: GPU metrics and GPU reservations are unavailable (normal on CPU-only hosts)".to_owned());
    }
    advice
}

/// The `capacity` section of `/diagnostics`.
pub fn report(view: &CapacityView) -> Value {
    let hosts: Vec<Value> = view
        .hosts
        .iter()
        .map(|host| {
            let snapshot = host.snapshot.as_ref();
            json!({
                "host": host.host,
                "endpoint": host.endpoint,
                "source": host.source,
                "health": host.health.map_or("unknown", hosts::health_name),
                "error": host.error,
                "cpu_percent": snapshot.and_then(|s| s.cpu.as_ref()).map(|cpu| (cpu.total_percent * 10.0).round() / 10.0),
                "memory_percent": snapshot.and_then(|s| s.memory.as_ref()).map(|m| percent(m.used_bytes, m.total_bytes)),
                "nvml_available": snapshot.map(|s| s.nvml_available),
                "gpus": snapshot.map(|s| s.gpus.iter().map(|gpu| json!({
                    "index": gpu.index,
                    "name": gpu.name,
                    "memory_percent": percent(gpu.memory_used_bytes, gpu.memory_total_bytes),
                    "memory_reserved_bytes": gpu.memory_reserved_bytes,
                    "utilization_percent": gpu.utilization_percent,
                })).collect::<Vec<_>>()),
                "alerts": snapshot.map(|s| s.active_alerts.iter().map(|alert| alert.message.clone()).collect::<Vec<_>>()),
            })
        })
        .collect();
    let admitted: Vec<&str> = [Priority::High, Priority::Normal, Priority::Low]
        .into_iter()
        .filter(|priority| view.pressure.admits(*priority))
        .map(Priority::as_str)
        .collect();
    json!({
        "pressure": view.pressure.name(),
        "admitted_priorities": admitted,
        "hosts": hosts,
        "recommendations": recommendations(view),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, health: Option<pb::HealthState>) -> HostView {
        HostView {
            host: name.to_owned(),
            endpoint: format!("http://{name}:50054"),
            source: "registered",
            health,
            error: None,
            snapshot: None,
        }
    }

    #[test]
    fn pressure_follows_the_healthiest_known_host() {
        use pb::HealthState::{Critical, Ok, Warn};
        assert_eq!(pressure_of(&[]), Pressure::Normal);
        assert_eq!(
            pressure_of(&[host("a", Some(Critical)), host("b", Some(Ok))]),
            Pressure::Normal
        );
        assert_eq!(
            pressure_of(&[host("a", Some(Critical)), host("b", Some(Warn))]),
            Pressure::Strained
        );
        assert_eq!(
            pressure_of(&[host("a", Some(Critical)), host("b", None)]),
            Pressure::Overloaded
        );
    }

    #[test]
    fn low_is_shed_first_and_high_never() {
        assert!(!Pressure::Strained.admits(Priority::Low));
        assert!(Pressure::Strained.admits(Priority::Normal));
        assert!(!Pressure::Overloaded.admits(Priority::Normal));
        assert!(Pressure::Overloaded.admits(Priority::High));
    }

    #[test]
    fn recommendations_name_the_host_and_the_remedy() {
        let mut hot = host("gpu-1", Some(pb::HealthState::Critical));
        hot.snapshot = Some(pb::HostSnapshot {
            host: "gpu-1".into(),
            active_alerts: vec![pb::ResourceAlert {
                id: "memory".into(),
                resource: "memory".into(),
                level: pb::HealthState::Critical as i32,
                message: "memory at 97.0% >= critical 95%".into(),
                ..Default::default()
            }],
            ..Default::default()
        });
        let view = CapacityView {
            pressure: pressure_of(std::slice::from_ref(&hot)),
            hosts: vec![hot],
        };
        let advice = recommendations(&view);
        assert!(
            advice[0].starts_with("every host is critical"),
            "{advice:?}"
        );
        assert!(
            advice
                .iter()
                .any(|line| line.contains("gpu-1") && line.contains("reduce agent concurrency")),
            "{advice:?}"
        );
        assert_eq!(report(&view)["admitted_priorities"], json!(["high"]));
    }
}
