//! `tta.v1.Orchestrator` over gRPC: validates requests at the edge (INVALID_ARGUMENT names the
//! field) and runs turns through the [`TurnRunner`]; the WebSocket endpoint starts and resumes
//! its turns through the same functions.

use std::{
    collections::HashMap,
    pin::Pin,
    time::{Duration, SystemTime},
};

use futures::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tta_proto::v1::{self as pb, orchestrator_server::Orchestrator};
use tta_safety::TherapeuticSettings;
use tta_types::{
    AgentType, FieldViolation, Priority, SessionId, TurnId, UserId, convert::priority_from_proto,
};

use crate::{
    capacity::Capacity,
    error::Error,
    events::{self, EventSink},
    live::LiveConfig,
    turn::{TurnRequest, TurnRunner},
};

/// The contract's limits on `ProcessUserInputRequest.metadata`.
const MAX_METADATA_ENTRIES: usize = 32;
const MAX_METADATA_KEY_BYTES: usize = 64;
const MAX_METADATA_VALUE_BYTES: usize = 1024;
/// The contract's limit on `EndSessionRequest.reason`.
const MAX_END_REASON_BYTES: usize = 256;

#[derive(Debug, Clone)]
pub struct OrchestratorService {
    config: LiveConfig,
    turns: TurnRunner,
    capacity: Capacity,
}

impl OrchestratorService {
    pub fn new(config: LiveConfig, turns: TurnRunner, capacity: Capacity) -> Self {
        Self {
            config,
            turns,
            capacity,
        }
    }

    /// Validates a turn and admits it under the current capacity pressure. A turn that already
    /// finished is always admitted: answering it from its run record costs the hosts nothing.
    async fn accept(&self, request: pb::ProcessUserInputRequest) -> Result<TurnRequest, Error> {
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
                return Err(shed);
            }
        }
        Ok(turn)
    }

    /// Validates, admits and starts a turn whose progress streams back as `TurnEvent`s: the one
    /// path of `StreamTurn` and the WebSocket endpoint. The turn runs on its own task, so a
    /// client that hangs up does not cancel it. A `resumable` turn first keeps its request in
    /// its run record, so [`OrchestratorService::resume_turn`] can run it again by its ids.
    pub async fn start_turn(
        &self,
        request: pb::ProcessUserInputRequest,
        resumable: bool,
    ) -> Result<StartedTurn, Error> {
        let kept = resumable.then(|| request.clone());
        let turn = self.accept(request).await?;
        let turn_id = turn.turn_id.to_string();
        let kept = kept.map(|mut request| {
            // The ids as validated: a generated turn id is the one to resume by.
            request.session_id = turn.session_id.to_string();
            request.turn_id = turn_id.clone();
            request
        });
        let (sink, receiver) = EventSink::channel();
        let runner = self.turns.clone();
        tokio::spawn(async move {
            if let Some(request) = kept
                && let Err(err) = runner.store().remember_request(&request).await
            {
                // Only a later resume by ids needs it; the turn itself can still run.
                tracing::warn!(session = %request.session_id, turn = %request.turn_id, error = %err, "cannot keep the request of a resumable turn");
            }
            match runner.run(turn, &sink).await {
                Ok(response) => sink.completed(&response),
                Err(err) => sink.failed(&tonic::Status::from(err)),
            }
        });
        Ok(StartedTurn {
            events: events::stream(turn_id.clone(), receiver),
            turn_id,
        })
    }

    /// A turn asked for again by its ids only (a client that lost its connection). A finished
    /// turn is replayed from its run record; otherwise the stored request runs again, which —
    /// runs being idempotent by `turn_id` — waits for an attempt still in flight or finishes
    /// one a crashed gateway left, and either way answers the one result.
    pub async fn resume_turn(&self, session_id: &str, turn_id: &str) -> Result<StartedTurn, Error> {
        let session = SessionId::parse_field("session_id", session_id)?;
        let turn = TurnId::parse_field("turn_id", turn_id)?;
        let store = self.turns.store();
        if let Some(mut done) = store.response(session.as_str(), turn.as_str()).await? {
            done.replayed = true;
            let (sink, receiver) = EventSink::channel();
            sink.accepted(crate::turn::accepted_of(&done, Duration::ZERO));
            sink.narrative(&done.text);
            sink.completed(&done);
            return Ok(StartedTurn {
                events: events::stream(turn.to_string(), receiver),
                turn_id: turn.to_string(),
            });
        }
        match store.request(session.as_str(), turn.as_str()).await? {
            Some(request) => self.start_turn(request, false).await,
            None => Err(Error::NotFound(format!(
                "turn_id: no turn {turn} in session {session}"
            ))),
        }
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
        let limit = self.config.now().gateway.max_input_chars;
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
        check_metadata(&request.metadata)?;
        let priority = match pb::Priority::try_from(request.priority) {
            Ok(pb::Priority::Unspecified) => pb::Priority::Normal,
            Ok(priority) => priority,
            Err(_) => return Err(FieldViolation::new("priority", "unknown priority")),
        };
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
            workflow: request.workflow,
            priority,
        })
    }
}

