//! Handing a step's output on to the next step of a linear run (`AgentTask.next_steps`): the
//! worker publishes the next step's task itself instead of answering the orchestrator, which
//! saves a round trip through the broker and the gateway per step. A failure, and the last
//! step, answer on the reply topic with the results of every step chained before.

use std::time::SystemTime;

use prost::Message;
use tta_proto::v1 as pb;
use tta_runtime::{agents, messaging::Outgoing};

/// What `result`, the outcome of `task`, sends on: the next step's task for its agent type's
/// topic, or the answer on the task's reply topic. `priority` is the task's own, kept by the
/// tasks it hands on to.
pub fn hand_on(
    task: pb::AgentTask,
    mut result: pb::AgentResult,
    priority: pb::Priority,
) -> Outgoing {
    if let Some(output) = result.output.as_mut() {
        carry_input_safety(output, task.turn.as_ref());
    }
    let succeeded = result.status == pb::AgentResultStatus::Succeeded as i32;
    let mut steps = task.next_steps.into_iter();
    let next = if succeeded { steps.next() } else { None };
    let Some(next) = next else {
        result.chained = with_outputs(task.chained, &task.upstream);
        return Outgoing {
            // A redelivered task answers once.
            idempotency_key: Some(format!("result.{}.{}", result.task_id, result.attempt)),
            topic: task.reply_topic,
            payload: result.encode_to_vec(),
            content_type: agents::RESULT_CONTENT_TYPE.to_owned(),
            priority: pb::Priority::High,
            headers: Default::default(),
        };
    };

    let mut upstream = task.upstream;
    upstream.push(pb::StepOutput {
        step_id: result.step_id.clone(),
        agent_type: task.agent_type,
        output: result.output.take(),
    });
    let mut chained = task.chained;
    chained.push(result);
    let task_id = agents::task_id(&task.run_id, &next.step_id);
    let deadline = next
        .timeout
        .and_then(|timeout| std::time::Duration::try_from(timeout).ok())
        .and_then(|timeout| SystemTime::now().checked_add(timeout))
        .map(prost_types::Timestamp::from)
        .or(task.deadline);
    let idempotency_key = agents::handed_on_idempotency_key(&task_id);
    let handed_on = pb::AgentTask {
        task_id,
        run_id: task.run_id,
        turn_id: task.turn_id,
        session_id: task.session_id,
        step_id: next.step_id,
        agent_type: next.agent_type.clone(),
        workflow: task.workflow,
        turn: task.turn,
        upstream,
        params: next.params,
        deadline,
        attempt: 1,
        reply_topic: task.reply_topic,
        alternative: None,
        next_steps: steps.collect(),
        chained,
    };
    Outgoing {
        topic: agents::task_topic(&next.agent_type),
        payload: handed_on.encode_to_vec(),
        content_type: agents::TASK_CONTENT_TYPE.to_owned(),
        priority,
        // A redelivered task hands on once, when the broker stores what it hands on.
        idempotency_key: Some(idempotency_key),
        headers: Default::default(),
    }
}

/// The orchestrator's verdict on the player's text goes into an IPA output that reaches later
/// steps without passing through the orchestrator, as it would have put it there itself.
fn carry_input_safety(output: &mut pb::AgentOutput, turn: Option<&pb::TurnContext>) {
    if let Some(pb::agent_output::Kind::Ipa(ipa)) = output.kind.as_mut()
        && let Some(verdict) = turn.and_then(|turn| turn.input_safety.as_ref())
    {
        ipa.safety = Some(verdict.clone());
    }
}

