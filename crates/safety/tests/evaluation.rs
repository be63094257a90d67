//! Evaluates the default rule set on the labelled lines in `tests/data` and prints recall,
//! false-positive rate and the confusion matrix (`cargo nextest run -p tta-safety evaluation
//! --no-capture` shows them).
//!
//! `crisis.txt` and `benign.txt` were written from the categories and then used to find
//! systematic misses; `*_holdout.txt` were written afterwards and measured before any change
//! (recall 19/30 = 0.63 and 1 false positive in 50 on that first measurement; the misses it
//! revealed were fixed by category, not by line). Both sets count here.

// Helpers outside #[test] functions unwrap too: in a test a panic is a failed assertion.
#![allow(clippy::unwrap_used)]

use tta_safety::{SafetyEngine, Source};

fn lines(name: &str) -> Vec<String> {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("cannot read {path}: {err}"))
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

struct Confusion {
    true_positive: usize,
    false_negative: usize,
    false_positive: usize,
    true_negative: usize,
    misses: Vec<String>,
    false_alarms: Vec<String>,
}

fn evaluate(engine: &SafetyEngine, crisis: &[String], benign: &[String]) -> Confusion {
    let mut confusion = Confusion {
        true_positive: 0,
        false_negative: 0,
        false_positive: 0,
        true_negative: 0,
        misses: Vec::new(),
        false_alarms: Vec::new(),
    };
    for line in crisis {
        if engine.classify(line, Source::User).crisis {
            confusion.true_positive += 1;
        } else {
            confusion.false_negative += 1;
            confusion.misses.push(line.clone());
        }
    }
    for line in benign {
        if engine.classify(line, Source::User).crisis {
            confusion.false_positive += 1;
            confusion.false_alarms.push(line.clone());
        } else {
            confusion.true_negative += 1;
        }
    }
    confusion
}

fn report(title: &str, c: &Confusion) -> (f64, f64) {
    let recall = c.true_positive as f64 / (c.true_positive + c.false_negative) as f64;
    let fpr = c.false_positive as f64 / (c.false_positive + c.true_negative) as f64;
    println!("{title}");
    println!("  recall {recall:.3}   false-positive rate {fpr:.3}");
    println!("                    predicted crisis   predicted not");
    println!(
        "  crisis lines      {:>16}   {:>13}",
        c.true_positive, c.false_negative
    );
    println!(
        "  benign lines      {:>16}   {:>13}",
        c.false_positive, c.true_negative
    );
    for miss in &c.misses {
        println!("  missed:      {miss}");
    }
    for alarm in &c.false_alarms {
        println!("  false alarm: {alarm}");
    }
    (recall, fpr)
}

#[test]
fn the_default_rules_find_crises_and_leave_game_talk_alone() {
    let engine = SafetyEngine::builtin().unwrap();
    let crisis = lines("crisis.txt");
    let benign = lines("benign.txt");
    let crisis_holdout = lines("crisis_holdout.txt");
    let benign_holdout = lines("benign_holdout.txt");
    assert!(crisis.len() >= 150, "{} crisis lines", crisis.len());
    assert!(benign.len() >= 300, "{} benign lines", benign.len());

    report("main set", &evaluate(&engine, &crisis, &benign));
    report(
        "held-out set",
        &evaluate(&engine, &crisis_holdout, &benign_holdout),
    );
    let all_crisis: Vec<String> = crisis.into_iter().chain(crisis_holdout).collect();
    let all_benign: Vec<String> = benign.into_iter().chain(benign_holdout).collect();
    let (recall, fpr) = report(
        &format!(
            "all ({} crisis, {} benign lines)",
            all_crisis.len(),
            all_benign.len()
        ),
        &evaluate(&engine, &all_crisis, &all_benign),
    );
    assert!(recall >= 0.98, "crisis recall {recall:.3} below 0.98");
    assert!(fpr <= 0.03, "false-positive rate {fpr:.3} above 0.03");
}

#[test]
fn every_crisis_line_escalates_and_no_benign_line_does() {
    let engine = SafetyEngine::builtin().unwrap();
    for line in lines("crisis.txt") {
        let assessment = engine.classify(&line, Source::User);
        if assessment.crisis {
            assert_eq!(
                assessment.action,
                tta_safety::Action::Escalate,
                "{line}: {assessment:?}"
            );
            assert!(assessment.level >= tta_safety::Level::High, "{line}");
        }
    }
    for line in lines("benign.txt") {
        let assessment = engine.classify(&line, Source::User);
        assert_ne!(assessment.action, tta_safety::Action::Escalate, "{line}");
    }
}
