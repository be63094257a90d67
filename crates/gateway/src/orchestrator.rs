//! `tta.v1.Orchestrator` over gRPC: validates requests at the edge (INVALID_ARGUMENT names the
//! field) and runs turns through the [`TurnRunner`].

use std::{pin::Pin, sync::Arc, time::SystemTime};

use futures::Stream;
use tonic::{Request, Response, Status};
use tta_proto::v1::{self as pb, orchestrator_server::Orchestrator};
use tta_types::{
    Config, FieldViolation, Priority, SessionId, TurnId, UserId, convert::priority_from_proto,
};

use crate::{
    capacity::Capacity,
    error::Error,
    turn::{COLLABORATIVE, TurnRequest, TurnRunner},
};

#[derive(Debug, Clone)]
pub struct OrchestratorService {
    config: Arc<Config>,
    turns: TurnRunner,
    capacity: Capacity,
}

impl OrchestratorService {
    pub fn new(config: Arc<Config>, turns: TurnRunner, capacity: Capacity) -> Self {
        Self {
            config,
            turns,
            capacity,
        }
    }

    /// Validates a turn and admits it under the current capacity pressure. A turn that already
    /// finished is always admitted: answering it from its run record costs the hosts nothing.
    async fn accept(&self, request: pb::ProcessUserInputRequest) -> Result<TurnRequest, Status> {
        let priority: Priority = priority_from_proto("priority", request.priority)?;
        let turn = self.validate_turn(request)?;
        if let Err(shed) = self.capacity.admit(priority) {
            let finished = self
                .turns
                .store()
                .response(turn.session_id.as_str(), turn.turn_id.as_str())
                .await?
                .is_some();
            if !finished {
                tracing::info!(session = %turn.session_id, turn = %turn.turn_id, priority = %priority, "turn shed");
                return Err(shed.into());
            }
        }
        Ok(turn)
    }

    fn validate_turn(
        &self,
        request: pb::ProcessUserInputRequest,
    ) -> Result<TurnRequest, FieldViolation> {
        let session_id = SessionId::parse_field("session_id", &request.session_id)?;
        let user_id = UserId::parse_field("user_id", &request.user_id)?;
        if request.text.trim().is_empty() {
            return Err(FieldViolation::new("text", "must not be empty"));
        }
        let length = request.text.chars().count();
        let limit = self.config.gateway.max_input_chars;
        if length > limit {
            return Err(FieldViolation::new(
                "text",
                format!("is {length} characters; the limit is {limit}"),
            ));
        }
        let turn_id = if request.turn_id.is_empty() {
            TurnId::generate()
        } else {
            TurnId::parse_field("turn_id", &request.turn_id)?
        };
        if !request.workflow.is_empty() && request.workflow != COLLABORATIVE {
            return Err(FieldViolation::new(
                "workflow",
                format!(
                    "unknown workflow {:?}; available: {COLLABORATIVE}",
                    request.workflow
                ),
            ));
        }
        Ok(TurnRequest {
            session_id,
            user_id,
            text: request.text,
            turn_id,
            interaction_type: if request.interaction_type.is_empty() {
                "turn".to_owned()
            } else {
                request.interaction_type
            },
            metadata: request.metadata,
        })
    }
}

/// World ids name files in the worlds directory: keep them to a plain, path-free alphabet.
fn check_world_id(world_id: &str) -> Result<(), FieldViolation> {
    let plain = (1..=64).contains(&world_id.len())
        && world_id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if plain {
        Ok(())
    } else {
        Err(FieldViolation::new(
            "world_id",
            "must be 1-64 characters of a-z, 0-9, '-' and '_'",
        ))
    }
}

type TurnEventStream = Pin<Box<dyn Stream<Item = Result<pb::TurnEvent, Status>> + Send>>;

fn event(turn_id: &str, sequence: u32, event: pb::turn_event::Event) -> pb::TurnEvent {
    pb::TurnEvent {
        turn_id: turn_id.to_owned(),
        sequence,
        time: Some(prost_types::Timestamp::from(SystemTime::now())),
        event: Some(event),
    }
}

