//! The monitor of one host: samples on a timer, judges thresholds, keeps the reservation ledger
//! and the latest snapshot, and exports it all as metrics. The gRPC edge ([`crate::service`])
//! and the registration loop ([`crate::registration`]) are thin layers over this.

use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::{Instant, SystemTime},
};

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tta_proto::v1 as pb;
use tta_types::Config;

use crate::{
    alerts::{self, AlertEngine, Level, Transition},
    error::Error,
    export,
    reservations::{Capacity, Ledger, Refusal, Request, Totals},
    sampler::HostSampler,
};

#[derive(Debug)]
struct State {
    alerts: AlertEngine,
    ledger: Ledger,
}

#[derive(Debug)]
pub struct Monitor {
    /// Swapped whole when the configuration file changes: thresholds and limits apply from the
    /// next tick, while the alerts keep their state.
    config: ArcSwap<Config>,
    host: String,
    sampler: Mutex<HostSampler>,
    state: Mutex<State>,
    latest: watch::Sender<Arc<pb::HostSnapshot>>,
}

/// A poisoned lock only means another thread panicked mid-update; the data is still the best
/// there is, and a monitor must keep answering.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Monitor {
    pub fn new(config: Arc<Config>, sampler: HostSampler) -> Arc<Self> {
        let host = sampler.host().to_owned();
        let (latest, _) = watch::channel(Arc::new(pb::HostSnapshot {
            host: host.clone(),
            nvml_available: sampler.probe_status().available,
            nvml_error: sampler.probe_status().error.clone(),
            health: pb::HealthState::Ok as i32,
            ..Default::default()
        }));
        let policy = alerts::Policy::from(&config.monitoring);
        Arc::new(Self {
            config: ArcSwap::new(config),
            host,
            sampler: Mutex::new(sampler),
            state: Mutex::new(State {
                alerts: AlertEngine::new(policy),
                ledger: Ledger::default(),
            }),
            latest,
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Applies a new configuration from the next tick on: alert thresholds, their sustain,
    /// hysteresis and cooldown, and the resource limits. Open alerts stay open until the new
    /// thresholds clear them.
    pub fn apply(&self, config: Arc<Config>) {
        lock(&self.state)
            .alerts
            .set_policy(alerts::Policy::from(&config.monitoring));
        self.config.store(config);
    }

    /// The snapshot of the last sampling tick.
    pub fn latest(&self) -> Arc<pb::HostSnapshot> {
        self.latest.borrow().clone()
    }

    /// Changes whenever a tick publishes a new snapshot.
    pub fn subscribe(&self) -> watch::Receiver<Arc<pb::HostSnapshot>> {
        self.latest.subscribe()
    }

    pub fn health(&self) -> Level {
        lock(&self.state).alerts.health()
    }

    async fn read_host(self: &Arc<Self>) -> Result<pb::HostSnapshot, Error> {
        let monitor = self.clone();
        tokio::task::spawn_blocking(move || lock(&monitor.sampler).sample())
            .await
            .map_err(|err| Error::Unavailable(format!("host metrics could not be read: {err}")))
    }

    /// Adds what the monitor knows beyond the raw reading: health, active alerts and GPU
    /// reservations.
    fn decorate(&self, snapshot: &mut pb::HostSnapshot, state: &State) {
        snapshot.health = state.alerts.health().as_proto() as i32;
        snapshot.active_alerts = state.alerts.active();
        for gpu in &mut snapshot.gpus {
            gpu.memory_reserved_bytes = state.ledger.gpu_reserved(gpu.index);
        }
    }

    /// One sampling tick: read, judge, export, publish. Returns the transitions it caused.
    pub async fn tick(self: &Arc<Self>) -> Result<Vec<Transition>, Error> {
        let started = Instant::now();
        let mut snapshot = self.read_host().await?;
        let config = self.config.load();
        let readings = alerts::readings(&snapshot, &config.monitoring, &config.resources);
        let now = SystemTime::now();
        let (transitions, reserved, capacity) = {
            let mut state = lock(&self.state);
            let expired = state.ledger.expire(now);
            if expired > 0 {
                metrics::counter!("tta_resource_leases_expired_total").increment(expired as u64);
                tracing::info!(expired, "reservation leases expired");
            }
            let transitions = state.alerts.evaluate(&readings, Instant::now(), now);
            self.decorate(&mut snapshot, &state);
            export::health(&self.host, state.alerts.health(), state.alerts.levels());
            (
                transitions,
                state.ledger.totals(),
                capacity_of(&config, &snapshot),
            )
        };
        for transition in &transitions {
            announce(&self.host, transition);
        }
        export::snapshot(&self.host, &snapshot);
        export::reservations(&self.host, reserved, capacity.totals());
        metrics::histogram!("tta_resource_sample_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        self.latest.send_replace(Arc::new(snapshot));
        Ok(transitions)
    }

    /// A snapshot read now (not the last tick's), with the current alerts.
    pub async fn fresh_snapshot(
        self: &Arc<Self>,
        include_processes: bool,
    ) -> Result<pb::HostSnapshot, Error> {
        let mut snapshot = self.read_host().await?;
        self.decorate(&mut snapshot, &lock(&self.state));
        if !include_processes {
            snapshot.processes.clear();
        }
        Ok(snapshot)
    }

    pub fn alerts(
        &self,
        include_resolved: bool,
        since: Option<SystemTime>,
    ) -> (Vec<pb::ResourceAlert>, Level) {
        let state = lock(&self.state);
        (
            state.alerts.list(include_resolved, since),
            state.alerts.health(),
        )
    }

    pub fn capacity(&self) -> Capacity {
        capacity_of(&self.config.load(), &self.latest())
    }

    pub fn reserve(&self, request: Request) -> Result<pb::Reservation, Error> {
        let capacity = self.capacity();
        let agent_type = request.agent.agent_type.to_string();
        let priority = request.priority;
        let mut state = lock(&self.state);
        let critical = state.alerts.health() == Level::Critical;
        let outcome = state
            .ledger
            .reserve(request, &capacity, critical, SystemTime::now());
        let label = match &outcome {
            Ok(_) => "granted",
            Err(Refusal::Short { .. } | Refusal::HostCritical) => "exhausted",
            Err(_) => "refused",
        };
        metrics::counter!("tta_resource_reservations_total", "outcome" => label, "priority" => priority.as_str())
            .increment(1);
        let reserved = state.ledger.totals();
        drop(state);
        export::reservations(&self.host, reserved, capacity.totals());
        match outcome {
            Ok(mut reservation) => {
                reservation.host = self.host.clone();
                tracing::info!(lease = %reservation.lease_id, agent_type = %agent_type, "reserved");
                Ok(reservation)
            }
            Err(refusal) => Err(refusal_error(refusal)),
        }
    }

    pub fn release(&self, lease_id: &str) -> bool {
        let mut state = lock(&self.state);
        state.ledger.release(lease_id, SystemTime::now())
    }

    pub fn renew(
        &self,
        lease_id: &str,
        ttl: Option<std::time::Duration>,
    ) -> Option<pb::Reservation> {
        let mut state = lock(&self.state);
        state
            .ledger
            .renew(lease_id, ttl, SystemTime::now())
            .map(|mut reservation| {
                reservation.host = self.host.clone();
                reservation
            })
    }

    pub fn reservations(&self, agent_type: Option<&str>) -> (Vec<pb::Reservation>, Totals) {
        let mut state = lock(&self.state);
        let mut list = state.ledger.list(agent_type, SystemTime::now());
        for reservation in &mut list {
            reservation.host = self.host.clone();
        }
        (list, state.ledger.totals())
    }
}

fn refusal_error(refusal: Refusal) -> Error {
    match refusal {
        Refusal::NoGpu => Error::FailedPrecondition(format!("amounts.gpu_memory_bytes: {refusal}")),
        Refusal::NoSuchGpu(_) => Error::Invalid(tta_types::FieldViolation::new(
            "gpu_index",
            refusal
                .to_string()
                .trim_start_matches("gpu_index: ")
                .to_owned(),
        )),
        Refusal::Short { retry_after, .. } => Error::Exhausted {
            message: format!("amounts.{refusal}"),
            retry_after,
        },
        Refusal::HostCritical => Error::Exhausted {
            message: refusal.to_string(),
            retry_after: None,
        },
    }
}

fn announce(host: &str, transition: &Transition) {
    metrics::gauge!("tta_resource_alert_last_transition_seconds", "host" => host.to_owned(), "alert" => transition.id.clone())
        .set(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0.0, |since| since.as_secs_f64()),
        );
    if !transition.announced {
        metrics::counter!("tta_resource_alerts_suppressed_total", "host" => host.to_owned(), "alert" => transition.id.clone())
            .increment(1);
        return;
    }
    metrics::counter!(
        "tta_resource_alert_transitions_total",
        "host" => host.to_owned(),
        "alert" => transition.id.clone(),
        "from" => transition.from.name(),
        "to" => transition.to.name()
    )
    .increment(1);
    let message = format!(
        "{} {} -> {} at {:.1} (threshold {})",
        transition.id,
        transition.from.name(),
        transition.to.name(),
        transition.value,
        transition.threshold
    );
    match transition.to {
        Level::Critical => {
            tracing::warn!(host, alert = %transition.id, resource = transition.resource, from = transition.from.name(), to = "critical", value = transition.value, threshold = transition.threshold, "{message}")
        }
        Level::Warn => {
            tracing::warn!(host, alert = %transition.id, resource = transition.resource, from = transition.from.name(), to = "warn", value = transition.value, threshold = transition.threshold, "{message}")
        }
        Level::Ok => {
            tracing::info!(host, alert = %transition.id, resource = transition.resource, from = transition.from.name(), to = "ok", value = transition.value, "{message}")
        }
    }
}

/// Capacity for reservations: configured limits, else what the host has.
pub fn capacity_of(config: &Config, snapshot: &pb::HostSnapshot) -> Capacity {
    let cores = snapshot.cpu.as_ref().map_or(0, |cpu| cpu.logical_cores);
    let memory = snapshot.memory.as_ref().map_or(0, |m| m.total_bytes);
    Capacity {
        cpu_threads: config.resources.cpu_thread_limit.unwrap_or(cores),
        ram_bytes: config
            .resources
            .memory_limit
            .map_or(memory, |limit| limit.0),
        gpu_memory: snapshot
            .gpus
            .iter()
            .map(|gpu| (gpu.index, alerts::gpu_capacity(gpu, &config.resources)))
            .collect(),
    }
}

impl Capacity {
    pub fn totals(&self) -> Totals {
        Totals {
            gpu_memory_bytes: self.gpu_memory.iter().map(|(_, bytes)| bytes).sum(),
            cpu_threads: self.cpu_threads,
            ram_bytes: self.ram_bytes,
        }
    }
}
