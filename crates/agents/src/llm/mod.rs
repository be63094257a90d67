//! The IPA and NGA through an OpenAI-compatible chat-completions endpoint, with the built-in
//! engine behind it.
//!
//! For every task the built-in engine runs first (it is pure and takes microseconds): its output
//! is the fallback, and the IPA's distress screen is merged into the model's reading. Then,
//! unless the circuit breaker is open, the model is asked within the task's time budget. Any
//! failure — no connection, timeout, an HTTP error after the retries, a reply that is not the
//! asked-for JSON, an empty, oversized, wholly filtered or unsafe narrative — answers with the built-in
//! output instead. A task never fails because of the model, so the gateway's reply is not
//! `degraded` by it; the output's `backend` says which engine produced it.
//!
//! Metrics: `tta_llm_requests_total{agent,outcome}` and `tta_llm_request_duration_seconds{agent}`
//! per HTTP attempt, `tta_llm_fallbacks_total{agent,reason}` per task answered by the built-in
//! engine, `tta_llm_circuit_state{agent}` (0 closed, 1 half-open, 2 open).

pub mod client;
pub mod ipa;
pub mod nga;

use std::time::{Duration, Instant, SystemTime};

use futures::future::BoxFuture;
use tta_proto::v1::{self as pb, agent_output};
use tta_types::config::{LlmConfig, Secret};

use crate::{
    engines::{Engine, EngineState, InputProcessor, NarrativeGenerator},
    worker::{TaskError, TaskRunner},
};

pub use client::{CallError, ChatClient};
pub use tta_runtime::breaker::{BreakerName, CircuitBreaker, CircuitState};

/// Left of a task's time for answering with the built-in engine after the model gave up.
const FALLBACK_RESERVE: Duration = Duration::from_millis(100);

/// The agent whose tasks go to the model, with its built-in engine.
#[derive(Debug, Clone)]
pub enum BuiltinEngine {
    Ipa(InputProcessor),
    Nga(NarrativeGenerator),
}

/// What judges the model's narrative before it is used (the NGA only).
#[derive(Debug)]
struct Screen(tta_safety::SafetyEngine);

impl BuiltinEngine {
    fn label(&self) -> &'static str {
        match self {
            BuiltinEngine::Ipa(_) => "ipa",
            BuiltinEngine::Nga(_) => "nga",
        }
    }
}