/// The events of a finished turn, in the order a client expects them.
fn events_of(response: &pb::ProcessUserInputResponse) -> Vec<pb::TurnEvent> {
    use pb::turn_event::Event;
    let turn = response.turn_id.as_str();
    let mut events = vec![Event::Accepted(pb::TurnAccepted {
        run_id: response.run_id.clone(),
        session_id: response.session_id.clone(),
        workflow: response.workflow.clone(),
        workflow_version: response.workflow_version,
        replayed: response.replayed,
        expected_duration: None,
    })];
    for timing in &response.timings {
        events.push(Event::StepStarted(pb::StepStarted {
            step_id: timing.step_id.clone(),
            agent_type: timing.agent_type.clone(),
            attempt: timing.attempts,
        }));
        events.push(Event::StepFinished(pb::StepFinished {
            timing: Some(timing.clone()),
            error: String::new(),
        }));
    }
    events.push(Event::SafetyVerdict(pb::SafetyVerdict {
        assessment: response.safety.clone(),
        source: pb::ContentSource::Agent as i32,
        step_id: "nga".to_owned(),
        replaced: response.degraded,
    }));
    let sentences = split_sentences(&response.text);
    let last = sentences.len().saturating_sub(1);
    for (index, text) in sentences.into_iter().enumerate() {
        events.push(Event::NarrativeChunk(pb::NarrativeChunk {
            index: index as u32,
            text,
            last: index == last,
        }));
    }
    events.push(Event::Completed(pb::TurnCompleted {
        response: Some(response.clone()),
    }));
    events
        .into_iter()
        .enumerate()
        .map(|(sequence, kind)| event(turn, sequence as u32, kind))
        .collect()
}

fn split_sentences(text: &str) -> Vec<String> {
    let mut sentences = Vec::new();
    let mut current = String::new();
    for character in text.chars() {
        current.push(character);
        if matches!(character, '.' | '!' | '?') {
            sentences.push(std::mem::take(&mut current));
        }
    }
    if !current.trim().is_empty() {
        sentences.push(current);
    }
    sentences
}

#[tonic::async_trait]
impl Orchestrator for OrchestratorService {
    async fn process_user_input(
        &self,
        request: Request<pb::ProcessUserInputRequest>,
    ) -> Result<Response<pb::ProcessUserInputResponse>, Status> {
        let turn = self.accept(request.into_inner()).await?;
        Ok(Response::new(self.turns.run(turn).await?))
    }

    type StreamTurnStream = TurnEventStream;

    async fn stream_turn(
        &self,
        request: Request<pb::ProcessUserInputRequest>,
    ) -> Result<Response<Self::StreamTurnStream>, Status> {
        let turn = self.accept(request.into_inner()).await?;
        let response = self.turns.run(turn).await?;
        let events = events_of(&response).into_iter().map(Ok);
        Ok(Response::new(Box::pin(tokio_stream::iter(events))))
    }

