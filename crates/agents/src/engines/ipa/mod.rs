//! The built-in Input Processor: what did the player mean?
//!
//! Rules, not a model: the input is split into words, near-miss spellings are fixed against
//! the words the engine knows, the tone is read from a small lexicon, and a short grammar
//! (`intent`) picks the intent and the things mentioned. Every step is deterministic, so the
//! same words always get the same reading, and cheap, so the IPA never dominates a turn.
//!
//! The engine knows no session and no state. It may know the names of the worlds it serves
//! ([`InputProcessor::with_world`]); without them it still parses commands and passes object
//! phrases through for the WBA to resolve.

mod intent;
mod lexicon;
mod vocabulary;

pub use lexicon::Intent;
pub use vocabulary::Vocabulary;

use tta_proto::v1::{AgentOutput, AgentTask, InputEntity, IpaOutput, agent_output};
use tta_types::AgentType;

use super::{
    BUILTIN_BACKEND, Engine, EngineOutcome, EngineState, Error,
    text::tokenize,
    tone::{self, ToneReading},
    world::World,
};

/// The built-in IPA engine.
#[derive(Debug, Clone)]
pub struct InputProcessor {
    vocabulary: Vocabulary,
}

impl Default for InputProcessor {
    fn default() -> Self {
        InputProcessor::new()
    }
}

impl InputProcessor {
    /// An IPA that knows the grammar and the feeling lexicon but no world's names.
    pub fn new() -> InputProcessor {
        InputProcessor {
            vocabulary: Vocabulary::builtin(),
        }
    }

    /// Also recognises (and fixes the spelling of) the names of `world`'s places, items and
    /// characters. Call once per world served.
    pub fn with_world(mut self, world: &World) -> InputProcessor {
        self.vocabulary.add_world(world);
        self
    }

    /// Reads one input. Never fails: an input it cannot read is intent "unknown".
    pub fn parse(&self, text: &str) -> IpaOutput {
        let mut tokens = tokenize(text);
        let raw = tokens.clone();
        self.vocabulary.correct(&mut tokens);
        // Feelings are read from both spellings: a fix must not hide a feeling word, and a
        // feeling word must not be lost to a fix.
        let mut reading = tone::read_tokens(text, &tokens);
        if reading.hits.is_empty() {
            reading = tone::read_tokens(text, &raw);
        }
        let mut parsed = intent::read(text, &tokens, &self.vocabulary, &reading);
        let corrections = tokens.iter().filter(|t| t.corrected).count();
        let confidence = parsed.confidence - 0.05 * corrections as f64;
        parsed.entities.extend(feeling_entities(&reading));
        for entity in &mut parsed.entities {
            entity.text = span(text, entity).to_owned();
        }
        IpaOutput {
            intent: parsed.intent.as_str().to_owned(),
            confidence: round2(confidence.clamp(0.0, 1.0)),
            entities: parsed.entities,
            tone: Some(reading.tone),
            // The safety crate screens the input; the IPA only reads distress into the tone.
            safety: None,
            normalized_text: tokens
                .iter()
                .map(|t| t.word.as_str())
                .collect::<Vec<_>>()
                .join(" "),
            backend: BUILTIN_BACKEND.to_owned(),
        }
    }
}

impl Engine for InputProcessor {
    fn agent_type(&self) -> AgentType {
        AgentType::Ipa
    }

    fn run<'a>(
        &'a self,
        task: &'a AgentTask,
        _state: EngineState<'a>,
    ) -> Result<EngineOutcome, Error> {
        let turn = task.turn.as_ref().ok_or(Error::MissingTurn)?;
        let output = self.parse(&turn.text);
        Ok(EngineOutcome::stateless(AgentOutput {
            kind: Some(agent_output::Kind::Ipa(output)),
        }))
    }
}

/// One entity per feeling phrase: its label, or "distress" for words of obvious distress.
fn feeling_entities(reading: &ToneReading) -> Vec<InputEntity> {
    reading
        .hits
        .iter()
        .map(|hit| InputEntity {
            kind: "feeling".to_owned(),
            value: if hit.distress {
                "distress"
            } else {
                hit.feeling.as_str()
            }
            .to_owned(),
            text: String::new(),
            start: u32::try_from(hit.start).unwrap_or(u32::MAX),
            end: u32::try_from(hit.end).unwrap_or(u32::MAX),
        })
        .collect()
}

fn span<'t>(text: &'t str, entity: &InputEntity) -> &'t str {
    let (start, end) = (entity.start as usize, entity.end as usize);
    text.get(start..end).unwrap_or_default()
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests;
