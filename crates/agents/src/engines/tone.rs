//! Reads the emotional tone of the player's words with a small lexicon.
//!
//! The narration changes its voice with the tone: it reflects a feeling back, and offers a
//! breath when anxiety or distress shows. A lexicon is crude but predictable, and
//! predictability matters more here than subtlety: the same words always get the same care.
//! Negation ("not okay") and intensity ("so tired", "a bit worried") are handled because they
//! flip or scale the reading in the sentences players actually type.
//!
//! Obvious distress ("can't breathe", "hopeless", "want to die") is marked so the narration
//! grounds first and tells the player they are not alone. This is a first screen only: the
//! safety crate makes the real crisis verdict.

use std::{collections::HashMap, sync::LazyLock};

use tta_proto::v1::EmotionalTone;

use super::text::{Token, tokenize};

/// The feelings the built-in engines tell apart, as the `EmotionalTone.label` strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Feeling {
    Anxious,
    Sad,
    Angry,
    Tired,
    Hopeful,
    Calm,
    Neutral,
}

impl Feeling {
    /// The label used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Feeling::Anxious => "anxious",
            Feeling::Sad => "sad",
            Feeling::Angry => "angry",
            Feeling::Tired => "tired",
            Feeling::Hopeful => "hopeful",
            Feeling::Calm => "calm",
            Feeling::Neutral => "neutral",
        }
    }

    /// Reads a wire label back; anything unknown is treated as neutral.
    pub fn from_label(label: &str) -> Feeling {
        match label {
            "anxious" => Feeling::Anxious,
            "sad" => Feeling::Sad,
            "angry" => Feeling::Angry,
            "tired" => Feeling::Tired,
            "hopeful" => Feeling::Hopeful,
            "calm" => Feeling::Calm,
            _ => Feeling::Neutral,
        }
    }
}

/// One lexicon phrase found in the input.
#[derive(Debug, Clone, PartialEq)]
pub struct FeelingHit {
    pub feeling: Feeling,
    /// True for words of obvious distress.
    pub distress: bool,
    /// Byte span of the phrase in the input.
    pub start: usize,
    pub end: usize,
    valence: f64,
    arousal: f64,
    weight: f64,
}

/// The tone of one input: the wire `EmotionalTone` and the phrases behind it.
#[derive(Debug, Clone, PartialEq)]
pub struct ToneReading {
    pub tone: EmotionalTone,
    pub hits: Vec<FeelingHit>,
}

impl ToneReading {
    /// True when any phrase of obvious distress was found.
    pub fn distress(&self) -> bool {
        self.hits.iter().any(|hit| hit.distress)
    }
}

struct Entry {
    words: &'static [&'static str],
    feeling: Feeling,
    valence: f64,
    arousal: f64,
    distress: bool,
    /// What the phrase means after "not": "not okay" is sad, "not anxious" says nothing.
    negated: Option<Feeling>,
}

const fn entry(
    words: &'static [&'static str],
    feeling: Feeling,
    valence: f64,
    arousal: f64,
) -> Entry {
    Entry {
        words,
        feeling,
        valence,
        arousal,
        distress: false,
        negated: None,
    }
}

const fn positive(
    words: &'static [&'static str],
    feeling: Feeling,
    valence: f64,
    arousal: f64,
    negated: Feeling,
) -> Entry {
    Entry {
        words,
        feeling,
        valence,
        arousal,
        distress: false,
        negated: Some(negated),
    }
}

const fn distress(words: &'static [&'static str], feeling: Feeling, arousal: f64) -> Entry {
    Entry {
        words,
        feeling,
        valence: -0.9,
        arousal,
        distress: true,
        negated: None,
    }
}

use Feeling::{Angry, Anxious, Calm, Hopeful, Sad, Tired};

