//! Bad input is refused at the edge with INVALID_ARGUMENT (or NOT_FOUND) and a message that
//! names the offending field, as the contract promises.

mod common;

use std::time::Duration;

use common::{Consumer, Harness, WAIT, message, publish, subscribe_frame};
use tonic::{Code, Status};
use tta_proto::v1 as pb;

/// Fails unless `status` has `code` and its message starts with `field: `.
fn assert_names_field(status: &Status, code: Code, field: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().starts_with(&format!("{field}: ")),
        "the message should name {field}: {:?}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_without_a_topic_is_refused_naming_message_topic() -> anyhow::Result<()> {
    let mut harness = Harness::start("no-topic").await?;
    let mut client = harness.client().await?;
    let status = publish(&mut client, message("", pb::Priority::Normal, "x"))
        .await
        .expect_err("an empty topic is refused");
    assert_names_field(&status, Code::InvalidArgument, "message.topic");
    assert!(status.message().contains("must not be empty"), "{status:?}");
    harness.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_over_the_limit_is_refused_naming_message_payload() -> anyhow::Result<()> {
    let mut harness = Harness::start("big-payload").await?;
    let mut client = harness.client().await?;
    let limit = harness.config.broker.max_payload_bytes.bytes() as usize;
    let mut outgoing = message("big", pb::Priority::Normal, "");
    outgoing.payload = vec![b'x'; limit + 1].into();
    let status = publish(&mut client, outgoing.clone())
        .await
        .expect_err("an oversized payload is refused");
    assert_names_field(&status, Code::InvalidArgument, "message.payload");
    assert!(
        status.message().contains(&(limit + 1).to_string()),
        "the message should give the size: {status:?}"
    );
    // Exactly at the limit is fine.
    outgoing.payload.truncate(limit);
    publish(&mut client, outgoing).await?;
    harness.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_priority_number_is_refused_naming_message_priority() -> anyhow::Result<()> {
    let mut harness = Harness::start("bad-priority").await?;
    let mut client = harness.client().await?;
    let mut outgoing = message("prio", pb::Priority::Normal, "x");
    outgoing.priority = 42;
    let status = publish(&mut client, outgoing)
        .await
        .expect_err("priority 42 is refused");
    assert_names_field(&status, Code::InvalidArgument, "message.priority");
    assert!(status.message().contains("42"), "{status:?}");
    harness.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_publish_batch_is_refused_naming_messages() -> anyhow::Result<()> {
    let mut harness = Harness::start("empty-batch").await?;
    let mut client = harness.client().await?;
    let status = client
        .publish_batch(pb::PublishBatchRequest {
            messages: Vec::new(),
        })
        .await
        .expect_err("an empty batch is refused");
    assert_names_field(&status, Code::InvalidArgument, "messages");
    harness.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_item_in_a_batch_is_reported_by_its_index_while_the_others_are_stored()
-> anyhow::Result<()> {
    let mut harness = Harness::start("batch-item").await?;
    let mut client = harness.client().await?;
    let response = client
        .publish_batch(pb::PublishBatchRequest {
            messages: vec![
                message("ok", pb::Priority::Normal, "a"),
                message("", pb::Priority::Normal, "b"),
                message("ok", pb::Priority::Normal, "c"),
            ],
        })
        .await?
        .into_inner();
    let codes: Vec<i32> = response.results.iter().map(|r| r.code).collect();
    assert_eq!(codes, [0, Code::InvalidArgument as i32, 0], "{response:?}");
    assert!(
        response.results[1].error.starts_with("messages[1].topic: "),
        "{response:?}"
    );
    assert!(!response.results[0].message_id.is_empty());
    harness.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_receipt_on_ack_is_refused_naming_its_index() -> anyhow::Result<()> {
    let mut harness = Harness::start("bad-receipt").await?;
    let mut client = harness.client().await?;
    let status = client
        .ack(pb::AckRequest {
            receipts: vec!["not a receipt".into()],
        })
        .await
        .expect_err("a malformed receipt is refused");
    assert_names_field(&status, Code::InvalidArgument, "receipts[0]");

    let status = client
        .ack(pb::AckRequest {
            receipts: vec!["topic:n:1-0".into(), "topic:x:1-0".into()],
        })
        .await
        .expect_err("a malformed second receipt is refused");
    assert_names_field(&status, Code::InvalidArgument, "receipts[1]");

    let status = client
        .ack(pb::AckRequest {
            receipts: Vec::new(),
        })
        .await
        .expect_err("an empty ack is refused");
    assert_names_field(&status, Code::InvalidArgument, "receipts");
    harness.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_well_formed_but_unknown_receipt_on_nack_is_not_found() -> anyhow::Result<()> {
    let mut harness = Harness::start("unknown-receipt").await?;
    let mut client = harness.client().await?;
    let nack = |receipt: &str| pb::NackRequest {
        receipt: receipt.to_owned(),
        kind: pb::NackKind::Transient as i32,
        reason: "x".into(),
        retry_after: None,
    };
    // A topic nobody consumes.
    let status = client
        .nack(nack("nobody:n:1-0"))
        .await
        .expect_err("an unknown receipt is refused");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(status.message().contains("nobody:n:1-0"), "{status:?}");

    // A consumed topic, but no such delivery.
    let _consumer = Consumer::subscribe(&mut client, "jobs", "c1", 4).await?;
    let status = client
        .nack(nack("jobs:h:1-0"))
        .await
        .expect_err("an unknown receipt is refused");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    let status = client
        .nack(pb::NackRequest {
            kind: pb::NackKind::Unspecified as i32,
            ..nack("jobs:h:1-0")
        })
        .await
        .expect_err("a nack without kind is refused");
    assert_names_field(&status, Code::InvalidArgument, "kind");
    harness.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consume_stream_that_does_not_start_with_subscribe_is_refused() -> anyhow::Result<()> {
    let mut harness = Harness::start("no-subscribe").await?;
    let mut client = harness.client().await?;
    let credit = pb::ConsumeRequest {
        frame: Some(pb::consume_request::Frame::Credit(pb::CreditFrame {
            credits: 1,
        })),
    };
    let status = match Consumer::open(&mut client, credit).await {
        Err(status) => status,
        Ok(mut consumer) => consumer.expect_error(WAIT).await?,
    };
    assert_names_field(&status, Code::InvalidArgument, "subscribe");
    assert!(status.message().contains("first frame"), "{status:?}");

    // A second subscribe on an established stream ends it too.
    let mut consumer = Consumer::subscribe(&mut client, "jobs", "c1", 4).await?;
    consumer
        .frames
        .send(subscribe_frame("jobs", "c1", 4))
        .await?;
    let status = consumer.expect_error(WAIT).await?;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().starts_with("subscribe"), "{status:?}");
    harness.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefetch_over_1024_is_refused_naming_subscribe_prefetch() -> anyhow::Result<()> {
    let mut harness = Harness::start("prefetch").await?;
    let mut client = harness.client().await?;
    let status = match Consumer::open(&mut client, subscribe_frame("jobs", "c1", 1025)).await {
        Err(status) => status,
        Ok(mut consumer) => consumer.expect_error(WAIT).await?,
    };
    assert_names_field(&status, Code::InvalidArgument, "subscribe.prefetch");
    assert!(status.message().contains("1024"), "{status:?}");
    // The limit itself is allowed.
    let mut accepted = Consumer::open(&mut client, subscribe_frame("jobs", "c1", 1024)).await?;
    accepted.expect_nothing(Duration::from_millis(100)).await?;
    harness.stop().await;
    Ok(())
}
