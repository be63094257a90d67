//! Agent output validation (R5.1, R5.2): judge what an agent wrote, and when it is blocked, ask
//! the responsible agent for an alternative that names the constraints it broke — a bounded
//! number of times — and fall back to a safe reply when no alternative passes.
//!
//! The loop is generic over how an alternative is obtained (a broker round trip in the gateway, a
//! closure in tests), so the policy lives here once and the transport stays with the caller.

use std::{fmt::Display, future::Future};

use crate::{
    engine::SafetyEngine,
    metrics,
    settings::SessionPolicy,
    verdict::{Action, Assessment, Source},
};

/// What the responsible agent is told when its text was blocked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegenerationRequest {
    /// 1 for the first alternative asked for.
    pub attempt: u32,
    /// The constraints the blocked text broke, one per line.
    pub constraints: Vec<String>,
    /// An instruction for the agent built from the constraints.
    pub instruction: String,
}

/// The instruction sent to an agent whose text broke `constraints`.
pub fn regeneration_instruction(constraints: &[String]) -> String {
    let mut instruction = String::from(
        "Your previous reply could not be shown to the player because it broke these constraints:\n",
    );
    for constraint in constraints {
        instruction.push_str("- ");
        instruction.push_str(constraint);
        instruction.push('\n');
    }
    instruction.push_str(
        "Write a different reply for the same moment of the story that keeps every one of them, in a warm, supportive voice.",
    );
    instruction
}

/// The text the player will see, and how it was arrived at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedOutput {
    /// The agent's text (first or an alternative) or the safe fallback.
    pub text: String,
    /// The verdict on `text`; for a fallback, the verdict on the last blocked attempt.
    pub assessment: Assessment,
    /// How many alternatives were asked for.
    pub regenerations: u32,
    /// How many texts were blocked on the way (R5.4: repeated blocks escalate).
    pub blocked: u32,
    /// The safe fallback replaced the agent's text: the turn is `degraded`.
    pub used_fallback: bool,
}

/// Judges `first` and, while it is blocked, asks `regenerate` for an alternative, at most
/// `max_regenerations` times. When every text is blocked, or the agent cannot answer, the
/// `fallback` is used. Warnings pass through: only BLOCK withholds a text.
pub async fn validate_output<F, Fut, E>(
    engine: &SafetyEngine,
    policy: &SessionPolicy,
    first: String,
    max_regenerations: u32,
    fallback: &str,
    mut regenerate: F,
) -> ValidatedOutput
where
    F: FnMut(RegenerationRequest) -> Fut,
    Fut: Future<Output = Result<String, E>>,
    E: Display,
{
    let mut text = first;
    let mut regenerations = 0;
    let mut blocked = 0;
    loop {
        let assessment = engine.assess(&text, Source::Agent, policy);
        if assessment.action != Action::Block {
            if regenerations > 0 {
                metrics::record_regeneration("accepted");
            }
            return ValidatedOutput {
                text,
                assessment,
                regenerations,
                blocked,
                used_fallback: false,
            };
        }
        blocked += 1;
        if regenerations == max_regenerations {
            metrics::record_regeneration("exhausted");
            return fallback_output(fallback, assessment, regenerations, blocked);
        }
        regenerations += 1;
        let constraints = assessment.violated_constraints();
        let request = RegenerationRequest {
            attempt: regenerations,
            instruction: regeneration_instruction(&constraints),
            constraints,
        };
        match regenerate(request).await {
            Ok(alternative) => text = alternative,
            Err(err) => {
                tracing::warn!(error = %err, attempt = regenerations, "agent gave no alternative; using the safe fallback");
                metrics::record_regeneration("agent_failed");
                return fallback_output(fallback, assessment, regenerations, blocked);
            }
        }
    }
}

