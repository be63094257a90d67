//! The words that name the things of a world, and finding them in what a player typed.
//!
//! Every place, item and character is named by its id, its name without the article and its
//! aliases. The IPA uses these terms to recognise entities and fix their spelling; the WBA uses
//! them to resolve what an entity refers to. Validation makes sure no term names two things,
//! so resolution never has to guess.

use crate::engines::text::{tokenize, without_article};

/// What kind of thing a term names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ThingKind {
    Place,
    Item,
    Character,
}

impl ThingKind {
    /// The `InputEntity.kind` string for this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            ThingKind::Place => "place",
            ThingKind::Item => "item",
            ThingKind::Character => "character",
        }
    }
}

/// A phrase that names one thing of the world.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    /// The phrase as lowercase words ("tea", "house").
    pub words: Vec<String>,
    pub kind: ThingKind,
    /// Id of the thing named.
    pub id: String,
    /// Where the term comes from in the world file, for validation messages.
    pub(crate) origin: String,
}

/// Words that may precede a name without being part of it.
const DETERMINERS: &[&str] = &[
    "the", "a", "an", "some", "my", "this", "that", "your", "his", "her",
];

/// The terms of one thing: its id, its name without the article, the part of a name before a
/// comma ("Mara, the tea keeper" → "mara"), and its aliases.
pub(crate) fn terms_of(
    kind: ThingKind,
    id: &str,
    name: &str,
    aliases: &[String],
    path: &str,
) -> Vec<Term> {
    let mut phrases = vec![(id.replace(['_', '-'], " "), format!("{path}.id"))];
    let bare_name = without_article(name.trim());
    phrases.push((bare_name.to_owned(), format!("{path}.name")));
    if let Some((before_comma, _)) = bare_name.split_once(',') {
        phrases.push((before_comma.to_owned(), format!("{path}.name")));
    }
    for (index, alias) in aliases.iter().enumerate() {
        phrases.push((alias.clone(), format!("{path}.aliases[{index}]")));
    }
    let mut terms: Vec<Term> = Vec::new();
    for (phrase, origin) in phrases {
        let words = phrase_words(&phrase);
        if words.is_empty() || terms.iter().any(|term| term.words == words) {
            continue;
        }
        terms.push(Term {
            words,
            kind,
            id: id.to_owned(),
            origin,
        });
    }
    terms
}

/// The words of a phrase as terms are matched: lowercase, without leading determiners.
pub(crate) fn phrase_words(phrase: &str) -> Vec<String> {
    let words: Vec<String> = tokenize(phrase)
        .into_iter()
        .map(|token| token.word)
        .collect();
    let skip = words
        .iter()
        .take_while(|word| DETERMINERS.contains(&word.as_str()))
        .count();
    words.into_iter().skip(skip).collect()
}

/// A term found in a run of words: `len` words starting at `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TermMatch<'t> {
    pub start: usize,
    pub len: usize,
    pub term: &'t Term,
}

/// Finds terms in `words` from left to right, taking the longest term at each position, so
/// "tea house" is the place and not the drink.
pub(crate) fn find_terms<'t, S: AsRef<str>>(terms: &'t [Term], words: &[S]) -> Vec<TermMatch<'t>> {
    let mut found = Vec::new();
    let mut position = 0;
    while position < words.len() {
        let longest = terms
            .iter()
            .filter(|term| {
                words
                    .get(position..position + term.words.len())
                    .is_some_and(|window| {
                        window
                            .iter()
                            .zip(&term.words)
                            .all(|(word, expected)| word.as_ref() == expected)
                    })
            })
            .max_by_key(|term| term.words.len());
        match longest {
            Some(term) => {
                found.push(TermMatch {
                    start: position,
                    len: term.words.len(),
                    term,
                });
                position += term.words.len();
            }
            None => position += 1,
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thing_is_named_by_its_id_name_and_aliases() {
        let terms = terms_of(
            ThingKind::Character,
            "tea_keeper",
            "Mara, the tea keeper",
            &["keeper".to_owned()],
            "characters[0]",
        );
        let phrases: Vec<String> = terms.iter().map(|t| t.words.join(" ")).collect();
        assert_eq!(
            phrases,
            ["tea keeper", "mara the tea keeper", "mara", "keeper"]
        );
        assert_eq!(terms[3].origin, "characters[0].aliases[0]");
    }

    #[test]
    fn the_longest_term_wins_at_each_position() {
        let mut terms = terms_of(ThingKind::Item, "tea", "some tea", &[], "items[0]");
        terms.extend(terms_of(
            ThingKind::Place,
            "tea_house",
            "the tea house",
            &[],
            "places[0]",
        ));
        let words = ["go", "to", "the", "tea", "house", "for", "tea"];
        let found = find_terms(&terms, &words);
        assert_eq!(found.len(), 2);
        assert_eq!(
            (found[0].start, found[0].len, found[0].term.kind),
            (3, 2, ThingKind::Place)
        );
        assert_eq!((found[1].start, found[1].term.kind), (6, ThingKind::Item));
    }

    #[test]
    fn phrase_words_drop_leading_determiners() {
        assert_eq!(phrase_words("The old Lantern"), ["old", "lantern"]);
        assert_eq!(phrase_words("my bag"), ["bag"]);
    }
}
