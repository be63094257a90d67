//! `tta play --ws`: the interactive session over the gateway's WebSocket endpoint (`/ws` on its
//! admin port), printing the narrative as it streams. Each turn has its own id, so when the
//! connection drops — the gateway restarted, say — the client reconnects and resumes the turn
//! by its ids, and the player gets the one reply.

use std::{
    io::{BufRead, Write},
    process::ExitCode,
    time::{Duration, Instant},
};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message};
use tta_runtime::service::EXIT_FAILURE;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Reconnection attempts for one turn before the player is told it could not be finished.
const RECONNECTS: u32 = 8;
/// The longest wait between reconnection attempts (they start at 250 ms and double).
const MAX_BACKOFF: Duration = Duration::from_secs(4);
/// How long the gateway may stay silent during a turn (it pings far more often).
const SILENCE: Duration = Duration::from_secs(60);

/// How following a turn ended.
enum Followed {
    Done,
    /// The connection broke before the turn's end: reconnect and resume.
    Dropped(String),
}

pub async fn play(url: String, user: String, session: String) -> ExitCode {
    let mut socket = match tokio_tungstenite::connect_async(url.as_str()).await {
        Ok((socket, _)) => Some(socket),
        Err(err) => {
            eprintln!("tta: cannot open {url}: {err}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    println!(
        "session {session} over {url} — type what you do; `quit` or an empty line on end of input leaves"
    );
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    while let Some(line) = crate::play::next_move(&mut lines) {
        let text = line.as_str();
        let turn_id = tta_types::TurnId::generate().to_string();
        let turn = json!({
            "type": "turn",
            "session_id": session,
            "user_id": user,
            "text": text,
            "turn_id": turn_id,
        });
        socket = run_turn(&url, socket, &turn, &session, &turn_id).await;
    }
    println!("take care — session {session} is saved");
    ExitCode::SUCCESS
}

/// Sends the turn and follows it to its end, reconnecting and resuming as often as needed;
/// returns the connection to use for the next turn (none if it could not be re-opened).
async fn run_turn(
    url: &str,
    mut socket: Option<Socket>,
    turn: &Value,
    session: &str,
    turn_id: &str,
) -> Option<Socket> {
    let started = Instant::now();
    let mut message = turn.clone();
    let mut backoff = Duration::from_millis(250);
    for attempt in 0..=RECONNECTS {
        if socket.is_none() {
            if attempt > 0 {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            socket = tokio_tungstenite::connect_async(url)
                .await
                .ok()
                .map(|(socket, _)| socket);
        }
        let Some(open) = socket.as_mut() else {
            continue;
        };
        let outcome = match open.send(Message::Text(message.to_string().into())).await {
            Ok(()) => follow(open, turn_id, started).await,
            Err(err) => Followed::Dropped(err.to_string()),
        };
        match outcome {
            Followed::Done => return socket,
            Followed::Dropped(reason) => {
                println!("\n  [connection lost ({reason}); resuming turn {turn_id}]");
                socket = None;
                message = json!({ "type": "resume", "session_id": session, "turn_id": turn_id });
            }
        }
    }
    eprintln!("  [could not reach the gateway; turn {turn_id} may still finish — try again]");
    socket
}

/// Prints the turn's narrative as it streams and a line of notes at its end.
async fn follow(socket: &mut Socket, turn_id: &str, started: Instant) -> Followed {
    loop {
        let message = match tokio::time::timeout(SILENCE, socket.next()).await {
            Err(_) => return Followed::Dropped("the gateway went silent".to_owned()),
            Ok(None) => return Followed::Dropped("closed".to_owned()),
            Ok(Some(Err(err))) => return Followed::Dropped(err.to_string()),
            Ok(Some(Ok(message))) => message,
        };
        let frame: Value = match message {
            Message::Text(text) => match serde_json::from_str(text.as_str()) {
                Ok(frame) => frame,
                Err(err) => {
                    eprintln!("  [unreadable frame from the gateway: {err}]");
                    continue;
                }
            },
            Message::Close(frame) => {
                let reason = frame.map_or_else(
                    || "closed".to_owned(),
                    |frame| format!("closed {}: {}", u16::from(frame.code), frame.reason),
                );
                return Followed::Dropped(reason);
            }
            _ => continue,
        };
        if frame["turn_id"] != turn_id {
            continue;
        }
        if frame["type"] == "error" {
            eprintln!(
                "  [{}: {}]",
                frame["code"].as_str().unwrap_or("error"),
                frame["message"].as_str().unwrap_or_default()
            );
            return Followed::Done;
        }
        let event = &frame["event"];
        if let Some(chunk) = event["narrativeChunk"]["text"].as_str() {
            print!("{chunk}");
            let _ = std::io::stdout().flush();
        } else if let Some(slow) = event["slow"]["message"].as_str() {
            println!("  [{slow}]");
        } else if let Some(completed) = event.get("completed") {
            println!();
            print_notes(&completed["response"], started.elapsed());
            return Followed::Done;
        } else if let Some(failed) = event.get("failed") {
            eprintln!(
                "\n  [the turn failed: {}]",
                failed["message"].as_str().unwrap_or_default()
            );
            return Followed::Done;
        }
    }
}

fn print_notes(response: &Value, took: Duration) {
    let mut notes = vec![format!("{:.1} ms", took.as_secs_f64() * 1000.0)];
    if response["degraded"] == true {
        let reasons: Vec<&str> = response["degradedReasons"]
            .as_array()
            .map(|reasons| reasons.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        notes.push(format!("degraded: {}", reasons.join("; ")));
    }
    if response["recovered"] == true {
        notes.push("running in full again".to_owned());
    }
    if response["replayed"] == true {
        notes.push("replayed".to_owned());
    }
    if let Some(place) = response["world"]["locationName"].as_str() {
        notes.push(format!("at {place}"));
    }
    println!("  [{}]", notes.join(", "));
}
