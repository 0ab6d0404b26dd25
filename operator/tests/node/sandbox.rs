//! The node: the image's root filesystem and binaries, and a container started in them the
//! way a container runtime starts it.
//!
//! `workloads/image/rootfs.sh` builds the root from the base image's Debian packages; here
//! each container gets a private mount namespace in which that root is mounted read-only,
//! the image's binaries sit in `/usr/local/bin`, only the pod's `emptyDir` mounts are
//! writable, `/etc/hosts`, `/etc/hostname`, `/etc/resolv.conf`, `/proc` and `/dev` are the
//! kubelet's, and the command runs under `chroot` as the pod's user with exactly the
//! resolved environment. What fails here (a missing shared library, a wrong user, a write
//! outside a volume) fails on a node.

use crate::kubelet::ContainerPlan;
use crate::netns::NetNs;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// What every binary of the image runs on.
pub struct Node {
    /// The base image's root filesystem (read-only to every container).
    pub root: PathBuf,
    /// Where the binaries the image ships were built.
    pub bin_dir: PathBuf,
    /// The binaries the image ships (the Dockerfile's list).
    pub binaries: Vec<String>,
    work: tempfile::TempDir,
}

/// A file of the repository.
pub fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// The node, or `None` (said loudly) when this process is not root: mount namespaces and
/// `chroot` need it. CI runs as root.
pub fn node() -> Result<Option<Node>> {
    if !rustix::process::geteuid().is_root() {
        eprintln!(
            "\n######## NOT RUN: the node test needs root (mount namespaces, chroot). The image's binaries and the rendered pods were NOT run in the base image. CI runs as root. ########\n"
        );
        return Ok(None);
    }
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_odds-operator"))
        .parent()
        .context("binary directory")?
        .to_path_buf();
    let root = match std::env::var_os("ODDS_ROOTFS") {
        Some(root) => PathBuf::from(root),
        None => build_rootfs(&bin_dir)?,
    };
    if !root.join("lib/x86_64-linux-gnu/libc.so.6").exists() {
        bail!(
            "{} is not a root filesystem built by workloads/image/rootfs.sh",
            root.display()
        );
    }
    let binaries = image_binaries()?;
    for binary in &binaries {
        if !bin_dir.join(binary).exists() {
            bail!(
                "{} is not built in {}: run `cargo build --bins` (make test builds every binary)",
                binary,
                bin_dir.display()
            );
        }
    }
    Ok(Some(Node {
        root,
        bin_dir,
        binaries,
        work: tempfile::tempdir()?,
    }))
}

/// Builds (or reuses) the root filesystem under the target directory.
fn build_rootfs(bin_dir: &Path) -> Result<PathBuf> {
    let target = bin_dir.parent().context("target directory")?;
    let output = Command::new("bash")
        .arg(repo_file("workloads/image/rootfs.sh"))
        .arg(target.join("rootfs"))
        .stderr(Stdio::inherit())
        .output()
        .context("running workloads/image/rootfs.sh")?;
    if !output.status.success() {
        bail!("workloads/image/rootfs.sh failed ({})", output.status);
    }
    let stdout = String::from_utf8(output.stdout)?;
    let root = stdout.lines().last().context("rootfs.sh printed no path")?;
    Ok(PathBuf::from(root))
}

/// The binaries the Dockerfile copies into the image (`for bin in ...; do`).
pub fn image_binaries() -> Result<Vec<String>> {
    let dockerfile = std::fs::read_to_string(repo_file("workloads/image/Dockerfile"))?;
    let line = dockerfile
        .lines()
        .find_map(|l| l.split_once("for bin in ").map(|(_, list)| list))
        .context("the Dockerfile has no `for bin in ...; do` line")?;
    let list = line.split(';').next().unwrap_or_default();
    Ok(list.split_whitespace().map(str::to_string).collect())
}

/// The mounts a runtime makes, then the exec; run as root in a fresh mount namespace.
const MOUNT_SCRIPT: &str = r#"set -eu
root=$1 base=$2 pod=$3 bins=$4; shift 4
mount --bind "$base" "$root"
mount -o remount,bind,ro "$root"
mount -t tmpfs -o mode=755 tmpfs "$root/usr/local/bin"
for b in $SANDBOX_BINARIES; do
  : >"$root/usr/local/bin/$b"
  mount --bind "$bins/$b" "$root/usr/local/bin/$b"
done
mount -o remount,ro "$root/usr/local/bin"
for v in $SANDBOX_WRITABLE; do
  if [ ! -d "$root$v" ]; then echo "sandbox: mountPath $v is not a directory of the image" >&2; exit 97; fi
  mount -t tmpfs -o mode=1777 tmpfs "$root$v"
