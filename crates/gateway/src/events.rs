//! Progress of a turn as `TurnEvent`s (R7.2, R7.4). The turn reports what happens through an
//! [`EventSink`] (a no-op for `ProcessUserInput`); [`stream`] numbers the events, adds the
//! `TurnSlow` notices when the turn runs past its expected duration, and ends with exactly one
//! `completed` or `failed`.

use std::{collections::BTreeSet, time::Duration};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tta_proto::v1::{self as pb, turn_event::Event};

use crate::workflow::definition::Step;

/// What a slow turn tells the player.
const SLOW_MESSAGE: &str = "The story is taking a moment to unfold…";

/// Where a turn reports its progress; cheap to clone, and silent when nobody listens.
#[derive(Debug, Clone, Default)]
pub struct EventSink(Option<mpsc::UnboundedSender<Event>>);

impl EventSink {
    pub fn channel() -> (Self, mpsc::UnboundedReceiver<Event>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        (Self(Some(sender)), receiver)
    }

    /// Builds the event only when someone listens: a `ProcessUserInput` turn pays nothing.
    fn emit(&self, event: impl FnOnce() -> Event) {
        if let Some(sender) = &self.0 {
            // A client that went away stops listening; the turn still completes.
            let _ = sender.send(event());
        }
    }

    pub fn is_listening(&self) -> bool {
        self.0.is_some()
    }

    pub fn accepted(&self, accepted: pb::TurnAccepted) {
        self.emit(|| Event::Accepted(accepted));
    }

    pub fn step_started(&self, step: &Step, attempt: u32) {
        self.emit(|| {
            Event::StepStarted(pb::StepStarted {
                step_id: step.id.clone(),
                agent_type: step.agent_type.clone(),
                attempt,
            })
        });
    }

    pub fn step_finished(&self, timing: &pb::StepTiming, error: &str) {
        self.emit(|| {
            Event::StepFinished(pb::StepFinished {
                timing: Some(timing.clone()),
                error: error.to_owned(),
            })
        });
    }

    pub fn safety(
        &self,
        assessment: &pb::SafetyAssessment,
        source: pb::ContentSource,
        step_id: &str,
        replaced: bool,
    ) {
        self.emit(|| {
            Event::SafetyVerdict(pb::SafetyVerdict {
                assessment: Some(assessment.clone()),
                source: source as i32,
                step_id: step_id.to_owned(),
                replaced,
            })
        });
    }

    /// The reply in display chunks; only ever called with text that passed the safety check.
    pub fn narrative(&self, text: &str) {
        if !self.is_listening() {
            return;
        }
        let chunks = split_sentences(text);
        let last = chunks.len().saturating_sub(1);
        for (index, chunk) in chunks.into_iter().enumerate() {
            self.emit(|| {
                Event::NarrativeChunk(pb::NarrativeChunk {
                    index: u32::try_from(index).unwrap_or(u32::MAX),
                    text: chunk,
                    last: index == last,
                })
            });
        }
    }

    pub fn completed(&self, response: &pb::ProcessUserInputResponse) {
        self.emit(|| {
            Event::Completed(pb::TurnCompleted {
                response: Some(response.clone()),
            })
        });
    }

    pub fn failed(&self, status: &tonic::Status) {
        let retry_after = tta_types::error::retry_hint(status);
        self.emit(|| {
            Event::Failed(pb::TurnFailed {
                code: status.code() as i32,
                message: status.message().to_owned(),
                retryable: retry_after.is_some(),
                retry_after: retry_after.and_then(|d| prost_types::Duration::try_from(d).ok()),
            })
        });
    }
}

/// Splits a reply into sentences for progressive display, each with the whitespace after it;
/// the pieces concatenate to `text`.
pub fn split_sentences(text: &str) -> Vec<String> {
    let mut sentences = Vec::new();
    let mut current = String::new();
    let mut ended = false;
    for character in text.chars() {
        if ended && !character.is_whitespace() {
            sentences.push(std::mem::take(&mut current));
            ended = false;
        }
        current.push(character);
        if matches!(character, '.' | '!' | '?') {
            ended = true;
        }
    }
    if !current.is_empty() {
        sentences.push(current);
    }
    sentences
}

fn event(turn_id: &str, sequence: u32, event: Event) -> pb::TurnEvent {
    pb::TurnEvent {
        turn_id: turn_id.to_owned(),
        sequence,
        time: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
        event: Some(event),
    }
}

/// The client's stream: events in order with sequence numbers from 1, a `TurnSlow` whenever
/// another expected duration passes without the turn ending, closed after the last event.
pub fn stream(
    turn_id: String,
    mut events: mpsc::UnboundedReceiver<Event>,
) -> ReceiverStream<Result<pb::TurnEvent, tonic::Status>> {
    let (sender, receiver) = mpsc::channel(64);
    tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        let mut sequence = 0u32;
        let mut expected: Option<Duration> = None;
        let mut next_slow: Option<tokio::time::Instant> = None;
        let mut running: BTreeSet<String> = BTreeSet::new();
        loop {
            let slow_at = next_slow;
            let next = tokio::select! {
                next = events.recv() => next,
                () = async {
                    match slow_at {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {
                    let elapsed = started.elapsed();
                    let expected = expected.unwrap_or(elapsed);
                    next_slow = Some(tokio::time::Instant::now() + expected);
                    Some(Event::Slow(pb::TurnSlow {
                        elapsed: prost_types::Duration::try_from(elapsed).ok(),
                        expected: prost_types::Duration::try_from(expected).ok(),
                        running_steps: running.iter().cloned().collect(),
                        message: SLOW_MESSAGE.to_owned(),
                    }))
                }
            };
            let Some(next) = next else {
                break;
            };
            let last = matches!(next, Event::Completed(_) | Event::Failed(_));
            match &next {
                Event::Accepted(accepted) => {
                    expected = accepted
                        .expected_duration
                        .and_then(|d| Duration::try_from(d).ok())
                        .filter(|d| !d.is_zero());
                    next_slow = expected.map(|d| started + d);
                }
                Event::StepStarted(step) => {
                    running.insert(step.step_id.clone());
                }
                Event::StepFinished(finished) => {
                    if let Some(timing) = &finished.timing {
                        running.remove(&timing.step_id);
                    }
                }
                _ => {}
            }
            sequence += 1;
            if sender
                .send(Ok(event(&turn_id, sequence, next)))
                .await
                .is_err()
            {
                // The client is gone; the turn carries on without an audience.
                break;
            }
            if last {
                break;
            }
        }
    });
    ReceiverStream::new(receiver)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_concatenate_to_the_text() {
        let text = "You wake. The sea is calm!\nWhat now? Rest";
        let pieces = split_sentences(text);
        assert_eq!(
            pieces,
            ["You wake. ", "The sea is calm!\n", "What now? ", "Rest"]
        );
        assert_eq!(pieces.concat(), text);
        assert!(split_sentences("").is_empty());
    }
}
