//! `tta dlq …` and `tta broker …` against a real broker process: an operator can see a dead
//! letter, replay it, and read queue statistics.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context, ensure};
use tokio_stream::wrappers::ReceiverStream;
use tta_e2e::tta;
use tta_proto::v1::{self as pb, broker_client::BrokerClient};
use tta_testkit::{RedisServer, ServiceProcess, free_port};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_list_replay_and_purge_dead_letters_from_the_cli() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let admin: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let grpc: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let broker = ServiceProcess::spawn(
        "tta-broker",
        &[
            "--admin-addr".into(),
            admin.to_string(),
            "--grpc-addr".into(),
            grpc.to_string(),
        ],
        &[("TTA_REDIS_URL", redis.url())],
    )?;
    broker.wait_ready(admin, Duration::from_secs(20)).await?;
    let endpoint = format!("http://{grpc}");

    // A message that its consumer rejects for good lands in the dead-letter queue.
    let mut client = BrokerClient::connect(endpoint.clone()).await?;
    client
        .publish(pb::PublishRequest {
            message: Some(pb::OutgoingMessage {
                topic: "cli.jobs".into(),
                payload: b"poison".to_vec().into(),
                ..Default::default()
            }),
        })
        .await?;
    let (frames, receiver) = tokio::sync::mpsc::channel(8);
    frames
        .send(pb::ConsumeRequest {
            frame: Some(pb::consume_request::Frame::Subscribe(pb::SubscribeFrame {
                topic: "cli.jobs".into(),
                group: "workers".into(),
                consumer: "w1".into(),
                ..Default::default()
            })),
        })
        .await?;
    let mut deliveries = client
        .consume(ReceiverStream::new(receiver))
        .await?
        .into_inner();
    let delivery = tokio::time::timeout(Duration::from_secs(5), deliveries.message())
        .await??
        .context("no delivery")?;
    client
        .nack(pb::NackRequest {
            receipt: delivery.receipt,
            kind: pb::NackKind::Permanent as i32,
            reason: "cannot parse".into(),
            retry_after: None,
        })
        .await?;

    let (code, listing) = tta(&["dlq", "--broker", &endpoint, "list", "cli.jobs"]).await?;
    ensure!(code == 0, "tta dlq list exited {code}: {listing}");
    ensure!(listing.starts_with("1 dead letters"), "{listing}");
    ensure!(
        listing.contains("permanent-nack") && listing.contains("cannot parse"),
        "{listing}"
    );
    let id = listing
        .lines()
        .nth(1)
        .and_then(|line| line.split_whitespace().next())
        .context("no dead-letter id in the listing")?
        .to_owned();

    let (code, shown) = tta(&["dlq", "--broker", &endpoint, "show", "cli.jobs", &id]).await?;
    ensure!(
        code == 0 && shown.contains("attempt 1") && shown.contains("NackedPermanent"),
        "{shown}"
    );

    let (code, replayed) =
        tta(&["dlq", "--broker", &endpoint, "replay", "cli.jobs", "--all"]).await?;
    ensure!(code == 0 && replayed.contains("replayed 1"), "{replayed}");
    let again = tokio::time::timeout(Duration::from_secs(5), deliveries.message())
        .await??
        .context("the replayed message was not delivered")?;
    ensure!(
        again
            .message
            .is_some_and(|m| m.payload.as_ref() == b"poison")
    );

    let (code, stats) = tta(&["broker", "--broker", &endpoint, "stats", "cli.jobs"]).await?;
    ensure!(code == 0 && stats.contains("cli.jobs"), "{stats}");

    let (code, purged) = tta(&["dlq", "--broker", &endpoint, "purge", "cli.jobs", "--all"]).await?;
    ensure!(code == 0 && purged.contains("purged 0"), "{purged}");

    let (code, refused) = tta(&["dlq", "--broker", &endpoint, "list", "bad topic"]).await?;
    ensure!(
        code == 2 && refused.contains("topic"),
        "bad input must exit 2 naming the field: {refused}"
    );
    Ok(())
}
