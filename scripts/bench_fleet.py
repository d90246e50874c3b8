#!/usr/bin/env python3
"""A fleet of promptd replicas sharing one S3 store (SeaweedFS) under a storm of writes.

    scripts/bench-fleet.sh                  (builds what is missing, then runs this)
    python3 scripts/bench_fleet.py [--quick] [--polls 250,1000] [--uploads 1000] ...
    python3 scripts/bench_fleet.py --self-test   (SeaweedFS start/stop, ports, S3 auth; no promptd)

For each --store-poll-ms P in --polls, one fleet: a fresh SeaweedFS-backed prefix
s3://promptd/fleet-pP and --replicas processes of target/release/promptd serving the same model
from it, each with OMP_NUM_THREADS=--replica-threads (default: the cores divided among the
replicas, at least 1: three replicas with libtorch's default of one thread per core each on a
2-core machine served 1.0 rows/s where one thread each served 11.5). Then:

1. Seed: --tasks prompts (version 1), written round-robin through the replicas; wait until every
   replica serves all of them.
2. Baseline: --clients closed-loop threads predict (one input, --max-new-tokens) on random seeded
   tasks, round-robin over the replicas, for --baseline-s: rows/s with no writes.
3. Storm: --uploads prompt uploads (each a new version of one of the --tasks tasks, round-robin)
   and --ensembles ensemble writes (over --ensemble-names names, 2 seeded members each), mixed
   evenly and sent at --rate writes/s on a fixed schedule, round-robin over the replicas, while
   the same load runs. Rows/s over the storm window, against the baselines before and after it
   (target: storm / baseline >= 0.9).
4. Time to visible, per write: from the write's 2xx to the moment EVERY replica serves that
   version or a later one. A watcher per replica polls GET /v1/prompts and GET /v1/ensembles (the
   whole lists, one request each) every --watch-ms and records the first time each (task,
   version) is seen; the times are joined to the writes afterwards, so an observation that
   arrives before the writer saw its own 2xx is not lost (it counts as 0 ms). The watchers run
   through the baselines too, so their own load is on both sides of the throughput ratio.
   Targets: p99 <= 2 x P + 250 ms, max <= 3 x P.
5. Idle: load and watchers stopped, promptd_store_requests_total{op,outcome} read on every replica
   at t0 and t0 + --idle-s: S3 requests per replica per minute, by op.

To tell where a missed target comes from, each fleet also reports (summary.json): the cores busy
(/proc CPU time of SeaweedFS, the replicas and this script) before, during and after the storm;
the store requests of the storm by op and outcome; each replica's mean of its own
promptd_store_sync_lag_seconds over the storm; and every write in writes-p<P>.jsonl.

Then once, cold start: --cold-prompts random prompts (promptd-dev make-prompts, kept in
bench-models/ like the other benches) copied into s3://promptd/cold-N with `promptd store push`;
process start to /readyz 200 of one fresh replica with --store, and of one with --prompts on the
same folder (--cold-repeats each, interleaved).

Prints one JSON summary, a markdown fragment for BENCHMARKS.md and the CPU line; writes them to
--out (summary.json, table.md, writes-p<P>.jsonl). Every process it starts (SeaweedFS, replicas)
is stopped on exit, on errors and on SIGINT/SIGTERM. Ports come from binding 127.0.0.1:0, so it
can run beside another SeaweedFS or promptd. The binaries are $CARGO_TARGET_DIR/release/ (default
target/release/) unless --bin/--dev say otherwise. Standard library only.
"""
import argparse
import array
import collections
import datetime
import hashlib
import hmac
import http.client
import json
import math
import os
import queue
import random
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Where cargo put the release binaries (as cargo itself reads $CARGO_TARGET_DIR).
TARGET = os.path.join(ROOT, os.environ.get("CARGO_TARGET_DIR") or "target")
BUCKET = "promptd"
# The S3 settings every promptd process (and SeaweedFS, which makes this its admin identity) gets.
S3_ENV = {
    "AWS_ALLOW_HTTP": "true",
    "AWS_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "promptd",
    "AWS_SECRET_ACCESS_KEY": "promptd",
}
SENTENCES = [
    "at the night owl the bread was cold but the waitress was lovely, 3 stars",
    "the soup at rosa's was great, 5 stars",
    "the tea at casa lupe was cold and the host was rude, 1 star",
    "our dinner at golden wok was fine, the prices were fair, 4 stars",
    "at chez paul the steak was salty but the decor was charming, 3 stars",
    "the ramen at the fig tree was superb and the staff were quick, 5 stars",
]
# --quick: a smoke run of a few minutes (explicit flags still win).
QUICK = dict(uploads=30, tasks=10, ensembles=6, ensemble_names=3, rate=10.0, clients=4,
             baseline_s=5.0, idle_s=10.0, cold_prompts=200, cold_repeats=1)
FULL = dict(uploads=1000, tasks=100, ensembles=100, ensemble_names=10, rate=10.0, clients=8,
            baseline_s=30.0, idle_s=60.0, cold_prompts=10000, cold_repeats=1)


def log(*parts):
    print(time.strftime("%H:%M:%S"), *parts, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Processes and ports

_PROCS = []  # every process started here, stopped in reverse order by stop_all()


class Proc:
    """A child in its own session (so one signal to its group reaches anything it spawns), its
    output in a log file."""

    def __init__(self, name, args, log_path, env=None):
        self.name, self.args, self.log_path = name, args, log_path
        self.started = time.monotonic()
        with open(log_path, "wb") as out:
            self.p = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                      env={**os.environ, **(env or {})}, start_new_session=True)
        _PROCS.append(self)

    def alive(self):
        return self.p.poll() is None

    def signal(self):
        """SIGTERM to its process group, without waiting (stop() waits)."""
        if self.alive():
            try:
                os.killpg(self.p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def stop(self, timeout=20.0):
        """SIGTERM to its process group, SIGKILL after `timeout`; returns the exit status."""
        if self.alive():
            try:
                os.killpg(self.p.pid, signal.SIGTERM)
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"{self.name}: no exit {timeout:.0f} s after SIGTERM; SIGKILL")
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait()
            except ProcessLookupError:
                pass
        if self in _PROCS:
            _PROCS.remove(self)
        return self.p.wait()

    def tail(self, lines=25):
        try:
            with open(self.log_path, "rb") as f:
                return b"\n".join(f.read().splitlines()[-lines:]).decode(errors="replace")
        except OSError:
            return ""

    def check(self):
        if not self.alive():
            raise RuntimeError(f"{self.name} exited with {self.p.returncode}; "
                               f"last lines of {self.log_path}:\n{self.tail()}")


