//! One WebSocket connection: reads the client's messages, answers pings, starts and resumes
//! turns (at most `max_in_flight` at once, each streaming on its own task), pings the client
//! and closes the connection when it goes silent, and says goodbye (1001) when the gateway
//! stops. A bad message gets an error frame; the connection stays open.

use std::{sync::Arc, time::Duration};

use axum::extract::ws::{CloseFrame, Message, WebSocket, close_code};
use futures::{SinkExt, StreamExt};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
    task::JoinSet,
    time::{Instant, MissedTickBehavior},
};

use super::{
    Shared,
    protocol::{self, Command, Frame},
};
use tonic::Code;
use tta_proto::v1::turn_event::Event;

use crate::orchestrator::OrchestratorService;

/// Frames the turn tasks of one connection may queue before they wait for the socket.
const OUTBOX: usize = 64;
/// How long the goodbye may take to write before the connection is dropped without it.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Counts open connections on the gauge for as long as it lives.
struct Open;

impl Open {
    fn new() -> Self {
        metrics::gauge!("tta_gateway_websocket_connections").increment(1.0);
        Open
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        metrics::gauge!("tta_gateway_websocket_connections").decrement(1.0);
    }
}

fn count(direction: &'static str, kind: &'static str) {
    metrics::counter!("tta_gateway_websocket_messages_total", "direction" => direction, "type" => kind)
        .increment(1);
}

/// Why the loop ended, and what to tell the client if it is still there.
enum Ending {
    /// The client vanished; nothing to send.
    Gone,
    /// The client closed: the protocol layer has queued the answering close frame.
    ClosedByClient,
    Close(u16, &'static str),
}

pub(super) async fn serve(mut socket: WebSocket, shared: Shared) {
    let _open = Open::new();
    tracing::debug!("websocket connection opened");
    let limits = shared.limits.clone();
    let in_flight = Arc::new(Semaphore::new(limits.max_in_flight));
    let (outbox, mut pending) = mpsc::channel::<Frame>(OUTBOX);
    // Streaming tasks belong to the connection: they end with it (the turns themselves run on).
    let mut turns = JoinSet::new();
    let mut ping =
        tokio::time::interval_at(Instant::now() + limits.ping_interval, limits.ping_interval);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut heard = Instant::now();

    let ending = loop {
        tokio::select! {
            () = shared.shutdown.wait() => break Ending::Close(close_code::AWAY, "gateway shutting down"),
            incoming = socket.recv() => {
                let message = match incoming {
                    None => break Ending::Gone,
                    Some(Err(err)) => break unreadable(&err),
                    Some(Ok(message)) => message,
                };
                heard = Instant::now();
                let reply = match message {
                    Message::Text(text) => {
                        handle(text.as_str(), &shared, &in_flight, &outbox, &mut turns)
                    }
                    Message::Binary(_) => {
                        count("in", "binary");
                        Some(Frame::error(Code::InvalidArgument, None, "send JSON in text frames", None))
                    }
                    Message::Close(_) => break Ending::ClosedByClient,
                    // Pings are answered by the protocol layer; pongs only prove the client lives.
                    Message::Ping(_) | Message::Pong(_) => None,
                };
                if let Some(frame) = reply
                    && send(&mut socket, frame).await.is_err()
                {
                    break Ending::Gone;
                }
            }
            Some(frame) = pending.recv() => {
                if send(&mut socket, frame).await.is_err() {
                    break Ending::Gone;
                }
            }
            _ = ping.tick() => {
                if socket.send(Message::Ping(Default::default())).await.is_err() {
                    break Ending::Gone;
                }
            }
            () = tokio::time::sleep_until(heard + limits.idle_timeout) => {
                tracing::debug!(idle = ?limits.idle_timeout, "websocket connection silent; closing");
                break Ending::Close(close_code::AWAY, "no message or pong within the idle timeout");
            }
            Some(_) = turns.join_next(), if !turns.is_empty() => {}
        }
    };
    // Best effort, and bounded: a client that is already gone cannot be told.
    match ending {
        Ending::Gone => {}
        Ending::ClosedByClient => {
            let _ = tokio::time::timeout(CLOSE_WAIT, socket.flush()).await;
        }
        Ending::Close(code, reason) => {
            let close = Message::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            }));
            let _ = tokio::time::timeout(CLOSE_WAIT, socket.send(close)).await;
        }
    }
    tracing::debug!("websocket connection closed");
}

