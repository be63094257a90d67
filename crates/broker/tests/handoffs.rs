//! Hand-offs: a reply whose destination has a consumer waiting on this broker goes straight to
//! it, and the delivery the reply answered stays pending in Redis until what it handed on is
//! settled — acked, or stored on its topic when it is nacked, expires or loses its consumer.

mod common;

use std::time::Duration;

use common::{Consumer, Harness, WAIT, message, payload_text, publish, reply, topic_stats};
use tonic::transport::Channel;
use tta_proto::v1::{self as pb, broker_client::BrokerClient};

fn handed(delivery: &pb::Delivery) -> bool {
    delivery.receipt.starts_with('~')
}

/// Answers `delivery` with one message once the consumers' readers had time to park on their
/// blocking reads, so the answer can be handed off.
async fn answer_when_parked(
    consumer: &Consumer,
    delivery: &pb::Delivery,
    answer: pb::OutgoingMessage,
) -> anyhow::Result<()> {
    tokio::time::sleep(Duration::from_millis(200)).await;
    consumer.send(reply(&delivery.receipt, vec![answer])).await
}

/// Entries of `topic` in Redis, waiting or leased.
async fn stored(client: &mut BrokerClient<Channel>, topic: &str) -> anyhow::Result<u64> {
    let stats = topic_stats(client, topic).await?;
    Ok(stats.depth_high + stats.depth_normal + stats.depth_low)
}

/// Whether the one task of `tasks` is still leased, waiting for what it handed on.
async fn task_pending(client: &mut BrokerClient<Channel>) -> anyhow::Result<bool> {
    let stats = topic_stats(client, "tasks").await?;
    Ok(stats.pending == 1 && stored(client, "tasks").await? == 1)
}

