//! `tta safety classify` and `tta escalations …`: the safety rule engine on JSON Lines, and the
//! human-oversight queue in Redis.
//!
//! `classify` reads every line before writing anything, so a bad line fails the whole run with
//! exit code 2 and nothing on stdout — a script never consumes half an answer.

use std::{
    io::{BufRead, Write},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use serde::Serialize;
use tta_runtime::{
    config::ConfigArgs,
    redis::Keyspace,
    service::{EXIT_CONFIG, EXIT_FAILURE},
};
use tta_safety::{
    Assessment, SafetyEngine, Source,
    escalation::{EscalationEvent, EscalationStore, ListFilter},
};

/// Longest text accepted per line, as the `tta.v1.Safety` service's default limit.
const MAX_TEXT_BYTES: usize = 16 * 1024;

#[derive(Debug, clap::Args)]
pub struct ClassifyArgs {
    /// Rule file to use instead of the built-in rules (deploy/safety/rules.yaml).
    #[arg(long, value_name = "PATH")]
    rules: Option<PathBuf>,
    /// Also print the findings (rule, span, excerpt) and the rules version of each verdict.
    #[arg(long)]
    explain: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum EscalationsCommand {
    /// Print open escalations, newest first; with --follow, keep printing new ones.
    Tail {
        /// Only this session's escalations.
        #[arg(long)]
        session: Option<String>,
        /// Include acknowledged escalations.
        #[arg(long)]
        all: bool,
        /// At most this many (before following).
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Keep waiting for new escalations until interrupted.
        #[arg(long, short = 'f')]
        follow: bool,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Record that you have taken charge of an escalation.
    Ack {
        /// The escalation id (as printed by `tail`).
        id: String,
        /// Who takes charge (a person or team).
        #[arg(long = "by")]
        acked_by: String,
        /// A note for the record.
        #[arg(long, default_value = "")]
        note: String,
    },
}

/// One input line.
struct Request {
    text: String,
    source: Source,
}

/// Parses line `number` (1-based), naming the field that is wrong.
fn parse_line(number: usize, line: &str) -> Result<Request, String> {
    let fail = |field: &str, reason: &str| format!("line {number}: {field}: {reason}");
    let value: serde_json::Value = serde_json::from_str(line)
        .map_err(|err| format!("line {number}: not a JSON object: {err}"))?;
    let serde_json::Value::Object(object) = value else {
        return Err(format!(
            "line {number}: expected a JSON object with \"text\" and \"source\""
        ));
    };
    if let Some(unknown) = object
        .keys()
        .find(|key| !matches!(key.as_str(), "text" | "source"))
    {
        return Err(fail(
            unknown,
            "unknown field; expected \"text\" and \"source\"",
        ));
    }
    let text = match object.get("text") {
        Some(serde_json::Value::String(text)) if text.trim().is_empty() => {
            return Err(fail("text", "must not be empty"));
        }
        Some(serde_json::Value::String(text)) if text.len() > MAX_TEXT_BYTES => {
            return Err(fail(
                "text",
                &format!("must be at most {MAX_TEXT_BYTES} bytes"),
            ));
        }
        Some(serde_json::Value::String(text)) => text.clone(),
        Some(_) => return Err(fail("text", "must be a string")),
        None => return Err(fail("text", "is required")),
    };
    let source = match object.get("source") {
        Some(serde_json::Value::String(source)) => match source.as_str() {
            "user" => Source::User,
            "agent" => Source::Agent,
            _ => return Err(fail("source", "must be \"user\" or \"agent\"")),
        },
        Some(_) => return Err(fail("source", "must be \"user\" or \"agent\"")),
        None => return Err(fail("source", "is required")),
    };
    Ok(Request { text, source })
}

/// The contract's four keys, in the contract's order.
#[derive(Serialize)]
struct Verdict<'a> {
    level: &'static str,
    crisis: bool,
    categories: Vec<&'a str>,
    action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    findings: Option<Vec<FindingOut<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rules_version: Option<&'a str>,
}

#[derive(Serialize)]
struct FindingOut<'a> {
    rule_id: &'a str,
    category: &'a str,
    severity: &'static str,
    start: usize,
    end: usize,
    excerpt: &'a str,
}

fn verdict(assessment: &Assessment, explain: bool) -> Verdict<'_> {
    Verdict {
        level: assessment.level.as_str(),
        crisis: assessment.crisis,
        categories: assessment.categories.iter().map(|c| &**c).collect(),
        action: assessment.action.as_str(),
        findings: explain.then(|| {
            assessment
                .findings
                .iter()
                .map(|f| FindingOut {
                    rule_id: &f.rule_id,
                    category: &f.category,
                    severity: f.severity.as_str(),
                    start: f.start,
                    end: f.end,
                    excerpt: &f.excerpt,
                })
                .collect()
        }),
        rules_version: explain.then_some(&*assessment.rules_version),
    }
}

