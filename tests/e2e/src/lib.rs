//! End-to-end tests live in `tests/`; they start the real service binaries (built by
//! `cargo build --workspace --bins`) against a private `redis-server`. This library holds what
//! several of them share: starting the turn stack as real processes.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context;
use tonic::transport::Channel;
use tta_proto::v1::{self as pb, orchestrator_client::OrchestratorClient};
use tta_testkit::{ServiceProcess, free_port};

/// One service process of a stack, with its addresses.
#[derive(Debug)]
pub struct Running {
    pub binary: &'static str,
    pub admin: SocketAddr,
    pub grpc: Option<SocketAddr>,
    pub process: ServiceProcess,
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
}

impl Running {
    /// Starts the same binary again on the same addresses (after a kill).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.process.kill();
        self.process = ServiceProcess::spawn(self.binary, &self.args, &self.env)?;
        wait_ready(self).await
    }

    /// Waits until it is ready. A port chosen for it may have been taken by another test
    /// before it bound it: then it starts again on fresh ports.
    async fn started(mut self) -> anyhow::Result<Self> {
        let mut attempts = 0;
        loop {
            match wait_ready(&self).await {
                Ok(()) => return Ok(self),
                Err(_) if attempts < 2 && self.process.logs().contains(ADDRESS_IN_USE) => {
                    attempts += 1;
                    self.process.kill();
                    self = spawn(self.binary, self.grpc.is_some(), self.env.clone())?;
                }
                Err(err) => return Err(err),
            }
        }
    }
}

/// How a service binary reports a port that is taken (the OS error text).
const ADDRESS_IN_USE: &str = "Address already in use";

/// Broker, gateway and the three built-in workers, as real processes on free ports; with
/// [`Stack::start_on_hosts`], a resource monitor per simulated host as well.
#[derive(Debug)]
pub struct Stack {
    pub broker: Running,
    pub gateway: Running,
    pub workers: Vec<Running>,
    pub monitors: Vec<Running>,
    pub redis_url: String,
    pub prefix: String,
}

