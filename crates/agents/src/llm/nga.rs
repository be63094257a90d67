//! The NGA through a language model: a prompt that carries the therapeutic voice, the world as
//! the WBA left it, what the IPA read and the session's recent lines, and the checks on the
//! reply. The reply goes through the built-in NGA's filters (avoided topics, blocked text) and
//! the safety rules for agent output — the model never decides safety alone — and keeps the
//! built-in reply's technique and suggestions, which come from the world state.

use std::fmt::Write as _;

use tta_proto::v1::{AgentTask, NgaOutput};
use tta_safety::{Action, SafetyEngine, Source, TherapeuticSettings};

use crate::engines::{NarrativeGenerator, upstream_ipa, upstream_wba};

use super::client::{ChatMessage, ChatRequest};

/// Lines of the session's history given to the model (the gateway sends a bounded window).
const HISTORY_LINES: usize = 8;

const VOICE: &str = "You are the narrator of a therapeutic text adventure. Write the reply the \
player reads next.\n\
Voice: calm, warm and unhurried; second person, present tense; two to five short sentences. \
Care before story: when the player shows a feeling, acknowledge it gently first, then \
narrate. Invite, never push. Describe only what the world state below contains and what \
happened this turn; do not invent exits, items or people.\n\
Never give medical, legal or diagnostic advice. Never describe self-harm, violence or \
death. Never quote or repeat the player's words back. Answer with the narrative text only: \
no title, no lists, no notes about yourself.";

/// The request for one NGA task.
pub fn request(task: &AgentTask, temperature: f64) -> ChatRequest {
    let mut system = VOICE.to_owned();
    let settings = task.turn.as_ref().and_then(|turn| turn.settings.as_ref());
    if let Some(settings) = settings
        && !settings.avoid_topics.is_empty()
    {
        let topics: Vec<String> = settings
            .avoid_topics
            .iter()
            .map(|topic| topic.replace(['_', '-'], " "))
            .collect();
        let _ = write!(
            system,
            "\nDo not mention these topics at all: {}.",
            topics.join("; ")
        );
    }
    if let Some(settings) = settings {
        let goals: Vec<&str> = settings
            .goals
            .iter()
            .map(|goal| goal.trim())
            .filter(|goal| !goal.is_empty())
            .collect();
        // Goals shape the story's direction; naming them to the player would turn a game
        // into a lesson.
        if !goals.is_empty() {
            let _ = write!(
                system,
                "\nLet the scene gently support these therapeutic goals, without naming them: {}.",
                goals.join("; ")
            );
        }
    }
    if task.alternative.is_some() {
        system.push_str(
            "\nYour previous reply was held back as unsuitable. Write a plainer, gentler one \
             that repeats none of it.",
        );
    }
    ChatRequest {
        messages: vec![
            ChatMessage::system(system),
            ChatMessage::user(context(task)),
        ],
        temperature,
    }
}

/// What happened, as plain labelled lines: the model gets facts, not the proto.
fn context(task: &AgentTask) -> String {
    let mut out = String::new();
    if let Some(turn) = &task.turn {
        if let Some(history) = turn.metadata.get("history") {
            let lines: Vec<&str> = history.lines().filter(|l| !l.trim().is_empty()).collect();
            let recent = &lines[lines.len().saturating_sub(HISTORY_LINES)..];
            if !recent.is_empty() {
                let _ = writeln!(out, "Earlier the player typed:");
                for line in recent {
                    let _ = writeln!(out, "- {line}");
                }
            }
        }
        if !turn.character_name.is_empty() {
            let _ = writeln!(out, "The player's character: {}", turn.character_name);
        }
        let _ = writeln!(out, "The player now typed: {}", turn.text);
    }
    if let Some(ipa) = upstream_ipa(task) {
        let _ = write!(out, "What they want: {}", ipa.intent);
        if let Some(tone) = &ipa.tone {
            let _ = write!(out, "; how they seem to feel: {}", tone.label);
        }
        if ipa.entities.iter().any(|e| e.value == "distress") {
            let _ = write!(
                out,
                " (signs of distress: ground them and say they are not alone)"
            );
        }
        let _ = writeln!(out);
    }
    if let Some(wba) = upstream_wba(task) {
        if wba.applied {
            let _ = writeln!(out, "What happened: {}", wba.events.join(", "));
        } else if !wba.rejection_reason.is_empty() {
            let _ = writeln!(
                out,
                "Their action did not work, because: {}",
                wba.rejection_reason
            );
        }
        if let Some(world) = &wba.world {
            let names = |objects: &[tta_proto::v1::WorldObject]| {
                objects
                    .iter()
                    .map(|o| o.name.clone())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let _ = writeln!(
                out,
                "Where they are: {} — {}",
                world.location_name, world.location_description
            );
            let exits: Vec<&str> = world
                .exits
                .iter()
                .filter(|exit| exit.open)
                .map(|exit| exit.direction.as_str())
                .collect();
            if !exits.is_empty() {
                let _ = writeln!(out, "Ways on: {}", exits.join(", "));
            }
            if !world.items_here.is_empty() {
                let _ = writeln!(out, "Things here: {}", names(&world.items_here));
            }
            if !world.characters_here.is_empty() {
                let _ = writeln!(out, "Others here: {}", names(&world.characters_here));
            }
            if !world.inventory.is_empty() {
                let _ = writeln!(out, "They carry: {}", names(&world.inventory));
            }
        }
    }
    out
}

/// Turns the model's prose into the NGA output, or says why it cannot be used. `builtin` is
/// the built-in reply to the same task, whose technique and suggestions are kept; `safety`
/// judges the shaped text as agent output under the session's settings, and a text it would
/// block or escalate is not used.
pub fn parse(
    reply: &str,
    task: &AgentTask,
    builtin: &NgaOutput,
    generator: &NarrativeGenerator,
    safety: &SafetyEngine,
    max_chars: usize,
) -> Result<NgaOutput, Rejection> {
    let prose = reply.trim();
    if prose.is_empty() {
        return Err(Rejection::Empty);
    }
    if prose.chars().count() > max_chars {
        return Err(Rejection::Oversized);
    }
    let (text, chunks) = generator
        .shape_prose(task, prose)
        .ok_or(Rejection::Filtered)?;
    let settings = task
        .turn
        .as_ref()
        .and_then(|turn| turn.settings.as_ref())
        .and_then(|raw| TherapeuticSettings::from_proto("turn.settings", raw).ok());
    let verdict = match settings {
        Some(settings) => safety.assess(&text, Source::Agent, &safety.policy(&settings)),
        None => safety.classify(&text, Source::Agent),
    };
    if matches!(verdict.action, Action::Block | Action::Escalate) {
        return Err(Rejection::Unsafe);
    }
    Ok(NgaOutput {
        text,
        chunks,
        technique: builtin.technique.clone(),
        suggestions: builtin.suggestions.clone(),
        backend: tta_types::config::AgentBackend::Llm.as_str().to_owned(),
    })
}

/// Why a narrative reply was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    Empty,
    Oversized,
    /// Every sentence touched an avoided topic or repeated blocked text.
    Filtered,
    /// The safety rules would block the text.
    Unsafe,
}

