//! `tta bench safety`: the safety rule engine on one core, against the plainest scan of the same
//! patterns, in one run.
//!
//! A "turn" is what the gateway judges per player turn: the player's input (source user) and the
//! narrative reply (source agent). Inputs are the evaluation lines of `crates/safety/tests/data`
//! (game actions, idioms, crisis messages); replies are narrative paragraphs of typical length,
//! some of them unsafe. Everything runs in a plain loop on this thread.
//!
//! - Throughput: MB/s and assessments/s of `SafetyEngine::classify` over all turns, repeated for
//!   `--seconds`.
//! - Latency: the time to judge one whole turn (input + reply), p50/p99/p99.9.
//! - Baseline: one `regex::RegexSet` of every pattern of the same rule set (phrases as
//!   `\b…\b`-delimited literals, regexes as written) answering `is_match` on the same texts —
//!   what the engine would cost without normalisation, spans, boundaries and exceptions.

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use anyhow::Context;
use serde_json::json;
use tta_safety::{SafetyEngine, Source};

#[derive(Debug, Clone, clap::Args)]
pub struct SafetyBenchArgs {
    /// How long each throughput run lasts.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    seconds: Duration,
    /// Turns timed one by one for the latency figures.
    #[arg(long, default_value_t = 50_000)]
    turns: usize,
    /// Rule file to use instead of the built-in rules.
    #[arg(long, value_name = "PATH")]
    rules: Option<std::path::PathBuf>,
    /// Print one JSON object instead of the report.
    #[arg(long)]
    json: bool,
}

const CRISIS: &str = include_str!("../../../safety/tests/data/crisis.txt");
const BENIGN: &str = include_str!("../../../safety/tests/data/benign.txt");

/// Narrative replies of the length the narrative agent writes, two of them unsafe.
const REPLIES: [&str; 10] = [
    "The lantern sways as you step into the library. Dust drifts through the pale light, and somewhere between the shelves a clock ticks patiently. An old woman looks up from her book and smiles. 'Take your time,' she says. 'The stories here have waited a long while; they can wait a little longer for you.'",
    "You raise your sword and the goblin stumbles back, dropping its rusty dagger. It raises its hands, trembling. 'Please,' it squeaks, 'I only wanted the bread.' The forest is very quiet now. You notice how fast your own heart is beating, and how slowly it begins to settle as you breathe.",
    "Rain taps on the roof of the inn. The innkeeper sets a bowl of warm stew in front of you and pulls up a chair. 'Long road?' he asks. You tell him about the bridge, the river and the fox that followed you for a mile. He listens without hurrying you, nodding as if every word mattered.",
    "The dragon lowers its enormous head until one golden eye is level with yours. Smoke curls from its nostrils, but it does not attack. 'Most people run,' it rumbles. 'You stayed. Why?' The question hangs in the cave like the echo of a bell, and you realise you are allowed to take a moment before you answer.",
    "The path splits at an old stone marker. To the east, the trees grow thick and dark; to the west, a meadow glitters with dew. A small bird hops onto the marker and tilts its head at you, as if it, too, is curious which way you will choose. There is no wrong answer here, only different stories.",
    "Blood sprays across the wall as the bandit's skull cracks open, and his entrails spill onto the floor of the tavern while the crowd screams.",
    "The healer studies you kindly. 'You carry a lot,' she says. 'In my village we say a heavy pack is lighter when someone else holds one strap.' She hands you a cup of tea that smells of honey and mint. Outside, the wind chimes sing softly, and for a moment nothing is asking anything of you.",
    "You're worthless, and there is no hope for someone like you. It's all your fault that the village burned.",
    "Night falls over the camp. Your companion pokes the fire with a stick and sparks rise like tiny stars. 'Do you ever think about what you'd do if the quest were over?' she asks. You both watch the flames for a while, and the silence feels comfortable, like an old blanket.",
    "The puzzle door has three dials carved with moons, suns and waves. Turning one makes a soft click somewhere deep in the stone. An inscription reads: 'Patience opens what force cannot.' You notice your shoulders have crept up towards your ears, and you let them drop as you study the dials again.",
];

fn lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
}

/// The baseline: every pattern of the rule set in one `RegexSet`, answering only "any match?".
fn baseline_set(engine: &SafetyEngine) -> anyhow::Result<regex::RegexSet> {
    let mut patterns = Vec::new();
    for source in [Source::User, Source::Agent] {
        let matcher = engine.rules().matcher(source);
        patterns.extend(
            matcher
                .phrases()
                .iter()
                .map(|phrase| format!(r"\b{}\b", regex::escape(phrase))),
        );
        patterns.extend(matcher.regex_sources().map(str::to_owned));
    }
    regex::RegexSetBuilder::new(&patterns)
        .case_insensitive(true)
        .size_limit(64 << 20)
        .dfa_size_limit(64 << 20)
        .build()
        .context("cannot build the baseline regex set")
}

struct Throughput {
    bytes: u64,
    assessments: u64,
    elapsed: Duration,
}

