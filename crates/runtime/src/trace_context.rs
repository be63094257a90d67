//! W3C trace-context (`traceparent`, `tracestate`) across process boundaries: gRPC metadata on
//! the way in and out, and the string headers that travel inside broker messages.

use std::collections::HashMap;

use opentelemetry::propagation::{Extractor, Injector};
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The header that carries the trace and parent span ids.
pub const TRACEPARENT: &str = "traceparent";

struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|key| key.as_str()).collect()
    }
}

struct MapCarrier<'a>(&'a mut HashMap<String, String>);

impl Injector for MapCarrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

struct MapExtractor<'a>(&'a HashMap<String, String>);

impl Extractor for MapExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// Writes the context of `span` into outgoing gRPC metadata.
pub fn inject_into_metadata(span: &tracing::Span, metadata: &mut MetadataMap) {
    let context = span.context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut MetadataInjector(metadata));
    });
}

/// Makes `span` a child of the trace named in incoming HTTP/2 headers, if any.
pub fn set_parent_from_headers(span: &tracing::Span, headers: &http::HeaderMap) {
    if !headers.contains_key(TRACEPARENT) {
        return;
    }
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(headers))
    });
    let _ = span.set_parent(parent);
}

/// Writes the context of `span` into a message's string headers.
pub fn inject_into_map(span: &tracing::Span, headers: &mut HashMap<String, String>) {
    let context = span.context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut MapCarrier(headers));
    });
}

/// Makes `span` a child of the trace named in a message's string headers, if any.
pub fn set_parent_from_map(span: &tracing::Span, headers: &HashMap<String, String>) {
    if !headers.contains_key(TRACEPARENT) {
        return;
    }
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&MapExtractor(headers))
    });
    let _ = span.set_parent(parent);
}

/// A tonic client interceptor that forwards the caller's current span to the server.
#[derive(Debug, Clone, Copy, Default)]
pub struct PropagateTraceContext;

impl tonic::service::Interceptor for PropagateTraceContext {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        inject_into_metadata(&tracing::Span::current(), request.metadata_mut());
        Ok(request)
    }
}

/// The trace id of `span` as 32 hex digits, for log lines and diagnostics; `None` when the span
/// has no valid context.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracerProvider};
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    fn with_tracing(test: impl FnOnce()) {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, test);
    }

    #[test]
    fn message_headers_carry_the_trace_to_the_consumer() {
        with_tracing(|| {
            let producer = tracing::info_span!("publish");
            let mut headers = HashMap::new();
            inject_into_map(&producer, &mut headers);
            let traceparent = headers.get(TRACEPARENT).cloned().unwrap_or_default();
            let parts: Vec<&str> = traceparent.split('-').collect();
            assert_eq!(parts.len(), 4, "{traceparent}");
            assert_eq!((parts[0], parts[1].len(), parts[2].len()), ("00", 32, 16));

            let consumer = tracing::info_span!("consume");
            set_parent_from_map(&consumer, &headers);
            assert!(trace_id(&producer).is_some());
            assert_eq!(trace_id(&consumer), trace_id(&producer));
        });
    }

    #[test]
    fn grpc_metadata_carries_the_trace_to_the_server() {
        with_tracing(|| {
            let client = tracing::info_span!("call");
            let mut metadata = MetadataMap::new();
            inject_into_metadata(&client, &mut metadata);
            let headers = metadata.into_headers();
            assert!(headers.contains_key(TRACEPARENT));

            let server = tracing::info_span!("serve");
            set_parent_from_headers(&server, &headers);
            assert_eq!(trace_id(&server), trace_id(&client));
        });
    }

    #[test]
    fn without_a_traceparent_a_span_starts_its_own_trace() {
        with_tracing(|| {
            let span = tracing::info_span!("fresh");
            set_parent_from_map(&span, &HashMap::new());
            let other = tracing::info_span!("other");
            assert_ne!(trace_id(&span), trace_id(&other));
        });
    }
}
