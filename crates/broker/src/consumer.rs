//! One `Consume` stream: a reader task that pushes deliveries while the client has credit, and
//! a frame loop that settles them (ack, nack, extend) and grants credit. The two share a
//! [`Flow`]: the credit counter and the deliveries still in flight.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::{FutureExt, Stream, StreamExt};
use tokio::sync::{Notify, mpsc};
use tta_proto::v1 as pb;
use tta_runtime::Shutdown;

use crate::{
    engine::{Engine, NackOutcome, Subscription},
    envelope::{now_millis, timestamp_from_millis, timestamp_to_millis},
    error::Error,
    fetch::Fetcher,
    handoff::{self, Handoffs, Source},
    outgoing,
    topic::Receipt,
};
use pb::consume_request::Frame;
use tta_types::FieldViolation;

/// How long one blocking read waits before the reader re-checks credit and leases.
const BLOCK: Duration = Duration::from_secs(2);
/// How often the reader drops deliveries whose lease ran out.
const LEASE_SCAN_INTERVAL: Duration = Duration::from_millis(100);
/// Most acks settled in one round trip.
const MAX_ACK_BATCH: usize = 1024;
/// Most messages one reply frame may publish.
const MAX_REPLY_MESSAGES: usize = 16;

/// Receipts are looked up once per delivery and once per ack: a fast seeded hash instead of
/// SipHash.
type ReceiptMap<V> = HashMap<String, V, foldhash::fast::RandomState>;

#[derive(Debug)]
struct InFlight {
    lease_deadline: Instant,
    published_at_ms: i64,
}

/// Credit and in-flight deliveries of one stream.
#[derive(Debug)]
pub struct Flow {
    credit: AtomicU64,
    window: bool,
    wake: Notify,
    in_flight: Mutex<ReceiptMap<InFlight>>,
    /// The reader waits on a blocking read over streams its last read drained, with nothing
    /// held back: nothing stored waits for this consumer, so a hand-off overtakes nothing.
    caught_up: AtomicBool,
    /// Credits the reader holds while it waits on Redis, which hand-offs may borrow: what they
    /// borrow, the read may not hand over.
    lendable: AtomicU64,
}

impl Flow {
    pub(crate) fn new(prefetch: u32, manual_credit: bool) -> Self {
        Self {
            credit: AtomicU64::new(u64::from(prefetch)),
            window: !manual_credit,
            wake: Notify::new(),
            in_flight: Mutex::new(ReceiptMap::default()),
            caught_up: AtomicBool::new(false),
            lendable: AtomicU64::new(0),
        }
    }

