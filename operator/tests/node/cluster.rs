//! A one-node cluster's worth of plumbing around the sandboxed containers: Service names that
//! resolve, Service ports that reach the pods kube-proxy would pick, the datastores outside,
//! the kubelet's probes, and the order the operator relies on (the migration Job to
//! completion, then the Deployments until Ready).
//!
//! Services are reached at `::1` in every pod's namespace and named in the pod's
//! `/etc/hosts`; a forwarder there carries each connection to the selected pod's IP and
//! target port (named ports resolve through the container's ports), or, for the datastores,
//! to the test kit's servers on the host. IPv6, because the workloads listen on `0.0.0.0`:
//! a Service listener on an IPv4 address of the pod's own namespace would take the port the
//! pod's process binds (a cluster's Service IPs are not sockets in the pod). One address
//! for all Services, so their ports must differ; `Cluster::new` says so when they do not.
//!
//! The forwarders are also the CNI: each connection passes only if the rendered
//! NetworkPolicies let the source pod's egress and the destination pod's ingress through
//! (`netpol`); a refused one is closed and recorded, and a run that fails says which flows
//! were refused. Kubelet probes are node traffic, which NetworkPolicies do not govern.

use crate::kubelet::{service_links, ContainerPlan, Manifests, Probe, ServicePlan, TargetPort};
use crate::netns::{NetNs, POD_IP};
use crate::netpol::{Labels, Policies};
use crate::sandbox::{Container, Node};
use anyhow::{anyhow, bail, Context, Result};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a pod may take to become Ready, or a Job to complete, on a loaded machine.
pub const START_DEADLINE: Duration = Duration::from_secs(120);

/// A Service outside the pipeline (the datastores): its name, port, where it really is, and
/// the labels of the pods behind it on a cluster (what NetworkPolicies select).
#[derive(Clone, Debug)]
pub struct External {
    pub name: String,
    pub port: u16,
    pub target: SocketAddr,
    pub labels: Labels,
}

#[derive(Clone)]
enum Target {
    /// A server outside the pipeline, standing for pods with `labels` serving `port`.
    Host {
        addr: SocketAddr,
        labels: Labels,
        port: u16,
    },
    Pods {
        selector: BTreeMap<String, String>,
        port: TargetPort,
    },
}

/// A running pod as kube-proxy sees it: labels, named ports, network.
struct Endpoint {
    labels: BTreeMap<String, String>,
    ports: BTreeMap<String, u16>,
    netns: Arc<NetNs>,
}

type Endpoints = Arc<Mutex<Vec<Endpoint>>>;

pub struct Cluster<'n> {
    node: &'n Node,
    /// Every Service name with its ports and where their connections go.
    services: Vec<(String, Vec<(u16, Target)>)>,
    /// Addresses reached as they are (the mock Kafka brokers advertise 127.0.0.1:PORT), with
    /// the pods and port they stand for on a cluster (a broker pod's 9092).
    passthrough: Vec<(SocketAddr, Labels, u16)>,
    policies: Arc<Policies>,
    /// Connections the NetworkPolicies refused: `source -> destination:port`.
    denied: Arc<Mutex<Vec<String>>>,
    endpoints: Endpoints,
    containers: Vec<(Container, ContainerPlan, Arc<NetNs>)>,
    forwarders: Vec<tokio::task::JoinHandle<()>>,
    /// Networks of the clients the test connected from.
    clients: Vec<Arc<NetNs>>,
    /// How long each pod may take to become Ready.
    pub ready_deadline: Duration,
}

