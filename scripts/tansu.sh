#!/usr/bin/env bash
# A real Kafka-protocol broker for the benchmarks: Tansu (crates.io `tansu`, one Rust binary,
# no JVM), with its memory storage engine. The hosted librdkafka mock is the limit of the
# pipeline benchmark at tens of thousands of updates a second (issue #26); this is the broker
# `make bench-pipeline BROKER=tansu` and `make bench-ingest BROKER=tansu` measure against.
#
#   bash scripts/tansu.sh install          # prints the binary's path; builds it once (~8 min)
#   bash scripts/tansu.sh run CMD ARGS...  # a fresh broker on a free port, topics created,
#                                          # KAFKA_BROKERS set for CMD, stopped afterwards
#
# The binary goes into TOOLS_DIR (default ~/.cache/odds-pipeline-tools), outside the clone, so
# `git clean` and `cargo clean` keep it. `odds-demo bench --tansu PATH` starts a fresh broker
# per run itself; `run` is for the ingest benchmark, which takes KAFKA_BROKERS.
set -euo pipefail
version="${TANSU_VERSION:-0.6.0}"
tools="${TOOLS_DIR:-$HOME/.cache/odds-pipeline-tools}"
root="$tools/tansu-$version"
binary="$root/bin/tansu"
cargo="${CARGO:-cargo}"
partitions="${TANSU_PARTITIONS:-1}"

say() { printf 'tansu: %s\n' "$*" >&2; }
die() { printf 'tansu: %s\n' "$*" >&2; exit 1; }

install() {
  if [ -x "$binary" ] && "$binary" --version >/dev/null 2>&1; then
    printf '%s\n' "$binary"
    return
  fi
  say "building Tansu $version into $root (once; about 8 minutes on 2 cores)"
  # `dynostore` carries the memory storage engine; nothing else is needed here.
  "$cargo" install tansu --version "$version" --locked --features dynostore --root "$root" >&2
  [ -x "$binary" ] || die "cargo install finished but $binary is missing"
  printf '%s\n' "$binary"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Starts a broker, creates the topics, runs "$@" with KAFKA_BROKERS pointing at it, stops it.
run() {
  [ "$#" -gt 0 ] || die "run needs a command"
  install >/dev/null
  local port url log broker status=0
  port="$(free_port)"
  url="tcp://127.0.0.1:$port"
  log="$(mktemp -t tansu-XXXXXX.log)"
  "$binary" broker --listener-url "$url" --advertised-listener-url "$url" \
    --storage-engine memory://tansu/ >"$log" 2>&1 &
  broker=$!
  # shellcheck disable=SC2064 # the pid and log are fixed now
  trap "kill $broker 2>/dev/null || true; wait $broker 2>/dev/null || true" EXIT
  local tries=0
  until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    kill -0 "$broker" 2>/dev/null || { cat "$log" >&2; die "the broker exited at start"; }
    tries=$((tries + 1))
    [ "$tries" -lt 300 ] || die "the broker did not listen on $port within 30 s"
    sleep 0.1
  done
  for topic in "odds_updates:$partitions" "odds_updates_dlq:1"; do
    "$binary" topic create "${topic%%:*}" --partitions "${topic##*:}" \
      --broker "$url" >>"$log" 2>&1 || { cat "$log" >&2; die "creating topic ${topic%%:*} failed"; }
  done
  say "broker on 127.0.0.1:$port (pid $broker, log $log), topics created"
  KAFKA_BROKERS="127.0.0.1:$port" "$@" || status=$?
  return "$status"
}

case "${1:-}" in
  install) install ;;
  run) shift; run "$@" ;;
  *) die "usage: $0 install | run CMD [ARGS...]" ;;
esac
