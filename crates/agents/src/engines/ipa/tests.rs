//! Tests of the built-in IPA: intents, synonyms, typos, entities and their spans, tone.

use tta_proto::v1::{AgentTask, InputEntity, TurnContext, agent_output};

use super::*;
use crate::engines::world::tests::quiet_harbor;

fn ipa() -> InputProcessor {
    InputProcessor::new().with_world(&quiet_harbor())
}

fn entity<'o>(output: &'o IpaOutput, kind: &str) -> &'o InputEntity {
    output
        .entities
        .iter()
        .find(|e| e.kind == kind)
        .unwrap_or_else(|| panic!("no {kind} entity in {:?}", output.entities))
}

fn values(output: &IpaOutput, kind: &str) -> Vec<String> {
    output
        .entities
        .iter()
        .filter(|e| e.kind == kind)
        .map(|e| e.value.clone())
        .collect()
}

#[test]
fn each_intent_is_recognised_with_its_synonyms() {
    let ipa = ipa();
    let cases = [
        ("go north", "move"),
        ("n", "move"),
        ("head west", "move"),
        ("walk to the lighthouse", "move"),
        ("climb the stairs", "move"),
        ("enter", "move"),
        ("look", "look"),
        ("look around", "look"),
        ("where am I?", "look"),
        ("examine the lantern", "examine"),
        ("look at the lantern", "examine"),
        ("x stone", "examine"),
        ("take the lantern", "take"),
        ("pick up the shell", "take"),
        ("grab stone", "take"),
        ("drop the lantern", "drop"),
        ("put down the stone", "drop"),
        ("use the lantern", "use"),
        ("light the lantern", "use"),
        ("pour tea", "use"),
        ("talk to mara", "talk"),
        ("say hello to the cat", "talk"),
        ("hello", "talk"),
        ("inventory", "inventory"),
        ("i", "inventory"),
        ("what am I carrying", "inventory"),
        ("help", "help"),
        ("?", "help"),
        ("what can I do", "help"),
        ("I feel anxious", "express_feeling"),
        ("I'm tired", "express_feeling"),
        ("i'm so worn out", "express_feeling"),
        ("exhausted", "express_feeling"),
        ("this reminds me of my dad", "reflect"),
        ("I miss my sister", "reflect"),
        ("rest", "rest"),
        ("breathe", "rest"),
        ("take a deep breath", "rest"),
        ("quit", "quit"),
        ("goodbye", "quit"),
        ("flibbertigibbet", "unknown"),
    ];
    for (text, intent) in cases {
        assert_eq!(ipa.parse(text).intent, intent, "for {text:?}");
    }
}

#[test]
fn polite_openings_are_read_past() {
    let ipa = ipa();
    for text in [
        "please go north",
        "I want to go north",
        "let's go north",
        "can I go north",
        "I'm going north",
    ] {
        let output = ipa.parse(text);
        assert_eq!(output.intent, "move", "for {text:?}");
        assert_eq!(values(&output, "direction"), ["north"], "for {text:?}");
    }
}

#[test]
fn directions_carry_their_canonical_value_and_byte_span() {
    let text = "Go NORTH";
    let output = ipa().parse(text);
    let direction = entity(&output, "direction");
    assert_eq!(direction.value, "north");
    assert_eq!(direction.text, "NORTH");
    assert_eq!(
        &text[direction.start as usize..direction.end as usize],
        "NORTH"
    );
    assert_eq!(ipa().parse("go up the stairs").entities[0].value, "up");
    assert_eq!(ipa().parse("climb").entities[0].value, "up");
}

#[test]
fn typos_are_fixed_in_the_normalized_text_and_cost_some_confidence() {
    let output = ipa().parse("tkae the lantren");
    assert_eq!(output.intent, "take");
    assert_eq!(output.normalized_text, "take the lantern");
    let item = entity(&output, "item");
    assert_eq!(
        (item.value.as_str(), item.text.as_str()),
        ("lantern", "lantren")
    );
    assert!(output.confidence < ipa().parse("take the lantern").confidence);
    assert_eq!(values(&ipa().parse("nroth"), "direction"), ["north"]);
    assert_eq!(ipa().parse("lok").intent, "look");
    assert_eq!(ipa().parse("inventroy").intent, "inventory");
}

#[test]
fn world_names_become_entities_with_their_ids() {
    let text = "walk to the tea house";
    let output = ipa().parse(text);
    let place = entity(&output, "place");
    assert_eq!(
        (place.value.as_str(), place.text.as_str()),
        ("tea_house", "tea house")
    );
    assert_eq!(&text[place.start as usize..place.end as usize], "tea house");
    let talk = ipa().parse("talk to the lighthouse keeper");
    assert_eq!(values(&talk, "character"), ["tomas"]);
    assert_eq!(values(&ipa().parse("take the lamp"), "item"), ["lantern"]);
}

