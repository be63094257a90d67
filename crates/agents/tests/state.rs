//! The per-session state store on a private redis-server: a turn is applied once, a repeated
//! delivery gets the first output back, and what a turn leaves behind expires.

use std::sync::atomic::{AtomicU32, Ordering};

use redis::aio::ConnectionManager;
use tta_agents::{state::StateStore, worker::TaskError};
use tta_runtime::redis::Keyspace;
use tta_testkit::RedisServer;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Counter {
    turns: u32,
}

async fn store(redis: &RedisServer, keys: &Keyspace) -> anyhow::Result<StateStore> {
    let client = redis::Client::open(redis.url())?;
    let connection = ConnectionManager::new(client).await?;
    Ok(StateStore::new(keys.clone(), connection))
}

/// Counts the turns applied; the output names the count it produced.
fn count(
    applied: &AtomicU32,
) -> impl Fn(Option<Counter>) -> Result<(Vec<u8>, Option<Counter>), TaskError> {
    move |current| {
        applied.fetch_add(1, Ordering::SeqCst);
        let next = Counter {
            turns: current.map_or(0, |c| c.turns) + 1,
        };
        Ok((format!("turn {}", next.turns).into_bytes(), Some(next)))
    }
}

#[tokio::test]
async fn a_repeated_turn_gets_its_first_output_and_outputs_expire() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let keys = Keyspace::new(&tta_testkit::unique_prefix("state"));
    let store = store(&redis, &keys).await?;
    let applied = AtomicU32::new(0);

    let first = store.apply_once("s1", "t1", count(&applied)).await?;
    let second = store.apply_once("s1", "t2", count(&applied)).await?;
    let repeated = store.apply_once("s1", "t1", count(&applied)).await?;
    assert_eq!(first, b"turn 1");
    assert_eq!(second, b"turn 2");
    assert_eq!(
        repeated, first,
        "a repeated turn answers as it did the first time"
    );
    assert_eq!(
        applied.load(Ordering::SeqCst),
        2,
        "the repeat applied nothing"
    );

    // Each turn's output has its own key with a time to live, so a long session does not
    // accumulate them.
    let mut connection = redis::Client::open(redis.url())?
        .get_multiplexed_async_connection()
        .await?;
    for turn in ["t1", "t2"] {
        let ttl_ms: i64 = redis::cmd("PTTL")
            .arg(keys.tagged("s1", &["world", "turn", turn]))
            .query_async(&mut connection)
            .await?;
        assert!(
            ttl_ms > 0 && ttl_ms <= 24 * 3600 * 1000,
            "turn {turn} output ttl {ttl_ms} ms"
        );
    }
    Ok(())
}
