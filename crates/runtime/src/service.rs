//! How a TTA process boots and stops. A binary's `main` names its [`ServiceKind`] and a builder
//! that turns a [`ServiceContext`] into [`ServiceParts`]; this module does the rest in one
//! visible place: config, telemetry, metrics, listeners, admin HTTP, gRPC, background tasks,
//! readiness, signals, a bounded drain and the exit code.
//!
//! Tests use [`start`] to run the same parts in-process on ephemeral ports.

use std::{future::Future, net::SocketAddr, process::ExitCode, sync::Arc, time::Duration};

use axum::Router;
use futures::future::BoxFuture;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::{net::TcpListener, task::JoinSet};
use tta_types::{AgentType, Config};

use crate::{
    admin,
    config::{self, ConfigArgs},
    grpc::GrpcServer,
    metrics as prometheus,
    readiness::Readiness,
    shutdown::{self, Shutdown},
    telemetry,
};

/// Errors a service builder or task may return; binaries report them and exit non-zero.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Exit code for bad configuration or usage (the BSD `EX_USAGE` convention that CLIs share).
pub const EXIT_CONFIG: u8 = 2;
/// Exit code when the service could not start or failed while running.
pub const EXIT_FAILURE: u8 = 1;

/// A file named by the configuration (rules, worlds, workflows, policies) that cannot be used.
/// Builders return it so the process exits with [`EXIT_CONFIG`] like any other configuration
/// error, naming the key path: `gateway.workflows_file: deploy/x.yaml: workflows[1]: ...`.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct ConfigFileError {
    pub key: String,
    pub reason: String,
}

impl ConfigFileError {
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// Upper bound for flushing traces at exit, so a dead collector cannot delay it.
const TELEMETRY_FLUSH_TIMEOUT: Duration = Duration::from_millis(800);

/// Which process this is; selects its addresses in the shared config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceKind {
    Gateway,
    Broker,
    ToolRegistry,
    ResourceMonitor,
    /// One of the built-in agent workers (admin port only, no gRPC server).
    Agent(BuiltInAgent),
}

/// The agent workers that ship with the orchestrator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuiltInAgent {
    Ipa,
    Wba,
    Nga,
}

impl BuiltInAgent {
    pub fn agent_type(self) -> AgentType {
        match self {
            BuiltInAgent::Ipa => AgentType::Ipa,
            BuiltInAgent::Wba => AgentType::Wba,
            BuiltInAgent::Nga => AgentType::Nga,
        }
    }

    fn worker_config(self, config: &mut Config) -> &mut tta_types::config::AgentWorkerConfig {
        match self {
            BuiltInAgent::Ipa => &mut config.agents.ipa,
            BuiltInAgent::Wba => &mut config.agents.wba,
            BuiltInAgent::Nga => &mut config.agents.nga,
        }
    }
}

