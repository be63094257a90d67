//! The IPA through a language model: the prompt asking for one strict JSON object, and the
//! checks that turn the reply into an `IpaOutput` or reject it.
//!
//! The model only reads intent, entities and tone. The built-in IPA runs on every input as well
//! and its distress screen wins: obvious distress the lexicon found is kept in the entities and
//! the tone, whatever the model says, so a model can never talk a crisis signal away. The
//! safety verdict itself stays with the safety check.

use serde::Deserialize;
use tta_proto::v1::{EmotionalTone, InputEntity, IpaOutput};

use crate::engines::{ipa::Intent, tone::Feeling};

use super::client::{ChatMessage, ChatRequest};

/// The entity kinds the WBA and NGA understand.
const ENTITY_KINDS: [&str; 5] = ["item", "character", "place", "direction", "feeling"];
/// The feelings the narration has a voice for.
const FEELINGS: [Feeling; 7] = [
    Feeling::Anxious,
    Feeling::Sad,
    Feeling::Angry,
    Feeling::Tired,
    Feeling::Hopeful,
    Feeling::Calm,
    Feeling::Neutral,
];
/// More entities than this in one reply is not a reading of a player's line.
const MAX_ENTITIES: usize = 16;
const DEFAULT_CONFIDENCE: f64 = 0.7;

