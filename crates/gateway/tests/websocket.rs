//! The gateway's WebSocket endpoint (`GET /ws` on the admin port) over loopback: a private
//! redis-server, the broker and the gateway in-process, and a scripted agent on the real
//! broker. Turns stream their events as JSON, bad messages get error frames and the socket
//! stays open, a turn whose connection dropped is resumed by its ids and applied once, the
//! in-flight limit holds, and a stopping gateway says goodbye.

// Helpers outside #[test] functions unwrap too: in a test a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{SinkExt, StreamExt, future::BoxFuture};
use serde_json::{Value, json};
use tokio::{net::TcpStream, sync::watch};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message};
use tonic::transport::Channel;
use tta_agents::worker::{TaskError, TaskRunner, Worker};
use tta_proto::v1::{self as pb, orchestrator_client::OrchestratorClient};
use tta_runtime::{
    Shutdown,
    messaging::{self, Publisher, Subscription},
    service::{RunningService, ServiceKind},
};
use tta_testkit::{RedisServer, http_get, start_in_process, test_config, wait_ready, wait_until};
use tta_types::{AgentId, AgentType};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long any single frame may take to arrive before a test fails.
const FRAME_WAIT: Duration = Duration::from_secs(15);
/// What the teller says.
const STORY: &str = "The lantern flickers. Somewhere below, the sea breathes.";

/// The `teller` agent: answers every task with [`STORY`] and counts how often it ran per turn;
/// a turn whose text contains "held" waits until the test opens the gate.
struct Teller {
    runs: Arc<Mutex<HashMap<String, u32>>>,
    gate: watch::Receiver<bool>,
}

impl TaskRunner for Teller {
    fn run<'a>(
        &'a self,
        task: &'a pb::AgentTask,
    ) -> BoxFuture<'a, Result<pb::AgentOutput, TaskError>> {
        Box::pin(async move {
            let held = task.turn.as_ref().is_some_and(|t| t.text.contains("held"));
            if held {
                let mut gate = self.gate.clone();
                gate.wait_for(|open| *open)
                    .await
                    .map_err(|_| TaskError::Permanent("the test ended".into()))?;
            }
            *self
                .runs
                .lock()
                .unwrap()
                .entry(task.turn_id.clone())
                .or_default() += 1;
            Ok(pb::AgentOutput {
                kind: Some(pb::agent_output::Kind::Custom(prost_types::Struct {
                    fields: [(
                        "text".to_owned(),
                        prost_types::Value {
                            kind: Some(prost_types::value::Kind::StringValue(STORY.to_owned())),
                        },
                    )]
                    .into(),
                })),
            })
        })
    }
}

struct Harness {
    _redis: RedisServer,
    broker: Option<RunningService>,
    gateway: Option<RunningService>,
    admin: SocketAddr,
    client: OrchestratorClient<Channel>,
    runs: Arc<Mutex<HashMap<String, u32>>>,
    gate: watch::Sender<bool>,
    shutdown: Shutdown,
}

impl Harness {
    async fn start(adjust: impl FnOnce(&mut tta_types::Config)) -> Self {
        let redis = RedisServer::start().unwrap();
        let mut config = test_config(&redis.url(), "websocket");
        config.gateway.turn_timeout = Duration::from_secs(8);
        adjust(&mut config);
        let broker = start_in_process(ServiceKind::Broker, config.clone(), tta_broker::build)
            .await
            .unwrap();
        let broker_url = format!("http://{}", broker.grpc_addr.unwrap());
        config.gateway.broker_endpoint = broker_url.clone();
        let gateway = start_in_process(ServiceKind::Gateway, config, tta_gateway::build)
            .await
            .unwrap();
        let admin = gateway.admin_addr;
        let mut client =
            OrchestratorClient::connect(format!("http://{}", gateway.grpc_addr.unwrap()))
                .await
                .unwrap();
        let shutdown = Shutdown::new();
        let runs = Arc::new(Mutex::new(HashMap::new()));
        let (gate, opened) = watch::channel(false);
        spawn_teller(&broker_url, runs.clone(), opened, shutdown.clone());

        // The built-in workflows are stored in the background; ready means they are there.
        wait_ready(admin, Duration::from_secs(10)).await.unwrap();
        // Turns name this workflow: routing works on a snapshot refreshed every second, an
        // explicit name is looked up at once.
        client
            .register_workflow(pb::RegisterWorkflowRequest {
                definition: Some(pb::WorkflowDefinition {
                    name: "told".to_owned(),
                    steps: vec![pb::WorkflowStep {
                        id: "tell".to_owned(),
                        agent_type: "teller".to_owned(),
                        ..Default::default()
                    }],
                    fallback_reply: "The story waits for you.".to_owned(),
                    ..Default::default()
                }),
                validate_only: false,
                expected_version: None,
            })
            .await
            .unwrap();
        Self {
            _redis: redis,
            broker: Some(broker),
            gateway: Some(gateway),
            admin,
            client,
            runs,
            gate,
            shutdown,
        }
    }

