//! The client side of the broker contract, shared by every process that moves work through it
//! (the gateway and the agent workers): publishing, and a consumer that stays subscribed across
//! broker restarts, runs a handler per delivery with bounded concurrency, and settles each
//! delivery only after its handler has finished — so a crash means redelivery, never loss.

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures::{StreamExt, future::BoxFuture};
use tokio::{
    sync::{Semaphore, mpsc, watch},
    task::JoinSet,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, transport::Channel};
use tracing::Instrument;
use tta_proto::v1::{self as pb, broker_client::BrokerClient};

use crate::{
    grpc,
    publish_lane::{self, PublishLane},
    shutdown::Shutdown,
    trace_context,
};

/// A cheap-to-clone publisher. Every clone shares one publish stream to the broker.
#[derive(Debug, Clone)]
pub struct Publisher {
    client: BrokerClient<Channel>,
    lane: PublishLane,
}

/// One message to publish.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outgoing {
    pub topic: String,
    pub payload: Vec<u8>,
    pub content_type: String,
    pub priority: pb::Priority,
    pub idempotency_key: Option<String>,
    pub headers: HashMap<String, String>,
}

impl Publisher {
    /// Connects lazily (and reconnects by itself) to the broker at `endpoint`.
    pub fn connect_lazy(endpoint: &str) -> Result<Self, grpc::Error> {
        let client = BrokerClient::new(grpc::connect_lazy(endpoint)?);
        Ok(Self {
            lane: PublishLane::new(client.clone()),
            client,
        })
    }

    pub fn client(&self) -> BrokerClient<Channel> {
        self.client.clone()
    }

    /// Publishes one message with the current trace context in its headers; returns its id.
    pub async fn publish(&self, message: Outgoing) -> Result<String, Status> {
        let results = self.lane.publish(vec![message.into_proto()]).await?;
        let mut result = results
            .into_iter()
            .next()
            .ok_or_else(|| Status::internal("the broker answered no publish result"))?;
        // One message: its fields are named as in a unary Publish (`message.topic`).
        if let Some(rest) = result.error.strip_prefix("messages[0]") {
            result.error = format!("message{rest}");
        }
        publish_lane::result_status(&result)?;
        Ok(result.message_id)
    }
}

impl Outgoing {
    /// The wire form, carrying the current span's trace context unless one is set already.
    pub fn into_proto(self) -> pb::OutgoingMessage {
        let mut headers = self.headers;
        if !headers.contains_key(trace_context::TRACEPARENT) {
            trace_context::inject_into_map(&tracing::Span::current(), &mut headers);
        }
        pb::OutgoingMessage {
            topic: self.topic,
            priority: self.priority as i32,
            headers,
            payload: self.payload.into(),
            idempotency_key: self.idempotency_key.unwrap_or_default(),
            delay: None,
            content_type: self.content_type,
        }
    }
}

/// How a handler wants its delivery settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle {
    /// The effect is durable: done.
    Ack,
    /// Done, and this is what came of it: the broker publishes the message and then acks, in
    /// one step, so the result cannot be lost between the two (nor published without the ack
    /// following; a failed publish means a transient nack and another attempt).
    Reply(Box<Outgoing>),
    /// Failed, try again later (with the broker's backoff).
    Retry(String),
    /// Failed for good: dead-letter it.
    Reject(String),
}

/// Handles one delivery; must be idempotent, because delivery is at least once.
pub type Handler = Arc<dyn Fn(pb::Delivery) -> BoxFuture<'static, Settle> + Send + Sync>;

/// Where and how to consume.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub topic: String,
    pub group: String,
    pub consumer: String,
    /// Deliveries held at once; also the number of handlers running concurrently.
    pub prefetch: u32,
    pub visibility_timeout: Option<Duration>,
}

/// Consumes until `shutdown`, re-subscribing with backoff whenever the stream breaks (broker
/// restart, network). Never returns an error: a consumer that gives up would silently stall
/// its agents.
pub async fn consume(
    publisher: Publisher,
    subscription: Subscription,
    handler: Handler,
    shutdown: Shutdown,
) {
    // Never paused: the sender lives as long as the consumer.
    let (_open, gate) = watch::channel(false);
    consume_while(publisher, subscription, handler, shutdown, gate).await;
}

