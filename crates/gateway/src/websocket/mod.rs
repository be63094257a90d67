//! `GET /ws` on the admin port: turns over a WebSocket, for browsers and other clients that
//! cannot speak gRPC (R7.5). Text frames carry JSON ([`protocol`]); each connection is served
//! by [`connection`]. A turn takes exactly the path of `StreamTurn`
//! ([`OrchestratorService::start_turn`]), and because runs are durable and idempotent by
//! `turn_id`, a client whose connection dropped — or whose gateway restarted — reconnects and
//! resumes the turn by its ids to get the one result.

mod connection;
pub mod protocol;

use std::sync::Arc;

use axum::{
    Router,
    extract::{State, WebSocketUpgrade},
    response::Response,
    routing::get,
};
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use tta_runtime::Shutdown;
use tta_types::config::WebSocketConfig;

use crate::orchestrator::OrchestratorService;

/// What every connection of this gateway shares.
#[derive(Debug, Clone)]
struct Shared {
    service: OrchestratorService,
    limits: Arc<WebSocketConfig>,
    shutdown: Shutdown,
    connections: TaskTracker,
}

/// The route, and the task that lets open connections say goodbye when the gateway stops.
#[derive(Debug)]
pub struct Endpoint {
    routes: Router,
    connections: TaskTracker,
    shutdown: Shutdown,
}

impl Endpoint {
    pub fn new(service: OrchestratorService, limits: WebSocketConfig, shutdown: Shutdown) -> Self {
        let connections = TaskTracker::new();
        let routes = Router::new().route("/ws", get(upgrade)).with_state(Shared {
            service,
            limits: Arc::new(limits),
            shutdown: shutdown.clone(),
            connections: connections.clone(),
        });
        Self {
            routes,
            connections,
            shutdown,
        }
    }

    /// `GET /ws`, to merge into the admin router.
    pub fn routes(&self) -> Router {
        self.routes.clone()
    }

    /// Completes, once shutdown has tripped, when every connection has sent its close frame
    /// (the process drain bounds how long). Run as a service task: the admin server does not
    /// track upgraded connections, so without it the process could exit mid-goodbye.
    pub fn drain(&self) -> impl Future<Output = ()> + Send + 'static {
        let connections = self.connections.clone();
        let shutdown = self.shutdown.clone();
        async move {
            shutdown.wait().await;
            connections.close();
            connections.wait().await;
        }
    }
}

async fn upgrade(State(shared): State<Shared>, upgrade: WebSocketUpgrade) -> Response {
    let limit = usize::try_from(shared.limits.max_message_bytes.bytes()).unwrap_or(usize::MAX);
    let connections = shared.connections.clone();
    // One id per connection, so its log lines (opened, closed, why) read together.
    let span = tracing::info_span!("websocket", connection = %uuid::Uuid::now_v7().simple());
    upgrade
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_failed_upgrade(|err| tracing::debug!(error = %err, "websocket upgrade failed"))
        .on_upgrade(move |socket| {
            connections.track_future(connection::serve(socket, shared).instrument(span))
        })
}
