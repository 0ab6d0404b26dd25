#!/usr/bin/env python3
"""Writes odds-pipeline.json beside this file: the Grafana dashboard of the odds pipeline.

Edit the panels here, run `python3 charts/odds-operator/dashboards/generate.py`, commit both;
charts/test.py fails when the JSON differs from what this script writes, and checks every
query (PromQL parses, every metric is registered by a binary, queried-metrics.txt is current).
"""
import json
import pathlib
import sys

SEL = '{namespace=~"$namespace", pipeline=~"$pipeline"}'
RI = "[$__rate_interval]"
DS = {"type": "prometheus", "uid": "${datasource}"}

def sel(extra=""):
    return SEL if not extra else SEL[:-1] + ", " + extra + "}"

def rate(metric, by=None, extra=""):
    inner = f"rate({metric}{sel(extra)}{RI})"
    return f"sum by ({by}) ({inner})" if by else f"sum({inner})"

def q(metric, quant, by="le"):
    return f"histogram_quantile({quant}, sum by ({by}) (rate({metric}_bucket{SEL}{RI})))"

# The latency budget's hop families (odds_runtime::hops), in pipeline order; each stage
# observes its own hops under the `hop` label.
HOP_FAMILIES = ["odds_ingest_hop_seconds", "odds_proc_hop_seconds", "odds_ws_hop_seconds"]

panels = []
pid = [0]
y = [0]

def nid():
    pid[0] += 1
    return pid[0]

def row(title):
    panels.append({"type": "row", "id": nid(), "title": title, "collapsed": False,
                   "gridPos": {"h": 1, "w": 24, "x": 0, "y": y[0]}, "panels": []})
    y[0] += 1

