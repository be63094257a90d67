//! Publish streams: one long-lived call carrying publish frames, each answered by sequence —
//! and the shared publisher of the workers and the gateway, which rides on one.

mod common;

use std::{collections::HashMap, time::Duration};

use common::{Consumer, Harness, WAIT, message, payload_text};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tta_proto::v1 as pb;
use tta_runtime::messaging::{Outgoing, Publisher};
use tta_testkit::{free_port, wait_until};
use tta_types::config::ListenConfig;

fn frame(sequence: u64, messages: Vec<pb::OutgoingMessage>) -> pb::PublishStreamRequest {
    pb::PublishStreamRequest { sequence, messages }
}

/// Collects `count` response frames by sequence.
async fn answers(
    responses: &mut tonic::Streaming<pb::PublishStreamResponse>,
    count: usize,
) -> anyhow::Result<HashMap<u64, pb::PublishStreamResponse>> {
    let mut by_sequence = HashMap::new();
    while by_sequence.len() < count {
        let response = tokio::time::timeout(WAIT, responses.message())
            .await??
            .ok_or_else(|| anyhow::anyhow!("the publish stream ended early"))?;
        let sequence = response.sequence;
        anyhow::ensure!(
            by_sequence.insert(sequence, response).is_none(),
            "frame {sequence} was answered twice"
        );
    }
    Ok(by_sequence)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_frame_is_answered_by_its_sequence_and_its_messages_are_delivered()
-> anyhow::Result<()> {
    let mut harness = Harness::start("publish-stream").await?;
    let mut client = harness.client().await?;
    let (frames, outgoing) = mpsc::channel(16);
    let mut responses = client
        .publish_stream(ReceiverStream::new(outgoing))
        .await?
        .into_inner();

    let normal = pb::Priority::Normal;
    frames
        .send(frame(
            7,
            vec![message("ps", normal, "a"), message("ps", normal, "b")],
        ))
        .await?;
    frames.send(frame(8, Vec::new())).await?;
    frames
        .send(frame(
            9,
            vec![message("ps", normal, "c"), message("", normal, "lost")],
        ))
        .await?;
    let answered = answers(&mut responses, 3).await?;

    let stored = &answered[&7];
    assert!(stored.error.is_empty(), "{stored:?}");
    assert_eq!(stored.results.len(), 2);
    assert!(
        stored
            .results
            .iter()
            .all(|result| result.code == 0 && !result.message_id.is_empty())
    );

    let empty = &answered[&8];
    assert!(empty.results.is_empty());
    assert!(empty.error.starts_with("messages:"), "{}", empty.error);

    let mixed = &answered[&9];
    assert_eq!(mixed.results.len(), 2);
    assert_eq!(mixed.results[0].code, 0);
    assert_eq!(mixed.results[1].code, tonic::Code::InvalidArgument as i32);
    assert!(
        mixed.results[1].error.contains("messages[1].topic"),
        "{}",
        mixed.results[1].error
    );

    let delivered = stored_payloads(&harness, "ps", 3).await?;
    for (result, payload) in stored.results.iter().zip(["a", "b"]) {
        assert_eq!(delivered[&result.message_id], payload);
    }
    assert_eq!(delivered[&mixed.results[0].message_id], "c");

    drop(frames);
    assert!(
        tokio::time::timeout(WAIT, responses.message())
            .await??
            .is_none(),
        "the stream ends once the client has ended its side"
    );
    harness.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_sent_back_to_back_are_each_answered_once_and_all_stored() -> anyhow::Result<()> {
    const FRAMES: u64 = 300;
    let mut harness = Harness::start("publish-stream-burst").await?;
    let mut client = harness.client().await?;
    let (frames, outgoing) = mpsc::channel(FRAMES as usize);
    // Queued before the call starts, so the broker finds many frames waiting at once and
    // publishes them together.
    for sequence in 0..FRAMES {
        frames
            .send(frame(
                sequence,
                vec![message(
                    "burst",
                    pb::Priority::Normal,
                    &sequence.to_string(),
                )],
            ))
            .await?;
    }
    let mut responses = client
        .publish_stream(ReceiverStream::new(outgoing))
        .await?
        .into_inner();
    let answered = answers(&mut responses, FRAMES as usize).await?;
    assert!((0..FRAMES).all(|sequence| {
        answered[&sequence].results.len() == 1 && answered[&sequence].results[0].code == 0
    }));

    let stats = common::topic_stats(&mut client, "burst").await?;
    assert_eq!(stats.depth_normal, FRAMES);
    harness.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_publisher_reports_refusals_and_reopens_its_stream_after_a_broker_restart()
-> anyhow::Result<()> {
    let port = free_port()?;
    let mut harness = Harness::start_adjusted("publisher-restart", |config| {
        config.broker.listen = ListenConfig::loopback(port, 0);
    })
    .await?;
    let publisher = Publisher::connect_lazy(&harness.endpoint)?;
    let first = publisher.publish(outgoing("jobs", "before")).await?;
    assert!(!first.is_empty());

    let refused = publisher
        .publish(outgoing("bad topic!", "x"))
        .await
        .expect_err("an invalid topic is refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    // Named as in a unary Publish of one message.
    assert!(
        refused.message().starts_with("message.topic:"),
        "{}",
        refused.message()
    );

    harness.stop().await;
    let down = publisher
        .publish(outgoing("jobs", "while down"))
        .await
        .expect_err("nothing answers while the broker is down");
    assert_eq!(down.code(), tonic::Code::Unavailable, "{down}");

    let config = harness.config.clone();
    harness.broker = Some(
        tta_testkit::start_in_process(
            tta_runtime::service::ServiceKind::Broker,
            config,
            tta_broker::build,
        )
        .await
        .map_err(|err| anyhow::anyhow!(err))?,
    );
    wait_until(WAIT, "a publish through a new stream", || {
        let publisher = publisher.clone();
        let message = outgoing("jobs", "after");
        async move { publisher.publish(message).await.ok() }
    })
    .await?;

    let mut payloads: Vec<String> = stored_payloads(&harness, "jobs", 2)
        .await?
        .into_values()
        .collect();
    payloads.sort();
    assert_eq!(payloads, ["after", "before"]);
    harness.stop().await;
    Ok(())
}

fn outgoing(topic: &str, text: &str) -> Outgoing {
    Outgoing {
        topic: topic.to_owned(),
        payload: text.as_bytes().to_vec(),
        ..Default::default()
    }
}

/// Reads `count` deliveries of `topic` (acking each) and returns payload by message id.
async fn stored_payloads(
    harness: &Harness,
    topic: &str,
    count: usize,
) -> anyhow::Result<HashMap<String, String>> {
    let mut client = harness.client().await?;
    let mut consumer = Consumer::subscribe(&mut client, topic, "reader", 256).await?;
    let mut stored = HashMap::new();
    while stored.len() < count {
        let delivery = consumer.next(WAIT).await?;
        consumer.ack(&delivery.receipt).await?;
        let id = delivery
            .message
            .as_ref()
            .map(|message| message.id.clone())
            .unwrap_or_default();
        stored.insert(id, payload_text(&delivery));
    }
    consumer.expect_nothing(Duration::from_millis(200)).await?;
    Ok(stored)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_share_frames_and_each_caller_gets_its_own_message_id()
-> anyhow::Result<()> {
    // More than one frame holds, so some callers wait for the next frame.
    const CALLERS: usize = 1500;
    let mut harness = Harness::start("publisher-packing").await?;
    let publisher = Publisher::connect_lazy(&harness.endpoint)?;
    let mut calls = tokio::task::JoinSet::new();
    for index in 0..CALLERS {
        let publisher = publisher.clone();
        calls.spawn(async move {
            let id = publisher
                .publish(outgoing("packed", &index.to_string()))
                .await?;
            Ok::<_, tonic::Status>((id, index.to_string()))
        });
    }
    let mut returned = HashMap::new();
    while let Some(joined) = calls.join_next().await {
        let (id, payload) = joined??;
        returned.insert(id, payload);
    }
    assert_eq!(returned.len(), CALLERS, "every caller got a distinct id");
    let stored = stored_payloads(&harness, "packed", CALLERS).await?;
    assert_eq!(stored, returned, "each id names the caller's own message");
    harness.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_topic_refuses_through_the_publisher_with_a_retry_hint() -> anyhow::Result<()> {
    let mut harness = Harness::start_adjusted("publisher-full", |config| {
        config.broker.max_topic_depth = 1;
    })
    .await?;
    let publisher = Publisher::connect_lazy(&harness.endpoint)?;
    publisher.publish(outgoing("small", "fits")).await?;
    let refused = publisher
        .publish(outgoing("small", "does not fit"))
        .await
        .expect_err("the topic is full");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused}");
    assert!(common::retry_after_ms(&refused).is_some(), "{refused:?}");
    assert!(
        refused.message().contains("(retry after"),
        "{}",
        refused.message()
    );
    harness.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_cut_off_by_a_broker_shutdown_fail_and_every_confirmed_one_is_stored()
-> anyhow::Result<()> {
    const CALLERS: usize = 400;
    let port = free_port()?;
    let mut harness = Harness::start_adjusted("publisher-cut-off", |config| {
        config.broker.listen = ListenConfig::loopback(port, 0);
    })
    .await?;
    let publisher = Publisher::connect_lazy(&harness.endpoint)?;
    publisher.publish(outgoing("cut", "warm-up")).await?;
    let mut calls = tokio::task::JoinSet::new();
    for index in 0..CALLERS {
        let publisher = publisher.clone();
        calls.spawn(async move {
            let outcome = publisher.publish(outgoing("cut", &index.to_string())).await;
            (index, outcome)
        });
    }
    tokio::task::yield_now().await;
    harness.stop().await;

    let mut confirmed = HashMap::new();
    let mut failed = 0;
    let all_settled = tokio::time::timeout(WAIT, async {
        while let Some(joined) = calls.join_next().await {
            let (index, outcome) = joined?;
            match outcome {
                Ok(id) => {
                    confirmed.insert(id, index.to_string());
                }
                Err(status) => {
                    assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
                    failed += 1;
                }
            }
        }
        Ok::<_, anyhow::Error>(())
    })
    .await;
    assert!(all_settled.is_ok(), "no publish hangs when the broker goes");
    all_settled??;
    assert_eq!(confirmed.len() + failed, CALLERS);

    harness.broker = Some(
        tta_testkit::start_in_process(
            tta_runtime::service::ServiceKind::Broker,
            harness.config.clone(),
            tta_broker::build,
        )
        .await
        .map_err(|err| anyhow::anyhow!(err))?,
    );
    let mut client = harness.client().await?;
    let stats = common::topic_stats(&mut client, "cut").await?;
    let stored = stored_payloads(&harness, "cut", stats.depth_normal as usize).await?;
    for (id, payload) in &confirmed {
        assert_eq!(
            stored.get(id),
            Some(payload),
            "a confirmed publish is stored"
        );
    }
    harness.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_lends_no_trace_context_of_its_own_to_its_messages() -> anyhow::Result<()> {
    const CALL_TRACE: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    const MESSAGE_TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut harness = Harness::start("publish-stream-trace").await?;
    let mut client = harness.client().await?;
    let (frames, outgoing) = mpsc::channel(4);
    let mut call = tonic::Request::new(ReceiverStream::new(outgoing));
    call.metadata_mut()
        .insert("traceparent", CALL_TRACE.parse()?);
    let mut responses = client.publish_stream(call).await?.into_inner();

    let mut traced = message("traces", pb::Priority::Normal, "traced");
    traced
        .headers
        .insert("traceparent".into(), MESSAGE_TRACE.into());
    let untraced = message("traces", pb::Priority::Normal, "untraced");
    frames.send(frame(1, vec![traced, untraced])).await?;
    let answered = answers(&mut responses, 1).await?;
    assert!(answered[&1].results.iter().all(|result| result.code == 0));

    let mut consumer = Consumer::subscribe(&mut client, "traces", "reader", 8).await?;
    for _ in 0..2 {
        let delivery = consumer.next(WAIT).await?;
        let headers = delivery
            .message
            .as_ref()
            .map(|message| message.headers.clone())
            .unwrap_or_default();
        match payload_text(&delivery).as_str() {
            "traced" => assert_eq!(
                headers.get("traceparent").map(String::as_str),
                Some(MESSAGE_TRACE)
            ),
            _ => assert!(
                !headers.contains_key("traceparent"),
                "the call's trace is not the message's: {headers:?}"
            ),
        }
        consumer.ack(&delivery.receipt).await?;
    }
    harness.stop().await;
    Ok(())
}
