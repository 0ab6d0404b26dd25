# shellcheck shell=bash
# shellcheck disable=SC2034  # the names below are used by the scripts that source this file
# Shared by the kind-flow scripts (charts/kind/*.sh, run through the Makefile targets kind-up,
# images, deploy, port-forward, e2e-kind and kind-down): names, prerequisite checks, steps.
# Every kubectl and helm call goes to the kind cluster's own context, never the current one.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CLUSTER="${KIND_CLUSTER:-odds}"
CONTEXT="kind-${CLUSTER}"
IMAGE="odds-pipeline:dev"            # the tag the chart's values and samples/oddspipeline.yaml use
NAMESPACE="default"                  # Kafka, the datastores and the sample pipeline (as the samples say)
OPERATOR_NAMESPACE="odds-system"
PIPELINE="demo"                      # metadata.name in operator/samples/oddspipeline.yaml
STRIMZI_CHART="oci://quay.io/strimzi-helm/strimzi-kafka-operator"
STRIMZI_VERSION="1.2.0"
KEDA_REPO="https://kedacore.github.io/charts"
KEDA_VERSION="2.20.2"
SAMPLES="$ROOT/operator/samples"
# kind-config.yaml pins the node image published with this kind release (and the workflow
# .github/workflows/ci.yaml installs it); older kinds are refused.
KIND_MIN_VERSION="0.27.0"
RELEASE="odds-operator"               # the operator chart's Helm release
CRD="oddspipelines.odds-pipeline.github.io"

say() { printf '%s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# How to get each tool, printed when it is missing.
install_hint() {
  case "$1" in
    docker) say "  docker:  a container engine (Docker Engine or Docker Desktop): https://docs.docker.com/engine/install/ ; on Debian: apt-get install docker.io" ;;
    kind) say "  kind:    v${KIND_MIN_VERSION} or newer: https://kind.sigs.k8s.io/docs/user/quick-start/#installation (or: go install sigs.k8s.io/kind@v${KIND_MIN_VERSION})" ;;
    kubectl) say "  kubectl: https://kubernetes.io/docs/tasks/tools/ (1.32 or newer; on Debian: apt-get install kubectl from the Kubernetes apt repository)" ;;
    helm) say "  helm:    https://helm.sh/docs/intro/install/ (3.8 or newer, for OCI charts)" ;;
    python3) say "  python3: apt-get install python3 (the WebSocket check uses the standard library only)" ;;
    curl) say "  curl:    apt-get install curl" ;;
    *) say "  $1" ;;
  esac
}

# need TOOL...: exits with what is missing and how to get it. A docker that is installed but
# whose engine does not answer is reported too (kind needs a running engine).
need() {
  local missing=() tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    {
      say "missing prerequisites: ${missing[*]}"
      for tool in "${missing[@]}"; do install_hint "$tool"; done
    } >&2
    exit 1
  fi
  for tool in "$@"; do
    if [ "$tool" = docker ] && ! docker info >/dev/null 2>&1; then
      die "docker is installed but its engine does not answer ('docker info' fails): start it (e.g. 'sudo systemctl start docker') or check that you may use it (group 'docker')"
    fi
    if [ "$tool" = kind ]; then need_kind_version; fi
  done
}

# version_at_least HAVE WANT: true when the dotted version HAVE >= WANT.
version_at_least() {
  [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n 1)" = "$2" ]
}

# kind-config.yaml's node image is the one published with kind v$KIND_MIN_VERSION; older kinds
# may not run it. `kind version` prints e.g. "kind v0.27.0 go1.23.6 linux/amd64".
need_kind_version() {
  local have
  have="$(kind version 2>/dev/null | grep -oE 'v[0-9]+\.[0-9]+\.[0-9]+' | head -n 1)" || true
  if [ -z "$have" ]; then
    say "warning: cannot tell kind's version ('kind version'); v${KIND_MIN_VERSION} or newer is needed" >&2
  elif ! version_at_least "${have#v}" "$KIND_MIN_VERSION"; then
    die "kind $have is older than v${KIND_MIN_VERSION}, the release whose node image kind-config.yaml pins; get v${KIND_MIN_VERSION} or newer: https://kind.sigs.k8s.io/docs/user/quick-start/#installation"
  fi
}

# A cluster that got the CRD from an older chart (which shipped it in crds/) has it without
# Helm's ownership labels, and `helm upgrade` would refuse to take it over. Adopt it into the
# release once; the chart then keeps it current (operator/README.md, "Upgrades").
adopt_crd() {
  k get crd "$CRD" >/dev/null 2>&1 || return 0
  if [ -z "$(k get crd "$CRD" -o jsonpath='{.metadata.annotations.meta\.helm\.sh/release-name}')" ]; then
    say "adopting CRD $CRD into Helm release $RELEASE"
    k label --overwrite crd "$CRD" app.kubernetes.io/managed-by=Helm
    k annotate --overwrite crd "$CRD" "meta.helm.sh/release-name=$RELEASE" \
      "meta.helm.sh/release-namespace=$OPERATOR_NAMESPACE"
  fi
}

cluster_exists() { kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; }

need_cluster() {
  cluster_exists || die "no kind cluster '$CLUSTER': run 'make kind-up' first"
}

k() { kubectl --context "$CONTEXT" "$@"; }
h() { helm --kube-context "$CONTEXT" "$@"; }

# The steps of a script: `step NAME` announces it; on failure the exit trap names it.
CURRENT_STEP="prerequisites"
step() {
  CURRENT_STEP="$1"
  say ""
  say "==> $1"
}
on_exit() {
  local code=$?
  if [ "$code" -ne 0 ]; then
    say "FAILED at step: $CURRENT_STEP (exit $code)" >&2
  fi
}
trap on_exit EXIT

# retry_until SECONDS DESCRIPTION COMMAND...: runs COMMAND every 2 s until it succeeds.
retry_until() {
  local timeout="$1" what="$2" deadline
  shift 2
  deadline=$((SECONDS + timeout))
  until "$@"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      say "timed out after ${timeout}s waiting for: $what" >&2
      return 1
    fi
    sleep 2
  done
}

# What the operator and pipeline look like, printed when a wait fails.
diagnose_pipeline() {
  {
    say "--- kubectl get oddspipelines,pods,jobs,kafkatopics -n $NAMESPACE"
    k get oddspipelines,pods,jobs,kafkatopics -n "$NAMESPACE" 2>&1 || true
    say "--- conditions of oddspipeline/$PIPELINE"
    k get oddspipeline "$PIPELINE" -n "$NAMESPACE" \
      -o jsonpath='{range .status.conditions[*]}{.type}={.status} {.reason}: {.message}{"\n"}{end}' 2>&1 || true
    say "--- operator pods and last log lines"
    k get pods -n "$OPERATOR_NAMESPACE" 2>&1 || true
    k logs -n "$OPERATOR_NAMESPACE" -l app.kubernetes.io/name=odds-operator --tail=20 2>&1 || true
    say "(troubleshooting: README.md, section 'Kubernetes')"
  } >&2
}
