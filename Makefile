# The two commands of the README: `make demo` and `make test`. Everything else is a helper.
#
# On a fresh Debian machine `make test` installs the system packages it needs when run as root
# (or prints the apt-get command otherwise), so no manual set-up step exists.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
CARGO ?= cargo

TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
STAGES := -p supplier-simulator -p odds-ingest -p odds-processor -p odds-service -p odds-demo
DEMO_ARGS ?=
BENCH_ARGS ?=
BENCH_RUNS ?= 3
# The Kafka the benchmarks run against: empty = librdkafka's hosted mock (or KAFKA_BROKERS),
# tansu = a real Kafka-protocol broker, installed once into TOOLS_DIR by scripts/tansu.sh.
BROKER ?=
CHAOS_RUNS ?= 3
# The fan-out comparison: runs per server and load, the loads (see benches/peers/compare.py),
# and where the peer relays' npm packages are installed (exact versions from the lock file).
FANOUT_RUNS ?= 3
FANOUT_LOADS ?= a,e
FANOUT_SERVERS ?= ours,bun,node
PEERS_SRC := workloads/odds-service/benches/peers
PEERS_DIR ?= $(abspath $(TARGET_DIR))/bench-peers

.PHONY: help deps demo test rootfs chart-test scripts-test fmt-check clippy unit bench bench-criterion bench-fanout bench-peers bench-pipeline bench-ingest fmt chaos profile
.PHONY: kind-up images deploy port-forward e2e-kind kind-down

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

