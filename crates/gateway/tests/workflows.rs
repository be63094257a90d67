//! Workflow graphs end to end inside one process: a private redis-server, the broker and the
//! gateway in-process on ephemeral ports over real gRPC, and scripted agents running the real
//! worker runtime on the real broker. Custom agent types (`mood`, `flaky`, `broken`, …) are used
//! by registered workflows without any gateway code knowing them (R8.1).

// Helpers outside #[test] functions unwrap too: in a test a panic is a failed assertion.
#![allow(clippy::unwrap_used)]

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use tonic::{Code, transport::Channel};
use tta_agents::worker::{TaskError, TaskRunner, Worker};
use tta_proto::v1::{self as pb, orchestrator_client::OrchestratorClient};
use tta_runtime::{
    Shutdown,
    messaging::{self, Publisher, Subscription},
    service::{RunningService, ServiceKind},
};
use tta_testkit::{RedisServer, http_get, start_in_process, test_config, wait_ready};
use tta_types::{AgentId, AgentType};

type Script = Arc<dyn Fn(&pb::AgentTask) -> Result<pb::AgentOutput, TaskError> + Send + Sync>;

/// An agent whose answers a test decides; it records when each task started and ended.
struct Scripted {
    script: Script,
    delay: Box<dyn Fn(&pb::AgentTask) -> Duration + Send + Sync>,
    log: Arc<Mutex<Vec<(String, Instant, Instant)>>>,
}

impl TaskRunner for Scripted {
    fn run<'a>(
        &'a self,
        task: &'a pb::AgentTask,
    ) -> BoxFuture<'a, Result<pb::AgentOutput, TaskError>> {
        Box::pin(async move {
            let started = Instant::now();
            tokio::time::sleep((self.delay)(task)).await;
            let outcome = (self.script)(task);
            self.log
                .lock()
                .unwrap()
                .push((task.step_id.clone(), started, Instant::now()));
            outcome
        })
    }
}

struct Harness {
    redis: RedisServer,
    prefix: String,
    broker: Option<RunningService>,
    gateway: Option<RunningService>,
    broker_url: String,
    client: OrchestratorClient<Channel>,
    shutdown: Shutdown,
    log: Arc<Mutex<Vec<(String, Instant, Instant)>>>,
}

impl Harness {
    async fn start() -> Self {
        Self::start_adjusted(|_| {}).await
    }

    async fn start_adjusted(adjust: impl FnOnce(&mut tta_types::Config)) -> Self {
        let redis = RedisServer::start().unwrap();
        let mut config = test_config(&redis.url(), "workflows");
        adjust(&mut config);
        config.broker.visibility_timeout = Duration::from_secs(2);
        config.gateway.turn_timeout = Duration::from_secs(8);
        let broker = start_in_process(ServiceKind::Broker, config.clone(), tta_broker::build)
            .await
            .unwrap();
        let broker_url = format!("http://{}", broker.grpc_addr.unwrap());
        config.gateway.broker_endpoint = broker_url.clone();
        let prefix = config.redis.key_prefix.clone();
        let gateway = start_in_process(ServiceKind::Gateway, config, tta_gateway::build)
            .await
            .unwrap();
        let admin = gateway.admin_addr;
        let gateway_url = format!("http://{}", gateway.grpc_addr.unwrap());
        let client = OrchestratorClient::connect(gateway_url).await.unwrap();
        let harness = Self {
            redis,
            prefix,
            broker: Some(broker),
            gateway: Some(gateway),
            broker_url,
            client,
            shutdown: Shutdown::new(),
            log: Arc::default(),
        };
        // The built-in workflows are stored in the background; ready means they are there.
        wait_ready(admin, Duration::from_secs(10)).await.unwrap();
        harness
    }

    /// Runs a scripted agent of `agent_type` on the broker.
    fn agent(
        &self,
        agent_type: &str,
        delay: impl Fn(&pb::AgentTask) -> Duration + Send + Sync + 'static,
        script: impl Fn(&pb::AgentTask) -> Result<pb::AgentOutput, TaskError> + Send + Sync + 'static,
    ) {
        self.instance(agent_type, "scripted", delay, script);
    }

    /// Runs a scripted instance that also consumes its own topic and is listed in the agent
    /// registry with `capabilities`, as a worker with those capabilities would be.
    async fn capable_agent(
        &self,
        agent_type: &str,
        instance: &str,
        capabilities: &[&str],
        script: impl Fn(&pb::AgentTask) -> Result<pb::AgentOutput, TaskError> + Send + Sync + 'static,
    ) {
        let direct = tta_runtime::agents::direct_topic(agent_type, instance);
        let worker = self.instance(agent_type, instance, |_| Duration::ZERO, script);
        let publisher = Publisher::connect_lazy(&self.broker_url).unwrap();
        tokio::spawn(messaging::consume(
            publisher,
            Subscription {
                topic: direct.clone(),
                group: agent_type.to_owned(),
                consumer: instance.to_owned(),
                prefetch: 16,
                visibility_timeout: None,
            },
            worker.handler(),
            self.shutdown.clone(),
        ));
        self.list_in_registry(pb::AgentInfo {
            labels: [(tta_runtime::agents::DIRECT_TOPIC_LABEL.to_owned(), direct)].into(),
            ..registry_entry(agent_type, instance, capabilities)
        })
        .await;
    }

