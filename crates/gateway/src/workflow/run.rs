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
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use futures::{StreamExt, future::BoxFuture, stream::FuturesUnordered};
use tta_proto::v1 as pb;

use super::{
    definition::{Fallback, Step, Workflow},
    view::StepScope,
};
use tta_runtime::breaker::Permit;

use crate::{
    dispatch::{DispatchError, Dispatcher, HeldResults},
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
    /// Agents may hand outputs on to the next steps of a line themselves
    /// ([`Step::hand_on_to`]). Off when each step's start and end is reported as it happens.
    pub hand_on: bool,
    /// Where the results this run receives wait for the turn's response before they are
    /// recorded.
    pub held: &'a HeldResults,
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
    /// How long the step took when it ran inside a chain: the run only sees the chain's end.
    took: Option<Duration>,
}

/// What the chains of a run brought back: results of steps after the dispatched one, by step
/// id, with how long each took, kept until the run reaches their steps.
#[derive(Default)]
struct Arrivals {
    results: Mutex<HashMap<String, (pb::AgentResult, Duration)>>,
    /// A chain was dispatched: a later step's task may already be out.
    handed_on: AtomicBool,
}

impl Arrivals {
    fn take(&self, step: &str) -> Option<(pb::AgentResult, Duration)> {
        self.results.lock().ok()?.remove(step)
    }

