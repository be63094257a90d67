//! Workflows (R1.1, R8.3): graphs of agent steps declared in YAML or registered over gRPC,
//! validated once, stored in Redis with versions, routed to by interaction type and context,
//! and run step by step for each turn.
//!
//! - [`definition`]: validation of a definition into a [`definition::Workflow`];
//! - [`condition`] and [`view`]: the condition language of steps and routes, and how it reads
//!   agent outputs and sessions by proto field name;
//! - [`json`]: the JSON/YAML view of definitions and fixed fallback outputs;
//! - [`builtin`]: the workflows every gateway knows;
//! - [`registry`]: versions in Redis, the routing snapshot;
//! - [`run`]: the graph runner.

pub mod builtin;
pub mod condition;
pub mod definition;
pub mod json;
pub mod registry;
pub mod run;
pub mod view;
