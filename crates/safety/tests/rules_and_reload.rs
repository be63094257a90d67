//! The rule file as an operator meets it: validation errors that name the rule, reloads that keep
//! the rules in force when the new file is bad, and the verdicts the default rules give to agent
//! output under each therapeutic intensity.

// Helpers outside #[test] functions unwrap too: in a test a panic is a failed assertion.
#![allow(clippy::unwrap_used)]

use tta_safety::{
    Action, DEFAULT_RULES, Intensity, Level, SafetyEngine, SharedEngine, Source,
    TherapeuticSettings,
};

const MINIMAL: &str = r#"
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
    severity: moderate
    action: warn
    phrases: [angry dragon]
"#;

#[test]
fn an_invalid_rule_is_reported_with_its_id_path_and_reason() {
    let text = MINIMAL.replace(
        "    phrases: [angry dragon]",
        "    phrases: [angry dragon]\n    regexes: ['(unclosed']\n  - id: test.dragon\n    category: Bad Category\n    severity: high\n    action: block\n    exceptions: [nope]\n    phrases: [x]",
    );
    let err = SafetyEngine::from_yaml(&text).unwrap_err();
    let issues = err.rule_issues();
    let described: Vec<(String, String)> = issues
        .iter()
        .map(|i| (i.rule_id.clone(), i.path.clone()))
        .collect();
    assert!(
        described.contains(&("test.dragon".into(), "rules[0].regexes[0]".into())),
        "{described:?}"
    );
    assert!(described.contains(&("test.dragon".into(), "rules[1].id".into())));
    assert!(described.contains(&("test.dragon".into(), "rules[1].category".into())));
    assert!(described.contains(&("test.dragon".into(), "rules[1].exceptions[0]".into())));
    let regex_issue = issues
        .iter()
        .find(|i| i.path == "rules[0].regexes[0]")
        .unwrap();
    assert!(
        regex_issue.reason.starts_with("invalid regex"),
        "{regex_issue}"
    );
    let message = err.to_string();
    assert!(
        message.contains("rule test.dragon (rules[1].id): duplicate id"),
        "{message}"
    );
}

#[test]
fn schema_errors_inside_a_rule_still_name_the_rule() {
    let text = MINIMAL.replace("severity: moderate", "severity: extreme");
    let err = SafetyEngine::from_yaml(&text).unwrap_err();
    let issue = &err.rule_issues()[0];
    assert_eq!(issue.rule_id, "test.dragon");
    assert_eq!(issue.path, "rules[0]");
    assert!(issue.reason.contains("extreme"), "{issue}");

    let err = SafetyEngine::from_yaml("version: 1\nrules: [\n").unwrap_err();
    assert!(err.rule_issues()[0].rule_id.is_empty());
}

#[test]
fn regexes_with_apostrophes_or_that_match_nothing_in_particular_are_refused() {
    let text = MINIMAL.replace(
        "    phrases: [angry dragon]",
        "    regexes: [\"don't\", 'a*']",
    );
    let err = SafetyEngine::from_yaml(&text).unwrap_err();
    let reasons: Vec<&str> = err
        .rule_issues()
        .iter()
        .map(|i| i.reason.as_str())
        .collect();
    assert!(reasons[0].contains("without apostrophes"), "{reasons:?}");
    assert_eq!(reasons[1], "matches the empty text");
}

#[test]
fn a_bad_reload_keeps_the_rules_in_force() {
    let shared = SharedEngine::new(SafetyEngine::from_yaml(MINIMAL).unwrap(), None);
    let before = shared.current().version().to_owned();
    let broken = MINIMAL.replace("action: warn", "action: shout");
    let err = shared.reload_from_str(&broken, false).unwrap_err();
    assert_eq!(err.rule_issues()[0].rule_id, "test.dragon");
    assert_eq!(shared.current().version(), before);
    let verdict = shared.current().classify("an ANGRY dragon!", Source::User);
    assert_eq!(verdict.level, Level::Moderate);
}