    /// Takes one credit for a hand-off, if the reader waits on Redis with nothing stored to
    /// catch up on: a free one (credit comes back with each settled delivery while the reader
    /// waits), else one the reader lent.
    pub(crate) fn reserve_for_handoff(&self) -> bool {
        if !self.caught_up.load(Ordering::SeqCst) {
            return false;
        }
        self.take(1) == 1
            || self
                .lendable
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                    left.checked_sub(1)
                })
                .is_ok()
    }

    /// How many hand-offs this consumer could take now.
    pub(crate) fn room_for_handoffs(&self) -> u64 {
        if self.caught_up.load(Ordering::SeqCst) {
            self.credit.load(Ordering::SeqCst) + self.lendable.load(Ordering::SeqCst)
        } else {
            0
        }
    }

    /// The reader waits on Redis over drained streams, holding `credits`: hand-offs may
    /// come now, and borrow them.
    fn lend(&self, credits: u64) {
        self.lendable.store(credits, Ordering::SeqCst);
        self.set_caught_up(true);
    }

    /// The read returned: no more hand-offs until the reader waits again. Returns how many of
    /// the `credits` lent hand-offs borrowed.
    fn end_lending(&self, credits: u64) -> u64 {
        self.set_caught_up(false);
        credits.saturating_sub(self.lendable.swap(0, Ordering::SeqCst))
    }

    fn set_caught_up(&self, caught_up: bool) {
        self.caught_up.store(caught_up, Ordering::SeqCst);
    }

    #[cfg(test)]
    pub(crate) fn catch_up_for_test(&self) {
        self.set_caught_up(true);
    }

    /// A delivery now in flight to this consumer: read from Redis, or a hand-off.
    pub(crate) fn track(&self, receipt: String, lease_deadline: Instant, published_at_ms: i64) {
        if let Ok(mut in_flight) = self.in_flight.lock() {
            in_flight.insert(
                receipt,
                InFlight {
                    lease_deadline,
                    published_at_ms,
                },
            );
        }
    }

    /// A tracked hand-off that could not be sent: forgotten, its credit given back.
    pub(crate) fn untrack(&self, receipt: &str) {
        if let Ok(mut in_flight) = self.in_flight.lock() {
            in_flight.remove(receipt);
        }
        self.grant(1);
    }

    fn grant(&self, credits: u64) {
        if credits > 0 {
            self.credit.fetch_add(credits, Ordering::SeqCst);
            self.wake.notify_one();
        }
    }

    fn take(&self, wanted: u64) -> u64 {
        let mut current = self.credit.load(Ordering::SeqCst);
        loop {
            let taken = current.min(wanted);
            match self.credit.compare_exchange(
                current,
                current - taken,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return taken,
                Err(actual) => current = actual,
            }
        }
    }

    /// Forgets settled deliveries; in window mode each one gives its credit back. Returns the
    /// publish times of the deliveries that were in flight here.
    pub fn settle<'a>(&self, receipts: impl IntoIterator<Item = &'a str>) -> Vec<i64> {
        let published: Vec<i64> = match self.in_flight.lock() {
            Ok(mut in_flight) => receipts
                .into_iter()
                .filter_map(|receipt| in_flight.remove(receipt))
                .map(|delivery| delivery.published_at_ms)
                .collect(),
            Err(_) => Vec::new(),
        };
        if self.window {
            self.grant(published.len() as u64);
        }
        published
    }

    /// Drops deliveries whose lease ran out (the reclaimer redelivers them elsewhere).
    fn expire_leases(&self, now: Instant) {
        let expired = match self.in_flight.lock() {
            Ok(mut in_flight) => {
                let before = in_flight.len();
                in_flight.retain(|_, delivery| delivery.lease_deadline > now);
                before - in_flight.len()
            }
            Err(_) => 0,
        };
        if expired > 0 && self.window {
            self.grant(expired as u64);
        }
    }

    /// When the lease of a delivery in flight here ends.
    fn lease_deadline(&self, receipt: &str) -> Option<Instant> {
        let in_flight = self.in_flight.lock().ok()?;
        in_flight
            .get(receipt)
            .map(|delivery| delivery.lease_deadline)
    }

    fn extend(&self, receipt: &str, lease: Duration) {
        if let Ok(mut in_flight) = self.in_flight.lock()
            && let Some(delivery) = in_flight.get_mut(receipt)
        {
            delivery.lease_deadline = Instant::now() + lease;
        }
    }
}

/// The live streams of this process, so a unary Ack/Nack can give credit back to the stream
/// that received the delivery.
#[derive(Debug, Default)]
pub struct Sessions {
    flows: Mutex<HashMap<u64, Arc<Flow>>>,
    next_id: AtomicU64,
    /// Messages handed from one local stream to another without a Redis round trip.
    pub handoffs: Arc<Handoffs>,
}

impl Sessions {
    fn register(&self, flow: Arc<Flow>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut flows) = self.flows.lock() {
            flows.insert(id, flow);
        }
        id
    }

    fn unregister(&self, id: u64) {
        if let Ok(mut flows) = self.flows.lock() {
            flows.remove(&id);
        }
    }

    /// Settles receipts on whichever local stream delivered them; returns the publish times
    /// of those that were in flight here.
    pub fn settle(&self, receipts: &[String]) -> Vec<i64> {
        let flows: Vec<Arc<Flow>> = match self.flows.lock() {
            Ok(flows) => flows.values().cloned().collect(),
            Err(_) => return Vec::new(),
        };
        flows
            .iter()
            .flat_map(|flow| flow.settle(receipts.iter().map(String::as_str)))
            .collect()
    }
}

/// Validated subscribe frame.
#[derive(Debug, Clone)]
pub struct Settings {
    pub subscription: Subscription,
    pub prefetch: u32,
    pub manual_credit: bool,
}

