//! Prometheus series of one snapshot, named after node_exporter (`node_*`) and NVIDIA DCGM
//! (`DCGM_FI_DEV_*`, in DCGM's units: MiB, W, °C, mJ) so existing dashboards work, each with a
//! `host` label. Series without an established name are `tta_*`.

use tta_proto::v1 as pb;

use crate::{alerts::Level, reservations::Totals};

const MIB: f64 = 1024.0 * 1024.0;

pub fn snapshot(host: &str, snapshot: &pb::HostSnapshot) {
    let host = host.to_owned();
    metrics::gauge!("tta_nvml_up", "host" => host.clone()).set(if snapshot.nvml_available {
        1.0
    } else {
        0.0
    });
    metrics::gauge!("tta_gpu_count", "host" => host.clone()).set(snapshot.gpus.len() as f64);
    if let Some(cpu) = &snapshot.cpu {
        metrics::gauge!("tta_host_cpu_usage_percent", "host" => host.clone())
            .set(cpu.total_percent);
        for (core, usage) in cpu.per_core_percent.iter().enumerate() {
            metrics::gauge!("tta_host_cpu_core_usage_percent", "host" => host.clone(), "cpu" => core.to_string())
                .set(*usage);
        }
        metrics::gauge!("node_load1", "host" => host.clone()).set(cpu.load_1m);
        metrics::gauge!("node_load5", "host" => host.clone()).set(cpu.load_5m);
        metrics::gauge!("node_load15", "host" => host.clone()).set(cpu.load_15m);
    }
    if let Some(memory) = &snapshot.memory {
        metrics::gauge!("node_memory_MemTotal_bytes", "host" => host.clone())
            .set(memory.total_bytes as f64);
        metrics::gauge!("node_memory_MemAvailable_bytes", "host" => host.clone())
            .set(memory.available_bytes as f64);
        metrics::gauge!("node_memory_SwapTotal_bytes", "host" => host.clone())
            .set(memory.swap_total_bytes as f64);
        metrics::gauge!("node_memory_SwapFree_bytes", "host" => host.clone()).set(
            memory
                .swap_total_bytes
                .saturating_sub(memory.swap_used_bytes) as f64,
        );
    }
    for disk in &snapshot.disks {
        let labels = [
            ("host", host.clone()),
            ("mountpoint", disk.mount_point.clone()),
            ("device", disk.device.clone()),
            ("fstype", disk.file_system.clone()),
        ];
        metrics::gauge!("node_filesystem_size_bytes", &labels).set(disk.total_bytes as f64);
        metrics::gauge!("node_filesystem_avail_bytes", &labels).set(disk.available_bytes as f64);
    }
    for network in &snapshot.networks {
        let labels = [
            ("host", host.clone()),
            ("device", network.interface_name.clone()),
        ];
        metrics::counter!("node_network_receive_bytes_total", &labels).absolute(network.rx_bytes);
        metrics::counter!("node_network_transmit_bytes_total", &labels).absolute(network.tx_bytes);
    }
    // Summed per binary name: pids come and go, names do not.
    let mut by_name: Vec<(&str, f64, u64, u64)> = Vec::new();
    for process in &snapshot.processes {
        match by_name.iter_mut().find(|(name, ..)| *name == process.name) {
            Some(entry) => {
                entry.1 += process.cpu_percent;
                entry.2 += process.rss_bytes;
                entry.3 += 1;
            }
            None => by_name.push((&process.name, process.cpu_percent, process.rss_bytes, 1)),
        }
    }
    for (name, cpu, rss, count) in by_name {
        let labels = [("host", host.clone()), ("process", name.to_owned())];
        metrics::gauge!("tta_process_cpu_percent", &labels).set(cpu);
        metrics::gauge!("tta_process_resident_memory_bytes", &labels).set(rss as f64);
        metrics::gauge!("tta_processes", &labels).set(count as f64);
    }
    for gpu in &snapshot.gpus {
        let labels = [
            ("host", host.clone()),
            ("gpu", gpu.index.to_string()),
            ("UUID", gpu.uuid.clone()),
            ("modelName", gpu.name.clone()),
        ];
        metrics::gauge!("DCGM_FI_DEV_GPU_UTIL", &labels).set(f64::from(gpu.utilization_percent));
        metrics::gauge!("DCGM_FI_DEV_MEM_COPY_UTIL", &labels)
            .set(f64::from(gpu.memory_utilization_percent));
        metrics::gauge!("DCGM_FI_DEV_FB_USED", &labels).set(gpu.memory_used_bytes as f64 / MIB);
        metrics::gauge!("DCGM_FI_DEV_FB_FREE", &labels)
            .set(gpu.memory_total_bytes.saturating_sub(gpu.memory_used_bytes) as f64 / MIB);
        metrics::gauge!("DCGM_FI_DEV_GPU_TEMP", &labels).set(f64::from(gpu.temperature_celsius));
        metrics::gauge!("DCGM_FI_DEV_POWER_USAGE", &labels)
            .set(f64::from(gpu.power_milliwatts) / 1000.0);
        metrics::gauge!("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", &labels)
            .set(gpu.energy_millijoules as f64);
        metrics::gauge!("tta_gpu_memory_reserved_bytes", &labels)
            .set(gpu.memory_reserved_bytes as f64);
    }
}

pub fn health<'a>(host: &str, overall: Level, levels: impl Iterator<Item = (&'a str, Level)>) {
    metrics::gauge!("tta_resource_health", "host" => host.to_owned()).set(overall.value());
    for (alert, level) in levels {
        metrics::gauge!("tta_resource_alert_level", "host" => host.to_owned(), "alert" => alert.to_owned())
            .set(level.value());
    }
}

pub fn reservations(host: &str, reserved: Totals, capacity: Totals) {
    for (resource, reserved, capacity) in [
        (
            "gpu_memory_bytes",
            reserved.gpu_memory_bytes as f64,
            capacity.gpu_memory_bytes as f64,
        ),
        (
            "cpu_threads",
            f64::from(reserved.cpu_threads),
            f64::from(capacity.cpu_threads),
        ),
        (
            "ram_bytes",
            reserved.ram_bytes as f64,
            capacity.ram_bytes as f64,
        ),
    ] {
        metrics::gauge!("tta_resource_reserved", "host" => host.to_owned(), "resource" => resource)
            .set(reserved);
        metrics::gauge!("tta_resource_capacity", "host" => host.to_owned(), "resource" => resource)
            .set(capacity);
    }
}
