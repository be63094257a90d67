//! `tta`: the command line of the TTA orchestrator.
//!
//! Exit codes: 0 success, 1 the operation failed (e.g. a service is down), 2 bad usage or
//! configuration.

mod bench;
mod broker_admin;
mod health;
mod play;
mod play_ws;
mod rpc_failure;
mod safety;
mod tools;
mod workflows;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use tta_runtime::service::{EXIT_CONFIG, EXIT_FAILURE};

#[global_allocator]
static ALLOCATOR: tta_runtime::Allocator = tta_runtime::Allocator;

/// Command line of the TTA orchestrator: play turns, check safety, manage workflows, operate and
/// benchmark the services.
///
/// Service addresses come from the same configuration as the services: built-in defaults, the
/// YAML file (--config or TTA_CONFIG) and TTA_* environment variables.
#[derive(Debug, Parser)]
#[command(name = "tta", version, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    config: tta_runtime::config::ConfigArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check gRPC health of every service (or the named ones) and print their status.
    Health(health::HealthArgs),
    /// Validate a configuration file and print the effective configuration.
    Config {
        /// The YAML file to check.
        file: PathBuf,
    },
    /// Send one player turn to the gateway and print the reply.
    Turn {
        #[command(flatten)]
        target: play::GatewayTarget,
        #[command(flatten)]
        args: play::TurnArgs,
    },
    /// Play interactively against a running stack (over gRPC, or the WebSocket with --ws).
    Play {
        #[command(flatten)]
        target: play::GatewayTarget,
        #[command(flatten)]
        args: play::PlayArgs,
    },
    /// Therapeutic safety tools.
    #[command(subcommand)]
    Safety(SafetyCommand),
    /// Inspect, replay or purge dead-lettered broker messages.
    Dlq {
        #[command(flatten)]
        target: broker_admin::BrokerTarget,
        #[command(subcommand)]
        command: broker_admin::DlqCommand,
    },
    /// Broker operations: queue statistics and lease recovery.
    Broker {
        #[command(flatten)]
        target: broker_admin::BrokerTarget,
        #[command(subcommand)]
        command: broker_admin::BrokerCommand,
    },
    /// Follow or acknowledge crisis escalations (Redis: `redis.url`, `redis.key_prefix`).
    #[command(subcommand)]
    Escalations(safety::EscalationsCommand),
    /// List, show or deprecate registered tools; their usage and the policy in force.
    Tools {
        #[command(flatten)]
        target: tools::ToolsTarget,
        #[command(subcommand)]
        command: tools::ToolsCommand,
    },
    /// List, show or register the gateway's workflows, as the YAML of `gateway.workflows_file`.
    Workflows {
        #[command(flatten)]
        target: workflows::WorkflowsTarget,
        #[command(subcommand)]
        command: workflows::WorkflowsCommand,
    },
    /// Run a benchmark; each prints a baseline measured in the same run and the ratio.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

#[derive(Debug, Subcommand)]
enum SafetyCommand {
    /// Classify JSON Lines from stdin ({"text": …, "source": "user"|"agent"}); writes one
    /// assessment per line ({"level", "crisis", "categories", "action"}). A bad line fails the
    /// run with exit code 2, naming the line and field, before anything is written.
    Classify(safety::ClassifyArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Health(args) => run_async(health::run(cli.config, args)),
        Command::Config { file } => check_config(file),
        Command::Turn { target, args } => run_async(play::turn(cli.config, target, args)),
        Command::Play { target, args } => run_async(play::play(cli.config, target, args)),
        Command::Safety(SafetyCommand::Classify(args)) => safety::run_classify(args),
        Command::Dlq { target, command } => {
            run_async(broker_admin::run_dlq(cli.config, target, command))
        }
        Command::Broker { target, command } => {
            run_async(broker_admin::run_broker(cli.config, target, command))
        }
        Command::Escalations(command) => run_async(safety::run_escalations(cli.config, command)),
        Command::Tools { target, command } => run_async(tools::run(cli.config, target, command)),
        Command::Workflows { target, command } => {
            run_async(workflows::run(cli.config, target, command))
        }
        Command::Bench(command) => run_async(bench::run(command)),
    }
}

fn run_async(future: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(future),
        Err(err) => {
            eprintln!("tta: cannot start the async runtime: {err}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn check_config(file: PathBuf) -> ExitCode {
    let args = tta_runtime::config::ConfigArgs {
        config: Some(file),
        dump_config: true,
    };
    match tta_runtime::config::load(&args, |_| {}) {
        Ok(config) => {
            print!("{}", tta_runtime::config::dump(&config));
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("tta config: {err}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}