/// Runs one consume stream until the client hangs up, the server shuts down, or the outgoing
/// channel closes.
pub async fn run<S>(
    engine: Arc<Engine>,
    sessions: Arc<Sessions>,
    settings: Settings,
    mut frames: S,
    outgoing: mpsc::Sender<Result<pb::Delivery, tonic::Status>>,
    shutdown: Shutdown,
) where
    S: Stream<Item = Result<pb::ConsumeRequest, tonic::Status>> + Unpin + Send + 'static,
{
    let flow = Arc::new(Flow::new(settings.prefetch, settings.manual_credit));
    let session = sessions.register(flow.clone());
    let stop = shutdown.child();
    let topic = settings.subscription.keys.topic.clone();
    sessions.handoffs.register(
        &topic,
        session,
        flow.clone(),
        outgoing.clone(),
        settings.subscription.visibility_timeout,
    );
    metrics::gauge!("tta_broker_consumers", "topic" => topic.clone()).increment(1.0);

    let reader = tokio::spawn(read_loop(
        engine.clone(),
        settings.subscription.clone(),
        flow.clone(),
        outgoing.clone(),
        stop.clone(),
    ));

    // A non-ack frame found while gathering acks waits here for its turn.
    let mut carried: Option<pb::ConsumeRequest> = None;
    let mut client_gone = false;
    while !client_gone {
        let request = match carried.take() {
            Some(request) => request,
            None => {
                let frame = tokio::select! {
                    () = stop.wait() => break,
                    frame = frames.next() => frame,
                };
                match frame {
                    Some(Ok(request)) => request,
                    Some(Err(status)) => {
                        tracing::debug!(topic = %topic, error = %status, "consumer stream error");
                        break;
                    }
                    None => break,
                }
            }
        };
        let result = match request.frame {
            Some(frame @ (Frame::Ack(_) | Frame::Reply(_))) => {
                let mut batch = Settling::default();
                batch.add(frame);
                // Settle every ack and reply that is already waiting together.
                while batch.len() < MAX_ACK_BATCH {
                    match frames.next().now_or_never() {
                        Some(Some(Ok(pb::ConsumeRequest {
                            frame: Some(frame @ (Frame::Ack(_) | Frame::Reply(_))),
                        }))) => batch.add(frame),
                        Some(Some(Ok(other))) => {
                            carried = Some(other);
                            break;
                        }
                        Some(Some(Err(_)) | None) => {
                            client_gone = true;
                            break;
                        }
                        None => break,
                    }
                }
                settle(&engine, &sessions, &settings, &flow, batch).await
            }
            other => {
                handle_other(
                    &engine,
                    &sessions,
                    &settings,
                    &flow,
                    pb::ConsumeRequest { frame: other },
                )
                .await
            }
        };
        if let Err(status) = result {
            let _ = outgoing.send(Err(status)).await;
            break;
        }
    }

    stop.trigger();
    let _ = reader.await;
    // Hand-offs this consumer never settled go to Redis, for another consumer.
    let orphans = sessions.handoffs.unregister(&topic, session);
    handoff::store(&engine, &sessions.handoffs, orphans, "consumer_gone").await;
    sessions.unregister(session);
    metrics::gauge!("tta_broker_consumers", "topic" => topic).decrement(1.0);
}

/// Acks and replies gathered from the frames waiting on a stream.
#[derive(Debug, Default)]
struct Settling {
    acks: Vec<String>,
    replies: Vec<pb::ReplyFrame>,
}

impl Settling {
    fn add(&mut self, frame: Frame) {
        match frame {
            Frame::Ack(ack) => {
                if !ack.receipt.is_empty() {
                    self.acks.push(ack.receipt);
                }
                self.acks.extend(ack.receipts);
            }
            Frame::Reply(reply) => self.replies.push(reply),
            _ => {}
        }
    }

    fn len(&self) -> usize {
        self.acks.len() + self.replies.len()
    }
}