/// The lexicon. Multi-word phrases are matched before single words, so "worn out" is tired
/// and not two unrelated words.
#[rustfmt::skip]
const LEXICON: &[Entry] = &[
    // Obvious distress: grounding first, whatever else the turn does.
    distress(&["can't", "breathe"], Anxious, 0.95),
    distress(&["cannot", "breathe"], Anxious, 0.95),
    distress(&["panic", "attack"], Anxious, 0.95),
    distress(&["panicking"], Anxious, 0.9),
    distress(&["terrified"], Anxious, 0.9),
    distress(&["want", "to", "die"], Sad, 0.7),
    distress(&["wanna", "die"], Sad, 0.7),
    distress(&["kill", "myself"], Sad, 0.7),
    distress(&["hurt", "myself"], Sad, 0.7),
    distress(&["end", "it", "all"], Sad, 0.7),
    distress(&["end", "my", "life"], Sad, 0.7),
    distress(&["can't", "go", "on"], Sad, 0.6),
    distress(&["can't", "cope"], Anxious, 0.8),
    distress(&["can't", "take", "it"], Anxious, 0.8),
    distress(&["falling", "apart"], Sad, 0.7),
    distress(&["breaking", "down"], Sad, 0.7),
    distress(&["no", "point"], Sad, 0.5),
    distress(&["give", "up"], Sad, 0.4),
    distress(&["hopeless"], Sad, 0.5),
    distress(&["worthless"], Sad, 0.5),
    // Anxious.
    entry(&["on", "edge"], Anxious, -0.6, 0.75),
    entry(&["freaking", "out"], Anxious, -0.7, 0.85),
    entry(&["too", "much"], Anxious, -0.5, 0.7),
    entry(&["anxious"], Anxious, -0.6, 0.75),
    entry(&["anxiety"], Anxious, -0.6, 0.75),
    entry(&["nervous"], Anxious, -0.5, 0.7),
    entry(&["worried"], Anxious, -0.5, 0.65),
    entry(&["worry"], Anxious, -0.5, 0.65),
    entry(&["scared"], Anxious, -0.7, 0.8),
    entry(&["afraid"], Anxious, -0.7, 0.75),
    entry(&["frightened"], Anxious, -0.7, 0.8),
    entry(&["fear"], Anxious, -0.6, 0.7),
    entry(&["panic"], Anxious, -0.8, 0.9),
    entry(&["stressed"], Anxious, -0.6, 0.75),
    entry(&["stress"], Anxious, -0.5, 0.7),
    entry(&["overwhelmed"], Anxious, -0.7, 0.8),
    entry(&["tense"], Anxious, -0.5, 0.7),
    entry(&["uneasy"], Anxious, -0.4, 0.6),
    entry(&["restless"], Anxious, -0.4, 0.65),
    entry(&["shaky"], Anxious, -0.5, 0.7),
    // Sad.
    entry(&["sad"], Sad, -0.6, 0.35),
    entry(&["down"], Sad, -0.4, 0.3),
    entry(&["low"], Sad, -0.4, 0.25),
    entry(&["lonely"], Sad, -0.6, 0.35),
    entry(&["alone"], Sad, -0.5, 0.35),
    entry(&["empty"], Sad, -0.6, 0.2),
    entry(&["heavy"], Sad, -0.5, 0.3),
    entry(&["hurt"], Sad, -0.6, 0.5),
    entry(&["grief"], Sad, -0.7, 0.4),
    entry(&["grieving"], Sad, -0.7, 0.4),
    entry(&["crying"], Sad, -0.7, 0.55),
    entry(&["cry"], Sad, -0.6, 0.5),
    entry(&["tears"], Sad, -0.6, 0.5),
    entry(&["heartbroken"], Sad, -0.8, 0.5),
    entry(&["depressed"], Sad, -0.8, 0.3),
    entry(&["miserable"], Sad, -0.8, 0.4),
    entry(&["unhappy"], Sad, -0.6, 0.35),
    entry(&["lost"], Sad, -0.4, 0.4),
    entry(&["numb"], Sad, -0.5, 0.15),
    entry(&["blue"], Sad, -0.4, 0.25),
    entry(&["miss"], Sad, -0.4, 0.35),
    // Angry.
    entry(&["fed", "up"], Angry, -0.6, 0.7),
    entry(&["angry"], Angry, -0.7, 0.8),
    entry(&["mad"], Angry, -0.6, 0.75),
    entry(&["furious"], Angry, -0.8, 0.9),
    entry(&["annoyed"], Angry, -0.4, 0.6),
    entry(&["frustrated"], Angry, -0.5, 0.65),
    entry(&["irritated"], Angry, -0.4, 0.6),
    entry(&["rage"], Angry, -0.8, 0.9),
    entry(&["hate"], Angry, -0.7, 0.75),
    entry(&["resentful"], Angry, -0.6, 0.6),
    // Tired.
    entry(&["worn", "out"], Tired, -0.4, 0.15),
    entry(&["burnt", "out"], Tired, -0.5, 0.15),
    entry(&["burned", "out"], Tired, -0.5, 0.15),
    entry(&["no", "energy"], Tired, -0.4, 0.1),
    entry(&["tired"], Tired, -0.3, 0.15),
    entry(&["exhausted"], Tired, -0.5, 0.15),
    entry(&["drained"], Tired, -0.5, 0.15),
    entry(&["sleepy"], Tired, -0.1, 0.1),
    entry(&["weary"], Tired, -0.4, 0.15),
    entry(&["fatigued"], Tired, -0.4, 0.15),
    // Hopeful (positive: "not hopeful" reads as sad).
    positive(&["hopeful"], Hopeful, 0.6, 0.5, Sad),
    positive(&["hope"], Hopeful, 0.5, 0.45, Sad),
    positive(&["better"], Hopeful, 0.5, 0.4, Sad),
    positive(&["glad"], Hopeful, 0.6, 0.5, Sad),
    positive(&["happy"], Hopeful, 0.7, 0.55, Sad),
    positive(&["grateful"], Hopeful, 0.7, 0.4, Sad),
    positive(&["thankful"], Hopeful, 0.7, 0.4, Sad),
    positive(&["excited"], Hopeful, 0.7, 0.75, Sad),
    positive(&["proud"], Hopeful, 0.7, 0.55, Sad),
    positive(&["relieved"], Hopeful, 0.6, 0.3, Sad),
    positive(&["lighter"], Hopeful, 0.5, 0.3, Sad),
    // Calm ("not safe" and "not calm" read as anxious, "not okay" as sad).
    positive(&["at", "ease"], Calm, 0.5, 0.15, Anxious),
    positive(&["calm"], Calm, 0.5, 0.15, Anxious),
    positive(&["peaceful"], Calm, 0.6, 0.1, Anxious),
    positive(&["relaxed"], Calm, 0.5, 0.1, Anxious),
    positive(&["safe"], Calm, 0.5, 0.15, Anxious),
    positive(&["content"], Calm, 0.5, 0.15, Sad),
    positive(&["okay"], Calm, 0.2, 0.2, Sad),
    positive(&["ok"], Calm, 0.2, 0.2, Sad),
    positive(&["fine"], Calm, 0.2, 0.2, Sad),
    positive(&["good"], Calm, 0.4, 0.3, Sad),
];