/// A simulated host: its resource monitor (named `name`, with `monitor_env` added, e.g.
/// thresholds) and one worker of each type that says it runs there. All on this machine.
#[derive(Debug, Clone)]
pub struct Host {
    pub name: String,
    pub monitor_env: Vec<(&'static str, String)>,
}

/// How often monitors sample, workers look at their host and the gateway polls, in stacks with
/// hosts: fast, so tests see changes within a second.
const HOST_REFRESH: &str = "200ms";

/// The repository root, where `deploy/worlds` lives.
pub fn repository_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

async fn wait_ready(running: &Running) -> anyhow::Result<()> {
    running
        .process
        .wait_ready(running.admin, Duration::from_secs(30))
        .await
}

fn spawn(
    binary: &'static str,
    grpc: bool,
    env: Vec<(&'static str, String)>,
) -> anyhow::Result<Running> {
    let admin: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let mut args = vec!["--admin-addr".to_owned(), admin.to_string()];
    let grpc = if grpc {
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        args.extend(["--grpc-addr".to_owned(), addr.to_string()]);
        Some(addr)
    } else {
        None
    };
    let process = ServiceProcess::spawn(binary, &args, &env)?;
    Ok(Running {
        binary,
        admin,
        grpc,
        process,
        args,
        env,
    })
}

/// The built-in worker binaries, in turn order.
pub const WORKERS: [&str; 3] = ["tta-ipa", "tta-wba", "tta-nga"];

impl Stack {
    /// Starts the stack on `redis_url` with its own key prefix; `workers_per_agent` instances of
    /// each worker.
    pub async fn start(
        redis_url: &str,
        test: &str,
        workers_per_agent: usize,
    ) -> anyhow::Result<Self> {
        Self::launch(redis_url, test, &WORKERS, workers_per_agent, &[], &[]).await
    }

    /// Like [`Stack::start`] with only the given worker binaries, for tests that stand in for
    /// one agent themselves.
    pub async fn start_with(
        redis_url: &str,
        test: &str,
        worker_binaries: &[&'static str],
        workers_per_agent: usize,
    ) -> anyhow::Result<Self> {
        Self::launch(
            redis_url,
            test,
            worker_binaries,
            workers_per_agent,
            &[],
            &[],
        )
        .await
    }

    /// [`Stack::start`] with extra environment variables for every process, e.g. `TTA_…`
    /// configuration overrides.
    pub async fn start_with_env(
        redis_url: &str,
        test: &str,
        workers_per_agent: usize,
        extra_env: &[(&'static str, String)],
    ) -> anyhow::Result<Self> {
        Self::launch(redis_url, test, &WORKERS, workers_per_agent, extra_env, &[]).await
    }

    /// Starts the stack with a resource monitor and one worker of each type per host.
    pub async fn start_on_hosts(
        redis_url: &str,
        test: &str,
        hosts: &[Host],
    ) -> anyhow::Result<Self> {
        Self::launch(redis_url, test, &WORKERS, 0, &[], hosts).await
    }

    async fn launch(
        redis_url: &str,
        test: &str,
        worker_binaries: &[&'static str],
        workers_per_agent: usize,
        extra_env: &[(&'static str, String)],
        hosts: &[Host],
    ) -> anyhow::Result<Self> {
        let prefix = tta_testkit::unique_prefix(test);
        let worlds = repository_root().join("deploy/worlds");
        let mut common = vec![
            ("TTA_REDIS_URL", redis_url.to_owned()),
            ("TTA_REDIS__KEY_PREFIX", prefix.clone()),
            ("TTA_AGENTS__WORLDS_DIR", worlds.display().to_string()),
            // Short leases, so a killed worker's task is redelivered within the test.
            ("TTA_BROKER__VISIBILITY_TIMEOUT", "2s".to_owned()),
            ("TTA_BROKER__RETRY__BASE_DELAY", "100ms".to_owned()),
            // Frequent beats, so a test sees the workers' figures soon after their tasks.
            ("TTA_AGENTS__HEARTBEAT_INTERVAL", "1s".to_owned()),
        ];
        common.extend(extra_env.iter().cloned());
        let broker = spawn("tta-broker", true, common.clone())?.started().await?;
        let broker_url = format!("http://{}", broker.grpc.context("broker without grpc")?);

        let mut with_broker = common.clone();
        with_broker.push(("TTA_GATEWAY__BROKER_ENDPOINT", broker_url.clone()));
        with_broker.push(("TTA_AGENTS__BROKER_ENDPOINT", broker_url));
        // Generous for debug builds on a busy 2-core machine; the benchmark measures speed.
        with_broker.push(("TTA_GATEWAY__TURN_TIMEOUT", "10s".to_owned()));

        let mut workers = Vec::new();
        for &binary in worker_binaries {
            for _ in 0..workers_per_agent {
                workers.push(spawn(binary, false, with_broker.clone())?);
            }
        }
        let mut monitors = Vec::new();
        for host in hosts {
            let mut env = common.clone();
            env.push(("TTA_RESOURCE_MONITOR__HOST_NAME", host.name.clone()));
            env.push(("TTA_MONITORING__METRICS_INTERVAL", HOST_REFRESH.to_owned()));
            env.extend(host.monitor_env.iter().cloned());
            monitors.push(spawn("tta-resource-monitor", true, env)?);
            for binary in WORKERS {
                let mut env = with_broker.clone();
                env.push(("TTA_AGENTS__HOST_NAME", host.name.clone()));
                env.push(("TTA_AGENTS__HOST_CHECK_INTERVAL", HOST_REFRESH.to_owned()));
                workers.push(spawn(binary, false, env)?);
            }
        }
        with_broker.push(("TTA_GATEWAY__CAPACITY_REFRESH", HOST_REFRESH.to_owned()));
        let gateway = spawn("tta-gateway", true, with_broker)?;
        let mut monitors_ready = Vec::with_capacity(monitors.len());
        for process in monitors {
            monitors_ready.push(process.started().await?);
        }
        let mut workers_ready = Vec::with_capacity(workers.len());
        for process in workers {
            workers_ready.push(process.started().await?);
        }
        let gateway = gateway.started().await?;
        let (monitors, workers) = (monitors_ready, workers_ready);
        Ok(Self {
            broker,
            gateway,
            workers,
            monitors,
            redis_url: redis_url.to_owned(),
            prefix,
        })
    }

    /// The broker's gRPC endpoint.
    pub fn broker_url(&self) -> String {
        format!(
            "http://{}",
            self.broker
                .grpc
                .map(|addr| addr.to_string())
                .unwrap_or_default()
        )
    }

    /// The first running instance of a worker binary (`tta-ipa`, `tta-wba`, `tta-nga`).
    pub fn worker(&self, binary: &str) -> Option<&Running> {
        self.worker_index(binary).map(|index| &self.workers[index])
    }

    /// Where that instance is in `workers`, for tests that stop, freeze or kill it.
    pub fn worker_index(&self, binary: &str) -> Option<usize> {
        self.workers
            .iter()
            .position(|worker| worker.binary == binary)
    }

    pub fn gateway_url(&self) -> String {
        format!(
            "http://{}",
            self.gateway
                .grpc
                .map(|addr| addr.to_string())
                .unwrap_or_default()
        )
    }
}

/// The stored version of a session (it grows by one per applied turn), asked over gRPC.
pub async fn session_version(
    client: &mut OrchestratorClient<Channel>,
    session: &str,
) -> anyhow::Result<u64> {
    Ok(client
        .get_session(pb::GetSessionRequest {
            session_id: session.to_owned(),
        })
        .await?
        .into_inner()
        .session
        .context("no session")?
        .version)
}

/// Runs the `tta` command line with `args` (without an inherited `TTA_CONFIG`) and returns its
/// exit code and its standard output followed by its standard error.
pub async fn tta(args: &[&str]) -> anyhow::Result<(i32, String)> {
    let output = tokio::process::Command::new(tta_testkit::binary_path("tta")?)
        .args(args)
        .env_remove("TTA_CONFIG")
        .output()
        .await?;
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    Ok((output.status.code().unwrap_or(-1), text))
}
