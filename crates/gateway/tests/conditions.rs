//! Step and route conditions evaluated over real `tta.v1` messages.

use std::collections::{BTreeMap, HashMap};

use prost_types::{ListValue, Struct, Value, value::Kind as Json};
use tta_gateway::workflow::{
    condition::{Condition, Operand, Scope},
    view::{RouteScope, StepScope, check_output_path, check_route_path},
};
use tta_proto::v1::{
    self as pb, AgentOutput, EmotionalTone, InputEntity, IpaOutput, NgaOutput, SafetyAssessment,
    SafetyLevel, Session, TherapeuticIntensity, TherapeuticSettings, WbaOutput, WorldChange,
    agent_output::Kind,
};

fn path(dotted: &str) -> Vec<String> {
    dotted.split('.').map(str::to_owned).collect()
}

fn json(kind: Json) -> Value {
    Value { kind: Some(kind) }
}

fn object(entries: impl IntoIterator<Item = (&'static str, Value)>) -> Struct {
    Struct {
        fields: entries
            .into_iter()
            .map(|(key, value)| (key.to_owned(), value))
            .collect::<BTreeMap<_, _>>(),
    }
}

/// Outputs of a typical turn: an IPA that read "go north" with high distress, a WBA that applied
/// the move, an NGA reply and a custom mood tracker.
fn outputs() -> HashMap<String, AgentOutput> {
    let ipa = IpaOutput {
        intent: "move".into(),
        confidence: 0.9,
        entities: vec![InputEntity {
            kind: "direction".into(),
            value: "north".into(),
            ..Default::default()
        }],
        tone: Some(EmotionalTone {
            label: "anxious".into(),
            valence: -0.7,
            ..Default::default()
        }),
        safety: Some(SafetyAssessment {
            level: SafetyLevel::High as i32,
            crisis: false,
            categories: vec!["distress".into()],
            ..Default::default()
        }),
        ..Default::default()
    };
    let wba = WbaOutput {
        applied: true,
        version: 7,
        changes: vec![WorldChange {
            path: "player.location".into(),
            new_value: Some(json(Json::StringValue("hall".into()))),
            ..Default::default()
        }],
        ..Default::default()
    };
    let nga = NgaOutput {
        text: "You walk north.".into(),
        ..Default::default()
    };
    let mood = object([
        ("mood", json(Json::StringValue("calm".into()))),
        ("score", json(Json::NumberValue(0.4))),
        ("flagged", json(Json::BoolValue(false))),
        ("nothing", json(Json::NullValue(0))),
        (
            "detail",
            json(Json::StructValue(object([
                ("source", json(Json::StringValue("journal".into()))),
                ("streak", json(Json::NumberValue(3.0))),
            ]))),
        ),
        (
            "tags",
            json(Json::ListValue(ListValue {
                values: vec![json(Json::StringValue("sleep".into()))],
            })),
        ),
        ("empty", json(Json::StructValue(Struct::default()))),
    ]);
    [
        ("ipa", Kind::Ipa(ipa)),
        ("wba", Kind::Wba(wba)),
        ("nga", Kind::Nga(nga)),
        ("mood", Kind::Custom(mood)),
        ("bare_ipa", Kind::Ipa(IpaOutput::default())),
    ]
    .into_iter()
    .map(|(step, kind)| (step.to_owned(), AgentOutput { kind: Some(kind) }))
    .chain([("no_variant".to_owned(), AgentOutput { kind: None })])
    .collect()
}

fn step(source: &str) -> bool {
    let outputs = outputs();
    Condition::parse(source)
        .unwrap_or_else(|err| panic!("{source:?}: {err}"))
        .eval(&StepScope { outputs: &outputs })
}

#[test]
fn ipa_fields_by_proto_name() {
    assert!(step(r#"ipa.intent == "move""#));
    assert!(!step(r#"ipa.intent == "quit""#));
    assert!(step("!ipa.safety.crisis"));
    assert!(step("ipa.confidence > 0.5"));
    assert!(step("ipa.tone.valence < -0.5"));
    assert!(step(r#"ipa.tone.label == "anxious""#));
    assert!(step(r#"!ipa.safety.crisis && ipa.intent != "quit""#));
}

#[test]
fn enums_read_by_short_name_and_order_by_number() {
    assert!(step(r#"ipa.safety.level == "high""#));
    assert!(step(r#"ipa.safety.level >= "high""#));
    assert!(step(r#"ipa.safety.level > "low""#));
    assert!(!step(r#"ipa.safety.level >= "critical""#));
    assert!(!step(r#"ipa.safety.level == "severe""#));
    assert!(step("ipa.safety.level"));
    let outputs = outputs();
    let scope = StepScope { outputs: &outputs };
    assert!(matches!(
        scope.lookup(&path("ipa.safety.level")),
        Operand::Enum { ref name, number: 4, .. } if name == "high"
    ));
}

#[test]
fn lists_bytes_and_messages_as_leaves_are_truthiness() {
    assert!(step("ipa.entities"));
    assert!(step("ipa.safety.categories"));
    assert!(!step("ipa.safety.findings"));
    assert!(step("ipa.safety"));
    // Lists are tested for non-emptiness only; nothing below them is addressable.
    assert!(step("ipa.entities.value == null"));
    assert!(!step(r#"ipa.safety.categories == "distress""#));
    assert!(step("ipa.safety.categories == true"));
}

#[test]
fn unset_messages_are_null_and_scalars_read_their_defaults() {
    assert!(step("bare_ipa.safety == null"));
    assert!(step("bare_ipa.safety.crisis == null"));
    assert!(!step("bare_ipa.safety.crisis == false"));
    assert!(!step("bare_ipa.safety"));
    assert!(step(r#"bare_ipa.intent == """#));
    assert!(!step("bare_ipa.intent"));
    assert!(step("bare_ipa.confidence == 0"));
    assert!(step(r#"bare_ipa.safety.level == null"#));
    assert!(!step("bare_ipa.tone.valence < 0"));
}

#[test]
fn wba_and_nga_outputs() {
    assert!(step("wba.applied"));
    assert!(step("wba.version >= 7"));
    assert!(step("wba.changes"));
    assert!(step("wba.changes.path == null"));
    assert!(step("wba.world == null"));
    assert!(step(r#"nga.text == "You walk north.""#));
    assert!(!step("nga.chunks"));
}

#[test]
fn custom_struct_outputs_by_json_key() {
    assert!(step(r#"mood.mood == "calm""#));
    assert!(step("mood.score < 0.5"));
    assert!(step("!mood.flagged"));
    assert!(step("mood.nothing == null"));
    assert!(!step("mood.nothing"));
    assert!(step(r#"mood.detail.source == "journal""#));
    assert!(step("mood.detail.streak == 3"));
    assert!(step("mood.detail"));
    assert!(!step("mood.empty"));
    assert!(step("mood.tags"));
    assert!(step("mood.tags.first == null"));
    // Objects and lists as leaves are truthiness values.
    assert!(step("mood.detail == true"));
    assert!(step("mood.empty == false"));
    assert!(step("mood.missing == null"));
    assert!(step("mood.mood.deeper == null"));
}

#[test]
fn missing_steps_fields_and_variants_are_null() {
    assert!(step("skipped == null"));
    assert!(!step("skipped"));
    assert!(!step(r#"skipped.intent != "quit""#));
    assert!(step("ipa.no_such_field == null"));
    assert!(step("ipa.intent.deeper == null"));
    assert!(step("no_variant == null"));
    assert!(step("no_variant.text == null"));
    assert!(step("ipa"));
    // A step id whose output is another variant: the fields of that variant, nothing else.
    assert!(step("nga.intent == null"));
}

#[test]
fn type_mismatches_are_false_not_panics() {
    assert!(!step("ipa.intent == 1"));
    assert!(!step("ipa.intent > 1"));
    assert!(!step(r#"wba.applied == "true""#));
    assert!(!step("ipa.safety.level == 4"));
    assert!(!step(r#"mood.detail == "journal""#));
    assert!(!step("mood.tags > 0"));
    assert!(!step(r#"ipa.confidence != "x""#));
}

fn session() -> Session {
    Session {
        session_id: "s-1".into(),
        world_id: "forest".into(),
        version: 12,
        state: pb::SessionState::Active as i32,
        settings: Some(TherapeuticSettings {
            intensity: TherapeuticIntensity::High as i32,
            locale: "de-DE".into(),
            ..Default::default()
        }),
        metadata: [("cohort".to_owned(), "b".to_owned())].into(),
        ..Default::default()
    }
}

fn route(source: &str) -> bool {
    let session = session();
    let metadata: HashMap<String, String> = [("mode".to_owned(), "calm".to_owned())].into();
    Condition::parse(source)
        .unwrap_or_else(|err| panic!("{source:?}: {err}"))
        .eval(&RouteScope {
            session: &session,
            metadata: &metadata,
            interaction_type: "turn",
        })
}

#[test]
fn route_conditions_over_session_and_request() {
    assert!(route(r#"session.settings.intensity == "high""#));
    assert!(route(r#"session.settings.intensity > "low""#));
    assert!(!route(r#"session.settings.intensity == "low""#));
    assert!(route(r#"request.metadata.mode == "calm""#));
    assert!(route("request.metadata.other == null"));
    assert!(route("request.metadata"));
    assert!(route(r#"request.interaction_type == "turn""#));
    assert!(route("session.version >= 10"));
    assert!(route(r#"session.world_id == "forest""#));
    assert!(route(r#"session.state == "active""#));
    assert!(route(r#"session.metadata.cohort == "b""#));
    assert!(route("session.metadata.other == null"));
    assert!(route("!session.escalated"));
    assert!(route("session.ended_at == null"));
    assert!(route(
        r#"session.settings.intensity == "high" && request.metadata.mode == "calm""#
    ));
    assert!(route("other.thing == null"));
    assert!(route("request.body == null"));
}

#[test]
fn output_paths_are_checked_for_built_in_agents() {
    assert!(check_output_path("ipa", &path("safety.crisis")).is_ok());
    assert!(check_output_path("ipa", &path("safety.level")).is_ok());
    assert!(check_output_path("ipa", &path("tone.valence")).is_ok());
    assert!(check_output_path("ipa", &path("entities")).is_ok());
    assert!(check_output_path("ipa", &[]).is_ok());
    assert!(check_output_path("wba", &path("applied")).is_ok());
    assert!(check_output_path("wba", &path("world.location_id")).is_ok());
    assert!(check_output_path("nga", &path("text")).is_ok());
    assert_eq!(
        check_output_path("ipa", &path("intnt")).unwrap_err(),
        "unknown field \"intnt\" in tta.v1.IpaOutput"
    );
    assert_eq!(
        check_output_path("ipa", &path("safety.crisys")).unwrap_err(),
        "unknown field \"crisys\" in tta.v1.SafetyAssessment"
    );
    assert_eq!(
        check_output_path("wba", &path("text")).unwrap_err(),
        "unknown field \"text\" in tta.v1.WbaOutput"
    );
    assert!(
        check_output_path("ipa", &path("intent.length"))
            .unwrap_err()
            .contains("tta.v1.IpaOutput.intent is a string and has no field \"length\"")
    );
    assert!(
        check_output_path("ipa", &path("entities.kind"))
            .unwrap_err()
            .contains("is a list")
    );
    // Custom agents return free-form JSON.
    assert!(check_output_path("mood", &path("anything.at.all")).is_ok());
}

#[test]
fn route_paths_are_checked() {
    assert!(check_route_path(&path("session.settings.intensity")).is_ok());
    assert!(check_route_path(&path("request.metadata.mode")).is_ok());
    assert!(check_route_path(&path("request.interaction_type")).is_ok());
    assert_eq!(
        check_route_path(&path("session.settings.intensty")).unwrap_err(),
        "unknown field \"intensty\" in tta.v1.TherapeuticSettings"
    );
    assert!(check_route_path(&path("ipa.intent")).is_err());
}

#[test]
fn unset_enums_read_as_unspecified() {
    let session = Session {
        settings: Some(TherapeuticSettings::default()),
        ..Default::default()
    };
    let metadata = HashMap::new();
    let scope = RouteScope {
        session: &session,
        metadata: &metadata,
        interaction_type: "",
    };
    let eval = |source: &str| Condition::parse(source).unwrap().eval(&scope);
    assert!(eval(r#"session.settings.intensity == "unspecified""#));
    assert!(eval(r#"session.settings.intensity < "low""#));
    assert!(!eval("session.settings.intensity"));
    assert!(!eval("request.metadata"));
    assert!(eval(r#"request.interaction_type == """#));
}
