//! The gRPC edge of `tta.v1.ToolRegistry`: requests are parsed and validated here, once, and
//! handed to the registry; errors map to status codes in `error.rs`.

use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};
use tta_proto::v1::{self as pb, tool_registry_server::ToolRegistry};
use tta_types::{FieldViolation, convert::agent_id_from_proto};

use crate::{
    analytics,
    error::Error,
    invoke::{Invocation, Invoker},
    registry::{Obtained, Registry},
    spec::{self, Status as ToolStatus},
    store::ExecutorRecord,
};

/// Metadata key carrying an executor's shared secret (see `tools.executor_tokens`).
pub const EXECUTOR_TOKEN_HEADER: &str = "x-tta-executor-token";
const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;
const DEFAULT_LEASE: Duration = Duration::from_secs(30);
const MIN_LEASE: Duration = Duration::from_secs(5);
const MAX_LEASE: Duration = Duration::from_secs(600);
const DEFAULT_EXECUTOR_CONCURRENCY: u32 = 16;

#[derive(Debug, Clone)]
pub struct ToolRegistryService {
    registry: Registry,
    invoker: Invoker,
}

impl ToolRegistryService {
    pub fn new(registry: Registry) -> Self {
        Self {
            registry,
            invoker: Invoker::default(),
        }
    }
}

type Reply<T> = Result<Response<T>, Status>;

fn duration_field(
    field: &str,
    raw: Option<prost_types::Duration>,
) -> Result<Option<Duration>, FieldViolation> {
    raw.map(|raw| {
        Duration::try_from(raw)
            .ok()
            .filter(|value| !value.is_zero())
            .ok_or_else(|| FieldViolation::new(field, "must be a positive duration"))
    })
    .transpose()
}

fn version_field(field: &str, raw: &str) -> Result<String, FieldViolation> {
    if raw.trim().is_empty() {
        Ok(String::new())
    } else {
        spec::validate_version(field, raw).map(|version| version.to_string())
    }
}

fn status_filter(raw: i32) -> Result<Option<ToolStatus>, FieldViolation> {
    match pb::ToolStatus::try_from(raw) {
        Ok(pb::ToolStatus::Unspecified) => Ok(None),
        Ok(pb::ToolStatus::Active) => Ok(Some(ToolStatus::Active)),
        Ok(pb::ToolStatus::Deprecated) => Ok(Some(ToolStatus::Deprecated)),
        Err(_) => Err(FieldViolation::new(
            "status",
            format!("unknown status {raw}"),
        )),
    }
}

/// A page token: the offset and a hash of the query it belongs to.
fn page_token(offset: usize, query: &str) -> String {
    format!("{offset}.{}", query_hash(query))
}

