//! Input normalisation: the one place that decides what "the same words" means, so rules can be
//! written once in plain lowercase instead of once per spelling players actually type.
//!
//! Rules (phrases and regexes) are matched against the normalised text, and every match is mapped
//! back to a byte span of the original text, so findings stay explainable. The steps, in order:
//!
//! - zero-width and soft-hyphen characters are dropped (they are used to dodge filters);
//! - letters are lowercased;
//! - apostrophes (ASCII and typographic) are dropped: "don't" and "dont" read the same;
//! - hyphens, dashes and underscores become spaces: "self-harm" reads as "self harm";
//! - runs of whitespace collapse into one space;
//! - common leetspeak inside words becomes letters: "k1ll" → "kill", "$uicide" → "suicide",
//!   but numbers stay numbers ("100mg", "988");
//! - a letter repeated three or more times collapses to one: "sooo" → "so", "diiie" → "die".
//!   Doubled letters stay (so "kill" stays "kill"); the rule compiler adds a single-letter variant
//!   of each phrase ("kil myself") so "killll myself" still matches.

use std::ops::Range;

/// A normalised text and, for each of its bytes, the byte span of the original character it came
/// from.
#[derive(Debug, Clone, Default)]
pub struct Normalized {
    text: String,
    /// Original start offset of the character each normalised byte came from.
    starts: Vec<u32>,
    /// Original end offset (exclusive) of the character each normalised byte came from.
    ends: Vec<u32>,
}

/// Characters that carry no visible content and are used to split words past a filter.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}'
    )
}

fn is_apostrophe(c: char) -> bool {
    matches!(
        c,
        '\'' | '`' | '\u{00B4}' | '\u{2018}' | '\u{2019}' | '\u{201B}' | '\u{02BC}' | '\u{2032}'
    )
}

fn is_dash(c: char) -> bool {
    matches!(
        c,
        '-' | '_' | '\u{2010}'..='\u{2015}' | '\u{2212}' | '\u{FE58}' | '\u{FE63}' | '\u{FF0D}'
    )
}

/// The letter a leetspeak character stands for, and whether it needs a letter on both sides to be
/// read as one (`!` and `|` end sentences and draw tables more often than they spell words).
fn leet(c: char) -> Option<(char, bool)> {
    Some(match c {
        '0' => ('o', false),
        '1' => ('i', false),
        '3' => ('e', false),
        '4' => ('a', false),
        '5' => ('s', false),
        '7' => ('t', false),
        '@' => ('a', false),
        '$' => ('s', false),
        '!' => ('i', true),
        '|' => ('l', true),
        _ => return None,
    })
}

/// A "word character" for boundary checks on normalised text.
pub fn is_word_char(c: char) -> bool {
    c.is_alphanumeric()
}

impl Normalized {
    /// Normalises `original` and records where each byte came from.
    pub fn new(original: &str) -> Self {
        normalize::<true>(original)
    }

    /// Normalises `original` without the offset map: the fast path for the common case where
    /// nothing matches and no span has to be mapped back. The text is identical to
    /// [`Normalized::new`]'s; [`Normalized::original_span`] maps every span to an empty one.
    pub fn text_only(original: &str) -> Self {
        normalize::<false>(original)
    }

    pub fn has_offsets(&self) -> bool {
        self.starts.len() == self.text.len()
    }
}

fn normalize<const TRACK: bool>(original: &str) -> Normalized {
    let mut out = Builder::<TRACK>::with_capacity(original.len());
    let bytes = original.as_bytes();
    let mut at = 0;
    while at < bytes.len() {
        let byte = bytes[at];
        // Fast path: plain ASCII letters and spaces are nearly all of any text.
        if byte.is_ascii_alphabetic() {
            out.letter(char::from(byte.to_ascii_lowercase()), at, at + 1);
            at += 1;
            continue;
        }
        if byte == b' ' {
            out.space(at, at + 1);
            at += 1;
            continue;
        }
        let Some(c) = original[at..].chars().next() else {
            break;
        };
        let end = at + c.len_utf8();
        let next = original[end..].chars().next();
        normalize_char(&mut out, c, next, at, end);
        at = end;
    }
    out.finish()
}

