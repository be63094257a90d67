//! Workflow definitions: the condition language of steps and routes and the views of agent
//! outputs and sessions that conditions read.

pub mod condition;
pub mod view;
