//! The JSON behind `GET /tools`: what the tool registry reports about its tools, their usage
//! and its policy, gathered over its gRPC API with a short deadline so a slow registry cannot
//! hold up the diagnostics page.

use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use tta_proto::v1::{self as pb, tool_registry_client::ToolRegistryClient};

const DEADLINE: Duration = Duration::from_secs(2);

fn request<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(DEADLINE);
    request
}

fn seconds_since(at: Option<&prost_types::Timestamp>) -> Option<f64> {
    let at = SystemTime::try_from(*at?).ok()?;
    SystemTime::now()
        .duration_since(at)
        .ok()
        .map(|age| age.as_secs_f64())
}

fn millis(duration: Option<&prost_types::Duration>) -> Option<f64> {
    Duration::try_from(*duration?)
        .ok()
        .map(|d| d.as_secs_f64() * 1000.0)
}

/// Reads tools, statistics and policy from the registry at `endpoint`.
pub async fn snapshot(endpoint: &str) -> Result<Value, String> {
    let channel = tta_runtime::grpc::connect_lazy(endpoint).map_err(|err| err.to_string())?;
    let mut client = ToolRegistryClient::new(channel);
    let failed = |status: tonic::Status| format!("{:?}: {}", status.code(), status.message());
    let listed = client
        .list_tools(request(pb::ListToolsRequest {
            page_size: 1000,
            ..Default::default()
        }))
        .await
        .map_err(failed)?
        .into_inner();
    let stats = client
        .get_tool_stats(request(pb::GetToolStatsRequest::default()))
        .await
        .map_err(failed)?
        .into_inner();
    let policy = client
        .get_policy(request(pb::GetPolicyRequest {}))
        .await
        .map_err(failed)?
        .into_inner();

    let usage = |name: &str, version: &str| {
        stats
            .stats
            .iter()
            .find(|s| s.name == name && s.version == version)
            .map(|s| {
                json!({
                    "invocations": s.invocations,
                    "error_rate": s.error_rate,
                    "timeouts": s.timeouts,
                    "policy_denials": s.policy_denials,
                    "p95_ms": millis(s.latency_p95.as_ref()),
                })
            })
    };
    let tools: Vec<Value> = listed
        .tools
        .iter()
        .map(|tool| {
            let safety = tool.safety.unwrap_or_default();
            json!({
                "name": tool.name,
                "version": tool.version,
                "status": pb::ToolStatus::try_from(tool.status).map_or("unknown", |s| match s {
                    pb::ToolStatus::Active => "active",
                    pb::ToolStatus::Deprecated => "deprecated",
                    pb::ToolStatus::Unspecified => "unknown",
                }),
                "owner": tool.owner.as_ref().map(|o| format!("{}:{}", o.agent_type, o.instance)),
                "capabilities": tool.capabilities,
                "safety": {"network": safety.network, "filesystem": safety.filesystem, "process": safety.process},
                "last_used_age_seconds": seconds_since(tool.last_used_at.as_ref()),
                "usage": usage(&tool.name, &tool.version),
            })
        })
        .collect();
    let summary = stats.summary.unwrap_or_default();
    let rules = policy.policy.unwrap_or_default();
    Ok(json!({
        "tool_registry": endpoint,
        "total": listed.total,
        "tools": tools,
        "summary": {
            "active": summary.active,
            "deprecated": summary.deprecated,
            "executors": summary.executors,
            "cache_hits": summary.cache_hits,
            "cache_misses": summary.cache_misses,
        },
        "recommendations": stats.recommendations.iter().map(|r| json!({
            "tool": if r.name.is_empty() { Value::Null } else { json!(format!("{}@{}", r.name, r.version)) },
            "message": r.message,
        })).collect::<Vec<_>>(),
        "policy": {
            "version": policy.version,
            "source": policy.source,
            "allow_network_tools": rules.allow_network_tools,
            "allow_filesystem_tools": rules.allow_filesystem_tools,
            "allow_process_tools": rules.allow_process_tools,
            "allowed_capabilities": rules.allowed_capabilities,
            "denied_capabilities": rules.denied_capabilities,
            "allowed_executors": rules.allowed_executors,
            "default_timeout_ms": millis(rules.default_timeout.as_ref()),
            "max_timeout_ms": millis(rules.max_timeout.as_ref()),
            "redacted_fields": rules.redacted_fields,
        },
    }))
}