impl ServiceKind {
    /// The binary and `service` label of this process.
    pub fn name(self) -> &'static str {
        match self {
            ServiceKind::Gateway => "tta-gateway",
            ServiceKind::Broker => "tta-broker",
            ServiceKind::ToolRegistry => "tta-tool-registry",
            ServiceKind::ResourceMonitor => "tta-resource-monitor",
            ServiceKind::Agent(BuiltInAgent::Ipa) => "tta-ipa",
            ServiceKind::Agent(BuiltInAgent::Wba) => "tta-wba",
            ServiceKind::Agent(BuiltInAgent::Nga) => "tta-nga",
        }
    }

    /// The config key of the gRPC address, for processes that serve gRPC.
    pub fn grpc_key(self) -> Option<&'static str> {
        match self {
            ServiceKind::Gateway => Some("gateway.listen.grpc"),
            ServiceKind::Broker => Some("broker.listen.grpc"),
            ServiceKind::ToolRegistry => Some("tools.listen.grpc"),
            ServiceKind::ResourceMonitor => Some("resource_monitor.listen.grpc"),
            ServiceKind::Agent(_) => None,
        }
    }

    pub fn grpc_addr(self, config: &Config) -> Option<SocketAddr> {
        match self {
            ServiceKind::Gateway => Some(config.gateway.listen.grpc),
            ServiceKind::Broker => Some(config.broker.listen.grpc),
            ServiceKind::ToolRegistry => Some(config.tools.listen.grpc),
            ServiceKind::ResourceMonitor => Some(config.resource_monitor.listen.grpc),
            ServiceKind::Agent(_) => None,
        }
    }

    pub fn admin_addr(self, config: &Config) -> SocketAddr {
        match self {
            ServiceKind::Gateway => config.gateway.listen.admin,
            ServiceKind::Broker => config.broker.listen.admin,
            ServiceKind::ToolRegistry => config.tools.listen.admin,
            ServiceKind::ResourceMonitor => config.resource_monitor.listen.admin,
            ServiceKind::Agent(BuiltInAgent::Ipa) => config.agents.ipa.admin,
            ServiceKind::Agent(BuiltInAgent::Wba) => config.agents.wba.admin,
            ServiceKind::Agent(BuiltInAgent::Nga) => config.agents.nga.admin,
        }
    }

    fn grpc_slot(self, config: &mut Config) -> Option<&mut SocketAddr> {
        match self {
            ServiceKind::Gateway => Some(&mut config.gateway.listen.grpc),
            ServiceKind::Broker => Some(&mut config.broker.listen.grpc),
            ServiceKind::ToolRegistry => Some(&mut config.tools.listen.grpc),
            ServiceKind::ResourceMonitor => Some(&mut config.resource_monitor.listen.grpc),
            ServiceKind::Agent(_) => None,
        }
    }

    fn admin_slot(self, config: &mut Config) -> &mut SocketAddr {
        match self {
            ServiceKind::Gateway => &mut config.gateway.listen.admin,
            ServiceKind::Broker => &mut config.broker.listen.admin,
            ServiceKind::ToolRegistry => &mut config.tools.listen.admin,
            ServiceKind::ResourceMonitor => &mut config.resource_monitor.listen.admin,
            ServiceKind::Agent(agent) => &mut agent.worker_config(config).admin,
        }
    }

    /// Points this service at the given addresses (flags, or ephemeral ports in tests).
    pub fn set_addrs(
        self,
        config: &mut Config,
        grpc: Option<SocketAddr>,
        admin: Option<SocketAddr>,
    ) {
        if let (Some(addr), Some(slot)) = (grpc, self.grpc_slot(config)) {
            *slot = addr;
        }
        if let Some(addr) = admin {
            *self.admin_slot(config) = addr;
        }
    }
}

/// Command-line options shared by every service binary.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServiceArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Address for the gRPC server (overrides `<service>.listen.grpc`).
    #[arg(long, value_name = "HOST:PORT")]
    pub grpc_addr: Option<SocketAddr>,
    /// Address for the admin HTTP server (overrides the service's admin address).
    #[arg(long, value_name = "HOST:PORT")]
    pub admin_addr: Option<SocketAddr>,
}

/// What a service builder gets to work with.
#[derive(Debug, Clone)]
pub struct ServiceContext {
    pub kind: ServiceKind,
    pub config: Arc<Config>,
    /// Each valid new version of the configuration file while the service runs
    /// ([`crate::config_watch`]), for the parts that apply settings live; starts at `config`.
    pub config_changes: tokio::sync::watch::Receiver<Arc<Config>>,
    pub shutdown: Shutdown,
    pub readiness: Readiness,
    pub metrics: PrometheusHandle,
}

/// A long-running task of a service (a consumer loop, a reclaimer, a sampler). It must return
/// once the shutdown signal trips; an error stops the whole process.
pub struct BackgroundTask {
    pub name: &'static str,
    pub future: BoxFuture<'static, Result<(), BoxError>>,
}

impl std::fmt::Debug for BackgroundTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackgroundTask")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Everything a service runs; built by the service crate, run by [`run_main`] or [`start`].
#[derive(Debug, Default)]
pub struct ServiceParts {
    pub grpc: Option<GrpcServer>,
    /// Routes merged into the admin server next to `/health`, `/ready` and `/metrics`.
    pub admin_routes: Option<Router>,
    pub background: Vec<BackgroundTask>,
}

impl ServiceParts {
    pub fn with_grpc(mut self, server: GrpcServer) -> Self {
        self.grpc = Some(server);
        self
    }

    pub fn with_admin_routes(mut self, routes: Router) -> Self {
        self.admin_routes = Some(routes);
        self
    }

    pub fn with_task<F>(mut self, name: &'static str, future: F) -> Self
    where
        F: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        self.background.push(BackgroundTask {
            name,
            future: Box::pin(future),
        });
        self
    }
}

