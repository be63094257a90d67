//! One OpenAI-compatible `POST <endpoint>/chat/completions` call, with retries.
//!
//! Only the common subset of the API is used (`model`, `messages`, `max_tokens`,
//! `temperature`, `stream: false`; the reply's `choices[0].message.content`), so vLLM, the
//! llama.cpp server, Ollama and OpenRouter all work unchanged. Failures that may pass —
//! connection errors, 429 and 5xx — are retried with exponential backoff and jitter, never past
//! the caller's deadline; anything else fails at once.

use std::time::{Duration, Instant};

use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use serde::{Deserialize, Serialize};
use tta_types::config::{LlmConfig, Secret};

/// First backoff delay; doubled per retry, with up to 50 % jitter.
const BASE_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// The connect phase of a request never takes longer than this, whatever the request timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// One message of the conversation sent to the model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    pub role: &'static str,
    pub content: String,
}

impl ChatMessage {
    pub fn system(content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: "system",
            content: content.into(),
        }
    }

    pub fn user(content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: "user",
            content: content.into(),
        }
    }
}

/// What one call asks of the model.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    pub temperature: f64,
}

#[derive(Serialize)]
struct WireRequest<'a> {
    model: &'a str,
    messages: &'a [ChatMessage],
    max_tokens: u32,
    temperature: f64,
    stream: bool,
}

#[derive(Deserialize)]
struct WireResponse {
    choices: Vec<WireChoice>,
}

#[derive(Deserialize)]
struct WireChoice {
    message: WireMessage,
}

#[derive(Deserialize)]
struct WireMessage {
    #[serde(default)]
    content: Option<String>,
}

/// Why a call produced no reply. Messages never contain the API key or the request URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("no reply within the time budget")]
    Timeout,
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("the endpoint answered HTTP {0}")]
    Status(u16),
    #[error("transport error: {0}")]
    Transport(String),
    #[error("the reply is not a chat completion: {0}")]
    InvalidResponse(String),
}

impl CallError {
    /// Whether another attempt may succeed: connection errors, 429 and 5xx.
    pub fn retryable(&self) -> bool {
        match self {
            CallError::Connect(_) | CallError::Transport(_) => true,
            CallError::Status(status) => *status == 429 || *status >= 500,
            CallError::Timeout | CallError::InvalidResponse(_) => false,
        }
    }

    /// The `outcome` label of `tta_llm_requests_total` for one attempt.
    pub fn outcome(&self) -> &'static str {
        match self {
            CallError::Timeout => "timeout",
            CallError::Connect(_) => "connect_error",
            CallError::Status(429) => "rate_limited",
            CallError::Status(status) if *status >= 500 => "server_error",
            CallError::Status(_) => "client_error",
            CallError::Transport(_) => "transport_error",
            CallError::InvalidResponse(_) => "invalid_response",
        }
    }

    /// The `reason` label of `tta_llm_fallbacks_total` when this ends the call.
    pub fn fallback_reason(&self) -> &'static str {
        match self {
            CallError::Timeout => "timeout",
            CallError::Connect(_) | CallError::Transport(_) => "unavailable",
            CallError::Status(status) if *status == 429 || *status >= 500 => "unavailable",
            CallError::Status(_) => "rejected",
            CallError::InvalidResponse(_) => "invalid_response",
        }
    }
}

/// A client for one endpoint and model; cheap to clone.
#[derive(Clone)]
pub struct ChatClient {
    http: reqwest::Client,
    url: String,
    model: String,
    max_tokens: u32,
    request_timeout: Duration,
    max_retries: u32,
    agent: &'static str,
}

impl std::fmt::Debug for ChatClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatClient")
            .field("url", &tta_types::config::redact_url_password(&self.url))
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

/// The chat-completions URL of an API base URL.
pub fn completions_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/chat/completions") {
        base.to_owned()
    } else {
        format!("{base}/chat/completions")
    }
}

