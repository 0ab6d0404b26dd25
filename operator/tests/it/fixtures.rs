//! Test fixtures in one place: the sample pipeline with chained modifiers
//! (`sample().paused().with_autoscaling(Component::Processor)`), facts, accessors for
//! the parts of built objects the tests look at, and the assertions they share.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use odds_operator::build::{Component, Facts, CONFIG_HASH_ANNOTATION};
use odds_operator::crd::{AutoscalingSpec, ComponentSpec, OddsPipeline, ScalingMode, SecretKeyRef};
use odds_operator::validate::{validate, ValidPipeline};
use std::collections::BTreeMap;
use std::path::PathBuf;

pub const NS: &str = "default";
/// The sample's Deployments, one per workload, in the order they are built.
pub const DEPLOYMENTS: [&str; 4] = [
    "demo-simulator",
    "demo-ingest",
    "demo-processor",
    "demo-odds-service",
];

/// Asserts that `text` (a condition's message, say) contains `part`, showing `text` if not.
#[track_caller]
pub fn assert_contains(text: &str, part: &str) {
    assert!(text.contains(part), "{text:?} does not contain {part:?}");
}

/// Asserts that each of `prefixes` begins one of `lines` (problems, event notes).
#[track_caller]
pub fn assert_each_begins_a_line(lines: &[String], prefixes: &[&str]) {
    for prefix in prefixes {
        let found = lines.iter().any(|line| line.starts_with(prefix));
        assert!(found, "{prefix}: {lines:?}");
    }
}

/// A file of the repository.
pub fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

/// A release of another operator whose CRD files are vendored beside the project, in the
/// folder named by environment variable `variable`, by default `../shared/vendor/<folder>`;
/// `version` is the API version of its kinds the operator uses.
pub struct VendoredRelease {
    pub variable: &'static str,
    pub folder: &'static str,
    pub version: &'static str,
}

pub const STRIMZI: VendoredRelease = VendoredRelease {
    variable: "STRIMZI_CRDS",
    folder: "strimzi-1.2.0",
    version: "v1",
};
pub const KEDA: VendoredRelease = VendoredRelease {
    variable: "KEDA_CRDS",
    folder: "keda-2.20.2",
    version: "v1alpha1",
};
pub const PROMETHEUS_OPERATOR: VendoredRelease = VendoredRelease {
    variable: "PROMETHEUS_OPERATOR_CRDS",
    folder: "prometheus-operator-0.93.0",
    version: "v1",
};

/// The openAPIV3Schema of the operator's version in the CRD file `file` of `release`. Fails
/// loudly, naming the variable, when the file is missing.
pub fn vendored_crd_schema(release: &VendoredRelease, file: &str) -> serde_json::Value {
    let VendoredRelease {
        variable,
        folder: default_folder,
        version,
    } = release;
    let folder = std::env::var_os(variable)
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_file(&format!("../shared/vendor/{default_folder}")));
    let path = folder.join(file);
    assert!(
        path.is_file(),
        "{file} ({default_folder}) is not in {}: set {variable} to the folder holding it (the release's CRD files)",
        folder.display()
    );
    let crd: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let found = crd["spec"]["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == *version)
        .unwrap_or_else(|| panic!("{version} in {file}"));
    found["schema"]["openAPIV3Schema"].clone()
}

/// The sample CR as YAML text parsed into JSON (what a user applies).
pub fn sample_json() -> serde_json::Value {
    let text = std::fs::read_to_string(repo_file("operator/samples/oddspipeline.yaml")).unwrap();
    serde_yaml::from_str(&text).unwrap()
}

/// The sample pipeline, as stored (uid and generation set).
pub fn sample() -> OddsPipeline {
    let mut pipeline: OddsPipeline = serde_json::from_value(sample_json()).unwrap();
    pipeline.metadata.uid = Some("0c6f-uid".into());
    pipeline.metadata.generation = Some(1);
    pipeline
}

/// Chained modifiers of a pipeline, so a test states only what differs from the sample.
pub trait PipelineExt: Sized {
    fn edit(self, f: impl FnOnce(&mut OddsPipeline)) -> Self;

    fn named(self, name: &str) -> Self {
        self.edit(|p| p.metadata.name = Some(name.into()))
    }
    fn in_namespace(self, namespace: &str) -> Self {
        self.edit(|p| p.metadata.namespace = Some(namespace.into()))
    }
    fn paused(self) -> Self {
        self.edit(|p| p.spec.paused = true)
    }
    fn image_tag(self, tag: &str) -> Self {
        self.edit(|p| p.spec.image.tag = tag.into())
    }
    fn replicas(self, component: Component, replicas: i32) -> Self {
        self.edit(|p| component_mut(p, component).replicas = replicas)
    }
    /// Autoscaling 2..=6 on CPU, with the CPU request it needs.
    fn with_autoscaling(self, component: Component) -> Self {
        self.edit(|p| {
            let spec = component_mut(p, component);
            spec.autoscaling = Some(AutoscalingSpec {
                min_replicas: 2,
                max_replicas: 6,
                target_cpu_utilization: 80,
                ..autoscaling_defaults()
            });
            spec.resources = Some(cpu_request("100m"));
        })
    }
    fn with_env(self, component: Component, name: &str, value: &str) -> Self {
        self.edit(|p| {
            component_mut(p, component)
                .pod_overrides
                .env
                .push(env_var(name, value))
        })
    }
    fn external_kafka(self, servers: &str) -> Self {
        self.edit(|p| {
            p.spec.kafka.cluster_ref = None;
            p.spec.kafka.bootstrap_servers = Some(servers.into());
            // The operator logs in only to a Strimzi cluster it makes the user in.
            p.spec.kafka.authentication = None;
        })
    }
    fn external_supplier(self, url: &str) -> Self {
        self.edit(|p| {
            p.spec.supplier.simulator = None;
            p.spec.supplier.url = Some(url.into());
        })
    }
    fn read_replica(self, secret: &str) -> Self {
        self.edit(|p| {
            p.spec.postgres.read_url_secret_ref = Some(SecretKeyRef {
                name: secret.into(),
                key: "url".into(),
            })
        })
    }
}

