#!/usr/bin/env python3
"""Writes deploy/grafana/promptd.json, the Grafana dashboard for promptd.

Edit the panels here and rerun (`python3 scripts/make_dashboard.py`); tests/it/deploy.rs checks that
every metric the dashboard queries is exported by a live server.
"""
import json
import pathlib

SEL = '{namespace=~"$namespace", pod=~"$pod"}'
OK = '{namespace=~"$namespace", pod=~"$pod", status="200"}'
ERR = '{namespace=~"$namespace", pod=~"$pod", status=~"4..|5.."}'
RATE = "$__rate_interval"


def q(expr, legend):
    return {"expr": expr, "legendFormat": legend, "refId": None}


def panel(title, unit, targets, x, y, w=12, h=8, description="", kind="timeseries", stack=False):
    for i, t in enumerate(targets):
        t["refId"] = chr(ord("A") + i)
        t["datasource"] = {"type": "prometheus", "uid": "${datasource}"}
    custom = {"fillOpacity": 10, "lineWidth": 1}
    if stack:
        custom["stacking"] = {"mode": "normal", "group": "A"}
    p = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit, "custom": custom if kind == "timeseries" else {}}, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "right", "calcs": ["mean", "max"]}}
        if kind == "timeseries" else {"reduceOptions": {"calcs": ["lastNotNull"]}},
        "targets": targets,
    }
    return p


def quantile(qv, metric, by="le"):
    return f"histogram_quantile({qv}, sum by ({by}) (rate({metric}_bucket{SEL}[{RATE}])))"


def mean(metric):
    return f"sum(rate({metric}_sum{SEL}[{RATE}])) / sum(rate({metric}_count{SEL}[{RATE}]))"


