//! `tta.v1.ResourceMonitor` over gRPC: validates requests at the edge (INVALID_ARGUMENT names
//! the field) and answers from the [`Monitor`].

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tta_proto::v1::{self as pb, resource_monitor_server::ResourceMonitor};
use tta_runtime::Shutdown;
use tta_types::{
    FieldViolation,
    convert::{agent_id_from_proto, priority_from_proto, required},
};

use crate::{error::Error, monitor::Monitor, reservations};

const MIN_WATCH_INTERVAL: Duration = Duration::from_millis(100);
const MAX_WATCH_INTERVAL: Duration = Duration::from_secs(3600);
const MIN_LEASE: Duration = Duration::from_secs(1);
const MAX_LEASE: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_LEASE: Duration = Duration::from_secs(60);
/// Watch streams served at once; each samples the host on its own timer.
pub const MAX_WATCHERS: usize = 64;

#[derive(Debug, Clone)]
pub struct ResourceMonitorService {
    monitor: Arc<Monitor>,
    watchers: Arc<AtomicUsize>,
    shutdown: Shutdown,
}

impl ResourceMonitorService {
    pub fn new(monitor: Arc<Monitor>, shutdown: Shutdown) -> Self {
        Self {
            monitor,
            watchers: Arc::new(AtomicUsize::new(0)),
            shutdown,
        }
    }
}

fn duration_field(
    field: &str,
    raw: Option<prost_types::Duration>,
    min: Duration,
    max: Duration,
) -> Result<Option<Duration>, FieldViolation> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let range = || format!("must be between {} and {}", humanize(min), humanize(max));
    let value = Duration::try_from(raw).map_err(|_| FieldViolation::new(field, range()))?;
    if value < min || value > max {
        return Err(FieldViolation::new(field, range()));
    }
    Ok(Some(value))
}

fn humanize(duration: Duration) -> String {
    if duration < Duration::from_secs(1) {
        format!("{} ms", duration.as_millis())
    } else if duration < Duration::from_secs(3600) {
        format!("{} s", duration.as_secs())
    } else {
        format!("{} h", duration.as_secs() / 3600)
    }
}

fn lease_id(raw: &str) -> Result<&str, FieldViolation> {
    if raw.is_empty() {
        return Err(FieldViolation::new("lease_id", "is required"));
    }
    if raw.len() > 128
        || !raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
    {
        return Err(FieldViolation::new(
            "lease_id",
            "must be 1-128 characters of letters, digits, '-', '_', '.', ':'",
        ));
    }
    Ok(raw)
}

fn validate_reserve(request: pb::ReserveRequest) -> Result<reservations::Request, FieldViolation> {
    let agent = required("agent", request.agent)?;
    let agent = agent_id_from_proto("agent", &agent)?;
    let amounts = request.amounts.unwrap_or_default();
    if amounts.gpu_memory_bytes == 0 && amounts.cpu_threads == 0 && amounts.ram_bytes == 0 {
        return Err(FieldViolation::new(
            "amounts",
            "must request at least one non-zero amount",
        ));
    }
    let ttl = duration_field("lease_ttl", request.lease_ttl, MIN_LEASE, MAX_LEASE)?
        .unwrap_or(DEFAULT_LEASE);
    let priority = priority_from_proto("priority", request.priority)?;
    let idempotency_key = if request.idempotency_key.is_empty() {
        None
    } else {
        lease_id(&request.idempotency_key).map_err(|_| {
            FieldViolation::new(
                "idempotency_key",
                "must be 1-128 characters of letters, digits, '-', '_', '.', ':'",
            )
        })?;
        Some(request.idempotency_key)
    };
    Ok(reservations::Request {
        agent,
        gpu_memory_bytes: amounts.gpu_memory_bytes,
        cpu_threads: amounts.cpu_threads,
        ram_bytes: amounts.ram_bytes,
        gpu_index: request.gpu_index,
        ttl,
        priority,
        idempotency_key,
    })
}

type SnapshotStream =
    Pin<Box<dyn Stream<Item = Result<pb::WatchSnapshotsResponse, Status>> + Send>>;

/// Gives a watcher slot back when its stream ends, however it ends.
struct WatcherSlot(Arc<AtomicUsize>);

impl Drop for WatcherSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
        metrics::gauge!("tta_resource_watchers").decrement(1.0);
    }
}

#[tonic::async_trait]
impl ResourceMonitor for ResourceMonitorService {
    async fn get_snapshot(
        &self,
        request: Request<pb::GetSnapshotRequest>,
    ) -> Result<Response<pb::GetSnapshotResponse>, Status> {
        let include_processes = request.into_inner().include_processes;
        let snapshot = self.monitor.fresh_snapshot(include_processes).await?;
        Ok(Response::new(pb::GetSnapshotResponse {
            snapshot: Some(snapshot),
        }))
    }

    type WatchSnapshotsStream = SnapshotStream;

