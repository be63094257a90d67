//! A workflow definition checked once, when it is registered or loaded (R8.3): every problem is
//! reported with the path of the offending field (`definition.steps[1].depends_on[0]: unknown
//! step "ipa2"`), and what passes is a [`Workflow`] the runner can trust — steps in dependency
//! order, conditions parsed, fallbacks resolved, defaults filled in.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, SystemTime},
};

use tta_proto::v1 as pb;
use tta_types::FieldViolation;

use super::{
    condition::Condition,
    json,
    view::{check_output_path, check_route_path},
};

const MAX_STEPS: usize = 32;
const MAX_RETRIES: u32 = 10;
const MAX_NAME_CHARS: usize = 64;
const MAX_DESCRIPTION_BYTES: usize = 1024;
const MAX_FALLBACK_REPLY_BYTES: usize = 4096;
const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_millis(100);
const DEFAULT_EXPECTED_DURATION: Duration = Duration::from_secs(1);

/// Defaults for what a definition leaves unset.
#[derive(Debug, Clone, Copy)]
pub struct Defaults {
    /// `total_timeout` when unset.
    pub total_timeout: Duration,
    /// A step's `timeout` when unset (capped at the total).
    pub step_timeout: Duration,
}

/// What replaces a step's output when all its attempts fail.
#[derive(Debug, Clone, PartialEq)]
pub enum Fallback {
    /// Run this other step instead; its output stands in for this step's.
    Step(String),
    /// Use this output.
    Output(Box<pb::AgentOutput>),
}

#[derive(Debug, Clone)]
pub struct Step {
    pub id: String,
    pub agent_type: String,
    pub depends_on: Vec<String>,
    pub condition: Option<Condition>,
    pub timeout: Duration,
    pub max_retries: u32,
    pub retry_backoff: Duration,
    pub fallback: Option<Fallback>,
    pub continue_on_failure: bool,
    pub params: Option<prost_types::Struct>,
    pub required_capabilities: Vec<String>,
    /// Named as another step's `fallback_step`: runs only in that role, never on its own.
    pub fallback_only: bool,
    /// Every step this one depends on, directly or transitively, in workflow order.
    pub ancestors: Vec<String>,
    /// The steps an agent may run after this one without the gateway in between
    /// (`AgentTask.next_steps`), in order: set when the workflow is one line of steps, each
    /// depending on the one before, and stopping before the first step the gateway must run
    /// itself — one with a condition or required capabilities to judge, or with retries, a
    /// fallback or `continue_on_failure`, which the gateway applies to that step's own silence
    /// and a chain's silence cannot be pinned on one step.
    pub hand_on_to: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Route {
    pub interaction_types: Vec<String>,
    pub condition: Option<Condition>,
    pub precedence: i32,
    pub is_default: bool,
}

/// A validated workflow. `steps` are in dependency order (every step after its dependencies).
#[derive(Debug, Clone)]
pub struct Workflow {
    pub name: String,
    pub version: u32,
    pub steps: Vec<Step>,
    pub total_timeout: Duration,
    pub route: Route,
    /// The step whose output becomes the reply (resolved: never empty).
    pub output_step: String,
    /// Empty means the configured global fallback reply.
    pub fallback_reply: String,
    pub expected_duration: Duration,
    /// The definition in its wire form, as registered (version and created_at set on storage).
    pub definition: pb::WorkflowDefinition,
}

impl Workflow {
    pub fn step(&self, id: &str) -> Option<&Step> {
        self.steps.iter().find(|step| step.id == id)
    }
}

fn violation(path: impl Into<String>, reason: impl Into<String>) -> FieldViolation {
    FieldViolation::new(path, reason)
}

/// Names of workflows and steps: lowercase letters, digits and a few separators, starting with a
/// letter (they appear in keys, metrics labels and condition paths).
fn check_name(path: &str, raw: &str, extra: &[char]) -> Result<(), FieldViolation> {
    let ok = (1..=MAX_NAME_CHARS).contains(&raw.chars().count())
        && raw.starts_with(|c: char| c.is_ascii_lowercase())
        && raw.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || extra.contains(&c)
        });
    if ok {
        Ok(())
    } else {
        let allowed: String = extra.iter().map(|c| format!(" '{c}'")).collect();
        Err(violation(
            path,
            format!(
                "must be 1 to {MAX_NAME_CHARS} characters of lowercase letters, digits, '_'{allowed}, starting with a letter; got {raw:?}"
            ),
        ))
    }
}

