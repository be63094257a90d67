//! `tta-resource-monitor`: Per-host resource monitor of the TTA orchestrator.

use std::process::ExitCode;

use clap::Parser;
use tta_runtime::{ServiceArgs, ServiceKind, service::run_main};

#[global_allocator]
static ALLOCATOR: tta_runtime::Allocator = tta_runtime::Allocator;

/// Per-host resource monitor of the TTA orchestrator.
///
/// Configuration: built-in defaults, then the YAML file (--config or TTA_CONFIG), then TTA_*
/// environment variables (`__` nests: TTA_REDIS__URL), then these flags.
#[derive(Debug, Parser)]
#[command(name = "tta-resource-monitor", version)]
struct Args {
    #[command(flatten)]
    service: ServiceArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    run_main(
        ServiceKind::ResourceMonitor,
        args.service,
        tta_resource_monitor::build,
    )
}
