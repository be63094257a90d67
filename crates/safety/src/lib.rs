//! Therapeutic safety (R5) for the TTA orchestrator: the rule engine that judges player input for
//! crisis signals and agent output for harmful content, and the building blocks of the crisis
//! protocol around it.
//!
//! - [`normalize`]: one normal form for texts and rule phrases (case, apostrophes, leetspeak,
//!   elongated letters, invisible characters), with spans mapped back to the original;
//! - [`rules`]: the YAML rule file, its validation and its compiled matchers;
//! - [`engine`]: [`SafetyEngine`], a pure classifier from text to [`Assessment`];
//! - [`reload`]: [`SharedEngine`], the engine behind an atomic swap, reloadable without restart;
//! - [`settings`]: a session's therapeutic settings (intensity, avoided topics) and their policy;
//! - [`validate`]: agent output validation with bounded regeneration and a safe fallback;
//! - [`session`]: session memory, so repeated risk signals raise the level;
//! - [`crisis`]: the caring crisis response with locale-aware resources;
//! - [`escalation`]: escalation events for human oversight, durably in a Redis stream;
//! - [`metrics`]: the safety series on the `metrics` facade.
//!
//! Nothing here serves gRPC: the gateway's `tta.v1.Safety` service and the turn pipeline are
//! built from these parts.

pub mod convert;
pub mod crisis;
pub mod engine;
pub mod error;
pub mod escalation;
pub mod metrics;
pub mod normalize;
pub mod reload;
pub mod rules;
pub mod session;
pub mod settings;
pub mod validate;
pub mod verdict;

pub use engine::{DEFAULT_RULES, SafetyEngine};
pub use error::{Error, RuleIssue, RuleIssues};
pub use reload::SharedEngine;
pub use settings::{Intensity, SessionPolicy, TherapeuticSettings, parse_goals};
pub use verdict::{Action, Assessment, Finding, Level, Source};
