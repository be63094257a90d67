//! `tta.v1.Broker` over gRPC: validates requests at the edge (INVALID_ARGUMENT names the field)
//! and hands domain values to the [`Engine`].

use std::{pin::Pin, sync::Arc, time::Duration};

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tta_proto::v1::{self as pb, broker_server::Broker};
use tta_runtime::Shutdown;
use tta_types::{FieldViolation, convert::priority_from_proto};

use crate::{
    consumer::{self, Sessions, Settings},
    engine::{Engine, Outgoing, Published, Subscription},
    envelope::{timestamp_from_millis, timestamp_to_millis},
    error::Error,
    handoff,
    outgoing::{self, MAX_DELAY},
    topic::{Receipt, check_name, priority_from_code},
};

pub(crate) const MAX_BATCH: usize = 1000;

const DEFAULT_PREFETCH: u32 = 16;
const MAX_PREFETCH: u32 = 1024;
const DEFAULT_PAGE: u32 = 50;
const MAX_PAGE: u32 = 1000;
const MIN_LEASE: Duration = Duration::from_secs(1);
const MAX_LEASE: Duration = Duration::from_secs(3600);

/// The gRPC face of the broker.
#[derive(Debug, Clone)]
pub struct BrokerService {
    engine: Arc<Engine>,
    sessions: Arc<Sessions>,
    shutdown: Shutdown,
}

impl BrokerService {
    pub fn new(engine: Arc<Engine>, shutdown: Shutdown) -> Self {
        Self {
            engine,
            sessions: Arc::new(Sessions::default()),
            shutdown,
        }
    }

    /// Stores hand-offs that outlived their deadline, until shutdown.
    pub fn handoff_sweeper(
        &self,
    ) -> impl std::future::Future<Output = Result<(), tta_runtime::BoxError>> + Send + 'static {
        handoff::sweep(
            self.engine.clone(),
            self.sessions.handoffs.clone(),
            self.shutdown.clone(),
        )
    }

    /// Checks the messages of a `PublishBatch` request or a publish-stream frame.
    pub(crate) fn validate_batch(
        &self,
        messages: Vec<pb::OutgoingMessage>,
        trace: &outgoing::TraceHeaders,
    ) -> Result<Vec<Result<Outgoing, FieldViolation>>, FieldViolation> {
        outgoing::validate_batch(self.engine.config(), "messages", MAX_BATCH, messages, trace)
    }

    pub(crate) async fn publish_validated(
        &self,
        items: Vec<Result<Outgoing, FieldViolation>>,
    ) -> Vec<pb::PublishResult> {
        let mut results: Vec<Option<pb::PublishResult>> = Vec::with_capacity(items.len());
        let mut valid = Vec::new();
        let mut positions = Vec::new();
        let mut topics = Vec::with_capacity(items.len());
        for (index, item) in items.into_iter().enumerate() {
            match item {
                Ok(outgoing) => {
                    topics.push(outgoing.topic.clone());
                    positions.push(index);
                    valid.push(outgoing);
                    results.push(None);
                }
                Err(violation) => {
                    topics.push(String::new());
                    results.push(Some(pb::PublishResult {
                        code: tonic::Code::InvalidArgument as i32,
                        error: violation.to_string(),
                        ..Default::default()
                    }));
                }
            }
        }
        let published = self.engine.publish(valid).await;
        for (position, outcome) in positions.into_iter().zip(published) {
            let topic = topics.get(position).cloned().unwrap_or_default();
            outgoing::record_publish(&topic, &outcome);
            if let Some(slot) = results.get_mut(position) {
                *slot = Some(publish_result(topic, outcome));
            }
        }
        results.into_iter().flatten().collect()
    }
}

/// Dead-letter ids are stream entry ids (`<ms>-<seq>`).
fn check_dead_letter_id(field: &str, id: &str) -> Result<(), FieldViolation> {
    match crate::envelope::entry_id_millis(id) {
        Some(_) => Ok(()),
        None => Err(FieldViolation::new(field, "is not a dead-letter id")),
    }
}

fn check_dead_letter_ids(ids: &[String]) -> Result<(), FieldViolation> {
    for (index, id) in ids.iter().enumerate() {
        check_dead_letter_id(&format!("ids[{index}]"), id)?;
    }
    Ok(())
}

fn publish_result(topic: String, outcome: Result<Published, Error>) -> pb::PublishResult {
    match outcome {
        Ok(published) => pb::PublishResult {
            topic,
            message_id: published.message_id,
            duplicate: published.duplicate,
            code: 0,
            error: String::new(),
            retry_after: None,
        },
        Err(err) => pb::PublishResult {
            topic,
            message_id: String::new(),
            duplicate: false,
            code: tta_types::ServiceError::error_code(&err).grpc_code() as i32,
            retry_after: err
                .retry_after()
                .and_then(|wait| prost_types::Duration::try_from(wait).ok()),
            error: err.to_string(),
        },
    }
}

