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
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use tta_proto::v1 as pb;
use tta_safety::{Source, escalation::EscalationReason, verdict::truncate_on_char_boundary};
use tta_types::{Config, SessionId, TurnId, UserId};

use crate::{
    dispatch::{DispatchError, Dispatcher},
    error::Error,
    guard::{Occasion, SafetyGuard},
    store::Store,
};

/// The built-in collaborative workflow: each step sees the outputs of the steps before it.
pub const COLLABORATIVE: &str = "collaborative";
/// What a response's `workflow` says when the crisis protocol answered instead of the story.
pub const CRISIS_PROTOCOL: &str = "crisis_protocol";
/// The contract's limit on `AlternativeRequest.rejected_text`.
const MAX_REJECTED_TEXT_BYTES: usize = 4096;
const STEPS: [(&str, &str); 3] = [("ipa", "ipa"), ("wba", "wba"), ("nga", "nga")];

/// What the player reads when a step could not produce its part.
const FALLBACK_REPLY: &str = "Let's pause here for a moment. Take a slow breath in, and let it out gently. \
The harbour is still here, and so are you. When you're ready, tell me what you'd like to do next.";

/// A validated `ProcessUserInput` request.
#[derive(Debug, Clone)]
pub struct TurnRequest {
    pub session_id: SessionId,
    pub user_id: UserId,
    pub text: String,
    pub turn_id: TurnId,
    pub interaction_type: String,
    pub metadata: HashMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct TurnRunner {
    config: Arc<Config>,
    store: Store,
    dispatcher: Dispatcher,
    guard: SafetyGuard,
    instance: String,
    /// New for every process start; see [`crate::store::LockToken`].
    incarnation: String,
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
        config: Arc<Config>,
        store: Store,
        dispatcher: Dispatcher,
        guard: SafetyGuard,
        instance: String,
    ) -> Self {
        Self {
            config,
            store,
            dispatcher,
            guard,
            instance,
            incarnation: uuid::Uuid::now_v7().simple().to_string(),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// A session with default settings, for `ProcessUserInput` on an unknown session id.
    pub fn new_session(&self, session_id: &SessionId, user_id: &UserId) -> pb::Session {
        let now = now_timestamp();
        pb::Session {
            session_id: session_id.to_string(),
            user_id: user_id.to_string(),
            character_name: String::new(),
            world_id: self.config.gateway.default_world.clone(),
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
            metadata: HashMap::new(),
        }
    }

    pub async fn run(&self, request: TurnRequest) -> Result<pb::ProcessUserInputResponse, Error> {
        let session_key = request.session_id.as_str();
        let turn_key = request.turn_id.as_str();
        if let Some(mut done) = self.store.response(session_key, turn_key).await? {
            done.replayed = true;
            return Ok(done);
        }

        let budget = self.config.gateway.turn_timeout;
        let token = crate::store::LockToken {
            replica: self.instance.clone(),
            incarnation: self.incarnation.clone(),
            turn: request.turn_id.to_string(),
        };
        if !self
            .store
            .lock(session_key, &token, budget * 2, budget * 3)
            .await?
        {
            return Err(Error::Busy(format!(
                "session {} is busy with another turn (retry after 100 ms)",
                request.session_id
            )));
        }
        let outcome = self.run_locked(&request).await;
        if let Err(err) = self.store.unlock(session_key, &token).await {
            tracing::warn!(session = %request.session_id, error = %err, "cannot release the session lock; it expires by itself");
        }
        outcome
    }

    async fn run_locked(
        &self,
        request: &TurnRequest,
    ) -> Result<pb::ProcessUserInputResponse, Error> {
        let started = Instant::now();
        let session_key = request.session_id.as_str();
        let turn_key = request.turn_id.as_str();
        // Another replica may have finished this turn while we waited for the lock.
        if let Some(mut done) = self.store.response(session_key, turn_key).await? {
            done.replayed = true;
            return Ok(done);
        }
        let mut session = match self.store.load_session(session_key).await? {
            Some(session) => session,
            None => {
                let session = self.new_session(&request.session_id, &request.user_id);
                self.store.create_session(&session).await?;
                session
            }
        };
        if session.user_id != request.user_id.as_str() {
            return Err(Error::PermissionDenied(format!(
                "user_id: session {} belongs to another user",
                request.session_id
            )));
        }
        if session.state == pb::SessionState::Ended as i32 {
            return Err(Error::FailedPrecondition(format!(
                "session {} has ended",
                request.session_id
            )));
        }

        let run_id = run_id(&request.session_id, &request.turn_id);
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
            };
            // The player's words of a crisis are not fed back into the story's context.
            return self
                .finish(request, session, response, started, false)
                .await;
        }

        let history = self
            .store
            .history(session_key, self.config.gateway.history_window)
            .await?;
        let mut metadata = request.metadata.clone();
        if !history.is_empty() {
            metadata.insert("history".to_owned(), history.join("\n"));
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
        };
        let earlier: HashMap<String, pb::AgentResult> = self
            .store
            .step_results(session_key, turn_key)
            .await?
            .into_iter()
            .filter(|result| result.status == pb::AgentResultStatus::Succeeded as i32)
            .map(|result| (result.step_id.clone(), result))
            .collect();

        let mut upstream: Vec<pb::StepOutput> = Vec::new();
        let mut progress = Progress {
            timings: vec![screen_timing],
            degraded_reasons: Vec::new(),
        };
        for (step_id, agent_type) in STEPS {
            let step_started = Instant::now();
            let remaining = self
                .config
                .gateway
                .turn_timeout
                .saturating_sub(started.elapsed());
            let result = match earlier.get(step_id) {
                Some(result) => Ok(result.clone()),
                None if remaining.is_zero() => Err(DispatchError::Timeout),
                None => {
                    let task = pb::AgentTask {
                        task_id: format!("{run_id}:{step_id}"),
                        run_id: run_id.clone(),
                        turn_id: request.turn_id.to_string(),
                        session_id: request.session_id.to_string(),
                        step_id: step_id.to_owned(),
                        agent_type: agent_type.to_owned(),
                        workflow: COLLABORATIVE.to_owned(),
                        turn: Some(context.clone()),
                        upstream: upstream.clone(),
                        params: None,
                        deadline: Some(prost_types::Timestamp::from(SystemTime::now() + remaining)),
                        attempt: 1,
                        reply_topic: String::new(),
                        alternative: None,
                    };
                    self.dispatcher.run(task, remaining).await
                }
            };
            let (outcome, output) = match result {
                Ok(result) if result.status == pb::AgentResultStatus::Succeeded as i32 => {
                    (pb::StepOutcome::Succeeded, result.output)
                }
                Ok(result) => {
                    let reason = result.error.map(|error| error.message).unwrap_or_default();
                    progress
                        .degraded_reasons
                        .push(format!("{step_id}: failed: {reason}"));
                    (pb::StepOutcome::Failed, None)
                }
                Err(DispatchError::Timeout) => {
                    progress
                        .degraded_reasons
                        .push(format!("{step_id}: no answer in time"));
                    (pb::StepOutcome::TimedOut, None)
                }
                Err(DispatchError::Publish(status)) => {
                    progress
                        .degraded_reasons
                        .push(format!("{step_id}: cannot dispatch: {}", status.message()));
                    (pb::StepOutcome::Failed, None)
                }
            };
            let elapsed = step_started.elapsed();
            metrics::histogram!("tta_gateway_step_duration_seconds", "agent" => agent_type, "outcome" => outcome.as_str_name())
                .record(elapsed.as_secs_f64());
            progress.timings.push(pb::StepTiming {
                step_id: step_id.to_owned(),
                agent_type: agent_type.to_owned(),
                duration: prost_types::Duration::try_from(elapsed).ok(),
                outcome: outcome as i32,
                attempts: 1,
                agent: None,
            });
            match output {
                Some(mut output) => {
                    // The gateway's screen is the safety verdict of record; later steps read it
                    // from the IPA's output like the rest of the input's understanding.
                    if let Some(pb::agent_output::Kind::Ipa(ipa)) = output.kind.as_mut() {
                        ipa.safety = Some(input_safety.clone());
                    }
                    upstream.push(pb::StepOutput {
                        step_id: step_id.to_owned(),
                        agent_type: agent_type.to_owned(),
                        output: Some(output),
                    });
                }
                // Later steps depend on this one: stop and answer with the fallback.
                None => break,
            }
        }

        let review = ReplyReview {
            request,
            run_id: &run_id,
            context: &context,
            policy: &policy,
            deadline: started + self.config.gateway.turn_timeout,
        };
        self.review_narrative(&review, &mut upstream, &mut progress)
            .await?;

        let response = compose_response(
            request,
            &run_id,
            &upstream,
            input_safety,
            progress,
            started.elapsed(),
            session.version,
        );
        self.finish(request, session, response, started, true).await
    }

