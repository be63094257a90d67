//! The Prometheus recorder behind the `metrics` facade. Installed once per process; every
//! `metrics::counter!`/`histogram!` anywhere in the workspace lands here and is rendered by the
//! admin server's `/metrics`.

use std::{sync::OnceLock, time::Duration};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::shutdown::Shutdown;

/// Latency buckets for `*_seconds` histograms: fine-grained below 10 ms, where a turn's steps
/// live, and out to the 2 s turn budget and beyond.
const SECONDS_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.003, 0.005, 0.010, 0.025, 0.050, 0.100,
    0.250, 0.500, 1.0, 2.0, 5.0, 10.0, 30.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot install the prometheus recorder: {0}")]
    Install(String),
}

/// Installs the recorder on first call and returns the handle that renders the exposition text.
/// Every series carries a `service` label with the first caller's name; later calls (several
/// services in one test process) share the first recorder.
pub fn install(service: &str) -> Result<PrometheusHandle, Error> {
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let recorder = PrometheusBuilder::new()
        .add_global_label("service", service)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), SECONDS_BUCKETS)
        .map_err(|err| Error::Install(err.to_string()))?
        .build_recorder();
    let handle = recorder.handle();
    match metrics::set_global_recorder(recorder) {
        Ok(()) => {
            let _ = HANDLE.set(handle.clone());
            metrics::gauge!("tta_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            Ok(handle)
        }
        // Another thread won the race; use its recorder.
        Err(_) => HANDLE.get().cloned().ok_or_else(|| {
            Error::Install("a different metrics recorder is already installed".to_owned())
        }),
    }
}

/// Histograms are summarised lazily; this keeps their memory bounded between scrapes.
pub async fn run_upkeep(handle: PrometheusHandle, shutdown: Shutdown) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => handle.run_upkeep(),
            () = shutdown.wait() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_recorded_metrics_and_build_info() {
        let handle = install("tta-test").unwrap();
        let again = install("tta-other").unwrap();
        metrics::counter!("tta_test_events_total", "kind" => "unit").increment(3);
        metrics::histogram!("tta_test_step_seconds").record(0.002);
        let text = again.render();
        assert!(
            text.contains("tta_test_events_total{service=\"tta-test\",kind=\"unit\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("tta_test_step_seconds_bucket{service=\"tta-test\",le=\"0.002\"} 1"),
            "{text}"
        );
        assert!(handle.render().contains("tta_build_info"));
    }
}
