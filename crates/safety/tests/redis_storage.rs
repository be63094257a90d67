//! Session memory and the escalation stream against a real, private redis-server.

// Helpers outside #[test] functions unwrap too: in a test a panic is a failed assertion.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime};

use tta_runtime::redis::Keyspace;
use tta_safety::{
    SafetyEngine, SessionPolicy, Source,
    escalation::{EscalationEvent, EscalationReason, EscalationStore, ListFilter},
    session::{Occasion, RedisSessionMemory, SessionMemory, assess_in_session},
};
use tta_testkit::{RedisServer, unique_prefix};
use tta_types::{SessionId, config::RedisConfig};

fn pool(server: &RedisServer) -> tta_runtime::redis::RedisPool {
    tta_runtime::redis::pool(&RedisConfig {
        url: server.url(),
        ..RedisConfig::default()
    })
    .unwrap()
}

fn session(id: &str) -> SessionId {
    id.parse().unwrap()
}

#[tokio::test]
async fn redis_session_memory_counts_signals_in_the_window_under_the_session_key() {
    let server = RedisServer::start().unwrap();
    let pool = pool(&server);
    let keys = Keyspace::new(&unique_prefix("safety-memory"));
    let memory = RedisSessionMemory::new(pool.clone(), keys.clone());
    let s = session("s-1");
    let t0 = SystemTime::now();
    let window = Duration::from_secs(60);
    let ttl = Duration::from_secs(600);
    assert_eq!(
        memory
            .record_signal(&s, None, t0, window, ttl)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        memory
            .record_signal(&s, None, t0, window, ttl)
            .await
            .unwrap(),
        2
    );
    let later = t0 + Duration::from_secs(90);
    assert_eq!(
        memory
            .record_signal(&s, None, later, window, ttl)
            .await
            .unwrap(),
        1
    );

    let key = memory.signals_key(&s);
    assert_eq!(key, format!("{}:{{s-1}}:safety", keys.prefix()));
    let mut connection = pool.get().await.unwrap();
    let ttl_ms: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(ttl_ms > 0 && ttl_ms <= 600_000, "{ttl_ms}");
}

