//! One player's world state: where they are, what they carry, where the items lie, which
//! flags are set.
//!
//! It is a plain serialisable value. The WBA engine turns one into the next
//! ([`WorldState::apply`]); the worker stores it between turns (as JSON, under the session's
//! key) — nothing about a session lives in the engine. Fields added later carry
//! `#[serde(default)]`, so a state stored by an older build still loads.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use tta_proto::v1::{WorldExit, WorldObject, WorldSummary};

use super::model::{World, exit_open};

/// The state of one session's world.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorldState {
    /// Id of the world the session plays in.
    pub world_id: String,
    /// Bumped by one for every turn that changed something; starts at 0.
    pub version: u64,
    /// Id of the place the player is in.
    pub location: String,
    /// Ids of the items the player carries, in the order they were picked up.
    #[serde(default)]
    pub inventory: Vec<String>,
    /// Where each item that is not carried lies: item id → place id.
    #[serde(default)]
    pub item_locations: BTreeMap<String, String>,
    /// Every flag of the world and its value.
    #[serde(default)]
    pub flags: BTreeMap<String, bool>,
    /// Ids of the places the player has been to.
    #[serde(default)]
    pub visited: BTreeSet<String>,
    /// How many times the player has talked to each character; picks the next line.
    #[serde(default)]
    pub conversations: BTreeMap<String, u32>,
}

impl WorldState {
    /// The state of a new session: at the start place, empty hands, every flag at its default.
    pub fn new(world: &World) -> WorldState {
        WorldState {
            world_id: world.id().to_owned(),
            version: 0,
            location: world.start().to_owned(),
            inventory: Vec::new(),
            item_locations: world
                .items()
                .iter()
                .map(|item| (item.id.clone(), item.location.clone()))
                .collect(),
            flags: world.default_flags().clone(),
            visited: BTreeSet::from([world.start().to_owned()]),
            conversations: BTreeMap::new(),
        }
    }

    /// Whether the player carries the item.
    pub fn carries(&self, item: &str) -> bool {
        self.inventory.iter().any(|carried| carried == item)
    }

    /// Ids of the items lying in a place, in the world file's order (so listings are stable).
    pub fn items_at<'w>(&self, world: &'w World, place: &str) -> Vec<&'w str> {
        world
            .items()
            .iter()
            .filter(|item| {
                self.item_locations
                    .get(&item.id)
                    .is_some_and(|at| at == place)
            })
            .map(|item| item.id.as_str())
            .collect()
    }

    /// What narration and clients need to know about the state.
    pub fn summary(&self, world: &World) -> WorldSummary {
        let place = world.place(&self.location);
        let object = |id: &str, name: &str| WorldObject {
            id: id.to_owned(),
            name: name.to_owned(),
        };
        let items = |ids: Vec<&str>| -> Vec<WorldObject> {
            ids.into_iter()
                .filter_map(|id| world.item(id))
                .map(|item| object(&item.id, &item.name))
                .collect()
        };
        WorldSummary {
            world_id: self.world_id.clone(),
            location_id: self.location.clone(),
            location_name: place.map(|p| p.name.clone()).unwrap_or_default(),
            location_description: place
                .map(|p| world.describe(p, &self.flags).to_owned())
                .unwrap_or_default(),
            exits: place
                .map(|p| {
                    p.exits
                        .iter()
                        .map(|(direction, exit)| WorldExit {
                            direction: direction.as_str().to_owned(),
                            location_id: exit.to.clone(),
                            open: exit_open(exit, &self.flags),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            items_here: items(self.items_at(world, &self.location)),
            characters_here: world
                .characters()
                .iter()
                .filter(|character| character.location == self.location)
                .map(|character| object(&character.id, &character.name))
                .collect(),
            inventory: items(self.inventory.iter().map(String::as_str).collect()),
            flags: self
                .flags
                .iter()
                .filter(|&(_, &value)| value)
                .map(|(name, _)| (name.clone(), "true".to_owned()))
                .collect(),
            version: self.version,
        }
    }

    /// Brings a stored state in line with the world file, which may have been edited since the
    /// state was written: an unknown place sends the player to the start, unknown items and
    /// flags are dropped, new ones take their defaults. A session survives a world update
    /// instead of failing every turn. Returns whether anything had to change.
    pub fn reconcile(&mut self, world: &World) -> bool {
        let before = self.clone();
        if world.place(&self.location).is_none() {
            self.location = world.start().to_owned();
        }
        self.inventory.retain(|id| world.item(id).is_some());
        let mut seen = BTreeSet::new();
        self.inventory.retain(|id| seen.insert(id.clone()));
        let inventory = self.inventory.clone();
        self.item_locations.retain(|item, place| {
            world.item(item).is_some() && world.place(place).is_some() && !inventory.contains(item)
        });
        for item in world.items() {
            if !self.carries(&item.id) && !self.item_locations.contains_key(&item.id) {
                self.item_locations
                    .insert(item.id.clone(), item.location.clone());
            }
        }
        self.flags
            .retain(|flag, _| world.default_flags().contains_key(flag));
        for (flag, value) in world.default_flags() {
            self.flags.entry(flag.clone()).or_insert(*value);
        }
        self.visited.retain(|place| world.place(place).is_some());
        self.visited.insert(self.location.clone());
        self.conversations
            .retain(|character, _| world.character(character).is_some());
        *self != before
    }
}
