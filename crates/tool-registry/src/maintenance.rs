//! Background work of a registry replica: registering the built-in tools, following the shared
//! change counter to drop a stale cache, writing batched last-use times, and the periodic
//! cleanup of idle tools (R3.5). Every step is idempotent, so all replicas may run it.

use std::time::{Duration, Instant};

use tta_runtime::{BoxError, Shutdown};

use crate::{builtins, registry::Registry};

/// How often the shared change counter is read; the longest a replica serves a spec another
/// replica changed.
pub const EPOCH_POLL: Duration = Duration::from_millis(250);
const FLUSH_USES_EVERY: Duration = Duration::from_secs(1);
const MAX_CLEANUP_INTERVAL: Duration = Duration::from_secs(60);

pub async fn run(registry: Registry, shutdown: Shutdown) -> Result<(), BoxError> {
    register_builtins(&registry, &shutdown).await;
    let mut epoch = None;
    let mut last_flush = Instant::now();
    let mut last_cleanup = Instant::now();
    loop {
        match registry.store.epoch().await {
            Ok(now) => {
                if epoch.is_some_and(|seen| seen != now) {
                    registry.cache.clear();
                }
                if epoch.is_none() {
                    registry.cache.arm();
                }
                epoch = Some(now);
            }
            Err(err) => tracing::debug!(error = %err, "cannot read the tool change counter"),
        }
        if last_flush.elapsed() >= FLUSH_USES_EVERY {
            last_flush = Instant::now();
            if let Err(err) = registry.flush_uses().await {
                tracing::debug!(error = %err, "cannot write tool last-use times");
            }
        }
        let policy = registry.policy.policy();
        let interval = (policy.max_idle / 4).clamp(EPOCH_POLL, MAX_CLEANUP_INTERVAL);
        if last_cleanup.elapsed() >= interval {
            last_cleanup = Instant::now();
            if let Err(err) = registry
                .cleanup(policy.max_idle, policy.delete_after, false)
                .await
            {
                tracing::warn!(error = %err, "tool cleanup failed; retrying next pass");
            }
        }
        tokio::select! {
            () = shutdown.wait() => break,
            () = tokio::time::sleep(EPOCH_POLL) => {}
        }
    }
    if let Err(err) = registry.flush_uses().await {
        tracing::debug!(error = %err, "cannot write tool last-use times at shutdown");
    }
    Ok(())
}

/// Registers the built-in tools, retrying while Redis is unreachable.
async fn register_builtins(registry: &Registry, shutdown: &Shutdown) {
    let mut delay = Duration::from_millis(100);
    for spec in builtins::specs() {
        loop {
            match registry.register(&spec).await {
                Ok(_) => break,
                Err(crate::Error::Unavailable(reason)) => {
                    tracing::debug!(tool = %spec.name, reason = %reason, "redis not ready for built-in tools");
                    tokio::select! {
                        () = shutdown.wait() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(err) => {
                    // An existing built-in with another definition (an older build) is left
                    // alone; the registry still executes it.
                    tracing::warn!(tool = %spec.name, error = %err, "built-in tool not registered");
                    break;
                }
            }
        }
    }
}
