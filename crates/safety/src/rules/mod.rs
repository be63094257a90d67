//! The rule engine's rules: the YAML schema (`document`), validation and compilation
//! (`compile`), pattern matching (`matcher`) and exception windows (`context`).

pub mod compile;
pub mod context;
pub mod document;
pub mod matcher;

pub use compile::{CompiledRule, RuleSet, content_hash};
pub use document::{AppliesTo, PolicyDoc, SessionPolicyDoc};

use crate::error::{Error, RuleIssues};

/// Parses, validates and compiles a rule document. Every problem is reported, each with its rule
/// id (when inside a rule), key path and reason.
pub fn load(text: &str) -> Result<RuleSet, Error> {
    let doc = document::parse(text).map_err(|issues| Error::InvalidRules(RuleIssues(issues)))?;
    compile::compile(text, doc).map_err(|issues| Error::InvalidRules(RuleIssues(issues)))
}
