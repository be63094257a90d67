//! `tta safety classify` and `tta escalations` as an operator runs them: the real binary, real
//! pipes, a private redis-server.

// Helpers outside #[test] functions unwrap too: in a test a panic is a failed assertion.
#![allow(clippy::unwrap_used)]

use std::{
    io::Write,
    process::{Command, Output, Stdio},
};

use tta_runtime::redis::Keyspace;
use tta_safety::{
    SafetyEngine, Source,
    escalation::{EscalationEvent, EscalationReason, EscalationStore},
};
use tta_testkit::{RedisServer, unique_prefix};

fn tta(args: &[&str], stdin: &str, env: &[(&str, &str)]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tta"))
        .args(args)
        .envs(env.iter().copied())
        .env_remove("TTA_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn classify_turns_json_lines_into_verdicts() {
    let out = tta(
        &["safety", "classify"],
        "{\"text\": \"I attack the goblin\", \"source\": \"user\"}\n{\"text\": \"i cant go on\", \"source\": \"user\"}\n",
        &[],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "{\"level\":\"none\",\"crisis\":false,\"categories\":[],\"action\":\"allow\"}\n\
         {\"level\":\"high\",\"crisis\":true,\"categories\":[\"suicide\"],\"action\":\"escalate\"}\n"
    );
}

#[test]
fn a_bad_line_exits_2_naming_line_and_field_with_nothing_on_stdout() {
    let out = tta(
        &["safety", "classify"],
        "{\"text\": \"fine\", \"source\": \"user\"}\n{\"text\": \"x\", \"source\": \"robot\"}\n",
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("line 2: source: must be \"user\" or \"agent\""),
        "{stderr}"
    );
}

#[tokio::test]
async fn escalations_can_be_tailed_and_acknowledged() {
    let server = RedisServer::start().unwrap();
    let prefix = unique_prefix("cli-escalations");
    let pool = tta_runtime::redis::pool(&tta_types::config::RedisConfig {
        url: server.url(),
        ..Default::default()
    })
    .unwrap();
    let store = EscalationStore::new(pool, &Keyspace::new(&prefix));
    let assessment = SafetyEngine::builtin()
        .unwrap()
        .classify("i want to die", Source::User);
    let event = store
        .raise(
            EscalationEvent::new(
                &assessment,
                "i want to die",
                Source::User,
                EscalationReason::Crisis,
            )
            .with_session("s-77"),
        )
        .await
        .unwrap();
    let url = server.url();
    let env = [
        ("TTA_REDIS_URL", url.as_str()),
        ("TTA_REDIS__KEY_PREFIX", prefix.as_str()),
    ];

    let out = tta(&["escalations", "tail", "--json"], "", &env);
    assert!(out.status.success(), "{out:?}");
    let line: serde_json::Value =
        serde_json::from_str(String::from_utf8(out.stdout).unwrap().trim()).unwrap();
    assert_eq!(line["id"], event.id.as_str());
    assert_eq!(line["session_id"], "s-77");
    assert_eq!(line["reason"], "crisis");

    let out = tta(
        &[
            "escalations",
            "ack",
            &event.id,
            "--by",
            "on-call",
            "--note",
            "phoned",
        ],
        "",
        &env,
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        store.get(&event.id).await.unwrap().acked_by.as_deref(),
        Some("on-call")
    );
    let open = tta(&["escalations", "tail", "--json"], "", &env);
    assert!(open.stdout.is_empty(), "acknowledged events are not open");

    let missing = tta(&["escalations", "ack", "1-0", "--by", "x"], "", &env);
    assert_eq!(missing.status.code(), Some(1));
}
