//! A scripted session through the three engines, the way the workers run them: each turn is an
//! IPA task, then a WBA task with the IPA's output upstream and the stored world state, then
//! an NGA task with both outputs upstream. The world state is stored between turns as JSON,
//! as the WBA worker stores it, so the session also proves the state survives storage.
//!
//! `cargo nextest run -p tta-agents scripted_session --no-capture` prints the transcript.

use std::sync::Arc;

use tta_proto::v1::{
    AgentOutput, AgentTask, IpaOutput, NgaOutput, StepOutput, TherapeuticIntensity,
    TherapeuticSettings, TurnContext, WbaOutput, agent_output,
};
use tta_types::AgentType;

use super::{Engine, EngineState, World, WorldState, builtin, world::tests::quiet_harbor};

/// The three engines and the one piece of state a worker would keep in Redis.
struct Session {
    ipa: Box<dyn Engine>,
    wba: Box<dyn Engine>,
    nga: Box<dyn Engine>,
    /// The WBA state as the worker stores it: JSON.
    stored: Option<String>,
    turns: u32,
}

/// What one turn produced.
struct Turn {
    ipa: IpaOutput,
    wba: WbaOutput,
    nga: NgaOutput,
    state: WorldState,
}

impl Session {
    fn new() -> Session {
        let worlds: Vec<Arc<World>> = vec![Arc::new(quiet_harbor())];
        let engine = |agent: AgentType| builtin(&agent, &worlds).unwrap().unwrap();
        Session {
            ipa: engine(AgentType::Ipa),
            wba: engine(AgentType::Wba),
            nga: engine(AgentType::Nga),
            stored: None,
            turns: 0,
        }
    }