fn duration(
    path: &str,
    raw: Option<&prost_types::Duration>,
) -> Result<Option<Duration>, FieldViolation> {
    raw.map(|raw| {
        Duration::try_from(*raw)
            .map_err(|_| violation(path, "must be a non-negative duration"))
            .and_then(|value| {
                if value.is_zero() {
                    Err(violation(path, "must be greater than zero"))
                } else {
                    Ok(value)
                }
            })
    })
    .transpose()
}

fn condition(path: &str, raw: &str) -> Result<Option<Condition>, FieldViolation> {
    if raw.trim().is_empty() {
        return Ok(None);
    }
    Condition::parse(raw)
        .map(Some)
        .map_err(|err| violation(path, format!("invalid condition: {err}")))
}

/// Checks `definition` (paths start with `definition.`) and builds the workflow.
pub fn validate(
    definition: &pb::WorkflowDefinition,
    defaults: Defaults,
) -> Result<Workflow, FieldViolation> {
    check_name("definition.name", &definition.name, &['-', '.'])?;
    if definition.description.len() > MAX_DESCRIPTION_BYTES {
        return Err(violation(
            "definition.description",
            format!("must be at most {MAX_DESCRIPTION_BYTES} bytes"),
        ));
    }
    if definition.fallback_reply.len() > MAX_FALLBACK_REPLY_BYTES {
        return Err(violation(
            "definition.fallback_reply",
            format!("must be at most {MAX_FALLBACK_REPLY_BYTES} bytes"),
        ));
    }
    if definition.steps.is_empty() || definition.steps.len() > MAX_STEPS {
        return Err(violation(
            "definition.steps",
            format!(
                "must hold 1 to {MAX_STEPS} steps, got {}",
                definition.steps.len()
            ),
        ));
    }
    let total_timeout = duration(
        "definition.total_timeout",
        definition.total_timeout.as_ref(),
    )?
    .unwrap_or(defaults.total_timeout);
    let expected_duration = duration(
        "definition.expected_duration",
        definition.expected_duration.as_ref(),
    )?
    .unwrap_or(DEFAULT_EXPECTED_DURATION);

    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, step) in definition.steps.iter().enumerate() {
        let path = format!("definition.steps[{i}]");
        check_name(&format!("{path}.id"), &step.id, &['-'])?;
        if index.insert(step.id.as_str(), i).is_some() {
            return Err(violation(
                format!("{path}.id"),
                format!("duplicate step id {:?}", step.id),
            ));
        }
        check_name(&format!("{path}.agent_type"), &step.agent_type, &['-'])?;
    }
    for (i, step) in definition.steps.iter().enumerate() {
        for (j, dependency) in step.depends_on.iter().enumerate() {
            let path = format!("definition.steps[{i}].depends_on[{j}]");
            if !index.contains_key(dependency.as_str()) {
                return Err(violation(path, format!("unknown step {dependency:?}")));
            }
            if *dependency == step.id {
                return Err(violation(path, "a step cannot depend on itself"));
            }
        }
    }
    let order = topological_order(definition, &index)?;
    let ancestors = ancestors(definition, &index, &order);

    let fallback_targets: HashSet<&str> = definition
        .steps
        .iter()
        .filter_map(|step| match &step.fallback {
            Some(pb::workflow_step::Fallback::FallbackStep(target)) => Some(target.as_str()),
            _ => None,
        })
        .collect();

    let mut steps = Vec::with_capacity(order.len());
    for &i in &order {
        let raw = &definition.steps[i];
        let path = format!("definition.steps[{i}]");
        let timeout = duration(&format!("{path}.timeout"), raw.timeout.as_ref())?
            .unwrap_or(defaults.step_timeout.min(total_timeout));
        if timeout > total_timeout {
            return Err(violation(
                format!("{path}.timeout"),
                "exceeds total_timeout",
            ));
        }
        if raw.max_retries > MAX_RETRIES {
            return Err(violation(
                format!("{path}.max_retries"),
                format!("must be at most {MAX_RETRIES}"),
            ));
        }
        let retry_backoff = duration(&format!("{path}.retry_backoff"), raw.retry_backoff.as_ref())?
            .unwrap_or(DEFAULT_RETRY_BACKOFF);
        let condition = condition(&format!("{path}.condition"), &raw.condition)?;
        if let Some(condition) = &condition {
            for condition_path in condition.paths() {
                let Some((step_id, rest)) = condition_path.split_first() else {
                    continue;
                };
                let Some(&source) = index.get(step_id.as_str()) else {
                    return Err(violation(
                        format!("{path}.condition"),
                        format!("unknown step {step_id:?} in {:?}", condition.source()),
                    ));
                };
                if !ancestors[i].contains(&source) {
                    return Err(violation(
                        format!("{path}.condition"),
                        format!("step {step_id:?} is not a dependency of step {:?}", raw.id),
                    ));
                }
                check_output_path(&definition.steps[source].agent_type, rest)
                    .map_err(|reason| violation(format!("{path}.condition"), reason))?;
            }
        }
        let fallback = match &raw.fallback {
            None => None,
            Some(pb::workflow_step::Fallback::FallbackStep(target)) => {
                let fallback_path = format!("{path}.fallback_step");
                let Some(&target_index) = index.get(target.as_str()) else {
                    return Err(violation(fallback_path, format!("unknown step {target:?}")));
                };
                if target_index == i {
                    return Err(violation(
                        fallback_path,
                        "a step cannot be its own fallback",
                    ));
                }
                if ancestors[target_index].contains(&i) {
                    return Err(violation(
                        fallback_path,
                        format!("step {target:?} depends on step {:?}", raw.id),
                    ));
                }
                Some(Fallback::Step(target.clone()))
            }
            Some(pb::workflow_step::Fallback::FallbackOutput(output)) => {
                Some(Fallback::Output(Box::new(
                    json::agent_output_from_struct(output)
                        .map_err(|reason| violation(format!("{path}.fallback_output"), reason))?,
                )))
            }
        };
        steps.push(Step {
            id: raw.id.clone(),
            agent_type: raw.agent_type.clone(),
            depends_on: raw.depends_on.clone(),
            condition,
            timeout,
            max_retries: raw.max_retries,
            retry_backoff,
            fallback,
            continue_on_failure: raw.continue_on_failure,
            params: raw.params.clone(),
            required_capabilities: raw.required_capabilities.clone(),
            fallback_only: fallback_targets.contains(raw.id.as_str()),
            ancestors: order
                .iter()
                .filter(|&&other| ancestors[i].contains(&other))
                .map(|&other| definition.steps[other].id.clone())
                .collect(),
            hand_on_to: Vec::new(),
        });
    }
    link_chains(&mut steps);

    let route = match &definition.route {
        None => Route::default(),
        Some(raw) => {
            for (j, interaction) in raw.interaction_types.iter().enumerate() {
                if interaction.trim().is_empty() || interaction.len() > MAX_NAME_CHARS {
                    return Err(violation(
                        format!("definition.route.interaction_types[{j}]"),
                        format!("must be 1 to {MAX_NAME_CHARS} bytes"),
                    ));
                }
            }
            let condition = condition("definition.route.condition", &raw.condition)?;
            if let Some(condition) = &condition {
                for path in condition.paths() {
                    check_route_path(path)
                        .map_err(|reason| violation("definition.route.condition", reason))?;
                }
            }
            Route {
                interaction_types: raw.interaction_types.clone(),
                condition,
                precedence: raw.precedence,
                is_default: raw.is_default,
            }
        }
    };

    let output_step = if definition.output_step.is_empty() {
        let runnable: Vec<&Step> = steps.iter().filter(|step| !step.fallback_only).collect();
        runnable
            .iter()
            .rev()
            .find(|step| step.agent_type == "nga")
            .or(runnable.last())
            .map(|step| step.id.clone())
            .unwrap_or_default()
    } else {
        if !index.contains_key(definition.output_step.as_str()) {
            return Err(violation(
                "definition.output_step",
                format!("unknown step {:?}", definition.output_step),
            ));
        }
        definition.output_step.clone()
    };

    Ok(Workflow {
        name: definition.name.clone(),
        version: definition.version,
        steps,
        total_timeout,
        route,
        output_step,
        fallback_reply: definition.fallback_reply.clone(),
        expected_duration,
        definition: definition.clone(),
    })
}

