//! Runs a workflow graph for one turn: every step whose dependencies have ended starts at once
//! (independent steps in parallel), a step whose condition is false is skipped, a failed attempt
//! is retried with backoff, then the step's fallback (another step, or a fixed output) stands
//! in; a failure without fallback either stops the run (the turn answers with the fallback
//! reply) or, with `continue_on_failure`, lets dependants run without it. The whole run is
//! bounded by its deadline.
//!
//! Results of steps that already succeeded in an earlier attempt of the turn (a gateway crashed
//! or a client retried) are reused, never dispatched again.

use std::{
    collections::HashMap,
    time::{Duration, Instant, SystemTime},
};

use futures::{StreamExt, future::BoxFuture, stream::FuturesUnordered};
use tta_proto::v1 as pb;

use super::{
    definition::{Fallback, Step, Workflow},
    view::StepScope,
};
use crate::{
    dispatch::{DispatchError, Dispatcher},
    events::EventSink,
};

/// Everything a run needs to know about its turn.
#[derive(Debug)]
pub struct RunInput<'a> {
    pub workflow: &'a Workflow,
    pub run_id: &'a str,
    pub session_id: &'a str,
    pub turn_id: &'a str,
    pub context: &'a pb::TurnContext,
    /// Results that succeeded in an earlier attempt of this turn, by step id.
    pub earlier: &'a HashMap<String, pb::AgentResult>,
    pub deadline: Instant,
    pub priority: pb::Priority,
    /// The gateway's verdict on the input, handed to later steps inside the IPA's output.
    pub input_safety: &'a pb::SafetyAssessment,
    pub events: &'a EventSink,
    /// An earlier attempt of this turn ran: results of its tasks may already be stored.
    pub resumed: bool,
}

/// What a run produced.
#[derive(Debug, Default)]
pub struct RunOutcome {
    /// Outputs of the steps that produced one (or whose fallback did), in workflow order.
    pub outputs: Vec<pb::StepOutput>,
    pub timings: Vec<pb::StepTiming>,
    pub degraded_reasons: Vec<String>,
    /// The run stopped before its end (a step failed without fallback, or the deadline passed):
    /// the reply is the fallback reply.
    pub stopped: bool,
}

/// How one step (with its retries) ended.
struct StepRun {
    outcome: pb::StepOutcome,
    output: Option<pb::AgentOutput>,
    attempts: u32,
    agent: Option<pb::AgentId>,
    error: String,
}

impl StepRun {
    /// A step that ended with nothing to pass on (skipped, timed out, failed).
    fn without_output(outcome: pb::StepOutcome, attempts: u32, error: impl Into<String>) -> Self {
        Self {
            outcome,
            output: None,
            attempts,
            agent: None,
            error: error.into(),
        }
    }
}

enum State {
    Waiting,
    Running,
    Ended,
}

