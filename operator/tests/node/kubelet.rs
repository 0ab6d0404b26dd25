//! What a kubelet reads from a rendered manifest: for each workload, the one container it
//! would start, with its environment resolved the way a kubelet resolves it.
//!
//! Kept apart from running it (`sandbox`) so each rule is stated once: `envFrom` first and
//! `env` over it, a missing non-optional ConfigMap, Secret or key stops the container
//! (`CreateContainerConfigError`), service links are added, named probe ports resolve
//! through the container's ports, and `runAsNonRoot` refuses uid 0.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::collections::BTreeMap;

/// A probe a kubelet sends: `GET path` on a port of the pod.
#[derive(Clone, Debug)]
pub struct Probe {
    pub path: String,
    pub port: u16,
}

/// One container as a kubelet would start it.
#[derive(Clone, Debug)]
pub struct ContainerPlan {
    /// The workload (Deployment or Job) name: it names the pod in messages.
    pub workload: String,
    pub kind: String,
    /// `command` then `args`.
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub uid: u32,
    pub gid: u32,
    /// Paths of the pod's `emptyDir` mounts: the only writable places.
    pub writable: Vec<String>,
    /// Container ports by name.
    pub ports: BTreeMap<String, u16>,
    pub readiness: Option<Probe>,
    pub liveness: Option<Probe>,
    /// The pod's labels, which Service selectors match.
    pub labels: BTreeMap<String, String>,
}

/// A Service: its name, its ports (port → target), and the pods it selects.
#[derive(Clone, Debug)]
pub struct ServicePlan {
    pub name: String,
    pub ports: Vec<(u16, TargetPort)>,
    pub selector: BTreeMap<String, String>,
}

#[derive(Clone, Debug)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

/// The rendered objects, indexed as a kubelet and kube-proxy see them.
pub struct Manifests {
    pub objects: Vec<Value>,
    /// Secrets by name: key → value.
    pub secrets: BTreeMap<String, BTreeMap<String, String>>,
}

impl Manifests {
    pub fn of_kind(&self, kind: &str) -> impl Iterator<Item = &Value> {
        let kind = kind.to_string();
        self.objects
            .iter()
            .filter(move |o| o["kind"] == kind.as_str())
    }

    fn config_map(&self, name: &str) -> Option<BTreeMap<String, String>> {
        self.of_kind("ConfigMap")
            .find(|o| o["metadata"]["name"] == name)
            .map(|o| string_map(&o["data"]))
    }

    pub fn services(&self) -> Result<Vec<ServicePlan>> {
        self.of_kind("Service").map(service_plan).collect()
    }

    /// The container of each Job and Deployment, in manifest order (the Job first, as
    /// the operator applies it first).
    pub fn containers(&self, links: &[(String, String)]) -> Result<Vec<ContainerPlan>> {
        let mut out = Vec::new();
        for kind in ["Job", "Deployment"] {
            for object in self.of_kind(kind) {
                out.push(self.container_plan(kind, object, links)?);
            }
        }
        Ok(out)
    }