/// A batch-level failure (Redis down) becomes the call's status rather than N item errors.
fn batch_failure(results: &[pb::PublishResult]) -> Option<Status> {
    let unavailable = tonic::Code::Unavailable as i32;
    let first = results.first()?;
    (results.iter().all(|result| result.code == unavailable)).then(|| {
        Status::from(Error::Unavailable(
            first
                .error
                .trim_start_matches("redis unavailable: ")
                .to_owned(),
        ))
    })
}

type DeliveryStream = Pin<Box<dyn Stream<Item = Result<pb::Delivery, Status>> + Send>>;
type PublishResponses =
    Pin<Box<dyn Stream<Item = Result<pb::PublishStreamResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Broker for BrokerService {
    async fn publish(
        &self,
        request: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        let message = request
            .into_inner()
            .message
            .ok_or_else(|| FieldViolation::new("message", "is required"))?;
        let outgoing = outgoing::validate(
            self.engine.config(),
            &|| "message".to_owned(),
            message,
            None,
            &outgoing::current_trace_headers(),
        )?;
        let topic = outgoing.topic.clone();
        let mut outcomes = self.engine.publish(vec![outgoing]).await;
        let outcome = outcomes
            .pop()
            .unwrap_or_else(|| Err(Error::Corrupt("no publish result".into())));
        outgoing::record_publish(&topic, &outcome);
        let published = outcome?;
        Ok(Response::new(pb::PublishResponse {
            message_id: published.message_id,
            duplicate: published.duplicate,
            visible_at: Some(timestamp_from_millis(published.visible_at_ms)),
        }))
    }

    async fn publish_batch(
        &self,
        request: Request<pb::PublishBatchRequest>,
    ) -> Result<Response<pb::PublishBatchResponse>, Status> {
        let items = self.validate_batch(
            request.into_inner().messages,
            &outgoing::current_trace_headers(),
        )?;
        let results = self.publish_validated(items).await;
        if let Some(status) = batch_failure(&results) {
            return Err(status);
        }
        Ok(Response::new(pb::PublishBatchResponse { results }))
    }

    type PublishStreamStream = PublishResponses;

    async fn publish_stream(
        &self,
        request: Request<Streaming<pb::PublishStreamRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        let (sender, receiver) = mpsc::channel(64);
        tokio::spawn(crate::publish_stream::run(
            self.clone(),
            request.into_inner(),
            sender,
            self.shutdown.clone(),
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn broadcast(
        &self,
        request: Request<pb::BroadcastRequest>,
    ) -> Result<Response<pb::BroadcastResponse>, Status> {
        let request = request.into_inner();
        if request.topics.is_empty() || request.topics.len() > MAX_BATCH {
            return Err(FieldViolation::new(
                "topics",
                format!("must hold 1 to {MAX_BATCH} topics"),
            )
            .into());
        }
        for (index, topic) in request.topics.iter().enumerate() {
            check_name(&format!("topics[{index}]"), topic)?;
            if request.topics[..index].contains(topic) {
                return Err(FieldViolation::new(
                    format!("topics[{index}]"),
                    format!("duplicates topic {topic}"),
                )
                .into());
            }
        }
        let message = request
            .message
            .ok_or_else(|| FieldViolation::new("message", "is required"))?;
        if !message.topic.is_empty() {
            return Err(FieldViolation::new(
                "message.topic",
                "must be empty; the topics field names the destinations",
            )
            .into());
        }
        let trace = outgoing::current_trace_headers();
        let items = request
            .topics
            .iter()
            .map(|topic| {
                outgoing::validate(
                    self.engine.config(),
                    &|| "message".to_owned(),
                    message.clone(),
                    Some(topic),
                    &trace,
                )
            })
            .collect();
        let results = self.publish_validated(items).await;
        if let Some(status) = batch_failure(&results) {
            return Err(status);
        }
        Ok(Response::new(pb::BroadcastResponse { results }))
    }

    type ConsumeStream = DeliveryStream;

    async fn consume(
        &self,
        request: Request<Streaming<pb::ConsumeRequest>>,
    ) -> Result<Response<Self::ConsumeStream>, Status> {
        let mut frames = request.into_inner();
        let first = frames.message().await?.ok_or_else(|| {
            FieldViolation::new("subscribe", "the stream ended before a subscribe frame")
        })?;
        let Some(pb::consume_request::Frame::Subscribe(subscribe)) = first.frame else {
            return Err(
                FieldViolation::new("subscribe", "the first frame must be subscribe").into(),
            );
        };
        check_name("subscribe.topic", &subscribe.topic)?;
        check_name("subscribe.group", &subscribe.group)?;
        check_name("subscribe.consumer", &subscribe.consumer)?;
        let prefetch = match subscribe.prefetch {
            0 => DEFAULT_PREFETCH,
            n if n > MAX_PREFETCH => {
                return Err(FieldViolation::new(
                    "subscribe.prefetch",
                    format!("at most {MAX_PREFETCH}, got {n}"),
                )
                .into());
            }
            n => n,
        };
        let visibility_timeout = match subscribe.visibility_timeout {
            None => self.engine.config().visibility_timeout,
            Some(lease) => Duration::try_from(lease)
                .ok()
                .filter(|lease| (MIN_LEASE..=MAX_LEASE).contains(lease))
                .ok_or_else(|| {
                    FieldViolation::new("subscribe.visibility_timeout", "must be between 1s and 1h")
                })?,
        };
        let keys = self
            .engine
            .subscribe(&subscribe.topic, &subscribe.group, visibility_timeout)
            .await?;
        tracing::info!(topic = %subscribe.topic, group = %subscribe.group, consumer = %subscribe.consumer, prefetch, "consumer subscribed");

        let settings = Settings {
            subscription: Subscription {
                keys,
                group: subscribe.group,
                consumer: subscribe.consumer,
                visibility_timeout,
            },
            prefetch,
            manual_credit: subscribe.manual_credit,
        };
        let (sender, receiver) = mpsc::channel(prefetch as usize);
        tokio::spawn(consumer::run(
            self.engine.clone(),
            self.sessions.clone(),
            settings,
            frames,
            sender,
            self.shutdown.clone(),
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn ack(
        &self,
        request: Request<pb::AckRequest>,
    ) -> Result<Response<pb::AckResponse>, Status> {
        let raw = request.into_inner().receipts;
        if raw.is_empty() || raw.len() > MAX_BATCH {
            return Err(FieldViolation::new(
                "receipts",
                format!("must hold 1 to {MAX_BATCH} receipts, got {}", raw.len()),
            )
            .into());
        }
        // Stored receipts with their positions in `raw`; hand-offs settle in the broker.
        let (handed, stored): (Vec<(usize, &String)>, Vec<(usize, &String)>) = raw
            .iter()
            .enumerate()
            .partition(|(_, text)| handoff::is_handoff(text));
        let receipts = stored
            .iter()
            .map(|(index, text)| Receipt::parse(&format!("receipts[{index}]"), text))
            .collect::<Result<Vec<_>, _>>()?;
        let unknown: Vec<usize> = self
            .engine
            .ack(&receipts)
            .await?
            .into_iter()
            .filter_map(|position| stored.get(position).map(|(index, _)| *index))
            .collect();
        let heads = self
            .sessions
            .handoffs
            .settled(handed.iter().map(|(_, text)| text.as_str()));
        handoff::ack_heads(&self.engine, heads).await;
        self.sessions.settle(&raw);
        let unknown_receipts: Vec<String> = unknown
            .iter()
            .filter_map(|index| raw.get(*index).cloned())
            .collect();
        let acked = (raw.len() - unknown_receipts.len()) as u32;
        for receipt in &receipts {
            metrics::counter!("tta_broker_acked_total", "topic" => receipt.topic.clone())
                .increment(1);
        }
        Ok(Response::new(pb::AckResponse {
            acked,
            unknown_receipts,
        }))
    }

    async fn nack(
        &self,
        request: Request<pb::NackRequest>,
    ) -> Result<Response<pb::NackResponse>, Status> {
        let request = request.into_inner();
        let permanent = match pb::NackKind::try_from(request.kind) {
            Ok(pb::NackKind::Permanent) => true,
            Ok(pb::NackKind::Transient) => false,
            _ => {
                return Err(FieldViolation::new(
                    "kind",
                    "must be NACK_KIND_TRANSIENT or NACK_KIND_PERMANENT",
                )
                .into());
            }
        };
        let retry_after = match request.retry_after {
            None => None,
            Some(wait) => Some(
                Duration::try_from(wait)
                    .ok()
                    .filter(|wait| *wait <= MAX_DELAY)
                    .ok_or_else(|| {
                        FieldViolation::new("retry_after", "must be between 0 and 24h")
                    })?,
            ),
        };
        if handoff::is_handoff(&request.receipt) {
            // A hand-off is stored on its topic instead, and delivered again from there.
            self.sessions.settle(std::slice::from_ref(&request.receipt));
            handoff::store_nacked(
                &self.engine,
                &self.sessions.handoffs,
                request.receipt,
                permanent,
                retry_after,
            )
            .await;
            return Ok(Response::new(pb::NackResponse {
                dead_lettered: false,
                retry_at: None,
            }));
        }
        let receipt = Receipt::parse("receipt", &request.receipt)?;
        let outcome = self
            .engine
            .nack(&receipt, "", permanent, &request.reason, retry_after)
            .await?;
        consumer::record_nack(&receipt.topic, outcome);
        self.sessions.settle(std::slice::from_ref(&request.receipt));
        Ok(Response::new(pb::NackResponse {
            dead_lettered: outcome == crate::engine::NackOutcome::DeadLettered,
            retry_at: match outcome {
                crate::engine::NackOutcome::RetryScheduled(backoff) => Some(timestamp_from_millis(
                    crate::envelope::now_millis() + backoff.as_millis() as i64,
                )),
                crate::engine::NackOutcome::DeadLettered => None,
            },
        }))
    }

    async fn list_dead_letters(
        &self,
        request: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        let request = request.into_inner();
        check_name("topic", &request.topic)?;
        let page_size = match request.page_size {
            0 => DEFAULT_PAGE,
            n if n > MAX_PAGE => {
                return Err(FieldViolation::new("page_size", format!("at most {MAX_PAGE}")).into());
            }
            n => n,
        };
        let after = (!request.page_token.is_empty()).then_some(request.page_token.as_str());
        if let Some(token) = after
            && crate::envelope::entry_id_millis(token).is_none()
        {
            return Err(
                FieldViolation::new("page_token", "is not a token from a previous page").into(),
            );
        }
        let (letters, total) = self
            .engine
            .dead_letters(&request.topic, after, page_size as usize)
            .await?;
        let next_page_token = if letters.len() == page_size as usize {
            letters
                .last()
                .map(|letter| letter.id.clone())
                .unwrap_or_default()
        } else {
            String::new()
        };
        let dead_letters = letters
            .into_iter()
            .map(|letter| dead_letter_proto(&request.topic, letter))
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(Response::new(pb::ListDeadLettersResponse {
            dead_letters,
            next_page_token,
            total,
        }))
    }

    async fn get_dead_letter(
        &self,
        request: Request<pb::GetDeadLetterRequest>,
    ) -> Result<Response<pb::GetDeadLetterResponse>, Status> {
        let request = request.into_inner();
        check_name("topic", &request.topic)?;
        check_dead_letter_id("id", &request.id)?;
        let letter = self
            .engine
            .dead_letter(&request.topic, &request.id)
            .await?
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "no dead letter {} in topic {}",
                    request.id, request.topic
                ))
            })?;
        Ok(Response::new(pb::GetDeadLetterResponse {
            dead_letter: Some(dead_letter_proto(&request.topic, letter)?),
        }))
    }

    async fn replay_dead_letters(
        &self,
        request: Request<pb::ReplayDeadLettersRequest>,
    ) -> Result<Response<pb::ReplayDeadLettersResponse>, Status> {
        let request = request.into_inner();
        check_name("topic", &request.topic)?;
        match (request.all, request.ids.is_empty()) {
            (true, false) => {
                return Err(FieldViolation::new("ids", "must be empty when all is set").into());
            }
            (false, true) => {
                return Err(FieldViolation::new(
                    "ids",
                    "name the dead letters to replay, or set all",
                )
                .into());
            }
            _ => {}
        }
        check_dead_letter_ids(&request.ids)?;
        let priority = match request.priority {
            0 => None,
            raw => Some(priority_from_proto("priority", raw)?),
        };
        let mut replayed = 0;
        let mut not_found_ids = Vec::new();
        if request.all {
            // In pages, so one call never builds an unbounded script reply.
            loop {
                let (count, _) = self
                    .engine
                    .replay(&request.topic, &[], priority, 500)
                    .await?;
                replayed += count;
                if count < 500 {
                    break;
                }
            }
        } else {
            let (count, missing) = self
                .engine
                .replay(&request.topic, &request.ids, priority, request.ids.len())
                .await?;
            replayed = count;
            not_found_ids = missing;
        }
        metrics::counter!("tta_broker_replayed_total", "topic" => request.topic.clone())
            .increment(replayed);
        Ok(Response::new(pb::ReplayDeadLettersResponse {
            replayed: replayed as u32,
            not_found_ids,
        }))
    }

    async fn purge_dead_letters(
        &self,
        request: Request<pb::PurgeDeadLettersRequest>,
    ) -> Result<Response<pb::PurgeDeadLettersResponse>, Status> {
        let request = request.into_inner();
        check_name("topic", &request.topic)?;
        if !request.all && request.ids.is_empty() && request.older_than.is_none() {
            return Err(FieldViolation::new(
                "ids",
                "name the dead letters to purge, or set all or older_than",
            )
            .into());
        }
        check_dead_letter_ids(&request.ids)?;
        let older_than = request.older_than.as_ref().map(timestamp_to_millis);
        let purged = self
            .engine
            .purge(&request.topic, &request.ids, older_than, request.all)
            .await?;
        Ok(Response::new(pb::PurgeDeadLettersResponse {
            purged: purged as u32,
        }))
    }

    async fn recover_pending(
        &self,
        request: Request<pb::RecoverPendingRequest>,
    ) -> Result<Response<pb::RecoverPendingResponse>, Status> {
        let request = request.into_inner();
        let topics = if request.topic.is_empty() {
            self.engine.topics().await?
        } else {
            check_name("topic", &request.topic)?;
            vec![request.topic]
        };
        let min_idle = request
            .min_idle
            .and_then(|idle| Duration::try_from(idle).ok());
        let mut counts = Vec::with_capacity(topics.len());
        for topic in topics {
            let group = self.engine.group_of(&topic).await?.unwrap_or_default();
            if !request.group.is_empty() && request.group != group {
                continue;
            }
            let reclaimed = self
                .engine
                .reclaim(&topic, min_idle, crate::engine::Sweep::Whole)
                .await?;
            crate::maintenance::record_reclaim(&topic, reclaimed);
            counts.push(pb::RecoveredCount {
                topic,
                group,
                reclaimed: reclaimed.reclaimed,
                dead_lettered: reclaimed.dead_lettered,
            });
        }
        Ok(Response::new(pb::RecoverPendingResponse { counts }))
    }

    async fn get_topic_stats(
        &self,
        request: Request<pb::GetTopicStatsRequest>,
    ) -> Result<Response<pb::GetTopicStatsResponse>, Status> {
        let requested = request.into_inner().topics;
        let topics = if requested.is_empty() {
            self.engine.topics().await?
        } else {
            for (index, topic) in requested.iter().enumerate() {
                check_name(&format!("topics[{index}]"), topic)?;
            }
            requested
        };
        let max_depth = self.engine.config().max_topic_depth;
        let mut stats = Vec::with_capacity(topics.len());
        for topic in topics {
            let topic_stats = self.engine.stats(&topic).await?;
            stats.push(pb::TopicStats {
                topic,
                depth_high: topic_stats.depth[0],
                depth_normal: topic_stats.depth[1],
                depth_low: topic_stats.depth[2],
                delayed: topic_stats.delayed,
                pending: topic_stats.pending,
                dead_letters: topic_stats.dead_letters,
                max_depth,
                oldest_enqueued_at: topic_stats.oldest_enqueued_ms.map(timestamp_from_millis),
                groups: topic_stats
                    .group
                    .map(|group| pb::ConsumerGroupStats {
                        group,
                        consumers: topic_stats.consumers,
                        pending: topic_stats.pending,
                        lag: topic_stats.lag,
                    })
                    .into_iter()
                    .collect(),
            });
        }
        Ok(Response::new(pb::GetTopicStatsResponse { topics: stats }))
    }
}

fn dead_letter_proto(
    topic: &str,
    letter: crate::engine::DeadLetter,
) -> Result<pb::DeadLetter, Error> {
    let extra = &letter.entry.extra;
    let cause = match extra.get("cause").map(String::as_str) {
        Some("max_attempts") => pb::DeadLetterCause::MaxAttempts,
        Some("permanent_nack") => pb::DeadLetterCause::PermanentNack,
        Some("invalid") => pb::DeadLetterCause::Invalid,
        _ => pb::DeadLetterCause::Unspecified,
    };
    let mut message = letter.entry.to_proto(topic, false, true)?;
    // `p` is the stream it was dead-lettered from (a replay may have changed its priority).
    if let Some(priority) = extra.get("p").and_then(|code| priority_from_code(code)) {
        message.priority = pb::Priority::from(priority) as i32;
    }
    Ok(pb::DeadLetter {
        message: Some(message),
        cause: cause as i32,
        reason: extra.get("reason").cloned().unwrap_or_default(),
        group: extra.get("group").cloned().unwrap_or_default(),
        dead_lettered_at: extra
            .get("at")
            .and_then(|at| at.parse::<i64>().ok())
            .map(timestamp_from_millis),
        id: letter.id,
    })
}
