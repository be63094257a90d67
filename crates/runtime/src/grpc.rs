//! The one way a TTA process serves gRPC: every server gets `grpc.health.v1`, server reflection
//! (v1 and v1alpha) over the `tta.v1` descriptor set, a span and metrics per call with the caller's
//! trace context, `TCP_NODELAY`, and graceful shutdown with a bounded grace period.
//!
//! Clients are built here too ([`connect_lazy`]), so both directions get `TCP_NODELAY` (without
//! it Nagle's algorithm plus delayed ACKs add 40 ms and more at the tail).

use std::{
    convert::Infallible,
    net::SocketAddr,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use http::{Request, Response};
use tokio::net::TcpListener;
use tonic::{
    body::Body,
    server::NamedService,
    service::RoutesBuilder,
    transport::{Channel, Endpoint, server::TcpIncoming},
};
use tonic_health::{ServingStatus, server::HealthReporter};
use tower::{Layer, Service};
use tracing::Instrument;

use crate::{shutdown::Shutdown, trace_context};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot build the reflection service: {0}")]
    Reflection(String),
    #[error("grpc server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
}

/// Collects the services of one process, then serves them on a listener until shutdown.
#[derive(Debug)]
pub struct GrpcServer {
    service_label: &'static str,
    routes: RoutesBuilder,
    /// Services whose health is reported; the empty name is the whole server.
    served: Vec<&'static str>,
    /// Services listed through reflection.
    advertised: Vec<&'static str>,
    health: HealthReporter,
}

impl GrpcServer {
    /// `service_label` names this process in metrics (`service` label) and logs.
    pub fn new(service_label: &'static str) -> Self {
        let (health, health_service) = tonic_health::server::health_reporter();
        let mut routes = RoutesBuilder::default();
        routes.add_service(health_service);
        Self {
            service_label,
            routes,
            served: vec![""],
            advertised: Vec::new(),
            health,
        }
    }

    /// Adds an implemented service: routed, health-reported and listed through reflection.
    pub fn add_service<S>(mut self, service: S) -> Self
    where
        S: Service<Request<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.routes.add_service(service);
        self.served.push(S::NAME);
        self.advertised.push(S::NAME);
        self
    }

    /// Lists a `tta.v1` service of this process through reflection before all of its methods
    /// are routed: calls to methods not (yet) served answer `UNIMPLEMENTED`.
    pub fn advertise(mut self, service_name: &'static str) -> Self {
        if !self.advertised.contains(&service_name) {
            self.advertised.push(service_name);
        }
        self
    }

    /// The health reporter, for services that want to report their own status changes.
    pub fn health_reporter(&self) -> HealthReporter {
        self.health.clone()
    }

    /// Serves until `shutdown` trips, then stops accepting, reports NOT_SERVING and lets calls
    /// in flight finish for at most `grace`.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: Shutdown,
        grace: Duration,
    ) -> Result<(), Error> {
        let reflection = self.reflection_builder();
        let reflection_v1 = reflection
            .clone_builder()
            .build_v1()
            .map_err(|err| Error::Reflection(err.to_string()))?;
        let reflection_v1alpha = reflection
            .clone_builder()
            .build_v1alpha()
            .map_err(|err| Error::Reflection(err.to_string()))?;
        let mut routes = self.routes;
        routes
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);

        for name in &self.served {
            self.health
                .set_service_status(*name, ServingStatus::Serving)
                .await;
        }
        let local_addr = listener.local_addr().ok();
        tracing::info!(service = self.service_label, addr = ?local_addr, advertised = ?self.advertised, "grpc server listening");

        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let health = self.health.clone();
        let served = self.served.clone();
        let stop_signal = {
            let shutdown = shutdown.clone();
            async move {
                shutdown.wait().await;
                for name in &served {
                    health
                        .set_service_status(*name, ServingStatus::NotServing)
                        .await;
                }
            }
        };
        let server = tonic::transport::Server::builder()
            .layer(ObservabilityLayer {
                service_label: self.service_label,
            })
            .add_routes(routes.routes())
            .serve_with_incoming_shutdown(incoming, stop_signal);

        let grace_elapsed = async {
            shutdown.wait().await;
            tokio::time::sleep(grace).await;
        };
        tokio::select! {
            result = server => result?,
            () = grace_elapsed => {
                tracing::warn!(service = self.service_label, grace = ?grace, "grace period over, closing remaining grpc calls");
            }
        }
        tracing::info!(service = self.service_label, "grpc server stopped");
        Ok(())
    }

    fn reflection_builder(&self) -> ReflectionPlan {
        ReflectionPlan {
            names: self
                .advertised
                .iter()
                .copied()
                .chain(["grpc.health.v1.Health"])
                .collect(),
        }
    }
}

