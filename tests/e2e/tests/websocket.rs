//! The gateway's WebSocket endpoint against real processes: a player whose gateway is killed
//! in the middle of a turn reconnects to the restarted gateway, resumes the turn by its ids and
//! gets the one result, applied to the world once.

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message};
use tta_e2e::{Stack, session_version};
use tta_proto::v1::{self as pb, orchestrator_client::OrchestratorClient};
use tta_testkit::RedisServer;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

const FRAME_WAIT: Duration = Duration::from_secs(20);

async fn connect(stack: &Stack) -> anyhow::Result<Socket> {
    let url = format!("ws://{}/ws", stack.gateway.admin);
    let (socket, _) = tokio_tungstenite::connect_async(url).await?;
    Ok(socket)
}

async fn send(socket: &mut Socket, message: &Value) -> anyhow::Result<()> {
    socket
        .send(Message::Text(message.to_string().into()))
        .await?;
    Ok(())
}

/// The next JSON frame, skipping protocol pings and pongs.
async fn next_frame(socket: &mut Socket) -> anyhow::Result<Value> {
    loop {
        let message = tokio::time::timeout(FRAME_WAIT, socket.next())
            .await
            .context("no frame in time")?
            .context("the socket closed")??;
        match message {
            Message::Text(text) => return Ok(serde_json::from_str(text.as_str())?),
            Message::Ping(_) | Message::Pong(_) => {}
            other => bail!("unexpected message {other:?}"),
        }
    }
}

/// The `completed` response of `turn_id`, reading past its other events.
async fn completed(socket: &mut Socket, turn_id: &str) -> anyhow::Result<Value> {
    loop {
        let frame = next_frame(socket).await?;
        ensure!(frame["type"] == "event", "not an event: {frame}");
        ensure!(frame["turn_id"] == turn_id, "another turn: {frame}");
        if let Some(done) = frame["event"].get("completed") {
            return Ok(done["response"].clone());
        }
        if let Some(failed) = frame["event"].get("failed") {
            bail!("turn {turn_id} failed: {failed}");
        }
    }
}

fn turn(session: &str, turn_id: &str, text: &str) -> Value {
    json!({
        "type": "turn",
        "session_id": session,
        "user_id": "player-1",
        "text": text,
        "turn_id": turn_id,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_resumed_over_a_new_socket_after_a_gateway_restart_is_applied_once()
-> anyhow::Result<()> {
    use nix::sys::signal::Signal;

    let redis = RedisServer::start()?;
    let mut stack = Stack::start(&redis.url(), "websocket-restart", 1).await?;
    let session = "s-ws-restart";
    let mut socket = connect(&stack).await?;
    send(&mut socket, &turn(session, "t1", "look")).await?;
    let first = completed(&mut socket, "t1").await?;
    let exit = first["world"]["exits"]
        .as_array()
        .and_then(|exits| exits.iter().find(|exit| exit["open"] == true))
        .cloned()
        .with_context(|| format!("no open exit in {first}"))?;
    let version_before = session_version(
        &mut OrchestratorClient::connect(stack.gateway_url()).await?,
        session,
    )
    .await?;

    // Hold the move in its last step, kill the gateway while the client follows it, then let
    // the step finish and bring the gateway back.
    let nga = stack.worker_index("tta-nga").context("no nga")?;
    stack.workers[nga].process.signal(Signal::SIGSTOP)?;
    let direction = exit["direction"]
        .as_str()
        .context("exit without direction")?;
    send(
        &mut socket,
        &turn(session, "t-move", &format!("go {direction}")),
    )
    .await?;
    loop {
        let frame = next_frame(&mut socket).await?;
        let started = &frame["event"]["stepStarted"];
        if started["agentType"] == "nga" {
            break;
        }
    }
    stack.gateway.process.kill();
    drop(socket);
    stack.workers[nga].process.signal(Signal::SIGCONT)?;
    stack.gateway.restart().await?;

    let mut socket = connect(&stack).await?;
    let resume = json!({"type": "resume", "session_id": session, "turn_id": "t-move"});
    send(&mut socket, &resume).await?;
    let answered = completed(&mut socket, "t-move").await?;
    ensure!(answered.get("degraded").is_none(), "degraded: {answered}");
    ensure!(
        answered["world"]["locationId"] == exit["locationId"],
        "the resumed move did not arrive: {answered}"
    );
    send(&mut socket, &resume).await?;
    let again = completed(&mut socket, "t-move").await?;
    ensure!(
        again["replayed"] == true && again["text"] == answered["text"],
        "a second resume must replay the one result: {again}"
    );

    let version_after = session_version(
        &mut OrchestratorClient::connect(stack.gateway_url()).await?,
        session,
    )
    .await?;
    ensure!(
        version_after == version_before + 1,
        "the move must apply exactly once: {version_before} → {version_after}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tta_play_over_the_websocket_prints_each_reply_and_keeps_the_session() -> anyhow::Result<()>
{
    use std::process::Stdio;

    use tokio::io::AsyncWriteExt;

    let redis = RedisServer::start()?;
    let stack = Stack::start(&redis.url(), "websocket-play", 1).await?;
    let url = format!("ws://{}/ws", stack.gateway.admin);
    let mut play = tokio::process::Command::new(tta_testkit::binary_path("tta")?)
        .args(["play", "--ws", &url, "--session", "s-ws-play"])
        .env_remove("TTA_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut stdin = play.stdin.take().context("no stdin")?;
    stdin.write_all(b"look around\nquit\n").await?;
    drop(stdin);
    let output = tokio::time::timeout(Duration::from_secs(30), play.wait_with_output())
        .await
        .context("tta play did not finish")??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(output.status.success(), "{stdout}\n{stderr}");
    ensure!(stderr.trim().is_empty(), "errors while playing: {stderr}");
    // The reply, then its notes with the place the player is at, then the goodbye.
    let notes = stdout
        .lines()
        .find(|line| line.trim_start().starts_with('[') && line.contains(" ms"))
        .with_context(|| format!("no notes line in {stdout}"))?;
    ensure!(notes.contains("at "), "no place in {notes:?}");
    ensure!(stdout.contains("take care"), "{stdout}");

    let mut client = OrchestratorClient::connect(stack.gateway_url()).await?;
    let session = client
        .get_session(pb::GetSessionRequest {
            session_id: "s-ws-play".to_owned(),
        })
        .await?
        .into_inner()
        .session
        .context("no session")?;
    ensure!(
        !session.last_turn_id.is_empty(),
        "the turn was not recorded"
    );
    Ok(())
}
