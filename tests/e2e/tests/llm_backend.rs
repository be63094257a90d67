//! The NGA worker pointed at an OpenAI-compatible endpoint (the test kit's stub) through the
//! real stack: the turn's narrative is the model's reply, and with the endpoint gone the turn
//! still answers, from the built-in engine, without being marked degraded.

use anyhow::{Context, ensure};
use tta_e2e::Stack;
use tta_proto::v1::{self as pb, orchestrator_client::OrchestratorClient};
use tta_testkit::{LlmStub, RedisServer, http_get};

const NARRATIVE: &str =
    "You rest a moment by the water. The lighthouse keeps its slow, patient watch.";
const KEY_VARIABLE: &str = "E2E_LLM_API_KEY";
const KEY: &str = "sk-e2e-7d41";

fn request(turn: &str, text: &str) -> pb::ProcessUserInputRequest {
    pb::ProcessUserInputRequest {
        session_id: "llm-session".to_owned(),
        user_id: "player-1".to_owned(),
        text: text.to_owned(),
        turn_id: turn.to_owned(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_narrative_comes_from_the_model_and_falls_back_to_the_builtin_engine()
-> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let mut stub = LlmStub::start(NARRATIVE).await?;
    let stack = Stack::start_with_env(
        &redis.url(),
        "llm",
        1,
        &[
            ("TTA_AGENTS__NGA__BACKEND", "llm".to_owned()),
            ("TTA_AGENTS__LLM__ENDPOINT", stub.url()),
            ("TTA_AGENTS__LLM__MODEL", "stub-model".to_owned()),
            ("TTA_AGENTS__LLM__API_KEY_ENV", KEY_VARIABLE.to_owned()),
            (KEY_VARIABLE, KEY.to_owned()),
        ],
    )
    .await?;
    let mut client = OrchestratorClient::connect(stack.gateway_url()).await?;

    let first = client
        .process_user_input(request("t1", "look around"))
        .await?
        .into_inner();
    ensure!(
        first.text == NARRATIVE,
        "the narrative is not the model's: {:?}",
        first.text
    );
    ensure!(!first.degraded, "degraded: {:?}", first.degraded_reasons);
    ensure!(stub.calls() >= 1, "the stub saw no call");
    ensure!(
        stub.last_authorization() == Some(format!("Bearer {KEY}")),
        "the key from {KEY_VARIABLE} was not sent as a bearer token"
    );
    let sent = stub.last_request().context("no request body")?;
    ensure!(sent["model"] == "stub-model", "model: {}", sent["model"]);

    stub.stop().await;
    let second = client
        .process_user_input(request("t2", "look around"))
        .await?
        .into_inner();
    ensure!(
        !second.text.trim().is_empty() && second.text != NARRATIVE,
        "no built-in reply with the endpoint down: {:?}",
        second.text
    );
    ensure!(
        !second.degraded,
        "a fallback to the built-in engine is not a degraded reply: {:?}",
        second.degraded_reasons
    );

    let nga = stack.worker("tta-nga").context("no nga worker")?;
    let (status, metrics) = http_get(nga.admin, "/metrics").await?;
    ensure!(status == 200, "/metrics answered {status}");
    let scrape = prometheus_parse::Scrape::parse(metrics.lines().map(|line| Ok(line.to_owned())))
        .context("/metrics is not Prometheus text")?;
    let counted = |metric: &str, label: &str, value: &str| {
        scrape.samples.iter().any(|sample| {
            sample.metric == metric
                && sample.labels.get("agent") == Some("nga")
                && sample.labels.get(label) == Some(value)
        })
    };
    ensure!(
        counted("tta_llm_requests_total", "outcome", "ok"),
        "the model's answer was not counted:\n{metrics}"
    );
    ensure!(
        counted("tta_llm_fallbacks_total", "reason", "unavailable"),
        "the fallback was not counted:\n{metrics}"
    );
    ensure!(
        !nga.process.logs().contains(KEY),
        "the api key appears in the worker's logs"
    );

    // The registry tells which backend and model each worker uses.
    let (status, body) = http_get(stack.gateway.admin, "/agents").await?;
    ensure!(status == 200, "/agents answered {status}: {body}");
    let listed: serde_json::Value = serde_json::from_str(&body)?;
    let agents = listed["agents"].as_array().context("no agents array")?;
    let of = |agent_type: &str| agents.iter().find(|a| a["agent_type"] == agent_type);
    let nga = of("nga").with_context(|| format!("no nga in {body}"))?;
    ensure!(
        nga["labels"]["backend"] == "llm" && nga["labels"]["model"] == "stub-model",
        "nga labels: {}",
        nga["labels"]
    );
    ensure!(
        nga["capabilities"]
            .as_array()
            .is_some_and(|caps| caps.iter().any(|cap| cap == "llm")),
        "nga capabilities: {}",
        nga["capabilities"]
    );
    let ipa = of("ipa").with_context(|| format!("no ipa in {body}"))?;
    ensure!(
        ipa["labels"]["backend"] == "builtin",
        "ipa labels: {}",
        ipa["labels"]
    );
    Ok(())
}
