//! The message broker: the gRPC front of Redis Streams through which every piece of agent work
//! travels. This crate owns the `tta.v1.Broker` service; its delivery engine arrives with the
//! broker capability, and until then the process serves health, reflection, readiness (Redis)
//! and metrics like every other service.

use tta_proto::service_names;
use tta_runtime::{BoxError, GrpcServer, ServiceContext, ServiceParts, redis};

/// Builds the service's parts from its context; `main` and the test kit both run it.
pub async fn build(context: ServiceContext) -> Result<ServiceParts, BoxError> {
    let pool = redis::pool(&context.config.redis)?;
    redis::add_readiness_check(&context.readiness, pool).await;
    let grpc = GrpcServer::new(context.kind.name()).advertise(service_names::BROKER);
    Ok(ServiceParts::default().with_grpc(grpc))
}
