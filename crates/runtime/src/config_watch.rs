//! Live configuration (R8.2). A service started from a file reads it again when its contents
//! change. A valid new version goes to the parts that apply settings while running
//! ([`crate::service::ServiceContext::config_changes`]); an invalid one is logged with its key
//! paths and counted, and the running settings stay. Settings no part applies live (listen
//! addresses, Redis, runtime size, …) take effect at the next start.

use std::{path::PathBuf, sync::Arc, time::Duration};

use tokio::sync::watch;
use tta_types::Config;

use crate::{config, shutdown::Shutdown};

/// How often the file is read again. Cheap (one small read), and quick enough for an operator
/// who just saved a change.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Reads `path` every `every` until shutdown; whenever its bytes change, `load` builds the new
/// configuration (with the same environment and flags the service started with) and a valid
/// one that differs from the running one is sent on `updates`.
pub async fn follow_file(
    path: PathBuf,
    every: Duration,
    load: impl Fn() -> Result<Config, config::Error>,
    updates: watch::Sender<Arc<Config>>,
    shutdown: Shutdown,
) {
    // Nothing seen yet: the first reading is loaded and compared with the running settings,
    // so a change saved between the service's start and this task's is not missed.
    let mut seen: Option<Vec<u8>> = None;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.wait() => return,
        }
        let current = tokio::fs::read(&path).await.ok();
        if current == seen {
            continue;
        }
        seen = current;
        if seen.is_none() {
            tracing::warn!(path = %path.display(), "configuration file unreadable; keeping the running settings");
            continue;
        }
        match load() {
            Ok(config) if **updates.borrow() == config => {}
            Ok(config) => {
                metrics::counter!("tta_config_reloads_total", "outcome" => "applied").increment(1);
                tracing::info!(
                    path = %path.display(),
                    "configuration changed; live settings applied, the rest at the next start"
                );
                updates.send_replace(Arc::new(config));
            }
            Err(err) => {
                metrics::counter!("tta_config_reloads_total", "outcome" => "rejected").increment(1);
                tracing::warn!(
                    path = %path.display(),
                    error = %err,
                    keys = ?err.key_paths(),
                    "changed configuration rejected; keeping the running settings"
                );
            }
        }
    }
}

/// Hands every new configuration from `changes` to `apply` until shutdown: the loop of each
/// part that changes settings live.
pub async fn apply_changes(
    mut changes: watch::Receiver<Arc<Config>>,
    shutdown: Shutdown,
    mut apply: impl FnMut(Arc<Config>),
) {
    loop {
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    // No more changes can come; nothing else to do until shutdown.
                    shutdown.wait().await;
                    return;
                }
            }
            () = shutdown.wait() => return,
        }
        apply(changes.borrow_and_update().clone());
    }
}

#[cfg(test)]
mod tests {
    use figment::providers::Env;

    use super::*;

    async fn next(changes: &mut watch::Receiver<Arc<Config>>) -> Arc<Config> {
        tokio::time::timeout(Duration::from_secs(5), changes.changed())
            .await
            .expect("a change within 5 s")
            .unwrap();
        changes.borrow_and_update().clone()
    }

    #[tokio::test]
    async fn a_changed_file_is_applied_and_a_broken_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tta.yaml");
        std::fs::write(&path, "monitoring:\n  cpu_warn: 70\n").unwrap();
        let load = {
            let path = path.clone();
            move || config::load_from(Some(&path), Env::prefixed("TTA_TEST_NOTHING_"), |_| {})
        };
        let first = load().unwrap();
        let (updates, mut changes) = watch::channel(Arc::new(first));
        let shutdown = Shutdown::new();
        let follower = tokio::spawn(follow_file(
            path.clone(),
            Duration::from_millis(10),
            load,
            updates,
            shutdown.clone(),
        ));

        std::fs::write(&path, "monitoring:\n  cpu_warn: 60\n").unwrap();
        assert_eq!(next(&mut changes).await.monitoring.cpu_warn, 60.0);

        // A mistake is not applied; the next good version is.
        std::fs::write(&path, "monitoring:\n  cpu_warn: high\n").unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!changes.has_changed().unwrap());
        std::fs::write(&path, "monitoring:\n  cpu_warn: 50\n").unwrap();
        assert_eq!(next(&mut changes).await.monitoring.cpu_warn, 50.0);

        // Bytes that change nothing send nothing.
        std::fs::write(&path, "monitoring:\n  cpu_warn: 50.0\n").unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!changes.has_changed().unwrap());

        shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(2), follower)
            .await
            .unwrap()
            .unwrap();
    }
}
