//! A pod's network: its own network namespace, as a kubelet gives every pod.
//!
//! Without it every workload would share one port space (all of them serve `:9000`) and a
//! process listening on loopback only would pass a probe that a kubelet, which probes the pod
//! IP, would fail. The namespace is held open by a `sleep` started in it; sockets inside it
//! are made on a fresh thread that enters it (`setns` moves only the calling thread), so the
//! test process itself can listen and connect on both sides: pod and host.

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The address a pod is reached at inside its own namespace: not 127.0.0.1, so a process
/// that listens on loopback only is not reachable there, as on a node.
pub const POD_IP: [u8; 4] = [127, 1, 0, 1];

pub struct NetNs {
    holder: Child,
    ns: File,
}

impl NetNs {
    /// A new namespace with its loopback up (all of 127.0.0.0/8 is local on it).
    pub fn new() -> Result<NetNs> {
        let mut holder = Command::new("unshare")
            .args([
                "--net",
                "--",
                "sh",
                "-c",
                "ip link set lo up && echo up && exec sleep 3600",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("unshare --net (util-linux) must be installed")?;
        let mut line = String::new();
        if let Some(out) = holder.stdout.take() {
            BufReader::new(out).read_line(&mut line)?;
        }
        if line.trim() != "up" {
            let _ = holder.kill();
            bail!("could not create a network namespace with its loopback up (needs root and iproute2)");
        }
        let ns = File::open(format!("/proc/{}/ns/net", holder.id()))?;
        Ok(NetNs { holder, ns })
    }

    /// `/proc/PID/ns/net` of the namespace, for `nsenter --net=`.
    pub fn path(&self) -> String {
        format!("/proc/{}/ns/net", self.holder.id())
    }

    /// A listener on `addr` inside the namespace.
    pub fn listen(&self, addr: SocketAddr) -> Result<tokio::net::TcpListener> {
        let listener = inside(self.ns.try_clone()?, move || {
            let listener = std::net::TcpListener::bind(addr)?;
            listener.set_nonblocking(true)?;
            Ok(listener)
        })?;
        Ok(tokio::net::TcpListener::from_std(listener)?)
    }

    /// A connection to `addr` made from inside the namespace.
    pub async fn connect(&self, addr: SocketAddr) -> Result<tokio::net::TcpStream> {
        let ns = self.ns.try_clone()?;
        let stream = tokio::task::spawn_blocking(move || {
            inside(ns, move || {
                let stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
                stream.set_nonblocking(true)?;
                Ok(stream)
            })
        })
        .await?
        .with_context(|| format!("connecting to {addr}"))?;
        Ok(tokio::net::TcpStream::from_std(stream)?)
    }
}

/// Runs `make` on a new thread that entered namespace `ns`, and returns what it made.
fn inside<T: Send + 'static>(
    ns: File,
    make: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T> {
    let thread = std::thread::spawn(move || {
        rustix::thread::move_into_link_name_space(
            ns.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )?;
        make()
    });
    match thread.join() {
        Ok(made) => Ok(made?),
        Err(_) => bail!("the thread inside the network namespace panicked"),
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}
