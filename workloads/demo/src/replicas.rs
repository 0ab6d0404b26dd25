//! Replicas of a stage, started and stopped the way a Deployment's pods are.
//!
//! A rolling update starts the new pod, waits until it is ready, and only then stops the old
//! one (SIGTERM, SIGKILL after the grace period); a scale step adds or removes pods the same
//! way. The fault run drives these steps one at a time, so it can act between them (take a
//! stopping pod out of the endpoints its clients use, as a Service does).
//!
//! Every replica gets its own ops port, as every pod has its own IP; odds-service replicas
//! also get their own client port. The supplier keeps its address: ingest reaches it by URL,
//! as it would reach a supplier's fixed endpoint.

use crate::children::ChildProcess;
use crate::launcher::{Launcher, READY_TIMEOUT, STOP_GRACE};
use anyhow::Context;
use odds_contracts::env;
use odds_testkit::free_port;
use std::net::SocketAddr;
use std::process::ExitStatus;

/// Stages whose replicas each serve clients on an address of their own.
const OWN_CLIENT_PORT: [&str; 1] = ["odds-service"];

impl Launcher {
    /// The running replicas of `name`, oldest first.
    pub fn replicas(&self, name: &str) -> Vec<&ChildProcess> {
        self.children.iter().filter(|c| c.name == name).collect()
    }

    /// The pid of the oldest running replica of `name`.
    pub fn oldest(&self, name: &str) -> anyhow::Result<u32> {
        self.replicas(name)
            .first()
            .map(|c| c.pid)
            .with_context(|| format!("no running replica of {name}"))
    }

    /// Where odds-service's replicas serve clients, oldest first.
    pub fn service_addrs(&self) -> Vec<SocketAddr> {
        self.replicas("odds-service")
            .iter()
            .filter_map(|c| c.listen_addr)
            .collect()
    }

    /// Starts one more replica of `name` and waits until it is ready (a new pod). Returns its
    /// pid. A replica that fails to become ready is stopped and the error returned.
    pub async fn start_replica(&mut self, name: &str) -> anyhow::Result<u32> {
        let mut spec = self
            .specs
            .iter()
            .find(|s| s.name == name)
            .with_context(|| format!("no stage named {name}"))?
            .clone();
        spec.ops_addr = ([127, 0, 0, 1], free_port()?).into();
        spec.set_env(env::HTTP_ADDR, spec.ops_addr.to_string());
        if OWN_CLIENT_PORT.contains(&name) {
            let listen: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
            spec.set_env(env::LISTEN_ADDR, listen.to_string());
        }
        let child = ChildProcess::spawn(spec, self.log_dir.path())?;
        if let Err(error) = child.wait_ready(READY_TIMEOUT).await {
            let lines = child.last_lines();
            child.terminate(STOP_GRACE).await;
            return Err(error.context(format!(
                "new {name} replica; last output:\n{}",
                lines.join("\n")
            )));
        }
        let pid = child.pid;
        // Beside its stage's other replicas: `stop` goes through the stages in reverse start
        // order so each drains what the one before it handed over.
        let at = self
            .children
            .iter()
            .rposition(|c| c.name == name)
            .map_or(self.children.len(), |i| i + 1);
        self.children.insert(at, child);
        Ok(pid)
    }

    /// Stops the replica `pid` as the kubelet stops a pod: SIGTERM, SIGKILL after the grace
    /// period. It is no longer one of the stage's replicas afterwards.
    pub async fn stop_replica(&mut self, pid: u32) -> anyhow::Result<Option<ExitStatus>> {
        let child = self.take_replica(pid)?;
        let status = child.terminate(STOP_GRACE).await;
        self.after_removal();
        Ok(status)
    }

    /// Kills the replica `pid` with SIGKILL (a crash, an OOM kill).
    pub async fn kill_replica(&mut self, pid: u32) -> anyhow::Result<Option<ExitStatus>> {
        let child = self.take_replica(pid)?;
        let status = child.kill().await;
        self.after_removal();
        Ok(status)
    }

    /// A rolling update of a one-replica stage: the new replica first, then the old one
    /// stopped. Returns the new replica's pid.
    pub async fn roll(&mut self, name: &str) -> anyhow::Result<u32> {
        let old = self.oldest(name)?;
        let new = self.start_replica(name).await?;
        self.stop_replica(old).await?;
        Ok(new)
    }

    fn take_replica(&mut self, pid: u32) -> anyhow::Result<ChildProcess> {
        let index = self
            .children
            .iter()
            .position(|c| c.pid == pid)
            .with_context(|| format!("no running stage with pid {pid}"))?;
        Ok(self.children.remove(index))
    }

    /// Keeps `service_addr` naming a running odds-service replica.
    fn after_removal(&mut self) {
        if let Some(addr) = self.service_addrs().first() {
            self.service_addr = *addr;
        }
    }
}
