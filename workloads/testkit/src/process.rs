//! Small helpers for running server binaries: free ports, locating binaries, waiting.

use crate::{Result, TestkitError};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// A TCP port on 127.0.0.1 that was free a moment ago. The OS hands out ephemeral ports in
/// rotation, so the tiny window before the server binds it is good enough for tests.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|source| TestkitError::Io {
        what: "binding a probe socket".into(),
        source,
    })?;
    let port = listener
        .local_addr()
        .map_err(|source| TestkitError::Io {
            what: "reading the probe socket's address".into(),
            source,
        })?
        .port();
    Ok(port)
}

/// A listener on a free loopback port and its address; `what` names it in errors (a test
/// server of this kit: the echo peer, the OTLP receiver).
pub(crate) async fn bind_loopback(
    what: &str,
) -> Result<(tokio::net::TcpListener, std::net::SocketAddr)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|source| TestkitError::Io {
            what: format!("binding {what}"),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| TestkitError::Io {
        what: format!("reading {what}'s address"),
        source,
    })?;
    Ok((listener, addr))
}

/// Finds a server binary on PATH or in the usual Debian location for versioned servers.
pub(crate) fn find_binary(name: &str) -> Result<PathBuf> {
    let from_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name));
    let debian = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("bin").join(name));
    from_path
        .chain(debian)
        .find(|p| p.is_file())
        .ok_or_else(|| {
            TestkitError::Setup(format!(
                "`{name}` not found on PATH or under /usr/lib/postgresql/*/bin; \
                 install it (Debian: apt-get install postgresql redis-server)"
            ))
        })
}

/// Runs a command to completion, turning a non-zero exit into an error with its output.
pub(crate) fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let output = cmd.output().map_err(|source| TestkitError::Io {
        what: what.into(),
        source,
    })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(TestkitError::Setup(format!(
            "{what} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )))
    }
}

/// Polls `ready` until it returns true or `timeout` passes.
pub(crate) async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut ready: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ready().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Err(TestkitError::Setup(format!(
        "{what} not ready after {timeout:?}"
    )))
}

/// True when this process runs as root (servers like Postgres refuse to run as root).
pub(crate) fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs `command` with a standard output whose reader is already gone (like `| head -1` once
/// `head` has exited), so its first write fails with EPIPE; stderr is captured. For checking
/// that a binary ends quietly instead of panicking.
pub fn output_with_closed_stdout(command: &mut Command) -> Result<std::process::Output> {
    let io = |what: &str| {
        let what = what.to_owned();
        move |source| TestkitError::Io { what, source }
    };
    // A socket pair, not a pipe: `std::io::pipe` is newer than the workspace's Rust version.
    // Writing to a stream socket whose peer is closed fails with EPIPE just the same.
    let (writer, reader) =
        std::os::unix::net::UnixStream::pair().map_err(io("creating a socket pair"))?;
    drop(reader);
    command
        .stdout(std::process::Stdio::from(std::os::fd::OwnedFd::from(
            writer,
        )))
        .stderr(std::process::Stdio::piped())
        .output()
        .map_err(io("running the command"))
}