/// Words that turn the next feeling word around.
const NEGATORS: &[&str] = &[
    "not", "never", "don't", "doesn't", "didn't", "isn't", "aren't", "wasn't", "no", "nothing",
];

/// Words that are feelings only after a cue: "I feel down" but "go down", "I'm fine" but "fine,
/// go north", "I feel lost" but "I lost the lantern".
const NEEDS_CUE: &[&str] = &[
    "down", "low", "lost", "blue", "empty", "heavy", "content", "good", "fine", "okay", "ok",
    "safe", "better",
];

/// Words that, just before an ambiguous feeling word, make it a feeling.
const CUES: &[&str] = &[
    "feel", "feels", "feeling", "felt", "i'm", "am", "so", "very", "really", "bit", "little",
    "pretty", "quite", "kinda", "getting", "been", "too", "not", "never",
];

/// Words that strengthen the next feeling word ("so tired").
const INTENSIFIERS: &[&str] = &[
    "very",
    "so",
    "really",
    "extremely",
    "too",
    "super",
    "incredibly",
    "totally",
    "completely",
    "utterly",
    "deeply",
];

/// Words that soften the next feeling word ("a bit worried").
const SOFTENERS: &[&str] = &["bit", "little", "slightly", "kinda", "somewhat", "mildly"];

/// Feeling words the spelling fixer may correct to ("anxous" → "anxious").
pub(crate) fn lexicon_words() -> impl Iterator<Item = &'static str> {
    LEXICON.iter().flat_map(|entry| entry.words.iter().copied())
}

/// Reads the tone of `text`.
pub fn read(text: &str) -> ToneReading {
    read_tokens(text, &tokenize(text))
}

/// Reads the tone of `text`, already split into `tokens` (with spelling fixed, by the IPA).
pub(crate) fn read_tokens(text: &str, tokens: &[Token]) -> ToneReading {
    let hits = find_hits(tokens);
    let tone = summarize(text, tokens, &hits);
    ToneReading { tone, hits }
}

