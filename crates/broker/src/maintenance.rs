//! The broker's background work, run by every replica (the scripts make concurrent passes
//! safe): promote due delayed messages and retries, reclaim expired leases, and publish queue
//! depth gauges with DLQ and retry-rate alerts.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use tta_runtime::{BoxError, Shutdown};

use crate::engine::{Engine, Reclaimed};

/// How often due delayed messages are moved into their streams: the precision of backoff delays.
const PROMOTE_EVERY: Duration = Duration::from_millis(50);
/// How often the gauges are refreshed (and a Redis outage is logged again).
const REFRESH_EVERY: Duration = Duration::from_secs(5);

pub fn record_reclaim(topic: &str, reclaimed: Reclaimed) {
    if reclaimed.reclaimed > 0 {
        let retried = reclaimed.reclaimed - reclaimed.dead_lettered;
        metrics::counter!("tta_broker_lease_expired_total", "topic" => topic.to_owned())
            .increment(reclaimed.reclaimed);
        metrics::counter!("tta_broker_retries_total", "topic" => topic.to_owned())
            .increment(retried);
        tracing::info!(
            topic,
            reclaimed = reclaimed.reclaimed,
            dead_lettered = reclaimed.dead_lettered,
            "reclaimed expired deliveries"
        );
    }
    if reclaimed.dead_lettered > 0 {
        metrics::counter!("tta_broker_dead_lettered_total", "topic" => topic.to_owned(), "cause" => "max_attempts")
            .increment(reclaimed.dead_lettered);
    }
}

/// Runs until shutdown. Redis outages are logged and ridden out, never fatal.
pub async fn run(engine: Arc<Engine>, shutdown: Shutdown) -> Result<(), BoxError> {
    let reclaim_every = engine.config().reclaim_interval;
    let mut last_refresh: Option<Instant> = None;
    let mut last_warning: Option<Instant> = None;
    let mut last_reclaim = Instant::now();
    let mut alerts = Alerts::default();
    let mut tick = tokio::time::interval(PROMOTE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.wait() => return Ok(()),
        }
        // Listed on every tick (one SMEMBERS), so a topic created a moment ago, on any
        // replica, has its delayed messages promoted and its leases reclaimed on time.
        let listed = async {
            let mut topics = engine.topics().await?;
            let restored = engine.restore_topics(&topics).await?;
            if !restored.is_empty() {
                tracing::warn!(topics = ?restored, "redis lost the topic list; restored it");
                topics.extend(restored);
            }
            Ok::<_, crate::Error>(topics)
        };
        let topics = match listed.await {
            Ok(topics) => topics,
            Err(err) => {
                if last_warning.is_none_or(|at| at.elapsed() >= REFRESH_EVERY) {
                    tracing::warn!(error = %err, "cannot list topics; will retry");
                    last_warning = Some(Instant::now());
                }
                continue;
            }
        };
        if last_refresh.is_none_or(|at| at.elapsed() >= REFRESH_EVERY) {
            last_refresh = Some(Instant::now());
            refresh_gauges(&engine, &topics, &mut alerts).await;
        }
        for topic in &topics {
            if let Err(err) = engine.promote(topic).await {
                tracing::debug!(topic, error = %err, "promoting delayed messages failed");
            }
        }
        if last_reclaim.elapsed() >= reclaim_every {
            last_reclaim = Instant::now();
            for topic in &topics {
                match engine
                    .reclaim(topic, None, crate::engine::Sweep::Resume)
                    .await
                {
                    Ok(reclaimed) => {
                        record_reclaim(topic, reclaimed);
                        alerts.count_retries(topic, reclaimed.reclaimed);
                    }
                    Err(err) => {
                        tracing::debug!(topic, error = %err, "reclaiming expired deliveries failed")
                    }
                }
            }
        }
    }
}

async fn refresh_gauges(engine: &Engine, topics: &[String], alerts: &mut Alerts) {
    for topic in topics {
        let Ok(stats) = engine.stats(topic).await else {
            continue;
        };
        for (priority, depth) in ["high", "normal", "low"].into_iter().zip(stats.depth) {
            metrics::gauge!("tta_broker_queue_depth", "topic" => topic.clone(), "priority" => priority).set(depth as f64);
        }
        metrics::gauge!("tta_broker_delayed", "topic" => topic.clone()).set(stats.delayed as f64);
        metrics::gauge!("tta_broker_pending", "topic" => topic.clone()).set(stats.pending as f64);
        metrics::gauge!("tta_broker_dlq_depth", "topic" => topic.clone())
            .set(stats.dead_letters as f64);
        alerts.check_dlq(
            topic,
            stats.dead_letters,
            engine.config().dlq_alert_threshold,
        );
    }
    alerts.check_retry_rate(engine.config().retry_alert_threshold);
}

/// Alert state, so each alert is raised once when crossed and cleared once when back under.
#[derive(Debug, Default)]
struct Alerts {
    dlq_firing: HashSet<String>,
    retry_firing: HashSet<String>,
    retries_this_window: HashMap<String, u64>,
    window_started: Option<Instant>,
}

impl Alerts {
    fn check_dlq(&mut self, topic: &str, depth: u64, threshold: u64) {
        let firing = depth > threshold;
        if firing && self.dlq_firing.insert(topic.to_owned()) {
            tracing::warn!(
                topic,
                depth,
                threshold,
                "alert: dead-letter queue above threshold"
            );
        } else if !firing && self.dlq_firing.remove(topic) {
            tracing::info!(
                topic,
                depth,
                threshold,
                "alert cleared: dead-letter queue back under threshold"
            );
        }
        metrics::gauge!("tta_broker_alert", "alert" => "dlq_depth", "topic" => topic.to_owned())
            .set(f64::from(u8::from(firing)));
    }

    fn count_retries(&mut self, topic: &str, retries: u64) {
        *self
            .retries_this_window
            .entry(topic.to_owned())
            .or_default() += retries;
    }

    /// Retries per minute, from this replica's reclaims.
    fn check_retry_rate(&mut self, threshold: u64) {
        let started = *self.window_started.get_or_insert_with(Instant::now);
        if started.elapsed() < Duration::from_secs(60) {
            return;
        }
        for (topic, retries) in std::mem::take(&mut self.retries_this_window) {
            let firing = retries > threshold;
            if firing && self.retry_firing.insert(topic.clone()) {
                tracing::warn!(
                    topic,
                    retries_per_minute = retries,
                    threshold,
                    "alert: retry rate above threshold"
                );
            } else if !firing && self.retry_firing.remove(&topic) {
                tracing::info!(
                    topic,
                    retries_per_minute = retries,
                    "alert cleared: retry rate back under threshold"
                );
            }
            metrics::gauge!("tta_broker_alert", "alert" => "retry_rate", "topic" => topic)
                .set(f64::from(u8::from(firing)));
        }
        self.window_started = Some(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dlq_alerts_fire_once_per_crossing() {
        let mut alerts = Alerts::default();
        alerts.check_dlq("t", 5, 10);
        assert!(alerts.dlq_firing.is_empty());
        alerts.check_dlq("t", 11, 10);
        alerts.check_dlq("t", 12, 10);
        assert_eq!(alerts.dlq_firing.len(), 1);
        alerts.check_dlq("t", 3, 10);
        assert!(alerts.dlq_firing.is_empty());
    }
}
