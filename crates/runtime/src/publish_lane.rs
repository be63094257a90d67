//! The publishing side of a [`crate::messaging::Publisher`]: one long-lived
//! `Broker/PublishStream` call shared by every clone, instead of a unary call per message.
//!
//! Callers hand their messages to one driver task. It writes everything that is waiting as one
//! frame, routes each response frame back to its callers by sequence number, and opens a new
//! stream on the next publish after the old one broke — failing, as unavailable, every publish
//! the broken stream had not answered (the broker may or may not have stored them; the
//! idempotency key makes the retry safe).

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::{OnceCell, mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, transport::Channel};
use tta_proto::v1::{self as pb, broker_client::BrokerClient};

/// Most messages in one frame (the broker's limit per frame).
const MAX_FRAME_MESSAGES: usize = 1000;
/// Most bytes packed into one frame; the broker refuses gRPC messages over 64 MiB.
const MAX_FRAME_BYTES: usize = 4 << 20;
/// Publishes waiting for the driver; beyond this, callers wait to hand theirs over.
const QUEUE: usize = 1024;
/// How long a broker without publish streams is published to one call per message before the
/// stream is tried again.
const RETRY_STREAM_AFTER: Duration = Duration::from_secs(30);

type Reply = oneshot::Sender<Result<Vec<pb::PublishResult>, Status>>;

struct Call {
    messages: Vec<pb::OutgoingMessage>,
    reply: Reply,
}

/// A cheap-to-clone handle on the shared stream; the driver starts on first use and ends when
/// the last handle is dropped.
#[derive(Clone)]
pub struct PublishLane {
    client: BrokerClient<Channel>,
    calls: Arc<OnceCell<mpsc::Sender<Call>>>,
}

impl std::fmt::Debug for PublishLane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublishLane").finish_non_exhaustive()
    }
}

impl PublishLane {
    pub fn new(client: BrokerClient<Channel>) -> Self {
        Self {
            client,
            calls: Arc::new(OnceCell::new()),
        }
    }

    /// Publishes `messages` (1 to 1000); one result per message, in order. Fails as a whole
    /// only when the frame could not be answered (stream broken, broker unreachable).
    pub async fn publish(
        &self,
        messages: Vec<pb::OutgoingMessage>,
    ) -> Result<Vec<pb::PublishResult>, Status> {
        let calls = self
            .calls
            .get_or_init(|| async {
                let (sender, receiver) = mpsc::channel(QUEUE);
                tokio::spawn(drive(self.client.clone(), receiver));
                sender
            })
            .await;
        let (reply, answer) = oneshot::channel();
        calls
            .send(Call { messages, reply })
            .await
            .map_err(|_| Status::unavailable("the publish stream's driver has stopped"))?;
        answer
            .await
            .map_err(|_| Status::unavailable("the publish stream ended before answering"))?
    }
}

/// Callers waiting for one frame's answer: how many of its messages are theirs, in order.
type Waiting = Vec<(usize, Reply)>;

