//! One player turn: a safety screen of the input, IPA → WBA → NGA through the broker, and a
//! safety check of the narrative, with a run record that makes it durable and idempotent.
//!
//! A turn takes its session's lock (turns of one session run strictly in order, on any
//! replica), replays the final response if the `turn_id` already completed, reuses step
//! results that an earlier attempt stored, and runs the remaining steps. A step that fails or
//! times out degrades the turn to a calm fallback reply instead of failing it (R1.4, R6.4).
//!
//! Safety (R5): input that calls for the crisis protocol never reaches the agents — the player
//! gets the caring crisis reply with resources, the session is flagged and the escalation is
//! written before the reply is. A narrative the validator blocks is sent back to the NGA for
//! an alternative (bounded), and replaced by a safe reply when none passes.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use tta_proto::v1 as pb;
use tta_safety::{Source, escalation::EscalationReason, verdict::truncate_on_char_boundary};
use tta_types::{SessionId, TurnId, UserId};

use crate::{
    dispatch::{DispatchError, Dispatcher, HeldResults},
    error::Error,
    events::EventSink,
    guard::{Occasion, SafetyGuard},
    live::LiveConfig,
    stats,
    store::{Store, TurnState},
    workflow::{
        builtin,
        definition::Workflow,
        registry::WorkflowRegistry,
        run::{self, RunInput, RunOutcome},
        view::RouteScope,
    },
};
/// What a response's `workflow` says when the crisis protocol answered instead of the story.
pub const CRISIS_PROTOCOL: &str = "crisis_protocol";
/// The contract's limit on `AlternativeRequest.rejected_text`.
const MAX_REJECTED_TEXT_BYTES: usize = 4096;

/// A validated `ProcessUserInput` request.
#[derive(Debug, Clone)]
pub struct TurnRequest {
    pub session_id: SessionId,
    pub user_id: UserId,
    pub text: String,
    pub turn_id: TurnId,
    pub interaction_type: String,
    pub metadata: HashMap<String, String>,
    /// Explicit workflow; empty means routing chooses.
    pub workflow: String,
    pub priority: pb::Priority,
}

/// The session lock a turn holds; finishing the turn releases it in the same round trip.
struct HeldLock {
    token: crate::store::LockToken,
    released: AtomicBool,
}

/// The live settings a turn runs under, read once when it starts so that all its steps agree.
#[derive(Debug, Clone, Copy)]
struct TurnSettings {
    turn_timeout: Duration,
    history_window: usize,
}

/// A turn between taking its session lock and answering.
#[derive(Clone, Copy)]
struct Ongoing<'a> {
    request: &'a TurnRequest,
    settings: TurnSettings,
    lock: &'a HeldLock,
    events: &'a EventSink,
    /// The step results the turn's response, once recorded, supersedes.
    held: &'a HeldResults,
    started: Instant,
}

#[derive(Debug, Clone)]
pub struct TurnRunner {
    config: LiveConfig,
    store: Store,
    dispatcher: Dispatcher,
    guard: SafetyGuard,
    workflows: Arc<WorkflowRegistry>,
    instance: String,
    /// New for every process start; see [`crate::store::LockToken`].
    incarnation: String,
    /// Counts the turn attempts of this process, to tell their locks apart.
    attempts: Arc<AtomicU64>,
}

fn now_timestamp() -> prost_types::Timestamp {
    prost_types::Timestamp::from(SystemTime::now())
}

fn run_id(session: &SessionId, turn: &TurnId) -> String {
    uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_OID,
        format!("{session}/{turn}").as_bytes(),
    )
    .to_string()
}

