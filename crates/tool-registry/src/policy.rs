//! The tool policy (R3.2): which tools may exist and run, their timeouts and limits. Built from
//! the `tools` configuration section (which `TTA_TOOLS__*` environment variables already
//! override) with the policy file on top; validated as a whole, never applied in part.
//!
//! Network, filesystem and process tools are denied unless the policy allows them.

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tta_proto::v1 as pb;
use tta_types::config::{ToolsConfig, duration};

use crate::{schema::SchemaLimits, spec::ToolSpec};

/// Largest inline policy document `ReloadPolicy` accepts.
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;

/// A duration in a map (`tool_timeouts`), written like every other duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timeout(#[serde(with = "duration")] pub Duration);

/// The effective policy.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    pub allow_network_tools: bool,
    pub allow_filesystem_tools: bool,
    pub allow_process_tools: bool,
    /// Capabilities tools may declare; empty means any not denied.
    pub allowed_capabilities: Vec<String>,
    pub denied_capabilities: Vec<String>,
    /// Tools that may be invoked: exact names or prefixes ending in `*`; empty means all.
    pub allowed_tools: Vec<String>,
    /// Agents that may invoke tools: agent types or `type:instance`; empty means anyone.
    pub allowed_callers: Vec<String>,
    /// Agents that may register as executors: agent types or `type:instance`; empty means any.
    pub allowed_executors: Vec<String>,
    /// Shared secrets executors of an agent type must present (`x-tta-executor-token`
    /// metadata) to register. Never leaves the registry.
    pub executor_tokens: BTreeMap<String, String>,
    #[serde(with = "duration")]
    pub default_timeout: Duration,
    #[serde(with = "duration")]
    pub max_timeout: Duration,
    pub tool_timeouts: BTreeMap<String, Timeout>,
    /// Invocations of one tool running at once on one registry replica.
    pub max_concurrency_per_tool: u32,
    pub max_params: usize,
    pub max_schema_depth: usize,
    #[serde(with = "duration")]
    pub cache_ttl: Duration,
    pub cache_max_items: usize,
    #[serde(with = "duration")]
    pub max_idle: Duration,
    /// Deprecated tools unused this long are deleted; unset means never.
    #[serde(with = "duration::option")]
    pub delete_after: Option<Duration>,
    /// Whether `ReloadPolicy` may change the policy at run time.
    pub allow_reload: bool,
}

/// Secrets never appear in debug output either (logs print policies with `?`).
impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = self.redacted_json();
        write!(f, "Policy({redacted})")
    }
}

impl Default for Policy {
    fn default() -> Self {
        Self::from_config(&ToolsConfig::default())
    }
}

