//! The built-in Narrative Generator: the reply the player reads.
//!
//! Templates, not a model: the reply is composed from what the IPA understood (intent,
//! feelings) and what the WBA did (events, the world summary), in a calm second-person voice
//! (`compose`, `phrases`). Phrasing varies by a hash of the turn id, so a replayed turn gets
//! the very same text, and the whole reply is split into sentences for streaming (`reply`).
//!
//! Two filters run last: sentences touching the session's `avoid_topics` are dropped, and when
//! the safety check blocked a previous reply (`task.alternative`) a plainer reply is written
//! that repeats none of the blocked sentences.

mod compose;
mod phrases;
mod reply;

use tta_proto::v1::{AgentOutput, AgentTask, NgaOutput, agent_output};
use tta_types::AgentType;

use self::{
    compose::{Inputs, Intensity, compose, compose_plain},
    reply::{AvoidTopics, appears_in},
};
use super::{
    BUILTIN_BACKEND, Engine, EngineOutcome, EngineState, Error, text::stable_hash, upstream_ipa,
    upstream_wba,
};

/// The built-in NGA engine. It holds no configuration: everything it needs is in the task.
#[derive(Debug, Clone, Default)]
pub struct NarrativeGenerator;

impl NarrativeGenerator {
    pub fn new() -> NarrativeGenerator {
        NarrativeGenerator
    }

    /// Writes the reply to one task. Never fails: without upstream outputs it still answers
    /// with a gentle pause, because the player must always get a reply.
    pub fn narrate(&self, task: &AgentTask) -> NgaOutput {
        let settings = task.turn.as_ref().and_then(|turn| turn.settings.as_ref());
        let seed_source = if task.turn_id.is_empty() {
            &task.task_id
        } else {
            &task.turn_id
        };
        let inputs = Inputs {
            seed: stable_hash(seed_source.as_bytes()),
            intensity: Intensity::from_proto(settings.map_or(0, |s| s.intensity)),
            ipa: upstream_ipa(task),
            wba: upstream_wba(task),
        };
        let mut composed = match &task.alternative {
            Some(alternative) => {
                let mut plain = compose_plain(&inputs, alternative.round);
                plain
                    .reply
                    .retain(|sentence| !appears_in(sentence, &alternative.rejected_text));
                plain
            }
            None => compose(&inputs),
        };
        let topics = AvoidTopics::new(settings.map_or(&[], |s| s.avoid_topics.as_slice()));
        composed.reply.retain(|sentence| !topics.touches(sentence));
        composed
            .suggestions
            .retain(|suggestion| !topics.touches(suggestion));
        if composed.reply.is_empty() {
            composed.reply.paragraph(&[phrases::PAUSE.to_owned()]);
        }
        let (text, chunks) = composed.reply.render();
        NgaOutput {
            text,
            chunks,
            technique: composed.technique.to_owned(),
            suggestions: composed.suggestions,
            backend: BUILTIN_BACKEND.to_owned(),
        }
    }
}

impl NarrativeGenerator {
    /// Shapes prose written elsewhere (a language model) like the built-in reply: paragraphs of
    /// sentences with streaming chunks, and the same filters — sentences touching the session's
    /// avoided topics, or repeating a reply the safety check blocked, are dropped. `None` when
    /// nothing is left.
    pub fn shape_prose(&self, task: &AgentTask, prose: &str) -> Option<(String, Vec<String>)> {
        let settings = task.turn.as_ref().and_then(|turn| turn.settings.as_ref());
        let mut shaped = reply::Reply::default();
        for paragraph in prose.split("\n\n") {
            let paragraph = paragraph.split_whitespace().collect::<Vec<_>>().join(" ");
            shaped.paragraph(&[paragraph]);
        }
        if let Some(alternative) = &task.alternative {
            shaped.retain(|sentence| !appears_in(sentence, &alternative.rejected_text));
        }
        let topics = AvoidTopics::new(settings.map_or(&[], |s| s.avoid_topics.as_slice()));
        shaped.retain(|sentence| !topics.touches(sentence));
        (!shaped.is_empty()).then(|| shaped.render())
    }
}

impl Engine for NarrativeGenerator {
    fn agent_type(&self) -> AgentType {
        AgentType::Nga
    }

    fn run<'a>(
        &'a self,
        task: &'a AgentTask,
        _state: EngineState<'a>,
    ) -> Result<EngineOutcome, Error> {
        let output = self.narrate(task);
        Ok(EngineOutcome::stateless(AgentOutput {
            kind: Some(agent_output::Kind::Nga(output)),
        }))
    }
}

#[cfg(test)]
mod tests;