async fn drive(client: BrokerClient<Channel>, mut calls: mpsc::Receiver<Call>) {
    let mut sequence: u64 = 0;
    // A call taken while no stream was open, to send as soon as one is.
    let mut carried: Option<Call> = None;
    // Set while the broker predates publish streams (a rolling upgrade): until then, one call
    // per message; afterwards the stream is tried again.
    let mut unary_until: Option<Instant> = None;
    loop {
        let first = match carried.take() {
            Some(call) => call,
            None => match calls.recv().await {
                Some(call) => call,
                None => return,
            },
        };
        if unary_until.is_some_and(|until| Instant::now() < until) {
            tokio::spawn(publish_unary(client.clone(), first));
            continue;
        }
        let (frames, outgoing) = mpsc::channel::<pb::PublishStreamRequest>(64);
        let opened = client
            .clone()
            .publish_stream(ReceiverStream::new(outgoing))
            .await;
        let mut responses = match opened {
            Ok(response) => response.into_inner(),
            Err(status) if status.code() == Code::Unimplemented => {
                tracing::info!("the broker has no publish stream; publishing one call per message");
                unary_until = Some(Instant::now() + RETRY_STREAM_AFTER);
                tokio::spawn(publish_unary(client.clone(), first));
                continue;
            }
            Err(status) => {
                // Everyone waiting now would meet the same broker: fail them together rather
                // than one connection attempt each.
                let status = as_unavailable(status);
                let _ = first.reply.send(Err(status.clone()));
                while let Ok(call) = calls.try_recv() {
                    let _ = call.reply.send(Err(status.clone()));
                }
                continue;
            }
        };
        let mut pending: HashMap<u64, Waiting> = HashMap::new();
        let mut next = Some(first);
        let broken = loop {
            tokio::select! {
                // Answers keep being routed while a frame waits for room in the stream.
                permit = frames.reserve(), if next.is_some() => {
                    let (Ok(permit), Some(call)) = (permit, next.take()) else {
                        break Status::unavailable("the publish stream closed");
                    };
                    sequence = sequence.wrapping_add(1);
                    let (frame, waiting) = gather(sequence, call, &mut calls, &mut carried);
                    pending.insert(sequence, waiting);
                    permit.send(frame);
                    // A call that did not fit the frame goes next, without waiting for others.
                    next = carried.take();
                }
                call = calls.recv(), if next.is_none() => match call {
                    Some(call) => next = Some(call),
                    // Every handle is gone: nobody waits for answers any more.
                    None => return,
                },
                response = responses.message() => match response {
                    Ok(Some(response)) => answer(&mut pending, response),
                    Ok(None) => break Status::unavailable("the broker ended the publish stream"),
                    Err(status) => break status,
                },
            }
        };
        carried = carried.or(next);
        let status = as_unavailable(broken);
        for (_, waiting) in pending.drain() {
            for (_, reply) in waiting {
                let _ = reply.send(Err(status.clone()));
            }
        }
        tracing::debug!(error = %status, "publish stream closed; the next publish opens another");
    }
}

/// Transport failures read as the broker being unavailable (the contract's retryable code).
/// A status with a source was made here from a transport error, not sent by the broker: a
/// broker that shuts down mid-stream sends GOAWAY, which the client reports as `INTERNAL`
/// ("h2 protocol error"), and that too means the broker went away.
fn as_unavailable(status: Status) -> Status {
    let from_transport = std::error::Error::source(&status).is_some();
    if from_transport
        || matches!(
            status.code(),
            Code::Unavailable | Code::Cancelled | Code::Unknown
        )
    {
        Status::unavailable(format!("publish stream broke: {}", status.message()))
    } else {
        status
    }
}

async fn publish_unary(mut client: BrokerClient<Channel>, call: Call) {
    let mut results = Vec::with_capacity(call.messages.len());
    for message in call.messages {
        let topic = message.topic.clone();
        let request = pb::PublishRequest {
            message: Some(message),
        };
        results.push(match client.publish(request).await {
            Ok(response) => {
                let response = response.into_inner();
                pb::PublishResult {
                    topic,
                    message_id: response.message_id,
                    duplicate: response.duplicate,
                    ..Default::default()
                }
            }
            Err(status) => pb::PublishResult {
                topic,
                retry_after: tta_types::error::retry_hint(&status)
                    .and_then(|wait| prost_types::Duration::try_from(wait).ok()),
                code: status.code() as i32,
                // The hint goes back into the message when the result is read.
                error: status
                    .message()
                    .rsplit_once(" (retry after ")
                    .map_or(status.message(), |(error, _)| error)
                    .to_owned(),
                ..Default::default()
            },
        });
    }
    let _ = call.reply.send(Ok(results));
}

/// One frame of `call` and the calls already waiting behind it (up to the frame's message and
/// byte limits); a call that does not fit is left in `carried`.
fn gather(
    sequence: u64,
    call: Call,
    calls: &mut mpsc::Receiver<Call>,
    carried: &mut Option<Call>,
) -> (pb::PublishStreamRequest, Waiting) {
    let mut bytes = encoded_len(&call.messages);
    let mut waiting = vec![(call.messages.len(), call.reply)];
    let mut messages = call.messages;
    while messages.len() < MAX_FRAME_MESSAGES && bytes < MAX_FRAME_BYTES {
        let Ok(call) = calls.try_recv() else {
            break;
        };
        let more = encoded_len(&call.messages);
        if messages.len() + call.messages.len() > MAX_FRAME_MESSAGES
            || bytes + more > MAX_FRAME_BYTES
        {
            *carried = Some(call);
            break;
        }
        bytes += more;
        waiting.push((call.messages.len(), call.reply));
        messages.extend(call.messages);
    }
    (pb::PublishStreamRequest { sequence, messages }, waiting)
}