/// Everything but the fast path: invisible characters, apostrophes, dashes, whitespace,
/// leetspeak, digits, punctuation and non-ASCII letters.
fn normalize_char<const TRACK: bool>(
    out: &mut Builder<TRACK>,
    c: char,
    next: Option<char>,
    start: usize,
    end: usize,
) {
    if is_invisible(c) || is_apostrophe(c) {
        return;
    }
    if c.is_whitespace() || is_dash(c) {
        out.space(start, end);
        return;
    }
    if let Some((letter, needs_both_sides)) = leet(c) {
        let after_letter = out.last_is_letter();
        let before_letter = next.is_some_and(|n| n.is_alphabetic() || n == '1');
        let read_as_letter = if needs_both_sides {
            after_letter && before_letter
        } else if c.is_ascii_digit() {
            // A digit is a letter only after a letter: "k1ll", "d13", but "100mg".
            after_letter
        } else {
            after_letter || before_letter
        };
        if read_as_letter {
            out.letter(letter, start, end);
            return;
        }
    }
    if c.is_ascii() {
        let lower = c.to_ascii_lowercase();
        if lower.is_ascii_alphabetic() {
            out.letter(lower, start, end);
        } else {
            out.other(lower, start, end);
        }
    } else {
        for lower in c.to_lowercase() {
            if lower.is_alphabetic() {
                out.letter(lower, start, end);
            } else {
                out.other(lower, start, end);
            }
        }
    }
}

impl Normalized {
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn len(&self) -> usize {
        self.text.len()
    }

    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// The byte span of the original text that produced `range` of the normalised text. Always on
    /// character boundaries of the original. An empty or out-of-range span maps to an empty span.
    pub fn original_span(&self, range: Range<usize>) -> Range<usize> {
        if range.start >= range.end || range.end > self.starts.len() {
            let at = self.starts.get(range.start).copied().unwrap_or(0) as usize;
            return at..at;
        }
        let start = self.starts[range.start] as usize;
        let end = self.ends[range.end - 1] as usize;
        start..end
    }
}

/// Accumulates normalised output and, when `TRACK`, its offset map.
struct Builder<const TRACK: bool> {
    text: String,
    starts: Vec<u32>,
    ends: Vec<u32>,
    /// The last letter pushed and how many times in a row it was seen in the input.
    run: Option<(char, usize)>,
    /// Byte index in `text` of the first copy of the current letter run.
    run_at: usize,
}

impl<const TRACK: bool> Builder<TRACK> {
    fn with_capacity(capacity: usize) -> Self {
        let map_capacity = if TRACK { capacity } else { 0 };
        Self {
            text: String::with_capacity(capacity),
            starts: Vec::with_capacity(map_capacity),
            ends: Vec::with_capacity(map_capacity),
            run: None,
            run_at: 0,
        }
    }

    fn push(&mut self, c: char, start: usize, end: usize) {
        self.text.push(c);
        if !TRACK {
            return;
        }
        for _ in 0..c.len_utf8() {
            // Texts are bounded far below 4 GiB by the callers; saturate rather than wrap.
            self.starts.push(u32::try_from(start).unwrap_or(u32::MAX));
            self.ends.push(u32::try_from(end).unwrap_or(u32::MAX));
        }
    }

    fn last_is_letter(&self) -> bool {
        self.run.is_some()
    }

    fn letter(&mut self, c: char, start: usize, end: usize) {
        match self.run {
            Some((last, count)) if last == c => {
                let count = count + 1;
                self.run = Some((c, count));
                match count {
                    2 => self.push(c, start, end),
                    _ => {
                        // Third or later copy: drop the second copy and stretch the first one
                        // over the whole run, so the span still covers what the player typed.
                        if count == 3 {
                            let second = self.run_at + c.len_utf8();
                            self.text.truncate(second);
                            if TRACK {
                                self.starts.truncate(second);
                                self.ends.truncate(second);
                            }
                        }
                        if !TRACK {
                            return;
                        }
                        let end = u32::try_from(end).unwrap_or(u32::MAX);
                        for slot in &mut self.ends[self.run_at..] {
                            *slot = end;
                        }
                    }
                }
            }
            _ => {
                self.run = Some((c, 1));
                self.run_at = self.text.len();
                self.push(c, start, end);
            }
        }
    }

    fn other(&mut self, c: char, start: usize, end: usize) {
        self.run = None;
        self.push(c, start, end);
    }

    fn space(&mut self, start: usize, end: usize) {
        self.run = None;
        if self.text.is_empty() || self.text.ends_with(' ') {
            return;
        }
        self.push(' ', start, end);
    }