/// The API key to send: `api_key` itself, or the value of the variable `api_key_env` names.
/// `lookup` reads the environment (a parameter so tests need not change the process's).
pub fn resolve_api_key(
    config: &LlmConfig,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Option<Secret>, String> {
    if let Some(key) = &config.api_key {
        return Ok(Some(key.clone()));
    }
    let Some(variable) = &config.api_key_env else {
        return Ok(None);
    };
    match lookup(variable) {
        Some(value) if !value.trim().is_empty() => Ok(Some(Secret::new(value.trim()))),
        _ => Err(format!(
            "agents.llm.api_key_env: environment variable {variable} is not set"
        )),
    }
}

/// A [`TaskRunner`] that asks the model and falls back to the built-in engine.
#[derive(Debug)]
pub struct LlmRunner {
    builtin: BuiltinEngine,
    client: ChatClient,
    breaker: CircuitBreaker,
    /// The shipped safety rules for agent output; set for the NGA.
    screen: Option<Screen>,
    temperature: f64,
    max_reply_chars: usize,
    /// The worker's own limit on a task; the model gets what is left of it after the reserve.
    task_timeout: Duration,
}

impl LlmRunner {
    /// A runner for `builtin`'s agent against `config`'s endpoint.
    pub fn new(
        builtin: BuiltinEngine,
        config: &LlmConfig,
        api_key: Option<&Secret>,
        task_timeout: Duration,
    ) -> Result<LlmRunner, String> {
        let agent = builtin.label();
        let screen = match builtin {
            BuiltinEngine::Nga(_) => Some(Screen(
                tta_safety::SafetyEngine::builtin()
                    .map_err(|err| format!("the shipped safety rules do not compile: {err}"))?,
            )),
            BuiltinEngine::Ipa(_) => None,
        };
        Ok(LlmRunner {
            screen,
            client: ChatClient::new(config, api_key, agent)?,
            breaker: CircuitBreaker::new(
                BreakerName {
                    gauge: "tta_llm_circuit_state",
                    agent: agent.to_owned(),
                },
                config.circuit_breaker.failure_threshold,
                config.circuit_breaker.open_for,
            ),
            builtin,
            temperature: config.temperature,
            max_reply_chars: config.max_reply_chars,
            task_timeout,
        })
    }

    /// The breaker's state, for diagnostics and tests.
    pub fn circuit_state(&self) -> CircuitState {
        self.breaker.state()
    }

    /// When the model must have answered: the worker's timeout or the task's deadline,
    /// whichever comes first, less the fallback reserve.
    fn deadline(&self, task: &pb::AgentTask, started: Instant) -> Instant {
        let mut budget = self.task_timeout;
        if let Some(deadline) = task
            .deadline
            .and_then(|deadline| SystemTime::try_from(deadline).ok())
        {
            let left = deadline
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            budget = budget.min(left);
        }
        started + budget.saturating_sub(FALLBACK_RESERVE)
    }

    async fn answer(&self, task: &pb::AgentTask) -> Result<pb::AgentOutput, TaskError> {
        let started = Instant::now();
        let agent = self.builtin.label();
        let fallback = match &self.builtin {
            BuiltinEngine::Ipa(engine) => engine.run(task, EngineState::Stateless),
            BuiltinEngine::Nga(engine) => engine.run(task, EngineState::Stateless),
        }
        .map_err(|err| TaskError::Permanent(format!("{}: {err}", err.code())))?
        .output;

        let Some(permit) = self.breaker.try_acquire() else {
            return Ok(self.fall_back(task, fallback, "circuit_open", None));
        };
        let request = match &self.builtin {
            BuiltinEngine::Ipa(_) => {
                ipa::request(task.turn.as_ref().map_or("", |turn| turn.text.as_str()))
            }
            BuiltinEngine::Nga(_) => nga::request(task, self.temperature),
        };
        let reply = self
            .client
            .complete(&request, self.deadline(task, started))
            .await;
        let reply = match reply {
            Ok(reply) => {
                permit.succeeded();
                reply
            }
            Err(err) => {
                permit.failed();
                let reason = err.fallback_reason();
                return Ok(self.fall_back(task, fallback, reason, Some(err.to_string())));
            }
        };
        let used = match (&self.builtin, fallback.kind.as_ref()) {
            (BuiltinEngine::Ipa(_), Some(agent_output::Kind::Ipa(builtin))) => {
                let text = task.turn.as_ref().map_or("", |turn| turn.text.as_str());
                ipa::parse(&reply, text, builtin)
                    .map(agent_output::Kind::Ipa)
                    .map_err(|why| ("invalid_reply", why))
            }
            (BuiltinEngine::Nga(generator), Some(agent_output::Kind::Nga(builtin))) => {
                match &self.screen {
                    Some(Screen(safety)) => nga::parse(
                        &reply,
                        task,
                        builtin,
                        generator,
                        safety,
                        self.max_reply_chars,
                    )
                    .map(agent_output::Kind::Nga)
                    .map_err(|rejection| (rejection.reason(), format!("{rejection:?}"))),
                    None => Err(("unsafe_reply", "no safety screen".to_owned())),
                }
            }
            _ => Err(("invalid_reply", "no built-in output to merge".to_owned())),
        };
        match used {
            Ok(kind) => {
                tracing::debug!(
                    agent,
                    task = %task.task_id,
                    model = self.client.model(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "answered by the llm backend"
                );
                Ok(pb::AgentOutput { kind: Some(kind) })
            }
            Err((reason, why)) => Ok(self.fall_back(task, fallback, reason, Some(why))),
        }
    }

    fn fall_back(
        &self,
        task: &pb::AgentTask,
        fallback: pb::AgentOutput,
        reason: &'static str,
        error: Option<String>,
    ) -> pb::AgentOutput {
        let agent = self.builtin.label();
        metrics::counter!("tta_llm_fallbacks_total", "agent" => agent, "reason" => reason)
            .increment(1);
        match error {
            Some(error) => tracing::warn!(
                agent,
                task = %task.task_id,
                reason,
                error = %error,
                "llm backend not used; answered with the built-in engine"
            ),
            // An open breaker was already logged when it opened; one line per task is noise.
            None => tracing::debug!(
                agent,
                task = %task.task_id,
                reason,
                "llm backend not used; answered with the built-in engine"
            ),
        }
        fallback
    }
}

impl TaskRunner for LlmRunner {
    fn run<'a>(
        &'a self,
        task: &'a pb::AgentTask,
    ) -> BoxFuture<'a, Result<pb::AgentOutput, TaskError>> {
        Box::pin(self.answer(task))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_comes_from_the_config_or_the_named_variable() {
        let mut config = LlmConfig::default();
        assert_eq!(resolve_api_key(&config, |_| None), Ok(None));

        config.api_key_env = Some("MY_KEY".into());
        let found = resolve_api_key(&config, |name| {
            (name == "MY_KEY").then(|| "sk-1 ".to_owned())
        })
        .unwrap();
        assert_eq!(found.as_ref().map(Secret::expose), Some("sk-1"));

        let missing = resolve_api_key(&config, |_| None).unwrap_err();
        assert!(missing.starts_with("agents.llm.api_key_env:"), "{missing}");
        assert!(missing.contains("MY_KEY"));
    }
}