def row(title, y):
    return {"type": "row", "title": title, "collapsed": False, "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}, "panels": []}


panels = []
y = 0
panels.append(panel("Predictions/s", "reqps", [q(f"sum(rate(promptd_requests_total{OK}[{RATE}]))", "ok")], 0, y, 6, 4, kind="stat"))
panels.append(panel("p99 latency", "s", [q(quantile(0.99, "promptd_request_duration_seconds"), "p99")], 6, y, 6, 4, kind="stat"))
panels.append(panel("Tasks per forward pass (mean)", "short", [q(mean("promptd_batch_tasks"), "tasks")], 12, y, 6, 4, kind="stat",
                    description="Distinct prompts sharing one forward pass: the mixed-task batching at a glance."))
panels.append(panel("Prompts loaded", "short", [q(f"max(promptd_prompts_loaded{SEL})", "prompts")], 18, y, 6, 4, kind="stat"))
y += 4
panels.append(row("Traffic", y)); y += 1
panels.append(panel("Throughput by task (top 10)", "reqps", [
    q(f"topk(10, sum by (task) (rate(promptd_requests_total{SEL}[{RATE}])))", "{{task}}")], 0, y, stack=True,
    description="Predict requests/s by task label; tasks beyond --metrics-max-tasks count as _other, unknown ones as _unknown."))
panels.append(panel("Requests by status", "reqps", [
    q(f"sum by (status) (rate(promptd_requests_total{SEL}[{RATE}]))", "{{status}}")], 12, y, stack=True))
y += 8
panels.append(panel("Latency", "s", [
    q(quantile(0.5, "promptd_request_duration_seconds"), "p50"),
    q(quantile(0.9, "promptd_request_duration_seconds"), "p90"),
    q(quantile(0.99, "promptd_request_duration_seconds"), "p99")], 0, y))
panels.append(panel("p99 latency by task (top 10)", "s", [
    q(f"topk(10, {quantile(0.99, 'promptd_request_duration_seconds', 'task, le')})", "{{task}}")], 12, y))
y += 8
panels.append(row("Batching", y)); y += 1
panels.append(panel("Rows and tasks per forward pass", "short", [
    q(mean("promptd_batch_size"), "rows per pass (mean)"),
    q(mean("promptd_batch_tasks"), "tasks per pass (mean)"),
    q(quantile(0.99, "promptd_batch_tasks"), "tasks per pass (p99)"),
    q(mean("promptd_decode_rows"), "rows decoding together (mean)"),
    q(mean("promptd_decode_tasks"), "tasks decoding together (mean)")], 0, y,
    description="When tasks per pass follows rows per pass, requests of different tasks share forward passes. "
                "Under continuous batching, encoder passes hold the rows joining; the decode lines show the running batch."))
panels.append(panel("Forward pass duration", "s", [
    q(quantile(0.5, "promptd_batch_duration_seconds"), "p50"),
    q(quantile(0.99, "promptd_batch_duration_seconds"), "p99"),
    q(f"sum(rate(promptd_batch_duration_seconds_count{SEL}[{RATE}]))", "passes/s")], 12, y))
y += 8
panels.append(panel("Queue depth", "short", [
    q(f"sum by (pod) (promptd_queue_depth{SEL})", "{{pod}}"),
    q(f"max(promptd_queue_capacity{SEL})", "capacity")], 0, y))
panels.append(panel("Queue wait", "s", [
    q(quantile(0.5, "promptd_queue_wait_seconds"), "p50"),
    q(quantile(0.99, "promptd_queue_wait_seconds"), "p99")], 12, y))
y += 8
panels.append(panel("Generated tokens/s", "short", [
    q(f"sum by (pod) (rate(promptd_generated_tokens_total{SEL}[{RATE}]))", "{{pod}}")], 0, y))
panels.append(panel("Ready replicas", "short", [
    q(f"sum(promptd_ready{SEL})", "ready"),
    q(f"count(promptd_ready{SEL})", "scraped")], 12, y))
y += 8
panels.append(row("Prompts and errors", y)); y += 1
panels.append(panel("Prompts loaded by replica", "short", [
    q(f"promptd_prompts_loaded{SEL}", "{{pod}}")], 0, y, 8))
panels.append(panel("Prompt uploads by result", "ops", [
    q(f"sum by (result) (rate(promptd_prompt_uploads_total{SEL}[{RATE}]))", "{{result}}")], 8, y, 8, stack=True))
panels.append(panel("Prompt folder changes by result", "ops", [
    q(f"sum by (result) (rate(promptd_prompt_reloads_total{SEL}[{RATE}]))", "{{result}}")], 16, y, 8, stack=True))
y += 8
panels.append(panel("Errors", "reqps", [
    q(f"sum by (status) (rate(promptd_requests_total{ERR}[{RATE}]))", "HTTP {{status}}"),
    q(f"sum by (error_type) (rate(promptd_batch_errors_total{SEL}[{RATE}]))", "batch {{error_type}}")], 0, y, 24))
y += 8
panels.append(row("Adapters (LoRA, IA3, prefix)", y)); y += 1
panels.append(panel("Adapters on the device and registered", "short", [
    q(f"max(promptd_adapters_resident{SEL})", "on the device"),
    q(f"max(promptd_adapters_registered{SEL})", "registered")], 0, y, 8,
    description="Registered adapters not on the device wait in host memory and load when a row needs them."))
panels.append(panel("Adapter memory on the device", "bytes", [
    q(f"promptd_adapter_resident_bytes{SEL}", "{{pod}}")], 8, y, 8,
    description="Bounded by --adapter-memory-mb (exceeded only while every resident adapter has a decoding row)."))
panels.append(panel("Adapter loads and evictions", "ops", [
    q(f"sum(rate(promptd_adapter_loads_total{SEL}[{RATE}]))", "loads"),
    q(f"sum(rate(promptd_adapter_evictions_total{SEL}[{RATE}]))", "evictions")], 16, y, 8,
    description="Evictions that keep pace with loads mean the working set does not fit --adapter-memory-mb."))
y += 8
panels.append(row("Prompt tuning", y)); y += 1
panels.append(panel("Tuning jobs by state", "short", [
    q(f"sum by (state) (promptd_tune_jobs{SEL})", "{{state}}")], 0, y, 8, stack=True))
panels.append(panel("Engine share spent tuning", "percentunit", [
    q(f"sum(rate(promptd_tune_engine_seconds_total{SEL}[{RATE}]))", "engine s/s")], 8, y, 8,
    description="Engine seconds per second on tuning jobs; capped near --tune-share while serving is busy"))
panels.append(panel("Tuning steps/s", "short", [
    q(f"sum(rate(promptd_tune_steps_total{SEL}[{RATE}]))", "steps/s")], 16, y, 8,
    description="promptd_tune_loss{job} has each running job's latest loss"))
y += 8
panels.append(row("Object store", y)); y += 1
panels.append(panel("Store up by replica", "bool_yes_no", [
    q(f"max by (pod) (promptd_store_up{SEL})", "{{pod}}")], 0, y, 8,
    description="1 while the replica's last object store request (--store s3://...) succeeded. "
                "Stays 0 on replicas serving a prompts folder instead of a store."))
panels.append(panel("Store sync age by replica", "s", [
    q(f"max by (pod) (promptd_store_sync_age_seconds{SEL})", "{{pod}}")], 8, y, 8,
    description="Seconds since the replica last confirmed its catalog matches the store's manifest; "
                "normally below --store-poll-ms. Alert PromptdStoreStale above 30 s."))
panels.append(panel("Store sync lag", "s", [
    q(quantile(0.5, "promptd_store_sync_lag_seconds"), "p50"),
    q(quantile(0.99, "promptd_store_sync_lag_seconds"), "p99")], 16, y, 8,
    description="From a manifest written by any replica to its change applied on this one: "
                "how long an upload takes to reach the whole fleet."))
y += 8
panels.append(panel("Store requests by operation and outcome", "reqps", [
    q(f"sum by (op, outcome) (rate(promptd_store_requests_total{SEL}[{RATE}]))", "{{op}} {{outcome}}")], 0, y, 24,
    stack=True,
    description="not_modified: a manifest poll found nothing new; precondition_failed: a conditional write "
                "lost a race to another replica and is retried; error: the store failed or was unreachable."))

for i, p in enumerate(panels):
    p["id"] = i + 1

dashboard = {
    "uid": "promptd",
    "title": "promptd",
    "description": "One frozen T5, many soft-prompt tasks: traffic, latency, mixed-task batching, queue, prompts, object store.",
    "tags": ["promptd", "inference"],
    "timezone": "browser",
    "schemaVersion": 39,
    "version": 1,
    "refresh": "30s",
    "time": {"from": "now-1h", "to": "now"},
    "editable": True,
    "templating": {"list": [
        {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus", "current": {}},
        {"name": "namespace", "label": "Namespace", "type": "query",
         "datasource": {"type": "prometheus", "uid": "${datasource}"},
         "query": {"query": "label_values(promptd_ready, namespace)", "refId": "namespace"},
         "definition": "label_values(promptd_ready, namespace)",
         "includeAll": True, "multi": True, "allValue": ".*", "refresh": 2, "current": {}},
        {"name": "pod", "label": "Pod", "type": "query",
         "datasource": {"type": "prometheus", "uid": "${datasource}"},
         "query": {"query": 'label_values(promptd_ready{namespace=~"$namespace"}, pod)', "refId": "pod"},
         "definition": 'label_values(promptd_ready{namespace=~"$namespace"}, pod)',
         "includeAll": True, "multi": True, "allValue": ".*", "refresh": 2, "current": {}},
    ]},
    "panels": panels,
}

out = pathlib.Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "promptd.json"
out.write_text(json.dumps(dashboard, indent=2) + "\n")
print(f"wrote {out}")
