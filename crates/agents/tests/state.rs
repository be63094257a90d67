//! The per-session state store on a private redis-server: a turn is applied once, a repeated
//! delivery gets the first output back, and what a turn leaves behind expires.

use std::{
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, SystemTime},
};

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

    let soon = Some(SystemTime::now() + Duration::from_secs(5));
    let first = store.apply_once("s1", "t1", soon, count(&applied)).await?;
    let second = store.apply_once("s1", "t2", soon, count(&applied)).await?;
    let repeated = store.apply_once("s1", "t1", soon, count(&applied)).await?;
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

#[tokio::test]
async fn a_turn_older_than_its_remembered_output_is_refused_not_applied() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let keys = Keyspace::new(&tta_testkit::unique_prefix("state-old"));
    let store = store(&redis, &keys).await?;
    let applied = AtomicU32::new(0);
    // A dead letter replayed two days after its turn: its output may be gone, so applying it
    // could change the world a second time.
    let two_days_ago = Some(SystemTime::now() - Duration::from_secs(2 * 24 * 3600));
    let refused = store
        .apply_once("s1", "t-old", two_days_ago, count(&applied))
        .await;
    match refused {
        Err(TaskError::Permanent(reason)) => assert!(reason.contains("t-old"), "{reason}"),
        other => panic!("expected a permanent refusal, got {other:?}"),
    }
    assert_eq!(applied.load(Ordering::SeqCst), 0);
    Ok(())
}
