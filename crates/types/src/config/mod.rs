//! The configuration schema of the whole stack: one YAML document that every service reads, each
//! taking the shared sections (`redis`, `telemetry`, `server`) and its own.
//!
//! Key names follow the prototype's `agent_orchestration` section where they fit (`tools`,
//! `resources`, `monitoring`, `agents`, `diagnostics`), so an existing `tta_config.yaml` section
//! can be used as it is. Every struct rejects unknown keys: a typo is an error, never a silently
//! ignored setting. Loading (file, `TTA_` environment, flags) lives in `tta-runtime`; this module
//! only says what a valid configuration is.

mod units;
mod validate;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

pub use units::{ByteSize, ByteSizeError, duration};
pub use validate::{ConfigIssue, ConfigIssues};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub redis: RedisConfig,
    pub telemetry: TelemetryConfig,
    pub server: ServerConfig,
    pub gateway: GatewayConfig,
    pub broker: BrokerConfig,
    pub tools: ToolsConfig,
    pub resource_monitor: ResourceMonitorConfig,
    pub resources: ResourcesConfig,
    pub monitoring: MonitoringConfig,
    pub agents: AgentsConfig,
    pub diagnostics: DiagnosticsConfig,
    pub safety: SafetyConfig,
}

/// Where state lives. Every key a service writes starts with `key_prefix`, so several stacks (or
/// test runs) can share one Redis without touching each other's data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`, `rediss://…` or `unix:///path`.
    pub url: String,
    pub key_prefix: String,
    pub pool_size: usize,
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".to_owned(),
            key_prefix: "ao".to_owned(),
            pool_size: 32,
            connect_timeout: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Multi-line, coloured when writing to a terminal; for people.
    #[default]
    Pretty,
    /// One line per event, for terminals that are read by people.
    Compact,
    /// One JSON object per line, for log collectors.
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    pub log_format: LogFormat,
    /// A `tracing` filter directive such as `info` or `info,tta_broker=debug`.
    pub log_level: String,
    /// OTLP/gRPC collector endpoint; the standard `OTEL_EXPORTER_OTLP_ENDPOINT` variable wins.
    pub otlp_endpoint: Option<String>,
    /// Fraction of traces sampled when exporting (parent-based).
    pub trace_sample_ratio: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: LogFormat::default(),
            log_level: "info".to_owned(),
            otlp_endpoint: None,
            trace_sample_ratio: 1.0,
        }
    }
}

/// Behaviour shared by every server process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// How long in-flight requests may run on after SIGTERM before they are cut off. Kept below
    /// Kubernetes' default 30 s termination grace and our own 5 s stop budget.
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
    /// Threads of the async runtime; 0 = one per core the process may use; 1 = a
    /// single-threaded runtime. Several services sharing a small host each do better with 1: a
    /// message then wakes one thread, not two.
    pub worker_threads: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            shutdown_grace: Duration::from_secs(3),
            worker_threads: 0,
        }
    }
}

/// The gRPC and admin HTTP addresses of one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
}

