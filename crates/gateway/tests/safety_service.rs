//! `tta.v1.Safety` served by an in-process gateway over real gRPC, with a private redis-server:
//! classification (stateless and in a session), validation errors naming the field, rule reloads
//! that never apply a bad rule set, and the escalation queue humans work from.

// Helpers outside #[test] functions unwrap too: in a test a panic is a failed assertion.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tonic::{Code, transport::Channel};
use tta_proto::v1::{self as pb, safety_client::SafetyClient};
use tta_runtime::service::{RunningService, ServiceKind};
use tta_testkit::{RedisServer, start_in_process, test_config};
use tta_types::Config;

struct Gateway {
    _redis: RedisServer,
    service: RunningService,
    client: SafetyClient<Channel>,
}

async fn start(adjust: impl FnOnce(&mut Config)) -> Gateway {
    let redis = RedisServer::start().unwrap();
    let mut config = test_config(&redis.url(), "gateway-safety");
    // No broker runs here: the Safety service needs none.
    config.gateway.broker_endpoint = "http://127.0.0.1:9".to_owned();
    adjust(&mut config);
    let service = start_in_process(ServiceKind::Gateway, config, tta_gateway::build)
        .await
        .unwrap();
    let endpoint = format!("http://{}", service.grpc_addr.unwrap());
    let client = SafetyClient::connect(endpoint).await.unwrap();
    Gateway {
        _redis: redis,
        service,
        client,
    }
}

fn user(text: &str, session: &str) -> pb::ClassifyRequest {
    pb::ClassifyRequest {
        text: text.to_owned(),
        source: pb::ContentSource::User as i32,
        session_id: session.to_owned(),
        locale: String::new(),
    }
}

fn assessment(response: &pb::ClassifyResponse) -> &pb::SafetyAssessment {
    response.assessment.as_ref().unwrap()
}

#[tokio::test]
async fn crisis_is_critical_and_game_violence_is_not() {
    let mut gateway = start(|_| {}).await;
    let crisis = gateway
        .client
        .classify(user("i wanna kms tonight, i have the pills ready", ""))
        .await
        .unwrap()
        .into_inner();
    let verdict = assessment(&crisis);
    assert!(verdict.crisis);
    assert!(verdict.level >= pb::SafetyLevel::High as i32, "{verdict:?}");
    assert_eq!(verdict.action, pb::SafetyAction::Escalate as i32);
    assert!(!verdict.findings.is_empty(), "a verdict explains itself");
    // Stateless classifications raise no escalation.
    assert!(crisis.escalation_id.is_empty());

    let game = gateway
        .client
        .classify(user("I draw my sword and kill the dragon", ""))
        .await
        .unwrap()
        .into_inner();
    assert!(!assessment(&game).crisis);
    assert_eq!(assessment(&game).action, pb::SafetyAction::Allow as i32);
    gateway.service.stop(Duration::from_secs(2)).await.unwrap();
}