impl ChatClient {
    /// A client for `config`'s endpoint that sends `api_key` (already resolved from
    /// `api_key_env` by the caller) as a bearer token. `agent` labels metrics and logs.
    pub fn new(
        config: &LlmConfig,
        api_key: Option<&Secret>,
        agent: &'static str,
    ) -> Result<ChatClient, String> {
        let mut headers = HeaderMap::new();
        if let Some(key) = api_key {
            let mut value = HeaderValue::from_str(&format!("Bearer {}", key.expose()))
                .map_err(|_| "agents.llm.api_key: must be printable ASCII".to_owned())?;
            // Keeps the value out of reqwest's and hyper's debug output.
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(CONNECT_TIMEOUT.min(config.timeout))
            .tcp_nodelay(true)
            .user_agent(concat!("tta-agents/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|err| format!("agents.llm: cannot build the HTTP client: {err}"))?;
        Ok(ChatClient {
            http,
            url: completions_url(&config.endpoint),
            model: config.model.clone(),
            max_tokens: config.max_tokens,
            request_timeout: config.timeout,
            max_retries: config.max_retries,
            agent,
        })
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    /// Asks the model and returns the reply's text, retrying retryable failures until
    /// `deadline`. Every attempt is counted in `tta_llm_requests_total{agent,outcome}` and
    /// timed in `tta_llm_request_duration_seconds{agent}`.
    pub async fn complete(
        &self,
        request: &ChatRequest,
        deadline: Instant,
    ) -> Result<String, CallError> {
        let mut attempt: u32 = 0;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(CallError::Timeout);
            }
            let started = Instant::now();
            let result = self
                .attempt(request, self.request_timeout.min(remaining))
                .await;
            let outcome = match &result {
                Ok(_) => "ok",
                Err(err) => err.outcome(),
            };
            metrics::counter!("tta_llm_requests_total", "agent" => self.agent, "outcome" => outcome)
                .increment(1);
            metrics::histogram!("tta_llm_request_duration_seconds", "agent" => self.agent)
                .record(started.elapsed().as_secs_f64());
            let err = match result {
                Ok(text) => return Ok(text),
                Err(err) => err,
            };
            if !err.retryable() || attempt >= self.max_retries {
                return Err(err);
            }
            let delay = backoff(attempt);
            if Instant::now() + delay >= deadline {
                return Err(err);
            }
            attempt += 1;
            tracing::debug!(
                agent = self.agent,
                attempt,
                error = %err,
                delay_ms = delay.as_millis() as u64,
                "llm request failed; retrying"
            );
            tokio::time::sleep(delay).await;
        }
    }

    async fn attempt(&self, request: &ChatRequest, timeout: Duration) -> Result<String, CallError> {
        let body = WireRequest {
            model: &self.model,
            messages: &request.messages,
            max_tokens: self.max_tokens,
            temperature: request.temperature,
            stream: false,
        };
        let response = self
            .http
            .post(&self.url)
            .timeout(timeout)
            .json(&body)
            .send()
            .await
            .map_err(transport_error)?;
        let status = response.status();
        if !status.is_success() {
            return Err(CallError::Status(status.as_u16()));
        }
        let reply: WireResponse = response.json().await.map_err(|err| {
            if err.is_timeout() {
                CallError::Timeout
            } else {
                CallError::InvalidResponse(err.without_url().to_string())
            }
        })?;
        reply
            .choices
            .into_iter()
            .next()
            .and_then(|choice| choice.message.content)
            .ok_or_else(|| CallError::InvalidResponse("no choices[0].message.content".to_owned()))
    }
}

fn transport_error(err: reqwest::Error) -> CallError {
    if err.is_timeout() {
        CallError::Timeout
    } else if err.is_connect() {
        CallError::Connect(err.without_url().to_string())
    } else {
        CallError::Transport(err.without_url().to_string())
    }
}

fn backoff(attempt: u32) -> Duration {
    let exponential = BASE_BACKOFF
        .saturating_mul(2u32.saturating_pow(attempt))
        .min(MAX_BACKOFF);
    exponential.mul_f64(1.0 + fastrand::f64() * 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_is_the_base_plus_chat_completions() {
        assert_eq!(
            completions_url("http://127.0.0.1:11434/v1"),
            "http://127.0.0.1:11434/v1/chat/completions"
        );
        assert_eq!(
            completions_url("https://openrouter.ai/api/v1/"),
            "https://openrouter.ai/api/v1/chat/completions"
        );
        assert_eq!(
            completions_url("http://vllm:8000/v1/chat/completions"),
            "http://vllm:8000/v1/chat/completions"
        );
    }

    #[test]
    fn only_connection_errors_429_and_5xx_are_retried() {
        assert!(CallError::Connect("refused".into()).retryable());
        assert!(CallError::Status(429).retryable());
        assert!(CallError::Status(503).retryable());
        assert!(!CallError::Status(400).retryable());
        assert!(!CallError::Status(401).retryable());
        assert!(!CallError::Timeout.retryable());
        assert!(!CallError::InvalidResponse("html".into()).retryable());
    }

    #[test]
    fn backoff_grows_and_stays_bounded() {
        assert!(backoff(0) >= BASE_BACKOFF && backoff(0) <= BASE_BACKOFF * 2);
        assert!(backoff(2) >= BASE_BACKOFF * 4);
        assert!(backoff(30) <= MAX_BACKOFF.mul_f64(1.5));
    }
}
