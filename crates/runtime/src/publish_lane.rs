//! The publishing side of a [`crate::messaging::Publisher`]: one long-lived
//! `Broker/PublishStream` call shared by every clone, instead of a unary call per message.
//!
//! Callers hand their messages to one driver task. It writes everything that is waiting as one
//! frame, routes each response frame back to its callers by sequence number, and opens a new
//! stream on the next publish after the old one broke — failing, as unavailable, every publish
//! the broken stream had not answered (the broker may or may not have stored them; the
//! idempotency key makes the retry safe).

use std::{collections::HashMap, sync::Arc};

use tokio::sync::{OnceCell, mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, transport::Channel};
use tta_proto::v1::{self as pb, broker_client::BrokerClient};

/// Most messages in one frame (the broker's limit per frame).
const MAX_FRAME_MESSAGES: usize = 1000;
/// Publishes waiting for the driver; beyond this, callers wait to hand theirs over.
const QUEUE: usize = 1024;

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
    // A broker from before publish streams (during a rolling upgrade): one call per message.
    let mut unary = false;
    loop {
        let first = match carried.take() {
            Some(call) => call,
            None => match calls.recv().await {
                Some(call) => call,
                None => return,
            },
        };
        if unary {
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
                unary = true;
                tokio::spawn(publish_unary(client.clone(), first));
                continue;
            }
            Err(status) => {
                let _ = first.reply.send(Err(status));
                continue;
            }
        };
        let mut pending: HashMap<u64, Waiting> = HashMap::new();
        let mut next = Some(first);
        let broken = loop {
            if let Some(call) = next.take() {
                sequence = sequence.wrapping_add(1);
                let (frame, waiting) = gather(sequence, call, &mut calls, &mut carried);
                pending.insert(sequence, waiting);
                if frames.send(frame).await.is_err() {
                    break Status::unavailable("the publish stream closed");
                }
                // A call too big to share the frame goes next, without waiting for others.
                next = carried.take();
                continue;
            }
            tokio::select! {
                call = calls.recv() => match call {
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
        let status = match broken.code() {
            Code::Unavailable | Code::Cancelled | Code::Unknown => {
                Status::unavailable(format!("publish stream broke: {}", broken.message()))
            }
            _ => broken,
        };
        for (_, waiting) in pending.drain() {
            for (_, reply) in waiting {
                let _ = reply.send(Err(status.clone()));
            }
        }
        tracing::debug!(error = %status, "publish stream closed; the next publish opens another");
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
                code: status.code() as i32,
                error: status.message().to_owned(),
                ..Default::default()
            },
        });
    }
    let _ = call.reply.send(Ok(results));
}

/// One frame of `call` and the calls already waiting behind it (up to the frame limit); a call
/// that does not fit is left in `carried`.
fn gather(
    sequence: u64,
    call: Call,
    calls: &mut mpsc::Receiver<Call>,
    carried: &mut Option<Call>,
) -> (pb::PublishStreamRequest, Waiting) {
    let mut waiting = vec![(call.messages.len(), call.reply)];
    let mut messages = call.messages;
    while messages.len() < MAX_FRAME_MESSAGES {
        let Ok(call) = calls.try_recv() else {
            break;
        };
        if messages.len() + call.messages.len() > MAX_FRAME_MESSAGES {
            *carried = Some(call);
            break;
        }
        waiting.push((call.messages.len(), call.reply));
        messages.extend(call.messages);
    }
    (pb::PublishStreamRequest { sequence, messages }, waiting)
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
    for (count, reply) in waiting {
        let _ = reply.send(Ok(results.by_ref().take(count).collect()));
    }
}

/// The status of one message's result, with the broker's retry hint when it gave one.
pub fn result_status(result: &pb::PublishResult) -> Result<(), Status> {
    if result.code == 0 {
        return Ok(());
    }
    let mut status = Status::new(Code::from(result.code), result.error.clone());
    if let Some(wait) = result
        .retry_after
        .and_then(|wait| std::time::Duration::try_from(wait).ok())
        && let Ok(value) = wait.as_millis().to_string().parse()
    {
        status.metadata_mut().insert("retry-after-ms", value);
    }
    Err(status)
}