impl ListenConfig {
    pub fn loopback(grpc_port: u16, admin_port: u16) -> Self {
        Self {
            grpc: SocketAddr::from(([127, 0, 0, 1], grpc_port)),
            admin: SocketAddr::from(([127, 0, 0, 1], admin_port)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    pub listen: ListenConfig,
    pub broker_endpoint: String,
    pub tool_registry_endpoint: String,
    /// Resource monitors to aggregate, in addition to those that register themselves.
    pub resource_monitor_endpoints: Vec<String>,
    /// How often the gateway polls the resource monitors for its capacity view.
    #[serde(with = "duration")]
    pub capacity_refresh: Duration,
    /// Longest player input accepted, in characters.
    pub max_input_chars: usize,
    /// Budget for a whole standard turn (R7.1: 2 s).
    #[serde(with = "duration")]
    pub turn_timeout: Duration,
    /// Workflow definitions to load at start-up, in addition to the built-in ones.
    pub workflows_file: Option<PathBuf>,
    /// World of sessions created without one.
    pub default_world: String,
    /// Player inputs kept per session and handed to the agents.
    pub history_window: usize,
    /// Isolation of a failing agent type (R6.1): its steps stop being dispatched after repeated
    /// timeouts or dispatch failures, and fall back at once until a probe succeeds.
    pub circuit_breaker: CircuitBreakerConfig,
    /// `GET /ws` on the admin port: turns over a WebSocket (R7.5).
    pub websocket: WebSocketConfig,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: ListenConfig::loopback(50051, 9051),
            broker_endpoint: "http://127.0.0.1:50052".to_owned(),
            tool_registry_endpoint: "http://127.0.0.1:50053".to_owned(),
            resource_monitor_endpoints: Vec::new(),
            capacity_refresh: Duration::from_secs(2),
            max_input_chars: 2000,
            turn_timeout: Duration::from_secs(2),
            workflows_file: None,
            default_world: "quiet-harbor".to_owned(),
            history_window: 20,
            circuit_breaker: CircuitBreakerConfig {
                failure_threshold: 5,
                open_for: Duration::from_secs(10),
            },
            websocket: WebSocketConfig::default(),
        }
    }
}

/// Limits of the gateway's WebSocket endpoint. The server pings every `ping_interval`; a
/// connection from which nothing arrives for `idle_timeout` — not even the answer to a ping —
/// is dead and closed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebSocketConfig {
    /// Turns one connection may have running at once; one more gets a `resource_exhausted`
    /// error frame.
    pub max_in_flight: usize,
    /// Largest message a client may send; a bigger one closes the connection (1009).
    pub max_message_bytes: ByteSize,
    #[serde(with = "duration")]
    pub ping_interval: Duration,
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        Self {
            max_in_flight: 8,
            max_message_bytes: ByteSize(64 * 1024),
            ping_interval: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(45),
        }
    }
}

/// Retry schedule for failed deliveries: `base_delay * factor^(attempt-1)`, capped at
/// `max_delay`, spread by ±`jitter`. Defaults are the prototype's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    #[serde(with = "duration")]
    pub base_delay: Duration,
    pub factor: f64,
    #[serde(with = "duration")]
    pub max_delay: Duration,
    pub max_retries: u32,
    /// Fraction of the delay added or removed at random, in `[0, 1]`.
    pub jitter: f64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            base_delay: Duration::from_secs(1),
            factor: 2.0,
            max_delay: Duration::from_secs(30),
            max_retries: 3,
            jitter: 0.1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    pub listen: ListenConfig,
    /// A delivered message not acked within this time is reclaimed and redelivered.
    #[serde(with = "duration")]
    pub visibility_timeout: Duration,
    /// How often the reclaimer looks for expired deliveries and due retries.
    #[serde(with = "duration")]
    pub reclaim_interval: Duration,
    pub max_payload_bytes: ByteSize,
    /// Publishing to a topic deeper than this is refused with `RESOURCE_EXHAUSTED`.
    pub max_topic_depth: u64,
    /// Share of `max_topic_depth` kept free for HIGH priority messages, in `[0, 1)`.
    pub high_priority_headroom: f64,
    /// Duplicate publishes with the same idempotency key inside this window are accepted once.
    #[serde(with = "duration")]
    pub idempotency_window: Duration,
    pub retry: RetryConfig,
    /// Alert when a topic's dead-letter queue holds more than this many messages.
    pub dlq_alert_threshold: u64,
    /// Alert when more than this many retries are scheduled per minute on a topic.
    pub retry_alert_threshold: u64,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            listen: ListenConfig::loopback(50052, 9052),
            visibility_timeout: Duration::from_secs(30),
            reclaim_interval: Duration::from_secs(1),
            max_payload_bytes: ByteSize(1 << 20),
            max_topic_depth: 100_000,
            high_priority_headroom: 0.1,
            idempotency_window: Duration::from_secs(600),
            retry: RetryConfig::default(),
            dlq_alert_threshold: 10,
            retry_alert_threshold: 20,
        }
    }
}

