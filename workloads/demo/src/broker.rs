//! A real Kafka-protocol broker for the benchmark: Tansu, started fresh for every run.
//!
//! librdkafka's mock broker lives inside the benchmark process, and at tens of thousands of
//! updates a second its produce acknowledgements become the limit: ingest falls behind, the
//! supplier drops it, and the figures describe the mock rather than the pipeline. Tansu
//! (crates.io `tansu`, one Rust binary, no JVM) speaks the Kafka protocol and runs here with
//! its memory storage engine; `make bench-pipeline BROKER=tansu` installs it with cargo. Each
//! run gets a fresh broker on a free port, with the topics created before any stage starts,
//! so no run reads another's records or committed offsets, and its memory goes with it.

use crate::children::{ChildProcess, ChildSpec};
use anyhow::{bail, Context};
use odds_contracts::names::{TOPIC_ODDS_UPDATES, TOPIC_ODDS_UPDATES_DLQ};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a fresh broker may take to answer and to show its topics.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a broker may take to stop on SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A running Tansu broker, stopped by [`TansuBroker::stop`] (or killed when dropped).
pub struct TansuBroker {
    /// `host:port` to give clients as `bootstrap.servers`.
    pub bootstrap: String,
    child: ChildProcess,
}

impl TansuBroker {
    /// Starts `binary` with memory storage on a free port (its output in
    /// `log_dir/kafka-broker.log`), waits until it answers, and creates `odds_updates` with
    /// `partitions` partitions and its DLQ with one.
    pub async fn start(
        binary: &Path,
        partitions: i32,
        log_dir: &Path,
    ) -> anyhow::Result<TansuBroker> {
        if !binary.is_file() {
            bail!(
                "Tansu not found at {}; install it with `make bench-pipeline BROKER=tansu` or \
                 `cargo install tansu --locked --features dynostore`",
                binary.display()
            );
        }
        let addr: SocketAddr = ([127, 0, 0, 1], odds_testkit::free_port()?).into();
        let url = format!("tcp://{addr}");
        let spec = ChildSpec {
            name: "kafka-broker",
            binary: binary.to_path_buf(),
            args: [
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ]
            .map(str::to_owned)
            .to_vec(),
            env: vec![("RUST_LOG".to_owned(), "warn".to_owned())],
            // Tansu serves no /readyz here; readiness is a metadata answer (below).
            ops_addr: addr,
        };
        let child = ChildProcess::spawn(spec, log_dir)?;
        let broker = TansuBroker {
            bootstrap: addr.to_string(),
            child,
        };
        let ready = async {
            broker.wait_answering().await?;
            broker.create_topics(partitions).await?;
            broker.wait_topics(partitions).await
        };
        if let Err(error) = ready.await {
            broker.stop().await;
            bail!(
                "{error:#}\nlast output of the Tansu broker:\n{}",
                broker.child.last_lines().join("\n")
            );
        }
        Ok(broker)
    }

    /// The broker's process id (its CPU and memory are part of the benchmark's report).
    pub fn pid(&self) -> u32 {
        self.child.pid
    }

    /// Resident memory (MiB) and CPU seconds so far.
    pub fn usage(&self) -> Option<(f64, f64)> {
        self.child.usage()
    }

    /// SIGTERM, then SIGKILL after a short grace: its data is throwaway.
    pub async fn stop(&self) {
        self.child.terminate(STOP_GRACE).await;
    }

    fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.bootstrap)
            .set("socket.timeout.ms", "2000");
        config
    }

    /// Waits until a metadata request is answered (the listener is up).
    async fn wait_answering(&self) -> anyhow::Result<()> {
        let producer: Arc<BaseProducer> = Arc::new(self.client_config().create()?);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.exited() {
                bail!("the Tansu broker exited ({status}) before answering");
            }
            let probe = producer.clone();
            let answered = tokio::task::spawn_blocking(move || {
                probe
                    .client()
                    .fetch_metadata(None, Duration::from_secs(1))
                    .is_ok()
            })
            .await
            .unwrap_or(false);
            if answered {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the Tansu broker at {} did not answer", self.bootstrap);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn create_topics(&self, partitions: i32) -> anyhow::Result<()> {
        let admin: AdminClient<DefaultClientContext> = self.client_config().create()?;
        let topics = [
            NewTopic::new(TOPIC_ODDS_UPDATES, partitions, TopicReplication::Fixed(1)),
            NewTopic::new(TOPIC_ODDS_UPDATES_DLQ, 1, TopicReplication::Fixed(1)),
        ];
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        for result in admin.create_topics(&topics, &options).await? {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => bail!("creating topic {topic} on Tansu: {code}"),
            }
        }
        Ok(())
    }

    /// Waits until both topics show every partition with a leader.
    async fn wait_topics(&self, partitions: i32) -> anyhow::Result<()> {
        let producer: Arc<BaseProducer> = Arc::new(self.client_config().create()?);
        let deadline = Instant::now() + START_TIMEOUT;
        let want = [
            (TOPIC_ODDS_UPDATES, partitions),
            (TOPIC_ODDS_UPDATES_DLQ, 1),
        ];
        loop {
            let probe = producer.clone();
            let complete = tokio::task::spawn_blocking(move || {
                let metadata = probe
                    .client()
                    .fetch_metadata(None, Duration::from_secs(2))
                    .ok()?;
                Some(want.iter().all(|(name, count)| {
                    metadata.topics().iter().any(|t| {
                        t.name() == *name
                            && t.error().is_none()
                            && t.partitions().len() == *count as usize
                            && t.partitions().iter().all(|p| p.leader() >= 0)
                    })
                }))
            })
            .await
            .ok()
            .flatten();
            if complete == Some(true) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("Tansu never showed the topics with {partitions} partition(s)");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for TansuBroker {
    /// A run that ends early (an error, Ctrl-C) must not leave the broker behind.
    fn drop(&mut self) {
        if self.child.exited().is_none() {
            let _ = std::process::Command::new("kill")
                .arg("-KILL")
                .arg(self.child.pid.to_string())
                .status()
                .context("killing the Tansu broker");
        }
    }
}
