//! The policy in force behind an atomic pointer, its reloads (from the policy file or an inline
//! document) and the watcher that reloads the file when its content changes. A reload that fails
//! validation keeps the previous policy and records why; every attempt is audit-logged.

use std::{path::PathBuf, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;
use tta_runtime::Shutdown;

use crate::policy::{Policy, Problem};

/// How often the watcher looks at the policy file.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// A policy that was applied, with where it came from.
#[derive(Debug, Clone)]
pub struct Applied {
    pub policy: Arc<Policy>,
    pub source: String,
    pub version: String,
    pub loaded_at_ms: u64,
}

/// The outcome of the last reload attempt, for diagnostics.
#[derive(Debug, Clone, Default)]
pub struct LastReload {
    pub applied: bool,
    pub source: String,
    pub problems: Vec<Problem>,
    pub at_ms: u64,
}

/// Why a reload could not even be attempted.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("cannot read the policy file {path}: {reason}")]
    Unreadable { path: String, reason: String },
}

/// The shared policy holder; cheap to clone.
#[derive(Debug, Clone)]
pub struct SharedPolicy {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    base: Policy,
    file: Option<PathBuf>,
    current: ArcSwap<Applied>,
    last: ArcSwap<LastReload>,
    /// Serialises reloads so two of them never interleave their validate-and-swap.
    reloading: Mutex<()>,
    /// The hash of the file's content as last read (at start-up or by a reload): the watcher
    /// compares the file with what was loaded, not with what it finds when it first looks, so a
    /// change saved between the two is not missed.
    read_hash: std::sync::Mutex<Option<[u8; 32]>>,
}

impl SharedPolicy {
    /// The configuration's policy, with the file laid over it when one is configured. A bad
    /// file at start-up is an error: the service must not start on a policy nobody wrote.
    pub fn load(base: Policy, file: Option<PathBuf>) -> Result<Self, String> {
        let mut read_hash = None;
        let (policy, source) = match &file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|err| {
                    format!("tools.policy_file: cannot read {}: {err}", path.display())
                })?;
                read_hash = Some(hash(text.as_bytes()));
                let policy = Policy::overlay(&base, &text).map_err(|problems| {
                    let listed: Vec<String> = problems.iter().map(Problem::to_string).collect();
                    format!(
                        "tools.policy_file ({}): {}",
                        path.display(),
                        listed.join("; ")
                    )
                })?;
                (policy, path.display().to_string())
            }
            None => {
                let problems = base.validate();
                if let Some(problem) = problems.first() {
                    return Err(problem.to_string());
                }
                (base.clone(), "config".to_owned())
            }
        };
        let applied = applied(policy, source);
        tracing::info!(
            policy_version = %applied.version,
            source = %applied.source,
            policy = ?applied.policy,
            "tool policy loaded"
        );
        Ok(Self {
            inner: Arc::new(Inner {
                base,
                file,
                current: ArcSwap::from_pointee(applied),
                last: ArcSwap::from_pointee(LastReload::default()),
                reloading: Mutex::new(()),
                read_hash: std::sync::Mutex::new(read_hash),
            }),
        })
    }

    pub fn current(&self) -> Arc<Applied> {
        self.inner.current.load_full()
    }

    pub fn policy(&self) -> Arc<Policy> {
        self.inner.current.load().policy.clone()
    }

    pub fn last_reload(&self) -> Arc<LastReload> {
        self.inner.last.load_full()
    }

    pub fn file(&self) -> Option<&PathBuf> {
        self.inner.file.as_ref()
    }

    /// Validates `document` (or the configured file when `None`) and applies it unless
    /// `validate_only`. Returns the problems found (empty when valid) and whether it applied.
    pub async fn reload(
        &self,
        document: Option<&str>,
        validate_only: bool,
    ) -> Result<(bool, Vec<Problem>), ReloadError> {
        let _guard = self.inner.reloading.lock().await;
        let (text, source) = match (document, &self.inner.file) {
            (Some(document), _) => (document.to_owned(), "inline".to_owned()),
            (None, Some(path)) => {
                let text = tokio::fs::read_to_string(path).await.map_err(|err| {
                    ReloadError::Unreadable {
                        path: path.display().to_string(),
                        reason: err.to_string(),
                    }
                })?;
                *self
                    .inner
                    .read_hash
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Some(hash(text.as_bytes()));
                (text, path.display().to_string())
            }
            (None, None) => (String::new(), "config".to_owned()),
        };
        let old_version = self.current().version.clone();
        let outcome = Policy::overlay(&self.inner.base, &text);
        let now = crate::spec::now_ms();
        match outcome {
            Ok(policy) => {
                let applied_now = !validate_only;
                if applied_now {
                    let applied = applied(policy, source.clone());
                    tracing::info!(
                        audit = true,
                        source = %source,
                        old_version = %old_version,
                        new_version = %applied.version,
                        policy = ?applied.policy,
                        "tool policy reloaded"
                    );
                    metrics::counter!("tta_tool_policy_reloads_total", "outcome" => "applied")
                        .increment(1);
                    self.inner.current.store(Arc::new(applied));
                } else {
                    tracing::info!(audit = true, source = %source, "tool policy validated, not applied");
                }
                self.inner.last.store(Arc::new(LastReload {
                    applied: applied_now,
                    source,
                    problems: Vec::new(),
                    at_ms: now,
                }));
                Ok((applied_now, Vec::new()))
            }
            Err(problems) => {
                let listed: Vec<String> = problems.iter().map(Problem::to_string).collect();
                tracing::warn!(
                    audit = true,
                    source = %source,
                    version = %old_version,
                    problems = %listed.join("; "),
                    "tool policy rejected; the previous policy stays in force"
                );
                metrics::counter!("tta_tool_policy_reloads_total", "outcome" => "rejected")
                    .increment(1);
                self.inner.last.store(Arc::new(LastReload {
                    applied: false,
                    source,
                    problems: problems.clone(),
                    at_ms: now,
                }));
                Ok((false, problems))
            }
        }
    }

    /// Reloads the policy file whenever its content changes, until shutdown.
    pub async fn watch(self, shutdown: Shutdown) -> Result<(), tta_runtime::BoxError> {
        let Some(path) = self.inner.file.clone() else {
            // Nothing to watch; a task that ends early would stop the service.
            shutdown.wait().await;
            return Ok(());
        };
        let mut seen = *self
            .inner
            .read_hash
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        loop {
            tokio::select! {
                () = shutdown.wait() => return Ok(()),
                () = tokio::time::sleep(WATCH_INTERVAL) => {}
            }
            let now = content_hash(&path).await;
            if now == seen {
                continue;
            }
            seen = now;
            if let Err(err) = self.reload(None, false).await {
                tracing::warn!(error = %err, "tool policy file unreadable; the previous policy stays in force");
            }
        }
    }
}

fn applied(policy: Policy, source: String) -> Applied {
    Applied {
        version: policy.version(),
        policy: Arc::new(policy),
        source,
        loaded_at_ms: crate::spec::now_ms(),
    }
}

fn hash(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

async fn content_hash(path: &PathBuf) -> Option<[u8; 32]> {
    let bytes = tokio::fs::read(path).await.ok()?;
    Some(hash(&bytes))
}