#[test]
fn use_reads_an_item_and_a_target() {
    let output = ipa().parse("give the lavender to Mara");
    assert_eq!(output.intent, "use");
    assert_eq!(values(&output, "item"), ["lavender"]);
    assert_eq!(values(&output, "character"), ["mara"]);
}

#[test]
fn without_a_world_object_phrases_pass_through_for_the_wba() {
    let output = InputProcessor::new().parse("use the brass key on the old door");
    assert_eq!(output.intent, "use");
    assert_eq!(values(&output, "item"), ["brass key", "old door"]);
    let take = InputProcessor::new().parse("pick the lantern up");
    assert_eq!(values(&take, "item"), ["lantern"]);
}

#[test]
fn resting_with_something_is_using_it() {
    let output = ipa().parse("sit on the bench");
    assert_eq!(output.intent, "use");
    assert_eq!(values(&output, "item"), ["bench"]);
}

#[test]
fn leave_with_an_item_drops_it_and_alone_goes_out() {
    let drop = ipa().parse("leave the lantern");
    assert_eq!(
        (drop.intent.as_str(), values(&drop, "item")),
        ("drop", vec!["lantern".to_owned()])
    );
    let out = ipa().parse("leave");
    assert_eq!(
        (out.intent.as_str(), values(&out, "direction")),
        ("move", vec!["out".to_owned()])
    );
}

#[test]
fn a_bare_name_moves_greets_or_examines() {
    assert_eq!(ipa().parse("the lighthouse").intent, "move");
    assert_eq!(ipa().parse("mara").intent, "talk");
    assert_eq!(ipa().parse("the lantern").intent, "examine");
}

#[test]
fn feelings_are_read_into_tone_and_feeling_entities() {
    let output = ipa().parse("I feel really anxious today");
    let tone = output.tone.as_ref().unwrap();
    assert_eq!(tone.label, "anxious");
    assert!(tone.valence < 0.0 && tone.arousal > 0.6);
    let feeling = entity(&output, "feeling");
    assert_eq!(
        (feeling.value.as_str(), feeling.text.as_str()),
        ("anxious", "anxious")
    );
}

#[test]
fn a_command_with_a_feeling_keeps_both() {
    let output = ipa().parse("go north, I'm so tired");
    assert_eq!(output.intent, "move");
    assert_eq!(output.tone.unwrap().label, "tired");
}

#[test]
fn obvious_distress_is_marked_but_safety_is_left_to_the_safety_crate() {
    let output = ipa().parse("I can't breathe");
    assert_eq!(output.intent, "express_feeling");
    assert_eq!(values(&output, "feeling"), ["distress"]);
    assert_eq!(output.tone.unwrap().label, "anxious");
    assert!(output.safety.is_none());
}

#[test]
fn asking_for_help_in_distress_is_a_feeling_not_the_command_list() {
    assert_eq!(ipa().parse("help me, I'm scared").intent, "express_feeling");
}

#[test]
fn stopping_a_feeling_is_not_quitting_the_game() {
    assert_ne!(ipa().parse("stop feeling like this").intent, "quit");
    assert_eq!(ipa().parse("stop").intent, "quit");
}

#[test]
fn empty_and_unreadable_inputs_are_unknown_with_low_confidence() {
    let empty = ipa().parse("   ");
    assert_eq!((empty.intent.as_str(), empty.confidence), ("unknown", 0.0));
    let noise = ipa().parse("qwzx vbnm");
    assert_eq!(noise.intent, "unknown");
    assert!(noise.confidence <= 0.2);
}

#[test]
fn the_output_is_normalized_and_marked_builtin() {
    let output = ipa().parse("  Take   the LANTERN!  ");
    assert_eq!(output.normalized_text, "take the lantern");
    assert_eq!(output.backend, "builtin");
    assert!(output.confidence > 0.9);
}

#[test]
fn the_engine_reads_the_turn_text_and_needs_a_turn() {
    let task = AgentTask {
        turn: Some(TurnContext {
            text: "go west".to_owned(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let outcome = ipa().run(&task, EngineState::Stateless).unwrap();
    assert!(outcome.world_state.is_none());
    match outcome.output.kind {
        Some(agent_output::Kind::Ipa(output)) => assert_eq!(output.intent, "move"),
        other => panic!("expected an ipa output, got {other:?}"),
    }
    let error = ipa()
        .run(&AgentTask::default(), EngineState::Stateless)
        .unwrap_err();
    assert_eq!(error.to_string(), "turn: must be set");
    assert_eq!(error.code(), "invalid_input");
}

#[test]
fn parsing_is_deterministic() {
    let ipa = ipa();
    for text in [
        "take the lantren",
        "I feel anxious",
        "this reminds me of my dad",
    ] {
        assert_eq!(ipa.parse(text), ipa.parse(text));
    }
}
