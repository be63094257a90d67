//! One cancellation signal per process. `main` trips it on SIGTERM/SIGINT; every server and
//! background task watches it and winds down within the configured grace period.

use tokio_util::sync::CancellationToken;

/// A cheap-to-clone handle to the process-wide shutdown signal.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts shutting down everything that watches this signal.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Completes once shutdown has been triggered.
    pub async fn wait(&self) {
        self.token.cancelled().await;
    }

    /// A signal that also trips when this one does, but can be tripped on its own (for one
    /// server or task of a larger process, or for a test).
    pub fn child(&self) -> Shutdown {
        Shutdown {
            token: self.token.child_token(),
        }
    }

    pub fn token(&self) -> &CancellationToken {
        &self.token
    }
}

/// Waits for SIGTERM (what Kubernetes and `kill` send) or SIGINT (Ctrl-C).
pub async fn termination_signal() -> std::io::Result<&'static str> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = terminate.recv() => Ok("SIGTERM"),
            _ = interrupt.recv() => Ok("SIGINT"),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await?;
        Ok("ctrl-c")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn children_follow_their_parent_but_not_the_other_way_round() {
        let root = Shutdown::new();
        let child = root.child();
        child.trigger();
        assert!(child.is_triggered());
        assert!(!root.is_triggered());

        let other_child = root.child();
        root.trigger();
        other_child.wait().await;
        assert!(other_child.is_triggered());
    }
}
