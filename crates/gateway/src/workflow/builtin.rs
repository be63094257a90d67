//! The workflows every gateway knows without configuration, named after the prototype's workflow
//! types. `collaborative` (IPA → WBA → NGA) is the default turn; the other three run one part of
//! it for services that want only that part.

use tta_proto::v1 as pb;

pub const COLLABORATIVE: &str = "collaborative";
pub const INPUT_PROCESSING: &str = "input_processing";
pub const WORLD_BUILDING: &str = "world_building";
pub const NARRATIVE_GENERATION: &str = "narrative_generation";

/// What the player reads when a run cannot produce its reply.
pub const FALLBACK_REPLY: &str = "Let's pause here for a moment. Take a slow breath in, and let it out gently. \
The harbour is still here, and so are you. When you're ready, tell me what you'd like to do next.";

fn step(id: &str, depends_on: &[&str]) -> pb::WorkflowStep {
    pb::WorkflowStep {
        id: id.to_owned(),
        agent_type: id.to_owned(),
        depends_on: depends_on.iter().map(|d| (*d).to_owned()).collect(),
        ..Default::default()
    }
}

fn workflow(
    name: &str,
    description: &str,
    steps: Vec<pb::WorkflowStep>,
    interaction_types: &[&str],
    is_default: bool,
) -> pb::WorkflowDefinition {
    pb::WorkflowDefinition {
        name: name.to_owned(),
        description: description.to_owned(),
        steps,
        route: Some(pb::WorkflowRoute {
            interaction_types: interaction_types.iter().map(|t| (*t).to_owned()).collect(),
            condition: String::new(),
            precedence: 0,
            is_default,
        }),
        fallback_reply: FALLBACK_REPLY.to_owned(),
        ..Default::default()
    }
}

/// The built-in definitions, in the wire form they are registered in.
pub fn definitions() -> Vec<pb::WorkflowDefinition> {
    vec![
        workflow(
            COLLABORATIVE,
            "A player turn: the IPA understands the input, the WBA applies it to the world, the NGA narrates.",
            vec![
                step("ipa", &[]),
                step("wba", &["ipa"]),
                step("nga", &["ipa", "wba"]),
            ],
            &["turn", "command"],
            true,
        ),
        workflow(
            INPUT_PROCESSING,
            "Only the IPA: intent, entities and emotional tone of the input.",
            vec![step("ipa", &[])],
            &[INPUT_PROCESSING],
            false,
        ),
        workflow(
            WORLD_BUILDING,
            "The IPA and the WBA: the input applied to the world, without narration.",
            vec![step("ipa", &[]), step("wba", &["ipa"])],
            &[WORLD_BUILDING, "system"],
            false,
        ),
        workflow(
            NARRATIVE_GENERATION,
            "Only the NGA: a narrative reply from the input and the session's history.",
            vec![step("nga", &[])],
            &[NARRATIVE_GENERATION],
            false,
        ),
    ]
}
