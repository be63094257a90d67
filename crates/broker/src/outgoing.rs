//! Checking an outgoing message at the edge — the same rules for `Publish`, `PublishBatch`,
//! `Broadcast` and the reply frames of a `Consume` stream — and counting what became of it.

use std::{collections::HashMap, time::Duration};

use tta_proto::v1 as pb;
use tta_runtime::trace_context;
use tta_types::{FieldViolation, MessageId, config::BrokerConfig, convert::priority_from_proto};

use crate::{
    engine::{Outgoing, Published},
    error::Error,
    topic::check_name,
};

const MAX_HEADERS: usize = 64;
const MAX_HEADER_BYTES: usize = 8 * 1024;
pub const MAX_DELAY: Duration = Duration::from_secs(24 * 3600);
const MAX_CONTENT_TYPE: usize = 256;

/// The trace context of the publish call, computed once per request and copied into each
/// message that carries none of its own.
pub type TraceHeaders = HashMap<String, String>;

pub fn current_trace_headers() -> TraceHeaders {
    let mut headers = HashMap::new();
    trace_context::inject_into_map(&tracing::Span::current(), &mut headers);
    headers
}

/// Checks the messages of a batch: 1 to `limit` of them (else a violation of `field`), then
/// each one, named `<field>[i]` when it is invalid.
pub fn validate_batch(
    config: &BrokerConfig,
    field: &str,
    limit: usize,
    messages: Vec<pb::OutgoingMessage>,
    trace: &TraceHeaders,
) -> Result<Vec<Result<Outgoing, FieldViolation>>, FieldViolation> {
    if messages.is_empty() || messages.len() > limit {
        return Err(FieldViolation::new(
            field,
            format!("must hold 1 to {limit} messages, got {}", messages.len()),
        ));
    }
    Ok(messages
        .into_iter()
        .enumerate()
        .map(|(index, message)| {
            validate(
                config,
                &|| format!("{field}[{index}]"),
                message,
                None,
                trace,
            )
        })
        .collect())
}

/// Checks one outgoing message; `field` is its path in the request (e.g. `messages[3]`).
///
/// Field paths are only formatted when something is wrong: this runs for every message of
/// every batch.
pub fn validate(
    config: &BrokerConfig,
    field: &dyn Fn() -> String,
    message: pb::OutgoingMessage,
    topic_override: Option<&str>,
    trace: &TraceHeaders,
) -> Result<Outgoing, FieldViolation> {
    let within = |violation: FieldViolation| violation.within(&field());
    let topic = match topic_override {
        Some(topic) => topic.to_owned(),
        None => {
            check_name("topic", &message.topic).map_err(within)?;
            message.topic
        }
    };
    let priority = priority_from_proto("priority", message.priority).map_err(within)?;
    let limit = config.max_payload_bytes;
    if message.payload.len() as u64 > limit.bytes() {
        return Err(within(FieldViolation::new(
            "payload",
            format!("is {} bytes; the limit is {limit}", message.payload.len()),
        )));
    }
    let mut headers = message.headers;
    check_headers("headers", &headers).map_err(within)?;
    let idempotency_key = if message.idempotency_key.is_empty() {
        None
    } else {
        MessageId::parse_field("idempotency_key", &message.idempotency_key).map_err(within)?;
        Some(message.idempotency_key)
    };
    let delay = match message.delay {
        None => Duration::ZERO,
        Some(delay) => Duration::try_from(delay)
            .ok()
            .filter(|delay| *delay <= MAX_DELAY)
            .ok_or_else(|| within(FieldViolation::new("delay", "must be between 0 and 24h")))?,
    };
    if message.content_type.len() > MAX_CONTENT_TYPE {
        return Err(within(FieldViolation::new(
            "content_type",
            format!("must be at most {MAX_CONTENT_TYPE} characters"),
        )));
    }
    // Carry the publisher's trace to the consumer unless the caller set it explicitly.
    if !headers.contains_key(trace_context::TRACEPARENT) {
        headers.extend(trace.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    Ok(Outgoing {
        topic,
        priority,
        headers,
        payload: message.payload,
        idempotency_key,
        delay,
        content_type: message.content_type,
    })
}

fn check_headers(field: &str, headers: &HashMap<String, String>) -> Result<(), FieldViolation> {
    if headers.len() > MAX_HEADERS {
        return Err(FieldViolation::new(
            field,
            format!("has {} entries; at most {MAX_HEADERS}", headers.len()),
        ));
    }
    let total: usize = headers.iter().map(|(k, v)| k.len() + v.len()).sum();
    if total > MAX_HEADER_BYTES {
        return Err(FieldViolation::new(
            field,
            format!("are {total} bytes; at most {MAX_HEADER_BYTES}"),
        ));
    }
    if let Some(key) = headers.keys().find(|key| {
        key.is_empty()
            || key
                .chars()
                .any(|c| c.is_ascii_uppercase() || c.is_whitespace())
    }) {
        return Err(FieldViolation::new(
            field,
            format!("key {key:?} must be non-empty lowercase without spaces"),
        ));
    }
    Ok(())
}

pub fn record_publish(topic: &str, outcome: &Result<Published, Error>) {
    let result = match outcome {
        Ok(published) if published.duplicate => "duplicate",
        Ok(_) => "enqueued",
        Err(Error::Full { .. }) => "refused",
        Err(_) => "error",
    };
    metrics::counter!("tta_broker_published_total", "topic" => topic.to_owned(), "result" => result).increment(1);
}
