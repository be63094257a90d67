//! Therapeutic safety in whole turns through real processes (R5): a player in crisis gets the
//! crisis protocol and a durable escalation that outlives the gateway, and a narrative that
//! breaks the safety rules is sent back for an alternative and never reaches the player.
//!
//! The harmful narrator is a real worker runtime (`tta_agents::worker::Worker`) on the real
//! broker, running in this test with a scripted engine in place of the built-in NGA: the
//! built-in engines never write harmful text, an LLM behind the NGA might.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context;
use futures::future::BoxFuture;
use tonic::transport::Channel;
use tta_agents::worker::{TaskError, TaskRunner, Worker};
use tta_e2e::Stack;
use tta_proto::v1::{self as pb, orchestrator_client::OrchestratorClient};
use tta_runtime::{
    Shutdown,
    messaging::{self, Publisher, Subscription},
    redis::Keyspace,
};
use tta_safety::escalation::{EscalationReason, EscalationStore, ListFilter};
use tta_testkit::{RedisServer, http_get};
use tta_types::{AgentId, AgentType, config::RedisConfig};

fn request(session: &str, turn: &str, text: &str) -> pb::ProcessUserInputRequest {
    pb::ProcessUserInputRequest {
        session_id: session.to_owned(),
        user_id: "player-1".to_owned(),
        text: text.to_owned(),
        turn_id: turn.to_owned(),
        ..Default::default()
    }
}

async fn client(stack: &Stack) -> anyhow::Result<OrchestratorClient<Channel>> {
    Ok(OrchestratorClient::connect(stack.gateway_url()).await?)
}

fn escalations(stack: &Stack) -> anyhow::Result<EscalationStore> {
    let config = RedisConfig {
        url: stack.redis_url.clone(),
        ..RedisConfig::default()
    };
    Ok(EscalationStore::new(
        tta_runtime::redis::pool(&config)?,
        &Keyspace::new(&stack.prefix),
    ))
}

async fn session_escalations(
    stack: &Stack,
    session: &str,
) -> anyhow::Result<Vec<tta_safety::escalation::EscalationEvent>> {
    Ok(escalations(stack)?
        .list(&ListFilter {
            session_id: session.to_owned(),
            include_acked: true,
            page_size: 100,
            page_token: String::new(),
        })
        .await?
        .events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crisis_turn_gets_help_flags_the_session_and_its_escalation_outlives_the_gateway()
-> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let mut stack = Stack::start(&redis.url(), "crisis", 1).await?;
    let mut client = client(&stack).await?;
    let session = "crisis-session";

    let calm = client
        .process_user_input(request(session, "t1", "look around"))
        .await?
        .into_inner();
    let verdict = calm.safety.context("no safety verdict")?;
    assert!(!verdict.crisis);
    assert_eq!(calm.workflow, "collaborative");

    let text = "i cant do this anymore, im going to kill myself tonight";
    let crisis = client
        .process_user_input(request(session, "t2", text))
        .await?
        .into_inner();
    let verdict = crisis.safety.clone().context("no safety verdict")?;
    assert!(verdict.crisis, "{verdict:?}");
    assert!(verdict.level >= pb::SafetyLevel::High as i32);
    assert_eq!(verdict.action, pb::SafetyAction::Escalate as i32);
    assert_eq!(crisis.workflow, "crisis_protocol");
    assert!(!crisis.degraded);
    assert!(
        crisis.text.contains("988"),
        "US resources for the default locale: {}",
        crisis.text
    );
    assert!(
        crisis
            .timings
            .iter()
            .all(|timing| timing.agent_type == "gateway"),
        "no agent sees a crisis turn: {:?}",
        crisis.timings
    );
    let flagged = client
        .get_session(pb::GetSessionRequest {
            session_id: session.to_owned(),
        })
        .await?
        .into_inner()
        .session
        .context("no session")?;
    assert!(flagged.escalated);

    // The escalation was written before the reply: it is there with the gateway gone.
    stack.gateway.process.kill();
    let events = session_escalations(&stack, session).await?;
    assert_eq!(events.len(), 1, "{events:?}");
    let event = &events[0];
    assert_eq!(event.turn_id, "t2");
    assert_eq!(event.user_id, "player-1");
    assert_eq!(event.reason, EscalationReason::Crisis);
    assert!(event.excerpt.contains("kill myself"), "{event:?}");

    // A client retrying the turn after the restart gets the same reply, and no second event.
    stack.gateway.restart().await?;
    let mut client = self::client(&stack).await?;
    let replayed = client
        .process_user_input(request(session, "t2", text))
        .await?
        .into_inner();
    assert!(replayed.replayed);
    assert_eq!(replayed.text, crisis.text);
    assert_eq!(session_escalations(&stack, session).await?.len(), 1);
    Ok(())
}

const HARMFUL: &str = "The ferryman sneers: you are worthless, you might as well give up now.";
const SAFE: &str = "The ferryman smiles and offers you a seat by the lantern.";

/// An NGA that writes harmful text first. Sessions named `stubborn-…` never recover; others
/// answer safely when asked for an alternative.
#[derive(Default)]
struct ScriptedNarrator {
    seen: Mutex<Vec<pb::AgentTask>>,
}

impl TaskRunner for ScriptedNarrator {
    fn run<'a>(
        &'a self,
        task: &'a pb::AgentTask,
    ) -> BoxFuture<'a, Result<pb::AgentOutput, TaskError>> {
        if let Ok(mut seen) = self.seen.lock() {
            seen.push(task.clone());
        }
        let text = if task.alternative.is_none() || task.session_id.starts_with("stubborn") {
            HARMFUL
        } else {
            SAFE
        };
        let output = pb::AgentOutput {
            kind: Some(pb::agent_output::Kind::Nga(pb::NgaOutput {
                text: text.to_owned(),
                ..Default::default()
            })),
        };
        Box::pin(async move { Ok(output) })
    }
}

