//! Cross-field rules that serde cannot express. Every issue names the key path, so an operator
//! can go straight to the line to fix.

use std::{collections::HashMap, fmt, net::SocketAddr, time::Duration};

use super::{AgentBackend, Config, ListenConfig, RetryConfig};

/// One thing wrong with a configuration, at a dotted key path such as `broker.retry.factor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    pub path: String,
    pub reason: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

/// Everything wrong with a configuration, reported together so one edit fixes them all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigIssues(pub Vec<ConfigIssue>);

impl fmt::Display for ConfigIssues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{issue}")?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct Collector(Vec<ConfigIssue>);

impl Collector {
    fn check(&mut self, ok: bool, path: &str, reason: impl FnOnce() -> String) {
        if !ok {
            self.0.push(ConfigIssue {
                path: path.to_owned(),
                reason: reason(),
            });
        }
    }

    fn percent(&mut self, path: &str, value: f64) {
        self.check((0.0..=100.0).contains(&value), path, || {
            format!("must be a percentage between 0 and 100, got {value}")
        });
    }

    fn fraction(&mut self, path: &str, value: f64, upper_inclusive: bool) {
        let ok = value >= 0.0
            && (if upper_inclusive {
                value <= 1.0
            } else {
                value < 1.0
            });
        let range = if upper_inclusive { "[0, 1]" } else { "[0, 1)" };
        self.check(ok, path, || format!("must be within {range}, got {value}"));
    }

    fn warn_below_crit(&mut self, section: &str, resource: &str, warn: f64, crit: f64) {
        let warn_path = format!("{section}.{resource}_warn");
        self.percent(&warn_path, warn);
        self.percent(&format!("{section}.{resource}_crit"), crit);
        // Equal thresholds are allowed: the resource then goes straight from OK to critical.
        self.check(warn <= crit, &warn_path, || {
            format!("must not exceed {resource}_crit ({crit}), got {warn}")
        });
    }

    fn retry(&mut self, path: &str, retry: &RetryConfig) {
        self.check(
            retry.factor >= 1.0 && retry.factor.is_finite(),
            &format!("{path}.factor"),
            || format!("must be a finite number >= 1, got {}", retry.factor),
        );
        self.check(
            retry.base_delay <= retry.max_delay,
            &format!("{path}.base_delay"),
            || {
                format!(
                    "must not exceed max_delay ({})",
                    humantime::format_duration(retry.max_delay)
                )
            },
        );
        self.fraction(&format!("{path}.jitter"), retry.jitter, true);
    }
}

/// More runtime threads than this is a typo, not a tuning.
const MAX_WORKER_THREADS: usize = 512;

const REDIS_SCHEMES: [&str; 4] = ["redis://", "rediss://", "unix://", "redis+unix://"];

