//! The record of what one turn changed, as `WorldChange`s and events.
//!
//! Actions mutate the next state and note each change here in the same breath, so the
//! `WbaOutput` lists exactly what happened, in order, and the version is bumped only when
//! something did.

use prost_types::{Value, value::Kind};
use tta_proto::v1::{WorldChange, WorldChangeOp};

/// Changes and events of one turn.
#[derive(Debug, Default)]
pub(super) struct ChangeLog {
    pub changes: Vec<WorldChange>,
    pub events: Vec<String>,
}

impl ChangeLog {
    /// A value was replaced: `old` → `new`.
    pub fn set(&mut self, path: impl Into<String>, old: Value, new: Value) {
        self.changes.push(WorldChange {
            path: path.into(),
            op: WorldChangeOp::Set.into(),
            old_value: Some(old),
            new_value: Some(new),
        });
    }

    /// `element` joined a collection.
    pub fn add(&mut self, path: impl Into<String>, element: &str) {
        self.changes.push(WorldChange {
            path: path.into(),
            op: WorldChangeOp::Add.into(),
            old_value: None,
            new_value: Some(string(element)),
        });
    }

    /// `element` left a collection.
    pub fn remove(&mut self, path: impl Into<String>, element: &str) {
        self.changes.push(WorldChange {
            path: path.into(),
            op: WorldChangeOp::Remove.into(),
            old_value: None,
            new_value: Some(string(element)),
        });
    }

    /// A machine-readable event: `kind:detail...` (see `WorldState::apply`).
    pub fn event(&mut self, parts: &[&str]) {
        self.events.push(parts.join(":"));
    }
}

pub(super) fn string(text: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(text.to_owned())),
    }
}

pub(super) fn boolean(value: bool) -> Value {
    Value {
        kind: Some(Kind::BoolValue(value)),
    }
}

pub(super) fn number(value: u32) -> Value {
    Value {
        kind: Some(Kind::NumberValue(f64::from(value))),
    }
}
