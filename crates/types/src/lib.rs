//! Shared domain types of the TTA orchestrator: validated ids, priorities, the configuration
//! schema, one error-code vocabulary and the proto ⇄ domain conversions.
//!
//! This crate does no I/O. Services parse wire messages into these types once, at their edge,
//! and get `INVALID_ARGUMENT` naming the bad field for free.

pub mod config;
pub mod convert;
pub mod error;
pub mod ids;
pub mod priority;

pub use config::Config;
pub use error::{ErrorCode, FieldViolation, ServiceError};
pub use ids::{AgentId, AgentType, MessageId, RunId, SessionId, TurnId, UserId};
pub use priority::Priority;