fn find_hits(tokens: &[Token]) -> Vec<FeelingHit> {
    let mut hits = Vec::new();
    let mut position = 0;
    while position < tokens.len() {
        match longest_entry_at(tokens, position) {
            Some(entry) => {
                let last = position + entry.words.len() - 1;
                if let Some(hit) = hit_for(entry, tokens, position, last) {
                    hits.push(hit);
                }
                position = last + 1;
            }
            None => position += 1,
        }
    }
    hits
}

/// The lexicon's entries by their first word, in lexicon order: a token is compared only with
/// the entries that could start at it.
static ENTRIES_BY_FIRST_WORD: LazyLock<HashMap<&'static str, Vec<&'static Entry>>> =
    LazyLock::new(|| {
        let mut index: HashMap<&'static str, Vec<&'static Entry>> = HashMap::new();
        for entry in LEXICON {
            if let Some(first) = entry.words.first() {
                index.entry(first).or_default().push(entry);
            }
        }
        index
    });

fn longest_entry_at(tokens: &[Token], position: usize) -> Option<&'static Entry> {
    let first = tokens.get(position)?;
    ENTRIES_BY_FIRST_WORD
        .get(first.word.as_str())?
        .iter()
        .copied()
        .filter(|entry| {
            tokens
                .get(position..position + entry.words.len())
                .is_some_and(|window| {
                    window
                        .iter()
                        .zip(entry.words)
                        .all(|(token, word)| token.word == *word)
                })
        })
        .max_by_key(|entry| entry.words.len())
}

fn hit_for(entry: &Entry, tokens: &[Token], first: usize, last: usize) -> Option<FeelingHit> {
    let before: Vec<&str> = tokens[first.saturating_sub(3)..first]
        .iter()
        .map(|token| token.word.as_str())
        .collect();
    let cued = near_cue(&before);
    if let [word] = entry.words
        && NEEDS_CUE.contains(word)
        && !cued
    {
        return None;
    }
    let negated = !entry.distress && before.iter().any(|word| NEGATORS.contains(word));
    let (feeling, valence) = match (negated, entry.negated) {
        (false, _) => (entry.feeling, entry.valence),
        (true, Some(flipped)) => (flipped, -0.45),
        // "not anxious" tells us little; better to read nothing than the opposite.
        (true, None) => return None,
    };
    let near: Vec<&str> = before.iter().rev().take(2).copied().collect();
    let (mut weight, mut arousal) = (if entry.distress { 2.0 } else { 1.0 }, entry.arousal);
    if near.iter().any(|word| INTENSIFIERS.contains(word)) {
        weight *= 1.3;
        arousal += 0.15;
    }
    if near.iter().any(|word| SOFTENERS.contains(word)) || before.ends_with(&["kind", "of"]) {
        weight *= 0.7;
        arousal -= 0.15;
    }
    Some(FeelingHit {
        feeling,
        distress: entry.distress,
        start: tokens[first].start,
        end: tokens[last].end,
        valence,
        arousal: arousal.clamp(0.0, 1.0),
        weight,
    })
}

fn near_cue(before: &[&str]) -> bool {
    before.iter().rev().take(2).any(|word| CUES.contains(word))
}

/// Ties between feelings go to the one that needs the most care, so an anxious-and-hopeful
/// sentence is met as anxious.
const CARE_ORDER: [Feeling; 6] = [Anxious, Sad, Angry, Tired, Hopeful, Calm];

fn summarize(text: &str, tokens: &[Token], hits: &[FeelingHit]) -> EmotionalTone {
    let excitement = excitement(text, tokens);
    if hits.is_empty() {
        return EmotionalTone {
            label: Feeling::Neutral.as_str().to_owned(),
            valence: 0.0,
            arousal: (0.2 + excitement).min(1.0),
            confidence: 0.5,
        };
    }
    let score = |feeling: Feeling| -> f64 {
        hits.iter()
            .filter(|hit| hit.feeling == feeling)
            .map(|hit| hit.weight)
            .sum()
    };
    let mut dominant = CARE_ORDER[0];
    for feeling in CARE_ORDER {
        if score(feeling) > score(dominant) {
            dominant = feeling;
        }
    }
    let total: f64 = hits.iter().map(|hit| hit.weight).sum();
    let valence = hits.iter().map(|hit| hit.valence * hit.weight).sum::<f64>() / total;
    let arousal = hits.iter().map(|hit| hit.arousal * hit.weight).sum::<f64>() / total;
    // Mixed feelings lower the confidence in the label, but not below what words of obvious
    // distress warrant on their own.
    let distressed = hits.iter().any(|hit| hit.distress);
    let agreement = if distressed {
        (score(dominant) / total).max(0.8)
    } else {
        score(dominant) / total
    };
    let evidence = 0.55 + 0.1 * hits.len() as f64 + if distressed { 0.1 } else { 0.0 };
    EmotionalTone {
        label: dominant.as_str().to_owned(),
        valence: round2(valence.clamp(-1.0, 1.0)),
        arousal: round2((arousal + excitement).clamp(0.0, 1.0)),
        confidence: round2((evidence.min(0.95) * agreement).clamp(0.0, 0.95)),
    }
}

