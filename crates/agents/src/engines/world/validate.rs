//! What makes a world file sound, checked once at load.
//!
//! A player must never meet a broken world: an exit into nowhere, an item in a place that does
//! not exist, a lock no flag can open. Every problem is reported with the path of the
//! offending key (`places[2].exits.north`) so the author can fix the file without guessing, and
//! all problems are reported at once rather than one per attempt.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::{Problem, model::WorldDef, terms::Term};

/// Every problem of `def`; empty when the world is sound.
pub(super) fn validate(def: &WorldDef, terms: &[Term]) -> Vec<Problem> {
    let mut check = Checker::default();
    check.id("id", &def.id);
    check.text("title", &def.title);
    for name in def.flags.keys() {
        check.id(&format!("flags.{name}"), name);
    }
    if def.places.is_empty() {
        check.problem("places", "a world needs at least one place");
    }
    check_ids(&mut check, def);
    let places: BTreeSet<&str> = def.places.iter().map(|p| p.id.as_str()).collect();
    if !places.contains(def.start.as_str()) {
        check.problem("start", format!("unknown place {:?}", def.start));
    }
    check_places(&mut check, def, &places);
    check_items_and_characters(&mut check, def, &places);
    check_uses(&mut check, def, &places);
    check_terms(&mut check, terms);
    check_reachability(&mut check, def);
    check.problems
}

#[derive(Default)]
struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn problem(&mut self, path: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.to_owned(),
            message: message.into(),
        });
    }

    /// Ids end up in Redis values, events ("took:lantern") and paths ("flags.cave_lit"), so
    /// they keep to characters that are safe in all of them.
    fn id(&mut self, path: &str, id: &str) {
        let valid = !id.is_empty()
            && id.len() <= 64
            && id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if !valid {
            self.problem(
                path,
                format!("{id:?} must be 1-64 lowercase letters, digits, '_' or '-'"),
            );
        }
    }

    fn text(&mut self, path: &str, text: &str) {
        if text.trim().is_empty() {
            self.problem(path, "must not be empty");
        }
    }

    fn flag(&mut self, path: &str, flag: &str, def: &WorldDef) {
        if !def.flags.contains_key(flag) {
            self.problem(
                path,
                format!("unknown flag {flag:?} (declare it under `flags`)"),
            );
        }
    }

    fn place(&mut self, path: &str, place: &str, places: &BTreeSet<&str>) {
        if !places.contains(place) {
            self.problem(path, format!("unknown place {place:?}"));
        }
    }
}

/// Places, items and characters share one id space, because a player can "look at" any of them
/// and the answer must not depend on which list happens to be searched first.
fn check_ids(check: &mut Checker, def: &WorldDef) {
    let places = def
        .places
        .iter()
        .enumerate()
        .map(|(i, p)| (format!("places[{i}]"), &p.id));
    let items = def
        .items
        .iter()
        .enumerate()
        .map(|(i, p)| (format!("items[{i}]"), &p.id));
    let characters = def
        .characters
        .iter()
        .enumerate()
        .map(|(i, p)| (format!("characters[{i}]"), &p.id));
    let mut seen: BTreeMap<&str, String> = BTreeMap::new();
    for (path, id) in places.chain(items).chain(characters) {
        check.id(&format!("{path}.id"), id);
        if let Some(first) = seen.get(id.as_str()) {
            check.problem(
                &format!("{path}.id"),
                format!("duplicate id {id:?} (first used at {first})"),
            );
        } else {
            seen.insert(id, path);
        }
    }
}

fn check_places(check: &mut Checker, def: &WorldDef, places: &BTreeSet<&str>) {
    for (i, place) in def.places.iter().enumerate() {
        let path = format!("places[{i}]");
        check.text(&format!("{path}.name"), &place.name);
        check.text(&format!("{path}.description"), &place.description);
        for (v, variant) in place.variants.iter().enumerate() {
            check.flag(&format!("{path}.variants[{v}].when"), &variant.when, def);
            check.text(
                &format!("{path}.variants[{v}].description"),
                &variant.description,
            );
        }
        for (direction, exit) in &place.exits {
            let exit_path = format!("{path}.exits.{}", direction.as_str());
            check.place(&format!("{exit_path}.to"), &exit.to, places);
            if exit.to == place.id {
                check.problem(
                    &format!("{exit_path}.to"),
                    "an exit must lead somewhere else",
                );
            }
            if let Some(flag) = &exit.locked_by {
                check.flag(&format!("{exit_path}.locked_by"), flag, def);
            }
        }
    }
}

