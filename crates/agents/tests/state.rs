//! The per-session state store on a private redis-server: a turn is applied once, a repeated
//! delivery gets the first output back, what a turn leaves behind expires, and a store's
//! memory of the states it committed never hides a change another replica made.

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

async fn store(redis: &RedisServer, keys: &Keyspace) -> anyhow::Result<StateStore<Counter>> {
    let client = redis::Client::open(redis.url())?;
    let connection = ConnectionManager::new(client).await?;
    Ok(StateStore::new(keys.clone(), connection))
}

/// What a turn makes of the count: its output and the new count, if it changed.
type Applied = Result<(Vec<u8>, Option<Counter>), TaskError>;

/// The session's state as stored.
async fn stored_state(
    connection: &mut redis::aio::MultiplexedConnection,
    keys: &Keyspace,
    session: &str,
) -> anyhow::Result<Counter> {
    let stored: String = redis::cmd("HGET")
        .arg(keys.tagged(session, &["world"]))
        .arg("state")
        .query_async(connection)
        .await?;
    Ok(serde_json::from_str(&stored)?)
}

/// Counts the turns applied; the output names the count it produced.
fn count(applied: &AtomicU32) -> impl Fn(Option<&Counter>) -> Applied {
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
    let mut connection = redis::Client::open(redis.url())?
        .get_multiplexed_async_connection()
        .await?;
    assert_eq!(
        stored_state(&mut connection, &keys, "s1").await?,
        Counter { turns: 2 },
        "the repeat changed nothing"
    );

    // Each turn's output has its own key with a time to live, so a long session does not
    // accumulate them.
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

/// Reads the count without changing it, as a "look" reads the world.
fn look(current: Option<&Counter>) -> Applied {
    let turns = current.map_or(0, |c| c.turns);
    Ok((format!("saw {turns}").into_bytes(), None))
}

#[tokio::test]
async fn a_store_skips_the_read_of_a_state_it_committed_but_never_uses_a_stale_one()
-> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let keys = Keyspace::new(&tta_testkit::unique_prefix("state-replicas"));
    // Two WBA replicas serving the same session, one turn after the other.
    let first_replica = store(&redis, &keys).await?;
    let second_replica = store(&redis, &keys).await?;
    let mut stats = redis::Client::open(redis.url())?
        .get_multiplexed_async_connection()
        .await?;
    let applied = AtomicU32::new(0);
    let soon = Some(SystemTime::now() + Duration::from_secs(5));

    assert_eq!(
        first_replica
            .apply_once("s1", "t1", soon, count(&applied))
            .await?,
        b"turn 1"
    );
    let reads = tta_testkit::command_calls(&mut stats, "hmget").await?;
    assert_eq!(
        first_replica
            .apply_once("s1", "t2", soon, count(&applied))
            .await?,
        b"turn 2"
    );
    assert_eq!(
        tta_testkit::command_calls(&mut stats, "hmget").await?,
        reads,
        "the next turn on the same replica starts from the state it committed"
    );

    // The other replica moves the world on; the first one's memory is now behind.
    assert_eq!(
        second_replica
            .apply_once("s1", "t3", soon, count(&applied))
            .await?,
        b"turn 3"
    );
    assert_eq!(
        first_replica.apply_once("s1", "t4", soon, look).await?,
        b"saw 3",
        "a turn that changes nothing still sees the other replica's change"
    );
    assert_eq!(
        second_replica
            .apply_once("s1", "t5", soon, count(&applied))
            .await?,
        b"turn 4"
    );
    assert_eq!(
        first_replica
            .apply_once("s1", "t6", soon, count(&applied))
            .await?,
        b"turn 5",
        "a change computed from a stale state is not committed; the turn is applied to the current one"
    );

    // A repeated turn answers as it did the first time, on either replica, cached or not.
    assert_eq!(
        first_replica
            .apply_once("s1", "t3", soon, count(&applied))
            .await?,
        b"turn 3"
    );
    assert_eq!(
        second_replica
            .apply_once("s1", "t6", soon, count(&applied))
            .await?,
        b"turn 5"
    );
    assert_eq!(
        stored_state(&mut stats, &keys, "s1").await?,
        Counter { turns: 5 }
    );

    // A turn that fails on the remembered state is judged again on the stored one.
    first_replica
        .apply_once("s2", "t1", soon, count(&applied))
        .await?;
    second_replica
        .apply_once("s2", "t2", soon, count(&applied))
        .await?;
    assert_eq!(
        first_replica
            .apply_once("s2", "t3", soon, only_after(2))
            .await?,
        b"turn 3"
    );
    Ok(())
}

#[tokio::test]
async fn a_remembered_state_never_passes_for_another_with_the_same_count() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let keys = Keyspace::new(&tta_testkit::unique_prefix("state-lost"));
    let first_replica = store(&redis, &keys).await?;
    let second_replica = store(&redis, &keys).await?;
    let mut connection = redis::Client::open(redis.url())?
        .get_multiplexed_async_connection()
        .await?;
    let applied = AtomicU32::new(0);
    let soon = Some(SystemTime::now() + Duration::from_secs(5));
    first_replica
        .apply_once("s1", "t1", soon, count(&applied))
        .await?;
    // Redis loses that commit (a failover before it reached the replica), and the other WBA
    // makes a different first commit.
    let _: () = redis::cmd("DEL")
        .arg(keys.tagged("s1", &["world"]))
        .arg(keys.tagged("s1", &["world", "turn", "t1"]))
        .query_async(&mut connection)
        .await?;
    second_replica
        .apply_once("s1", "t1-again", soon, |_| {
            Ok((b"started at ten".to_vec(), Some(Counter { turns: 10 })))
        })
        .await?;
    assert_eq!(
        first_replica
            .apply_once("s1", "t2", soon, count(&applied))
            .await?,
        b"turn 11",
        "the first replica's memory of its lost commit is not taken for the new one"
    );
    Ok(())
}

/// Counts one more turn, but refuses unless `turns` turns came before.
fn only_after(turns: u32) -> impl Fn(Option<&Counter>) -> Applied {
    move |current| match current {
        Some(counter) if counter.turns == turns => {
            let next = Counter { turns: turns + 1 };
            Ok((format!("turn {}", next.turns).into_bytes(), Some(next)))
        }
        _ => Err(TaskError::Permanent(format!(
            "expected {turns} turns before"
        ))),
    }
}