    /// Records the turn's response as the one answer to its `turn_id`, then advances the
    /// session. If another attempt recorded first, its response wins and is returned.
    async fn finish(
        &self,
        request: &TurnRequest,
        mut session: pb::Session,
        response: pb::ProcessUserInputResponse,
        started: Instant,
        remember_input: bool,
    ) -> Result<pb::ProcessUserInputResponse, Error> {
        let session_key = request.session_id.as_str();
        let turn_key = request.turn_id.as_str();
        if let Some(mut first) = self
            .store
            .record_response(session_key, turn_key, &response)
            .await?
        {
            first.replayed = true;
            return Ok(first);
        }
        session.version = response.session_version;
        session.last_turn_id = request.turn_id.to_string();
        session.updated_at = Some(now_timestamp());
        self.store.save_session(&session).await?;
        if remember_input {
            self.store
                .push_history(
                    session_key,
                    &request.text,
                    self.config.gateway.history_window,
                )
                .await?;
        }
        let status = if response.degraded { "degraded" } else { "ok" };
        let workflow = if response.workflow == CRISIS_PROTOCOL {
            CRISIS_PROTOCOL
        } else {
            COLLABORATIVE
        };
        metrics::counter!("tta_gateway_turns_total", "workflow" => workflow, "status" => status)
            .increment(1);
        metrics::histogram!("tta_gateway_turn_duration_seconds", "workflow" => workflow)
            .record(started.elapsed().as_secs_f64());
        Ok(response)
    }

