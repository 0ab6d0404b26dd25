//! The operator's vocabulary between validation and building: which workloads a pipeline
//! runs ([`Component`]) and what the cluster told the reconciler before validating
//! ([`Facts`]).
//!
//! A module below both `validate` and `build`, so that validation can speak of components and
//! facts without depending on the builders, and the builders on validation's output only.

use std::collections::BTreeMap;

/// The workloads the operator deploys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    Simulator,
    Ingest,
    Processor,
    OddsService,
}

impl Component {
    /// Name suffix and `app.kubernetes.io/component` label.
    pub fn suffix(self) -> &'static str {
        match self {
            Self::Simulator => "simulator",
            Self::Ingest => "ingest",
            Self::Processor => "processor",
            Self::OddsService => "odds-service",
        }
    }

    /// The binary in the image that this component runs.
    pub fn binary(self) -> &'static str {
        match self {
            Self::Simulator => "supplier-simulator",
            Self::Ingest => "odds-ingest",
            Self::Processor => "odds-processor",
            Self::OddsService => "odds-service",
        }
    }

    /// Name of this component's children (Deployment, PDB, Service...) in pipeline `name`.
    pub fn name_in(self, pipeline: &str) -> String {
        format!("{pipeline}-{}", self.suffix())
    }
}

/// What the reconciler observed before validating: facts the spec alone does not give.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Facts {
    /// Referenced Secrets that exist, by name: for each key, a digest of its value. Only
    /// the digests of keys a component reads go into its config hash, so rotating a
    /// credential rolls exactly the pods that use it, and a label edit rolls nothing.
    pub secrets: BTreeMap<String, BTreeMap<String, String>>,
    /// Whether the updates and DLQ topics are usable (Strimzi `Ready`, or external Kafka).
    pub topics_ready: bool,
    /// Partition count of the existing updates `KafkaTopic`, if one exists.
    pub existing_partitions: Option<i32>,
    /// Whether the cluster serves KEDA's `ScaledObject` (keda.sh/v1alpha1): lag and
    /// connections modes need it, and fall back to CPU without it.
    pub keda_installed: bool,
    /// The port of each referenced Secret key that holds a URL with one, by Secret name and
    /// key: the NetworkPolicies let the workloads reach exactly those ports. A port is not a
    /// credential; the rest of the value is never kept.
    pub ports: BTreeMap<String, BTreeMap<String, u16>>,
    /// Whether the cluster serves the Prometheus Operator's `PodMonitor`
    /// (monitoring.coreos.com/v1): connections mode's series come from one.
    pub pod_monitors_installed: bool,
    /// With `kafka.authentication`: whether Strimzi has made the pipeline's KafkaUser
    /// `Ready` and the Secrets its credentials come from (the user's and the cluster CA's)
    /// exist. Ingest and the processor wait for it: their pods could not start without them.
    pub kafka_user_ready: bool,
    /// The Redis URL from its Secret, for the freshness canary's published figures (never
    /// used by a builder: no child holds it).
    pub redis_url: Option<crate::urls::RedisUrl>,
}
