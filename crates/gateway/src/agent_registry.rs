//! `tta.v1.AgentRegistry` over gRPC (R8.1): agents that are not built-in workers register,
//! heartbeat and leave through the gateway; the built-in workers write the same records
//! directly (`tta_runtime::agents`). A workflow step names an agent type, and any instance that
//! consumes `agent.<type>` serves it, so a new agent type needs no gateway change.

use std::time::{Duration, SystemTime};

use tonic::{Request, Response, Status};
use tta_proto::v1::{self as pb, agent_registry_server::AgentRegistry};
use tta_types::{AgentId, FieldViolation, ServiceError, convert::agent_id_from_proto};

use crate::{error::Error, store::Store};

const MIN_TTL: Duration = Duration::from_secs(1);
const MAX_TTL: Duration = Duration::from_secs(600);
const DEFAULT_PAGE_SIZE: usize = 100;
const MAX_PAGE_SIZE: usize = 1000;

#[derive(Debug, Clone)]
pub struct AgentRegistryService {
    store: Store,
    default_ttl: Duration,
}

impl AgentRegistryService {
    pub fn new(store: Store, default_ttl: Duration) -> Self {
        Self { store, default_ttl }
    }
}

fn required_id(field: &str, raw: Option<&pb::AgentId>) -> Result<AgentId, Status> {
    let raw = raw.ok_or_else(|| FieldViolation::new(field, "is required").to_status())?;
    agent_id_from_proto(field, raw).map_err(|violation| violation.to_status())
}

fn ttl_of(info: &pb::AgentInfo, fallback: Duration) -> Duration {
    info.heartbeat_ttl
        .and_then(|ttl| Duration::try_from(ttl).ok())
        .filter(|ttl| !ttl.is_zero())
        .unwrap_or(fallback)
}

fn server_only(status: i32) -> bool {
    status == pb::AgentStatus::Isolated as i32 || status == pb::AgentStatus::Expired as i32
}

#[tonic::async_trait]
impl AgentRegistry for AgentRegistryService {
    async fn register_agent(
        &self,
        request: Request<pb::RegisterAgentRequest>,
    ) -> Result<Response<pb::RegisterAgentResponse>, Status> {
        let request = request.into_inner();
        let mut info = request
            .agent
            .ok_or_else(|| FieldViolation::new("agent", "is required").to_status())?;
        let id = required_id("agent.id", info.id.as_ref())?;
        if info.topic.trim().is_empty() {
            return Err(FieldViolation::new("agent.topic", "must not be empty").to_status());
        }
        if server_only(info.status) {
            return Err(FieldViolation::new(
                "agent.status",
                "ISOLATED and EXPIRED are set by the server only",
            )
            .to_status());
        }
        if !(0.0..=1.0).contains(&info.load) {
            return Err(
                FieldViolation::new("agent.load", "must be between 0.0 and 1.0").to_status(),
            );
        }
        let ttl = match request.heartbeat_ttl {
            None => self.default_ttl,
            Some(raw) => Duration::try_from(raw)
                .ok()
                .filter(|ttl| (MIN_TTL..=MAX_TTL).contains(ttl))
                .ok_or_else(|| {
                    FieldViolation::new("heartbeat_ttl", "must be between 1s and 10m").to_status()
                })?,
        };
        info.id = Some(pb::AgentId::from(&id));
        info.last_heartbeat = Some(prost_types::Timestamp::from(SystemTime::now()));
        info.heartbeat_ttl = prost_types::Duration::try_from(ttl).ok();
        if info.status == pb::AgentStatus::Unspecified as i32 {
            info.status = pb::AgentStatus::Ready as i32;
        }
        self.store.put_agent(&info, ttl).await?;
        tracing::info!(agent = %id, topic = %info.topic, "agent registered");
        Ok(Response::new(pb::RegisterAgentResponse {
            agent: Some(info),
            heartbeat_interval: prost_types::Duration::try_from(ttl / 3).ok(),
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let request = request.into_inner();
        let id = required_id("id", request.id.as_ref())?;
        if server_only(request.status) || pb::AgentStatus::try_from(request.status).is_err() {
            return Err(FieldViolation::new(
                "status",
                "must be an agent-reported status (not ISOLATED or EXPIRED)",
            )
            .to_status());
        }
        if !(0.0..=1.0).contains(&request.load) {
            return Err(FieldViolation::new("load", "must be between 0.0 and 1.0").to_status());
        }
        let mut info = self
            .store
            .agent(id.agent_type.as_str(), &id.instance)
            .await?
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "id: agent {id} is not registered or has expired; register again"
                ))
            })?;
        let now = SystemTime::now();
        if request.status != pb::AgentStatus::Unspecified as i32 {
            info.status = request.status;
        }
        info.in_flight = request.in_flight;
        info.load = request.load;
        if request.stats.is_some() {
            info.stats = request.stats;
        }
        info.last_heartbeat = Some(prost_types::Timestamp::from(now));
        let ttl = ttl_of(&info, self.default_ttl);
        self.store.put_agent(&info, ttl).await?;
        Ok(Response::new(pb::HeartbeatResponse {
            expires_at: Some(prost_types::Timestamp::from(now + ttl)),
            drain_requested: false,
        }))
    }

    async fn deregister_agent(
        &self,
        request: Request<pb::DeregisterAgentRequest>,
    ) -> Result<Response<pb::DeregisterAgentResponse>, Status> {
        let request = request.into_inner();
        let id = required_id("id", request.id.as_ref())?;
        let existed = self
            .store
            .remove_agent(id.agent_type.as_str(), &id.instance)
            .await?;
        tracing::info!(agent = %id, reason = %request.reason, existed, "agent deregistered");
        Ok(Response::new(pb::DeregisterAgentResponse { existed }))
    }

    async fn list_agents(
        &self,
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let request = request.into_inner();
        let size = match usize::try_from(request.page_size).unwrap_or(MAX_PAGE_SIZE) {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        if !request.page_token.is_empty() && !request.page_token.contains(':') {
            return Err(FieldViolation::new(
                "page_token",
                "is not a token returned by a previous page",
            )
            .to_status());
        }
        let name = |info: &pb::AgentInfo| {
            let id = info.id.clone().unwrap_or_default();
            format!("{}:{}", id.agent_type, id.instance)
        };
        let matching: Vec<pb::AgentInfo> = self
            .store
            .agents()
            .await?
            .into_iter()
            .filter(|info| {
                request.agent_type.is_empty()
                    || info
                        .id
                        .as_ref()
                        .is_some_and(|id| id.agent_type == request.agent_type)
            })
            .filter(|info| {
                request.capability.is_empty() || info.capabilities.contains(&request.capability)
            })
            .filter(|info| request.page_token.is_empty() || name(info) > request.page_token)
            .collect();
        let more = matching.len() > size;
        let agents: Vec<pb::AgentInfo> = matching.into_iter().take(size).collect();
        let next_page_token = if more {
            agents.last().map(name).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListAgentsResponse {
            agents,
            next_page_token,
        }))
    }

    async fn get_agent(
        &self,
        request: Request<pb::GetAgentRequest>,
    ) -> Result<Response<pb::GetAgentResponse>, Status> {
        let id = required_id("id", request.into_inner().id.as_ref())?;
        let agent = self
            .store
            .agent(id.agent_type.as_str(), &id.instance)
            .await?
            .ok_or_else(|| Error::NotFound(format!("id: agent {id} is not registered")))?;
        Ok(Response::new(pb::GetAgentResponse { agent: Some(agent) }))
    }
}
