//! Thresholds to alert states. Each watched value (`cpu.total`, `memory`, `gpu<i>.memory`) has a
//! level — OK, WARN or CRITICAL — that changes only when the new level has held for
//! `sustain_for`, and goes down only once the value has fallen `hysteresis` points below the
//! threshold that raised it, so a value hovering at a threshold does not flap. Every change is a
//! [`Transition`]; a firing that repeats within `alert_cooldown` of the last one at that level is
//! marked unannounced, so noisy resources do not flood logs and counters.
//!
//! Pure: time comes in as arguments, so tests drive it without sleeping.

use std::{
    collections::{BTreeMap, VecDeque},
    time::{Duration, Instant, SystemTime},
};

use tta_proto::v1 as pb;
use tta_types::config::{MonitoringConfig, ResourcesConfig};

/// How long resolved alerts are kept for `GetAlerts(include_resolved)`.
pub const RESOLVED_RETENTION: Duration = Duration::from_secs(3600);
/// Upper bound on kept resolved alerts, whatever their age.
const RESOLVED_MAX: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Ok,
    Warn,
    Critical,
}

impl Level {
    pub fn as_proto(self) -> pb::HealthState {
        match self {
            Level::Ok => pb::HealthState::Ok,
            Level::Warn => pb::HealthState::Warn,
            Level::Critical => pb::HealthState::Critical,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Critical => "critical",
        }
    }

    /// 0, 1, 2: for gauges.
    pub fn value(self) -> f64 {
        match self {
            Level::Ok => 0.0,
            Level::Warn => 1.0,
            Level::Critical => 2.0,
        }
    }
}

/// One value to judge, in percent.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub id: String,
    pub resource: &'static str,
    pub value: f64,
    pub warn: f64,
    pub crit: f64,
}

/// The percentages the monitor alerts on, from one snapshot. GPU memory is judged against
/// `gpu_memory_limit` where that is below the device's memory.
pub fn readings(
    snapshot: &pb::HostSnapshot,
    monitoring: &MonitoringConfig,
    resources: &ResourcesConfig,
) -> Vec<Reading> {
    let mut readings = Vec::new();
    if let Some(cpu) = &snapshot.cpu {
        readings.push(Reading {
            id: "cpu.total".to_owned(),
            resource: "cpu",
            value: cpu.total_percent,
            warn: monitoring.cpu_warn,
            crit: monitoring.cpu_crit,
        });
    }
    if let Some(memory) = snapshot.memory.as_ref().filter(|m| m.total_bytes > 0) {
        readings.push(Reading {
            id: "memory".to_owned(),
            resource: "memory",
            value: memory.used_bytes as f64 * 100.0 / memory.total_bytes as f64,
            warn: monitoring.mem_warn,
            crit: monitoring.mem_crit,
        });
    }
    for gpu in &snapshot.gpus {
        let capacity = gpu_capacity(gpu, resources);
        if capacity == 0 {
            continue;
        }
        readings.push(Reading {
            id: format!("gpu{}.memory", gpu.index),
            resource: "gpu.memory",
            value: gpu.memory_used_bytes as f64 * 100.0 / capacity as f64,
            warn: monitoring.gpu_mem_warn,
            crit: monitoring.gpu_mem_crit,
        });
    }
    readings
}

/// The GPU memory the stack may use on `gpu`: its memory, capped by `gpu_memory_limit`.
pub fn gpu_capacity(gpu: &pb::GpuStats, resources: &ResourcesConfig) -> u64 {
    match resources.gpu_memory_limit {
        Some(limit) => gpu.memory_total_bytes.min(limit.0),
        None => gpu.memory_total_bytes,
    }
}

/// A level change of one alert.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub id: String,
    pub resource: &'static str,
    pub from: Level,
    pub to: Level,
    pub value: f64,
    pub threshold: f64,
    /// False when a repeat firing fell within the cooldown (and for the resolution of such a
    /// firing): the state changed, but nobody is told again.
    pub announced: bool,
}