pub async fn run(dispatcher: &Dispatcher, input: RunInput<'_>) -> RunOutcome {
    let workflow = input.workflow;
    let mut states: HashMap<&str, State> = workflow
        .steps
        .iter()
        .filter(|step| !step.fallback_only)
        .map(|step| (step.id.as_str(), State::Waiting))
        .collect();
    let mut outputs: HashMap<String, pb::AgentOutput> = HashMap::new();
    let mut outcome = RunOutcome::default();
    let mut running: FuturesUnordered<BoxFuture<'_, (&Step, StepRun, Duration)>> =
        FuturesUnordered::new();

    loop {
        // Start (or skip) every step whose dependencies have all ended.
        let mut progressed = true;
        while progressed {
            progressed = false;
            for step in &workflow.steps {
                if !matches!(states.get(step.id.as_str()), Some(State::Waiting)) {
                    continue;
                }
                let ready = step.depends_on.iter().all(|dependency| {
                    matches!(states.get(dependency.as_str()), Some(State::Ended) | None)
                });
                if !ready {
                    continue;
                }
                let runs = step
                    .condition
                    .as_ref()
                    .is_none_or(|condition| condition.eval(&StepScope { outputs: &outputs }));
                if runs {
                    states.insert(step.id.as_str(), State::Running);
                    let upstream = upstream_of(step, &outputs, workflow);
                    let input = &input;
                    running.push(Box::pin(async move {
                        let started = Instant::now();
                        let run = run_with_fallback(dispatcher, input, step, upstream).await;
                        (step, run, started.elapsed())
                    }));
                } else {
                    states.insert(step.id.as_str(), State::Ended);
                    progressed = true;
                    outcome.timings.push(timing(
                        step,
                        &StepRun::without_output(pb::StepOutcome::Skipped, 0, ""),
                        Duration::ZERO,
                    ));
                }
            }
        }
        if running.is_empty() {
            break;
        }
        let next = tokio::select! {
            next = running.next() => next,
            () = tokio::time::sleep_until(input.deadline.into()) => None,
        };
        let Some((step, mut run, elapsed)) = next else {
            // The deadline passed with steps still running: they are cancelled with the run.
            for (id, state) in &states {
                if matches!(state, State::Running)
                    && let Some(step) = workflow.step(id)
                {
                    outcome
                        .degraded_reasons
                        .push(format!("{id}: no answer in time"));
                    outcome.timings.push(timing(
                        step,
                        &StepRun::without_output(
                            pb::StepOutcome::TimedOut,
                            1,
                            "the workflow's total_timeout passed",
                        ),
                        input.deadline.saturating_duration_since(Instant::now()),
                    ));
                }
            }
            outcome.stopped = true;
            break;
        };
        states.insert(step.id.as_str(), State::Ended);
        if let Some(output) = run.output.as_mut() {
            if let Some(pb::agent_output::Kind::Ipa(ipa)) = output.kind.as_mut() {
                ipa.safety = Some(input.input_safety.clone());
            }
            outputs.insert(step.id.clone(), output.clone());
        }
        metrics::histogram!(
            "tta_gateway_step_duration_seconds",
            "agent" => step.agent_type.clone(),
            "outcome" => run.outcome.as_str_name()
        )
        .record(elapsed.as_secs_f64());
        crate::stats::record_step(&step.agent_type, elapsed, run.outcome);
        let step_timing = timing(step, &run, elapsed);
        input.events.step_finished(&step_timing, &run.error);
        outcome.timings.push(step_timing);
        match run.outcome {
            pb::StepOutcome::Succeeded => {}
            pb::StepOutcome::Fallback => outcome
                .degraded_reasons
                .push(format!("{}: fallback used ({})", step.id, run.error)),
            _ if run.output.is_none() && step.continue_on_failure => outcome
                .degraded_reasons
                .push(format!("{}: {} (continued without it)", step.id, run.error)),
            _ => {
                outcome
                    .degraded_reasons
                    .push(format!("{}: {}", step.id, run.error));
                outcome.stopped = true;
                break;
            }
        }
    }

    outcome.outputs = workflow
        .steps
        .iter()
        .filter_map(|step| {
            outputs.get(&step.id).map(|output| pb::StepOutput {
                step_id: step.id.clone(),
                agent_type: step.agent_type.clone(),
                output: Some(output.clone()),
            })
        })
        .collect();
    outcome
}

/// Outputs of the step's dependencies (direct and transitive), in workflow order.
fn upstream_of(
    step: &Step,
    outputs: &HashMap<String, pb::AgentOutput>,
    workflow: &Workflow,
) -> Vec<pb::StepOutput> {
    step.ancestors
        .iter()
        .filter_map(|id| {
            let output = outputs.get(id)?;
            Some(pb::StepOutput {
                step_id: id.clone(),
                agent_type: workflow
                    .step(id)
                    .map(|s| s.agent_type.clone())
                    .unwrap_or_default(),
                output: Some(output.clone()),
            })
        })
        .collect()
}

async fn run_with_fallback(
    dispatcher: &Dispatcher,
    input: &RunInput<'_>,
    step: &Step,
    upstream: Vec<pb::StepOutput>,
) -> StepRun {
    let first = run_attempts(dispatcher, input, step, upstream.clone()).await;
    if first.output.is_some() {
        return first;
    }
    match &step.fallback {
        None => first,
        Some(Fallback::Output(output)) => StepRun {
            outcome: pb::StepOutcome::Fallback,
            output: Some(output.as_ref().clone()),
            attempts: first.attempts,
            agent: None,
            error: first.error,
        },
        Some(Fallback::Step(target)) => {
            let Some(target) = input.workflow.step(target) else {
                return first;
            };
            let second = run_attempts(dispatcher, input, target, upstream).await;
            StepRun {
                outcome: if second.output.is_some() {
                    pb::StepOutcome::Fallback
                } else {
                    second.outcome
                },
                output: second.output,
                attempts: first.attempts + second.attempts,
                agent: second.agent,
                error: if second.error.is_empty() {
                    format!("{}; step {} stood in", first.error, target.id)
                } else {
                    format!(
                        "{}; fallback step {}: {}",
                        first.error, target.id, second.error
                    )
                },
            }
        }
    }
}

