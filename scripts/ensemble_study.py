#!/usr/bin/env python3
"""Prompt ensembles on the demo tasks (paper §6 in miniature; BENCHMARKS.md §13, README).

For each task, five prompts are tuned with `promptd tune` exactly as the committed prompt was
(the settings in prompts/reports/<task>.json: steps, learning rate, init, labels) but with seeds
1 to 5, then served by one `promptd serve` on the demo model. On the 500 held-out test reviews:
each member alone, and the ensembles of the first 3 and of all 5 members, through
POST /v1/ensembles/{name}/predict: `vote` over generated answers, and for the classification
tasks `mean-logprob` and `vote` over the labels (rank classification).

Usage: python3 scripts/ensemble_study.py [--tasks verdict,aspects,translate] [--out target/ensemble-study]
Tuned members are kept in <out>/prompts and reused on a rerun. Writes <out>/ensembles.{json,md}.
Needs only the Python standard library and a release build (make build).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDS = [1, 2, 3, 4, 5]
PORT = 18093


def tune(ns, task, seed, prompts):
    out = os.path.join(prompts, f"{task}-s{seed}.safetensors")
    report = os.path.join(prompts, "reports", f"{task}-s{seed}.json")
    if os.path.exists(out) and os.path.exists(report):
        return json.load(open(report))
    s = json.load(open(os.path.join(ROOT, "prompts/reports", f"{task}.json")))["settings"]
    args = [ns.bin, "tune", "--model", ns.model,
            "--train", os.path.join(ns.data, f"{task}.train.jsonl"),
            "--dev", os.path.join(ns.data, f"{task}.dev.jsonl"),
            "--prompt-length", str(s["prompt_length"]), "--init", s["init"],
            "--steps", str(s["steps"]), "--lr", str(s["lr"]), "--eval-every", "50",
            "--seed", str(seed), "--out", out, "--report", report, "--quiet"]
    if s["labels"]:
        args += ["--labels", ",".join(s["labels"])]
    t = time.time()
    subprocess.run(args, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(f"  tuned {task} seed {seed} in {time.time() - t:.0f} s", flush=True)
    return json.load(open(report))


def call(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{PORT}{path}", data=data, method=method,
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as resp:
        return json.loads(resp.read() or b"null")


def rows(ns, task):
    with open(os.path.join(ns.data, f"{task}.test.jsonl")) as f:
        return [json.loads(line) for line in f]


def accuracy(answers, data):
    return sum(a == r["target"] for a, r in zip(answers, data)) / len(data)


def predict_all(path, data, body, pick, chunk=50):
    out = []
    for i in range(0, len(data), chunk):
        reply = call("POST", path, dict(body, inputs=[r["input"] for r in data[i:i + chunk]]))
        out += [pick(o) for o in reply["outputs"]]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", default="verdict,aspects,translate")
    ap.add_argument("--out", default="target/ensemble-study")
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/promptd"))
    ap.add_argument("--model", default=os.path.join(ROOT, "tests/fixtures/models/demo-reviews"))
    ap.add_argument("--data", default=os.path.join(ROOT, "tests/fixtures/demo"))
    ns = ap.parse_args()
    prompts = os.path.join(ns.out, "prompts")
    os.makedirs(os.path.join(prompts, "reports"), exist_ok=True)
    tasks = ns.tasks.split(",")
    for task in tasks:
        for seed in SEEDS:
            tune(ns, task, seed, prompts)
    server = subprocess.Popen([ns.bin, "serve", "--model", ns.model, "--prompts", prompts,
                               "--addr", f"127.0.0.1:{PORT}", "--grpc-addr", "off", "--audit-log", "off",
                               "--max-wait-ms", "20"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = {}
    try:
        for _ in range(600):
            try:
                call("GET", "/readyz")
                break
            except Exception:
                time.sleep(0.1)
        for task in tasks:
            data = rows(ns, task)
            # The task's label set: its report's --labels, else its distinct targets when they are
            # few enough to be one (classification); none for free generation.
            report = json.load(open(os.path.join(ROOT, "prompts/reports", f"{task}.json")))
            labels = report["settings"]["labels"] or (report["labels"] if len(report["labels"]) <= 32 else [])
            members = [f"{task}-s{s}" for s in SEEDS]
            gen = {"max_new_tokens": 48}
            r = {"members": {}, "ensembles": {}}
            for m in members:
                r["members"][m] = accuracy(predict_all(f"/v1/tasks/{m}/predict", data, gen, lambda o: o["text"]), data)
            combos = [("vote", None)] + ([("vote", labels), ("mean-logprob", labels)] if labels else [])
            for n in (3, 5):
                for combine, with_labels in combos:
                    name = f"{task}-x{n}-{combine}"
                    call("PUT", f"/v1/ensembles/{name}", {"members": members[:n], "combine": combine})
                    body = gen if with_labels is None else {"labels": with_labels, "max_new_tokens": 0}
                    key = f"{n} {combine}" + (" (labels)" if with_labels else "")
                    t = time.perf_counter()
                    answers = predict_all(f"/v1/ensembles/{name}/predict", data, body, lambda o: o["answer"])
                    r["ensembles"][key] = {"accuracy": accuracy(answers, data), "seconds": time.perf_counter() - t}
            if labels:
                # Members as rank classifiers too, so the labelled ensembles have their own baseline.
                r["members_labels"] = {}
                for m in members:
                    r["members_labels"][m] = accuracy(predict_all(
                        f"/v1/tasks/{m}/predict", data, {"labels": labels, "max_new_tokens": 0},
                        lambda o: o["label"]), data)
            results[task] = r
            accs = list(r["members"].values())
            print(f"{task}: members {min(accs):.3f}..{max(accs):.3f} (mean {statistics.mean(accs):.3f}); "
                  + ", ".join(f"{k} {v['accuracy']:.3f}" for k, v in r["ensembles"].items()), flush=True)
    finally:
        server.terminate()
        server.wait()
    with open(os.path.join(ns.out, "ensembles.json"), "w") as f:
        json.dump(results, f, indent=1)
    lines = ["| task | answers by | worst member | mean member | best member | ensemble of 3 | ensemble of 5 |",
             "|---|---|---:|---:|---:|---:|---:|"]
    pct = lambda v: f"{100 * v:.1f}"
    for task, r in results.items():
        for how, members, keys in [
            ("generation, vote", r["members"], ("3 vote", "5 vote")),
            ("labels, vote", r.get("members_labels"), ("3 vote (labels)", "5 vote (labels)")),
            ("labels, mean-logprob", r.get("members_labels"), ("3 mean-logprob (labels)", "5 mean-logprob (labels)")),
        ]:
            if not members or keys[0] not in r["ensembles"]:
                continue
            accs = list(members.values())
            lines.append(f"| {task} | {how} | {pct(min(accs))} | {pct(statistics.mean(accs))} | {pct(max(accs))} | "
                         f"{pct(r['ensembles'][keys[0]]['accuracy'])} | {pct(r['ensembles'][keys[1]]['accuracy'])} |")
    with open(os.path.join(ns.out, "ensembles.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
