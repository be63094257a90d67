//! Turns the words of one input into an intent and the entities it mentions.
//!
//! The reading goes in a fixed order, each step a small rule:
//!
//! 1. Feelings first: reflection phrases ("this reminds me of...") and feeling openings ("I
//!    feel...", "I'm so tired") mean the player is talking about themselves, whatever verbs
//!    follow. A player who shares something must never be answered with "you can't go that way".
//! 2. Fillers are stripped ("please", "I want to", "let's").
//! 3. A command phrase at the start gives the intent; the rest is its object.
//! 4. A bare direction or a bare name is a move, a look or a greeting.
//! 5. Feeling words anywhere make it a feeling; otherwise the intent is unknown.

use tta_proto::v1::InputEntity;

use super::{
    lexicon::{
        COMMANDS, Command, FEELING_MODIFIERS, FEELING_OPENINGS, FILLERS, Intent, OBJECT_NOISE,
        REFLECTIONS, SELF_OPENINGS, TALK_ENDS, TARGET_MARKERS,
    },
    vocabulary::Vocabulary,
};
use crate::engines::{
    text::Token,
    tone::ToneReading,
    world::{Direction, ThingKind, find_terms},
};

/// The intent of one input and the things it mentions.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Reading {
    pub intent: Intent,
    pub confidence: f64,
    pub entities: Vec<InputEntity>,
}

impl Reading {
    fn new(intent: Intent, confidence: f64) -> Reading {
        Reading {
            intent,
            confidence,
            entities: Vec::new(),
        }
    }
}

/// Reads `tokens` (spelling already fixed) of `text`.
pub(super) fn read(
    text: &str,
    tokens: &[Token],
    vocabulary: &Vocabulary,
    tone: &ToneReading,
) -> Reading {
    if text.trim() == "?" {
        return Reading::new(Intent::Help, 0.9);
    }
    if tokens.is_empty() {
        return Reading::new(Intent::Unknown, 0.0);
    }
    let words: Vec<&str> = tokens.iter().map(|t| t.word.as_str()).collect();
    if contains_phrase(&words, REFLECTIONS) {
        return Reading::new(Intent::Reflect, 0.8);
    }
    let start = skip_fillers(
        &words,
        0,
        &[
            "well", "honestly", "um", "uh", "just", "and", "but", "ok", "okay", "so",
        ],
    );
    if starts_with_any(&words[start..], FEELING_OPENINGS)
        || self_then_feeling(&words[start..], tokens, start, tone)
    {
        return Reading::new(Intent::ExpressFeeling, 0.85);
    }
    let start = skip_all_fillers(&words, 0);
    let rest = &tokens[start..];
    let reading = match longest_command(&words[start..]) {
        Some(command) if command.whole && command.words.len() < rest.len() => {
            read_whole_with_extra(command, &rest[command.words.len()..])
        }
        Some(command) => Some(read_command(command, rest, vocabulary)),
        None => read_bare(rest, vocabulary),
    };
    match reading {
        // "Help me, I'm scared" asks for care, not for the list of commands.
        Some(reading) if reading.intent == Intent::Help && !tone.hits.is_empty() => {
            Reading::new(Intent::ExpressFeeling, tone.tone.confidence.max(0.6))
        }
        Some(reading) => reading,
        None if !tone.hits.is_empty() => Reading::new(Intent::ExpressFeeling, 0.6),
        None => Reading::new(Intent::Unknown, 0.2),
    }
}

fn contains_phrase(words: &[&str], phrases: &[&[&str]]) -> bool {
    (0..words.len()).any(|at| starts_with_any(&words[at..], phrases))
}

fn starts_with_any(words: &[&str], phrases: &[&[&str]]) -> bool {
    phrases.iter().any(|phrase| words.starts_with(phrase))
}

/// "I'm (so / a bit / really) <feeling word>".
fn self_then_feeling(words: &[&str], tokens: &[Token], offset: usize, tone: &ToneReading) -> bool {
    let Some(opening) = SELF_OPENINGS
        .iter()
        .find(|phrase| words.starts_with(phrase))
    else {
        return false;
    };
    let after = words
        .iter()
        .skip(opening.len())
        .take_while(|word| FEELING_MODIFIERS.contains(word))
        .count();
    let Some(token) = tokens.get(offset + opening.len() + after) else {
        return false;
    };
    tone.hits.iter().any(|hit| hit.start == token.start)
}

fn skip_fillers(words: &[&str], mut at: usize, fillers: &[&str]) -> usize {
    while words.get(at).is_some_and(|word| fillers.contains(word)) && at + 1 < words.len() {
        at += 1;
    }
    at
}

/// Strips filler openings, longest first, but never the last word: "i" alone is inventory.
fn skip_all_fillers(words: &[&str], mut at: usize) -> usize {
    loop {
        let longest = FILLERS
            .iter()
            .filter(|phrase| words[at..].starts_with(phrase) && at + phrase.len() < words.len())
            .map(|phrase| phrase.len())
            .max();
        match longest {
            Some(len) => at += len,
            None => return at,
        }
    }
}

