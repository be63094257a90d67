//! The world file's schema and the validated [`World`] built from it.
//!
//! The YAML maps one to one onto these structs (unknown keys are errors, so a misspelt
//! `locked_by` is caught at load rather than silently ignored). A `World` only exists after
//! validation, which is why its lookups can promise that every id they return resolves.

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    path::Path,
};

use serde::{Deserialize, Serialize};

use super::{
    Error,
    terms::{Term, ThingKind, find_terms, phrase_words, terms_of},
    validate,
};

/// A way out of a place. The eight directions are all the IPA understands, so they are all a
/// world may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    North,
    South,
    East,
    West,
    Up,
    Down,
    In,
    Out,
}

impl Direction {
    pub const ALL: [Direction; 8] = [
        Direction::North,
        Direction::South,
        Direction::East,
        Direction::West,
        Direction::Up,
        Direction::Down,
        Direction::In,
        Direction::Out,
    ];

    /// The canonical name, as in the world file and `WorldExit.direction`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::North => "north",
            Direction::South => "south",
            Direction::East => "east",
            Direction::West => "west",
            Direction::Up => "up",
            Direction::Down => "down",
            Direction::In => "in",
            Direction::Out => "out",
        }
    }

    /// Reads a direction word as players type it: "n", "north", "upstairs", "inside", ...
    pub fn parse(word: &str) -> Option<Direction> {
        Some(match word {
            "n" | "north" | "northward" | "northwards" => Direction::North,
            "s" | "south" | "southward" | "southwards" => Direction::South,
            "e" | "east" | "eastward" | "eastwards" => Direction::East,
            "w" | "west" | "westward" | "westwards" => Direction::West,
            "u" | "up" | "upstairs" | "upward" | "upwards" => Direction::Up,
            "d" | "down" | "downstairs" | "downward" | "downwards" => Direction::Down,
            "in" | "inside" | "inward" | "inwards" => Direction::In,
            "out" | "outside" | "outward" | "outwards" => Direction::Out,
            _ => return None,
        })
    }

    /// How narration says "going this way": "north", "up", "inside", "outside".
    pub fn phrase(self) -> &'static str {
        match self {
            Direction::In => "inside",
            Direction::Out => "outside",
            other => other.as_str(),
        }
    }
}

/// A place the player can be in.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Place {
    pub id: String,
    /// Display name with its article, as narration uses it ("the quiet harbour").
    pub name: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    pub description: String,
    /// Descriptions that replace `description` while a flag is set; the first that applies wins.
    #[serde(default)]
    pub variants: Vec<Variant>,
    #[serde(default)]
    pub exits: BTreeMap<Direction, Exit>,
}

/// A description that applies while flag `when` is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    pub when: String,
    pub description: String,
}

/// Where an exit leads. Written either as a bare place id or as a map with `to`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "ExitDef")]
pub struct Exit {
    /// Id of the place it leads to.
    pub to: String,
    /// The exit is locked until this flag is set (e.g. `cave_lit`).
    pub locked_by: Option<String>,
    /// What the player is told, kindly, when they try a locked exit.
    pub locked_text: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ExitDef {
    To(String),
    Full(FullExit),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FullExit {
    to: String,
    #[serde(default)]
    locked_by: Option<String>,
    #[serde(default)]
    locked_text: Option<String>,
}

impl From<ExitDef> for Exit {
    fn from(def: ExitDef) -> Exit {
        match def {
            ExitDef::To(to) => Exit {
                to,
                locked_by: None,
                locked_text: None,
            },
            ExitDef::Full(full) => Exit {
                to: full.to,
                locked_by: full.locked_by,
                locked_text: full.locked_text,
            },
        }
    }
}

/// A thing in the world.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Item {
    pub id: String,
    /// Display name with its indefinite article ("an old brass lantern").
    pub name: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    pub description: String,
    /// Whether the player can carry it.
    #[serde(default = "portable_by_default")]
    pub portable: bool,
    /// Id of the place where it lies at the start.
    pub location: String,
    /// Why it stays where it is, told when the player tries to take it.
    #[serde(default)]
    pub fixed_text: Option<String>,
    /// What using it does when no `uses` effect applies.
    #[serde(default)]
    pub use_text: Option<String>,
}

fn portable_by_default() -> bool {
    true
}

/// Someone the player can talk to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Character {
    pub id: String,
    /// Display name ("Mara, the tea keeper").
    pub name: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    pub description: String,
    /// Id of the place where they are.
    pub location: String,
    /// What talking to them gives, one line per conversation, in turn. Each line is narration
    /// ("Mara smiles. \"Sit as long as you like.\""), so the author chooses the voice.
    pub dialogue: Vec<String>,
    /// Lines that replace `dialogue` while a flag is set; the first that applies wins.
    #[serde(default)]
    pub dialogue_when: Vec<FlagLines>,
}

