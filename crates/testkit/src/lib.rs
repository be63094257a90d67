//! Everything a TTA test needs to run against real parts: a private `redis-server` on a free
//! port (optionally with AOF, killable and restartable for fault tests), services in-process on
//! ephemeral ports, service binaries as real processes, and waits with deadlines instead of
//! sleeps; and [`LlmStub`], an OpenAI-compatible chat-completions server standing in for a
//! remote language model.
//!
//! Tests never touch a Redis database they did not create: each test gets its own server, or
//! its own key prefix (see [`unique_prefix`]).

pub mod llm_stub;
mod ports;
mod process;
mod redis_server;
mod wait;

pub use llm_stub::LlmStub;
pub use ports::free_port;
pub use process::{ServiceProcess, binary_path};
pub use redis_server::{RedisServer, command_calls};
pub use wait::{grpc_health, http_get, ready_report, wait_ready, wait_until};

use tta_runtime::{
    Shutdown,
    service::{self, BoxError, RunningService, ServiceContext, ServiceKind, ServiceParts},
};
use tta_types::{Config, config::ListenConfig};

/// A key prefix no other test uses, for tests that share a Redis server.
pub fn unique_prefix(test: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "test-{test}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A configuration for tests: every service on loopback port 0 (a free port each), the given
/// Redis, and a key prefix of its own.
pub fn test_config(redis_url: &str, test: &str) -> Config {
    let mut config = Config::default();
    config.redis.url = redis_url.to_owned();
    config.redis.key_prefix = unique_prefix(test);
    config.server.shutdown_grace = std::time::Duration::from_secs(1);
    let ephemeral = ListenConfig::loopback(0, 0);
    config.gateway.listen = ephemeral;
    config.broker.listen = ephemeral;
    config.tools.listen = ephemeral;
    config.resource_monitor.listen = ephemeral;
    for worker in [
        &mut config.agents.ipa,
        &mut config.agents.wba,
        &mut config.agents.nga,
    ] {
        worker.admin = ephemeral.admin;
    }
    config
}

/// Runs a service in this process on the addresses in `config` (port 0: any free port).
pub async fn start_in_process<F, Fut>(
    kind: ServiceKind,
    config: Config,
    build: F,
) -> Result<RunningService, BoxError>
where
    F: FnOnce(ServiceContext) -> Fut,
    Fut: std::future::Future<Output = Result<ServiceParts, BoxError>>,
{
    service::start(kind, config, Shutdown::new(), build).await
}

/// Stops in-process services one after another, callers before what they call (a gateway
/// before its broker), each within `grace`.
pub async fn stop_in_order(
    services: impl IntoIterator<Item = Option<RunningService>>,
    grace: std::time::Duration,
) -> anyhow::Result<()> {
    for service in services.into_iter().flatten() {
        service
            .stop(grace)
            .await
            .map_err(|err| anyhow::anyhow!(err))?;
    }
    Ok(())
}