fn fallback_output(
    fallback: &str,
    assessment: Assessment,
    regenerations: u32,
    blocked: u32,
) -> ValidatedOutput {
    ValidatedOutput {
        text: fallback.to_owned(),
        assessment,
        regenerations,
        blocked,
        used_fallback: true,
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;
    use crate::settings::TherapeuticSettings;

    const FALLBACK: &str = "The story pauses for a breath.";

    fn engine() -> SafetyEngine {
        SafetyEngine::builtin().unwrap()
    }

    #[tokio::test]
    async fn a_safe_text_passes_without_asking_for_alternatives() {
        let engine = engine();
        let output = validate_output(
            &engine,
            &SessionPolicy::default(),
            "The lantern glows softly as you step into the library.".into(),
            2,
            FALLBACK,
            |_| async { Err::<String, &str>("never asked") },
        )
        .await;
        assert_eq!(output.regenerations, 0);
        assert!(!output.used_fallback);
        assert_eq!(output.assessment.action, Action::Allow);
    }

    #[tokio::test]
    async fn a_blocked_text_is_regenerated_with_its_constraints() {
        let engine = engine();
        let asked = RefCell::new(Vec::new());
        let output = validate_output(
            &engine,
            &SessionPolicy::default(),
            "The goblin's entrails spill across the floor.".into(),
            2,
            FALLBACK,
            |request| {
                asked.borrow_mut().push(request);
                async { Ok::<_, &str>("The goblin flees into the dark, whimpering.".to_owned()) }
            },
        )
        .await;
        assert_eq!(output.text, "The goblin flees into the dark, whimpering.");
        assert_eq!((output.regenerations, output.blocked), (1, 1));
        let asked = asked.into_inner();
        assert_eq!(asked.len(), 1);
        assert!(
            asked[0].constraints[0].contains("without gore"),
            "{:?}",
            asked[0].constraints
        );
        assert!(
            asked[0]
                .instruction
                .contains("- describe conflict without gore")
        );
    }

    #[tokio::test]
    async fn attempts_are_bounded_and_end_in_the_safe_fallback() {
        let engine = engine();
        let calls = RefCell::new(0);
        let output = validate_output(
            &engine,
            &SessionPolicy::default(),
            "You're worthless and there is no hope.".into(),
            2,
            FALLBACK,
            |_| {
                *calls.borrow_mut() += 1;
                async { Ok::<_, &str>("It's all your fault, you brought this on yourself.".into()) }
            },
        )
        .await;
        assert_eq!(*calls.borrow(), 2);
        assert_eq!(output.text, FALLBACK);
        assert!(output.used_fallback);
        assert_eq!(output.blocked, 3);
        assert!(output.assessment.has_category("shaming"));
    }

    #[tokio::test]
    async fn an_agent_that_cannot_answer_gets_the_fallback_at_once() {
        let engine = engine();
        let output = validate_output(
            &engine,
            &SessionPolicy::default(),
            "Take 50mg of sertraline and you will feel better.".into(),
            3,
            FALLBACK,
            |_| async { Err::<String, _>("agent timed out") },
        )
        .await;
        assert!(output.used_fallback);
        assert_eq!(output.regenerations, 1);
    }

    #[tokio::test]
    async fn an_avoided_topic_blocks_with_its_own_constraint() {
        let engine = engine();
        let policy = engine.policy(&TherapeuticSettings {
            avoid_topics: vec!["drowning".into()],
            ..TherapeuticSettings::default()
        });
        let asked = RefCell::new(Vec::new());
        let output = validate_output(
            &engine,
            &policy,
            "The boat tips and you begin to drown in the cold lake.".into(),
            1,
            FALLBACK,
            |request| {
                asked.borrow_mut().push(request.constraints);
                async { Ok::<_, &str>("The boat rocks, then steadies.".into()) }
            },
        )
        .await;
        assert!(!output.used_fallback);
        assert_eq!(
            asked.into_inner()[0],
            ["avoid the topic \"drowning\": the player asked not to meet it in the story"]
        );
    }
}