/// Lines that apply while flag `when` is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlagLines {
    pub when: String,
    pub lines: Vec<String>,
}

/// What using an item does, in a place or on a target.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UseEffect {
    /// Id of the item used.
    pub item: String,
    /// Only in this place (any place when unset).
    #[serde(default)]
    pub place: Option<String>,
    /// Only on this item or character (none needed when unset).
    #[serde(default)]
    pub target: Option<String>,
    /// Flags set (or cleared) by the use.
    #[serde(default)]
    pub sets: BTreeMap<String, bool>,
    /// What happens, told to the player.
    pub text: String,
    /// Told when every flag in `sets` already holds.
    #[serde(default)]
    pub already_text: Option<String>,
}

/// The world file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WorldDef {
    pub id: String,
    pub title: String,
    #[serde(default)]
    pub intro: String,
    pub start: String,
    #[serde(default)]
    pub flags: BTreeMap<String, bool>,
    pub places: Vec<Place>,
    #[serde(default)]
    pub items: Vec<Item>,
    #[serde(default)]
    pub characters: Vec<Character>,
    #[serde(default)]
    pub uses: Vec<UseEffect>,
}

/// A validated world: every exit, location, flag and target it names exists, and every term
/// names one thing only.
#[derive(Debug, Clone)]
pub struct World {
    def: WorldDef,
    places: HashMap<String, usize>,
    items: HashMap<String, usize>,
    characters: HashMap<String, usize>,
    terms: Vec<Term>,
}

impl World {
    /// Parses and validates a world from YAML; `origin` names the source in errors (a path).
    pub fn from_yaml(origin: &str, yaml: &str) -> Result<World, Error> {
        let def: WorldDef = serde_yaml::from_str(yaml).map_err(|source| Error::Parse {
            origin: origin.to_owned(),
            source,
        })?;
        let terms = all_terms(&def);
        let problems = validate::validate(&def, &terms);
        if !problems.is_empty() {
            return Err(Error::Invalid {
                origin: origin.to_owned(),
                problems,
            });
        }
        let index = |ids: Vec<&String>| -> HashMap<String, usize> {
            ids.into_iter()
                .enumerate()
                .map(|(i, id)| (id.clone(), i))
                .collect()
        };
        Ok(World {
            places: index(def.places.iter().map(|p| &p.id).collect()),
            items: index(def.items.iter().map(|i| &i.id).collect()),
            characters: index(def.characters.iter().map(|c| &c.id).collect()),
            terms,
            def,
        })
    }

    /// Reads and validates one world file.
    pub fn load(path: &Path) -> Result<World, Error> {
        let yaml = fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        World::from_yaml(&path.display().to_string(), &yaml)
    }

    /// Reads every `<world id>.yaml` in `dir`, sorted by id. A world whose id differs from its
    /// file name is an error, because sessions name their world by that id.
    pub fn load_dir(dir: &Path) -> Result<Vec<World>, Error> {
        let read_error = |source| Error::Read {
            path: dir.to_owned(),
            source,
        };
        let mut paths = Vec::new();
        for entry in fs::read_dir(dir).map_err(read_error)? {
            let path = entry.map_err(read_error)?.path();
            if path
                .extension()
                .is_some_and(|ext| ext == "yaml" || ext == "yml")
            {
                paths.push(path);
            }
        }
        paths.sort();
        let mut worlds: Vec<World> = Vec::new();
        for path in paths {
            let world = World::load(&path)?;
            let stem = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_owned();
            if world.id() != stem {
                return Err(Error::IdMismatch {
                    path,
                    id: world.id().to_owned(),
                    expected: stem,
                });
            }
            if worlds.iter().any(|known| known.id() == world.id()) {
                return Err(Error::DuplicateWorld {
                    path,
                    id: world.id().to_owned(),
                });
            }
            worlds.push(world);
        }
        if worlds.is_empty() {
            return Err(Error::NoWorlds {
                path: dir.to_owned(),
            });
        }
        Ok(worlds)
    }