/// A service running in this process.
#[derive(Debug)]
pub struct RunningService {
    pub kind: ServiceKind,
    pub grpc_addr: Option<SocketAddr>,
    pub admin_addr: SocketAddr,
    pub shutdown: Shutdown,
    pub readiness: Readiness,
    /// Hands the running parts a new configuration (what the file follower sends, or a test).
    pub config_updates: tokio::sync::watch::Sender<Arc<Config>>,
    tasks: JoinSet<(&'static str, Result<(), BoxError>)>,
}

impl RunningService {
    /// Waits until shutdown is triggered or a task fails, then drains everything within `grace`
    /// (plus a small margin). Returns the first failure, if any.
    pub async fn wait(mut self, grace: Duration) -> Result<(), BoxError> {
        let mut failure: Option<BoxError> = None;
        tokio::select! {
            () = self.shutdown.wait() => {}
            Some(joined) = self.tasks.join_next() => {
                failure = task_failure(joined);
                if failure.is_none() && !self.shutdown.is_triggered() {
                    tracing::warn!(service = self.kind.name(), "a task ended before shutdown; stopping");
                }
            }
        }
        self.readiness.set_accepting(false);
        self.shutdown.trigger();

        let drain = async {
            while let Some(joined) = self.tasks.join_next().await {
                if let Some(err) = task_failure(joined) {
                    failure.get_or_insert(err);
                }
            }
        };
        let margin = Duration::from_millis(500);
        if tokio::time::timeout(grace + margin, drain).await.is_err() {
            tracing::warn!(
                service = self.kind.name(),
                "tasks still running after the grace period; aborting them"
            );
            self.tasks.abort_all();
        }
        match failure {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    /// Triggers shutdown and waits for the drain.
    pub async fn stop(self, grace: Duration) -> Result<(), BoxError> {
        self.shutdown.trigger();
        self.wait(grace).await
    }
}

fn task_failure(
    joined: Result<(&'static str, Result<(), BoxError>), tokio::task::JoinError>,
) -> Option<BoxError> {
    match joined {
        Ok((_, Ok(()))) => None,
        Ok((name, Err(err))) => {
            tracing::error!(task = name, error = %err, "task failed");
            Some(format!("{name}: {err}").into())
        }
        Err(err) if err.is_cancelled() => None,
        Err(err) => {
            tracing::error!(error = %err, "task panicked");
            Some(format!("task panicked: {err}").into())
        }
    }
}

/// Binds the service's listeners (port 0 picks a free port), builds its parts and starts them.
/// Does not install signal handlers or telemetry: [`run_main`] does that for binaries, tests
/// need neither.
pub async fn start<F, Fut>(
    kind: ServiceKind,
    config: Config,
    shutdown: Shutdown,
    build: F,
) -> Result<RunningService, BoxError>
where
    F: FnOnce(ServiceContext) -> Fut,
    Fut: Future<Output = Result<ServiceParts, BoxError>>,
{
    let grpc_listener = match kind.grpc_addr(&config) {
        Some(addr) => Some(bind(addr, kind.grpc_key().unwrap_or("grpc")).await?),
        None => None,
    };
    let admin_listener = bind(kind.admin_addr(&config), "admin").await?;

    // Report the bound addresses (they differ from the config when it asked for port 0).
    let mut config = config;
    let grpc_addr = grpc_listener
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()?;
    let admin_addr = admin_listener.local_addr()?;
    kind.set_addrs(&mut config, grpc_addr, Some(admin_addr));

    let metrics = prometheus::install(kind.name())?;
    metrics::gauge!("tta_runtime_worker_threads")
        .set(tokio::runtime::Handle::current().metrics().num_workers() as f64);
    let readiness = Readiness::new();
    let config = Arc::new(config);
    let (config_updates, config_changes) = tokio::sync::watch::channel(config.clone());
    let context = ServiceContext {
        kind,
        config,
        config_changes,
        shutdown: shutdown.clone(),
        readiness: readiness.clone(),
        metrics: metrics.clone(),
    };
    let grace = context.config.server.shutdown_grace;
    let parts = build(context).await?;

    let mut tasks = JoinSet::new();
    let mut admin_router = admin::router(kind.name(), metrics.clone(), readiness.clone());
    if let Some(extra) = parts.admin_routes {
        admin_router = admin_router.merge(extra);
    }
    {
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let result = admin::serve(admin_listener, admin_router, shutdown)
                .await
                .map_err(BoxError::from);
            ("admin-http", result)
        });
    }
    if let (Some(server), Some(listener)) = (parts.grpc, grpc_listener) {
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let result = server
                .serve(listener, shutdown, grace)
                .await
                .map_err(BoxError::from);
            ("grpc", result)
        });
    }
    {
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            prometheus::run_upkeep(metrics, shutdown).await;
            ("metrics-upkeep", Ok(()))
        });
    }
    for task in parts.background {
        let name = task.name;
        let future = task.future;
        tasks.spawn(async move { (name, future.await) });
    }
    readiness.set_accepting(true);
    tracing::info!(service = kind.name(), grpc = ?grpc_addr, admin = %admin_addr, "service ready");

    Ok(RunningService {
        kind,
        grpc_addr,
        admin_addr,
        shutdown,
        readiness,
        config_updates,
        tasks,
    })
}