/// [`consume`], but while `paused` holds `true` the consumer is unsubscribed: deliveries in
/// flight settle, nothing new is taken, and the broker's competing consumers get the work
/// instead. It subscribes again once `paused` turns `false`.
pub async fn consume_while(
    publisher: Publisher,
    subscription: Subscription,
    handler: Handler,
    shutdown: Shutdown,
    mut paused: watch::Receiver<bool>,
) {
    let mut failures: u32 = 0;
    while !shutdown.is_triggered() {
        if *paused.borrow_and_update() {
            tracing::info!(topic = %subscription.topic, "consumer paused");
            tokio::select! {
                changed = paused.wait_for(|paused| !*paused) => {
                    if changed.is_err() {
                        return;
                    }
                }
                () = shutdown.wait() => return,
            }
            tracing::info!(topic = %subscription.topic, "consumer resumed");
        }
        match consume_once(&publisher, &subscription, &handler, &shutdown, &mut paused).await {
            Ok(()) => failures = 0,
            Err(status) => {
                failures += 1;
                let delay =
                    Duration::from_millis(100u64 << failures.min(5)).min(Duration::from_secs(3));
                tracing::warn!(topic = %subscription.topic, error = %status, retry_in = ?delay, "consumer stream lost; re-subscribing");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.wait() => return,
                }
            }
        }
    }
}

async fn consume_once(
    publisher: &Publisher,
    subscription: &Subscription,
    handler: &Handler,
    shutdown: &Shutdown,
    paused: &mut watch::Receiver<bool>,
) -> Result<(), Status> {
    let (frames, receiver) = mpsc::channel(subscription.prefetch as usize * 2 + 8);
    let subscribe = pb::ConsumeRequest {
        frame: Some(pb::consume_request::Frame::Subscribe(pb::SubscribeFrame {
            topic: subscription.topic.clone(),
            group: subscription.group.clone(),
            consumer: subscription.consumer.clone(),
            prefetch: subscription.prefetch,
            visibility_timeout: subscription
                .visibility_timeout
                .and_then(|lease| prost_types::Duration::try_from(lease).ok()),
            manual_credit: false,
        })),
    };
    frames
        .send(subscribe)
        .await
        .map_err(|_| Status::internal("consumer frame channel closed"))?;
    let mut deliveries = publisher
        .client()
        .consume(ReceiverStream::new(receiver))
        .await?
        .into_inner();
    tracing::info!(topic = %subscription.topic, consumer = %subscription.consumer, "consuming");

    let slots = Arc::new(Semaphore::new(subscription.prefetch.max(1) as usize));
    let mut running = JoinSet::new();
    let outcome = loop {
        let next = tokio::select! {
            next = deliveries.next() => next,
            () = shutdown.wait() => break Ok(()),
            Ok(_) = paused.wait_for(|paused| *paused) => break Ok(()),
        };
        let delivery = match next {
            Some(Ok(delivery)) => delivery,
            Some(Err(status)) => break Err(status),
            None => break Err(Status::unavailable("the broker ended the stream")),
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break Ok(());
        };
        let handler = handler.clone();
        let frames = frames.clone();
        let span = delivery_span(&subscription.topic, &delivery);
        running.spawn(
            async move {
                let receipt = delivery.receipt.clone();
                let frame = match handler(delivery).await {
                    Settle::Ack => pb::consume_request::Frame::Ack(pb::AckFrame {
                        receipt,
                        receipts: Vec::new(),
                    }),
                    // Built inside the delivery's span: the reply continues its trace.
                    Settle::Reply(message) => pb::consume_request::Frame::Reply(pb::ReplyFrame {
                        receipt,
                        publish: vec![message.into_proto()],
                    }),
                    Settle::Retry(reason) => nack(receipt, pb::NackKind::Transient, reason),
                    Settle::Reject(reason) => nack(receipt, pb::NackKind::Permanent, reason),
                };
                // If the stream is gone the lease expires and the message is redelivered.
                let _ = frames.send(pb::ConsumeRequest { frame: Some(frame) }).await;
                drop(permit);
            }
            .instrument(span),
        );
        while running.try_join_next().is_some() {}
    };
    // Let handlers in flight settle before the stream closes.
    while running.join_next().await.is_some() {}
    outcome
}

/// A span per delivery that continues the publisher's trace (its `traceparent` header).
fn delivery_span(topic: &str, delivery: &pb::Delivery) -> tracing::Span {
    let message = delivery.message.as_ref();
    let span = tracing::info_span!(
        "delivery",
        topic,
        message_id = message.map_or("", |message| message.id.as_str()),
        attempt = message.map_or(0, |message| message.attempts),
    );
    if let Some(message) = message {
        trace_context::set_parent_from_map(&span, &message.headers);
    }
    span
}

fn nack(receipt: String, kind: pb::NackKind, reason: String) -> pb::consume_request::Frame {
    pb::consume_request::Frame::Nack(pb::NackFrame {
        receipt,
        kind: kind as i32,
        reason,
        retry_after: None,
    })
}
