#!/usr/bin/env bash
# make e2e-kind: the pipeline's life on the kind cluster, step by step, against the image in the
# nodes (the Makefile runs kind-up and images first):
#   operator installed -> pipeline applied -> Ready -> live odds over the WebSocket through a
#   port-forward -> processor scaled by a patch -> status shows it -> pipeline deleted ->
#   children gone -> KafkaTopics kept.
# Exits non-zero at the first failing step and names it.
#
# Topics: with the default spec.kafka.topicDeletionPolicy, Retain, the KafkaTopics carry no
# owner reference, so they and their data outlive the pipeline (operator/README.md). The last
# steps check that they stay, still Ready, then delete them by hand to leave the cluster as it
# was. E2E_TOPIC_DELETION=Delete patches the pipeline to topicDeletionPolicy: Delete before
# deleting it (waiting until the operator has put its owner reference on the topics) and
# checks that the topics go with it.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"
need docker kind kubectl helm python3 curl
need_cluster
port="${E2E_PORT:-18080}"
topic_policy="${E2E_TOPIC_DELETION:-Retain}"
case "$topic_policy" in
  Retain | Delete) ;;
  *) die "E2E_TOPIC_DELETION must be 'Retain' or 'Delete' (spec.kafka.topicDeletionPolicy), not '$topic_policy'" ;;
esac
selector="app.kubernetes.io/instance=${PIPELINE},app.kubernetes.io/managed-by=odds-operator"
pf_pid=""
cleanup() {
  local code=$?
  if [ -n "$pf_pid" ]; then kill "$pf_pid" 2>/dev/null || true; fi
  if [ "$code" -ne 0 ]; then
    diagnose_pipeline || true
    say "FAILED at step: $CURRENT_STEP (exit $code)" >&2
  fi
}
trap cleanup EXIT

step "image $IMAGE loaded in the cluster"
docker exec "${CLUSTER}-control-plane" crictl inspecti "docker.io/library/$IMAGE" >/dev/null ||
  die "image $IMAGE is not in the kind nodes: run 'make images'"

step "Kafka 'odds' Ready"
k wait -n "$NAMESPACE" kafka/odds --for=condition=Ready --timeout=60s

step "operator installed"
adopt_crd
h upgrade --install "$RELEASE" "$ROOT/charts/odds-operator" \
  --namespace "$OPERATOR_NAMESPACE" --create-namespace --wait --timeout 5m

# Each listing must succeed: an API error is not "gone".
children_gone() {
  local left
  left="$(k get -n "$NAMESPACE" deployments,services,jobs,configmaps,poddisruptionbudgets,horizontalpodautoscalers,ingresses,networkpolicies,kafkausers \
    -l "$selector" -o name)" || return 1
  [ -z "$left" ]
}
topics_gone() {
  local left
  left="$(k get -n "$NAMESPACE" kafkatopics -l "$selector" -o name)" || return 1
  [ -z "$left" ]
}
# Each of the pipeline's KafkaTopics as "name=<kinds of its owners>", one a line.
topic_owners() {
  k get -n "$NAMESPACE" kafkatopics -l "$selector" \
    -o jsonpath='{range .items[*]}{.metadata.name}={.metadata.ownerReferences[*].kind}{"\n"}{end}'
}
# There are KafkaTopics, and the pipeline owns each (Delete) / nothing owns any (Retain).
topics_owned() {
  local owners
  owners="$(topic_owners)" || return 1
  [ -n "$owners" ] && ! grep -qv '=OddsPipeline$' <<<"$owners"
}
topics_unowned() {
  local owners
  owners="$(topic_owners)" || return 1
  [ -n "$owners" ] && ! grep -qv '=$' <<<"$owners"
}

step "a fresh pipeline '$PIPELINE' applied"
if k get -n "$NAMESPACE" "oddspipeline/$PIPELINE" >/dev/null 2>&1; then
  # Foreground: the pipeline goes only after the children it owns, KafkaTopics it owned
  # (topicDeletionPolicy: Delete) included. Topics it retained stay, and the new pipeline
  # adopts them.
  say "deleting the existing pipeline '$PIPELINE' and its children first"
  k delete -n "$NAMESPACE" "oddspipeline/$PIPELINE" --cascade=foreground --wait --timeout=5m
  retry_until 180 "the old pipeline's children gone" children_gone
fi
k apply -n "$NAMESPACE" -f "$SAMPLES/oddspipeline.yaml"

