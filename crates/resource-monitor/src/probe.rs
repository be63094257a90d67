//! GPUs behind one small trait, so the monitor never depends on a GPU being there: NVML in
//! production ([`NvmlProbe`]), a script in tests and demos ([`ScriptedProbe`]).

use std::sync::{Arc, Mutex};

use nvml_wrapper::{
    Nvml, enum_wrappers::device::TemperatureSensor, enums::device::UsedGpuMemory, error::NvmlError,
};
use tta_proto::v1 as pb;

/// Whether a GPU management library is usable on this host, decided once at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeStatus {
    pub available: bool,
    /// Why it is not available; empty when it is.
    pub error: String,
    /// Driver version; empty without a driver.
    pub driver_version: String,
}

/// A source of GPU readings. `sample` is called once per sampling tick from a blocking thread.
pub trait GpuProbe: Send {
    fn status(&self) -> ProbeStatus;

    /// The devices now. A host without GPUs (or without NVML) returns an empty list; a device
    /// that cannot be read is left out rather than failing the whole sample.
    fn sample(&mut self) -> Vec<pb::GpuStats>;
}

/// NVML through `nvml-wrapper`, loaded at run time: a host without `libnvidia-ml.so.1` gets
/// `available = false` once and zero GPUs, never an error per sample.
pub struct NvmlProbe {
    nvml: Option<Nvml>,
    status: ProbeStatus,
    /// Devices whose failure was already logged, so a broken GPU logs once, not every second.
    reported: Vec<u32>,
}

impl std::fmt::Debug for NvmlProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmlProbe")
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

fn describe(err: &NvmlError) -> String {
    match err {
        NvmlError::LibloadingError(inner) => {
            format!("NVML library not loadable (libnvidia-ml.so.1): {inner}")
        }
        other => other.to_string(),
    }
}

impl NvmlProbe {
    /// Loads NVML if it is there; logs the outcome once.
    pub fn init() -> Self {
        match Nvml::init() {
            Ok(nvml) => {
                let driver_version = nvml.sys_driver_version().unwrap_or_default();
                let devices = nvml.device_count().unwrap_or(0);
                tracing::info!(nvml_available = true, driver = %driver_version, devices, "NVML loaded");
                Self {
                    nvml: Some(nvml),
                    status: ProbeStatus {
                        available: true,
                        error: String::new(),
                        driver_version,
                    },
                    reported: Vec::new(),
                }
            }
            Err(err) => {
                let error = describe(&err);
                tracing::info!(nvml_available = false, reason = %error, "no NVML on this host; reporting zero GPUs");
                Self {
                    nvml: None,
                    status: ProbeStatus {
                        available: false,
                        error,
                        driver_version: String::new(),
                    },
                    reported: Vec::new(),
                }
            }
        }
    }
}

fn read_device(nvml: &Nvml, index: u32) -> Result<pb::GpuStats, NvmlError> {
    let device = nvml.device_by_index(index)?;
    let memory = device.memory_info()?;
    let utilization = device.utilization_rates().ok();
    let processes = device
        .running_compute_processes()
        .unwrap_or_default()
        .into_iter()
        .chain(device.running_graphics_processes().unwrap_or_default())
        .map(|process| pb::GpuProcess {
            pid: process.pid,
            name: String::new(),
            used_memory_bytes: match process.used_gpu_memory {
                UsedGpuMemory::Used(bytes) => bytes,
                UsedGpuMemory::Unavailable => 0,
            },
        })
        .collect();
    let mig_enabled = device.mig_mode().is_ok_and(|mode| mode.current == 1);
    let mut mig_instances = Vec::new();
    if mig_enabled {
        for slot in 0..device.mig_device_count().unwrap_or(0) {
            // Unpopulated slots answer NotFound; they are simply not instances.
            let Ok(mig) = device.mig_device_by_index(slot) else {
                continue;
            };
            let memory = mig.memory_info().ok();
            mig_instances.push(pb::MigInstance {
                // nvml-wrapper exposes no instance-id getter for a MIG handle; the slot index is
                // stable for the life of the MIG layout.
                gpu_instance_id: slot,
                compute_instance_id: 0,
                uuid: mig.uuid().unwrap_or_default(),
                profile: mig.name().unwrap_or_default(),
                memory_total_bytes: memory.as_ref().map_or(0, |m| m.total),
                memory_used_bytes: memory.as_ref().map_or(0, |m| m.used),
            });
        }
    }
    Ok(pb::GpuStats {
        index,
        name: device.name().unwrap_or_default(),
        uuid: device.uuid().unwrap_or_default(),
        utilization_percent: utilization.as_ref().map_or(0, |u| u.gpu),
        memory_utilization_percent: utilization.as_ref().map_or(0, |u| u.memory),
        memory_used_bytes: memory.used,
        memory_total_bytes: memory.total,
        temperature_celsius: device.temperature(TemperatureSensor::Gpu).unwrap_or(0),
        power_milliwatts: device.power_usage().unwrap_or(0),
        power_limit_milliwatts: device.enforced_power_limit().unwrap_or(0),
        energy_millijoules: device.total_energy_consumption().unwrap_or(0),
        processes,
        mig_enabled,
        mig_instances,
        memory_reserved_bytes: 0,
    })
}