    fn finish(mut self) -> Normalized {
        if self.text.ends_with(' ') {
            self.text.pop();
            self.starts.pop();
            self.ends.pop();
        }
        join_spaced_letters(&mut self);
        Normalized {
            text: self.text,
            starts: self.starts,
            ends: self.ends,
        }
    }
}

/// Joins words spelled out letter by letter ("d i e" → "die", "k m s" → "kms"), a common way
/// past filters: a run of three or more single ASCII letters separated by single spaces loses
/// its spaces. Runs of two ("i a") are left alone; real text has them, spelled words rarely.
fn join_spaced_letters<const TRACK: bool>(out: &mut Builder<TRACK>) {
    let bytes = out.text.as_bytes();
    let is_single_letter = |at: usize| {
        bytes[at].is_ascii_alphabetic()
            && (at == 0 || bytes[at - 1] == b' ')
            && (at + 1 == bytes.len() || bytes[at + 1] == b' ')
    };
    let mut drop = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        if !is_single_letter(at) {
            at += 1;
            continue;
        }
        let mut letters = vec![at];
        while let Some(&last) = letters.last() {
            let next = last + 2;
            if next < bytes.len() && bytes[last + 1] == b' ' && is_single_letter(next) {
                letters.push(next);
            } else {
                break;
            }
        }
        if letters.len() >= 3 {
            drop.extend(letters[..letters.len() - 1].iter().map(|l| l + 1));
        }
        at = letters.last().map_or(at + 1, |l| l + 1);
    }
    if drop.is_empty() {
        return;
    }
    // Only ASCII spaces are dropped, so the text stays valid UTF-8 and each kept byte keeps its
    // span.
    let mut keep = vec![true; bytes.len()];
    for at in drop {
        keep[at] = false;
    }
    let mut index = 0;
    if TRACK {
        out.starts.retain(|_| {
            index += 1;
            keep[index - 1]
        });
        index = 0;
        out.ends.retain(|_| {
            index += 1;
            keep[index - 1]
        });
        index = 0;
    }
    out.text.retain(|c| {
        let kept = keep[index];
        index += c.len_utf8();
        kept
    });
}

/// Common words that a single-letter variant would turn another word into ("off" → "of",
/// "good" → "god"); such variants would make a phrase match ordinary text.
const COLLIDING_WORDS: [&str; 12] = [
    "of", "to", "so", "god", "fed", "bed", "led", "red", "wed", "bet", "pol", "wel",
];