    /// Validates the narrative before the player reads it: a blocked reply goes back to the NGA
    /// for an alternative (each one a task of its own, so a resumed turn reuses answers already
    /// given), and when none passes the safe fallback is shown, the turn is degraded and the
    /// repeated blocks are escalated.
    async fn review_narrative(
        &self,
        review: &ReplyReview<'_>,
        upstream: &mut [pb::StepOutput],
        progress: &mut Progress,
    ) -> Result<(), Error> {
        let Some(index) = upstream.iter().position(|step| {
            matches!(
                step.output.as_ref().and_then(|output| output.kind.as_ref()),
                Some(pb::agent_output::Kind::Nga(_))
            )
        }) else {
            return Ok(());
        };
        let Some(pb::agent_output::Kind::Nga(nga)) = upstream[index]
            .output
            .as_ref()
            .and_then(|output| output.kind.as_ref())
        else {
            return Ok(());
        };
        let reviewed_started = Instant::now();
        let step = upstream[index].clone();
        let before: Vec<pb::StepOutput> = upstream[..index].to_vec();
        let rejected = Mutex::new(nga.text.clone());
        let validated = self
            .guard
            .validate_reply(review.policy, nga.text.clone(), |regeneration| {
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
                let step_id = format!("{}.alt{}", step.step_id, regeneration.attempt);
                let remaining = review.deadline.saturating_duration_since(Instant::now());
                let task = pb::AgentTask {
                    task_id: format!("{}:{step_id}", review.run_id),
                    run_id: review.run_id.to_owned(),
                    turn_id: review.request.turn_id.to_string(),
                    session_id: review.request.session_id.to_string(),
                    step_id,
                    agent_type: step.agent_type.clone(),
                    workflow: COLLABORATIVE.to_owned(),
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
                };
                let rejected = &rejected;
                async move {
                    let text = self.alternative_text(task, remaining).await?;
                    if let Ok(mut last) = rejected.lock() {
                        last.clone_from(&text);
                    }
                    Ok::<String, String>(text)
                }
            })
            .await;
        progress
            .timings
            .push(gateway_timing("safety.output", reviewed_started.elapsed()));
        if validated.regenerations == 0 {
            return Ok(());
        }
        if let Some(pb::agent_output::Kind::Nga(nga)) = upstream[index]
            .output
            .as_mut()
            .and_then(|output| output.kind.as_mut())
        {
            nga.text = validated.text.clone();
            if validated.used_fallback {
                nga.suggestions.clear();
            }
        }
        if validated.used_fallback {
            progress.degraded_reasons.push(format!(
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
        }
        Ok(())
    }

    /// Asks the agent for an alternative and returns its text.
    async fn alternative_text(
        &self,
        task: pb::AgentTask,
        remaining: Duration,
    ) -> Result<String, String> {
        if remaining.is_zero() {
            return Err("no time left in the turn".to_owned());
        }
        match self.dispatcher.run(task, remaining).await {
            Ok(result) if result.status == pb::AgentResultStatus::Succeeded as i32 => {
                match result.output.and_then(|output| output.kind) {
                    Some(pb::agent_output::Kind::Nga(nga)) => Ok(nga.text),
                    _ => Err("the alternative carried no narrative".to_owned()),
                }
            }
            Ok(result) => Err(result
                .error
                .map(|error| error.message)
                .unwrap_or_else(|| "the agent failed".to_owned())),
            Err(DispatchError::Timeout) => Err("no alternative in time".to_owned()),
            Err(DispatchError::Publish(status)) => Err(status.message().to_owned()),
        }
    }
}

/// What a turn has done so far: how long each step took, and why the reply is degraded if it is.
struct Progress {
    timings: Vec<pb::StepTiming>,
    degraded_reasons: Vec<String>,
}

/// What the narrative review needs to know about its turn.
struct ReplyReview<'a> {
    request: &'a TurnRequest,
    run_id: &'a str,
    context: &'a pb::TurnContext,
    policy: &'a tta_safety::SessionPolicy,
    deadline: Instant,
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

fn compose_response(
    request: &TurnRequest,
    run_id: &str,
    upstream: &[pb::StepOutput],
    safety: pb::SafetyAssessment,
    progress: Progress,
    elapsed: Duration,
    previous_version: u64,
) -> pb::ProcessUserInputResponse {
    let mut text = None;
    let mut world = None;
    let mut suggestions = Vec::new();
    let mut version = previous_version;
    for step in upstream {
        match step.output.as_ref().and_then(|output| output.kind.as_ref()) {
            Some(pb::agent_output::Kind::Wba(wba)) => {
                world = wba.world.clone();
                version = wba.version.max(previous_version);
            }
            Some(pb::agent_output::Kind::Nga(nga)) => {
                text = Some(nga.text.clone());
                suggestions = nga.suggestions.clone();
            }
            _ => {}
        }
    }
    let Progress {
        timings,
        degraded_reasons,
    } = progress;
    let degraded = text.is_none() || !degraded_reasons.is_empty();
    pb::ProcessUserInputResponse {
        turn_id: request.turn_id.to_string(),
        text: text.unwrap_or_else(|| FALLBACK_REPLY.to_owned()),
        safety: Some(safety),
        degraded,
        timings,
        total_duration: prost_types::Duration::try_from(elapsed).ok(),
        session_version: version,
        session_id: request.session_id.to_string(),
        run_id: run_id.to_owned(),
        workflow: COLLABORATIVE.to_owned(),
        workflow_version: 1,
        replayed: false,
        degraded_reasons,
        world,
        suggestions,
    }
}