/// The tool registry; keys follow the prototype's `agent_orchestration.tools` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ToolsConfig {
    pub listen: ListenConfig,
    /// Prefix of the registry's Redis keys when it should differ from `redis.key_prefix`
    /// (the prototype kept tools under their own prefix); unset means `redis.key_prefix`.
    pub redis_key_prefix: Option<String>,
    /// How long a looked-up tool spec is served from the in-process cache.
    #[serde(with = "duration")]
    pub cache_ttl_s: Duration,
    pub cache_max_items: usize,
    pub max_params: usize,
    pub max_schema_depth: usize,
    pub allow_network_tools: bool,
    pub allow_filesystem_tools: bool,
    pub allow_process_tools: bool,
    /// Tools unused for this long are deprecated and then pruned.
    #[serde(with = "duration")]
    pub max_idle_seconds: Duration,
    /// Default time limit of one tool invocation.
    #[serde(with = "duration")]
    pub default_timeout: Duration,
    /// Optional policy file (YAML or JSON), watched and reloaded on change.
    pub policy_file: Option<PathBuf>,
}

impl ToolsConfig {
    /// The prefix the tool registry's keys start with.
    pub fn key_prefix<'a>(&'a self, redis: &'a RedisConfig) -> &'a str {
        self.redis_key_prefix
            .as_deref()
            .unwrap_or(&redis.key_prefix)
    }
}

impl Default for ToolsConfig {
    fn default() -> Self {
        Self {
            listen: ListenConfig::loopback(50053, 9053),
            redis_key_prefix: None,
            cache_ttl_s: Duration::from_secs(300),
            cache_max_items: 512,
            max_params: 16,
            max_schema_depth: 5,
            allow_network_tools: false,
            allow_filesystem_tools: false,
            allow_process_tools: false,
            max_idle_seconds: Duration::from_secs(86_400),
            default_timeout: Duration::from_secs(5),
            policy_file: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResourceMonitorConfig {
    pub listen: ListenConfig,
    /// Name reported for this host; defaults to the system host name.
    pub host_name: Option<String>,
    /// The gRPC URL the gateway reaches this monitor at, written to its host record in Redis so
    /// the gateway aggregates this host without static configuration; defaults to
    /// `http://<listen.grpc>`.
    pub advertise_endpoint: Option<String>,
    /// How long the host record lives in Redis unless the monitor refreshes it; a dead monitor's
    /// host drops out of the gateway's view after this long.
    #[serde(with = "duration")]
    pub registration_ttl: Duration,
    /// Sample the CPU and memory of TTA processes (`tta*`) on the host.
    pub track_processes: bool,
}

impl Default for ResourceMonitorConfig {
    fn default() -> Self {
        Self {
            listen: ListenConfig::loopback(50054, 9054),
            host_name: None,
            advertise_endpoint: None,
            registration_ttl: Duration::from_secs(15),
            track_processes: true,
        }
    }
}

/// Limits for reservations; keys as in the prototype's `agent_orchestration.resources`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ResourcesConfig {
    pub gpu_memory_limit: Option<ByteSize>,
    pub cpu_thread_limit: Option<u32>,
    pub memory_limit: Option<ByteSize>,
}

/// Sampling and alert thresholds (percent of capacity); keys as in the prototype's
/// `agent_orchestration.monitoring`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MonitoringConfig {
    #[serde(with = "duration")]
    pub metrics_interval: Duration,
    pub cpu_warn: f64,
    pub cpu_crit: f64,
    pub mem_warn: f64,
    pub mem_crit: f64,
    pub gpu_mem_warn: f64,
    pub gpu_mem_crit: f64,
    /// A level must hold this long before its alert fires.
    #[serde(with = "duration")]
    pub sustain_for: Duration,
    /// Percentage points below a threshold a value must fall before its alert clears.
    pub hysteresis: f64,
    /// An alert that fires again at the same level within this time after its last firing is
    /// not announced again (no event, log line or transition count); its state still changes.
    #[serde(with = "duration")]
    pub alert_cooldown: Duration,
}

impl Default for MonitoringConfig {
    fn default() -> Self {
        Self {
            metrics_interval: Duration::from_secs(5),
            cpu_warn: 80.0,
            cpu_crit: 95.0,
            mem_warn: 80.0,
            mem_crit: 95.0,
            gpu_mem_warn: 85.0,
            gpu_mem_crit: 95.0,
            sustain_for: Duration::ZERO,
            hysteresis: 5.0,
            alert_cooldown: Duration::from_secs(60),
        }
    }
}

/// One built-in agent worker (IPA, WBA or NGA).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentWorkerConfig {
    pub enabled: bool,
    /// Explicit instance name; a unique one is generated when absent.
    pub instance: Option<String>,
    /// Admin HTTP address (`/health`, `/ready`, `/metrics`).
    pub admin: SocketAddr,
    /// Tasks processed at once by one worker process.
    pub concurrency: usize,
    #[serde(with = "duration")]
    pub task_timeout: Duration,
    /// Which engine answers the tasks: the built-in one, or the OpenAI-compatible endpoint of
    /// `agents.llm` with the built-in engine as fallback (IPA and NGA only).
    pub backend: AgentBackend,
}