/// Publishes what the replies carry, then acks in one round trip the plain acks and the
/// replies whose messages are all stored; a reply that could not publish is nacked instead.
async fn settle(
    engine: &Engine,
    sessions: &Sessions,
    settings: &Settings,
    flow: &Flow,
    batch: Settling,
) -> Result<(), tonic::Status> {
    let Settling { mut acks, replies } = batch;
    let topic = &settings.subscription.keys.topic;
    let no_trace = outgoing::TraceHeaders::new();
    let mut messages = Vec::new();
    // Per valid reply: its receipt and how many of `messages` are its own.
    let mut owners: Vec<(String, usize)> = Vec::new();
    for pb::ReplyFrame { receipt, publish } in replies {
        let source = if handoff::is_handoff(&receipt) {
            sessions
                .handoffs
                .head_deadline(&receipt)
                .map(|deadline| (Source::Handed(receipt.clone()), deadline))
        } else {
            let stored = Receipt::parse("reply.receipt", &receipt)?;
            flow.lease_deadline(&receipt)
                .and_then(handoff::head_deadline_from)
                .map(|deadline| (Source::Stored(stored), deadline))
        };
        match check_reply(engine, publish, &no_trace) {
            Ok(mut valid) => {
                // One message and a consumer of its topic waiting here: hand it over.
                if let (Some((source, deadline)), 1) = (source, valid.len())
                    && let Some(message) = valid.pop()
                {
                    match sessions.handoffs.hand(message, source, deadline) {
                        None => {
                            flow.settle([receipt.as_str()]);
                            sessions.handoffs.answered_by_handoff(&receipt);
                            continue;
                        }
                        Some(message) => valid.push(message),
                    }
                }
                owners.push((receipt, valid.len()));
                messages.extend(valid);
            }
            Err(violation) => {
                tracing::warn!(topic = %topic, error = %violation, "invalid reply; dead-lettering its delivery");
                nack_delivery(
                    engine,
                    sessions,
                    settings,
                    flow,
                    &receipt,
                    Rejection {
                        permanent: true,
                        reason: &violation.to_string(),
                        retry_after: None,
                    },
                )
                .await;
            }
        }
    }
    if !messages.is_empty() {
        let destinations: Vec<String> = messages.iter().map(|m| m.topic.clone()).collect();
        let mut outcomes = engine.publish(messages).await.into_iter();
        let mut destinations = destinations.into_iter();
        for (receipt, count) in owners {
            let mut failure: Option<Error> = None;
            for _ in 0..count {
                let (Some(outcome), Some(destination)) = (outcomes.next(), destinations.next())
                else {
                    failure.get_or_insert(Error::Corrupt("publish result missing".into()));
                    continue;
                };
                outgoing::record_publish(&destination, &outcome);
                if let Err(err) = outcome {
                    failure.get_or_insert(err);
                }
            }
            match failure {
                None => acks.push(receipt),
                Some(err) => {
                    let reason = format!("cannot publish the reply: {err}");
                    nack_delivery(
                        engine,
                        sessions,
                        settings,
                        flow,
                        &receipt,
                        Rejection {
                            permanent: false,
                            reason: &reason,
                            retry_after: err.retry_after(),
                        },
                    )
                    .await;
                }
            }
        }
    }
    // A second answer to a delivery whose line is in flight must not ack it early.
    acks.retain(|receipt| !sessions.handoffs.heads_a_line(receipt));
    let (handed, acks): (Vec<String>, Vec<String>) = acks
        .into_iter()
        .partition(|receipt| handoff::is_handoff(receipt));
    if !handed.is_empty() {
        sessions.settle(&handed);
        let heads = sessions.handoffs.settled(handed.iter().map(String::as_str));
        handoff::ack_heads(engine, heads).await;
    }
    if acks.is_empty() {
        return Ok(());
    }
    settle_acks(engine, sessions, topic, acks).await
}

/// The messages of a reply, checked as a publish would check them.
fn check_reply(
    engine: &Engine,
    publish: Vec<pb::OutgoingMessage>,
    trace: &outgoing::TraceHeaders,
) -> Result<Vec<crate::engine::Outgoing>, FieldViolation> {
    outgoing::validate_batch(
        engine.config(),
        "reply.publish",
        MAX_REPLY_MESSAGES,
        publish,
        trace,
    )?
    .into_iter()
    .collect()
}

/// Why a delivery is nacked, and what becomes of it.
struct Rejection<'a> {
    permanent: bool,
    reason: &'a str,
    retry_after: Option<Duration>,
}

