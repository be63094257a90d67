//! The message broker: the gRPC front of Redis Streams through which every piece of agent work
//! travels (`tta.v1.Broker`). Durable at-least-once delivery with push consumers and credit,
//! strict priorities with FIFO inside each, leases reclaimed after the visibility timeout,
//! retries with exponential backoff, a dead-letter queue per topic, idempotent publishing and
//! backpressure.
//!
//! Layout: [`engine`] owns the Redis data model and its Lua [`scripts`]; [`consumer`] runs one
//! push stream, reading through a [`fetch::Fetcher`]; [`service`] is the gRPC edge;
//! [`maintenance`] is the background work.

pub mod consumer;
pub mod engine;
pub mod envelope;
pub mod error;
pub mod fetch;
pub mod handoff;
pub mod maintenance;
pub mod outgoing;
pub mod publish_stream;
pub mod scripts;
pub mod service;
pub mod topic;

pub use error::Error;

use tta_proto::v1::broker_server::BrokerServer;
use tta_runtime::{BoxError, GrpcServer, ServiceContext, ServiceParts};

/// Largest gRPC message the broker accepts: a full publish batch of maximum-size payloads is
/// refused item by item, but a request must still fit.
const MAX_GRPC_MESSAGE: usize = 64 * 1024 * 1024;

/// Builds the service's parts from its context; `main` and the test kit both run it.
pub async fn build(context: ServiceContext) -> Result<ServiceParts, BoxError> {
    let engine = engine::Engine::new(&context.config.redis, context.config.broker.clone())?;
    let probe = engine.clone();
    context
        .readiness
        .add_check("redis", move || {
            let engine = probe.clone();
            async move { engine.ping().await.map_err(|err| err.to_string()) }
        })
        .await;

    let service = service::BrokerService::new(engine.clone(), context.shutdown.clone());
    let handoff_sweeper = service.handoff_sweeper();
    let server = BrokerServer::new(service)
        .max_decoding_message_size(MAX_GRPC_MESSAGE)
        .max_encoding_message_size(MAX_GRPC_MESSAGE);
    let grpc = GrpcServer::new(context.kind.name()).add_service(server);
    let shutdown = context.shutdown.clone();
    Ok(ServiceParts::default()
        .with_grpc(grpc)
        .with_task("broker-maintenance", maintenance::run(engine, shutdown))
        .with_task("broker-handoffs", handoff_sweeper))
}
