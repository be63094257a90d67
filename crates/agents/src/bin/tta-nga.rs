//! `tta-nga`: the Narrative Generator Agent worker: writes the reply in a therapeutic voice.

use std::process::ExitCode;

use clap::Parser;
use tta_runtime::{ServiceArgs, service::BuiltInAgent};

#[global_allocator]
static ALLOCATOR: tta_runtime::Allocator = tta_runtime::Allocator;

/// The Narrative Generator Agent worker: writes the reply in a therapeutic voice.
///
/// Configuration: built-in defaults, then the YAML file (--config or TTA_CONFIG), then TTA_*
/// environment variables (`__` nests: TTA_AGENTS__NGA__CONCURRENCY), then these flags.
#[derive(Debug, Parser)]
#[command(name = "tta-nga", version)]
struct Args {
    #[command(flatten)]
    service: ServiceArgs,
}

fn main() -> ExitCode {
    tta_agents::worker_main(BuiltInAgent::Nga, Args::parse().service)
}