impl TurnRunner {
    pub fn new(
        config: LiveConfig,
        store: Store,
        dispatcher: Dispatcher,
        guard: SafetyGuard,
        workflows: Arc<WorkflowRegistry>,
        instance: String,
    ) -> Self {
        Self {
            config,
            store,
            dispatcher,
            guard,
            workflows,
            instance,
            incarnation: uuid::Uuid::now_v7().simple().to_string(),
            attempts: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn workflows(&self) -> &WorkflowRegistry {
        &self.workflows
    }

    /// A session with default settings, for `ProcessUserInput` on an unknown session id.
    pub fn new_session(&self, session_id: &SessionId, user_id: &UserId) -> pb::Session {
        let now = now_timestamp();
        pb::Session {
            session_id: session_id.to_string(),
            user_id: user_id.to_string(),
            character_name: String::new(),
            world_id: self.config.now().gateway.default_world.clone(),
            settings: Some(pb::TherapeuticSettings {
                intensity: pb::TherapeuticIntensity::Medium as i32,
                avoid_topics: Vec::new(),
                locale: "en-US".to_owned(),
                goals: Vec::new(),
            }),
            state: pb::SessionState::Active as i32,
            created_at: Some(now),
            updated_at: Some(now),
            ended_at: None,
            end_reason: String::new(),
            version: 0,
            last_turn_id: String::new(),
            escalated: false,
            degraded: false,
            metadata: HashMap::new(),
        }
    }

    /// Runs a turn, reporting its progress to `events`; the caller reports the end.
    pub async fn run(
        &self,
        request: TurnRequest,
        events: &EventSink,
    ) -> Result<pb::ProcessUserInputResponse, Error> {
        let session_key = request.session_id.as_str();
        let settings = {
            let config = self.config.now();
            TurnSettings {
                turn_timeout: config.gateway.turn_timeout,
                history_window: config.gateway.history_window,
            }
        };
        let budget = settings.turn_timeout;
        let token = crate::store::LockToken {
            replica: self.instance.clone(),
            incarnation: self.incarnation.clone(),
            turn: request.turn_id.to_string(),
            attempt: self.attempts.fetch_add(1, Ordering::Relaxed),
        };
        let window = settings.history_window;
        // When routing does not look at the session, the workflow is known before the session
        // is read, and a new turn claims it together with taking the lock.
        let routed = if request.workflow.is_empty() {
            self.workflows
                .route_without_context(&request.interaction_type)
        } else {
            None
        };
        let loaded = self
            .store
            .try_lock_and_load(
                session_key,
                &token,
                budget * 3,
                request.turn_id.as_str(),
                window,
                routed
                    .as_ref()
                    .map(|workflow| (workflow.name.as_str(), workflow.version)),
            )
            .await?;
        // A repeated turn_id waits for the lock too: if its first attempt is still running,
        // the repeat answers with that attempt's result (the contract's "the repeat waits").
        if loaded.is_none()
            && !self
                .store
                .lock(session_key, &token, budget * 2, budget * 3)
                .await?
        {
            return Err(Error::Busy(format!(
                "session {} is busy with another turn (retry after 100 ms)",
                request.session_id
            )));
        }
        let lock = HeldLock {
            token,
            released: AtomicBool::new(false),
        };
        let (loaded, claimed) = match loaded {
            Some(locked) => (Some(locked.state), routed.filter(|_| locked.claimed)),
            None => (None, None),
        };
        // Boxed: the locked part of a turn is the bulk of its state, and every layer above
        // (the gRPC handler, the streaming task) would otherwise copy it whole when it moves.
        let outcome =
            Box::pin(self.run_locked(&request, settings, loaded, claimed, &lock, events)).await;
        if !lock.released.load(Ordering::Acquire)
            && let Err(err) = self.store.unlock(session_key, &lock.token).await
        {
            tracing::warn!(session = %request.session_id, error = %err, "cannot release the session lock; it expires by itself");
        }
        outcome
    }

    /// `loaded` is the turn's state when it was read together with taking the lock; `claimed`
    /// the workflow recorded for the turn in that same step.
    async fn run_locked(
        &self,
        request: &TurnRequest,
        settings: TurnSettings,
        loaded: Option<TurnState>,
        claimed: Option<Arc<Workflow>>,
        lock: &HeldLock,
        events: &EventSink,
    ) -> Result<pb::ProcessUserInputResponse, Error> {
        let started = Instant::now();
        let held = HeldResults::default();
        let ongoing = Ongoing {
            request,
            settings,
            lock,
            events,
            held: &held,
            started,
        };
        let session_key = request.session_id.as_str();
        let turn_key = request.turn_id.as_str();
        let state = match loaded {
            Some(state) => state,
            None => {
                self.store
                    .load_turn(session_key, turn_key, settings.history_window)
                    .await?
            }
        };
        // This turn_id finished before (on any replica): the same answer again.
        if let Some(mut done) = state.response {
            done.replayed = true;
            events.accepted(accepted_of(&done, Duration::ZERO));
            events.narrative(&done.text);
            return Ok(done);
        }
        let resumed = state.resumed();
        let mut session = match state.session {
            Some(session) => session,
            None => {
                let session = self.new_session(&request.session_id, &request.user_id);
                self.store.create_session(&session).await?;
                session
            }
        };
        let refusal = if session.user_id != request.user_id.as_str() {
            Some(Error::PermissionDenied(format!(
                "user_id: session {} belongs to another user",
                request.session_id
            )))
        } else if session.state == pb::SessionState::Ended as i32 {
            Some(Error::FailedPrecondition(format!(
                "session {} has ended",
                request.session_id
            )))
        } else {
            None
        };
        if let Some(refusal) = refusal {
            if claimed.is_some() {
                self.withdraw_claim(request).await;
            }
            return Err(refusal);
        }

        let workflow = match claimed {
            Some(workflow) => workflow,
            None => {
                self.choose_workflow(request, &session, state.workflow)
                    .await?
            }
        };
        let run_id = run_id(&request.session_id, &request.turn_id);
        events.accepted(pb::TurnAccepted {
            run_id: run_id.clone(),
            session_id: request.session_id.to_string(),
            workflow: workflow.name.clone(),
            workflow_version: workflow.version,
            replayed: false,
            expected_duration: prost_types::Duration::try_from(workflow.expected_duration).ok(),
        });

        let occasion = Occasion {
            session: &request.session_id,
            user: request.user_id.as_str(),
            turn: Some(turn_key),
        };
        let settings = session.settings.clone();
        let policy = self.guard.policy(settings.as_ref());
        let screen_started = Instant::now();
        let screen = self
            .guard
            .screen_input(
                occasion,
                &request.text,
                &policy,
                self.guard.locale(settings.as_ref()),
            )
            .await?;
        let input_safety = pb::SafetyAssessment::from(&screen.assessment);
        events.safety(&input_safety, pb::ContentSource::User, "", false);
        let screen_timing = gateway_timing("safety.input", screen_started.elapsed());
        if screen.escalation.is_some() || screen.assessment.crisis {
            session.escalated = true;
        }
        if let Some(reply) = screen.crisis_reply {
            let response = pb::ProcessUserInputResponse {
                turn_id: request.turn_id.to_string(),
                text: reply.text,
                safety: Some(input_safety),
                degraded: false,
                timings: vec![screen_timing],
                total_duration: prost_types::Duration::try_from(started.elapsed()).ok(),
                session_version: session.version,
                session_id: request.session_id.to_string(),
                run_id,
                workflow: CRISIS_PROTOCOL.to_owned(),
                workflow_version: 1,
                replayed: false,
                degraded_reasons: Vec::new(),
                world: None,
                suggestions: Vec::new(),
                recovered: false,
            };
            // The player's words of a crisis are not fed back into the story's context.
            return self.finish(&ongoing, session, response, false).await;
        }

        let mut metadata = request.metadata.clone();
        if !state.history.is_empty() {
            metadata.insert("history".to_owned(), state.history);
        }
        let context = pb::TurnContext {
            user_id: request.user_id.to_string(),
            text: request.text.clone(),
            interaction_type: request.interaction_type.clone(),
            world_id: session.world_id.clone(),
            character_name: session.character_name.clone(),
            settings: session.settings.clone(),
            session_version: session.version,
            metadata,
            input_safety: Some(input_safety.clone()),
        };
        let earlier: HashMap<String, pb::AgentResult> = state
            .steps
            .into_iter()
            .filter(|result| result.status == pb::AgentResultStatus::Succeeded as i32)
            .map(|result| (result.step_id.clone(), result))
            .collect();
        let deadline = started + workflow.total_timeout.min(ongoing.settings.turn_timeout);
        let mut outcome = run::run(
            &self.dispatcher,
            RunInput {
                workflow: &workflow,
                run_id: &run_id,
                session_id: session_key,
                turn_id: turn_key,
                context: &context,
                earlier: &earlier,
                deadline,
                priority: request.priority,
                input_safety: &input_safety,
                events,
                resumed,
                // A stream reports each step as it starts and ends, which a chain would hide.
                hand_on: !events.is_listening(),
                held: &held,
            },
        )
        .await;
        outcome.timings.insert(0, screen_timing);

        let review = ReplyReview {
            request,
            workflow: &workflow,
            run_id: &run_id,
            context: &context,
            policy: &policy,
            deadline,
            events,
            resumed,
            held: &held,
        };
        let output_safety = if outcome.stopped {
            None
        } else {
            self.review_reply(&review, &mut outcome).await?
        };
        let mut response = compose_response(
            request,
            &run_id,
            &workflow,
            &outcome,
            merge_safety(input_safety, output_safety),
            started.elapsed(),
            session.version,
        );
        response.total_duration = prost_types::Duration::try_from(started.elapsed()).ok();
        self.finish(&ongoing, session, response, true).await
    }

    /// Takes back the workflow claimed with the lock for a turn that is refused, so a refused
    /// request (another user's session, an ended one) leaves no trace in that turn's record.
    async fn withdraw_claim(&self, request: &TurnRequest) {
        if let Err(err) = self
            .store
            .withdraw_run_workflow(request.session_id.as_str(), request.turn_id.as_str())
            .await
        {
            tracing::warn!(session = %request.session_id, turn = %request.turn_id, error = %err, "cannot withdraw the workflow claimed for a refused turn; it expires with the run record");
        }
    }

    /// The workflow for this turn: the version an earlier attempt of the same turn started
    /// with, an explicit override, or the one routing picks (R1.1).
    async fn choose_workflow(
        &self,
        request: &TurnRequest,
        session: &pb::Session,
        earlier: Option<(String, u32)>,
    ) -> Result<Arc<Workflow>, Error> {
        if let Some((name, version)) = earlier {
            return self.workflows.get(&name, version).await;
        }
        let chosen = if request.workflow.is_empty() {
            let scope = RouteScope {
                session,
                metadata: &request.metadata,
                interaction_type: &request.interaction_type,
            };
            match self.workflows.route(&request.interaction_type, &scope) {
                Some(workflow) => workflow,
                None => self.workflows.get(builtin::COLLABORATIVE, 0).await?,
            }
        } else {
            self.workflows
                .get(&request.workflow, 0)
                .await
                .map_err(|err| match err {
                    Error::NotFound(reason) => Error::NotFound(format!("workflow: {reason}")),
                    other => other,
                })?
        };
        // A resumed turn keeps the version it started with, even if a newer one was registered.
        let (name, version) = self
            .store
            .claim_run_workflow(
                request.session_id.as_str(),
                request.turn_id.as_str(),
                &chosen.name,
                chosen.version,
            )
            .await?;
        if name == chosen.name && version == chosen.version {
            Ok(chosen)
        } else {
            self.workflows.get(&name, version).await
        }
    }

    /// Records the turn's response as the one answer to its `turn_id`, then advances the
    /// session. If another attempt recorded first, its response wins and is returned.
    async fn finish(
        &self,
        ongoing: &Ongoing<'_>,
        mut session: pb::Session,
        mut response: pb::ProcessUserInputResponse,
        remember_input: bool,
    ) -> Result<pb::ProcessUserInputResponse, Error> {
        let Ongoing {
            request,
            settings,
            lock,
            events,
            held,
            started,
        } = *ongoing;
        // Recorded with the response, so a replay of this turn says the same. A crisis reply
        // runs no agents: it says nothing about their health, and must not carry good news.
        if response.workflow != CRISIS_PROTOCOL {
            let faltered = steps_faltered(&response.timings);
            response.recovered = session.degraded && !faltered;
            session.degraded = faltered;
        }
        session.version = response.session_version;
        session.last_turn_id = request.turn_id.to_string();
        session.updated_at = Some(now_timestamp());
        let remember = remember_input.then_some((request.text.as_str(), settings.history_window));
        let first = self
            .store
            .finish_turn(
                request.turn_id.as_str(),
                &session,
                &response,
                remember,
                &lock.token,
            )
            .await?;
        lock.released.store(true, Ordering::Release);
        // Whichever attempt's response was recorded first, it is the answer to every retry.
        held.superseded();
        if let Some(mut first) = first {
            first.replayed = true;
            events.narrative(&first.text);
            return Ok(first);
        }
        let status = if response.workflow == CRISIS_PROTOCOL {
            "crisis"
        } else if response.degraded {
            "degraded"
        } else {
            "ok"
        };
        let workflow = response.workflow.clone();
        stats::record_run(&workflow, status);
        metrics::histogram!("tta_gateway_turn_duration_seconds", "workflow" => workflow.clone())
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("tta_gateway_turns_total", "workflow" => workflow, "status" => status)
            .increment(1);
        if response.recovered {
            tracing::info!(session = %request.session_id, turn = %request.turn_id, "session runs in full again after a degraded turn");
            metrics::counter!("tta_gateway_sessions_recovered_total").increment(1);
        }
        events.narrative(&response.text);
        Ok(response)
    }

    /// Validates the reply before the player reads it: a blocked text goes back to the agent of
    /// the output step for an alternative (each one a task of its own, so a resumed turn reuses
    /// answers already given), and when none passes the safe fallback is shown, the turn is
    /// degraded and the repeated blocks are escalated. Returns the verdict on the text shown.
    async fn review_reply(
        &self,
        review: &ReplyReview<'_>,
        outcome: &mut RunOutcome,
    ) -> Result<Option<pb::SafetyAssessment>, Error> {
        let Some(index) = outcome
            .outputs
            .iter()
            .position(|step| step.step_id == review.workflow.output_step)
        else {
            return Ok(None);
        };
        let Some(text) = outcome.outputs[index].output.as_ref().and_then(reply_text) else {
            return Ok(None);
        };
        let reviewed_started = Instant::now();
        let step = outcome.outputs[index].clone();
        let before: Vec<pb::StepOutput> = outcome.outputs[..index].to_vec();
        let rejected = Mutex::new(text.clone());
        let validated = self
            .guard
            .validate_reply(review.policy, text, |regeneration| {
                let rejected_text = rejected
                    .lock()
                    .map(|text| {
                        truncate_on_char_boundary(&text, MAX_REJECTED_TEXT_BYTES).to_owned()
                    })
                    .unwrap_or_default();
                let assessment = self.guard.engine().current().assess(
                    &rejected_text,
                    Source::Agent,
                    review.policy,
                );
                review.events.safety(
                    &(&assessment).into(),
                    pb::ContentSource::Agent,
                    &step.step_id,
                    true,
                );
                let step_id = format!("{}.alt{}", step.step_id, regeneration.attempt);
                let remaining = review.deadline.saturating_duration_since(Instant::now());
                let task = pb::AgentTask {
                    task_id: format!("{}:{step_id}", review.run_id),
                    run_id: review.run_id.to_owned(),
                    turn_id: review.request.turn_id.to_string(),
                    session_id: review.request.session_id.to_string(),
                    step_id,
                    agent_type: step.agent_type.clone(),
                    workflow: review.workflow.name.clone(),
                    turn: Some(review.context.clone()),
                    upstream: before.clone(),
                    params: None,
                    deadline: Some(prost_types::Timestamp::from(SystemTime::now() + remaining)),
                    attempt: 1,
                    reply_topic: String::new(),
                    alternative: Some(pb::AlternativeRequest {
                        rejected_text,
                        assessment: Some((&assessment).into()),
                        round: regeneration.attempt,
                    }),
                    next_steps: Vec::new(),
                    chained: Vec::new(),
                };
                let rejected = &rejected;
                // The blocked reply is not the one the turn ends on.
                review.held.record_now();
                async move {
                    let text = self
                        .alternative_text(task, remaining, review.request.priority, review.resumed)
                        .await?;
                    if let Ok(mut last) = rejected.lock() {
                        last.clone_from(&text);
                    }
                    Ok::<String, String>(text)
                }
            })
            .await;
        let verdict = pb::SafetyAssessment::from(&validated.assessment);
        review
            .events
            .safety(&verdict, pb::ContentSource::Agent, &step.step_id, false);
        outcome
            .timings
            .push(gateway_timing("safety.output", reviewed_started.elapsed()));
        if validated.regenerations == 0 {
            return Ok(Some(verdict));
        }
        if let Some(output) = outcome.outputs[index].output.as_mut() {
            set_reply_text(output, &validated.text, validated.used_fallback);
        }
        if validated.used_fallback {
            outcome.degraded_reasons.push(format!(
                "{}: reply withheld by the safety check after {} alternatives",
                step.step_id, validated.regenerations
            ));
            let occasion = Occasion {
                session: &review.request.session_id,
                user: review.request.user_id.as_str(),
                turn: Some(review.request.turn_id.as_str()),
            };
            let blocked = rejected.lock().map(|text| text.clone()).unwrap_or_default();
            self.guard
                .escalate(
                    occasion,
                    &validated.assessment,
                    &blocked,
                    Source::Agent,
                    EscalationReason::RepeatedBlocks,
                )
                .await?;
            // The verdict of record is the one on the text that was withheld.
            return Ok(Some(verdict));
        }
        Ok(Some(verdict))
    }

    /// Asks the agent for an alternative and returns its text.
    async fn alternative_text(
        &self,
        task: pb::AgentTask,
        remaining: Duration,
        priority: pb::Priority,
        resumed: bool,
    ) -> Result<String, String> {
        if remaining.is_zero() {
            return Err("no time left in the turn".to_owned());
        }
        match self
            .dispatcher
            .run(task, remaining, priority, resumed)
            .await
        {
            Ok(result) if result.status == pb::AgentResultStatus::Succeeded as i32 => result
                .output
                .as_ref()
                .and_then(reply_text)
                .ok_or_else(|| "the alternative carried no reply text".to_owned()),
            Ok(result) => Err(result
                .error
                .map(|error| error.message)
                .unwrap_or_else(|| "the agent failed".to_owned())),
            Err(DispatchError::Timeout) => Err("no alternative in time".to_owned()),
            Err(DispatchError::Publish(status)) => Err(status.message().to_owned()),
        }
    }
}

/// What the reply review needs to know about its turn.
struct ReplyReview<'a> {
    request: &'a TurnRequest,
    workflow: &'a Workflow,
    run_id: &'a str,
    context: &'a pb::TurnContext,
    policy: &'a tta_safety::SessionPolicy,
    deadline: Instant,
    events: &'a EventSink,
    /// An earlier attempt of the turn may already have asked for alternatives.
    resumed: bool,
    held: &'a HeldResults,
}

/// The text an output offers the player: an NGA's narrative, or a custom agent's `text` field.
fn reply_text(output: &pb::AgentOutput) -> Option<String> {
    match output.kind.as_ref()? {
        pb::agent_output::Kind::Nga(nga) => Some(nga.text.clone()),
        pb::agent_output::Kind::Custom(custom) => match custom.fields.get("text")?.kind.as_ref()? {
            prost_types::value::Kind::StringValue(text) => Some(text.clone()),
            _ => None,
        },
        _ => None,
    }
}

fn set_reply_text(output: &mut pb::AgentOutput, text: &str, replaced_by_fallback: bool) {
    match output.kind.as_mut() {
        Some(pb::agent_output::Kind::Nga(nga)) => {
            nga.text = text.to_owned();
            nga.chunks.clear();
            if replaced_by_fallback {
                nga.suggestions.clear();
            }
        }
        Some(pb::agent_output::Kind::Custom(custom)) => {
            custom.fields.insert(
                "text".to_owned(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue(text.to_owned())),
                },
            );
        }
        _ => {}
    }
}

