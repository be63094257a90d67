//! The configuration chain every service uses: defaults → one YAML file → `TTA_` environment
//! overrides → command-line flags → validation. Any failure names the key path and its source,
//! and the process exits with code 2 before it binds a port.
//!
//! Environment variables nest with `__`: `TTA_BROKER__RETRY__MAX_RETRIES=5` sets
//! `broker.retry.max_retries`. `TTA_REDIS_URL` is accepted as a shorthand for `redis.url`.
//! A YAML file whose top level has an `agent_orchestration` key (the prototype's
//! `tta_config.yaml`) is read from that key.

use std::path::{Path, PathBuf};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Yaml},
};
use tta_types::{Config, config::ConfigIssues};

/// The key a prototype-style `tta_config.yaml` keeps our section under.
const PROTOTYPE_SECTION: &str = "agent_orchestration";
/// Environment variables that hold settings must carry this prefix and nest with `__`.
pub const ENV_PREFIX: &str = "TTA_";
/// Shorthand variables that map to one key each.
const ENV_ALIASES: [(&str, &str); 1] = [("TTA_REDIS_URL", "redis.url")];

/// Command-line options shared by every service binary.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfigArgs {
    /// YAML configuration file; settings in it override the built-in defaults.
    #[arg(long, short = 'c', env = "TTA_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration (secrets masked) as YAML and exit.
    #[arg(long)]
    pub dump_config: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("invalid config at `{key}`{source_hint}: {reason}")]
    Key {
        key: String,
        reason: String,
        source_hint: String,
    },
    #[error("invalid config: {0}")]
    Invalid(#[from] ConfigIssues),
}

impl Error {
    /// The key path the error is about, when it is about one key.
    pub fn key_paths(&self) -> Vec<String> {
        match self {
            Error::File { .. } => Vec::new(),
            Error::Key { key, .. } => vec![key.clone()],
            Error::Invalid(issues) => issues.0.iter().map(|issue| issue.path.clone()).collect(),
        }
    }
}

/// Loads and validates the configuration. `overrides` applies command-line flags, which win
/// over everything else.
pub fn load(args: &ConfigArgs, overrides: impl FnOnce(&mut Config)) -> Result<Config, Error> {
    load_from(args.config.as_deref(), Env::prefixed(ENV_PREFIX), overrides)
}

/// [`load`] with the environment provider passed in, so tests need not touch the process
/// environment.
pub fn load_from(
    file: Option<&Path>,
    env: Env,
    overrides: impl FnOnce(&mut Config),
) -> Result<Config, Error> {
    let mut figment = Figment::from(Serialized::defaults(Config::default()));
    if let Some(path) = file {
        figment = figment.merge(file_provider(path)?);
    }
    let settings = env
        .clone()
        .filter(|key| key.as_str().contains("__"))
        .split("__");
    figment = figment.merge(settings);
    for (variable, key) in ENV_ALIASES {
        figment = figment.merge(alias(&env, variable, key));
    }

    let mut config: Config = figment.extract().map_err(key_error)?;
    overrides(&mut config);
    config.validate()?;
    Ok(config)
}

/// Reads `variable` (with its prefix) from the environment provider's source as `key`.
fn alias(env: &Env, variable: &str, key: &'static str) -> Env {
    let suffix = variable
        .strip_prefix(ENV_PREFIX)
        .unwrap_or(variable)
        .to_owned();
    env.clone()
        .filter(move |candidate| candidate.as_str().eq_ignore_ascii_case(&suffix))
        .map(move |_| key.into())
}

fn file_provider(path: &Path) -> Result<Figment, Error> {
    let text = std::fs::read_to_string(path).map_err(|err| Error::File {
        path: path.to_owned(),
        reason: err.to_string(),
    })?;
    // Parse once here so a syntax error names the file and line instead of surfacing later as
    // a confusing type error.
    let document: serde_yaml::Value = serde_yaml::from_str(&text).map_err(|err| Error::File {
        path: path.to_owned(),
        reason: err.to_string(),
    })?;
    let figment = Figment::from(Yaml::file_exact(path));
    if document.is_null() {
        return Ok(Figment::new());
    }
    if !document.is_mapping() {
        return Err(Error::File {
            path: path.to_owned(),
            reason: "the top level must be a mapping of sections (redis, gateway, broker, …)"
                .to_owned(),
        });
    }
    let section = document.get(PROTOTYPE_SECTION);
    Ok(match section {
        Some(_) => figment.focus(PROTOTYPE_SECTION),
        None => figment,
    })
}