fn encoded_len(messages: &[pb::OutgoingMessage]) -> usize {
    messages.iter().map(prost::Message::encoded_len).sum()
}

/// Hands each caller its share of a response frame.
fn answer(pending: &mut HashMap<u64, Waiting>, response: pb::PublishStreamResponse) {
    let Some(waiting) = pending.remove(&response.sequence) else {
        tracing::warn!(
            sequence = response.sequence,
            "publish stream answered a frame it was not sent"
        );
        return;
    };
    if !response.error.is_empty() {
        for (_, reply) in waiting {
            let _ = reply.send(Err(Status::invalid_argument(response.error.clone())));
        }
        return;
    }
    let expected: usize = waiting.iter().map(|(count, _)| count).sum();
    if response.results.len() != expected {
        let status = Status::internal(format!(
            "publish stream answered {} results for {expected} messages",
            response.results.len()
        ));
        for (_, reply) in waiting {
            let _ = reply.send(Err(status.clone()));
        }
        return;
    }
    let mut results = response.results.into_iter();
    let mut offset = 0;
    for (count, reply) in waiting {
        let mut own: Vec<pb::PublishResult> = results.by_ref().take(count).collect();
        if offset > 0 {
            for (index, result) in own.iter_mut().enumerate() {
                relative_field_path(&mut result.error, offset + index, index);
            }
        }
        offset += count;
        let _ = reply.send(Ok(own));
    }
}

/// The broker names a message by its place in the frame; a caller knows it by its place in
/// what it handed over.
fn relative_field_path(error: &mut String, in_frame: usize, own: usize) {
    let absolute = format!("messages[{in_frame}]");
    if let Some(rest) = error.strip_prefix(&absolute) {
        *error = format!("messages[{own}]{rest}");
    }
}

