//! Flow control both ways: consumers get no more than their credit, and publishers are refused
//! (LOW first, HIGH last) when a topic is full.

mod common;

use std::time::Duration;

use common::{
    Consumer, Harness, WAIT, message, payload_text, publish, publish_all, retry_after_ms,
    topic_stats,
};
use tonic::Code;
use tta_proto::v1 as pb;

/// Long enough that no lease runs out while a test watches for silence.
const LEASE: Duration = Duration::from_secs(30);
const QUIET: Duration = Duration::from_millis(400);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_with_prefetch_two_gets_two_deliveries_and_then_one_more_per_ack()
-> anyhow::Result<()> {
    let mut harness = Harness::start("credit").await?;
    let mut client = harness.client().await?;
    publish_all(
        &mut client,
        "work",
        pb::Priority::Normal,
        (1..=5).map(|n| format!("m-{n}")),
    )
    .await?;
    let mut consumer = Consumer::subscribe_with_lease(&mut client, "work", "c1", 2, LEASE).await?;

    let first = consumer.take(2, WAIT).await?;
    assert_eq!(
        first.iter().map(payload_text).collect::<Vec<_>>(),
        ["m-1", "m-2"]
    );
    consumer.expect_nothing(QUIET).await?;

    // A stream ack gives one credit back...
    consumer.ack(&first[0].receipt).await?;
    assert_eq!(payload_text(&consumer.next(WAIT).await?), "m-3");
    consumer.expect_nothing(QUIET).await?;

    // ...and so does a unary ack of a delivery made on this stream.
    let acked = client
        .ack(pb::AckRequest {
            receipts: vec![first[1].receipt.clone()],
        })
        .await?
        .into_inner();
    assert_eq!(acked.acked, 1);
    assert_eq!(payload_text(&consumer.next(WAIT).await?), "m-4");
    consumer.expect_nothing(QUIET).await?;
    harness.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_manual_credit_only_credit_frames_allow_more_deliveries() -> anyhow::Result<()> {
    let mut harness = Harness::start("manual-credit").await?;
    let mut client = harness.client().await?;
    publish_all(
        &mut client,
        "work",
        pb::Priority::Normal,
        (1..=4).map(|n| format!("m-{n}")),
    )
    .await?;
    let mut frame = common::subscribe_frame("work", "c1", 1);
    if let Some(pb::consume_request::Frame::Subscribe(subscribe)) = frame.frame.as_mut() {
        subscribe.manual_credit = true;
        subscribe.visibility_timeout = Some(LEASE.try_into()?);
    }
    let mut consumer = Consumer::open(&mut client, frame).await?;

    let first = consumer.next(WAIT).await?;
    consumer.ack(&first.receipt).await?;
    consumer.expect_nothing(QUIET).await?;

    consumer
        .send(pb::consume_request::Frame::Credit(pb::CreditFrame {
            credits: 2,
        }))
        .await?;
    let more = consumer.take(2, WAIT).await?;
    assert_eq!(
        more.iter().map(payload_text).collect::<Vec<_>>(),
        ["m-2", "m-3"]
    );
    consumer.expect_nothing(QUIET).await?;
    harness.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_topic_refuses_low_priority_first_while_high_is_still_accepted() -> anyhow::Result<()>
{
    // Limits: all at 10, NORMAL at 9, LOW at 8.
    let mut harness = Harness::start_adjusted("backpressure", |config| {
        config.broker.max_topic_depth = 10;
        config.broker.high_priority_headroom = 0.1;
    })
    .await?;
    let mut client = harness.client().await?;
    publish_all(
        &mut client,
        "busy",
        pb::Priority::Normal,
        (1..=8).map(|n| format!("m-{n}")),
    )
    .await?;

    let refused = publish(&mut client, message("busy", pb::Priority::Low, "low"))
        .await
        .expect_err("LOW is refused at 80 %");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("busy"), "{refused:?}");
    assert!(
        retry_after_ms(&refused).is_some_and(|ms| ms > 0),
        "a refusal carries the retry-after-ms trailer: {refused:?}"
    );

    publish(&mut client, message("busy", pb::Priority::Normal, "m-9")).await?;
    let refused = publish(&mut client, message("busy", pb::Priority::Normal, "m-10"))
        .await
        .expect_err("NORMAL is refused at 90 %");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");

    publish(&mut client, message("busy", pb::Priority::High, "h-1")).await?;
    let refused = publish(&mut client, message("busy", pb::Priority::High, "h-2"))
        .await
        .expect_err("even HIGH is refused at the hard limit");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");

    // In a batch, the refusal is per item, with a retry hint.
    let batch = client
        .publish_batch(pb::PublishBatchRequest {
            messages: vec![message("busy", pb::Priority::Low, "low")],
        })
        .await?
        .into_inner();
    assert_eq!(batch.results[0].code, Code::ResourceExhausted as i32);
    assert!(batch.results[0].retry_after.is_some(), "{batch:?}");

    let stats = topic_stats(&mut client, "busy").await?;
    assert_eq!(
        (stats.depth_high, stats.depth_normal, stats.max_depth),
        (1, 9, 10)
    );

    // Once consumers catch up, LOW is welcome again.
    let mut consumer = Consumer::subscribe(&mut client, "busy", "c1", 16).await?;
    let receipts = consumer
        .take(3, WAIT)
        .await?
        .into_iter()
        .map(|delivery| delivery.receipt)
        .collect();
    let acked = client.ack(pb::AckRequest { receipts }).await?.into_inner();
    assert_eq!(acked.acked, 3);
    publish(&mut client, message("busy", pb::Priority::Low, "low")).await?;
    harness.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_for_a_message_not_yet_delivered_cannot_remove_it() -> anyhow::Result<()> {
    let mut harness = Harness::start("forged-ack").await?;
    let mut client = harness.client().await?;
    publish_all(
        &mut client,
        "work",
        pb::Priority::Normal,
        ["m-1".to_owned(), "m-2".to_owned()],
    )
    .await?;
    let mut consumer = Consumer::subscribe_with_lease(&mut client, "work", "c1", 1, LEASE).await?;
    let first = consumer.next(WAIT).await?;
    assert_eq!(payload_text(&first), "m-1");

    // The undelivered m-2 has the next stream id: same millisecond, next sequence, or a later
    // millisecond. Ack every such guess before m-1 is settled.
    let (prefix, entry) = first
        .receipt
        .rsplit_once(':')
        .expect("receipt ends with the entry id");
    let (millis, sequence) = entry.split_once('-').expect("entry id is ms-seq");
    let millis: u64 = millis.parse()?;
    let sequence: u64 = sequence.parse()?;
    let mut guesses = vec![format!("{prefix}:{millis}-{}", sequence + 1)];
    guesses.extend((1..=5).map(|later| format!("{prefix}:{}-0", millis + later)));
    for guess in &guesses {
        consumer.ack(guess).await?;
    }
    consumer.ack(&first.receipt).await?;

    assert_eq!(
        payload_text(&consumer.next(WAIT).await?),
        "m-2",
        "m-2 must survive forged acks"
    );
    harness.stop().await;
    Ok(())
}