/// One step with its retries. A permanent failure is not retried.
async fn run_attempts(
    dispatcher: &Dispatcher,
    input: &RunInput<'_>,
    step: &Step,
    upstream: Vec<pb::StepOutput>,
) -> StepRun {
    if let Some(result) = input.earlier.get(&step.id) {
        return StepRun {
            outcome: pb::StepOutcome::Succeeded,
            output: result.output.clone(),
            attempts: result.attempt.max(1),
            agent: result.agent.clone(),
            error: String::new(),
        };
    }
    let mut last_error = String::new();
    let mut last_outcome = pb::StepOutcome::Failed;
    let attempts = step.max_retries + 1;
    for attempt in 1..=attempts {
        let remaining = input.deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return StepRun::without_output(
                pb::StepOutcome::TimedOut,
                attempt - 1,
                "no time left in the run",
            );
        }
        let budget = step.timeout.min(remaining);
        // A step that needs capabilities goes to one instance that has them (R8.1), chosen
        // afresh for each attempt so a retry can land on another one.
        let topic = if step.required_capabilities.is_empty() {
            crate::dispatch::task_topic(&step.agent_type)
        } else {
            match dispatcher
                .capable_topic(&step.agent_type, &step.required_capabilities)
                .await
            {
                Ok(Some(topic)) => topic,
                Ok(None) => {
                    return StepRun::without_output(
                        pb::StepOutcome::Failed,
                        attempt - 1,
                        format!(
                            "no live {} agent advertises {}",
                            step.agent_type,
                            step.required_capabilities.join(", ")
                        ),
                    );
                }
                Err(err) => {
                    last_error = format!("cannot read the agent registry: {err}");
                    last_outcome = pb::StepOutcome::Failed;
                    if attempt < attempts {
                        tokio::time::sleep(backoff(step.retry_backoff, attempt)).await;
                    }
                    continue;
                }
            }
        };
        let Some(permit) = dispatcher.breakers().admit(&step.agent_type) else {
            return StepRun::without_output(
                pb::StepOutcome::Failed,
                attempt - 1,
                format!(
                    "{} agents are isolated after repeated failures (circuit open)",
                    step.agent_type
                ),
            );
        };
        input.events.step_started(step, attempt);
        let task = pb::AgentTask {
            task_id: format!("{}:{}", input.run_id, step.id),
            run_id: input.run_id.to_owned(),
            turn_id: input.turn_id.to_owned(),
            session_id: input.session_id.to_owned(),
            step_id: step.id.clone(),
            agent_type: step.agent_type.clone(),
            workflow: input.workflow.name.clone(),
            turn: Some(input.context.clone()),
            upstream: upstream.clone(),
            params: step.params.clone(),
            deadline: Some(prost_types::Timestamp::from(SystemTime::now() + budget)),
            attempt,
            reply_topic: String::new(),
            alternative: None,
        };
        let outcome = dispatcher
            .run_on(
                topic,
                task,
                budget,
                input.priority,
                input.resumed || attempt > 1,
            )
            .await;
        // Any answer shows the agent type is alive; silence or no way to reach it does not.
        match &outcome {
            Ok(_) => permit.succeeded(),
            Err(_) => permit.failed(),
        }
        match outcome {
            Ok(result) if result.status == pb::AgentResultStatus::Succeeded as i32 => {
                return StepRun {
                    outcome: pb::StepOutcome::Succeeded,
                    output: result.output,
                    attempts: attempt,
                    agent: result.agent,
                    error: String::new(),
                };
            }
            Ok(result) => {
                last_error = format!(
                    "failed: {}",
                    result.error.map(|error| error.message).unwrap_or_default()
                );
                last_outcome = pb::StepOutcome::Failed;
                if result.status == pb::AgentResultStatus::FailedPermanent as i32 {
                    return StepRun {
                        outcome: last_outcome,
                        output: None,
                        attempts: attempt,
                        agent: result.agent,
                        error: last_error,
                    };
                }
            }
            Err(DispatchError::Timeout) => {
                last_error = "no answer in time".to_owned();
                last_outcome = pb::StepOutcome::TimedOut;
            }
            Err(DispatchError::Publish(status)) => {
                last_error = format!("cannot dispatch: {}", status.message());
                last_outcome = pb::StepOutcome::Failed;
            }
        }
        if attempt < attempts {
            let backoff = backoff(step.retry_backoff, attempt);
            let remaining = input.deadline.saturating_duration_since(Instant::now());
            tokio::time::sleep(backoff.min(remaining)).await;
        }
    }
    StepRun::without_output(last_outcome, attempts, last_error)
}

/// `base · 2^(attempt-1)`, with ±20 % jitter so retries of many turns do not line up.
fn backoff(base: Duration, attempt: u32) -> Duration {
    let exponential = base.saturating_mul(1u32 << (attempt - 1).min(16));
    exponential.mul_f64(0.8 + 0.4 * fastrand::f64())
}

fn timing(step: &Step, run: &StepRun, elapsed: Duration) -> pb::StepTiming {
    pb::StepTiming {
        step_id: step.id.clone(),
        agent_type: step.agent_type.clone(),
        duration: prost_types::Duration::try_from(elapsed).ok(),
        outcome: run.outcome as i32,
        attempts: run.attempts,
        agent: run.agent.clone(),
    }
}