/// What reflection lists; built twice (v1 and v1alpha) because tonic's builder is consumed.
struct ReflectionPlan {
    names: Vec<&'static str>,
}

impl ReflectionPlan {
    fn clone_builder(&self) -> tonic_reflection::server::Builder<'static> {
        let mut builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tta_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("grpc.reflection.v1.ServerReflection");
        for name in &self.names {
            builder = builder.with_service_name(*name);
        }
        builder
    }
}

/// Opens a client channel that connects on first use and reconnects by itself, with
/// `TCP_NODELAY`, a connect timeout and HTTP/2 keep-alives so dead peers are noticed.
pub fn connect_lazy(endpoint: &str) -> Result<Channel, Error> {
    let endpoint = Endpoint::from_shared(endpoint.to_owned()).map_err(|err| Error::Endpoint {
        endpoint: endpoint.to_owned(),
        reason: err.to_string(),
    })?;
    Ok(endpoint
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(2))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true)
        .connect_lazy())
}

/// `http://host:port` for a bound address, for clients of in-process servers.
pub fn endpoint_url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

/// A span per call (child of the caller's trace when `traceparent` is present) and the RED
/// metrics `tta_grpc_requests_total` / `tta_grpc_request_duration_seconds`.
#[derive(Debug, Clone, Copy)]
struct ObservabilityLayer {
    service_label: &'static str,
}

impl<S> Layer<S> for ObservabilityLayer {
    type Service = Observed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observed {
            inner,
            service_label: self.service_label,
        }
    }
}

#[derive(Debug, Clone)]
struct Observed<S> {
    inner: S,
    service_label: &'static str,
}

impl<S, ResBody> Service<Request<Body>> for Observed<S>
where
    S: Service<Request<Body>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let method = request.uri().path().to_owned();
        let span = tracing::info_span!("grpc", otel.name = %method, rpc.system = "grpc", otel.kind = "server");
        trace_context::set_parent_from_headers(&span, request.headers());
        let service_label = self.service_label;
        // The clone that was polled ready is the one that must serve the call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let started = Instant::now();
        Box::pin(
            async move {
                let result = inner.call(request).await;
                // Unary errors travel as trailers-only responses, so the status is in the headers;
                // a response without it is a success (streaming errors are counted by the
                // service itself).
                let code = match &result {
                    Ok(response) => response
                        .headers()
                        .get("grpc-status")
                        .and_then(|value| value.to_str().ok())
                        .and_then(|value| value.parse::<i32>().ok())
                        .map_or(tonic::Code::Ok, tonic::Code::from),
                    Err(_) => tonic::Code::Internal,
                };
                let labels = [
                    ("service", service_label.to_owned()),
                    ("method", method),
                    ("code", format!("{code:?}")),
                ];
                metrics::counter!("tta_grpc_requests_total", &labels).increment(1);
                metrics::histogram!("tta_grpc_request_duration_seconds", &labels[..2])
                    .record(started.elapsed().as_secs_f64());
                result
            }
            .instrument(span),
        )
    }
}
