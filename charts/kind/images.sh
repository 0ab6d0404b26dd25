#!/usr/bin/env bash
# make images: builds the odds-pipeline image (every binary) and loads it into the kind nodes.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"
need docker kind
need_cluster

step "docker build $IMAGE (workloads/image/Dockerfile; dependencies are a cached layer)"
DOCKER_BUILDKIT=1 docker build -f "$ROOT/workloads/image/Dockerfile" -t "$IMAGE" "$ROOT"

step "kind load docker-image $IMAGE"
kind load docker-image "$IMAGE" --name "$CLUSTER"

say ""
say "image $IMAGE is in every node of '$CLUSTER'."
say "next: make deploy"
