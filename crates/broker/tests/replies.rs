//! Reply frames: a consumer settles a delivery with what it produced, and the broker publishes
//! that before it acks — or, when it cannot, nacks the delivery so that nothing is lost.

mod common;

use std::time::Duration;

use common::{
    Consumer, Harness, WAIT, attempts, dead_letters, message, payload_text, publish, reply,
};
use tonic::transport::Channel;
use tta_proto::v1::{self as pb, broker_client::BrokerClient};

/// Publishes a task to `tasks` and has a worker take it and answer it with `answer`.
async fn answer_a_task(
    client: &mut BrokerClient<Channel>,
    answer: pb::OutgoingMessage,
) -> anyhow::Result<Consumer> {
    publish(client, message("tasks", pb::Priority::Normal, "question")).await?;
    let mut worker = Consumer::subscribe(client, "tasks", "worker", 4).await?;
    let task = worker.next(WAIT).await?;
    worker.send(reply(&task.receipt, vec![answer])).await?;
    Ok(worker)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_publishes_its_message_and_then_acks_the_delivery() -> anyhow::Result<()> {
    let mut harness = Harness::start("reply").await?;
    let mut client = harness.client().await?;
    let mut worker = answer_a_task(
        &mut client,
        message("answers", pb::Priority::High, "answer"),
    )
    .await?;

    let mut asker = Consumer::subscribe(&mut client, "answers", "asker", 4).await?;
    let answer = asker.next(WAIT).await?;
    assert_eq!(payload_text(&answer), "answer");
    asker.ack(&answer.receipt).await?;

    common::wait_until_drained(&client, "tasks").await?;
    worker.expect_nothing(Duration::from_millis(300)).await?;
    harness.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_that_cannot_be_published_leaves_its_delivery_to_come_again() -> anyhow::Result<()>
{
    // One message fills a topic: the reply's destination is full.
    let mut harness = Harness::start_adjusted("reply-full", |config| {
        config.broker.max_topic_depth = 1;
    })
    .await?;
    let mut client = harness.client().await?;
    publish(
        &mut client,
        message("answers", pb::Priority::Normal, "earlier"),
    )
    .await?;
    publish(
        &mut client,
        message("tasks", pb::Priority::Normal, "question"),
    )
    .await?;

    let mut worker = Consumer::subscribe(&mut client, "tasks", "worker", 4).await?;
    let first = worker.next(WAIT).await?;
    assert_eq!(attempts(&first), 1);
    worker
        .send(reply(
            &first.receipt,
            vec![message("answers", pb::Priority::Normal, "answer")],
        ))
        .await?;

    // Nacked as transient: the same task again, with its next attempt.
    let second = worker.next(WAIT).await?;
    assert_eq!(payload_text(&second), "question");
    assert_eq!(attempts(&second), 2);

    // Room again: this time the reply goes through.
    let mut asker = Consumer::subscribe(&mut client, "answers", "asker", 4).await?;
    let earlier = asker.next(WAIT).await?;
    asker.ack(&earlier.receipt).await?;
    common::wait_until_drained(&client, "answers").await?;
    worker
        .send(reply(
            &second.receipt,
            vec![message("answers", pb::Priority::Normal, "answer")],
        ))
        .await?;
    let answer = asker.next(WAIT).await?;
    assert_eq!(payload_text(&answer), "answer");
    asker.ack(&answer.receipt).await?;
    common::wait_until_drained(&client, "tasks").await?;
    harness.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_reply_dead_letters_its_delivery_naming_the_field() -> anyhow::Result<()> {
    let mut harness = Harness::start("reply-invalid").await?;
    let mut client = harness.client().await?;
    let mut worker =
        answer_a_task(&mut client, message("", pb::Priority::Normal, "answer")).await?;

    let letters = tta_testkit::wait_until(WAIT, "the task to be dead-lettered", || {
        let mut client = client.clone();
        async move {
            dead_letters(&mut client, "tasks")
                .await
                .ok()
                .filter(|page| !page.dead_letters.is_empty())
        }
    })
    .await?;
    let letter = &letters.dead_letters[0];
    assert!(
        letter.reason.contains("reply.publish[0].topic"),
        "{letter:?}"
    );
    // The stream stays open for the next delivery.
    publish(&mut client, message("tasks", pb::Priority::Normal, "next")).await?;
    let next = worker.next(WAIT).await?;
    assert_eq!(payload_text(&next), "next");
    worker.ack(&next.receipt).await?;
    harness.stop().await;
    Ok(())
}
