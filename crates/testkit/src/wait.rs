//! Waiting with a deadline: poll a condition until it holds instead of sleeping a fixed time.

use std::time::Duration;

use anyhow::{Context, bail};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// Polls `condition` every 20 ms until it returns `Some`, or fails after `timeout` with `what`.
pub async fn wait_until<T, F, Fut>(
    timeout: Duration,
    what: &str,
    mut condition: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = condition().await {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the admin server at `admin` answers `/ready` with 200: the service serves and
/// its dependencies (Redis; for the gateway, its stored workflows) are there.
pub async fn wait_ready(admin: std::net::SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    wait_until(timeout, &format!("{admin} to be ready"), || async move {
        matches!(http_get(admin, "/ready").await, Ok((200, _))).then_some(())
    })
    .await
}

/// The status and JSON report of `/ready` (which check failed, and why); `None` while the
/// admin server does not answer.
pub async fn ready_report(admin: std::net::SocketAddr) -> Option<(u16, serde_json::Value)> {
    let (status, body) = http_get(admin, "/ready").await.ok()?;
    Some((status, serde_json::from_str(&body).ok()?))
}

/// Asks a gRPC server for the health of `service` ("" = the whole server).
pub async fn grpc_health(endpoint: &str, service: &str) -> anyhow::Result<ServingStatus> {
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await
        .with_context(|| format!("connecting to {endpoint}"))?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await?;
    Ok(response.into_inner().status())
}

/// A plain HTTP/1.1 GET against a loopback admin server; returns status code and body.
/// Enough for `/health`, `/ready` and `/metrics`, without an HTTP client dependency.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8(raw).context("response is not UTF-8")?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("response without header end")?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .context("response without status code")?;
    let chunked = head.lines().any(|line| {
        line.to_ascii_lowercase().starts_with("transfer-encoding:")
            && line.to_ascii_lowercase().contains("chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    loop {
        let (size_line, rest) = body.split_once("\r\n").context("truncated chunk header")?;
        let size = usize::from_str_radix(size_line.trim(), 16).context("bad chunk size")?;
        if size == 0 {
            return Ok(out);
        }
        let chunk = rest.get(..size).context("truncated chunk")?;
        out.push_str(chunk);
        body = rest.get(size + 2..).context("truncated chunk trailer")?;
    }
}