/// A worker takes a task from `tasks` and answers it on `answers`, where `asker` waits.
async fn answer_a_task(
    client: &mut BrokerClient<Channel>,
    asker: &mut Consumer,
    lease: Duration,
) -> anyhow::Result<(Consumer, pb::Delivery)> {
    let mut worker = Consumer::subscribe_with_lease(client, "tasks", "worker", 4, lease).await?;
    publish(client, message("tasks", pb::Priority::Normal, "question")).await?;
    let task = worker.next(WAIT).await?;
    answer_when_parked(
        &worker,
        &task,
        message("answers", pb::Priority::High, "answer"),
    )
    .await?;
    let answer = asker.next(WAIT).await?;
    assert_eq!(payload_text(&answer), "answer");
    Ok((worker, answer))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_to_a_waiting_consumer_skips_redis_and_its_task_waits_for_the_ack()
-> anyhow::Result<()> {
    let mut harness = Harness::start("handoff-ack").await?;
    let mut client = harness.client().await?;
    let mut asker =
        Consumer::subscribe_with_lease(&mut client, "answers", "asker", 4, WAIT).await?;
    let (mut worker, answer) = answer_a_task(&mut client, &mut asker, WAIT).await?;

    assert!(handed(&answer), "{answer:?}");
    let delivered = answer.message.as_ref().map(|message| message.attempts);
    assert_eq!(delivered, Some(1));
    assert_eq!(stored(&mut client, "answers").await?, 0, "never stored");
    assert!(
        task_pending(&mut client).await?,
        "the task waits for the answer's ack"
    );

    asker.ack(&answer.receipt).await?;
    common::wait_until_drained(&client, "tasks").await?;
    assert_eq!(stored(&mut client, "answers").await?, 0);
    worker.expect_nothing(Duration::from_millis(300)).await?;
    asker.expect_nothing(Duration::from_millis(300)).await?;
    harness.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_of_hand_offs_acks_its_stored_head_once_the_last_is_acked() -> anyhow::Result<()> {
    let mut harness = Harness::start("handoff-line").await?;
    let mut client = harness.client().await?;
    let mut asker =
        Consumer::subscribe_with_lease(&mut client, "answers", "asker", 4, WAIT).await?;
    let mut middle =
        Consumer::subscribe_with_lease(&mut client, "middle", "middle", 4, WAIT).await?;
    let mut worker =
        Consumer::subscribe_with_lease(&mut client, "tasks", "worker", 4, WAIT).await?;
    publish(
        &mut client,
        message("tasks", pb::Priority::Normal, "question"),
    )
    .await?;
    let task = worker.next(WAIT).await?;
    answer_when_parked(
        &worker,
        &task,
        message("middle", pb::Priority::Normal, "step"),
    )
    .await?;
    let step = middle.next(WAIT).await?;
    assert!(handed(&step), "{step:?}");
    answer_when_parked(
        &middle,
        &step,
        message("answers", pb::Priority::High, "answer"),
    )
    .await?;
    let answer = asker.next(WAIT).await?;
    assert!(handed(&answer), "{answer:?}");

    // Everything but the head lives only in the broker until the end of the line is acked.
    assert!(task_pending(&mut client).await?);
    assert_eq!(stored(&mut client, "middle").await?, 0);
    asker.ack(&answer.receipt).await?;
    common::wait_until_drained(&client, "tasks").await?;
    for topic in ["middle", "answers"] {
        assert_eq!(stored(&mut client, topic).await?, 0, "{topic}");
    }
    harness.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_off_whose_consumer_leaves_is_stored_for_the_next_one() -> anyhow::Result<()> {
    let mut harness = Harness::start("handoff-gone").await?;
    let mut client = harness.client().await?;
    // A short lease on the answers: a blocking read the closed stream left in Redis may take
    // the stored answer, which then comes back when that lease ends.
    let lease = Duration::from_secs(1);
    let mut asker =
        Consumer::subscribe_with_lease(&mut client, "answers", "asker", 4, lease).await?;
    let (_worker, answer) = answer_a_task(&mut client, &mut asker, WAIT).await?;
    assert!(handed(&answer));
    drop(asker);

    // The answer is stored, and only then is the task acked.
    common::wait_until_drained(&client, "tasks").await?;
    let mut next = Consumer::subscribe_with_lease(&mut client, "answers", "next", 4, lease).await?;
    let again = next.next(WAIT).await?;
    assert!(!handed(&again), "{again:?}");
    assert_eq!(payload_text(&again), "answer");
    next.ack(&again.receipt).await?;
    common::wait_until_drained(&client, "answers").await?;
    harness.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nacked_hand_off_is_stored_and_delivered_from_its_topic() -> anyhow::Result<()> {
    let mut harness = Harness::start("handoff-nack").await?;
    let mut client = harness.client().await?;
    let mut asker =
        Consumer::subscribe_with_lease(&mut client, "answers", "asker", 4, WAIT).await?;
    let (_worker, answer) = answer_a_task(&mut client, &mut asker, WAIT).await?;
    assert!(handed(&answer));
    asker
        .nack(&answer.receipt, pb::NackKind::Transient, "not now")
        .await?;

    let again = asker.next(WAIT).await?;
    assert!(!handed(&again), "{again:?}");
    assert_eq!(payload_text(&again), "answer");
    common::wait_until_drained(&client, "tasks").await?;
    asker.ack(&again.receipt).await?;
    common::wait_until_drained(&client, "answers").await?;
    harness.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_off_is_stored_before_the_task_it_answers_could_be_delivered_again()
-> anyhow::Result<()> {
    let mut harness = Harness::start("handoff-expiry").await?;
    let mut client = harness.client().await?;
    let mut asker =
        Consumer::subscribe_with_lease(&mut client, "answers", "asker", 4, WAIT).await?;
    // The task's lease is 2 s: the hand-off must be stored within half of it.
    let (mut worker, answer) =
        answer_a_task(&mut client, &mut asker, Duration::from_secs(2)).await?;
    assert!(handed(&answer));

    let again = asker.next(Duration::from_millis(1900)).await?;
    assert!(!handed(&again), "{again:?}");
    assert_eq!(payload_text(&again), "answer");
    common::wait_until_drained(&client, "tasks").await?;
    // The task was never delivered again, and the late ack of the hand-off changes nothing.
    worker.expect_nothing(Duration::from_millis(300)).await?;
    asker.ack(&answer.receipt).await?;
    asker.ack(&again.receipt).await?;
    common::wait_until_drained(&client, "answers").await?;
    harness.stop().await;
    Ok(())
}
