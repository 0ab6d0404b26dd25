//! `kafka.topicDeletionPolicy`: the KafkaTopics outlive their pipeline unless it says `Delete`.
//! The builders, the CRD field, and the reconcile loop against the in-memory API, whose
//! garbage collection deletes what names a deleted owner's uid and whose server-side apply
//! drops owner references the operator stops applying (harness.rs).

use crate::fixtures::{repo_file, sample, valid, PipelineExt};
use crate::harness::{harness, Harness};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::runtime::reflector::ObjectRef;
use kube::ResourceExt;
use odds_operator::build::{self, topic, KafkaTopic, MigrationState, FIELD_MANAGER};
use odds_operator::crd::{OddsPipeline, TopicDeletionPolicy};
use serde_json::{json, Value};

const TOPICS: [&str; 2] = ["demo-odds-updates", "demo-odds-updates-dlq"];

/// The sample with `topicDeletionPolicy: Delete`.
fn deleting_topics() -> OddsPipeline {
    sample().edit(|p| p.spec.kafka.topic_deletion_policy = TopicDeletionPolicy::Delete)
}

async fn topic(h: &Harness, name: &str) -> Option<KafkaTopic> {
    h.get::<KafkaTopic>(name).await
}

/// The partitions the KafkaTopic `name` asks for.
async fn partitions(h: &Harness, name: &str) -> Option<i32> {
    topic(h, name).await.expect(name).spec.partitions
}

/// `(kind, name, uid, controller)` of each owner reference of a KafkaTopic.
async fn topic_owners(h: &Harness, name: &str) -> Vec<(String, String, String, Option<bool>)> {
    topic(h, name)
        .await
        .expect(name)
        .owner_references()
        .iter()
        .map(|r| (r.kind.clone(), r.name.clone(), r.uid.clone(), r.controller))
        .collect()
}

/// Each topic names the sample pipeline as its one (controlling) owner, so that garbage
/// collection deletes it with the pipeline.
async fn assert_every_topic_owned_by_the_pipeline(h: &Harness) {
    for name in TOPICS {
        assert_eq!(
            topic_owners(h, name).await,
            vec![(
                "OddsPipeline".into(),
                "demo".into(),
                "0c6f-uid".into(),
                Some(true)
            )],
            "{name}"
        );
    }
}

/// Every topic of the pipeline still exists (`true`: retained) or is gone (`false`: deleted).
async fn assert_topics_exist(h: &Harness, exist: bool) {
    for name in TOPICS {
        assert_eq!(
            topic(h, name).await.is_some(),
            exist,
            "{name} exists: {exist}"
        );
    }
}

/// How many `Created` events name a KafkaTopic (a series counts once per publish).
async fn topic_creations(h: &Harness) -> i32 {
    h.stored_events()
        .await
        .iter()
        .filter(|e| {
            e.reason.as_deref() == Some("Created")
                && e.note
                    .as_deref()
                    .is_some_and(|n| n.starts_with("Created KafkaTopic"))
        })
        .map(|e| e.series.as_ref().map_or(1, |s| s.count))
        .sum()
}

/// Whether the pipeline's workloads and config went (garbage collection of owned children).
async fn owned_children_gone(h: &Harness) -> bool {
    h.get::<ConfigMap>("demo-config").await.is_none()
        && h.all::<Deployment>().await.is_empty()
        && h.all::<Service>().await.is_empty()
        && h.all::<Job>().await.is_empty()
}

#[test]
fn by_default_topics_have_no_owner_reference_and_with_delete_the_pipeline_s() {
    let retained = build::children(&valid(&sample()), &MigrationState::Succeeded);
    assert_eq!(retained.topics.len(), 2);
    for t in &retained.topics {
        assert_eq!(t.metadata.owner_references, None, "{}", t.name_any());
        // Still labelled as the pipeline's: the watch maps Strimzi's news to it by label.
        assert_eq!(t.labels()["app.kubernetes.io/managed-by"], "odds-operator");
        assert_eq!(t.labels()["app.kubernetes.io/instance"], "demo");
        assert_eq!(t.labels()[topic::STRIMZI_CLUSTER_LABEL], "odds");
    }
    // Every other child keeps its controller reference.
    let config_map = retained.config_map.as_ref().unwrap();
    assert_eq!(config_map.owner_references()[0].uid, "0c6f-uid");
    assert!(retained
        .deployments
        .iter()
        .all(|d| d.owner_references().len() == 1));

    let deleted = build::children(&valid(&deleting_topics()), &MigrationState::Succeeded);
    for t in &deleted.topics {
        let owners = t.owner_references();
        assert_eq!(owners.len(), 1, "{}", t.name_any());
        let owner = &owners[0];
        assert_eq!(
            (
                owner.api_version.as_str(),
                owner.kind.as_str(),
                owner.name.as_str(),
                owner.uid.as_str()
            ),
            (
                "odds-pipeline.github.io/v1alpha1",
                "OddsPipeline",
                "demo",
                "0c6f-uid"
            )
        );
        assert_eq!(owner.controller, Some(true));
        assert_eq!(owner.block_owner_deletion, Some(true));
    }
    // The policy changes nothing else about a topic.
    let strip = |t: &KafkaTopic| {
        let mut t = t.clone();
        t.metadata.owner_references = None;
        serde_json::to_value(t).unwrap()
    };
    assert_eq!(
        retained.topics.iter().map(strip).collect::<Vec<_>>(),
        deleted.topics.iter().map(strip).collect::<Vec<_>>()
    );
}