impl ScriptedNarrator {
    fn tasks_of(&self, session: &str) -> Vec<pb::AgentTask> {
        self.seen
            .lock()
            .map(|seen| {
                seen.iter()
                    .filter(|task| task.session_id == session)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_narrative_is_regenerated_and_the_player_never_reads_it() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let stack = Stack::start_with(&redis.url(), "blocked", &["tta-ipa", "tta-wba"], 1).await?;

    let narrator = Arc::new(ScriptedNarrator::default());
    let publisher = Publisher::connect_lazy(&stack.broker_url())?;
    let worker = Arc::new(Worker::new(
        AgentId::new(AgentType::Nga, "scripted-nga")?,
        narrator.clone(),
        Duration::from_secs(5),
    ));
    let shutdown = Shutdown::new();
    let consumer = tokio::spawn(messaging::consume(
        publisher,
        Subscription {
            topic: "agent.nga".to_owned(),
            group: "nga".to_owned(),
            consumer: "scripted-nga".to_owned(),
            prefetch: 8,
            visibility_timeout: None,
        },
        worker.handler(),
        shutdown.clone(),
    ));
    let mut client = client(&stack).await?;

    // One alternative fixes it.
    let fixed = client
        .process_user_input(request("gentle-session", "t1", "talk to the ferryman"))
        .await?
        .into_inner();
    assert_eq!(fixed.text, SAFE);
    assert!(!fixed.degraded, "{:?}", fixed.degraded_reasons);
    assert!(fixed.timings.iter().any(|t| t.step_id == "safety.output"));
    let tasks = narrator.tasks_of("gentle-session");
    let steps: Vec<&str> = tasks.iter().map(|task| task.step_id.as_str()).collect();
    assert_eq!(steps, ["nga", "nga.alt1"]);
    let alternative = tasks[1]
        .alternative
        .as_ref()
        .context("no alternative request")?;
    assert_eq!(alternative.rejected_text, HARMFUL);
    assert_eq!(alternative.round, 1);
    let why = alternative.assessment.as_ref().context("no assessment")?;
    assert_eq!(why.action, pb::SafetyAction::Block as i32);
    assert!(!why.categories.is_empty());
    assert!(
        tasks[1].upstream.iter().all(|step| step.step_id != "nga"),
        "the alternative is asked for with the same inputs, not the blocked reply"
    );

    // No alternative passes: the safe fallback, a degraded turn, and a human is told.
    let withheld = client
        .process_user_input(request("stubborn-session", "t1", "talk to the ferryman"))
        .await?
        .into_inner();
    assert_ne!(withheld.text, HARMFUL);
    assert!(
        withheld.text.starts_with("The scene grows quiet"),
        "the configured fallback reply: {}",
        withheld.text
    );
    assert!(withheld.degraded);
    assert!(
        withheld
            .degraded_reasons
            .iter()
            .any(|reason| reason.contains("withheld by the safety check")),
        "{:?}",
        withheld.degraded_reasons
    );
    let steps: Vec<String> = narrator
        .tasks_of("stubborn-session")
        .iter()
        .map(|task| task.step_id.clone())
        .collect();
    assert_eq!(
        steps,
        ["nga", "nga.alt1", "nga.alt2"],
        "bounded by safety.max_regenerations"
    );
    let events = session_escalations(&stack, "stubborn-session").await?;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].reason, EscalationReason::RepeatedBlocks);

    let (_, metrics) = http_get(stack.gateway.admin, "/metrics").await?;
    assert!(
        metrics.contains("tta_safety_blocked_outputs_total"),
        "blocked outputs are counted"
    );
    assert!(metrics.contains("tta_safety_regenerations_total"));

    shutdown.trigger();
    let _ = tokio::time::timeout(Duration::from_secs(5), consumer).await;
    Ok(())
}