    /// Lets the held turns finish.
    fn open_gate(&self) {
        self.gate.send_replace(true);
    }

    async fn connect(&self) -> Socket {
        let (socket, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", self.admin))
            .await
            .unwrap();
        socket
    }

    fn runs_of(&self, turn: &str) -> u32 {
        self.runs.lock().unwrap().get(turn).copied().unwrap_or(0)
    }

    async fn stop(mut self) {
        self.shutdown.trigger();
        tta_testkit::stop_in_order(
            [self.gateway.take(), self.broker.take()],
            Duration::from_secs(2),
        )
        .await
        .unwrap();
    }
}

fn spawn_teller(
    broker_url: &str,
    runs: Arc<Mutex<HashMap<String, u32>>>,
    gate: watch::Receiver<bool>,
    shutdown: Shutdown,
) {
    let publisher = Publisher::connect_lazy(broker_url).unwrap();
    let worker = Arc::new(Worker::new(
        AgentId::new("teller".parse::<AgentType>().unwrap(), "teller-1").unwrap(),
        Arc::new(Teller { runs, gate }),
        Duration::from_secs(10),
    ));
    tokio::spawn(messaging::consume(
        publisher,
        Subscription {
            topic: "agent.teller".to_owned(),
            group: "teller".to_owned(),
            consumer: "teller-1".to_owned(),
            prefetch: 16,
            visibility_timeout: None,
        },
        worker.handler(),
        shutdown,
    ));
}

fn turn(session: &str, turn_id: &str, text: &str) -> Value {
    json!({
        "type": "turn",
        "session_id": session,
        "user_id": "player-1",
        "text": text,
        "turn_id": turn_id,
        "interaction_type": "story",
        "workflow": "told",
    })
}

async fn send(socket: &mut Socket, message: &Value) {
    socket
        .send(Message::Text(message.to_string().into()))
        .await
        .unwrap();
}

/// The next JSON frame; pings and pongs are protocol chatter, skipped.
async fn next_frame(socket: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(FRAME_WAIT, socket.next())
            .await
            .expect("no frame in time")
            .expect("the socket closed")
            .unwrap();
        match message {
            Message::Text(text) => return serde_json::from_str(text.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected message {other:?}"),
        }
    }
}

/// The close frame's code, reading past any frames still queued before it.
async fn close_code(socket: &mut Socket) -> (u16, String) {
    loop {
        let message = tokio::time::timeout(FRAME_WAIT, socket.next())
            .await
            .expect("no close frame in time");
        match message {
            Some(Ok(Message::Close(Some(frame)))) => {
                return (u16::from(frame.code), frame.reason.to_string());
            }
            Some(Ok(Message::Close(None))) | None => return (0, String::new()),
            Some(Ok(_)) => {}
            Some(Err(err)) => panic!("socket error before the close frame: {err}"),
        }
    }
}

/// The event frames of `turn_id` up to and including its `completed` or `failed`; frames of
/// other turns are collected into `others`.
async fn events_of(socket: &mut Socket, turn_id: &str, others: &mut Vec<Value>) -> Vec<Value> {
    let mut events = Vec::new();
    loop {
        let frame = next_frame(socket).await;
        if frame["turn_id"] != turn_id {
            others.push(frame);
            continue;
        }
        assert_eq!(frame["type"], "event", "{frame}");
        let event = &frame["event"];
        let last = event.get("completed").is_some() || event.get("failed").is_some();
        events.push(frame);
        if last {
            return events;
        }
    }
}

/// The value of a Prometheus sample whose name is `name` and whose labels include `labels`
/// (the recorder adds its own, such as `service`).
fn sample(metrics: &str, name: &str, labels: &[&str]) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let rest = series.strip_prefix(name)?;
        let matches = (rest.is_empty() || rest.starts_with('{'))
            && labels.iter().all(|label| rest.contains(label));
        matches.then(|| value.parse().ok()).flatten()
    })
}

