#!/usr/bin/env python3
"""The fan-out comparison of `make bench-fanout`: odds-service, a Bun relay and a Node.js `ws`
relay under the same ws-load runs, interleaved (run 1 of every server and load, then run 2,
...), summarised as medians with their range, then each load's verdict against Bun (issue
#25's relative targets: CPU per delivery below Bun's, p99 no worse). Raw ws-load outputs go to
--out; `--from DIR` summarises such outputs again without running anything.

The relays are started by ws-load itself (`--service-bin`), so every server gets the same
Redis, Postgres, clients and publisher; PEERS_DIR must hold the npm install of package.json
(the Makefile's bench-peers target does that)."""
import argparse
import glob
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
    # ws-load's own judgement that its clients may have set the pace (no figure: present or not).
    "generator_limited": r"WARNING: ws-load itself used",
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


def values_of(runs, key, index=0):
    return [r[key][index] for r in runs if key in r]


def median_value(runs, key, index=0):
    values = values_of(runs, key, index)
    return statistics.median(values) if values else None


def median(runs, key, index=0):
    values = values_of(runs, key, index)
    if not values:
        return "n/a"
    med = statistics.median(values)
    return f"{med:.2f} ({min(values):.2f} – {max(values):.2f})" if len(values) > 1 else f"{med:.2f}"


def against_peer(results, load, peer="bun"):
    """Issue #25's relative targets for one load, from the medians: ours' CPU per delivery and
    p99 against the peer's in the same run set, and whether the load generator was the limit.
    None when the set did not run both."""
    ours, theirs = results.get(("ours", load)), results.get((peer, load))
    if not ours or not theirs:
        return None
    cpu, cpu_peer = median_value(ours, "cpu"), median_value(theirs, "cpu")
    p99, p99_peer = median_value(ours, "latency", 1), median_value(theirs, "latency", 1)
    share = median_value(ours, "share")
    if not cpu or not cpu_peer or not p99 or not p99_peer or share is None:
        return (f"load {load}: no verdict against {peer}: a figure is missing (or zero) in "
                "ws-load's output")
    limited = any("generator_limited" in r for r in ours + theirs)
    busiest = max(values_of(ours, "own") + values_of(theirs, "own") or [0.0])
    verdict = (f"load {load}: ours / {peer} CPU per delivery {cpu / cpu_peer:.2f} ({cpu:.2f} vs "
               f"{cpu_peer:.2f} µs: {'below' if cpu < cpu_peer else 'NOT below'}), p99 "
               f"{p99 / p99_peer:.2f} ({p99:.2f} vs {p99_peer:.2f} ms: "
               f"{'no worse' if p99 <= p99_peer else 'WORSE'}), ours delivered {share:.2f} %")
    if limited:
        verdict += (f"; ws-load used up to {busiest:.2f} cores, so its clients may have set the "
                    "pace, not the servers")
    return verdict


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--loads", default="a,e")
    p.add_argument("--servers", default="ours,bun,node")
    p.add_argument("--cargo", default=os.environ.get("CARGO", "cargo"))
    p.add_argument("--out", default="target/bench/fanout")
    p.add_argument("--ours", help="the odds-service binary (a release build); not with --from")
    p.add_argument("--dev", action="store_true", help="ws-load from the dev profile")
    p.add_argument("--from", dest="saved", metavar="DIR",
                   help="summarise the raw outputs an earlier run left in DIR instead of running")
    p.add_argument("extra", nargs="*", help="further ws-load flags")
    args = p.parse_args()
    results = saved(args) if args.saved else measured(args)
    summarise(results, args.loads.split(","))


def saved(args):
    """The parsed outputs of an earlier run set, as `measured` returns them: every run found,
    whatever `--runs` that set had."""
    results = {}
    run_number = re.compile(r"-(\d+)\.txt$")
    for load in args.loads.split(","):
        for server in args.servers.split(","):
            name = server.split("=", 1)[0]
            paths = glob.glob(os.path.join(args.saved, f"{name}-{load}-*.txt"))
            for path in sorted(paths, key=lambda p: int(run_number.search(p).group(1))):
                with open(path) as f:
                    results.setdefault((name, load), []).append(parse(f.read()))
    if not results:
        sys.exit(f"no ws-load outputs in {args.saved}")
    return results


def measured(args):
    if not args.ours:
        sys.exit("--ours is required unless --from names saved outputs")
    if "PEERS_DIR" not in os.environ and set(args.servers.split(",")) & set(PEERS):
        sys.exit("PEERS_DIR is not set: run `make bench-peers` (or the Makefile's bench-fanout)")
    os.makedirs(args.out, exist_ok=True)
    # Outputs of an earlier set would mix into `--from`'s reading of this one.
    for old in glob.glob(os.path.join(args.out, "*-*-*.txt")):
        os.remove(old)
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
    return results


def summarise(results, loads):
    print()
    print("| server | load | CPU per delivered message µs (user + system) | delivered share % "
          "| deliveries/s | p50 ms | p99 ms | ordering violations | KiB per client | machine idle % |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for (server, load), runs in results.items():
        print(f"| {server} | {load} | {median(runs, 'cpu')} ({median(runs, 'cpu', 1)} + "
              f"{median(runs, 'cpu', 2)}) | {median(runs, 'share')} | {median(runs, 'rate')} | "
              f"{median(runs, 'latency')} | {median(runs, 'latency', 1)} | "
              f"{median(runs, 'ordering')} | {median(runs, 'rss')} | {median(runs, 'idle')} |")
    print()
    for load in loads:
        verdict = against_peer(results, load)
        if verdict:
            print(verdict)


if __name__ == "__main__":
    main()