impl<'n> Cluster<'n> {
    pub fn new(
        node: &'n Node,
        rendered: &[ServicePlan],
        external: &[External],
        passthrough: Vec<(SocketAddr, Labels, u16)>,
        policies: Policies,
    ) -> Result<Cluster<'n>> {
        let mut services = Vec::new();
        for service in rendered {
            let ports = service
                .ports
                .iter()
                .map(|(port, target)| {
                    let target = Target::Pods {
                        selector: service.selector.clone(),
                        port: target.clone(),
                    };
                    (*port, target)
                })
                .collect();
            services.push((service.name.clone(), ports));
        }
        for ext in external {
            let target = Target::Host {
                addr: ext.target,
                labels: ext.labels.clone(),
                port: ext.port,
            };
            services.push((ext.name.clone(), vec![(ext.port, target)]));
        }
        let mut ports: Vec<u16> = services
            .iter()
            .flat_map(|(_, ports)| ports.iter().map(|p| p.0))
            .collect();
        ports.sort_unstable();
        if let Some(pair) = ports.windows(2).find(|w| w[0] == w[1]) {
            bail!(
                "two Services use port {}: this sandbox reaches every Service at one address",
                pair[0]
            );
        }
        Ok(Cluster {
            node,
            services,
            passthrough,
            policies: Arc::new(policies),
            denied: Arc::default(),
            endpoints: Arc::default(),
            containers: Vec::new(),
            forwarders: Vec::new(),
            clients: Vec::new(),
            ready_deadline: START_DEADLINE,
        })
    }

    /// The service-link variables of every Service.
    pub fn links(&self) -> Vec<(String, String)> {
        let services: Vec<_> = self
            .services
            .iter()
            .map(|(name, ports)| (name.clone(), ports.iter().map(|p| p.0).collect()))
            .collect();
        service_links(&services, "::1")
    }

    /// `/etc/hosts` of a pod named `hostname`.
    fn hosts(&self, hostname: &str) -> String {
        let mut out = String::from("127.0.0.1\tlocalhost\n");
        let [a, b, c, d] = POD_IP;
        out.push_str(&format!("{a}.{b}.{c}.{d}\t{hostname}\n"));
        for (name, _) in &self.services {
            out.push_str(&format!(
                "::1\t{name} {name}.default {name}.default.svc {name}.default.svc.cluster.local\n"
            ));
        }
        out
    }

    /// A network namespace for a pod labelled `source`, with every Service (and the
    /// passthrough addresses) reachable as far as the NetworkPolicies allow.
    pub fn network(&mut self, source: &Labels) -> Result<Arc<NetNs>> {
        let netns = Arc::new(NetNs::new()?);
        let mut listeners = Vec::new();
        for (name, ports) in &self.services {
            for (port, target) in ports {
                let listen = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, *port));
                listeners.push((
                    netns.listen(listen)?,
                    target.clone(),
                    format!("{name}:{port}"),
                ));
            }
        }
        for (addr, labels, port) in &self.passthrough {
            let target = Target::Host {
                addr: *addr,
                labels: labels.clone(),
                port: *port,
            };
            listeners.push((netns.listen(*addr)?, target, format!("broker {addr}")));
        }
        for (listener, target, what) in listeners {
            let flow = Flow {
                source: source.clone(),
                what,
                policies: self.policies.clone(),
                denied: self.denied.clone(),
            };
            self.forwarders
                .push(forward(listener, target, self.endpoints.clone(), flow));
        }
        Ok(netns)
    }

    /// The connections the NetworkPolicies refused so far, for a failure's message.
    pub fn denied(&self) -> Vec<String> {
        lock(&self.denied).clone()
    }

    fn with_denied(&self, error: anyhow::Error) -> anyhow::Error {
        let denied = self.denied();
        if denied.is_empty() {
            error
        } else {
            anyhow!("{error:#}\nrefused by NetworkPolicy: {}", denied.join("; "))
        }
    }

    /// Runs every container of `manifests` as a node would, in the operator's order: each
    /// Job to completion (exit 0), then every Deployment until its readiness probe passes
    /// and its liveness probe answers. The first failure is the error, naming the workload.
    pub async fn run(&mut self, manifests: &Manifests) -> Result<()> {
        let result = self.run_all(manifests).await;
        result.map_err(|error| self.with_denied(error))
    }

    async fn run_all(&mut self, manifests: &Manifests) -> Result<()> {
        let plans = manifests.containers(&self.links())?;
        for plan in plans.iter().filter(|p| p.kind == "Job") {
            let netns = self.network(&plan.labels)?;
            let mut container = self.node.start(plan, &netns, &self.hosts(&plan.workload))?;
            let status = container.wait(START_DEADLINE).await?;
            if !status.success() {
                bail!(
                    "Job {} failed ({status}): {}",
                    plan.workload,
                    container.log_tail()
                );
            }
        }
        for plan in plans.iter().filter(|p| p.kind == "Deployment") {
            let netns = self.network(&plan.labels)?;
            let container = self.node.start(plan, &netns, &self.hosts(&plan.workload))?;
            lock(&self.endpoints).push(Endpoint {
                labels: plan.labels.clone(),
                ports: plan.ports.clone(),
                netns: netns.clone(),
            });
            self.containers.push((container, plan.clone(), netns));
        }
        for (container, plan, netns) in &mut self.containers {
            let readiness = plan
                .readiness
                .clone()
                .ok_or_else(|| anyhow!("Deployment {} has no readiness probe", plan.workload))?;
            wait_ready(container, &readiness, netns, self.ready_deadline).await?;
            if let Some(liveness) = &plan.liveness {
                let status = probe(netns, liveness).await.map_err(|e| {
                    anyhow!(
                        "Deployment {}: liveness probe GET {} on port {}: {e}",
                        plan.workload,
                        liveness.path,
                        liveness.port
                    )
                })?;
                if !(200..400).contains(&status) {
                    bail!("Deployment {}: liveness probe GET {} on port {}: HTTP {status}: the kubelet would restart it", plan.workload, liveness.path, liveness.port);
                }
            }
        }
        Ok(())
    }

    /// Every running container's root is read-only to its user (the image's files, its
    /// binaries, `/etc`), and each `emptyDir` it mounts is writable: a binary that writes
    /// anywhere else fails here as on a node.
    pub fn check_filesystems(&self) -> Result<()> {
        for (container, plan, _) in &self.containers {
            for path in ["/", "/usr/local/bin", "/etc", "/home/nonroot/.."] {
                if container.can_write(path, plan.uid, plan.gid)? {
                    bail!(
                        "{}: {path} is writable; the root must be read-only",
                        plan.workload
                    );
                }
            }
            for path in &plan.writable {
                if !container.can_write(path, plan.uid, plan.gid)? {
                    bail!(
                        "{}: its volume {path} is not writable by {}",
                        plan.workload,
                        plan.uid
                    );
                }
            }
        }
        Ok(())
    }

    /// A connection to `service:port` from a new pod's network, as a client pod makes it.
    pub async fn connect(&mut self, service: &str, port: u16) -> Result<tokio::net::TcpStream> {
        if !self.services.iter().any(|s| s.0 == service) {
            bail!("no Service {service}");
        }
        let client = Labels::from([("app".to_string(), "client".to_string())]);
        let netns = self.network(&client)?;
        let stream = netns
            .connect(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)))
            .await?;
        self.clients.push(netns);
        Ok(stream)
    }
}