    fn play(&mut self, text: &str) -> Turn {
        self.turns += 1;
        let turn_id = format!("session-1-turn-{}", self.turns);
        let context = TurnContext {
            text: text.to_owned(),
            world_id: "quiet-harbor".to_owned(),
            settings: Some(TherapeuticSettings {
                intensity: TherapeuticIntensity::Medium.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut task = AgentTask {
            turn_id,
            session_id: "session-1".to_owned(),
            turn: Some(context),
            ..Default::default()
        };

        let ipa = self.ipa.run(&task, EngineState::Stateless).unwrap().output;
        task.upstream.push(step("ipa", ipa.clone()));

        let loaded: Option<WorldState> = self
            .stored
            .as_deref()
            .map(|json| serde_json::from_str(json).unwrap());
        let wba = self
            .wba
            .run(&task, EngineState::World(loaded.as_ref()))
            .unwrap();
        let state = wba.world_state.unwrap();
        self.stored = Some(serde_json::to_string(&state).unwrap());
        task.upstream.push(step("wba", wba.output.clone()));

        let nga = self.nga.run(&task, EngineState::Stateless).unwrap().output;
        Turn {
            ipa: unwrap_ipa(ipa),
            wba: unwrap_wba(wba.output),
            nga: unwrap_nga(nga),
            state,
        }
    }
}

fn step(agent: &str, output: AgentOutput) -> StepOutput {
    StepOutput {
        step_id: agent.to_owned(),
        agent_type: agent.to_owned(),
        output: Some(output),
    }
}

fn unwrap_ipa(output: AgentOutput) -> IpaOutput {
    match output.kind {
        Some(agent_output::Kind::Ipa(output)) => output,
        other => panic!("expected ipa output, got {other:?}"),
    }
}

fn unwrap_wba(output: AgentOutput) -> WbaOutput {
    match output.kind {
        Some(agent_output::Kind::Wba(output)) => output,
        other => panic!("expected wba output, got {other:?}"),
    }
}

fn unwrap_nga(output: AgentOutput) -> NgaOutput {
    match output.kind {
        Some(agent_output::Kind::Nga(output)) => output,
        other => panic!("expected nga output, got {other:?}"),
    }
}

#[test]
fn a_scripted_session_through_the_three_engines_stays_coherent() {
    let script = [
        "look around",
        "go south",
        "take the lantren",
        "I feel a bit anxious today",
        "n",
        "head west",
        "pick up the smooth stone",
        "go north",
        "go in",
        "use the lantern",
        "enter",
        "take the shell",
        "inventory",
        "out",
        "s",
        "e",
        "e",
        "talk to mara",
        "pour some tea",
        "this reminds me of my dad",
    ];
    let mut session = Session::new();
    let mut turns = Vec::new();
    let mut last_version = 0;
    for text in script {
        let turn = session.play(text);
        println!(
            "> {text}\n{}\n   [{} · {}]\n",
            turn.nga.text,
            turn.nga.technique,
            turn.nga.suggestions.join(" | ")
        );
        assert!(!turn.nga.text.is_empty(), "{text}");
        assert_eq!(turn.nga.chunks.concat(), turn.nga.text, "{text}");
        assert!(
            turn.state.version >= last_version,
            "the version never goes back"
        );
        assert_eq!(
            turn.state.version > last_version,
            !turn.wba.changes.is_empty(),
            "{text}"
        );
        assert_eq!(turn.wba.version, turn.state.version);
        last_version = turn.state.version;
        turns.push(turn);
    }

    // 1: the session opens with the introduction at the harbour.
    assert!(
        turns[0]
            .nga
            .text
            .starts_with("The evening is soft and slow.")
    );
    assert_eq!(turns[0].state.location, "harbour");
    // 2-3: the boathouse, and the lantern (typed with a typo) moves into the inventory.
    assert_eq!(turns[1].state.location, "boathouse");
    assert_eq!(turns[2].ipa.normalized_text, "take the lantern");
    assert_eq!(turns[2].state.inventory, ["lantern"]);
    let boathouse = turns[2].wba.world.as_ref().unwrap();
    assert!(
        boathouse.items_here.is_empty(),
        "a taken item is no longer in the place"
    );
    // 4: a feeling is met with reflection and grounding, and the world stays as it was.
    assert_eq!(turns[3].ipa.intent, "express_feeling");
    assert_eq!(turns[3].nga.technique, "grounding");
    assert_eq!(turns[3].state, turns[2].state);
    // 5-8: back through the harbour, along the shore with a stone, to the cave.
    assert_eq!(turns[4].state.location, "harbour");
    assert_eq!(turns[6].state.inventory, ["lantern", "stone"]);
    assert_eq!(turns[7].state.location, "cave");
    // 9: the dark passage refuses, kindly, and nothing changes.
    assert!(!turns[8].wba.applied);
    assert_eq!(turns[8].state, turns[7].state);
    assert!(
        turns[8]
            .nga
            .text
            .contains("a light would make it feel much safer")
    );
    // 10-11: the lantern lights the cave and the passage opens.
    assert!(turns[9].state.flags["cave_lit"]);
    assert!(turns[9].nga.text.contains("The way inside is open now."));
    assert_eq!(turns[10].state.location, "grotto");
    // 12-13: the shell joins what the player carries, and the inventory says so.
    assert_eq!(turns[11].state.inventory, ["lantern", "stone", "shell"]);
    assert!(
        turns[12]
            .nga
            .text
            .contains("an old brass lantern, a smooth grey stone and a spiral shell")
    );
    // 14-17: out of the cave, back along the shore, through the harbour to the tea house.
    assert_eq!(turns[16].state.location, "tea_house");
    assert!(
        turns[16].state.visited.contains("grotto"),
        "visited places persist"
    );
    // 18-19: Mara speaks; pouring tea changes what she says next.
    assert!(
        turns[17]
            .nga
            .text
            .contains("Mara looks up from the counter")
    );
    assert!(turns[18].state.flags["tea_poured"]);
    // 20: a memory is met gently, without repeating the player's words.
    assert_eq!(turns[19].ipa.intent, "reflect");
    assert!(!turns[19].nga.text.contains("dad"));
    assert_eq!(turns[19].state.inventory, ["lantern", "stone", "shell"]);
}

#[test]
fn replaying_a_turn_on_the_same_state_gives_the_same_outputs() {
    let mut first = Session::new();
    let mut second = Session::new();
    for text in ["look", "go south", "take the lantern", "I feel tired"] {
        let a = first.play(text);
        let b = second.play(text);
        assert_eq!(a.nga, b.nga, "{text}");
        assert_eq!(a.wba, b.wba, "{text}");
        assert_eq!(a.state, b.state, "{text}");
    }
}

#[test]
fn a_custom_agent_type_has_no_builtin_engine() {
    let custom: AgentType = "mood-tracker".parse().unwrap();
    assert!(builtin(&custom, &[]).unwrap().is_none());
    assert!(
        builtin(&AgentType::Wba, &[]).is_err(),
        "a wba needs a world"
    );
}

#[test]
fn odd_inputs_never_break_a_turn() {
    let long = "go north ".repeat(2_000);
    let inputs = [
        "",
        "   ",
        "!!!???",
        "🙂🌊 go n0rth 🙂",
        "ÉCOUTE LE BRUIT DE L'EAU",
        "'''",
        "i'",
        "take",
        "use on",
        "give to",
        "talk to about",
        "go to the the the",
        "leave leave leave",
        "x",
        "i i i i",
        "drop everything",
        long.as_str(),
    ];
    let mut session = Session::new();
    for text in inputs {
        let turn = session.play(text);
        assert!(!turn.nga.text.is_empty(), "{text:?}");
        assert_eq!(turn.nga.chunks.concat(), turn.nga.text, "{text:?}");
        for entity in &turn.ipa.entities {
            assert!(
                entity.start <= entity.end && entity.end as usize <= text.len(),
                "{text:?}: {entity:?}"
            );
            assert_eq!(
                &text[entity.start as usize..entity.end as usize],
                entity.text,
                "{text:?}"
            );
        }
    }
}

#[test]
fn the_wba_and_nga_tolerate_outputs_no_builtin_ipa_would_produce() {
    let world = quiet_harbor();
    let strange = IpaOutput {
        intent: "teleport".to_owned(),
        entities: vec![tta_proto::v1::InputEntity {
            kind: "direction".to_owned(),
            value: "sideways".to_owned(),
            text: "sideways".to_owned(),
            start: 9,
            end: 3,
        }],
        ..Default::default()
    };
    let (output, state) = WorldState::new(&world).apply(&world, &strange);
    assert!(!output.applied);
    assert_eq!(state.version, 0);
    let moved = IpaOutput {
        intent: "move".to_owned(),
        ..strange
    };
    let (output, _) = WorldState::new(&world).apply(&world, &moved);
    assert!(
        output
            .rejection_reason
            .starts_with("Which way would you like to go?")
    );
}