fn query_hash(query: &str) -> String {
    Sha256::digest(query.as_bytes())
        .iter()
        .take(6)
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

fn parse_page_token(token: &str, query: &str) -> Result<usize, FieldViolation> {
    if token.is_empty() {
        return Ok(0);
    }
    let (offset, hash) = token
        .split_once('.')
        .ok_or_else(|| FieldViolation::new("page_token", "malformed"))?;
    if hash != query_hash(query) {
        return Err(FieldViolation::new(
            "page_token",
            "belongs to a query with different filters or sort",
        ));
    }
    offset
        .parse()
        .map_err(|_| FieldViolation::new("page_token", "malformed"))
}

#[tonic::async_trait]
impl ToolRegistry for ToolRegistryService {
    async fn register_tool(
        &self,
        request: Request<pb::RegisterToolRequest>,
    ) -> Reply<pb::RegisterToolResponse> {
        let raw = tta_types::convert::required("spec", request.into_inner().spec)?;
        let (spec, created) = self.registry.register(&raw).await?;
        Ok(Response::new(pb::RegisterToolResponse {
            spec: Some(spec.to_proto(None)),
            created,
        }))
    }

    async fn get_tool(&self, request: Request<pb::GetToolRequest>) -> Reply<pb::GetToolResponse> {
        let request = request.into_inner();
        let name = spec::validate_name("name", &request.name)?;
        let version = version_field("version", &request.version)?;
        let entry = self.registry.lookup(&name, &version).await?;
        Ok(Response::new(pb::GetToolResponse {
            spec: Some(entry.spec.to_proto(Some(spec::now_ms()))),
        }))
    }

    async fn list_tools(
        &self,
        request: Request<pb::ListToolsRequest>,
    ) -> Reply<pb::ListToolsResponse> {
        let request = request.into_inner();
        let status = status_filter(request.status)?;
        let sort = pb::ToolSort::try_from(request.sort)
            .map_err(|_| FieldViolation::new("sort", format!("unknown sort {}", request.sort)))?;
        let page_size = match request.page_size {
            0 => DEFAULT_PAGE,
            size => size.min(MAX_PAGE),
        } as usize;
        let prefix = request.prefix.trim().to_owned();
        let capability = request.capability.trim().to_ascii_lowercase();
        let query = format!("{prefix}|{status:?}|{capability}|{sort:?}");
        let offset = parse_page_token(&request.page_token, &query)?;

        self.registry.flush_uses().await?;
        let mut specs = self.registry.store.all(&prefix).await?;
        specs.retain(|spec| {
            status.is_none_or(|status| spec.status == status)
                && (capability.is_empty() || spec.capabilities.contains(&capability))
        });
        let last_used = self.registry.store.last_used().await?;
        let usage = if sort == pb::ToolSort::Usage {
            let references: Vec<String> = specs.iter().map(|spec| spec.reference()).collect();
            let usage = self.registry.store.usage(&references).await?;
            references
                .into_iter()
                .zip(usage.into_iter().map(|usage| usage.invocations))
                .collect()
        } else {
            std::collections::HashMap::new()
        };
        let used = |spec: &spec::ToolSpec| last_used.get(&spec.reference()).copied().unwrap_or(0);
        let by_name = |a: &spec::ToolSpec, b: &spec::ToolSpec| {
            a.name
                .cmp(&b.name)
                .then_with(|| a.semver().cmp(&b.semver()))
        };
        match sort {
            pb::ToolSort::Unspecified | pb::ToolSort::Name => specs.sort_by(by_name),
            pb::ToolSort::LastUsed => {
                specs.sort_by(|a, b| used(b).cmp(&used(a)).then_with(|| by_name(a, b)))
            }
            pb::ToolSort::Created => specs.sort_by(|a, b| {
                b.created_at_ms
                    .cmp(&a.created_at_ms)
                    .then_with(|| by_name(a, b))
            }),
            pb::ToolSort::Usage => specs.sort_by(|a, b| {
                let count =
                    |spec: &spec::ToolSpec| usage.get(&spec.reference()).copied().unwrap_or(0);
                count(b).cmp(&count(a)).then_with(|| by_name(a, b))
            }),
        }
        let total = specs.len();
        let tools: Vec<pb::ToolSpec> = specs
            .iter()
            .skip(offset)
            .take(page_size)
            .map(|spec| spec.to_proto(last_used.get(&spec.reference()).copied()))
            .collect();
        let next = offset + tools.len();
        Ok(Response::new(pb::ListToolsResponse {
            tools,
            next_page_token: if next < total {
                page_token(next, &query)
            } else {
                String::new()
            },
            total: u32::try_from(total).unwrap_or(u32::MAX),
        }))
    }

    async fn deprecate_tool(
        &self,
        request: Request<pb::DeprecateToolRequest>,
    ) -> Reply<pb::DeprecateToolResponse> {
        let request = request.into_inner();
        let name = spec::validate_name("name", &request.name)?;
        let version = spec::validate_version("version", &request.version)?.to_string();
        if request.reason.len() > spec::MAX_REASON_BYTES {
            return Err(FieldViolation::new(
                "reason",
                format!("must be at most {} bytes", spec::MAX_REASON_BYTES),
            )
            .into());
        }
        if request.reason.chars().any(char::is_control) {
            return Err(
                FieldViolation::new("reason", "must not contain control characters").into(),
            );
        }
        let spec = self
            .registry
            .deprecate(&name, &version, request.reason.trim())
            .await?;
        Ok(Response::new(pb::DeprecateToolResponse {
            spec: Some(spec.to_proto(None)),
        }))
    }

    async fn create_or_get_tool(
        &self,
        request: Request<pb::CreateOrGetToolRequest>,
    ) -> Reply<pb::CreateOrGetToolResponse> {
        let request = request.into_inner();
        let raw = tta_types::convert::required("spec", request.spec)?;
        let fallback = request.fallback_tool.trim();
        let fallback = if fallback.is_empty() {
            None
        } else {
            let (name, version) = fallback.split_once('@').unwrap_or((fallback, ""));
            let name = spec::validate_name("fallback_tool", name)?;
            let version = version_field("fallback_tool", version)?;
            Some((name, version))
        };
        let (obtained, signature) = self
            .registry
            .create_or_get(
                &raw,
                fallback.as_ref().map(|(n, v)| (n.as_str(), v.as_str())),
            )
            .await?;
        let (spec, outcome, reason) = match obtained {
            Obtained::Existing(spec) => (spec, pb::CreateOrGetOutcome::Existing, String::new()),
            Obtained::Created(spec) => (spec, pb::CreateOrGetOutcome::Created, String::new()),
            Obtained::Fallback { spec, reason } => (spec, pb::CreateOrGetOutcome::Fallback, reason),
        };
        Ok(Response::new(pb::CreateOrGetToolResponse {
            spec: Some(spec.to_proto(None)),
            outcome: outcome as i32,
            signature,
            fallback_reason: reason,
        }))
    }

    async fn invoke_tool(
        &self,
        request: Request<pb::InvokeToolRequest>,
    ) -> Reply<pb::InvokeToolResponse> {
        // Answer a little before the caller's deadline, so the outcome is recorded and reaches
        // the caller rather than being cut off by its own timer.
        let caller_deadline = grpc_timeout(request.metadata()).map(|deadline| {
            deadline.saturating_sub((deadline / 10).min(Duration::from_millis(20)))
        });
        let request = request.into_inner();
        let name = spec::validate_name("name", &request.name)?;
        let version = version_field("version", &request.version)?;
        let args = match request.args {
            None => Value::Object(serde_json::Map::new()),
            Some(pb::invoke_tool_request::Args::ArgsJson(text)) => {
                let value: Value = serde_json::from_str(&text).map_err(|err| {
                    FieldViolation::new("args_json", format!("not valid JSON: {err}"))
                })?;
                if !value.is_object() {
                    return Err(FieldViolation::new("args_json", "must be a JSON object").into());
                }
                value
            }
            Some(pb::invoke_tool_request::Args::ArgsStruct(fields)) => struct_to_json(fields),
        };
        let timeout = duration_field("timeout", request.timeout)?;
        // The caller's gRPC deadline, when shorter, bounds the invocation too: past it nobody
        // waits for the result.
        let timeout = match (timeout, caller_deadline) {
            (Some(asked), Some(deadline)) => Some(asked.min(deadline)),
            (asked, deadline) => asked.or(deadline),
        };
        let caller = request
            .caller
            .as_ref()
            .map(|caller| agent_id_from_proto("caller", caller))
            .transpose()?
            .map(|id| (id.agent_type.to_string(), id.instance.clone()));
        let invoked = self
            .invoker
            .invoke(
                &self.registry,
                Invocation {
                    name,
                    version,
                    args,
                    timeout,
                    caller,
                },
            )
            .await?;
        Ok(Response::new(pb::InvokeToolResponse {
            result_json: invoked.result_json,
            version: invoked.version,
            duration: prost_types::Duration::try_from(invoked.duration).ok(),
            executor_id: invoked.executor_id,
            warnings: invoked.warnings,
        }))
    }

    async fn get_policy(
        &self,
        _request: Request<pb::GetPolicyRequest>,
    ) -> Reply<pb::GetPolicyResponse> {
        let applied = self.registry.policy.current();
        Ok(Response::new(pb::GetPolicyResponse {
            policy: Some(applied.policy.to_proto()),
            source: applied.source.clone(),
            version: applied.version.clone(),
            loaded_at: Some(spec::timestamp(applied.loaded_at_ms)),
        }))
    }

    async fn reload_policy(
        &self,
        request: Request<pb::ReloadPolicyRequest>,
    ) -> Reply<pb::ReloadPolicyResponse> {
        let request = request.into_inner();
        if !self.registry.policy.policy().allow_reload {
            return Err(Error::PermissionDenied(
                "policy reloading is disabled (tools.allow_reload)".into(),
            )
            .into());
        }
        if request.policy_document.len() > crate::policy::MAX_DOCUMENT_BYTES {
            return Err(FieldViolation::new("policy_document", "must be at most 256 KiB").into());
        }
        let document = (!request.policy_document.trim().is_empty())
            .then_some(request.policy_document.as_str());
        let (applied, problems) = self
            .registry
            .policy
            .reload(document, request.validate_only)
            .await
            .map_err(|err| Error::Unavailable(err.to_string()))?;
        if applied {
            self.registry.changed();
        }
        let current = self.registry.policy.current();
        Ok(Response::new(pb::ReloadPolicyResponse {
            applied,
            errors: problems
                .into_iter()
                .map(|problem| pb::PolicyError {
                    path: problem.path,
                    message: problem.message,
                })
                .collect(),
            policy: Some(current.policy.to_proto()),
            version: current.version.clone(),
        }))
    }

    async fn get_tool_stats(
        &self,
        request: Request<pb::GetToolStatsRequest>,
    ) -> Reply<pb::GetToolStatsResponse> {
        let request = request.into_inner();
        let name = if request.name.is_empty() {
            None
        } else {
            Some(spec::validate_name("name", &request.name)?)
        };
        let version = version_field("version", &request.version)?;
        if name.is_none() && !version.is_empty() {
            return Err(FieldViolation::new("version", "requires name").into());
        }
        self.registry.flush_uses().await?;
        let all = self.registry.store.all("").await?;
        let mut specs: Vec<_> = all
            .iter()
            .filter(|spec| name.as_ref().is_none_or(|name| spec.name == *name))
            .filter(|spec| version.is_empty() || spec.version == version)
            .cloned()
            .collect();
        if let Some(name) = &name
            && specs.is_empty()
        {
            let version = if version.is_empty() {
                String::new()
            } else {
                format!(" version {version:?}")
            };
            return Err(Error::NotFound(format!("name: no tool {name:?}{version}")).into());
        }
        let references: Vec<String> = specs.iter().map(|spec| spec.reference()).collect();
        let usage = self.registry.store.usage(&references).await?;
        let last_used = self.registry.store.last_used().await?;
        let policy = self.registry.policy.policy();
        let now = spec::now_ms();
        let mut rows: Vec<(pb::ToolUsageStats, Vec<pb::ToolRecommendation>)> = specs
            .drain(..)
            .zip(usage)
            .map(|(spec, usage)| {
                let last = last_used.get(&spec.reference()).copied();
                let idle =
                    Duration::from_millis(now.saturating_sub(last.unwrap_or(spec.created_at_ms)));
                (
                    analytics::stats(&spec, &usage, last),
                    analytics::recommend(&spec, &usage, idle, policy.max_idle),
                )
            })
            .collect();
        rows.sort_by(|a, b| {
            b.0.invocations
                .cmp(&a.0.invocations)
                .then_with(|| a.0.name.cmp(&b.0.name))
        });
        let cache = &self.registry.cache;
        let mut recommendations: Vec<pb::ToolRecommendation> =
            rows.iter().flat_map(|row| row.1.clone()).collect();
        recommendations.extend(analytics::recommend_cache(
            cache.hits(),
            cache.misses(),
            cache.expired_hot(),
        ));
        let executors = self.registry.store.live_executors().await?.len();
        let active = all
            .iter()
            .filter(|spec| spec.status == ToolStatus::Active)
            .count();
        Ok(Response::new(pb::GetToolStatsResponse {
            stats: rows.into_iter().map(|row| row.0).collect(),
            recommendations,
            summary: Some(pb::ToolRegistrySummary {
                total: u32::try_from(all.len()).unwrap_or(u32::MAX),
                active: u32::try_from(active).unwrap_or(u32::MAX),
                deprecated: u32::try_from(all.len() - active).unwrap_or(u32::MAX),
                cache_hits: cache.hits(),
                cache_misses: cache.misses(),
                executors: u32::try_from(executors).unwrap_or(u32::MAX),
            }),
        }))
    }

    async fn cleanup_tools(
        &self,
        request: Request<pb::CleanupToolsRequest>,
    ) -> Reply<pb::CleanupToolsResponse> {
        let request = request.into_inner();
        let policy = self.registry.policy.policy();
        let max_idle = duration_field("max_idle", request.max_idle)?.unwrap_or(policy.max_idle);
        let (deprecated, deleted) = self
            .registry
            .cleanup(max_idle, policy.delete_after, request.dry_run)
            .await?;
        Ok(Response::new(pb::CleanupToolsResponse {
            deprecated,
            deleted,
        }))
    }

    async fn register_executor(
        &self,
        request: Request<pb::RegisterExecutorRequest>,
    ) -> Reply<pb::RegisterExecutorResponse> {
        let token = request
            .metadata()
            .get(EXECUTOR_TOKEN_HEADER)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let request = request.into_inner();
        let agent = tta_types::convert::required("agent", request.agent.as_ref())
            .and_then(|agent| agent_id_from_proto("agent", agent))?;
        let endpoint = request.endpoint.trim().to_owned();
        let valid_endpoint = (endpoint.starts_with("http://") || endpoint.starts_with("https://"))
            && endpoint
                .parse::<http::Uri>()
                .is_ok_and(|uri| uri.host().is_some());
        if !valid_endpoint {
            return Err(
                FieldViolation::new("endpoint", "must be an http(s) URL with a host").into(),
            );
        }
        if request.tools.is_empty() {
            return Err(FieldViolation::new("tools", "must name at least one tool").into());
        }
        let known = self.registry.store.names("").await?;
        let mut tools = Vec::with_capacity(request.tools.len());
        for (index, tool) in request.tools.iter().enumerate() {
            let field = format!("tools[{index}]");
            let (name, version) = tool.split_once('@').unwrap_or((tool.as_str(), ""));
            let name = spec::validate_name(&field, name)?;
            if !known.contains(&name) {
                return Err(FieldViolation::new(field, format!("unknown tool {name:?}")).into());
            }
            let version = version_field(&field, version)?;
            tools.push(if version.is_empty() {
                name
            } else {
                spec::reference(&name, &version)
            });
        }
        let lease = duration_field("lease_ttl", request.lease_ttl)?.unwrap_or(DEFAULT_LEASE);
        if !(MIN_LEASE..=MAX_LEASE).contains(&lease) {
            return Err(FieldViolation::new("lease_ttl", "must be between 5s and 10m").into());
        }
        let policy = self.registry.policy.policy();
        let agent_type = agent.agent_type.to_string();
        if !policy.permits_executor(&agent_type, &agent.instance) {
            return Err(Error::PermissionDenied(format!(
                "agent: {agent} may not act as an executor"
            ))
            .into());
        }
        if let Some(expected) = policy.executor_tokens.get(&agent_type)
            && token.as_deref() != Some(expected.as_str())
        {
            tracing::warn!(agent = %agent, "executor registration with a missing or wrong token");
            return Err(Error::PermissionDenied(format!(
                "agent: {agent} must present a valid executor token"
            ))
            .into());
        }
        let id = uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_URL,
            format!("{agent}|{endpoint}").as_bytes(),
        )
        .to_string();
        let expires_at_ms = spec::now_ms() + u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
        let record = ExecutorRecord {
            id: id.clone(),
            agent_type,
            instance: agent.instance.clone(),
            endpoint,
            tools,
            max_concurrency: match request.max_concurrency {
                0 => DEFAULT_EXECUTOR_CONCURRENCY,
                limit => limit,
            },
            expires_at_ms,
        };
        self.registry.store.put_executor(&record).await?;
        tracing::debug!(executor = %id, agent = %agent, endpoint = %record.endpoint, "executor registered");
        Ok(Response::new(pb::RegisterExecutorResponse {
            executor_id: id,
            expires_at: Some(spec::timestamp(expires_at_ms)),
        }))
    }

    async fn deregister_executor(
        &self,
        request: Request<pb::DeregisterExecutorRequest>,
    ) -> Reply<pb::DeregisterExecutorResponse> {
        let request = request.into_inner();
        let id = request.executor_id.trim();
        if id.is_empty() {
            return Err(FieldViolation::new("executor_id", "must not be empty").into());
        }
        let existed = self.registry.store.remove_executor(id).await?;
        Ok(Response::new(pb::DeregisterExecutorResponse { existed }))
    }
}