    fn instance(
        &self,
        agent_type: &str,
        instance: &str,
        delay: impl Fn(&pb::AgentTask) -> Duration + Send + Sync + 'static,
        script: impl Fn(&pb::AgentTask) -> Result<pb::AgentOutput, TaskError> + Send + Sync + 'static,
    ) -> Arc<Worker> {
        let publisher = Publisher::connect_lazy(&self.broker_url).unwrap();
        let worker = Arc::new(Worker::new(
            AgentId::new(agent_type.parse::<AgentType>().unwrap(), instance).unwrap(),
            Arc::new(Scripted {
                script: Arc::new(script),
                delay: Box::new(delay),
                log: self.log.clone(),
            }),
            Duration::from_secs(10),
        ));
        tokio::spawn(messaging::consume(
            publisher,
            Subscription {
                topic: format!("agent.{agent_type}"),
                group: agent_type.to_owned(),
                consumer: instance.to_owned(),
                prefetch: 16,
                visibility_timeout: None,
            },
            worker.clone().handler(),
            self.shutdown.clone(),
        ));
        worker
    }

    /// Registers the line `ipa → <middle> → nga` as workflow `name` and plays one turn of it in
    /// session `s-<name>`.
    async fn line_turn(&mut self, name: &str, middle: &str) -> pb::ProcessUserInputResponse {
        self.register(workflow(
            name,
            vec![
                step("ipa", "ipa", &[]),
                step(middle, middle, &["ipa"]),
                step("nga", "nga", &[middle]),
            ],
        ))
        .await;
        self.turn(&format!("s-{name}"), name, "look around").await
    }

    /// Lists the scripted instance of `agent_type` in the agent registry with `capabilities`.
    async fn advertise(&self, agent_type: &str, capabilities: &[&str]) {
        self.list_in_registry(registry_entry(agent_type, "scripted", capabilities))
            .await;
    }

