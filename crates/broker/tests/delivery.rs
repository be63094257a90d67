//! Publish, push delivery, priorities and acknowledgement through the real gRPC service and a
//! private redis-server.

mod common;

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use common::{
    Consumer, Harness, WAIT, attempts, message, message_id, payload_text, publish, publish_all,
    wait_until_drained,
};
use tta_proto::v1 as pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_high_before_normal_before_low_and_fifo_within_each() -> anyhow::Result<()> {
    let mut harness = Harness::start("priority").await?;
    let mut client = harness.client().await?;
    let sequence = [
        (pb::Priority::Low, "low-1"),
        (pb::Priority::Normal, "normal-1"),
        (pb::Priority::High, "high-1"),
        (pb::Priority::Low, "low-2"),
        (pb::Priority::High, "high-2"),
        (pb::Priority::Normal, "normal-2"),
    ];
    let messages = sequence
        .iter()
        .map(|(p, text)| message("prio", *p, text))
        .collect();
    let published = client
        .publish_batch(pb::PublishBatchRequest { messages })
        .await?
        .into_inner();
    assert!(
        published.results.iter().all(|result| result.code == 0),
        "{published:?}"
    );

    let mut consumer = Consumer::subscribe(&mut client, "prio", "c1", 16).await?;
    let mut received = Vec::new();
    for _ in 0..sequence.len() {
        let delivery = consumer.next(WAIT).await?;
        received.push(payload_text(&delivery));
        consumer.ack(&delivery.receipt).await?;
    }
    assert_eq!(
        received,
        ["high-1", "high-2", "normal-1", "normal-2", "low-1", "low-2"]
    );
    consumer.expect_nothing(Duration::from_millis(300)).await?;

    let stats = client
        .get_topic_stats(pb::GetTopicStatsRequest {
            topics: vec!["prio".into()],
        })
        .await?
        .into_inner();
    let topic = &stats.topics[0];
    assert_eq!(
        (
            topic.depth_high,
            topic.depth_normal,
            topic.depth_low,
            topic.pending
        ),
        (0, 0, 0, 0),
        "{topic:?}"
    );
    harness.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_prefetch_keeps_strict_priority_through_a_backlog() -> anyhow::Result<()> {
    let mut harness = Harness::start("priority-backlog").await?;
    let mut client = harness.client().await?;
    let mut sequence = Vec::new();
    for (priority, name) in [
        (pb::Priority::Low, "low"),
        (pb::Priority::Normal, "normal"),
        (pb::Priority::High, "high"),
    ] {
        for n in 1..=3 {
            sequence.push(message("backlog", priority, &format!("{name}-{n}")));
        }
    }
    client
        .publish_batch(pb::PublishBatchRequest { messages: sequence })
        .await?;

    // Two at a time: each read comes back full, so lower priorities must wait their turn.
    let mut consumer = Consumer::subscribe(&mut client, "backlog", "c1", 2).await?;
    let mut received = Vec::new();
    for _ in 0..4 {
        let delivery = consumer.next(WAIT).await?;
        received.push(payload_text(&delivery));
        consumer.ack(&delivery.receipt).await?;
    }
    // A HIGH message published now overtakes the LOW ones still queued.
    publish(
        &mut client,
        message("backlog", pb::Priority::High, "high-late"),
    )
    .await?;
    for _ in 0..6 {
        let delivery = consumer.next(WAIT).await?;
        received.push(payload_text(&delivery));
        consumer.ack(&delivery.receipt).await?;
    }
    let expected_head = ["high-1", "high-2", "high-3", "normal-1"];
    assert_eq!(received[..4], expected_head, "{received:?}");
    let late = received
        .iter()
        .position(|text| text == "high-late")
        .ok_or_else(|| anyhow::anyhow!("the late HIGH message never came: {received:?}"))?;
    let first_low = received
        .iter()
        .position(|text| text.starts_with("low"))
        .ok_or_else(|| anyhow::anyhow!("no LOW message came: {received:?}"))?;
    assert!(late < first_low, "{received:?}");
    assert_eq!(
        received
            .iter()
            .filter(|text| text.starts_with("low"))
            .count(),
        3,
        "{received:?}"
    );
    consumer.expect_nothing(Duration::from_millis(300)).await?;
    harness.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_competing_consumers_receive_each_of_ten_thousand_messages_exactly_once()
-> anyhow::Result<()> {
    const TOTAL: usize = 10_000;
    const BATCH: usize = 500;
    const CONSUMERS: usize = 4;
    const TOPIC: &str = "load";
    let mut harness = Harness::start("competing").await?;
    let mut publisher = harness.client().await?;

    // Nobody fails here, so leases must outlive the slowest moment of a loaded test machine.
    let received = Arc::new(AtomicUsize::new(0));
    let mut consumers = tokio::task::JoinSet::new();
    for index in 0..CONSUMERS {
        let mut client = harness.client().await?;
        let name = format!("c{index}");
        let mut consumer =
            Consumer::subscribe_with_lease(&mut client, TOPIC, &name, 64, Duration::from_secs(60))
                .await?;
        let received = received.clone();
        consumers.spawn(async move {
            let mut payloads = Vec::new();
            loop {
                // After the last message, keep listening a little: a duplicate would arrive now.
                match consumer.next(Duration::from_millis(500)).await {
                    Ok(delivery) => {
                        anyhow::ensure!(
                            attempts(&delivery) == 1,
                            "{name} got a redelivery: {delivery:?}"
                        );
                        payloads.push(payload_text(&delivery));
                        consumer.ack(&delivery.receipt).await?;
                        received.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) if received.load(Ordering::SeqCst) >= TOTAL => break,
                    Err(_) => {}
                }
            }
            Ok::<_, anyhow::Error>((name, payloads))
        });
    }

    let started = Instant::now();
    for batch in 0..TOTAL / BATCH {
        let payloads = (batch * BATCH..(batch + 1) * BATCH).map(|id| format!("m-{id}"));
        publish_all(&mut publisher, TOPIC, pb::Priority::Normal, payloads).await?;
    }

    let mut seen = HashSet::with_capacity(TOTAL);
    let mut duplicates = Vec::new();
    let gathered = tokio::time::timeout(Duration::from_secs(40), async {
        while let Some(joined) = consumers.join_next().await {
            let (name, payloads) = joined??;
            assert!(!payloads.is_empty(), "consumer {name} received nothing");
            for payload in payloads {
                if !seen.insert(payload.clone()) {
                    duplicates.push(payload);
                }
            }
        }
        Ok::<_, anyhow::Error>(())
    })
    .await;
    let elapsed = started.elapsed();
    gathered.map_err(|_| {
        anyhow::anyhow!(
            "only {} of {TOTAL} deliveries within 40 s",
            received.load(Ordering::SeqCst)
        )
    })??;

    assert!(duplicates.is_empty(), "delivered twice: {duplicates:?}");
    let expected: HashSet<String> = (0..TOTAL).map(|id| format!("m-{id}")).collect();
    let missing: Vec<&String> = expected.difference(&seen).take(10).collect();
    assert!(
        missing.is_empty(),
        "never delivered (first 10): {missing:?}"
    );
    assert_eq!(seen.len(), TOTAL);
    eprintln!("{TOTAL} messages published and consumed in {elapsed:?}");

    wait_until_drained(&publisher, TOPIC).await?;
    harness.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_publish_with_the_same_idempotency_key_returns_the_first_id_and_is_delivered_once()
-> anyhow::Result<()> {
    let mut harness = Harness::start("idempotency").await?;
    let mut client = harness.client().await?;
    let keyed = |payload: &str| pb::OutgoingMessage {
        idempotency_key: "order-42".into(),
        ..message("orders", pb::Priority::Normal, payload)
    };

    let first = publish(&mut client, keyed("first")).await?;
    let second = publish(&mut client, keyed("second")).await?;
    assert!(!first.duplicate, "{first:?}");
    assert!(second.duplicate, "{second:?}");
    assert_eq!(second.message_id, first.message_id);

    let mut consumer = Consumer::subscribe(&mut client, "orders", "c1", 16).await?;
    let delivery = consumer.next(WAIT).await?;
    assert_eq!(payload_text(&delivery), "first");
    assert_eq!(message_id(&delivery), first.message_id);
    consumer.ack(&delivery.receipt).await?;
    consumer.expect_nothing(Duration::from_millis(300)).await?;
    harness.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_message_is_delivered_only_after_its_delay() -> anyhow::Result<()> {
    const DELAY: Duration = Duration::from_millis(300);
    let mut harness = Harness::start("delayed").await?;
    let mut client = harness.client().await?;
    let mut consumer = Consumer::subscribe(&mut client, "later", "c1", 16).await?;

    let published_at = Instant::now();
    let response = publish(
        &mut client,
        pb::OutgoingMessage {
            delay: Some(DELAY.try_into()?),
            ..message("later", pb::Priority::Normal, "wake up")
        },
    )
    .await?;
    assert!(response.visible_at.is_some(), "{response:?}");

    let delivery = consumer.next(WAIT).await?;
    let waited = published_at.elapsed();
    assert_eq!(payload_text(&delivery), "wake up");
    // The broker's clock starts the delay after ours did; allow for clock granularity only.
    assert!(
        waited >= DELAY - Duration::from_millis(20),
        "delivered after {waited:?}, before the {DELAY:?} delay"
    );
    // Due messages are promoted every 50 ms; anything much later means they were not.
    assert!(
        waited <= DELAY + Duration::from_millis(400),
        "delivered only after {waited:?}"
    );
    consumer.ack(&delivery.receipt).await?;
    harness.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traceparent_header_travels_unchanged_from_publisher_to_consumer() -> anyhow::Result<()> {
    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut harness = Harness::start("trace").await?;
    let mut client = harness.client().await?;
    let mut outgoing = message("traced", pb::Priority::Normal, "work");
    outgoing
        .headers
        .insert("traceparent".into(), TRACEPARENT.into());
    outgoing
        .headers
        .insert("tracestate".into(), "vendor=opaque".into());
    publish(&mut client, outgoing).await?;

    let mut consumer = Consumer::subscribe(&mut client, "traced", "c1", 16).await?;
    let delivery = consumer.next(WAIT).await?;
    let headers = &delivery
        .message
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("delivery without message"))?
        .headers;
    assert_eq!(
        headers.get("traceparent").map(String::as_str),
        Some(TRACEPARENT)
    );
    assert_eq!(
        headers.get("tracestate").map(String::as_str),
        Some("vendor=opaque")
    );
    consumer.ack(&delivery.receipt).await?;
    harness.stop().await;
    Ok(())
}
