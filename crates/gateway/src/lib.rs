//! The orchestrator gateway: the public `tta.v1.Orchestrator` API that other TTA services call,
//! plus the agent registry and the safety service. Workflows, sessions and safety arrive with
//! their capabilities; the process already serves health, reflection, readiness (Redis),
//! metrics and the JSON `/diagnostics` endpoint.

mod diagnostics;

use tta_proto::service_names;
use tta_runtime::{BoxError, GrpcServer, ServiceContext, ServiceParts, redis};

/// Builds the service's parts from its context; `main` and the test kit both run it.
pub async fn build(context: ServiceContext) -> Result<ServiceParts, BoxError> {
    let pool = redis::pool(&context.config.redis)?;
    redis::add_readiness_check(&context.readiness, pool).await;
    let grpc = GrpcServer::new(context.kind.name())
        .advertise(service_names::ORCHESTRATOR)
        .advertise(service_names::AGENT_REGISTRY)
        .advertise(service_names::SAFETY);
    let mut parts = ServiceParts::default().with_grpc(grpc);
    if context.config.diagnostics.enabled {
        parts = parts.with_admin_routes(diagnostics::routes(&context));
    }
    Ok(parts)
}
