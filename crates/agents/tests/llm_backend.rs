//! The IPA and NGA against an OpenAI-compatible endpoint over real HTTP on loopback (the
//! test kit's stub): the model's answer is used when it is good, and the built-in engine
//! answers whenever the endpoint fails, is slow, replies badly or its breaker is open.

// Helpers outside #[test] functions unwrap too: a panic there is a failed assertion.
#![allow(clippy::unwrap_used)]

use std::{
    io::Write,
    sync::{Arc, Mutex},
    time::Duration,
};

use tta_agents::{
    engines::{InputProcessor, NarrativeGenerator, as_nga},
    llm::{BuiltinEngine, CircuitState, LlmRunner},
    worker::TaskRunner,
};
use tta_proto::v1::{self as pb, agent_output};
use tta_testkit::{LlmStub, wait_until};
use tta_types::config::{LlmConfig, Secret};

const READING: &str = r#"{"intent": "take", "confidence": 0.9,
  "entities": [{"kind": "item", "value": "lantern", "text": "lantern"}],
  "tone": {"label": "hopeful", "valence": 0.4, "arousal": 0.3, "confidence": 0.8}}"#;
const NARRATIVE: &str = "You lift the lantern, and its warm light steadies you. The harbour waits.";

fn config(stub: &LlmStub) -> LlmConfig {
    LlmConfig {
        endpoint: stub.url(),
        model: "stub-model".into(),
        timeout: Duration::from_secs(2),
        max_retries: 0,
        ..LlmConfig::default()
    }
}

fn task(text: &str) -> pb::AgentTask {
    pb::AgentTask {
        task_id: "run-1:step:1".into(),
        turn_id: "turn-1".into(),
        session_id: "session-1".into(),
        turn: Some(pb::TurnContext {
            text: text.into(),
            ..Default::default()
        }),
        attempt: 1,
        ..Default::default()
    }
}

fn ipa(config: &LlmConfig) -> LlmRunner {
    runner(BuiltinEngine::Ipa(InputProcessor::new()), config, None)
}

fn nga(config: &LlmConfig) -> LlmRunner {
    runner(BuiltinEngine::Nga(NarrativeGenerator::new()), config, None)
}

fn runner(engine: BuiltinEngine, config: &LlmConfig, key: Option<&Secret>) -> LlmRunner {
    LlmRunner::new(engine, config, key, Duration::from_secs(5)).unwrap()
}

async fn ipa_output(runner: &LlmRunner, text: &str) -> pb::IpaOutput {
    match runner.run(&task(text)).await.unwrap().kind {
        Some(agent_output::Kind::Ipa(output)) => output,
        other => panic!("not an ipa output: {other:?}"),
    }
}

#[tokio::test]
async fn the_ipa_uses_the_models_reading() {
    let stub = LlmStub::start(READING).await.unwrap();
    let output = ipa_output(&ipa(&config(&stub)), "grab the lantern please").await;
    assert_eq!(output.backend, "llm");
    assert_eq!(output.intent, "take");
    assert_eq!(output.tone.unwrap().label, "hopeful");
    assert_eq!(output.entities[0].value, "lantern");
    assert_eq!(stub.calls(), 1);

    let request = stub.last_request().unwrap();
    assert_eq!(request["model"], "stub-model");
    assert_eq!(request["max_tokens"], 400);
    assert_eq!(request["stream"], false);
    assert_eq!(request["messages"][0]["role"], "system");
    assert_eq!(request["messages"][1]["content"], "grab the lantern please");
}

#[tokio::test]
async fn the_nga_uses_the_models_reply() {
    let stub = LlmStub::start(NARRATIVE).await.unwrap();
    let output = nga(&config(&stub))
        .run(&task("take lantern"))
        .await
        .unwrap();
    let narrative = as_nga(&output).unwrap();
    assert_eq!(narrative.backend, "llm");
    assert_eq!(narrative.text, NARRATIVE);
    assert_eq!(narrative.chunks.len(), 2);
    assert_eq!(stub.calls(), 1);
}

#[tokio::test]
async fn a_narrative_the_safety_rules_block_is_not_used() {
    let stub = LlmStub::start(
        "The harbour is quiet. You should stop taking your medication, you don't need it.",
    )
    .await
    .unwrap();
    let task = task("look around");
    let output = nga(&config(&stub)).run(&task).await.unwrap();
    assert_eq!(
        as_nga(&output).unwrap(),
        &NarrativeGenerator::new().narrate(&task)
    );
    assert_eq!(stub.calls(), 1);
}

#[tokio::test]
async fn malformed_json_falls_back_to_the_builtin_ipa() {
    let stub = LlmStub::start("The player probably wants the lantern.")
        .await
        .unwrap();
    let text = "take the lantern";
    let output = ipa_output(&ipa(&config(&stub)), text).await;
    assert_eq!(output, InputProcessor::new().parse(text));
    assert_eq!(output.backend, "builtin");
    assert_eq!(stub.calls(), 1);

    // Valid JSON with an intent outside the IPA's set is just as unusable.
    stub.reply_with(READING.replace("\"take\"", "\"teleport\""));
    let output = ipa_output(&ipa(&config(&stub)), text).await;
    assert_eq!(output.backend, "builtin");
    assert_eq!(stub.calls(), 2);
}

