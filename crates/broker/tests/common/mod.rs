//! Shared harness of the broker's integration tests: a private redis-server, the broker running
//! in-process on an ephemeral port, and small client helpers.

#![allow(dead_code)]

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming, transport::Channel};
use tta_proto::v1::{self as pb, broker_client::BrokerClient};
use tta_runtime::service::{RunningService, ServiceKind};
use tta_testkit::{RedisServer, start_in_process, test_config};
use tta_types::Config;

/// How long a test waits for something that should happen promptly.
pub const WAIT: Duration = Duration::from_secs(5);
/// The consumer group every test consumer joins.
pub const GROUP: &str = "workers";

pub struct Harness {
    pub redis: RedisServer,
    pub broker: Option<RunningService>,
    pub endpoint: String,
    pub config: Config,
}

impl Harness {
    /// A broker with short leases and retries, so fault tests finish in seconds.
    pub async fn start(test: &str) -> anyhow::Result<Self> {
        Self::start_with(test, RedisServer::start()?, |_| {}).await
    }

    /// Like [`Harness::start`], with test-specific configuration on top.
    pub async fn start_adjusted(
        test: &str,
        adjust: impl FnOnce(&mut Config),
    ) -> anyhow::Result<Self> {
        Self::start_with(test, RedisServer::start()?, adjust).await
    }

    pub async fn start_with(
        test: &str,
        redis: RedisServer,
        adjust: impl FnOnce(&mut Config),
    ) -> anyhow::Result<Self> {
        let mut config = test_config(&redis.url(), test);
        config.broker.visibility_timeout = Duration::from_secs(1);
        config.broker.reclaim_interval = Duration::from_millis(200);
        config.broker.retry.base_delay = Duration::from_millis(100);
        config.broker.retry.max_delay = Duration::from_secs(2);
        config.broker.retry.jitter = 0.0;
        adjust(&mut config);
        let broker = start_in_process(ServiceKind::Broker, config.clone(), tta_broker::build)
            .await
            .map_err(|err| anyhow::anyhow!(err))?;
        let endpoint = format!(
            "http://{}",
            broker
                .grpc_addr
                .ok_or_else(|| anyhow::anyhow!("no grpc address"))?
        );
        Ok(Self {
            redis,
            broker: Some(broker),
            endpoint,
            config,
        })
    }

    /// A client on a connection of its own.
    pub async fn client(&self) -> anyhow::Result<BrokerClient<Channel>> {
        let channel = tonic::transport::Endpoint::from_shared(self.endpoint.clone())?
            .tcp_nodelay(true)
            .connect()
            .await?;
        Ok(BrokerClient::new(channel))
    }

    pub async fn stop(&mut self) {
        if let Some(broker) = self.broker.take() {
            let _ = broker.stop(Duration::from_secs(1)).await;
        }
    }
}

pub fn message(topic: &str, priority: pb::Priority, payload: &str) -> pb::OutgoingMessage {
    pb::OutgoingMessage {
        topic: topic.to_owned(),
        priority: priority as i32,
        payload: payload.as_bytes().to_vec().into(),
        ..Default::default()
    }
}

