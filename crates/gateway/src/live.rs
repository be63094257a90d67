//! The gateway's settings as they stand now (R8.2). The configuration file's valid changes
//! replace them whole; each use reads the current version, so a change applies from the next
//! turn on. Live here: `gateway.max_input_chars`, `gateway.turn_timeout`,
//! `gateway.history_window` and `gateway.default_world` (for new sessions). The rest (listen
//! addresses, breakers, capacity polling, workflow defaults) is read once at start.

use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};
use tokio::sync::watch;
use tta_runtime::Shutdown;
use tta_types::Config;

#[derive(Debug, Clone)]
pub struct LiveConfig(Arc<ArcSwap<Config>>);

impl LiveConfig {
    pub fn new(config: Arc<Config>) -> LiveConfig {
        LiveConfig(Arc::new(ArcSwap::new(config)))
    }

    /// The settings in force; cheap enough for every request.
    pub fn now(&self) -> Guard<Arc<Config>> {
        self.0.load()
    }

    /// Takes every new version from `changes` until shutdown.
    pub async fn follow(self, changes: watch::Receiver<Arc<Config>>, shutdown: Shutdown) {
        tta_runtime::config_watch::apply_changes(changes, shutdown, |config| {
            tracing::info!(
                max_input_chars = config.gateway.max_input_chars,
                turn_timeout = ?config.gateway.turn_timeout,
                history_window = config.gateway.history_window,
                "gateway settings updated"
            );
            self.0.store(config);
        })
        .await;
    }
}
