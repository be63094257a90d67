//! Exception windows: the words right before or after a match that mean it is not what it looks
//! like. "I don't want to die" (negation), "my character jumps off the cliff" (game context), "I'm
//! dying to know" (idiom).
//!
//! A window is a number of words on one side of the match, within the same sentence. Negation
//! windows are also cut at clause boundaries (`stop_words`, commas): in "I'm not ok, I want to
//! die" the "not" belongs to another statement and must not cancel the match. Cue phrases are
//! compared word by word, so "not" never matches inside "nothing".

use crate::normalize::{Normalized, is_word_char};

/// One compiled exception set (a named set from the rule file, or a rule's own
/// `unless_before`/`unless_after`).
#[derive(Debug, Clone, Default)]
pub struct ExceptionWindow {
    pub name: String,
    before: Vec<Vec<String>>,
    after: Vec<Vec<String>>,
    window: usize,
    stop_words: Vec<String>,
    stop_at_comma: bool,
}

/// Punctuation that ends a sentence, and so every window.
fn ends_sentence(c: char) -> bool {
    matches!(c, '.' | '!' | '?' | ';' | ':' | '\n' | '(' | ')' | '"')
}

/// A phrase as normalised words; empty when the phrase has no words.
pub fn phrase_words(phrase: &str) -> Vec<String> {
    Normalized::new(phrase)
        .as_str()
        .split(|c: char| !is_word_char(c))
        .filter(|word| !word.is_empty())
        .map(str::to_owned)
        .collect()
}

impl ExceptionWindow {
    pub fn new(
        name: &str,
        before: &[String],
        after: &[String],
        window: usize,
        stop_words: &[String],
        stop_at_comma: bool,
    ) -> Self {
        let words = |phrases: &[String]| -> Vec<Vec<String>> {
            phrases
                .iter()
                .map(|phrase| phrase_words(phrase))
                .filter(|words| !words.is_empty())
                .collect()
        };
        Self {
            name: name.to_owned(),
            before: words(before),
            after: words(after),
            window,
            stop_words: stop_words.iter().flat_map(|w| phrase_words(w)).collect(),
            stop_at_comma,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.before.is_empty() && self.after.is_empty()
    }

    /// Whether a cue of this set occurs around the match `start..end` of the normalised `text`.
    pub fn cancels(&self, text: &str, start: usize, end: usize) -> bool {
        if !self.before.is_empty() {
            let words = self.words_before(text, start);
            if self.before.iter().any(|cue| contains_sequence(&words, cue)) {
                return true;
            }
        }
        if !self.after.is_empty() {
            let words = self.words_after(text, end);
            if self.after.iter().any(|cue| contains_sequence(&words, cue)) {
                return true;
            }
        }
        false
    }

    fn stops_at(&self, c: char) -> bool {
        ends_sentence(c) || (self.stop_at_comma && c == ',')
    }

    fn is_stop_word(&self, word: &str) -> bool {
        self.stop_words.iter().any(|stop| stop == word)
    }

    /// Up to `window` words before `pos`, nearest last, cut at the sentence or clause start.
    fn words_before<'t>(&self, text: &'t str, pos: usize) -> Vec<&'t str> {
        let mut words = Vec::with_capacity(self.window);
        let mut word_end: Option<usize> = None;
        for (at, c) in text[..pos].char_indices().rev() {
            if is_word_char(c) {
                if word_end.is_none() {
                    word_end = Some(at + c.len_utf8());
                }
                continue;
            }
            if let Some(end) = word_end.take() {
                let word = &text[at + c.len_utf8()..end];
                if self.is_stop_word(word) {
                    break;
                }
                words.push(word);
                if words.len() == self.window {
                    break;
                }
            }
            if self.stops_at(c) {
                break;
            }
        }
        if let Some(end) = word_end
            && words.len() < self.window
        {
            let word = &text[..end];
            if !self.is_stop_word(word) {
                words.push(word);
            }
        }
        words.reverse();
        words
    }

    /// Up to `window` words after `pos`, cut at the sentence or clause end.
    fn words_after<'t>(&self, text: &'t str, pos: usize) -> Vec<&'t str> {
        let mut words = Vec::with_capacity(self.window);
        let mut word_start: Option<usize> = None;
        for (at, c) in text[pos..].char_indices() {
            let at = pos + at;
            if is_word_char(c) {
                if word_start.is_none() {
                    word_start = Some(at);
                }
                continue;
            }
            if let Some(start) = word_start.take() {
                let word = &text[start..at];
                if self.is_stop_word(word) {
                    return words;
                }
                words.push(word);
                if words.len() == self.window {
                    return words;
                }
            }
            if self.stops_at(c) {
                return words;
            }
        }
        if let Some(start) = word_start
            && words.len() < self.window
            && !self.is_stop_word(&text[start..])
        {
            words.push(&text[start..]);
        }
        words
    }
}

/// Whether `cue` occurs as consecutive words in `words`.
fn contains_sequence(words: &[&str], cue: &[String]) -> bool {
    !cue.is_empty()
        && words.len() >= cue.len()
        && words
            .windows(cue.len())
            .any(|window| window.iter().zip(cue).all(|(word, cue)| *word == cue))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    fn negation() -> ExceptionWindow {
        ExceptionWindow::new(
            "negation",
            &strings(&["not", "dont", "never", "do not"]),
            &[],
            3,
            &strings(&["but", "i", "im"]),
            true,
        )
    }

    fn cancels(window: &ExceptionWindow, text: &str, matched: &str) -> bool {
        let start = text.find(matched).unwrap();
        window.cancels(text, start, start + matched.len())
    }

    #[test]
    fn a_negation_just_before_the_match_cancels_it() {
        let negation = negation();
        assert!(cancels(&negation, "i dont want to die", "want to die"));
        assert!(cancels(
            &negation,
            "i do not really want to die",
            "want to die"
        ));
    }

    #[test]
    fn a_negation_in_another_clause_does_not_cancel() {
        let negation = negation();
        assert!(!cancels(
            &negation,
            "im not ok, i want to die",
            "want to die"
        ));
        assert!(!cancels(
            &negation,
            "im not ok i want to die",
            "want to die"
        ));
        assert!(!cancels(
            &negation,
            "its not fair. want to die",
            "want to die"
        ));
        assert!(!cancels(
            &negation,
            "not sure why but want to die",
            "want to die"
        ));
    }

    #[test]
    fn cues_are_whole_words_so_nothing_is_not_not() {
        assert!(!cancels(
            &negation(),
            "nothing helps want to die",
            "want to die"
        ));
    }

    #[test]
    fn a_window_only_reaches_its_number_of_words() {
        let fiction = ExceptionWindow::new(
            "fiction",
            &strings(&["in the game"]),
            &strings(&["the dragon"]),
            5,
            &[],
            false,
        );
        assert!(cancels(
            &fiction,
            "in the game i jump off the cliff",
            "jump off"
        ));
        assert!(cancels(&fiction, "i stab the dragon", "stab"));
        assert!(!cancels(
            &fiction,
            "in the game one two three four five six jump off",
            "jump off"
        ));
        assert!(!cancels(&fiction, "i stab. the dragon sleeps", "stab"));
    }

    #[test]
    fn the_first_word_of_the_text_counts() {
        let window = ExceptionWindow::new("x", &strings(&["never"]), &[], 2, &[], false);
        assert!(cancels(&window, "never hurt myself", "hurt myself"));
    }
}