#[test]
fn the_crd_field_defaults_to_retain_and_documents_both_values() {
    let text = std::fs::read_to_string(repo_file("crds/oddspipelines.yaml")).unwrap();
    let crd: Value = serde_yaml::from_str(&text).unwrap();
    let field = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        ["properties"]["kafka"]["properties"]["topicDeletionPolicy"];
    assert_eq!(field["type"], "string");
    assert_eq!(field["default"], "Retain");
    assert_eq!(field["enum"], json!(["Retain", "Delete"]));
    let description = field["description"].as_str().unwrap();
    for words in [
        "`Retain` (the default)",
        "`Delete`",
        "owner reference",
        "data",
    ] {
        assert!(description.contains(words), "{words}: {description}");
    }
    // A spec without the field gets the default.
    let mut unset = crate::fixtures::sample_json();
    unset["spec"]["kafka"]
        .as_object_mut()
        .unwrap()
        .remove("topicDeletionPolicy");
    let typed: OddsPipeline = serde_json::from_value(unset).unwrap();
    assert_eq!(
        typed.spec.kafka.topic_deletion_policy,
        TopicDeletionPolicy::Retain
    );
}

#[test]
fn a_topic_maps_to_its_pipeline_by_label_owner_reference_or_not() {
    let children = build::children(&valid(&sample()), &MigrationState::Succeeded);
    let retained = &children.topics[0];
    assert_eq!(
        topic::pipeline_of(retained),
        Some(ObjectRef::new("demo").within("default"))
    );
    let mut stranger = retained.clone();
    stranger
        .labels_mut()
        .insert("app.kubernetes.io/managed-by".into(), "someone".into());
    assert_eq!(topic::pipeline_of(&stranger), None);
}

#[tokio::test]
async fn deleting_the_pipeline_retains_its_topics_by_default() {
    let h = harness(sample(), true).await;
    h.roll_out().await;
    assert_eq!(h.condition("Ready").await.status, "True");
    for name in TOPICS {
        assert_eq!(topic_owners(&h, name).await, vec![], "{name}");
    }
    let before = topic(&h, "demo-odds-updates").await.unwrap();

    h.delete_pipeline().await;

    assert!(owned_children_gone(&h).await, "garbage collection ran");
    assert_topics_exist(&h, true).await;
    let after = topic(&h, "demo-odds-updates").await.unwrap();
    assert_eq!(after.uid(), before.uid(), "the same object");
    assert_eq!(after.spec, before.spec, "partitions, replicas, config kept");
    assert!(
        after.is_ready(),
        "Strimzi still reports the topic (and its data)"
    );
}

#[tokio::test]
async fn with_delete_the_topics_go_with_the_pipeline() {
    let h = harness(deleting_topics(), true).await;
    h.roll_out().await;
    assert_eq!(h.condition("Ready").await.status, "True");
    assert_every_topic_owned_by_the_pipeline(&h).await;

    h.delete_pipeline().await;

    assert!(owned_children_gone(&h).await);
    assert_topics_exist(&h, false).await;
}

#[tokio::test]
async fn a_re_created_pipeline_adopts_its_retained_topics() {
    let h = harness(sample(), true).await;
    h.roll_out().await;
    let retained = topic(&h, "demo-odds-updates").await.unwrap();
    let created_before = topic_creations(&h).await;
    h.delete_pipeline().await;

    // Re-created with a different retention: the same field manager takes the topic over.
    let uid = h
        .create_pipeline(sample().edit(|p| {
            p.spec
                .kafka
                .topic
                .config
                .insert("retention.ms".into(), "86400000".into());
        }))
        .await;
    assert_ne!(uid, "0c6f-uid");
    h.reconcile().await;
    assert_eq!(
        h.condition("TopicReady").await.status,
        "True",
        "the retained topics are Ready as they are"
    );
    assert_eq!(h.condition("Degraded").await.status, "False");
    let adopted = topic(&h, "demo-odds-updates").await.unwrap();
    assert_eq!(adopted.uid(), retained.uid(), "adopted, not re-created");
    assert_eq!(adopted.spec.partitions, Some(6));
    assert_eq!(adopted.spec.config["retention.ms"], json!("86400000"));
    assert_eq!(adopted.owner_references(), &[]);
    assert!(adopted
        .managed_fields()
        .iter()
        .any(|e| e.manager.as_deref() == Some(FIELD_MANAGER)));
    assert_eq!(
        topic_creations(&h).await,
        created_before,
        "no KafkaTopic created again"
    );

    // The rest of the pipeline comes back as after any creation (Strimzi makes the new
    // pipeline's KafkaUser Ready again).
    h.kafka_user_ready().await;
    h.migration_done().await;
    h.reconcile().await;
    h.pods_ready().await;
    h.reconcile().await;
    assert_eq!(h.condition("Ready").await.status, "True");
    assert_eq!(h.condition("Degraded").await.status, "False");
    let workload = h.deployment("demo-processor").await.unwrap();
    assert_eq!(workload.owner_references()[0].uid, uid);
}