    async fn get_turn(
        &self,
        request: Request<pb::GetTurnRequest>,
    ) -> Result<Response<pb::GetTurnResponse>, Status> {
        let request = request.into_inner();
        let session = SessionId::parse_field("session_id", &request.session_id)?;
        let turn = TurnId::parse_field("turn_id", &request.turn_id)?;
        let response = self
            .turns
            .store()
            .response(session.as_str(), turn.as_str())
            .await?
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "turn_id: no finished turn {turn} in session {session}"
                ))
            })?;
        Ok(Response::new(pb::GetTurnResponse {
            state: pb::TurnState::Completed as i32,
            response: Some(response),
            failure: None,
        }))
    }

    async fn create_session(
        &self,
        request: Request<pb::CreateSessionRequest>,
    ) -> Result<Response<pb::CreateSessionResponse>, Status> {
        let request = request.into_inner();
        let user_id = UserId::parse_field("user_id", &request.user_id)?;
        let session_id = if request.session_id.is_empty() {
            SessionId::generate()
        } else {
            SessionId::parse_field("session_id", &request.session_id)?
        };
        if request.character_name.chars().count() > 64 {
            return Err(
                FieldViolation::new("character_name", "must be at most 64 characters").into(),
            );
        }
        let mut session = self.turns.new_session(&session_id, &user_id);
        session.character_name = request.character_name;
        if !request.world_id.is_empty() {
            check_world_id(&request.world_id)?;
            session.world_id = request.world_id;
        }
        if let Some(settings) = request.settings {
            session.settings = Some(settings);
        }
        session.metadata = request.metadata;
        let store = self.turns.store();
        let created = store.create_session(&session).await?;
        let session = if created {
            session
        } else {
            let existing = store
                .load_session(session_id.as_str())
                .await?
                .ok_or_else(|| Error::Internal("session vanished while being created".into()))?;
            if existing.user_id != user_id.as_str() {
                return Err(Error::PermissionDenied(format!(
                    "session_id: session {session_id} belongs to another user"
                ))
                .into());
            }
            existing
        };
        Ok(Response::new(pb::CreateSessionResponse {
            session: Some(session),
            created,
            intro_text: String::new(),
            world: None,
        }))
    }

    async fn get_session(
        &self,
        request: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::GetSessionResponse>, Status> {
        let session_id = SessionId::parse_field("session_id", &request.into_inner().session_id)?;
        let session = self
            .turns
            .store()
            .load_session(session_id.as_str())
            .await?
            .ok_or_else(|| Error::NotFound(format!("session_id: no session {session_id}")))?;
        Ok(Response::new(pb::GetSessionResponse {
            session: Some(session),
            world: None,
        }))
    }

    async fn end_session(
        &self,
        request: Request<pb::EndSessionRequest>,
    ) -> Result<Response<pb::EndSessionResponse>, Status> {
        let request = request.into_inner();
        let session_id = SessionId::parse_field("session_id", &request.session_id)?;
        let store = self.turns.store();
        let mut session = store
            .load_session(session_id.as_str())
            .await?
            .ok_or_else(|| Error::NotFound(format!("session_id: no session {session_id}")))?;
        if session.state != pb::SessionState::Ended as i32 {
            let now = prost_types::Timestamp::from(SystemTime::now());
            session.state = pb::SessionState::Ended as i32;
            session.ended_at = Some(now);
            session.updated_at = Some(now);
            session.end_reason = request.reason;
            store.save_session(&session).await?;
        }
        Ok(Response::new(pb::EndSessionResponse {
            session: Some(session),
        }))
    }

    async fn register_workflow(
        &self,
        _: Request<pb::RegisterWorkflowRequest>,
    ) -> Result<Response<pb::RegisterWorkflowResponse>, Status> {
        Err(Status::unimplemented(
            "workflow registration is not available in this build; the built-in workflow is `collaborative`",
        ))
    }

    async fn list_workflows(
        &self,
        _: Request<pb::ListWorkflowsRequest>,
    ) -> Result<Response<pb::ListWorkflowsResponse>, Status> {
        Err(Status::unimplemented(
            "workflow listing is not available in this build; the built-in workflow is `collaborative`",
        ))
    }

    async fn get_workflow(
        &self,
        _: Request<pb::GetWorkflowRequest>,
    ) -> Result<Response<pb::GetWorkflowResponse>, Status> {
        Err(Status::unimplemented(
            "workflow inspection is not available in this build; the built-in workflow is `collaborative`",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_split_on_terminal_punctuation_and_keep_the_rest() {
        assert_eq!(
            split_sentences("You rest. The sea is calm! Ready?"),
            ["You rest.", " The sea is calm!", " Ready?"]
        );
        assert_eq!(split_sentences("no end"), ["no end"]);
        assert!(split_sentences("").is_empty());
    }
}
