//! `tta dlq …` and `tta broker …`: operate the broker's dead-letter queues, force a recovery
//! pass and read queue statistics over gRPC.

use std::{process::ExitCode, time::Duration};

use tonic::transport::Channel;
use tta_proto::v1::{self as pb, broker_client::BrokerClient};
use tta_runtime::{config::ConfigArgs, grpc::connect_lazy, service::EXIT_CONFIG};

use crate::rpc_failure;

#[derive(Debug, clap::Args)]
pub struct BrokerTarget {
    /// Broker gRPC endpoint; default: `gateway.broker_endpoint` from the configuration.
    #[arg(long, global = true, value_name = "URL")]
    broker: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
pub enum DlqCommand {
    /// List the dead letters of a topic, oldest first.
    List {
        topic: String,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Show one dead letter with its attempt history.
    Show { topic: String, id: String },
    /// Move dead letters back into their topic (attempts restart, history is kept).
    Replay {
        topic: String,
        /// Dead-letter ids; none with --all.
        ids: Vec<String>,
        #[arg(long)]
        all: bool,
        /// Replay with this priority (high, normal, low) instead of the original one.
        #[arg(long)]
        priority: Option<String>,
    },
    /// Delete dead letters for good.
    Purge {
        topic: String,
        ids: Vec<String>,
        #[arg(long)]
        all: bool,
        /// Only those dead-lettered longer ago than this (e.g. 24h).
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Option<Duration>,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum BrokerCommand {
    /// Queue depths, pending deliveries and dead letters per topic.
    Stats {
        /// Topics; default: every topic.
        topics: Vec<String>,
    },
    /// Reclaim expired leases now (normally done every second) and report counts per topic.
    Recover {
        /// Only this topic.
        #[arg(long)]
        topic: Option<String>,
        /// Reclaim deliveries idle longer than this instead of the topic's lease.
        #[arg(long, value_parser = humantime::parse_duration)]
        min_idle: Option<Duration>,
    },
}

async fn client(
    config: &ConfigArgs,
    target: &BrokerTarget,
) -> Result<BrokerClient<Channel>, ExitCode> {
    let endpoint = match &target.broker {
        Some(endpoint) => endpoint.clone(),
        None => match tta_runtime::config::load(config, |_| {}) {
            Ok(config) => config.gateway.broker_endpoint,
            Err(err) => {
                eprintln!("tta: {err}");
                return Err(ExitCode::from(EXIT_CONFIG));
            }
        },
    };
    match connect_lazy(&endpoint) {
        Ok(channel) => Ok(BrokerClient::new(channel)),
        Err(err) => {
            eprintln!("tta: {err}");
            Err(ExitCode::from(EXIT_CONFIG))
        }
    }
}

fn millis(timestamp: Option<&prost_types::Timestamp>) -> String {
    timestamp.map_or_else(
        || "-".to_owned(),
        |ts| {
            let system = std::time::UNIX_EPOCH
                + Duration::new(ts.seconds.max(0) as u64, ts.nanos.max(0) as u32);
            humantime::format_rfc3339_millis(system).to_string()
        },
    )
}

fn cause_name(cause: i32) -> &'static str {
    match pb::DeadLetterCause::try_from(cause) {
        Ok(pb::DeadLetterCause::MaxAttempts) => "max-attempts",
        Ok(pb::DeadLetterCause::PermanentNack) => "permanent-nack",
        Ok(pb::DeadLetterCause::Invalid) => "invalid",
        _ => "unknown",
    }
}

pub async fn run_dlq(config: ConfigArgs, target: BrokerTarget, command: DlqCommand) -> ExitCode {
    let mut client = match client(&config, &target).await {
        Ok(client) => client,
        Err(code) => return code,
    };
    match command {
        DlqCommand::List { topic, limit } => {
            let request = pb::ListDeadLettersRequest {
                topic,
                page_size: limit,
                page_token: String::new(),
            };
            match client.list_dead_letters(request).await {
                Ok(response) => {
                    let response = response.into_inner();
                    println!("{} dead letters", response.total);
                    for letter in response.dead_letters {
                        let message = letter.message.unwrap_or_default();
                        println!(
                            "{}  {}  {:<14}  attempts={}  message={}  {}",
                            letter.id,
                            millis(letter.dead_lettered_at.as_ref()),
                            cause_name(letter.cause),
                            message.attempts,
                            message.id,
                            letter.reason
                        );
                    }
                    ExitCode::SUCCESS
                }
                Err(status) => rpc_failure::report("", &status),
            }
        }
        DlqCommand::Show { topic, id } => match client
            .get_dead_letter(pb::GetDeadLetterRequest { topic, id })
            .await
        {
            Ok(response) => {
                let letter = response.into_inner().dead_letter.unwrap_or_default();
                let message = letter.message.unwrap_or_default();
                println!("dead letter  {}", letter.id);
                println!(
                    "cause        {} ({})",
                    cause_name(letter.cause),
                    letter.reason
                );
                println!("at           {}", millis(letter.dead_lettered_at.as_ref()));
                println!("group        {}", letter.group);
                println!("message      {} on {}", message.id, message.topic);
                println!("published    {}", millis(message.published_at.as_ref()));
                println!("attempts     {}", message.attempts);
                println!(
                    "payload      {} bytes ({})",
                    message.payload.len(),
                    message.content_type
                );
                for attempt in message.history {
                    println!(
                        "  attempt {}  ended {}  consumer={}  {:?}  {}",
                        attempt.attempt,
                        millis(attempt.ended_at.as_ref()),
                        attempt.consumer,
                        pb::AttemptOutcome::try_from(attempt.outcome)
                            .unwrap_or(pb::AttemptOutcome::Unspecified),
                        attempt.reason
                    );
                }
                ExitCode::SUCCESS
            }
            Err(status) => rpc_failure::report("", &status),
        },
        DlqCommand::Replay {
            topic,
            ids,
            all,
            priority,
        } => {
            let priority = match priority.as_deref().map(str::parse::<tta_types::Priority>) {
                None => pb::Priority::Unspecified,
                Some(Ok(priority)) => pb::Priority::from(priority),
                Some(Err(err)) => {
                    eprintln!("tta dlq replay: --priority: {err}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let request = pb::ReplayDeadLettersRequest {
                topic,
                ids,
                all,
                priority: priority as i32,
            };
            match client.replay_dead_letters(request).await {
                Ok(response) => {
                    let response = response.into_inner();
                    println!("replayed {}", response.replayed);
                    for id in &response.not_found_ids {
                        println!("not found {id}");
                    }
                    ExitCode::SUCCESS
                }
                Err(status) => rpc_failure::report("", &status),
            }
        }
        DlqCommand::Purge {
            topic,
            ids,
            all,
            older_than,
        } => {
            let older_than = older_than.map(|age| {
                let cutoff = std::time::SystemTime::now() - age;
                let since_epoch = cutoff
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                prost_types::Timestamp {
                    seconds: since_epoch.as_secs() as i64,
                    nanos: since_epoch.subsec_nanos() as i32,
                }
            });
            let request = pb::PurgeDeadLettersRequest {
                topic,
                ids,
                all,
                older_than,
            };
            match client.purge_dead_letters(request).await {
                Ok(response) => {
                    println!("purged {}", response.into_inner().purged);
                    ExitCode::SUCCESS
                }
                Err(status) => rpc_failure::report("", &status),
            }
        }
    }
}

pub async fn run_broker(
    config: ConfigArgs,
    target: BrokerTarget,
    command: BrokerCommand,
) -> ExitCode {
    let mut client = match client(&config, &target).await {
        Ok(client) => client,
        Err(code) => return code,
    };
    match command {
        BrokerCommand::Stats { topics } => match client
            .get_topic_stats(pb::GetTopicStatsRequest { topics })
            .await
        {
            Ok(response) => {
                println!(
                    "{:<32} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9}",
                    "topic", "high", "normal", "low", "delayed", "pending", "dlq", "consumers"
                );
                for topic in response.into_inner().topics {
                    let consumers: u32 = topic.groups.iter().map(|group| group.consumers).sum();
                    println!(
                        "{:<32} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9}",
                        topic.topic,
                        topic.depth_high,
                        topic.depth_normal,
                        topic.depth_low,
                        topic.delayed,
                        topic.pending,
                        topic.dead_letters,
                        consumers
                    );
                }
                ExitCode::SUCCESS
            }
            Err(status) => rpc_failure::report("", &status),
        },
        BrokerCommand::Recover { topic, min_idle } => {
            let request = pb::RecoverPendingRequest {
                topic: topic.unwrap_or_default(),
                group: String::new(),
                min_idle: min_idle.and_then(|idle| prost_types::Duration::try_from(idle).ok()),
            };
            match client.recover_pending(request).await {
                Ok(response) => {
                    for count in response.into_inner().counts {
                        println!(
                            "{:<32} group={:<12} reclaimed={:<6} dead-lettered={}",
                            count.topic, count.group, count.reclaimed, count.dead_lettered
                        );
                    }
                    ExitCode::SUCCESS
                }
                Err(status) => rpc_failure::report("", &status),
            }
        }
    }
}