#[test]
fn a_valid_reload_swaps_atomically_and_validate_only_changes_nothing() {
    let shared = SharedEngine::new(SafetyEngine::from_yaml(MINIMAL).unwrap(), None);
    let held = shared.current();
    let calmer = MINIMAL.replace("angry dragon", "sleepy dragon");
    let checked = shared.reload_from_str(&calmer, true).unwrap();
    assert!(!checked.applied);
    assert_eq!(shared.current().version(), held.version());

    let outcome = shared.reload_from_str(&calmer, false).unwrap();
    assert!(outcome.applied);
    assert_eq!(outcome.rule_count, 1);
    assert_eq!(shared.current().version(), outcome.rules_version);
    assert_eq!(
        shared
            .current()
            .classify("a sleepy dragon", Source::User)
            .level,
        Level::Moderate
    );
    // A judgement already in progress keeps the rules it started with.
    assert_eq!(
        held.classify("a sleepy dragon", Source::User).level,
        Level::None
    );
}

#[test]
fn reload_rereads_the_configured_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.yaml");
    std::fs::write(&path, MINIMAL).unwrap();
    let shared = SharedEngine::load(Some(&path)).unwrap();
    std::fs::write(&path, MINIMAL.replace("angry dragon", "grumpy troll")).unwrap();
    assert!(shared.reload().unwrap().applied);
    assert_eq!(
        shared
            .current()
            .classify("grumpy troll", Source::User)
            .level,
        Level::Moderate
    );
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(
        shared.reload(),
        Err(tta_safety::Error::Read { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn the_watcher_applies_a_changed_file_and_skips_a_broken_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.yaml");
    std::fs::write(&path, MINIMAL).unwrap();
    let shared = SharedEngine::load(Some(&path)).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let watcher = {
        let shared = shared.clone();
        tokio::spawn(async move {
            shared
                .watch(std::time::Duration::from_secs(1), async {
                    let _ = stopped.await;
                })
                .await;
        })
    };
    std::fs::write(&path, MINIMAL.replace("action: warn", "action: ???")).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(
        shared
            .current()
            .classify("angry dragon", Source::User)
            .level,
        Level::Moderate
    );
    std::fs::write(&path, MINIMAL.replace("angry dragon", "grumpy troll")).unwrap();
    for _ in 0..20 {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        if shared
            .current()
            .classify("grumpy troll", Source::User)
            .level
            == Level::Moderate
        {
            break;
        }
    }
    assert_eq!(
        shared
            .current()
            .classify("grumpy troll", Source::User)
            .level,
        Level::Moderate
    );
    let _ = stop.send(());
    watcher.await.unwrap();
}

#[test]
fn the_shipped_rules_load_and_have_a_stable_version() {
    let a = SafetyEngine::from_yaml(DEFAULT_RULES).unwrap();
    let b = SafetyEngine::builtin().unwrap();
    assert_eq!(a.version(), b.version());
    assert!(a.rule_count() >= 20);
}

fn agent(text: &str, intensity: Intensity) -> tta_safety::Assessment {
    let engine = SafetyEngine::builtin().unwrap();
    let policy = engine.policy(&TherapeuticSettings {
        intensity,
        ..TherapeuticSettings::default()
    });
    engine.assess(text, Source::Agent, &policy)
}

#[test]
fn harmful_agent_output_is_blocked_in_every_category() {
    let cases = [
        (
            "Blood spurts as you disembowel the guard.",
            "graphic_violence",
        ),
        (
            "She begins to undress and they make love by the fire.",
            "sexual_content",
        ),
        (
            "If it gets too much, you could just cut yourself.",
            "self_harm_instructions",
        ),
        (
            "Take 200mg of ibuprofen and stop taking your antidepressants.",
            "medical_advice",
        ),
        (
            "You should stop taking your medication, you don't need it.",
            "medical_advice",
        ),
        ("You're worthless, and there is no hope for you.", "shaming"),
        ("It's all your fault. Nobody cares about you.", "shaming"),
    ];
    for (text, category) in cases {
        for intensity in [Intensity::Low, Intensity::Medium, Intensity::High] {
            let verdict = agent(text, intensity);
            assert_eq!(
                verdict.action,
                Action::Block,
                "{text} at {intensity:?}: {verdict:?}"
            );
            assert!(
                verdict.has_category(category),
                "{text}: {:?}",
                verdict.categories
            );
            assert!(!verdict.crisis, "agent output is never a player crisis");
            assert!(!verdict.violated_constraints().is_empty());
        }
    }
}

#[test]
fn ordinary_narration_passes_even_when_it_is_an_adventure() {
    let texts = [
        "You raise your sword and the goblin flees into the forest.",
        "The dragon roars, its wings beating the smoke away from the tower.",
        "The healer hands you a small vial. 'For the journey,' she says kindly.",
        "You are not worthless, and this is not your fault.",
        "There is no way out of the cave except the narrow tunnel to the east.",
        "It's okay to rest here for a while. The fire is warm.",
    ];
    for text in texts {
        let verdict = agent(text, Intensity::Low);
        assert_eq!(verdict.action, Action::Allow, "{text}: {verdict:?}");
    }
}

#[test]
fn a_gentle_session_warns_earlier_and_blocks_challenging_prompts() {
    let mild = "The wolf's wound is bleeding, but it limps away.";
    assert_eq!(agent(mild, Intensity::Low).action, Action::Warn);
    assert_eq!(agent(mild, Intensity::Medium).action, Action::Allow);

    let challenge = "You need to face your trauma now: remember the worst moment.";
    assert_eq!(agent(challenge, Intensity::Low).action, Action::Block);
    assert_eq!(agent(challenge, Intensity::Medium).action, Action::Warn);
    assert_eq!(agent(challenge, Intensity::High).action, Action::Warn);
}

#[test]
fn avoided_topics_block_agent_output_but_not_the_players_own_words() {
    let engine = SafetyEngine::builtin().unwrap();
    let policy = engine.policy(&TherapeuticSettings {
        intensity: Intensity::High,
        avoid_topics: vec!["family_loss".into(), "lighthouses".into()],
        locale: String::new(),
    });
    let verdict = engine.assess(
        "The old keeper says your mother died in the storm.",
        Source::Agent,
        &policy,
    );
    assert_eq!(verdict.action, Action::Block);
    assert_eq!(verdict.findings[0].rule_id.as_ref(), "topic.family_loss");
    assert_eq!(
        verdict.violated_constraints(),
        ["avoid the topic \"family loss\": the player asked not to meet it in the story"]
    );
    // A topic the lexicon does not know is matched by its own words.
    let verdict = engine.assess("You see Lighthouses on the cliffs.", Source::Agent, &policy);
    assert_eq!(verdict.action, Action::Block);
    let verdict = engine.assess("my mother died last year", Source::User, &policy);
    assert!(!verdict.has_category("avoided_topic"));
}

#[test]
fn findings_explain_the_verdict_with_rule_and_span_of_the_original_text() {
    let engine = SafetyEngine::builtin().unwrap();
    let text = "Honestly?? I W4NT to d\u{200B}ieee.";
    let verdict = engine.classify(text, Source::User);
    assert!(verdict.crisis);
    let finding = &verdict.findings[0];
    assert_eq!(finding.rule_id.as_ref(), "crisis.suicide.ideation");
    assert_eq!(&text[finding.start..finding.end], "W4NT to d\u{200B}ieee");
    assert_eq!(finding.excerpt, "W4NT to d\u{200B}ieee");
}

#[test]
fn kys_at_someone_else_is_harassment_and_at_oneself_a_crisis() {
    let engine = SafetyEngine::builtin().unwrap();
    let insult = engine.classify("kys goblin", Source::User);
    assert!(!insult.crisis);
    assert_eq!(
        insult
            .categories
            .iter()
            .map(|c| c.as_ref())
            .collect::<Vec<_>>(),
        ["harassment"]
    );
    let own = engine.classify("honestly i should just kys", Source::User);
    assert!(own.crisis);
    assert!(!own.has_category("harassment"));
}