async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener, BoxError> {
    TcpListener::bind(addr)
        .await
        .map_err(|err| format!("cannot listen on {addr} ({what}): {err}").into())
}

/// The whole life of a service binary. Exit codes: 0 after a clean shutdown, 2 for bad
/// configuration, 1 for any other failure.
pub fn run_main<F, Fut>(kind: ServiceKind, args: ServiceArgs, build: F) -> ExitCode
where
    F: FnOnce(ServiceContext) -> Fut,
    Fut: Future<Output = Result<ServiceParts, BoxError>>,
{
    let config = match config::load(&args.config, |config| {
        kind.set_addrs(config, args.grpc_addr, args.admin_addr)
    }) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("{}: {err}", kind.name());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if args.config.dump_config {
        print!("{}", config::dump(&config));
        return ExitCode::SUCCESS;
    }
    // One thread needs no work stealing: a current-thread runtime wakes its tasks without
    // crossing threads.
    let mut builder = match config.server.worker_threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        0 => tokio::runtime::Builder::new_multi_thread(),
        threads => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(threads);
            builder
        }
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("{}: cannot start the async runtime: {err}", kind.name());
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let file = args.config.config.clone();
    let reload = move || {
        config::load(&args.config, |config| {
            kind.set_addrs(config, args.grpc_addr, args.admin_addr)
        })
    };
    runtime.block_on(run_until_signal(
        kind,
        config,
        file.map(|file| (file, reload)),
        build,
    ))
}

/// `follow` names the configuration file and how to load it again, so changes reach the
/// running service (none when it started from defaults and the environment alone).
async fn run_until_signal<F, Fut, L>(
    kind: ServiceKind,
    config: Config,
    follow: Option<(std::path::PathBuf, L)>,
    build: F,
) -> ExitCode
where
    F: FnOnce(ServiceContext) -> Fut,
    Fut: Future<Output = Result<ServiceParts, BoxError>>,
    L: Fn() -> Result<Config, config::Error> + Send + 'static,
{
    let telemetry = match telemetry::init(kind.name(), &config.telemetry) {
        Ok(guard) => guard,
        Err(err) => {
            eprintln!("{}: {err}", kind.name());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let redacted = config.redacted();
    tracing::info!(
        service = kind.name(),
        version = env!("CARGO_PKG_VERSION"),
        config = %serde_json::to_string(&redacted).unwrap_or_default(),
        "starting"
    );

    let shutdown = Shutdown::new();
    let grace = config.server.shutdown_grace;
    let running = match start(kind, config, shutdown.clone(), build).await {
        Ok(running) => running,
        Err(err) => {
            tracing::error!(service = kind.name(), error = %err, "cannot start");
            telemetry.shutdown(TELEMETRY_FLUSH_TIMEOUT);
            if err.downcast_ref::<ConfigFileError>().is_some() {
                eprintln!("{}: invalid configuration: {err}", kind.name());
                return ExitCode::from(EXIT_CONFIG);
            }
            return ExitCode::from(EXIT_FAILURE);
        }
    };

    if let Some((file, load)) = follow {
        tokio::spawn(crate::config_watch::follow_file(
            file,
            crate::config_watch::POLL_INTERVAL,
            load,
            running.config_updates.clone(),
            shutdown.clone(),
        ));
    }
    let watcher = {
        let shutdown = shutdown.clone();
        let readiness = running.readiness.clone();
        tokio::spawn(async move {
            tokio::select! {
                signal = shutdown::termination_signal() => {
                    match signal {
                        Ok(name) => tracing::info!(signal = name, "shutting down"),
                        Err(err) => tracing::error!(error = %err, "cannot listen for signals; shutting down"),
                    }
                    readiness.set_accepting(false);
                    shutdown.trigger();
                }
                () = shutdown.wait() => {}
            }
        })
    };

    let outcome = running.wait(grace).await;
    watcher.abort();
    let code = match outcome {
        Ok(()) => {
            tracing::info!(service = kind.name(), "stopped");
            ExitCode::SUCCESS
        }
        Err(err) => {
            tracing::error!(service = kind.name(), error = %err, "stopped after a failure");
            ExitCode::from(EXIT_FAILURE)
        }
    };
    telemetry.shutdown(TELEMETRY_FLUSH_TIMEOUT);
    code
}
