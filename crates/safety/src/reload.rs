//! The rule set in force, swappable without restart (R8.2). Classification loads the current
//! engine from an `ArcSwap` — a few atomic operations, never a lock — so a reload never blocks a
//! turn and a turn never sees half a rule set. A rule file that fails validation is rejected as a
//! whole and the previous engine stays in force.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use arc_swap::ArcSwap;

use crate::{engine::SafetyEngine, error::Error, metrics};

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadOutcome {
    /// The new rules were swapped in.
    pub applied: bool,
    /// Version of the rules in force after the call.
    pub rules_version: String,
    /// Number of rules in force after the call.
    pub rule_count: usize,
}

/// The engine in force, shared by every task of a process. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SharedEngine {
    current: Arc<ArcSwap<SafetyEngine>>,
    /// The file `reload` re-reads; `None` for the built-in rules.
    path: Option<PathBuf>,
}

impl SharedEngine {
    pub fn new(engine: SafetyEngine, path: Option<PathBuf>) -> Self {
        Self {
            current: Arc::new(ArcSwap::from_pointee(engine)),
            path,
        }
    }

    /// Loads the rules from `path`, or the built-in rules when `None`.
    pub fn load(path: Option<&Path>) -> Result<Self, Error> {
        let engine = match path {
            Some(path) => SafetyEngine::from_path(path)?,
            None => SafetyEngine::builtin()?,
        };
        Ok(Self::new(engine, path.map(Path::to_owned)))
    }

    /// The engine in force now. Hold the `Arc` for one judgement, not longer: a reload after
    /// this call does not change it.
    pub fn current(&self) -> Arc<SafetyEngine> {
        self.current.load_full()
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Re-reads the configured file (or the built-in rules) and swaps it in when valid.
    pub fn reload(&self) -> Result<ReloadOutcome, Error> {
        let text = match &self.path {
            Some(path) => std::fs::read_to_string(path).map_err(|err| Error::Read {
                path: path.clone(),
                reason: err.to_string(),
            })?,
            None => crate::engine::DEFAULT_RULES.to_owned(),
        };
        self.reload_from_str(&text, false)
    }

    /// Validates `text` and, unless `validate_only`, swaps it in. An invalid document returns
    /// [`Error::InvalidRules`] with every problem; the rules in force are untouched.
    pub fn reload_from_str(&self, text: &str, validate_only: bool) -> Result<ReloadOutcome, Error> {
        let engine = match SafetyEngine::from_yaml(text) {
            Ok(engine) => engine,
            Err(err) => {
                metrics::record_reload(false);
                tracing::warn!(error = %err, "safety rules rejected; previous rules stay in force");
                return Err(err);
            }
        };
        if validate_only {
            return Ok(ReloadOutcome {
                applied: false,
                rules_version: engine.version().to_owned(),
                rule_count: engine.rule_count(),
            });
        }
        let outcome = ReloadOutcome {
            applied: true,
            rules_version: engine.version().to_owned(),
            rule_count: engine.rule_count(),
        };
        self.current.store(Arc::new(engine));
        metrics::record_reload(true);
        tracing::info!(
            version = %outcome.rules_version,
            rules = outcome.rule_count,
            "safety rules applied"
        );
        Ok(outcome)
    }

    /// Reloads the file whenever its content changes, checking every `interval` until
    /// `shutdown` resolves. Invalid versions are logged and skipped, so an operator's typo
    /// never takes safety down.
    pub async fn watch(&self, interval: Duration, shutdown: impl std::future::Future<Output = ()>) {
        let Some(path) = self.path.clone() else {
            return;
        };
        let mut last = std::fs::read_to_string(&path).ok();
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = &mut shutdown => return,
            }
            let text = match tokio::fs::read_to_string(&path).await {
                Ok(text) => text,
                Err(err) => {
                    tracing::warn!(path = %path.display(), error = %err, "cannot read safety rules");
                    continue;
                }
            };
            if last.as_deref() == Some(text.as_str()) {
                continue;
            }
            // Remember the text even when invalid, so a bad file is reported once, not every tick.
            let _ = self.reload_from_str(&text, false);
            last = Some(text);
        }
    }
}
