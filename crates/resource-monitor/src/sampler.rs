//! One reading of the host through `sysinfo` (CPU, load, memory, disks, network, TTA processes)
//! and the [`GpuProbe`]. Kept cheap enough to run every second: only the known TTA processes are
//! refreshed each time, the full process table only every [`PROCESS_RESCAN_EVERY`] samples.

use std::time::{Duration, Instant, SystemTime};

use sysinfo::{
    CpuRefreshKind, Disks, MemoryRefreshKind, Networks, Pid, ProcessRefreshKind, ProcessesToUpdate,
    RefreshKind, System, UpdateKind,
};
use tta_proto::v1 as pb;

use crate::probe::{GpuProbe, ProbeStatus};

/// Samples between two scans of the whole process table for new TTA processes.
const PROCESS_RESCAN_EVERY: u32 = 10;

/// Below this, sysinfo's CPU usage is noise; a snapshot asked for sooner reuses the last one.
const MIN_CPU_REFRESH: Duration = sysinfo::MINIMUM_CPU_UPDATE_INTERVAL;

/// Process names the monitor follows: the orchestrator's binaries.
fn is_tta_process(name: &str) -> bool {
    name == "tta" || name.starts_with("tta-")
}

pub struct HostSampler {
    host: String,
    system: System,
    disks: Disks,
    networks: Networks,
    probe: Box<dyn GpuProbe>,
    probe_status: ProbeStatus,
    track_processes: bool,
    tta_pids: Vec<Pid>,
    samples: u32,
    last_cpu_refresh: Option<Instant>,
    last_network_refresh: Instant,
    network_rates: Vec<(String, f64, f64)>,
}

impl std::fmt::Debug for HostSampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostSampler")
            .field("host", &self.host)
            .field("probe", &self.probe_status)
            .finish_non_exhaustive()
    }
}

