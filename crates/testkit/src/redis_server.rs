//! A private `redis-server` per test: its own port, its own temp directory, optionally with an
//! append-only file, and the power to kill and restart it for fault tests.

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::free_port;

#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    aof: bool,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server that keeps nothing on disk.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(false)
    }

    /// Starts a server with an append-only file, so data survives [`RedisServer::kill`] +
    /// [`RedisServer::restart`].
    pub fn start_with_aof() -> anyhow::Result<Self> {
        Self::start_with(true)
    }

    fn start_with(aof: bool) -> anyhow::Result<Self> {
        let mut last_error = None;
        // A free port can be taken between the probe and redis binding it; try a few.
        for _ in 0..5 {
            let mut server = Self {
                port: free_port()?,
                dir: tempfile::Builder::new().prefix("tta-redis-").tempdir()?,
                aof,
                child: None,
            };
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(err) => last_error = Some(err),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("redis-server did not start")))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILL: the server dies at once, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and directory (the AOF, if any, is replayed).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.spawn() {
                Ok(()) => return Ok(()),
                // The old socket may linger briefly; the port is ours, so keep trying.
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(err) => return Err(err),
            }
        }
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = self.dir.path().join("redis.log");
        let mut command = Command::new("redis-server");
        command
            .arg("--port")
            .arg(self.port.to_string())
            .args([
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--daemonize",
                "no",
                "--protected-mode",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .args(["--appendonly", if self.aof { "yes" } else { "no" }])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = command.spawn().context(
            "cannot run redis-server (is it installed? `apt-get install redis-server`, or `make test` installs it)",
        )?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if ping(self.port) {
                self.child = Some(child);
                return Ok(());
            }
            if let Ok(Some(status)) = child.try_wait() {
                bail!("redis-server exited with {status}: {}", tail(&log));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "redis-server did not answer PING within 10s: {}",
                    tail(&log)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(5).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

/// How many times the Redis behind `connection` has run `command` (lower case, e.g. `hsetnx`),
/// commands inside scripts included, from `INFO commandstats`; 0 when it never ran.
pub async fn command_calls(
    connection: &mut redis::aio::MultiplexedConnection,
    command: &str,
) -> anyhow::Result<u64> {
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(connection)
        .await?;
    let prefix = format!("cmdstat_{command}:calls=");
    Ok(stats
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .and_then(|calls| calls.parse().ok())
        .unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_and_get(port: u16, value: &str) -> String {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
        let mut connection = client.get_connection().unwrap();
        if !value.is_empty() {
            let _: () = redis::cmd("SET")
                .arg("k")
                .arg(value)
                .query(&mut connection)
                .unwrap();
        }
        redis::cmd("GET")
            .arg("k")
            .query::<Option<String>>(&mut connection)
            .unwrap()
            .unwrap_or_default()
    }

    #[test]
    fn a_killed_server_with_aof_keeps_its_data_across_restart() {
        let mut server = RedisServer::start_with_aof().unwrap();
        assert_eq!(set_and_get(server.port(), "kept"), "kept");
        server.kill();
        assert!(!server.is_running());
        assert!(!ping(server.port()));
        server.restart().unwrap();
        assert!(server.is_running());
        assert_eq!(set_and_get(server.port(), ""), "kept");
    }

    #[test]
    fn a_server_without_aof_starts_empty_after_restart() {
        let mut server = RedisServer::start().unwrap();
        set_and_get(server.port(), "lost");
        server.restart().unwrap();
        assert_eq!(set_and_get(server.port(), ""), "");
    }
}
