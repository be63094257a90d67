//! Composes a reply from what the IPA understood and what the WBA did.
//!
//! The order of a reply is fixed, because care comes before story: first the world's
//! introduction on a new session, then a reflection of what the player feels, then a grounding
//! exercise when anxiety or distress shows, then what happened in the world and where the
//! player is now. How much of the care is offered follows the session's intensity: LOW keeps
//! to one supportive sentence, MEDIUM adds validation and a breathing exercise, HIGH invites
//! the player to stay with the feeling a little longer.

use tta_proto::v1::{IpaOutput, TherapeuticIntensity, WbaOutput, WorldObject, WorldSummary};

use super::{phrases, reply::Reply};
use crate::engines::{
    text::{capitalize, definite, join_list, pick, tokenize},
    tone::Feeling,
    world::Direction,
};

/// How much therapeutic content a reply may carry (R5.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Intensity {
    Low,
    Medium,
    High,
}

impl Intensity {
    /// Unset means the configured default, which is LOW: the gentlest is the safe guess.
    pub fn from_proto(raw: i32) -> Intensity {
        match TherapeuticIntensity::try_from(raw) {
            Ok(TherapeuticIntensity::Medium) => Intensity::Medium,
            Ok(TherapeuticIntensity::High) => Intensity::High,
            _ => Intensity::Low,
        }
    }
}

/// Everything a reply is composed from.
#[derive(Debug, Clone, Copy)]
pub(super) struct Inputs<'a> {
    /// Chooses phrasings; derived from the turn id.
    pub seed: u64,
    pub intensity: Intensity,
    pub ipa: Option<&'a IpaOutput>,
    pub wba: Option<&'a WbaOutput>,
}

/// A composed reply with its technique and suggestions.
#[derive(Debug, Clone)]
pub(super) struct Composed {
    pub reply: Reply,
    pub technique: &'static str,
    pub suggestions: Vec<String>,
}

