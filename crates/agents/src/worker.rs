//! The runtime every agent worker shares: consume `agent.<type>` from the broker, run the
//! engine, and settle the task with its `AgentResult` as a reply — the broker stores the result
//! on the task's reply topic and only then acks — so a worker killed mid-task means the task is
//! redelivered to another instance, never lost. Also keeps the worker's entry in the agent
//! registry fresh with heartbeats that carry its load and task figures ([`stats`]).

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use futures::future::BoxFuture;
use prost::Message;
use tta_proto::v1 as pb;
use tta_runtime::{
    Shutdown,
    messaging::{Handler, Settle},
};
use tta_types::AgentId;

mod chain;
pub mod stats;

use stats::{LoadMeter, Outcome, TaskStats};

/// Why an engine could not produce an output for a task.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TaskError {
    /// Worth another attempt (a store or backend was unavailable).
    #[error("{0}")]
    Retryable(String),
    /// The task itself is wrong; another attempt fails the same way.
    #[error("{0}")]
    Permanent(String),
}

/// What a worker asks of its engine. Engines that keep state (the WBA) load and save it here.
pub trait TaskRunner: Send + Sync {
    fn run<'a>(
        &'a self,
        task: &'a pb::AgentTask,
    ) -> BoxFuture<'a, Result<pb::AgentOutput, TaskError>>;
}

/// One worker process's identity and plumbing.
pub struct Worker {
    agent: AgentId,
    runner: Arc<dyn TaskRunner>,
    task_timeout: Duration,
    /// What its handlers record and its heartbeat reports.
    stats: Arc<TaskStats>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("agent", &self.agent)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// A worker whose engine is `runner`; a task without an output after `task_timeout` is
    /// given back for another attempt.
    pub fn new(agent: AgentId, runner: Arc<dyn TaskRunner>, task_timeout: Duration) -> Worker {
        Worker {
            agent,
            runner,
            task_timeout,
            stats: Arc::default(),
        }
    }

    /// The figures of every task its handlers ran, for the heartbeat.
    pub fn stats(&self) -> Arc<TaskStats> {
        self.stats.clone()
    }

    /// The broker handler: decode, run (bounded by the task timeout), publish, then settle.
    pub fn handler(self: Arc<Self>) -> Handler {
        Arc::new(move |delivery: pb::Delivery| {
            let worker = self.clone();
            Box::pin(async move { worker.handle(delivery).await })
        })
    }

    async fn handle(&self, delivery: pb::Delivery) -> Settle {
        let stats = &self.stats;
        // Held from the first line: a delivery occupies a slot even when it is rejected.
        let _in_flight = stats.start();
        let (payload, priority) = delivery
            .message
            .map(|message| {
                let priority =
                    pb::Priority::try_from(message.priority).unwrap_or(pb::Priority::Normal);
                (message.payload, priority)
            })
            .unwrap_or_default();
        let task = match pb::AgentTask::decode(payload) {
            Ok(task) => task,
            Err(err) => return Settle::Reject(format!("undecodable AgentTask: {err}")),
        };
        if task.reply_topic.is_empty() {
            return Settle::Reject(format!("task {} has no reply_topic", task.task_id));
        }
        let agent_type = self.agent.agent_type.to_string();
        let started = Instant::now();
        let run = tokio::time::timeout(self.task_timeout, self.runner.run(&task)).await;
        let elapsed = started.elapsed();
        let (counted, outcome) = match run {
            Ok(Ok(output)) => (Outcome::Succeeded, Ok(output)),
            Ok(Err(err)) => (Outcome::Failed, Err(err)),
            Err(_) => (
                Outcome::TimedOut,
                Err(TaskError::Retryable(format!(
                    "no output within {:?}",
                    self.task_timeout
                ))),
            ),
        };
        stats.record(counted, elapsed, started + elapsed);
        let status = match &outcome {
            Ok(_) => "succeeded",
            Err(TaskError::Retryable(_)) => "retryable",
            Err(TaskError::Permanent(_)) => "failed",
        };
        metrics::histogram!("tta_agent_task_duration_seconds", "agent" => agent_type.clone(), "status" => status)
            .record(elapsed.as_secs_f64());
        metrics::counter!("tta_agent_tasks_total", "agent" => agent_type, "status" => status)
            .increment(1);

        let (status, output, error) = match outcome {
            Ok(output) => (pb::AgentResultStatus::Succeeded, Some(output), None),
            // A retryable failure is redelivered (and retried with backoff) by the broker.
            Err(TaskError::Retryable(reason)) => {
                tracing::warn!(task = %task.task_id, error = %reason, "task failed; it will be retried");
                return Settle::Retry(reason);
            }
            Err(TaskError::Permanent(reason)) => (
                pb::AgentResultStatus::FailedPermanent,
                None,
                Some(pb::AgentError {
                    code: "invalid_task".to_owned(),
                    message: reason,
                }),
            ),
        };
        let result = pb::AgentResult {
            task_id: task.task_id.clone(),
            run_id: task.run_id.clone(),
            turn_id: task.turn_id.clone(),
            session_id: task.session_id.clone(),
            step_id: task.step_id.clone(),
            attempt: task.attempt,
            agent: Some(pb::AgentId::from(&self.agent)),
            status: status as i32,
            output,
            error,
            duration: prost_types::Duration::try_from(elapsed).ok(),
            finished_at: Some(prost_types::Timestamp::from(SystemTime::now())),
            chained: Vec::new(),
        };
        // The broker publishes the outgoing message and acks the task in one step.
        Settle::Reply(Box::new(chain::hand_on(task, result, priority)))
    }
}

