#!/usr/bin/env bash
# make port-forward: the odds service's page, REST API and WebSocket on localhost, plus its
# metrics; runs until Ctrl-C. PORT and METRICS_PORT choose the local ports.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"
need kubectl kind
need_cluster
port="${PORT:-8080}"
metrics_port="${METRICS_PORT:-9000}"
service="${PIPELINE}-odds-service"

k get -n "$NAMESPACE" "service/$service" >/dev/null 2>&1 ||
  die "no service '$service' in namespace $NAMESPACE: run 'make deploy' first"

say "  odds page:  http://localhost:${port}/"
say "  websocket:  ws://localhost:${port}/ws/odds"
say "  REST:       http://localhost:${port}/v1/events"
say "  metrics:    http://localhost:${metrics_port}/metrics"
say "  try:        target/release/odds-demo watch --url ws://localhost:${port}/ws/odds MATCH_001"
say "  status:     kubectl --context $CONTEXT get oddspipelines -n $NAMESPACE"
say "(Ctrl-C stops the port-forward)"
if k get -n "$NAMESPACE" service/jaeger >/dev/null 2>&1; then
  # Deployed by `make deploy TRACING=1`: its UI beside the odds service.
  say "  traces:     http://localhost:${JAEGER_PORT:-16686}/ (Jaeger: service odds-ingest, Find Traces)"
  kubectl --context "$CONTEXT" port-forward -n "$NAMESPACE" service/jaeger \
    "${JAEGER_PORT:-16686}:16686" &
fi
exec kubectl --context "$CONTEXT" port-forward -n "$NAMESPACE" "service/$service" \
  "${port}:8080" "${metrics_port}:9000"