#[tokio::test]
async fn bad_requests_name_the_field() {
    let mut gateway = start(|config| {
        config.safety.max_text_bytes = tta_types::config::ByteSize(64);
    })
    .await;
    let cases = [
        (user("   ", ""), "text"),
        (user(&"x".repeat(65), ""), "text"),
        (
            pb::ClassifyRequest {
                source: pb::ContentSource::Unspecified as i32,
                ..user("hello", "")
            },
            "source",
        ),
        (user("hello", "bad session id!"), "session_id"),
    ];
    for (request, field) in cases {
        let status = gateway.client.classify(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().starts_with(field), "{field}: {status:?}");
    }

    let status = gateway
        .client
        .classify_batch(pb::ClassifyBatchRequest { items: Vec::new() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("items"), "{status:?}");

    let status = gateway
        .client
        .classify_batch(pb::ClassifyBatchRequest {
            items: vec![user("fine", ""), user("", "")],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("items[1].text"), "{status:?}");
    gateway.service.stop(Duration::from_secs(2)).await.unwrap();
}

#[tokio::test]
async fn repeated_distress_in_a_session_escalates_once_and_a_human_acknowledges_it() {
    let mut gateway = start(|_| {}).await;
    let session = "session-distress";
    let lines = [
        "i feel hopeless about everything",
        "honestly i hate myself",
        "i feel so hopeless again today",
    ];
    let batch = gateway
        .client
        .classify_batch(pb::ClassifyBatchRequest {
            items: lines.iter().map(|line| user(line, session)).collect(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(batch.results.len(), 3);
    let first = assessment(&batch.results[0]);
    assert!(!first.crisis, "one signal is not a pattern: {first:?}");
    let third = &batch.results[2];
    assert!(assessment(third).crisis, "{third:?}");
    assert!(assessment(third).level >= pb::SafetyLevel::High as i32);
    assert!(!third.escalation_id.is_empty(), "the pattern escalates");

    // Within the cool-down the session raises no second event.
    let again = gateway
        .client
        .classify(user("i want to kill myself", session))
        .await
        .unwrap()
        .into_inner();
    assert!(assessment(&again).crisis);
    assert!(again.escalation_id.is_empty());

    let open = gateway
        .client
        .list_escalations(pb::ListEscalationsRequest {
            session_id: session.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(open.escalations.len(), 1);
    let event = &open.escalations[0];
    assert_eq!(event.id, third.escalation_id);
    assert_eq!(event.session_id, session);
    assert_eq!(event.reason, pb::EscalationReason::RepeatedRisk as i32);
    assert!(event.excerpt.contains("hopeless"), "{event:?}");

    let acked = gateway
        .client
        .ack_escalation(pb::AckEscalationRequest {
            id: event.id.clone(),
            acked_by: "oncall-counsellor".to_owned(),
            note: "called the player's contact".to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .escalation
        .unwrap();
    assert_eq!(acked.acked_by, "oncall-counsellor");
    let second = gateway
        .client
        .ack_escalation(pb::AckEscalationRequest {
            id: event.id.clone(),
            acked_by: "someone-else".to_owned(),
            note: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .escalation
        .unwrap();
    assert_eq!(
        second.acked_by, "oncall-counsellor",
        "the first acknowledger is kept"
    );

    let open = gateway
        .client
        .list_escalations(pb::ListEscalationsRequest {
            session_id: session.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        open.escalations.is_empty(),
        "acknowledged events leave the open queue"
    );

    let missing = gateway
        .client
        .ack_escalation(pb::AckEscalationRequest {
            id: "1-0".to_owned(),
            acked_by: "x".to_owned(),
            note: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let unnamed = gateway
        .client
        .ack_escalation(pb::AckEscalationRequest {
            id: event.id.clone(),
            acked_by: String::new(),
            note: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(unnamed.code(), Code::InvalidArgument);
    assert!(unnamed.message().starts_with("acked_by"), "{unnamed:?}");
    gateway.service.stop(Duration::from_secs(2)).await.unwrap();
}

const ONE_RULE: &str = r#"
version: 1
policy:
  user: { warn_at: moderate }
  agent:
    low: { warn_at: low, block_at: moderate }
    medium: { warn_at: moderate, block_at: high }
    high: { warn_at: moderate, block_at: high }
  session: { signal_at: moderate, window: 30m, escalate_after: 3, raise_to: high, escalation_cooldown: 10m, ttl: 24h }
rules:
  - id: test.dragon
    category: dragons
    severity: high
    action: escalate
    phrases: [angry dragon]
"#;

#[tokio::test]
async fn a_bad_rule_set_is_refused_with_its_rule_and_the_rules_in_force_stay() {
    let mut gateway = start(|_| {}).await;
    let bad = ONE_RULE.replace("phrases: [angry dragon]", "regexes: ['(unclosed']");
    let refused = gateway
        .client
        .reload_rules(pb::ReloadRulesRequest {
            validate_only: false,
            rules_document: bad,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!refused.applied);
    assert!(
        refused.errors.iter().any(|e| e.rule_id == "test.dragon"),
        "{refused:?}"
    );
    let builtin_rules = refused.rule_count;
    assert!(builtin_rules > 1);

    let checked = gateway
        .client
        .reload_rules(pb::ReloadRulesRequest {
            validate_only: true,
            rules_document: ONE_RULE.to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!checked.applied && checked.errors.is_empty());
    assert_eq!(
        checked.rule_count, builtin_rules,
        "validation applies nothing"
    );

    let applied = gateway
        .client
        .reload_rules(pb::ReloadRulesRequest {
            validate_only: false,
            rules_document: ONE_RULE.to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(applied.applied);
    assert_eq!(applied.rule_count, 1);
    let dragon = gateway
        .client
        .classify(user("an angry dragon", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(assessment(&dragon).categories, vec!["dragons".to_owned()]);
    gateway.service.stop(Duration::from_secs(2)).await.unwrap();
}

#[tokio::test]
async fn reloads_can_be_switched_off() {
    let mut gateway = start(|config| config.safety.allow_reload = false).await;
    let status = gateway
        .client
        .reload_rules(pb::ReloadRulesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    gateway.service.stop(Duration::from_secs(2)).await.unwrap();
}

type Accepted = std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>;
type Attempts = std::sync::Arc<std::sync::atomic::AtomicUsize>;

/// An HTTP endpoint that refuses its first `failures` posts, then accepts and keeps them.
async fn webhook_endpoint(failures: usize) -> (String, Accepted, Attempts) {
    use std::sync::atomic::Ordering;
    let accepted: Accepted = Accepted::default();
    let attempts: Attempts = Attempts::default();
    let state = (accepted.clone(), attempts.clone());
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(
            move |axum::extract::State((accepted, attempts)): axum::extract::State<(
                Accepted,
                Attempts,
            )>,
                  axum::Json(body): axum::Json<serde_json::Value>| async move {
                if attempts.fetch_add(1, Ordering::SeqCst) < failures {
                    return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                }
                accepted.lock().unwrap().push(body);
                axum::http::StatusCode::NO_CONTENT
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, app.with_state(state)).await.unwrap();
    });
    (url, accepted, attempts)
}

#[tokio::test]
async fn every_escalation_reaches_the_webhook_even_when_it_fails_at_first() {
    let (url, accepted, attempts) = webhook_endpoint(2).await;
    let mut gateway = start(move |config| {
        config.safety.webhook = Some(tta_types::config::WebhookConfig {
            url,
            timeout: Duration::from_secs(2),
            max_backoff: Duration::from_millis(300),
        });
    })
    .await;
    let raised = gateway
        .client
        .classify(user("i am going to end my life tonight", "session-webhook"))
        .await
        .unwrap()
        .into_inner();
    assert!(!raised.escalation_id.is_empty());
    tta_testkit::wait_until(Duration::from_secs(10), "the webhook accepted", || {
        let accepted = accepted.clone();
        async move { (!accepted.lock().unwrap().is_empty()).then_some(()) }
    })
    .await
    .unwrap();
    // Give a duplicate the chance to show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let bodies = accepted.lock().unwrap().clone();
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    assert_eq!(bodies[0]["id"], raised.escalation_id.as_str());
    assert_eq!(bodies[0]["session_id"], "session-webhook");
    assert_eq!(bodies[0]["reason"], "crisis");
    assert_eq!(
        attempts.load(std::sync::atomic::Ordering::SeqCst),
        3,
        "two refusals, then the delivery"
    );
    gateway.service.stop(Duration::from_secs(2)).await.unwrap();
}
