//! The background reclaimer's passes are bounded: however many deliveries are in flight, one
//! pass looks at a few thousand pending entries and the next pass goes on from there, so Redis
//! is never held for long. An operator's recovery still sweeps everything at once.

use std::time::Duration;

use redis::Value;
use tta_broker::engine::{Engine, Outgoing, Sweep};
use tta_testkit::{RedisServer, test_config};
use tta_types::Priority;

const MESSAGES: usize = 6_000;
/// Pending entries that get a fresh lease; the rest keep the old one and are due.
const FRESH: usize = 5_500;

async fn fill(engine: &Engine, topic: &str) -> anyhow::Result<()> {
    for _ in 0..MESSAGES / 100 {
        let batch = (0..100)
            .map(|_| Outgoing {
                topic: topic.to_owned(),
                priority: Priority::Normal,
                headers: Default::default(),
                payload: b"work".to_vec().into(),
                idempotency_key: None,
                delay: Duration::ZERO,
                content_type: String::new(),
            })
            .collect();
        for published in engine.publish(batch).await {
            published?;
        }
    }
    Ok(())
}

fn entry_ids(reply: &Value) -> Vec<String> {
    let Value::Array(streams) = reply else {
        return Vec::new();
    };
    let mut ids = Vec::new();
    for stream in streams {
        let Value::Array(parts) = stream else {
            continue;
        };
        let Some(Value::Array(entries)) = parts.get(1) else {
            continue;
        };
        for entry in entries {
            if let Value::Array(fields) = entry
                && let Some(Value::BulkString(id)) = fields.first()
            {
                ids.push(String::from_utf8_lossy(id).into_owned());
            }
        }
    }
    ids
}

#[tokio::test]
async fn a_reclaim_pass_is_bounded_and_the_next_one_goes_on_where_it_stopped() -> anyhow::Result<()>
{
    let redis = RedisServer::start()?;
    let config = test_config(&redis.url(), "reclaim-passes");
    let engine = Engine::new(&config.redis, config.broker.clone())?;
    let topic = "bulk";
    let keys = engine
        .subscribe(topic, "workers", Duration::from_secs(30))
        .await?;
    fill(&engine, topic).await?;
    let stream = keys.stream(Priority::Normal).to_owned();

    // A consumer takes every message and acks none.
    let mut connection = redis::Client::open(redis.url())?
        .get_multiplexed_async_connection()
        .await?;
    let read: Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("workers")
        .arg("c1")
        .arg("COUNT")
        .arg(MESSAGES)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut connection)
        .await?;
    let ids = entry_ids(&read);
    assert_eq!(ids.len(), MESSAGES);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The oldest entries are delivered again just now, so only the newest 500 are due.
    for chunk in ids[..FRESH].chunks(500) {
        let _: Value = redis::cmd("XCLAIM")
            .arg(&stream)
            .arg("workers")
            .arg("c1")
            .arg(0)
            .arg(chunk)
            .arg("JUSTID")
            .query_async(&mut connection)
            .await?;
    }

    let idle = Some(Duration::from_millis(200));
    let first = engine.reclaim(topic, idle, Sweep::Resume).await?;
    assert_eq!(
        first.reclaimed, 0,
        "the first pass looks only at the oldest 5,000 pending entries, none of them due"
    );
    let second = engine.reclaim(topic, idle, Sweep::Resume).await?;
    assert_eq!(
        second.reclaimed,
        (MESSAGES - FRESH) as u64,
        "the next pass goes on where the first stopped and finds the due ones"
    );

    // A whole sweep looks at everything in one call: after another wait every lease is due.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let whole = engine.reclaim(topic, idle, Sweep::Whole).await?;
    assert_eq!(whole.reclaimed, FRESH as u64);
    Ok(())
}