impl Drop for Cluster<'_> {
    fn drop(&mut self) {
        for (container, _, _) in &mut self.containers {
            container.stop();
        }
        for forwarder in &self.forwarders {
            forwarder.abort();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Polls the readiness probe until it passes; a 404, or the process ending, fails at once.
async fn wait_ready(
    container: &mut Container,
    readiness: &Probe,
    netns: &NetNs,
    deadline: Duration,
) -> Result<()> {
    let until = tokio::time::Instant::now() + deadline;
    let what = |container: &Container, e: String| {
        anyhow!(
            "Deployment {}: readiness probe GET {} on port {}: {e}\n{}",
            container.name,
            readiness.path,
            readiness.port,
            container.log_tail()
        )
    };
    loop {
        if let Some(status) = container.exited()? {
            bail!(
                "Deployment {} exited ({status}): {}",
                container.name,
                container.log_tail()
            );
        }
        match probe(netns, readiness).await {
            Ok(status) if (200..400).contains(&status) => return Ok(()),
            Ok(404) => return Err(what(container, "HTTP 404: no such path".into())),
            result if tokio::time::Instant::now() > until => {
                let last = match result {
                    Ok(status) => format!("still HTTP {status} after {deadline:?}"),
                    Err(error) => format!("{error:#} after {deadline:?}"),
                };
                return Err(what(container, last));
            }
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// One HTTP GET as the kubelet sends it, to the pod's IP; the status code.
async fn probe(netns: &NetNs, probe: &Probe) -> Result<u16> {
    let addr = SocketAddr::from((POD_IP, probe.port));
    let exchange = async {
        let mut stream = netns.connect(addr).await?;
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.32\r\nConnection: close\r\n\r\n",
            probe.path
        );
        stream.write_all(request.as_bytes()).await?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await?;
        let text = std::str::from_utf8(&head)?;
        text.get(9..12)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| anyhow!("not an HTTP response: {text:?}"))
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .context("timed out (timeoutSeconds)")?
}

/// Who connects through a forwarder, and where refusals are written down.
struct Flow {
    source: Labels,
    /// The Service and port (or broker address) the forwarder stands for.
    what: String,
    policies: Arc<Policies>,
    denied: Arc<Mutex<Vec<String>>>,
}

impl Flow {
    /// Whether the policies let this source reach `labels`:`port`; a refusal is recorded.
    fn allowed(&self, labels: &Labels, port: u16) -> bool {
        let ok = self.policies.allows(Some(&self.source), Some(labels), port);
        if !ok {
            let source = self
                .source
                .get("app.kubernetes.io/component")
                .or_else(|| self.source.get("app"))
                .cloned()
                .unwrap_or_default();
            let line = format!("{source} -> {} (port {port})", self.what);
            let mut denied = lock(&self.denied);
            if !denied.contains(&line) {
                denied.push(line);
            }
        }
        ok
    }
}

/// Accepts on `listener` and carries each connection the policies allow to `target`.
fn forward(
    listener: tokio::net::TcpListener,
    target: Target,
    endpoints: Endpoints,
    flow: Flow,
) -> tokio::task::JoinHandle<()> {
    let flow = Arc::new(flow);
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let target = target.clone();
            let endpoints = endpoints.clone();
            let flow = flow.clone();
            tokio::spawn(async move {
                let outbound = match &target {
                    Target::Host { addr, labels, port } => {
                        if !flow.allowed(labels, *port) {
                            return;
                        }
                        tokio::net::TcpStream::connect(addr)
                            .await
                            .map_err(anyhow::Error::from)
                    }
                    Target::Pods { selector, port } => {
                        connect_pod(&endpoints, selector, port, &flow).await
                    }
                };
                if let Ok(mut outbound) = outbound {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    })
}

/// A connection to a pod the selector picks, at the target port (named ports resolved
/// through that pod's container ports, as kube-proxy's endpoints do), if the policies let
/// `flow` through.
async fn connect_pod(
    endpoints: &Endpoints,
    selector: &BTreeMap<String, String>,
    port: &TargetPort,
    flow: &Flow,
) -> Result<tokio::net::TcpStream> {
    let (netns, number, labels) = {
        let endpoints = lock(endpoints);
        let pod = endpoints
            .iter()
            .find(|e| selector.iter().all(|(k, v)| e.labels.get(k) == Some(v)))
            .ok_or_else(|| anyhow!("no ready endpoint"))?;
        let number = match port {
            TargetPort::Number(n) => *n,
            TargetPort::Name(name) => *pod
                .ports
                .get(name)
                .ok_or_else(|| anyhow!("the pod declares no port named {name}"))?,
        };
        (pod.netns.clone(), number, pod.labels.clone())
    };
    if !flow.allowed(&labels, number) {
        bail!("refused by NetworkPolicy");
    }
    netns.connect(SocketAddr::from((POD_IP, number))).await
}