/// The request for one player input.
pub fn request(text: &str) -> ChatRequest {
    let intents: Vec<&str> = Intent::ALL.iter().map(|intent| intent.as_str()).collect();
    let feelings: Vec<&str> = FEELINGS.iter().map(|feeling| feeling.as_str()).collect();
    let system = format!(
        "You read one line a player typed in a calm, therapeutic text adventure. Answer with \
         exactly one JSON object and nothing else: no prose, no code fence.\n\
         Schema:\n\
         {{\"intent\": string, \"confidence\": number, \"entities\": [{{\"kind\": string, \
         \"value\": string, \"text\": string}}], \"tone\": {{\"label\": string, \
         \"valence\": number, \"arousal\": number, \"confidence\": number}}}}\n\
         Rules:\n\
         - intent is one of: {intents}.\n\
         - confidence is between 0 and 1.\n\
         - entities are the things the line mentions; kind is one of: {kinds}; value is the \
         thing's plain lowercase name (a direction is one of north, south, east, west, up, \
         down, in, out); text is the exact words of the line that mention it.\n\
         - tone.label is one of: {feelings}; valence is between -1 and 1; arousal and \
         confidence are between 0 and 1.",
        intents = intents.join(", "),
        kinds = ENTITY_KINDS.join(", "),
        feelings = feelings.join(", "),
    );
    ChatRequest {
        messages: vec![ChatMessage::system(system), ChatMessage::user(text)],
        // A reading, not a story: the same line should get the same reading.
        temperature: 0.0,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Reading {
    intent: String,
    #[serde(default)]
    confidence: Option<f64>,
    #[serde(default)]
    entities: Vec<Entity>,
    tone: Tone,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entity {
    kind: String,
    value: String,
    #[serde(default)]
    text: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Tone {
    label: String,
    valence: f64,
    arousal: f64,
    #[serde(default)]
    confidence: Option<f64>,
}

/// Turns the model's reply into the IPA output for `text`, merged with the built-in reading
/// `builtin` of the same text (its distress screen and normalised text). `Err` says what was
/// wrong with the reply; the caller then answers with `builtin` itself.
pub fn parse(reply: &str, text: &str, builtin: &IpaOutput) -> Result<IpaOutput, String> {
    let json = json_object(reply).ok_or("no JSON object in the reply")?;
    let reading: Reading =
        serde_json::from_str(json).map_err(|err| format!("not the asked-for object: {err}"))?;

    let intent = Intent::parse(reading.intent.trim())
        .ok_or_else(|| format!("intent {:?} is not in the IPA's intent set", reading.intent))?;
    let confidence = unit(
        "confidence",
        reading.confidence.unwrap_or(DEFAULT_CONFIDENCE),
    )?;
    if reading.entities.len() > MAX_ENTITIES {
        return Err(format!(
            "{} entities (at most {MAX_ENTITIES})",
            reading.entities.len()
        ));
    }
    let mut entities = reading
        .entities
        .into_iter()
        .map(|entity| entity_of(entity, text))
        .collect::<Result<Vec<_>, _>>()?;

    let feeling = FEELINGS
        .into_iter()
        .find(|feeling| feeling.as_str() == reading.tone.label.trim())
        .ok_or_else(|| format!("tone.label {:?} is not a known feeling", reading.tone.label))?;
    let valence = reading.tone.valence;
    if !(-1.0..=1.0).contains(&valence) {
        return Err(format!("tone.valence {valence} is outside [-1, 1]"));
    }
    let mut tone = EmotionalTone {
        label: feeling.as_str().to_owned(),
        valence,
        arousal: unit("tone.arousal", reading.tone.arousal)?,
        confidence: unit(
            "tone.confidence",
            reading.tone.confidence.unwrap_or(DEFAULT_CONFIDENCE),
        )?,
    };

    // The built-in distress screen wins over the model.
    let distress: Vec<&InputEntity> = builtin
        .entities
        .iter()
        .filter(|entity| entity.kind == "feeling" && entity.value == "distress")
        .collect();
    if !distress.is_empty() {
        if let Some(builtin_tone) = &builtin.tone {
            tone = builtin_tone.clone();
        }
        entities.retain(|entity| !(entity.kind == "feeling" && entity.value == "distress"));
        entities.extend(distress.into_iter().cloned());
    }

    Ok(IpaOutput {
        intent: intent.as_str().to_owned(),
        confidence,
        entities,
        tone: Some(tone),
        safety: builtin.safety.clone(),
        normalized_text: builtin.normalized_text.clone(),
        backend: tta_types::config::AgentBackend::Llm.as_str().to_owned(),
    })
}

/// The JSON object in a reply, tolerating what models add around it: a code fence or a
/// sentence before or after.
fn json_object(reply: &str) -> Option<&str> {
    let start = reply.find('{')?;
    let end = reply.rfind('}')?;
    (start < end).then(|| &reply[start..=end])
}

fn unit(field: &str, value: f64) -> Result<f64, String> {
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{field} {value} is outside [0, 1]"))
    }
}

/// An entity of the reply with its span in the input; a mention the input does not contain
/// keeps its value (the WBA resolves by value) but no span.
fn entity_of(entity: Entity, text: &str) -> Result<InputEntity, String> {
    let kind = entity.kind.trim().to_ascii_lowercase();
    if !ENTITY_KINDS.contains(&kind.as_str()) {
        return Err(format!("entity kind {:?} is not known", entity.kind));
    }
    let value = entity.value.trim().to_lowercase();
    if value.is_empty() {
        return Err("an entity has an empty value".to_owned());
    }
    let mention = if entity.text.trim().is_empty() {
        &value
    } else {
        entity.text.trim()
    };
    let (start, end, words) = match find_ignoring_case(text, mention) {
        Some((start, end)) => (start, end, text[start..end].to_owned()),
        None => (0, 0, String::new()),
    };
    Ok(InputEntity {
        kind,
        value,
        text: words,
        start: u32::try_from(start).unwrap_or(u32::MAX),
        end: u32::try_from(end).unwrap_or(u32::MAX),
    })
}

/// The byte span of `needle` in `haystack`, ignoring ASCII case.
fn find_ignoring_case(haystack: &str, needle: &str) -> Option<(usize, usize)> {
    if needle.is_empty() {
        return None;
    }
    haystack
        .char_indices()
        .map(|(start, _)| start)
        .find(|&start| {
            haystack
                .get(start..start + needle.len())
                .is_some_and(|window| window.eq_ignore_ascii_case(needle))
        })
        .map(|start| (start, start + needle.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engines::InputProcessor;

    fn builtin(text: &str) -> IpaOutput {
        InputProcessor::new().parse(text)
    }

    #[test]
    fn a_valid_reply_becomes_the_output() {
        let text = "Pick up the brass lantern";
        let reply = r#"Sure! ```json
{"intent": "take", "confidence": 0.9,
 "entities": [{"kind": "item", "value": "lantern", "text": "brass lantern"}],
 "tone": {"label": "calm", "valence": 0.2, "arousal": 0.3, "confidence": 0.8}}
```"#;
        let output = parse(reply, text, &builtin(text)).unwrap();
        assert_eq!(output.intent, "take");
        assert_eq!(output.backend, "llm");
        assert_eq!(output.entities.len(), 1);
        let entity = &output.entities[0];
        assert_eq!((entity.start, entity.end), (12, 25));
        assert_eq!(entity.text, "brass lantern");
        assert_eq!(output.tone.unwrap().label, "calm");
    }

    #[test]
    fn replies_outside_the_schema_are_rejected() {
        let text = "look around";
        let base = builtin(text);
        for reply in [
            "I think the player wants to look.",
            r#"{"intent": "dance", "tone": {"label": "calm", "valence": 0, "arousal": 0}}"#,
            r#"{"intent": "look", "tone": {"label": "ecstatic", "valence": 0, "arousal": 0}}"#,
            r#"{"intent": "look", "tone": {"label": "calm", "valence": 3, "arousal": 0}}"#,
            r#"{"intent": "look", "confidence": 7, "tone": {"label": "calm", "valence": 0, "arousal": 0}}"#,
            r#"{"intent": "look"}"#,
            r#"{"intent": "look", "entities": [{"kind": "spaceship", "value": "x"}], "tone": {"label": "calm", "valence": 0, "arousal": 0}}"#,
            r#"{"intent": "look", "safety": "fine", "tone": {"label": "calm", "valence": 0, "arousal": 0}}"#,
        ] {
            assert!(parse(reply, text, &base).is_err(), "accepted: {reply}");
        }
    }

    #[test]
    fn the_builtin_distress_screen_wins_over_the_model() {
        let text = "i feel hopeless and i can't breathe";
        let base = builtin(text);
        assert!(
            base.entities.iter().any(|e| e.value == "distress"),
            "the lexicon marks distress"
        );
        let reply = r#"{"intent": "look", "entities": [],
            "tone": {"label": "calm", "valence": 0.9, "arousal": 0.1}}"#;
        let output = parse(reply, text, &base).unwrap();
        assert_eq!(output.tone, base.tone);
        assert!(output.entities.iter().any(|e| e.value == "distress"));
        assert_eq!(output.intent, "look");
    }
}
