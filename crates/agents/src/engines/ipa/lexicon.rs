//! The words of the built-in grammar: command phrases and their intents, filler openings
//! people put before a command, the phrases that mark feelings and reflection, and common
//! words the spelling fixer must leave alone.
//!
//! Tables rather than code, so adding a synonym is one line and the rules stay readable.

use crate::engines::world::Direction;

/// What the player wants to do, as the `IpaOutput.intent` strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    Move,
    Look,
    Examine,
    Take,
    Drop,
    Use,
    Talk,
    Inventory,
    Help,
    Reflect,
    ExpressFeeling,
    Rest,
    Quit,
    Unknown,
}

impl Intent {
    /// Every intent, in the order of the contract's vocabulary.
    pub const ALL: [Intent; 14] = [
        Intent::Move,
        Intent::Look,
        Intent::Examine,
        Intent::Take,
        Intent::Drop,
        Intent::Use,
        Intent::Talk,
        Intent::Inventory,
        Intent::Help,
        Intent::Reflect,
        Intent::ExpressFeeling,
        Intent::Rest,
        Intent::Quit,
        Intent::Unknown,
    ];

    /// Reads a wire string back; `None` for anything outside the vocabulary.
    pub fn parse(label: &str) -> Option<Intent> {
        Intent::ALL
            .into_iter()
            .find(|intent| intent.as_str() == label)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Intent::Move => "move",
            Intent::Look => "look",
            Intent::Examine => "examine",
            Intent::Take => "take",
            Intent::Drop => "drop",
            Intent::Use => "use",
            Intent::Talk => "talk",
            Intent::Inventory => "inventory",
            Intent::Help => "help",
            Intent::Reflect => "reflect",
            Intent::ExpressFeeling => "express_feeling",
            Intent::Rest => "rest",
            Intent::Quit => "quit",
            Intent::Unknown => "unknown",
        }
    }
}

/// A command phrase: the words that start the command and what they mean.
#[derive(Debug)]
pub(super) struct Command {
    pub words: &'static [&'static str],
    pub intent: Intent,
    /// Where a movement verb goes when no direction is given ("climb" → up).
    pub direction: Option<Direction>,
    /// True for phrases that are the whole command and take no object ("where am i").
    pub whole: bool,
}

const fn cmd(words: &'static [&'static str], intent: Intent) -> Command {
    Command {
        words,
        intent,
        direction: None,
        whole: false,
    }
}

const fn whole(words: &'static [&'static str], intent: Intent) -> Command {
    Command {
        words,
        intent,
        direction: None,
        whole: true,
    }
}

const fn towards(words: &'static [&'static str], direction: Direction) -> Command {
    Command {
        words,
        intent: Intent::Move,
        direction: Some(direction),
        whole: false,
    }
}

use Intent::{Drop, Examine, Help, Inventory, Look, Move, Quit, Reflect, Rest, Take, Talk, Use};

