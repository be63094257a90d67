//! Tests of the built-in NGA: what the reply says on arrival, on feelings, in distress, after
//! a refusal, as an alternative, under avoided topics; and that it is deterministic.

use tta_proto::v1::{
    AgentOutput, AlternativeRequest, StepOutput, TherapeuticIntensity, TherapeuticSettings,
    TurnContext,
};

use super::*;
use crate::engines::{
    InputProcessor, WorldBuilder,
    world::{WorldState, tests::quiet_harbor},
};

/// Plays `before` silently, then builds the NGA task of `text` with real IPA and WBA outputs.
fn task_after(
    before: &[&str],
    text: &str,
    turn_id: &str,
    settings: TherapeuticSettings,
) -> AgentTask {
    let world = quiet_harbor();
    let ipa = InputProcessor::new().with_world(&world);
    let wba = WorldBuilder::new(world);
    let mut state: Option<WorldState> = None;
    for earlier in before {
        let (_, next) = wba.turn("", state.as_ref(), &ipa.parse(earlier)).unwrap();
        state = Some(next);
    }
    let understood = ipa.parse(text);
    let (applied, _) = wba.turn("", state.as_ref(), &understood).unwrap();
    AgentTask {
        turn_id: turn_id.to_owned(),
        turn: Some(TurnContext {
            text: text.to_owned(),
            settings: Some(settings),
            ..Default::default()
        }),
        upstream: vec![
            step("ipa", agent_output::Kind::Ipa(understood)),
            step("wba", agent_output::Kind::Wba(applied)),
        ],
        ..Default::default()
    }
}

fn step(id: &str, kind: agent_output::Kind) -> StepOutput {
    StepOutput {
        step_id: id.to_owned(),
        agent_type: id.to_owned(),
        output: Some(AgentOutput { kind: Some(kind) }),
    }
}

fn intensity(level: TherapeuticIntensity) -> TherapeuticSettings {
    TherapeuticSettings {
        intensity: level.into(),
        ..Default::default()
    }
}

fn low() -> TherapeuticSettings {
    intensity(TherapeuticIntensity::Low)
}

/// Narrates `text` after `before` (the first turn of `before` starts the session).
fn reply(before: &[&str], text: &str, settings: TherapeuticSettings) -> NgaOutput {
    NarrativeGenerator::new().narrate(&task_after(before, text, "turn-7", settings))
}

fn contains_any(text: &str, phrases: &[&str]) -> bool {
    phrases.iter().any(|phrase| text.contains(phrase))
}

#[test]
fn arriving_describes_the_place_its_people_and_the_ways_on() {
    let output = reply(&["look"], "go north", low());
    assert!(output.text.contains("the lighthouse"), "{}", output.text);
    assert!(
        output
            .text
            .contains("The whitewashed lighthouse rises above you")
    );
    assert!(
        output
            .text
            .contains("Tomas, the lighthouse keeper, is here.")
    );
    assert!(output.text.contains("From here you can go south or up."));
    assert_eq!(output.technique, "narration");
    assert!(
        output.suggestions.contains(&"talk to Tomas".to_owned()),
        "{:?}",
        output.suggestions
    );
}

#[test]
fn the_first_turn_of_a_session_opens_with_the_introduction() {
    let output = reply(&[], "look around", low());
    assert!(
        output.text.starts_with("The evening is soft and slow."),
        "{}",
        output.text
    );
    assert!(output.text.contains("Fishing boats rock gently"));
    assert!(
        output.text.contains("You notice")
            || output.text.contains("Pip, the harbour cat, is here.")
    );
}

#[test]
fn items_here_are_listed_with_their_names() {
    let output = reply(&["look"], "go south", low());
    assert!(
        output
            .text
            .contains("You notice an old brass lantern here."),
        "{}",
        output.text
    );
    assert!(
        output
            .suggestions
            .contains(&"look at the old brass lantern".to_owned())
    );
}

#[test]
fn a_shared_feeling_is_reflected_before_the_story() {
    let output = reply(&["look"], "i feel sad", low());
    assert!(
        phrases::reflection(crate::engines::tone::Feeling::Sad)
            .iter()
            .any(|phrase| output.text.starts_with(phrase)),
        "{}",
        output.text
    );
    assert_eq!(output.technique, "reflection");
    assert!(contains_any(
        &output.text,
        &["stays quiet and unhurried", "still here around you"]
    ));
}