/// Nacks one delivery of this stream and gives its credit back. A nacked hand-off is stored
/// on its topic, delayed like a retry, and delivered again from there.
async fn nack_delivery(
    engine: &Engine,
    sessions: &Sessions,
    settings: &Settings,
    flow: &Flow,
    receipt: &str,
    rejection: Rejection<'_>,
) {
    let Rejection {
        permanent,
        reason,
        retry_after,
    } = rejection;
    if handoff::is_handoff(receipt) {
        flow.settle([receipt]);
        handoff::store_nacked(
            engine,
            &sessions.handoffs,
            receipt.to_owned(),
            permanent,
            retry_after,
        )
        .await;
        return;
    }
    let subscription = &settings.subscription;
    let outcome = match Receipt::parse("receipt", receipt) {
        Ok(parsed) => {
            engine
                .nack(
                    &parsed,
                    &subscription.consumer,
                    permanent,
                    reason,
                    retry_after,
                )
                .await
        }
        Err(violation) => Err(Error::from(violation)),
    };
    match outcome {
        Ok(outcome) => record_nack(&subscription.keys.topic, outcome),
        Err(Error::NotFound(_)) => {
            metrics::counter!("tta_broker_unknown_acks_total", "topic" => subscription.keys.topic.clone()).increment(1);
        }
        Err(err) => {
            tracing::warn!(topic = %subscription.keys.topic, error = %err, "stream nack failed; the lease will expire instead")
        }
    }
    flow.settle([receipt]);
}

async fn settle_acks(
    engine: &Engine,
    sessions: &Sessions,
    topic: &str,
    raw: Vec<String>,
) -> Result<(), tonic::Status> {
    let mut receipts = Vec::with_capacity(raw.len());
    for text in &raw {
        receipts.push(Receipt::parse("ack.receipt", text).map_err(tonic::Status::from)?);
    }
    // The script never deletes an entry the group has not read, so a stale or forged receipt
    // cannot remove a message that was not delivered.
    match engine.ack_batch(&receipts).await {
        Ok(acked) => {
            let unknown = (receipts.len() as u64).saturating_sub(acked);
            metrics::counter!("tta_broker_acked_total", "topic" => topic.to_owned())
                .increment(acked);
            if unknown > 0 {
                metrics::counter!("tta_broker_unknown_acks_total", "topic" => topic.to_owned())
                    .increment(unknown);
            }
            let now = now_millis();
            let histogram =
                metrics::histogram!("tta_broker_end_to_end_seconds", "topic" => topic.to_owned());
            // Receipts the store did not know are settled here too: their lease is gone anyway.
            let published = sessions.settle(&raw);
            for published_at in published {
                histogram.record((now - published_at).max(0) as f64 / 1000.0);
            }
            Ok(())
        }
        // A failed stream ack is not fatal: the lease expires and the message is redelivered.
        Err(err) => {
            tracing::warn!(topic, error = %err, count = raw.len(), "stream acks failed; deliveries will be redelivered");
            metrics::counter!("tta_broker_delivery_errors_total", "topic" => topic.to_owned(), "stage" => "ack").increment(1);
            Ok(())
        }
    }
}

async fn handle_other(
    engine: &Engine,
    sessions: &Sessions,
    settings: &Settings,
    flow: &Flow,
    request: pb::ConsumeRequest,
) -> Result<(), tonic::Status> {
    let subscription = &settings.subscription;
    match request.frame {
        Some(Frame::Credit(credit)) => {
            flow.grant(u64::from(credit.credits));
            Ok(())
        }
        Some(Frame::Nack(nack)) => {
            if !handoff::is_handoff(&nack.receipt) {
                Receipt::parse("nack.receipt", &nack.receipt)?;
            }
            let permanent = match pb::NackKind::try_from(nack.kind) {
                Ok(pb::NackKind::Permanent) => true,
                Ok(pb::NackKind::Transient) => false,
                _ => {
                    return Err(tonic::Status::invalid_argument(
                        "nack.kind: must be NACK_KIND_TRANSIENT or NACK_KIND_PERMANENT",
                    ));
                }
            };
            let retry_after = nack
                .retry_after
                .as_ref()
                .and_then(|d| Duration::try_from(*d).ok());
            nack_delivery(
                engine,
                sessions,
                settings,
                flow,
                &nack.receipt,
                Rejection {
                    permanent,
                    reason: &nack.reason,
                    retry_after,
                },
            )
            .await;
            Ok(())
        }
        Some(Frame::Extend(extend)) if handoff::is_handoff(&extend.receipt) => {
            if sessions
                .handoffs
                .extend(&extend.receipt, subscription.visibility_timeout)
            {
                flow.extend(&extend.receipt, subscription.visibility_timeout);
            }
            Ok(())
        }
        Some(Frame::Extend(extend)) => {
            let receipt = Receipt::parse("extend.receipt", &extend.receipt)?;
            if engine
                .extend(&receipt, &subscription.group, &subscription.consumer)
                .await
                .unwrap_or(false)
            {
                flow.extend(&extend.receipt, subscription.visibility_timeout);
            }
            Ok(())
        }
        Some(Frame::Ack(_) | Frame::Reply(_)) => Err(tonic::Status::internal(
            "ack and reply frames are settled in batches by the frame loop",
        )),
        Some(Frame::Subscribe(_)) => Err(tonic::Status::invalid_argument(
            "subscribe: only the first frame may subscribe",
        )),
        None => Err(tonic::Status::invalid_argument("frame: must be set")),
    }
}

