//! The safety checks of a turn (R5): the player's input is screened before any agent sees it, a
//! crisis is answered with the crisis protocol and escalated durably, and the narrative is
//! validated before the player reads it. The `tta.v1.Safety` service shares the same parts.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use futures::future::BoxFuture;
use tta_proto::v1 as pb;
use tta_runtime::redis::{Keyspace, RedisPool};
use tta_safety::{
    Assessment, SessionPolicy, SharedEngine, Source, TherapeuticSettings,
    crisis::{CrisisResources, CrisisResponse},
    escalation::{EscalationEvent, EscalationReason, EscalationStore},
    metrics as safety_metrics,
    session::{self, RedisSessionMemory, assess_in_session},
    validate::{RegenerationRequest, ValidatedOutput, validate_output},
};
use tta_types::{SessionId, config::SafetyConfig};

/// Who and what a judgement is about; `turn` makes a retried turn count and escalate once.
#[derive(Debug, Clone, Copy)]
pub struct Occasion<'a> {
    pub session: &'a SessionId,
    pub user: &'a str,
    pub turn: Option<&'a str>,
}

impl<'a> Occasion<'a> {
    pub fn in_session(self) -> session::Occasion<'a> {
        session::Occasion {
            session: self.session,
            turn: self.turn,
        }
    }
}

/// The verdict on a player's input and what it set in motion.
#[derive(Debug, Clone)]
pub struct InputVerdict {
    pub assessment: Assessment,
    /// Set when the input calls for the crisis protocol instead of the story.
    pub crisis_reply: Option<CrisisResponse>,
    /// The escalation written for this input, if one was due (one per session per cool-down).
    pub escalation: Option<EscalationEvent>,
}

#[derive(Debug, Clone)]
pub struct SafetyGuard {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    engine: SharedEngine,
    resources: CrisisResources,
    memory: RedisSessionMemory,
    escalations: EscalationStore,
    config: SafetyConfig,
}

impl SafetyGuard {
    /// Loads the configured (or built-in) rules and crisis resources; a bad file fails start-up
    /// with each problem named.
    pub fn load(
        config: &SafetyConfig,
        pool: RedisPool,
        keys: &Keyspace,
    ) -> Result<Self, tta_safety::Error> {
        let engine = SharedEngine::load(config.rules_file.as_deref())?;
        let resources = match &config.resources_file {
            Some(path) => CrisisResources::from_path(path)?,
            None => CrisisResources::builtin()?,
        };
        Ok(Self {
            inner: Arc::new(Inner {
                engine,
                resources,
                memory: RedisSessionMemory::new(pool.clone(), keys.clone()),
                escalations: EscalationStore::new(pool, keys),
                config: config.clone(),
            }),
        })
    }

    pub fn engine(&self) -> &SharedEngine {
        &self.inner.engine
    }

    pub fn memory(&self) -> &RedisSessionMemory {
        &self.inner.memory
    }

    pub fn escalations(&self) -> &EscalationStore {
        &self.inner.escalations
    }

    pub fn config(&self) -> &SafetyConfig {
        &self.inner.config
    }

    /// The session's settings compiled against the rules in force. Settings are validated when
    /// a session is created; should a stored record hold something the current version rejects,
    /// the strictest defaults apply rather than none.
    pub fn policy(&self, settings: Option<&pb::TherapeuticSettings>) -> SessionPolicy {
        let settings = settings
            .map(|raw| {
                TherapeuticSettings::from_proto("settings", raw).unwrap_or_else(|violation| {
                    tracing::warn!(%violation, "stored therapeutic settings rejected; using defaults");
                    TherapeuticSettings::default()
                })
            })
            .unwrap_or_default();
        self.inner.engine.current().policy(&settings)
    }

    /// The locale whose crisis resources a session gets.
    pub fn locale<'a>(&'a self, settings: Option<&'a pb::TherapeuticSettings>) -> &'a str {
        settings
            .map(|settings| settings.locale.as_str())
            .filter(|locale| !locale.is_empty())
            .unwrap_or(&self.inner.config.default_locale)
    }

    /// Judges a player's input in its session. When an escalation is due it is written to the
    /// stream before this returns; if that write fails the error is returned, the caller must
    /// not answer as if nothing happened, and a retry of the same turn escalates again.
    pub async fn screen_input(
        &self,
        occasion: Occasion<'_>,
        text: &str,
        policy: &SessionPolicy,
        locale: &str,
    ) -> Result<InputVerdict, tta_safety::Error> {
        let engine = self.inner.engine.current();
        let verdict = assess_in_session(
            &engine,
            &self.inner.memory,
            occasion.in_session(),
            text,
            Source::User,
            policy,
            SystemTime::now(),
        )
        .await?;
        safety_metrics::record_assessment(&verdict.assessment, Source::User);
        let escalation = match verdict.escalate {
            Some(reason) => Some(
                self.escalate(occasion, &verdict.assessment, text, Source::User, reason)
                    .await?,
            ),
            None => None,
        };
        let crisis_reply = self.inner.resources.response(&verdict.assessment, locale);
        Ok(InputVerdict {
            assessment: verdict.assessment,
            crisis_reply,
            escalation,
        })
    }

    /// Writes an escalation event for human oversight. The write is boxed: escalations are
    /// rare, and awaited in place their state would swell the future of every turn that might
    /// raise one.
    pub fn escalate(
        &self,
        occasion: Occasion<'_>,
        assessment: &Assessment,
        text: &str,
        source: Source,
        reason: EscalationReason,
    ) -> BoxFuture<'_, Result<EscalationEvent, tta_safety::Error>> {
        let mut event = EscalationEvent::new(assessment, text, source, reason)
            .with_session(occasion.session.as_str())
            .with_user(occasion.user);
        if let Some(turn) = occasion.turn {
            event = event.with_turn(turn);
        }
        Box::pin(self.inner.escalations.raise(event))
    }

    /// Validates an agent's reply, asking `regenerate` for alternatives while it is blocked (at
    /// most `safety.max_regenerations` times) and falling back to the safe reply after that.
    pub async fn validate_reply<F, Fut, E>(
        &self,
        policy: &SessionPolicy,
        text: String,
        regenerate: F,
    ) -> ValidatedOutput
    where
        F: FnMut(RegenerationRequest) -> Fut,
        Fut: Future<Output = Result<String, E>>,
        E: std::fmt::Display,
    {
        let engine = self.inner.engine.current();
        let validated = validate_output(
            &engine,
            policy,
            text,
            self.inner.config.max_regenerations,
            self.inner.resources.fallback_reply(),
            regenerate,
        )
        .await;
        safety_metrics::record_assessment(&validated.assessment, Source::Agent);
        validated
    }

    /// Watches the rule file (when one is configured and watching is on) until `shutdown`.
    pub async fn watch_rules(&self, shutdown: impl Future<Output = ()>) {
        let interval = self.inner.config.reload_interval;
        if interval == Duration::ZERO || self.inner.engine.path().is_none() {
            shutdown.await;
            return;
        }
        self.inner.engine.watch(interval, shutdown).await;
    }
}