def ts(title, targets, x, w=8, h=8, unit="short", desc=""):
    panels.append({
        "type": "timeseries", "id": nid(), "title": title, "description": desc, "datasource": DS,
        "gridPos": {"h": h, "w": w, "x": x, "y": y[0]},
        "fieldConfig": {"defaults": {"unit": unit, "custom": {"lineWidth": 1, "fillOpacity": 10}}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
        "targets": [{"refId": chr(65 + i), "datasource": DS, "expr": e, "legendFormat": l}
                    for i, (e, l) in enumerate(targets)],
    })

def stat(title, expr, x, w, unit="short", thresholds=None, desc="", base="green"):
    steps = [{"color": base, "value": None}] + [{"color": c, "value": v} for v, c in (thresholds or [])]
    panels.append({
        "type": "stat", "id": nid(), "title": title, "description": desc, "datasource": DS,
        "gridPos": {"h": 4, "w": w, "x": x, "y": y[0]},
        "fieldConfig": {"defaults": {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps}}, "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "colorMode": "value", "graphMode": "area", "textMode": "auto"},
        "targets": [{"refId": "A", "datasource": DS, "expr": expr}],
    })

def newline(h=8):
    y[0] += h

# At a glance
stat("Updates in /s", rate("odds_ingest_updates_produced_total"), 0, 5, "short",
     desc="Valid updates acknowledged by Kafka (ingest).")
stat("Consumer lag", f"sum(max by (topic, partition) (odds_proc_consumer_lag{SEL}))", 5, 5, "short",
     [(1000, "orange"), (10000, "red")], "Messages behind the high watermark, all partitions.")
stat("WebSocket clients", f"sum(odds_ws_connections{SEL})", 10, 5, "short")
stat("Update age p99", q("odds_proc_update_age_seconds", 0.99), 15, 5, "s", [(0.5, "orange"), (1, "red")],
     "End-to-end age (now - updated_at) of updates when the processor applies them.")
stat("DLQ /s", f"{rate('odds_ingest_dlq_total')} + {rate('odds_proc_dead_lettered_total')}", 20, 4, "short",
     [(0.01, "orange"), (0.1, "red")])
newline(4)

row("Freshness (what clients see: the operator's canary, spec.slo)")
# The canary's series come from the operator (honorLabels keeps `namespace`), one per
# pipeline; the objective is 99 % of prices younger than slo.freshnessP99Ms.
SLOW = "odds_operator_canary_slow_frames_total"
FRAMES = "odds_operator_canary_frames_total"
stat("Canary age p99", f"max(odds_operator_canary_age_p99_seconds{SEL})", 0, 6, "s",
     [(0.25, "orange"), (1, "red")],
     "99th percentile age (now - ingested_at) of the prices the canary received over slo.window.")
stat("Longest freeze", f"max(odds_operator_canary_longest_freeze_seconds{SEL})", 6, 6, "s",
     [(1, "orange"), (5, "red")],
     "Longest a price that changed upstream stayed frozen on the canary's screen (window), one in progress included.")
stat("Error budget burn (1h)",
     f"(sum(rate({SLOW}{SEL}[1h])) / sum(rate({FRAMES}{SEL}[1h]))) / 0.01", 12, 6, "short",
     [(1, "orange"), (14.4, "red")],
     "Share of prices older than the objective over the last hour, in units of the 1 % budget: 1 spends it exactly in the SLO period, 14.4 pages.")
stat("Canary watching", f"min(odds_operator_canary_watching{SEL})", 18, 6, "short",
     [(1, "green")], "1 while the canary is connected and live updates flow; 0 = blind (disconnected, unreachable or not live).",
     base="red")
newline(4)
ts("Canary age and freeze", [
    (f"max by (namespace, pipeline) (odds_operator_canary_age_p99_seconds{SEL})", "{{pipeline}} age p99"),
    (f"max by (namespace, pipeline) (odds_operator_slo_freshness_p99_seconds{SEL})", "{{pipeline}} objective"),
    (f"max by (namespace, pipeline) (odds_operator_canary_longest_freeze_seconds{SEL})", "{{pipeline}} longest freeze"),
    (f"max by (namespace, pipeline) (odds_operator_slo_max_freeze_seconds{SEL})", "{{pipeline}} max freeze"),
], 0, w=12, unit="s")
ts("Prices over the objective", [
    (f"sum by (namespace, pipeline) (rate({SLOW}{SEL}{RI})) / sum by (namespace, pipeline) (rate({FRAMES}{SEL}{RI}))",
     "{{pipeline}} share over objective"),
], 12, w=12, unit="percentunit", desc="The SLI's error ratio; the budget is 0.01.")
newline()

row("Flow")
ts("Updates/s per stage", [
    (rate("odds_sim_updates_sent_total"), "simulator sent"),
    (rate("odds_ingest_updates_produced_total"), "ingest → Kafka"),
    (rate("odds_proc_messages_consumed_total"), "processor consumed"),
    (rate("odds_proc_cache_sets_total"), "processor → cache + pub/sub (newer only)"),
    (rate("odds_ws_updates_received_total"), "odds-service received"),
], 0, unit="ops")
ts("DLQ rate by reason", [
    (rate("odds_ingest_dlq_total", "reason"), "ingest {{reason}}"),
    (rate("odds_proc_dead_lettered_total", "reason"), "processor {{reason}}"),
], 8, unit="ops")
ts("Consumer lag per partition", [
    (f"max by (topic, partition) (odds_proc_consumer_lag{SEL})", "{{topic}}/{{partition}}"),
], 16)
newline()
ts("End-to-end age (supplier → processor)", [
    (q("odds_proc_update_age_seconds", 0.5), "p50"),
    (q("odds_proc_update_age_seconds", 0.99), "p99"),
], 0, unit="s")
ts("Processor batches", [
    (q("odds_proc_batch_seconds", 0.99), "batch latency p99 (s)"),
    (f"sum(rate(odds_proc_batch_size_sum{SEL}{RI})) / sum(rate(odds_proc_batch_size_count{SEL}{RI}))", "mean records per batch"),
    (rate("odds_proc_db_writes_total"), "transactions/s"),
], 8)
ts("Ingest producer", [
    (q("odds_ingest_produce_latency_seconds", 0.99), "produce latency p99 (s)"),
    (f"sum(odds_ingest_in_flight{SEL})", "records in flight"),
    (rate("odds_ingest_shutdown_undelivered_total"), "undelivered at shutdown/s"),
    (rate("odds_ingest_frames_received_total"), "supplier frames/s"),
], 16)
newline()
ts("Stale versions and conflation", [
    (rate("odds_ingest_version_regressions_total", "reason"), "supplier: version {{reason}}"),
    (rate("odds_ingest_version_gaps_total"), "supplier: versions skipped (gaps)"),
    (rate("odds_proc_stale_updates_skipped_total"), "processor: not newer than stored"),
    (rate("odds_proc_version_regressions_total", "reason"), "processor: version {{reason}}"),
    (rate("odds_ws_version_regressions_total", "reason"), "odds-service: version {{reason}}"),
    (rate("odds_ws_stale_skipped_total"), "odds-service: client already had it"),
    (rate("odds_ws_conflated_total"), "odds-service: conflated for slow clients"),
], 0, w=12, unit="ops")
ts("Postgres rows/s by table", [
    (rate("odds_proc_db_rows_total", "table"), "{{table}}"),
], 12, w=12, unit="ops")
newline()

row("Clients")
ts("WebSocket connections", [
    (f"sum(odds_ws_connections{SEL})", "connections"),
    (f"sum(odds_ws_subscriptions{SEL})", "subscriptions"),
    (rate("odds_ws_connections_rejected_total", "reason"), "rejected/s {{reason}}"),
], 0)
ts("WebSocket deliveries/s", [
    (rate("odds_ws_messages_sent_total", "type"), "{{type}}"),
], 8, unit="ops")
ts("Slow consumers", [
    (rate("odds_ws_slow_client_closes_total"), "odds-service slow-consumer closes/s"),
    (rate("odds_sim_slow_client_disconnects_total"), "simulator dropped slow readers/s"),
], 16, unit="ops")
newline()
ts("REST latency by route", [
    (q("odds_api_request_duration_seconds", 0.5, "le, route"), "p50 {{route}}"),
    (q("odds_api_request_duration_seconds", 0.99, "le, route"), "p99 {{route}}"),
], 0, unit="s")
ts("REST requests by status", [
    (rate("odds_api_requests_total", "status"), "{{status}}"),
], 8, unit="reqps")
ts("WebSocket fan-out latency", [
    (q("odds_ws_hop_seconds", 0.5), "p50"),
    (q("odds_ws_hop_seconds", 0.99), "p99"),
], 16, unit="s", desc="odds-service receives an update from pub/sub → its frame is written to a client.")
newline()

row("Latency budget (per hop)")
ts("Hop latency p50", [(q(f, 0.5, "le, hop"), "{{hop}}") for f in HOP_FAMILIES], 0, w=12, unit="s",
   desc="Where an update's time goes, hop by hop (see README, Performance). A hop that rises is the stage to look at.")
ts("Hop latency p99", [(q(f, 0.99, "le, hop"), "{{hop}}") for f in HOP_FAMILIES], 12, w=12, unit="s")
newline()

row("Postgres, Redis, Kafka, supplier")
ts("Errors by phase (processor)", [
    (rate("odds_proc_errors_total", "phase"), "{{phase}}"),
    (rate("odds_ingest_produce_errors_total"), "ingest produce errors"),
], 0, unit="ops", desc="db = Postgres, cache = Redis, consume/commit/dlq = Kafka.")
ts("Redis cache health", [
    (f"max(odds_proc_cache_stale{SEL})", "cache stale (1 = awaiting repair)"),
    (rate("odds_proc_cache_repairs_total"), "repairs/s"),
    (rate("odds_api_store_fallbacks_total"), "odds-service Postgres fallbacks/s (Redis failed)"),
    (rate("odds_ws_pubsub_reconnects_total"), "pub/sub reconnects/s"),
    (rate("odds_ws_resynced_events_total"), "events resynced/s"),
    (rate("odds_ws_updates_invalid_total"), "invalid pub/sub messages/s"),
], 8)
ts("Supplier connection", [
    (rate("odds_ingest_reconnects_total"), "ingest reconnects/s"),
    (f"sum(odds_sim_clients{SEL})", "simulator clients"),
], 16)
newline()

row("Operator")
# The operator's ServiceMonitor keeps the pipelines' `namespace` label (honorLabels), so the
# per-pipeline series filter like the pipelines' own.
OP_RATE = "[$__rate_interval]"
DEGRADED = sel('type="Degraded", status="True"')
NOT_READY = sel('type="Ready", status="False"')
NOT_WATCHING = sel('type="Watching", status="False"')
stat("Leader", "sum(odds_operator_leader)", 0, 4, "short", [(1, "green"), (2, "red")],
     "Replicas holding the leader Lease: 1 expected; 0 = nobody reconciles, 2 = two writers.", base="red")
stat("Degraded pipelines",
     f'sum(odds_operator_pipeline_condition{DEGRADED}) or vector(0)', 4, 4,
     "short", [(1, "red")], "Pipelines whose Degraded condition is True (the status says why).")
stat("Pipelines with a failing watch",
     f'sum(odds_operator_pipeline_condition{NOT_WATCHING}) or vector(0)', 8, 4,
     "short", [(1, "orange")], "Watching=False (WatchFailed): the operator sees their changes only on its periodic requeue.")
stat("Reconcile duration p99",
     f"histogram_quantile(0.99, sum by (le) (rate(odds_operator_reconcile_duration_seconds_bucket{OP_RATE})))",
     12, 6, "s", [(10, "orange"), (60, "red")], "A reconcile is abandoned at 60 s (RECONCILE_DEADLINE).")
stat("Reconcile errors /s", f"sum(rate(odds_operator_reconcile_errors_total{OP_RATE})) or vector(0)", 18, 6, "short",
     [(0.01, "orange"), (0.1, "red")])
newline(4)
ts("Reconciles and errors by step", [
    (f"sum(rate(odds_operator_reconciles_total{OP_RATE}))", "reconciles/s"),
    (f"sum by (error) (rate(odds_operator_reconcile_errors_total{OP_RATE}))", "errors/s {{error}}"),
], 0, unit="ops", desc="error = the step that failed: dereference, apply, status, timeout, not_leader...")
ts("Kubernetes API errors", [
    (f"sum by (verb, code) (rate(odds_operator_api_errors_total{OP_RATE}))", "{{verb}} {{code}}"),
    (f"sum by (resource, reason) (rate(odds_operator_watch_errors_total{OP_RATE}))", "watch {{resource}} {{reason}}"),
], 8, unit="ops", desc="Errors the reconcile met, by verb and HTTP code (transport: no answer); failures of the controller's watches, by resource and reason.")
ts("Reconcile duration", [
    ("histogram_quantile(0.5, sum by (le) (rate(odds_operator_reconcile_duration_seconds_bucket[$__rate_interval])))", "p50"),
    ("histogram_quantile(0.99, sum by (le) (rate(odds_operator_reconcile_duration_seconds_bucket[$__rate_interval])))", "p99"),
], 16, unit="s")
newline()
ts("Pipeline conditions (not as expected)", [
    (f'sum by (namespace, pipeline) (odds_operator_pipeline_condition{DEGRADED})',
     "{{namespace}}/{{pipeline}} Degraded"),
    (f'sum by (namespace, pipeline) (odds_operator_pipeline_condition{NOT_READY})',
     "{{namespace}}/{{pipeline}} not Ready"),
    (f'sum by (namespace, pipeline) (odds_operator_pipeline_condition{NOT_WATCHING})',
     "{{namespace}}/{{pipeline}} watch failing"),
], 0, w=12, desc="1 while the condition holds (odds_operator_pipeline_condition).")
ts("Leader", [
    ("sum by (pod) (odds_operator_leader)", "{{pod}}"),
], 12, w=12, desc="1 on the replica that holds the Lease.")
newline()

def var(name, label, query):
    return {"name": name, "label": label, "type": "query", "datasource": DS,
            "query": query, "definition": query,
            "refresh": 2, "includeAll": True, "multi": True, "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "sort": 1}

dashboard = {
    "uid": "odds-pipeline",
    "title": "Odds pipeline",
    "description": "The odds pipeline: updates per stage, DLQ, lag, end-to-end age, WebSocket clients, REST, storage errors, operator. Needs the chart's PodMonitor (pipeline/component labels) and ServiceMonitor.",
    "tags": ["odds", "kafka", "websocket"],
    "editable": True,
    "graphTooltip": 1,
    "schemaVersion": 39,
    "version": 1,
    "refresh": "10s",
    "time": {"from": "now-1h", "to": "now"},
    "timezone": "browser",
    "links": [],
    "annotations": {"list": []},
    "templating": {"list": [
        {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
         "current": {}, "hide": 0},
        var("namespace", "Namespace", "label_values(odds_proc_messages_consumed_total, namespace)"),
        var("pipeline", "Pipeline", 'label_values(odds_proc_messages_consumed_total{namespace=~"$namespace"}, pipeline)'),
    ]},
    "panels": panels,
}


def render():
    return json.dumps(dashboard, indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    out = pathlib.Path(__file__).with_name("odds-pipeline.json")
    out.write_text(render(), encoding="utf-8")
    print(f"{out}: {len(panels)} panels", file=sys.stderr)