/// Counts a nack's outcome.
pub fn record_nack(topic: &str, outcome: NackOutcome) {
    match outcome {
        NackOutcome::RetryScheduled(backoff) => {
            metrics::counter!("tta_broker_retries_total", "topic" => topic.to_owned()).increment(1);
            metrics::histogram!("tta_broker_backoff_seconds", "topic" => topic.to_owned())
                .record(backoff.as_secs_f64());
        }
        NackOutcome::DeadLettered => {
            metrics::counter!("tta_broker_dead_lettered_total", "topic" => topic.to_owned(), "cause" => "nack").increment(1);
        }
    }
}

async fn read_loop(
    engine: Arc<Engine>,
    subscription: Subscription,
    flow: Arc<Flow>,
    outgoing: mpsc::Sender<Result<pb::Delivery, tonic::Status>>,
    stop: Shutdown,
) {
    let topic = subscription.keys.topic.clone();
    let delivered_total = metrics::counter!("tta_broker_delivered_total", "topic" => topic.clone());
    let redelivered_total =
        metrics::counter!("tta_broker_redeliveries_total", "topic" => topic.clone());
    let mut failures: u32 = 0;
    let mut connection = None;
    let mut fetcher = Fetcher::new();
    let mut last_lease_scan: Option<Instant> = None;
    let mut first_read = true;

    while !stop.is_triggered() && !outgoing.is_closed() {
        // The scan walks every delivery in flight: once in a while is enough for leases that
        // last seconds.
        let now = Instant::now();
        if last_lease_scan.is_none_or(|scanned| now.duration_since(scanned) >= LEASE_SCAN_INTERVAL)
        {
            flow.expire_leases(now);
            last_lease_scan = Some(now);
        }
        let wanted = flow.take(u64::MAX);
        if wanted == 0 {
            tokio::select! {
                () = flow.wake.notified() => {}
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
                () = stop.wait() => break,
            }
            continue;
        }

        if connection.is_none() {
            match engine.dedicated_connection(BLOCK).await {
                Ok(fresh) => connection = Some(fresh),
                Err(err) => {
                    flow.grant(wanted);
                    failures += 1;
                    backoff(&topic, &err, failures, &stop).await;
                    continue;
                }
            }
        }
        let Some(blocking) = connection.as_mut() else {
            continue;
        };

        // The first read only looks: whether anything stored waits decides whether hand-offs
        // may come before it.
        let block = if first_read {
            Duration::from_millis(1)
        } else {
            BLOCK
        };
        // A reader with nothing stored to catch up on lends its credit to hand-offs while it
        // waits; it hands over only what they left.
        let lending = fetcher.keeps_up() && !first_read;
        if lending {
            flow.lend(wanted);
        }
        let read = tokio::select! {
            read = fetcher.next(&engine, &subscription, blocking, wanted as usize, block) => read,
            () = stop.wait() => {
                let lent = if lending { flow.end_lending(wanted) } else { 0 };
                flow.grant(wanted - lent);
                break
            }
        };
        let wanted = if lending {
            wanted - flow.end_lending(wanted)
        } else {
            wanted
        };
        let batch = match read {
            Ok(mut batch) => {
                failures = 0;
                if batch.len() > wanted as usize {
                    let over = batch.split_off(wanted as usize);
                    fetcher.hold_back(over, Instant::now());
                }
                batch
            }
            Err(err) => {
                flow.grant(wanted);
                failures += 1;
                if err.to_string().contains("NOGROUP") {
                    // Redis lost the group (restarted without persistence): make it again.
                    let _ = engine
                        .ensure_groups(&subscription.keys, &subscription.group)
                        .await;
                } else {
                    connection = None;
                }
                metrics::counter!("tta_broker_delivery_errors_total", "topic" => topic.clone(), "stage" => "read").increment(1);
                backoff(&topic, &err, failures, &stop).await;
                continue;
            }
        };
        first_read = false;
        flow.grant(wanted.saturating_sub(batch.len() as u64));

        let lease_deadline = Instant::now() + subscription.visibility_timeout;
        let lease_expires_at = timestamp_from_millis(
            now_millis() + subscription.visibility_timeout.as_millis() as i64,
        );
        for delivered in batch {
            let mut message = match delivered.entry.to_proto(&topic, true, false) {
                Ok(message) => message,
                Err(err) => {
                    // An entry nobody can decode would be redelivered forever: dead-letter it.
                    tracing::error!(topic = %topic, error = %err, "undecodable message; dead-lettering it");
                    let _ = engine
                        .nack(
                            &delivered.receipt,
                            &subscription.consumer,
                            true,
                            &err.to_string(),
                            None,
                        )
                        .await;
                    flow.grant(1);
                    continue;
                }
            };
            // The stream it was read from is its priority (a replay may have changed it).
            message.priority = pb::Priority::from(delivered.receipt.priority) as i32;
            if message.attempts > 1 {
                redelivered_total.increment(1);
            }
            delivered_total.increment(1);
            let published_at_ms = message.published_at.as_ref().map_or(0, timestamp_to_millis);
            let receipt = delivered.receipt.to_string();
            flow.track(receipt.clone(), lease_deadline, published_at_ms);
            let delivery = pb::Delivery {
                message: Some(message),
                receipt,
                lease_expires_at: Some(lease_expires_at),
            };
            if outgoing.send(Ok(delivery)).await.is_err() {
                return;
            }
        }
    }
}