/// Command phrases. At each position the longest phrase wins, so "take a breath" is rest and
/// "take the lantern" is take.
#[rustfmt::skip]
pub(super) const COMMANDS: &[Command] = &[
    // Rest and breathe.
    whole(&["take", "a", "breath"], Rest), whole(&["take", "a", "deep", "breath"], Rest),
    whole(&["take", "a", "moment"], Rest), whole(&["take", "a", "break"], Rest),
    whole(&["take", "a", "rest"], Rest), whole(&["catch", "my", "breath"], Rest),
    whole(&["have", "a", "rest"], Rest), cmd(&["sit", "down"], Rest), cmd(&["lie", "down"], Rest),
    cmd(&["breathe"], Rest), cmd(&["rest"], Rest), cmd(&["relax"], Rest), cmd(&["pause"], Rest),
    cmd(&["sleep"], Rest), cmd(&["nap"], Rest), cmd(&["meditate"], Rest), cmd(&["wait"], Rest),
    cmd(&["sit"], Rest), whole(&["z"], Rest),
    // Look around.
    whole(&["look", "around"], Look), whole(&["look", "about"], Look),
    whole(&["where", "am", "i"], Look), whole(&["l"], Look),
    cmd(&["look"], Look), cmd(&["observe"], Look), cmd(&["survey"], Look),
    // Examine something.
    cmd(&["look", "at"], Examine), cmd(&["look", "closely", "at"], Examine),
    cmd(&["examine"], Examine), cmd(&["x"], Examine), cmd(&["inspect"], Examine),
    cmd(&["check"], Examine), cmd(&["read"], Examine), cmd(&["study"], Examine),
    cmd(&["search"], Examine), cmd(&["watch"], Examine), cmd(&["describe"], Examine),
    // Take.
    cmd(&["pick", "up"], Take), cmd(&["pick"], Take), cmd(&["take"], Take), cmd(&["get"], Take),
    cmd(&["grab"], Take), cmd(&["collect"], Take), cmd(&["carry"], Take), cmd(&["fetch"], Take),
    // Drop.
    cmd(&["put", "down"], Drop), cmd(&["set", "down"], Drop), cmd(&["drop"], Drop),
    cmd(&["discard"], Drop), cmd(&["put"], Drop),
    // Use.
    cmd(&["turn", "on"], Use), cmd(&["switch", "on"], Use), cmd(&["listen"], Use),
    cmd(&["use"], Use), cmd(&["light"], Use), cmd(&["pour"], Use), cmd(&["drink"], Use),
    cmd(&["smell"], Use), cmd(&["sniff"], Use), cmd(&["hold"], Use), cmd(&["open"], Use),
    cmd(&["unlock"], Use), cmd(&["ring"], Use), cmd(&["play"], Use), cmd(&["wave"], Use),
    cmd(&["give"], Use), cmd(&["show"], Use), cmd(&["write"], Use), cmd(&["touch"], Use),
    // Talk.
    cmd(&["say", "hello"], Talk), cmd(&["say", "hi"], Talk), cmd(&["talk"], Talk),
    cmd(&["speak"], Talk), cmd(&["chat"], Talk), cmd(&["ask"], Talk), cmd(&["greet"], Talk),
    cmd(&["hello"], Talk), cmd(&["hi"], Talk), cmd(&["hey"], Talk), cmd(&["pet"], Talk),
    cmd(&["stroke"], Talk),
    // Inventory.
    whole(&["what", "am", "i", "carrying"], Inventory), whole(&["what", "do", "i", "have"], Inventory),
    whole(&["what", "have", "i", "got"], Inventory), whole(&["check", "inventory"], Inventory),
    whole(&["check", "my", "bag"], Inventory), whole(&["inventory"], Inventory),
    whole(&["inv"], Inventory), whole(&["i"], Inventory), whole(&["bag"], Inventory), whole(&["pockets"], Inventory),
    whole(&["items"], Inventory),
    // Help.
    whole(&["what", "can", "i", "do"], Help), whole(&["how", "do", "i", "play"], Help),
    whole(&["what", "now"], Help), whole(&["help"], Help), whole(&["commands"], Help),
    whole(&["hint"], Help), whole(&["hints"], Help), whole(&["h"], Help),
    // Quit.
    whole(&["exit", "game"], Quit), whole(&["quit", "game"], Quit), whole(&["end", "session"], Quit),
    whole(&["stop", "playing"], Quit), whole(&["i'm", "done"], Quit), whole(&["log", "off"], Quit),
    whole(&["quit"], Quit), whole(&["q"], Quit), whole(&["bye"], Quit), whole(&["goodbye"], Quit),
    whole(&["stop"], Quit), whole(&["farewell"], Quit),
    // Reflect.
    whole(&["reflect"], Reflect), whole(&["remember"], Reflect), whole(&["think"], Reflect),
    // Move.
    cmd(&["go"], Move), cmd(&["walk"], Move), cmd(&["head"], Move), cmd(&["move"], Move),
    cmd(&["run"], Move), cmd(&["travel"], Move), cmd(&["wander"], Move), cmd(&["stroll"], Move),
    cmd(&["return"], Move), cmd(&["step"], Move), cmd(&["come"], Move), cmd(&["proceed"], Move),
    towards(&["climb"], Direction::Up), towards(&["ascend"], Direction::Up),
    towards(&["descend"], Direction::Down), towards(&["enter"], Direction::In),
    towards(&["leave"], Direction::Out), towards(&["exit"], Direction::Out),
];

/// Openings people put before a command ("please", "I want to", "let's"), stripped before the
/// command is read. Longest first at each position.
#[rustfmt::skip]
pub(super) const FILLERS: &[&[&str]] = &[
    &["please"], &["ok"], &["okay"], &["so"], &["then"], &["now"], &["well"], &["um"], &["uh"],
    &["hmm"], &["just"], &["maybe"], &["and"], &["alright"], &["first"], &["next"],
    &["i", "want", "to"], &["i", "wanna"], &["i'd", "like", "to"], &["i", "would", "like", "to"],
    &["i", "need", "to"], &["i'm", "going", "to"], &["i", "am", "going", "to"], &["i'm", "gonna"],
    &["i'm", "going"], &["i", "think", "i'll"], &["i", "think", "i", "will"], &["i", "think"],
    &["i'll"], &["i", "will"], &["let", "me"], &["let's"], &["let", "us"], &["can", "i"],
    &["could", "i"], &["may", "i"], &["can", "you"], &["could", "you"], &["i", "try", "to"],
    &["try", "to"], &["try"], &["i", "should"], &["we"], &["i"],
];