    async fn list_in_registry(&self, info: pb::AgentInfo) {
        let client = redis::Client::open(self.redis.url()).unwrap();
        let mut connection = client.get_multiplexed_async_connection().await.unwrap();
        tta_runtime::agents::put(
            &mut connection,
            &tta_runtime::redis::Keyspace::new(&self.prefix),
            &info,
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    }

    fn steps_run(&self, step: &str) -> Vec<(Instant, Instant)> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(id, _, _)| id == step)
            .map(|(_, start, end)| (*start, *end))
            .collect()
    }

    async fn register(&mut self, definition: pb::WorkflowDefinition) -> pb::WorkflowDefinition {
        self.client
            .register_workflow(pb::RegisterWorkflowRequest {
                definition: Some(definition),
                validate_only: false,
                expected_version: None,
            })
            .await
            .unwrap()
            .into_inner()
            .definition
            .unwrap()
    }

    async fn turn(
        &mut self,
        session: &str,
        workflow: &str,
        text: &str,
    ) -> pb::ProcessUserInputResponse {
        self.turn_as(session, "t1", workflow, text).await
    }

    async fn turn_as(
        &mut self,
        session: &str,
        turn_id: &str,
        workflow: &str,
        text: &str,
    ) -> pb::ProcessUserInputResponse {
        self.client
            .process_user_input(pb::ProcessUserInputRequest {
                session_id: session.to_owned(),
                user_id: "player-1".to_owned(),
                text: text.to_owned(),
                turn_id: turn_id.to_owned(),
                workflow: workflow.to_owned(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
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

/// A ready instance's registry entry.
fn registry_entry(agent_type: &str, instance: &str, capabilities: &[&str]) -> pb::AgentInfo {
    pb::AgentInfo {
        id: Some(pb::AgentId {
            agent_type: agent_type.to_owned(),
            instance: instance.to_owned(),
        }),
        capabilities: capabilities.iter().map(|c| (*c).to_owned()).collect(),
        topic: format!("agent.{agent_type}"),
        status: pb::AgentStatus::Ready as i32,
        ..Default::default()
    }
}

fn step(id: &str, agent_type: &str, depends_on: &[&str]) -> pb::WorkflowStep {
    pb::WorkflowStep {
        id: id.to_owned(),
        agent_type: agent_type.to_owned(),
        depends_on: depends_on.iter().map(|d| (*d).to_owned()).collect(),
        ..Default::default()
    }
}

fn workflow(name: &str, steps: Vec<pb::WorkflowStep>) -> pb::WorkflowDefinition {
    pb::WorkflowDefinition {
        name: name.to_owned(),
        steps,
        fallback_reply: "The story waits for you.".to_owned(),
        ..Default::default()
    }
}

fn ms(millis: u64) -> Option<prost_types::Duration> {
    prost_types::Duration::try_from(Duration::from_millis(millis)).ok()
}

fn ipa(intent: &str) -> pb::AgentOutput {
    pb::AgentOutput {
        kind: Some(pb::agent_output::Kind::Ipa(pb::IpaOutput {
            intent: intent.to_owned(),
            ..Default::default()
        })),
    }
}

fn narrative(text: &str) -> pb::AgentOutput {
    pb::AgentOutput {
        kind: Some(pb::agent_output::Kind::Nga(pb::NgaOutput {
            text: text.to_owned(),
            ..Default::default()
        })),
    }
}

fn custom(key: &str, value: &str) -> pb::AgentOutput {
    pb::AgentOutput {
        kind: Some(pb::agent_output::Kind::Custom(prost_types::Struct {
            fields: [(
                key.to_owned(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue(value.to_owned())),
                },
            )]
            .into(),
        })),
    }
}

/// A step's fallback output: `{kind: {text: ...}}`, as a workflow file writes it.
fn fallback_text(kind: &str, text: &str) -> prost_types::Struct {
    let string = |value: &str| prost_types::Value {
        kind: Some(prost_types::value::Kind::StringValue(value.to_owned())),
    };
    let inner = prost_types::Struct {
        fields: [("text".to_owned(), string(text))].into(),
    };
    prost_types::Struct {
        fields: [(
            kind.to_owned(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StructValue(inner)),
            },
        )]
        .into(),
    }
}

/// The narrator names the upstream steps it was given.
fn narrator(task: &pb::AgentTask) -> Result<pb::AgentOutput, TaskError> {
    let seen: Vec<&str> = task.upstream.iter().map(|s| s.step_id.as_str()).collect();
    Ok(narrative(&format!(
        "You look around. Seen: {}.",
        seen.join(",")
    )))
}

fn outcome_of(response: &pb::ProcessUserInputResponse, step: &str) -> (i32, u32) {
    let timing = response
        .timings
        .iter()
        .find(|timing| timing.step_id == step)
        .unwrap_or_else(|| panic!("no timing for {step}: {:?}", response.timings));
    (timing.outcome, timing.attempts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn independent_steps_run_in_parallel_and_false_conditions_skip() {
    let mut harness = Harness::start().await;
    harness.agent("ipa", |_| Duration::ZERO, |_| Ok(ipa("look")));
    harness.agent(
        "mood",
        |_| Duration::from_millis(300),
        |_| Ok(custom("mood", "calm")),
    );
    harness.agent(
        "scene",
        |_| Duration::from_millis(300),
        |_| Ok(custom("scene", "harbour")),
    );
    harness.agent("journal", |_| Duration::ZERO, |_| Ok(custom("note", "x")));
    harness.agent("nga", |_| Duration::ZERO, narrator);

    let stored = harness
        .register(workflow(
            "parallel-look",
            vec![
                step("ipa", "ipa", &[]),
                step("mood", "mood", &["ipa"]),
                step("scene", "scene", &["ipa"]),
                pb::WorkflowStep {
                    condition: r#"ipa.intent == "reflect""#.to_owned(),
                    ..step("journal", "journal", &["ipa"])
                },
                step("nga", "nga", &["mood", "scene", "journal"]),
            ],
        ))
        .await;
    assert_eq!(stored.version, 1);

    let response = harness
        .turn("s-parallel", "parallel-look", "look around")
        .await;
    assert!(!response.degraded, "{:?}", response.degraded_reasons);
    assert_eq!(response.workflow, "parallel-look");
    assert_eq!(response.workflow_version, 1);
    assert_eq!(response.text, "You look around. Seen: ipa,mood,scene.");
    assert_eq!(
        outcome_of(&response, "journal").0,
        pb::StepOutcome::Skipped as i32
    );
    assert!(
        harness.steps_run("journal").is_empty(),
        "a skipped step is never dispatched"
    );
    let (mood, scene) = (harness.steps_run("mood")[0], harness.steps_run("scene")[0]);
    assert!(
        mood.0 < scene.1 && scene.0 < mood.1,
        "mood and scene overlapped: {mood:?} {scene:?}"
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failures_are_retried_then_replaced_by_fallbacks() {
    let mut harness = Harness::start().await;
    // Answers its first attempt too late and its second at once.
    harness.agent(
        "flaky",
        |task| {
            if task.attempt == 1 {
                Duration::from_millis(1500)
            } else {
                Duration::ZERO
            }
        },
        |task| Ok(custom("attempt", &task.attempt.to_string())),
    );
    harness.agent(
        "broken",
        |_| Duration::ZERO,
        |_| Err(TaskError::Permanent("cannot do this".to_owned())),
    );
    harness.agent(
        "backup",
        |_| Duration::ZERO,
        |_| Ok(custom("from", "backup")),
    );
    harness.agent("nga", |_| Duration::ZERO, narrator);

    harness
        .register(workflow(
            "resilient",
            vec![
                pb::WorkflowStep {
                    timeout: ms(400),
                    max_retries: 2,
                    retry_backoff: ms(10),
                    ..step("flaky", "flaky", &[])
                },
                pb::WorkflowStep {
                    fallback: Some(pb::workflow_step::Fallback::FallbackStep(
                        "backup".to_owned(),
                    )),
                    ..step("primary", "broken", &[])
                },
                step("backup", "backup", &[]),
                pb::WorkflowStep {
                    continue_on_failure: true,
                    ..step("optional", "broken", &[])
                },
                step("nga", "nga", &["flaky", "primary", "optional"]),
            ],
        ))
        .await;
    let response = harness.turn("s-resilient", "resilient", "go on").await;
    assert_eq!(
        outcome_of(&response, "flaky"),
        (pb::StepOutcome::Succeeded as i32, 2),
        "{:?}",
        response.timings
    );
    assert_eq!(
        outcome_of(&response, "primary").0,
        pb::StepOutcome::Fallback as i32
    );
    assert_eq!(
        outcome_of(&response, "optional").0,
        pb::StepOutcome::Failed as i32
    );
    assert!(
        response.timings.iter().all(|t| t.step_id != "backup"),
        "a fallback step runs only in its fallback role"
    );
    // The backup's output stands in for the primary; the optional step is simply missing.
    assert_eq!(response.text, "You look around. Seen: flaky,primary.");
    assert!(response.degraded);
    assert!(
        response
            .degraded_reasons
            .iter()
            .any(|r| r.starts_with("optional:")),
        "{:?}",
        response.degraded_reasons
    );

    // A step that fails without fallback stops the run: the workflow's fallback reply.
    harness
        .register(workflow(
            "fragile",
            vec![
                step("primary", "broken", &[]),
                step("nga", "nga", &["primary"]),
            ],
        ))
        .await;
    let stopped = harness.turn("s-fragile", "fragile", "go on").await;
    assert_eq!(stopped.text, "The story waits for you.");
    assert!(stopped.degraded);
    assert!(
        harness.steps_run("nga").len() == 1,
        "nga ran only for the first turn"
    );

    // A fixed fallback output in the workflow stands in for a failed narrator.
    let fixed = fallback_text("nga", "You pause and breathe.");
    harness
        .register(workflow(
            "fixed-words",
            vec![pb::WorkflowStep {
                fallback: Some(pb::workflow_step::Fallback::FallbackOutput(fixed)),
                ..step("narrate", "broken", &[])
            }],
        ))
        .await;
    let fixed = harness.turn("s-fixed", "fixed-words", "go on").await;
    assert_eq!(fixed.text, "You pause and breathe.");
    assert!(fixed.degraded);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_first_full_turn_after_a_degraded_one_says_service_recovered() {
    let mut harness = Harness::start().await;
    // Fails the session's first turn only, as an agent does while its backend is down.
    harness.agent(
        "moody",
        |_| Duration::ZERO,
        |task| {
            if task.turn_id == "t1" {
                Err(TaskError::Permanent("backend down".to_owned()))
            } else {
                Ok(custom("mood", "calm"))
            }
        },
    );
    harness.agent("nga", |_| Duration::ZERO, narrator);
    harness
        .register(workflow(
            "steady",
            vec![step("mood", "moody", &[]), step("nga", "nga", &["mood"])],
        ))
        .await;
    let degraded_flag = |harness: &mut Harness| {
        let mut client = harness.client.clone();
        async move {
            client
                .get_session(pb::GetSessionRequest {
                    session_id: "s-recover".to_owned(),
                })
                .await
                .unwrap()
                .into_inner()
                .session
                .unwrap()
                .degraded
        }
    };

    let down = harness.turn_as("s-recover", "t1", "steady", "look").await;
    assert!(down.degraded && !down.recovered, "{down:?}");
    assert!(degraded_flag(&mut harness).await);

    let back = harness.turn_as("s-recover", "t2", "steady", "look").await;
    assert!(!back.degraded, "{:?}", back.degraded_reasons);
    assert!(back.recovered, "the first full turn says so");
    assert!(!degraded_flag(&mut harness).await);

    let steady = harness.turn_as("s-recover", "t3", "steady", "look").await;
    assert!(!steady.recovered, "only the first full turn says so");
    let replayed = harness.turn_as("s-recover", "t2", "steady", "look").await;
    assert!(
        replayed.replayed && replayed.recovered,
        "a retry of that turn gets the same answer"
    );
    harness.stop().await;
}

fn invalid(status: &tonic::Status, starts_with: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().starts_with(starts_with),
        "expected {starts_with:?}, got {:?}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_names_the_bad_field_and_keeps_versions() {
    let mut harness = Harness::start().await;
    let register = |definition: pb::WorkflowDefinition, expected: Option<u32>| {
        let mut client = harness.client.clone();
        async move {
            client
                .register_workflow(pb::RegisterWorkflowRequest {
                    definition: Some(definition),
                    validate_only: false,
                    expected_version: expected,
                })
                .await
        }
    };
    let cycle = workflow(
        "loop",
        vec![
            step("ipa", "ipa", &["nga"]),
            step("wba", "wba", &["ipa"]),
            step("nga", "nga", &["wba"]),
        ],
    );
    let err = register(cycle, None).await.unwrap_err();
    invalid(&err, "definition.steps: cycle");
    assert!(err.message().contains("ipa -> wba -> nga -> ipa") || err.message().contains("->"));

    let unknown = workflow("unknown-dep", vec![step("nga", "nga", &["ipa2"])]);
    invalid(
        &register(unknown, None).await.unwrap_err(),
        "definition.steps[0].depends_on[0]: unknown step \"ipa2\"",
    );
    let too_slow = pb::WorkflowDefinition {
        total_timeout: ms(1000),
        ..workflow(
            "too-slow",
            vec![pb::WorkflowStep {
                timeout: ms(5000),
                ..step("nga", "nga", &[])
            }],
        )
    };
    invalid(
        &register(too_slow, None).await.unwrap_err(),
        "definition.steps[0].timeout: exceeds total_timeout",
    );
    let not_upstream = workflow(
        "blind",
        vec![
            step("ipa", "ipa", &[]),
            pb::WorkflowStep {
                condition: "!ipa.safety.crisis".to_owned(),
                ..step("nga", "nga", &[])
            },
        ],
    );
    invalid(
        &register(not_upstream, None).await.unwrap_err(),
        "definition.steps[1].condition",
    );
    let bad_name = workflow("Bad Name", vec![step("nga", "nga", &[])]);
    invalid(
        &register(bad_name, None).await.unwrap_err(),
        "definition.name",
    );
    let second_default = pb::WorkflowDefinition {
        route: Some(pb::WorkflowRoute {
            is_default: true,
            ..Default::default()
        }),
        ..workflow("other-default", vec![step("nga", "nga", &[])])
    };
    invalid(
        &register(second_default, None).await.unwrap_err(),
        "definition.route.is_default",
    );

    // Versions: a new registration is a new version; the old one stays readable.
    let v1 = register(workflow("story", vec![step("nga", "nga", &[])]), Some(0))
        .await
        .unwrap()
        .into_inner()
        .definition
        .unwrap();
    assert_eq!(v1.version, 1);
    let v2 = register(
        workflow(
            "story",
            vec![step("ipa", "ipa", &[]), step("nga", "nga", &["ipa"])],
        ),
        Some(1),
    )
    .await
    .unwrap()
    .into_inner()
    .definition
    .unwrap();
    assert_eq!(v2.version, 2);
    let stale = register(workflow("story", vec![step("nga", "nga", &[])]), Some(1))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted);

    let old = harness
        .client
        .get_workflow(pb::GetWorkflowRequest {
            name: "story".to_owned(),
            version: 1,
        })
        .await
        .unwrap()
        .into_inner()
        .definition
        .unwrap();
    assert_eq!(old.steps.len(), 1);
    assert_eq!(old.version, 1);
    let missing = harness
        .client
        .get_workflow(pb::GetWorkflowRequest {
            name: "story".to_owned(),
            version: 9,
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    // The list holds the built-ins and "story" (latest only), by name, in pages.
    let first = harness
        .client
        .list_workflows(pb::ListWorkflowsRequest {
            page_size: 3,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let second = harness
        .client
        .list_workflows(pb::ListWorkflowsRequest {
            page_size: 3,
            page_token: first.next_page_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<(String, u32)> = first
        .workflows
        .iter()
        .chain(&second.workflows)
        .map(|w| (w.name.clone(), w.version))
        .collect();
    assert_eq!(
        names,
        [
            ("collaborative".to_owned(), 1),
            ("input_processing".to_owned(), 1),
            ("narrative_generation".to_owned(), 1),
            ("story".to_owned(), 2),
            ("world_building".to_owned(), 1),
        ]
    );
    assert!(second.next_page_token.is_empty());

    let unknown = harness
        .client
        .process_user_input(pb::ProcessUserInputRequest {
            session_id: "s-x".to_owned(),
            user_id: "player-1".to_owned(),
            text: "hello".to_owned(),
            workflow: "no-such-flow".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    assert!(unknown.message().starts_with("workflow"), "{unknown:?}");
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_route_condition_is_judged_on_each_turns_request_and_session() {
    let mut harness = Harness::start().await;
    harness.agent(
        "ponderer",
        |_| Duration::ZERO,
        |_| Ok(custom("text", "You let the thought settle, slowly.")),
    );
    let reflect = |name: &str, condition: &str, precedence: i32| pb::WorkflowDefinition {
        route: Some(pb::WorkflowRoute {
            interaction_types: vec!["reflect".to_owned()],
            condition: condition.to_owned(),
            precedence,
            ..Default::default()
        }),
        ..workflow(name, vec![step("reflect", "ponderer", &[])])
    };
    harness
        .register(reflect(
            "calm-reflection",
            r#"request.metadata.mode == "calm""#,
            10,
        ))
        .await;
    harness.register(reflect("plain-reflection", "", 1)).await;
    harness
        .register(pb::WorkflowDefinition {
            route: Some(pb::WorkflowRoute {
                interaction_types: vec!["pause".to_owned()],
                ..Default::default()
            }),
            ..workflow("pause", vec![step("reflect", "ponderer", &[])])
        })
        .await;

    let routed = |turn: &str, interaction_type: &str, mode: Option<&str>| {
        let mut client = harness.client.clone();
        let request = pb::ProcessUserInputRequest {
            session_id: "s-routes".to_owned(),
            user_id: "player-1".to_owned(),
            text: "i want to think for a moment".to_owned(),
            turn_id: turn.to_owned(),
            interaction_type: interaction_type.to_owned(),
            metadata: mode
                .map(|mode| HashMap::from([("mode".to_owned(), mode.to_owned())]))
                .unwrap_or_default(),
            ..Default::default()
        };
        async move {
            let response = client
                .process_user_input(request)
                .await
                .unwrap()
                .into_inner();
            (response.workflow, response.replayed)
        }
    };
    assert_eq!(
        routed("t1", "reflect", Some("calm")).await,
        ("calm-reflection".to_owned(), false)
    );
    assert_eq!(
        routed("t2", "reflect", None).await,
        ("plain-reflection".to_owned(), false),
        "the condition is judged again for every turn"
    );
    // No route for this type has a condition: the workflow is chosen before the session is
    // read and claimed with the session lock, so the only HSETNX of the turn is its response.
    let redis_client = redis::Client::open(harness.redis.url()).unwrap();
    let mut redis = redis_client
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let claims_before = tta_testkit::command_calls(&mut redis, "hsetnx")
        .await
        .unwrap();
    assert_eq!(
        routed("t3", "pause", Some("calm")).await,
        ("pause".to_owned(), false)
    );
    assert_eq!(
        tta_testkit::command_calls(&mut redis, "hsetnx")
            .await
            .unwrap()
            - claims_before,
        1
    );
    assert_eq!(
        routed("t3", "pause", None).await,
        ("pause".to_owned(), true)
    );
    assert_eq!(
        routed("t1", "reflect", None).await,
        ("calm-reflection".to_owned(), true),
        "a repeated turn answers with the workflow it ran"
    );

    // A request refused after the lock was taken leaves nothing in that turn's record.
    let refused = harness
        .client
        .process_user_input(pb::ProcessUserInputRequest {
            session_id: "s-routes".to_owned(),
            user_id: "someone-else".to_owned(),
            text: "let me in".to_owned(),
            turn_id: "t9".to_owned(),
            interaction_type: "pause".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let run_key =
        tta_runtime::redis::Keyspace::new(&harness.prefix).tagged("s-routes", &["run", "t9"]);
    let left: i64 = redis::cmd("EXISTS")
        .arg(&run_key)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(left, 0);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn turns_are_routed_by_interaction_type_and_stream_their_progress() {
    let mut harness = Harness::start().await;
    harness.agent(
        "reflector",
        |_| Duration::from_millis(600),
        |_| {
            Ok(custom(
                "text",
                "You sit with that feeling for a while. It is allowed to be here.",
            ))
        },
    );
    harness
        .register(pb::WorkflowDefinition {
            route: Some(pb::WorkflowRoute {
                interaction_types: vec!["reflect".to_owned()],
                precedence: 5,
                ..Default::default()
            }),
            expected_duration: ms(200),
            ..workflow("reflection", vec![step("reflect", "reflector", &[])])
        })
        .await;

    let mut stream = harness
        .client
        .stream_turn(pb::ProcessUserInputRequest {
            session_id: "s-reflect".to_owned(),
            user_id: "player-1".to_owned(),
            text: "i feel a bit lost today".to_owned(),
            turn_id: "t1".to_owned(),
            interaction_type: "reflect".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut events = Vec::new();
    while let Some(event) = stream.message().await.unwrap() {
        events.push(event);
    }
    use pb::turn_event::Event;
    let kinds: Vec<&Event> = events.iter().filter_map(|e| e.event.as_ref()).collect();
    assert!(matches!(kinds.first(), Some(Event::Accepted(a)) if a.workflow == "reflection"));
    assert!(
        matches!(kinds.last(), Some(Event::Completed(_))),
        "{kinds:?}"
    );
    let sequences: Vec<u32> = events.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, (1..=events.len() as u32).collect::<Vec<_>>());
    let position = |pred: &dyn Fn(&Event) -> bool| kinds.iter().position(|k| pred(k)).unwrap();
    let started = position(&|k| matches!(k, Event::StepStarted(s) if s.step_id == "reflect"));
    let slow = position(&|k| matches!(k, Event::Slow(s) if s.running_steps == ["reflect"]));
    let finished = position(&|k| matches!(k, Event::StepFinished(_)));
    let first_chunk = position(&|k| matches!(k, Event::NarrativeChunk(_)));
    let verdict = position(
        &|k| matches!(k, Event::SafetyVerdict(v) if v.source == pb::ContentSource::Agent as i32),
    );
    assert!(started < slow && slow < finished, "{kinds:?}");
    assert!(
        verdict < first_chunk,
        "chunks only after the reply passed: {kinds:?}"
    );
    let chunks: String = kinds
        .iter()
        .filter_map(|k| match k {
            Event::NarrativeChunk(chunk) => Some(chunk.text.as_str()),
            _ => None,
        })
        .collect();
    let Some(Event::Completed(done)) = kinds.last() else {
        unreachable!()
    };
    let response = done.response.as_ref().unwrap();
    assert_eq!(chunks, response.text);
    assert_eq!(response.workflow, "reflection");

    // Per-agent figures and workflow outcomes are in the diagnostics.
    let admin = harness.gateway.as_ref().unwrap().admin_addr;
    let (status, body) = http_get(admin, "/diagnostics").await.unwrap();
    assert_eq!(status, 200);
    let diagnostics: serde_json::Value = serde_json::from_str(&body).unwrap();
    let agents = diagnostics["agents"].as_array().unwrap();
    let reflector = agents
        .iter()
        .find(|a| a["agent_type"] == "reflector")
        .unwrap();
    assert_eq!(reflector["steps"], 1);
    assert!(
        reflector["p95_ms"].as_f64().unwrap() >= 600.0,
        "{reflector}"
    );
    let runs: HashMap<String, u64> = diagnostics["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                format!(
                    "{}/{}",
                    w["workflow"].as_str().unwrap(),
                    w["status"].as_str().unwrap()
                ),
                w["runs"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(runs.get("reflection/ok"), Some(&1), "{runs:?}");
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_step_needing_a_capability_goes_only_to_instances_that_have_it() {
    let mut harness = Harness::start().await;
    for (instance, capability) in [("p-water", "watercolor"), ("p-oil", "oil")] {
        harness
            .capable_agent("painter", instance, &["painter", capability], move |_| {
                Ok(narrative(&format!("Painted by {instance}.")))
            })
            .await;
    }
    harness
        .register(workflow(
            "watercolor-scene",
            vec![pb::WorkflowStep {
                required_capabilities: vec!["watercolor".to_owned()],
                ..step("paint", "painter", &[])
            }],
        ))
        .await;
    // Both painters also consume the shared `agent.painter` topic: were the step sent there,
    // p-oil would take about half of these (a chance of 2^-12 to miss it).
    for turn in 0..12 {
        let response = harness
            .turn(
                &format!("s-paint-{turn}"),
                "watercolor-scene",
                "paint the harbour",
            )
            .await;
        assert_eq!(response.text, "Painted by p-water.", "{response:?}");
        assert!(!response.degraded);
    }

    // Nobody advertises charcoal: the step fails at once and its fallback answers.
    let fixed = fallback_text("nga", "A sketch will have to do.");
    harness
        .register(workflow(
            "charcoal-scene",
            vec![pb::WorkflowStep {
                required_capabilities: vec!["charcoal".to_owned()],
                fallback: Some(pb::workflow_step::Fallback::FallbackOutput(fixed)),
                ..step("paint", "painter", &[])
            }],
        ))
        .await;
    let response = harness
        .turn("s-charcoal", "charcoal-scene", "paint the harbour")
        .await;
    assert_eq!(response.text, "A sketch will have to do.");
    assert!(
        response
            .degraded_reasons
            .iter()
            .any(|r| r.contains("no live painter agent advertises charcoal")),
        "{:?}",
        response.degraded_reasons
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_type_that_keeps_timing_out_is_isolated_and_its_steps_fall_back_at_once() {
    let mut harness = Harness::start_adjusted(|config| {
        config.gateway.circuit_breaker.failure_threshold = 2;
        config.gateway.circuit_breaker.open_for = Duration::from_secs(60);
    })
    .await;
    // Takes every task and never answers in time.
    harness.agent(
        "sleepy",
        |_| Duration::from_secs(30),
        |_| Ok(custom("late", "yes")),
    );
    let fixed = fallback_text("custom", "The lighthouse keeper is resting.");
    harness
        .register(workflow(
            "ask-the-keeper",
            vec![pb::WorkflowStep {
                timeout: ms(300),
                fallback: Some(pb::workflow_step::Fallback::FallbackOutput(fixed)),
                ..step("keeper", "sleepy", &[])
            }],
        ))
        .await;
    for turn in 0..2 {
        let response = harness
            .turn(&format!("s-keeper-{turn}"), "ask-the-keeper", "knock")
            .await;
        assert_eq!(response.text, "The lighthouse keeper is resting.");
        assert!(
            response
                .degraded_reasons
                .iter()
                .any(|r| r.contains("no answer in time")),
            "{:?}",
            response.degraded_reasons
        );
    }
    // Two timeouts in a row: the type is isolated, the next step is not even dispatched.
    let isolated = harness.turn("s-keeper-2", "ask-the-keeper", "knock").await;
    assert_eq!(isolated.text, "The lighthouse keeper is resting.");
    assert!(
        isolated
            .degraded_reasons
            .iter()
            .any(|r| r.contains("isolated after repeated failures")),
        "{:?}",
        isolated.degraded_reasons
    );
    assert_eq!(
        outcome_of(&isolated, "keeper"),
        (pb::StepOutcome::Fallback as i32, 0)
    );
    let admin = harness.gateway.as_ref().unwrap().admin_addr;
    let (_, metrics) = http_get(admin, "/metrics").await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|line| line.starts_with("tta_gateway_agent_circuit_state")
                && line.contains("agent=\"sleepy\"")
                && line.ends_with(" 2")),
        "the gauge shows the open circuit"
    );
    assert!(
        metrics.lines().any(|line| {
            line.starts_with("tta_gateway_agent_error_rate")
                && line.contains("agent=\"sleepy\"")
                && line
                    .rsplit(' ')
                    .next()
                    .and_then(|value| value.parse::<f64>().ok())
                    .is_some_and(|rate| rate > 0.0)
        }),
        "the error-rate gauge shows the sleepy agent's timeouts"
    );
    harness.stop().await;
}

async fn exists(redis: &mut redis::aio::MultiplexedConnection, key: &str) -> bool {
    redis::cmd("EXISTS")
        .arg(key)
        .query_async(redis)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_leaves_its_session_unlocked_when_it_answers_and_when_it_is_replayed() {
    let mut harness = Harness::start().await;
    harness.agent("nga", |_| Duration::ZERO, narrator);
    harness
        .register(workflow("tell", vec![step("nga", "nga", &[])]))
        .await;
    let lock_key = tta_runtime::redis::Keyspace::new(&harness.prefix).tagged("s-lock", &["lock"]);
    let client = redis::Client::open(harness.redis.url()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();

    // The answer records the turn and releases the lock in one step.
    let first = harness.turn("s-lock", "tell", "look").await;
    assert_eq!(first.text, "You look around. Seen: .");
    assert!(
        !exists(&mut redis, &lock_key).await,
        "the session lock outlived its turn"
    );

    // A replay answers from the record without finishing again; it unlocks on its own.
    let replay = harness.turn("s-lock", "tell", "look").await;
    assert!(replay.replayed);
    assert_eq!(replay.text, first.text);
    assert!(
        !exists(&mut redis, &lock_key).await,
        "the session lock outlived the replayed turn"
    );
    harness.stop().await;
}

/// What a scripted agent saw of a task: its step, the steps it was to hand on to, the outputs
/// it was given and the results chained before it.
type SeenTask = (String, Vec<String>, Vec<String>, Vec<String>);

fn seen(task: &pb::AgentTask) -> SeenTask {
    (
        task.step_id.clone(),
        task.next_steps.iter().map(|s| s.step_id.clone()).collect(),
        task.upstream.iter().map(|s| s.step_id.clone()).collect(),
        task.chained.iter().map(|r| r.step_id.clone()).collect(),
    )
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|item| (*item).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agents_hand_a_line_of_steps_on_and_the_gateway_answers_with_every_step() {
    let mut harness = Harness::start().await;
    let tasks: Arc<Mutex<Vec<SeenTask>>> = Arc::default();
    for agent_type in ["ipa", "mood", "broken", "plain", "nga"] {
        let tasks = tasks.clone();
        harness.agent(
            agent_type,
            |_| Duration::ZERO,
            move |task| {
                tasks.lock().unwrap().push(seen(task));
                match task.agent_type.as_str() {
                    "ipa" => Ok(ipa("look")),
                    "mood" | "plain" => Ok(custom("mood", "calm")),
                    "broken" => Err(TaskError::Permanent("cannot read the tides".to_owned())),
                    _ => narrator(task),
                }
            },
        );
    }
    // The scripted agents run the shared worker runtime, which hands on; `plain` stands for an
    // agent that does not say so.
    for agent_type in ["ipa", "mood", "broken", "nga"] {
        harness
            .advertise(agent_type, &[tta_runtime::agents::NEXT_STEPS_CAPABILITY])
            .await;
    }
    harness.advertise("plain", &[]).await;
    let response = harness.line_turn("line", "mood").await;
    assert!(!response.degraded, "{:?}", response.degraded_reasons);
    assert_eq!(response.text, "You look around. Seen: ipa,mood.");
    for step in ["ipa", "mood", "nga"] {
        assert_eq!(
            outcome_of(&response, step),
            (pb::StepOutcome::Succeeded as i32, 1),
            "{step}"
        );
    }
    assert!(
        response
            .timings
            .iter()
            .filter(|timing| timing.agent_type != "gateway")
            .all(|timing| timing.agent.is_some()),
        "every agent step names the instance that ran it: {:?}",
        response.timings
    );
    // The gateway dispatched the first task only; each agent handed its output on.
    assert_eq!(
        *tasks.lock().unwrap(),
        [
            (
                "ipa".to_owned(),
                strings(&["mood", "nga"]),
                strings(&[]),
                strings(&[])
            ),
            (
                "mood".to_owned(),
                strings(&["nga"]),
                strings(&["ipa"]),
                strings(&["ipa"])
            ),
            (
                "nga".to_owned(),
                strings(&[]),
                strings(&["ipa", "mood"]),
                strings(&["ipa", "mood"])
            ),
        ]
    );
    // The turn's recorded response supersedes the chain's results: every retry gets the
    // response, so they were acked without a record of their own.
    let client = redis::Client::open(harness.redis.url()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let run_key =
        tta_runtime::redis::Keyspace::new(&harness.prefix).tagged("s-line", &["run", "t1"]);
    let mut fields: Vec<String> = redis::cmd("HKEYS")
        .arg(&run_key)
        .query_async(&mut redis)
        .await
        .unwrap();
    fields.sort();
    assert_eq!(fields, ["response", "workflow"]);

    // A step that fails in the middle of the line answers the gateway with what came before:
    // the IPA is not run again, and the run ends as that failure ends it.
    tasks.lock().unwrap().clear();
    let response = harness.line_turn("broken-line", "broken").await;
    assert_eq!(response.text, "The story waits for you.");
    assert_eq!(
        response.degraded_reasons,
        ["broken: failed: cannot read the tides"]
    );
    assert_eq!(
        outcome_of(&response, "ipa"),
        (pb::StepOutcome::Succeeded as i32, 1)
    );
    let steps: Vec<(String, Vec<String>)> = tasks
        .lock()
        .unwrap()
        .iter()
        .map(|(step, next, _, _)| (step.clone(), next.clone()))
        .collect();
    assert_eq!(
        steps,
        [
            ("ipa".to_owned(), strings(&["broken", "nga"])),
            ("broken".to_owned(), strings(&["nga"])),
        ]
    );

    // A line through an agent type that does not hand on is dispatched step by step.
    tasks.lock().unwrap().clear();
    let response = harness.line_turn("plain-line", "plain").await;
    assert!(!response.degraded, "{:?}", response.degraded_reasons);
    assert!(
        tasks
            .lock()
            .unwrap()
            .iter()
            .all(|(_, next, _, _)| next.is_empty()),
        "{:?}",
        tasks.lock().unwrap()
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chain_that_falls_silent_makes_its_workflow_run_step_by_step() {
    let mut harness = Harness::start().await;
    let tasks: Arc<Mutex<Vec<SeenTask>>> = Arc::default();
    for agent_type in ["ipa", "mood", "nga"] {
        let tasks = tasks.clone();
        // The mood agent stalls on the first session's task, past the whole turn.
        let delay = move |task: &pb::AgentTask| {
            if task.agent_type == "mood" && task.session_id == "s-silent-1" {
                Duration::from_millis(1500)
            } else {
                Duration::ZERO
            }
        };
        harness.agent(agent_type, delay, move |task| {
            tasks.lock().unwrap().push(seen(task));
            match task.agent_type.as_str() {
                "ipa" => Ok(ipa("look")),
                "mood" => Ok(custom("mood", "calm")),
                _ => narrator(task),
            }
        });
        harness
            .advertise(agent_type, &[tta_runtime::agents::NEXT_STEPS_CAPABILITY])
            .await;
    }
    harness
        .register(pb::WorkflowDefinition {
            total_timeout: ms(600),
            ..workflow(
                "silent-line",
                vec![
                    step("ipa", "ipa", &[]),
                    step("mood", "mood", &["ipa"]),
                    step("nga", "nga", &["mood"]),
                ],
            )
        })
        .await;

    let silent = harness.turn("s-silent-1", "silent-line", "look").await;
    assert_eq!(silent.text, "The story waits for you.");
    assert!(silent.degraded, "{silent:?}");
    let first_ipa = tasks.lock().unwrap()[0].clone();
    assert_eq!(
        first_ipa.1,
        strings(&["mood", "nga"]),
        "the first turn chained"
    );

    // The silence opened the workflow's chain breaker: the next turn goes step by step, so
    // each agent's own timeout and breaker apply again.
    tasks.lock().unwrap().clear();
    let answered = harness.turn("s-silent-2", "silent-line", "look").await;
    assert!(!answered.degraded, "{:?}", answered.degraded_reasons);
    assert_eq!(answered.text, "You look around. Seen: ipa,mood.");
    let second_ipa: Vec<SeenTask> = tasks
        .lock()
        .unwrap()
        .iter()
        .filter(|(step, ..)| step == "ipa")
        .cloned()
        .collect();
    assert_eq!(second_ipa.len(), 1, "{second_ipa:?}");
    assert!(second_ipa[0].1.is_empty(), "{second_ipa:?}");
    harness.stop().await;
}
