//! What each intent does to the world: the rules of the game.
//!
//! [`WorldState::apply`] is pure: it reads the current state and the IPA's reading of the
//! input and returns the next state with a report of what changed. An action that cannot
//! happen changes nothing and explains why in a kind voice, never echoing what the player
//! typed (their words may be anything; ours are known to be gentle).
//!
//! Events are `kind:detail` strings, machine-readable at the front and, where the NGA needs
//! words from the world file, human-readable at the end:
//!
//! | event | when |
//! |---|---|
//! | `moved:<place>:<direction>` | the player went somewhere |
//! | `discovered:<place>` | ... for the first time |
//! | `looked:<place>` | the player looked around |
//! | `examined:<kind>:<id>:<description>` | the player looked at a thing or person |
//! | `took:<item>` / `dropped:<item>` | an item changed hands |
//! | `used:<item>` then `effect:<item>:<text>` | an item was used |
//! | `opened:<direction>:<place>` | a use opened an exit from here |
//! | `talked:<character>` then `said:<character>:<line>` | a conversation |
//! | `inventory`, `rested:<place>`, `reflected`, `help`, `quit` | no world effect |
//! | `refused:<code>` | nothing happened; `rejection_reason` says why |

use std::collections::BTreeMap;

use tta_proto::v1::{InputEntity, IpaOutput, WbaOutput};

use super::{
    changes::{ChangeLog, boolean, number, string},
    model::{Direction, Exit, Place, World, exit_open},
    state::WorldState,
    terms::ThingKind,
};
use crate::engines::text::{capitalize, definite, join_list};

/// How an action ended.
enum Outcome {
    Done,
    Refused { code: &'static str, reason: String },
}

fn refuse(code: &'static str, reason: impl Into<String>) -> Outcome {
    Outcome::Refused {
        code,
        reason: reason.into(),
    }
}

impl WorldState {
    /// Applies one turn: the next state and the `WbaOutput` describing the change. The
    /// version goes up by one when anything changed, and only then.
    pub fn apply(&self, world: &World, input: &IpaOutput) -> (WbaOutput, WorldState) {
        let mut next = self.clone();
        let mut log = ChangeLog::default();
        let action = Action {
            world,
            input,
            log: &mut log,
        };
        let outcome = action.run(&mut next);
        match outcome {
            Outcome::Done => {
                if !log.changes.is_empty() {
                    next.version += 1;
                }
                let output = WbaOutput {
                    applied: true,
                    rejection_reason: String::new(),
                    changes: log.changes,
                    events: log.events,
                    world: Some(next.summary(world)),
                    version: next.version,
                };
                (output, next)
            }
            Outcome::Refused { code, reason } => {
                // Whatever an action touched before it gave up is discarded with `next`.
                let output = WbaOutput {
                    applied: false,
                    rejection_reason: reason,
                    changes: Vec::new(),
                    events: vec![format!("refused:{code}")],
                    world: Some(self.summary(world)),
                    version: self.version,
                };
                (output, self.clone())
            }
        }
    }
}

struct Action<'a> {
    world: &'a World,
    input: &'a IpaOutput,
    log: &'a mut ChangeLog,
}

