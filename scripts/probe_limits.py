#!/usr/bin/env python3
"""Probes a running promptd the way an attacker would, and prints what happened (issue 16):
1,000 connections that send nothing plus 50 slowloris connections (how long until all are
closed), a PUT declaring 1 GB with 10 bytes sent (how fast the 413), a 50 MB predict body sent
in full (does the client read the 413), and 200 predict requests with 1 MB inputs (the
server's RSS before and after; give its pid).

    scripts/probe_limits.py HOST PORT SERVER_PID TASK
(start the server with --max-body-bytes 2000000 so the 1 MB inputs reach the tokenizer check)
"""
import json
import resource
import socket
import sys
import time
import urllib.error
import urllib.request

host, port, pid, task = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def metric(name):
    text = urllib.request.urlopen(f"http://{host}:{port}/metrics").read().decode()
    return sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith(name + " "))


def rss_mb():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) // 1024


silent = [socket.create_connection((host, port)) for _ in range(1000)]
slow = []
for _ in range(50):
    s = socket.create_connection((host, port))
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    slow.append(s)
time.sleep(1)
print("open connections after 1 s:", metric("promptd_http_connections"))
t0 = time.time()
while metric("promptd_http_connections") > 1 and time.time() - t0 < 60:
    time.sleep(0.5)
print(f"all closed after {time.time() - t0 + 1:.1f} s (open now: {metric('promptd_http_connections')})")

s = socket.create_connection((host, port))
t0 = time.time()
s.sendall(b"PUT /v1/prompts/x HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n0123456789")
line = s.recv(4096).split(b"\r\n")[0].decode()
print(f"declared 1 GB, 10 bytes sent: {line} in {1000 * (time.time() - t0):.1f} ms")

url = f"http://{host}:{port}/v1/tasks/{task}/predict"
body = json.dumps({"inputs": "a " * (25 << 20)}).encode()
t0 = time.time()
try:
    urllib.request.urlopen(urllib.request.Request(url, data=body, headers={"content-type": "application/json"}))
except urllib.error.HTTPError as e:
    print(f"50 MB body: {e.code} {json.loads(e.read())['error_type']} in {time.time() - t0:.2f} s")
except OSError as e:
    print("50 MB body: the client saw", type(e).__name__, e)

body = json.dumps({"inputs": "word " * 200_000}).encode()
before = rss_mb()
t0 = time.time()
codes = set()
for _ in range(200):
    try:
        urllib.request.urlopen(urllib.request.Request(url, data=body, headers={"content-type": "application/json"}))
    except urllib.error.HTTPError as e:
        codes.add(e.code)
print(f"200 x 1 MB inputs: {sorted(codes)} in {time.time() - t0:.1f} s; server RSS {before} -> {rss_mb()} MB")