#[derive(Debug)]
struct Track {
    resource: &'static str,
    level: Level,
    since: SystemTime,
    value: f64,
    threshold: f64,
    pending: Option<(Level, Instant)>,
    last_fired: BTreeMap<Level, Instant>,
    announced: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub sustain_for: Duration,
    pub hysteresis: f64,
    pub cooldown: Duration,
}

impl From<&MonitoringConfig> for Policy {
    fn from(config: &MonitoringConfig) -> Self {
        Self {
            sustain_for: config.sustain_for,
            hysteresis: config.hysteresis,
            cooldown: config.alert_cooldown,
        }
    }
}

/// The alert state of one host.
#[derive(Debug)]
pub struct AlertEngine {
    policy: Policy,
    tracks: BTreeMap<String, Track>,
    resolved: VecDeque<pb::ResourceAlert>,
}

fn target(current: Level, value: f64, warn: f64, crit: f64, hysteresis: f64) -> Level {
    if value >= crit || (current == Level::Critical && value > crit - hysteresis) {
        Level::Critical
    } else if value >= warn || (current >= Level::Warn && value > warn - hysteresis) {
        Level::Warn
    } else {
        Level::Ok
    }
}

fn unit(resource: &str) -> &'static str {
    if resource.ends_with("temperature") {
        "°C"
    } else {
        "%"
    }
}

fn alert_of(id: &str, track: &Track) -> pb::ResourceAlert {
    pb::ResourceAlert {
        id: id.to_owned(),
        resource: track.resource.to_owned(),
        level: track.level.as_proto() as i32,
        value: track.value,
        threshold: track.threshold,
        since: Some(prost_types::Timestamp::from(track.since)),
        resolved_at: None,
        message: format!(
            "{} at {:.1}{u} >= {} {}{u}",
            id,
            track.value,
            track.level.name(),
            track.threshold,
            u = unit(track.resource)
        ),
    }
}