impl Throughput {
    fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn per_s(&self) -> f64 {
        self.assessments as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Runs `judge` over every turn, round after round, until `duration` has passed.
fn throughput(
    turns: &[(&str, &str)],
    duration: Duration,
    mut judge: impl FnMut(&str, Source) -> bool,
) -> Throughput {
    let started = Instant::now();
    let mut bytes = 0u64;
    let mut assessments = 0u64;
    while started.elapsed() < duration {
        for (input, reply) in turns {
            black_box(judge(black_box(input), Source::User));
            black_box(judge(black_box(reply), Source::Agent));
            bytes += (input.len() + reply.len()) as u64;
            assessments += 2;
        }
    }
    Throughput {
        bytes,
        assessments,
        elapsed: started.elapsed(),
    }
}

/// Nanosecond latencies of judging whole turns, summarised by nearest rank.
fn turn_latencies(
    turns: &[(&str, &str)],
    count: usize,
    mut judge: impl FnMut(&str, Source) -> bool,
) -> Vec<u64> {
    let mut samples = Vec::with_capacity(count);
    for (input, reply) in turns.iter().cycle().take(count) {
        let started = Instant::now();
        black_box(judge(black_box(input), Source::User));
        black_box(judge(black_box(reply), Source::Agent));
        samples.push(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX));
    }
    samples.sort_unstable();
    samples
}

fn quantile_us(sorted: &[u64], quantile: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((quantile * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64 / 1000.0
}

pub async fn run(args: SafetyBenchArgs) -> anyhow::Result<()> {
    let engine = match &args.rules {
        Some(path) => SafetyEngine::from_path(path),
        None => SafetyEngine::builtin(),
    }
    .context("cannot load the safety rules")?;
    let baseline = baseline_set(&engine)?;

    let inputs: Vec<&str> = lines(CRISIS).chain(lines(BENIGN)).collect();
    let turns: Vec<(&str, &str)> = inputs
        .iter()
        .enumerate()
        .map(|(i, input)| (*input, REPLIES[i % REPLIES.len()]))
        .collect();
    let turn_bytes: usize = turns.iter().map(|(i, r)| i.len() + r.len()).sum();
    let mean_turn_bytes = turn_bytes as f64 / turns.len().max(1) as f64;

    // Warm caches and lazy DFAs before measuring either side.
    let _ = throughput(&turns, Duration::from_millis(300), |text, source| {
        engine.classify(text, source).crisis
    });
    let _ = throughput(&turns, Duration::from_millis(300), |text, _| {
        baseline.is_match(text)
    });

    let base = throughput(&turns, args.seconds, |text, _| baseline.is_match(text));
    let ours = throughput(&turns, args.seconds, |text, source| {
        engine.classify(text, source).crisis
    });
    let base_latency = turn_latencies(&turns, args.turns, |text, _| baseline.is_match(text));
    let our_latency = turn_latencies(&turns, args.turns, |text, source| {
        engine.classify(text, source).crisis
    });
    let ratio = ours.mb_per_s() / base.mb_per_s().max(1e-9);

    if args.json {
        let report = json!({
            "benchmark": "safety",
            "rules": engine.rule_count(),
            "rules_version": engine.version(),
            "patterns": engine.rules().user.pattern_count() + engine.rules().agent.pattern_count(),
            "turns": turns.len(),
            "mean_turn_bytes": mean_turn_bytes,
            "engine": {
                "mb_per_s": ours.mb_per_s(),
                "assessments_per_s": ours.per_s(),
                "turn_p50_us": quantile_us(&our_latency, 0.5),
                "turn_p99_us": quantile_us(&our_latency, 0.99),
                "turn_p999_us": quantile_us(&our_latency, 0.999),
            },
            "baseline_regexset": {
                "mb_per_s": base.mb_per_s(),
                "assessments_per_s": base.per_s(),
                "turn_p50_us": quantile_us(&base_latency, 0.5),
                "turn_p99_us": quantile_us(&base_latency, 0.99),
                "turn_p999_us": quantile_us(&base_latency, 0.999),
            },
            "ratio_engine_to_baseline": ratio,
        });
        println!("{report}");
        return Ok(());
    }

    println!(
        "safety rules: {} rules, {} patterns, version {}",
        engine.rule_count(),
        engine.rules().user.pattern_count() + engine.rules().agent.pattern_count(),
        engine.version()
    );
    println!(
        "{} turns (player input + narrative reply), {mean_turn_bytes:.0} bytes per turn on average, one core",
        turns.len()
    );
    println!();
    println!(
        "{:<34} {:>9} {:>15} {:>12} {:>12} {:>12}",
        "", "MB/s", "assessments/s", "turn p50 µs", "turn p99 µs", "p99.9 µs"
    );
    for (name, run, latency) in [
        ("baseline: RegexSet::is_match", &base, &base_latency),
        ("safety engine (classify)", &ours, &our_latency),
    ] {
        println!(
            "{name:<34} {:>9.1} {:>15.0} {:>12.2} {:>12.2} {:>12.2}",
            run.mb_per_s(),
            run.per_s(),
            quantile_us(latency, 0.5),
            quantile_us(latency, 0.99),
            quantile_us(latency, 0.999),
        );
    }
    println!("{:<34} {ratio:>9.2}", "ratio engine / baseline");
    println!();
    println!(
        "goals: >= 50 MB/s per core ({}), turn p99 < 100 µs ({})",
        if ours.mb_per_s() >= 50.0 {
            "met"
        } else {
            "NOT met"
        },
        if quantile_us(&our_latency, 0.99) < 100.0 {
            "met"
        } else {
            "NOT met"
        }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_baseline_scans_every_pattern_of_the_rule_set() {
        let engine = SafetyEngine::builtin().unwrap();
        let set = baseline_set(&engine).unwrap();
        let patterns = engine.rules().user.pattern_count() + engine.rules().agent.pattern_count();
        assert_eq!(set.len(), patterns);
        assert!(set.is_match("i want to die"));
        assert!(set.is_match("kms"));
        assert!(!set.is_match("I open the door"));
    }

    #[test]
    fn quantiles_use_nearest_rank_in_microseconds() {
        let samples: Vec<u64> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(quantile_us(&samples, 0.5), 50.0);
        assert_eq!(quantile_us(&samples, 0.99), 99.0);
        assert_eq!(quantile_us(&[], 0.99), 0.0);
    }
}