/// The turn's verdict: the more severe of the verdicts on the input and on the reply, with the
/// findings of both (each finding carries its source).
fn merge_safety(
    input: pb::SafetyAssessment,
    output: Option<pb::SafetyAssessment>,
) -> pb::SafetyAssessment {
    let Some(output) = output else {
        return input;
    };
    let mut merged = if output.level > input.level {
        pb::SafetyAssessment {
            findings: Vec::new(),
            ..output.clone()
        }
    } else {
        pb::SafetyAssessment {
            findings: Vec::new(),
            ..input.clone()
        }
    };
    merged.crisis = input.crisis || output.crisis;
    merged.action = input.action.max(output.action);
    for category in input.categories.iter().chain(&output.categories) {
        if !merged.categories.contains(category) {
            merged.categories.push(category.clone());
        }
    }
    merged.findings = input.findings.into_iter().chain(output.findings).collect();
    merged
}

/// The timing of work the gateway itself did within a turn.
fn gateway_timing(step_id: &str, elapsed: Duration) -> pb::StepTiming {
    pb::StepTiming {
        step_id: step_id.to_owned(),
        agent_type: "gateway".to_owned(),
        duration: prost_types::Duration::try_from(elapsed).ok(),
        outcome: pb::StepOutcome::Succeeded as i32,
        attempts: 1,
        agent: None,
    }
}