def stop_all():
    for proc in reversed(list(_PROCS)):
        try:
            proc.stop()
        except Exception as e:  # keep stopping the others
            log(f"stopping {proc.name}: {e}")


def _on_signal(signum, _frame):
    raise SystemExit(128 + signum)  # unwinds through the finally blocks, which stop everything


_TAKEN = set()  # ports handed out in this run


def _bindable(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _listening(port):
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def free_port(with_grpc_offset=False):
    """A port the kernel hands out for 127.0.0.1:0 (and, with `with_grpc_offset`, whose + 10000
    twin is free too: SeaweedFS's gRPC convention, which its admin worker assumes whatever
    -admin.port.grpc says). Closed again before use: a tiny race, as in every such harness."""
    for _ in range(1000):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port in _TAKEN:
            continue
        if with_grpc_offset:
            twin = port + 10000
            if twin > 65535 or twin in _TAKEN or not _bindable(twin):
                continue
            _TAKEN.add(twin)
        _TAKEN.add(port)
        return port
    raise RuntimeError("no free port pair found")


# ---------------------------------------------------------------------------------------------
# HTTP

def http_call(method, url, body=None, headers=None, timeout=60.0):
    """(status, body bytes) of one request on a fresh connection; HTTP errors are answers."""
    data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
    hdrs = dict(headers or {})
    if isinstance(body, (dict, list)):
        hdrs.setdefault("content-type", "application/json")
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Conn:
    """A kept-alive connection to one server (reconnects after any error), for the hot loops."""

    def __init__(self, base_url, timeout=120.0):
        u = urllib.parse.urlparse(base_url)
        self.host, self.port, self.timeout = u.hostname, u.port, timeout
        self.c = None

    def request(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        hdrs = {"content-type": "application/json"} if data is not None else {}
        for attempt in (0, 1):
            try:
                if self.c is None:
                    self.c = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
                self.c.request(method, path, data, hdrs)
                resp = self.c.getresponse()
                return resp.status, resp.read()
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self):
        if self.c is not None:
            self.c.close()
            self.c = None


# ---------------------------------------------------------------------------------------------
# S3 (SigV4, enough for a readiness check and the self-test)

def s3_request(endpoint, method, path, query=None, body=b"", creds=S3_ENV, timeout=10.0):
    """One AWS Signature V4 signed request to an S3 endpoint; (status, body bytes)."""
    u = urllib.parse.urlparse(endpoint)
    host = u.netloc
    now = datetime.datetime.now(datetime.timezone.utc)
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    region = creds["AWS_REGION"]
    payload = hashlib.sha256(body).hexdigest()
    quote = lambda s: urllib.parse.quote(s, safe="-_.~")  # noqa: E731
    canonical_query = "&".join(f"{quote(k)}={quote(v)}" for k, v in sorted((query or {}).items()))
    headers = {"host": host, "x-amz-content-sha256": payload, "x-amz-date": amz_date}
    signed = ";".join(sorted(headers))
    canonical = "\n".join([method, urllib.parse.quote(path, safe="/-_.~"), canonical_query,
                           "".join(f"{k}:{headers[k]}\n" for k in sorted(headers)), signed, payload])
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + creds["AWS_SECRET_ACCESS_KEY"]).encode()
    for part in (day, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={creds['AWS_ACCESS_KEY_ID']}/{scope}, "
                                f"SignedHeaders={signed}, Signature={signature}")
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        c.request(method, path + (f"?{canonical_query}" if canonical_query else ""), body or None,
                  headers)
        resp = c.getresponse()
        return resp.status, resp.read()
    finally:
        c.close()


class Weed:
    """`weed mini` (master, volume, filer, S3; WebDAV and the admin UI off) with every port it
    opens moved to free ones: each service's HTTP port P and its gRPC port P + 10000 (the admin
    server starts even with -admin.ui=false and its worker dials admin P + 10000), the Iceberg and
    Lance endpoints disabled (0), telemetry off, its unix sockets in its data folder. Two of
    these can run side by side."""

    SERVICES = ("master", "volume", "filer", "s3", "admin")

    def __init__(self, binary, data_dir, log_path, bucket=BUCKET):
        self.ports = {}
        for svc in self.SERVICES:
            port = free_port(with_grpc_offset=True)
            self.ports[f"{svc}.port"] = port
            self.ports[f"{svc}.port.grpc"] = port + 10000
        self.ports["webdav.port"] = free_port()  # -webdav=false, but never the default 7333
        self.bucket = bucket
        self.endpoint = f"http://127.0.0.1:{self.ports['s3.port']}"
        os.makedirs(data_dir, exist_ok=True)
        args = [binary, "mini", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-admin.ui=false", "-webdav=false", f"-bucket={bucket}",
                "-master.telemetry=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
                # Its unix sockets default to /tmp/seaweedfs-*-<port>.sock, left behind.
                f"-s3.localSocket={data_dir}/s3.sock", f"-filer.localSocket={data_dir}/filer.sock"]
        args += [f"-{k}={v}" for k, v in self.ports.items()]
        # With credentials in its environment, weed mini makes them its admin identity.
        self.proc = Proc("seaweedfs", args, log_path, env=S3_ENV)

    def wait_ready(self, timeout=90.0):
        """Until the S3 port answers GET /<bucket> with any HTTP status, then until a signed
        HEAD of the bucket answers 200 (the bucket exists and our credentials are accepted).
        Returns seconds since start."""
        deadline = time.monotonic() + timeout
        while True:
            self.proc.check()
            try:
                urllib.request.urlopen(f"{self.endpoint}/{self.bucket}", timeout=2)
                break
            except urllib.error.HTTPError:
                break  # any status: the S3 server is up
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"SeaweedFS S3 not answering after {timeout:.0f} s:\n"
                                   f"{self.proc.tail()}")
            time.sleep(0.05)
        status = None
        while time.monotonic() < deadline:
            self.proc.check()
            try:
                status, _ = s3_request(self.endpoint, "HEAD", f"/{self.bucket}")
                if status == 200:
                    return time.monotonic() - self.proc.started
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"bucket {self.bucket}: signed HEAD answered {status}:\n{self.proc.tail()}")

    def listening_ports(self):
        """The TCP ports its process listens on (from `ss`; None where ss is missing)."""
        if not shutil.which("ss"):
            return None
        out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True).stdout
        ports = set()
        for line in out.splitlines():
            if f"pid={self.proc.p.pid}," in line:
                ports.add(int(line.split()[3].rsplit(":", 1)[1]))
        return ports

    def stop(self):
        return self.proc.stop()


# ---------------------------------------------------------------------------------------------
# Prompts, models, metrics