    async fn watch_snapshots(
        &self,
        request: Request<pb::WatchSnapshotsRequest>,
    ) -> Result<Response<Self::WatchSnapshotsStream>, Status> {
        let request = request.into_inner();
        let interval = duration_field(
            "interval",
            request.interval,
            MIN_WATCH_INTERVAL,
            MAX_WATCH_INTERVAL,
        )?
        .unwrap_or(self.monitor.config().monitoring.metrics_interval);
        if self.watchers.fetch_add(1, Ordering::SeqCst) >= MAX_WATCHERS {
            self.watchers.fetch_sub(1, Ordering::SeqCst);
            return Err(Error::Exhausted {
                message: format!("{MAX_WATCHERS} snapshot watchers are connected already"),
                retry_after: Some(Duration::from_secs(5)),
            }
            .into());
        }
        metrics::gauge!("tta_resource_watchers").increment(1.0);
        let slot = WatcherSlot(self.watchers.clone());
        let (sender, receiver) = mpsc::channel(2);
        let monitor = self.monitor.clone();
        let shutdown = self.shutdown.clone();
        let include_processes = request.include_processes;
        tokio::spawn(async move {
            let _slot = slot;
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = sender.closed() => return,
                    () = shutdown.wait() => return,
                }
                let item = monitor
                    .fresh_snapshot(include_processes)
                    .await
                    .map(|snapshot| pb::WatchSnapshotsResponse {
                        snapshot: Some(snapshot),
                    })
                    .map_err(Status::from);
                if sender.send(item).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn reserve(
        &self,
        request: Request<pb::ReserveRequest>,
    ) -> Result<Response<pb::ReserveResponse>, Status> {
        let request = validate_reserve(request.into_inner())?;
        let reservation = self.monitor.reserve(request)?;
        Ok(Response::new(pb::ReserveResponse {
            reservation: Some(reservation),
        }))
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let request = request.into_inner();
        let released = self.monitor.release(lease_id(&request.lease_id)?);
        Ok(Response::new(pb::ReleaseResponse { released }))
    }

    async fn renew_lease(
        &self,
        request: Request<pb::RenewLeaseRequest>,
    ) -> Result<Response<pb::RenewLeaseResponse>, Status> {
        let request = request.into_inner();
        let id = lease_id(&request.lease_id)?;
        let ttl = duration_field("ttl", request.ttl, MIN_LEASE, MAX_LEASE)?;
        let reservation = self.monitor.renew(id, ttl).ok_or_else(|| {
            Error::NotFound(format!(
                "lease_id: no live lease {id} (expired or released; reserve again)"
            ))
        })?;
        Ok(Response::new(pb::RenewLeaseResponse {
            reservation: Some(reservation),
        }))
    }

    async fn list_reservations(
        &self,
        request: Request<pb::ListReservationsRequest>,
    ) -> Result<Response<pb::ListReservationsResponse>, Status> {
        let request = request.into_inner();
        let agent_type = if request.agent_type.is_empty() {
            None
        } else {
            let parsed: tta_types::AgentType =
                request
                    .agent_type
                    .parse()
                    .map_err(|err: tta_types::ids::AgentTypeError| {
                        FieldViolation::new("agent_type", err.to_string())
                    })?;
            Some(parsed.to_string())
        };
        let (reservations, reserved) = self.monitor.reservations(agent_type.as_deref());
        let capacity = self.monitor.capacity().totals();
        let amounts = |gpu: u64, threads: u32, ram: u64| pb::ResourceAmounts {
            gpu_memory_bytes: gpu,
            cpu_threads: threads,
            ram_bytes: ram,
        };
        Ok(Response::new(pb::ListReservationsResponse {
            reservations,
            capacity: Some(amounts(
                capacity.gpu_memory_bytes,
                capacity.cpu_threads,
                capacity.ram_bytes,
            )),
            reserved: Some(amounts(
                reserved.gpu_memory_bytes,
                reserved.cpu_threads,
                reserved.ram_bytes,
            )),
            available: Some(amounts(
                capacity
                    .gpu_memory_bytes
                    .saturating_sub(reserved.gpu_memory_bytes),
                capacity.cpu_threads.saturating_sub(reserved.cpu_threads),
                capacity.ram_bytes.saturating_sub(reserved.ram_bytes),
            )),
        }))
    }

    async fn get_alerts(
        &self,
        request: Request<pb::GetAlertsRequest>,
    ) -> Result<Response<pb::GetAlertsResponse>, Status> {
        let request = request.into_inner();
        let since = request
            .since
            .map(|since| {
                SystemTime::try_from(since)
                    .map_err(|_| FieldViolation::new("since", "is not a valid timestamp"))
            })
            .transpose()?;
        let (alerts, health) = self.monitor.alerts(request.include_resolved, since);
        Ok(Response::new(pb::GetAlertsResponse {
            alerts,
            health: health.as_proto() as i32,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_requests_name_the_bad_field() {
        let agent = pb::AgentId {
            agent_type: "nga".into(),
            instance: "nga-1".into(),
        };
        let base = pb::ReserveRequest {
            agent: Some(agent.clone()),
            amounts: Some(pb::ResourceAmounts {
                cpu_threads: 1,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(validate_reserve(base.clone()).is_ok());
        let field = |request: pb::ReserveRequest| validate_reserve(request).unwrap_err().field;
        assert_eq!(
            field(pb::ReserveRequest {
                agent: None,
                ..base.clone()
            }),
            "agent"
        );
        assert_eq!(
            field(pb::ReserveRequest {
                amounts: None,
                ..base.clone()
            }),
            "amounts"
        );
        assert_eq!(
            field(pb::ReserveRequest {
                lease_ttl: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 5
                }),
                ..base.clone()
            }),
            "lease_ttl"
        );
        assert_eq!(
            field(pb::ReserveRequest {
                idempotency_key: "has space".into(),
                ..base.clone()
            }),
            "idempotency_key"
        );
        assert_eq!(
            field(pb::ReserveRequest {
                agent: Some(pb::AgentId {
                    agent_type: "nga".into(),
                    instance: String::new()
                }),
                ..base
            }),
            "agent.instance"
        );
    }
}