#[test]
fn the_heavy_day_reflection_is_one_of_the_variants() {
    let texts: Vec<String> = (0..30)
        .map(|i| {
            let task = task_after(
                &["look"],
                "today was awful, I feel so sad",
                &format!("turn-{i}"),
                low(),
            );
            NarrativeGenerator::new().narrate(&task).text
        })
        .collect();
    assert!(
        texts
            .iter()
            .any(|t| t.starts_with("It sounds like today has been heavy."))
    );
}

#[test]
fn a_memory_is_met_gently_even_without_feeling_words() {
    let output = reply(&["look"], "this reminds me of my dad", low());
    assert!(
        contains_any(&output.text, phrases::MEMORY),
        "{}",
        output.text
    );
    assert!(
        !output.text.contains("dad"),
        "the player's words are never echoed"
    );
    assert_eq!(output.technique, "reflection");
}

#[test]
fn anxiety_brings_a_grounding_exercise_sized_by_intensity() {
    let low_reply = reply(&["look"], "I feel so anxious", low());
    assert_eq!(low_reply.technique, "grounding");
    assert!(
        contains_any(&low_reply.text, phrases::BREATH_LIGHT),
        "{}",
        low_reply.text
    );
    assert!(!low_reply.text.contains("five things"));

    let medium = reply(
        &["look"],
        "I feel so anxious",
        intensity(TherapeuticIntensity::Medium),
    );
    assert!(
        contains_any(&medium.text, phrases::BREATH_PACED),
        "{}",
        medium.text
    );
    assert!(
        medium.text.contains("the soft sound of the water"),
        "the harbour is the cue: {}",
        medium.text
    );

    let high = reply(
        &["look"],
        "I feel so anxious",
        intensity(TherapeuticIntensity::High),
    );
    assert!(
        high.text
            .contains("five things you can see, four things you can hear")
    );
    assert!(high.text.len() > medium.text.len() && medium.text.len() > low_reply.text.len());
    assert_eq!(high.suggestions[0], "take a slow breath");
}

#[test]
fn the_grounding_cue_belongs_to_the_current_place() {
    let output = reply(
        &["look", "e"],
        "I'm really stressed",
        intensity(TherapeuticIntensity::Medium),
    );
    assert!(
        output.text.contains("the quiet warmth of the room"),
        "{}",
        output.text
    );
}

#[test]
fn distress_gets_support_and_at_least_a_paced_breath() {
    let output = reply(
        &["look"],
        "I can't breathe and everything is hopeless",
        low(),
    );
    assert!(output.text.contains(phrases::SUPPORT), "{}", output.text);
    assert!(contains_any(&output.text, phrases::BREATH_PACED));
    assert_eq!(output.technique, "grounding");
}

#[test]
fn resting_is_a_grounding_moment_in_the_scene() {
    let output = reply(&["look"], "rest", low());
    assert_eq!(output.technique, "grounding");
    assert!(output.text.contains("the quiet harbour"), "{}", output.text);
    assert!(contains_any(&output.text, phrases::BREATH_LIGHT));
}

#[test]
fn a_refusal_is_explained_kindly_with_a_way_on() {
    let output = reply(&["look", "w", "n"], "go in", low());
    assert!(
        output.text.starts_with("The passage ahead is very dark."),
        "{}",
        output.text
    );
    assert!(contains_any(&output.text, phrases::ENCOURAGE));
    assert_eq!(output.technique, "encouragement");
}

#[test]
fn no_reply_shames_or_gives_medical_advice() {
    let inputs = [
        "xyzzy",
        "go up",
        "take the bench",
        "I feel worthless",
        "i'm so tired",
        "help",
        "quit",
        "talk",
        "use the lantern",
        "I can't cope",
    ];
    for text in inputs {
        for level in [TherapeuticIntensity::Low, TherapeuticIntensity::High] {
            let output = reply(&["look"], text, intensity(level));
            let lower = output.text.to_lowercase();
            for banned in [
                "invalid",
                "error",
                "failed",
                "stupid",
                "i don't understand",
                "medication",
                "diagnos",
                "prescri",
                "dose",
                "you should",
                "you must",
            ] {
                assert!(
                    !lower.contains(banned),
                    "{text:?} produced {banned:?}: {}",
                    output.text
                );
            }
        }
    }
}

#[test]
fn taking_talking_using_and_inventory_are_narrated() {
    let took = reply(&["look", "s"], "take the lantern", low());
    assert!(took.text.contains("the old brass lantern"), "{}", took.text);
    let talked = reply(&["look", "e"], "talk to mara", low());
    assert!(
        talked.text.contains("Mara looks up from the counter"),
        "{}",
        talked.text
    );
    let used = reply(
        &["look", "s", "take lantern", "n", "w", "n"],
        "use the lantern",
        low(),
    );
    assert!(
        used.text.contains("You turn the little key"),
        "{}",
        used.text
    );
    assert!(used.text.contains("The way inside is open now."));
    let empty = reply(&["look"], "inventory", low());
    assert!(contains_any(&empty.text, phrases::EMPTY_HANDS));
    let full = reply(&["look", "s", "take lantern"], "inventory", low());
    assert!(full.text.contains("You're carrying an old brass lantern."));
}