step "KafkaUser ${PIPELINE}-kafka-client Ready (the secured listener's login)"
user_exists() { k get -n "$NAMESPACE" "kafkauser/${PIPELINE}-kafka-client" >/dev/null 2>&1; }
retry_until 120 "KafkaUser ${PIPELINE}-kafka-client exists" user_exists
k wait -n "$NAMESPACE" "kafkauser/${PIPELINE}-kafka-client" --for=condition=Ready --timeout=5m

step "pipeline Ready"
k wait -n "$NAMESPACE" "oddspipeline/$PIPELINE" --for=condition=Ready --timeout=10m
k get oddspipelines -n "$NAMESPACE"
step "ingest and processor log in on the TLS listener (port 9093, SCRAM-SHA-512)"
brokers="$(k get -n "$NAMESPACE" "configmap/${PIPELINE}-config" -o jsonpath='{.data.KAFKA_BROKERS}')"
protocol="$(k get -n "$NAMESPACE" "configmap/${PIPELINE}-config" -o jsonpath='{.data.KAFKA_PROP_SECURITY_PROTOCOL}')"
if [ "$brokers" != "odds-kafka-bootstrap:9093" ] || [ "$protocol" != SASL_SSL ]; then
  die "expected the secured listener, got KAFKA_BROKERS=$brokers KAFKA_PROP_SECURITY_PROTOCOL=$protocol"
fi

step "port-forward to ${PIPELINE}-odds-service on localhost:$port"
kubectl --context "$CONTEXT" port-forward -n "$NAMESPACE" "service/${PIPELINE}-odds-service" \
  "${port}:8080" >/dev/null 2>&1 &
pf_pid=$!
rest_answers() { curl -fsS -o /dev/null "http://127.0.0.1:${port}/v1/events"; }
retry_until 60 "GET /v1/events through the port-forward" rest_answers

step "a WebSocket client receives live odds"
python3 "$ROOT/charts/kind/ws_check.py" --url "ws://127.0.0.1:${port}/ws/odds" \
  --min-updates 5 --timeout 60
kill "$pf_pid" 2>/dev/null || true
pf_pid=""

step "processor scaled to 3 by a patch of the pipeline"
k patch -n "$NAMESPACE" "oddspipeline/$PIPELINE" --type merge \
  -p '{"spec":{"processor":{"replicas":3}}}'
processor_scaled() {
  [ "$(k get -n "$NAMESPACE" "deployment/${PIPELINE}-processor" -o jsonpath='{.spec.replicas}')" = 3 ]
}
retry_until 120 "deployment ${PIPELINE}-processor at 3 replicas" processor_scaled

step "status shows processor 3/3"
status_shows_three() {
  [ "$(k get -n "$NAMESPACE" "oddspipeline/$PIPELINE" -o jsonpath='{.status.processor.summary}')" = "3/3" ]
}
retry_until 300 "status.processor.summary = 3/3" status_shows_three
k get oddspipelines -n "$NAMESPACE"

if [ "$topic_policy" = Delete ]; then
  step "topicDeletionPolicy set to Delete by a patch of the pipeline"
  k patch -n "$NAMESPACE" "oddspipeline/$PIPELINE" --type merge \
    -p '{"spec":{"kafka":{"topicDeletionPolicy":"Delete"}}}'
  retry_until 60 "every KafkaTopic labelled $selector owned by oddspipeline/$PIPELINE" topics_owned
else
  step "KafkaTopics carry no owner reference (topicDeletionPolicy: Retain, the default)"
  topics_unowned || die "a KafkaTopic labelled $selector has an owner: $(topic_owners | tr '\n' ' ')"
fi

step "pipeline deleted"
k delete -n "$NAMESPACE" "oddspipeline/$PIPELINE" --wait --timeout=5m

step "children gone"
retry_until 180 "no Deployment, Service, Job, ConfigMap, PDB, HPA or Ingress labelled $selector" children_gone

if [ "$topic_policy" = Delete ]; then
  step "KafkaTopics deleted with the pipeline (and their data, by Strimzi)"
  retry_until 180 "no KafkaTopic labelled $selector" topics_gone
else
  step "KafkaTopics kept, Ready, after the pipeline is gone"
  topics_unowned || die "the pipeline's KafkaTopics are gone (or owned), expected kept: '$(topic_owners | tr '\n' ' ')'"
  k wait -n "$NAMESPACE" kafkatopics -l "$selector" --for=condition=Ready --timeout=60s

  step "kept KafkaTopics deleted by hand (cleanup)"
  say "deleting them deletes the topics and their data in Kafka; left in place, a new pipeline '$PIPELINE' would adopt them"
  k delete -n "$NAMESPACE" kafkatopics -l "$selector" --wait --timeout=5m
fi

CURRENT_STEP="done"
say ""
say "e2e-kind: every step passed"
