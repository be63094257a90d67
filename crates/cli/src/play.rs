//! `tta turn` and `tta play`: talk to a running stack through the gateway, one turn or an
//! interactive session.

use std::{
    io::{BufRead, Write},
    process::ExitCode,
    time::Instant,
};

use tonic::transport::Channel;
use tta_proto::v1::{self as pb, orchestrator_client::OrchestratorClient};
use tta_runtime::{
    config::ConfigArgs,
    grpc::{connect_lazy, endpoint_url},
    service::EXIT_CONFIG,
};

use crate::rpc_failure;

#[derive(Debug, clap::Args)]
pub struct GatewayTarget {
    /// Gateway gRPC endpoint; default: `gateway.listen.grpc` from the configuration.
    #[arg(long, global = true, value_name = "URL")]
    gateway: Option<String>,
    /// The player the session belongs to.
    #[arg(long, global = true, default_value = "cli-player")]
    user: String,
}

#[derive(Debug, clap::Args)]
pub struct TurnArgs {
    /// Session to play in; created with default settings when it does not exist.
    #[arg(long)]
    session: String,
    /// Idempotency key: repeating it returns the first answer.
    #[arg(long)]
    turn_id: Option<String>,
    /// What the player types.
    text: String,
}

#[derive(Debug, clap::Args)]
pub struct PlayArgs {
    /// Session to play in (default: a new one).
    #[arg(long)]
    session: Option<String>,
    /// Play over the gateway's WebSocket endpoint instead of gRPC, seeing the narrative as it
    /// streams and resuming a turn after a dropped connection; default URL:
    /// `ws://<gateway.listen.admin>/ws` from the configuration.
    #[arg(long, value_name = "URL")]
    ws: Option<Option<String>>,
}

async fn client(
    config: &ConfigArgs,
    target: &GatewayTarget,
) -> Result<OrchestratorClient<Channel>, ExitCode> {
    gateway_client(config, target.gateway.as_deref())
}

/// A client of the gateway at `endpoint`, or at `gateway.listen.grpc` from the configuration;
/// prints why there is none and returns the exit code.
pub fn gateway_client(
    config: &ConfigArgs,
    endpoint: Option<&str>,
) -> Result<OrchestratorClient<Channel>, ExitCode> {
    let endpoint = match endpoint {
        Some(endpoint) => endpoint.to_owned(),
        None => match tta_runtime::config::load(config, |_| {}) {
            Ok(config) => endpoint_url(config.gateway.listen.grpc),
            Err(err) => {
                eprintln!("tta: {err}");
                return Err(ExitCode::from(EXIT_CONFIG));
            }
        },
    };
    connect_lazy(&endpoint)
        .map(OrchestratorClient::new)
        .map_err(|err| {
            eprintln!("tta: {err}");
            ExitCode::from(EXIT_CONFIG)
        })
}

fn print_reply(response: &pb::ProcessUserInputResponse, millis: f64) {
    println!("{}", response.text.trim());
    let mut notes = vec![format!("{millis:.1} ms")];
    if response.degraded {
        notes.push(format!(
            "degraded: {}",
            response.degraded_reasons.join("; ")
        ));
    }
    if response.recovered {
        notes.push("running in full again".to_owned());
    }
    if response.replayed {
        notes.push("replayed".to_owned());
    }
    if let Some(world) = &response.world {
        notes.push(format!("at {}", world.location_name));
    }
    println!("  [{}]", notes.join(", "));
}

pub async fn turn(config: ConfigArgs, target: GatewayTarget, args: TurnArgs) -> ExitCode {
    let mut client = match client(&config, &target).await {
        Ok(client) => client,
        Err(code) => return code,
    };
    let request = pb::ProcessUserInputRequest {
        session_id: args.session,
        user_id: target.user,
        text: args.text,
        turn_id: args.turn_id.unwrap_or_default(),
        ..Default::default()
    };
    let started = Instant::now();
    match client.process_user_input(request).await {
        Ok(response) => {
            print_reply(
                &response.into_inner(),
                started.elapsed().as_secs_f64() * 1000.0,
            );
            ExitCode::SUCCESS
        }
        Err(status) => rpc_failure::report("", &status),
    }
}

pub async fn play(config: ConfigArgs, target: GatewayTarget, args: PlayArgs) -> ExitCode {
    let session = args
        .session
        .unwrap_or_else(|| tta_types::SessionId::generate().to_string());
    if let Some(url) = args.ws {
        let url = match url {
            Some(url) => url,
            None => match tta_runtime::config::load(&config, |_| {}) {
                Ok(config) => format!("ws://{}/ws", config.gateway.listen.admin),
                Err(err) => {
                    eprintln!("tta: {err}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            },
        };
        return crate::play_ws::play(url, target.user, session).await;
    }
    let mut client = match client(&config, &target).await {
        Ok(client) => client,
        Err(code) => return code,
    };
    println!(
        "session {session} — type what you do; `quit` or an empty line on end of input leaves"
    );
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    while let Some(line) = crate::play::next_move(&mut lines) {
        let text = line.as_str();
        let request = pb::ProcessUserInputRequest {
            session_id: session.clone(),
            user_id: target.user.clone(),
            text: text.to_owned(),
            ..Default::default()
        };
        let started = Instant::now();
        match client.process_user_input(request).await {
            Ok(response) => print_reply(
                &response.into_inner(),
                started.elapsed().as_secs_f64() * 1000.0,
            ),
            // Keep playing: a bad line (too long, say) should not end the session.
            Err(status) => eprintln!("  [{:?}: {}]", status.code(), status.message()),
        }
    }
    println!("take care — session {session} is saved");
    ExitCode::SUCCESS
}

/// Prompts for and reads the player's next move: `None` at end of input or on `quit`/`exit`;
/// empty lines are skipped.
pub fn next_move(lines: &mut impl Iterator<Item = std::io::Result<String>>) -> Option<String> {
    loop {
        print!("> ");
        let _ = std::io::stdout().flush();
        let line = lines.next()?.ok()?;
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        if matches!(text, "quit" | "exit") {
            return None;
        }
        return Some(text.to_owned());
    }
}