/// Publishes one message; the status is returned so tests can inspect refusals.
pub async fn publish(
    client: &mut BrokerClient<Channel>,
    message: pb::OutgoingMessage,
) -> Result<pb::PublishResponse, Status> {
    client
        .publish(pb::PublishRequest {
            message: Some(message),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Publishes `payloads` to `topic` in one batch and fails unless every item was stored.
/// Returns the message ids, in order.
pub async fn publish_all(
    client: &mut BrokerClient<Channel>,
    topic: &str,
    priority: pb::Priority,
    payloads: impl IntoIterator<Item = String>,
) -> anyhow::Result<Vec<String>> {
    let messages = payloads
        .into_iter()
        .map(|payload| message(topic, priority, &payload))
        .collect();
    let response = client
        .publish_batch(pb::PublishBatchRequest { messages })
        .await?
        .into_inner();
    if let Some(failed) = response.results.iter().find(|result| result.code != 0) {
        anyhow::bail!("a batch item was not stored: {failed:?}");
    }
    Ok(response
        .results
        .into_iter()
        .map(|result| result.message_id)
        .collect())
}

pub async fn dead_letters(
    client: &mut BrokerClient<Channel>,
    topic: &str,
) -> anyhow::Result<pb::ListDeadLettersResponse> {
    Ok(client
        .list_dead_letters(pb::ListDeadLettersRequest {
            topic: topic.to_owned(),
            page_size: 0,
            page_token: String::new(),
        })
        .await?
        .into_inner())
}

pub async fn topic_stats(
    client: &mut BrokerClient<Channel>,
    topic: &str,
) -> anyhow::Result<pb::TopicStats> {
    let mut response = client
        .get_topic_stats(pb::GetTopicStatsRequest {
            topics: vec![topic.to_owned()],
        })
        .await?
        .into_inner();
    response
        .topics
        .pop()
        .ok_or_else(|| anyhow::anyhow!("no stats for topic {topic}"))
}

/// Waits until nothing of `topic` is queued, delayed or leased.
pub async fn wait_until_drained(client: &BrokerClient<Channel>, topic: &str) -> anyhow::Result<()> {
    tta_testkit::wait_until(WAIT, &format!("topic {topic} to drain"), || {
        let mut client = client.clone();
        async move {
            let stats = topic_stats(&mut client, topic).await.ok()?;
            let drained = stats.depth_high + stats.depth_normal + stats.depth_low == 0
                && stats.delayed == 0
                && stats.pending == 0;
            drained.then_some(())
        }
    })
    .await
}

/// The `retry-after-ms` trailer of a refusal, if present.
pub fn retry_after_ms(status: &Status) -> Option<u64> {
    status
        .metadata()
        .get("retry-after-ms")
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse().ok())
}

/// The subscribe frame of the test consumers, with the broker's default lease.
pub fn subscribe_frame(topic: &str, consumer: &str, prefetch: u32) -> pb::ConsumeRequest {
    pb::ConsumeRequest {
        frame: Some(pb::consume_request::Frame::Subscribe(pb::SubscribeFrame {
            topic: topic.to_owned(),
            group: GROUP.to_owned(),
            consumer: consumer.to_owned(),
            prefetch,
            visibility_timeout: None,
            manual_credit: false,
        })),
    }
}

/// A consumer on a Consume stream: frames go out through `frames`, deliveries come in.
pub struct Consumer {
    pub frames: mpsc::Sender<pb::ConsumeRequest>,
    pub deliveries: Streaming<pb::Delivery>,
}

impl Consumer {
    pub async fn subscribe(
        client: &mut BrokerClient<Channel>,
        topic: &str,
        consumer: &str,
        prefetch: u32,
    ) -> anyhow::Result<Self> {
        Ok(Self::open(client, subscribe_frame(topic, consumer, prefetch)).await?)
    }

    /// Subscribes with its own lease length (for tests where the default 1 s lease would
    /// expire while the consumer is still healthy).
    pub async fn subscribe_with_lease(
        client: &mut BrokerClient<Channel>,
        topic: &str,
        consumer: &str,
        prefetch: u32,
        lease: Duration,
    ) -> anyhow::Result<Self> {
        let mut frame = subscribe_frame(topic, consumer, prefetch);
        if let Some(pb::consume_request::Frame::Subscribe(subscribe)) = frame.frame.as_mut() {
            subscribe.visibility_timeout = Some(lease.try_into()?);
        }
        Ok(Self::open(client, frame).await?)
    }

    /// Opens a Consume stream whose first frame is `first`; the call's status is returned
    /// as is, so validation tests can inspect it.
    pub async fn open(
        client: &mut BrokerClient<Channel>,
        first: pb::ConsumeRequest,
    ) -> Result<Self, Status> {
        let (frames, receiver) = mpsc::channel(1024);
        frames
            .send(first)
            .await
            .map_err(|_| Status::internal("frame channel closed"))?;
        let deliveries = client
            .consume(ReceiverStream::new(receiver))
            .await?
            .into_inner();
        Ok(Self { frames, deliveries })
    }

    /// The next delivery, or an error after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> anyhow::Result<pb::Delivery> {
        match tokio::time::timeout(timeout, self.deliveries.message()).await {
            Ok(Ok(Some(delivery))) => Ok(delivery),
            Ok(Ok(None)) => anyhow::bail!("the delivery stream ended"),
            Ok(Err(status)) => anyhow::bail!("the delivery stream failed: {status}"),
            Err(_) => anyhow::bail!("no delivery within {timeout:?}"),
        }
    }

    /// The next `count` deliveries, each within `timeout`.
    pub async fn take(
        &mut self,
        count: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<pb::Delivery>> {
        let mut deliveries = Vec::with_capacity(count);
        for _ in 0..count {
            deliveries.push(self.next(timeout).await?);
        }
        Ok(deliveries)
    }

    /// Asserts that nothing arrives for `quiet`.
    pub async fn expect_nothing(&mut self, quiet: Duration) -> anyhow::Result<()> {
        match tokio::time::timeout(quiet, self.deliveries.message()).await {
            Err(_) => Ok(()),
            Ok(other) => anyhow::bail!("expected no delivery, got {other:?}"),
        }
    }

    /// The status that ended the stream, or an error if it delivers or stays open.
    pub async fn expect_error(&mut self, timeout: Duration) -> anyhow::Result<Status> {
        match tokio::time::timeout(timeout, self.deliveries.message()).await {
            Ok(Err(status)) => Ok(status),
            Ok(Ok(other)) => anyhow::bail!("expected the stream to fail, got {other:?}"),
            Err(_) => anyhow::bail!("the stream neither failed nor delivered within {timeout:?}"),
        }
    }

    pub async fn send(&self, frame: pb::consume_request::Frame) -> anyhow::Result<()> {
        self.frames
            .send(pb::ConsumeRequest { frame: Some(frame) })
            .await?;
        Ok(())
    }

    // The frame may grow fields (e.g. batched receipts); a single receipt needs none of them.
    #[allow(clippy::needless_update)]
    pub async fn ack(&self, receipt: &str) -> anyhow::Result<()> {
        self.send(pb::consume_request::Frame::Ack(pb::AckFrame {
            receipt: receipt.to_owned(),
            ..Default::default()
        }))
        .await
    }

    pub async fn nack(
        &self,
        receipt: &str,
        kind: pb::NackKind,
        reason: &str,
    ) -> anyhow::Result<()> {
        self.send(pb::consume_request::Frame::Nack(pb::NackFrame {
            receipt: receipt.to_owned(),
            kind: kind as i32,
            reason: reason.to_owned(),
            retry_after: None,
        }))
        .await
    }
}

/// A reply frame: settles `receipt` by publishing `messages`.
pub fn reply(receipt: &str, messages: Vec<pb::OutgoingMessage>) -> pb::consume_request::Frame {
    pb::consume_request::Frame::Reply(pb::ReplyFrame {
        receipt: receipt.to_owned(),
        publish: messages,
    })
}

pub fn payload_text(delivery: &pb::Delivery) -> String {
    delivery
        .message
        .as_ref()
        .map(|message| String::from_utf8_lossy(&message.payload).into_owned())
        .unwrap_or_default()
}

pub fn attempts(delivery: &pb::Delivery) -> u32 {
    delivery
        .message
        .as_ref()
        .map_or(0, |message| message.attempts)
}

pub fn message_id(delivery: &pb::Delivery) -> String {
    delivery
        .message
        .as_ref()
        .map(|message| message.id.clone())
        .unwrap_or_default()
}