/// One WBA event, parsed (see `world::apply` for the format).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event<'a> {
    Intro(&'a str),
    Moved { direction: &'a str },
    Discovered,
    Looked,
    Examined(&'a str),
    Took(&'a str),
    Dropped(&'a str),
    Effect(&'a str),
    Opened(&'a str),
    Said(&'a str),
    Inventory,
    Rested,
    Help,
    Quit,
    Refused(&'a str),
    Other,
}

fn parse_event(event: &str) -> Event<'_> {
    let mut parts = event.splitn(2, ':');
    let kind = parts.next().unwrap_or_default();
    let rest = parts.next().unwrap_or_default();
    // Details with free text keep everything after their fixed fields, colons included.
    let after = |fields: usize| rest.splitn(fields + 1, ':').nth(fields).unwrap_or_default();
    match kind {
        "intro" => Event::Intro(rest),
        "moved" => Event::Moved {
            direction: after(1),
        },
        "discovered" => Event::Discovered,
        "looked" => Event::Looked,
        "examined" => Event::Examined(after(2)),
        "took" => Event::Took(rest),
        "dropped" => Event::Dropped(rest),
        "effect" => Event::Effect(after(1)),
        "opened" => Event::Opened(rest.split(':').next().unwrap_or_default()),
        "said" => Event::Said(after(1)),
        "inventory" => Event::Inventory,
        "rested" => Event::Rested,
        "help" => Event::Help,
        "quit" => Event::Quit,
        "refused" => Event::Refused(rest),
        _ => Event::Other,
    }
}

/// What the IPA read about the player's state of mind.
#[derive(Debug, Clone, Copy)]
struct Mood {
    feeling: Feeling,
    valence: f64,
    arousal: f64,
    confidence: f64,
    distress: bool,
}

impl Mood {
    fn of(ipa: Option<&IpaOutput>) -> Mood {
        let tone = ipa.and_then(|ipa| ipa.tone.as_ref());
        Mood {
            feeling: tone.map_or(Feeling::Neutral, |t| Feeling::from_label(&t.label)),
            valence: tone.map_or(0.0, |t| t.valence),
            arousal: tone.map_or(0.0, |t| t.arousal),
            confidence: tone.map_or(0.0, |t| t.confidence),
            distress: ipa.is_some_and(|ipa| {
                ipa.entities
                    .iter()
                    .any(|e| e.kind == "feeling" && e.value == "distress")
            }),
        }
    }

    fn shown(&self) -> bool {
        self.distress || (self.feeling != Feeling::Neutral && self.confidence >= 0.5)
    }

    fn needs_grounding(&self) -> bool {
        self.distress
            || (self.feeling == Feeling::Anxious && self.arousal >= 0.55)
            || self.valence <= -0.65
    }
}

/// Composes the reply of one turn.
pub(super) fn compose(inputs: &Inputs<'_>) -> Composed {
    let intent = inputs.ipa.map_or("", |ipa| ipa.intent.as_str());
    let mood = Mood::of(inputs.ipa);
    let summary = inputs.wba.and_then(|wba| wba.world.as_ref());
    let events: Vec<Event<'_>> = inputs
        .wba
        .map(|wba| wba.events.iter().map(|e| parse_event(e)).collect())
        .unwrap_or_default();
    let seed = inputs.seed;
    let mut reply = Reply::default();
    let mut technique = "narration";

    for event in &events {
        if let Event::Intro(text) = event {
            reply.paragraph(&[(*text).to_owned()]);
        }
    }

    let reflective = matches!(intent, "reflect" | "express_feeling");
    if mood.shown() || reflective {
        reply.paragraph(&care(inputs, &mood, intent));
        technique = "reflection";
    }
    let resting = events.contains(&Event::Rested);
    if mood.needs_grounding() && !resting {
        reply.paragraph(&grounding(inputs, summary, mood.distress));
        technique = "grounding";
    }

    let refused = events.iter().any(|e| matches!(e, Event::Refused(_)));
    match (inputs.wba, summary) {
        (Some(wba), Some(summary)) => {
            let story = narrate(inputs, wba, summary, &events);
            reply.paragraph(&story);
            if resting {
                reply.extend_last(&grounding(inputs, Some(summary), false));
                technique = "grounding";
            }
            if reflective && !events.iter().any(|e| matches!(e, Event::Moved { .. })) {
                let anchor = fill(pick(seed, "anchor", phrases::ANCHOR), summary, "", "");
                reply.paragraph(&[anchor]);
            }
        }
        _ => reply.paragraph(&[phrases::PAUSE.to_owned()]),
    }
    if refused || matches!(intent, "help" | "unknown") || inputs.wba.is_none() {
        if technique == "narration" {
            technique = "encouragement";
        }
        if refused {
            reply.extend_last(&[pick(seed, "encourage", phrases::ENCOURAGE).to_owned()]);
        }
    }
    if events.contains(&Event::Quit) && technique == "narration" {
        technique = "encouragement";
    }
    let suggestions = suggest(inputs, summary, &mood, &events);
    Composed {
        reply,
        technique,
        suggestions,
    }
}

/// The reflection of what the player shared, sized by intensity.
fn care(inputs: &Inputs<'_>, mood: &Mood, intent: &str) -> Vec<String> {
    let seed = inputs.seed;
    if mood.distress {
        return vec![
            pick(seed, "distress", phrases::DISTRESS).to_owned(),
            phrases::SUPPORT.to_owned(),
        ];
    }
    let opening = if intent == "reflect" && !mood.shown() {
        pick(seed, "memory", phrases::MEMORY)
    } else {
        pick(seed, "reflection", phrases::reflection(mood.feeling))
    };
    let mut sentences = vec![opening.to_owned()];
    if inputs.intensity >= Intensity::Medium {
        sentences.push(pick(seed, "validation", phrases::VALIDATION).to_owned());
    }
    if inputs.intensity == Intensity::High {
        sentences.push(pick(seed, "invitation", phrases::INVITATION).to_owned());
    }
    sentences
}

/// A breathing and noticing exercise, sized by intensity. Distress always gets at least the
/// paced breath: a single light sentence is too little then.
fn grounding(inputs: &Inputs<'_>, summary: Option<&WorldSummary>, distress: bool) -> Vec<String> {
    let seed = inputs.seed;
    let cue = summary.map_or("the sounds around you", sensory_cue);
    let with_cue = |template: &str| template.replace("{cue}", cue);
    let intensity = if distress {
        inputs.intensity.max(Intensity::Medium)
    } else {
        inputs.intensity
    };
    match intensity {
        Intensity::Low => vec![pick(seed, "breath", phrases::BREATH_LIGHT).to_owned()],
        Intensity::Medium => vec![
            pick(seed, "breath", phrases::BREATH_PACED).to_owned(),
            with_cue(pick(seed, "notice", phrases::NOTICE)),
        ],
        Intensity::High => vec![
            pick(seed, "slow", phrases::SLOW_DOWN).to_owned(),
            pick(seed, "breath", phrases::BREATH_PACED).to_owned(),
            with_cue(pick(seed, "notice", phrases::NOTICE_DEEP)),
            pick(seed, "rush", phrases::NO_RUSH).to_owned(),
        ],
    }
}

/// Something to listen for or feel in the current place, taken from its description so the
/// exercise belongs to the scene: the sound of the harbour, the warmth of the tea house.
fn sensory_cue(summary: &WorldSummary) -> &'static str {
    // Whole words: "window" must not count as "wind".
    let words: Vec<String> = tokenize(&summary.location_description)
        .into_iter()
        .map(|t| t.word)
        .collect();
    let mentions = |cues: &[&str]| cues.iter().any(|cue| words.iter().any(|word| word == cue));
    if mentions(&["water", "waves", "harbour", "tide", "sea"]) {
        "the soft sound of the water"
    } else if mentions(&["stove", "kettle", "warmth", "fire"]) {
        "the quiet warmth of the room"
    } else if mentions(&["garden", "air", "wind", "breeze"]) {
        "the cool air on your skin"
    } else if mentions(&["lamp", "light", "glow"]) {
        "the soft light around you"
    } else {
        "the ground beneath your feet"
    }
}

/// What happened in the world this turn, and where the player is.
fn narrate(
    inputs: &Inputs<'_>,
    wba: &WbaOutput,
    summary: &WorldSummary,
    events: &[Event<'_>],
) -> Vec<String> {
    let seed = inputs.seed;
    let mut out = Vec::new();
    if !wba.applied {
        out.push(wba.rejection_reason.clone());
        return out;
    }
    let discovered = events.contains(&Event::Discovered);
    for event in events {
        match *event {
            Event::Moved { direction } => {
                let templates = if discovered {
                    phrases::ARRIVE
                } else {
                    phrases::RETURN
                };
                let dir = Direction::parse(direction).map_or("", Direction::phrase);
                out.push(fill(pick(seed, "move", templates), summary, dir, ""));
                out.push(summary.location_description.clone());
                out.extend(presence(summary));
            }
            Event::Looked => {
                out.push(fill(pick(seed, "look", phrases::LOOK), summary, "", ""));
                out.push(summary.location_description.clone());
                out.extend(presence(summary));
            }
            Event::Examined(text) | Event::Effect(text) | Event::Said(text) => {
                out.push(text.to_owned())
            }
            Event::Took(id) => {
                let item = definite(&object_name(summary, id));
                out.push(fill(pick(seed, "take", phrases::TAKE), summary, "", &item));
            }
            Event::Dropped(id) => {
                let item = definite(&object_name(summary, id));
                out.push(fill(pick(seed, "drop", phrases::DROP), summary, "", &item));
            }
            Event::Opened(direction) => {
                let dir = Direction::parse(direction).map_or(direction, |d| d.phrase());
                out.push(format!("The way {dir} is open now."));
            }
            Event::Inventory => out.push(inventory(seed, summary)),
            Event::Rested => out.push(fill(pick(seed, "rest", phrases::REST), summary, "", "")),
            Event::Help => out.push(phrases::HELP.to_owned()),
            Event::Quit => out.push(phrases::QUIT.to_owned()),
            _ => {}
        }
    }
    out
}

/// Items, people and ways out of the current place.
fn presence(summary: &WorldSummary) -> Vec<String> {
    let mut out = Vec::new();
    if !summary.items_here.is_empty() {
        let names: Vec<String> = summary
            .items_here
            .iter()
            .map(|item| item.name.clone())
            .collect();
        out.push(format!("You notice {} here.", join_list(&names, "and")));
    }
    for character in &summary.characters_here {
        let name = &character.name;
        // "Mara, the tea keeper, is here": an apposition needs its closing comma.
        let separator = if name.contains(',') { "," } else { "" };
        out.push(format!("{}{separator} is here.", capitalize(name)));
    }
    let open: Vec<String> = summary
        .exits
        .iter()
        .filter(|exit| exit.open)
        .map(|exit| phrase_of(&exit.direction).to_owned())
        .collect();
    if !open.is_empty() {
        out.push(format!("From here you can go {}.", join_list(&open, "or")));
    }
    for exit in summary.exits.iter().filter(|exit| !exit.open) {
        out.push(format!(
            "The way {} is closed for now.",
            phrase_of(&exit.direction)
        ));
    }
    out
}

fn inventory(seed: u64, summary: &WorldSummary) -> String {
    if summary.inventory.is_empty() {
        return pick(seed, "empty", phrases::EMPTY_HANDS).to_owned();
    }
    let names: Vec<String> = summary
        .inventory
        .iter()
        .map(|item| item.name.clone())
        .collect();
    format!("You're carrying {}.", join_list(&names, "and"))
}

fn phrase_of(direction: &str) -> &str {
    Direction::parse(direction).map_or(direction, |d| d.phrase())
}

fn object_name(summary: &WorldSummary, id: &str) -> String {
    summary
        .inventory
        .iter()
        .chain(&summary.items_here)
        .find(|object| object.id == id)
        .map_or_else(|| id.replace('_', " "), |object| object.name.clone())
}

/// Fills a template and capitalises the sentence.
fn fill(template: &str, summary: &WorldSummary, dir: &str, item: &str) -> String {
    let place = summary.location_name.as_str();
    let filled = template
        .replace("{Place}", &capitalize(place))
        .replace("{place}", place)
        .replace("{dir}", dir)
        .replace("{item}", item);
    // An empty direction leaves a double space ("You wander  and arrive").
    capitalize(&filled.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// One to three things the player could do next, most caring first.
fn suggest(
    inputs: &Inputs<'_>,
    summary: Option<&WorldSummary>,
    mood: &Mood,
    events: &[Event<'_>],
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut add = |suggestion: String| {
        if !out.contains(&suggestion) {
            out.push(suggestion);
        }
    };
    if mood.needs_grounding() && !events.contains(&Event::Rested) {
        add("take a slow breath".to_owned());
    } else if mood.shown() && mood.valence < 0.0 {
        add("rest for a moment".to_owned());
    }
    let Some(summary) = summary else {
        add("look around".to_owned());
        return out;
    };
    if summary.exits.iter().any(|exit| !exit.open)
        && let Some(item) = summary.inventory.first()
    {
        add(format!("use {}", definite(&item.name)));
    }
    if let Some(character) = summary.characters_here.first() {
        add(format!("talk to {}", short_name(character)));
    }
    if let Some(item) = summary.items_here.first() {
        add(format!("look at {}", definite(&item.name)));
    }
    let open: Vec<&str> = summary
        .exits
        .iter()
        .filter(|e| e.open)
        .map(|e| e.direction.as_str())
        .collect();
    let direction = pick(inputs.seed, "suggest-exit", &open);
    if !direction.is_empty() {
        add(format!("go {direction}"));
    }
    add("look around".to_owned());
    out.truncate(3);
    out
}

fn short_name(character: &WorldObject) -> &str {
    character
        .name
        .split(',')
        .next()
        .unwrap_or(&character.name)
        .trim()
}

/// The plainer reply asked for when the previous one was blocked by the safety check: no
/// feelings, no world prose, only where the player is and what plainly happened. From the
/// second round on, only a pause and the place.
pub(super) fn compose_plain(inputs: &Inputs<'_>, round: u32) -> Composed {
    let summary = inputs.wba.and_then(|wba| wba.world.as_ref());
    let mut sentences = vec![phrases::PAUSE.to_owned()];
    if let Some(summary) = summary {
        if !summary.location_name.is_empty() {
            sentences.push(format!("You are at {}.", summary.location_name));
        }
        if round <= 1 {
            let events: Vec<Event<'_>> = inputs
                .wba
                .map(|wba| wba.events.iter().map(|e| parse_event(e)).collect())
                .unwrap_or_default();
            for event in events {
                match event {
                    Event::Took(id) => sentences.push(format!(
                        "You are carrying {} now.",
                        definite(&object_name(summary, id))
                    )),
                    Event::Dropped(id) => sentences.push(format!(
                        "You set down {}.",
                        definite(&object_name(summary, id))
                    )),
                    Event::Opened(direction) => {
                        sentences.push(format!("The way {} is open now.", phrase_of(direction)));
                    }
                    _ => {}
                }
            }
            let open: Vec<String> = summary
                .exits
                .iter()
                .filter(|exit| exit.open)
                .map(|exit| phrase_of(&exit.direction).to_owned())
                .collect();
            if !open.is_empty() {
                sentences.push(format!("You can go {}.", join_list(&open, "or")));
            }
        }
    }
    let mut reply = Reply::default();
    reply.paragraph(&sentences);
    Composed {
        reply,
        technique: "narration",
        suggestions: vec!["look around".to_owned()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_with_free_text_keep_their_colons() {
        assert_eq!(
            parse_event("said:mara:Mara says: \"hello\""),
            Event::Said("Mara says: \"hello\"")
        );
        assert_eq!(
            parse_event("examined:item:lantern:A lantern: old"),
            Event::Examined("A lantern: old")
        );
        assert_eq!(
            parse_event("moved:lighthouse:north"),
            Event::Moved { direction: "north" }
        );
        assert_eq!(
            parse_event("effect:lantern:It glows."),
            Event::Effect("It glows.")
        );
        assert_eq!(parse_event("something-new"), Event::Other);
    }

    #[test]
    fn the_sensory_cue_matches_whole_words_only() {
        let summary = |description: &str| WorldSummary {
            location_description: description.to_owned(),
            ..Default::default()
        };
        assert_eq!(
            sensory_cue(&summary("Dust drifts past a small window.")),
            "the ground beneath your feet"
        );
        assert_eq!(
            sensory_cue(&summary("The wind moves the grass.")),
            "the cool air on your skin"
        );
        assert_eq!(
            sensory_cue(&summary("Small waves come and go.")),
            "the soft sound of the water"
        );
    }

    #[test]
    fn unset_intensity_means_low() {
        assert_eq!(Intensity::from_proto(0), Intensity::Low);
        assert_eq!(Intensity::from_proto(2), Intensity::Medium);
        assert_eq!(Intensity::from_proto(99), Intensity::Low);
    }
}