/// What a worker tells the registry about itself beyond its id.
#[derive(Debug, Clone)]
pub struct Advertised {
    /// Capability tags, e.g. `ipa` and `llm`.
    pub capabilities: Vec<String>,
    /// Free-form labels, e.g. `backend` and `model`; `host` is added from [`Self::host`].
    pub labels: std::collections::HashMap<String, String>,
    /// The host it runs on (label `host`), so workers and the gateway can judge its placement.
    pub host: String,
    /// Whether it has stopped taking tasks (its host is critical); shown as DRAINING.
    pub paused: tokio::sync::watch::Receiver<bool>,
    /// Most tasks it runs at once (the prefetch of its two topics); the scale of its `load`.
    pub max_in_flight: u32,
    /// The figures its handlers record, reported with every beat.
    pub stats: Arc<TaskStats>,
}

/// Builds each beat's registry entry: what never changes once, the figures fresh every time.
#[derive(Debug)]
struct Beats {
    info: pb::AgentInfo,
    stats: Arc<TaskStats>,
    load: LoadMeter,
}

impl Beats {
    fn new(agent: &AgentId, advertised: Advertised, started: SystemTime, now: Instant) -> Beats {
        let info = pb::AgentInfo {
            id: Some(pb::AgentId::from(agent)),
            capabilities: advertised.capabilities,
            labels: {
                let mut labels = advertised.labels;
                labels.insert("host".to_owned(), advertised.host);
                labels
            },
            topic: format!("agent.{}", agent.agent_type),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at: Some(prost_types::Timestamp::from(started)),
            max_in_flight: advertised.max_in_flight,
            ..Default::default()
        };
        Beats {
            info,
            stats: advertised.stats,
            load: LoadMeter::new(advertised.max_in_flight, now),
        }
    }

    /// The entry to write at `now` (`wall` is the same moment on the clock the registry shows).
    fn next(&mut self, paused: bool, now: Instant, wall: SystemTime) -> pb::AgentInfo {
        let snapshot = self.stats.snapshot(now);
        let mut beat = self.info.clone();
        beat.last_heartbeat = Some(prost_types::Timestamp::from(wall));
        beat.status = if paused {
            pb::AgentStatus::Draining
        } else {
            pb::AgentStatus::Ready
        } as i32;
        beat.in_flight = snapshot.in_flight;
        beat.load = self.load.load(snapshot.busy, now);
        beat.stats = Some(snapshot.stats);
        beat
    }
}

