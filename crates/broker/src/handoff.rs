//! Direct hand-off: a message a consumer publishes in a reply frame goes straight to a consumer
//! of its topic on this broker that is waiting with credit, without a round trip through
//! Redis. This is the path of a turn's chained tasks (IPA → WBA → NGA) and of its answer.
//!
//! The work always stays somewhere durable. The delivery a reply answered stays pending in
//! Redis (its entry unacknowledged) while what it handed on is in flight. A hand-off acked by
//! its consumer, or answered by a reply that was stored, acks that delivery; when the hand-off
//! was itself answered by another hand-off, the stored delivery at the head of the line is
//! acked once the last one is settled. A hand-off that is nacked, outlives its lease or a third
//! of the head's lease left when the line began, or loses its consumer (a closed stream, a
//! broker shutdown) is stored on its topic like any publish, and then the head is acked. If that store fails
//! the head is left alone: its lease runs out and it is delivered again. A broker that dies
//! loses only hand-offs, whose heads are pending in Redis and are delivered again.
//!
//! Hand-offs go only to a consumer whose reader waits on a blocking read over streams its last
//! read drained, taking a free credit or one the reader lent: there is no backlog for them to
//! overtake (a message stored while the reader waits on Redis can be overtaken by hand-offs),
//! and the consumer never holds more than its prefetch.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::FutureExt;
use tokio::sync::mpsc;
use tta_proto::v1 as pb;

use crate::{
    consumer::Flow,
    engine::{Engine, Outgoing},
    envelope::{now_millis, timestamp_from_millis},
    topic::Receipt,
};

/// Every hand-off receipt starts with this character, which no topic name (and so no stored
/// receipt) can contain.
const MARK: char = '~';

/// The reason label of hand-offs stored because their deadline passed.
const EXPIRED: &str = "expired";

/// How often expired hand-offs are looked for.
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(100);

pub type DeliverySender = mpsc::Sender<Result<pb::Delivery, tonic::Status>>;

/// Whether `receipt` names a hand-off rather than a stored entry.
pub fn is_handoff(receipt: &str) -> bool {
    receipt.starts_with(MARK)
}

/// What a hand-off came from, and so what settles when it is settled.
#[derive(Debug, Clone)]
pub enum Source {
    /// A delivery whose entry is pending in Redis.
    Stored(Receipt),
    /// Another hand-off, answered by this one.
    Handed(String),
}

/// A consume stream of this broker that hand-offs may go to.
#[derive(Debug, Clone)]
struct Endpoint {
    stream: u64,
    flow: Arc<Flow>,
    outgoing: DeliverySender,
    lease: Duration,
}

#[derive(Debug)]
struct Pending {
    /// What a fallback stores.
    message: Outgoing,
    source: Source,
    /// The stream it was handed to, until its consumer answers it with another hand-off.
    stream: Option<u64>,
    /// When it is stored instead, unless settled first.
    deadline: Instant,
    /// A third of the stored head's lease left when the line began: no line outlives it.
    head_deadline: Instant,
}

impl Pending {
    /// Still with its consumer, past its deadline.
    fn expired(&self, now: Instant) -> bool {
        self.stream.is_some() && self.deadline <= now
    }
}

/// The hand-offs of this broker process.
#[derive(Debug)]
pub struct Handoffs {
    endpoints: Mutex<HashMap<String, Vec<Endpoint>>>,
    pending: Mutex<HashMap<String, Pending>>,
    /// The stored heads of the lines in flight.
    heads: Mutex<std::collections::HashSet<String>>,
    /// Wakes the sweeper when the first hand-off of a quiet spell goes out.
    first_pending: tokio::sync::Notify,
    /// Tells this process's receipts from an earlier incarnation's.
    incarnation: u64,
    next: AtomicU64,
}

impl Default for Handoffs {
    fn default() -> Self {
        Self {
            endpoints: Mutex::default(),
            pending: Mutex::default(),
            heads: Mutex::default(),
            first_pending: tokio::sync::Notify::new(),
            incarnation: uuid::Uuid::now_v7().as_u64_pair().1 >> 16,
            next: AtomicU64::new(1),
        }
    }
}

/// The outcome of settling hand-offs: the stored heads now due for an ack.
pub type Heads = Vec<Receipt>;

impl Handoffs {
    pub fn register(
        &self,
        topic: &str,
        stream: u64,
        flow: Arc<Flow>,
        outgoing: DeliverySender,
        lease: Duration,
    ) {
        if let Ok(mut endpoints) = self.endpoints.lock() {
            endpoints
                .entry(topic.to_owned())
                .or_default()
                .push(Endpoint {
                    stream,
                    flow,
                    outgoing,
                    lease,
                });
        }
    }

