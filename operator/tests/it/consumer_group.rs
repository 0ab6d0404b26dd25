//! One Kafka consumer group per pipeline: pipelines sharing a Kafka cluster never split each
//! other's records, and KEDA's lag trigger reads exactly the group the processor consumes in.

use crate::fixtures::{cpu_request, ready_facts, sample, sample_json, PipelineExt};
use odds_operator::build::{self, MigrationState};
use odds_operator::crd::{AutoscalingSpec, OddsPipeline, ScalingMode};
use odds_operator::render::{render, RenderOptions};
use odds_operator::validate::validate;
use serde_json::json;
use std::collections::BTreeSet;

/// `pipeline` in lag mode with KEDA installed: its processor's group and its trigger's group.
fn groups(pipeline: OddsPipeline) -> (String, String) {
    let pipeline = pipeline.edit(|p| {
        p.spec.processor.resources = Some(cpu_request("100m"));
        p.spec.processor.autoscaling = Some(AutoscalingSpec {
            mode: ScalingMode::Lag,
            max_replicas: 6,
            ..crate::fixtures::autoscaling_defaults()
        });
    });
    let facts = build::Facts {
        keda_installed: true,
        ..ready_facts()
    };
    let children = build::children(
        &validate(&pipeline, &facts).unwrap(),
        &MigrationState::Succeeded,
    );
    let config = children.config_map.unwrap().data.unwrap();
    let triggers: Vec<_> = children
        .scaled_objects
        .iter()
        .flat_map(|so| &so.spec.triggers)
        .filter(|t| t.type_ == "kafka")
        .collect();
    assert_eq!(triggers.len(), 1, "one Kafka trigger, the processor's");
    (
        config["KAFKA_GROUP"].clone(),
        triggers[0].metadata["consumerGroup"].clone(),
    )
}

#[test]
fn pipelines_on_one_kafka_get_their_own_group_and_the_trigger_reads_it() {
    // Three pipelines on the same Strimzi cluster `odds` (and one more on external brokers):
    // another name, another namespace, both.
    let pipelines = [
        ("default", "demo"),
        ("default", "other"),
        ("team-b", "demo"),
        ("team-b", "other"),
    ];
    let mut seen = BTreeSet::new();
    for (namespace, name) in pipelines {
        let (processor, trigger) = groups(sample().in_namespace(namespace).named(name));
        assert_eq!(processor, format!("odds-processor.{namespace}.{name}"));
        assert_eq!(
            trigger, processor,
            "{namespace}/{name}: KEDA reads the processor's group"
        );
        assert!(
            seen.insert(processor),
            "{namespace}/{name}: a group of its own"
        );
    }
    let (processor, trigger) = groups(sample().external_kafka("kafka:9092").named("ext"));
    assert_eq!(
        (processor.as_str(), trigger.as_str()),
        ("odds-processor.default.ext", "odds-processor.default.ext")
    );
}

#[test]
fn the_spec_group_wins_for_processor_and_trigger_alike() {
    for group in ["odds-processor", "team-a.odds_processor-2"] {
        let (processor, trigger) =
            groups(sample().edit(|p| p.spec.kafka.consumer_group = Some(group.into())));
        assert_eq!((processor.as_str(), trigger.as_str()), (group, group));
    }
}

#[test]
fn validation_refuses_a_group_kafka_tools_cannot_name() {
    let problems = |group: &str| {
        validate(
            &sample().edit(|p| p.spec.kafka.consumer_group = Some(group.into())),
            &ready_facts(),
        )
        .err()
        .map(|e| e.problems.join("; "))
        .unwrap_or_default()
    };
    for bad in &crate::fixtures::invalid_consumer_groups() {
        assert!(
            problems(bad).contains("kafka.consumerGroup")
                && problems(bad).contains("must be 1 to 249 of a-z, A-Z, 0-9, '.', '_' and '-'"),
            "{bad:?}: {}",
            problems(bad)
        );
    }
    for good in ["odds-processor", "A.b_C-9", &"g".repeat(249)] {
        assert_eq!(problems(good), "", "{good:?}");
    }
}

#[test]
fn render_gives_two_pipelines_in_one_file_two_groups() {
    let lag = |name: &str| {
        let mut cr = sample_json();
        cr["metadata"]["name"] = json!(name);
        cr["spec"]["processor"]["autoscaling"] =
            json!({"mode": "Lag", "minReplicas": 1, "maxReplicas": 6});
        serde_yaml::to_string(&cr).unwrap()
    };
    let file = format!("{}---\n{}", lag("blue"), lag("green"));
    let options = RenderOptions {
        namespace: "default".into(),
        strimzi: true,
        keda: true,
        pod_monitors: false,
        secrets: None,
    };
    let out = render(&file, &options).unwrap();
    for name in ["blue", "green"] {
        let group = format!("odds-processor.default.{name}");
        assert!(
            out.contains(&format!("KAFKA_GROUP: {group}\n")),
            "{name}: {out}"
        );
        assert!(
            out.contains(&format!("consumerGroup: {group}\n")),
            "{name}: {out}"
        );
    }
}
