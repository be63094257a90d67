//! Service binaries as real processes: started with a clean `TTA_` environment, their output
//! captured to a file for the failure message, signalled like an operator would.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::Duration,
};

use anyhow::{Context, bail};
use nix::{sys::signal::Signal, unistd::Pid};

/// Where cargo put a workspace binary: next to the test executable's `deps` directory.
pub fn binary_path(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(|deps| {
            if deps.ends_with("deps") {
                deps.parent()
            } else {
                Some(deps)
            }
        })
        .context("cannot locate the cargo target directory")?;
    let path = profile_dir.join(name);
    if !path.exists() {
        bail!(
            "{} not found; build the binaries first (`cargo build --workspace --bins`, as `make test` does)",
            path.display()
        );
    }
    Ok(path)
}

#[derive(Debug)]
pub struct ServiceProcess {
    name: String,
    child: Child,
    log_path: PathBuf,
    _log_dir: tempfile::TempDir,
}

impl ServiceProcess {
    /// Starts workspace binary `name` with `args` and `env`. Inherited `TTA_*` and `OTEL_*`
    /// variables are removed so the host's settings cannot leak into a test.
    pub fn spawn(name: &str, args: &[String], env: &[(&str, String)]) -> anyhow::Result<Self> {
        let binary = binary_path(name)?;
        let log_dir = tempfile::Builder::new().prefix("tta-proc-").tempdir()?;
        let log_path = log_dir.path().join(format!("{name}.log"));
        let log = File::create(&log_path)?;
        let mut command = Command::new(&binary);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for (key, _) in std::env::vars() {
            if key.starts_with("TTA_") || key.starts_with("OTEL_") || key == "RUST_LOG" {
                command.env_remove(key);
            }
        }
        command.env("TTA_TELEMETRY__LOG_FORMAT", "compact");
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log_path,
            _log_dir: log_dir,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        let pid = i32::try_from(self.child.id()).context("pid out of range")?;
        nix::sys::signal::kill(Pid::from_raw(pid), signal)?;
        Ok(())
    }

    /// SIGTERM, as Kubernetes sends it.
    pub fn terminate(&self) -> anyhow::Result<()> {
        self.signal(Signal::SIGTERM)
    }

    /// SIGKILL: a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The exit status if the process has ended.
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits up to `timeout` for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "{} still running after {timeout:?}; log:\n{}",
                    self.name,
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Everything the process printed so far.
    /// Waits until it is ready (see [`crate::wait_ready`]); the error carries its output.
    pub async fn wait_ready(
        &self,
        admin: std::net::SocketAddr,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        crate::wait_ready(admin, timeout).await.with_context(|| {
            format!(
                "{} did not get ready; its output:\n{}",
                self.name,
                self.logs()
            )
        })
    }

    pub fn logs(&self) -> String {
        read_log(&self.log_path)
    }
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|err| format!("<cannot read log: {err}>"))
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}
