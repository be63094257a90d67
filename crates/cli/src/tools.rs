//! `tta tools …`: list, show and deprecate registered tools, read their usage statistics and
//! the policy in force, over the tool registry's gRPC API.

use std::{process::ExitCode, time::Duration};

use tonic::transport::Channel;
use tta_proto::v1::{self as pb, tool_registry_client::ToolRegistryClient};
use tta_runtime::{config::ConfigArgs, grpc::connect_lazy, service::EXIT_CONFIG};

use crate::rpc_failure;

#[derive(Debug, clap::Args)]
pub struct ToolsTarget {
    /// Tool registry gRPC endpoint; default: `gateway.tool_registry_endpoint` from the
    /// configuration.
    #[arg(long, global = true, value_name = "URL")]
    registry: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum ToolsCommand {
    /// List tool versions, sorted by name (or --sort), one per line.
    List {
        /// Only tools whose name starts with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Only tools in this state: active or deprecated.
        #[arg(long)]
        status: Option<String>,
        /// Only tools providing this capability.
        #[arg(long, default_value = "")]
        capability: String,
        /// Order: name, last-used, created or usage.
        #[arg(long, default_value = "name")]
        sort: String,
        /// At most this many (all pages are read up to it).
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
    /// Show one tool version in full: schemas, safety flags, owner, examples and usage.
    Show {
        name: String,
        /// Exact version; default: the latest active one. (`tool_version`: `--version` prints
        /// the program's version.)
        #[arg(id = "tool_version", value_name = "VERSION")]
        version: Option<String>,
    },
    /// Deprecate a tool version: it stays invocable by exact version but is no longer offered.
    Deprecate {
        name: String,
        #[arg(id = "tool_version", value_name = "VERSION")]
        version: String,
        /// Why (shown with the tool), at most 256 bytes.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Usage statistics and recommendations, for one tool or all.
    Stats {
        /// Only this tool.
        name: Option<String>,
    },
    /// The policy in force (secrets redacted).
    Policy,
}

async fn client(
    config: &ConfigArgs,
    target: &ToolsTarget,
) -> Result<ToolRegistryClient<Channel>, ExitCode> {
    let endpoint = match &target.registry {
        Some(endpoint) => endpoint.clone(),
        None => match tta_runtime::config::load(config, |_| {}) {
            Ok(config) => config.gateway.tool_registry_endpoint,
            Err(err) => {
                eprintln!("tta: {err}");
                return Err(ExitCode::from(EXIT_CONFIG));
            }
        },
    };
    connect_lazy(&endpoint)
        .map(ToolRegistryClient::new)
        .map_err(|err| {
            eprintln!("tta: {err}");
            ExitCode::from(EXIT_CONFIG)
        })
}

fn usage(message: &str) -> ExitCode {
    eprintln!("tta tools: {message}");
    ExitCode::from(EXIT_CONFIG)
}

fn status_name(status: i32) -> &'static str {
    match pb::ToolStatus::try_from(status) {
        Ok(pb::ToolStatus::Active) => "active",
        Ok(pb::ToolStatus::Deprecated) => "deprecated",
        _ => "unknown",
    }
}

fn when(timestamp: Option<&prost_types::Timestamp>) -> String {
    timestamp
        .and_then(|ts| std::time::SystemTime::try_from(*ts).ok())
        .map_or_else(
            || "-".to_owned(),
            |at| humantime::format_rfc3339_seconds(at).to_string(),
        )
}

fn millis(duration: Option<&prost_types::Duration>) -> f64 {
    duration
        .and_then(|d| Duration::try_from(*d).ok())
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

fn spec_json(spec: &pb::ToolSpec) -> serde_json::Value {
    let safety = spec.safety.unwrap_or_default();
    let parse = |text: &str| {
        serde_json::from_str::<serde_json::Value>(text).unwrap_or(serde_json::Value::Null)
    };
    serde_json::json!({
        "name": spec.name,
        "version": spec.version,
        "status": status_name(spec.status),
        "description": spec.description,
        "parameters_schema": parse(&spec.parameters_schema),
        "returns_schema": parse(&spec.returns_schema),
        "capabilities": spec.capabilities,
        "safety": {"network": safety.network, "filesystem": safety.filesystem, "process": safety.process},
        "owner": spec.owner.as_ref().map(|o| format!("{}:{}", o.agent_type, o.instance)),
        "created_at": when(spec.created_at.as_ref()),
        "last_used_at": when(spec.last_used_at.as_ref()),
        "signature": spec.signature,
        "deprecation_reason": spec.deprecation_reason,
        "examples": spec.examples.iter().map(|e| serde_json::json!({"description": e.description, "args": parse(&e.args_json)})).collect::<Vec<_>>(),
    })
}

pub async fn run(config: ConfigArgs, target: ToolsTarget, command: ToolsCommand) -> ExitCode {
    let mut client = match client(&config, &target).await {
        Ok(client) => client,
        Err(code) => return code,
    };
    match command {
        ToolsCommand::List {
            prefix,
            status,
            capability,
            sort,
            limit,
        } => {
            let status = match status.as_deref() {
                None => pb::ToolStatus::Unspecified,
                Some("active") => pb::ToolStatus::Active,
                Some("deprecated") => pb::ToolStatus::Deprecated,
                Some(other) => {
                    return usage(&format!(
                        "--status {other:?}: expected active or deprecated"
                    ));
                }
            };
            let sort = match sort.as_str() {
                "name" => pb::ToolSort::Name,
                "last-used" => pb::ToolSort::LastUsed,
                "created" => pb::ToolSort::Created,
                "usage" => pb::ToolSort::Usage,
                other => {
                    return usage(&format!(
                        "--sort {other:?}: expected name, last-used, created or usage"
                    ));
                }
            };
            let mut tools = Vec::new();
            let mut page_token = String::new();
            loop {
                let request = pb::ListToolsRequest {
                    prefix: prefix.clone(),
                    status: status as i32,
                    capability: capability.clone(),
                    sort: sort as i32,
                    page_size: limit.clamp(1, 1000),
                    page_token,
                };
                let page = match client.list_tools(request).await {
                    Ok(page) => page.into_inner(),
                    Err(status) => return rpc_failure::report("", &status),
                };
                tools.extend(page.tools);
                if page.next_page_token.is_empty() || tools.len() >= limit as usize {
                    break;
                }
                page_token = page.next_page_token;
            }
            tools.truncate(limit as usize);
            if target.json {
                let listed: Vec<_> = tools.iter().map(spec_json).collect();
                println!("{}", serde_json::Value::Array(listed));
            } else {
                println!(
                    "{:<32} {:<12} {:<11} {:<20} OWNER",
                    "NAME", "VERSION", "STATUS", "LAST USED"
                );
                for tool in &tools {
                    let owner = tool.owner.as_ref().map_or("builtin".to_owned(), |o| {
                        format!("{}:{}", o.agent_type, o.instance)
                    });
                    println!(
                        "{:<32} {:<12} {:<11} {:<20} {owner}",
                        tool.name,
                        tool.version,
                        status_name(tool.status),
                        when(tool.last_used_at.as_ref())
                    );
                }
            }
            ExitCode::SUCCESS
        }
        ToolsCommand::Show { name, version } => {
            let request = pb::GetToolRequest {
                name,
                version: version.unwrap_or_default(),
            };
            let spec = match client.get_tool(request).await {
                Ok(response) => response.into_inner().spec.unwrap_or_default(),
                Err(status) => return rpc_failure::report("", &status),
            };
            let mut shown = spec_json(&spec);
            let stats = client
                .get_tool_stats(pb::GetToolStatsRequest {
                    name: spec.name.clone(),
                    version: spec.version.clone(),
                })
                .await
                .map(|response| response.into_inner().stats);
            // Usage is extra: a registry that cannot report it still shows the spec.
            if let Some(stats) = stats.as_ref().ok().and_then(|stats| stats.first()) {
                shown["usage"] = serde_json::json!({
                    "invocations": stats.invocations,
                    "failures": stats.failures,
                    "timeouts": stats.timeouts,
                    "policy_denials": stats.policy_denials,
                    "p50_ms": millis(stats.latency_p50.as_ref()),
                    "p95_ms": millis(stats.latency_p95.as_ref()),
                });
            }
            if target.json {
                println!("{shown}");
            } else {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&shown).unwrap_or_default()
                );
            }
            ExitCode::SUCCESS
        }
        ToolsCommand::Deprecate {
            name,
            version,
            reason,
        } => {
            match client
                .deprecate_tool(pb::DeprecateToolRequest {
                    name,
                    version,
                    reason,
                })
                .await
            {
                Ok(response) => {
                    let spec = response.into_inner().spec.unwrap_or_default();
                    if target.json {
                        println!("{}", spec_json(&spec));
                    } else {
                        println!(
                            "{}@{} is {}",
                            spec.name,
                            spec.version,
                            status_name(spec.status)
                        );
                    }
                    ExitCode::SUCCESS
                }
                Err(status) => rpc_failure::report("", &status),
            }
        }
        ToolsCommand::Stats { name } => {
            let request = pb::GetToolStatsRequest {
                name: name.unwrap_or_default(),
                version: String::new(),
            };
            let stats = match client.get_tool_stats(request).await {
                Ok(response) => response.into_inner(),
                Err(status) => return rpc_failure::report("", &status),
            };
            let rows: Vec<_> = stats
                .stats
                .iter()
                .map(|s| {
                    serde_json::json!({
                        "tool": format!("{}@{}", s.name, s.version),
                        "invocations": s.invocations,
                        "error_rate": s.error_rate,
                        "timeouts": s.timeouts,
                        "policy_denials": s.policy_denials,
                        "p50_ms": millis(s.latency_p50.as_ref()),
                        "p95_ms": millis(s.latency_p95.as_ref()),
                    })
                })
                .collect();
            let recommendations: Vec<_> = stats
                .recommendations
                .iter()
                .map(|r| {
                    let target = if r.name.is_empty() {
                        "registry".to_owned()
                    } else {
                        format!("{}@{}", r.name, r.version)
                    };
                    format!("{target}: {}", r.message)
                })
                .collect();
            if target.json {
                println!(
                    "{}",
                    serde_json::json!({"stats": rows, "recommendations": recommendations})
                );
            } else {
                println!(
                    "{:<40} {:>11} {:>8} {:>9} {:>9}",
                    "TOOL", "INVOCATIONS", "ERRORS", "P50 MS", "P95 MS"
                );
                for row in &rows {
                    println!(
                        "{:<40} {:>11} {:>7.1}% {:>9.2} {:>9.2}",
                        row["tool"].as_str().unwrap_or_default(),
                        row["invocations"],
                        row["error_rate"].as_f64().unwrap_or_default() * 100.0,
                        row["p50_ms"].as_f64().unwrap_or_default(),
                        row["p95_ms"].as_f64().unwrap_or_default(),
                    );
                }
                for line in &recommendations {
                    println!("recommendation: {line}");
                }
            }
            ExitCode::SUCCESS
        }
        ToolsCommand::Policy => match client.get_policy(pb::GetPolicyRequest {}).await {
            Ok(response) => {
                let response = response.into_inner();
                let policy = response.policy.unwrap_or_default();
                println!(
                    "{}",
                    serde_json::json!({
                        "version": response.version,
                        "source": response.source,
                        "allow_network_tools": policy.allow_network_tools,
                        "allow_filesystem_tools": policy.allow_filesystem_tools,
                        "allow_process_tools": policy.allow_process_tools,
                        "allowed_capabilities": policy.allowed_capabilities,
                        "denied_capabilities": policy.denied_capabilities,
                        "allowed_executors": policy.allowed_executors,
                        "default_timeout_ms": millis(policy.default_timeout.as_ref()),
                        "max_timeout_ms": millis(policy.max_timeout.as_ref()),
                        "max_params": policy.max_params,
                        "max_schema_depth": policy.max_schema_depth,
                        "redacted_fields": policy.redacted_fields,
                    })
                );
                ExitCode::SUCCESS
            }
            Err(status) => rpc_failure::report("", &status),
        },
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    /// `tools` as mounted in `tta`, which propagates `--version` to every subcommand.
    #[derive(Debug, Parser)]
    #[command(name = "tools", version, propagate_version = true)]
    struct Probe {
        #[command(flatten)]
        target: super::ToolsTarget,
        #[command(subcommand)]
        command: super::ToolsCommand,
    }

    #[test]
    fn every_subcommand_parses_without_clashing_arguments() {
        Probe::command().debug_assert();
        let probe = Probe::try_parse_from(["tools", "show", "dice.roll", "1.0.0"]).unwrap();
        assert!(
            matches!(probe.command, super::ToolsCommand::Show { version: Some(ref v), .. } if v == "1.0.0")
        );
        let probe = Probe::try_parse_from([
            "tools",
            "--json",
            "deprecate",
            "a.b",
            "1.0.0",
            "--reason",
            "x",
        ])
        .unwrap();
        assert!(probe.target.json);
    }
}
