//! `tta-broker`: Durable message broker of the TTA orchestrator, over Redis Streams.

use std::process::ExitCode;

use clap::Parser;
use tta_runtime::{ServiceArgs, ServiceKind, service::run_main};

#[global_allocator]
static ALLOCATOR: tta_runtime::Allocator = tta_runtime::Allocator;

/// Durable message broker of the TTA orchestrator, over Redis Streams.
///
/// Configuration: built-in defaults, then the YAML file (--config or TTA_CONFIG), then TTA_*
/// environment variables (`__` nests: TTA_REDIS__URL), then these flags.
#[derive(Debug, Parser)]
#[command(name = "tta-broker", version)]
struct Args {
    #[command(flatten)]
    service: ServiceArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    run_main(ServiceKind::Broker, args.service, tta_broker::build)
}
