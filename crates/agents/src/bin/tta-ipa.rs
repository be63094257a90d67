//! `tta-ipa`: the Input Processor Agent worker: understands what the player typed.

use std::process::ExitCode;

use clap::Parser;
use tta_runtime::{ServiceArgs, service::BuiltInAgent};

#[global_allocator]
static ALLOCATOR: tta_runtime::Allocator = tta_runtime::Allocator;

/// The Input Processor Agent worker: understands what the player typed.
///
/// Configuration: built-in defaults, then the YAML file (--config or TTA_CONFIG), then TTA_*
/// environment variables (`__` nests: TTA_AGENTS__IPA__CONCURRENCY), then these flags.
#[derive(Debug, Parser)]
#[command(name = "tta-ipa", version)]
struct Args {
    #[command(flatten)]
    service: ServiceArgs,
}

fn main() -> ExitCode {
    tta_agents::worker_main(BuiltInAgent::Ipa, Args::parse().service)
}
