#!/usr/bin/env bash
# Renders the odds-operator chart with the Helm library (PyPI helm-python-sdk: Helm's Go SDK
# behind a C ABI, no helm binary, no cluster) and validates every manifest, the operator's
# built children (golden file) and the samples against the Kubernetes JSON schemas (PyPI
# kubernetes-validate) and the CRDs; checks the restricted Pod Security Standard, the kind
# flow's scripts (shellcheck) and manifests, the dashboard and the alerts (PromQL parsed with
# PyPI promql-parser, metric names, types and labels checked against what each binary serves:
# they are built here and print their metric families). Installs the Python packages into a
# venv under the cargo target dir.
#
#   bash charts/test.sh            # from the repository root; exits non-zero on any failure
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
venv="$target/chart-venv"
if [ ! -x "$venv/bin/python" ]; then
  if ! python3 -m venv "$venv"; then
    rm -rf "$venv"
    echo "charts/test.sh: python3 cannot create a venv; on Debian: apt-get install python3-venv" >&2
    exit 1
  fi
fi
if ! "$venv/bin/python" -c "import helm_python, kubernetes_validate, promql_parser" 2>/dev/null; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    "helm-python-sdk==0.2.2" "kubernetes-validate==1.37.0" "promql-parser==0.11.0"
fi
# The binaries whose metric families the dashboards and alerts query (a no-op after `make unit`).
"${CARGO:-cargo}" build --manifest-path "$root/Cargo.toml" --locked --quiet --bins -p supplier-simulator -p odds-ingest -p odds-processor -p odds-service -p odds-operator
export ODDS_BIN_DIR="$target/debug"
exec "$venv/bin/python" "$root/charts/test.py" "$root"