/// What a replayed turn's stream starts with.
pub fn accepted_of(
    response: &pb::ProcessUserInputResponse,
    expected: Duration,
) -> pb::TurnAccepted {
    pb::TurnAccepted {
        run_id: response.run_id.clone(),
        session_id: response.session_id.clone(),
        workflow: response.workflow.clone(),
        workflow_version: response.workflow_version,
        replayed: true,
        expected_duration: prost_types::Duration::try_from(expected).ok(),
    }
}

/// A reply for outputs that carry no text (workflows without a narrator): what was understood or
/// changed, in plain words.
fn describe(output: &pb::AgentOutput) -> Option<String> {
    match output.kind.as_ref()? {
        pb::agent_output::Kind::Ipa(ipa) => {
            let entities: Vec<&str> = ipa.entities.iter().map(|e| e.text.as_str()).collect();
            Some(if entities.is_empty() {
                format!("Understood: {}.", ipa.intent)
            } else {
                format!("Understood: {} ({}).", ipa.intent, entities.join(", "))
            })
        }
        pb::agent_output::Kind::Wba(wba) => Some(match (&wba.world, wba.applied) {
            (_, false) if !wba.rejection_reason.is_empty() => wba.rejection_reason.clone(),
            (Some(world), _) => format!("{}. {}", world.location_name, world.location_description),
            (None, _) => "Nothing changed.".to_owned(),
        }),
        _ => None,
    }
}

