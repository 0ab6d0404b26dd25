#!/usr/bin/env bash
# make kind-down: deletes the kind cluster and everything in it.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"
need kind
if cluster_exists; then
  kind delete cluster --name "$CLUSTER"
else
  say "no kind cluster '$CLUSTER': nothing to delete"
fi
