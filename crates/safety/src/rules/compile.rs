//! From a parsed rule file to a ready rule set: validates every rule (collecting every problem
//! with its rule id and key path), normalises phrases the way texts are normalised, and compiles
//! one matcher per source. A rule set that fails any check is never built, so the previous one
//! stays in force.

use std::{collections::BTreeMap, sync::Arc};

use regex::RegexBuilder;

use super::{
    context::{ExceptionWindow, phrase_words},
    document::{AppliesTo, PolicyDoc, RuleDoc, RuleFileDoc, ThresholdsDoc},
    matcher::{Matcher, MatcherBuilder},
};
use crate::{
    error::RuleIssue,
    normalize::{Normalized, doubled_letter_variants},
    verdict::{Action, Level, Source},
};

/// Largest compiled size of one regex; a pathological pattern is refused instead of eating
/// memory on every classification.
const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// The shortest phrase stem before a `*`: shorter ones ("ki*") match far too much.
const MIN_PREFIX_LEN: usize = 3;
const MAX_WINDOW: usize = 12;

/// One rule, ready to apply.
#[derive(Debug, Clone)]
pub struct CompiledRule {
    pub id: Arc<str>,
    pub category: Arc<str>,
    pub severity: Level,
    pub action: Action,
    pub crisis: bool,
    pub applies_to: AppliesTo,
    pub constraint: Option<Arc<str>>,
    pub sensitive: bool,
    /// Exception sets that can cancel a match of this rule.
    pub exceptions: Vec<Arc<ExceptionWindow>>,
}

impl CompiledRule {
    pub fn applies_to(&self, source: Source) -> bool {
        matches!(
            (self.applies_to, source),
            (AppliesTo::Both, _)
                | (AppliesTo::User, Source::User)
                | (AppliesTo::Agent, Source::Agent)
        )
    }
}

/// A validated, compiled rule file.
#[derive(Debug, Clone)]
pub struct RuleSet {
    pub version: Arc<str>,
    pub rules: Vec<CompiledRule>,
    pub user: Matcher,
    pub agent: Matcher,
    pub policy: PolicyDoc,
    /// Normalised phrases behind each avoidable topic (`drowning` → `drown*`, ...).
    pub topics: BTreeMap<String, Vec<String>>,
}

impl RuleSet {
    pub fn matcher(&self, source: Source) -> &Matcher {
        match source {
            Source::User => &self.user,
            Source::Agent => &self.agent,
        }
    }
}