/// The status of one message's result, with the broker's retry hint when it gave one.
pub fn result_status(result: &pb::PublishResult) -> Result<(), Status> {
    if result.code == 0 {
        return Ok(());
    }
    let code = Code::from(result.code);
    let Some(wait) = result
        .retry_after
        .and_then(|wait| Duration::try_from(wait).ok())
    else {
        return Err(Status::new(code, result.error.clone()));
    };
    // As the broker's own calls say it: in the message and in the trailer.
    Err(tta_types::error::status_with_retry_hint(
        code,
        &result.error,
        wait,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_connection_is_unavailable_and_the_brokers_own_answers_are_kept() {
        // What the client makes of a GOAWAY from a broker shutting down mid-stream.
        let mut goaway = Status::internal("h2 protocol error: http2 error");
        goaway.set_source(Arc::new(std::io::Error::other("GoAway(NO_ERROR, Remote)")));
        assert_eq!(as_unavailable(goaway).code(), Code::Unavailable);
        assert_eq!(
            as_unavailable(Status::cancelled("stream reset")).code(),
            Code::Unavailable
        );
        // Sent by the broker itself: not a transport failure, and not retried as one.
        assert_eq!(
            as_unavailable(Status::internal("broker bug")).code(),
            Code::Internal
        );
        assert_eq!(
            as_unavailable(Status::invalid_argument("topic: empty")).code(),
            Code::InvalidArgument
        );
    }

    type Answer = oneshot::Receiver<Result<Vec<pb::PublishResult>, Status>>;

    fn call(messages: usize, payload_bytes: usize) -> (Call, Answer) {
        let (reply, answer) = oneshot::channel();
        let message = pb::OutgoingMessage {
            topic: "t".into(),
            payload: vec![0u8; payload_bytes].into(),
            ..Default::default()
        };
        let call = Call {
            messages: vec![message; messages],
            reply,
        };
        (call, answer)
    }

    fn stored(id: &str) -> pb::PublishResult {
        pb::PublishResult {
            topic: "t".into(),
            message_id: id.into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_frame_packs_the_waiting_calls_up_to_its_message_limit() {
        let (sender, mut calls) = mpsc::channel(8);
        let (first, _first) = call(600, 8);
        let (second, _second) = call(300, 8);
        let (third, _third) = call(200, 8);
        for waiting in [second, third] {
            assert!(sender.send(waiting).await.is_ok());
        }
        let mut carried = None;
        let (frame, waiting) = gather(1, first, &mut calls, &mut carried);
        assert_eq!(frame.sequence, 1);
        assert_eq!(frame.messages.len(), 900);
        let shares: Vec<usize> = waiting.iter().map(|(count, _)| *count).collect();
        assert_eq!(shares, [600, 300]);
        assert_eq!(carried.map(|call| call.messages.len()), Some(200));
    }

    #[tokio::test]
    async fn a_frame_stops_packing_at_its_byte_limit() {
        let (sender, mut calls) = mpsc::channel(8);
        let (first, _first) = call(3, 1 << 20);
        let (second, _second) = call(2, 1 << 20);
        assert!(sender.send(second).await.is_ok());
        let mut carried = None;
        let (frame, waiting) = gather(1, first, &mut calls, &mut carried);
        assert_eq!(frame.messages.len(), 3);
        assert_eq!(waiting.len(), 1);
        assert!(
            carried.is_some(),
            "the call over the byte limit waits for the next frame"
        );
    }

    #[test]
    fn each_caller_gets_its_share_of_an_answer_named_by_its_own_positions() {
        let (one, mut first) = call(1, 8);
        let (two, mut second) = call(2, 8);
        let mut pending = HashMap::from([(5, vec![(1, one.reply), (2, two.reply)])]);
        let refused = pb::PublishResult {
            code: Code::InvalidArgument as i32,
            error: "messages[2].topic: must not be empty".into(),
            ..Default::default()
        };
        answer(
            &mut pending,
            pb::PublishStreamResponse {
                sequence: 5,
                results: vec![stored("a"), stored("b"), refused],
                error: String::new(),
            },
        );
        assert!(pending.is_empty());
        let first = first
            .try_recv()
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        assert_eq!(first, [stored("a")]);
        let second = second
            .try_recv()
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        assert_eq!(second.len(), 2);
        assert_eq!(second[0], stored("b"));
        assert_eq!(second[1].error, "messages[1].topic: must not be empty");
    }

    #[test]
    fn a_malformed_or_refused_frame_fails_each_of_its_callers() {
        let (one, mut first) = call(1, 8);
        let (two, mut second) = call(1, 8);
        let mut pending = HashMap::from([(1, vec![(1, one.reply)]), (2, vec![(1, two.reply)])]);
        // One result for a frame of one message would do; none is wrong.
        answer(
            &mut pending,
            pb::PublishStreamResponse {
                sequence: 1,
                results: Vec::new(),
                error: String::new(),
            },
        );
        answer(
            &mut pending,
            pb::PublishStreamResponse {
                sequence: 2,
                results: Vec::new(),
                error: "messages: must hold 1 to 1000 messages, got 0".into(),
            },
        );
        let code = |answer: &mut Answer| {
            answer
                .try_recv()
                .ok()
                .and_then(|got| got.err())
                .map(|status| status.code())
        };
        assert_eq!(code(&mut first), Some(Code::Internal));
        assert_eq!(code(&mut second), Some(Code::InvalidArgument));
    }

    #[test]
    fn a_refused_result_carries_the_retry_hint_in_the_message_and_the_trailer() {
        let result = pb::PublishResult {
            code: Code::ResourceExhausted as i32,
            error: "topic t is full".into(),
            retry_after: prost_types::Duration::try_from(Duration::from_millis(250)).ok(),
            ..Default::default()
        };
        let status = result_status(&result)
            .err()
            .unwrap_or_else(|| Status::ok(""));
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(status.message(), "topic t is full (retry after 250 ms)");
        assert_eq!(
            status
                .metadata()
                .get("retry-after-ms")
                .and_then(|value| value.to_str().ok()),
            Some("250")
        );
        assert!(result_status(&stored("x")).is_ok());
    }
}
