//! The sample pipeline's rendered pods on the node: the migration Job completes, every
//! Deployment becomes Ready, and a WebSocket client of the odds-service Service receives
//! odds that came from the simulator through ingest, Kafka and the processor. Then one
//! deliberately broken render per class of defect, each of which must fail the run.

use crate::cluster::{Cluster, External, START_DEADLINE};
use crate::kubelet::Manifests;
use crate::netpol::{Labels, Policies};
use crate::sandbox::{self, repo_file};
use futures_util::{SinkExt, StreamExt};
use odds_testkit::{TestDatabase, TestKafka, TestRedis};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// `operator/samples/secrets.yaml` as a kubelet resolves it: Secret name → key → value.
pub fn sample_secrets() -> BTreeMap<String, BTreeMap<String, String>> {
    let text = std::fs::read_to_string(repo_file("operator/samples/secrets.yaml")).unwrap();
    yaml_documents(&text)
        .into_iter()
        .map(|secret| {
            let name = secret["metadata"]["name"].as_str().unwrap().to_string();
            (
                name,
                serde_json::from_value(secret["stringData"].clone()).unwrap(),
            )
        })
        .collect()
}

fn yaml_documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// `odds-operator render` of the sample, as a user runs it, but on the plain listener: the
/// test kit's mock brokers speak neither TLS nor SASL, so `kafka.authentication` (the
/// Strimzi login, checked against librdkafka in the operator's tests) is taken out.
pub fn render_sample() -> Vec<Value> {
    let text = std::fs::read_to_string(repo_file("operator/samples/oddspipeline.yaml")).unwrap();
    let mut sample: Value = serde_yaml::from_str(&text).unwrap();
    let removed = sample["spec"]["kafka"]
        .as_object_mut()
        .unwrap()
        .remove("authentication");
    assert!(
        removed.is_some(),
        "the sample logs in to Kafka (kafka.authentication); this test expects to take it out"
    );
    let plain = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(plain.path(), serde_yaml::to_string(&sample).unwrap()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_odds-operator"))
        .args(["render", "-f"])
        .arg(plain.path())
        .arg("--secrets")
        .arg(repo_file("operator/samples/secrets.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    yaml_documents(&String::from_utf8(out.stdout).unwrap())
}

/// `host:port` of a URL (`scheme://[user[:password]@]host:port[/path]`).
fn host_port(url: &str) -> (String, u16) {
    let (host, port) = odds_operator::observe::url_host_port(url).unwrap();
    (host.to_string(), port)
}

/// The datastores the sample points at, in the test kit.
struct Datastores {
    db: TestDatabase,
    redis: TestRedis,
    kafka: TestKafka,
}

impl Datastores {
    async fn start() -> Datastores {
        Datastores {
            db: TestDatabase::create().await.unwrap(),
            redis: TestRedis::start().await.unwrap(),
            kafka: TestKafka::start(1, 6).unwrap(),
        }
    }

    /// The sample Secrets, with the database URL's credentials and database replaced by the
    /// test database's; its host stays the sample's Service name.
    fn secrets(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        let mut secrets = sample_secrets();
        let sample = secrets["odds-postgres"]["url"].clone();
        let (host, port) = host_port(&sample);
        let test_url = self.db.url();
        let (test_host, test_port) = host_port(test_url);
        let url = test_url.replace(
            &format!("{test_host}:{test_port}"),
            &format!("{host}:{port}"),
        );
        secrets
            .get_mut("odds-postgres")
            .unwrap()
            .insert("url".into(), url);
        secrets
    }

    /// The Services outside the pipeline, named as the sample's Secrets and the rendered
    /// ConfigMap name them, and the mock brokers' own addresses.
    fn external(&self, manifests: &Manifests) -> (Vec<External>, Vec<(SocketAddr, Labels, u16)>) {
        let at = |url: &str, target: SocketAddr, labels: Labels| {
            let (name, port) = host_port(url);
            External {
                name,
                port,
                target,
                labels,
            }
        };
        let secrets = &manifests.secrets;
        let (db_host, db_port) = host_port(self.db.url());
        let db: SocketAddr = format!("{db_host}:{db_port}").parse().unwrap();
        let brokers = self.kafka.bootstrap_servers().split(',').next().unwrap();
        let broker: SocketAddr = brokers.parse().unwrap();
        let config = manifests.of_kind("ConfigMap").next().expect("a ConfigMap")["data"]
            ["KAFKA_BROKERS"]
            .as_str()
            .unwrap()
            .to_string();
        let external = vec![
            at(
                &secrets["odds-postgres"]["url"],
                db,
                datastore_pods("postgres"),
            ),
            at(
                &secrets["odds-redis"]["url"],
                SocketAddr::from(([127, 0, 0, 1], self.redis.port())),
                datastore_pods("redis"),
            ),
            at(&format!("kafka://{config}"), broker, kafka_pods()),
        ];
        // The mock broker's own address stands for a broker pod's client port.
        (external, vec![(broker, kafka_pods(), 9092)])
    }
}

/// The labels of the sample datastores' pods (operator/samples/datastores.yaml).
pub fn datastore_pods(name: &str) -> Labels {
    Labels::from([
        ("app.kubernetes.io/name".to_string(), name.to_string()),
        (
            "app.kubernetes.io/part-of".to_string(),
            "odds-dev-datastores".to_string(),
        ),
    ])
}

/// The labels Strimzi gives every pod of the sample's Kafka cluster `odds`.
pub fn kafka_pods() -> Labels {
    Labels::from([
        ("strimzi.io/cluster".to_string(), "odds".to_string()),
        ("strimzi.io/kind".to_string(), "Kafka".to_string()),
    ])
}

/// Renders the sample, lets `break_it` change the manifests, and runs them on the node,
/// giving each pod `ready_deadline` to become Ready.
async fn run_sample(
    ready_deadline: Duration,
    break_it: impl FnOnce(&mut Vec<Value>),
    then: impl AsyncFnOnce(&mut Cluster<'_>),
) -> anyhow::Result<()> {
    let Some(node) = sandbox::node().unwrap() else {
        return Ok(());
    };
    let stores = Datastores::start().await;
    let mut objects = render_sample();
    break_it(&mut objects);
    let manifests = Manifests {
        objects,
        secrets: stores.secrets(),
    };
    let (external, passthrough) = stores.external(&manifests);
    let policies = Policies::of(&manifests.objects);
    let mut cluster = Cluster::new(
        &node,
        &manifests.services()?,
        &external,
        passthrough,
        policies,
    )?;
    cluster.ready_deadline = ready_deadline;
    cluster.run(&manifests).await?;
    then(&mut cluster).await;
    Ok(())
}

/// The one container of the workload `name` in the rendered objects.
fn container<'a>(objects: &'a mut [Value], name: &str) -> &'a mut Value {
    let object = objects
        .iter_mut()
        .find(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no Deployment {name} rendered"));
    &mut object["spec"]["template"]["spec"]["containers"][0]
}

#[tokio::test]
async fn the_sample_pods_start_as_rendered_and_serve_live_odds_through_the_service() {
    run_sample(
        START_DEADLINE,
        |_| {},
        async |cluster| {
            cluster.check_filesystems().unwrap();
            assert_eq!(
                cluster.denied(),
                Vec::<String>::new(),
                "the sample needs no refused flow"
            );
            let stream = cluster.connect("demo-odds-service", 8080).await.unwrap();
            let (mut ws, _) =
                tokio_tungstenite::client_async("ws://demo-odds-service:8080/ws/odds", stream)
                    .await
                    .unwrap();
            let subscribe = json!({"type": "subscribe", "eventId": "*"}).to_string();
            ws.send(Message::text(subscribe)).await.unwrap();
            let odds = tokio::time::timeout(Duration::from_secs(120), async {
                while let Some(frame) = ws.next().await {
                    let Ok(Message::Text(text)) = frame else {
                        continue;
                    };
                    let message: Value = serde_json::from_str(&text).unwrap();
                    if message["type"] == "odds" || message["type"] == "snapshot" {
                        return message;
                    }
                }
                panic!("the WebSocket closed before any odds arrived");
            })
            .await
            .expect("odds from the simulator reach a client of the Service");
            assert!(odds["data"]["version"].as_u64().unwrap() >= 1, "{odds}");
            assert_eq!(odds["data"]["source"], "supplier-simulator", "{odds}");
        },
    )
    .await
    .unwrap();
}

/// Runs a broken render and returns the failure, which must exist.
async fn failure_of(break_it: impl FnOnce(&mut Vec<Value>)) -> String {
    failure_within(START_DEADLINE, break_it).await
}

/// As [`failure_of`], for a defect that shows only as a probe that never passes: waiting the
/// full deadline would prove nothing more, since nothing listens where the probe knocks.
async fn failure_within(
    ready_deadline: Duration,
    break_it: impl FnOnce(&mut Vec<Value>),
) -> String {
    if !rustix::process::geteuid().is_root() {
        let _ = sandbox::node();
        return "not run".into();
    }
    match run_sample(ready_deadline, break_it, async |_| {}).await {
        Ok(()) => panic!("the broken render ran as if nothing were wrong"),
        Err(error) => format!("{error:#}"),
    }
}

fn check(failure: &str, expected: &[&str]) {
    if failure == "not run" {
        return;
    }
    for part in expected {
        assert!(failure.contains(part), "expected {part:?} in: {failure}");
    }
}

#[tokio::test]
async fn an_env_name_no_binary_reads_fails() {
    let failure = failure_of(|objects| {
        let c = container(objects, "demo-odds-service");
        for var in c["env"].as_array_mut().unwrap() {
            if var["name"] == "DATABASE_URL" {
                var["name"] = json!("DATABASE_URI");
            }
        }
    })
    .await;
    check(
        &failure,
        &["Deployment demo-odds-service exited", "DATABASE_URL"],
    );
}

#[tokio::test]
async fn a_probe_on_a_port_no_process_listens_on_fails() {
    // The simulator is the first Deployment: the failure names its port whatever the load.
    let failure = failure_within(Duration::from_secs(20), |objects| {
        let c = container(objects, "demo-simulator");
        for port in c["ports"].as_array_mut().unwrap() {
            if port["name"] == "metrics" {
                port["containerPort"] = json!(9100);
            }
        }
    })
    .await;
    check(
        &failure,
        &["demo-simulator: readiness probe GET /readyz on port 9100"],
    );
}

#[tokio::test]
async fn a_probe_path_that_404s_fails() {
    let failure = failure_of(|objects| {
        container(objects, "demo-ingest")["readinessProbe"]["httpGet"]["path"] = json!("/ready");
    })
    .await;
    check(
        &failure,
        &["demo-ingest: readiness probe GET /ready", "HTTP 404"],
    );
}

#[tokio::test]
async fn an_argument_the_binary_rejects_fails() {
    let failure = failure_of(|objects| {
        container(objects, "demo-processor")["args"] = json!(["--batch-size", "10"]);
    })
    .await;
    check(
        &failure,
        &["Deployment demo-processor exited", "--batch-size"],
    );
}

#[tokio::test]
async fn a_migration_job_that_cannot_reach_its_database_fails() {
    let failure = failure_of(|objects| {
        let job = objects.iter_mut().find(|o| o["kind"] == "Job").unwrap();
        job["spec"]["template"]["spec"]["containers"][0]["env"][0] = json!({"name": "DATABASE_URL", "value": "postgres://odds@postgres:5432/no_such_database"});
    })
    .await;
    check(&failure, &["Job demo-migrate-", "failed"]);
}

#[tokio::test]
async fn a_pod_that_would_run_as_root_is_refused() {
    let failure = failure_of(|objects| {
        let object = objects
            .iter_mut()
            .find(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == "demo-ingest")
            .unwrap();
        object["spec"]["template"]["spec"]["securityContext"]["runAsUser"] = json!(0);
    })
    .await;
    check(&failure, &["demo-ingest", "runAsNonRoot"]);
}

#[tokio::test]
async fn a_network_policy_that_forgets_a_flow_fails() {
    // Ingest's policy without its egress to the simulator: it never hears the supplier.
    let failure = failure_within(Duration::from_secs(30), |objects| {
        let policy = objects
            .iter_mut()
            .find(|o| o["kind"] == "NetworkPolicy" && o["metadata"]["name"] == "demo-ingest")
            .unwrap();
        policy["spec"]["egress"]
            .as_array_mut()
            .unwrap()
            .retain(|rule| rule["ports"][0]["port"] != 8090);
    })
    .await;
    check(
        &failure,
        &[
            "Deployment demo-ingest: readiness probe",
            "refused by NetworkPolicy: ingest -> demo-simulator:8090",
        ],
    );
}
