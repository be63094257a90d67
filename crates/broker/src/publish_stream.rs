//! One `PublishStream` call: request frames in, one response frame per request frame out.
//!
//! Frames that have already arrived when one is taken are published together, with one engine
//! call (one script round trip per topic and priority instead of one per frame): under load
//! several publishers' frames share the work, and an idle stream answers each frame at once.

use futures::{FutureExt, Stream, StreamExt};
use tokio::{sync::mpsc, task::JoinSet};
use tonic::Status;
use tta_proto::v1 as pb;
use tta_runtime::Shutdown;

use crate::{
    outgoing::TraceHeaders,
    service::{BrokerService, MAX_BATCH},
};

/// Groups of frames published at once per stream; a publisher that sends faster than Redis
/// stores waits for its replies instead of queueing unbounded work here.
const MAX_IN_FLIGHT: usize = 32;

pub type Responses = mpsc::Sender<Result<pb::PublishStreamResponse, Status>>;

/// Serves one stream until the client ends it, the transport breaks or the broker shuts down.
/// Frames already taken are always answered; on shutdown, frames not yet read are left to the
/// client (which sees the stream end and fails them as unavailable).
pub async fn run<S>(service: BrokerService, mut frames: S, responses: Responses, shutdown: Shutdown)
where
    S: Stream<Item = Result<pb::PublishStreamRequest, Status>> + Unpin + Send + 'static,
{
    let mut running = JoinSet::new();
    let mut reading = true;
    // Reported after every frame already taken has been answered, so none of those answers is
    // lost behind the end of the call.
    let mut failure: Option<Status> = None;
    while reading || !running.is_empty() {
        tokio::select! {
            () = shutdown.wait(), if reading => reading = false,
            frame = frames.next(), if reading && running.len() < MAX_IN_FLIGHT => {
                let first = match frame {
                    Some(Ok(first)) => first,
                    Some(Err(status)) => {
                        // E.g. a frame over the size limit: say so rather than end quietly.
                        failure = Some(status);
                        reading = false;
                        continue;
                    }
                    None => {
                        reading = false;
                        continue;
                    }
                };
                let (group, broken) = gather(first, &mut frames);
                reading = broken.is_none();
                failure = failure.or(broken.flatten());
                running.spawn(publish_group(service.clone(), group, responses.clone()));
            }
            Some(joined) = running.join_next(), if !running.is_empty() => {
                if joined.is_err() {
                    // A group's frames would never be answered: end the call, so the client
                    // fails them instead of waiting.
                    failure = Some(Status::internal("a publish frame could not be answered"));
                    reading = false;
                }
            }
        }
    }
    if let Some(status) = failure {
        let _ = responses.send(Err(status)).await;
    }
}

/// `first` and the frames already waiting behind it, until at least [`MAX_BATCH`] messages
/// are gathered. The second value is `Some` when the stream has ended, holding the error that
/// broke it, if one did.
fn gather<S>(
    first: pb::PublishStreamRequest,
    frames: &mut S,
) -> (Vec<pb::PublishStreamRequest>, Option<Option<Status>>)
where
    S: Stream<Item = Result<pb::PublishStreamRequest, Status>> + Unpin,
{
    let mut messages = first.messages.len();
    let mut group = vec![first];
    while messages < MAX_BATCH {
        match frames.next().now_or_never() {
            Some(Some(Ok(frame))) => {
                messages += frame.messages.len();
                group.push(frame);
            }
            Some(Some(Err(status))) => return (group, Some(Some(status))),
            Some(None) => return (group, Some(None)),
            None => break,
        }
    }
    (group, None)
}

/// Publishes every valid frame of `group` in one engine call and answers each frame.
async fn publish_group(
    service: BrokerService,
    group: Vec<pb::PublishStreamRequest>,
    responses: Responses,
) {
    // A long-lived stream belongs to no one request: each message carries its own trace
    // context, or none (its consumer then starts a trace of its own).
    let no_trace = TraceHeaders::new();
    let mut answers = Vec::with_capacity(group.len());
    let mut items = Vec::new();
    for frame in group {
        match service.validate_batch(frame.messages, &no_trace) {
            Ok(checked) => {
                answers.push((frame.sequence, Ok(checked.len())));
                items.extend(checked);
            }
            Err(violation) => answers.push((frame.sequence, Err(violation.to_string()))),
        }
    }
    let mut results = service.publish_validated(items).await.into_iter();
    for (sequence, answer) in answers {
        let response = match answer {
            Ok(count) => pb::PublishStreamResponse {
                sequence,
                results: results.by_ref().take(count).collect(),
                error: String::new(),
            },
            Err(error) => pb::PublishStreamResponse {
                sequence,
                results: Vec::new(),
                error,
            },
        };
        if responses.send(Ok(response)).await.is_err() {
            // The client is gone; what was published stays published (publishing is
            // idempotent for callers that set keys and retry).
            return;
        }
    }
}
