//! A scriptable OpenAI-compatible chat-completions server on loopback, standing in for a remote
//! language model (the one thing besides a GPU that cannot run on a development machine).
//!
//! It answers `POST <url>/chat/completions` (any path, in fact) with the configured reply,
//! after the configured delay, or with the configured HTTP status; queued statuses are served
//! first, one per call. It counts the calls and keeps the last request's body and
//! `Authorization` header for assertions.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use tokio::{sync::oneshot, task::JoinHandle};

#[derive(Debug, Clone)]
struct Script {
    reply: String,
    status: u16,
    delay: Duration,
    queued_statuses: VecDeque<u16>,
    calls: usize,
    last_body: Option<serde_json::Value>,
    last_authorization: Option<String>,
}

type Shared = Arc<Mutex<Script>>;

/// A running stub; stopped when dropped.
#[derive(Debug)]
pub struct LlmStub {
    addr: SocketAddr,
    script: Shared,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl LlmStub {
    /// Starts a stub on a free loopback port that answers every call with `reply` as the
    /// assistant message.
    pub async fn start(reply: impl Into<String>) -> anyhow::Result<LlmStub> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let script: Shared = Arc::new(Mutex::new(Script {
            reply: reply.into(),
            status: 200,
            delay: Duration::ZERO,
            queued_statuses: VecDeque::new(),
            calls: 0,
            last_body: None,
            last_authorization: None,
        }));
        let router = Router::new().fallback(answer).with_state(script.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(LlmStub {
            addr,
            script,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The API base URL to configure as `agents.llm.endpoint`.
    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// From now on, answer with `reply` (status 200).
    pub fn reply_with(&self, reply: impl Into<String>) {
        let mut script = self.lock();
        script.reply = reply.into();
        script.status = 200;
    }

    /// From now on, answer every call with this HTTP status (200 restores the reply).
    pub fn fail_with(&self, status: u16) {
        self.lock().status = status;
    }

    /// Answer the next calls with these statuses, one each, before the configured answer.
    pub fn queue_statuses(&self, statuses: &[u16]) {
        self.lock().queued_statuses.extend(statuses);
    }

    /// Wait this long before answering each call.
    pub fn delay(&self, delay: Duration) {
        self.lock().delay = delay;
    }

    /// Calls received so far.
    pub fn calls(&self) -> usize {
        self.lock().calls
    }

    /// The JSON body of the last call.
    pub fn last_request(&self) -> Option<serde_json::Value> {
        self.lock().last_body.clone()
    }

    /// The `Authorization` header of the last call.
    pub fn last_authorization(&self) -> Option<String> {
        self.lock().last_authorization.clone()
    }

    /// Stops serving and closes idle connections, so clients see the endpoint go away; the port
    /// is released.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            // In-flight calls (a long `delay`) must not hold the test up.
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }

    fn lock(&self) -> MutexGuard<'_, Script> {
        self.script
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for LlmStub {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn answer(State(script): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let (status, delay, reply, model) = {
        let mut script = script
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        script.calls += 1;
        let parsed: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
        let model = parsed
            .as_ref()
            .and_then(|body| body.get("model"))
            .and_then(|model| model.as_str())
            .unwrap_or("stub")
            .to_owned();
        script.last_body = parsed;
        script.last_authorization = headers
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let status = script.queued_statuses.pop_front().unwrap_or(script.status);
        (status, script.delay, script.reply.clone(), model)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if status != StatusCode::OK {
        return (
            status,
            Json(serde_json::json!({"error": {"message": "scripted failure"}})),
        )
            .into_response();
    }
    Json(serde_json::json!({
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": reply},
            "finish_reason": "stop"
        }],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    }))
    .into_response()
}