    pub fn id(&self) -> &str {
        &self.def.id
    }

    pub fn title(&self) -> &str {
        &self.def.title
    }

    /// Told once, when a session begins.
    pub fn intro(&self) -> &str {
        &self.def.intro
    }

    /// Id of the place where every session starts.
    pub fn start(&self) -> &str {
        &self.def.start
    }

    /// Every flag with its value at the start of a session.
    pub fn default_flags(&self) -> &BTreeMap<String, bool> {
        &self.def.flags
    }

    pub fn places(&self) -> &[Place] {
        &self.def.places
    }

    pub fn items(&self) -> &[Item] {
        &self.def.items
    }

    pub fn characters(&self) -> &[Character] {
        &self.def.characters
    }

    pub fn uses(&self) -> &[UseEffect] {
        &self.def.uses
    }

    /// The terms that name the world's things.
    pub fn terms(&self) -> &[Term] {
        &self.terms
    }

    pub fn place(&self, id: &str) -> Option<&Place> {
        self.places.get(id).and_then(|&i| self.def.places.get(i))
    }

    pub fn item(&self, id: &str) -> Option<&Item> {
        self.items.get(id).and_then(|&i| self.def.items.get(i))
    }

    pub fn character(&self, id: &str) -> Option<&Character> {
        self.characters
            .get(id)
            .and_then(|&i| self.def.characters.get(i))
    }

    /// Which thing `phrase` refers to: an id, a whole term ("the tea house"), or else the first
    /// term inside it ("the lantern in my bag" → the lantern).
    pub fn resolve(&self, phrase: &str) -> Option<(ThingKind, &str)> {
        let trimmed = phrase.trim();
        if let Some(place) = self.place(trimmed) {
            return Some((ThingKind::Place, &place.id));
        }
        if let Some(item) = self.item(trimmed) {
            return Some((ThingKind::Item, &item.id));
        }
        if let Some(character) = self.character(trimmed) {
            return Some((ThingKind::Character, &character.id));
        }
        let words = phrase_words(phrase);
        let whole = self.terms.iter().find(|term| term.words == words);
        whole
            .or_else(|| {
                find_terms(&self.terms, &words)
                    .first()
                    .map(|found| found.term)
            })
            .map(|term| (term.kind, term.id.as_str()))
    }

    /// The description of a place under the given flags.
    pub fn describe<'w>(&'w self, place: &'w Place, flags: &BTreeMap<String, bool>) -> &'w str {
        place
            .variants
            .iter()
            .find(|variant| flag_set(flags, &variant.when))
            .map_or(place.description.as_str(), |variant| &variant.description)
    }

    /// The lines a character speaks under the given flags.
    pub fn dialogue<'w>(
        &'w self,
        character: &'w Character,
        flags: &BTreeMap<String, bool>,
    ) -> &'w [String] {
        character
            .dialogue_when
            .iter()
            .find(|lines| flag_set(flags, &lines.when) && !lines.lines.is_empty())
            .map_or(character.dialogue.as_slice(), |lines| &lines.lines)
    }
}

/// Whether an exit can be taken under the given flags.
pub(super) fn exit_open(exit: &Exit, flags: &BTreeMap<String, bool>) -> bool {
    exit.locked_by
        .as_ref()
        .is_none_or(|flag| flag_set(flags, flag))
}

pub(super) fn flag_set(flags: &BTreeMap<String, bool>, name: &str) -> bool {
    flags.get(name).copied().unwrap_or(false)
}

fn all_terms(def: &WorldDef) -> Vec<Term> {
    let places = def.places.iter().enumerate().flat_map(|(i, p)| {
        terms_of(
            ThingKind::Place,
            &p.id,
            &p.name,
            &p.aliases,
            &format!("places[{i}]"),
        )
    });
    let items = def.items.iter().enumerate().flat_map(|(i, item)| {
        terms_of(
            ThingKind::Item,
            &item.id,
            &item.name,
            &item.aliases,
            &format!("items[{i}]"),
        )
    });
    let characters = def.characters.iter().enumerate().flat_map(|(i, c)| {
        terms_of(
            ThingKind::Character,
            &c.id,
            &c.name,
            &c.aliases,
            &format!("characters[{i}]"),
        )
    });
    places.chain(items).chain(characters).collect()
}
