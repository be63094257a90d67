//! A gateway reports ready only once the workflows it routes turns to are stored: before that
//! a turn would find its workflow missing.

use std::time::Duration;

use anyhow::ensure;
use tta_runtime::service::ServiceKind;
use tta_testkit::{RedisServer, ready_report, start_in_process, test_config, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_is_not_ready_until_its_workflows_are_stored() -> anyhow::Result<()> {
    let mut redis = RedisServer::start()?;
    let config = test_config(&redis.url(), "readiness-workflows");
    redis.kill();
    let service = start_in_process(ServiceKind::Gateway, config, tta_gateway::build)
        .await
        .map_err(|err| anyhow::anyhow!(err))?;
    let admin = service.admin_addr;

    // Redis came back: the gateway must still say "not ready" until the seed is stored, and
    // "ready" with every check "ok" after.
    let (status, report) = wait_until(Duration::from_secs(10), "a readiness answer", || async {
        ready_report(admin).await
    })
    .await?;
    ensure!(status == 503, "{report}");
    ensure!(report["checks"]["workflows"] != "ok", "{report}");

    redis.restart()?;
    let (_, report) = wait_until(
        Duration::from_secs(20),
        "ready once redis is back and the workflows are stored",
        || async {
            ready_report(admin)
                .await
                .filter(|(status, _)| *status == 200)
        },
    )
    .await?;
    ensure!(report["checks"]["workflows"] == "ok", "{report}");

    service
        .stop(Duration::from_secs(1))
        .await
        .map_err(|err| anyhow::anyhow!(err))?;
    Ok(())
}
