//! The single home of cross-cutting service plumbing. A TTA binary's `main` is a table of
//! contents that calls [`service::run_main`]; everything every service needs — configuration,
//! logs, traces, metrics, admin HTTP, gRPC with health and reflection, Redis, shutdown — is here
//! once, not copied per service.

pub mod admin;
pub mod agents;
pub mod breaker;
pub mod config;
pub mod grpc;
pub mod hosts;
pub mod messaging;
pub mod metrics;
pub mod readiness;
pub mod redis;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod trace_context;

pub use grpc::GrpcServer;
/// The memory allocator every service binary installs (`#[global_allocator]`): small
/// short-lived buffers per message dominate our allocations, and glibc's allocator spent a
/// quarter of the broker's CPU on them.
pub use mimalloc::MiMalloc as Allocator;
pub use readiness::Readiness;
pub use service::{
    BoxError, ConfigFileError, ServiceArgs, ServiceContext, ServiceKind, ServiceParts,
};
pub use shutdown::Shutdown;
