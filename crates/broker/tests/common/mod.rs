//! Shared harness of the broker's integration tests: a private redis-server, the broker running
//! in-process on an ephemeral port, and small client helpers.

#![allow(dead_code)]

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Streaming, transport::Channel};
use tta_proto::v1::{self as pb, broker_client::BrokerClient};
use tta_runtime::service::{RunningService, ServiceKind};
use tta_testkit::{RedisServer, start_in_process, test_config};
use tta_types::Config;

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
        payload: payload.as_bytes().to_vec(),
        ..Default::default()
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
        let (frames, receiver) = mpsc::channel(1024);
        frames
            .send(pb::ConsumeRequest {
                frame: Some(pb::consume_request::Frame::Subscribe(pb::SubscribeFrame {
                    topic: topic.to_owned(),
                    group: "workers".to_owned(),
                    consumer: consumer.to_owned(),
                    prefetch,
                    visibility_timeout: None,
                    manual_credit: false,
                })),
            })
            .await?;
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

    /// Asserts that nothing arrives for `quiet`.
    pub async fn expect_nothing(&mut self, quiet: Duration) -> anyhow::Result<()> {
        match tokio::time::timeout(quiet, self.deliveries.message()).await {
            Err(_) => Ok(()),
            Ok(other) => anyhow::bail!("expected no delivery, got {other:?}"),
        }
    }

    pub async fn ack(&self, receipt: &str) -> anyhow::Result<()> {
        self.frames
            .send(pb::ConsumeRequest {
                frame: Some(pb::consume_request::Frame::Ack(pb::AckFrame {
                    receipt: receipt.to_owned(),
                })),
            })
            .await?;
        Ok(())
    }

    pub async fn nack(
        &self,
        receipt: &str,
        kind: pb::NackKind,
        reason: &str,
    ) -> anyhow::Result<()> {
        self.frames
            .send(pb::ConsumeRequest {
                frame: Some(pb::consume_request::Frame::Nack(pb::NackFrame {
                    receipt: receipt.to_owned(),
                    kind: kind as i32,
                    reason: reason.to_owned(),
                    retry_after: None,
                })),
            })
            .await?;
        Ok(())
    }
}

pub fn payload_text(delivery: &pb::Delivery) -> String {
    delivery
        .message
        .as_ref()
        .map(|message| String::from_utf8_lossy(&message.payload).into_owned())
        .unwrap_or_default()
}