/// One problem of a policy, with the key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl Problem {
    fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl Policy {
    /// The policy the `tools` configuration section describes.
    pub fn from_config(config: &ToolsConfig) -> Self {
        Self {
            allow_network_tools: config.allow_network_tools,
            allow_filesystem_tools: config.allow_filesystem_tools,
            allow_process_tools: config.allow_process_tools,
            allowed_capabilities: Vec::new(),
            denied_capabilities: Vec::new(),
            allowed_tools: Vec::new(),
            allowed_callers: Vec::new(),
            allowed_executors: Vec::new(),
            executor_tokens: BTreeMap::new(),
            default_timeout: config.default_timeout,
            max_timeout: config.default_timeout.max(Duration::from_secs(30)),
            tool_timeouts: BTreeMap::new(),
            max_concurrency_per_tool: 64,
            max_params: config.max_params,
            max_schema_depth: config.max_schema_depth,
            cache_ttl: config.cache_ttl_s,
            cache_max_items: config.cache_max_items,
            max_idle: config.max_idle_seconds,
            delete_after: None,
            allow_reload: true,
        }
    }

    /// `base` with the keys of a YAML or JSON document laid over it. Unknown keys and bad
    /// values are problems; the result is validated as a whole.
    pub fn overlay(base: &Policy, document: &str) -> Result<Policy, Vec<Problem>> {
        let overlay: serde_yaml::Value = serde_yaml::from_str(document).map_err(|err| {
            vec![Problem::new(
                "tools",
                format!("not valid YAML or JSON: {err}"),
            )]
        })?;
        let overlay = match overlay {
            serde_yaml::Value::Mapping(map) => map,
            serde_yaml::Value::Null => serde_yaml::Mapping::new(),
            _ => {
                return Err(vec![Problem::new(
                    "tools",
                    "must be a mapping of policy keys",
                )]);
            }
        };
        let mut merged = match serde_yaml::to_value(base) {
            Ok(serde_yaml::Value::Mapping(map)) => map,
            _ => {
                return Err(vec![Problem::new(
                    "tools",
                    "cannot represent the base policy",
                )]);
            }
        };
        let mut problems = Vec::new();
        for (key, value) in overlay {
            let Some(name) = key.as_str().map(str::to_owned) else {
                problems.push(Problem::new("tools", "keys must be strings"));
                continue;
            };
            if !merged.contains_key(name.as_str()) {
                problems.push(Problem::new(format!("tools.{name}"), "unknown key"));
                continue;
            }
            // Check each key alone first, so every bad key is named, not just the first.
            let mut single = match serde_yaml::to_value(base) {
                Ok(serde_yaml::Value::Mapping(map)) => map,
                _ => serde_yaml::Mapping::new(),
            };
            single.insert(key.clone(), value.clone());
            if let Err(err) = serde_yaml::from_value::<Policy>(serde_yaml::Value::Mapping(single)) {
                problems.push(Problem::new(format!("tools.{name}"), err.to_string()));
                continue;
            }
            merged.insert(key, value);
        }
        // The keys that parsed are checked together too, so one reply lists every problem.
        let policy: Policy = match serde_yaml::from_value(serde_yaml::Value::Mapping(merged)) {
            Ok(policy) => policy,
            Err(err) => {
                problems.push(Problem::new("tools", err.to_string()));
                return Err(problems);
            }
        };
        problems.extend(policy.validate());
        if problems.is_empty() {
            Ok(policy)
        } else {
            Err(problems)
        }
    }

    /// Every semantic problem, each with its key path.
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, path: &str, message: String| {
            if !ok {
                problems.push(Problem::new(path, message));
            }
        };
        check(
            self.max_params >= 1,
            "tools.max_params",
            "must be at least 1".into(),
        );
        check(
            self.max_schema_depth >= 1,
            "tools.max_schema_depth",
            "must be at least 1".into(),
        );
        check(
            self.cache_max_items >= 1,
            "tools.cache_max_items",
            "must be at least 1".into(),
        );
        check(
            self.max_concurrency_per_tool >= 1,
            "tools.max_concurrency_per_tool",
            "must be at least 1".into(),
        );
        check(
            !self.default_timeout.is_zero(),
            "tools.default_timeout",
            "must be positive".into(),
        );
        check(
            self.default_timeout <= self.max_timeout,
            "tools.default_timeout",
            format!(
                "{} exceeds tools.max_timeout {}",
                humantime::format_duration(self.default_timeout),
                humantime::format_duration(self.max_timeout)
            ),
        );
        check(
            !self.max_idle.is_zero(),
            "tools.max_idle",
            "must be positive".into(),
        );
        for (name, timeout) in &self.tool_timeouts {
            check(
                !timeout.0.is_zero() && timeout.0 <= self.max_timeout,
                &format!("tools.tool_timeouts.{name}"),
                "must be positive and at most tools.max_timeout".into(),
            );
        }
        for capability in &self.allowed_capabilities {
            check(
                !self.denied_capabilities.contains(capability),
                "tools.allowed_capabilities",
                format!("{capability:?} is also denied"),
            );
        }
        for (agent, token) in &self.executor_tokens {
            check(
                token.len() >= 16,
                &format!("tools.executor_tokens.{agent}"),
                "must be at least 16 characters".into(),
            );
        }
        problems
    }

    pub fn schema_limits(&self) -> SchemaLimits {
        SchemaLimits {
            max_params: self.max_params,
            max_depth: self.max_schema_depth,
        }
    }

    /// Whether a spec may exist under this policy: its safety flags and capabilities. The
    /// message names the field, as in `spec.safety.network: network tools are not allowed`.
    pub fn admits(&self, spec: &ToolSpec) -> Result<(), String> {
        let flags = [
            (spec.safety.network, self.allow_network_tools, "network"),
            (
                spec.safety.filesystem,
                self.allow_filesystem_tools,
                "filesystem",
            ),
            (spec.safety.process, self.allow_process_tools, "process"),
        ];
        for (declared, allowed, flag) in flags {
            if declared && !allowed {
                return Err(format!("spec.safety.{flag}: {flag} tools are not allowed"));
            }
        }
        for capability in &spec.capabilities {
            if self.denied_capabilities.contains(capability) {
                return Err(format!(
                    "spec.capabilities: capability {capability:?} is denied"
                ));
            }
            if !self.allowed_capabilities.is_empty()
                && !self.allowed_capabilities.contains(capability)
            {
                return Err(format!(
                    "spec.capabilities: capability {capability:?} is not allowed"
                ));
            }
        }
        Ok(())
    }

    /// Whether `caller` (`type:instance`, or empty) may invoke `spec` now.
    pub fn permits_invocation(
        &self,
        spec: &ToolSpec,
        caller: Option<(&str, &str)>,
    ) -> Result<(), String> {
        self.admits(spec)?;
        if !self.allowed_tools.is_empty()
            && !self
                .allowed_tools
                .iter()
                .any(|pattern| name_matches(pattern, &spec.name))
        {
            return Err(format!(
                "name: tool {:?} is not in the allowed tools",
                spec.name
            ));
        }
        if !self.allowed_callers.is_empty() {
            let allowed = caller.is_some_and(|(agent_type, instance)| {
                agent_listed(&self.allowed_callers, agent_type, instance)
            });
            if !allowed {
                return Err("caller: not an allowed caller".to_owned());
            }
        }
        Ok(())
    }

    /// Whether an agent may register as an executor.
    pub fn permits_executor(&self, agent_type: &str, instance: &str) -> bool {
        self.allowed_executors.is_empty()
            || agent_listed(&self.allowed_executors, agent_type, instance)
    }

    /// The timeout of one invocation: the caller's, else the policy's per-tool override, else
    /// the spec's preference, else the default — capped by the maximum.
    pub fn timeout_for(
        &self,
        spec: &ToolSpec,
        requested: Option<Duration>,
    ) -> Result<Duration, String> {
        if let Some(requested) = requested {
            if requested > self.max_timeout {
                return Err(format!(
                    "exceeds policy maximum {}",
                    humantime::format_duration(self.max_timeout)
                ));
            }
            return Ok(requested);
        }
        let preferred = self
            .tool_timeouts
            .get(&spec.name)
            .map(|timeout| timeout.0)
            .or(spec.timeout_ms.map(Duration::from_millis))
            .unwrap_or(self.default_timeout);
        Ok(preferred.min(self.max_timeout))
    }

    /// Content hash, changing with each applied reload (secrets included, so rotating a token
    /// is visible as a new version without revealing it).
    pub fn version(&self) -> String {
        let text = serde_json::to_string(self).unwrap_or_default();
        let digest = Sha256::digest(text.as_bytes());
        digest
            .iter()
            .take(8)
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }

    /// The policy as JSON with every secret replaced, for diagnostics and logs.
    pub fn redacted_json(&self) -> serde_json::Value {
        let mut copy = self.clone();
        for token in copy.executor_tokens.values_mut() {
            *token = "<redacted>".to_owned();
        }
        serde_json::to_value(&copy).unwrap_or_default()
    }

    /// The wire snapshot, redacted: secret values are listed by path in `redacted_fields`.
    pub fn to_proto(&self) -> pb::ToolPolicy {
        let duration = |value: Duration| prost_types::Duration::try_from(value).ok();
        pb::ToolPolicy {
            allow_network_tools: self.allow_network_tools,
            allow_filesystem_tools: self.allow_filesystem_tools,
            allow_process_tools: self.allow_process_tools,
            allowed_capabilities: self.allowed_capabilities.clone(),
            denied_capabilities: self.denied_capabilities.clone(),
            allowed_executors: self.allowed_executors.clone(),
            default_timeout: duration(self.default_timeout),
            max_timeout: duration(self.max_timeout),
            max_params: u32::try_from(self.max_params).unwrap_or(u32::MAX),
            max_schema_depth: u32::try_from(self.max_schema_depth).unwrap_or(u32::MAX),
            cache_ttl: duration(self.cache_ttl),
            cache_max_items: u32::try_from(self.cache_max_items).unwrap_or(u32::MAX),
            max_idle: duration(self.max_idle),
            delete_after: self.delete_after.and_then(duration),
            tool_timeouts: self
                .tool_timeouts
                .iter()
                .filter_map(|(name, timeout)| Some((name.clone(), duration(timeout.0)?)))
                .collect(),
            redacted_fields: self
                .executor_tokens
                .keys()
                .map(|agent| format!("executor_tokens.{agent}"))
                .collect(),
        }
    }
}

