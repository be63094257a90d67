//! `tta-tool-registry`: Registry of the tools TTA agents share.

use std::process::ExitCode;

use clap::Parser;
use tta_runtime::{ServiceArgs, ServiceKind, service::run_main};

#[global_allocator]
static ALLOCATOR: tta_runtime::Allocator = tta_runtime::Allocator;

/// Registry of the tools TTA agents share.
///
/// Configuration: built-in defaults, then the YAML file (--config or TTA_CONFIG), then TTA_*
/// environment variables (`__` nests: TTA_REDIS__URL), then these flags.
#[derive(Debug, Parser)]
#[command(name = "tta-tool-registry", version)]
struct Args {
    #[command(flatten)]
    service: ServiceArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    run_main(
        ServiceKind::ToolRegistry,
        args.service,
        tta_tool_registry::build,
    )
}
