//! Readiness follows the dependencies: a Redis-backed service in-process reports not-ready while
//! its Redis is down and ready again once Redis is back, without a restart.

use std::time::Duration;

use anyhow::ensure;
use tta_runtime::service::ServiceKind;
use tta_testkit::{RedisServer, ready_report, start_in_process, test_config, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_tracks_redis_going_away_and_coming_back() -> anyhow::Result<()> {
    let mut redis = RedisServer::start()?;
    let config = test_config(&redis.url(), "readiness");
    let service = start_in_process(ServiceKind::Broker, config, tta_broker::build)
        .await
        .map_err(|err| anyhow::anyhow!(err))?;
    let admin = service.admin_addr;

    wait_until(Duration::from_secs(10), "ready with redis up", || async {
        ready_report(admin)
            .await
            .filter(|(status, _)| *status == 200)
    })
    .await?;

    redis.kill();
    let (_, report) = wait_until(
        Duration::from_secs(10),
        "not ready with redis down",
        || async {
            ready_report(admin)
                .await
                .filter(|(status, _)| *status == 503)
        },
    )
    .await?;
    ensure!(
        report["checks"]["redis"] != "ok",
        "report should blame redis: {report}"
    );
    ensure!(report["accepting"] == true, "{report}");

    redis.restart()?;
    wait_until(
        Duration::from_secs(15),
        "ready again after redis restart",
        || async {
            ready_report(admin)
                .await
                .filter(|(status, _)| *status == 200)
        },
    )
    .await?;

    service
        .stop(Duration::from_secs(1))
        .await
        .map_err(|err| anyhow::anyhow!(err))?;
    Ok(())
}
