//! The single home of cross-cutting service plumbing. A TTA binary's `main` is a table of
//! contents that calls [`service::run_main`]; everything every service needs — configuration,
//! logs, traces, metrics, admin HTTP, gRPC with health and reflection, Redis, shutdown — is here
//! once, not copied per service.

pub mod admin;
pub mod agents;
pub mod breaker;
pub mod config;
pub mod config_watch;
pub mod grpc;
pub mod hosts;
pub mod messaging;
pub mod metrics;
pub mod publish_lane;
pub mod readiness;
pub mod redis;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod trace_context;

pub use grpc::GrpcServer;
pub use readiness::Readiness;
pub use service::{
    BoxError, ConfigFileError, ServiceArgs, ServiceContext, ServiceKind, ServiceParts,
};
pub use shutdown::Shutdown;
/// The memory allocator every binary installs (`#[global_allocator]`): the hot paths allocate
/// many small, short-lived buffers per message, and under glibc's allocator a quarter of the
/// broker's CPU went to malloc and free. See ARCHITECTURE.md for the measured choice.
pub use tikv_jemallocator::Jemalloc as Allocator;