async fn backoff(topic: &str, err: &Error, failures: u32, stop: &Shutdown) {
    let delay = Duration::from_millis(50u64.saturating_mul(1 << failures.min(5)))
        .min(Duration::from_secs(2));
    tracing::warn!(topic, error = %err, retry_in = ?delay, "consumer read failed");
    tokio::select! {
        () = tokio::time::sleep(delay) => {}
        () = stop.wait() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_credit_comes_back_when_deliveries_settle() {
        let flow = Flow::new(2, false);
        assert_eq!(flow.take(5), 2);
        assert_eq!(flow.take(5), 0);
        for receipt in ["a", "b"] {
            flow.in_flight.lock().unwrap().insert(
                receipt.into(),
                InFlight {
                    lease_deadline: Instant::now() + Duration::from_secs(30),
                    published_at_ms: 7,
                },
            );
        }
        assert_eq!(flow.settle(["a", "unknown"]), vec![7]);
        assert_eq!(flow.take(5), 1);
    }

    #[test]
    fn hand_offs_take_free_credit_first_then_borrow_what_a_waiting_reader_lent() {
        let flow = Flow::new(3, false);
        assert!(!flow.reserve_for_handoff(), "not caught up yet");
        flow.set_caught_up(true);
        assert!(flow.reserve_for_handoff());
        // The reader takes the rest and lends it while it waits.
        assert_eq!(flow.take(u64::MAX), 2);
        flow.lend(2);
        assert!(flow.reserve_for_handoff());
        assert!(flow.reserve_for_handoff());
        assert!(!flow.reserve_for_handoff());
        assert_eq!(flow.end_lending(2), 2, "the read may hand over nothing");
        assert!(!flow.reserve_for_handoff(), "lending ended");
    }

    #[test]
    fn manual_credit_only_grows_by_grants() {
        let flow = Flow::new(1, true);
        assert_eq!(flow.take(5), 1);
        flow.in_flight.lock().unwrap().insert(
            "a".into(),
            InFlight {
                lease_deadline: Instant::now(),
                published_at_ms: 0,
            },
        );
        flow.settle(["a"]);
        assert_eq!(flow.take(5), 0);
        flow.grant(3);
        assert_eq!(flow.take(5), 3);
    }

    #[test]
    fn expired_leases_return_their_credit() {
        let flow = Flow::new(1, false);
        assert_eq!(flow.take(1), 1);
        flow.in_flight.lock().unwrap().insert(
            "a".into(),
            InFlight {
                lease_deadline: Instant::now(),
                published_at_ms: 0,
            },
        );
        flow.expire_leases(Instant::now() + Duration::from_millis(1));
        assert_eq!(flow.take(1), 1);
    }
}