impl Config {
    /// Checks everything serde could not; returns all issues at once.
    pub fn validate(&self) -> Result<(), ConfigIssues> {
        let mut c = Collector::default();

        c.check(
            REDIS_SCHEMES
                .iter()
                .any(|scheme| self.redis.url.starts_with(scheme)),
            "redis.url",
            || format!("must start with one of {}", REDIS_SCHEMES.join(", ")),
        );
        let prefixes = [
            ("redis.key_prefix", Some(&self.redis.key_prefix)),
            (
                "tools.redis_key_prefix",
                self.tools.redis_key_prefix.as_ref(),
            ),
        ];
        for (path, prefix) in prefixes {
            let Some(prefix) = prefix else { continue };
            c.check(
                !prefix.is_empty() && !prefix.contains(|ch: char| ch == '{' || ch == '}' || ch.is_whitespace()),
                path,
                || "must be non-empty without braces or whitespace (braces are Redis Cluster hash tags)".to_owned(),
            );
        }
        c.check(self.redis.pool_size >= 1, "redis.pool_size", || {
            "must be at least 1".to_owned()
        });

        c.check(
            self.server.worker_threads <= MAX_WORKER_THREADS,
            "server.worker_threads",
            || format!("must be at most {MAX_WORKER_THREADS} (0 = one per core)"),
        );

        c.check(
            !self.telemetry.log_level.trim().is_empty(),
            "telemetry.log_level",
            || "must not be empty (e.g. \"info\")".to_owned(),
        );
        c.fraction(
            "telemetry.trace_sample_ratio",
            self.telemetry.trace_sample_ratio,
            true,
        );

        c.check(
            self.gateway.max_input_chars >= 1,
            "gateway.max_input_chars",
            || "must be at least 1".to_owned(),
        );
        c.check(
            !self.gateway.turn_timeout.is_zero(),
            "gateway.turn_timeout",
            || "must be greater than zero".to_owned(),
        );

        c.check(
            self.gateway.circuit_breaker.failure_threshold >= 1,
            "gateway.circuit_breaker.failure_threshold",
            || "must be at least 1".to_owned(),
        );
        c.check(
            !self.gateway.circuit_breaker.open_for.is_zero(),
            "gateway.circuit_breaker.open_for",
            || "must be greater than zero".to_owned(),
        );
        let websocket = &self.gateway.websocket;
        c.check(
            websocket.max_in_flight >= 1,
            "gateway.websocket.max_in_flight",
            || "must be at least 1".to_owned(),
        );
        c.check(
            websocket.max_message_bytes.bytes() >= 1024,
            "gateway.websocket.max_message_bytes",
            || "must be at least 1KiB (a turn message with its text)".to_owned(),
        );
        c.check(
            !websocket.ping_interval.is_zero(),
            "gateway.websocket.ping_interval",
            || "must be greater than zero".to_owned(),
        );
        c.check(
            websocket.idle_timeout > websocket.ping_interval,
            "gateway.websocket.idle_timeout",
            || "must be longer than gateway.websocket.ping_interval, or live clients are cut off between pings".to_owned(),
        );

        c.check(
            !self.broker.visibility_timeout.is_zero(),
            "broker.visibility_timeout",
            || "must be greater than zero".to_owned(),
        );
        c.check(
            !self.broker.reclaim_interval.is_zero(),
            "broker.reclaim_interval",
            || "must be greater than zero".to_owned(),
        );
        c.check(
            self.broker.max_topic_depth >= 1,
            "broker.max_topic_depth",
            || "must be at least 1".to_owned(),
        );
        c.check(
            self.broker.max_payload_bytes.bytes() >= 1,
            "broker.max_payload_bytes",
            || "must be at least 1 byte".to_owned(),
        );
        c.fraction(
            "broker.high_priority_headroom",
            self.broker.high_priority_headroom,
            false,
        );
        c.retry("broker.retry", &self.broker.retry);

        c.check(self.tools.max_params >= 1, "tools.max_params", || {
            "must be at least 1".to_owned()
        });
        c.check(
            self.tools.max_schema_depth >= 1,
            "tools.max_schema_depth",
            || "must be at least 1".to_owned(),
        );
        c.check(
            self.tools.cache_max_items >= 1,
            "tools.cache_max_items",
            || "must be at least 1".to_owned(),
        );

        c.check(
            !self.monitoring.metrics_interval.is_zero(),
            "monitoring.metrics_interval",
            || "must be greater than zero".to_owned(),
        );
        c.warn_below_crit(
            "monitoring",
            "cpu",
            self.monitoring.cpu_warn,
            self.monitoring.cpu_crit,
        );
        c.warn_below_crit(
            "monitoring",
            "mem",
            self.monitoring.mem_warn,
            self.monitoring.mem_crit,
        );
        c.warn_below_crit(
            "monitoring",
            "gpu_mem",
            self.monitoring.gpu_mem_warn,
            self.monitoring.gpu_mem_crit,
        );
        c.percent("monitoring.hysteresis", self.monitoring.hysteresis);
        c.check(
            self.resource_monitor.registration_ttl >= Duration::from_secs(1),
            "resource_monitor.registration_ttl",
            || "must be at least 1s".to_owned(),
        );
        if let Some(host) = &self.resource_monitor.host_name {
            c.check(
                crate::ids::check_id(host).is_ok(),
                "resource_monitor.host_name",
                || "must be 1-128 characters of letters, digits, '-', '_', '.', ':'".to_owned(),
            );
        }
        if let Some(host) = &self.agents.host_name {
            c.check(
                crate::ids::check_id(host).is_ok(),
                "agents.host_name",
                || "must be 1-128 characters of letters, digits, '-', '_', '.', ':'".to_owned(),
            );
        }
        c.check(
            !self.agents.host_check_interval.is_zero(),
            "agents.host_check_interval",
            || "must be greater than zero".to_owned(),
        );
        c.check(
            !self.gateway.capacity_refresh.is_zero(),
            "gateway.capacity_refresh",
            || "must be greater than zero".to_owned(),
        );

        let interval = self.agents.effective_heartbeat_interval();
        c.check(
            !interval.is_zero() && interval < self.agents.heartbeat_ttl,
            "agents.heartbeat_interval",
            || {
                format!(
                    "must be greater than zero and below heartbeat_ttl ({})",
                    humantime::format_duration(self.agents.heartbeat_ttl)
                )
            },
        );
        for (name, worker) in [
            ("ipa", &self.agents.ipa),
            ("wba", &self.agents.wba),
            ("nga", &self.agents.nga),
        ] {
            c.check(
                worker.concurrency >= 1,
                &format!("agents.{name}.concurrency"),
                || "must be at least 1".to_owned(),
            );
            if let Some(instance) = &worker.instance {
                c.check(
                    crate::ids::check_id(instance).is_ok(),
                    &format!("agents.{name}.instance"),
                    || "must be 1-128 characters of letters, digits, '-', '_', '.', ':'".to_owned(),
                );
            }
        }

        c.check(
            self.safety.max_text_bytes.bytes() >= 1,
            "safety.max_text_bytes",
            || "must be at least 1 byte".to_owned(),
        );
        c.check(
            self.safety.max_regenerations <= 10,
            "safety.max_regenerations",
            || format!("must be at most 10, got {}", self.safety.max_regenerations),
        );
        c.check(
            !self.safety.default_locale.trim().is_empty(),
            "safety.default_locale",
            || "must not be empty (e.g. \"en-US\")".to_owned(),
        );
        if let Some(webhook) = &self.safety.webhook {
            c.check(
                webhook.url.starts_with("http://") || webhook.url.starts_with("https://"),
                "safety.webhook.url",
                || "must start with http:// or https://".to_owned(),
            );
            c.check(!webhook.timeout.is_zero(), "safety.webhook.timeout", || {
                "must be greater than zero".to_owned()
            });
        }

        self.check_llm(&mut c);
        self.check_distinct_addresses(&mut c);

        if c.0.is_empty() {
            Ok(())
        } else {
            Err(ConfigIssues(c.0))
        }
    }