    fn container_plan(
        &self,
        kind: &str,
        object: &Value,
        links: &[(String, String)],
    ) -> Result<ContainerPlan> {
        let workload = object["metadata"]["name"]
            .as_str()
            .ok_or_else(|| anyhow!("{kind} without a name"))?
            .to_string();
        let pod = &object["spec"]["template"];
        let spec = &pod["spec"];
        let containers = spec["containers"].as_array().cloned().unwrap_or_default();
        let [container] = containers.as_slice() else {
            bail!(
                "{workload}: expected one container, found {}",
                containers.len()
            );
        };
        let context = || format!("{kind} {workload}");
        let argv: Vec<String> = strings(&container["command"])
            .into_iter()
            .chain(strings(&container["args"]))
            .collect();
        if argv.is_empty() {
            bail!("{}: no command (the image has no entrypoint)", context());
        }
        let env = self.environment(container, links).with_context(context)?;
        let security = |field: &str| {
            container["securityContext"][field]
                .as_i64()
                .or_else(|| spec["securityContext"][field].as_i64())
        };
        let non_root = container["securityContext"]["runAsNonRoot"]
            .as_bool()
            .or_else(|| spec["securityContext"]["runAsNonRoot"].as_bool())
            .unwrap_or(false);
        let (uid, gid) = (security("runAsUser"), security("runAsGroup"));
        let uid = uid
            .ok_or_else(|| anyhow!("{}: no runAsUser: the image's USER would run it", context()))?;
        if non_root && uid == 0 {
            bail!("{}: container has runAsNonRoot and would run as root (uid 0): the kubelet refuses to start it (CreateContainerConfigError)", context());
        }
        if container["securityContext"]["readOnlyRootFilesystem"] != true {
            bail!("{}: readOnlyRootFilesystem is not true: this sandbox models the read-only root the restricted policy asks for", context());
        }
        let empty_dirs: Vec<String> = spec["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|v| v.get("emptyDir").is_some())
            .filter_map(|v| v["name"].as_str().map(str::to_string))
            .collect();
        let mut writable = Vec::new();
        for mount in container["volumeMounts"].as_array().into_iter().flatten() {
            let name = mount["name"].as_str().unwrap_or_default();
            if !empty_dirs.iter().any(|v| v == name) {
                bail!(
                    "{}: volume mount {name:?} names no emptyDir volume of the pod",
                    context()
                );
            }
            writable.push(
                mount["mountPath"]
                    .as_str()
                    .ok_or_else(|| anyhow!("{}: volume mount without mountPath", context()))?
                    .to_string(),
            );
        }
        let mut ports = BTreeMap::new();
        for port in container["ports"].as_array().into_iter().flatten() {
            let number = port_number(&port["containerPort"])?;
            ports.insert(
                port["name"].as_str().unwrap_or_default().to_string(),
                number,
            );
        }
        let probe = |field: &str| -> Result<Option<Probe>> {
            let get = &container[field]["httpGet"];
            if get.is_null() {
                return Ok(None);
            }
            let port = match &get["port"] {
                Value::String(name) => *ports.get(name).ok_or_else(|| {
                    anyhow!(
                        "{}: {field} names port {name:?}, which the container does not declare",
                        context()
                    )
                })?,
                number => port_number(number)?,
            };
            Ok(Some(Probe {
                path: get["path"].as_str().unwrap_or("/").to_string(),
                port,
            }))
        };
        Ok(ContainerPlan {
            readiness: probe("readinessProbe")?,
            liveness: probe("livenessProbe")?,
            workload: workload.clone(),
            kind: kind.to_string(),
            argv,
            env,
            uid: u32::try_from(uid)?,
            gid: u32::try_from(gid.unwrap_or(uid))?,
            writable,
            ports,
            labels: string_map(&pod["metadata"]["labels"]),
        })
    }

    /// The container's environment: service links, then `envFrom`, then `env` (later wins,
    /// as on a node). Each value a kubelet could not resolve is an error.
    fn environment(
        &self,
        container: &Value,
        links: &[(String, String)],
    ) -> Result<Vec<(String, String)>> {
        let mut env: BTreeMap<String, String> = links.iter().cloned().collect();
        for source in container["envFrom"].as_array().into_iter().flatten() {
            let reference = &source["configMapRef"];
            let name = reference["name"]
                .as_str()
                .ok_or_else(|| anyhow!("envFrom without a configMapRef name"))?;
            match self.config_map(name) {
                Some(data) => env.extend(data),
                None if reference["optional"] == true => {}
                None => bail!("envFrom: ConfigMap {name:?} not found"),
            }
        }
        for var in container["env"].as_array().into_iter().flatten() {
            let name = var["name"]
                .as_str()
                .ok_or_else(|| anyhow!("env entry without a name"))?;
            let value = if let Some(value) = var["value"].as_str() {
                value.to_string()
            } else if !var["valueFrom"]["secretKeyRef"].is_null() {
                let reference = &var["valueFrom"]["secretKeyRef"];
                let secret = reference["name"].as_str().unwrap_or_default();
                let key = reference["key"].as_str().unwrap_or_default();
                self.secrets
                    .get(secret)
                    .and_then(|keys| keys.get(key))
                    .cloned()
                    .ok_or_else(|| anyhow!("env {name}: Secret {secret:?} has no key {key:?}"))?
            } else if !var["valueFrom"]["configMapKeyRef"].is_null() {
                let reference = &var["valueFrom"]["configMapKeyRef"];
                let map = reference["name"].as_str().unwrap_or_default();
                let key = reference["key"].as_str().unwrap_or_default();
                self.config_map(map)
                    .and_then(|data| data.get(key).cloned())
                    .ok_or_else(|| anyhow!("env {name}: ConfigMap {map:?} has no key {key:?}"))?
            } else if var["valueFrom"].is_null() {
                String::new()
            } else {
                bail!(
                    "env {name}: valueFrom {} is not modelled by this sandbox",
                    var["valueFrom"]
                );
            };
            env.insert(name.to_string(), value);
        }
        Ok(env.into_iter().collect())
    }
}

fn service_plan(object: &Value) -> Result<ServicePlan> {
    let name = object["metadata"]["name"]
        .as_str()
        .ok_or_else(|| anyhow!("Service without a name"))?
        .to_string();
    let mut ports = Vec::new();
    for port in object["spec"]["ports"].as_array().into_iter().flatten() {
        let number = port_number(&port["port"])?;
        let target = match &port["targetPort"] {
            Value::Null => TargetPort::Number(number),
            Value::String(name) => TargetPort::Name(name.clone()),
            other => TargetPort::Number(port_number(other)?),
        };
        ports.push((number, target));
    }
    Ok(ServicePlan {
        name,
        ports,
        selector: string_map(&object["spec"]["selector"]),
    })
}

/// The variables a kubelet adds for every Service of the namespace (`enableServiceLinks`,
/// on by default): `<NAME>_SERVICE_HOST`, `<NAME>_PORT`, ... A workload that reads one of
/// these names by accident meets them only on a node.
pub fn service_links(services: &[(String, Vec<u16>)], ip: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (name, ports) in services {
        let prefix = name.to_uppercase().replace('-', "_");
        let Some(first) = ports.first() else { continue };
        out.push((format!("{prefix}_SERVICE_HOST"), ip.to_string()));
        out.push((format!("{prefix}_SERVICE_PORT"), first.to_string()));
        out.push((format!("{prefix}_PORT"), format!("tcp://[{ip}]:{first}")));
        for port in ports {
            let base = format!("{prefix}_PORT_{port}_TCP");
            out.push((base.clone(), format!("tcp://[{ip}]:{port}")));
            out.push((format!("{base}_PROTO"), "tcp".into()));
            out.push((format!("{base}_PORT"), port.to_string()));
            out.push((format!("{base}_ADDR"), ip.to_string()));
        }
    }
    out
}

fn port_number(value: &Value) -> Result<u16> {
    value
        .as_u64()
        .and_then(|n| u16::try_from(n).ok())
        .ok_or_else(|| anyhow!("not a port number: {value}"))
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

fn string_map(value: &Value) -> BTreeMap<String, String> {
    value
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
        .collect()
}
