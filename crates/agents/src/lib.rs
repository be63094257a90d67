//! The built-in agent workers. Each binary (`tta-ipa`, `tta-wba`, `tta-nga`) is one worker
//! process: it will consume its topic from the broker, run its engine and publish results.
//! The engines arrive with the turn capability; today each worker runs the shared service
//! runtime: admin HTTP with health, readiness (Redis) and metrics, and graceful shutdown.

use std::process::ExitCode;

use tta_runtime::{
    BoxError, ServiceArgs, ServiceContext, ServiceKind, ServiceParts, redis,
    service::{BuiltInAgent, run_main},
};

/// Builds a worker's parts from its context.
pub async fn build(context: ServiceContext) -> Result<ServiceParts, BoxError> {
    let pool = redis::pool(&context.config.redis)?;
    redis::add_readiness_check(&context.readiness, pool).await;
    Ok(ServiceParts::default())
}

/// The `main` of every worker binary.
pub fn worker_main(agent: BuiltInAgent, args: ServiceArgs) -> ExitCode {
    run_main(ServiceKind::Agent(agent), args, build)
}
