//! `tta bench …`: benchmarks that print a baseline measured in the same run next to the
//! orchestrator's own figure, so a number always comes with what it should be compared to.

mod broker;
mod monitor;
mod safety;
mod stats;
mod tools;
mod turns;

use std::process::ExitCode;

use tta_runtime::service::EXIT_FAILURE;

#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Publish → deliver → ack through the broker service, against raw Redis Streams.
    Broker(broker::BrokerBenchArgs),
    /// The resource monitor's own CPU and memory at 1 Hz sampling, against the same binary
    /// sampling hourly, and `/metrics` scrape latency against `/health`.
    Monitor(monitor::MonitorBenchArgs),
    /// Safety rule engine throughput and per-turn latency on one core, against a plain RegexSet
    /// scan of the same patterns.
    Safety(safety::SafetyBenchArgs),
    /// GetTool over gRPC with the lookup cache on and off, against a raw Redis HGET of the
    /// same stored spec.
    Tools(tools::ToolsBenchArgs),
    /// Whole turns with the built-in agents through every service, at 1, 16 and 64 sessions,
    /// against the engines alone in-process.
    Turns(turns::TurnsBenchArgs),
}

pub async fn run(command: BenchCommand) -> ExitCode {
    let outcome = match command {
        BenchCommand::Broker(args) => broker::run(args).await,
        BenchCommand::Monitor(args) => monitor::run(args).await,
        BenchCommand::Safety(args) => safety::run(args).await,
        BenchCommand::Tools(args) => tools::run(args).await,
        BenchCommand::Turns(args) => turns::run(args).await,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("tta bench: {err:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}