impl Action<'_> {
    fn run(mut self, next: &mut WorldState) -> Outcome {
        let Some(here) = self.world.place(&next.location) else {
            // A reconciled state always has a known location; this keeps the rule total.
            return refuse(
                "lost",
                "You pause, unsure where you are. Try looking around.",
            );
        };
        match self.input.intent.as_str() {
            "move" => self.do_move(next, here),
            "look" => self.look(next),
            "examine" => self.examine(next, here),
            "take" => self.take(next),
            "drop" => self.drop_item(next),
            "use" => self.use_item(next, here),
            "talk" => self.talk(next),
            "inventory" => {
                self.log.event(&["inventory"]);
                Outcome::Done
            }
            "rest" => {
                self.log.event(&["rested", &next.location]);
                Outcome::Done
            }
            "reflect" | "express_feeling" => {
                self.log.event(&["reflected"]);
                Outcome::Done
            }
            "help" => {
                self.log.event(&["help"]);
                Outcome::Done
            }
            "quit" => {
                self.log.event(&["quit"]);
                Outcome::Done
            }
            _ => refuse(
                "unknown_intent",
                "It isn't clear what you'd like to do, and that's all right. You could look \
                 around, go somewhere, or type help.",
            ),
        }
    }

    /// Entities that name things (not directions or feelings), in the order typed.
    fn objects(&self) -> impl Iterator<Item = &InputEntity> {
        self.input
            .entities
            .iter()
            .filter(|e| matches!(e.kind.as_str(), "item" | "character" | "place"))
    }

    fn resolve(&self, entity: &InputEntity) -> Option<(ThingKind, String)> {
        self.world
            .resolve(&entity.value)
            .or_else(|| self.world.resolve(&entity.text))
            .map(|(kind, id)| (kind, id.to_owned()))
    }

    fn first_object(&self) -> Option<Option<(ThingKind, String)>> {
        self.objects().next().map(|entity| self.resolve(entity))
    }

    fn do_move(&mut self, next: &mut WorldState, here: &Place) -> Outcome {
        let target = self
            .objects()
            .filter_map(|e| self.resolve(e))
            .find(|(kind, _)| *kind == ThingKind::Place);
        // "Go in the cave" from the shore names both a direction and a place; the place is
        // what the player means, whenever an exit leads there.
        if let Some((_, id)) = &target
            && let Some((direction, exit)) = here.exits.iter().find(|(_, exit)| &exit.to == id)
        {
            return self.go(next, here, *direction, exit);
        }
        let direction = self
            .input
            .entities
            .iter()
            .filter(|e| e.kind == "direction")
            .find_map(|e| Direction::parse(&e.value));
        if let Some(direction) = direction {
            let Some(exit) = here.exits.get(&direction) else {
                return refuse(
                    "no_exit",
                    format!(
                        "There's no way {} from here. {}",
                        direction.phrase(),
                        exits_hint(self.world, here, &next.flags)
                    ),
                );
            };
            return self.go(next, here, direction, exit);
        }
        let hint = exits_hint(self.world, here, &next.flags);
        match target {
            Some((_, id)) if id == here.id => refuse(
                "already_here",
                format!(
                    "You're already at {}. Take a moment to look around, if you like.",
                    here.name
                ),
            ),
            Some((_, id)) => match here.exits.iter().find(|(_, exit)| exit.to == id) {
                Some((direction, exit)) => self.go(next, here, *direction, exit),
                None => {
                    let name = self
                        .world
                        .place(&id)
                        .map_or("That place", |p| p.name.as_str());
                    refuse(
                        "not_adjacent",
                        format!(
                            "{} isn't a single step from here, but there's no hurry. {hint}",
                            capitalize(name)
                        ),
                    )
                }
            },
            None if self.objects().next().is_some() => refuse(
                "unknown_place",
                format!("You're not sure how to get there from here. {hint}"),
            ),
            None => refuse(
                "no_direction",
                format!("Which way would you like to go? {hint}"),
            ),
        }
    }

    fn go(
        &mut self,
        next: &mut WorldState,
        here: &Place,
        direction: Direction,
        exit: &Exit,
    ) -> Outcome {
        if !exit_open(exit, &next.flags) {
            let reason = exit.locked_text.clone().unwrap_or_else(|| {
                "That way isn't open just now. Perhaps something you find will help.".to_owned()
            });
            return refuse("locked", reason);
        }
        self.log
            .set("player.location", string(&here.id), string(&exit.to));
        next.location = exit.to.clone();
        self.log.event(&["moved", &exit.to, direction.as_str()]);
        if next.visited.insert(exit.to.clone()) {
            self.log.add("player.visited", &exit.to);
            self.log.event(&["discovered", &exit.to]);
        }
        Outcome::Done
    }

    fn look(&mut self, next: &WorldState) -> Outcome {
        self.log.event(&["looked", &next.location]);
        Outcome::Done
    }

    fn examine(&mut self, next: &WorldState, here: &Place) -> Outcome {
        let Some(object) = self.first_object() else {
            return self.look(next);
        };
        match object {
            Some((ThingKind::Item, id)) => {
                let reachable =
                    next.carries(&id) || next.item_locations.get(&id) == Some(&next.location);
                match self.world.item(&id) {
                    Some(item) if reachable => {
                        self.log
                            .event(&["examined", "item", &id, &item.description]);
                        Outcome::Done
                    }
                    _ => refuse("not_here", "You don't see that here."),
                }
            }
            Some((ThingKind::Character, id)) => match self.world.character(&id) {
                Some(character) if character.location == next.location => {
                    self.log
                        .event(&["examined", "character", &id, &character.description]);
                    Outcome::Done
                }
                _ => refuse("not_here", "You don't see them here just now."),
            },
            Some((ThingKind::Place, id)) if id == here.id => self.look(next),
            Some((ThingKind::Place, _)) => refuse("not_here", "You can't see that from here."),
            None => refuse("not_here", "You don't see that here."),
        }
    }

    fn take(&mut self, next: &mut WorldState) -> Outcome {
        let Some(object) = self.first_object() else {
            return refuse(
                "no_object",
                "What would you like to pick up? Looking around shows what's here.",
            );
        };
        let id = match object {
            Some((ThingKind::Item, id)) => id,
            Some((ThingKind::Character, id)) => {
                let name = self
                    .world
                    .character(&id)
                    .map_or("They", |c| short_name(&c.name));
                return refuse(
                    "not_an_item",
                    format!("{name} isn't someone to carry, but you could talk with them."),
                );
            }
            Some((ThingKind::Place, _)) => {
                return refuse("not_an_item", "That isn't something you can carry.");
            }
            None => return refuse("not_here", "You don't see that here."),
        };
        let Some(item) = self.world.item(&id) else {
            return refuse("not_here", "You don't see that here.");
        };
        if next.carries(&id) {
            return refuse(
                "already_carried",
                format!("You're already carrying {}.", definite(&item.name)),
            );
        }
        if next.item_locations.get(&id) != Some(&next.location) {
            return refuse("not_here", "You don't see that here.");
        }
        if !item.portable {
            let reason = item.fixed_text.clone().unwrap_or_else(|| {
                format!(
                    "{} belongs where it is. You can't carry it, but you can still look at it or use it.",
                    capitalize(&definite(&item.name))
                )
            });
            return refuse("not_portable", reason);
        }
        next.item_locations.remove(&id);
        next.inventory.push(id.clone());
        self.log
            .remove(format!("locations.{}.items", next.location), &id);
        self.log.add("player.inventory", &id);
        self.log.event(&["took", &id]);
        Outcome::Done
    }

    fn drop_item(&mut self, next: &mut WorldState) -> Outcome {
        let Some(object) = self.first_object() else {
            return refuse("no_object", "What would you like to set down?");
        };
        let Some((ThingKind::Item, id)) = object.filter(|(_, id)| next.carries(id)) else {
            return refuse("not_carried", "You aren't carrying that.");
        };
        next.inventory.retain(|carried| carried != &id);
        next.item_locations
            .insert(id.clone(), next.location.clone());
        self.log.remove("player.inventory", &id);
        self.log
            .add(format!("locations.{}.items", next.location), &id);
        self.log.event(&["dropped", &id]);
        Outcome::Done
    }

    fn use_item(&mut self, next: &mut WorldState, here: &Place) -> Outcome {
        let resolved: Vec<Option<(ThingKind, String)>> =
            self.objects().map(|entity| self.resolve(entity)).collect();
        let Some(first) = resolved.first() else {
            return refuse("no_object", "What would you like to use?");
        };
        let Some((ThingKind::Item, id)) = first.clone() else {
            return refuse("not_usable", "That isn't something you can use.");
        };
        let Some(item) = self.world.item(&id) else {
            return refuse("not_here", "You don't have that with you.");
        };
        let present = |state: &WorldState, thing: &str| {
            state.carries(thing)
                || state.item_locations.get(thing) == Some(&state.location)
                || self
                    .world
                    .character(thing)
                    .is_some_and(|c| c.location == state.location)
        };
        if !present(next, &id) {
            return refuse("not_here", "You don't have that with you.");
        }
        let target = resolved
            .iter()
            .skip(1)
            .flatten()
            .find(|(kind, _)| *kind != ThingKind::Place);
        let target = target.map(|(_, id)| id.as_str());
        let effect = self.world.uses().iter().find(|effect| {
            effect.item == id
                && effect
                    .place
                    .as_ref()
                    .is_none_or(|place| *place == next.location)
                && match (&effect.target, target) {
                    (None, _) => true,
                    (Some(wanted), Some(given)) => wanted == given,
                    (Some(wanted), None) => present(next, wanted),
                }
        });
        let Some(effect) = effect else {
            return match &item.use_text {
                Some(text) => {
                    self.log.event(&["used", &id]);
                    self.log.event(&["effect", &id, text]);
                    Outcome::Done
                }
                None => refuse(
                    "no_effect",
                    "Nothing seems to happen just now. Perhaps it will matter somewhere else.",
                ),
            };
        };
        let pending: BTreeMap<&String, bool> = effect
            .sets
            .iter()
            .filter(|&(flag, value)| next.flags.get(flag) != Some(value))
            .map(|(flag, value)| (flag, *value))
            .collect();
        if pending.is_empty() && !effect.sets.is_empty() {
            let reason = effect
                .already_text
                .clone()
                .unwrap_or_else(|| "You've already done that here.".to_owned());
            return refuse("already_done", reason);
        }
        let before = next.flags.clone();
        for (flag, value) in pending {
            let old = next.flags.insert(flag.clone(), value).unwrap_or(false);
            self.log
                .set(format!("flags.{flag}"), boolean(old), boolean(value));
        }
        self.log.event(&["used", &id]);
        self.log.event(&["effect", &id, &effect.text]);
        for (direction, exit) in &here.exits {
            if !exit_open(exit, &before) && exit_open(exit, &next.flags) {
                self.log.event(&["opened", direction.as_str(), &exit.to]);
            }
        }
        Outcome::Done
    }

    fn talk(&mut self, next: &mut WorldState) -> Outcome {
        let id = match self.first_object() {
            Some(Some((ThingKind::Character, id))) => id,
            Some(Some((ThingKind::Item, id))) => {
                let name = self
                    .world
                    .item(&id)
                    .map_or("It".to_owned(), |i| capitalize(&definite(&i.name)));
                return refuse(
                    "not_a_person",
                    format!("{name} has nothing to say, though it keeps you quiet company."),
                );
            }
            Some(_) => return refuse("not_here", "There's no one by that name here."),
            None => match self
                .world
                .characters()
                .iter()
                .find(|c| c.location == next.location)
            {
                Some(character) => character.id.clone(),
                None => {
                    return refuse(
                        "no_one_here",
                        "There's no one here to talk to just now. The quiet can be company too.",
                    );
                }
            },
        };
        let Some(character) = self.world.character(&id) else {
            return refuse("not_here", "There's no one by that name here.");
        };
        if character.location != next.location {
            return refuse(
                "not_here",
                format!("{} isn't here just now.", short_name(&character.name)),
            );
        }
        let lines = self.world.dialogue(character, &next.flags);
        let count = next.conversations.get(&id).copied().unwrap_or(0);
        let index = usize::try_from(count).unwrap_or(0) % lines.len().max(1);
        let line = lines.get(index).map(String::as_str).unwrap_or_default();
        next.conversations.insert(id.clone(), count + 1);
        self.log.set(
            format!("characters.{id}.conversations"),
            number(count),
            number(count + 1),
        );
        self.log.event(&["talked", &id]);
        self.log.event(&["said", &id, line]);
        Outcome::Done
    }
}

/// "Mara, the tea keeper" → "Mara": how narration names a character in passing.
pub(crate) fn short_name(name: &str) -> &str {
    name.split(',').next().unwrap_or(name).trim()
}

/// "From here you can go north to the lighthouse or east to the tea house."
fn exits_hint(world: &World, here: &Place, flags: &BTreeMap<String, bool>) -> String {
    let open: Vec<String> = here
        .exits
        .iter()
        .filter(|(_, exit)| exit_open(exit, flags))
        .map(|(direction, exit)| {
            let name = world.place(&exit.to).map_or("", |p| p.name.as_str());
            format!("{} to {name}", direction.phrase())
        })
        .collect();
    if open.is_empty() {
        "There doesn't seem to be a way on from here just now.".to_owned()
    } else {
        format!("From here you can go {}.", join_list(&open, "or"))
    }
}
