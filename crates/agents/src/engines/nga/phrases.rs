//! The narrator's phrasings, several per moment so replies do not feel canned; one is chosen
//! per turn by a hash of the turn id.
//!
//! The voice: second person, present tense, calm, never hurrying, never judging, never
//! diagnosing or prescribing. Reflections name a feeling tentatively ("it sounds like") and
//! never repeat the player's own words back, which keeps avoided topics and anything unsafe
//! the player typed out of the reply. `{place}`, `{dir}`, `{item}` and `{cue}` are filled in.

use crate::engines::tone::Feeling;

/// First words for a feeling the player shared.
pub(super) fn reflection(feeling: Feeling) -> &'static [&'static str] {
    match feeling {
        Feeling::Sad => &[
            "It sounds like today has been heavy.",
            "That sounds like a lot to carry.",
            "It sounds like something is weighing on you.",
        ],
        Feeling::Anxious => &[
            "It sounds like there's a lot of unease in you right now.",
            "That unsettled, worried feeling can be hard to sit with.",
            "It sounds like things feel like a bit much right now.",
        ],
        Feeling::Angry => &[
            "It sounds like something has really frustrated you.",
            "That sounds frustrating, and it makes sense to feel that way.",
            "It sounds like there's some anger here, and that's allowed.",
        ],
        Feeling::Tired => &[
            "It sounds like you're running low on energy.",
            "That sounds tiring. It's all right to go slowly.",
            "It sounds like you could use some rest.",
        ],
        Feeling::Hopeful => &[
            "There's a little lightness in what you said. It's good to notice that.",
            "It sounds like something feels a bit brighter.",
            "That sounds hopeful, and it's worth pausing to enjoy.",
        ],
        Feeling::Calm => &[
            "It sounds like there's some calm in you right now.",
            "That sense of ease is worth noticing.",
            "It sounds like you've found a quiet moment.",
        ],
        Feeling::Neutral => &[
            "Thank you for sharing how you feel.",
            "Thank you for telling me a little about how you are.",
        ],
    }
}

/// For a memory or a reflection on the player's life.
pub(super) const MEMORY: &[&str] = &[
    "Memories can surface in quiet places like this.",
    "It sounds like something here stirred a memory.",
    "Sometimes a place brings back things we carry with us.",
];

/// A second, validating sentence (medium and high intensity).
pub(super) const VALIDATION: &[&str] = &[
    "Whatever you're feeling is welcome here.",
    "There's no right or wrong way to feel.",
    "You don't need to change anything about it right now.",
];

/// An invitation to stay with it a little longer (high intensity only).
pub(super) const INVITATION: &[&str] = &[
    "If you want to, you could say a little more about it, or simply stay with it for a moment.",
    "If it feels right, you might notice where in your body you feel it most.",
];

/// For words of obvious distress: not alone, and where to turn. Never advice about health.
pub(super) const DISTRESS: &[&str] = &[
    "It sounds like things are really hard right now, and I'm glad you said something.",
    "That sounds really painful. Thank you for telling me.",
];

pub(super) const SUPPORT: &str = "You don't have to carry this alone. If you feel unsafe, or think \
     you might hurt yourself, please reach out right now to someone you trust or to a local \
     crisis line.";

/// One breath, offered lightly (low intensity).
pub(super) const BREATH_LIGHT: &[&str] = &[
    "If it helps, let your next breath be a little slower than the last.",
    "If you like, let your shoulders soften and take one easy breath.",
];

/// A paced breath (medium and high intensity).
pub(super) const BREATH_PACED: &[&str] = &[
    "If it helps, try breathing in slowly for four counts, and out for six.",
    "You might try one slow breath in through your nose, and a longer breath out.",
];

/// Noticing the surroundings; `{cue}` is something in the current place.
pub(super) const NOTICE: &[&str] = &[
    "Then, if you like, notice five things you can see around you, and listen for {cue}.",
    "When you're ready, let your eyes rest on a few things around you, and notice {cue}.",
];

/// The fuller exercise (high intensity).
pub(super) const NOTICE_DEEP: &[&str] = &[
    "Notice five things you can see, four things you can hear, like {cue}, and three things you can touch.",
];

pub(super) const SLOW_DOWN: &[&str] = &[
    "Let's slow down together for a moment.",
    "There's no hurry at all. Let's pause here together.",
];

pub(super) const NO_RUSH: &[&str] = &[
    "There's no rush to move on.",
    "You can stay here as long as you need.",
];

/// Resting in the story.
pub(super) const REST: &[&str] = &[
    "You find a quiet spot in {place} and let yourself be still for a while.",
    "You settle down in {place} and rest, with nowhere you need to be.",
];

/// Arriving somewhere for the first time.
pub(super) const ARRIVE: &[&str] = &[
    "You make your way {dir} to {place}.",
    "You wander {dir} and arrive at {place}.",
    "You head {dir}, unhurried, and come to {place}.",
];

/// Arriving somewhere again.
pub(super) const RETURN: &[&str] = &[
    "You make your way {dir}, back to {place}.",
    "You wander {dir} and find yourself at {place} again.",
];

pub(super) const LOOK: &[&str] = &[
    "You take a slow look around {place}.",
    "You pause and take in {place}.",
];

pub(super) const TAKE: &[&str] = &[
    "You pick up {item}. It's yours to carry for now.",
    "You pick up {item} and hold onto it gently.",
    "You take {item} with you.",
];

pub(super) const DROP: &[&str] = &["You set {item} down here.", "You lay {item} down gently."];

pub(super) const EMPTY_HANDS: &[&str] = &[
    "Your hands are empty for now, and that's all right.",
    "You aren't carrying anything just now. There's a lightness in that.",
];

/// After something could not be done: never shame, always an easy way on.
pub(super) const ENCOURAGE: &[&str] = &[
    "That's all right. There's no wrong way to explore.",
    "No harm done. You can try something else whenever you're ready.",
    "That's okay. Take your time.",
];

/// A quiet anchor back into the scene after a feeling was shared.
pub(super) const ANCHOR: &[&str] = &[
    "Around you, {place} stays quiet and unhurried.",
    "{Place} is still here around you, patient and calm.",
];

pub(super) const HELP: &str = "You can walk in any direction (north, south, east, west, up, down, \
     in or out), look around, look at things, take and use what you find, talk to the people \
     you meet, rest, or simply say how you feel. There's no wrong way to play.";

pub(super) const QUIT: &str = "Thank you for spending this time here. You can close the story \
     whenever you like, and it will be waiting if you come back.";

/// When there is nothing else to say, or every other sentence was filtered out.
pub(super) const PAUSE: &str = "You pause for a moment. There's no hurry here.";