/// A frame the protocol layer refused (too big, not UTF-8, broken framing): the connection
/// cannot go on, but the client learns why.
fn unreadable(err: &axum::Error) -> Ending {
    tracing::debug!(error = %err, "unreadable websocket message; closing");
    // tungstenite reports an oversized message as a capacity ("space limit") error.
    if err.to_string().contains("Space limit") {
        Ending::Close(close_code::SIZE, "message too big")
    } else {
        Ending::Close(close_code::PROTOCOL, "unreadable message")
    }
}

async fn send(socket: &mut WebSocket, frame: Frame) -> Result<(), axum::Error> {
    count("out", frame.kind);
    socket.send(Message::Text(frame.text.into())).await
}

/// Acts on one text message; returns the frame to answer at once, if any. Turns and resumes
/// stream on their own tasks through `outbox`.
fn handle(
    text: &str,
    shared: &Shared,
    in_flight: &Arc<Semaphore>,
    outbox: &mpsc::Sender<Frame>,
    turns: &mut JoinSet<()>,
) -> Option<Frame> {
    let command = match protocol::parse(text) {
        Ok(command) => command,
        Err(refusal) => {
            count("in", "invalid");
            return Some(Frame::error(
                Code::InvalidArgument,
                refusal.field.as_deref(),
                &refusal.message,
                None,
            ));
        }
    };
    count("in", command.kind());
    if command == Command::Ping {
        return Some(Frame::pong());
    }
    let Ok(permit) = in_flight.clone().try_acquire_owned() else {
        return Some(Frame::error(
            Code::ResourceExhausted,
            None,
            &format!(
                "this connection already has {} turns in flight (gateway.websocket.max_in_flight); wait for one to finish",
                shared.limits.max_in_flight
            ),
            command.turn_id(),
        ));
    };
    turns.spawn(stream(
        command,
        shared.service.clone(),
        permit,
        outbox.clone(),
    ));
    None
}

/// Starts or resumes a turn and forwards its events until the last one; holding `permit` for
/// that long is what bounds the turns in flight.
async fn stream(
    command: Command,
    service: OrchestratorService,
    permit: OwnedSemaphorePermit,
    outbox: mpsc::Sender<Frame>,
) {
    let mut permit = Some(permit);
    let turn_id = command.turn_id().map(str::to_owned);
    let started = match command {
        Command::Turn(request) => service.start_turn(request, true).await,
        Command::Resume {
            session_id,
            turn_id,
        } => service.resume_turn(&session_id, &turn_id).await,
        Command::Ping => return,
    };
    let mut started = match started {
        Ok(started) => started,
        Err(err) => {
            drop(permit.take());
            let _ = outbox
                .send(Frame::from_error(&err, turn_id.as_deref()))
                .await;
            return;
        }
    };
    while let Some(event) = started.events.next().await {
        let frame = match event {
            Ok(event) => {
                if matches!(event.event, Some(Event::Completed(_) | Event::Failed(_))) {
                    // Free the slot before the client can see the end and send the next turn.
                    drop(permit.take());
                }
                Frame::event(&event)
            }
            // The event stream reports failures as `failed` events; this is defensive.
            Err(status) => Frame::error(
                status.code(),
                None,
                status.message(),
                Some(&started.turn_id),
            ),
        };
        if outbox.send(frame).await.is_err() {
            // The connection closed; the turn carries on and can be resumed.
            return;
        }
    }
}