/// The engine behind an agent worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AgentBackend {
    /// The rule-based IPA, the world file WBA, the template NGA: no model needed.
    #[default]
    Builtin,
    /// The chat-completions endpoint of `agents.llm`; the built-in engine answers whenever it
    /// fails, times out, replies with something unusable or its circuit breaker is open.
    Llm,
}

impl AgentBackend {
    /// The `backend` label of outputs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentBackend::Builtin => "builtin",
            AgentBackend::Llm => "llm",
        }
    }
}

/// A secret value: shown as `***` by `Debug`, so it never reaches a log line by accident, and
/// masked by [`Config::redacted`] before the configuration is printed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

/// An OpenAI-compatible chat-completions endpoint (vLLM, llama.cpp server, Ollama,
/// OpenRouter, …) for the workers whose `backend` is `llm`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LlmConfig {
    /// The API base URL, e.g. `http://127.0.0.1:11434/v1`; requests go to
    /// `<endpoint>/chat/completions` (a URL already ending in `/chat/completions` is used as is).
    pub endpoint: String,
    /// The model name the endpoint serves, e.g. `llama3.1:8b`.
    pub model: String,
    /// Sent as `Authorization: Bearer <api_key>`. Prefer `api_key_env`, which keeps the key out
    /// of files.
    pub api_key: Option<Secret>,
    /// Name of an environment variable holding the API key (e.g. `OPENAI_API_KEY`), read by the
    /// worker at start-up.
    pub api_key_env: Option<String>,
    /// Limit of one HTTP request. Every attempt and the fallback together stay within the
    /// worker's `task_timeout` and the task's deadline.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Further attempts after a retryable failure (connection error, 429, 5xx, timeout).
    pub max_retries: u32,
    /// `max_tokens` of each request.
    pub max_tokens: u32,
    /// Sampling temperature, 0 to 2. The IPA always asks with temperature 0.
    pub temperature: f64,
    /// A narrative reply longer than this (in characters) is not used.
    pub max_reply_chars: usize,
    pub circuit_breaker: CircuitBreakerConfig,
}

impl Default for LlmConfig {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            model: String::new(),
            api_key: None,
            api_key_env: None,
            timeout: Duration::from_secs(4),
            max_retries: 1,
            max_tokens: 400,
            temperature: 0.7,
            max_reply_chars: 4000,
            circuit_breaker: CircuitBreakerConfig::default(),
        }
    }
}

/// Stops calling something that keeps failing: after `failure_threshold` failed calls in a row
/// the breaker opens for `open_for` (callers go straight to their fallback: the built-in engine
/// for an LLM endpoint, the step's fallback for an agent type), then lets one probe call through
/// and closes again if it succeeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CircuitBreakerConfig {
    pub failure_threshold: u32,
    #[serde(with = "duration")]
    pub open_for: Duration,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_for: Duration::from_secs(30),
        }
    }
}

