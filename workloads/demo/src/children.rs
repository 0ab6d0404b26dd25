//! Child processes: one per pipeline stage, with their output kept for when things go wrong.
//!
//! Output goes to a log file per stage and the last lines stay in memory, so a stage that dies
//! can be reported with what it said last. Children are killed if the launcher itself goes
//! away (`kill_on_drop`), so no stage outlives the demo.

use anyhow::{bail, Context};
use odds_testkit::http_get;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio::sync::watch;

/// Lines of output kept in memory per child.
const KEPT_LINES: usize = 40;

/// How to start one stage.
#[derive(Debug, Clone)]
pub struct ChildSpec {
    pub name: &'static str,
    pub binary: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Where its `/healthz`, `/readyz` and `/metrics` answer.
    pub ops_addr: SocketAddr,
}

impl ChildSpec {
    /// `LISTEN_ADDR` of the spec, when set and an address.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.env
            .iter()
            .find(|(k, _)| k == odds_contracts::env::LISTEN_ADDR)
            .and_then(|(_, v)| v.parse().ok())
    }

    /// Sets (or adds) one environment variable.
    pub fn set_env(&mut self, name: &str, value: String) {
        match self.env.iter_mut().find(|(k, _)| k == name) {
            Some(entry) => entry.1 = value,
            None => self.env.push((name.to_owned(), value)),
        }
    }
}

type Lines = Arc<Mutex<VecDeque<String>>>;

/// A running stage.
pub struct ChildProcess {
    pub name: &'static str,
    pub pid: u32,
    pub ops_addr: SocketAddr,
    /// Where it serves its clients (`LISTEN_ADDR`), for stages that have any.
    pub listen_addr: Option<SocketAddr>,
    lines: Lines,
    exit: watch::Receiver<Option<ExitStatus>>,
}

impl ChildProcess {
    pub fn spawn(spec: ChildSpec, log_dir: &Path) -> anyhow::Result<ChildProcess> {
        let mut child = Command::new(&spec.binary)
            .args(&spec.args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} ({})", spec.name, spec.binary.display()))?;
        let pid = child.id().context("child has no pid")?;
        let lines: Lines = Arc::default();
        let log_path = log_dir.join(format!("{}.log", spec.name));
        if let Some(out) = child.stdout.take() {
            tokio::spawn(keep_output(out, lines.clone(), log_path.clone()));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(keep_output(err, lines.clone(), log_path));
        }
        let (exit_tx, exit) = watch::channel(None);
        tokio::spawn(async move {
            let status = child.wait().await;
            let _ = exit_tx.send(status.ok());
        });
        Ok(ChildProcess {
            name: spec.name,
            pid,
            ops_addr: spec.ops_addr,
            listen_addr: spec.listen_addr(),
            lines,
            exit,
        })
    }

    /// The exit status, if it has exited.
    pub fn exited(&self) -> Option<ExitStatus> {
        *self.exit.borrow()
    }

    /// Resolves when the child exits.
    pub async fn wait_exit(&self) -> Option<ExitStatus> {
        let mut exit = self.exit.clone();
        let result = exit.wait_for(Option::is_some).await;
        result.ok().and_then(|s| *s)
    }

    /// The last lines it printed.
    pub fn last_lines(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    /// Waits until `/readyz` answers 200, failing early if the child exits.
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                bail!("{} exited ({status}) before becoming ready", self.name);
            }
            if matches!(http_get(self.ops_addr, "/readyz").await, Ok(r) if r.status == 200) {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{} not ready after {timeout:?}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub async fn terminate(&self, grace: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.exited() {
            return Some(status);
        }
        signal(self.pid, "TERM").await;
        match tokio::time::timeout(grace, self.wait_exit()).await {
            Ok(status) => status,
            Err(_) => {
                tracing::warn!(name = self.name, "did not stop in time; killing");
                signal(self.pid, "KILL").await;
                self.wait_exit().await
            }
        }
    }

    /// SIGKILL: no chance to clean up, like a crash or an OOM kill.
    pub async fn kill(&self) -> Option<ExitStatus> {
        if let Some(status) = self.exited() {
            return Some(status);
        }
        signal(self.pid, "KILL").await;
        self.wait_exit().await
    }

    /// Resident memory (MiB) and CPU time (s) so far, from /proc.
    pub fn usage(&self) -> Option<(f64, f64)> {
        let rss = odds_testkit::usage::process_rss_mib(self.pid)?;
        let cpu = odds_testkit::usage::process_cpu_seconds(self.pid)?;
        Some((rss, cpu))
    }
}

async fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .await;
}

async fn keep_output(stream: impl AsyncRead + Unpin, lines: Lines, log_path: PathBuf) {
    let mut log = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .await
        .ok();
    let mut reader = BufReader::new(stream).lines();
    while let Ok(Some(line)) = reader.next_line().await {
        if let Some(file) = log.as_mut() {
            let _ = file.write_all(format!("{line}\n").as_bytes()).await;
        }
        let mut kept = lines.lock().unwrap_or_else(PoisonError::into_inner);
        if kept.len() == KEPT_LINES {
            kept.pop_front();
        }
        kept.push_back(line);
    }
}
