//! Shared harness of the tool registry's integration tests: a private redis-server, registries
//! running in-process on ephemeral ports, a test executor that counts its executions, and spec
//! builders.

// Test helpers: a failure here is a failed test, so they may unwrap.
#![allow(dead_code, clippy::unwrap_used)]

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use serde_json::json;
use tonic::transport::Channel;
use tta_proto::v1::{
    self as pb, tool_executor_server::ToolExecutor, tool_executor_server::ToolExecutorServer,
    tool_registry_client::ToolRegistryClient,
};
use tta_runtime::service::{RunningService, ServiceKind};
use tta_testkit::{RedisServer, start_in_process, test_config};
use tta_types::Config;

pub const WAIT: Duration = Duration::from_secs(10);

pub struct Harness {
    pub redis: RedisServer,
    pub registries: Vec<RunningService>,
    pub config: Config,
}

impl Harness {
    pub async fn start(test: &str) -> anyhow::Result<Self> {
        Self::start_adjusted(test, 1, |_| {}).await
    }

    /// `replicas` registries sharing one Redis and one key prefix.
    pub async fn start_adjusted(
        test: &str,
        replicas: usize,
        adjust: impl FnOnce(&mut Config),
    ) -> anyhow::Result<Self> {
        let redis = RedisServer::start()?;
        let mut config = test_config(&redis.url(), test);
        adjust(&mut config);
        let mut registries = Vec::new();
        for _ in 0..replicas {
            let running = start_in_process(
                ServiceKind::ToolRegistry,
                config.clone(),
                tta_tool_registry::build,
            )
            .await
            .map_err(|err| anyhow::anyhow!(err))?;
            registries.push(running);
        }
        Ok(Self {
            redis,
            registries,
            config,
        })
    }

    pub fn endpoint(&self, replica: usize) -> String {
        format!("http://{}", self.registries[replica].grpc_addr.unwrap())
    }

    pub async fn client(&self, replica: usize) -> ToolRegistryClient<Channel> {
        ToolRegistryClient::connect(self.endpoint(replica))
            .await
            .unwrap()
    }

    pub async fn stop(self) {
        for registry in self.registries {
            registry.stop(Duration::from_secs(1)).await.unwrap();
        }
    }
}

/// An owned tool with one integer parameter `n`.
pub fn owned_spec(name: &str, version: &str) -> pb::ToolSpec {
    pb::ToolSpec {
        name: name.into(),
        version: version.into(),
        description: format!("test tool {name}"),
        parameters_schema: json!({
            "type": "object",
            "properties": {"n": {"type": "integer"}},
            "required": ["n"]
        })
        .to_string(),
        owner: Some(pb::AgentId {
            agent_type: "wba".into(),
            instance: "w1".into(),
        }),
        ..Default::default()
    }
}

/// An executor that sleeps `delay`, counts executions and echoes its arguments.
#[derive(Debug, Clone, Default)]
pub struct CountingExecutor {
    pub executions: Arc<AtomicU64>,
    pub delay: Duration,
}

#[tonic::async_trait]
impl ToolExecutor for CountingExecutor {
    async fn execute_tool(
        &self,
        request: tonic::Request<pb::ExecuteToolRequest>,
    ) -> Result<tonic::Response<pb::ExecuteToolResponse>, tonic::Status> {
        self.executions.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        let request = request.into_inner();
        Ok(tonic::Response::new(pb::ExecuteToolResponse {
            result_json: json!({"echo": serde_json::from_str::<serde_json::Value>(&request.args_json).unwrap()}).to_string(),
        }))
    }
}

/// Serves `executor` on a loopback port; returns its endpoint.
pub async fn serve_executor(executor: CountingExecutor) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(ToolExecutorServer::new(executor))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    format!("http://{addr}")
}
