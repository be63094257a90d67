//! What the IPA knows the words of: the grammar's own words, the feeling lexicon and the terms
//! of the worlds it serves; and the spelling fixer built on them.
//!
//! Fixing a typo is a guess, so the fixer guesses only when it is safe: never for a word it
//! knows, never for a word it cannot match unambiguously, never when the first letter differs
//! ("gun" does not become "run"), and for three-letter words only a missing letter ("lok").

use std::collections::BTreeSet;

use super::lexicon::{COMMANDS, COMMON_WORDS, FEELING_OPENINGS, FILLERS, REFLECTIONS};
use crate::engines::{
    text::{Token, edit_distance},
    tone,
    world::{Direction, Term, World},
};

/// The words and terms the IPA recognises.
#[derive(Debug, Clone, Default)]
pub struct Vocabulary {
    terms: Vec<Term>,
    /// Words never corrected.
    known: BTreeSet<String>,
    /// Command words: the only targets for three-letter typos.
    commands: BTreeSet<String>,
    /// Feeling words and world words: targets for longer typos.
    names: BTreeSet<String>,
}

impl Vocabulary {
    /// The grammar and the feeling lexicon, without any world.
    pub fn builtin() -> Vocabulary {
        let mut vocabulary = Vocabulary::default();
        let grammar = COMMANDS
            .iter()
            .flat_map(|command| command.words.iter())
            .chain(FILLERS.iter().flat_map(|words| words.iter()))
            .chain(REFLECTIONS.iter().flat_map(|words| words.iter()))
            .chain(FEELING_OPENINGS.iter().flat_map(|words| words.iter()));
        for &word in grammar {
            vocabulary.known.insert(word.to_owned());
            if word.len() >= 3 {
                vocabulary.commands.insert(word.to_owned());
            }
        }
        for direction in Direction::ALL {
            vocabulary.known.insert(direction.as_str().to_owned());
            vocabulary.commands.insert(direction.as_str().to_owned());
        }
        for word in [
            "inventory",
            "around",
            "upstairs",
            "downstairs",
            "inside",
            "outside",
        ] {
            vocabulary.known.insert(word.to_owned());
            vocabulary.commands.insert(word.to_owned());
        }
        for word in tone::lexicon_words() {
            vocabulary.known.insert(word.to_owned());
            vocabulary.names.insert(word.to_owned());
        }
        vocabulary
            .known
            .extend(COMMON_WORDS.iter().map(|word| (*word).to_owned()));
        vocabulary
    }

    /// Adds a world's names: its terms are recognised as entities and fixed when misspelt.
    pub fn add_world(&mut self, world: &World) {
        for term in world.terms() {
            for word in &term.words {
                self.known.insert(word.clone());
                if word.len() >= 3 {
                    self.names.insert(word.clone());
                }
            }
            if !self.terms.contains(term) {
                self.terms.push(term.clone());
            }
        }
    }

    /// The terms of the worlds added.
    pub fn terms(&self) -> &[Term] {
        &self.terms
    }

    /// Fixes the spelling of every token it safely can.
    pub(crate) fn correct(&self, tokens: &mut [Token]) {
        for token in tokens {
            if let Some(fixed) = self.correction(&token.word) {
                token.word = fixed;
                token.corrected = true;
            }
        }
    }

    fn correction(&self, word: &str) -> Option<String> {
        let length = word.chars().count();
        if length < 3 || self.known.contains(word) || !word.chars().all(char::is_alphabetic) {
            return None;
        }
        let max_distance = if length >= 7 { 2 } else { 1 };
        let candidates: Box<dyn Iterator<Item = &String>> = if length == 3 {
            // Three letters leave too little to go on: only a dropped letter ("lok" → "look").
            Box::new(self.commands.iter().filter(|c| c.chars().count() == 4))
        } else {
            Box::new(self.commands.iter().chain(&self.names))
        };
        let mut best: Option<(usize, &String)> = None;
        let mut tied = false;
        for candidate in candidates {
            if !same_start(word, candidate)
                || candidate.chars().count().abs_diff(length) > max_distance
            {
                continue;
            }
            let distance = edit_distance(word, candidate);
            if distance > max_distance {
                continue;
            }
            match best {
                Some((known, previous)) if distance == known && previous != candidate => {
                    tied = true
                }
                Some((known, _)) if distance >= known => {}
                _ => {
                    best = Some((distance, candidate));
                    tied = false;
                }
            }
        }
        match best {
            Some((_, candidate)) if !tied => Some(candidate.clone()),
            _ => None,
        }
    }
}

/// Typos rarely touch the first letter, except by swapping the first two ("nroth").
fn same_start(word: &str, candidate: &str) -> bool {
    let mut w = word.chars();
    let mut c = candidate.chars();
    match (w.next(), w.next(), c.next(), c.next()) {
        (Some(w0), _, Some(c0), _) if w0 == c0 => true,
        (Some(w0), Some(w1), Some(c0), Some(c1)) => w0 == c1 && w1 == c0,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fix(vocabulary: &Vocabulary, word: &str) -> Option<String> {
        vocabulary.correction(word)
    }

    #[test]
    fn common_typos_of_commands_are_fixed() {
        let vocabulary = Vocabulary::builtin();
        assert_eq!(fix(&vocabulary, "lok").as_deref(), Some("look"));
        assert_eq!(fix(&vocabulary, "nroth").as_deref(), Some("north"));
        assert_eq!(fix(&vocabulary, "inventroy").as_deref(), Some("inventory"));
        assert_eq!(fix(&vocabulary, "exmaine").as_deref(), Some("examine"));
        assert_eq!(fix(&vocabulary, "anxous").as_deref(), Some("anxious"));
    }

    #[test]
    fn known_words_and_unsafe_guesses_are_left_alone() {
        let vocabulary = Vocabulary::builtin();
        for word in [
            "dad", "gun", "bake", "walk", "talk", "the", "xyzzy", "tak", "r2d2",
        ] {
            assert_eq!(fix(&vocabulary, word), None, "{word} was changed");
        }
    }
}