fn key_error(error: figment::Error) -> Error {
    let mut key = error.path.join(".");
    let reason = match &error.kind {
        figment::error::Kind::UnknownField(field, expected) => {
            // figment's path usually ends with the unknown field already; make sure it does.
            if !key.ends_with(field.as_str()) {
                key = if key.is_empty() {
                    field.clone()
                } else {
                    format!("{key}.{field}")
                };
            }
            format!("unknown key; expected one of: {}", expected.join(", "))
        }
        figment::error::Kind::UnknownVariant(variant, expected) => {
            format!(
                "unknown value {variant:?}; expected one of: {}",
                expected.join(", ")
            )
        }
        other => other.to_string(),
    };
    let source_hint = match &error.metadata {
        Some(metadata) => match &metadata.source {
            Some(figment::Source::File(path)) => format!(" (in {})", path.display()),
            _ if metadata.name.contains("environment") => {
                format!(
                    " (from {ENV_PREFIX} environment variable {})",
                    env_variable_for(&key)
                )
            }
            _ => String::new(),
        },
        None => String::new(),
    };
    Error::Key {
        key: if key.is_empty() {
            "<root>".to_owned()
        } else {
            key
        },
        reason,
        source_hint,
    }
}

/// The environment variable that sets `key`, e.g. `broker.retry.factor` →
/// `TTA_BROKER__RETRY__FACTOR`.
pub fn env_variable_for(key: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        key.replace('.', "__").to_ascii_uppercase()
    )
}

/// The effective configuration as YAML with secrets masked, for `--dump-config` and start-up logs.
pub fn dump(config: &Config) -> String {
    serde_yaml::to_string(&config.redacted())
        .unwrap_or_else(|err| format!("# cannot render configuration: {err}\n"))
}

#[cfg(test)]
// figment's `Jail` closures return its large error type; that is its API, not ours.
#[allow(clippy::result_large_err)]
mod tests {
    use std::{io::Write, time::Duration};

    use figment::Jail;

    use super::*;

    fn yaml_file(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file
    }

    fn load_file(text: &str) -> Result<Config, Error> {
        let file = yaml_file(text);
        // An environment prefix nothing uses, so the host's own TTA_ variables cannot interfere.
        load_from(
            Some(file.path()),
            Env::prefixed("TTA_TEST_NOTHING_"),
            |_| {},
        )
    }

    #[test]
    fn without_a_file_the_defaults_apply() {
        let config = load_from(None, Env::prefixed("TTA_TEST_NOTHING_"), |_| {}).unwrap();
        assert_eq!(config, Config::default());
    }