fn longest_command(words: &[&str]) -> Option<&'static Command> {
    COMMANDS
        .iter()
        .filter(|command| words.starts_with(command.words))
        .max_by_key(|command| command.words.len())
}

/// A whole-input command followed by more words ("look around the harbour"). Quitting is read
/// only when nothing meaningful follows: "stop feeling like this" is not a request to leave.
fn read_whole_with_extra(command: &Command, extra: &[Token]) -> Option<Reading> {
    let meaningful = extra
        .iter()
        .any(|t| !OBJECT_NOISE.contains(&t.word.as_str()) && t.word != "now");
    match command.intent {
        Intent::Quit if meaningful => None,
        intent if meaningful => Some(Reading::new(intent, 0.75)),
        intent => Some(Reading::new(intent, 0.9)),
    }
}

fn read_command(command: &Command, tokens: &[Token], vocabulary: &Vocabulary) -> Reading {
    let object = trim_object(&tokens[command.words.len()..]);
    match command.intent {
        Intent::Move => read_move(command, tokens, object, vocabulary),
        Intent::Look if object.is_empty() => Reading::new(Intent::Look, 0.95),
        Intent::Look | Intent::Examine => {
            if object.is_empty() {
                return Reading::new(Intent::Look, 0.8);
            }
            with_entities(
                Intent::Examine,
                0.95,
                thing_entities(object, vocabulary, ThingKind::Item, 1),
            )
        }
        Intent::Take | Intent::Drop => {
            if object.is_empty() {
                return Reading::new(command.intent, 0.7);
            }
            let object = strip_trailing(object, &["up", "down", "please", "here"]);
            with_entities(
                command.intent,
                0.95,
                thing_entities(object, vocabulary, ThingKind::Item, 1),
            )
        }
        Intent::Use => read_use(object, vocabulary),
        // "Sit on the bench", "rest on the bench": resting with something is using it.
        Intent::Rest if !object.is_empty() && !command.whole => read_use(object, vocabulary),
        Intent::Talk => {
            let end = object
                .iter()
                .position(|t| TALK_ENDS.contains(&t.word.as_str()))
                .unwrap_or(object.len());
            let object = trim_object(&object[..end]);
            if object.is_empty() {
                return Reading::new(Intent::Talk, 0.85);
            }
            with_entities(
                Intent::Talk,
                0.95,
                thing_entities(object, vocabulary, ThingKind::Character, 1),
            )
        }
        intent => Reading::new(intent, 0.95),
    }
}

fn read_move(
    command: &Command,
    tokens: &[Token],
    object: &[Token],
    vocabulary: &Vocabulary,
) -> Reading {
    let mut entities = Vec::new();
    // Directions are searched before the object is trimmed: "up" is noise in "pick it up" but
    // the whole point of "go up".
    let after_verb = &tokens[command.words.len()..];
    if let Some(token) = after_verb
        .iter()
        .find(|t| Direction::parse(&t.word).is_some())
    {
        entities.push(direction_entity(token));
    }
    let places: Vec<&Token> = object
        .iter()
        .filter(|t| Direction::parse(&t.word).is_none())
        .collect();
    let named = thing_entities_of(&places, vocabulary, ThingKind::Place, 1);
    // "Leave the lantern" puts something down; "leave the tea house" goes out.
    if command.direction == Some(Direction::Out)
        && named
            .first()
            .is_some_and(|e| e.kind == ThingKind::Item.as_str())
    {
        return with_entities(Intent::Drop, 0.85, named);
    }
    entities.extend(named);
    if entities.is_empty()
        && let (Some(direction), Some(verb)) = (command.direction, tokens.first())
    {
        entities.push(InputEntity {
            kind: "direction".to_owned(),
            value: direction.as_str().to_owned(),
            text: String::new(),
            start: to_u32(verb.start),
            end: to_u32(verb.end),
        });
    }
    let confidence = if entities.is_empty() { 0.6 } else { 0.95 };
    with_entities(Intent::Move, confidence, entities)
}

fn read_use(object: &[Token], vocabulary: &Vocabulary) -> Reading {
    if object.is_empty() {
        return Reading::new(Intent::Use, 0.7);
    }
    if vocabulary_found(object, vocabulary) {
        let known = thing_entities(object, vocabulary, ThingKind::Item, 2);
        return with_entities(Intent::Use, 0.95, known);
    }
    // Without a world to name things, split at "on"/"with"/"to": "use the key on the door".
    let split = object
        .iter()
        .position(|t| TARGET_MARKERS.contains(&t.word.as_str()));
    let (item, target) = match split {
        Some(at) => (&object[..at], trim_object(&object[at + 1..])),
        None => (object, &object[..0]),
    };
    let mut entities = phrase_entity(trim_object(item), ThingKind::Item)
        .into_iter()
        .collect::<Vec<_>>();
    entities.extend(phrase_entity(target, ThingKind::Item));
    with_entities(Intent::Use, 0.9, entities)
}

