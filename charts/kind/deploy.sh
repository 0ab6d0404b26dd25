#!/usr/bin/env bash
# make deploy: the operator chart, then the sample pipeline; waits for condition=Ready.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"
need kind kubectl helm
need_cluster

step "image $IMAGE loaded in the cluster"
if command -v docker >/dev/null 2>&1 &&
   ! docker exec "${CLUSTER}-control-plane" crictl inspecti "docker.io/library/$IMAGE" >/dev/null 2>&1; then
  die "image $IMAGE is not in the kind nodes: run 'make images' first"
fi

step "odds-operator chart (namespace $OPERATOR_NAMESPACE)"
adopt_crd
h upgrade --install "$RELEASE" "$ROOT/charts/odds-operator" \
  --namespace "$OPERATOR_NAMESPACE" --create-namespace --wait --timeout 5m

step "OddsPipeline '$PIPELINE' (operator/samples/oddspipeline.yaml)"
k apply -n "$NAMESPACE" -f "$SAMPLES/oddspipeline.yaml"

step "OddsPipeline '$PIPELINE' Ready"
if ! k wait -n "$NAMESPACE" "oddspipeline/$PIPELINE" --for=condition=Ready --timeout=10m; then
  diagnose_pipeline
  die "OddsPipeline '$PIPELINE' did not become Ready"
fi
k get oddspipelines -n "$NAMESPACE"

say ""
say "next: make port-forward   (then open http://localhost:8080/)"
