//! What happens when a consumer dies: its unsettled deliveries come back after the visibility
//! timeout (1 s in the harness), to another consumer, with the attempt counted.

mod common;

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use common::{
    Consumer, GROUP, Harness, WAIT, attempts, message_id, publish_all, wait_until_drained,
};
use tonic::transport::Channel;
use tta_proto::v1::{self as pb, broker_client::BrokerClient};
use tta_testkit::wait_until;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_consumers_unacked_messages_go_to_another_consumer_after_the_visibility_timeout()
-> anyhow::Result<()> {
    let mut harness = Harness::start("redelivery").await?;
    let mut client = harness.client().await?;
    let published: HashSet<String> = publish_all(
        &mut client,
        "jobs",
        pb::Priority::Normal,
        (1..=5).map(|n| format!("job-{n}")),
    )
    .await?
    .into_iter()
    .collect();

    let mut doomed = Consumer::subscribe(&mut client, "jobs", "doomed", 16).await?;
    let first_round = doomed.take(published.len(), WAIT).await?;
    let leased_at = Instant::now();
    assert!(first_round.iter().all(|delivery| attempts(delivery) == 1));
    // The consumer crashes: its stream goes away without a single ack.
    drop(doomed);

    let mut survivor = Consumer::subscribe(&mut client, "jobs", "survivor", 16).await?;
    let second_round = survivor.take(published.len(), WAIT).await?;
    let waited = leased_at.elapsed();
    // The lease started when the broker read the entries, a moment before `leased_at`.
    assert!(
        waited >= Duration::from_millis(900),
        "redelivered after {waited:?}, before the 1 s visibility timeout"
    );
    let redelivered: HashSet<String> = second_round.iter().map(message_id).collect();
    assert_eq!(redelivered, published, "every message comes back, once");
    for delivery in &second_round {
        assert_eq!(attempts(delivery), 2, "{delivery:?}");
        survivor.ack(&delivery.receipt).await?;
    }
    survivor.expect_nothing(Duration::from_millis(300)).await?;
    wait_until_drained(&client, "jobs").await?;
    harness.stop().await;
    Ok(())
}

/// One RecoverPending pass over topic `jobs`, each delivery judged by its own lease.
fn recover_jobs(
    client: &BrokerClient<Channel>,
) -> impl Future<Output = Result<pb::RecoverPendingResponse, tonic::Status>> + use<> {
    let mut client = client.clone();
    async move {
        client
            .recover_pending(pb::RecoverPendingRequest {
                topic: "jobs".into(),
                group: String::new(),
                min_idle: None,
            })
            .await
            .map(tonic::Response::into_inner)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_pending_reports_a_reclaimed_delivery_once_its_lease_has_expired()
-> anyhow::Result<()> {
    // No background reclaim: only the admin call may end the lease.
    let mut harness = Harness::start_adjusted("recover", |config| {
        config.broker.reclaim_interval = Duration::from_secs(3600);
    })
    .await?;
    let mut client = harness.client().await?;
    publish_all(
        &mut client,
        "jobs",
        pb::Priority::High,
        ["stuck".to_owned()],
    )
    .await?;
    let mut doomed = Consumer::subscribe(&mut client, "jobs", "doomed", 4).await?;
    let leased = doomed.next(WAIT).await?;
    let leased_at = Instant::now();
    drop(doomed);

    let early = recover_jobs(&client).await?;
    assert_eq!(
        early.counts,
        [pb::RecoveredCount {
            topic: "jobs".into(),
            group: GROUP.into(),
            reclaimed: 0,
            dead_lettered: 0,
        }],
        "a live lease is not reclaimed"
    );

    let counts = wait_until(WAIT, "RecoverPending to reclaim the expired lease", || {
        let call = recover_jobs(&client);
        async move {
            let response = call.await.ok()?;
            let count = response.counts.into_iter().next()?;
            (count.reclaimed > 0).then_some(count)
        }
    })
    .await?;
    assert!(
        leased_at.elapsed() >= Duration::from_millis(900),
        "reclaimed after {:?}, before the lease ended",
        leased_at.elapsed()
    );
    assert_eq!(
        (counts.reclaimed, counts.dead_lettered),
        (1, 0),
        "{counts:?}"
    );

    let mut survivor = Consumer::subscribe(&mut client, "jobs", "survivor", 4).await?;
    let again = survivor.next(WAIT).await?;
    assert_eq!(message_id(&again), message_id(&leased));
    assert_eq!(attempts(&again), 2);
    harness.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_pending_with_zero_min_idle_reclaims_a_fresh_lease_at_once() -> anyhow::Result<()> {
    let mut harness = Harness::start_adjusted("recover-now", |config| {
        config.broker.reclaim_interval = Duration::from_secs(3600);
    })
    .await?;
    let mut client = harness.client().await?;
    publish_all(
        &mut client,
        "jobs",
        pb::Priority::Normal,
        ["slow".to_owned()],
    )
    .await?;
    let mut consumer = Consumer::subscribe(&mut client, "jobs", "c1", 4).await?;
    let first = consumer.next(WAIT).await?;

    let response = client
        .recover_pending(pb::RecoverPendingRequest {
            topic: String::new(),
            group: GROUP.into(),
            min_idle: Some(Duration::ZERO.try_into()?),
        })
        .await?
        .into_inner();
    let count = response
        .counts
        .iter()
        .find(|count| count.topic == "jobs")
        .ok_or_else(|| anyhow::anyhow!("topic jobs not examined: {response:?}"))?;
    assert_eq!(count.reclaimed, 1, "{response:?}");

    // Its old receipt is void; the retry comes back after the 100 ms backoff.
    let again = consumer.next(WAIT).await?;
    assert_eq!(message_id(&again), message_id(&first));
    assert_eq!(attempts(&again), 2);
    let stale = client
        .ack(pb::AckRequest {
            receipts: vec![first.receipt.clone()],
        })
        .await?
        .into_inner();
    assert_eq!(stale.acked, 0);
    assert_eq!(stale.unknown_receipts, [first.receipt]);
    harness.stop().await;
    Ok(())
}
