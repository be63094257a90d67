//! Publish, push delivery, priorities and acknowledgement through the real gRPC service and a
//! private redis-server.

mod common;

use std::time::Duration;

use common::{Consumer, Harness, message, payload_text};
use tta_proto::v1 as pb;

const WAIT: Duration = Duration::from_secs(5);

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