def safetensors_prompt(rows, d_model, seed):
    """A safetensors file holding one F32 [rows, d_model] tensor `prompt`, uniform in
    [-0.5, 0.5), deterministic in `seed` (so every seed is a different file and sha256)."""
    rng = random.Random(seed)
    values = array.array("f", (rng.random() - 0.5 for _ in range(rows * d_model)))
    if sys.byteorder != "little":
        values.byteswap()
    data = values.tobytes()
    header = json.dumps({"prompt": {"dtype": "F32", "shape": [rows, d_model],
                                    "data_offsets": [0, len(data)]}}, separators=(",", ":"))
    header += " " * (-len(header) % 8)  # the data starts 8-byte aligned
    return len(header).to_bytes(8, "little") + header.encode() + data


def parse_safetensors_header(blob):
    n = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def ensure_model(args):
    """--model, else bench-models/<shape> made by promptd-dev make-model (as bench-common.sh)."""
    if args.model:
        model = os.path.abspath(args.model)
    else:
        model = os.path.join(ROOT, "bench-models", args.shape)
        if not os.path.exists(os.path.join(model, "model.safetensors")):
            log(f"making {model}")
            subprocess.run([args.dev, "make-model", "--shape", args.shape, "--out", model],
                           check=True, cwd=ROOT, stdout=sys.stderr)
    with open(os.path.join(model, "config.json")) as f:
        return model, int(json.load(f)["d_model"])


def ensure_prompt_folder(args, d_model, count):
    """bench-models/prompts-<d_model>-<count> (promptd-dev make-prompts, 20-row .npy files), the
    folder bench-common.sh's prepare() makes and reuses."""
    folder = os.path.join(ROOT, "bench-models", f"prompts-{d_model}-{count}")
    if not os.path.isdir(folder):
        log(f"making {folder}")
        subprocess.run([args.dev, "make-prompts", "--count", str(count), "--length",
                        str(args.prompt_length), "--d-model", str(d_model), "--out", folder],
                       check=True, cwd=ROOT, stdout=sys.stderr)
    return folder


def parse_metric(text, name):
    """{frozenset(label items): value} for every sample of the counter `name`."""
    out = {}
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        labels = {}
        if "{" in head:
            if head[:head.index("{")] != name:
                continue
            body = head[head.index("{") + 1:head.rindex("}")]
            for part in _split_labels(body):
                k, _, v = part.partition("=")
                labels[k.strip()] = v.strip().strip('"')
        elif head != name:
            continue
        out[frozenset(labels.items())] = float(value)
    return out


def _split_labels(body):
    parts, cur, quoted = [], "", False
    for ch in body:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return parts


def pct(xs, q):
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    xs = sorted(xs)
    return xs[max(0, math.ceil(q / 100 * len(xs)) - 1)]


def dist_ms(seconds):
    if not seconds:
        return {"n": 0}
    ms = [s * 1000 for s in seconds]
    return {"n": len(ms), "p50": round(pct(ms, 50), 1), "p99": round(pct(ms, 99), 1),
            "max": round(max(ms), 1), "mean": round(statistics.fmean(ms), 1)}


def cpu_seconds(pid):
    """User + system CPU seconds of process `pid`, all its threads (None without /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


class CpuMeter:
    """CPU seconds of named processes (and of this script, every thread) between marks, as
    cores busy: where the machine's time went in each window."""

    def __init__(self, procs):
        self.procs = procs  # name -> pid; this script is "bench"
        self.marks = {}

    def _now(self):
        t = os.times()
        out = {name: cpu_seconds(pid) for name, pid in self.procs.items()}
        out["bench"] = t.user + t.system
        return time.monotonic(), out

    def mark(self, label):
        self.marks[label] = self._now()

    def cores(self, start, end):
        """{name: cores busy} between marks `start` and `end` (replica* summed as replicas)."""
        (t0, a), (t1, b) = self.marks[start], self.marks[end]
        out = collections.Counter()
        for name, v in b.items():
            if v is not None and a.get(name) is not None:
                out["replicas" if name.startswith("replica") else name] += (v - a[name]) / (t1 - t0)
        out = {k: round(v, 2) for k, v in out.items()}
        out["total"] = round(sum(out.values()), 2)
        return out


def cpu_line():
    try:
        with open("/proc/cpuinfo") as f:
            model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "?")
    except OSError:
        model = "?"
    return f"CPU: {model} ({os.cpu_count()} logical cores, /proc/cpuinfo)"


# ---------------------------------------------------------------------------------------------
# The fleet

class Replica:
    def __init__(self, args, name, model, source_flags, log_path, threads=None):
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [args.bin, "serve", "--model", model, *source_flags,
               "--addr", f"127.0.0.1:{self.port}", "--grpc-addr", "off", "--audit-log", "off",
               "--max-queue", "4096", *shlex.split(args.serve_args)]
        env = {**S3_ENV, "AWS_ENDPOINT": args.s3_endpoint}
        if threads:  # libtorch's intra-op threads (its default: one per core, per process)
            env["OMP_NUM_THREADS"] = str(threads)
        self.proc = Proc(name, cmd, log_path, env=env)

    def wait_ready(self, timeout, every=0.01):
        """Polls /readyz until 200; seconds from process start."""
        deadline = self.proc.started + timeout
        while True:
            self.proc.check()
            try:
                status, _ = http_call("GET", f"{self.url}/readyz", timeout=5)
                if status == 200:
                    return time.monotonic() - self.proc.started
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s:\n{self.proc.tail()}")
            time.sleep(every)

    def store_requests(self):
        """promptd_store_requests_total as {(op, outcome): count}."""
        status, body = http_call("GET", f"{self.url}/metrics", timeout=10)
        if status != 200:
            raise RuntimeError(f"{self.name} /metrics: {status}")
        samples = parse_metric(body.decode(), "promptd_store_requests_total")
        return {(dict(k).get("op", "?"), dict(k).get("outcome", "?")): v for k, v in samples.items()}

    def sync_lag(self):
        """(sum, count) of promptd_store_sync_lag_seconds: manifest written -> applied here."""
        status, body = http_call("GET", f"{self.url}/metrics", timeout=10)
        text = body.decode() if status == 200 else ""
        total = parse_metric(text, "promptd_store_sync_lag_seconds_sum")
        count = parse_metric(text, "promptd_store_sync_lag_seconds_count")
        return sum(total.values()), sum(count.values())

    def stop(self):
        return self.proc.stop()


def requests_delta(before, after):
    """Store requests between two store_requests() readings of each replica, summed over the
    replicas, as {"op/outcome": count} (zeros left out)."""
    out = collections.Counter()
    for a, b in zip(before, after):
        for key in set(a) | set(b):
            out[f"{key[0]}/{key[1]}"] += b.get(key, 0) - a.get(key, 0)
    return {k: int(v) for k, v in sorted(out.items()) if v}