/// Without an agent to take the port from, any free port. The `agents` section's defaults give
/// each built-in worker its contract port, and the config loader merges those under the file.
impl Default for AgentWorkerConfig {
    fn default() -> Self {
        Self::with_admin_port(0)
    }
}

impl AgentWorkerConfig {
    fn with_admin_port(port: u16) -> Self {
        Self {
            enabled: true,
            instance: None,
            admin: SocketAddr::from(([127, 0, 0, 1], port)),
            concurrency: 64,
            task_timeout: Duration::from_secs(5),
            backend: AgentBackend::Builtin,
        }
    }
}

/// Keys as in the prototype's `agent_orchestration.agents`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentsConfig {
    /// An agent whose last heartbeat is older than this is considered gone.
    #[serde(with = "duration")]
    pub heartbeat_ttl: Duration,
    /// Defaults to a third of `heartbeat_ttl`.
    #[serde(with = "duration::option")]
    pub heartbeat_interval: Option<Duration>,
    pub auto_register: bool,
    /// The broker the workers consume their tasks from.
    pub broker_endpoint: String,
    /// Directory of world files (`<world id>.yaml`) the WBA loads.
    pub worlds_dir: PathBuf,
    /// The host the workers run on, as its resource monitor names it
    /// (`resource_monitor.host_name`); defaults to the system host name. While this host is
    /// critical a worker stops taking tasks, as long as a worker of its type on a healthier host
    /// is alive.
    pub host_name: Option<String>,
    /// How often a worker looks at its host's health in the host registry.
    #[serde(with = "duration")]
    pub host_check_interval: Duration,
    pub ipa: AgentWorkerConfig,
    pub wba: AgentWorkerConfig,
    pub nga: AgentWorkerConfig,
    /// The chat-completions endpoint of the workers whose `backend` is `llm`.
    pub llm: LlmConfig,
}

impl AgentsConfig {
    pub fn effective_heartbeat_interval(&self) -> Duration {
        self.heartbeat_interval.unwrap_or(self.heartbeat_ttl / 3)
    }
}

impl Default for AgentsConfig {
    fn default() -> Self {
        Self {
            heartbeat_ttl: Duration::from_secs(30),
            heartbeat_interval: None,
            auto_register: true,
            broker_endpoint: "http://127.0.0.1:50052".to_owned(),
            worlds_dir: PathBuf::from("deploy/worlds"),
            host_name: None,
            host_check_interval: Duration::from_secs(2),
            ipa: AgentWorkerConfig::with_admin_port(9061),
            wba: AgentWorkerConfig::with_admin_port(9062),
            nga: AgentWorkerConfig::with_admin_port(9063),
            llm: LlmConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiagnosticsConfig {
    /// Serve the JSON diagnostics endpoints (`/diagnostics`, `/agents`, `/tools`).
    pub enabled: bool,
}

impl Default for DiagnosticsConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// Therapeutic safety (R5): where the rules and crisis resources come from, how agent output is
/// repaired, and where escalations go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SafetyConfig {
    /// Rule file (YAML); unset means the rules built into the binaries (`deploy/safety/rules.yaml`).
    pub rules_file: Option<PathBuf>,
    /// Crisis messages and resources by locale (YAML); unset means the built-in
    /// `deploy/safety/resources.yaml`.
    pub resources_file: Option<PathBuf>,
    /// How often the rule file is checked for changes; zero turns watching off (`ReloadRules`
    /// still works).
    #[serde(with = "duration")]
    pub reload_interval: Duration,
    /// Whether `Safety/ReloadRules` may change the rules in force.
    pub allow_reload: bool,
    /// Longest text `Safety/Classify` accepts.
    pub max_text_bytes: ByteSize,
    /// How many alternatives an agent is asked for when its reply is blocked, before the safe
    /// fallback reply is used.
    pub max_regenerations: u32,
    /// Locale whose crisis resources are used when a session names none.
    pub default_locale: String,
    /// Optional HTTP endpoint that receives every escalation as JSON, besides the Redis stream
    /// (which stays the record: an unreachable webhook delays notices, never loses them).
    pub webhook: Option<WebhookConfig>,
}

/// An HTTP endpoint notified of each escalation, retried until it accepts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://` or `https://` URL that receives one POST per escalation.
    pub url: String,
    /// Time limit of one delivery attempt.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Longest wait between attempts (the wait doubles from 200 ms up to this).
    #[serde(with = "duration")]
    pub max_backoff: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            timeout: Duration::from_secs(5),
            max_backoff: Duration::from_secs(30),
        }
    }
}

