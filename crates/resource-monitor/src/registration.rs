//! Keeps this host's record in the host registry (`tta_runtime::hosts`) fresh after every
//! sampling tick, so the gateway finds this monitor and agent workers see their host's health.
//! Redis being away only delays the record: the monitor keeps sampling and serving.

use std::{sync::Arc, time::SystemTime};

use redis::aio::ConnectionManager;
use tta_runtime::{
    hosts::{self, HostRecord},
    redis::Keyspace,
};

use crate::monitor::Monitor;

#[derive(Debug)]
pub struct Registration {
    connection: ConnectionManager,
    keys: Keyspace,
    endpoint: String,
    /// Whether the last write failed, so an outage is logged once, not every tick.
    failing: bool,
}

impl Registration {
    pub fn new(connection: ConnectionManager, keys: Keyspace, endpoint: String) -> Self {
        Self {
            connection,
            keys,
            endpoint,
            failing: false,
        }
    }

    pub async fn refresh(&mut self, monitor: &Arc<Monitor>) {
        let record = HostRecord {
            host: monitor.host().to_owned(),
            endpoint: self.endpoint.clone(),
            health: monitor.health().as_proto(),
            updated_ms: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |since| since.as_millis() as u64),
        };
        let ttl = monitor.config().resource_monitor.registration_ttl;
        match hosts::publish(&mut self.connection, &self.keys, &record, ttl).await {
            Ok(()) if self.failing => {
                self.failing = false;
                tracing::info!(host = %record.host, "host registration restored");
            }
            Ok(()) => {}
            Err(err) if !self.failing => {
                self.failing = true;
                tracing::warn!(host = %record.host, error = %err, "cannot register the host in redis; will keep trying");
            }
            Err(_) => {}
        }
        metrics::gauge!("tta_resource_registered").set(if self.failing { 0.0 } else { 1.0 });
    }

    /// Removes the record when the monitor stops cleanly.
    pub async fn withdraw(&mut self, host: &str) {
        if let Err(err) = hosts::remove(&mut self.connection, &self.keys, host).await {
            tracing::debug!(error = %err, "cannot remove the host record; it expires by itself");
        }
    }
}
