//! Finding every rule pattern in a text in one pass each: all literal phrases in one
//! Aho-Corasick automaton, all regexes in one `RegexSet` (and an individual `Regex` per pattern,
//! run only when the set says it matched, for the spans).
//!
//! Phrases are checked for word boundaries here, so "kms" does not match inside "okms" and "die"
//! not inside "diet"; a phrase written with a trailing `*` only needs a boundary at its start.

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use regex::{Regex, RegexSet};

use crate::normalize::is_word_char;

/// A pattern hit before exceptions are applied: which rule, which span of the normalised text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawMatch {
    pub rule: usize,
    pub start: usize,
    pub end: usize,
}

/// A literal phrase owned by one or more rules.
#[derive(Debug, Clone)]
struct PhraseOwner {
    rule: usize,
    /// Written with a trailing `*`: any word ending may follow.
    prefix: bool,
}

/// The compiled patterns of the rules that apply to one source.
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    phrases: Option<AhoCorasick>,
    /// The distinct phrases, by automaton pattern id.
    phrase_list: Vec<String>,
    /// Owners of each distinct phrase, by automaton pattern id.
    owners: Vec<Vec<PhraseOwner>>,
    set: Option<RegexSet>,
    /// Rule and regex of each `set` entry, in the same order.
    regexes: Vec<(usize, Regex)>,
}

/// Collects patterns before compiling them together.
#[derive(Debug, Default)]
pub struct MatcherBuilder {
    phrases: Vec<String>,
    owners: Vec<Vec<PhraseOwner>>,
    regexes: Vec<(usize, Regex)>,
}

impl MatcherBuilder {
    /// Adds a normalised phrase of `rule`.
    pub fn phrase(&mut self, rule: usize, phrase: &str, prefix: bool) {
        let owner = PhraseOwner { rule, prefix };
        match self.phrases.iter().position(|known| known == phrase) {
            Some(at) => {
                let owners = &mut self.owners[at];
                if !owners.iter().any(|o| o.rule == rule && o.prefix == prefix) {
                    owners.push(owner);
                }
            }
            None => {
                self.phrases.push(phrase.to_owned());
                self.owners.push(vec![owner]);
            }
        }
    }

    pub fn regex(&mut self, rule: usize, regex: Regex) {
        self.regexes.push((rule, regex));
    }

    pub fn build(self) -> Result<Matcher, String> {
        let phrases = if self.phrases.is_empty() {
            None
        } else {
            // A DFA: the largest automaton but the fastest scan, and rule sets are small.
            let automaton = AhoCorasick::builder()
                .match_kind(MatchKind::Standard)
                .kind(Some(AhoCorasickKind::DFA))
                .build(&self.phrases)
                .or_else(|_| {
                    AhoCorasick::builder()
                        .match_kind(MatchKind::Standard)
                        .build(&self.phrases)
                })
                .map_err(|err| format!("cannot build the phrase automaton: {err}"))?;
            Some(automaton)
        };
        let set = if self.regexes.is_empty() {
            None
        } else {
            let set = RegexSet::new(self.regexes.iter().map(|(_, regex)| regex.as_str()))
                .map_err(|err| format!("cannot build the regex set: {err}"))?;
            Some(set)
        };
        Ok(Matcher {
            phrases,
            phrase_list: self.phrases,
            owners: self.owners,
            set,
            regexes: self.regexes,
        })
    }
}

fn char_before(text: &str, at: usize) -> Option<char> {
    text[..at].chars().next_back()
}

fn char_after(text: &str, at: usize) -> Option<char> {
    text[at..].chars().next()
}

impl Matcher {
    /// Appends every pattern hit in the normalised `text` to `out`.
    pub fn find(&self, text: &str, out: &mut Vec<RawMatch>) {
        // `is_match` runs the automaton's prefilter and stops at the first hit; the overlapping
        // search that reports every hit is only needed when there is one.
        if let Some(automaton) = self.phrases.as_ref().filter(|a| a.is_match(text)) {
            for hit in automaton.find_overlapping_iter(text) {
                let (start, end) = (hit.start(), hit.end());
                let starts_word = char_before(text, start).is_none_or(|c| !is_word_char(c));
                if !starts_word {
                    continue;
                }
                let ends_word = char_after(text, end).is_none_or(|c| !is_word_char(c));
                for owner in &self.owners[hit.pattern().as_usize()] {
                    if owner.prefix || ends_word {
                        out.push(RawMatch {
                            rule: owner.rule,
                            start,
                            end,
                        });
                    }
                }
            }
        }
        // `is_match` stops early and needs no overlapping search; most texts match nothing.
        if let Some(set) = self.set.as_ref().filter(|set| set.is_match(text)) {
            for index in set.matches(text).iter() {
                let (rule, regex) = &self.regexes[index];
                for hit in regex.find_iter(text) {
                    out.push(RawMatch {
                        rule: *rule,
                        start: hit.start(),
                        end: hit.end(),
                    });
                }
            }
        }
    }