/// The contract's limits on free-form metadata, the same for turns and sessions.
fn check_metadata(metadata: &HashMap<String, String>) -> Result<(), FieldViolation> {
    if metadata.len() > MAX_METADATA_ENTRIES {
        return Err(FieldViolation::new(
            "metadata",
            format!("must hold at most {MAX_METADATA_ENTRIES} entries"),
        ));
    }
    if let Some((key, _)) = metadata.iter().find(|(key, value)| {
        key.len() > MAX_METADATA_KEY_BYTES || value.len() > MAX_METADATA_VALUE_BYTES
    }) {
        return Err(FieldViolation::new(
            format!("metadata[{key:?}]"),
            format!(
                "keys may have at most {MAX_METADATA_KEY_BYTES} bytes and values {MAX_METADATA_VALUE_BYTES}"
            ),
        ));
    }
    Ok(())
}

/// Whether a world can be played: refused only when the live WBAs say which worlds they hold
/// and none holds it. With no WBA up (or none telling), the session is created and its first
/// turn finds out, rather than refusing a world that may well exist.
fn world_is_served(world_id: &str, agents: &[pb::AgentInfo]) -> bool {
    let mut told = tta_runtime::agents::of_type(agents, AgentType::Wba.as_str())
        .filter_map(|wba| wba.labels.get(tta_runtime::agents::WORLDS_LABEL))
        .peekable();
    told.peek().is_none()
        || told.any(|worlds| worlds.split(',').any(|served| served.trim() == world_id))
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

/// A turn under way: its id (generated when the request had none) and its progress, ending
/// with exactly one `completed` or `failed` event.
#[derive(Debug)]
pub struct StartedTurn {
    pub turn_id: String,
    pub events: ReceiverStream<Result<pb::TurnEvent, Status>>,
}

impl OrchestratorService {
    /// The world as the session's last turn left it, from that turn's recorded response. The
    /// WBA owns the state; the gateway only keeps what the WBA last said about it.
    async fn last_world(&self, session: &pb::Session) -> Result<Option<pb::WorldSummary>, Error> {
        if session.last_turn_id.is_empty() {
            return Ok(None);
        }
        let response = self
            .turns
            .store()
            .response(&session.session_id, &session.last_turn_id)
            .await?;
        Ok(response.and_then(|response| response.world))
    }

    /// Steps naming an agent type no live worker serves (R8.1: such a step falls back at run
    /// time). Informational: an unreadable registry yields no warnings, not an error.
    async fn live_agent_warnings(
        &self,
        workflow: &crate::workflow::definition::Workflow,
    ) -> Vec<String> {
        let Ok(agents) = self.turns.store().agents().await else {
            return Vec::new();
        };
        workflow
            .definition
            .steps
            .iter()
            .enumerate()
            .filter(|(_, step)| {
                tta_runtime::agents::of_type(&agents, &step.agent_type)
                    .next()
                    .is_none()
            })
            .map(|(i, step)| {
                format!(
                    "steps[{i}].agent_type: no live agent of type {:?}",
                    step.agent_type
                )
            })
            .collect()
    }
}

#[tonic::async_trait]
impl Orchestrator for OrchestratorService {
    async fn process_user_input(
        &self,
        request: Request<pb::ProcessUserInputRequest>,
    ) -> Result<Response<pb::ProcessUserInputResponse>, Status> {
        let turn = self.accept(request.into_inner()).await?;
        Ok(Response::new(
            self.turns.run(turn, &EventSink::default()).await?,
        ))
    }

    type StreamTurnStream = TurnEventStream;

    async fn stream_turn(
        &self,
        request: Request<pb::ProcessUserInputRequest>,
    ) -> Result<Response<Self::StreamTurnStream>, Status> {
        let started = self.start_turn(request.into_inner(), false).await?;
        Ok(Response::new(Box::pin(started.events)))
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
        let mut request = request.into_inner();
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
        if let Some(settings) = &mut request.settings {
            TherapeuticSettings::from_proto("settings", settings)?;
            settings.goals = tta_safety::parse_goals("settings", &settings.goals)?;
        }
        check_metadata(&request.metadata)?;
        if !request.world_id.is_empty() {
            check_world_id(&request.world_id)?;
        }
        let store = self.turns.store();
        // A repeat is answered with the stored session before the world is looked at: the
        // session exists whatever the WBAs serve now. Without a world to check, creating first
        // finds a repeat just as well, one read fewer.
        let stored = if request.world_id.is_empty() {
            None
        } else {
            store.load_session(session_id.as_str()).await?
        };
        let (session, created) = match stored {
            Some(existing) => (existing, false),
            None => {
                if !request.world_id.is_empty()
                    && !world_is_served(&request.world_id, &store.agents().await?)
                {
                    return Err(Error::NotFound(format!(
                        "world_id: no world {:?} is loaded by any WBA",
                        request.world_id
                    ))
                    .into());
                }
                let mut session = self.turns.new_session(&session_id, &user_id);
                session.character_name = request.character_name;
                if !request.world_id.is_empty() {
                    session.world_id = request.world_id;
                }
                if let Some(settings) = request.settings {
                    session.settings = Some(settings);
                }
                session.metadata = request.metadata;
                if store.create_session(&session).await? {
                    (session, true)
                } else {
                    // A repeat, or created by a concurrent request meanwhile.
                    let existing =
                        store
                            .load_session(session_id.as_str())
                            .await?
                            .ok_or_else(|| {
                                Error::Internal("session vanished while being created".into())
                            })?;
                    (existing, false)
                }
            }
        };
        if session.user_id != user_id.as_str() {
            return Err(Error::AlreadyExists(format!(
                "session_id: session {session_id} belongs to another user"
            ))
            .into());
        }
        let world = self.last_world(&session).await?;
        Ok(Response::new(pb::CreateSessionResponse {
            session: Some(session),
            created,
            intro_text: String::new(),
            world,
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
        let world = self.last_world(&session).await?;
        Ok(Response::new(pb::GetSessionResponse {
            session: Some(session),
            world,
        }))
    }

    async fn end_session(
        &self,
        request: Request<pb::EndSessionRequest>,
    ) -> Result<Response<pb::EndSessionResponse>, Status> {
        let request = request.into_inner();
        let session_id = SessionId::parse_field("session_id", &request.session_id)?;
        if request.reason.len() > MAX_END_REASON_BYTES {
            return Err(FieldViolation::new(
                "reason",
                format!("must be at most {MAX_END_REASON_BYTES} bytes"),
            )
            .into());
        }
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
        request: Request<pb::RegisterWorkflowRequest>,
    ) -> Result<Response<pb::RegisterWorkflowResponse>, Status> {
        let request = request.into_inner();
        let definition = request
            .definition
            .ok_or_else(|| FieldViolation::new("definition", "is required"))?;
        let registered = self
            .turns
            .workflows()
            .register(definition, request.validate_only, request.expected_version)
            .await?;
        let warnings = self.live_agent_warnings(&registered.workflow).await;
        let mut definition = registered.workflow.definition.clone();
        definition.version = registered.workflow.version;
        Ok(Response::new(pb::RegisterWorkflowResponse {
            definition: Some(definition),
            warnings: registered.warnings.into_iter().chain(warnings).collect(),
        }))
    }

    async fn list_workflows(
        &self,
        request: Request<pb::ListWorkflowsRequest>,
    ) -> Result<Response<pb::ListWorkflowsResponse>, Status> {
        let request = request.into_inner();
        let (page, next_page_token) = self
            .turns
            .workflows()
            .list(request.page_size, &request.page_token)
            .await?;
        Ok(Response::new(pb::ListWorkflowsResponse {
            workflows: page
                .iter()
                .map(|workflow| workflow.definition.clone())
                .collect(),
            next_page_token,
        }))
    }

    async fn get_workflow(
        &self,
        request: Request<pb::GetWorkflowRequest>,
    ) -> Result<Response<pb::GetWorkflowResponse>, Status> {
        let request = request.into_inner();
        if request.name.trim().is_empty() {
            return Err(FieldViolation::new("name", "must not be empty").into());
        }
        let workflow = self
            .turns
            .workflows()
            .get(&request.name, request.version)
            .await?;
        Ok(Response::new(pb::GetWorkflowResponse {
            definition: Some(workflow.definition.clone()),
        }))
    }
}
