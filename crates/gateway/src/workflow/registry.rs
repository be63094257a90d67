//! Registered workflows, shared by every gateway replica through Redis (R8.3, R8.5).
//!
//! All keys share the hash tag `{workflows}`: `<prefix>:{workflows}:index` maps each name to its
//! latest version, `<prefix>:{workflows}:def:<name>` maps each version to its encoded
//! definition. Versions are immutable once written, so a running turn keeps the version it
//! started with and any replica can fetch it. A registration is one Lua script that checks the
//! latest version it read, so two replicas never write the same version.
//!
//! Turns route on an in-memory snapshot of the latest versions (an `ArcSwap`, refreshed every
//! second and on every local registration), so choosing a workflow costs no Redis round trip.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use prost::Message;
use redis::aio::ConnectionManager;
use tta_proto::v1 as pb;
use tta_runtime::redis::Keyspace;
use tta_types::FieldViolation;

use super::{
    builtin,
    condition::{Operand, Scope},
    definition::{self, Defaults, Workflow},
};
use crate::error::Error;

const DEFAULT_PAGE_SIZE: usize = 100;
const MAX_PAGE_SIZE: usize = 1000;
/// Concurrent registrations of one name without `expected_version` retry this often.
const REGISTER_ATTEMPTS: usize = 8;

/// KEYS: index, definitions. ARGV: name, the latest version the caller saw, the new version,
/// the encoded definition. Returns the new version, or -1 - latest when someone was first.
const REGISTER: &str = r"
local latest = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if latest ~= tonumber(ARGV[2]) then return -1 - latest end
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return tonumber(ARGV[3])
";

/// The outcome of a registration.
#[derive(Debug)]
pub struct Registered {
    pub workflow: Arc<Workflow>,
    pub warnings: Vec<String>,
}

pub struct WorkflowRegistry {
    keys: Keyspace,
    connection: ConnectionManager,
    defaults: Defaults,
    script: redis::Script,
    /// Latest version of every workflow, by name.
    latest: ArcSwap<HashMap<String, Arc<Workflow>>>,
    /// Any version asked for by number; versions never change once written.
    versions: Mutex<HashMap<(String, u32), Arc<Workflow>>>,
    /// Set once the seed workflows are stored: before that a turn could find its workflow
    /// missing, so the replica reports not ready.
    seeded: AtomicBool,
}

impl std::fmt::Debug for WorkflowRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkflowRegistry")
            .field("workflows", &self.latest.load().len())
            .finish_non_exhaustive()
    }
}

impl WorkflowRegistry {
    pub fn new(keys: Keyspace, connection: ConnectionManager, defaults: Defaults) -> Self {
        Self {
            keys,
            connection,
            defaults,
            script: redis::Script::new(REGISTER),
            latest: ArcSwap::from_pointee(HashMap::new()),
            versions: Mutex::new(HashMap::new()),
            seeded: AtomicBool::new(false),
        }
    }

    /// Whether the seed workflows (built-in and the workflows file) are stored and loaded.
    pub fn is_seeded(&self) -> bool {
        self.seeded.load(Ordering::Acquire)
    }

    pub fn defaults(&self) -> Defaults {
        self.defaults
    }

    fn index_key(&self) -> String {
        self.keys.tagged("workflows", &["index"])
    }

    fn definitions_key(&self, name: &str) -> String {
        self.keys.tagged("workflows", &["def", name])
    }

    /// Registers the built-in workflows and those of the workflows file, each only when its
    /// latest stored version says something else (so restarts and replicas add no versions).
    pub async fn seed(&self, definitions: Vec<pb::WorkflowDefinition>) -> Result<(), Error> {
        for definition in definitions {
            let name = definition.name.clone();
            for _ in 0..REGISTER_ATTEMPTS {
                let current = self.latest_version(&name).await?;
                if current > 0 {
                    let stored = self.fetch(&name, current).await?;
                    if definition::same_content(&stored.definition, &definition) {
                        break;
                    }
                }
                match self
                    .register(definition.clone(), false, Some(current))
                    .await
                {
                    Ok(_) => break,
                    Err(Error::Aborted(_)) => continue,
                    Err(Error::Invalid(violation)) => {
                        return Err(Error::Invalid(
                            violation.within(&format!("workflow {name}")),
                        ));
                    }
                    Err(err) => return Err(err),
                }
            }
        }
        self.refresh().await?;
        self.seeded.store(true, Ordering::Release);
        Ok(())
    }

