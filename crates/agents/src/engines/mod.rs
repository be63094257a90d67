//! The built-in agent engines: the part of each worker that thinks.
//!
//! An engine turns one `AgentTask` into one `AgentOutput`, synchronously and without I/O:
//!
//! - [`ipa::InputProcessor`] reads the player's text: intent, entities, emotional tone;
//! - [`wba::WorldBuilder`] applies the turn to the session's [`world::WorldState`];
//! - [`nga::NarrativeGenerator`] writes the reply in a calm, therapeutic voice.
//!
//! Keeping them pure is what lets the worker runtime stay simple and safe: it loads whatever
//! state an engine needs, calls [`Engine::run`], makes the result durable and only then acks
//! the task. An engine can be retried, replayed or run on another replica with the same
//! result; a test can drive a whole session without Redis or a broker.
//!
//! Only the WBA has state. The worker hands it the session's stored `WorldState` (or `None`
//! for a new session) in [`EngineState::World`] and stores the `world_state` of the
//! [`EngineOutcome`] before publishing the result (see [`wba`] for the protocol).

pub mod ipa;
pub mod nga;
pub mod tone;
pub mod wba;
pub mod world;

mod text;

#[cfg(test)]
mod session_tests;

use std::sync::Arc;

use tta_proto::v1::{AgentOutput, AgentTask, IpaOutput, NgaOutput, WbaOutput, agent_output};
use tta_types::AgentType;

pub use ipa::InputProcessor;
pub use nga::NarrativeGenerator;
pub use wba::WorldBuilder;
pub use world::{World, WorldState};

/// The `backend` of every output the built-in engines produce.
pub const BUILTIN_BACKEND: &str = "builtin";

/// One agent's logic: a task in, an output out, no I/O.
pub trait Engine: Send + Sync + std::fmt::Debug {
    /// The agent type whose tasks this engine handles.
    fn agent_type(&self) -> AgentType;

    /// Handles one task. `state` is what the worker loaded for the session (only the WBA
    /// needs any). The same task and state always give the same outcome.
    fn run<'a>(
        &'a self,
        task: &'a AgentTask,
        state: EngineState<'a>,
    ) -> Result<EngineOutcome, Error>;
}

/// The session state an engine runs with, loaded by the worker.
#[derive(Debug, Clone, Copy, Default)]
pub enum EngineState<'a> {
    /// The engine keeps no session state (IPA, NGA).
    #[default]
    Stateless,
    /// The session's world state before the turn; `None` for a new session (WBA).
    World(Option<&'a WorldState>),
}

/// What an engine produced for one task.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineOutcome {
    /// The output to publish in the `AgentResult`.
    pub output: AgentOutput,
    /// The session's world state after the turn, to store before publishing (WBA only; always
    /// set by the WBA, even when the turn changed nothing, because a new session's first state
    /// must be stored too).
    pub world_state: Option<WorldState>,
}

impl EngineOutcome {
    /// An outcome with no state to store.
    pub fn stateless(output: AgentOutput) -> EngineOutcome {
        EngineOutcome {
            output,
            world_state: None,
        }
    }
}

/// Why an engine could not handle a task. None of these pass on retry: the worker should
/// report them as `AGENT_RESULT_STATUS_FAILED_PERMANENT` with [`Error::code`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("turn: must be set")]
    MissingTurn,
    #[error("upstream: no {agent} output from an earlier step")]
    MissingUpstream { agent: &'static str },
    #[error("turn.world_id: unknown world {0:?}")]
    UnknownWorld(String),
    #[error("the wba needs the session's world state (EngineState::World), got none")]
    StateNotProvided,
    #[error("the session's world state belongs to world {state:?}, but the turn plays in {turn:?}")]
    WorldMismatch { state: String, turn: String },
    #[error("the wba needs at least one world")]
    NoWorlds,
}

impl Error {
    /// The `AgentError.code` for this error.
    pub fn code(&self) -> &'static str {
        match self {
            Error::MissingTurn | Error::MissingUpstream { .. } => "invalid_input",
            Error::UnknownWorld(_) | Error::NoWorlds => "world_not_found",
            Error::StateNotProvided | Error::WorldMismatch { .. } => "state_mismatch",
        }
    }
}

/// The built-in engine for an agent type: the IPA knows the worlds' names, the WBA plays
/// them (the first is the default for turns that name no world), the NGA needs neither.
/// `None` for a custom agent type.
pub fn builtin(
    agent_type: &AgentType,
    worlds: &[Arc<World>],
) -> Result<Option<Box<dyn Engine>>, Error> {
    Ok(match agent_type {
        AgentType::Ipa => Some(Box::new(
            worlds
                .iter()
                .fold(InputProcessor::new(), |ipa, world| ipa.with_world(world)),
        )),
        AgentType::Wba => Some(Box::new(WorldBuilder::from_worlds(worlds.to_vec())?)),
        AgentType::Nga => Some(Box::new(NarrativeGenerator::new())),
        AgentType::Custom(_) => None,
    })
}

/// The latest IPA output among a task's upstream steps.
pub fn upstream_ipa(task: &AgentTask) -> Option<&IpaOutput> {
    task.upstream
        .iter()
        .rev()
        .find_map(|step| match step.output.as_ref()?.kind.as_ref()? {
            agent_output::Kind::Ipa(output) => Some(output),
            _ => None,
        })
}

/// The latest WBA output among a task's upstream steps.
pub fn upstream_wba(task: &AgentTask) -> Option<&WbaOutput> {
    task.upstream
        .iter()
        .rev()
        .find_map(|step| match step.output.as_ref()?.kind.as_ref()? {
            agent_output::Kind::Wba(output) => Some(output),
            _ => None,
        })
}

/// The NGA output inside an `AgentOutput`, if that is what it holds.
pub fn as_nga(output: &AgentOutput) -> Option<&NgaOutput> {
    match output.kind.as_ref()? {
        agent_output::Kind::Nga(output) => Some(output),
        _ => None,
    }
}