/// Variants of a normalised phrase in which each doubled letter may also be single, so that a
/// phrase matches text whose elongated letters collapsed to one ("killll" → "kil"). Only words of
/// four or more letters vary, and never into a common word ("off myself" never becomes "of
/// myself"). Bounded: at most the first four doubled letters vary (16 variants).
pub fn doubled_letter_variants(phrase: &str) -> Vec<String> {
    let chars: Vec<char> = phrase.chars().collect();
    let word_len_at = |i: usize| -> usize {
        let start = chars[..i]
            .iter()
            .rposition(|c| !c.is_alphanumeric())
            .map_or(0, |p| p + 1);
        let end = chars[i..]
            .iter()
            .position(|c| !c.is_alphanumeric())
            .map_or(chars.len(), |p| i + p);
        let single: String = chars[start..end]
            .iter()
            .enumerate()
            .filter(|(j, _)| start + j != i)
            .map(|(_, c)| c)
            .collect();
        if COLLIDING_WORDS.contains(&single.as_str()) {
            0
        } else {
            end - start
        }
    };
    let doubles: Vec<usize> = (1..chars.len())
        .filter(|&i| chars[i] == chars[i - 1] && chars[i].is_alphabetic())
        .filter(|&i| i < 2 || chars[i - 2] != chars[i])
        .filter(|&i| word_len_at(i) >= 4)
        .take(4)
        .collect();
    let mut variants = Vec::with_capacity(1 << doubles.len());
    for mask in 0..(1usize << doubles.len()) {
        let variant: String = chars
            .iter()
            .enumerate()
            .filter(|(i, _)| {
                doubles
                    .iter()
                    .position(|d| d == i)
                    .is_none_or(|bit| mask & (1 << bit) == 0)
            })
            .map(|(_, c)| c)
            .collect();
        variants.push(variant);
    }
    variants
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(text: &str) -> String {
        Normalized::new(text).as_str().to_owned()
    }

    #[test]
    fn lowercases_and_collapses_whitespace() {
        assert_eq!(norm("  I   Want\tTO\n\nDIE  "), "i want to die");
    }

    #[test]
    fn drops_apostrophes_of_every_kind() {
        assert_eq!(norm("don't"), "dont");
        assert_eq!(norm("don’t can‘t won`t"), "dont cant wont");
        assert_eq!(norm("I OD'd"), "i odd");
    }

    #[test]
    fn reads_dashes_and_underscores_as_spaces() {
        assert_eq!(
            norm("self-harm un_alive sewer—slide"),
            "self harm un alive sewer slide"
        );
    }

    #[test]
    fn strips_zero_width_characters_used_to_dodge_filters() {
        assert_eq!(norm("su\u{200B}ici\u{200D}de"), "suicide");
        assert_eq!(norm("k\u{FEFF}m\u{00AD}s"), "kms");
    }

    #[test]
    fn collapses_letters_repeated_three_times_or_more_but_keeps_doubles() {
        assert_eq!(norm("sooo tired"), "so tired");
        assert_eq!(norm("i want to diiiiie"), "i want to die");
        assert_eq!(norm("kill"), "kill");
        assert_eq!(norm("killll"), "kil");
        assert_eq!(norm("nooooo"), "no");
    }

    #[test]
    fn reads_leetspeak_inside_words_but_keeps_numbers() {
        assert_eq!(norm("k1ll mys3lf"), "kill myself");
        assert_eq!(norm("$uicide"), "suicide");
        assert_eq!(norm("d13"), "die");
        assert_eq!(norm("k!ll"), "kill");
        assert_eq!(norm("took 100mg, call 988"), "took 100mg, call 988");
        assert_eq!(norm("die!"), "die!");
        assert_eq!(norm("5 potions"), "5 potions");
    }

    #[test]
    fn joins_words_spelled_out_letter_by_letter() {
        assert_eq!(norm("i wanna d i e"), "i wanna die");
        assert_eq!(norm("K M S now"), "kms now");
        assert_eq!(norm("i a m here"), "iam here");
        assert_eq!(norm("plan a or b"), "plan a or b");
        let original = "just d i e";
        let normalized = Normalized::new(original);
        let at = normalized.as_str().find("die").unwrap();
        assert_eq!(&original[normalized.original_span(at..at + 3)], "d i e");
    }

    #[test]
    fn maps_spans_back_to_the_original_text() {
        let original = "Please… I DON’T want to diiiie!";
        let normalized = Normalized::new(original);
        let text = normalized.as_str();
        let at = text.find("die").unwrap();
        let span = normalized.original_span(at..at + 3);
        assert_eq!(&original[span], "diiiie");

        let at = text.find("dont").unwrap();
        let span = normalized.original_span(at..at + 4);
        assert_eq!(&original[span], "DON’T");
    }

    #[test]
    fn spans_of_non_ascii_text_stay_on_character_boundaries() {
        let original = "Ünïcödé ☃ kms";
        let normalized = Normalized::new(original);
        let at = normalized.as_str().find("kms").unwrap();
        assert_eq!(&original[normalized.original_span(at..at + 3)], "kms");
        let span = normalized.original_span(0..2);
        assert_eq!(&original[span], "Ü");
    }

    #[test]
    fn the_fast_path_produces_the_same_text_without_offsets() {
        for text in [
            "Please… I DON’T want to diiiie!",
            "k1ll mys3lf",
            "su\u{200B}icide d i e",
            "Ünïcödé ☃ kms  ",
        ] {
            let fast = Normalized::text_only(text);
            assert_eq!(fast.as_str(), Normalized::new(text).as_str());
            assert!(!fast.has_offsets());
            assert!(fast.original_span(0..2).is_empty());
        }
    }

    #[test]
    fn empty_spans_map_to_empty_spans() {
        let normalized = Normalized::new("abc");
        assert!(normalized.original_span(2..2).is_empty());
        assert!(normalized.original_span(0..99).is_empty());
    }

    #[test]
    fn doubled_letter_variants_cover_each_single_letter_spelling() {
        let mut variants = doubled_letter_variants("kill myself");
        variants.sort();
        assert_eq!(variants, ["kil myself", "kill myself"]);
        assert_eq!(doubled_letter_variants("kms"), ["kms"]);
        assert_eq!(doubled_letter_variants("feel good").len(), 2);
    }

    #[test]
    fn doubled_letter_variants_never_turn_a_word_into_a_common_word() {
        assert_eq!(doubled_letter_variants("off myself"), ["off myself"]);
        assert_eq!(doubled_letter_variants("all too"), ["all too"]);
    }
}