/// `pattern` is a name or a prefix ending in `*`.
fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

fn agent_listed(list: &[String], agent_type: &str, instance: &str) -> bool {
    let full = format!("{agent_type}:{instance}");
    list.iter()
        .any(|entry| entry == agent_type || *entry == full)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn risky_tools_are_denied_by_default() {
        let policy = Policy::default();
        assert!(!policy.allow_network_tools);
        assert!(!policy.allow_filesystem_tools);
        assert!(!policy.allow_process_tools);
        assert!(policy.validate().is_empty());
    }

    #[test]
    fn an_overlay_names_every_bad_key() {
        let base = Policy::default();
        let problems = Policy::overlay(
            &base,
            "max_schema_depth: 0\nbogus: 1\ndefault_timeout: soon\n",
        )
        .unwrap_err();
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert!(paths.contains(&"tools.bogus"), "{problems:?}");
        assert!(paths.contains(&"tools.default_timeout"), "{problems:?}");
        let problems = Policy::overlay(&base, "max_schema_depth: 0\n").unwrap_err();
        assert_eq!(problems[0].path, "tools.max_schema_depth");
    }

    #[test]
    fn an_overlay_accepts_json_and_yaml() {
        let base = Policy::default();
        let policy = Policy::overlay(
            &base,
            r#"{"allow_network_tools": true, "tool_timeouts": {"dice.roll": "2s"}}"#,
        )
        .unwrap();
        assert!(policy.allow_network_tools);
        assert_eq!(policy.tool_timeouts["dice.roll"].0, Duration::from_secs(2));
        assert_ne!(policy.version(), base.version());
    }

    #[test]
    fn secrets_are_redacted_everywhere_they_could_be_shown() {
        let base = Policy::default();
        let policy =
            Policy::overlay(&base, "executor_tokens:\n  ipa: super-secret-token-value\n").unwrap();
        assert!(!format!("{policy:?}").contains("super-secret"));
        assert!(!policy.redacted_json().to_string().contains("super-secret"));
        let wire = policy.to_proto();
        assert!(!format!("{wire:?}").contains("super-secret"));
        assert_eq!(wire.redacted_fields, vec!["executor_tokens.ipa"]);
    }

    #[test]
    fn the_sample_policy_file_is_valid() {
        let sample = include_str!("../../../deploy/tools/policy.yaml");
        let policy = Policy::overlay(&Policy::default(), sample).unwrap();
        assert!(!policy.allow_network_tools);
        assert_eq!(policy.delete_after, Some(Duration::from_secs(7 * 86_400)));
    }

    #[test]
    fn patterns_and_agent_lists_match() {
        assert!(name_matches("world.*", "world.lookup"));
        assert!(!name_matches("world.*", "dice.roll"));
        assert!(agent_listed(&["ipa".into()], "ipa", "a1"));
        assert!(agent_listed(&["wba:w1".into()], "wba", "w1"));
        assert!(!agent_listed(&["wba:w1".into()], "wba", "w2"));
    }
}
