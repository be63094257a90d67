//! The world of a session: what the world file says exists ([`World`]) and where things stand
//! for one player ([`WorldState`]).
//!
//! A world is read once from YAML and validated before any player sees it, so every id the
//! state refers to exists and every rule the actions follow is sound. The state is a small
//! serialisable value that [`WorldState::apply`] turns into the next one: the engine holds no
//! session in memory, the worker stores the state between turns.
//!
//! Files: `model` (the YAML schema and lookups), `validate` (what makes a world sound),
//! `terms` (the words that name things), `state` (one player's state and its summary),
//! `apply` (what each intent does), `changes` (the `WorldChange` log).

mod apply;
mod changes;
mod model;
mod state;
mod terms;
mod validate;

use std::{fmt, path::PathBuf};

pub use model::{Character, Direction, Exit, FlagLines, Item, Place, UseEffect, Variant, World};
pub use state::WorldState;
pub(crate) use terms::find_terms;
pub use terms::{Term, ThingKind};

/// Why a world could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: cannot read the world file: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}: not a valid world file: {source}")]
    Parse {
        origin: String,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("{origin}: invalid world: {}", Problems(.problems))]
    Invalid {
        origin: String,
        problems: Vec<Problem>,
    },
    #[error("{path}: world id {id:?} must match the file name {expected:?}")]
    IdMismatch {
        path: PathBuf,
        id: String,
        expected: String,
    },
    #[error("{path}: no world files (*.yaml) found")]
    NoWorlds { path: PathBuf },
    #[error("{path}: world id {id:?} is defined twice")]
    DuplicateWorld { path: PathBuf, id: String },
}

/// One thing wrong in a world file, at a path such as `places[2].exits.north`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

struct Problems<'a>(&'a [Problem]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, problem) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests;