/// A bare direction ("north"), or a bare name: a place to go to, an item to look at, someone
/// to greet.
fn read_bare(tokens: &[Token], vocabulary: &Vocabulary) -> Option<Reading> {
    if let [token] = tokens
        && Direction::parse(&token.word).is_some()
    {
        return Some(with_entities(
            Intent::Move,
            0.9,
            vec![direction_entity(token)],
        ));
    }
    if let Some(first) = tokens.first()
        && Direction::parse(&first.word).is_some()
        && tokens[1..]
            .iter()
            .all(|t| OBJECT_NOISE.contains(&t.word.as_str()))
    {
        return Some(with_entities(
            Intent::Move,
            0.85,
            vec![direction_entity(first)],
        ));
    }
    let object = trim_object(tokens);
    let words: Vec<&str> = object.iter().map(|t| t.word.as_str()).collect();
    let found = find_terms(vocabulary.terms(), &words);
    let [only] = found.as_slice() else {
        return None;
    };
    if only.len != words.len() {
        return None;
    }
    let intent = match only.term.kind {
        ThingKind::Place => Intent::Move,
        ThingKind::Item => Intent::Examine,
        ThingKind::Character => Intent::Talk,
    };
    let entities = thing_entities(object, vocabulary, only.term.kind, 1);
    Some(with_entities(intent, 0.6, entities))
}

fn with_entities(intent: Intent, confidence: f64, entities: Vec<InputEntity>) -> Reading {
    Reading {
        intent,
        confidence,
        entities,
    }
}

fn vocabulary_found(object: &[Token], vocabulary: &Vocabulary) -> bool {
    let words: Vec<&str> = object.iter().map(|t| t.word.as_str()).collect();
    !find_terms(vocabulary.terms(), &words).is_empty()
}

/// Entities for the things named in `object`: the world terms found in it (up to `limit`), or
/// else the whole phrase as one entity of `default_kind`, for the WBA to resolve or refuse.
fn thing_entities(
    object: &[Token],
    vocabulary: &Vocabulary,
    default_kind: ThingKind,
    limit: usize,
) -> Vec<InputEntity> {
    let refs: Vec<&Token> = object.iter().collect();
    thing_entities_of(&refs, vocabulary, default_kind, limit)
}

fn thing_entities_of(
    object: &[&Token],
    vocabulary: &Vocabulary,
    default_kind: ThingKind,
    limit: usize,
) -> Vec<InputEntity> {
    let words: Vec<&str> = object.iter().map(|t| t.word.as_str()).collect();
    let found = find_terms(vocabulary.terms(), &words);
    if found.is_empty() {
        let owned: Vec<Token> = object.iter().map(|t| (*t).clone()).collect();
        return phrase_entity(trim_object(&owned), default_kind)
            .into_iter()
            .collect();
    }
    found
        .iter()
        .take(limit)
        .filter_map(|hit| {
            let first = object.get(hit.start)?;
            let last = object.get(hit.start + hit.len - 1)?;
            Some(InputEntity {
                kind: hit.term.kind.as_str().to_owned(),
                value: hit.term.id.clone(),
                text: String::new(),
                start: to_u32(first.start),
                end: to_u32(last.end),
            })
        })
        .collect()
}

/// The whole phrase as one entity; its value is the words as read (spelling fixed).
fn phrase_entity(phrase: &[Token], kind: ThingKind) -> Option<InputEntity> {
    let (first, last) = (phrase.first()?, phrase.last()?);
    Some(InputEntity {
        kind: kind.as_str().to_owned(),
        value: phrase
            .iter()
            .map(|t| t.word.as_str())
            .collect::<Vec<_>>()
            .join(" "),
        text: String::new(),
        start: to_u32(first.start),
        end: to_u32(last.end),
    })
}

fn direction_entity(token: &Token) -> InputEntity {
    InputEntity {
        kind: "direction".to_owned(),
        value: Direction::parse(&token.word)
            .map(|d| d.as_str())
            .unwrap_or_default()
            .to_owned(),
        text: String::new(),
        start: to_u32(token.start),
        end: to_u32(token.end),
    }
}

/// Drops articles and prepositions from the front of an object phrase.
fn trim_object(tokens: &[Token]) -> &[Token] {
    let skip = tokens
        .iter()
        .take_while(|t| OBJECT_NOISE.contains(&t.word.as_str()))
        .count();
    strip_trailing(&tokens[skip..], &["please"])
}

fn strip_trailing<'t>(tokens: &'t [Token], words: &[&str]) -> &'t [Token] {
    let mut end = tokens.len();
    while end > 0
        && tokens
            .get(end - 1)
            .is_some_and(|t| words.contains(&t.word.as_str()))
    {
        end -= 1;
    }
    &tokens[..end]
}

/// Inputs are capped far below 4 GiB by the gateway; saturate rather than wrap if not.
fn to_u32(offset: usize) -> u32 {
    u32::try_from(offset).unwrap_or(u32::MAX)
}
