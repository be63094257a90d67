//! Redis going away: the broker answers UNAVAILABLE while it is down, recovers by itself when
//! it is back, and loses no publish it acknowledged (Redis with an append-only file).

mod common;

use std::{collections::HashSet, time::Duration};

use common::{
    Consumer, Harness, WAIT, message, message_id, payload_text, publish, publish_all,
    retry_after_ms,
};
use tonic::Code;
use tta_proto::v1 as pb;
use tta_testkit::{RedisServer, wait_until};

/// How long the broker may take to notice that Redis is back.
const RECOVERY: Duration = Duration::from_secs(10);
const LEASE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_loses_no_acknowledged_publish_and_open_streams_resume()
-> anyhow::Result<()> {
    let mut harness =
        Harness::start_with("redis-restart", RedisServer::start_with_aof()?, |_| {}).await?;
    let mut client = harness.client().await?;

    // A consumer that stays subscribed through the outage.
    let mut steady =
        Consumer::subscribe_with_lease(&mut client, "live", "steady", 16, LEASE).await?;
    publish_all(
        &mut client,
        "live",
        pb::Priority::Normal,
        ["before".to_owned()],
    )
    .await?;
    let before = steady.next(WAIT).await?;
    assert_eq!(payload_text(&before), "before");
    let acked = client
        .ack(pb::AckRequest {
            receipts: vec![before.receipt],
        })
        .await?
        .into_inner();
    assert_eq!(acked.acked, 1);

    // A backlog nobody consumes yet; each publish was acknowledged, so each must survive.
    let mut backlog = HashSet::new();
    for n in 1..=20 {
        let published = publish(
            &mut client,
            message("backlog", pb::Priority::Normal, &format!("b-{n}")),
        )
        .await?;
        backlog.insert(published.message_id);
    }

    harness.redis.kill();
    let down = tokio::time::timeout(
        WAIT,
        publish(
            &mut client,
            message("backlog", pb::Priority::Normal, "during"),
        ),
    )
    .await?
    .expect_err("publishing fails while redis is down");
    assert_eq!(down.code(), Code::Unavailable, "{down:?}");
    assert!(retry_after_ms(&down).is_some(), "{down:?}");
    let down = tokio::time::timeout(
        WAIT,
        client.publish_batch(pb::PublishBatchRequest {
            messages: vec![message("backlog", pb::Priority::Normal, "during")],
        }),
    )
    .await?
    .expect_err("batch publishing fails while redis is down");
    assert_eq!(down.code(), Code::Unavailable, "{down:?}");

    tokio::task::block_in_place(|| harness.redis.restart())?;

    // Publishing recovers by itself. The client retries with an idempotency key, as clients
    // should, so an attempt that failed late but was stored cannot show up twice.
    let after = wait_until(RECOVERY, "a publish to succeed after the restart", || {
        let mut client = client.clone();
        async move {
            let outgoing = pb::OutgoingMessage {
                idempotency_key: "after-restart".into(),
                ..message("live", pb::Priority::Normal, "after")
            };
            publish(&mut client, outgoing).await.ok()
        }
    })
    .await?;

    // The stream that stayed open through the outage resumes delivery.
    let resumed = steady.next(RECOVERY).await?;
    assert_eq!(message_id(&resumed), after.message_id);
    assert_eq!(payload_text(&resumed), "after");
    steady.ack(&resumed.receipt).await?;

    // And the backlog is all there for a consumer that arrives after the restart.
    let mut late =
        Consumer::subscribe_with_lease(&mut client, "backlog", "late", 64, LEASE).await?;
    let delivered: HashSet<String> = late
        .take(backlog.len(), WAIT)
        .await?
        .iter()
        .map(message_id)
        .collect();
    assert_eq!(delivered, backlog);
    late.expect_nothing(Duration::from_millis(300)).await?;
    harness.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_keeps_receiving_after_redis_restarts_with_no_data() -> anyhow::Result<()> {
    let mut harness = Harness::start("redis-wiped").await?;
    let mut client = harness.client().await?;
    let mut consumer = Consumer::subscribe_with_lease(&mut client, "jobs", "c1", 16, LEASE).await?;
    publish_all(
        &mut client,
        "jobs",
        pb::Priority::Normal,
        ["first".to_owned()],
    )
    .await?;
    let first = consumer.next(WAIT).await?;
    consumer.ack(&first.receipt).await?;

    // Without persistence the restarted server has lost the streams and the consumer group.
    tokio::task::block_in_place(|| harness.redis.restart())?;
    let after = wait_until(RECOVERY, "a publish to succeed after the restart", || {
        let mut client = client.clone();
        async move {
            let outgoing = pb::OutgoingMessage {
                idempotency_key: "after-wipe".into(),
                ..message("jobs", pb::Priority::Normal, "after")
            };
            publish(&mut client, outgoing).await.ok()
        }
    })
    .await?;
    let resumed = consumer.next(RECOVERY).await?;
    assert_eq!(message_id(&resumed), after.message_id);
    assert_eq!(payload_text(&resumed), "after");

    // Retries still work: the background promoter knows the topic again.
    consumer
        .nack(&resumed.receipt, pb::NackKind::Transient, "once more")
        .await?;
    let retried = consumer.next(WAIT).await?;
    assert_eq!(message_id(&retried), after.message_id);
    assert_eq!(common::attempts(&retried), 2);
    harness.stop().await;
    Ok(())
}