    /// The result of task `task_id` in `answer` (the answer itself, or one of the results
    /// chained into it), with how long it took when it ran in a chain. The results of the steps
    /// it handed on to are kept for their turn.
    fn own_result(
        &self,
        mut answer: pb::AgentResult,
        task_id: &str,
        dispatched_at: SystemTime,
    ) -> Option<(pb::AgentResult, Option<Duration>)> {
        if answer.chained.is_empty() {
            return Some((answer, None));
        }
        let mut line = std::mem::take(&mut answer.chained);
        line.push(answer);
        let position = line.iter().position(|result| result.task_id == task_id)?;
        let mut previous = dispatched_at;
        let mut own = None;
        let mut results = self.results.lock().ok()?;
        for (index, result) in line.into_iter().enumerate() {
            let finished = result
                .finished_at
                .and_then(|at| SystemTime::try_from(at).ok());
            // Each step of a chain took from the end of the one before to its own end.
            let took = finished
                .and_then(|finished| finished.duration_since(previous).ok())
                .or_else(|| {
                    result
                        .duration
                        .and_then(|duration| Duration::try_from(duration).ok())
                })
                .unwrap_or_default();
            if let Some(finished) = finished {
                previous = finished;
            }
            match index.cmp(&position) {
                std::cmp::Ordering::Less => {}
                std::cmp::Ordering::Equal => own = Some((result, Some(took))),
                std::cmp::Ordering::Greater => {
                    results.insert(result.step_id.clone(), (result, took));
                }
            }
        }
        own
    }
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
            took: None,
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
    let arrivals = Arrivals::default();
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
                    let (input, arrivals) = (&input, &arrivals);
                    running.push(Box::pin(async move {
                        let started = Instant::now();
                        let run =
                            run_with_fallback(dispatcher, input, arrivals, step, upstream).await;
                        let elapsed = run.took.unwrap_or_else(|| started.elapsed());
                        (step, run, elapsed)
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
        let had_output = run.output.is_some();
        if let Some(mut output) = run.output.take() {
            if let Some(pb::agent_output::Kind::Ipa(ipa)) = output.kind.as_mut() {
                ipa.safety = Some(input.input_safety.clone());
            }
            outputs.insert(step.id.clone(), output);
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
            _ if !had_output && step.continue_on_failure => outcome
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
            outputs.remove(&step.id).map(|output| pb::StepOutput {
                step_id: step.id.clone(),
                agent_type: step.agent_type.clone(),
                output: Some(output),
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
    arrivals: &Arrivals,
    step: &Step,
    upstream: Vec<pb::StepOutput>,
) -> StepRun {
    let first = run_attempts(dispatcher, input, arrivals, step, upstream.clone()).await;
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
            took: None,
        },
        Some(Fallback::Step(target)) => {
            let Some(target) = input.workflow.step(target) else {
                return first;
            };
            let second = run_attempts(dispatcher, input, arrivals, target, upstream).await;
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
                took: None,
            }
        }
    }
}

/// One step with its retries. A permanent failure is not retried.
async fn run_attempts(
    dispatcher: &Dispatcher,
    input: &RunInput<'_>,
    arrivals: &Arrivals,
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
            took: None,
        };
    }
    let mut last_error = String::new();
    let mut last_outcome = pb::StepOutcome::Failed;
    let mut first_attempt = 1;
    let arrived = arrivals.take(&step.id);
    if let Some((result, took)) = arrived {
        // The step ran in a chain an earlier step handed on to; its answer counts as an attempt
        // (a handed-on task is a first attempt; the number comes from the agent, so it is kept
        // within the step's attempts).
        let attempt = result.attempt.clamp(1, step.max_retries + 1);
        match judge(result, attempt, Some(took)) {
            Ok(run) => return run,
            Err(error) => {
                first_attempt = attempt.saturating_add(1);
                last_error = error;
            }
        }
    }
    let attempts = step.max_retries + 1;
    for attempt in first_attempt..=attempts {
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
        // A first attempt of a fresh turn lets the agents hand the output on along the line; a
        // retry goes step by step, as the tasks of the first attempt's chain may still be out.
        let plan = if input.hand_on && !input.resumed && attempt == 1 {
            plan_chain(dispatcher, input.workflow, step).await
        } else {
            None
        };
        let (chained, chain_permit) =
            plan.map_or((Vec::new(), None), |(line, permit)| (line, Some(permit)));
        // A chain answers when its last step is done.
        let wait = chained
            .iter()
            .fold(budget, |total, next| total.saturating_add(next.timeout))
            .min(remaining);
        let task_id = tta_runtime::agents::task_id(input.run_id, &step.id);
        let task = pb::AgentTask {
            task_id: task_id.clone(),
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
            next_steps: chained.iter().map(|next| chained_step(next)).collect(),
            chained: Vec::new(),
        };
        // The agent's own breaker learns from a chain only through its answer.
        let agent_permit = if chained.is_empty() {
            Some(permit)
        } else {
            arrivals.handed_on.store(true, Ordering::Relaxed);
            permit.abstain();
            None
        };
        // Results held so far are not the ones this turn ends on.
        input.held.record_now();
        let dispatched_at = SystemTime::now();
        let outcome = dispatcher
            .run_on(
                topic,
                task,
                wait,
                input.priority,
                input.resumed || attempt > 1 || arrivals.handed_on.load(Ordering::Relaxed),
                Some(input.held),
            )
            .await;
        // Any answer shows the agent type is alive; silence or no way to reach it does not. A
        // chain's silence may be any of its agents': it counts against none of them, and opens
        // the chain's own breaker (also when the run's deadline cancels the wait, as a dropped
        // permit counts as a failure), so the line runs step by step for a while.
        match (&outcome, agent_permit) {
            (Ok(_), Some(permit)) => permit.succeeded(),
            (Ok(answer), None) => {
                // Every agent whose result is in the answer answered.
                for result in answer.chained.iter().chain(std::iter::once(answer)) {
                    if let Some(step) = input.workflow.step(&result.step_id) {
                        dispatcher.breakers().report(&step.agent_type, true);
                    }
                }
            }
            (Err(_), Some(permit)) => permit.failed(),
            (Err(DispatchError::Publish(_)), None) => {
                dispatcher.breakers().report(&step.agent_type, false);
            }
            (Err(DispatchError::Timeout), None) => {}
        }
        if let Some(chain_permit) = chain_permit {
            match &outcome {
                Ok(_) => chain_permit.succeeded(),
                Err(_) => chain_permit.failed(),
            }
        }
        let outcome = outcome.map(|answer| arrivals.own_result(answer, &task_id, dispatched_at));
        match outcome {
            Ok(Some((result, took))) => match judge(result, attempt, took) {
                Ok(run) => return run,
                Err(error) => {
                    last_error = error;
                    last_outcome = pb::StepOutcome::Failed;
                }
            },
            Ok(None) => {
                last_error = "the answer of its chain left this step out".to_owned();
                last_outcome = pb::StepOutcome::Failed;
            }
            Err(DispatchError::Timeout) if !chained.is_empty() => {
                let line: Vec<&str> = std::iter::once(step)
                    .chain(chained.iter().copied())
                    .map(|step| step.id.as_str())
                    .collect();
                last_error = format!("no answer in time from the line {}", line.join(" → "));
                last_outcome = pb::StepOutcome::TimedOut;
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

/// How an answer ends an attempt: with the step's run (an output, or a failure another attempt
/// would not fix), or with the error of a failure worth another attempt.
fn judge(result: pb::AgentResult, attempt: u32, took: Option<Duration>) -> Result<StepRun, String> {
    if result.status == pb::AgentResultStatus::Succeeded as i32 {
        return Ok(StepRun {
            outcome: pb::StepOutcome::Succeeded,
            output: result.output,
            attempts: attempt,
            agent: result.agent,
            error: String::new(),
            took,
        });
    }
    let error = format!(
        "failed: {}",
        result.error.map(|error| error.message).unwrap_or_default()
    );
    if result.status == pb::AgentResultStatus::FailedPermanent as i32 {
        return Ok(StepRun {
            outcome: pb::StepOutcome::Failed,
            output: None,
            attempts: attempt,
            agent: result.agent,
            error,
            took,
        });
    }
    Err(error)
}

/// The steps `step`'s agent is to hand its output on to, with the chain breaker's permit: the
/// line after it, up to the first agent type that does not hand on or that the gateway has
/// isolated or is probing. Nothing when `step`'s own type is such a one or the chain's breaker
/// is open.
async fn plan_chain<'w>(
    dispatcher: &Dispatcher,
    workflow: &'w Workflow,
    step: &Step,
) -> Option<(Vec<&'w Step>, Permit)> {
    if step.hand_on_to.is_empty() {
        return None;
    }
    let handing_on = dispatcher.types_handing_on().await;
    let breakers = dispatcher.breakers();
    let usable =
        |agent_type: &str| handing_on.contains(agent_type) && breakers.is_closed(agent_type);
    if !usable(&step.agent_type) {
        return None;
    }
    let line: Vec<&Step> = step
        .hand_on_to
        .iter()
        .map_while(|id| workflow.step(id))
        .take_while(|next| usable(&next.agent_type))
        .collect();
    if line.is_empty() {
        return None;
    }
    // One breaker per workflow: once a chain of it fell silent, no step of it hands on.
    let permit = dispatcher.chain_breakers().admit(&workflow.name)?;
    Some((line, permit))
}

fn chained_step(step: &Step) -> pb::ChainedStep {
    pb::ChainedStep {
        step_id: step.id.clone(),
        agent_type: step.agent_type.clone(),
        params: step.params.clone(),
        timeout: prost_types::Duration::try_from(step.timeout).ok(),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn result(step: &str, finished_ms: u64) -> pb::AgentResult {
        pb::AgentResult {
            task_id: format!("run-1:{step}"),
            step_id: step.to_owned(),
            attempt: 1,
            status: pb::AgentResultStatus::Succeeded as i32,
            finished_at: Some(prost_types::Timestamp::from(
                SystemTime::UNIX_EPOCH + Duration::from_millis(finished_ms),
            )),
            ..Default::default()
        }
    }

    /// The answer of the line ipa → wba → nga dispatched at 1 s, with when each step ended.
    fn chain_answer() -> (pb::AgentResult, SystemTime) {
        let mut answer = result("nga", 1_010);
        answer.chained = vec![result("ipa", 1_003), result("wba", 1_006)];
        (
            answer,
            SystemTime::UNIX_EPOCH + Duration::from_millis(1_000),
        )
    }

    #[test]
    fn a_chains_answer_gives_each_step_its_own_result_and_time() {
        let arrivals = Arrivals::default();
        let (answer, dispatched_at) = chain_answer();

        let (own, took) = arrivals
            .own_result(answer, "run-1:ipa", dispatched_at)
            .unwrap();
        assert_eq!(own.step_id, "ipa");
        assert_eq!(took, Some(Duration::from_millis(3)));
        let (wba, took) = arrivals.take("wba").unwrap();
        assert_eq!(
            (wba.step_id.as_str(), took),
            ("wba", Duration::from_millis(3))
        );
        let (nga, took) = arrivals.take("nga").unwrap();
        assert_eq!(
            (nga.step_id.as_str(), took),
            ("nga", Duration::from_millis(4))
        );
        assert!(arrivals.take("nga").is_none(), "each arrival is taken once");
    }

    #[test]
    fn a_later_step_keeps_only_its_own_part_of_a_chains_answer() {
        let arrivals = Arrivals::default();
        let (answer, dispatched_at) = chain_answer();

        let (own, _) = arrivals
            .own_result(answer.clone(), "run-1:wba", dispatched_at)
            .unwrap();
        assert_eq!(own.step_id, "wba");
        assert!(
            arrivals.take("ipa").is_none(),
            "an earlier step is not handed back"
        );
        assert!(arrivals.take("nga").is_some());
        assert!(
            arrivals
                .own_result(answer, "run-1:other", dispatched_at)
                .is_none(),
            "an answer that leaves the step out is no answer for it"
        );
    }

    #[test]
    fn an_answer_without_a_chain_is_the_steps_own() {
        let arrivals = Arrivals::default();
        let (own, took) = arrivals
            .own_result(result("ipa", 5), "run-1:ipa", SystemTime::UNIX_EPOCH)
            .unwrap();
        assert_eq!((own.step_id.as_str(), took), ("ipa", None));
    }

    #[test]
    fn a_retryable_answer_asks_for_another_attempt_and_a_permanent_one_ends_the_step() {
        let mut retryable = result("wba", 0);
        retryable.status = pb::AgentResultStatus::FailedRetryable as i32;
        retryable.error = Some(pb::AgentError {
            code: "busy".to_owned(),
            message: "try later".to_owned(),
        });
        assert_eq!(
            judge(retryable.clone(), 1, None).err().as_deref(),
            Some("failed: try later")
        );
        retryable.status = pb::AgentResultStatus::FailedPermanent as i32;
        let run = judge(retryable, 2, None).unwrap();
        assert_eq!(run.outcome, pb::StepOutcome::Failed);
        assert_eq!(run.attempts, 2);
        assert!(run.output.is_none());
    }
}
