//! `tta workflows …`: list, show and register the gateway's workflows over `tta.v1.Orchestrator`.
//! Definitions travel as the YAML of `gateway.workflows_file`, read and written by the gateway's
//! own `workflow::json` (no I/O there), so what `show` prints, `register` reads back unchanged.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use tonic::transport::Channel;
use tta_gateway::workflow::json::{
    definition_to_yaml_value, definitions_from_yaml, definitions_to_yaml,
};
use tta_proto::v1::{self as pb, orchestrator_client::OrchestratorClient};
use tta_runtime::{
    config::ConfigArgs,
    service::{EXIT_CONFIG, EXIT_FAILURE},
};

use crate::rpc_failure;

/// How long one call may take before the command gives up.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Workflows asked for per `ListWorkflows` page (the server's cap).
const PAGE_SIZE: u32 = 1000;

#[derive(Debug, clap::Args)]
pub struct WorkflowsTarget {
    /// Gateway gRPC endpoint; default: `gateway.listen.grpc` from the configuration.
    #[arg(long, global = true, value_name = "URL")]
    gateway: Option<String>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum WorkflowsCommand {
    /// List the latest version of every workflow.
    ///
    /// One line per workflow, by name: its version, whether it is the default, the interaction
    /// types it handles and how many steps it has.
    List,
    /// Print one workflow as YAML, ready to edit and register again.
    ///
    /// The output is a workflows file (the format of `gateway.workflows_file`) whose first line
    /// is a comment with the version and registration time; with --json, the definition with
    /// its version and registration time. Exit codes: 1 when the workflow or version does not
    /// exist.
    #[command(disable_version_flag = true)]
    Show {
        /// The workflow's name, e.g. `collaborative`.
        name: String,
        /// The version to show; default: the latest.
        #[arg(
            long = "version",
            id = "workflow_version",
            value_name = "N",
            value_parser = clap::value_parser!(u32).range(1..)
        )]
        version: Option<u32>,
    },
    /// Register the workflows of a YAML file, each as the next version of its name.
    ///
    /// The file has the format of `gateway.workflows_file`: `workflows:` followed by one or
    /// more definitions (durations as `500ms` or `2s`); `tta workflows show` prints one. Prints
    /// the version each workflow got and the gateway's warnings (e.g. no live agent of a step's
    /// type). A file of several workflows is validated as a whole first, so one invalid
    /// definition stores none of them. Exit codes: 2 for an unreadable or malformed file or a definition the gateway
    /// refuses (the message names the field, e.g. `definition.steps: cycle a -> b -> a`); 1 when
    /// --expected-version does not match or the gateway cannot be reached.
    Register {
        /// The workflows file.
        file: PathBuf,
        /// Only validate: the gateway checks every definition and stores nothing; prints the
        /// version each would get.
        #[arg(long)]
        validate_only: bool,
        /// Register only if the workflow's latest version is N (0: the name must be new);
        /// guards against overwriting someone else's change. Applies to every workflow of the
        /// file.
        #[arg(long, value_name = "N")]
        expected_version: Option<u32>,
    },
}

/// A request with the command's deadline.
fn call<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(CALL_TIMEOUT);
    request
}

fn bad_input(message: &str) -> ExitCode {
    eprintln!("tta workflows: {message}");
    ExitCode::from(EXIT_CONFIG)
}

fn when(timestamp: Option<&prost_types::Timestamp>) -> Option<String> {
    timestamp
        .and_then(|ts| std::time::SystemTime::try_from(*ts).ok())
        .map(|at| humantime::format_rfc3339_seconds(at).to_string())
}

pub async fn run(
    config: ConfigArgs,
    target: WorkflowsTarget,
    command: WorkflowsCommand,
) -> ExitCode {
    match command {
        WorkflowsCommand::List => list(&config, &target).await,
        WorkflowsCommand::Show { name, version } => {
            show(&config, &target, name, version.unwrap_or(0)).await
        }
        WorkflowsCommand::Register {
            file,
            validate_only,
            expected_version,
        } => register(&config, &target, &file, validate_only, expected_version).await,
    }
}

fn client(
    config: &ConfigArgs,
    target: &WorkflowsTarget,
) -> Result<OrchestratorClient<Channel>, ExitCode> {
    crate::play::gateway_client(config, target.gateway.as_deref())
}

async fn list(config: &ConfigArgs, target: &WorkflowsTarget) -> ExitCode {
    let mut client = match client(config, target) {
        Ok(client) => client,
        Err(code) => return code,
    };
    let mut workflows = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = pb::ListWorkflowsRequest {
            page_size: PAGE_SIZE,
            page_token: page_token.clone(),
        };
        let page = match client.list_workflows(call(request)).await {
            Ok(page) => page.into_inner(),
            Err(status) => return rpc_failure::report("", &status),
        };
        workflows.extend(page.workflows);
        // A token that does not move on would loop forever.
        if page.next_page_token.is_empty() || page.next_page_token == page_token {
            break;
        }
        page_token = page.next_page_token;
    }

    let route = |workflow: &pb::WorkflowDefinition| workflow.route.clone().unwrap_or_default();
    if target.json {
        let listed: Vec<_> = workflows
            .iter()
            .map(|workflow| {
                let route = route(workflow);
                serde_json::json!({
                    "name": workflow.name,
                    "version": workflow.version,
                    "description": workflow.description,
                    "is_default": route.is_default,
                    "interaction_types": route.interaction_types,
                    "steps": workflow.steps.len(),
                    "created_at": when(workflow.created_at.as_ref()),
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(listed));
        return ExitCode::SUCCESS;
    }
    let rows: Vec<[String; 5]> = workflows
        .iter()
        .map(|workflow| {
            let route = route(workflow);
            let types = if route.interaction_types.is_empty() {
                "-".to_owned()
            } else {
                route.interaction_types.join(",")
            };
            [
                workflow.name.clone(),
                workflow.version.to_string(),
                if route.is_default { "yes" } else { "no" }.to_owned(),
                types,
                workflow.steps.len().to_string(),
            ]
        })
        .collect();
    let header = ["NAME", "VERSION", "DEFAULT", "INTERACTION TYPES", "STEPS"].map(str::to_owned);
    let mut widths = header.clone().map(|title| title.len());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let [name, version, default, types, steps] = row;
        println!(
            "{name:<w0$}  {version:>w1$}  {default:<w2$}  {types:<w3$}  {steps:>w4$}",
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3],
            w4 = widths[4],
        );
    }
    ExitCode::SUCCESS
}