    async fn latest_version(&self, name: &str) -> Result<u32, Error> {
        let version: Option<u32> = redis::cmd("HGET")
            .arg(self.index_key())
            .arg(name)
            .query_async(&mut self.connection.clone())
            .await?;
        Ok(version.unwrap_or(0))
    }

    /// Validates `definition` and, unless `validate_only`, stores it as the next version of its
    /// name. With `expected_version`, the latest version must be exactly that (0: none yet).
    pub async fn register(
        &self,
        mut definition: pb::WorkflowDefinition,
        validate_only: bool,
        expected_version: Option<u32>,
    ) -> Result<Registered, Error> {
        definition.version = 0;
        definition.created_at = None;
        let checked = definition::validate(&definition, self.defaults)?;
        if checked.route.is_default {
            self.refresh().await?;
            if let Some(other) = self
                .latest
                .load()
                .values()
                .find(|other| other.route.is_default && other.name != checked.name)
            {
                return Err(FieldViolation::new(
                    "definition.route.is_default",
                    format!(
                        "workflow {:?} is already the default; register it without is_default first",
                        other.name
                    ),
                )
                .into());
            }
        }
        for attempt in 0..REGISTER_ATTEMPTS {
            let current = self.latest_version(&definition.name).await?;
            if let Some(expected) = expected_version
                && expected != current
            {
                return Err(Error::Aborted(format!(
                    "workflow {:?} is at version {current}, not {expected}",
                    definition.name
                )));
            }
            let version = current + 1;
            let stamped = definition::stamped(&definition, version);
            let mut workflow = definition::validate(&stamped, self.defaults)?;
            workflow.version = version;
            if validate_only {
                return Ok(Registered {
                    workflow: Arc::new(workflow),
                    warnings: Vec::new(),
                });
            }
            let written: i64 = self
                .script
                .key(self.index_key())
                .key(self.definitions_key(&definition.name))
                .arg(&definition.name)
                .arg(current)
                .arg(version)
                .arg(stamped.encode_to_vec())
                .invoke_async(&mut self.connection.clone())
                .await?;
            if written > 0 {
                let workflow = Arc::new(workflow);
                self.remember(&workflow);
                tracing::info!(workflow = %workflow.name, version, "workflow registered");
                return Ok(Registered {
                    workflow,
                    warnings: Vec::new(),
                });
            }
            if expected_version.is_some() {
                return Err(Error::Aborted(format!(
                    "workflow {:?} changed while registering (now version {})",
                    definition.name,
                    -1 - written
                )));
            }
            tracing::debug!(workflow = %definition.name, attempt, "registration raced another; retrying");
        }
        Err(Error::Aborted(format!(
            "workflow {:?} is being registered concurrently; retry",
            definition.name
        )))
    }

    fn remember(&self, workflow: &Arc<Workflow>) {
        if let Ok(mut versions) = self.versions.lock() {
            versions.insert(
                (workflow.name.clone(), workflow.version),
                Arc::clone(workflow),
            );
        }
        let current = self.latest.load();
        let newer = current
            .get(&workflow.name)
            .is_none_or(|known| known.version < workflow.version);
        if newer {
            let mut next = HashMap::clone(&current);
            next.insert(workflow.name.clone(), Arc::clone(workflow));
            self.latest.store(Arc::new(next));
        }
    }

    /// One version of a workflow from Redis (or the cache).
    async fn fetch(&self, name: &str, version: u32) -> Result<Arc<Workflow>, Error> {
        if let Some(known) = self
            .versions
            .lock()
            .ok()
            .and_then(|versions| versions.get(&(name.to_owned(), version)).cloned())
        {
            return Ok(known);
        }
        let raw: Option<Vec<u8>> = redis::cmd("HGET")
            .arg(self.definitions_key(name))
            .arg(version)
            .query_async(&mut self.connection.clone())
            .await?;
        let Some(raw) = raw else {
            return Err(Error::NotFound(format!(
                "workflow {name:?} has no version {version}"
            )));
        };
        let definition = pb::WorkflowDefinition::decode(raw.as_slice())
            .map_err(|err| Error::Corrupt(format!("workflow {name} v{version}: {err}")))?;
        let workflow = definition::validate(&definition, self.defaults)
            .map_err(|err| Error::Corrupt(format!("workflow {name} v{version}: {err}")))?;
        let workflow = Arc::new(workflow);
        if let Ok(mut versions) = self.versions.lock() {
            versions.insert((name.to_owned(), version), Arc::clone(&workflow));
        }
        Ok(workflow)
    }