impl AlertEngine {
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            tracks: BTreeMap::new(),
            resolved: VecDeque::new(),
        }
    }

    /// Judges one round of readings; values no longer read (a GPU gone) resolve.
    /// Judges later readings by `policy`; what each alert has seen so far stays.
    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
    }

    pub fn evaluate(
        &mut self,
        readings: &[Reading],
        now: Instant,
        wall: SystemTime,
    ) -> Vec<Transition> {
        let mut transitions = Vec::new();
        for reading in readings {
            if let Some(transition) = self.observe(reading, now, wall) {
                transitions.push(transition);
            }
        }
        let gone: Vec<String> = self
            .tracks
            .keys()
            .filter(|id| !readings.iter().any(|reading| &reading.id == *id))
            .cloned()
            .collect();
        for id in gone {
            if let Some(track) = self.tracks.remove(&id)
                && track.level > Level::Ok
            {
                let mut alert = alert_of(&id, &track);
                alert.resolved_at = Some(prost_types::Timestamp::from(wall));
                self.keep_resolved(alert, wall);
                transitions.push(Transition {
                    id,
                    resource: track.resource,
                    from: track.level,
                    to: Level::Ok,
                    value: 0.0,
                    threshold: track.threshold,
                    announced: track.announced,
                });
            }
        }
        transitions
    }

    fn observe(&mut self, reading: &Reading, now: Instant, wall: SystemTime) -> Option<Transition> {
        let policy = self.policy;
        let track = self.tracks.entry(reading.id.clone()).or_insert(Track {
            resource: reading.resource,
            level: Level::Ok,
            since: wall,
            value: reading.value,
            threshold: 0.0,
            pending: None,
            last_fired: BTreeMap::new(),
            announced: true,
        });
        track.value = reading.value;
        let wanted = target(
            track.level,
            reading.value,
            reading.warn,
            reading.crit,
            policy.hysteresis,
        );
        if wanted == track.level {
            track.pending = None;
            return None;
        }
        let pending_since = match track.pending {
            Some((level, since)) if level == wanted => since,
            _ => {
                track.pending = Some((wanted, now));
                now
            }
        };
        if now.duration_since(pending_since) < policy.sustain_for {
            return None;
        }
        track.pending = None;
        let from = track.level;
        let previous = (from > Level::Ok).then(|| alert_of(&reading.id, track));
        let threshold = match wanted {
            Level::Critical => reading.crit,
            Level::Warn => reading.warn,
            Level::Ok => track.threshold,
        };
        let announced = if wanted > Level::Ok {
            let repeat = track
                .last_fired
                .get(&wanted)
                .is_some_and(|last| now.duration_since(*last) < policy.cooldown);
            if !repeat {
                track.last_fired.insert(wanted, now);
            }
            !repeat
        } else {
            track.announced
        };
        track.level = wanted;
        track.since = wall;
        track.threshold = threshold;
        track.announced = announced;
        if let Some(mut ended) = previous {
            ended.resolved_at = Some(prost_types::Timestamp::from(wall));
            self.keep_resolved(ended, wall);
        }
        Some(Transition {
            id: reading.id.clone(),
            resource: reading.resource,
            from,
            to: wanted,
            value: reading.value,
            threshold,
            announced,
        })
    }

    fn keep_resolved(&mut self, alert: pb::ResourceAlert, wall: SystemTime) {
        self.resolved.push_front(alert);
        let cutoff = wall.checked_sub(RESOLVED_RETENTION);
        while self.resolved.len() > RESOLVED_MAX
            || self.resolved.back().is_some_and(|oldest| {
                let resolved = oldest
                    .resolved_at
                    .and_then(|at| SystemTime::try_from(at).ok());
                matches!((resolved, cutoff), (Some(at), Some(cutoff)) if at < cutoff)
            })
        {
            self.resolved.pop_back();
        }
    }

    /// The worst level among active alerts.
    pub fn health(&self) -> Level {
        self.tracks
            .values()
            .map(|track| track.level)
            .max()
            .unwrap_or(Level::Ok)
    }

    /// Alerts active now, worst first.
    pub fn active(&self) -> Vec<pb::ResourceAlert> {
        let mut active: Vec<(Level, pb::ResourceAlert)> = self
            .tracks
            .iter()
            .filter(|(_, track)| track.level > Level::Ok)
            .map(|(id, track)| (track.level, alert_of(id, track)))
            .collect();
        active.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.id.cmp(&b.1.id)));
        active.into_iter().map(|(_, alert)| alert).collect()
    }

    /// The level of every watched value, for gauges.
    pub fn levels(&self) -> impl Iterator<Item = (&str, Level)> {
        self.tracks
            .iter()
            .map(|(id, track)| (id.as_str(), track.level))
    }

    /// Active alerts, then (when asked) resolved ones, most recent first, that started or
    /// resolved at or after `since`.
    pub fn list(
        &self,
        include_resolved: bool,
        since: Option<SystemTime>,
    ) -> Vec<pb::ResourceAlert> {
        let at = |timestamp: Option<prost_types::Timestamp>| {
            timestamp.and_then(|t| SystemTime::try_from(t).ok())
        };
        let recent = |alert: &pb::ResourceAlert| match since {
            None => true,
            Some(since) => {
                at(alert.since).is_some_and(|t| t >= since)
                    || at(alert.resolved_at).is_some_and(|t| t >= since)
            }
        };
        let mut alerts: Vec<pb::ResourceAlert> =
            self.active().into_iter().filter(|a| recent(a)).collect();
        if include_resolved {
            alerts.extend(self.resolved.iter().filter(|a| recent(a)).cloned());
        }
        let latest = |alert: &pb::ResourceAlert| at(alert.resolved_at).or(at(alert.since));
        alerts.sort_by_key(|alert| std::cmp::Reverse(latest(alert)));
        alerts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu_reading(value: f64) -> Vec<Reading> {
        vec![Reading {
            id: "gpu0.memory".to_owned(),
            resource: "gpu.memory",
            value,
            warn: 80.0,
            crit: 90.0,
        }]
    }

    fn engine(sustain: Duration, cooldown: Duration) -> AlertEngine {
        AlertEngine::new(Policy {
            sustain_for: sustain,
            hysteresis: 5.0,
            cooldown,
        })
    }

    #[test]
    fn levels_rise_at_thresholds_and_fall_only_past_the_hysteresis() {
        let mut alerts = engine(Duration::ZERO, Duration::ZERO);
        let t0 = Instant::now();
        let wall = SystemTime::now();
        let steps = [
            (50.0, None),
            (80.0, Some((Level::Ok, Level::Warn))),
            (91.0, Some((Level::Warn, Level::Critical))),
            (86.0, None), // above 90 - 5: still critical
            (85.0, Some((Level::Critical, Level::Warn))),
            (76.0, None), // above 80 - 5: still warn
            (74.0, Some((Level::Warn, Level::Ok))),
        ];
        for (i, (value, expected)) in steps.into_iter().enumerate() {
            let now = t0 + Duration::from_secs(i as u64);
            let got = alerts.evaluate(&gpu_reading(value), now, wall);
            let got: Vec<(Level, Level)> = got.iter().map(|t| (t.from, t.to)).collect();
            assert_eq!(got, expected.into_iter().collect::<Vec<_>>(), "at {value}");
        }
        assert_eq!(alerts.health(), Level::Ok);
        assert_eq!(alerts.list(true, None).len(), 3);
    }

    #[test]
    fn a_level_must_hold_for_the_sustain_time() {
        let mut alerts = engine(Duration::from_secs(10), Duration::ZERO);
        let t0 = Instant::now();
        let wall = SystemTime::now();
        assert!(alerts.evaluate(&gpu_reading(95.0), t0, wall).is_empty());
        assert!(
            alerts
                .evaluate(&gpu_reading(95.0), t0 + Duration::from_secs(5), wall)
                .is_empty()
        );
        let fired = alerts.evaluate(&gpu_reading(95.0), t0 + Duration::from_secs(10), wall);
        assert_eq!(fired[0].to, Level::Critical);
        assert_eq!(alerts.active()[0].id, "gpu0.memory");
    }

    #[test]
    fn a_repeat_firing_within_the_cooldown_is_not_announced() {
        let mut alerts = engine(Duration::ZERO, Duration::from_secs(60));
        let t0 = Instant::now();
        let wall = SystemTime::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert!(alerts.evaluate(&gpu_reading(85.0), at(0), wall)[0].announced);
        assert!(alerts.evaluate(&gpu_reading(10.0), at(1), wall)[0].announced);
        let again = alerts.evaluate(&gpu_reading(85.0), at(2), wall);
        assert_eq!(again[0].to, Level::Warn);
        assert!(!again[0].announced);
        assert!(!alerts.evaluate(&gpu_reading(10.0), at(3), wall)[0].announced);
        assert!(alerts.evaluate(&gpu_reading(85.0), at(70), wall)[0].announced);
    }

    #[test]
    fn a_vanished_value_resolves_its_alert() {
        let mut alerts = engine(Duration::ZERO, Duration::ZERO);
        let now = Instant::now();
        alerts.evaluate(&gpu_reading(99.0), now, SystemTime::now());
        let resolved = alerts.evaluate(&[], now, SystemTime::now());
        assert_eq!(resolved[0].to, Level::Ok);
        assert_eq!(alerts.health(), Level::Ok);
    }

    #[test]
    fn gpu_memory_is_judged_against_the_configured_limit() {
        let snapshot = pb::HostSnapshot {
            gpus: vec![pb::GpuStats {
                index: 0,
                memory_total_bytes: 16 << 30,
                memory_used_bytes: 3 << 30,
                ..Default::default()
            }],
            ..Default::default()
        };
        let resources = ResourcesConfig {
            gpu_memory_limit: Some(tta_types::config::ByteSize(4 << 30)),
            ..Default::default()
        };
        let readings = readings(&snapshot, &MonitoringConfig::default(), &resources);
        assert_eq!(readings[0].id, "gpu0.memory");
        assert_eq!(readings[0].value, 75.0);
    }
}
