//! The Redis connection pool and the key layout every service shares.
//!
//! Keys are `<prefix>:<parts…>`; keys that must live in one Redis Cluster slot (a topic's
//! streams, a session's state) put their shared part in a hash tag: `<prefix>:{<tag>}:<parts…>`.

use std::{sync::Arc, time::Duration};

use deadpool_redis::{Pool, Runtime};
use tta_types::config::RedisConfig;

pub use deadpool_redis::{Connection, Pool as RedisPool};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid redis.url: {0}")]
    Url(String),
    #[error("cannot create the redis pool: {0}")]
    Pool(String),
}

/// The connection settings of `url`, with `TCP_NODELAY` on: redis-rs leaves Nagle's algorithm
/// on by default, which with delayed ACKs adds tens of milliseconds to small requests.
pub fn connection_info(url: &str) -> Result<redis::ConnectionInfo, Error> {
    let info = redis::IntoConnectionInfo::into_connection_info(url)
        .map_err(|err| Error::Url(err.to_string()))?;
    let tcp = info.tcp_settings().clone().set_nodelay(true);
    Ok(info.set_tcp_settings(tcp))
}

/// A client for `url` whose connections use `TCP_NODELAY`.
pub fn client(url: &str) -> Result<redis::Client, Error> {
    redis::Client::open(connection_info(url)?).map_err(|err| Error::Url(err.to_string()))
}

/// Builds the pool. No connection is opened until first use, so a service can start (and report
/// not-ready) while Redis is still coming up.
pub fn pool(config: &RedisConfig) -> Result<Pool, Error> {
    let manager = deadpool_redis::Manager::new(connection_info(&config.url)?)
        .map_err(|err| Error::Url(err.to_string()))?;
    Pool::builder(manager)
        .max_size(config.pool_size)
        .wait_timeout(Some(config.connect_timeout))
        .create_timeout(Some(config.connect_timeout))
        .recycle_timeout(Some(config.connect_timeout))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|err| Error::Pool(err.to_string()))
}

/// Whether an error means Redis is out of reach (worth a retry with backoff, `UNAVAILABLE`)
/// rather than a command Redis refused.
pub fn is_unavailable(err: &redis::RedisError) -> bool {
    err.is_io_error()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_timeout()
}

/// Round-trips a `PING`; the readiness check of every Redis-backed service.
pub async fn ping(pool: &Pool) -> Result<(), String> {
    let mut connection = pool
        .get()
        .await
        .map_err(|err| format!("redis unavailable: {err}"))?;
    redis::cmd("PING")
        .query_async::<String>(&mut connection)
        .await
        .map(|_| ())
        .map_err(|err| format!("redis ping failed: {err}"))
}

/// Makes `/ready` depend on Redis answering `PING`.
pub async fn add_readiness_check(readiness: &crate::Readiness, pool: Pool) {
    readiness
        .add_check("redis", move || {
            let pool = pool.clone();
            async move { ping(&pool).await }
        })
        .await;
}

/// Builds the keys of one deployment (one `redis.key_prefix`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyspace {
    prefix: Arc<str>,
}

impl Keyspace {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<prefix>:a:b:c`
    pub fn key(&self, parts: &[&str]) -> String {
        self.build(None, parts)
    }

    /// The agent registry entry of one worker instance (expires unless heartbeats refresh it).
    pub fn agent(&self, agent_type: &str, instance: &str) -> String {
        self.key(&["agents", agent_type, instance])
    }

    /// The set of registered `type:instance` names, for listing the registry.
    pub fn agent_index(&self) -> String {
        self.key(&["agents", "index"])
    }

    /// `<prefix>:{tag}:a:b` — every key with the same tag lands in the same cluster slot.
    pub fn tagged(&self, tag: &str, parts: &[&str]) -> String {
        self.build(Some(tag), parts)
    }

    /// `<prefix>[:{tag}]:a:b`. Keys are built on every command: sized once and pushed, since
    /// `format!` and the growth after it cost more than the command's own encoding.
    fn build(&self, tag: Option<&str>, parts: &[&str]) -> String {
        let tag_len = tag.map_or(0, |tag| tag.len() + 3);
        let mut key = String::with_capacity(
            self.prefix.len() + tag_len + parts.iter().map(|p| p.len() + 1).sum::<usize>(),
        );
        key.push_str(&self.prefix);
        if let Some(tag) = tag {
            key.push_str(":{");
            key.push_str(tag);
            key.push('}');
        }
        for part in parts {
            key.push(':');
            key.push_str(part);
        }
        key
    }
}

/// Retries `attempt` with exponential backoff until it succeeds or `deadline` passes; for
/// start-up paths that should ride out a Redis that is still booting.
pub async fn with_backoff<T, E: std::fmt::Display, F, Fut>(
    deadline: Duration,
    mut attempt: F,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let started = tokio::time::Instant::now();
    let mut delay = Duration::from_millis(50);
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(err) if started.elapsed() + delay < deadline => {
                tracing::debug!(error = %err, retry_in = ?delay, "redis not ready yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
            Err(err) => return Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_the_prefix_and_tags_group_slots() {
        let keys = Keyspace::new("ao");
        assert_eq!(keys.key(&["tools", "index"]), "ao:tools:index");
        assert_eq!(keys.tagged("ipa.tasks", &["high"]), "ao:{ipa.tasks}:high");
        assert_eq!(keys.tagged("s1", &[]), "ao:{s1}");
    }

    #[test]
    fn connections_disable_nagle() {
        let info = connection_info("redis://127.0.0.1:6379").unwrap();
        assert!(info.tcp_settings().nodelay());
    }

    #[test]
    fn a_malformed_url_is_refused_before_any_connection() {
        let config = RedisConfig {
            url: "redis://[not-an-address".into(),
            ..RedisConfig::default()
        };
        assert!(matches!(pool(&config), Err(Error::Url(_))));
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_retries_until_success() {
        let mut calls = 0;
        let result: Result<u32, String> = with_backoff(Duration::from_secs(5), || {
            calls += 1;
            let outcome = if calls < 3 {
                Err("down".to_owned())
            } else {
                Ok(calls)
            };
            async move { outcome }
        })
        .await;
        assert_eq!(result, Ok(3));
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_gives_up_at_the_deadline() {
        let result: Result<(), String> = with_backoff(Duration::from_millis(300), || async {
            Err("down".to_owned())
        })
        .await;
        assert_eq!(result, Err("down".to_owned()));
    }
}