    /// Re-reads the index and loads versions this replica has not seen.
    pub async fn refresh(&self) -> Result<(), Error> {
        let index: HashMap<String, u32> = redis::cmd("HGETALL")
            .arg(self.index_key())
            .query_async(&mut self.connection.clone())
            .await?;
        let current = self.latest.load();
        let mut next = HashMap::with_capacity(index.len());
        for (name, version) in index {
            let workflow = match current.get(&name) {
                Some(known) if known.version == version => Arc::clone(known),
                _ => match self.fetch(&name, version).await {
                    Ok(workflow) => workflow,
                    Err(err) => {
                        tracing::warn!(workflow = %name, version, error = %err, "cannot load a registered workflow");
                        continue;
                    }
                },
            };
            next.insert(name, workflow);
        }
        self.latest.store(Arc::new(next));
        Ok(())
    }

    /// Keeps the snapshot fresh until `shutdown`.
    pub async fn refresh_every(&self, interval: Duration, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                _ = tick.tick() => {}
            }
            if let Err(err) = self.refresh().await {
                tracing::debug!(error = %err, "cannot refresh workflows; keeping the last snapshot");
            }
        }
    }

    /// A version of a workflow (0: the latest).
    pub async fn get(&self, name: &str, version: u32) -> Result<Arc<Workflow>, Error> {
        if version == 0 {
            if let Some(latest) = self.latest.load().get(name) {
                return Ok(Arc::clone(latest));
            }
            let latest = self.latest_version(name).await?;
            if latest == 0 {
                return Err(Error::NotFound(format!(
                    "workflow {name:?} is not registered"
                )));
            }
            return self.fetch(name, latest).await;
        }
        self.fetch(name, version).await
    }

    /// The latest version of each workflow, by name, one page after `page_token` (a name).
    pub async fn list(
        &self,
        page_size: u32,
        page_token: &str,
    ) -> Result<(Vec<Arc<Workflow>>, String), Error> {
        self.refresh().await?;
        let size = match usize::try_from(page_size).unwrap_or(MAX_PAGE_SIZE) {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let snapshot = self.latest.load();
        let mut names: Vec<&String> = snapshot.keys().collect();
        names.sort();
        let start = if page_token.is_empty() {
            0
        } else {
            names.partition_point(|name| name.as_str() <= page_token)
        };
        let page: Vec<Arc<Workflow>> = names[start..]
            .iter()
            .take(size)
            .filter_map(|name| snapshot.get(*name).cloned())
            .collect();
        let next = if start + page.len() < names.len() {
            page.last().map(|w| w.name.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok((page, next))
    }

    /// The workflow [`Self::route`] picks for `interaction_type` whatever the session and the
    /// request's metadata, or `None` when a route condition makes the choice depend on them
    /// (or there is no workflow to pick).
    pub fn route_without_context(&self, interaction_type: &str) -> Option<Arc<Workflow>> {
        let snapshot = self.latest.load();
        let depends_on_context = snapshot.values().any(|workflow| {
            workflow.route.condition.is_some()
                && workflow
                    .route
                    .interaction_types
                    .iter()
                    .any(|t| t == interaction_type)
        });
        if depends_on_context {
            return None;
        }
        route_in(&snapshot, interaction_type, &NoContext)
    }

    /// The workflow for a turn (R1.1): among workflows whose route names the interaction type
    /// and whose route condition holds, the highest precedence (ties: the name that sorts
    /// first); otherwise the default workflow; otherwise `collaborative`.
    pub fn route(&self, interaction_type: &str, scope: &dyn Scope) -> Option<Arc<Workflow>> {
        route_in(&self.latest.load(), interaction_type, scope)
    }
}

/// [`WorkflowRegistry::route`] over one snapshot of the latest versions.
fn route_in(
    snapshot: &HashMap<String, Arc<Workflow>>,
    interaction_type: &str,
    scope: &dyn Scope,
) -> Option<Arc<Workflow>> {
    let chosen = snapshot
        .values()
        .filter(|workflow| {
            workflow
                .route
                .interaction_types
                .iter()
                .any(|t| t == interaction_type)
                && workflow
                    .route
                    .condition
                    .as_ref()
                    .is_none_or(|condition| condition.eval(scope))
        })
        .max_by(|a, b| {
            a.route
                .precedence
                .cmp(&b.route.precedence)
                .then_with(|| b.name.cmp(&a.name))
        })
        .or_else(|| snapshot.values().find(|workflow| workflow.route.is_default))
        .or_else(|| snapshot.get(builtin::COLLABORATIVE));
    chosen.cloned()
}

/// A scope with nothing in it, for routes that have no condition to evaluate.
struct NoContext;

impl Scope for NoContext {
    fn lookup(&self, _path: &[String]) -> Operand {
        Operand::Null
    }
}