async fn show(
    config: &ConfigArgs,
    target: &WorkflowsTarget,
    name: String,
    version: u32,
) -> ExitCode {
    let mut client = match client(config, target) {
        Ok(client) => client,
        Err(code) => return code,
    };
    let definition = match client
        .get_workflow(call(pb::GetWorkflowRequest { name, version }))
        .await
    {
        Ok(response) => response.into_inner().definition.unwrap_or_default(),
        Err(status) => return rpc_failure::report("", &status),
    };
    if target.json {
        let shown = definition_to_yaml_value(&definition)
            .and_then(|value| serde_json::to_string(&value).map_err(|err| err.to_string()));
        return match shown {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("tta workflows: cannot print {:?}: {err}", definition.name);
                ExitCode::from(EXIT_FAILURE)
            }
        };
    }
    match definitions_to_yaml(std::slice::from_ref(&definition)) {
        Ok(yaml) => {
            let registered = when(definition.created_at.as_ref())
                .map(|at| format!(", registered {at}"))
                .unwrap_or_default();
            // A comment, so the output stays a workflows file `register` reads.
            println!(
                "# {} version {}{registered}",
                definition.name, definition.version
            );
            print!("{yaml}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("tta workflows: cannot print {:?}: {err}", definition.name);
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

async fn register(
    config: &ConfigArgs,
    target: &WorkflowsTarget,
    file: &std::path::Path,
    validate_only: bool,
    expected_version: Option<u32>,
) -> ExitCode {
    let text = match tokio::fs::read_to_string(file).await {
        Ok(text) => text,
        Err(err) => return bad_input(&format!("{}: cannot read: {err}", file.display())),
    };
    let definitions = match definitions_from_yaml(&text) {
        Ok(definitions) => definitions,
        Err(err) => return bad_input(&format!("{}: {err}", file.display())),
    };
    if definitions.is_empty() {
        return bad_input(&format!("{}: no workflows", file.display()));
    }
    let mut client = match client(config, target) {
        Ok(client) => client,
        Err(code) => return code,
    };
    let request = |definition: &pb::WorkflowDefinition, validate_only: bool| {
        call(pb::RegisterWorkflowRequest {
            definition: Some(definition.clone()),
            validate_only,
            expected_version,
        })
    };
    let entry = |i: usize, definition: &pb::WorkflowDefinition| {
        format!("workflows[{i}] {:?}: ", definition.name)
    };

    // All or none: a later invalid definition must not leave the earlier ones stored.
    if definitions.len() > 1 && !validate_only {
        for (i, definition) in definitions.iter().enumerate() {
            if let Err(status) = client.register_workflow(request(definition, true)).await {
                return rpc_failure::report(&entry(i, definition), &status);
            }
        }
    }

    let mut results = Vec::new();
    let mut outcome = ExitCode::SUCCESS;
    for (i, definition) in definitions.iter().enumerate() {
        let response = match client
            .register_workflow(request(definition, validate_only))
            .await
        {
            Ok(response) => response.into_inner(),
            Err(status) => {
                outcome = rpc_failure::report(&entry(i, definition), &status);
                break;
            }
        };
        let version = response.definition.map_or(0, |stored| stored.version);
        if !target.json {
            if validate_only {
                println!("{}: valid, would be version {version}", definition.name);
            } else {
                println!("{}: registered version {version}", definition.name);
            }
            for warning in &response.warnings {
                println!("{}: warning: {warning}", definition.name);
            }
        }
        results.push(serde_json::json!({
            "name": definition.name,
            "version": version,
            "stored": !validate_only,
            "warnings": response.warnings,
        }));
    }
    // What was stored before a failure is reported too.
    if target.json {
        println!("{}", serde_json::Value::Array(results));
    }
    outcome
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    /// `workflows` as mounted in `tta`, which propagates `--version` to every subcommand.
    #[derive(Debug, Parser)]
    #[command(name = "workflows", version, propagate_version = true)]
    struct Probe {
        #[command(flatten)]
        target: super::WorkflowsTarget,
        #[command(subcommand)]
        command: super::WorkflowsCommand,
    }

    #[test]
    fn show_takes_a_version_option_without_clashing_with_the_program_version() {
        Probe::command().debug_assert();
        let probe = Probe::try_parse_from(["workflows", "show", "collaborative", "--version", "2"])
            .unwrap();
        assert!(matches!(
            probe.command,
            super::WorkflowsCommand::Show { version: Some(2), ref name } if name == "collaborative"
        ));
        assert!(Probe::try_parse_from(["workflows", "show", "x", "--version", "0"]).is_err());
        let probe = Probe::try_parse_from([
            "workflows",
            "--json",
            "register",
            "file.yaml",
            "--validate-only",
            "--expected-version",
            "0",
        ])
        .unwrap();
        assert!(probe.target.json);
        assert!(matches!(
            probe.command,
            super::WorkflowsCommand::Register {
                validate_only: true,
                expected_version: Some(0),
                ..
            }
        ));
    }
}
