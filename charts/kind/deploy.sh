#!/usr/bin/env bash
# make deploy: the operator chart, then the sample pipeline; waits for condition=Ready.
# TRACING=1 also deploys Jaeger v2 and points the pipeline's traces at it
# (TRACE_SAMPLING_RATIO, default 0.01, is the share of updates traced).
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

if [ "${TRACING:-0}" = 1 ]; then
  step "Jaeger v2 (operator/samples/jaeger.yaml): OTLP on jaeger:4318, UI on port 16686"
  k apply -n "$NAMESPACE" -f "$SAMPLES/jaeger.yaml"
  k rollout status -n "$NAMESPACE" deployment/jaeger --timeout=5m
fi

step "OddsPipeline '$PIPELINE' (operator/samples/oddspipeline.yaml)"
k apply -n "$NAMESPACE" -f "$SAMPLES/oddspipeline.yaml"
if [ "${TRACING:-0}" = 1 ]; then
  step "OddsPipeline '$PIPELINE' traced into Jaeger (samplingRatio ${TRACE_SAMPLING_RATIO:-0.01})"
  k patch -n "$NAMESPACE" "oddspipeline/$PIPELINE" --type merge -p \
    "{\"spec\":{\"observability\":{\"tracing\":{\"endpoint\":\"http://jaeger.${NAMESPACE}:4318\",\"samplingRatio\":${TRACE_SAMPLING_RATIO:-0.01}}}}}"
fi

step "OddsPipeline '$PIPELINE' Ready"
if ! k wait -n "$NAMESPACE" "oddspipeline/$PIPELINE" --for=condition=Ready --timeout=10m; then
  diagnose_pipeline
  die "OddsPipeline '$PIPELINE' did not become Ready"
fi
k get oddspipelines -n "$NAMESPACE"

say ""
say "next: make port-forward   (then open http://localhost:8080/)"