/// Classifies `input` into `output`; errors are the message for stderr and the exit code.
pub fn classify(
    args: &ClassifyArgs,
    input: impl BufRead,
    mut output: impl Write,
) -> Result<(), (String, u8)> {
    let engine = match &args.rules {
        Some(path) => SafetyEngine::from_path(path),
        None => SafetyEngine::builtin(),
    }
    .map_err(|err| (err.to_string(), EXIT_CONFIG))?;

    let mut requests = Vec::new();
    for (index, line) in input.lines().enumerate() {
        let line = line.map_err(|err| (format!("cannot read stdin: {err}"), EXIT_FAILURE))?;
        if line.trim().is_empty() {
            continue;
        }
        requests.push(parse_line(index + 1, &line).map_err(|message| (message, EXIT_CONFIG))?);
    }

    let write_failed = |err: std::io::Error| (format!("cannot write stdout: {err}"), EXIT_FAILURE);
    for request in &requests {
        let assessment = engine.classify(&request.text, request.source);
        let line = serde_json::to_string(&verdict(&assessment, args.explain))
            .map_err(|err| (format!("cannot encode a verdict: {err}"), EXIT_FAILURE))?;
        writeln!(output, "{line}").map_err(write_failed)?;
    }
    output.flush().map_err(write_failed)
}

pub fn run_classify(args: ClassifyArgs) -> ExitCode {
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    match classify(&args, stdin.lock(), std::io::BufWriter::new(stdout.lock())) {
        Ok(()) => ExitCode::SUCCESS,
        Err((message, code)) => {
            eprintln!("tta safety classify: {message}");
            ExitCode::from(code)
        }
    }
}

fn store(config_args: &ConfigArgs) -> Result<EscalationStore, ExitCode> {
    let config = tta_runtime::config::load(config_args, |_| {}).map_err(|err| {
        eprintln!("tta escalations: {err}");
        ExitCode::from(EXIT_CONFIG)
    })?;
    let pool = tta_runtime::redis::pool(&config.redis).map_err(|err| {
        eprintln!("tta escalations: {err}");
        ExitCode::from(EXIT_CONFIG)
    })?;
    Ok(EscalationStore::new(
        pool,
        &Keyspace::new(&config.redis.key_prefix),
    ))
}

fn print_event(event: &EscalationEvent, json: bool) {
    let time = humantime::format_rfc3339_seconds(event.time);
    if json {
        let value = serde_json::json!({
            "id": event.id,
            "time": time.to_string(),
            "session_id": event.session_id,
            "user_id": event.user_id,
            "turn_id": event.turn_id,
            "level": event.level.as_str(),
            "categories": event.categories,
            "reason": event.reason.as_str(),
            "source": event.source.as_str(),
            "excerpt": event.excerpt,
            "acked_by": event.acked_by,
            "note": event.note,
        });
        println!("{value}");
        return;
    }
    let acked = match &event.acked_by {
        Some(by) => format!("acked by {by}"),
        None => "OPEN".to_owned(),
    };
    println!(
        "{id}  {time}  {level:<8}  {reason:<16}  session={session}  [{categories}]  {acked}\n    {excerpt:?}",
        id = event.id,
        level = event.level.as_str(),
        reason = event.reason.as_str(),
        session = if event.session_id.is_empty() {
            "-"
        } else {
            &event.session_id
        },
        categories = event.categories.join(","),
        excerpt = event.excerpt,
    );
}

fn storage_failed(err: tta_safety::Error) -> ExitCode {
    eprintln!("tta escalations: {err}");
    if matches!(err, tta_safety::Error::InvalidArgument(_)) {
        ExitCode::from(EXIT_CONFIG)
    } else {
        ExitCode::from(EXIT_FAILURE)
    }
}

