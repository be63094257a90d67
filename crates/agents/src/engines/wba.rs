//! The built-in World Builder: applies each turn to the session's world state.
//!
//! The engine picks the session's world, takes the state the worker loaded (or starts a new
//! one), and lets [`WorldState::apply`] do the rest. It keeps nothing between tasks.
//!
//! # How the worker persists the state
//!
//! The state is the only copy of a session's world, so the worker makes it durable before it
//! publishes the result, and makes a redelivered task harmless:
//!
//! 1. Load the session's record: the stored `WorldState` (JSON, one key per session under the
//!    session's hash tag) and the outputs of the turns applied recently, by turn id.
//! 2. If this task's `turn_id` was applied already, publish the stored `WbaOutput` again and
//!    ack: a replay must never apply a turn twice.
//! 3. Otherwise call [`Engine::run`] with `EngineState::World(stored.as_ref())`.
//! 4. Write `outcome.world_state` and the output under the turn id in one atomic step that
//!    succeeds only if the stored version is still the one loaded (compare-and-set, e.g. a
//!    Lua script or `WATCH`/`MULTI`). If another replica won the race, start again at 1.
//! 5. Publish the result, then ack the task.
//!
//! Because the engine is pure, running it again on the same state gives the same output, so
//! any step may fail and be retried.

use std::sync::Arc;

use tta_proto::v1::{AgentOutput, AgentTask, IpaOutput, WbaOutput, agent_output};
use tta_types::AgentType;

use super::{
    Engine, EngineOutcome, EngineState, Error, upstream_ipa, world::World, world::WorldState,
};

/// The built-in WBA engine, serving one or more worlds.
#[derive(Debug, Clone)]
pub struct WorldBuilder {
    /// The worlds served; the first is the default for turns that name none.
    worlds: Vec<Arc<World>>,
}

impl WorldBuilder {
    /// A WBA serving one world.
    pub fn new(world: impl Into<Arc<World>>) -> WorldBuilder {
        WorldBuilder {
            worlds: vec![world.into()],
        }
    }

    /// Also serves `world`.
    pub fn with_world(mut self, world: impl Into<Arc<World>>) -> WorldBuilder {
        self.worlds.push(world.into());
        self
    }

    /// A WBA serving `worlds`; the first is the default.
    pub fn from_worlds(worlds: Vec<Arc<World>>) -> Result<WorldBuilder, Error> {
        if worlds.is_empty() {
            return Err(Error::NoWorlds);
        }
        Ok(WorldBuilder { worlds })
    }

    /// The world with this id; the default world for an empty id.
    pub fn world(&self, id: &str) -> Result<&World, Error> {
        let found = if id.is_empty() {
            self.worlds.first()
        } else {
            self.worlds.iter().find(|world| world.id() == id)
        };
        found
            .map(Arc::as_ref)
            .ok_or_else(|| Error::UnknownWorld(id.to_owned()))
    }

    /// Applies one turn. `world_id` may be empty (the session's world, or the default for a
    /// new session); `state` is `None` for a new session. Returns the output and the state to
    /// store.
    pub fn turn(
        &self,
        world_id: &str,
        state: Option<&WorldState>,
        input: &IpaOutput,
    ) -> Result<(WbaOutput, WorldState), Error> {
        let session_world = state.map_or("", |s| s.world_id.as_str());
        let world = self.world(if world_id.is_empty() {
            session_world
        } else {
            world_id
        })?;
        let Some(stored) = state else {
            let (mut output, next) = WorldState::new(world).apply(world, input);
            // The NGA opens a new session with the world's introduction.
            let mut events = vec![format!("started:{}", world.id())];
            if !world.intro().trim().is_empty() {
                events.push(format!("intro:{}", world.intro().trim()));
            }
            events.append(&mut output.events);
            output.events = events;
            return Ok((output, next));
        };
        if stored.world_id != world.id() {
            return Err(Error::WorldMismatch {
                state: stored.world_id.clone(),
                turn: world.id().to_owned(),
            });
        }
        let mut current = stored.clone();
        current.reconcile(world);
        Ok(current.apply(world, input))
    }
}

impl Engine for WorldBuilder {
    fn agent_type(&self) -> AgentType {
        AgentType::Wba
    }

    fn run<'a>(
        &'a self,
        task: &'a AgentTask,
        state: EngineState<'a>,
    ) -> Result<EngineOutcome, Error> {
        let turn = task.turn.as_ref().ok_or(Error::MissingTurn)?;
        let input = upstream_ipa(task).ok_or(Error::MissingUpstream { agent: "ipa" })?;
        let EngineState::World(stored) = state else {
            return Err(Error::StateNotProvided);
        };
        let (output, next) = self.turn(&turn.world_id, stored, input)?;
        Ok(EngineOutcome {
            output: AgentOutput {
                kind: Some(agent_output::Kind::Wba(output)),
            },
            world_state: Some(next),
        })
    }
}

