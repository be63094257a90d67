//! `tta-gateway`: The TTA orchestrator gateway: the gRPC API that runs player turns through the agents.

use std::process::ExitCode;

use clap::Parser;
use tta_runtime::{ServiceArgs, ServiceKind, service::run_main};

#[global_allocator]
static ALLOCATOR: tta_runtime::Allocator = tta_runtime::Allocator;

/// The TTA orchestrator gateway: the gRPC API that runs player turns through the agents.
///
/// Configuration: built-in defaults, then the YAML file (--config or TTA_CONFIG), then TTA_*
/// environment variables (`__` nests: TTA_REDIS__URL), then these flags.
#[derive(Debug, Parser)]
#[command(name = "tta-gateway", version)]
struct Args {
    #[command(flatten)]
    service: ServiceArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    run_main(ServiceKind::Gateway, args.service, tta_gateway::build)
}