fn compose_response(
    request: &TurnRequest,
    run_id: &str,
    workflow: &Workflow,
    outcome: &RunOutcome,
    safety: pb::SafetyAssessment,
    elapsed: Duration,
    previous_version: u64,
) -> pb::ProcessUserInputResponse {
    let mut world = None;
    let mut version = previous_version;
    for step in &outcome.outputs {
        if let Some(pb::agent_output::Kind::Wba(wba)) =
            step.output.as_ref().and_then(|output| output.kind.as_ref())
        {
            world = wba.world.clone();
            version = wba.version.max(previous_version);
        }
    }
    let reply = (!outcome.stopped)
        .then(|| {
            outcome
                .outputs
                .iter()
                .find(|step| step.step_id == workflow.output_step)
                .and_then(|step| step.output.as_ref())
        })
        .flatten();
    let text = reply.and_then(|output| reply_text(output).or_else(|| describe(output)));
    let suggestions = match reply.and_then(|output| output.kind.as_ref()) {
        Some(pb::agent_output::Kind::Nga(nga)) => nga.suggestions.clone(),
        _ => Vec::new(),
    };
    let mut degraded_reasons = outcome.degraded_reasons.clone();
    if text.is_none() && degraded_reasons.is_empty() {
        degraded_reasons.push(format!("{}: produced no reply", workflow.output_step));
    }
    let fallback = if workflow.fallback_reply.is_empty() {
        builtin::FALLBACK_REPLY
    } else {
        workflow.fallback_reply.as_str()
    };
    pb::ProcessUserInputResponse {
        turn_id: request.turn_id.to_string(),
        text: text.unwrap_or_else(|| fallback.to_owned()),
        safety: Some(safety),
        degraded: !degraded_reasons.is_empty(),
        timings: outcome.timings.clone(),
        total_duration: prost_types::Duration::try_from(elapsed).ok(),
        session_version: version,
        session_id: request.session_id.to_string(),
        run_id: run_id.to_owned(),
        workflow: workflow.name.clone(),
        workflow_version: workflow.version,
        replayed: false,
        degraded_reasons,
        world,
        suggestions,
        recovered: false,
    }
}
/// Whether the service fell short in this turn: a step failed, timed out or was replaced by
/// its fallback. A reply the safety check held back is degraded too, but says nothing about
/// the service, so it neither starts nor ends an outage for the player.
fn steps_faltered(timings: &[pb::StepTiming]) -> bool {
    timings.iter().any(|timing| {
        matches!(
            pb::StepOutcome::try_from(timing.outcome),
            Ok(pb::StepOutcome::Failed | pb::StepOutcome::TimedOut | pb::StepOutcome::Fallback)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timings(outcomes: &[pb::StepOutcome]) -> Vec<pb::StepTiming> {
        outcomes
            .iter()
            .map(|outcome| pb::StepTiming {
                outcome: *outcome as i32,
                ..Default::default()
            })
            .collect()
    }

    #[test]
    fn only_failed_late_or_replaced_steps_count_as_the_service_faltering() {
        use pb::StepOutcome::*;
        assert!(!steps_faltered(&timings(&[Succeeded, Skipped, Succeeded])));
        assert!(!steps_faltered(&[]), "a crisis reply runs no steps");
        for faltered in [Failed, TimedOut, Fallback] {
            assert!(
                steps_faltered(&timings(&[Succeeded, faltered])),
                "{faltered:?}"
            );
        }
    }
}