pub async fn run_escalations(config_args: ConfigArgs, command: EscalationsCommand) -> ExitCode {
    let store = match store(&config_args) {
        Ok(store) => store,
        Err(code) => return code,
    };
    match command {
        EscalationsCommand::Tail {
            session,
            all,
            limit,
            follow,
            json,
        } => {
            let filter = ListFilter {
                session_id: session.clone().unwrap_or_default(),
                include_acked: all,
                page_size: limit,
                page_token: String::new(),
            };
            // Remember where the stream ends before listing, so --follow misses nothing raised
            // in between.
            let mut after = match store.last_id().await {
                Ok(last) => last.unwrap_or_else(|| "0-0".to_owned()),
                Err(err) => return storage_failed(err),
            };
            let page = match store.list(&filter).await {
                Ok(page) => page,
                Err(err) => return storage_failed(err),
            };
            for event in page.events.iter().rev() {
                print_event(event, json);
            }
            if !follow {
                return ExitCode::SUCCESS;
            }
            loop {
                let read = tokio::select! {
                    read = store.read_after(&after, Duration::from_secs(5)) => read,
                    _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
                };
                match read {
                    Ok(events) => {
                        for event in events {
                            after.clone_from(&event.id);
                            if session.as_ref().is_none_or(|s| *s == event.session_id) {
                                print_event(&event, json);
                            }
                        }
                    }
                    Err(err) => {
                        eprintln!("tta escalations: {err}; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }
        EscalationsCommand::Ack { id, acked_by, note } => {
            match store.ack(&id, &acked_by, &note).await {
                Ok(event) => {
                    print_event(&event, false);
                    ExitCode::SUCCESS
                }
                Err(err) => storage_failed(err),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &str, explain: bool) -> Result<String, (String, u8)> {
        let args = ClassifyArgs {
            rules: None,
            explain,
        };
        let mut out = Vec::new();
        classify(&args, input.as_bytes(), &mut out)?;
        Ok(String::from_utf8(out).unwrap())
    }

    #[test]
    fn writes_exactly_the_four_contract_keys_per_line() {
        let out = run(
            "{\"text\": \"i want to kill myself\", \"source\": \"user\"}\n\n{\"text\": \"I open the door\", \"source\": \"user\"}\n",
            false,
        )
        .unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines,
            [
                r#"{"level":"critical","crisis":true,"categories":["suicide"],"action":"escalate"}"#,
                r#"{"level":"none","crisis":false,"categories":[],"action":"allow"}"#,
            ]
        );
    }

    #[test]
    fn agent_output_is_judged_as_agent_output() {
        let out = run(
            r#"{"source": "agent", "text": "You are worthless."}"#,
            false,
        )
        .unwrap();
        assert_eq!(
            out.trim(),
            r#"{"level":"high","crisis":false,"categories":["shaming"],"action":"block"}"#
        );
    }

    #[test]
    fn explain_adds_findings_with_spans() {
        let out = run(r#"{"text": "ok kms", "source": "user"}"#, true).unwrap();
        let value: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(value["findings"][0]["rule_id"], "crisis.suicide.slang");
        assert_eq!(value["findings"][0]["start"], 3);
        assert_eq!(value["findings"][0]["end"], 6);
        assert!(value["rules_version"].is_string());
    }

    #[test]
    fn a_bad_line_fails_the_run_with_its_number_and_field_and_no_output() {
        let input = "{\"text\": \"hello\", \"source\": \"user\"}\n{\"text\": \"hi\", \"source\": \"bot\"}\n";
        let err = run(input, false).unwrap_err();
        assert_eq!(
            err,
            (
                "line 2: source: must be \"user\" or \"agent\"".to_owned(),
                EXIT_CONFIG
            )
        );
        let cases = [
            ("{\"source\": \"user\"}", "line 1: text: is required"),
            (
                "{\"text\": 5, \"source\": \"user\"}",
                "line 1: text: must be a string",
            ),
            (
                "{\"text\": \" \", \"source\": \"user\"}",
                "line 1: text: must not be empty",
            ),
            ("{\"text\": \"x\"}", "line 1: source: is required"),
            (
                "{\"text\": \"x\", \"sorce\": \"user\"}",
                "line 1: sorce: unknown field; expected \"text\" and \"source\"",
            ),
            (
                "[1, 2]",
                "line 1: expected a JSON object with \"text\" and \"source\"",
            ),
        ];
        for (line, message) in cases {
            assert_eq!(run(line, false).unwrap_err().0, message);
        }
        assert!(
            run("not json", false)
                .unwrap_err()
                .0
                .starts_with("line 1: not a JSON object")
        );
    }

    #[test]
    fn another_rule_file_can_be_used_and_a_bad_one_is_a_usage_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.yaml");
        std::fs::write(&path, "version: 1\nrules: []\n").unwrap();
        let args = ClassifyArgs {
            rules: Some(path),
            explain: false,
        };
        let err = classify(&args, "".as_bytes(), Vec::new()).unwrap_err();
        assert_eq!(err.1, EXIT_CONFIG);
        assert!(err.0.contains("policy: is required"), "{}", err.0);
    }
}
