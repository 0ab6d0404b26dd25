#!/usr/bin/env python3
"""The fan-out comparison of `make bench-fanout`: odds-service, a Bun relay and a Node.js `ws`
relay under the same ws-load runs, interleaved (run 1 of every server and load, then run 2,
...), summarised as medians with their range. Raw ws-load outputs go to --out.

The relays are started by ws-load itself (`--service-bin`), so every server gets the same
Redis, Postgres, clients and publisher; PEERS_DIR must hold the npm install of package.json
(the Makefile's bench-peers target does that)."""
import argparse
import os
import re
import statistics
import subprocess
import sys

LOADS = {
    "a": ["--clients", "1000", "--events", "25", "--rate", "5000", "--seconds", "15"],
    "e": ["--clients", "1000", "--events", "100", "--rate", "1000", "--seconds", "15"],
}
HERE = os.path.dirname(os.path.abspath(__file__))
PEERS = {"bun": os.path.join(HERE, "bun-relay"), "node": os.path.join(HERE, "node-relay")}

PATTERNS = {
    "cpu": r"service CPU: .*?, ([\d.]+) us per delivered message \(user ([\d.]+) \+ system ([\d.]+)\)",
    "share": r"delivered: \d+ \(\d+ msgs/s; ([\d.]+)% of",
    "rate": r"delivered: \d+ \((\d+) msgs/s",
    "latency": r"p50 ([\d.]+) ms, p99 ([\d.]+) ms",
    "ordering": r"ordering: (\d+) frames not newer",
    "idle": r"machine idle: ([\d.]+) %",
    "own": r"ws-load's own CPU .*?\(([\d.]+) cores",
    "rss": r"\(([\d.]+) KiB/client\)",
}


def build_ws_load(cargo, dev):
    """Builds ws-load (bench profile, or the dev profile with --dev: no release build of the
    test kit's librdkafka) and returns its executable."""
    cmd = [cargo, "test" if dev else "bench", "-p", "odds-service", "--bench", "ws-load",
           "--no-run", "--message-format=json"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"building ws-load failed:\n{done.stderr}")
    for line in done.stdout.splitlines():
        if '"executable"' in line and "ws_load" in line:
            exe = re.search(r'"executable":"([^"]+)"', line)
            if exe:
                return exe.group(1)
    sys.exit("cargo did not name ws-load's executable")


def run(ws_load, ours, server, load, extra):
    cmd = [ws_load] + LOADS[load] + extra
    # `name=path` runs another odds-service build (e.g. the previous release) as `name`.
    binary = server.split("=", 1)[1] if "=" in server else PEERS.get(server, ours)
    cmd += ["--service-bin", binary]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"ws-load failed for {server} at load {load}:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def parse(text):
    out = {}
    for name, pattern in PATTERNS.items():
        m = re.search(pattern, text)
        if m:
            out[name] = [float(g) for g in m.groups()]
    return out


def median(runs, key, index=0):
    values = [r[key][index] for r in runs if key in r]
    if not values:
        return "n/a"
    med = statistics.median(values)
    return f"{med:.2f} ({min(values):.2f} – {max(values):.2f})" if len(values) > 1 else f"{med:.2f}"


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--loads", default="a,e")
    p.add_argument("--servers", default="ours,bun,node")
    p.add_argument("--cargo", default=os.environ.get("CARGO", "cargo"))
    p.add_argument("--out", default="target/bench/fanout")
    p.add_argument("--ours", required=True, help="the odds-service binary (a release build)")
    p.add_argument("--dev", action="store_true", help="ws-load from the dev profile")
    p.add_argument("extra", nargs="*", help="further ws-load flags")
    args = p.parse_args()
    if "PEERS_DIR" not in os.environ and set(args.servers.split(",")) & set(PEERS):
        sys.exit("PEERS_DIR is not set: run `make bench-peers` (or the Makefile's bench-fanout)")
    os.makedirs(args.out, exist_ok=True)
    ws_load = build_ws_load(args.cargo, args.dev)
    results = {}
    for i in range(1, args.runs + 1):
        for load in args.loads.split(","):
            for server in args.servers.split(","):
                text = run(ws_load, args.ours, server, load, args.extra)
                name = server.split("=", 1)[0]
                with open(os.path.join(args.out, f"{name}-{load}-{i}.txt"), "w") as f:
                    f.write(text)
                parsed = parse(text)
                results.setdefault((name, load), []).append(parsed)
                print(f"run {i} load {load} {name}: {parsed}", flush=True)
    print()
    print("| server | load | CPU per delivered message µs (user + system) | delivered share % "
          "| deliveries/s | p50 ms | p99 ms | ordering violations | KiB per client | machine idle % |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for (server, load), runs in results.items():
        print(f"| {server} | {load} | {median(runs, 'cpu')} ({median(runs, 'cpu', 1)} + "
              f"{median(runs, 'cpu', 2)}) | {median(runs, 'share')} | {median(runs, 'rate')} | "
              f"{median(runs, 'latency')} | {median(runs, 'latency', 1)} | "
              f"{median(runs, 'ordering')} | {median(runs, 'rss')} | {median(runs, 'idle')} |")


if __name__ == "__main__":
    main()
