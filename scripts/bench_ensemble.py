#!/usr/bin/env python3
"""What an N-prompt ensemble costs (BENCHMARKS.md §13): one ensemble request vs the N task
requests a client without ensembles sends, on one running server.

    scripts/bench-ensemble.sh            (builds what is missing, then runs this)
    python3 scripts/bench_ensemble.py --url http://127.0.0.1:18091 --tasks t0,t1,... [--sizes 2,5,10]

For each N: the ensemble of the first N tasks answers B inputs (one request), and the same B
inputs go to each of the N tasks as N requests, sent at once (concurrently) and one after
another (sequentially). Reported: median wall time over the repeats and the rows per forward
pass the server records for the request (promptd_batch_size sum / count, from /metrics, read
before and after each request with the server otherwise idle). Standard library only.
"""
import argparse
import concurrent.futures as cf
import json
import statistics
import time
import urllib.request

SENTENCES = [
    "at the night owl the bread was cold but the waitress was lovely, 3 stars",
    "the soup at rosa's was great, 5 stars",
    "the tea at casa lupe was cold and the host was rude, 1 star",
    "our dinner at golden wok was fine, the prices were fair, 4 stars",
    "at chez paul the steak was salty but the decor was charming, 3 stars",
    "the ramen at the fig tree was superb and the staff were quick, 5 stars",
    "lunch at anna's was slow, the curry was bland, 2 stars",
    "the wine at the copper pot was perfect, 5 stars",
]


def call(method, url, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as resp:
        return resp.status, resp.read()


def batch_metrics(url):
    _, text = call("GET", f"{url}/metrics")
    total = count = 0.0
    for line in text.decode().splitlines():
        if line.startswith("promptd_batch_size_sum"):
            total = float(line.split()[-1])
        elif line.startswith("promptd_batch_size_count"):
            count = float(line.split()[-1])
    return total, count


def measured(url, run):
    """(seconds, rows per pass) of `run()` on an otherwise idle server."""
    rows0, passes0 = batch_metrics(url)
    t = time.perf_counter()
    run()
    elapsed = time.perf_counter() - t
    rows1, passes1 = batch_metrics(url)
    passes = passes1 - passes0
    return elapsed, (rows1 - rows0) / passes if passes else float("nan"), passes


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--tasks", required=True, help="comma-separated served tasks (at least max size)")
    ap.add_argument("--sizes", default="2,5,10")
    ap.add_argument("--inputs", default="1,8", help="inputs per request (B), comma-separated")
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default="target/bench-ensemble")
    args = ap.parse_args()
    tasks = args.tasks.split(",")
    rows = []
    cases = [(b, int(s)) for b in map(int, args.inputs.split(",")) for s in args.sizes.split(",")]
    for b, n in cases:
        inputs = (SENTENCES * (b // len(SENTENCES) + 1))[:b]
        body = {"inputs": inputs, "max_new_tokens": args.max_new_tokens}
        members = tasks[:n]
        assert len(members) == n, f"need {n} tasks, have {len(tasks)}"
        name = f"bench-{n}"
        call("PUT", f"{args.url}/v1/ensembles/{name}", {"members": members, "combine": "vote"})

        def ensemble():
            call("POST", f"{args.url}/v1/ensembles/{name}/predict", body)

        def concurrent():
            with cf.ThreadPoolExecutor(n) as pool:
                list(pool.map(lambda t: call("POST", f"{args.url}/v1/tasks/{t}/predict", body), members))

        def sequential():
            for t in members:
                call("POST", f"{args.url}/v1/tasks/{t}/predict", body)

        ensemble()  # warm-up
        for label, run in [("1 ensemble request", ensemble), (f"{n} task requests at once", concurrent),
                           (f"{n} task requests one by one", sequential)]:
            samples = [measured(args.url, run) for _ in range(args.repeats)]
            secs = statistics.median(s[0] for s in samples)
            per_pass = statistics.median(s[1] for s in samples)
            passes = statistics.median(s[2] for s in samples)
            rows.append({"b": b, "n": n, "how": label, "seconds": secs, "rows_per_pass": per_pass, "passes": passes})
            print(f"B={b:<2} N={n:<3} {label:<32} {secs*1000:8.1f} ms  {per_pass:5.1f} rows/pass  {passes:4.0f} passes", flush=True)
    # The ensembles were stored in the bench prompts folder: leave it as it was.
    for n in sorted({n for _, n in cases}):
        call("DELETE", f"{args.url}/v1/ensembles/bench-{n}")
    import os
    os.makedirs(args.out, exist_ok=True)
    with open(f"{args.out}/cost.json", "w") as f:
        json.dump({"max_new_tokens": args.max_new_tokens, "rows": rows}, f, indent=1)
    lines = ["| inputs | N | how | median time (ms) | vs ensemble | rows per pass | passes |",
             "|---:|---:|---|---:|---:|---:|---:|"]
    base = {}
    for r in rows:
        if r["how"].startswith("1 ensemble"):
            base[(r["b"], r["n"])] = r["seconds"]
        lines.append(f"| {r['b']} | {r['n']} | {r['how']} | {r['seconds']*1000:.1f} | "
                     f"{r['seconds']/base[(r['b'], r['n'])]:.2f}× | "
                     f"{r['rows_per_pass']:.1f} | {r['passes']:.0f} |")
    with open(f"{args.out}/cost.md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