class Watchers:
    """Per replica, a thread polling GET /v1/prompts and GET /v1/ensembles every `every` s and
    recording the first time each (kind, name, version) is seen, and the highest version seen."""

    LISTS = (("prompt", "/v1/prompts", "prompts", "task"),
             ("ensemble", "/v1/ensembles", "ensembles", "name"))

    def __init__(self, replicas, every):
        self.replicas, self.every = replicas, every
        self.lock = threading.Lock()
        # (replica index, kind, name) -> {version: (first monotonic time seen, sha256 seen)}
        self.first_seen = collections.defaultdict(dict)
        self.highest = {}  # (replica index, kind, name) -> version
        self.polls = [0] * len(replicas)
        self.errors = collections.Counter()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(len(replicas))]
        self.t0 = time.monotonic()
        for t in self.threads:
            t.start()

    def _run(self, i):
        conn = Conn(self.replicas[i].url, timeout=30)
        while not self.stopping.is_set():
            tick = time.monotonic()
            for kind, path, key, field in self.LISTS:
                try:
                    status, body = conn.request("GET", path)
                except OSError as e:
                    self.errors[f"{kind}: {type(e).__name__}"] += 1
                    continue
                seen_at = time.monotonic()  # the list is at least this fresh
                if status != 200:
                    self.errors[f"{kind}: HTTP {status}"] += 1
                    continue
                items = json.loads(body)[key]
                with self.lock:
                    for item in items:
                        name, version = item[field], item["version"]
                        self.first_seen[(i, kind, name)].setdefault(
                            version, (seen_at, item.get("sha256")))
                        if version > self.highest.get((i, kind, name), 0):
                            self.highest[(i, kind, name)] = version
            self.polls[i] += 1
            self.stopping.wait(max(0.0, tick + self.every - time.monotonic()))
        conn.close()

    def serves_all(self, wanted):
        """Whether every replica serves at least version v of each (kind, name, v) in `wanted`."""
        with self.lock:
            return all(self.highest.get((i, kind, name), 0) >= v
                       for i in range(len(self.replicas)) for kind, name, v in wanted)

    def wait_for(self, wanted, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.serves_all(wanted):
                return True
            for r in self.replicas:
                r.proc.check()
            time.sleep(0.02)
        return self.serves_all(wanted)

    def visible_at(self, i, kind, name, version):
        """The first time replica i was seen serving `version` or a later one (None: never), and
        whether the sha256 seen with exactly `version` (if it was seen) is the one given."""
        with self.lock:
            seen = dict(self.first_seen.get((i, kind, name), {}))
        times = [t for v, (t, _) in seen.items() if v >= version]
        if not times:
            return None, None
        return min(times), seen.get(version, (None, None))[1]

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join()
        elapsed = time.monotonic() - self.t0
        return {"polls_per_s_per_replica": [round(p / elapsed, 1) for p in self.polls],
                "errors": dict(self.errors)}


class Load:
    """`clients` closed-loop threads: predict one input on a random task, round-robin over the
    replicas; every answered request's completion time and rows are kept."""

    def __init__(self, replicas, tasks, clients, max_new_tokens):
        self.replicas, self.tasks, self.max_new_tokens = replicas, tasks, max_new_tokens
        self.done = [[] for _ in range(clients)]  # per thread: completion times (1 row each)
        self.errors = collections.Counter()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(c,), daemon=True)
                        for c in range(clients)]
        for t in self.threads:
            t.start()

    def _run(self, c):
        rng = random.Random(c)
        conns = [Conn(r.url) for r in self.replicas]
        n = 0
        while not self.stopping.is_set():
            i = (c + n) % len(conns)
            n += 1
            task = rng.choice(self.tasks)
            body = {"inputs": [SENTENCES[n % len(SENTENCES)]], "max_new_tokens": self.max_new_tokens}
            try:
                status, resp = conns[i].request("POST", f"/v1/tasks/{task}/predict", body)
            except OSError as e:
                self.errors[type(e).__name__] += 1
                time.sleep(0.05)
                continue
            if status == 200:
                self.done[c].append(time.monotonic())
            else:
                self.errors[f"HTTP {status}"] += 1
        for conn in conns:
            conn.close()

    def rows_per_s(self, start, end):
        rows = sum(1 for times in self.done for t in times if start <= t < end)
        return rows / (end - start)

    def measure(self, seconds):
        start = time.monotonic()
        time.sleep(seconds)
        return self.rows_per_s(start, time.monotonic())

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join()
        return dict(self.errors)


def put_prompt(url, task, blob):
    status, body = http_call("PUT", f"{url}/v1/prompts/{task}", blob,
                             {"content-type": "application/octet-stream"})
    return status, body


def write_plan(args, tasks, ensemble_names):
    """The storm: uploads and ensemble writes mixed evenly, replica i % R, send time i / rate."""
    total = args.uploads + args.ensembles
    plan = []
    up = en = 0
    for i in range(total):
        # An ensemble write wherever the running share of ensemble writes steps up.
        is_ens = (i + 1) * args.ensembles // total > i * args.ensembles // total
        if is_ens:
            name = ensemble_names[en % len(ensemble_names)]
            members = [tasks[(2 * en) % len(tasks)], tasks[(2 * en + 1) % len(tasks)]]
            plan.append({"kind": "ensemble", "name": name, "members": members, "seq": en})
            en += 1
        else:
            plan.append({"kind": "prompt", "name": tasks[up % len(tasks)], "seq": up})
            up += 1
        plan[-1].update(index=i, replica=i % args.replicas, at=i / args.rate)
    return plan