/// Keeps this worker visible in the agent registry: a key per instance that expires unless
/// refreshed, plus an index set for listing.
pub async fn heartbeat(
    connection: redis::aio::ConnectionManager,
    keys: tta_runtime::redis::Keyspace,
    agent: AgentId,
    advertised: Advertised,
    interval: Duration,
    ttl: Duration,
    shutdown: Shutdown,
) {
    let mut paused = advertised.paused.clone();
    let mut beats = Beats::new(&agent, advertised, SystemTime::now(), Instant::now());
    let mut connection = connection;
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            // A pause or resume is announced at once, not at the next beat.
            Ok(()) = paused.changed() => {}
            () = shutdown.wait() => break,
        }
        let is_paused = *paused.borrow_and_update();
        let beat = beats.next(is_paused, Instant::now(), SystemTime::now());
        let written = tta_runtime::agents::put(&mut connection, &keys, &beat, ttl).await;
        if let Err(err) = written {
            tracing::debug!(error = %err, "heartbeat failed; will retry");
        }
    }
    // Leaving cleanly: no ghost entry until the TTL runs out.
    let _ = tta_runtime::agents::remove(
        &mut connection,
        &keys,
        agent.agent_type.as_str(),
        &agent.instance,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use tokio::sync::Notify;
    use tta_types::AgentType;

    use super::*;

    /// Answers each task as its `step_id` says: `ok`, `retry`, `fail`, `wait` (succeeds once
    /// `release` is notified) or anything else (never answers).
    struct Scripted {
        release: Arc<Notify>,
    }

    impl TaskRunner for Scripted {
        fn run<'a>(
            &'a self,
            task: &'a pb::AgentTask,
        ) -> BoxFuture<'a, Result<pb::AgentOutput, TaskError>> {
            Box::pin(async move {
                match task.step_id.as_str() {
                    "ok" => Ok(pb::AgentOutput::default()),
                    "retry" => Err(TaskError::Retryable("store away".to_owned())),
                    "fail" => Err(TaskError::Permanent("bad task".to_owned())),
                    "wait" => {
                        self.release.notified().await;
                        Ok(pb::AgentOutput::default())
                    }
                    _ => futures::future::pending().await,
                }
            })
        }
    }

    /// A worker on [`Scripted`], and the handle that releases its `wait` tasks.
    fn worker(task_timeout: Duration) -> (Arc<Worker>, Arc<Notify>) {
        let release = Arc::new(Notify::new());
        let worker = Worker::new(
            AgentId::new(AgentType::Ipa, "ipa-1").unwrap(),
            Arc::new(Scripted {
                release: release.clone(),
            }),
            task_timeout,
        );
        (Arc::new(worker), release)
    }

    fn delivery(payload: Vec<u8>) -> pb::Delivery {
        pb::Delivery {
            message: Some(pb::BrokerMessage {
                payload: payload.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn task(step: &str) -> pb::Delivery {
        let task = pb::AgentTask {
            task_id: format!("run-1:{step}"),
            run_id: "run-1".to_owned(),
            step_id: step.to_owned(),
            reply_topic: "reply.run-1".to_owned(),
            ..Default::default()
        };
        delivery(task.encode_to_vec())
    }

    /// (succeeded, failed, timed out, in flight)
    fn counts(stats: &TaskStats) -> (u64, u64, u64, u32) {
        let snapshot = stats.snapshot(Instant::now());
        (
            snapshot.stats.tasks_succeeded,
            snapshot.stats.tasks_failed,
            snapshot.stats.tasks_timed_out,
            snapshot.in_flight,
        )
    }

    #[tokio::test]
    async fn each_task_is_counted_by_how_it_ended_and_gives_its_slot_back() {
        let (worker, _) = worker(Duration::from_millis(20));
        let stats = worker.stats();
        let settled = [
            worker.handle(task("ok")).await,
            worker.handle(task("retry")).await,
            worker.handle(task("fail")).await,
            worker.handle(task("hang")).await,
        ];
        assert!(matches!(settled[0], Settle::Reply(_)));
        assert!(matches!(settled[1], Settle::Retry(_)));
        assert!(matches!(settled[2], Settle::Reply(_)));
        assert!(matches!(&settled[3], Settle::Retry(why) if why.starts_with("no output within")));
        assert_eq!(counts(&stats), (1, 2, 1, 0));
        assert_eq!(stats.snapshot(Instant::now()).stats.error_rate, 0.75);
    }

    #[tokio::test]
    async fn a_rejected_delivery_gives_its_slot_back_and_counts_as_no_task() {
        let (worker, _) = worker(Duration::from_millis(20));
        let stats = worker.stats();
        let undecodable = worker.handle(delivery(vec![0xff, 0xff])).await;
        assert!(matches!(undecodable, Settle::Reject(_)));
        let no_reply_topic = pb::AgentTask {
            task_id: "run-1:ok".to_owned(),
            step_id: "ok".to_owned(),
            ..Default::default()
        };
        let unanswerable = worker
            .handle(delivery(no_reply_topic.encode_to_vec()))
            .await;
        assert!(matches!(unanswerable, Settle::Reject(_)));
        assert_eq!(counts(&stats), (0, 0, 0, 0));
    }

    #[tokio::test]
    async fn a_running_task_is_in_flight_until_it_ends_or_is_cancelled() {
        let (worker, release) = worker(Duration::from_secs(30));
        let stats = worker.stats();
        let handler = worker.handler();
        let wait_for = |wanted: u32| {
            let stats = stats.clone();
            async move {
                let reached = async {
                    while stats.snapshot(Instant::now()).in_flight != wanted {
                        tokio::task::yield_now().await;
                    }
                };
                tokio::time::timeout(Duration::from_secs(5), reached)
                    .await
                    .unwrap();
            }
        };

        let finishing = tokio::spawn(handler(task("wait")));
        wait_for(1).await;
        // Stopped short while its runner is blocked, as when the consumer shuts down.
        let cancelled = tokio::spawn(handler(task("hang")));
        wait_for(2).await;
        cancelled.abort();
        wait_for(1).await;

        release.notify_one();
        assert!(matches!(finishing.await.unwrap(), Settle::Reply(_)));
        assert_eq!(counts(&stats), (1, 0, 0, 0));
    }

    #[test]
    fn a_beat_reports_status_load_in_flight_and_stats() {
        let stats = Arc::new(TaskStats::default());
        let (_, paused) = tokio::sync::watch::channel(false);
        let advertised = Advertised {
            capabilities: vec!["ipa".to_owned()],
            labels: [("backend".to_owned(), "builtin".to_owned())].into(),
            host: "host-a".to_owned(),
            paused,
            max_in_flight: 4,
            stats: stats.clone(),
        };
        let agent = AgentId::new(AgentType::Ipa, "ipa-1").unwrap();
        let start = Instant::now();
        let mut beats = Beats::new(&agent, advertised, SystemTime::UNIX_EPOCH, start);

        // Over 10 s: 8 s of work across 4 slots, 2 s of it failing; one task still running.
        stats.record(Outcome::Succeeded, Duration::from_secs(6), start);
        stats.record(Outcome::Failed, Duration::from_secs(2), start);
        let _running = stats.start();
        let beat = beats.next(false, start + Duration::from_secs(10), SystemTime::now());

        assert_eq!(beat.status, pb::AgentStatus::Ready as i32);
        assert_eq!(beat.max_in_flight, 4);
        assert_eq!(beat.in_flight, 1);
        assert_eq!(beat.load, 0.2);
        assert_eq!(beat.labels.get("host").map(String::as_str), Some("host-a"));
        assert_eq!(beat.topic, "agent.ipa");
        let reported = beat.stats.unwrap();
        assert_eq!(reported.tasks_succeeded, 1);
        assert_eq!(reported.tasks_failed, 1);
        assert_eq!(reported.error_rate, 0.5);
        assert_eq!(
            reported.latency_p95,
            prost_types::Duration::try_from(Duration::from_secs(6)).ok()
        );

        // Nothing finished in the next 10 s, and the worker was told to pause.
        let beat = beats.next(true, start + Duration::from_secs(20), SystemTime::now());
        assert_eq!(beat.status, pb::AgentStatus::Draining as i32);
        assert_eq!(beat.load, 0.0);
    }
}