#[cfg(test)]
mod tests {
    use tta_proto::v1::{StepOutput, TurnContext};

    use super::*;
    use crate::engines::{InputProcessor, world::tests::quiet_harbor};

    fn task(world_id: &str, text: &str) -> AgentTask {
        let ipa = InputProcessor::new()
            .with_world(&quiet_harbor())
            .parse(text);
        AgentTask {
            turn_id: "turn-1".to_owned(),
            turn: Some(TurnContext {
                world_id: world_id.to_owned(),
                text: text.to_owned(),
                ..Default::default()
            }),
            upstream: vec![StepOutput {
                step_id: "ipa".to_owned(),
                agent_type: "ipa".to_owned(),
                output: Some(AgentOutput {
                    kind: Some(agent_output::Kind::Ipa(ipa)),
                }),
            }],
            ..Default::default()
        }
    }

    fn wba_output(outcome: &EngineOutcome) -> &WbaOutput {
        match outcome.output.kind.as_ref() {
            Some(agent_output::Kind::Wba(output)) => output,
            other => panic!("expected a wba output, got {other:?}"),
        }
    }

    #[test]
    fn a_new_session_starts_at_the_start_place_with_the_intro() {
        let wba = WorldBuilder::new(quiet_harbor());
        let outcome = wba
            .run(&task("", "look around"), EngineState::World(None))
            .unwrap();
        let output = wba_output(&outcome);
        assert_eq!(output.events[0], "started:quiet-harbor");
        assert!(output.events[1].starts_with("intro:The evening is soft"));
        assert!(output.events.contains(&"looked:harbour".to_owned()));
        let state = outcome.world_state.unwrap();
        assert_eq!(state.location, "harbour");
        assert_eq!(state.version, 0);
    }

    #[test]
    fn a_stored_state_is_continued_and_returned_for_storage() {
        let wba = WorldBuilder::new(quiet_harbor());
        let first = wba
            .run(&task("quiet-harbor", "go south"), EngineState::World(None))
            .unwrap();
        let stored = first.world_state.unwrap();
        assert_eq!((stored.location.as_str(), stored.version), ("boathouse", 1));
        let second = wba
            .run(
                &task("", "take the lantern"),
                EngineState::World(Some(&stored)),
            )
            .unwrap();
        let next = second.world_state.clone().unwrap();
        assert_eq!(next.inventory, ["lantern"]);
        assert_eq!(next.version, 2);
        assert_eq!(wba_output(&second).version, 2);
    }

    #[test]
    fn an_unknown_world_is_a_permanent_error_naming_it() {
        let wba = WorldBuilder::new(quiet_harbor());
        let error = wba
            .run(&task("atlantis", "look"), EngineState::World(None))
            .unwrap_err();
        assert!(matches!(error, Error::UnknownWorld(ref id) if id == "atlantis"));
        assert_eq!(error.code(), "world_not_found");
        assert_eq!(
            error.to_string(),
            "turn.world_id: unknown world \"atlantis\""
        );
    }

    #[test]
    fn the_wba_refuses_to_run_without_state_or_ipa_output() {
        let wba = WorldBuilder::new(quiet_harbor());
        let error = wba
            .run(&task("", "look"), EngineState::Stateless)
            .unwrap_err();
        assert!(matches!(error, Error::StateNotProvided));
        let mut no_upstream = task("", "look");
        no_upstream.upstream.clear();
        let error = wba.run(&no_upstream, EngineState::World(None)).unwrap_err();
        assert_eq!(
            error.to_string(),
            "upstream: no ipa output from an earlier step"
        );
    }

    #[test]
    fn a_state_of_another_world_is_refused() {
        let wba = WorldBuilder::new(quiet_harbor());
        let mut state = WorldState::new(&quiet_harbor());
        state.world_id = "elsewhere".to_owned();
        let error = wba
            .run(
                &task("quiet-harbor", "look"),
                EngineState::World(Some(&state)),
            )
            .unwrap_err();
        assert!(matches!(error, Error::WorldMismatch { .. }));
    }

    #[test]
    fn a_state_from_an_older_world_file_is_repaired_not_rejected() {
        let wba = WorldBuilder::new(quiet_harbor());
        let mut state = WorldState::new(&quiet_harbor());
        state.location = "demolished_pier".to_owned();
        state.inventory.push("forgotten_item".to_owned());
        state.flags.remove("cave_lit");
        let outcome = wba
            .run(&task("", "look"), EngineState::World(Some(&state)))
            .unwrap();
        let next = outcome.world_state.unwrap();
        assert_eq!(next.location, "harbour");
        assert!(next.inventory.is_empty());
        assert_eq!(next.flags.get("cave_lit"), Some(&false));
    }
}
