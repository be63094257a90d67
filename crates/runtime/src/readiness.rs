//! Readiness: is this process able to do its job right now? Liveness (`/health`) only says the
//! process runs; readiness also asks its dependencies (Redis, upstream services), so load
//! balancers and Kubernetes stop sending work while a dependency is down.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::future::BoxFuture;
use serde::Serialize;
use tokio::sync::Mutex;

/// How long one dependency check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

type CheckFn = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// A cheap-to-clone registry of readiness checks plus the process's own "accepting work" flag.
#[derive(Clone, Default)]
pub struct Readiness {
    accepting: Arc<AtomicBool>,
    checks: Arc<Mutex<Vec<(String, CheckFn)>>>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("accepting", &self.accepting.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// The answer of `/ready`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Report {
    pub ready: bool,
    pub accepting: bool,
    /// Each check by name: `"ok"` or the reason it failed.
    pub checks: BTreeMap<String, String>,
}

impl Readiness {
    pub fn new() -> Self {
        Self::default()
    }

    /// Called once the process serves; cleared again when shutdown begins.
    pub fn set_accepting(&self, accepting: bool) {
        self.accepting.store(accepting, Ordering::SeqCst);
    }

    /// Adds a named dependency check, run on every `/ready` request.
    pub async fn add_check<F, Fut>(&self, name: impl Into<String>, check: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
    {
        let check: CheckFn = Arc::new(move || Box::pin(check()));
        self.checks.lock().await.push((name.into(), check));
    }

    pub async fn report(&self) -> Report {
        let checks: Vec<(String, CheckFn)> = self.checks.lock().await.clone();
        let results =
            futures::future::join_all(checks.into_iter().map(|(name, check)| async move {
                let outcome = match tokio::time::timeout(CHECK_TIMEOUT, check()).await {
                    Ok(Ok(())) => "ok".to_owned(),
                    Ok(Err(reason)) => reason,
                    Err(_) => format!("no answer within {CHECK_TIMEOUT:?}"),
                };
                (name, outcome)
            }))
            .await;
        let accepting = self.accepting.load(Ordering::SeqCst);
        let checks: BTreeMap<String, String> = results.into_iter().collect();
        Report {
            ready: accepting && checks.values().all(|outcome| outcome == "ok"),
            accepting,
            checks,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ready_only_when_accepting_and_every_check_passes() {
        let readiness = Readiness::new();
        assert!(
            !readiness.report().await.ready,
            "not ready before accepting"
        );

        readiness.set_accepting(true);
        readiness.add_check("always", || async { Ok(()) }).await;
        assert!(readiness.report().await.ready);

        readiness
            .add_check("redis", || async { Err("connection refused".to_owned()) })
            .await;
        let report = readiness.report().await;
        assert!(!report.ready);
        assert_eq!(report.checks["redis"], "connection refused");
        assert_eq!(report.checks["always"], "ok");
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_check_counts_as_failed() {
        let readiness = Readiness::new();
        readiness.set_accepting(true);
        readiness.add_check("stuck", std::future::pending).await;
        let report = readiness.report().await;
        assert!(!report.ready);
        assert!(report.checks["stuck"].starts_with("no answer"));
    }
}