done
for f in hosts hostname resolv.conf; do mount --bind -o ro "$pod/$f" "$root/etc/$f"; done
mount -t proc proc "$root/proc"
mount -t tmpfs -o mode=755 tmpfs "$root/dev"
for d in null zero random urandom full; do : >"$root/dev/$d"; mount --bind "/dev/$d" "$root/dev/$d"; done
exec "$@"
"#;

/// A started container: its process, and its output in a file.
pub struct Container {
    pub name: String,
    child: Child,
    log: PathBuf,
    /// Where the container's root is mounted inside its mount namespace.
    root: PathBuf,
}

impl Node {
    /// Starts `plan`'s container in `netns`, with `hosts` as its `/etc/hosts`.
    pub fn start(&self, plan: &ContainerPlan, netns: &NetNs, hosts: &str) -> Result<Container> {
        let pod = self.work.path().join(&plan.workload);
        std::fs::create_dir_all(pod.join("root"))?;
        std::fs::write(pod.join("hosts"), hosts)?;
        std::fs::write(pod.join("hostname"), format!("{}\n", plan.workload))?;
        std::fs::write(
            pod.join("resolv.conf"),
            "search default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n",
        )?;
        let log = pod.join("log");
        let out = std::fs::File::create(&log)?;
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net={}", netns.path()))
            .args(["--", "unshare", "--mount", "--propagation", "private", "--"])
            .args(["sh", "-c", MOUNT_SCRIPT, "sandbox"])
            .arg(pod.join("root"))
            .arg(&self.root)
            .arg(&pod)
            .arg(&self.bin_dir)
            .args(["env", "-i"])
            .arg("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .arg("HOME=/home/nonroot")
            .arg(format!("HOSTNAME={}", plan.workload))
            .args(plan.env.iter().map(|(k, v)| format!("{k}={v}")))
            .arg("chroot")
            .arg(format!("--userspec={}:{}", plan.uid, plan.gid))
            .arg(format!("--groups={}", plan.gid))
            .arg(pod.join("root"))
            .args(&plan.argv)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("SANDBOX_BINARIES", self.binaries.join(" "))
            .env("SANDBOX_WRITABLE", plan.writable.join(" "))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", plan.workload))?;
        Ok(Container {
            name: plan.workload.clone(),
            child,
            log,
            root: pod.join("root"),
        })
    }
}

impl Container {
    /// The exit status, if the process has ended.
    pub fn exited(&mut self) -> Result<Option<std::process::ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// What the container printed.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last lines of what the container printed.
    pub fn log_tail(&self) -> String {
        let text = self.log();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Waits until the container's process runs its command (the mounts are in place once
    /// the mount script has exec'd it), at most `deadline`.
    pub async fn started(&mut self, command: &str, deadline: Duration) -> Result<()> {
        let comm: String = command.chars().take(15).collect();
        let path = format!("/proc/{}/comm", self.child.id());
        let until = tokio::time::Instant::now() + deadline;
        loop {
            if std::fs::read_to_string(&path).is_ok_and(|c| c.trim_end() == comm) {
                return Ok(());
            }
            if let Some(status) = self.exited()? {
                bail!(
                    "{} exited ({status}) before running {command}: {}",
                    self.name,
                    self.log_tail()
                );
            }
            if tokio::time::Instant::now() > until {
                bail!("{} did not start {command} within {deadline:?}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether user `uid:gid` can create a file in directory `path` of the running
    /// container's filesystem (entered through its mount namespace, as the process sees it).
    pub fn can_write(&self, path: &str, uid: u32, gid: u32) -> Result<bool> {
        let file = self
            .root
            .join(path.trim_start_matches('/'))
            .join(".sandbox-write-check");
        let status = Command::new("nsenter")
            .args(["-t", &self.child.id().to_string(), "-m", "--"])
            .args([
                "setpriv",
                &format!("--reuid={uid}"),
                &format!("--regid={gid}"),
            ])
            .args(["--clear-groups", "touch"])
            .arg(&file)
            .stderr(Stdio::null())
            .status()
            .context("nsenter + setpriv (util-linux)")?;
        Ok(status.success())
    }

    /// Waits for the process to end, at most `deadline`.
    pub async fn wait(&mut self, deadline: Duration) -> Result<std::process::ExitStatus> {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            if let Some(status) = self.exited()? {
                return Ok(status);
            }
            if tokio::time::Instant::now() > until {
                bail!(
                    "{} still runs after {deadline:?}: {}",
                    self.name,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM, as a kubelet stops a container, then SIGKILL after the grace period.
    pub fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
            for _ in 0..100 {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        self.stop();
    }
}
