//! The registry's operations on domain types: register, look up (through the cache), list,
//! deprecate, create-or-get by signature, clean up and report usage. The gRPC edge
//! (`service.rs`) parses requests and calls these; invocation lives in `invoke.rs`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tta_types::FieldViolation;

use crate::{
    cache::{Entry, SpecCache},
    error::Error,
    reload::SharedPolicy,
    spec::{self, Status, ToolSpec, Validated},
    store::{self, Registered, Store},
};

/// What `create_or_get` did.
#[derive(Debug, Clone, PartialEq)]
pub enum Obtained {
    Existing(Arc<ToolSpec>),
    Created(Arc<ToolSpec>),
    Fallback { spec: Arc<ToolSpec>, reason: String },
}

#[derive(Debug, Clone)]
pub struct Registry {
    pub store: Store,
    pub policy: SharedPolicy,
    pub cache: Arc<SpecCache>,
    /// Last-use times not yet written to Redis (flushed by the maintenance task), so a cached
    /// lookup costs no Redis write.
    pending_uses: Arc<Mutex<HashMap<String, u64>>>,
}

impl Registry {
    pub fn new(store: Store, policy: SharedPolicy) -> Self {
        let capacity = policy.policy().cache_max_items;
        Self {
            store,
            policy,
            cache: Arc::new(SpecCache::new(capacity)),
            pending_uses: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Registers a validated wire spec (RegisterTool). `Ok((spec, created))`.
    pub async fn register(
        &self,
        raw: &tta_proto::v1::ToolSpec,
    ) -> Result<(Arc<ToolSpec>, bool), Error> {
        let validated = self.admit(raw)?;
        self.check_compatibility(&validated.spec).await?;
        match self.store.register(&validated.spec, false).await? {
            Registered::Created(spec) => {
                self.changed();
                tracing::info!(tool = %spec.reference(), signature = %spec.signature, "tool registered");
                Ok((Arc::new(spec), true))
            }
            Registered::Exists(stored) if stored.same_definition(&validated.spec) => {
                Ok((Arc::new(stored), false))
            }
            Registered::Exists(stored) => Err(Error::AlreadyExists(format!(
                "spec.version: {} already exists with a different definition",
                stored.reference()
            ))),
            Registered::Signature(_) => Err(Error::Corrupt(
                "register answered a signature match without being asked".into(),
            )),
        }
    }

    /// Validates a wire spec and checks it against the policy.
    fn admit(&self, raw: &tta_proto::v1::ToolSpec) -> Result<Validated, Error> {
        let policy = self.policy.policy();
        let validated = spec::validate(raw, policy.schema_limits())?;
        policy
            .admits(&validated.spec)
            .map_err(Error::PermissionDenied)?;
        if let Some(timeout) = validated.spec.timeout_ms.map(Duration::from_millis)
            && timeout > policy.max_timeout
        {
            return Err(FieldViolation::new(
                "spec.timeout",
                format!(
                    "exceeds policy maximum {}",
                    humantime::format_duration(policy.max_timeout)
                ),
            )
            .into());
        }
        Ok(validated)
    }

    /// A new minor or patch version must keep the parameters of the latest version of its
    /// major: none removed or retyped, none newly required.
    async fn check_compatibility(&self, new: &ToolSpec) -> Result<(), Error> {
        let Some(new_version) = new.semver() else {
            return Ok(());
        };
        let versions = self.store.versions(&new.name).await?;
        let previous = versions
            .iter()
            .filter_map(|spec| spec.semver().map(|version| (version, spec)))
            .filter(|(version, _)| version.major == new_version.major && *version < new_version)
            .max_by(|a, b| a.0.cmp(&b.0));
        let Some((_, previous)) = previous else {
            return Ok(());
        };
        let parse = |text: &str| serde_json::from_str(text).unwrap_or(serde_json::Value::Null);
        match crate::schema::incompatibility(
            &parse(&previous.parameters_schema),
            &parse(&new.parameters_schema),
        ) {
            Some(reason) => Err(Error::FailedPrecondition(format!(
                "spec.version: {} is not backward compatible with {}: {reason}; use a new major version",
                new.version, previous.version
            ))),
            None => Ok(()),
        }
    }

    /// A version, or the latest active one when `version` is empty; through the cache.
    pub async fn lookup(&self, name: &str, version: &str) -> Result<Entry, Error> {
        let policy = self.policy.policy();
        if let Some(entry) = self.cache.get(name, version, policy.cache_ttl) {
            self.used(&entry.spec);
            return Ok(entry);
        }
        let generation = self.cache.generation();
        let spec = if version.is_empty() {
            let versions = self.store.versions(name).await?;
            store::latest_active(&versions)
                .cloned()
                .ok_or_else(|| match versions.is_empty() {
                    true => Error::NotFound(format!("name: no tool named {name:?}")),
                    false => Error::NotFound(format!("name: tool {name:?} has no active version")),
                })?
        } else {
            self.store.get(name, version).await?.ok_or_else(|| {
                Error::NotFound(format!("version: tool {name:?} has no version {version:?}"))
            })?
        };
        let (parameters, returns) = spec::compile_stored(&spec).map_err(Error::Corrupt)?;
        let entry = Entry {
            spec: Arc::new(spec),
            parameters,
            returns,
        };
        self.cache.put(
            name,
            version,
            entry.clone(),
            policy.cache_max_items,
            generation,
        );
        self.used(&entry.spec);
        Ok(entry)
    }

    fn used(&self, spec: &ToolSpec) {
        if let Ok(mut pending) = self.pending_uses.lock() {
            pending.insert(spec.reference(), spec::now_ms());
        }
    }

    /// Writes the batched last-use times.
    pub async fn flush_uses(&self) -> Result<(), Error> {
        let uses = match self.pending_uses.lock() {
            Ok(mut pending) => std::mem::take(&mut *pending),
            Err(_) => return Ok(()),
        };
        self.store.touch(&uses).await
    }

    /// Deprecates a version (idempotent).
    pub async fn deprecate(
        &self,
        name: &str,
        version: &str,
        reason: &str,
    ) -> Result<Arc<ToolSpec>, Error> {
        let mut spec = self.store.get(name, version).await?.ok_or_else(|| {
            Error::NotFound(format!("version: tool {name:?} has no version {version:?}"))
        })?;
        if spec.status == Status::Deprecated {
            return Ok(Arc::new(spec));
        }
        spec.status = Status::Deprecated;
        spec.deprecation_reason = reason.to_owned();
        if !self.store.update(&spec).await? {
            return Err(Error::NotFound(format!(
                "version: tool {name:?} has no version {version:?}"
            )));
        }
        self.changed();
        tracing::info!(tool = %spec.reference(), reason, "tool deprecated");
        Ok(Arc::new(spec))
    }

    /// The active tool with the spec's signature, or the spec registered now; when creation is
    /// refused, the fallback (if named) with the reason.
    pub async fn create_or_get(
        &self,
        raw: &tta_proto::v1::ToolSpec,
        fallback: Option<(&str, &str)>,
    ) -> Result<(Obtained, String), Error> {
        let validated = match self.admit(raw) {
            Ok(validated) => validated,
            Err(refused) => return self.fall_back(refused, fallback, String::new()).await,
        };
        let signature = validated.spec.signature.clone();
        if let Err(refused) = self.check_compatibility(&validated.spec).await {
            return self.fall_back(refused, fallback, signature).await;
        }
        match self.store.register(&validated.spec, true).await? {
            Registered::Created(spec) => {
                self.changed();
                tracing::info!(tool = %spec.reference(), signature = %signature, "tool created on demand");
                Ok((Obtained::Created(Arc::new(spec)), signature))
            }
            Registered::Signature(reference) => {
                let (name, version) = reference.rsplit_once('@').ok_or_else(|| {
                    Error::Corrupt(format!("signature index entry {reference:?}"))
                })?;
                let entry = self.lookup(name, version).await?;
                Ok((Obtained::Existing(entry.spec), signature))
            }
            Registered::Exists(stored) if stored.same_definition(&validated.spec) => {
                Ok((Obtained::Existing(Arc::new(stored)), signature))
            }
            Registered::Exists(stored) => {
                let refused = Error::AlreadyExists(format!(
                    "spec.version: {} already exists with a different definition",
                    stored.reference()
                ));
                self.fall_back(refused, fallback, signature).await
            }
        }
    }

    async fn fall_back(
        &self,
        refused: Error,
        fallback: Option<(&str, &str)>,
        signature: String,
    ) -> Result<(Obtained, String), Error> {
        if matches!(refused, Error::Unavailable(_) | Error::Redis(_)) {
            return Err(refused);
        }
        let Some((name, version)) = fallback else {
            return Err(refused);
        };
        let entry = self.lookup(name, version).await.map_err(|err| match err {
            Error::NotFound(message) => Error::NotFound(format!("fallback_tool: {message}")),
            other => other,
        })?;
        let reason = refused.to_string();
        tracing::info!(fallback = %entry.spec.reference(), reason = %reason, "tool creation refused; fallback returned");
        Ok((
            Obtained::Fallback {
                spec: entry.spec,
                reason,
            },
            signature,
        ))
    }

    /// Deprecates active tools unused for `max_idle` and, with `delete_after`, deletes
    /// deprecated ones unused that long. Built-in tools are kept. Returns `name@version` lists.
    pub async fn cleanup(
        &self,
        max_idle: Duration,
        delete_after: Option<Duration>,
        dry_run: bool,
    ) -> Result<(Vec<String>, Vec<String>), Error> {
        self.flush_uses().await?;
        let specs = self.store.all("").await?;
        let last_used = self.store.last_used().await?;
        let now = spec::now_ms();
        let idle_for = |spec: &ToolSpec| {
            let last = last_used
                .get(&spec.reference())
                .copied()
                .unwrap_or(spec.created_at_ms)
                .max(spec.created_at_ms);
            Duration::from_millis(now.saturating_sub(last))
        };
        let (mut deprecated, mut deleted) = (Vec::new(), Vec::new());
        for spec in specs.iter().filter(|spec| !spec.is_builtin()) {
            let idle = idle_for(spec);
            match spec.status {
                Status::Active if idle >= max_idle => {
                    if !dry_run {
                        let reason = format!(
                            "unused for {}",
                            humantime::format_duration(Duration::from_secs(idle.as_secs()))
                        );
                        self.deprecate(&spec.name, &spec.version, &reason).await?;
                    }
                    deprecated.push(spec.reference());
                }
                Status::Deprecated if delete_after.is_some_and(|limit| idle >= limit) => {
                    if !dry_run && self.store.delete(spec).await? {
                        self.changed();
                    }
                    deleted.push(spec.reference());
                }
                _ => {}
            }
        }
        if !dry_run && (!deprecated.is_empty() || !deleted.is_empty()) {
            tracing::info!(deprecated = ?deprecated, deleted = ?deleted, "idle tools cleaned up");
            metrics::counter!("tta_tool_cleanup_total", "action" => "deprecated")
                .increment(deprecated.len() as u64);
            metrics::counter!("tta_tool_cleanup_total", "action" => "deleted")
                .increment(deleted.len() as u64);
        }
        Ok((deprecated, deleted))
    }

    /// This replica changed something: drop its cache now (others follow the epoch).
    pub fn changed(&self) {
        self.cache.clear();
    }
}