/// Kahn's algorithm, stable in declaration order; a cycle is reported as the path around it.
fn topological_order(
    definition: &pb::WorkflowDefinition,
    index: &HashMap<&str, usize>,
) -> Result<Vec<usize>, FieldViolation> {
    let steps = &definition.steps;
    let mut pending: Vec<usize> = steps.iter().map(|step| step.depends_on.len()).collect();
    let mut order = Vec::with_capacity(steps.len());
    let mut placed = vec![false; steps.len()];
    while order.len() < steps.len() {
        let Some(next) = (0..steps.len()).find(|&i| !placed[i] && pending[i] == 0) else {
            return Err(violation(
                "definition.steps",
                format!("cycle {}", describe_cycle(definition, index, &placed)),
            ));
        };
        placed[next] = true;
        order.push(next);
        for (i, step) in steps.iter().enumerate() {
            let times = step
                .depends_on
                .iter()
                .filter(|dependency| index.get(dependency.as_str()) == Some(&next))
                .count();
            pending[i] -= times;
        }
    }
    Ok(order)
}

/// Walks dependencies from an unplaced step until a step repeats: `a -> b -> a`.
fn describe_cycle(
    definition: &pb::WorkflowDefinition,
    index: &HashMap<&str, usize>,
    placed: &[bool],
) -> String {
    let Some(start) = (0..placed.len()).find(|&i| !placed[i]) else {
        return String::new();
    };
    let mut seen = vec![start];
    let mut current = start;
    loop {
        let next = definition.steps[current]
            .depends_on
            .iter()
            .filter_map(|dependency| index.get(dependency.as_str()).copied())
            .find(|&dependency| !placed[dependency]);
        let Some(next) = next else {
            break;
        };
        if let Some(position) = seen.iter().position(|&step| step == next) {
            let mut cycle: Vec<&str> = seen[position..]
                .iter()
                .map(|&step| definition.steps[step].id.as_str())
                .collect();
            cycle.push(definition.steps[next].id.as_str());
            // Dependencies point backwards in time: print the cycle in running order.
            cycle.reverse();
            return cycle.join(" -> ");
        }
        seen.push(next);
        current = next;
    }
    definition.steps[start].id.clone()
}