/// The caller's deadline from the `grpc-timeout` header (`<digits><unit>`, unit H, M, S, m, u
/// or n), if any.
fn grpc_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let raw = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = raw.split_at(raw.len().checked_sub(1)?);
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value.saturating_mul(3600)),
        "M" => Duration::from_secs(value.saturating_mul(60)),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

fn struct_to_json(fields: prost_types::Struct) -> Value {
    Value::Object(
        fields
            .fields
            .into_iter()
            .map(|(key, value)| (key, value_to_json(value)))
            .collect(),
    )
}

fn value_to_json(value: prost_types::Value) -> Value {
    use prost_types::value::Kind;
    match value.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(flag)) => Value::Bool(flag),
        Some(Kind::NumberValue(number)) => {
            // Struct numbers are doubles; integral ones become JSON integers so "type":
            // "integer" schemas accept them.
            if number.fract() == 0.0 && number.abs() < 9.0e15 {
                Value::from(number as i64)
            } else {
                serde_json::Number::from_f64(number).map_or(Value::Null, Value::Number)
            }
        }
        Some(Kind::StringValue(text)) => Value::String(text),
        Some(Kind::ListValue(list)) => {
            Value::Array(list.values.into_iter().map(value_to_json).collect())
        }
        Some(Kind::StructValue(fields)) => struct_to_json(fields),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_are_read_in_every_unit() {
        let mut metadata = tonic::metadata::MetadataMap::new();
        assert_eq!(grpc_timeout(&metadata), None);
        for (raw, expected) in [
            ("250m", Duration::from_millis(250)),
            ("2S", Duration::from_secs(2)),
            ("1M", Duration::from_secs(60)),
            ("1H", Duration::from_secs(3600)),
            ("1500u", Duration::from_micros(1500)),
            ("10n", Duration::from_nanos(10)),
        ] {
            metadata.insert("grpc-timeout", raw.parse().unwrap());
            assert_eq!(grpc_timeout(&metadata), Some(expected), "{raw}");
        }
        metadata.insert("grpc-timeout", "soon".parse().unwrap());
        assert_eq!(grpc_timeout(&metadata), None);
    }

    #[test]
    fn page_tokens_belong_to_their_query() {
        let token = page_token(100, "a|b");
        assert_eq!(parse_page_token(&token, "a|b").unwrap(), 100);
        assert!(parse_page_token(&token, "a|c").is_err());
        assert!(parse_page_token("junk", "a|b").is_err());
    }
}