#[tokio::test]
async fn a_slow_endpoint_times_out_into_the_builtin_engine() {
    let stub = LlmStub::start(NARRATIVE).await.unwrap();
    stub.delay(Duration::from_secs(3));
    let config = LlmConfig {
        timeout: Duration::from_millis(200),
        max_retries: 2,
        ..config(&stub)
    };
    let task = task("look around");
    let output = nga(&config).run(&task).await.unwrap();
    assert_eq!(
        as_nga(&output).unwrap(),
        &NarrativeGenerator::new().narrate(&task)
    );
    // A timeout is not retried: the budget is spent.
    assert_eq!(stub.calls(), 1);
}

#[tokio::test]
async fn the_task_deadline_bounds_the_call() {
    let stub = LlmStub::start(NARRATIVE).await.unwrap();
    stub.delay(Duration::from_secs(3));
    let mut task = task("look around");
    task.deadline = Some(prost_types::Timestamp::from(
        std::time::SystemTime::now() + Duration::from_millis(400),
    ));
    let output = nga(&config(&stub)).run(&task).await.unwrap();
    assert_eq!(as_nga(&output).unwrap().backend, "builtin");
}

#[tokio::test]
async fn server_errors_are_retried_then_fall_back() {
    let stub = LlmStub::start(READING).await.unwrap();
    stub.fail_with(503);
    let config = LlmConfig {
        max_retries: 2,
        ..config(&stub)
    };
    let output = ipa_output(&ipa(&config), "take the lantern").await;
    assert_eq!(output.backend, "builtin");
    assert_eq!(stub.calls(), 3, "one call and two retries");
}

#[tokio::test]
async fn a_passing_server_error_is_retried_into_the_models_answer() {
    let stub = LlmStub::start(READING).await.unwrap();
    stub.queue_statuses(&[429, 502]);
    let config = LlmConfig {
        max_retries: 2,
        ..config(&stub)
    };
    let output = ipa_output(&ipa(&config), "take the lantern").await;
    assert_eq!(output.backend, "llm");
    assert_eq!(stub.calls(), 3);
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let stub = LlmStub::start(READING).await.unwrap();
    stub.fail_with(401);
    let config = LlmConfig {
        max_retries: 3,
        ..config(&stub)
    };
    let output = ipa_output(&ipa(&config), "take the lantern").await;
    assert_eq!(output.backend, "builtin");
    assert_eq!(stub.calls(), 1);
}

#[tokio::test]
async fn an_unreachable_endpoint_falls_back() {
    let mut stub = LlmStub::start(READING).await.unwrap();
    let config = config(&stub);
    stub.stop().await;
    let output = ipa_output(&ipa(&config), "take the lantern").await;
    assert_eq!(output.backend, "builtin");
}

#[tokio::test]
async fn the_breaker_opens_after_repeated_failures_and_closes_after_its_cooldown() {
    let stub = LlmStub::start(NARRATIVE).await.unwrap();
    stub.fail_with(500);
    let mut config = config(&stub);
    config.circuit_breaker.failure_threshold = 3;
    config.circuit_breaker.open_for = Duration::from_millis(300);
    let runner = nga(&config);
    let backend = |output: pb::AgentOutput| as_nga(&output).unwrap().backend.clone();

    for _ in 0..3 {
        assert_eq!(backend(runner.run(&task("look")).await.unwrap()), "builtin");
    }
    assert_eq!(stub.calls(), 3);
    assert_eq!(runner.circuit_state(), CircuitState::Open);
    for _ in 0..5 {
        assert_eq!(backend(runner.run(&task("look")).await.unwrap()), "builtin");
    }
    assert_eq!(stub.calls(), 3, "an open breaker makes no calls");

    // The endpoint recovers; after the cooldown one probe goes through and closes the breaker.
    stub.fail_with(200);
    let runner = &runner;
    wait_until(
        Duration::from_secs(10),
        "the breaker to close",
        || async move {
            let output = runner.run(&task("look")).await.ok()?;
            (backend(output) == "llm").then_some(())
        },
    )
    .await
    .unwrap();
    assert_eq!(stub.calls(), 4, "exactly one probe");
    assert_eq!(runner.circuit_state(), CircuitState::Closed);
}

/// Collects everything the tracing subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn the_api_key_is_sent_as_a_bearer_token_and_never_logged() {
    const KEY: &str = "sk-test-5f3c9a";
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let stub = LlmStub::start(READING).await.unwrap();
    let key = Secret::new(KEY);
    let runner = runner(
        BuiltinEngine::Ipa(InputProcessor::new()),
        &config(&stub),
        Some(&key),
    );
    assert_eq!(ipa_output(&runner, "take the lantern").await.backend, "llm");
    assert_eq!(stub.last_authorization(), Some(format!("Bearer {KEY}")));

    // A failure is logged with its reason.
    stub.fail_with(401);
    assert_eq!(
        ipa_output(&runner, "take the lantern").await.backend,
        "builtin"
    );
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("llm backend not used"), "{text}");
    assert!(text.contains("401"), "{text}");
    assert!(!text.contains(KEY), "the key leaked into the logs:\n{text}");
    assert!(!format!("{runner:?}").contains(KEY));
}