impl Default for SafetyConfig {
    fn default() -> Self {
        Self {
            rules_file: None,
            resources_file: None,
            reload_interval: Duration::from_secs(5),
            allow_reload: true,
            max_text_bytes: ByteSize(16 * 1024),
            max_regenerations: 2,
            default_locale: "en-US".to_owned(),
            webhook: None,
        }
    }
}

impl Config {
    /// A copy that is safe to log or print: passwords in URLs and API keys are masked.
    pub fn redacted(&self) -> Config {
        let mut copy = self.clone();
        copy.redis.url = redact_url_password(&copy.redis.url);
        copy.agents.llm.endpoint = redact_url_password(&copy.agents.llm.endpoint);
        if let Some(key) = copy.agents.llm.api_key.as_mut() {
            *key = Secret::new("***");
        }
        if let Some(endpoint) = copy.telemetry.otlp_endpoint.as_mut() {
            *endpoint = redact_url_password(endpoint);
        }
        if let Some(webhook) = copy.safety.webhook.as_mut() {
            webhook.url = redact_url_password(&webhook.url);
        }
        copy
    }
}

/// Replaces the password of `scheme://user:password@host` with `***`; other URLs are unchanged.
pub fn redact_url_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let authority_start = scheme_end + 3;
    let authority_end = url[authority_start..]
        .find('/')
        .map_or(url.len(), |i| authority_start + i);
    let authority = &url[authority_start..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let user_info = &authority[..at];
    if user_info.is_empty() {
        return url.to_owned();
    }
    let masked_user_info = match user_info.split_once(':') {
        Some((user, _password)) => format!("{user}:***"),
        // `redis://secret@host` puts the password where the user name usually is.
        None => "***".to_owned(),
    };
    format!(
        "{}{}{}",
        &url[..authority_start],
        masked_user_info,
        &url[authority_start + at..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_use_the_contract_ports() {
        let config = Config::default();
        assert_eq!(config.gateway.listen.grpc.port(), 50051);
        assert_eq!(config.gateway.listen.admin.port(), 9051);
        assert_eq!(config.broker.listen.grpc.port(), 50052);
        assert_eq!(config.tools.listen.grpc.port(), 50053);
        assert_eq!(config.resource_monitor.listen.grpc.port(), 50054);
        assert_eq!(config.agents.ipa.admin.port(), 9061);
        assert_eq!(config.agents.wba.admin.port(), 9062);
        assert_eq!(config.agents.nga.admin.port(), 9063);
    }

    #[test]
    fn defaults_follow_the_prototype() {
        let config = Config::default();
        assert_eq!(config.redis.key_prefix, "ao");
        assert_eq!(config.broker.retry.base_delay, Duration::from_secs(1));
        assert_eq!(config.broker.retry.max_delay, Duration::from_secs(30));
        assert_eq!(config.broker.retry.max_retries, 3);
        assert_eq!(config.broker.dlq_alert_threshold, 10);
        assert_eq!(config.broker.retry_alert_threshold, 20);
        assert_eq!(config.tools.max_params, 16);
        assert_eq!(config.tools.max_schema_depth, 5);
        assert!(!config.tools.allow_network_tools && !config.tools.allow_filesystem_tools);
        assert_eq!(
            config.agents.effective_heartbeat_interval(),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn reads_a_prototype_style_section() {
        let yaml = r#"
tools:
  cache_ttl_s: 300
  cache_max_items: 512
  max_idle_seconds: 86400
resources:
  gpu_memory_limit: "4GB"
  cpu_thread_limit: 8
monitoring:
  metrics_interval: 5
  cpu_warn: 70
agents:
  heartbeat_ttl: 30.0
  heartbeat_interval: 10.0
  ipa:
    enabled: true
    instance: "worker-1"
"#;
        let config: Config = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(config.resources.gpu_memory_limit, Some(ByteSize(4 << 30)));
        assert_eq!(config.monitoring.cpu_warn, 70.0);
        assert_eq!(config.agents.ipa.instance.as_deref(), Some("worker-1"));
        assert_eq!(
            config.agents.heartbeat_interval,
            Some(Duration::from_secs(10))
        );
        assert_eq!(config.tools.cache_ttl_s, Duration::from_secs(300));
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = serde_yaml::from_str::<Config>("broker:\n  visibilty_timeout: 5s\n").unwrap_err();
        assert!(err.to_string().contains("visibilty_timeout"), "{err}");
    }

    #[test]
    fn serialised_defaults_parse_back_to_the_same_config() {
        let text = serde_yaml::to_string(&Config::default()).unwrap();
        assert_eq!(
            serde_yaml::from_str::<Config>(&text).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn redaction_masks_passwords_only() {
        assert_eq!(
            redact_url_password("redis://user:hunter2@cache:6379/0"),
            "redis://user:***@cache:6379/0"
        );
        assert_eq!(
            redact_url_password("redis://:hunter2@cache"),
            "redis://:***@cache"
        );
        assert_eq!(
            redact_url_password("redis://hunter2@cache"),
            "redis://***@cache"
        );
        assert_eq!(
            redact_url_password("redis://cache:6379"),
            "redis://cache:6379"
        );
        assert_eq!(
            redact_url_password("unix:///tmp/redis.sock"),
            "unix:///tmp/redis.sock"
        );

        let mut config = Config::default();
        config.redis.url = "redis://:s3cret@db:6379".into();
        assert!(!format!("{:?}", config.redacted()).contains("s3cret"));
    }

    #[test]
    fn api_keys_are_masked_when_printed_and_never_debug_formatted() {
        let mut config = Config::default();
        config.agents.llm.api_key = Some(Secret::new("sk-live-123"));
        config.agents.llm.endpoint = "https://user:pw-456@llm.example/v1".into();
        assert!(!format!("{config:?}").contains("sk-live-123"));
        let printed = serde_yaml::to_string(&config.redacted()).unwrap();
        assert!(!printed.contains("sk-live-123"), "{printed}");
        assert!(!printed.contains("pw-456"), "{printed}");
        assert!(printed.contains("api_key: '***'"), "{printed}");
        // The unredacted config still carries the key for the worker that sends it.
        assert_eq!(
            config.agents.llm.api_key.as_ref().map(Secret::expose),
            Some("sk-live-123")
        );
    }

    #[test]
    fn reads_the_llm_backend_switch() {
        let yaml = r#"
agents:
  ipa:
    backend: llm
  llm:
    endpoint: "http://127.0.0.1:11434/v1"
    model: "llama3.1:8b"
    api_key_env: OPENAI_API_KEY
    timeout: 2s
    circuit_breaker:
      failure_threshold: 3
      open_for: 10s
"#;
        let config: Config = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(config.agents.ipa.backend, AgentBackend::Llm);
        assert_eq!(config.agents.nga.backend, AgentBackend::Builtin);
        assert_eq!(config.agents.llm.timeout, Duration::from_secs(2));
        assert_eq!(config.agents.llm.circuit_breaker.failure_threshold, 3);
        assert_eq!(
            config.agents.llm.api_key_env.as_deref(),
            Some("OPENAI_API_KEY")
        );
        assert!(serde_yaml::from_str::<Config>("agents:\n  nga:\n    backend: gpt\n").is_err());
    }
}