/// Phrases that mark the player reflecting on their life rather than acting in the story.
#[rustfmt::skip]
pub(super) const REFLECTIONS: &[&[&str]] = &[
    &["reminds", "me"], &["remind", "me"], &["reminded", "me"], &["makes", "me", "think"],
    &["made", "me", "think"], &["i", "remember"], &["i", "miss"], &["i", "used", "to"],
    &["when", "i", "was"], &["thinking", "about"], &["i", "keep", "thinking"],
    &["i've", "been", "thinking"], &["makes", "me", "feel"], &["made", "me", "feel"],
];

/// Openings that mark the player saying how they feel.
#[rustfmt::skip]
pub(super) const FEELING_OPENINGS: &[&[&str]] = &[
    &["i", "feel"], &["i", "felt"], &["i'm", "feeling"], &["i", "am", "feeling"], &["feeling"],
    &["i've", "been", "feeling"], &["it", "feels"], &["everything", "feels"],
    &["everything", "is"], &["today", "was"], &["today", "has", "been"], &["it's", "been"],
    &["i", "had", "a"], &["i've", "had", "a"],
];

/// "I'm" and "I am": a feeling word may follow, after a few softeners ("I'm a bit tired").
pub(super) const SELF_OPENINGS: &[&[&str]] = &[&["i'm"], &["i", "am"], &["am"]];

/// Words allowed between "I'm" and a feeling word.
pub(super) const FEELING_MODIFIERS: &[&str] = &[
    "so",
    "really",
    "very",
    "a",
    "bit",
    "little",
    "kind",
    "of",
    "pretty",
    "quite",
    "just",
    "feeling",
    "getting",
    "still",
    "too",
    "kinda",
    "extremely",
    "somewhat",
    "not",
];

/// Words that carry no meaning at the start of an object phrase.
pub(super) const OBJECT_NOISE: &[&str] = &[
    "the", "a", "an", "some", "my", "this", "that", "to", "at", "with", "on", "into", "onto",
    "towards", "toward", "through", "over", "along", "across", "back", "around", "for", "up",
    "again", "please", "of", "upon",
];

/// Where a use command's object ends and its target begins ("give the lavender to Mara").
pub(super) const TARGET_MARKERS: &[&str] = &["on", "with", "to", "at", "onto"];

/// Where a talk command's object ends ("ask Mara about the cave").
pub(super) const TALK_ENDS: &[&str] = &["about", "regarding", "if", "whether", "for"];

/// Everyday words the spelling fixer must never "correct" into a command or a name.
#[rustfmt::skip]
pub(super) const COMMON_WORDS: &[&str] = &[
    "a", "about", "after", "again", "all", "also", "always", "am", "an", "and", "any", "are",
    "around", "as", "at", "away", "back", "bad", "be", "because", "been", "before", "being",
    "best", "better", "big", "bit", "both", "but", "by", "came", "can", "can't", "cold", "could",
    "day", "days", "did", "didn't", "do", "does", "doesn't", "doing", "don't", "done", "each",
    "even", "ever", "every", "everything", "far", "few", "find", "first", "for", "from", "gave",
    "going", "gone", "good", "got", "great", "had", "has", "have", "he", "her", "here", "him",
    "his", "home", "how", "i", "i'd", "i'll", "i'm", "i've", "if", "into", "is", "isn't", "it",
    "it's", "its", "just", "keep", "kind", "know", "last", "late", "left", "less", "life",
    "like", "little", "long", "lot", "made", "make", "makes", "many", "maybe", "me", "mean",
    "more", "most", "much", "must", "my", "myself", "near", "need", "never", "new", "next",
    "nice", "night", "no", "not", "nothing", "now", "of", "off", "old", "on", "once", "one",
    "only", "or", "other", "our", "out", "over", "own", "part", "people", "place", "really",
    "right", "said", "same", "saw", "say", "see", "seem", "seems", "she", "should", "since",
    "small", "so", "some", "something", "still", "such", "sure", "than", "thank", "thanks",
    "that", "that's", "the", "their", "them", "then", "there", "these", "they", "thing",
    "things", "think", "this", "those", "though", "time", "to", "today", "too", "tried",
    "under", "until", "us", "very", "want", "was", "wasn't", "way", "we", "week", "well",
    "went", "were", "what", "what's", "when", "where", "which", "while", "who", "why", "will",
    "with", "without", "won't", "work", "would", "year", "yes", "yet", "you", "your", "yeah",
    "dad", "mum", "mom", "mother", "father", "friend", "friends", "family", "brother",
    "sister", "wife", "husband", "partner", "child", "kids", "school", "job", "sun", "sea",
    "water", "sky", "wind", "rain", "boat", "boats", "door", "stairs", "steps", "room",
    "house", "feel", "feels", "felt", "feeling", "hand", "hands", "head", "heart", "eyes",
    "bake", "cake", "cup", "tea", "fire", "lake", "make", "take", "stay", "talk", "walk",
];