    #[test]
    fn the_documented_example_file_lists_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/config/tta.yaml");
        let config = load_from(Some(&path), Env::prefixed("TTA_TEST_NOTHING_"), |_| {}).unwrap();
        assert_eq!(config, Config::default());
    }

    #[test]
    fn file_values_override_defaults_and_keep_the_rest() {
        let config =
            load_file("broker:\n  visibility_timeout: 5s\n  retry:\n    max_retries: 7\n").unwrap();
        assert_eq!(config.broker.visibility_timeout, Duration::from_secs(5));
        assert_eq!(config.broker.retry.max_retries, 7);
        assert_eq!(config.broker.retry.factor, 2.0);
        assert_eq!(config.broker.listen.grpc.port(), 50052);
    }

    #[test]
    fn reads_the_prototype_section_when_present() {
        let config = load_file(
            "other_component: {x: 1}\nagent_orchestration:\n  monitoring:\n    cpu_warn: 60\n",
        )
        .unwrap();
        assert_eq!(config.monitoring.cpu_warn, 60.0);
    }

    #[test]
    fn the_prototypes_tools_section_loads_as_written() {
        let config = load_file(
            "agent_orchestration:
  tools:
    redis_key_prefix: \"ao-tools\" # reuse default prefix
    cache_ttl_s: 300 # LRU TTL for ToolSpec lookups
    cache_max_items: 512
    max_params: 16
    max_schema_depth: 5
    allow_network_tools: false
    allow_filesystem_tools: false
    max_idle_seconds: 86400
",
        )
        .unwrap();
        assert_eq!(config.tools.key_prefix(&config.redis), "ao-tools");
        assert_eq!(config.tools.cache_ttl_s, Duration::from_secs(300));
        assert_eq!(config.tools.max_idle_seconds, Duration::from_secs(86_400));
        assert_eq!(
            Config::default().tools.key_prefix(&config.redis),
            config.redis.key_prefix,
            "unset, the registry shares the deployment's prefix"
        );
    }

    #[test]
    fn an_empty_file_means_defaults() {
        assert_eq!(load_file("").unwrap(), Config::default());
    }

    #[test]
    fn unknown_keys_name_their_full_path() {
        let err = load_file("broker:\n  retry:\n    max_retires: 3\n").unwrap_err();
        assert_eq!(err.key_paths(), ["broker.retry.max_retires"]);
        let text = err.to_string();
        assert!(text.contains("`broker.retry.max_retires`"), "{text}");
        assert!(
            text.contains("max_retries"),
            "suggests the valid keys: {text}"
        );
    }

    #[test]
    fn mistyped_values_name_their_path() {
        let err = load_file("gateway:\n  max_input_chars: lots\n").unwrap_err();
        assert_eq!(err.key_paths(), ["gateway.max_input_chars"]);
    }

    #[test]
    fn cross_field_problems_name_their_path() {
        let err = load_file("monitoring:\n  cpu_warn: 99\n  cpu_crit: 90\n").unwrap_err();
        assert_eq!(err.key_paths(), ["monitoring.cpu_warn"]);
    }

    #[test]
    fn syntax_errors_and_missing_files_name_the_file() {
        let err = load_file("broker: [unclosed\n").unwrap_err();
        assert!(matches!(err, Error::File { .. }), "{err}");
        let err = load_from(
            Some(Path::new("/nonexistent/tta.yaml")),
            Env::prefixed("X_"),
            |_| {},
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/tta.yaml"), "{err}");
    }

    #[test]
    fn environment_overrides_file_and_flags_override_both() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "tta.yaml",
                "broker:\n  max_topic_depth: 10\nredis:\n  key_prefix: file\n",
            )?;
            jail.set_env("TTA_BROKER__MAX_TOPIC_DEPTH", "20");
            jail.set_env("TTA_REDIS_URL", "redis://127.0.0.1:7000");
            jail.set_env("TTA_CONFIG", "ignored-here.yaml");
            let config = load_from(
                Some(Path::new("tta.yaml")),
                Env::prefixed(ENV_PREFIX),
                |config| {
                    config.redis.key_prefix = "flag".into();
                },
            )
            .map_err(|err| err.to_string())?;
            assert_eq!(config.broker.max_topic_depth, 20);
            assert_eq!(config.redis.url, "redis://127.0.0.1:7000");
            assert_eq!(config.redis.key_prefix, "flag");
            Ok(())
        });
    }

    #[test]
    fn websocket_limits_take_environment_overrides_with_units() {
        Jail::expect_with(|jail| {
            jail.set_env("TTA_GATEWAY__WEBSOCKET__MAX_IN_FLIGHT", "3");
            jail.set_env("TTA_GATEWAY__WEBSOCKET__MAX_MESSAGE_BYTES", "128KiB");
            jail.set_env("TTA_GATEWAY__WEBSOCKET__PING_INTERVAL", "5s");
            let config = load_from(None, Env::prefixed(ENV_PREFIX), |_| {})
                .map_err(|err| err.to_string())?;
            let websocket = &config.gateway.websocket;
            assert_eq!(websocket.max_in_flight, 3);
            assert_eq!(websocket.max_message_bytes.bytes(), 128 * 1024);
            assert_eq!(websocket.ping_interval, Duration::from_secs(5));
            assert_eq!(websocket.idle_timeout, Duration::from_secs(45));
            Ok(())
        });
    }

    #[test]
    fn a_mistyped_environment_variable_names_the_variable() {
        Jail::expect_with(|jail| {
            jail.set_env("TTA_BROKR__MAX_TOPIC_DEPTH", "20");
            let err = load_from(None, Env::prefixed(ENV_PREFIX), |_| {}).unwrap_err();
            assert_eq!(err.key_paths(), ["brokr"]);
            assert!(err.to_string().contains("environment"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn dump_masks_secrets() {
        let mut config = Config::default();
        config.redis.url = "redis://:topsecret@cache:6379".into();
        let text = dump(&config);
        assert!(!text.contains("topsecret"));
        assert!(text.contains("redis://:***@cache:6379"));
    }

    #[test]
    fn env_variable_names_follow_the_nesting_rule() {
        assert_eq!(
            env_variable_for("broker.retry.factor"),
            "TTA_BROKER__RETRY__FACTOR"
        );
    }
}
