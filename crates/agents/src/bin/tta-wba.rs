//! `tta-wba`: the World Builder Agent worker: keeps each session's world state.

use std::process::ExitCode;

use clap::Parser;
use tta_runtime::{ServiceArgs, service::BuiltInAgent};

#[global_allocator]
static ALLOCATOR: tta_runtime::Allocator = tta_runtime::Allocator;

/// The World Builder Agent worker: keeps each session's world state.
///
/// Configuration: built-in defaults, then the YAML file (--config or TTA_CONFIG), then TTA_*
/// environment variables (`__` nests: TTA_AGENTS__WBA__CONCURRENCY), then these flags.
#[derive(Debug, Parser)]
#[command(name = "tta-wba", version)]
struct Args {
    #[command(flatten)]
    service: ServiceArgs,
}

fn main() -> ExitCode {
    tta_agents::worker_main(BuiltInAgent::Wba, Args::parse().service)
}