    /// Forgets a closed stream and returns the hand-offs it still had in flight, to be stored.
    pub fn unregister(&self, topic: &str, stream: u64) -> Vec<String> {
        if let Ok(mut endpoints) = self.endpoints.lock()
            && let Some(list) = endpoints.get_mut(topic)
        {
            list.retain(|endpoint| endpoint.stream != stream);
            if list.is_empty() {
                endpoints.remove(topic);
            }
        }
        match self.pending.lock() {
            Ok(pending) => pending
                .iter()
                .filter(|(_, entry)| entry.stream == Some(stream))
                .map(|(receipt, _)| receipt.clone())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Hands `message` to a consumer of its topic with credit and nothing stored waiting for
    /// it. Returns the message when there is none, for an ordinary publish.
    #[must_use = "a message handed back must be published"]
    pub fn hand(
        &self,
        message: Outgoing,
        source: Source,
        head_deadline: Instant,
    ) -> Option<Outgoing> {
        if !message.delay.is_zero() {
            return Some(message);
        }
        let Some(endpoint) = self.waiting_endpoint(&message.topic) else {
            return Some(message);
        };
        let receipt = format!(
            "{MARK}{:x}-{}",
            self.incarnation,
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        let now = Instant::now();
        let published_at_ms = now_millis();
        let deadline = (now + endpoint.lease).min(head_deadline);
        let lease_ms = deadline.saturating_duration_since(now).as_millis() as i64;
        let delivery = pb::Delivery {
            message: Some(pb::BrokerMessage {
                id: uuid::Uuid::now_v7().to_string(),
                topic: message.topic.clone(),
                priority: pb::Priority::from(message.priority) as i32,
                headers: message.headers.clone(),
                payload: message.payload.clone(),
                attempts: 1,
                idempotency_key: message.idempotency_key.clone().unwrap_or_default(),
                delay: None,
                published_at: Some(timestamp_from_millis(published_at_ms)),
                content_type: message.content_type.clone(),
                history: Vec::new(),
            }),
            receipt: receipt.clone(),
            lease_expires_at: Some(timestamp_from_millis(published_at_ms + lease_ms)),
        };
        let topic = message.topic.clone();
        let head = match &source {
            Source::Stored(head) => Some(head.to_string()),
            Source::Handed(_) => None,
        };
        endpoint
            .flow
            .track(receipt.clone(), deadline, published_at_ms);
        if let Ok(mut pending) = self.pending.lock() {
            if pending.is_empty() {
                self.first_pending.notify_one();
            }
            pending.insert(
                receipt.clone(),
                Pending {
                    message,
                    source,
                    stream: Some(endpoint.stream),
                    deadline,
                    head_deadline,
                },
            );
            if let Some(head) = head {
                self.heads.lock().map(|mut heads| heads.insert(head)).ok();
            }
        }
        if endpoint.outgoing.try_send(Ok(delivery)).is_err() {
            endpoint.flow.untrack(&receipt);
            // Its consumer is gone. Unless the store of that consumer's orphans took it first
            // (and settles its line), it goes back to be published.
            let (message, source) = self.take(&receipt)?;
            if let Source::Stored(head) = &source {
                self.release_head(head);
            }
            return Some(message);
        }
        metrics::counter!("tta_broker_handoffs_total", "topic" => topic).increment(1);
        None
    }

    /// Whether `receipt` is the stored head of a line still in flight: its delivery was
    /// answered by a hand-off, and a second answer or ack must not settle it early.
    pub fn heads_a_line(&self, receipt: &str) -> bool {
        self.heads
            .lock()
            .map(|heads| heads.contains(receipt))
            .unwrap_or(false)
    }

    fn release_head(&self, head: &Receipt) {
        if let Ok(mut heads) = self.heads.lock() {
            heads.remove(&head.to_string());
        }
    }

    /// The consumer with the most room, so hand-offs spread over a topic's consumers like
    /// reads from Redis do and favour the ones that keep up; ties go round in turn.
    fn waiting_endpoint(&self, topic: &str) -> Option<Endpoint> {
        let endpoints = self.endpoints.lock().ok()?;
        let list = endpoints.get(topic)?;
        let start = self.next.load(Ordering::Relaxed) as usize;
        let mut candidates: Vec<(u64, &Endpoint)> = (0..list.len())
            .filter_map(|offset| list.get((start + offset) % list.len()))
            .map(|endpoint| (endpoint.flow.room_for_handoffs(), endpoint))
            .filter(|(room, _)| *room > 0)
            .collect();
        // Stable: among equals the rotation order stands.
        candidates.sort_by_key(|(room, _)| std::cmp::Reverse(*room));
        candidates
            .into_iter()
            .find(|(_, endpoint)| endpoint.flow.reserve_for_handoff())
            .map(|(_, endpoint)| endpoint.clone())
    }

    fn pending_any(&self) -> bool {
        self.pending
            .lock()
            .map(|pending| !pending.is_empty())
            .unwrap_or(false)
    }

    /// The head deadline of a hand-off, for what it hands on in turn.
    pub fn head_deadline(&self, receipt: &str) -> Option<Instant> {
        let pending = self.pending.lock().ok()?;
        pending.get(receipt).map(|entry| entry.head_deadline)
    }

    /// Its consumer answered the hand-off with another one: what happens to it now depends on
    /// that one.
    pub fn answered_by_handoff(&self, receipt: &str) {
        if let Ok(mut pending) = self.pending.lock()
            && let Some(entry) = pending.get_mut(receipt)
        {
            entry.stream = None;
        }
    }

    /// Hand-offs their consumers settled for good (acked, or answered by a stored reply):
    /// returns the stored heads to ack now. Unknown receipts (already stored, or an earlier
    /// incarnation's) and hand-offs already answered by another hand-off (whose line is still
    /// in flight) are skipped.
    pub fn settled<'a>(&self, receipts: impl IntoIterator<Item = &'a str>) -> Heads {
        let Ok(mut pending) = self.pending.lock() else {
            return Vec::new();
        };
        let mut heads = Vec::new();
        for receipt in receipts {
            if pending
                .get(receipt)
                .is_some_and(|entry| entry.stream.is_some())
            {
                let source = pending.remove(receipt).map(|entry| entry.source);
                self.release_line(&mut pending, source, &mut heads);
            }
        }
        heads
    }

    /// Removes a settled hand-off's ancestors, which its settlement settles too, collecting
    /// the stored head at the top.
    fn release_line(
        &self,
        pending: &mut HashMap<String, Pending>,
        mut next: Option<Source>,
        heads: &mut Heads,
    ) {
        while let Some(source) = next.take() {
            match source {
                Source::Stored(head) => {
                    self.release_head(&head);
                    heads.push(head);
                }
                Source::Handed(parent) => {
                    next = pending.remove(&parent).map(|entry| entry.source);
                }
            }
        }
    }

    /// Ends the line above a hand-off that was stored or given up: returns its stored head,
    /// for the caller to ack (stored) or leave to its lease (given up).
    fn release(&self, source: Source) -> Heads {
        let mut heads = Vec::new();
        if let Ok(mut pending) = self.pending.lock() {
            self.release_line(&mut pending, Some(source), &mut heads);
        }
        heads
    }

    /// Takes a hand-off out to store it: its message and source.
    fn take(&self, receipt: &str) -> Option<(Outgoing, Source)> {
        self.take_if(receipt, |_| true)
    }

    /// Takes a hand-off out if `still` holds for it under the lock.
    fn take_if(
        &self,
        receipt: &str,
        still: impl Fn(&Pending) -> bool,
    ) -> Option<(Outgoing, Source)> {
        let mut pending = self.pending.lock().ok()?;
        if !pending.get(receipt).is_some_and(still) {
            return None;
        }
        pending
            .remove(receipt)
            .map(|entry| (entry.message, entry.source))
    }

    /// Hand-offs still with a consumer whose deadline passed.
    fn expired(&self, now: Instant) -> Vec<String> {
        match self.pending.lock() {
            Ok(pending) => pending
                .iter()
                .filter(|(_, entry)| entry.expired(now))
                .map(|(receipt, _)| receipt.clone())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// A consumer asked for more time: up to its topic's lease again, never past the head's.
    pub fn extend(&self, receipt: &str, lease: Duration) -> bool {
        match self.pending.lock() {
            Ok(mut pending) => match pending.get_mut(receipt) {
                Some(entry) => {
                    entry.deadline = (Instant::now() + lease).min(entry.head_deadline);
                    true
                }
                None => false,
            },
            Err(_) => false,
        }
    }

    #[cfg(test)]
    fn pending_count(&self) -> usize {
        self.pending
            .lock()
            .map(|pending| pending.len())
            .unwrap_or(0)
    }
}

/// The least time a line of hand-offs gets; with less, the reply is stored as usual.
const MIN_LINE_TIME: Duration = Duration::from_millis(100);

/// The deadline for a line of hand-offs headed by a stored delivery whose lease, as this
/// broker counts it, ends at `lease_deadline`: a third of what remains, so the line is stored
/// well before the head could be delivered again even though Redis counts the lease from the
/// read (an entry may wait up to half a lease in the fetcher before it is handed over). None
/// when that leaves too little time.
pub fn head_deadline_from(lease_deadline: Instant) -> Option<Instant> {
    let now = Instant::now();
    let budget = lease_deadline.saturating_duration_since(now) / 3;
    (budget >= MIN_LINE_TIME).then(|| now + budget)
}

/// Stores hand-offs on their topics instead (nacked, expired, or their consumer gone), then
/// acks the stored heads their lines are now safe from. `why` labels the metric.
pub async fn store(engine: &Engine, handoffs: &Handoffs, receipts: Vec<String>, why: &'static str) {
    store_later(engine, handoffs, receipts, why, Duration::ZERO, None).await;
}

/// A nacked hand-off is stored like a retry: after the consumer's `retry_after`, or the
/// topic's first backoff, so a transient failure is not delivered again at once. (Its attempt
/// is not counted: the stored copy starts at its first.)
pub async fn store_nacked(
    engine: &Engine,
    handoffs: &Handoffs,
    receipt: String,
    permanent: bool,
    retry_after: Option<Duration>,
) {
    let delay = if permanent {
        Duration::ZERO
    } else {
        retry_after.unwrap_or(engine.config().retry.base_delay)
    };
    store_later(engine, handoffs, vec![receipt], "nacked", delay, None).await;
}

/// Stores `receipts` after `delay`; with `expired_at`, only those still expired then (one
/// found expired may have been answered or settled since).
async fn store_later(
    engine: &Engine,
    handoffs: &Handoffs,
    receipts: Vec<String>,
    why: &'static str,
    delay: Duration,
    expired_at: Option<Instant>,
) {
    if receipts.is_empty() {
        return;
    }
    let mut messages = Vec::new();
    let mut sources = Vec::new();
    for receipt in &receipts {
        let taken = match expired_at {
            Some(now) => handoffs.take_if(receipt, |entry| entry.expired(now)),
            None => handoffs.take(receipt),
        };
        if let Some((mut message, source)) = taken {
            message.delay = delay;
            metrics::counter!("tta_broker_handoffs_stored_total", "topic" => message.topic.clone(), "reason" => why).increment(1);
            messages.push(message);
            sources.push(source);
        }
    }
    let outcomes = engine.publish(messages).await;
    let mut heads = Vec::new();
    for (outcome, source) in outcomes.into_iter().zip(sources) {
        match outcome {
            Ok(_) => heads.extend(handoffs.release(source)),
            Err(err) => {
                tracing::warn!(error = %err, "cannot store a hand-off; the delivery it came from will be delivered again");
                // Its head stays unacked, left to its lease.
                handoffs.release(source);
            }
        }
    }
    ack_heads(engine, heads).await;
}

/// Acks stored heads whose lines are settled, counted under their own topics. A failure
/// leaves them to their leases.
pub async fn ack_heads(engine: &Engine, heads: Heads) {
    if heads.is_empty() {
        return;
    }
    match engine.ack_batch(&heads).await {
        Ok(_) => {
            for head in &heads {
                metrics::counter!("tta_broker_acked_total", "topic" => head.topic.clone())
                    .increment(1);
            }
        }
        Err(err) => {
            tracing::warn!(error = %err, count = heads.len(), "cannot ack the heads of settled hand-offs; they will be delivered again");
        }
    }
}

/// Stores expired hand-offs every [`SWEEP_INTERVAL`] while any are in flight, until shutdown;
/// a broker without hand-offs is not woken for it.
pub async fn sweep(
    engine: Arc<Engine>,
    handoffs: Arc<Handoffs>,
    shutdown: tta_runtime::Shutdown,
) -> Result<(), tta_runtime::BoxError> {
    loop {
        let wait = if handoffs.pending_any() {
            tokio::time::sleep(SWEEP_INTERVAL).boxed()
        } else {
            handoffs.first_pending.notified().boxed()
        };
        tokio::select! {
            () = wait => {}
            () = shutdown.wait() => break,
        }
        let now = Instant::now();
        let expired = handoffs.expired(now);
        store_later(
            &engine,
            &handoffs,
            expired,
            EXPIRED,
            Duration::ZERO,
            Some(now),
        )
        .await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(topic: &str) -> Outgoing {
        Outgoing {
            topic: topic.to_owned(),
            priority: tta_types::Priority::Normal,
            headers: HashMap::new(),
            payload: prost::bytes::Bytes::from_static(b"x"),
            idempotency_key: None,
            delay: Duration::ZERO,
            content_type: String::new(),
        }
    }

    fn head() -> Receipt {
        Receipt::parse("receipt", "agent.ipa:n:1-0").unwrap()
    }

    fn register(
        handoffs: &Handoffs,
        topic: &str,
        stream: u64,
        flow: Arc<Flow>,
        outgoing: DeliverySender,
    ) {
        handoffs.register(topic, stream, flow, outgoing, Duration::from_secs(30));
    }

    /// Whether `handoffs` took the message.
    fn handed(handoffs: &Handoffs, message: Outgoing, source: Source, deadline: Instant) -> bool {
        handoffs.hand(message, source, deadline).is_none()
    }

    /// A consumer with one free credit and nothing stored waiting for it.
    fn waiting_flow() -> Arc<Flow> {
        let flow = Arc::new(Flow::new(1, false));
        flow.catch_up_for_test();
        flow
    }

    #[test]
    fn a_message_goes_only_to_a_caught_up_consumer_with_free_credit() {
        let handoffs = Handoffs::default();
        let far = Instant::now() + Duration::from_secs(60);
        let wba = || message("agent.wba");
        assert!(!handed(&handoffs, wba(), Source::Stored(head()), far));

        let (sender, mut receiver) = mpsc::channel(4);
        let busy = Arc::new(Flow::new(4, false));
        register(&handoffs, "agent.wba", 1, busy, sender.clone());
        assert!(!handed(&handoffs, wba(), Source::Stored(head()), far));

        register(&handoffs, "agent.wba", 2, waiting_flow(), sender);
        assert!(handed(&handoffs, wba(), Source::Stored(head()), far));
        let delivery = receiver.try_recv().unwrap().unwrap();
        assert!(is_handoff(&delivery.receipt));
        assert_eq!(delivery.message.unwrap().topic, "agent.wba");
        // Its one credit is taken.
        assert!(!handed(&handoffs, wba(), Source::Stored(head()), far));
    }

    #[test]
    fn settling_the_last_of_a_line_releases_its_stored_head_once() {
        let handoffs = Handoffs::default();
        let far = Instant::now() + Duration::from_secs(60);
        let (sender, mut receiver) = mpsc::channel(4);
        register(&handoffs, "agent.wba", 1, waiting_flow(), sender.clone());
        register(&handoffs, "agent.nga", 2, waiting_flow(), sender);

        assert!(handed(
            &handoffs,
            message("agent.wba"),
            Source::Stored(head()),
            far
        ));
        let first = receiver.try_recv().unwrap().unwrap().receipt;
        handoffs.answered_by_handoff(&first);
        assert!(handed(
            &handoffs,
            message("agent.nga"),
            Source::Handed(first.clone()),
            far
        ));
        let second = receiver.try_recv().unwrap().unwrap().receipt;
        assert_eq!(handoffs.pending_count(), 2);
        // The answered one is with no consumer any more: it never expires by itself.
        assert_eq!(handoffs.expired(far), vec![second.clone()]);

        // An ack of the answered one (a client that settles twice) releases nothing.
        assert!(handoffs.settled([first.as_str()]).is_empty());
        assert!(handoffs.heads_a_line(&head().to_string()));
        let heads = handoffs.settled([second.as_str()]);
        assert_eq!(heads, vec![head()]);
        assert!(!handoffs.heads_a_line(&head().to_string()));
        assert_eq!(handoffs.pending_count(), 0);
        assert!(
            handoffs
                .settled([second.as_str(), first.as_str()])
                .is_empty()
        );
    }

    #[test]
    fn a_line_never_outlives_a_third_of_its_heads_remaining_lease() {
        let handoffs = Handoffs::default();
        let (sender, _receiver) = mpsc::channel(4);
        register(&handoffs, "agent.wba", 1, waiting_flow(), sender);
        let head_deadline = head_deadline_from(Instant::now() + Duration::from_secs(3)).unwrap();
        assert!(
            head_deadline_from(Instant::now() + Duration::from_millis(200)).is_none(),
            "too little time left for a line"
        );
        assert!(handed(
            &handoffs,
            message("agent.wba"),
            Source::Stored(head()),
            head_deadline
        ));
        let soon = Instant::now() + Duration::from_millis(1100);
        assert!(handoffs.expired(Instant::now()).is_empty());
        assert_eq!(handoffs.expired(soon).len(), 1);
        let receipt = handoffs.expired(soon).remove(0);
        // Extending never moves it past the head's deadline.
        assert!(handoffs.extend(&receipt, Duration::from_secs(30)));
        assert_eq!(handoffs.expired(soon).len(), 1);
        assert!(!handoffs.extend("~0-0", Duration::from_secs(30)));
    }
}