    /// The WBA plays a world file and has no model backend; the `llm` section must be complete
    /// as soon as one worker uses it.
    fn check_llm(&self, c: &mut Collector) {
        c.check(
            self.agents.wba.backend == AgentBackend::Builtin,
            "agents.wba.backend",
            || {
                "must be \"builtin\": the wba plays the world file and has no llm backend"
                    .to_owned()
            },
        );
        let llm = &self.agents.llm;
        let used = [&self.agents.ipa, &self.agents.nga]
            .iter()
            .any(|worker| worker.backend == AgentBackend::Llm);
        if !used && llm.endpoint.is_empty() {
            return;
        }
        c.check(
            llm.endpoint.starts_with("http://") || llm.endpoint.starts_with("https://"),
            "agents.llm.endpoint",
            || "must be an http:// or https:// URL such as http://127.0.0.1:11434/v1".to_owned(),
        );
        c.check(!llm.model.trim().is_empty(), "agents.llm.model", || {
            "must name the model the endpoint serves".to_owned()
        });
        c.check(
            !(llm.api_key.is_some() && llm.api_key_env.is_some()),
            "agents.llm.api_key",
            || "set either api_key or api_key_env, not both".to_owned(),
        );
        if let Some(variable) = &llm.api_key_env {
            c.check(
                !variable.is_empty()
                    && variable
                        .chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || ch == '_'),
                "agents.llm.api_key_env",
                || "must be an environment variable name (letters, digits, '_')".to_owned(),
            );
        }
        c.check(!llm.timeout.is_zero(), "agents.llm.timeout", || {
            "must be greater than zero".to_owned()
        });
        c.check(llm.max_tokens >= 1, "agents.llm.max_tokens", || {
            "must be at least 1".to_owned()
        });
        c.check(
            (0.0..=2.0).contains(&llm.temperature),
            "agents.llm.temperature",
            || format!("must be within [0, 2], got {}", llm.temperature),
        );
        c.check(
            llm.max_reply_chars >= 1,
            "agents.llm.max_reply_chars",
            || "must be at least 1".to_owned(),
        );
        c.check(
            llm.circuit_breaker.failure_threshold >= 1,
            "agents.llm.circuit_breaker.failure_threshold",
            || "must be at least 1".to_owned(),
        );
        c.check(
            !llm.circuit_breaker.open_for.is_zero(),
            "agents.llm.circuit_breaker.open_for",
            || "must be greater than zero".to_owned(),
        );
    }

    /// Two services configured on the same address would fail at bind time with a vaguer error;
    /// port 0 (pick any free port) never clashes.
    fn check_distinct_addresses(&self, c: &mut Collector) {
        let listens: [(&str, &ListenConfig); 4] = [
            ("gateway", &self.gateway.listen),
            ("broker", &self.broker.listen),
            ("tools", &self.tools.listen),
            ("resource_monitor", &self.resource_monitor.listen),
        ];
        let mut addresses: Vec<(String, SocketAddr)> = Vec::new();
        for (service, listen) in listens {
            addresses.push((format!("{service}.listen.grpc"), listen.grpc));
            addresses.push((format!("{service}.listen.admin"), listen.admin));
        }
        for (name, worker) in [
            ("ipa", &self.agents.ipa),
            ("wba", &self.agents.wba),
            ("nga", &self.agents.nga),
        ] {
            addresses.push((format!("agents.{name}.admin"), worker.admin));
        }
        let mut seen: HashMap<SocketAddr, String> = HashMap::new();
        for (path, addr) in addresses {
            if addr.port() == 0 {
                continue;
            }
            if let Some(first) = seen.get(&addr) {
                c.check(false, &path, || {
                    format!("{addr} is already used by {first}")
                });
            } else {
                seen.insert(addr, path);
            }
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::config::ByteSize;

    fn issue_paths(config: &Config) -> Vec<String> {
        match config.validate() {
            Ok(()) => Vec::new(),
            Err(issues) => issues.0.into_iter().map(|issue| issue.path).collect(),
        }
    }

    #[test]
    fn the_default_config_is_valid() {
        assert_eq!(Config::default().validate(), Ok(()));
    }

    #[test]
    fn reports_every_bad_key_by_path() {
        let mut config = Config::default();
        config.redis.url = "http://cache".into();
        config.broker.retry.factor = 0.5;
        config.monitoring.cpu_warn = 99.0;
        config.agents.heartbeat_interval = Some(Duration::from_secs(60));
        assert_eq!(
            issue_paths(&config),
            [
                "redis.url",
                "broker.retry.factor",
                "monitoring.cpu_warn",
                "agents.heartbeat_interval"
            ]
        );
    }

    #[test]
    fn equal_thresholds_are_allowed_and_host_names_must_be_ids() {
        let mut config = Config::default();
        config.monitoring.cpu_warn = 0.0;
        config.monitoring.cpu_crit = 0.0;
        assert!(issue_paths(&config).is_empty());
        config.resource_monitor.host_name = Some("gpu node 1".into());
        config.agents.host_name = Some(String::new());
        config.resource_monitor.registration_ttl = Duration::from_millis(10);
        assert_eq!(
            issue_paths(&config),
            [
                "resource_monitor.registration_ttl",
                "resource_monitor.host_name",
                "agents.host_name"
            ]
        );
    }

    #[test]
    fn worker_threads_are_automatic_or_a_sane_count() {
        let mut config = Config::default();
        config.server.worker_threads = 1;
        assert!(issue_paths(&config).is_empty());
        config.server.worker_threads = 100_000;
        assert_eq!(issue_paths(&config), ["server.worker_threads"]);
    }

    #[test]
    fn rejects_key_prefixes_that_would_break_hash_tags() {
        let mut config = Config::default();
        config.redis.key_prefix = "a{b}".into();
        assert_eq!(issue_paths(&config), ["redis.key_prefix"]);
        config.redis.key_prefix = "ao".into();
        config.tools.redis_key_prefix = Some("tools here".into());
        assert_eq!(issue_paths(&config), ["tools.redis_key_prefix"]);
    }

    #[test]
    fn rejects_two_services_on_one_address_but_allows_port_zero() {
        let mut config = Config::default();
        config.broker.listen.admin = config.gateway.listen.admin;
        let err = config.validate().unwrap_err();
        assert_eq!(err.0[0].path, "broker.listen.admin");
        assert!(err.0[0].reason.contains("gateway.listen.admin"), "{err}");

        let mut config = Config::default();
        config.gateway.listen = ListenConfig::loopback(0, 0);
        config.broker.listen = ListenConfig::loopback(0, 0);
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn an_llm_backend_needs_a_complete_llm_section() {
        let mut config = Config::default();
        config.agents.nga.backend = AgentBackend::Llm;
        assert_eq!(
            issue_paths(&config),
            ["agents.llm.endpoint", "agents.llm.model"]
        );

        config.agents.llm.endpoint = "http://127.0.0.1:11434/v1".into();
        config.agents.llm.model = "llama3.1:8b".into();
        assert_eq!(config.validate(), Ok(()));

        config.agents.llm.api_key = Some(crate::config::Secret::new("k"));
        config.agents.llm.api_key_env = Some("OPENAI API KEY".into());
        config.agents.llm.temperature = 3.0;
        config.agents.llm.circuit_breaker.failure_threshold = 0;
        config.agents.wba.backend = AgentBackend::Llm;
        assert_eq!(
            issue_paths(&config),
            [
                "agents.wba.backend",
                "agents.llm.api_key",
                "agents.llm.api_key_env",
                "agents.llm.temperature",
                "agents.llm.circuit_breaker.failure_threshold"
            ]
        );
    }

    #[test]
    fn websocket_limits_must_leave_room_for_pings_and_turns() {
        let mut config = Config::default();
        config.gateway.websocket.max_in_flight = 0;
        config.gateway.websocket.max_message_bytes = ByteSize(10);
        config.gateway.websocket.idle_timeout = config.gateway.websocket.ping_interval;
        assert_eq!(
            issue_paths(&config),
            [
                "gateway.websocket.max_in_flight",
                "gateway.websocket.max_message_bytes",
                "gateway.websocket.idle_timeout"
            ]
        );
    }

    #[test]
    fn an_unused_llm_section_is_not_checked() {
        let mut config = Config::default();
        config.agents.llm.model = String::new();
        config.agents.llm.timeout = Duration::ZERO;
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn issues_display_as_one_line_with_paths() {
        let mut config = Config::default();
        config.tools.max_params = 0;
        config.broker.retry.jitter = 2.0;
        let text = config.validate().unwrap_err().to_string();
        assert_eq!(
            text,
            "broker.retry.jitter: must be within [0, 1], got 2; tools.max_params: must be at least 1"
        );
    }
}