/// Fills [`Step::hand_on_to`] when the runnable steps form one line.
fn link_chains(steps: &mut [Step]) {
    let runnable: Vec<usize> = (0..steps.len())
        .filter(|&i| !steps[i].fallback_only)
        .collect();
    let one_line = runnable
        .windows(2)
        .all(|pair| steps[pair[1]].depends_on.contains(&steps[pair[0]].id));
    if !one_line {
        return;
    }
    // Retries, a fallback or `continue_on_failure` answer one step's own silence; a chain's
    // silence names no step, so no such step is in a chain, at its head or further on.
    let alone_in_silence =
        |step: &Step| step.max_retries == 0 && step.fallback.is_none() && !step.continue_on_failure;
    for (position, &i) in runnable.iter().enumerate() {
        if !alone_in_silence(&steps[i]) {
            continue;
        }
        let following: Vec<String> = runnable[position + 1..]
            .iter()
            .map(|&j| &steps[j])
            .take_while(|step| {
                step.condition.is_none()
                    && step.required_capabilities.is_empty()
                    && alone_in_silence(step)
            })
            .map(|step| step.id.clone())
            .collect();
        steps[i].hand_on_to = following;
    }
}

/// For each step, the set of steps it depends on directly or transitively.
fn ancestors(
    definition: &pb::WorkflowDefinition,
    index: &HashMap<&str, usize>,
    order: &[usize],
) -> Vec<HashSet<usize>> {
    let mut ancestors = vec![HashSet::new(); definition.steps.len()];
    for &i in order {
        let mut mine = HashSet::new();
        for dependency in &definition.steps[i].depends_on {
            if let Some(&d) = index.get(dependency.as_str()) {
                mine.insert(d);
                mine.extend(ancestors[d].iter().copied());
            }
        }
        ancestors[i] = mine;
    }
    ancestors
}

