//! Structured logs through `tracing`, and OpenTelemetry trace export over OTLP/gRPC when a
//! collector is configured. The W3C trace-context propagator is installed either way, so trace
//! ids flow through gRPC metadata and broker messages even when nothing is exported.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::{
    Resource,
    propagation::TraceContextPropagator,
    trace::{Sampler, SdkTracerProvider},
};
use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, util::SubscriberInitExt};
use tta_types::config::{LogFormat, TelemetryConfig};

/// The standard variable that names the OTLP collector; it wins over the config file.
pub const OTLP_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

const QUIET_DEPENDENCIES: &str =
    "opentelemetry=warn,opentelemetry_sdk=warn,h2=warn,hyper=warn,tower=warn";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid telemetry.log_level {directive:?}: {reason}")]
    Filter { directive: String, reason: String },
    #[error("cannot build the OTLP exporter for {endpoint}: {reason}")]
    Exporter { endpoint: String, reason: String },
    #[error("cannot install the log subscriber: {0}")]
    Subscriber(String),
}

/// Keeps the trace pipeline alive; call [`TelemetryGuard::shutdown`] last thing in `main` so
/// buffered spans reach the collector.
#[derive(Debug)]
pub struct TelemetryGuard {
    tracer_provider: SdkTracerProvider,
    exporting: bool,
}

impl TelemetryGuard {
    /// Flushes and stops span export, giving up after `timeout` so a dead collector cannot
    /// hold up process exit.
    pub fn shutdown(self, timeout: Duration) {
        if !self.exporting {
            return;
        }
        if let Err(err) = self.tracer_provider.shutdown_with_timeout(timeout) {
            tracing::warn!(error = %err, "trace exporter did not shut down cleanly");
        }
    }

    /// Whether spans leave the process (an OTLP endpoint is configured).
    pub fn exporting(&self) -> bool {
        self.exporting
    }
}

/// Installs the global subscriber. Must run inside the tokio runtime when OTLP export is on
/// (the exporter's gRPC channel lives there).
///
/// `RUST_LOG`, when set, replaces `telemetry.log_level`.
pub fn init(service_name: &str, config: &TelemetryConfig) -> Result<TelemetryGuard, Error> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    // Dependencies' chatter stays at warn unless the operator's directive names them: later
    // directives for the same target win.
    let requested = std::env::var("RUST_LOG").unwrap_or_else(|_| config.log_level.clone());
    let directive = format!("{QUIET_DEPENDENCIES},{requested}");
    let filter = EnvFilter::try_new(&directive).map_err(|err| Error::Filter {
        directive: requested.clone(),
        reason: err.to_string(),
    })?;

    let fmt_layer = match config.log_format {
        LogFormat::Pretty => tracing_subscriber::fmt::layer().with_target(true).boxed(),
        LogFormat::Compact => tracing_subscriber::fmt::layer().compact().boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .flatten_event(true)
            .boxed(),
    };

    let endpoint = std::env::var(OTLP_ENDPOINT_ENV)
        .ok()
        .filter(|value| !value.trim().is_empty())
        .or_else(|| config.otlp_endpoint.clone());
    // A provider exists even without a collector: spans then still carry trace ids, so an
    // incoming `traceparent` is passed on to the next hop instead of being dropped here.
    let tracer_provider =
        tracer_provider(service_name, endpoint.as_deref(), config.trace_sample_ratio)?;
    let otel_layer =
        tracing_opentelemetry::layer().with_tracer(tracer_provider.tracer(service_name.to_owned()));

    tracing_subscriber::registry()
        .with(filter)
        .with(fmt_layer)
        .with(otel_layer)
        .try_init()
        .map_err(|err| Error::Subscriber(err.to_string()))?;

    opentelemetry::global::set_tracer_provider(tracer_provider.clone());
    if let Some(endpoint) = &endpoint {
        tracing::info!(endpoint = %endpoint, "exporting traces over otlp");
    }
    Ok(TelemetryGuard {
        tracer_provider,
        exporting: endpoint.is_some(),
    })
}

fn tracer_provider(
    service_name: &str,
    endpoint: Option<&str>,
    sample_ratio: f64,
) -> Result<SdkTracerProvider, Error> {
    use opentelemetry_otlp::WithExportConfig;

    let resource = Resource::builder()
        .with_service_name(service_name.to_owned())
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    let mut builder = SdkTracerProvider::builder()
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            sample_ratio,
        ))))
        .with_resource(resource);
    if let Some(endpoint) = endpoint {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(Duration::from_secs(3))
            .build()
            .map_err(|err| Error::Exporter {
                endpoint: endpoint.to_owned(),
                reason: err.to_string(),
            })?;
        builder = builder.with_batch_exporter(exporter);
    }
    Ok(builder.build())
}