#[tokio::test]
async fn a_re_created_pipeline_may_not_shrink_a_retained_topic() {
    let h = harness(sample(), true).await;
    h.roll_out().await;
    h.change(json!({"spec": {"kafka": {"topic": {"partitions": 12}}}}))
        .await;
    assert_eq!(partitions(&h, "demo-odds-updates").await, Some(12));
    h.delete_pipeline().await;

    // The sample asks for 6 partitions: Kafka cannot remove any.
    h.create_pipeline(sample()).await;
    let applied = h.applied("KafkaTopic/demo-odds-updates").len();
    h.reconcile().await;
    h.assert_degraded(
        "InvalidSpec",
        "kafka.topic.partitions may not shrink (topic has 12, spec asks 6)",
    )
    .await;
    assert_eq!(
        h.applied("KafkaTopic/demo-odds-updates").len(),
        applied,
        "nothing applied"
    );
    assert_eq!(partitions(&h, "demo-odds-updates").await, Some(12));

    // Asking for what the topic has adopts it.
    h.change(json!({"spec": {"kafka": {"topic": {"partitions": 12}}}}))
        .await;
    assert_eq!(h.condition("Degraded").await.status, "False");
    assert_eq!(h.condition("TopicReady").await.status, "True");
    assert_eq!(partitions(&h, "demo-odds-updates").await, Some(12));
}

#[tokio::test]
async fn switching_the_policy_adds_and_removes_the_owner_reference() {
    let h = harness(sample(), true).await;
    h.roll_out().await;
    for name in TOPICS {
        assert_eq!(topic_owners(&h, name).await, vec![], "{name}");
    }

    h.change(json!({"spec": {"kafka": {"topicDeletionPolicy": "Delete"}}}))
        .await;
    assert_every_topic_owned_by_the_pipeline(&h).await;
    let events = h.events().await;
    assert!(
        events
            .iter()
            .any(|(_, r, n)| r == "Updated" && n == "Updated KafkaTopic demo-odds-updates"),
        "{events:?}"
    );

    // Server-side apply drops the reference the operator applied before and leaves out now.
    h.change(json!({"spec": {"kafka": {"topicDeletionPolicy": "Retain"}}}))
        .await;
    for name in TOPICS {
        assert_eq!(topic_owners(&h, name).await, vec![], "{name}");
        let live = topic(&h, name).await.unwrap();
        let claims = live.managed_fields().iter().any(|e| {
            e.fields_v1
                .as_ref()
                .and_then(|f| f.0.get("f:metadata"))
                .and_then(|m| m.get("f:ownerReferences"))
                .is_some()
        });
        assert!(!claims, "{name}: no manager claims ownerReferences");
    }
    assert_eq!(h.condition("Ready").await.status, "True");
    // Other children keep theirs, however often they are applied.
    let workload = h.deployment("demo-ingest").await.unwrap();
    assert_eq!(workload.owner_references()[0].uid, "0c6f-uid");

    // And the switch is what deletion honours.
    h.delete_pipeline().await;
    assert_topics_exist(&h, true).await;
}

#[tokio::test]
async fn a_topic_the_spec_no_longer_names_is_never_pruned() {
    // Even one the pipeline controls (Delete): only garbage collection deletes topics.
    let h = harness(deleting_topics(), true).await;
    h.roll_out().await;
    h.change(json!({"spec": {"kafka": {"topic": {"name": "odds_v2"}}}}))
        .await;
    assert!(topic(&h, "demo-odds-v2").await.is_some());
    let old = topic(&h, "demo-odds-updates").await;
    assert!(old.is_some(), "the old KafkaTopic (and its data) stays");
    let events = h.events().await;
    assert!(
        !events
            .iter()
            .any(|(_, r, n)| r == "Deleted" && n.contains("KafkaTopic")),
        "{events:?}"
    );
    assert!(!h
        .calls
        .lock()
        .unwrap()
        .iter()
        .any(|(verb, _, resource)| verb == "delete" && resource == "kafkatopics"));
}