deps: ## install missing system packages (Debian, as root) and cargo-nextest
	@missing=(); \
	command -v redis-server >/dev/null || missing+=(redis-server); \
	{ command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; } || missing+=(postgresql); \
	command -v cc >/dev/null || missing+=(build-essential); \
	command -v make >/dev/null || missing+=(make); \
	command -v pkg-config >/dev/null || missing+=(pkg-config); \
	{ [ -e /usr/include/openssl/ssl.h ] || [ -e /usr/local/include/openssl/ssl.h ]; } || missing+=(libssl-dev); \
	command -v python3 >/dev/null || missing+=(python3); \
	python3 -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv); \
	{ command -v chromium >/dev/null || command -v chromium-browser >/dev/null; } || missing+=(chromium); \
	command -v shellcheck >/dev/null || missing+=(shellcheck); \
	command -v openssl >/dev/null || missing+=(openssl); \
	command -v ip >/dev/null || missing+=(iproute2); \
	command -v nsenter >/dev/null || missing+=(util-linux); \
	if [ $${#missing[@]} -gt 0 ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "deps: installing $${missing[*]}"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$${missing[@]}" >/dev/null; \
	  else \
	    echo "deps: missing packages; run: sudo apt-get install -y $${missing[*]}" >&2; exit 1; \
	  fi; \
	fi

demo: deps ## run the whole pipeline locally on embedded defaults (Ctrl-C stops it)
	$(CARGO) build --release --bins $(STAGES)
	ulimit -n 65536 2>/dev/null || true; exec $(TARGET_DIR)/release/odds-demo $(DEMO_ARGS)

fmt-check:
	$(CARGO) fmt --all -- --check

fmt: ## format the code
	$(CARGO) fmt --all

clippy:
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings

unit:
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
	  $(CARGO) nextest run --locked --workspace --no-fail-fast; \
	else \
	  $(CARGO) test --locked --workspace --no-fail-fast; \
	fi

chart-test: ## render the Helm chart with the Helm library and validate every manifest (no cluster)
	bash charts/test.sh

scripts-test: ## unit tests of the fan-out comparison's script (compare.py: ws-load's output, the verdict against Bun)
	PYTHONDONTWRITEBYTECODE=1 python3 $(PEERS_SRC)/test_compare.py

rootfs: ## the image's base root filesystem from its Debian packages (workloads/image/base-packages.txt; needs root)
	bash workloads/image/rootfs.sh $(TARGET_DIR)/rootfs

test: deps fmt-check clippy rootfs unit chart-test scripts-test ## fmt check, clippy -D warnings, every test against real servers (pods in the image's root filesystem), chart validation, the bench scripts' tests

chaos: deps ## the fault run, CHAOS_RUNS (3) times: Kubernetes operations and faults; prints the freeze/lost/regressions table
	$(CARGO) build --bins $(STAGES)
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
	  CHAOS_RUNS=$(CHAOS_RUNS) $(CARGO) nextest run -p odds-demo --test e2e --no-capture chaos; \
	else \
	  CHAOS_RUNS=$(CHAOS_RUNS) $(CARGO) test -p odds-demo --test e2e chaos -- --nocapture; \
	fi

bench: bench-criterion bench-fanout bench-pipeline ## criterion benchmarks, the fan-out comparison, then the pipeline benchmark

bench-criterion: deps ## criterion benchmarks of every crate but odds-service (reports under the target dir's criterion/)
	$(CARGO) bench --workspace --exclude odds-service

bench-peers: ## install the fan-out comparison's Bun and Node.js relays' packages (npm ci, exact versions) into PEERS_DIR
	@command -v npm >/dev/null || { echo "bench-peers: needs node and npm (apt-get install nodejs npm)"; exit 1; }
	mkdir -p $(PEERS_DIR)
	cp $(PEERS_SRC)/package.json $(PEERS_SRC)/package-lock.json $(PEERS_SRC)/*.mjs $(PEERS_DIR)/
	cd $(PEERS_DIR) && { [ -x node_modules/bun/bin/bun.exe ] && npm ls --silent >/dev/null 2>&1 || npm ci --no-audit --no-fund; }

bench-fanout: deps bench-peers ## ws-load: odds-service vs Bun vs Node.js relays, FANOUT_RUNS (3) interleaved runs per load, medians; then loopback-floor
	$(CARGO) build --release -p odds-service --bin odds-service
	ulimit -n 65536 2>/dev/null || true; \
	PEERS_DIR=$(PEERS_DIR) CARGO="$(CARGO)" python3 $(PEERS_SRC)/compare.py --runs $(FANOUT_RUNS) \
	  --loads $(FANOUT_LOADS) --servers $(FANOUT_SERVERS) --out target/bench/fanout \
	  --ours $(TARGET_DIR)/release/odds-service
	ulimit -n 65536 2>/dev/null || true; $(CARGO) bench -p odds-service --bench loopback-floor

bench-pipeline: deps ## whole-pipeline benchmark, median of BENCH_RUNS (3) runs; writes target/bench/pipeline.json and .svg (BENCH_ARGS="--find-max", BROKER=tansu)
	@case "$(BROKER)" in tansu|"") ;; *) echo "BROKER must be tansu or empty (the hosted mock)" >&2; exit 2;; esac
	$(CARGO) build --release --bins $(STAGES)
	ulimit -n 65536 2>/dev/null || true; \
	if [ "$(BROKER)" = tansu ]; then tansu="$$(bash scripts/tansu.sh install)"; export TANSU_BIN="$$tansu"; fi; \
	$(TARGET_DIR)/release/odds-demo bench --runs $(BENCH_RUNS) --out target/bench/pipeline.json $(BENCH_ARGS)

bench-ingest: deps ## ingest alone: simulator -> ingest -> Kafka over one connection (BENCH_INGEST_RATE, BROKER=tansu)
	@case "$(BROKER)" in tansu|"") ;; *) echo "BROKER must be tansu or empty (the hosted mock)" >&2; exit 2;; esac
	$(if $(filter tansu,$(BROKER)),bash scripts/tansu.sh run) $(CARGO) bench -p odds-ingest --bench ingest -- pipeline

profile: deps ## perf CPU profile of each stage under odds-demo bench; flamegraphs in target/profile/ (PROFILE_ARGS, PROFILE_SECONDS)
	bash scripts/profile.sh

# The kind flow (needs docker, kind, kubectl and helm; each script says what is missing and how
# to get it). The scripts live in charts/kind/; `make chart-test` shellchecks them and validates
# every manifest they apply.

kind-up: ## kind cluster + Strimzi 1.2 + KEDA + Kafka, Redis, Postgres (waits until Kafka is Ready)
	bash charts/kind/kind-up.sh

images: ## build the odds-pipeline image and load it into the kind nodes
	bash charts/kind/images.sh

deploy: ## install the operator chart and the sample OddsPipeline; waits for condition=Ready (TRACING=1: with Jaeger v2)
	bash charts/kind/deploy.sh

port-forward: ## the odds page, REST and /ws/odds on localhost:8080, metrics on :9000 (Ctrl-C stops)
	bash charts/kind/port-forward.sh

e2e-kind: kind-up images ## on kind: apply, Ready, live odds over WebSocket, scale, delete, children gone
	bash charts/kind/e2e.sh

kind-down: ## delete the kind cluster
	bash charts/kind/kind-down.sh
