//! The Redis connection pool and the key layout every service shares.
//!
//! Keys are `<prefix>:<parts…>`; keys that must live in one Redis Cluster slot (a topic's
//! streams, a session's state) put their shared part in a hash tag: `<prefix>:{<tag>}:<parts…>`.

use std::{sync::Arc, time::Duration};

use deadpool_redis::{Pool, PoolConfig, Runtime, Timeouts};
use tta_types::config::RedisConfig;

pub use deadpool_redis::{Connection, Pool as RedisPool};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid redis.url: {0}")]
    Url(String),
    #[error("cannot create the redis pool: {0}")]
    Pool(String),
}

/// Builds the pool. No connection is opened until first use, so a service can start (and report
/// not-ready) while Redis is still coming up.
pub fn pool(config: &RedisConfig) -> Result<Pool, Error> {
    // Parse up front: deadpool would only complain at the first checkout, far from the config.
    redis::Client::open(config.url.as_str()).map_err(|err| Error::Url(err.to_string()))?;
    let mut pool_config = deadpool_redis::Config::from_url(config.url.clone());
    pool_config.pool = Some(PoolConfig {
        max_size: config.pool_size,
        timeouts: Timeouts {
            wait: Some(config.connect_timeout),
            create: Some(config.connect_timeout),
            recycle: Some(config.connect_timeout),
        },
        ..PoolConfig::default()
    });
    pool_config
        .create_pool(Some(Runtime::Tokio1))
        .map_err(|err| Error::Pool(err.to_string()))
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
        let mut key = String::with_capacity(
            self.prefix.len() + parts.iter().map(|p| p.len() + 1).sum::<usize>(),
        );
        key.push_str(&self.prefix);
        for part in parts {
            key.push(':');
            key.push_str(part);
        }
        key
    }

    /// `<prefix>:{tag}:a:b` — every key with the same tag lands in the same cluster slot.
    pub fn tagged(&self, tag: &str, parts: &[&str]) -> String {
        let mut key = format!("{}:{{{tag}}}", self.prefix);
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
