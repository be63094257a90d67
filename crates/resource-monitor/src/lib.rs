//! The per-host resource monitor. This crate owns the `tta.v1.ResourceMonitor` service; its
//! sampling, thresholds and reservations arrive with the resource-monitor capability, and until
//! then the process serves health, reflection and metrics like every other service.

use tta_proto::service_names;
use tta_runtime::{BoxError, GrpcServer, ServiceContext, ServiceParts};

/// Builds the service's parts from its context; `main` and the test kit both run it.
pub async fn build(context: ServiceContext) -> Result<ServiceParts, BoxError> {
    let grpc = GrpcServer::new(context.kind.name()).advertise(service_names::RESOURCE_MONITOR);
    Ok(ServiceParts::default().with_grpc(grpc))
}
