#!/usr/bin/env python3
"""Time to first token of a streaming predict, against the whole answer's time.

    python3 scripts/bench_ttft.py --url http://127.0.0.1:8080 --task sentiment \
        --requests 30 --max-new-tokens 32 [--concurrency 1]

Each client sends `--requests` streaming predicts one after another (with `--concurrency` clients
at once) and reads the server-sent events as they arrive: time to the first token chunk, to the
last chunk, and tokens per row. The same requests without `stream` give the whole-answer time
beside it. Standard library only.
"""
import argparse
import http.client
import json
import statistics
import threading
import time
import urllib.parse

INPUTS = [
    "the pasta at rosa's was superb, 5 stars",
    "at el toro the fish was stale, 1 star",
    "our curry at omar's was bland but the room was cozy, 3 stars",
    "at kenji's the ramen was perfect, 5 stars",
]


def one(url, task, text, max_new, stream):
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
    body = json.dumps({"inputs": text, "max_new_tokens": max_new, "stream": stream})
    start = time.perf_counter()
    conn.request("POST", f"/v1/tasks/{task}/predict", body, {"content-type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise SystemExit(f"{resp.status}: {resp.read()[:300]!r}")
    first = None
    tokens = 0
    if stream:
        for line in resp:
            line = line.strip()
            if not line.startswith(b"data: {"):
                continue
            chunk = json.loads(line[6:])
            if "token_id" in chunk:
                tokens += 1
                if first is None:
                    first = time.perf_counter() - start
    else:
        tokens = len(json.loads(resp.read())["outputs"][0]["token_ids"])
    total = time.perf_counter() - start
    conn.close()
    return first, total, tokens


def run(args, stream):
    results = []
    lock = threading.Lock()

    def client(c):
        for i in range(args.requests):
            r = one(args.url, args.task, INPUTS[(c + i) % len(INPUTS)], args.max_new_tokens, stream)
            with lock:
                results.append(r)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(args.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def ms(xs):
    return f"{statistics.median(xs) * 1000:.1f}"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True)
    p.add_argument("--task", required=True)
    p.add_argument("--requests", type=int, default=30)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--concurrency", type=int, default=1)
    args = p.parse_args()
    run(args, True)  # warm-up
    streamed = run(args, True)
    whole = run(args, False)
    first = [r[0] for r in streamed if r[0] is not None]
    print(json.dumps({
        "concurrency": args.concurrency,
        "requests": len(streamed),
        "ttft_p50_ms": float(ms(first)),
        "stream_total_p50_ms": float(ms([r[1] for r in streamed])),
        "whole_answer_p50_ms": float(ms([r[1] for r in whole])),
        "tokens_p50": statistics.median([r[2] for r in streamed]),
    }))


if __name__ == "__main__":
    main()
