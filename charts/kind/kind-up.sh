#!/usr/bin/env bash
# make kind-up: the kind cluster from kind-config.yaml, Strimzi 1.2 and KEDA 2.20.2 from their
# Helm charts, a single-node KRaft Kafka, Redis and Postgres with their Secrets; waits until
# Kafka and the datastores are ready. Safe to run again: existing pieces are kept or upgraded.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"
need docker kind kubectl helm

step "kind cluster '$CLUSTER'"
if cluster_exists; then
  say "kind cluster '$CLUSTER' exists; reusing it"
else
  kind create cluster --config "$ROOT/kind-config.yaml" --name "$CLUSTER" --wait 180s
fi
k cluster-info

step "Strimzi $STRIMZI_VERSION (Helm chart, watching namespace $NAMESPACE)"
h upgrade --install strimzi "$STRIMZI_CHART" --version "$STRIMZI_VERSION" \
  --namespace "$NAMESPACE" -f "$ROOT/charts/kind/strimzi-values.yaml" --wait --timeout 10m

step "KEDA $KEDA_VERSION (Helm chart kedacore/keda, namespace keda)"
h upgrade --install keda keda --repo "$KEDA_REPO" --version "$KEDA_VERSION" \
  --namespace keda --create-namespace --wait --timeout 10m

step "Kafka 'odds' (KRaft, one node) and the datastores"
k apply -n "$NAMESPACE" -f "$SAMPLES/kafka.yaml"
k apply -n "$NAMESPACE" -f "$SAMPLES/secrets.yaml"
k apply -n "$NAMESPACE" -f "$SAMPLES/datastores.yaml"

step "Redis and Postgres ready"
k rollout status -n "$NAMESPACE" deployment/redis --timeout=5m
k rollout status -n "$NAMESPACE" statefulset/postgres --timeout=5m

step "Kafka ready (first start pulls the Kafka image: minutes)"
if ! k wait -n "$NAMESPACE" kafka/odds --for=condition=Ready --timeout=15m; then
  k get kafka,kafkanodepool,pods -n "$NAMESPACE" >&2 || true
  k get kafka odds -n "$NAMESPACE" -o jsonpath='{range .status.conditions[*]}{.type}={.status} {.reason}: {.message}{"\n"}{end}' >&2 || true
  die "Kafka 'odds' is not Ready (see README.md, Kubernetes > Troubleshooting)"
fi
k get kafka,kafkanodepool -n "$NAMESPACE"

say ""
say "kind cluster '$CLUSTER' is up with Kafka, Redis, Postgres, Strimzi and KEDA."
say "next: make images"