/// FNV-1a over the document: a stable content hash for `rules_version` that needs no
/// cryptography (it identifies a rule file, it does not protect one).
pub fn content_hash(text: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

fn is_id(raw: &str) -> bool {
    !raw.is_empty()
        && raw.len() <= 128
        && raw.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
}

fn is_category(raw: &str) -> bool {
    !raw.is_empty()
        && raw.len() <= 64
        && raw
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Compiles `source` with ASCII-only `\w`, `\b` and `\d` when the pattern allows it. Rules are
/// written for normalised, mostly ASCII text, and Unicode word classes multiply the states of the
/// lazy DFA: across many different texts its cache thrashes and the regex engine falls back to a
/// far slower one (a turn took 7x longer in `tta bench safety`). Patterns that need Unicode (a
/// `.` may match any character) keep it.
fn ascii_regex(source: &str) -> Result<regex::Regex, regex::Error> {
    let build = |pattern: &str| {
        RegexBuilder::new(pattern)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
    };
    build(&format!("(?-u){source}")).or_else(|_| build(source))
}

/// A phrase as it will be matched: normalised, with its `*` suffix split off.
pub fn normalize_phrase(raw: &str) -> Result<(String, bool), String> {
    let trimmed = raw.trim();
    let (body, prefix) = match trimmed.strip_suffix('*') {
        Some(body) => (body, true),
        None => (trimmed, false),
    };
    let normalized = Normalized::new(body).as_str().to_owned();
    if normalized.is_empty() {
        return Err("is empty after normalisation".to_owned());
    }
    if prefix && normalized.chars().count() < MIN_PREFIX_LEN {
        return Err(format!(
            "needs at least {MIN_PREFIX_LEN} characters before `*`"
        ));
    }
    Ok((normalized, prefix))
}

struct Checker {
    issues: Vec<RuleIssue>,
}

impl Checker {
    fn check(&mut self, ok: bool, rule: &str, path: String, reason: impl FnOnce() -> String) {
        if !ok {
            self.issues.push(RuleIssue::new(rule, path, reason()));
        }
    }

    fn thresholds(&mut self, path: &str, thresholds: &ThresholdsDoc, needs_block: bool) {
        match thresholds.block_at {
            Some(block_at) => self.check(
                thresholds.warn_at <= block_at,
                "",
                format!("{path}.warn_at"),
                || format!("must not be above block_at ({block_at})"),
            ),
            None => self.check(!needs_block, "", format!("{path}.block_at"), || {
                "is required for agent output".to_owned()
            }),
        }
    }
}

/// Validates and compiles `doc` (the parsed form of `text`).
pub fn compile(text: &str, doc: RuleFileDoc) -> Result<RuleSet, Vec<RuleIssue>> {
    let mut c = Checker { issues: Vec::new() };

    c.thresholds("policy.user", &doc.policy.user, false);
    for (name, thresholds) in [
        ("low", &doc.policy.agent.low),
        ("medium", &doc.policy.agent.medium),
        ("high", &doc.policy.agent.high),
    ] {
        c.thresholds(&format!("policy.agent.{name}"), thresholds, true);
    }
    let session = &doc.policy.session;
    c.check(
        session.escalate_after >= 1,
        "",
        "policy.session.escalate_after".into(),
        || "must be at least 1".into(),
    );
    c.check(
        !session.window.is_zero(),
        "",
        "policy.session.window".into(),
        || "must be greater than zero".into(),
    );
    c.check(
        session.ttl >= session.window,
        "",
        "policy.session.ttl".into(),
        || "must not be shorter than policy.session.window".into(),
    );
    c.check(
        session.raise_to > session.signal_at,
        "",
        "policy.session.raise_to".into(),
        || format!("must be above signal_at ({})", session.signal_at),
    );

    let mut sets: BTreeMap<String, Arc<ExceptionWindow>> = BTreeMap::new();
    for (name, set) in &doc.exception_sets {
        let path = format!("exception_sets.{name}");
        c.check(
            (1..=MAX_WINDOW).contains(&set.window),
            "",
            format!("{path}.window"),
            || format!("must be between 1 and {MAX_WINDOW} words"),
        );
        for (list, phrases) in [("before", &set.before), ("after", &set.after)] {
            for (i, phrase) in phrases.iter().enumerate() {
                c.check(
                    !phrase_words(phrase).is_empty(),
                    "",
                    format!("{path}.{list}[{i}]"),
                    || "has no words".into(),
                );
            }
        }
        sets.insert(
            name.clone(),
            Arc::new(ExceptionWindow::new(
                name,
                &set.before,
                &set.after,
                set.window,
                &set.stop_words,
                set.stop_at_comma,
            )),
        );
    }

    let mut topics = BTreeMap::new();
    for (name, phrases) in &doc.topics {
        let path = format!("topics.{name}");
        c.check(is_category(name), "", path.clone(), || {
            "topic names are lowercase letters, digits and '_'".into()
        });
        let mut normalized = Vec::new();
        for (i, phrase) in phrases.iter().enumerate() {
            match normalize_phrase(phrase) {
                Ok((body, prefix)) => {
                    normalized.push(if prefix { format!("{body}*") } else { body });
                }
                Err(reason) => c.check(false, "", format!("{path}[{i}]"), || reason),
            }
        }
        topics.insert(name.clone(), normalized);
    }

    let mut rules = Vec::with_capacity(doc.rules.len());
    let mut user = MatcherBuilder::default();
    let mut agent = MatcherBuilder::default();
    let mut seen_ids: BTreeMap<String, usize> = BTreeMap::new();
    for (index, rule) in &doc.rules {
        let issues_before = c.issues.len();
        let compiled = compile_rule(&mut c, *index, rule, &sets, &mut seen_ids);
        if c.issues.len() > issues_before {
            continue;
        }
        let rule_index = rules.len();
        for (phrase, prefix) in &compiled.phrases {
            for variant in doubled_letter_variants(phrase) {
                for builder in builders(&mut user, &mut agent, rule.applies_to) {
                    builder.phrase(rule_index, &variant, *prefix);
                }
            }
        }
        for regex in &compiled.regexes {
            for builder in builders(&mut user, &mut agent, rule.applies_to) {
                builder.regex(rule_index, regex.clone());
            }
        }
        rules.push(compiled.rule);
    }
    if !c.issues.is_empty() {
        return Err(c.issues);
    }

    let user = user.build();
    let agent = agent.build();
    match (user, agent) {
        (Ok(user), Ok(agent)) => Ok(RuleSet {
            version: content_hash(text).into(),
            rules,
            user,
            agent,
            policy: doc.policy,
            topics,
        }),
        (Err(reason), _) | (_, Err(reason)) => Err(vec![RuleIssue::new("", "rules", reason)]),
    }
}

fn builders<'b>(
    user: &'b mut MatcherBuilder,
    agent: &'b mut MatcherBuilder,
    applies_to: AppliesTo,
) -> Vec<&'b mut MatcherBuilder> {
    match applies_to {
        AppliesTo::User => vec![user],
        AppliesTo::Agent => vec![agent],
        AppliesTo::Both => vec![user, agent],
    }
}