impl PipelineExt for OddsPipeline {
    fn edit(mut self, f: impl FnOnce(&mut OddsPipeline)) -> Self {
        f(&mut self);
        self
    }
}

/// An autoscaling spec with every optional field unset (Cpu mode, 1..=1).
pub fn autoscaling_defaults() -> AutoscalingSpec {
    AutoscalingSpec {
        mode: ScalingMode::Cpu,
        min_replicas: 1,
        max_replicas: 1,
        target_cpu_utilization: 70,
        target_lag_per_replica: None,
        target_connections_per_replica: None,
        prometheus_address: None,
        pod_monitor: None,
        pod_monitor_labels: Default::default(),
        scale_down_stabilization_seconds: None,
        polling_interval_seconds: None,
    }
}

pub fn component_mut(p: &mut OddsPipeline, component: Component) -> &mut ComponentSpec {
    match component {
        Component::Ingest => &mut p.spec.ingest,
        Component::Processor => &mut p.spec.processor,
        Component::OddsService => &mut p.spec.odds_service.workload,
        Component::Simulator => panic!("the simulator has no component spec"),
    }
}

pub fn cpu_request(cpu: &str) -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([("cpu".to_string(), Quantity(cpu.into()))])),
        ..ResourceRequirements::default()
    }
}

pub fn env_var(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

/// Facts of a cluster where everything the sample needs exists and is ready.
pub fn ready_facts() -> Facts {
    let keys = |digest: &str| BTreeMap::from([("url".to_string(), digest.to_string())]);
    Facts {
        secrets: BTreeMap::from([
            ("odds-postgres".into(), keys("11")),
            ("odds-redis".into(), keys("12")),
            ("ro".into(), keys("13")),
        ]),
        topics_ready: true,
        existing_partitions: Some(6),
        keda_installed: false,
        ports: BTreeMap::new(),
        pod_monitors_installed: false,
        kafka_user_ready: true,
        redis_url: None,
    }
}

/// `pipeline` validated against [`ready_facts`].
pub fn valid(pipeline: &OddsPipeline) -> ValidPipeline {
    validate(pipeline, &ready_facts()).unwrap()
}

/// The pod spec of a Deployment.
pub fn pod(d: &Deployment) -> &PodSpec {
    d.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
}

/// Consumer group overrides Kafka would refuse as a group id: empty, a space, a slash, a
/// non-ASCII letter, and one character over the 249 allowed.
pub fn invalid_consumer_groups() -> Vec<String> {
    vec![
        String::new(),
        "odds processor".into(),
        "odds/processor".into(),
        "gruppe-ä".into(),
        "g".repeat(250),
    ]
}

/// The (only) container of a Deployment.
pub fn container(d: &Deployment) -> &Container {
    &pod(d).containers[0]
}

/// The (only) container of a Job.
pub fn job_container(job: &Job) -> &Container {
    &job.spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
}

/// Compares `rendered` with the golden file `tests/golden/<file>` (`what` names it in the
/// failure); with `UPDATE_GOLDEN` set, writes it there first.
pub fn assert_golden(file: &str, rendered: &str, what: &str) {
    let path = format!("{}/tests/golden/{file}", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, rendered).unwrap();
    }
    let golden = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        golden == rendered,
        "{what} differ from {path}; if intended, rerun with UPDATE_GOLDEN=1 and review the diff"
    );
}

/// The ports the egress rules of NetworkPolicy `name` among `children` allow.
pub fn egress_ports(children: &odds_operator::build::Children, name: &str) -> Vec<u64> {
    let policy = children
        .network_policies
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some(name))
        .unwrap();
    let egress = serde_json::to_value(&policy.spec.as_ref().unwrap().egress).unwrap();
    egress
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|rule| rule["ports"].as_array().cloned().unwrap_or_default())
        .filter_map(|port| port["port"].as_u64())
        .collect()
}

pub fn env(d: &Deployment) -> Vec<EnvVar> {
    container(d).env.clone().unwrap_or_default()
}

pub fn image(d: &Deployment) -> String {
    container(d).image.clone().unwrap()
}

pub fn replicas(d: &Deployment) -> Option<i32> {
    d.spec.as_ref().unwrap().replicas
}

/// The config hash on a Deployment's pod template.
pub fn hash(d: &Deployment) -> String {
    d.spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .as_ref()
        .unwrap()[CONFIG_HASH_ANNOTATION]
        .clone()
}

/// The API server's answer to discovery of `group_version`: an `APIResourceList` naming
/// `names` (what the operator's discovery of optional CRDs reads).
pub fn api_resource_list(group_version: &str, names: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
        "resources": names.iter().map(|n| serde_json::json!({
            "name": n, "singularName": "", "namespaced": true, "kind": "K", "verbs": ["get"]
        })).collect::<Vec<_>>()
    })
}