#[tokio::test]
async fn redis_session_memory_allows_one_escalation_per_cooldown() {
    let server = RedisServer::start().unwrap();
    let memory = RedisSessionMemory::new(pool(&server), Keyspace::new(&unique_prefix("cool")));
    let s = session("s-2");
    let now = SystemTime::now();
    let cooldown = Duration::from_millis(300);
    assert!(
        memory
            .claim_escalation(&s, None, now, cooldown)
            .await
            .unwrap()
    );
    assert!(
        !memory
            .claim_escalation(&s, None, now, cooldown)
            .await
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        memory
            .claim_escalation(&s, None, SystemTime::now(), cooldown)
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn a_retried_turn_counts_its_signal_once_and_keeps_its_escalation_claim() {
    let server = RedisServer::start().unwrap();
    let memory = RedisSessionMemory::new(pool(&server), Keyspace::new(&unique_prefix("retry")));
    let s = session("s-3");
    let now = SystemTime::now();
    let window = Duration::from_secs(60);
    let ttl = Duration::from_secs(600);
    let cooldown = Duration::from_secs(60);
    let turn = Some("turn-7");
    assert_eq!(
        memory
            .record_signal(&s, turn, now, window, ttl)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        memory
            .record_signal(&s, turn, now, window, ttl)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        memory
            .record_signal(&s, Some("turn-8"), now, window, ttl)
            .await
            .unwrap(),
        2
    );

    assert!(
        memory
            .claim_escalation(&s, turn, now, cooldown)
            .await
            .unwrap()
    );
    // The same turn, retried after a crash between claim and escalation, may claim again ...
    assert!(
        memory
            .claim_escalation(&s, turn, now, cooldown)
            .await
            .unwrap()
    );
    // ... but another turn within the cool-down may not.
    assert!(
        !memory
            .claim_escalation(&s, Some("turn-8"), now, cooldown)
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn a_crisis_in_a_session_is_escalated_listed_and_acknowledged_once() {
    let server = RedisServer::start().unwrap();
    let pool = pool(&server);
    let keys = Keyspace::new(&unique_prefix("escalations"));
    let memory = RedisSessionMemory::new(pool.clone(), keys.clone());
    let store = EscalationStore::new(pool, &keys);
    let engine = SafetyEngine::builtin().unwrap();
    let s = session("player-42");
    let text = "i have been stockpiling my pills and tonight i will end it all";

    let verdict = assess_in_session(
        &engine,
        &memory,
        Occasion::untracked(&s),
        text,
        Source::User,
        &SessionPolicy::default(),
        SystemTime::now(),
    )
    .await
    .unwrap();
    let reason = verdict.escalate.unwrap();
    assert_eq!(reason, EscalationReason::Crisis);
    let raised = store
        .raise(
            EscalationEvent::new(&verdict.assessment, text, Source::User, reason)
                .with_session(s.as_str())
                .with_turn("turn-1"),
        )
        .await
        .unwrap();
    assert!(!raised.id.is_empty());
    assert_eq!(
        store.stream_key(),
        format!("{}:safety:escalations", keys.prefix())
    );

    let other = engine.classify("i want to die", Source::User);
    store
        .raise(
            EscalationEvent::new(
                &other,
                "i want to die",
                Source::User,
                EscalationReason::Crisis,
            )
            .with_session("player-43"),
        )
        .await
        .unwrap();

    let open = store.list(&ListFilter::default()).await.unwrap();
    assert_eq!(open.events.len(), 2);
    assert_eq!(open.events[1].id, raised.id, "newest first");
    let mine = store
        .list(&ListFilter {
            session_id: "player-42".into(),
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(mine.events.len(), 1);
    let event = &mine.events[0];
    assert_eq!(event.level, tta_safety::Level::Critical);
    assert_eq!(event.categories, ["suicide"]);
    assert_eq!(event.turn_id, "turn-1");
    assert!(event.excerpt.contains("stockpiling"), "{}", event.excerpt);

    let acked = store
        .ack(&raised.id, "nurse-on-call", "called the player")
        .await
        .unwrap();
    assert_eq!(acked.acked_by.as_deref(), Some("nurse-on-call"));
    let again = store.ack(&raised.id, "someone-else", "").await.unwrap();
    assert_eq!(
        again.acked_by.as_deref(),
        Some("nurse-on-call"),
        "first acknowledger kept"
    );
    assert_eq!(again.note, "called the player");

    let still_open = store.list(&ListFilter::default()).await.unwrap();
    assert_eq!(still_open.events.len(), 1);
    let all = store
        .list(&ListFilter {
            include_acked: true,
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(all.events.len(), 2);
}

#[tokio::test]
async fn acknowledging_an_unknown_escalation_is_not_found_and_bad_input_names_the_field() {
    let server = RedisServer::start().unwrap();
    let store = EscalationStore::new(pool(&server), &Keyspace::new(&unique_prefix("ack")));
    let err = store.ack("1-0", "me", "").await.unwrap_err();
    assert!(
        matches!(err, tta_safety::Error::EscalationNotFound(_)),
        "{err}"
    );
    let err = store.ack("1-0", "  ", "").await.unwrap_err();
    assert_eq!(err.to_string(), "acked_by: must not be empty");
    let err = store
        .list(&ListFilter {
            page_token: "not-a-token".into(),
            ..ListFilter::default()
        })
        .await
        .unwrap_err();
    assert!(err.to_string().starts_with("page_token:"), "{err}");
}

#[tokio::test]
async fn pages_walk_the_stream_newest_first_without_repeats() {
    let server = RedisServer::start().unwrap();
    let store = EscalationStore::new(pool(&server), &Keyspace::new(&unique_prefix("pages")));
    let engine = SafetyEngine::builtin().unwrap();
    let assessment = engine.classify("kms", Source::User);
    let mut raised = Vec::new();
    for i in 0..5 {
        let event =
            EscalationEvent::new(&assessment, "kms", Source::User, EscalationReason::Crisis)
                .with_session(&format!("s{i}"));
        raised.push(store.raise(event).await.unwrap().id);
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = store
            .list(&ListFilter {
                page_size: 2,
                page_token: token.clone(),
                ..ListFilter::default()
            })
            .await
            .unwrap();
        seen.extend(page.events.into_iter().map(|e| e.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    raised.reverse();
    assert_eq!(seen, raised);
}

#[tokio::test]
async fn an_escalation_is_an_error_when_redis_is_down_never_a_silent_drop() {
    let mut server = RedisServer::start().unwrap();
    let pool = tta_runtime::redis::pool(&RedisConfig {
        url: server.url(),
        connect_timeout: Duration::from_millis(300),
        ..RedisConfig::default()
    })
    .unwrap();
    let store = EscalationStore::new(pool, &Keyspace::new(&unique_prefix("down")));
    server.kill();
    let assessment = SafetyEngine::builtin()
        .unwrap()
        .classify("kms", Source::User);
    let err = store
        .raise(EscalationEvent::new(
            &assessment,
            "kms",
            Source::User,
            EscalationReason::Crisis,
        ))
        .await
        .unwrap_err();
    assert!(matches!(err, tta_safety::Error::Storage(_)), "{err}");
}

#[tokio::test]
async fn tail_reads_only_events_after_the_given_id() {
    let server = RedisServer::start().unwrap();
    let store = EscalationStore::new(pool(&server), &Keyspace::new(&unique_prefix("tail")));
    let assessment = SafetyEngine::builtin()
        .unwrap()
        .classify("kms", Source::User);
    let first = store
        .raise(EscalationEvent::new(
            &assessment,
            "kms",
            Source::User,
            EscalationReason::Crisis,
        ))
        .await
        .unwrap();
    assert_eq!(
        store.last_id().await.unwrap().as_deref(),
        Some(first.id.as_str())
    );
    let second = store
        .raise(EscalationEvent::new(
            &assessment,
            "kms",
            Source::User,
            EscalationReason::Crisis,
        ))
        .await
        .unwrap();
    let after = store
        .read_after(&first.id, Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].id, second.id);
    let none = store
        .read_after(&second.id, Duration::from_millis(50))
        .await
        .unwrap();
    assert!(none.is_empty());
}