/// The wire form of a stored definition: version and registration time set.
pub fn stamped(definition: &pb::WorkflowDefinition, version: u32) -> pb::WorkflowDefinition {
    let mut stamped = definition.clone();
    stamped.version = version;
    stamped.created_at = Some(prost_types::Timestamp::from(SystemTime::now()));
    stamped
}

/// Two definitions say the same thing (output-only fields aside).
pub fn same_content(a: &pb::WorkflowDefinition, b: &pb::WorkflowDefinition) -> bool {
    let strip = |definition: &pb::WorkflowDefinition| {
        let mut copy = definition.clone();
        copy.version = 0;
        copy.created_at = None;
        copy
    };
    strip(a) == strip(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULTS: Defaults = Defaults {
        total_timeout: Duration::from_secs(2),
        step_timeout: Duration::from_secs(5),
    };

    fn step(id: &str, depends_on: &[&str]) -> pb::WorkflowStep {
        pb::WorkflowStep {
            id: id.to_owned(),
            agent_type: id.to_owned(),
            depends_on: depends_on.iter().map(|d| (*d).to_owned()).collect(),
            ..Default::default()
        }
    }

    fn definition(steps: Vec<pb::WorkflowStep>) -> pb::WorkflowDefinition {
        pb::WorkflowDefinition {
            name: "test".to_owned(),
            steps,
            ..Default::default()
        }
    }

    #[test]
    fn the_shipped_example_workflows_are_valid() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../deploy/workflows/example.yaml"
        );
        let text = std::fs::read_to_string(path).unwrap();
        let definitions = json::definitions_from_yaml(&text).unwrap();
        assert!(definitions.len() >= 2);
        for definition in &definitions {
            validate(definition, DEFAULTS).unwrap();
        }
        for definition in super::super::builtin::definitions() {
            validate(&definition, DEFAULTS).unwrap();
        }
    }

    #[test]
    fn steps_come_in_dependency_order_with_defaults_filled_in() {
        let workflow = validate(
            &definition(vec![
                step("nga", &["wba", "ipa"]),
                step("wba", &["ipa"]),
                step("ipa", &[]),
            ]),
            DEFAULTS,
        )
        .unwrap();
        let order: Vec<&str> = workflow.steps.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(order, ["ipa", "wba", "nga"]);
        assert_eq!(workflow.output_step, "nga");
        assert_eq!(workflow.total_timeout, Duration::from_secs(2));
        // A step's default timeout never exceeds the workflow's.
        assert_eq!(workflow.steps[0].timeout, Duration::from_secs(2));
        assert_eq!(workflow.steps[2].ancestors, ["ipa", "wba"]);
    }

    fn hand_ons(workflow: &Workflow) -> Vec<(&str, Vec<&str>)> {
        workflow
            .steps
            .iter()
            .map(|step| {
                let next = step.hand_on_to.iter().map(String::as_str).collect();
                (step.id.as_str(), next)
            })
            .collect()
    }

    #[test]
    fn a_line_of_steps_is_chained_up_to_the_first_step_the_gateway_must_judge() {
        let collaborative = validate(
            &definition(vec![
                step("ipa", &[]),
                step("wba", &["ipa"]),
                step("nga", &["ipa", "wba"]),
            ]),
            DEFAULTS,
        )
        .unwrap();
        assert_eq!(
            hand_ons(&collaborative),
            [
                ("ipa", vec!["wba", "nga"]),
                ("wba", vec!["nga"]),
                ("nga", vec![])
            ]
        );

        let mut judged = step("nga", &["wba"]);
        judged.condition = "ipa.intent == \"look\"".to_owned();
        let conditional = validate(
            &definition(vec![step("ipa", &[]), step("wba", &["ipa"]), judged]),
            DEFAULTS,
        )
        .unwrap();
        assert_eq!(
            hand_ons(&conditional),
            [("ipa", vec!["wba"]), ("wba", vec![]), ("nga", vec![])]
        );

        let mut retried = step("ipa", &[]);
        retried.max_retries = 1;
        let mut forgiving = step("wba", &["ipa"]);
        forgiving.continue_on_failure = true;
        let guarded = validate(
            &definition(vec![retried, forgiving, step("nga", &["wba"])]),
            DEFAULTS,
        )
        .unwrap();
        assert_eq!(
            hand_ons(&guarded),
            [("ipa", vec![]), ("wba", vec![]), ("nga", vec![])]
        );

        let mut picky = step("wba", &["ipa"]);
        picky.required_capabilities = vec!["gpu".to_owned()];
        let capable = validate(
            &definition(vec![step("ipa", &[]), picky, step("nga", &["wba"])]),
            DEFAULTS,
        )
        .unwrap();
        assert_eq!(
            hand_ons(&capable),
            [("ipa", vec![]), ("wba", vec!["nga"]), ("nga", vec![])]
        );
    }

    #[test]
    fn parallel_branches_are_not_chained() {
        let branches = validate(
            &definition(vec![
                step("ipa", &[]),
                step("wba", &["ipa"]),
                step("mood", &["ipa"]),
                step("nga", &["wba", "mood"]),
            ]),
            DEFAULTS,
        )
        .unwrap();
        assert!(
            branches.steps.iter().all(|step| step.hand_on_to.is_empty()),
            "{:?}",
            hand_ons(&branches)
        );
    }

    #[test]
    fn a_fallback_step_may_not_depend_on_the_step_it_replaces() {
        let mut primary = step("primary", &[]);
        primary.fallback = Some(pb::workflow_step::Fallback::FallbackStep(
            "backup".to_owned(),
        ));
        let err = validate(
            &definition(vec![primary, step("backup", &["primary"])]),
            DEFAULTS,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("definition.steps[0].fallback_step: step \"backup\" depends on"),
            "{err}"
        );
    }

    #[test]
    fn conditions_must_parse_and_name_existing_fields() {
        let mut nga = step("nga", &["ipa"]);
        nga.condition = "ipa.intnt == \"move\"".to_owned();
        let err = validate(&definition(vec![step("ipa", &[]), nga.clone()]), DEFAULTS)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("definition.steps[1].condition"), "{err}");
        assert!(err.contains("intnt"), "{err}");
        nga.condition = "ipa.intent ==".to_owned();
        let err = validate(&definition(vec![step("ipa", &[]), nga]), DEFAULTS)
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid condition"), "{err}");
    }
}
