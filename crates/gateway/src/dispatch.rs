//! Sends agent tasks through the broker and waits for their results.
//!
//! Each gateway replica consumes its own reply topic (`results.<instance>`). A result is handed
//! to the waiting turn if there is one, and its delivery is acked only once the result is
//! durable: written to the turn's run record in Redis, or superseded by the turn's final
//! response. A turn that records its response within [`RECORD_GRACE`] of a result's arrival
//! releases it ([`HeldResults::superseded`]), and the result needs no record of its own: every
//! retry of the turn gets that response. Otherwise the result is written to the run record
//! before the ack, and a gateway that restarted mid-turn finds it there when the client retries
//! the turn. The turn goes on while the write is under way; if the write then fails (or the
//! gateway dies before it) a retried turn runs that step again. The world changes of a turn
//! are applied once whatever runs again (the WBA keeps each turn's output), and the first
//! answer recorded for a turn is the one every retry gets.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use prost::Message;
use tokio::sync::oneshot;
use tta_proto::v1 as pb;
use tta_runtime::messaging::{Handler, Outgoing, Publisher, Settle};

use tta_types::config::CircuitBreakerConfig;

use crate::{breaker::Breakers, store::Store};

pub use tta_runtime::agents::task_topic;

#[derive(Debug)]
pub enum DispatchError {
    /// The broker refused or could not take the task.
    Publish(tonic::Status),
    /// No result within the step's time budget.
    Timeout,
}

/// How long a result waits for its turn's final response before it is written to the run
/// record. A turn answers within milliseconds of its last result; the wait stays far below the
/// reply topic's two-second lease, after which the broker would deliver the result again.
pub const RECORD_GRACE: Duration = Duration::from_millis(500);

/// A result as its waiting turn receives it, with the means to say the turn's response made
/// its record redundant.
type Arrival = (pb::AgentResult, oneshot::Sender<()>);

/// The results a turn received, held back from the run record until the turn's response is
/// recorded ([`Self::superseded`]). Dropping them without that lets each be recorded. Only
/// the results a turn ends on are held for long: each new dispatch lets the earlier ones be
/// recorded ([`Self::record_now`]), as their delivery slots are the reply topic's prefetch.
#[derive(Debug, Default)]
pub struct HeldResults(Mutex<Vec<oneshot::Sender<()>>>);

impl HeldResults {
    fn hold(&self, release: oneshot::Sender<()>) {
        if let Ok(mut held) = self.0.lock() {
            held.push(release);
        }
    }

    /// The turn goes on to dispatch more work: the results held so far are not its last, so
    /// they are written to the run record now rather than after [`RECORD_GRACE`], and free
    /// their delivery slots at once.
    pub fn record_now(&self) {
        if let Ok(mut held) = self.0.lock() {
            held.clear();
        }
    }