fn check_items_and_characters(check: &mut Checker, def: &WorldDef, places: &BTreeSet<&str>) {
    for (i, item) in def.items.iter().enumerate() {
        let path = format!("items[{i}]");
        check.text(&format!("{path}.name"), &item.name);
        check.text(&format!("{path}.description"), &item.description);
        check.place(&format!("{path}.location"), &item.location, places);
    }
    for (i, character) in def.characters.iter().enumerate() {
        let path = format!("characters[{i}]");
        check.text(&format!("{path}.name"), &character.name);
        check.text(&format!("{path}.description"), &character.description);
        check.place(&format!("{path}.location"), &character.location, places);
        if character.dialogue.is_empty() {
            check.problem(&format!("{path}.dialogue"), "needs at least one line");
        }
        for (l, line) in character.dialogue.iter().enumerate() {
            check.text(&format!("{path}.dialogue[{l}]"), line);
        }
        for (w, lines) in character.dialogue_when.iter().enumerate() {
            let when_path = format!("{path}.dialogue_when[{w}]");
            check.flag(&format!("{when_path}.when"), &lines.when, def);
            if lines.lines.is_empty() {
                check.problem(&format!("{when_path}.lines"), "needs at least one line");
            }
        }
    }
}

fn check_uses(check: &mut Checker, def: &WorldDef, places: &BTreeSet<&str>) {
    for (i, effect) in def.uses.iter().enumerate() {
        let path = format!("uses[{i}]");
        if !def.items.iter().any(|item| item.id == effect.item) {
            check.problem(
                &format!("{path}.item"),
                format!("unknown item {:?}", effect.item),
            );
        }
        if let Some(place) = &effect.place {
            check.place(&format!("{path}.place"), place, places);
        }
        if let Some(target) = &effect.target {
            let known = def.items.iter().any(|item| &item.id == target)
                || def
                    .characters
                    .iter()
                    .any(|character| &character.id == target);
            if !known {
                check.problem(
                    &format!("{path}.target"),
                    format!("unknown item or character {target:?}"),
                );
            }
        }
        for flag in effect.sets.keys() {
            check.flag(&format!("{path}.sets.{flag}"), flag, def);
        }
        check.text(&format!("{path}.text"), &effect.text);
    }
}

/// One phrase may name one thing only; otherwise "take the stone" would have to guess.
fn check_terms(check: &mut Checker, terms: &[Term]) {
    let mut owners: BTreeMap<&[String], &Term> = BTreeMap::new();
    for term in terms {
        match owners.get(term.words.as_slice()) {
            Some(owner) if (owner.kind, &owner.id) != (term.kind, &term.id) => {
                check.problem(
                    &term.origin,
                    format!(
                        "{:?} already names {} {:?} ({})",
                        term.words.join(" "),
                        owner.kind.as_str(),
                        owner.id,
                        owner.origin
                    ),
                );
            }
            Some(_) => {}
            None => {
                owners.insert(&term.words, term);
            }
        }
    }
}

/// A place no exit leads to can never be visited; that is always a mistake in the file.
fn check_reachability(check: &mut Checker, def: &WorldDef) {
    let mut reached: BTreeSet<&str> = BTreeSet::new();
    let mut queue: VecDeque<&str> = VecDeque::from([def.start.as_str()]);
    while let Some(id) = queue.pop_front() {
        if !reached.insert(id) {
            continue;
        }
        if let Some(place) = def.places.iter().find(|p| p.id == id) {
            queue.extend(place.exits.values().map(|exit| exit.to.as_str()));
        }
    }
    if !reached.contains(def.start.as_str()) || def.places.iter().all(|p| p.id != def.start) {
        return;
    }
    for (i, place) in def.places.iter().enumerate() {
        if !reached.contains(place.id.as_str()) {
            check.problem(
                &format!("places[{i}]"),
                format!("{:?} cannot be reached from the start place", place.id),
            );
        }
    }
}