impl HostSampler {
    pub fn new(
        host: String,
        probe: Box<dyn GpuProbe>,
        track_processes: bool,
    ) -> Result<Self, String> {
        let system = System::new_with_specifics(
            RefreshKind::nothing()
                .with_cpu(CpuRefreshKind::nothing().with_usage())
                .with_memory(MemoryRefreshKind::everything()),
        )
        .map_err(|err| format!("cannot read host metrics: {err}"))?;
        let disks =
            Disks::new_with_refreshed_list().map_err(|err| format!("cannot list disks: {err}"))?;
        let networks = Networks::new_with_refreshed_list()
            .map_err(|err| format!("cannot list network interfaces: {err}"))?;
        let probe_status = probe.status();
        Ok(Self {
            host,
            system,
            disks,
            networks,
            probe,
            probe_status,
            track_processes,
            tta_pids: Vec::new(),
            samples: 0,
            last_cpu_refresh: None,
            last_network_refresh: Instant::now(),
            network_rates: Vec::new(),
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn probe_status(&self) -> &ProbeStatus {
        &self.probe_status
    }

    /// Reads everything now. Health and alerts are filled in by the caller.
    pub fn sample(&mut self) -> pb::HostSnapshot {
        let now = Instant::now();
        let cpu_due = self
            .last_cpu_refresh
            .is_none_or(|last| now.duration_since(last) >= MIN_CPU_REFRESH);
        if cpu_due {
            self.system
                .refresh_cpu_specifics(CpuRefreshKind::nothing().with_usage());
            self.last_cpu_refresh = Some(now);
        }
        self.system
            .refresh_memory_specifics(MemoryRefreshKind::everything());
        self.disks.refresh(true);
        self.refresh_networks(now);
        let processes = if self.track_processes {
            self.refresh_processes()
        } else {
            Vec::new()
        };
        self.samples = self.samples.wrapping_add(1);

        let cpus = self.system.cpus();
        let load = System::load_average().unwrap_or(sysinfo::LoadAvg {
            one: 0.0,
            five: 0.0,
            fifteen: 0.0,
        });
        let cpu = pb::CpuStats {
            total_percent: f64::from(self.system.global_cpu_usage()),
            per_core_percent: cpus.iter().map(|cpu| f64::from(cpu.usage())).collect(),
            logical_cores: cpus.len() as u32,
            physical_cores: System::physical_core_count().unwrap_or(0) as u32,
            load_1m: load.one,
            load_5m: load.five,
            load_15m: load.fifteen,
        };
        // Inside a memory-limited cgroup (a container) the limit is the real total.
        let (total, available) = match self.system.cgroup_limits() {
            Some(limits) if limits.total_memory > 0 => (
                limits.total_memory,
                limits
                    .total_memory
                    .saturating_sub(limits.rss.min(limits.total_memory)),
            ),
            _ => (self.system.total_memory(), self.system.available_memory()),
        };
        let memory = pb::MemoryStats {
            total_bytes: total,
            used_bytes: total.saturating_sub(available),
            available_bytes: available,
            swap_total_bytes: self.system.total_swap(),
            swap_used_bytes: self.system.used_swap(),
        };
        let disks = self
            .disks
            .iter()
            .filter(|disk| disk.total_space() > 0)
            .map(|disk| pb::DiskStats {
                mount_point: disk.mount_point().to_string_lossy().into_owned(),
                device: disk.name().to_string_lossy().into_owned(),
                file_system: disk.file_system().to_string_lossy().into_owned(),
                total_bytes: disk.total_space(),
                available_bytes: disk.available_space(),
            })
            .collect();
        let networks = self
            .networks
            .iter()
            .map(|(name, data)| {
                let name = name.to_string_lossy().into_owned();
                let (rx_rate, tx_rate) = self
                    .network_rates
                    .iter()
                    .find(|(interface, _, _)| *interface == name)
                    .map_or((0.0, 0.0), |(_, rx, tx)| (*rx, *tx));
                pb::NetworkStats {
                    interface_name: name,
                    rx_bytes: data.total_received(),
                    tx_bytes: data.total_transmitted(),
                    rx_bytes_per_second: rx_rate,
                    tx_bytes_per_second: tx_rate,
                }
            })
            .collect();
        let gpus = self.probe.sample();
        pb::HostSnapshot {
            host: self.host.clone(),
            time: Some(prost_types::Timestamp::from(SystemTime::now())),
            cpu: Some(cpu),
            memory: Some(memory),
            disks,
            networks,
            processes,
            gpus,
            nvml_available: self.probe_status.available,
            nvml_error: self.probe_status.error.clone(),
            gpu_driver_version: self.probe_status.driver_version.clone(),
            health: pb::HealthState::Ok as i32,
            active_alerts: Vec::new(),
            uptime: prost_types::Duration::try_from(Duration::from_secs(
                System::uptime().unwrap_or(0),
            ))
            .ok(),
        }
    }

    fn refresh_networks(&mut self, now: Instant) {
        let elapsed = now.duration_since(self.last_network_refresh).as_secs_f64();
        self.networks.refresh(true);
        self.last_network_refresh = now;
        if elapsed <= 0.0 {
            return;
        }
        // `received()` is the traffic since the previous refresh.
        self.network_rates = self
            .networks
            .iter()
            .map(|(name, data)| {
                (
                    name.to_string_lossy().into_owned(),
                    data.received() as f64 / elapsed,
                    data.transmitted() as f64 / elapsed,
                )
            })
            .collect();
    }

    fn refresh_processes(&mut self) -> Vec<pb::ProcessStats> {
        let kind = ProcessRefreshKind::nothing()
            .with_cpu()
            .with_memory()
            .with_exe(UpdateKind::Never);
        if self.samples.is_multiple_of(PROCESS_RESCAN_EVERY) || self.tta_pids.is_empty() {
            self.system
                .refresh_processes_specifics(ProcessesToUpdate::All, true, kind);
            self.tta_pids = self
                .system
                .processes()
                .iter()
                .filter(|(_, process)| is_tta_process(&process.name().to_string_lossy()))
                .map(|(pid, _)| *pid)
                .collect();
        } else {
            self.system.refresh_processes_specifics(
                ProcessesToUpdate::Some(&self.tta_pids),
                true,
                kind,
            );
        }
        let mut processes: Vec<pb::ProcessStats> = self
            .tta_pids
            .iter()
            .filter_map(|pid| self.system.process(*pid))
            .map(|process| pb::ProcessStats {
                pid: process.pid().as_u32(),
                name: process.name().to_string_lossy().into_owned(),
                agent: None,
                cpu_percent: f64::from(process.cpu_usage()),
                rss_bytes: process.memory(),
                started_at: Some(prost_types::Timestamp {
                    seconds: process.start_time() as i64,
                    nanos: 0,
                }),
            })
            .collect();
        processes.sort_by_key(|process| process.pid);
        processes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::NvmlProbe;

    #[test]
    fn samples_real_numbers_from_this_host() {
        let mut sampler =
            HostSampler::new("test-host".into(), Box::new(NvmlProbe::init()), true).unwrap();
        sampler.sample();
        std::thread::sleep(MIN_CPU_REFRESH);
        let snapshot = sampler.sample();
        let cpu = snapshot.cpu.unwrap();
        assert!(cpu.logical_cores >= 1);
        assert_eq!(cpu.per_core_percent.len(), cpu.logical_cores as usize);
        assert!((0.0..=100.0).contains(&cpu.total_percent));
        let memory = snapshot.memory.unwrap();
        assert!(memory.total_bytes > 0 && memory.used_bytes <= memory.total_bytes);
        assert!(!snapshot.disks.is_empty(), "no disks seen");
        assert_eq!(snapshot.host, "test-host");
        if !snapshot.nvml_available {
            assert!(snapshot.gpus.is_empty());
            assert!(!snapshot.nvml_error.is_empty());
        }
    }

    #[test]
    fn only_orchestrator_binaries_are_followed() {
        assert!(is_tta_process("tta-gateway"));
        assert!(is_tta_process("tta"));
        assert!(!is_tta_process("ttahelper"));
        assert!(!is_tta_process("bash"));
    }
}