impl GpuProbe for NvmlProbe {
    fn status(&self) -> ProbeStatus {
        self.status.clone()
    }

    fn sample(&mut self) -> Vec<pb::GpuStats> {
        let Some(nvml) = &self.nvml else {
            return Vec::new();
        };
        let count = nvml.device_count().unwrap_or(0);
        let mut devices = Vec::with_capacity(count as usize);
        for index in 0..count {
            match read_device(nvml, index) {
                Ok(device) => devices.push(device),
                Err(err) if !self.reported.contains(&index) => {
                    self.reported.push(index);
                    tracing::warn!(gpu = index, error = %describe(&err), "cannot read GPU; leaving it out");
                }
                Err(_) => {}
            }
        }
        devices
    }
}

/// GPUs as a test or demo says they are: the readings are whatever was last [`set`](Self::set).
#[derive(Debug, Clone, Default)]
pub struct ScriptedProbe {
    devices: Arc<Mutex<Vec<pb::GpuStats>>>,
}

impl ScriptedProbe {
    pub fn new(devices: Vec<pb::GpuStats>) -> Self {
        Self {
            devices: Arc::new(Mutex::new(devices)),
        }
    }

    /// Replaces the readings the next samples return.
    pub fn set(&self, devices: Vec<pb::GpuStats>) {
        if let Ok(mut current) = self.devices.lock() {
            *current = devices;
        }
    }

    /// Sets the memory in use on one device.
    pub fn set_memory_used(&self, index: u32, used: u64) {
        if let Ok(mut current) = self.devices.lock() {
            for device in current.iter_mut().filter(|device| device.index == index) {
                device.memory_used_bytes = used;
            }
        }
    }

    /// A device with `total` bytes of memory, none used.
    pub fn device(index: u32, total: u64) -> pb::GpuStats {
        pb::GpuStats {
            index,
            name: "Scripted GPU".to_owned(),
            uuid: format!("GPU-scripted-{index}"),
            memory_total_bytes: total,
            ..Default::default()
        }
    }
}

impl GpuProbe for ScriptedProbe {
    fn status(&self) -> ProbeStatus {
        ProbeStatus {
            available: true,
            error: String::new(),
            driver_version: "scripted".to_owned(),
        }
    }

    fn sample(&mut self) -> Vec<pb::GpuStats> {
        self.devices
            .lock()
            .map(|devices| devices.clone())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_nvml_the_probe_reports_unavailable_and_no_gpus() {
        // This machine has no NVIDIA driver; on one that has, the probe must still not fail.
        let mut probe = NvmlProbe::init();
        let status = probe.status();
        if !status.available {
            assert!(!status.error.is_empty());
            assert!(probe.sample().is_empty());
            assert!(probe.sample().is_empty());
        }
    }

    #[test]
    fn a_scripted_probe_returns_what_it_was_told() {
        let probe = ScriptedProbe::new(vec![ScriptedProbe::device(0, 1000)]);
        probe.set_memory_used(0, 400);
        let mut sampler: Box<dyn GpuProbe> = Box::new(probe.clone());
        assert_eq!(sampler.sample()[0].memory_used_bytes, 400);
        probe.set(Vec::new());
        assert!(sampler.sample().is_empty());
    }
}
