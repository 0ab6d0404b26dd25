//! What a node would execute, executed here: the image's binaries in the root filesystem of
//! the image's base packages, and the pods `odds-operator render` prints for the sample
//! pipeline, started the way a kubelet starts them, against the test kit's Postgres, Redis
//! and Kafka.
//!
//! Manifests that validate can still describe pods that never start (a shared library the
//! base lacks, an env name no binary reads, a probe on a port nobody listens on); this is
//! where those fail before a cluster sees them. Each broken render below shows one class of
//! such defect failing the run. Needs root (mount namespaces, chroot); elsewhere every test
//! says loudly that it did not run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cluster;
mod kubelet;
mod netns;
mod netpol;
mod pipeline;
mod policy;
mod sandbox;

use kubelet::ContainerPlan;
use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

#[tokio::test]
async fn every_binary_of_the_image_starts_in_the_base_image_as_the_pod_user() {
    let Some(node) = sandbox::node().unwrap() else {
        return;
    };
    assert!(node.binaries.len() >= 5, "{:?}", node.binaries);
    for binary in &node.binaries {
        let plan = plan(&format!("{binary}-help"), &[binary, "--help"], &["/tmp"]);
        let netns = netns::NetNs::new().unwrap();
        let mut container = node.start(&plan, &netns, "127.0.0.1\tlocalhost\n").unwrap();
        let status = container.wait(Duration::from_secs(60)).await.unwrap();
        let log = container.log();
        assert!(
            status.success() && log.contains("Usage"),
            "{binary} --help in the base image: {status}\n{log}"
        );
    }
}

/// A container of the image run as `argv` by the distroless user, with `writable` as its
/// volume mounts and nothing else from a manifest.
fn plan(workload: &str, argv: &[&str], writable: &[&str]) -> ContainerPlan {
    ContainerPlan {
        workload: workload.into(),
        kind: "Job".into(),
        argv: argv.iter().map(|a| a.to_string()).collect(),
        env: Vec::new(),
        uid: 65532,
        gid: 65532,
        writable: writable.iter().map(|w| w.to_string()).collect(),
        ports: BTreeMap::new(),
        readiness: None,
        liveness: None,
        labels: BTreeMap::new(),
    }
}

/// A long-running container of the image (the simulator needs nothing else), with `writable`
/// as its volume mounts.
fn simulator(writable: &[&str]) -> ContainerPlan {
    let workload = format!("simulator-{}", writable.len());
    plan(&workload, &["supplier-simulator"], writable)
}

#[tokio::test]
async fn the_root_is_read_only_and_only_the_pods_volumes_are_writable() {
    let Some(node) = sandbox::node().unwrap() else {
        return;
    };
    let netns = netns::NetNs::new().unwrap();
    // The image's /tmp is world-writable (1777): only the read-only mount keeps a write out,
    // as readOnlyRootFilesystem does on a node.
    let mut without = node.start(&simulator(&[]), &netns, "").unwrap();
    let netns2 = netns::NetNs::new().unwrap();
    let mut with = node.start(&simulator(&["/tmp"]), &netns2, "").unwrap();
    for container in [&mut without, &mut with] {
        container
            .started("supplier-simulator", Duration::from_secs(30))
            .await
            .unwrap();
    }
    for path in ["/", "/tmp", "/etc", "/usr/local/bin", "/home/nonroot"] {
        assert!(
            !without.can_write(path, 65532, 65532).unwrap(),
            "{path} is writable"
        );
    }
    assert!(
        with.can_write("/tmp", 65532, 65532).unwrap(),
        "the /tmp volume is writable"
    );
    assert!(!with.can_write("/home/nonroot", 65532, 65532).unwrap());
    // Both were running throughout: a refusal came from the filesystem, not a missing process.
    assert!(without.exited().unwrap().is_none(), "{}", without.log());
    assert!(with.exited().unwrap().is_none(), "{}", with.log());
}

#[test]
fn a_base_image_change_without_a_package_list_change_fails_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let image = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../workloads/image");
    for file in ["rootfs.sh", "base-packages.txt", "Dockerfile"] {
        std::fs::copy(image.join(file), dir.path().join(file)).unwrap();
    }
    let dockerfile = std::fs::read_to_string(dir.path().join("Dockerfile")).unwrap();
    let changed = dockerfile.replace("cc-debian12", "cc-debian13");
    assert_ne!(
        dockerfile, changed,
        "the Dockerfile's runtime base is cc-debian12"
    );
    std::fs::write(dir.path().join("Dockerfile"), changed).unwrap();
    let out = Command::new("bash")
        .arg(dir.path().join("rootfs.sh"))
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("update the package list"), "{stderr}");
}