/// The chained results with their outputs, which travelled in `upstream` to keep tasks small.
fn with_outputs(
    chained: Vec<pb::AgentResult>,
    upstream: &[pb::StepOutput],
) -> Vec<pb::AgentResult> {
    chained
        .into_iter()
        .map(|mut result| {
            if result.output.is_none() {
                result.output = upstream
                    .iter()
                    .find(|step| step.step_id == result.step_id)
                    .and_then(|step| step.output.clone());
            }
            result
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chained_step(id: &str) -> pb::ChainedStep {
        pb::ChainedStep {
            step_id: id.to_owned(),
            agent_type: id.to_owned(),
            params: None,
            timeout: Some(prost_types::Duration {
                seconds: 2,
                nanos: 0,
            }),
        }
    }

    fn task(step: &str, next: &[&str]) -> pb::AgentTask {
        pb::AgentTask {
            task_id: format!("run-1:{step}"),
            run_id: "run-1".to_owned(),
            turn_id: "t1".to_owned(),
            session_id: "s1".to_owned(),
            step_id: step.to_owned(),
            agent_type: step.to_owned(),
            workflow: "collaborative".to_owned(),
            turn: Some(pb::TurnContext {
                text: "look".to_owned(),
                input_safety: Some(pb::SafetyAssessment {
                    level: pb::SafetyLevel::Moderate as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            attempt: 2,
            reply_topic: "results.gw-1".to_owned(),
            next_steps: next.iter().map(|id| chained_step(id)).collect(),
            ..Default::default()
        }
    }

    fn succeeded(task: &pb::AgentTask, output: pb::AgentOutput) -> pb::AgentResult {
        pb::AgentResult {
            task_id: task.task_id.clone(),
            step_id: task.step_id.clone(),
            attempt: task.attempt,
            status: pb::AgentResultStatus::Succeeded as i32,
            output: Some(output),
            ..Default::default()
        }
    }

    fn ipa_output() -> pb::AgentOutput {
        pb::AgentOutput {
            kind: Some(pb::agent_output::Kind::Ipa(pb::IpaOutput {
                intent: "look".to_owned(),
                ..Default::default()
            })),
        }
    }

    fn nga_output() -> pb::AgentOutput {
        pb::AgentOutput {
            kind: Some(pb::agent_output::Kind::Nga(pb::NgaOutput {
                text: "The harbour is quiet.".to_owned(),
                ..Default::default()
            })),
        }
    }

    fn handed_on(outgoing: Outgoing) -> (Outgoing, pb::AgentTask) {
        assert_eq!(
            outgoing.content_type,
            agents::TASK_CONTENT_TYPE,
            "expected a handed-on task, sent to {}",
            outgoing.topic
        );
        let task = pb::AgentTask::decode(outgoing.payload.as_slice()).unwrap();
        (outgoing, task)
    }

    /// The topic and result of an answer to the orchestrator.
    fn answer(outgoing: Outgoing, why: &str) -> (String, pb::AgentResult) {
        assert_eq!(outgoing.content_type, agents::RESULT_CONTENT_TYPE, "{why}");
        let result = pb::AgentResult::decode(outgoing.payload.as_slice()).unwrap();
        (outgoing.topic, result)
    }

    #[test]
    fn a_successful_step_hands_its_output_on_to_the_next_step_of_the_chain() {
        let ipa = task("ipa", &["wba", "nga"]);
        let result = succeeded(&ipa, ipa_output());
        let (outgoing, wba) = handed_on(hand_on(ipa, result, pb::Priority::High));

        assert_eq!(outgoing.topic, "agent.wba");
        assert_eq!(outgoing.priority, pb::Priority::High);
        assert_eq!(
            outgoing.idempotency_key.as_deref(),
            Some("task.run-1:wba.1.handed-on")
        );
        assert_eq!(wba.task_id, "run-1:wba");
        assert_eq!(wba.step_id, "wba");
        assert_eq!(wba.attempt, 1);
        assert_eq!(wba.reply_topic, "results.gw-1");
        assert_eq!(wba.turn.as_ref().unwrap().text, "look");
        let rest: Vec<&str> = wba.next_steps.iter().map(|s| s.step_id.as_str()).collect();
        assert_eq!(rest, ["nga"]);
        assert!(wba.deadline.is_some());
        // The output travels once, in upstream, with the orchestrator's verdict on the input.
        assert_eq!(wba.upstream.len(), 1);
        let Some(pb::agent_output::Kind::Ipa(carried)) =
            wba.upstream[0].output.as_ref().unwrap().kind.as_ref()
        else {
            panic!("upstream lost the IPA output");
        };
        assert_eq!(carried.intent, "look");
        assert_eq!(
            carried.safety.as_ref().unwrap().level,
            pb::SafetyLevel::Moderate as i32
        );
        assert_eq!(wba.chained.len(), 1);
        assert_eq!(wba.chained[0].step_id, "ipa");
        assert_eq!(wba.chained[0].attempt, 2);
        assert!(wba.chained[0].output.is_none());
    }

    #[test]
    fn the_last_step_answers_with_every_chained_result_and_its_output() {
        let ipa = task("ipa", &["nga"]);
        let result = succeeded(&ipa, ipa_output());
        let (_, nga) = handed_on(hand_on(ipa, result, pb::Priority::Normal));
        let result = succeeded(&nga, nga_output());
        let (reply_topic, result) = answer(
            hand_on(nga, result, pb::Priority::Normal),
            "the last step must answer",
        );
        assert_eq!(reply_topic, "results.gw-1");
        assert_eq!(result.step_id, "nga");
        assert_eq!(result.chained.len(), 1);
        assert_eq!(result.chained[0].step_id, "ipa");
        assert!(matches!(
            result.chained[0].output.as_ref().unwrap().kind,
            Some(pb::agent_output::Kind::Ipa(_))
        ));
    }

    #[test]
    fn a_failed_step_answers_instead_of_handing_on() {
        let ipa = task("ipa", &["wba"]);
        let result = succeeded(&ipa, ipa_output());
        let (_, wba) = handed_on(hand_on(ipa, result, pb::Priority::Normal));
        let failed = pb::AgentResult {
            task_id: wba.task_id.clone(),
            step_id: "wba".to_owned(),
            status: pb::AgentResultStatus::FailedPermanent as i32,
            ..Default::default()
        };
        let (_, result) = answer(
            hand_on(wba, failed, pb::Priority::Normal),
            "a failure must answer the orchestrator",
        );
        assert_eq!(result.task_id, "run-1:wba");
        assert_eq!(result.chained.len(), 1);
        assert!(result.chained[0].output.is_some());
    }

    #[test]
    fn a_task_without_next_steps_answers_as_before() {
        let nga = task("nga", &[]);
        let result = succeeded(&nga, nga_output());
        let (_, result) = answer(
            hand_on(nga, result, pb::Priority::Normal),
            "a lone task must answer",
        );
        assert!(result.chained.is_empty());
    }
}