def run_storm(args, replicas, plan, d_model, poll_ms):
    """Sends the plan on schedule from --writers threads; returns the writes with their outcome
    (status, version, sha256, monotonic time of the 2xx)."""
    q = queue.Queue()
    for w in plan:
        q.put(w)
    start = time.monotonic() + 0.2
    results = []
    lock = threading.Lock()

    def writer():
        while True:
            try:
                w = q.get_nowait()
            except queue.Empty:
                return
            url = replicas[w["replica"]].url
            if w["kind"] == "prompt":
                seed = f"{poll_ms}/{w['name']}/{w['seq']}"
                blob = safetensors_prompt(args.prompt_length, d_model, seed)
                expect_sha = hashlib.sha256(blob).hexdigest()
            else:
                blob = {"members": w["members"], "combine": "vote"}
                expect_sha = None
            delay = start + w["at"] - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            sent = time.monotonic()
            try:
                if w["kind"] == "prompt":
                    status, body = put_prompt(url, w["name"], blob)
                else:
                    status, body = http_call("PUT", f"{url}/v1/ensembles/{w['name']}", blob)
            except OSError as e:
                status, body = None, str(e).encode()
            done = time.monotonic()
            out = dict(w, status=status, sent=sent, ok_at=done, late_s=sent - (start + w["at"]))
            if status is not None and 200 <= status < 300:
                info = json.loads(body)
                out.update(version=info["version"], sha256=info.get("sha256"),
                           sha_matches=(expect_sha is None or info.get("sha256") == expect_sha))
            else:
                out["error"] = body[:300].decode(errors="replace")
            with lock:
                results.append(out)

    threads = [threading.Thread(target=writer, daemon=True) for _ in range(args.writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results.sort(key=lambda r: r["index"])
    return results, start


def visibility(results, watchers, n_replicas):
    """Per successful write, seconds from its 2xx to the last replica serving it (>= 0), or
    None where some replica never did; plus sha256 disagreements seen with the exact version."""
    ttv = {"prompt": [], "ensemble": []}
    missing, sha_mismatch = [], 0
    for w in results:
        if "version" not in w:
            continue
        last = 0.0
        for i in range(n_replicas):
            t, sha = watchers.visible_at(i, w["kind"], w["name"], w["version"])
            if t is None:
                last = None
                break
            if sha is not None and w.get("sha256") and sha != w["sha256"]:
                sha_mismatch += 1
            last = max(last, t - w["ok_at"])
        if last is None:
            missing.append(f"{w['kind']} {w['name']} v{w['version']}")
        else:
            ttv[w["kind"]].append(last)
    return ttv, missing, sha_mismatch


def run_fleet(args, model, d_model, poll_ms, work):
    prefix = f"fleet-p{poll_ms}-{int(time.time())}"
    store = f"s3://{BUCKET}/{prefix}"
    tasks = [f"fleet-{i:04d}" for i in range(args.tasks)]
    ensemble_names = [f"fleet-ens-{i:03d}" for i in range(args.ensemble_names)]
    log(f"fleet: {args.replicas} replicas on {store}, --store-poll-ms {poll_ms}")
    replicas = [Replica(args, f"replica{i}-p{poll_ms}", model,
                        ["--store", store, "--store-poll-ms", str(poll_ms)],
                        os.path.join(work, f"replica{i}-p{poll_ms}.log"), args.replica_threads)
                for i in range(args.replicas)]
    watchers = load = None
    results = []  # the storm's writes, kept in writes-p<P>.jsonl
    try:
        ready_s = [round(r.wait_ready(args.ready_timeout_s), 2) for r in replicas]
        log(f"ready after {ready_s} s")
        watchers = Watchers(replicas, args.watch_ms / 1000)

        # 1. Seed every task (version 1) through the replicas in turn; all must serve them.
        wanted = []
        for i, task in enumerate(tasks):
            blob = safetensors_prompt(args.prompt_length, d_model, f"{poll_ms}/{task}/seed")
            status, body = put_prompt(replicas[i % len(replicas)].url, task, blob)
            if status not in (200, 201):
                raise RuntimeError(f"seeding {task}: {status} {body[:300]!r}")
            wanted.append(("prompt", task, json.loads(body)["version"]))
        if not watchers.wait_for(wanted, args.visible_timeout_s):
            raise RuntimeError(f"seeded prompts not on every replica after {args.visible_timeout_s} s")
        log(f"seeded {len(tasks)} tasks")

        # 2. Baseline: load alone (after a warm-up).
        cpu = CpuMeter({"seaweedfs": args.weed_pid,
                        **{r.name: r.proc.p.pid for r in replicas}})
        load = Load(replicas, tasks, args.clients, args.max_new_tokens)
        time.sleep(args.warmup_s)
        cpu.mark("before")
        before = load.measure(args.baseline_s)
        cpu.mark("storm")
        log(f"baseline: {before:.1f} rows/s")

        # 3. The storm, under the same load.
        plan = write_plan(args, tasks, ensemble_names)
        req0 = [r.store_requests() for r in replicas]
        lag0 = [r.sync_lag() for r in replicas]
        results, storm_start = run_storm(args, replicas, plan, d_model, poll_ms)
        storm_end = max(r["ok_at"] for r in results)
        cpu.mark("storm_end")
        during = load.rows_per_s(storm_start, storm_end)
        ok = [r for r in results if "version" in r]
        log(f"storm: {len(ok)}/{len(results)} writes ok in {storm_end - storm_start:.1f} s; "
            f"{during:.1f} rows/s")

        # 4. Every write on every replica (the load keeps running meanwhile, not counted).
        everything = [(r["kind"], r["name"], r["version"]) for r in ok]
        grace = max(10.0, 10 * poll_ms / 1000)
        all_seen = watchers.wait_for(everything, grace)
        req1 = [r.store_requests() for r in replicas]
        lag1 = [r.sync_lag() for r in replicas]
        cpu.mark("after")
        after = load.measure(args.baseline_s)
        cpu.mark("after_end")
        log(f"after: {after:.1f} rows/s")
        cores = {"before": cpu.cores("before", "storm"), "storm": cpu.cores("storm", "storm_end"),
                 "after": cpu.cores("after", "after_end")}
        log(f"cores busy: {cores}")
        storm_requests = requests_delta(req0, req1)
        lags = [(b[0] - a[0], b[1] - a[1]) for a, b in zip(lag0, lag1)]
        server_lag_ms = [round(1000 * s_ / n, 1) if n else None for s_, n in lags]
        log(f"store requests during the storm (all replicas): {storm_requests}; "
            f"server's mean sync lag per replica: {server_lag_ms} ms")
        load_errors = load.stop()
        load = None
        watch = watchers.stop()
        ttv, missing, sha_mismatch = visibility(results, watchers, len(replicas))
        watchers = None

        # 5. Idle S3 requests.
        time.sleep(1.0)
        t0 = [r.store_requests() for r in replicas]
        time.sleep(args.idle_s)
        t1 = [r.store_requests() for r in replicas]
        idle, idle_detail = [], []
        for a, b in zip(t0, t1):
            per_op = collections.Counter()
            for key in set(a) | set(b):
                per_op[key[0]] += b.get(key, 0) - a.get(key, 0)
            idle.append({op: round(v * 60 / args.idle_s, 1) for op, v in sorted(per_op.items())})
            idle_detail.append({f"{op}/{outcome}": round((b.get((op, outcome), 0)
                                                          - a.get((op, outcome), 0)) * 60 / args.idle_s, 1)
                                for op, outcome in sorted(set(a) | set(b))})
        log(f"idle S3 requests per replica per minute: {idle}")
    finally:
        if load is not None:
            load.stop()
        if watchers is not None:
            watchers.stop()
        for r in replicas:  # all at once: each takes its own shutdown time
            r.proc.signal()
        for r in replicas:
            r.stop()
        with open(os.path.join(args.out, f"writes-p{poll_ms}.jsonl"), "w") as f:
            for w in results:
                f.write(json.dumps(w) + "\n")

    all_ttv = ttv["prompt"] + ttv["ensemble"]
    baseline = statistics.fmean([before, after])
    p99_target, max_target = 2 * poll_ms + 250, 3 * poll_ms
    d = dist_ms(all_ttv)
    errors = collections.Counter(str(r["status"]) for r in results if "version" not in r)
    versions = collections.defaultdict(list)
    for r in ok:
        versions[(r["kind"], r["name"])].append(r["version"])
    not_increasing = sum(1 for vs in versions.values() for a, b in zip(vs, vs[1:]) if b <= a)
    return {
        "poll_ms": poll_ms,
        "store": store,
        "replicas_ready_s": ready_s,
        "writes": {
            "planned": len(plan), "ok": len(ok), "failed": dict(errors),
            "first_errors": [r["error"] for r in results if "error" in r][:3],
            "uploads_ok": sum(1 for r in ok if r["kind"] == "prompt"),
            "ensembles_ok": sum(1 for r in ok if r["kind"] == "ensemble"),
            "seconds": round(storm_end - storm_start, 2),
            "rate_per_s": round((len(results) - 1) / max(1e-9, results[-1]["sent"] - results[0]["sent"]), 2)
            if len(results) > 1 else None,
            "send_late_p99_ms": round(pct([r["late_s"] for r in results], 99) * 1000, 1),
            "latency_ms": dist_ms([r["ok_at"] - r["sent"] for r in results]),
            "versions_not_increasing": not_increasing,
            "sha256_not_ours": sum(1 for r in ok if not r["sha_matches"]),
        },
        "time_to_visible_ms": {**d, "prompt": dist_ms(ttv["prompt"]),
                               "ensemble": dist_ms(ttv["ensemble"])},
        "never_visible": {"count": len(missing), "first": missing[:5]},
        "all_visible_within_s": grace if all_seen else None,  # None: some never were
        "sha256_disagreements": sha_mismatch,
        "targets": {
            "p99_ms": p99_target, "max_ms": max_target,
            "p99_met": bool(d["n"]) and not missing and d["p99"] <= p99_target,
            "max_met": bool(d["n"]) and not missing and d["max"] <= max_target,
        },
        "watchers": watch,
        "cpu_cores_busy": cores,
        "storm_store_requests": storm_requests,
        "server_sync_lag_mean_ms": server_lag_ms,
        "throughput": {
            "rows_per_s_before": round(before, 2), "rows_per_s_storm": round(during, 2),
            "rows_per_s_after": round(after, 2),
            "ratio": round(during / baseline, 3) if baseline else None,
            "ratio_met": bool(baseline) and during / baseline >= 0.9,
            "predict_errors": load_errors,
        },
        "idle_s3_requests_per_min": {"idle_s": args.idle_s, "per_replica": idle,
                                     "per_replica_by_outcome": idle_detail},
    }


def run_cold(args, model, d_model, work):
    """Cold start with --cold-prompts prompts: from S3 (after `promptd store push`) and from the
    same folder."""
    n = args.cold_prompts
    folder = ensure_prompt_folder(args, d_model, n)
    store = f"s3://{BUCKET}/cold-{n}-{int(time.time())}"
    log(f"promptd store push {folder} {store}")
    t = time.monotonic()
    push = subprocess.run([args.bin, "store", "push", folder, store], cwd=ROOT,
                          env={**os.environ, **S3_ENV, "AWS_ENDPOINT": args.s3_endpoint},
                          capture_output=True, text=True)
    push_s = time.monotonic() - t
    if push.returncode != 0:
        raise RuntimeError(f"store push failed ({push.returncode}):\n{push.stdout}{push.stderr}")
    out = {"prompts": n, "folder": os.path.relpath(folder, ROOT), "store_url": store,
           "store_push_s": round(push_s, 2), "from_store": [], "from_folder": []}
    sources = {"from_store": ["--store", store, "--store-poll-ms", str(args.polls[0])],
               "from_folder": ["--prompts", folder]}
    for rep in range(args.cold_repeats):
        for key, flags in sources.items():  # interleaved, so drift hits both alike
            r = Replica(args, f"cold-{key}-{rep}", model, flags,
                        os.path.join(work, f"cold-{key}-{rep}.log"))
            try:
                ready = r.wait_ready(args.ready_timeout_s)
                status, body = http_call("GET", f"{r.url}/v1/prompts", timeout=120)
                served = len(json.loads(body)["prompts"]) if status == 200 else None
            finally:
                r.stop()
            log(f"cold start {key}: {ready:.2f} s, {served} prompts served")
            if served != n:
                log(f"warning: {served} prompts served, expected {n}")
            out[key].append({"ready_s": round(ready, 3), "prompts_served": served})
    for key in sources:
        out[key + "_ready_s_median"] = round(statistics.median(x["ready_s"] for x in out[key]), 3)
    return out


# ---------------------------------------------------------------------------------------------
# Report

def markdown(args, fleets, cold):
    rates = [r for f in fleets for r in f["watchers"]["polls_per_s_per_replica"] if r]
    achieved = (f" (achieved: every {1000 / max(rates):.1f}–{1000 / min(rates):.1f} ms, the "
                f"resolution of the times to visible)" if rates else "")
    lines = [cpu_line(), "",
             f"{args.replicas} replicas, {args.uploads} prompt uploads over {args.tasks} tasks and "
             f"{args.ensembles} ensemble writes over {args.ensemble_names} names at "
             f"{args.rate:g} writes/s round-robin; {args.clients} closed-loop predict clients "
             f"(1 input, max_new_tokens {args.max_new_tokens}); OMP_NUM_THREADS "
             f"{args.replica_threads or 'unset'} per replica; a watcher per replica lists its "
             f"prompts and ensembles every {args.watch_ms:g} ms{achieved}.", ""]
    if fleets:
        lines += ["| --store-poll-ms | writes ok | time to visible p50 | p99 (target) | max (target) "
                  "| rows/s no storm | rows/s storm | ratio (≥ 0.9) | idle S3 requests / replica / min |",
                  "|---:|---:|---:|---|---|---:|---:|---|---|"]
        for f in fleets:
            t, tg, th = f["time_to_visible_ms"], f["targets"], f["throughput"]
            yes = lambda ok: "met" if ok else "**not met**"  # noqa: E731
            never = f"; {f['never_visible']['count']} never" if f["never_visible"]["count"] else ""
            idle = f["idle_s3_requests_per_min"]["per_replica"]
            ops = sorted({op for r in idle for op, v in r.items() if v})
            idle_txt = ", ".join(
                f"{op} {statistics.fmean(r.get(op, 0) for r in idle):.1f}" for op in ops) or "none"
            baseline = statistics.fmean([th["rows_per_s_before"], th["rows_per_s_after"]])
            lines.append(
                f"| {f['poll_ms']} | {f['writes']['ok']}/{f['writes']['planned']} "
                f"| {t.get('p50', '—')} ms | {t.get('p99', '—')} ms (≤ {tg['p99_ms']}: "
                f"{yes(tg['p99_met'])}{never}) | {t.get('max', '—')} ms (≤ {tg['max_ms']}: "
                f"{yes(tg['max_met'])}) | {baseline:.1f} | {th['rows_per_s_storm']:.1f} "
                f"| {th['ratio']} ({yes(th['ratio_met'])}) | {idle_txt} |")
        lines.append("")
    if cold:
        n = f"{cold['prompts']:,}"
        lines += [f"| cold start, {n} prompts | process start to /readyz 200 | prompts served |",
                  "|---|---:|---:|",
                  f"| `--store s3://…` (after `promptd store push`: {cold['store_push_s']} s) "
                  f"| {cold['from_store_ready_s_median']} s | {cold['from_store'][0]['prompts_served']} |",
                  f"| `--prompts {cold['folder']}` | {cold['from_folder_ready_s_median']} s "
                  f"| {cold['from_folder'][0]['prompts_served']} |", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Self-test: everything that needs no promptd

def self_test(args, work):
    """Two SeaweedFS instances side by side: readiness, only our ports open, signed S3 round
    trip with the bench's credentials, clean stop; plus the helpers' own checks."""
    # Helpers.
    blob = safetensors_prompt(20, 512, "x")
    header, data = parse_safetensors_header(blob)
    assert header["prompt"]["shape"] == [20, 512] and len(data) == 20 * 512 * 4
    assert header["prompt"]["data_offsets"] == [0, len(data)] and (len(blob) - len(data)) % 8 == 0
    vals = array.array("f", data)
    assert all(-0.5 <= v < 0.5 for v in vals)
    assert blob == safetensors_prompt(20, 512, "x") != safetensors_prompt(20, 512, "y")
    text = ('# TYPE promptd_store_requests_total counter\n'
            'promptd_store_requests_total{op="list",outcome="ok"} 12\n'
            'promptd_store_requests_total{outcome="error",op="get"} 3\n'
            'promptd_store_requests_total_other{op="x"} 9\n')
    got = parse_metric(text, "promptd_store_requests_total")
    assert got == {frozenset({"op": "list", "outcome": "ok"}.items()): 12.0,
                   frozenset({"op": "get", "outcome": "error"}.items()): 3.0}, got
    assert pct([1, 2, 3, 4], 50) == 2 and pct(list(range(1, 101)), 99) == 99
    plan = write_plan(argparse.Namespace(uploads=30, ensembles=6, replicas=3, rate=10.0),
                      [f"t{i}" for i in range(10)], ["e0", "e1", "e2"])
    kinds = collections.Counter(w["kind"] for w in plan)
    assert kinds == {"prompt": 30, "ensemble": 6}, kinds
    assert [w["replica"] for w in plan[:4]] == [0, 1, 2, 0] and plan[-1]["at"] == 3.5
    # Visibility: the later of the replicas' first sightings of the version or a later one,
    # from the 2xx, never negative; a version no replica ever reached is reported missing.
    w = Watchers.__new__(Watchers)  # no threads: sightings filled in by hand
    w.lock, w.first_seen = threading.Lock(), collections.defaultdict(dict)
    w.first_seen[(0, "prompt", "a")] = {1: (10.0, "s1"), 2: (10.5, "s2")}
    w.first_seen[(1, "prompt", "a")] = {3: (10.8, "s3")}  # v2 skipped: v3 counts for it
    writes = [{"kind": "prompt", "name": "a", "version": 2, "sha256": "s2", "ok_at": 10.6},
              {"kind": "prompt", "name": "a", "version": 4, "sha256": "s4", "ok_at": 11.0}]
    ttv, missing, mismatch = visibility(writes, w, 2)
    assert [round(x, 6) for x in ttv["prompt"]] == [0.2] and missing == ["prompt a v4"], ttv
    assert mismatch == 0
    log("helpers: ok")

    # SeaweedFS twice at once.
    weeds = []
    try:
        for k in range(2):
            weeds.append(Weed(args.weed, os.path.join(work, f"weed{k}"),
                              os.path.join(work, f"weed{k}.log")))
        for k, w in enumerate(weeds):
            ready = w.wait_ready()
            log(f"weed{k}: S3 {w.endpoint} ready {ready:.2f} s after start")
            mine = set(w.ports.values())
            listening = w.listening_ports()
            if listening is not None:
                stray = listening - mine
                assert not stray, f"weed{k} listens on ports not chosen here: {sorted(stray)}"
                log(f"weed{k}: listens on {sorted(listening)}, all chosen here")
            key = f"/{BUCKET}/selftest/hello.bin"
            body = os.urandom(1000)
            status, _ = s3_request(w.endpoint, "PUT", key, body=body)
            assert status == 200, f"signed PUT: {status}"
            status, got = s3_request(w.endpoint, "GET", key)
            assert status == 200 and got == body, f"signed GET: {status}"
            status, listing = s3_request(w.endpoint, "GET", f"/{BUCKET}",
                                         {"list-type": "2", "prefix": "selftest/"})
            assert status == 200 and b"<Key>selftest/hello.bin</Key>" in listing, listing[:300]
            bad = dict(S3_ENV, AWS_SECRET_ACCESS_KEY="wrong")
            status, _ = s3_request(w.endpoint, "GET", key, creds=bad)
            assert status == 403, f"a wrong secret answered {status}"
            status, _ = s3_request(w.endpoint, "DELETE", key)
            assert status == 204, f"signed DELETE: {status}"
            log(f"weed{k}: signed PUT/GET/LIST/DELETE as {S3_ENV['AWS_ACCESS_KEY_ID']} ok, "
                f"a wrong secret refused")
    finally:
        for k, w in enumerate(weeds):
            t = time.monotonic()
            rc = w.stop()
            log(f"weed{k}: stopped (exit {rc}) in {time.monotonic() - t:.1f} s")
    for w in weeds:
        assert not w.proc.alive()
        still = [p for p in w.ports.values() if _listening(p)]
        assert not still, f"still listening after stop: {still}"
    log("self-test: ok")


# ---------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke-run sizes: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    p.add_argument("--self-test", action="store_true",
                   help="test the SeaweedFS harness and helpers only (no promptd needed)")
    g = p.add_argument_group("what to run")
    g.add_argument("--polls", default="250,1000", help="--store-poll-ms values, one fleet each")
    g.add_argument("--skip-fleet", action="store_true", help="only the cold start")
    g.add_argument("--skip-cold", action="store_true", help="no cold start")
    g = p.add_argument_group("sizes (defaults: the full run; --quick shrinks the unset ones)")
    g.add_argument("--replicas", type=int, default=3)
    g.add_argument("--uploads", type=int, help=f"prompt uploads in the storm ({FULL['uploads']})")
    g.add_argument("--tasks", type=int, help=f"tasks the uploads cycle over ({FULL['tasks']})")
    g.add_argument("--ensembles", type=int, help=f"ensemble writes in the storm ({FULL['ensembles']})")
    g.add_argument("--ensemble-names", type=int,
                   help=f"ensembles the writes cycle over ({FULL['ensemble_names']})")
    g.add_argument("--rate", type=float, help=f"storm writes per second ({FULL['rate']:g})")
    g.add_argument("--writers", type=int, default=4, help="threads sending the storm's writes")
    g.add_argument("--clients", type=int, help=f"closed-loop predict clients ({FULL['clients']})")
    g.add_argument("--max-new-tokens", type=int, default=8)
    g.add_argument("--warmup-s", type=float, default=3.0)
    g.add_argument("--baseline-s", type=float,
                   help=f"seconds of load alone, before and after the storm ({FULL['baseline_s']:g})")
    g.add_argument("--watch-ms", type=float, default=5.0, help="watchers' poll interval")
    g.add_argument("--idle-s", type=float, help=f"idle S3 request window ({FULL['idle_s']:g})")
    g.add_argument("--cold-prompts", type=int, help=f"prompts for the cold start ({FULL['cold_prompts']})")
    g.add_argument("--cold-repeats", type=int, help=f"cold starts per source ({FULL['cold_repeats']})")
    g.add_argument("--prompt-length", type=int, default=20, help="rows per prompt")
    g = p.add_argument_group("binaries and model")
    g.add_argument("--model", help="model folder (default: bench-models/<shape>, made if missing)")
    g.add_argument("--shape", default="small", choices=["small", "mini"],
                   help="promptd-dev make-model shape when --model is not given")
    g.add_argument("--bin", default=os.path.join(TARGET, "release", "promptd"),
                   help="promptd binary (default: $CARGO_TARGET_DIR/release/promptd, else "
                        "target/release/promptd)")
    g.add_argument("--dev", default=os.path.join(TARGET, "release", "promptd-dev"),
                   help="promptd-dev binary (built with --features dev-tools; same folder)")
    g.add_argument("--replica-threads", type=int,
                   help="OMP_NUM_THREADS of each fleet replica (default: cores // --replicas, "
                        "at least 1; 0 leaves libtorch's default of one per core)")
    g.add_argument("--weed", default=os.environ.get("PROMPTD_WEED") or
                   os.path.join(ROOT, ".tools/seaweedfs-4.48/bin/weed"),
                   help="SeaweedFS binary (default: $PROMPTD_WEED, else scripts/provision-seaweedfs.sh's)")
    g.add_argument("--serve-args", default="", help="more `promptd serve` flags, shell-quoted")
    g.add_argument("--ready-timeout-s", type=float, default=600.0)
    g.add_argument("--visible-timeout-s", type=float, default=60.0,
                   help="how long seeded prompts may take to reach every replica")
    g.add_argument("--out", default=os.path.join(TARGET, "bench-fleet"),
                   help="summary.json, table.md, logs and SeaweedFS data (removed unless --keep)")
    g.add_argument("--keep", action="store_true", help="keep SeaweedFS data and logs")
    args = p.parse_args(argv)
    preset = QUICK if args.quick else FULL
    for k, v in preset.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.polls = [int(x) for x in str(args.polls).split(",") if x.strip()]
    if args.replica_threads is None:
        args.replica_threads = max(1, (os.cpu_count() or 1) // max(1, args.replicas))
    if args.replica_threads < 0:
        p.error("--replica-threads: 0 or more")
    positive = ["replicas", "tasks", "rate", "writers", "clients", "ensemble_names", "cold_prompts",
                "cold_repeats", "prompt_length", "idle_s", "baseline_s", "watch_ms"]
    for k in positive:
        if getattr(args, k) <= 0:
            p.error(f"--{k.replace('_', '-')} must be positive")
    if args.uploads < 0 or args.ensembles < 0 or args.uploads + args.ensembles == 0:
        p.error("--uploads and --ensembles: not negative, not both 0")
    if args.ensembles and args.tasks < 2:
        p.error("ensembles need --tasks >= 2")
    if not args.polls or any(x <= 0 for x in args.polls):
        p.error("--polls: positive milliseconds, comma-separated")
    return args


def main(argv=None):
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    needed = [args.weed] if args.self_test else [args.weed, args.bin] + (
        [] if args.model and args.skip_cold else [args.dev])
    for path in needed:
        if not os.access(path, os.X_OK):
            raise SystemExit(f"{path}: missing (make build build-dev; SeaweedFS: "
                             f"scripts/provision-seaweedfs.sh)")
    os.makedirs(args.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="run-", dir=args.out)
    log(f"work folder {work}")
    try:
        if args.self_test:
            self_test(args, work)
            return 0
        model, d_model = ensure_model(args)
        weed = Weed(args.weed, os.path.join(work, "seaweedfs"), os.path.join(work, "seaweedfs.log"))
        args.s3_endpoint, args.weed_pid = weed.endpoint, weed.proc.p.pid
        log(f"SeaweedFS S3 on {weed.endpoint}: ready {weed.wait_ready():.2f} s after start")
        fleets = [] if args.skip_fleet else [run_fleet(args, model, d_model, p, work)
                                             for p in args.polls]
        cold = None if args.skip_cold else run_cold(args, model, d_model, work)
        weed.stop()
    except BaseException:
        log(f"failed; logs in {work}")
        args.keep = True
        raise
    finally:
        stop_all()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    summary = {
        "cpu": cpu_line(),
        "model": os.path.relpath(model, ROOT) if model.startswith(ROOT + os.sep) else model,
        "d_model": d_model,
        "config": {k: getattr(args, k) for k in
                   ("replicas", "uploads", "tasks", "ensembles", "ensemble_names", "rate", "writers",
                    "clients", "max_new_tokens", "baseline_s", "watch_ms", "idle_s",
                    "cold_prompts", "cold_repeats", "prompt_length", "serve_args",
                    "replica_threads", "polls")},
        "fleets": fleets,
        "cold_start": cold,
    }
    table = markdown(args, fleets, cold)
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(table + "\n")
    print(json.dumps(summary, indent=1))
    print()
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