#[test]
fn help_and_quit_are_answered_warmly() {
    assert!(
        reply(&["look"], "help", low())
            .text
            .contains("There's no wrong way to play.")
    );
    let quit = reply(&["look"], "quit", low());
    assert!(quit.text.contains("Thank you for spending this time here."));
    assert_eq!(quit.technique, "encouragement");
}

#[test]
fn an_alternative_is_plainer_and_repeats_nothing_that_was_blocked() {
    let mut task = task_after(
        &["look"],
        "I feel so anxious",
        "turn-3",
        intensity(TherapeuticIntensity::High),
    );
    let blocked = NarrativeGenerator::new().narrate(&task);
    task.alternative = Some(AlternativeRequest {
        rejected_text: blocked.text.clone(),
        assessment: None,
        round: 1,
    });
    let alternative = NarrativeGenerator::new().narrate(&task);
    assert_ne!(alternative.text, blocked.text);
    for chunk in &alternative.chunks {
        assert!(!blocked.text.contains(chunk.trim()), "repeated {chunk:?}");
    }
    assert!(
        alternative.text.contains("You are at the quiet harbour."),
        "{}",
        alternative.text
    );
    assert_eq!(alternative.technique, "narration");
}

#[test]
fn a_later_alternative_round_says_only_where_the_player_is() {
    let mut task = task_after(&["look"], "go north", "turn-3", low());
    task.alternative = Some(AlternativeRequest {
        rejected_text: "something".to_owned(),
        assessment: None,
        round: 2,
    });
    let output = NarrativeGenerator::new().narrate(&task);
    assert_eq!(
        output.text,
        "You pause for a moment. There's no hurry here. You are at the lighthouse."
    );
}

#[test]
fn avoided_topics_are_left_out_of_the_reply() {
    let settings = TherapeuticSettings {
        avoid_topics: vec!["water".to_owned(), "sea".to_owned()],
        ..low()
    };
    let output = reply(&[], "look around", settings);
    let lower = output.text.to_lowercase();
    assert!(
        !lower.contains("water") && !lower.contains(" sea "),
        "{}",
        output.text
    );
    assert!(output.text.contains("From here you can go"));
}

#[test]
fn a_reply_whose_every_sentence_is_avoided_still_says_something_safe() {
    let topics = ["you", "the", "a"].map(str::to_owned).to_vec();
    let settings = TherapeuticSettings {
        avoid_topics: topics,
        ..low()
    };
    let output = reply(&["look"], "go north", settings);
    assert_eq!(output.text, phrases::PAUSE);
}

#[test]
fn the_same_turn_always_gets_the_same_text_and_different_turns_vary() {
    let generator = NarrativeGenerator::new();
    let task = task_after(&["look"], "I feel sad", "turn-42", low());
    assert_eq!(generator.narrate(&task), generator.narrate(&task));
    let texts: std::collections::BTreeSet<String> = (0..10)
        .map(|i| {
            generator
                .narrate(&task_after(
                    &["look"],
                    "I feel sad",
                    &format!("turn-{i}"),
                    low(),
                ))
                .text
        })
        .collect();
    assert!(texts.len() > 1, "ten turns produced one text");
}

#[test]
fn chunks_are_the_sentences_of_the_text_and_suggestions_are_few() {
    for text in [
        "look around",
        "go north",
        "i feel anxious",
        "take the lantern",
        "xyzzy",
    ] {
        let output = reply(&["look"], text, intensity(TherapeuticIntensity::Medium));
        assert_eq!(output.chunks.concat(), output.text, "{text}");
        assert!(
            output.chunks.len() > 1 || !output.text.contains(". "),
            "{text}"
        );
        assert!(
            (1..=3).contains(&output.suggestions.len()),
            "{text}: {:?}",
            output.suggestions
        );
        assert_eq!(output.backend, "builtin");
    }
}

#[test]
fn without_upstream_outputs_the_reply_is_a_gentle_pause() {
    let output = NarrativeGenerator::new().narrate(&AgentTask {
        turn_id: "t".to_owned(),
        ..Default::default()
    });
    assert_eq!(output.text, phrases::PAUSE);
    assert_eq!(output.technique, "encouragement");
    assert_eq!(output.suggestions, ["look around"]);
}