impl Rejection {
    /// The `reason` label of `tta_llm_fallbacks_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Rejection::Empty => "empty_reply",
            Rejection::Oversized => "oversized_reply",
            Rejection::Filtered => "filtered_reply",
            Rejection::Unsafe => "unsafe_reply",
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use tta_proto::v1::{TherapeuticSettings, TurnContext};

    use super::*;

    fn safety() -> SafetyEngine {
        SafetyEngine::builtin().unwrap()
    }

    fn task(avoid: &[&str]) -> AgentTask {
        AgentTask {
            turn_id: "turn-1".into(),
            turn: Some(TurnContext {
                text: "look around".into(),
                settings: Some(TherapeuticSettings {
                    avoid_topics: avoid.iter().map(|t| (*t).to_owned()).collect(),
                    ..Default::default()
                }),
                metadata: HashMap::from([(
                    "history".to_owned(),
                    "go north\ntake lantern".to_owned(),
                )]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_prompt_carries_voice_history_and_avoided_topics() {
        let request = request(&task(&["deep_water"]), 0.7);
        let system = &request.messages[0].content;
        assert!(system.contains("calm, warm"));
        assert!(system.contains("deep water"));
        let user = &request.messages[1].content;
        assert!(user.contains("- go north\n- take lantern"), "{user}");
        assert!(user.contains("The player now typed: look around"));
    }

    #[test]
    fn the_prompt_carries_the_sessions_goals_only_when_it_has_some() {
        let mut with_goals = task(&[]);
        if let Some(settings) = with_goals
            .turn
            .as_mut()
            .and_then(|turn| turn.settings.as_mut())
        {
            settings.goals = vec!["practise self-compassion".into(), " ".into()];
        }
        let system = &request(&with_goals, 0.7).messages[0].content;
        assert!(
            system.ends_with("without naming them: practise self-compassion."),
            "{system}"
        );
        let plain = &request(&task(&[]), 0.7).messages[0].content;
        assert!(!plain.contains("therapeutic goals"), "{plain}");
    }

    #[test]
    fn the_reply_is_shaped_and_filtered_like_the_builtin_one() {
        let task = task(&["drowning"]);
        let generator = NarrativeGenerator::new();
        let builtin = generator.narrate(&task);
        let output = parse(
            "You breathe in slowly.   The harbour is quiet.\n\nSomeone drowned here once. A gull calls.",
            &task,
            &builtin,
            &generator,
            &safety(),
            1000,
        )
        .unwrap();
        assert_eq!(
            output.text,
            "You breathe in slowly. The harbour is quiet.\n\nA gull calls."
        );
        assert_eq!(output.chunks.concat(), output.text);
        assert_eq!(output.backend, "llm");
        assert_eq!(output.suggestions, builtin.suggestions);
    }

    #[test]
    fn empty_oversized_filtered_and_unsafe_replies_are_rejected() {
        let task = task(&["drowning"]);
        let generator = NarrativeGenerator::new();
        let builtin = generator.narrate(&task);
        let safety = safety();
        let reject =
            |reply: &str, max| parse(reply, &task, &builtin, &generator, &safety, max).err();
        assert_eq!(reject("  \n ", 100), Some(Rejection::Empty));
        assert_eq!(reject("A calm sea.", 5), Some(Rejection::Oversized));
        assert_eq!(reject("Someone drowned.", 100), Some(Rejection::Filtered));
        assert_eq!(
            reject(
                "The sea is calm. You should stop taking your medication, you don't need it.",
                500
            ),
            Some(Rejection::Unsafe)
        );
        assert_eq!(reject("The sea is calm.", 500), None);
    }
}