struct RuleParts {
    rule: CompiledRule,
    phrases: Vec<(String, bool)>,
    regexes: Vec<regex::Regex>,
}

fn compile_rule(
    c: &mut Checker,
    index: usize,
    rule: &RuleDoc,
    sets: &BTreeMap<String, Arc<ExceptionWindow>>,
    seen_ids: &mut BTreeMap<String, usize>,
) -> RuleParts {
    let id = rule.id.as_str();
    let path = |key: &str| format!("rules[{index}].{key}");

    c.check(is_id(id), id, path("id"), || {
        "must be 1-128 characters of lowercase letters, digits, '.', '_' or '-'".into()
    });
    if let Some(first) = seen_ids.insert(id.to_owned(), index) {
        c.check(false, id, path("id"), || {
            format!("duplicate id; already used by rules[{first}]")
        });
    }
    c.check(is_category(&rule.category), id, path("category"), || {
        "must be lowercase letters, digits and '_'".into()
    });
    c.check(
        !rule.phrases.is_empty() || !rule.regexes.is_empty(),
        id,
        path("phrases"),
        || "a rule needs at least one phrase or regex".into(),
    );
    c.check(
        rule.severity != Level::None || rule.action == Action::Allow,
        id,
        path("action"),
        || "a rule of severity none can only allow".into(),
    );
    c.check(
        !(rule.crisis && rule.applies_to == AppliesTo::Agent),
        id,
        path("crisis"),
        || "crisis rules judge the player's input; applies_to must be user or both".into(),
    );
    c.check(
        !(rule.action == Action::Escalate && rule.applies_to == AppliesTo::Agent),
        id,
        path("action"),
        || "agent output is blocked, not escalated; use action block".into(),
    );
    c.check(
        (1..=MAX_WINDOW).contains(&rule.window),
        id,
        path("window"),
        || format!("must be between 1 and {MAX_WINDOW} words"),
    );

    let mut phrases = Vec::with_capacity(rule.phrases.len());
    for (i, phrase) in rule.phrases.iter().enumerate() {
        match normalize_phrase(phrase) {
            Ok(normalized) => phrases.push(normalized),
            Err(reason) => c.check(false, id, path(&format!("phrases[{i}]")), || reason),
        }
    }

    let mut regexes = Vec::with_capacity(rule.regexes.len());
    for (i, source) in rule.regexes.iter().enumerate() {
        let at = path(&format!("regexes[{i}]"));
        if source.contains('\'') {
            c.check(false, id, at, || {
                "texts are matched without apostrophes; write `dont`, not `don't`".into()
            });
            continue;
        }
        match ascii_regex(source) {
            Ok(regex) if regex.is_match("") => {
                c.check(false, id, at, || "matches the empty text".into());
            }
            Ok(regex) => regexes.push(regex),
            Err(err) => c.check(false, id, at, || format!("invalid regex: {err}")),
        }
    }

    let mut exceptions = Vec::new();
    for (i, name) in rule.exceptions.iter().enumerate() {
        match sets.get(name) {
            Some(set) => exceptions.push(Arc::clone(set)),
            None => c.check(false, id, path(&format!("exceptions[{i}]")), || {
                format!(
                    "unknown exception set {name:?}; defined: {}",
                    sets.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            }),
        }
    }
    let own = ExceptionWindow::new(
        id,
        &rule.unless_before,
        &rule.unless_after,
        rule.window,
        &[],
        false,
    );
    if !own.is_empty() {
        exceptions.push(Arc::new(own));
    }

    RuleParts {
        rule: CompiledRule {
            id: id.into(),
            category: rule.category.as_str().into(),
            severity: rule.severity,
            action: rule.action,
            crisis: rule.crisis,
            applies_to: rule.applies_to,
            constraint: rule.constraint.as_deref().map(Into::into),
            sensitive: rule.sensitive,
            exceptions,
        },
        phrases,
        regexes,
    }
}