fn completed_response(events: &[Value]) -> &Value {
    let last = events.last().unwrap();
    &last["event"]["completed"]["response"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_turn_streams_accepted_steps_and_a_completed_narrative() {
    let harness = Harness::start(|_| {}).await;
    let mut socket = harness.connect().await;
    send(
        &mut socket,
        &turn("s-stream", "t1", "i look at the lantern"),
    )
    .await;
    let events = events_of(&mut socket, "t1", &mut Vec::new()).await;

    assert_eq!(
        events[0]["event"]["accepted"]["workflow"], "told",
        "{events:?}"
    );
    let sequences: Vec<u64> = events
        .iter()
        .map(|frame| frame["event"]["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(sequences, (1..=events.len() as u64).collect::<Vec<_>>());
    let has = |kind: &str| {
        events
            .iter()
            .any(|frame| frame["event"].get(kind).is_some())
    };
    assert!(has("stepStarted") && has("stepFinished"), "{events:?}");
    let chunks: String = events
        .iter()
        .filter_map(|frame| frame["event"]["narrativeChunk"]["text"].as_str())
        .collect();
    let response = completed_response(&events);
    assert_eq!(response["text"], STORY);
    assert_eq!(chunks, STORY);
    assert_eq!(response["turnId"], "t1");

    // A turn that fails ends with a `failed` event, its code named as in error frames.
    let mut intruder = turn("s-stream", "t2", "i look too");
    intruder["user_id"] = json!("someone-else");
    send(&mut socket, &intruder).await;
    let events_t2 = events_of(&mut socket, "t2", &mut Vec::new()).await;
    let last = events_t2.last().unwrap();
    assert_eq!(last["code"], "permission_denied", "{last}");
    assert!(
        last["event"]["failed"]["message"]
            .as_str()
            .unwrap()
            .contains("user_id"),
        "{last}"
    );

    let (status, metrics) = http_get(harness.admin, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    let turns_in = sample(
        &metrics,
        "tta_gateway_websocket_messages_total",
        &[r#"direction="in""#, r#"type="turn""#],
    );
    assert_eq!(turns_in, Some(2.0), "{metrics}");
    let events_out = sample(
        &metrics,
        "tta_gateway_websocket_messages_total",
        &[r#"direction="out""#, r#"type="event""#],
    );
    assert_eq!(
        events_out,
        Some((events.len() + events_t2.len()) as f64),
        "{metrics}"
    );
    let open = sample(&metrics, "tta_gateway_websocket_connections", &[]);
    assert_eq!(open, Some(1.0), "{metrics}");
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_message_gets_an_error_naming_the_field_and_the_socket_keeps_serving() {
    let harness = Harness::start(|_| {}).await;
    let mut socket = harness.connect().await;

    send(&mut socket, &json!({"type": "turn", "session_id": 7})).await;
    let error = next_frame(&mut socket).await;
    assert_eq!(error["type"], "error");
    assert_eq!(error["code"], "invalid_argument");
    assert_eq!(error["field"], "session_id");

    // The turn's own validation is the gRPC one, and its error names the turn.
    send(&mut socket, &turn("s-bad", "t-empty", "   ")).await;
    let error = next_frame(&mut socket).await;
    assert_eq!(error["code"], "invalid_argument", "{error}");
    assert_eq!(error["field"], "text");
    assert_eq!(error["turn_id"], "t-empty");

    send(&mut socket, &json!({"type": "dance"})).await;
    assert_eq!(next_frame(&mut socket).await["field"], "type");

    socket
        .send(Message::Text("this is not json".into()))
        .await
        .unwrap();
    let error = next_frame(&mut socket).await;
    assert_eq!(error["code"], "invalid_argument");
    assert!(error.get("field").is_none(), "{error}");

    send(
        &mut socket,
        &json!({"type": "resume", "session_id": "s-bad", "turn_id": "never-ran"}),
    )
    .await;
    let error = next_frame(&mut socket).await;
    assert_eq!(error["code"], "not_found", "{error}");
    assert_eq!(error["turn_id"], "never-ran");

    send(&mut socket, &json!({"type": "ping"})).await;
    assert_eq!(next_frame(&mut socket).await, json!({"type": "pong"}));
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_turn_whose_socket_dropped_is_resumed_by_its_ids_and_applied_once() {
    let mut harness = Harness::start(|_| {}).await;
    let mut socket = harness.connect().await;
    send(&mut socket, &turn("s-drop", "t-drop", "i wait, held")).await;
    // Drop the connection once the step is under way, before the teller answers.
    loop {
        let frame = next_frame(&mut socket).await;
        if frame["event"].get("stepStarted").is_some() {
            break;
        }
    }
    drop(socket);
    assert_eq!(harness.runs_of("t-drop"), 0, "the teller is still telling");
    harness.open_gate();

    let mut socket = harness.connect().await;
    send(
        &mut socket,
        &json!({"type": "resume", "session_id": "s-drop", "turn_id": "t-drop"}),
    )
    .await;
    let resumed = events_of(&mut socket, "t-drop", &mut Vec::new()).await;
    let response = completed_response(&resumed);
    assert_eq!(response["text"], STORY, "{resumed:?}");
    assert_eq!(response["turnId"], "t-drop");

    // Asked again, the same one result.
    send(
        &mut socket,
        &json!({"type": "resume", "session_id": "s-drop", "turn_id": "t-drop"}),
    )
    .await;
    let again = events_of(&mut socket, "t-drop", &mut Vec::new()).await;
    let replay = completed_response(&again);
    assert_eq!(replay["replayed"], true);
    assert_eq!(replay["runId"], response["runId"]);
    assert_eq!(replay["text"], response["text"]);

    assert_eq!(harness.runs_of("t-drop"), 1, "the turn ran its step once");
    let session = harness
        .client
        .get_session(pb::GetSessionRequest {
            session_id: "s-drop".to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    assert_eq!(session.last_turn_id, "t-drop");
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn turns_beyond_the_in_flight_limit_are_refused_until_one_finishes() {
    let harness = Harness::start(|config| config.gateway.websocket.max_in_flight = 2).await;
    let mut socket = harness.connect().await;
    send(&mut socket, &turn("s-a", "t-a", "i walk, held")).await;
    send(&mut socket, &turn("s-b", "t-b", "i walk, held")).await;
    send(&mut socket, &turn("s-c", "t-c", "i walk, held")).await;

    // The refusal is immediate; events of the two running turns may come first.
    let mut others = Vec::new();
    let refusal = loop {
        let frame = next_frame(&mut socket).await;
        if frame["type"] == "error" {
            break frame;
        }
        others.push(frame);
    };
    assert_eq!(refusal["code"], "resource_exhausted", "{refusal}");
    assert_eq!(refusal["turn_id"], "t-c");
    harness.open_gate();

    let mut rest = Vec::new();
    let a = events_of(&mut socket, "t-a", &mut rest).await;
    assert_eq!(completed_response(&a)["text"], STORY);
    // Once a turn finished, its slot is free again.
    send(&mut socket, &turn("s-c", "t-c", "i walk")).await;
    let c = events_of(&mut socket, "t-c", &mut rest).await;
    assert_eq!(completed_response(&c)["text"], STORY);
    assert_eq!(harness.runs_of("t-c"), 1);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_oversized_message_closes_the_socket_with_1009() {
    let harness = Harness::start(|config| {
        config.gateway.websocket.max_message_bytes = tta_types::config::ByteSize(1024);
    })
    .await;
    let mut socket = harness.connect().await;
    send(&mut socket, &turn("s-big", "t-big", &"a".repeat(4096))).await;
    let (code, _) = close_code(&mut socket).await;
    assert_eq!(code, 1009);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_client_is_closed_after_the_idle_timeout() {
    let harness = Harness::start(|config| {
        config.gateway.websocket.ping_interval = Duration::from_millis(100);
        config.gateway.websocket.idle_timeout = Duration::from_millis(400);
    })
    .await;
    // The socket is not read, so the server's pings go unanswered.
    let mut socket = harness.connect().await;
    let admin = harness.admin;
    wait_until(
        Duration::from_secs(10),
        "the silent connection closed",
        || async move {
            let (_, metrics) = http_get(admin, "/metrics").await.ok()?;
            (sample(&metrics, "tta_gateway_websocket_connections", &[]) == Some(0.0)).then_some(())
        },
    )
    .await
    .unwrap();
    // The close frame waits behind the unanswered pings; reading them makes the client answer,
    // which may fail on the closed connection before the close frame is read.
    loop {
        match tokio::time::timeout(FRAME_WAIT, socket.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(u16::from(frame.code), 1001);
                assert!(frame.reason.contains("idle"), "{}", frame.reason);
                break;
            }
            Some(Ok(Message::Ping(_))) => {}
            Some(Ok(other)) => panic!("unexpected message {other:?}"),
            Some(Err(_)) | None => break,
        }
    }
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopping_gateway_closes_sockets_with_going_away() {
    let mut harness = Harness::start(|_| {}).await;
    let mut socket = harness.connect().await;
    send(&mut socket, &json!({"type": "ping"})).await;
    assert_eq!(next_frame(&mut socket).await["type"], "pong");
    let gateway = harness.gateway.take().unwrap();
    let stopping = tokio::spawn(gateway.stop(Duration::from_secs(2)));
    let (code, _) = close_code(&mut socket).await;
    assert_eq!(code, 1001);
    stopping.await.unwrap().unwrap();
    harness.stop().await;
}
