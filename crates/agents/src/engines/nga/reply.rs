//! A reply as paragraphs of sentences, and the filters that run over it before it is sent.
//!
//! Narration is composed sentence by sentence, so the streaming chunks are exact sentence
//! boundaries and a filter can drop one sentence (one that touches an avoided topic, or one
//! the safety check already rejected) without breaking the rest.

use crate::engines::text::{sentences, tokenize};

/// A reply being composed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Reply {
    paragraphs: Vec<Vec<String>>,
}

impl Reply {
    /// Adds a paragraph of prose, split into sentences; empty prose adds nothing.
    pub fn paragraph(&mut self, prose: &[String]) {
        let split: Vec<String> = prose.iter().flat_map(|part| sentences(part)).collect();
        if !split.is_empty() {
            self.paragraphs.push(split);
        }
    }

    /// Adds prose to the last paragraph (or starts one).
    pub fn extend_last(&mut self, prose: &[String]) {
        let split: Vec<String> = prose.iter().flat_map(|part| sentences(part)).collect();
        match self.paragraphs.last_mut() {
            Some(last) => last.extend(split),
            None if !split.is_empty() => self.paragraphs.push(split),
            None => {}
        }
    }

    pub fn is_empty(&self) -> bool {
        self.paragraphs.iter().all(Vec::is_empty)
    }

    /// Drops every sentence for which `reject` is true, and paragraphs left empty.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        for paragraph in &mut self.paragraphs {
            paragraph.retain(|sentence| keep(sentence));
        }
        self.paragraphs.retain(|paragraph| !paragraph.is_empty());
    }

    /// The text and its chunks: sentences joined by a space, paragraphs by a blank line. Each
    /// chunk is one sentence with the separator that follows it, so the chunks concatenated
    /// are exactly the text, as the contract requires.
    pub fn render(&self) -> (String, Vec<String>) {
        let mut chunks = Vec::new();
        for (p, paragraph) in self.paragraphs.iter().enumerate() {
            for (s, sentence) in paragraph.iter().enumerate() {
                let separator = if s + 1 < paragraph.len() {
                    " "
                } else if p + 1 < self.paragraphs.len() {
                    "\n\n"
                } else {
                    ""
                };
                chunks.push(format!("{sentence}{separator}"));
            }
        }
        (chunks.concat(), chunks)
    }
}

/// Topics the session must not touch, ready to match sentences against.
#[derive(Debug, Clone, Default)]
pub(super) struct AvoidTopics {
    /// Each topic as word stems that must all appear ("family_loss" → ["family", "loss"]).
    topics: Vec<Vec<String>>,
}

impl AvoidTopics {
    pub fn new(topics: &[String]) -> AvoidTopics {
        AvoidTopics {
            topics: topics
                .iter()
                .map(|topic| {
                    tokenize(&topic.replace(['_', '-'], " "))
                        .iter()
                        .map(|token| stem(&token.word).to_owned())
                        .collect::<Vec<_>>()
                })
                .filter(|stems| !stems.is_empty())
                .collect(),
        }
    }

    /// Whether the sentence touches a topic: every stem of the topic starts a word of the
    /// sentence ("drowning" → "drown" matches "drowned"). Errs on the side of dropping.
    pub fn touches(&self, sentence: &str) -> bool {
        // Most sessions avoid nothing; then no sentence needs splitting into words.
        if self.topics.is_empty() {
            return false;
        }
        let words: Vec<String> = tokenize(sentence)
            .into_iter()
            .map(|token| token.word)
            .collect();
        self.topics.iter().any(|stems| {
            stems
                .iter()
                .all(|stem| words.iter().any(|word| word.starts_with(stem.as_str())))
        })
    }
}

/// A crude stem: enough to match "drowning", "drowned" and "drowns" to one topic.
fn stem(word: &str) -> &str {
    for suffix in ["ing", "ed", "es", "s"] {
        if let Some(base) = word.strip_suffix(suffix)
            && base.chars().count() >= 3
        {
            return base;
        }
    }
    word
}

/// Whether `sentence` already appears in `rejected` (ignoring case and spacing), so an
/// alternative never repeats what the safety check blocked.
pub(super) fn appears_in(sentence: &str, rejected: &str) -> bool {
    let squash = |text: &str| {
        tokenize(text)
            .into_iter()
            .map(|token| token.word)
            .collect::<Vec<_>>()
            .join(" ")
    };
    let needle = squash(sentence);
    !needle.is_empty() && squash(rejected).contains(&needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prose(text: &str) -> Vec<String> {
        vec![text.to_owned()]
    }

    #[test]
    fn chunks_concatenate_to_the_text() {
        let mut reply = Reply::default();
        reply.paragraph(&prose(
            "It sounds like today has been heavy. Take your time.",
        ));
        reply.paragraph(&prose("You walk north. The lighthouse rises above you."));
        let (text, chunks) = reply.render();
        assert_eq!(chunks.len(), 4);
        assert_eq!(chunks.concat(), text);
        assert_eq!(
            text,
            "It sounds like today has been heavy. Take your time.\n\nYou walk north. The lighthouse rises above you."
        );
    }

    #[test]
    fn avoided_topics_match_word_stems_and_all_words_of_a_topic() {
        let topics = AvoidTopics::new(&["drowning".to_owned(), "family_loss".to_owned()]);
        assert!(topics.touches("Someone drowned here long ago."));
        assert!(topics.touches("A family loss can weigh on you."));
        assert!(!topics.touches("Your family waits at home."));
        assert!(!topics.touches("The water laps at the stones."));
    }

    #[test]
    fn retain_drops_sentences_and_empty_paragraphs() {
        let mut reply = Reply::default();
        reply.paragraph(&prose("Keep me. Drop me."));
        reply.paragraph(&prose("Drop me too."));
        reply.retain(|sentence| !sentence.starts_with("Drop"));
        assert_eq!(reply.render().0, "Keep me.");
    }

    #[test]
    fn appears_in_ignores_case_and_spacing() {
        assert!(appears_in(
            "The water laps softly.",
            "...and THE water  laps softly at the stones"
        ));
        assert!(!appears_in("You walk north.", "You walk south."));
    }
}
