//! `tta bench …`: benchmarks that print a baseline measured in the same run next to the
//! orchestrator's own figure, so a number always comes with what it should be compared to.

mod broker;
mod stats;

use std::process::ExitCode;

use tta_runtime::service::EXIT_FAILURE;

#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Publish → deliver → ack through the broker service, against raw Redis Streams.
    Broker(broker::BrokerBenchArgs),
}

pub async fn run(command: BenchCommand) -> ExitCode {
    let outcome = match command {
        BenchCommand::Broker(args) => broker::run(args).await,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("tta bench: {err:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}