    /// Whether any pattern occurs at all, without boundaries or spans: the cheapest possible
    /// scan over the same patterns, used as the benchmark baseline.
    pub fn any_raw(&self, text: &str) -> bool {
        self.phrases
            .as_ref()
            .is_some_and(|automaton| automaton.is_match(text))
            || self.set.as_ref().is_some_and(|set| set.is_match(text))
    }

    pub fn pattern_count(&self) -> usize {
        self.owners.len() + self.regexes.len()
    }

    /// The distinct normalised phrases, for baselines that scan the same patterns.
    pub fn phrases(&self) -> &[String] {
        &self.phrase_list
    }

    /// The regex sources, for baselines that scan the same patterns.
    pub fn regex_sources(&self) -> impl Iterator<Item = &str> {
        self.regexes.iter().map(|(_, regex)| regex.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(phrases: &[(&str, bool)], regexes: &[&str]) -> Matcher {
        let mut builder = MatcherBuilder::default();
        for (rule, (phrase, prefix)) in phrases.iter().enumerate() {
            builder.phrase(rule, phrase, *prefix);
        }
        for regex in regexes {
            builder.regex(100, Regex::new(regex).unwrap());
        }
        builder.build().unwrap()
    }

    /// (rule, matched text) of every hit, in order of position.
    fn spans(matcher: &Matcher, text: &str) -> Vec<(usize, String)> {
        let mut out = Vec::new();
        matcher.find(text, &mut out);
        out.sort_by_key(|m| (m.start, m.rule));
        out.iter()
            .map(|m| (m.rule, text[m.start..m.end].to_owned()))
            .collect()
    }

    fn hits(items: &[(usize, &str)]) -> Vec<(usize, String)> {
        items.iter().map(|(r, t)| (*r, (*t).to_owned())).collect()
    }

    #[test]
    fn phrases_match_only_on_word_boundaries() {
        let m = matcher(&[("kms", false), ("die", false)], &[]);
        assert_eq!(spans(&m, "ok kms now"), hits(&[(0, "kms")]));
        assert!(spans(&m, "okms diet studied").is_empty());
        assert_eq!(spans(&m, "die"), hits(&[(1, "die")]));
    }

    #[test]
    fn a_trailing_star_phrase_matches_any_word_ending() {
        let m = matcher(&[("suicid", true)], &[]);
        assert_eq!(spans(&m, "feeling suicidal"), hits(&[(0, "suicid")]));
        assert!(spans(&m, "unsuicidal").is_empty());
    }

    #[test]
    fn overlapping_phrases_are_all_reported() {
        let m = matcher(&[("end it", false), ("end it all", false)], &[]);
        assert_eq!(
            spans(&m, "i will end it all"),
            hits(&[(0, "end it"), (1, "end it all")])
        );
    }

    #[test]
    fn the_same_phrase_in_two_rules_reports_both() {
        let mut builder = MatcherBuilder::default();
        builder.phrase(0, "overdose", false);
        builder.phrase(1, "overdose", false);
        builder.phrase(1, "overdose", false);
        let m = builder.build().unwrap();
        assert_eq!(
            spans(&m, "an overdose"),
            hits(&[(0, "overdose"), (1, "overdose")])
        );
    }

    #[test]
    fn regexes_report_every_span_of_the_rules_that_matched() {
        let m = matcher(&[], &[r"\b\d+ ?mg\b"]);
        assert_eq!(
            spans(&m, "take 50mg then 100 mg"),
            hits(&[(100, "50mg"), (100, "100 mg")])
        );
        assert!(m.any_raw("5 mg"));
        assert!(!m.any_raw("nothing here"));
    }
}