    /// The turn's final response is recorded: the results it ran on need no record of their
    /// own.
    pub fn superseded(&self) {
        if let Ok(mut held) = self.0.lock() {
            for release in held.drain(..) {
                let _ = release.send(());
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct Dispatcher {
    publisher: Publisher,
    store: Store,
    reply_topic: String,
    waiters: Arc<Mutex<HashMap<String, oneshot::Sender<Arrival>>>>,
    breakers: Arc<Breakers>,
    chain_breakers: Arc<Breakers>,
    handing_on: Arc<Mutex<HandingOn>>,
}

/// How often the agent types that hand outputs on are read again from the agent registry.
const HANDING_ON_REFRESH: Duration = Duration::from_secs(1);

/// The agent types whose every live instance hands outputs on, as last read.
#[derive(Debug, Default)]
struct HandingOn {
    read_at: Option<tokio::time::Instant>,
    types: Arc<HashSet<String>>,
}

impl Dispatcher {
    pub fn new(
        publisher: Publisher,
        store: Store,
        reply_topic: String,
        breaker: CircuitBreakerConfig,
    ) -> Self {
        Self {
            publisher,
            store,
            reply_topic,
            waiters: Arc::new(Mutex::new(HashMap::new())),
            breakers: Arc::new(Breakers::new(breaker.clone())),
            chain_breakers: Arc::new(Breakers::for_chains(breaker)),
            handing_on: Arc::default(),
        }
    }

    /// The circuit breakers of the chains this gateway sends (see [`Breakers::for_chains`]).
    pub fn chain_breakers(&self) -> &Breakers {
        &self.chain_breakers
    }

    /// The agent types a step may be handed on to: every live instance advertises
    /// `tta_runtime::agents::NEXT_STEPS_CAPABILITY`. Read from the agent registry at most once a
    /// second; while the registry cannot be read, the last answer stands.
    pub async fn types_handing_on(&self) -> Arc<HashSet<String>> {
        let now = tokio::time::Instant::now();
        let cached = match self.handing_on.lock() {
            Ok(handing_on) => {
                if handing_on
                    .read_at
                    .is_some_and(|read_at| now.duration_since(read_at) < HANDING_ON_REFRESH)
                {
                    return handing_on.types.clone();
                }
                handing_on.types.clone()
            }
            Err(_) => return Arc::default(),
        };
        let types = match self.store.agents().await {
            Ok(agents) => Arc::new(tta_runtime::agents::types_handing_on(&agents)),
            Err(err) => {
                tracing::debug!(error = %err, "cannot read the agent registry; keeping the agent types that hand on");
                cached
            }
        };
        if let Ok(mut handing_on) = self.handing_on.lock() {
            handing_on.read_at = Some(now);
            handing_on.types = types.clone();
        }
        types
    }

    /// The circuit breakers of the agent types this gateway dispatches to.
    pub fn breakers(&self) -> &Breakers {
        &self.breakers
    }

    pub fn reply_topic(&self) -> &str {
        &self.reply_topic
    }

    /// The topic of one live, ready instance of `agent_type` that advertises every one of
    /// `capabilities`, chosen by [`less_busy_of_two`]; `None` when there is none.
    pub async fn capable_topic(
        &self,
        agent_type: &str,
        capabilities: &[String],
    ) -> Result<Option<String>, crate::error::Error> {
        let agents = self.store.agents().await?;
        let candidates: Vec<(&pb::AgentInfo, &str)> =
            tta_runtime::agents::capable(&agents, agent_type, capabilities).collect();
        Ok(less_busy_of_two(&candidates, &mut fastrand::Rng::new()).map(str::to_owned))
    }

    /// Publishes `task` to its agent type's topic and waits up to `timeout` for its result.
    /// `maybe_answered` says an earlier attempt may have published the same task, so its result
    /// may already be stored.
    pub async fn run(
        &self,
        task: pb::AgentTask,
        timeout: Duration,
        priority: pb::Priority,
        maybe_answered: bool,
    ) -> Result<pb::AgentResult, DispatchError> {
        let topic = task_topic(&task.agent_type);
        self.run_on(topic, task, timeout, priority, maybe_answered, None)
            .await
    }

    /// Like [`Self::run`], on a given topic (one instance's own, for capability matching).
    /// With `held`, the result's record waits for the turn's response (see [`HeldResults`]).
    pub async fn run_on(
        &self,
        topic: String,
        mut task: pb::AgentTask,
        timeout: Duration,
        priority: pb::Priority,
        maybe_answered: bool,
        held: Option<&HeldResults>,
    ) -> Result<pb::AgentResult, DispatchError> {
        task.reply_topic = self.reply_topic.clone();
        let (sender, receiver) = oneshot::channel();
        let task_id = task.task_id.clone();
        if let Ok(mut waiters) = self.waiters.lock() {
            waiters.insert(task_id.clone(), sender);
        }
        let message = Outgoing {
            topic,
            // The same task published twice (a retried turn) is enqueued once.
            idempotency_key: Some(tta_runtime::agents::task_idempotency_key(
                &task_id,
                task.attempt,
            )),
            payload: task.encode_to_vec(),
            content_type: tta_runtime::agents::TASK_CONTENT_TYPE.to_owned(),
            priority,
            headers: HashMap::new(),
        };
        let (session, turn, step) = (
            task.session_id.clone(),
            task.turn_id.clone(),
            task.step_id.clone(),
        );
        let outcome = match self.publisher.publish(message).await {
            Err(status) => Err(DispatchError::Publish(status)),
            Ok(_) => {
                // The result may have arrived before the waiter existed (a retried turn whose
                // task was answered while no gateway waited): with no waiter it is stored
                // before it is acked, and the waiter was registered before this read, so
                // nothing falls between. (A result an earlier attempt held and that attempt's
                // response never superseded is written within RECORD_GRACE, or its step runs
                // again.) A task published for the first time cannot have been answered yet.
                let stored = if maybe_answered {
                    self.store
                        .step_result(&session, &turn, &step)
                        .await
                        .ok()
                        .flatten()
                } else {
                    None
                };
                match stored {
                    Some(result) => Ok(result),
                    None => match tokio::time::timeout(timeout, receiver).await {
                        Ok(Ok((result, release))) => {
                            if let Some(held) = held {
                                held.hold(release);
                            }
                            Ok(result)
                        }
                        _ => Err(DispatchError::Timeout),
                    },
                }
            }
        };
        if let Ok(mut waiters) = self.waiters.lock() {
            waiters.remove(&task_id);
        }
        outcome
    }

    /// The handler of the reply topic: hand the result to its waiting turn, then ack once the
    /// turn's response superseded it or, failing that within [`RECORD_GRACE`], once it is
    /// written to the run record. The turn goes on meanwhile; the ack waits, so a result is
    /// never lost, and a turn that outlives a crash is retried from the record or its answer.
    /// The answer of a chain (`AgentTask.next_steps`) goes to the turn waiting for the chain's
    /// first task, and each chained step's result is recorded with it.
    pub fn result_handler(&self) -> Handler {
        let dispatcher = self.clone();
        Arc::new(move |delivery: pb::Delivery| {
            let dispatcher = dispatcher.clone();
            Box::pin(async move {
                let payload = delivery
                    .message
                    .map(|message| message.payload)
                    .unwrap_or_default();
                let result = match pb::AgentResult::decode(payload.clone()) {
                    Ok(result) => result,
                    Err(err) => return Settle::Reject(format!("undecodable AgentResult: {err}")),
                };
                // A chain's answer is awaited by the turn that dispatched one of its tasks.
                let waiter = dispatcher.waiters.lock().ok().and_then(|mut waiters| {
                    std::iter::once(&result.task_id)
                        .chain(result.chained.iter().map(|chained| &chained.task_id))
                        .find_map(|task| waiters.remove(task))
                });
                let result = match waiter {
                    None => result,
                    Some(waiter) => {
                        let (release, released) = oneshot::channel();
                        if waiter.send((result, release)).is_ok()
                            && matches!(
                                tokio::time::timeout(RECORD_GRACE, released).await,
                                Ok(Ok(()))
                            )
                        {
                            return Settle::Ack;
                        }
                        // The turn took the decoded result; recording is the rare case, so
                        // the records are built from the delivery's bytes only now.
                        match pb::AgentResult::decode(payload.clone()) {
                            Ok(result) => result,
                            Err(err) => {
                                return Settle::Reject(format!("undecodable AgentResult: {err}"));
                            }
                        }
                    }
                };
                let first_task = result
                    .chained
                    .first()
                    .map_or_else(|| result.task_id.clone(), |first| first.task_id.clone());
                let (session, turn) = (result.session_id.clone(), result.turn_id.clone());
                if let Err(err) = dispatcher
                    .store
                    .record_steps(&session, &turn, step_records(result, &payload))
                    .await
                {
                    tracing::warn!(task = %first_task, error = %err, "cannot record a step result; will retry");
                    return Settle::Retry(err.to_string());
                }
                Settle::Ack
            })
        })
    }
}

/// Of two candidates drawn at random, the less busy one. Loads are read from heartbeats
/// seconds apart: always taking the least loaded would send every step of every gateway to the
/// same instance until the next beat, while two random choices spread the work and still keep
/// it off the busiest.
fn less_busy_of_two<'a>(
    candidates: &[(&pb::AgentInfo, &'a str)],
    rng: &mut fastrand::Rng,
) -> Option<&'a str> {
    let (first, second) = match candidates.len() {
        0 => return None,
        1 => (0, 0),
        count => {
            let first = rng.usize(..count);
            // Two different ones, so the busiest of several is never the pick.
            let second = rng.usize(..count - 1);
            (first, second + usize::from(second >= first))
        }
    };
    let busyness = |index: usize| tta_runtime::agents::busyness(candidates[index].0);
    let chosen = if busyness(second) < busyness(first) {
        second
    } else {
        first
    };
    Some(candidates[chosen].1)
}

/// The run-record entries of an answer, by step id: each step's record holds its own result,
/// the chained ones theirs (`payload` is the answer as delivered).
fn step_records(mut answer: pb::AgentResult, payload: &[u8]) -> Vec<(String, Vec<u8>)> {
    let chained = std::mem::take(&mut answer.chained);
    let own = if chained.is_empty() {
        payload.to_vec()
    } else {
        answer.encode_to_vec()
    };
    chained
        .iter()
        .map(|result| (result.step_id.clone(), result.encode_to_vec()))
        .chain(std::iter::once((answer.step_id, own)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_spread_over_the_less_busy_instances_and_never_reach_the_busiest() {
        let instance = |load: f64, in_flight: u32| pb::AgentInfo {
            load,
            in_flight,
            max_in_flight: 8,
            ..Default::default()
        };
        // Busy by finished work, idle, and idle by load but with every slot taken.
        let (busy, idle, stuck) = (instance(0.9, 0), instance(0.0, 0), instance(0.0, 8));
        let quiet = instance(0.1, 1);
        let candidates = [
            (&busy, "busy"),
            (&idle, "idle"),
            (&stuck, "stuck"),
            (&quiet, "quiet"),
        ];
        let mut rng = fastrand::Rng::with_seed(7);
        let mut picked = std::collections::HashMap::new();
        for _ in 0..400 {
            let topic = less_busy_of_two(&candidates, &mut rng).unwrap();
            *picked.entry(topic).or_insert(0) += 1;
        }
        assert!(!picked.contains_key("stuck"), "{picked:?}");
        assert!(picked["idle"] > picked["quiet"], "{picked:?}");
        assert!(
            picked["quiet"] > 0 && picked.get("busy").copied().unwrap_or(0) > 0,
            "not every step goes to the idlest: {picked:?}"
        );
        assert_eq!(less_busy_of_two(&candidates[..1], &mut rng), Some("busy"));
        assert_eq!(less_busy_of_two(&[], &mut rng), None);
    }

    fn result(step: &str) -> pb::AgentResult {
        pb::AgentResult {
            task_id: format!("run-1:{step}"),
            session_id: "s1".to_owned(),
            turn_id: "t1".to_owned(),
            step_id: step.to_owned(),
            status: pb::AgentResultStatus::Succeeded as i32,
            ..Default::default()
        }
    }

    /// The answer of `step`, carrying the results of the steps chained before it.
    fn answer(step: &str, chained: &[&str]) -> pb::Delivery {
        let result = pb::AgentResult {
            chained: chained.iter().map(|step| result(step)).collect(),
            ..result(step)
        };
        pb::Delivery {
            message: Some(pb::BrokerMessage {
                payload: result.encode_to_vec().into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    async fn recorded(store: &Store, step: &str) -> anyhow::Result<Option<pb::AgentResult>> {
        Ok(store.step_result("s1", "t1", step).await?)
    }

    #[tokio::test]
    async fn a_result_is_recorded_before_its_ack_unless_the_turns_response_supersedes_it()
    -> anyhow::Result<()> {
        let redis = tta_testkit::RedisServer::start()?;
        let store = Store::on(&redis, "held-results").await?;
        let dispatcher = Dispatcher::new(
            Publisher::connect_lazy("http://127.0.0.1:9")?,
            store.clone(),
            "results.test".to_owned(),
            CircuitBreakerConfig::default(),
        );
        let handler = dispatcher.result_handler();
        let wait_for = |task: &str| {
            let (sender, receiver) = oneshot::channel();
            if let Ok(mut waiters) = dispatcher.waiters.lock() {
                waiters.insert(task.to_owned(), sender);
            }
            receiver
        };

        // The turn recorded its response: the result is acked without a record of its own.
        let waiting = wait_for("run-1:ipa");
        let settling = tokio::spawn(handler(answer("ipa", &[])));
        let (result, release) = waiting.await?;
        assert_eq!(result.step_id, "ipa");
        let held = HeldResults::default();
        held.hold(release);
        held.superseded();
        assert_eq!(settling.await?, Settle::Ack);
        assert!(recorded(&store, "ipa").await?.is_none());

        // The turn ended without a response of record: each result of the chain's answer is
        // written, each step's record holding its own result, then the answer is acked.
        let waiting = wait_for("run-1:wba");
        let settling = tokio::spawn(handler(answer("nga", &["wba"])));
        let (result, release) = waiting.await?;
        assert_eq!(result.chained.len(), 1);
        drop(HeldResults(Mutex::new(vec![release])));
        assert_eq!(settling.await?, Settle::Ack);
        assert!(recorded(&store, "wba").await?.is_some());
        let last = recorded(&store, "nga")
            .await?
            .ok_or_else(|| anyhow::anyhow!("the chain's last step is recorded"))?;
        assert!(last.chained.is_empty(), "{last:?}");

        // The turn goes on to other work: what it held is written at once.
        let waiting = wait_for("run-1:mood");
        let settling = tokio::spawn(handler(answer("mood", &[])));
        let (_, release) = waiting.await?;
        let held = HeldResults::default();
        held.hold(release);
        held.record_now();
        assert_eq!(
            tokio::time::timeout(RECORD_GRACE / 2, settling).await??,
            Settle::Ack,
            "written without waiting out the grace"
        );
        assert!(recorded(&store, "mood").await?.is_some());

        // The turn neither answers nor lets go within the grace: the result is written anyway,
        // well before the broker's lease would deliver it again.
        let waiting = wait_for("run-1:slow");
        let settling = tokio::spawn(handler(answer("slow", &[])));
        let (_, _kept) = waiting.await?;
        assert_eq!(
            tokio::time::timeout(RECORD_GRACE * 3, settling).await??,
            Settle::Ack
        );
        assert!(recorded(&store, "slow").await?.is_some());

        // A result nobody waits for any more is written at once.
        assert_eq!(handler(answer("alt1", &[])).await, Settle::Ack);
        assert!(recorded(&store, "alt1").await?.is_some());
        Ok(())
    }
}