/// Exclamation marks and shouted words raise the arousal of any reading.
fn excitement(text: &str, tokens: &[Token]) -> f64 {
    let exclamations = text.matches('!').count().min(2) as f64 * 0.1;
    let shouted = tokens.iter().any(|token| {
        let typed = text.get(token.start..token.end).unwrap_or_default();
        typed.chars().count() >= 3 && typed.chars().all(|c| c.is_uppercase())
    });
    exclamations + if shouted { 0.1 } else { 0.0 }
}

/// Two decimals are all the precision a lexicon can claim, and they keep outputs readable.
fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(text: &str) -> ToneReading {
        read(text)
    }

    #[test]
    fn a_sentence_without_feeling_words_is_neutral() {
        let reading = tone("go north");
        assert_eq!(reading.tone.label, "neutral");
        assert_eq!(reading.tone.valence, 0.0);
        assert!(reading.hits.is_empty());
    }

    #[test]
    fn anxious_words_read_as_anxious_with_negative_valence_and_high_arousal() {
        let reading = tone("I feel anxious and worried");
        assert_eq!(reading.tone.label, "anxious");
        assert!(reading.tone.valence < -0.4);
        assert!(reading.tone.arousal > 0.6);
        assert!(reading.tone.confidence > 0.7);
    }

    #[test]
    fn each_label_has_words_that_reach_it() {
        for (text, label) in [
            ("i'm so tired", "tired"),
            ("it has been a sad day", "sad"),
            ("i'm really frustrated", "angry"),
            ("i feel hopeful today", "hopeful"),
            ("i feel calm", "calm"),
            ("I'm worn out", "tired"),
        ] {
            assert_eq!(tone(text).tone.label, label, "for {text:?}");
        }
    }

    #[test]
    fn negated_positive_words_turn_negative() {
        let reading = tone("I'm not okay");
        assert_eq!(reading.tone.label, "sad");
        assert!(reading.tone.valence < 0.0);
        assert_eq!(tone("I don't feel safe").tone.label, "anxious");
    }

    #[test]
    fn negated_negative_words_are_not_read_as_their_opposite() {
        assert_eq!(tone("i'm not anxious").tone.label, "neutral");
    }

    #[test]
    fn intensifiers_raise_arousal_and_softeners_lower_it() {
        let plain = tone("i am worried").tone.arousal;
        assert!(tone("i am very worried").tone.arousal > plain);
        assert!(tone("i am a bit worried").tone.arousal < plain);
    }

    #[test]
    fn obvious_distress_is_marked_and_weighs_most() {
        let reading = tone("I can't breathe, everything is hopeless but I'm happy to be here");
        assert!(reading.distress());
        assert_eq!(reading.tone.label, "anxious");
        assert!(reading.tone.valence < -0.4);
        assert!(reading.tone.confidence >= 0.5);
    }

    #[test]
    fn ambiguous_words_count_only_after_a_feeling_cue() {
        assert_eq!(tone("go down the stairs").tone.label, "neutral");
        assert_eq!(tone("ok, take the lantern").tone.label, "neutral");
        assert_eq!(tone("I lost the lantern").tone.label, "neutral");
        assert_eq!(tone("I feel down").tone.label, "sad");
        assert_eq!(tone("I'm fine").tone.label, "calm");
    }

    #[test]
    fn hits_carry_the_byte_span_of_their_phrase() {
        let text = "I am worn out";
        let reading = tone(text);
        let hit = &reading.hits[0];
        assert_eq!(&text[hit.start..hit.end], "worn out");
    }

    #[test]
    fn exclamations_and_shouting_raise_arousal() {
        assert!(tone("I AM SCARED!!").tone.arousal > tone("i am scared").tone.arousal);
    }

    #[test]
    fn ties_go_to_the_feeling_that_needs_more_care() {
        assert_eq!(tone("anxious but hopeful").tone.label, "anxious");
    }
}
