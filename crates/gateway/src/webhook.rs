//! Forwards every escalation to an HTTP webhook (R5.4), for teams whose on-call tooling takes
//! HTTP rather than reading the Redis stream.
//!
//! The stream stays the record. The forwarder is a consumer group (`webhook`) on it: an event is
//! acknowledged only after the endpoint answered 2xx, so a failing endpoint is retried with
//! backoff until it accepts, a gateway that dies mid-delivery leaves the event pending for
//! another replica (or itself after a restart), and several replicas never post one event twice
//! unless one of them died between the POST and the acknowledgement.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use tta_runtime::Shutdown;
use tta_safety::escalation::{EscalationEvent, EscalationStore};
use tta_types::config::WebhookConfig;

const GROUP: &str = "webhook";
/// An event another replica has held this long without acknowledging is taken over.
const STALE_AFTER: Duration = Duration::from_secs(60);
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

fn millis(at: SystemTime) -> u64 {
    u64::try_from(
        at.duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(u64::MAX)
}

/// The JSON body of one notice.
pub fn body(event: &EscalationEvent) -> serde_json::Value {
    json!({
        "id": event.id,
        "session_id": event.session_id,
        "user_id": event.user_id,
        "turn_id": event.turn_id,
        "level": event.level.as_str(),
        "categories": event.categories,
        "reason": event.reason.as_str(),
        "source": event.source.as_str(),
        "excerpt": event.excerpt,
        "time_ms": millis(event.time),
    })
}

/// Creates the forwarder's consumer group; events raised from then on are forwarded.
pub async fn prepare(store: &EscalationStore) -> Result<(), tta_safety::Error> {
    store.ensure_group(GROUP).await
}

/// Delivers escalations until `shutdown`.
pub async fn forward(
    store: EscalationStore,
    config: WebhookConfig,
    consumer: String,
    shutdown: Shutdown,
) {
    let client = match reqwest::Client::builder()
        .timeout(config.timeout)
        .tcp_nodelay(true)
        .build()
    {
        Ok(client) => client,
        Err(err) => {
            tracing::error!(error = %err, "cannot build the webhook client; escalations stay in the stream only");
            shutdown.wait().await;
            return;
        }
    };
    let mut backoff = FIRST_BACKOFF;
    let mut grouped = false;
    // Own pending events first (left by an earlier run of this replica), then new ones.
    let mut pending = true;
    while !shutdown.is_triggered() {
        let step = async {
            if !grouped {
                store.ensure_group(GROUP).await?;
                grouped = true;
            }
            if pending {
                store.claim_stale(GROUP, &consumer, STALE_AFTER).await?;
            }
            let events = store
                .read_group(GROUP, &consumer, pending, Duration::from_secs(1))
                .await?;
            Ok::<_, tta_safety::Error>(events)
        };
        let events = tokio::select! {
            () = shutdown.wait() => return,
            events = step => events,
        };
        let events = match events {
            Ok(events) => events,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read escalations for the webhook; retrying");
                if sleep_or_stop(&shutdown, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(config.max_backoff);
                continue;
            }
        };
        if pending && events.is_empty() {
            pending = false;
            continue;
        }
        for event in events {
            // One event at a time, in order, each until it is accepted.
            loop {
                let delivered = post(&client, &config.url, &event).await;
                match delivered {
                    Ok(()) => {
                        metrics::counter!("tta_safety_webhook_deliveries_total", "outcome" => "delivered").increment(1);
                        if let Err(err) = store.ack_group(GROUP, &event.id).await {
                            // Pending it stays; it is posted again after a restart or takeover.
                            tracing::warn!(id = %event.id, error = %err, "webhook delivered but not acknowledged");
                        }
                        backoff = FIRST_BACKOFF;
                        break;
                    }
                    Err(reason) => {
                        metrics::counter!("tta_safety_webhook_deliveries_total", "outcome" => "failed").increment(1);
                        tracing::warn!(id = %event.id, reason = %reason, retry_in_ms = backoff.as_millis() as u64, "escalation webhook failed; retrying");
                        if sleep_or_stop(&shutdown, backoff).await {
                            return;
                        }
                        backoff = (backoff * 2).min(config.max_backoff);
                    }
                }
            }
        }
        // Another replica may have died holding events; look again from time to time.
        pending = true;
    }
}

async fn post(client: &reqwest::Client, url: &str, event: &EscalationEvent) -> Result<(), String> {
    let response = client
        .post(url)
        .json(&body(event))
        .send()
        .await
        // The URL may carry credentials: report the kind of failure, not the request.
        .map_err(|err| err.without_url().to_string())?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("endpoint answered {status}"))
    }
}

/// Sleeps `delay`; true when shutdown came first.
async fn sleep_or_stop(shutdown: &Shutdown, delay: Duration) -> bool {
    tokio::select! {
        () = shutdown.wait() => true,
        () = tokio::time::sleep(delay) => false,
    }
}
