#!/usr/bin/env bash
# `make profile`: CPU profiles of every pipeline stage under the benchmark's load, as
# flamegraphs, so performance work starts from where the CPU actually goes.
#
# Builds the release binaries (the release profile keeps line tables, so frames have names),
# starts `odds-demo bench` with modest defaults, attaches `perf record` to each stage and to
# the benchmark process itself (its WebSocket clients and the hosted Kafka mock broker) for
# PROFILE_SECONDS while the load runs, and renders each profile with inferno. Output, under
# target/profile/: <process>.perf.data, <process>.folded, <process>.svg, the benchmark's
# printed summary (bench.txt) and JSON report (pipeline.json).
#
#   bash scripts/profile.sh                    # from anywhere; exits non-zero on failure
#   PROFILE_ARGS="--rate 5000 --duration 20 --clients 1000 --events 100" PROFILE_SECONDS=15 \
#     bash scripts/profile.sh
#
# Needs perf (Debian package linux-perf, installed here when running as root) and a kernel that
# lets this user open perf events (perf_event_paranoid, container seccomp); when it does not,
# the script says so and stops before building anything.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
target="${CARGO_TARGET_DIR:-$root/target}"
out="$root/target/profile"
cargo="${CARGO:-cargo}"
bench_args="${PROFILE_ARGS:---rate 1000 --duration 10 --clients 50 --events 20}"
seconds="${PROFILE_SECONDS:-8}"
frequency="${PROFILE_FREQUENCY:-99}"
# Rust release code has no frame pointers: unwind with DWARF (the line tables are there).
call_graph="${PROFILE_CALL_GRAPH:-dwarf,16384}"
stages=(odds-processor odds-service supplier-simulator odds-ingest)

say() { printf 'profile: %s\n' "$*"; }
die() { printf 'profile: %s\n' "$*" >&2; exit 1; }

ensure_perf() {
  if command -v perf >/dev/null && perf --version >/dev/null 2>&1; then
    return
  fi
  if [ "$(id -u)" = 0 ]; then
    say "installing linux-perf"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null
  else
    die "perf is missing; run: sudo apt-get install -y linux-perf"
  fi
  command -v perf >/dev/null || die "perf still missing after installing linux-perf"
}

ensure_inferno() {
  if command -v inferno-collapse-perf >/dev/null && command -v inferno-flamegraph >/dev/null; then
    return
  fi
  say "installing inferno (flamegraph renderer) from crates.io"
  "$cargo" install --locked inferno
  export PATH="$HOME/.cargo/bin:$PATH"
}

# perf_event_open is refused in many containers and under a strict perf_event_paranoid: find
# out with a tiny recording before spending minutes on a build.
check_perf_allowed() {
  local probe log
  probe="$(mktemp)"
  log="$(mktemp)"
  if ! perf record -q -F "$frequency" -g -o "$probe" -- true >"$log" 2>&1; then
    local paranoid
    paranoid="$(cat /proc/sys/kernel/perf_event_paranoid 2>/dev/null || echo unknown)"
    printf 'profile: perf cannot record on this machine (kernel.perf_event_paranoid=%s):\n' "$paranoid" >&2
    sed 's/^/  /' "$log" >&2
    rm -f "$probe" "$log"
    die "profiling is not possible here: run as root, lower perf_event_paranoid (sysctl kernel.perf_event_paranoid=1), or allow perf_event_open in the container's seccomp profile"
  fi
  rm -f "$probe" "$log"
}

# The pid of the child named $2 of process $1, once it exists (empty after 120 s).
child_pid() {
  local parent="$1" name="$2" pid="" tries=0
  while [ -z "$pid" ] && [ "$tries" -lt 1200 ]; do
    kill -0 "$parent" 2>/dev/null || return 0
    # By command line: the process name is cut at 15 characters (supplier-simulator), and
    # the processor's short-lived `migrate` run must not be taken for the stage.
    pid="$(pgrep -P "$parent" -f "/$name\$" | head -n1 || true)"
    [ -n "$pid" ] || sleep 0.1
    tries=$((tries + 1))
  done
  printf '%s' "$pid"
}

ensure_perf
check_perf_allowed
ensure_inferno

say "building the release binaries"
"$cargo" build --release --bins -p supplier-simulator -p odds-ingest -p odds-processor \
  -p odds-service -p odds-demo

rm -rf "$out"
mkdir -p "$out"
ulimit -n 65536 2>/dev/null || true
# shellcheck disable=SC2086 # PROFILE_ARGS is a list of flags
"$target/release/odds-demo" bench --out "$out/pipeline.json" $bench_args >"$out/bench.txt" 2>&1 &
bench_pid=$!
say "odds-demo bench started (pid $bench_pid): $bench_args"

declare -A pids=()
for stage in "${stages[@]}"; do
  pid="$(child_pid "$bench_pid" "$stage")"
  if [ -z "$pid" ]; then
    wait "$bench_pid" || true
    cat "$out/bench.txt" >&2
    die "$stage never started"
  fi
  pids[$stage]="$pid"
done
pids[odds-demo-bench]="$bench_pid"
# Ingest is started last and only once the others are ready: from here updates flow.
sleep 1

say "recording ${seconds} s at ${frequency} Hz (call graphs: $call_graph)"
recorders=()
for name in "${!pids[@]}"; do
  perf record -q -F "$frequency" --call-graph "$call_graph" -p "${pids[$name]}" \
    -o "$out/$name.perf.data" -- sleep "$seconds" >"$out/$name.perf.log" 2>&1 &
  recorders+=("$!")
done
for recorder in "${recorders[@]}"; do
  wait "$recorder" || say "a perf recording failed (see $out/*.perf.log)"
done

say "waiting for the benchmark to finish"
bench_status=0
wait "$bench_pid" || bench_status=$?
cat "$out/bench.txt"
[ "$bench_status" = 0 ] || die "odds-demo bench failed (exit $bench_status)"

for name in "${!pids[@]}"; do
  data="$out/$name.perf.data"
  [ -s "$data" ] || { say "$name: no samples recorded"; continue; }
  perf script -i "$data" 2>/dev/null | inferno-collapse-perf >"$out/$name.folded"
  if [ -s "$out/$name.folded" ]; then
    inferno-flamegraph --title "$name under odds-demo bench $bench_args" \
      <"$out/$name.folded" >"$out/$name.svg"
    say "$name: $(wc -l <"$out/$name.folded") stacks -> $out/$name.svg"
  else
    say "$name: no stacks (was it idle?)"
  fi
done
say "done: flamegraphs in $out/"
