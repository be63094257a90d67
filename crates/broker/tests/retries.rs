//! Failure handling: transient nacks retried with exponential backoff (base 100 ms, factor 2 in
//! the harness, no jitter), dead-lettering after `max_attempts` (4) or on a permanent nack, and
//! the dead-letter queue's replay and purge.

mod common;

use std::time::{Duration, Instant};

use common::{
    Consumer, GROUP, Harness, WAIT, attempts, dead_letters, message_id, payload_text, publish_all,
};
use tonic::transport::Channel;
use tta_proto::v1::{self as pb, broker_client::BrokerClient};

/// The promoter runs every 50 ms; a loaded machine adds scheduling delay on top.
const EARLY: Duration = Duration::from_millis(20);
const LATE: Duration = Duration::from_millis(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_nacks_are_retried_after_exponentially_growing_delays() -> anyhow::Result<()> {
    let mut harness = Harness::start("backoff").await?;
    let mut client = harness.client().await?;
    publish_all(&mut client, "flaky", pb::Priority::Normal, ["x".to_owned()]).await?;
    let mut consumer = Consumer::subscribe(&mut client, "flaky", "c1", 4).await?;

    let mut delivery = consumer.next(WAIT).await?;
    for (attempt, expected) in [(1, 100), (2, 200), (3, 400)] {
        assert_eq!(attempts(&delivery), attempt);
        let expected = Duration::from_millis(expected);
        let nacked_at = Instant::now();
        consumer
            .nack(&delivery.receipt, pb::NackKind::Transient, "try later")
            .await?;
        delivery = consumer.next(WAIT).await?;
        let waited = nacked_at.elapsed();
        assert!(
            waited + EARLY >= expected && waited <= expected + LATE,
            "retry {attempt} came after {waited:?}, expected about {expected:?}"
        );
    }
    assert_eq!(attempts(&delivery), 4);
    consumer.ack(&delivery.receipt).await?;
    harness.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fourth_failure_dead_letters_the_message_with_its_full_history() -> anyhow::Result<()> {
    let mut harness = Harness::start("max-attempts").await?;
    let mut client = harness.client().await?;
    let ids = publish_all(&mut client, "flaky", pb::Priority::Low, ["x".to_owned()]).await?;
    let mut consumer = Consumer::subscribe(&mut client, "flaky", "c1", 4).await?;

    for attempt in 1..=3 {
        let delivery = consumer.next(WAIT).await?;
        assert_eq!(attempts(&delivery), attempt);
        consumer
            .nack(
                &delivery.receipt,
                pb::NackKind::Transient,
                &format!("failure {attempt}"),
            )
            .await?;
    }
    // The last one through the unary Nack, which tells what it did.
    let last = consumer.next(WAIT).await?;
    assert_eq!(attempts(&last), 4);
    let nacked = client
        .nack(pb::NackRequest {
            receipt: last.receipt.clone(),
            kind: pb::NackKind::Transient as i32,
            reason: "failure 4".into(),
            retry_after: None,
        })
        .await?
        .into_inner();
    assert!(nacked.dead_lettered, "{nacked:?}");
    consumer.expect_nothing(Duration::from_millis(500)).await?;

    let listed = dead_letters(&mut client, "flaky").await?;
    assert_eq!(listed.total, 1, "{listed:?}");
    let letter = &listed.dead_letters[0];
    assert_eq!(letter.cause, pb::DeadLetterCause::MaxAttempts as i32);
    assert_eq!(letter.reason, "failure 4");
    assert_eq!(letter.group, GROUP);
    let fetched = client
        .get_dead_letter(pb::GetDeadLetterRequest {
            topic: "flaky".into(),
            id: letter.id.clone(),
        })
        .await?
        .into_inner()
        .dead_letter
        .ok_or_else(|| anyhow::anyhow!("GetDeadLetter answered no letter"))?;
    assert_eq!(&fetched, letter);

    let message = fetched
        .message
        .ok_or_else(|| anyhow::anyhow!("dead letter without message"))?;
    assert_eq!(message.id, ids[0]);
    assert_eq!(message.attempts, 4);
    assert_eq!(message.priority, pb::Priority::Low as i32);
    let history: Vec<(u32, &str, &str, i32, &str)> = message
        .history
        .iter()
        .map(|attempt| {
            (
                attempt.attempt,
                attempt.group.as_str(),
                attempt.consumer.as_str(),
                attempt.outcome,
                attempt.reason.as_str(),
            )
        })
        .collect();
    let transient = pb::AttemptOutcome::NackedTransient as i32;
    assert_eq!(
        history,
        [
            (1, GROUP, "c1", transient, "failure 1"),
            (2, GROUP, "c1", transient, "failure 2"),
            (3, GROUP, "c1", transient, "failure 3"),
            (4, GROUP, "c1", transient, "failure 4"),
        ]
    );
    assert!(
        message
            .history
            .iter()
            .all(|attempt| attempt.ended_at.is_some())
    );
    harness.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_nack_dead_letters_the_message_at_once() -> anyhow::Result<()> {
    let mut harness = Harness::start("permanent").await?;
    let mut client = harness.client().await?;
    publish_all(
        &mut client,
        "strict",
        pb::Priority::Normal,
        ["bad".to_owned()],
    )
    .await?;
    let mut consumer = Consumer::subscribe(&mut client, "strict", "c1", 4).await?;
    let delivery = consumer.next(WAIT).await?;
    consumer
        .nack(&delivery.receipt, pb::NackKind::Permanent, "unknown schema")
        .await?;
    // Longer than the first backoff: a retry would have come by now.
    consumer.expect_nothing(Duration::from_millis(400)).await?;

    let listed = dead_letters(&mut client, "strict").await?;
    assert_eq!(listed.total, 1, "{listed:?}");
    let letter = &listed.dead_letters[0];
    assert_eq!(letter.cause, pb::DeadLetterCause::PermanentNack as i32);
    assert_eq!(letter.reason, "unknown schema");
    let history = &letter.message.as_ref().map(|m| m.history.clone());
    let history = history.as_deref().unwrap_or_default();
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(
        history[0].outcome,
        pb::AttemptOutcome::NackedPermanent as i32
    );
    assert_eq!(history[0].reason, "unknown schema");
    harness.stop().await;
    Ok(())
}

/// Dead-letters `count` messages of `topic` by permanent nacks; returns the DLQ entry ids and
/// the consumer, which stays subscribed for the replays.
async fn dead_letter_some(
    client: &mut BrokerClient<Channel>,
    topic: &str,
    count: usize,
) -> anyhow::Result<(Vec<String>, Consumer)> {
    publish_all(
        client,
        topic,
        pb::Priority::Normal,
        (1..=count).map(|n| format!("letter-{n}")),
    )
    .await?;
    let mut consumer = Consumer::subscribe(client, topic, "c1", 16).await?;
    for delivery in consumer.take(count, WAIT).await? {
        let nacked = client
            .nack(pb::NackRequest {
                receipt: delivery.receipt,
                kind: pb::NackKind::Permanent as i32,
                reason: "rejected".into(),
                retry_after: None,
            })
            .await?
            .into_inner();
        anyhow::ensure!(nacked.dead_lettered, "not dead-lettered: {nacked:?}");
    }
    let listed = dead_letters(client, topic).await?;
    anyhow::ensure!(listed.total == count as u64, "{listed:?}");
    Ok((
        listed.dead_letters.into_iter().map(|l| l.id).collect(),
        consumer,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_one_dead_letter_delivers_it_again_with_attempts_restarting() -> anyhow::Result<()>
{
    let mut harness = Harness::start("replay-one").await?;
    let mut client = harness.client().await?;
    let (letters, mut consumer) = dead_letter_some(&mut client, "dlq", 2).await?;
    let replayed_letter = client
        .get_dead_letter(pb::GetDeadLetterRequest {
            topic: "dlq".into(),
            id: letters[0].clone(),
        })
        .await?
        .into_inner()
        .dead_letter
        .and_then(|letter| letter.message)
        .ok_or_else(|| anyhow::anyhow!("no dead letter"))?;

    let unknown_id = "1-0".to_owned();
    let response = client
        .replay_dead_letters(pb::ReplayDeadLettersRequest {
            topic: "dlq".into(),
            ids: vec![letters[0].clone(), unknown_id.clone()],
            all: false,
            priority: 0,
        })
        .await?
        .into_inner();
    assert_eq!(response.replayed, 1, "{response:?}");
    assert_eq!(response.not_found_ids, [unknown_id]);

    let again = consumer.next(WAIT).await?;
    assert_eq!(
        message_id(&again),
        replayed_letter.id,
        "the message keeps its id"
    );
    assert_eq!(payload_text(&again), "letter-1");
    assert_eq!(attempts(&again), 1, "attempts restart after a replay");
    consumer.ack(&again.receipt).await?;
    consumer.expect_nothing(Duration::from_millis(300)).await?;

    let remaining = dead_letters(&mut client, "dlq").await?;
    assert_eq!(remaining.total, 1);
    assert_eq!(remaining.dead_letters[0].id, letters[1]);
    harness.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_all_dead_letters_delivers_every_one_again() -> anyhow::Result<()> {
    let mut harness = Harness::start("replay-all").await?;
    let mut client = harness.client().await?;
    let (letters, mut consumer) = dead_letter_some(&mut client, "dlq", 3).await?;
    let response = client
        .replay_dead_letters(pb::ReplayDeadLettersRequest {
            topic: "dlq".into(),
            ids: Vec::new(),
            all: true,
            priority: pb::Priority::High as i32,
        })
        .await?
        .into_inner();
    assert_eq!(response.replayed, letters.len() as u32, "{response:?}");

    let mut payloads = Vec::new();
    for delivery in consumer.take(letters.len(), WAIT).await? {
        assert_eq!(attempts(&delivery), 1);
        assert_eq!(
            delivery.message.as_ref().map(|m| m.priority),
            Some(pb::Priority::High as i32),
            "the priority override applies"
        );
        payloads.push(payload_text(&delivery));
        consumer.ack(&delivery.receipt).await?;
    }
    assert_eq!(payloads, ["letter-1", "letter-2", "letter-3"]);
    assert_eq!(dead_letters(&mut client, "dlq").await?.total, 0);
    harness.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purging_dead_letters_removes_them_for_good() -> anyhow::Result<()> {
    let mut harness = Harness::start("purge").await?;
    let mut client = harness.client().await?;
    let (letters, mut consumer) = dead_letter_some(&mut client, "dlq", 3).await?;

    let one = client
        .purge_dead_letters(pb::PurgeDeadLettersRequest {
            topic: "dlq".into(),
            ids: vec![letters[0].clone()],
            all: false,
            older_than: None,
        })
        .await?
        .into_inner();
    assert_eq!(one.purged, 1);
    let gone = client
        .get_dead_letter(pb::GetDeadLetterRequest {
            topic: "dlq".into(),
            id: letters[0].clone(),
        })
        .await
        .expect_err("a purged dead letter is gone");
    assert_eq!(gone.code(), tonic::Code::NotFound, "{gone:?}");
    assert_eq!(dead_letters(&mut client, "dlq").await?.total, 2);

    let rest = client
        .purge_dead_letters(pb::PurgeDeadLettersRequest {
            topic: "dlq".into(),
            ids: Vec::new(),
            all: true,
            older_than: None,
        })
        .await?
        .into_inner();
    assert_eq!(rest.purged, 2);
    assert_eq!(dead_letters(&mut client, "dlq").await?.total, 0);

    // Purged letters cannot be replayed: nothing comes back.
    let replay = client
        .replay_dead_letters(pb::ReplayDeadLettersRequest {
            topic: "dlq".into(),
            ids: Vec::new(),
            all: true,
            priority: 0,
        })
        .await?
        .into_inner();
    assert_eq!(replay.replayed, 0);
    consumer.expect_nothing(Duration::from_millis(300)).await?;
    harness.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unary_transient_nack_says_when_the_retry_is_due_and_honours_retry_after()
-> anyhow::Result<()> {
    let mut harness = Harness::start("retry-at").await?;
    let mut client = harness.client().await?;
    publish_all(&mut client, "later", pb::Priority::Normal, ["x".to_owned()]).await?;
    let mut consumer = Consumer::subscribe(&mut client, "later", "c1", 4).await?;
    let delivery = consumer.next(WAIT).await?;

    let asked = Duration::from_millis(600);
    let nacked_at = std::time::SystemTime::now();
    let started = Instant::now();
    let response = client
        .nack(pb::NackRequest {
            receipt: delivery.receipt.clone(),
            kind: pb::NackKind::Transient as i32,
            reason: "busy".into(),
            retry_after: Some(prost_types::Duration::try_from(asked)?),
        })
        .await?
        .into_inner();
    assert!(!response.dead_lettered);
    let retry_at = response
        .retry_at
        .ok_or_else(|| anyhow::anyhow!("no retry_at"))?;
    let due = std::time::UNIX_EPOCH + Duration::new(retry_at.seconds as u64, retry_at.nanos as u32);
    let promised = due.duration_since(nacked_at)?;
    assert!(
        promised >= asked - EARLY && promised <= asked + LATE,
        "retry_at is {promised:?} after the nack, asked {asked:?}"
    );

    let again = consumer.next(WAIT).await?;
    let waited = started.elapsed();
    assert_eq!(attempts(&again), 2);
    assert!(
        waited >= asked - EARLY,
        "redelivered after {waited:?}, asked {asked:?}"
    );
    harness.stop().await;
    Ok(())
}
