#!/usr/bin/env python3
"""The demo's accuracy tables (README / BENCHMARKS.md), with `promptd tune` and `promptd eval`.

  1. Every demo task, on its dev and test sets: the committed tuned prompt (prompts/<task>) vs no
     prompt vs a plain-English instruction vs the pretraining text prefix (seen tasks only). A task
     with no committed prompt (`dish`) is tuned here with UNSERVED's settings.
  2. Prompt length 1 / 5 / 20 / 100 (paper Fig. 3 in miniature) and the initialisation
     (class labels / sampled vocabulary / uniform noise) on a few tasks: each a fresh
     `promptd tune` with the settings in the task's report (prompts/reports/<task>.json), scored
     on dev.

Writes <out>/study.json and <out>/study.md (markdown tables) and prints the tables.

Usage: python3 scripts/demo_study.py [--out target/demo-study] [--sweep-tasks sentiment,verdict]
       [--skip-sweeps]
Needs only the Python standard library and a release build (make build).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import demo_data as D  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A task without a committed prompt is tuned with these (scripts/demo-prompts.sh's for dish).
UNSERVED = {"steps": 1500, "lr": 1.0, "init": "sampled-vocab", "prompt_length": 20}


def run_json(args):
    out = subprocess.run(args, cwd=ROOT, check=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    return json.loads(out.stdout)


def evaluate(ns, task, split, prompt="none", prefix=None):
    args = [ns.bin, "eval", "--model", ns.model, "--prompt", prompt,
            "--data", os.path.join(ns.data, f"{task}.{split}.jsonl")]
    if prefix is not None:
        args += ["--text-prefix", prefix]
    return run_json(args)["value"]


def tune(ns, task, settings, length, init, workdir):
    """A fresh prompt with `settings` (a report's) but `length` rows and `init`; its report."""
    out = os.path.join(workdir, f"{task}-{length}-{init}.safetensors")
    report = out + ".json"
    args = [ns.bin, "tune", "--model", ns.model,
            "--train", os.path.join(ns.data, f"{task}.train.jsonl"),
            "--dev", os.path.join(ns.data, f"{task}.dev.jsonl"),
            "--prompt-length", str(length), "--init", init, "--steps", str(settings["steps"]),
            "--lr", str(settings["lr"]), "--eval-every", "50", "--seed", "0",
            "--out", out, "--report", report, "--quiet"]
    if init == "class-labels":
        args += ["--labels", ",".join(D.LABELS[task])]
    subprocess.run(args, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    r = json.load(open(report))
    r["file"] = out
    return r


def summary(r):
    return {"dev": r["best_metric"], "best_step": r["best_step"], "seconds": r["train_seconds"]}


def pct(v):
    return "—" if v is None else f"{100 * v:.1f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default="target/release/promptd")
    ap.add_argument("--model", default="tests/fixtures/models/demo-reviews")
    ap.add_argument("--data", default="tests/fixtures/demo")
    ap.add_argument("--prompts", default="prompts")
    ap.add_argument("--out", default="target/demo-study")
    ap.add_argument("--sweep-tasks", default="sentiment,verdict")
    ap.add_argument("--skip-sweeps", action="store_true")
    ns = ap.parse_args()
    os.makedirs(os.path.join(ROOT, ns.out), exist_ok=True)
    started = time.time()

    results = {"tasks": {}, "lengths": {}, "inits": {}}
    work = tempfile.mkdtemp(prefix="demo-study-")
    for task in D.TASKS:
        prompt = os.path.join(ns.prompts, f"{task}.safetensors")
        served = os.path.exists(os.path.join(ROOT, prompt))
        if served:
            report = json.load(open(os.path.join(ROOT, ns.prompts, "reports", f"{task}.json")))
        else:
            report = tune(ns, task, UNSERVED, UNSERVED["prompt_length"], UNSERVED["init"], work)
            prompt = report["file"]
        row = {
            "served": served,
            "tuned_dev": evaluate(ns, task, "dev", prompt),
            "tuned_test": evaluate(ns, task, "test", prompt),
            "none": evaluate(ns, task, "dev"),
            "instruction": evaluate(ns, task, "dev", prefix=D.INSTRUCTIONS[task]),
            "prefix": evaluate(ns, task, "dev", prefix=D.PREFIXES[task]) if task in D.PREFIXES else None,
            "seen": task in D.PREFIXES,
            "tune_seconds": report["train_seconds"],
            "steps": report["total_steps"],
            "best_step": report["best_step"],
        }
        results["tasks"][task] = row
        print(f"{task}: {row}", flush=True)

    if not ns.skip_sweeps:
        for task in ns.sweep_tasks.split(","):
            settings = json.load(open(os.path.join(ROOT, ns.prompts, "reports", f"{task}.json")))["settings"]
            base_init = settings["init"]
            for length in (1, 5, 20, 100):
                r = summary(tune(ns, task, settings, length, base_init, work))
                results["lengths"].setdefault(task, {})[length] = r
                print(f"{task} length {length} ({base_init}): {r}", flush=True)
            for init in ("class-labels", "sampled-vocab", "random-uniform"):
                if init == base_init:
                    r = results["lengths"][task][20]
                elif init == "class-labels" and task not in D.LABELS:
                    continue
                else:
                    r = summary(tune(ns, task, settings, 20, init, work))
                results["inits"].setdefault(task, {})[init] = r
                print(f"{task} init {init}: {r}", flush=True)
    shutil.rmtree(work, ignore_errors=True)

    md = ["| task | pretrained? | tuned prompt (dev) | tuned prompt (test) | no prompt | text instruction "
          "| pretraining prefix | tuning time |",
          "|---|---|---:|---:|---:|---:|---:|---:|"]
    for task, r in results["tasks"].items():
        name = task if r["served"] else f"{task} (not served)"
        md.append(f"| {name} | {'yes' if r['seen'] else '**no**'} | **{pct(r['tuned_dev'])}** | "
                  f"{pct(r['tuned_test'])} | {pct(r['none'])} | {pct(r['instruction'])} | "
                  f"{pct(r['prefix'])} | {r['tune_seconds']:.0f} s ({r['steps']} steps) |")
    if results["lengths"]:
        md += ["", "| task (dev accuracy, %) | 1 row | 5 rows | 20 rows | 100 rows |", "|---|---:|---:|---:|---:|"]
        for task, by_len in results["lengths"].items():
            md.append(f"| {task} | " + " | ".join(pct(by_len[n]["dev"]) for n in (1, 5, 20, 100)) + " |")
        md += ["", "| task (dev accuracy, %, 20 rows) | class labels | sampled vocab | random uniform |",
               "|---|---:|---:|---:|"]
        for task, by_init in results["inits"].items():
            md.append(f"| {task} | " + " | ".join(
                pct(by_init[i]["dev"]) if i in by_init else "—"
                for i in ("class-labels", "sampled-vocab", "random-uniform")) + " |")
    md.append("")
    md.append(f"(scripts/demo_study.py, {(time.time() - started) / 60:.0f} min)")
    text = "\n".join(md) + "\n"
    with open(os.path.join(ROOT, ns.out, "study.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(ROOT, ns.out, "study.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
