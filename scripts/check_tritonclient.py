#!/usr/bin/env python3
"""Runs the standard Open Inference Protocol clients against a running promptd.

    pip install 'tritonclient[http,grpc]' grpcio-reflection
    python3 scripts/check_tritonclient.py --http 127.0.0.1:8080 --grpc 127.0.0.1:50051 --task sentiment

Checks, with the clients' defaults: tritonclient.http infer with binary inputs and outputs
(the binary tensor data extension), and with JSON inputs and outputs; tritonclient.grpc
infer; server/model readiness and metadata over both; grpcio-reflection's v1alpha client
listing the services. Every answer must equal promptd's own /v1 predict answer. Exits non-zero
on the first mismatch. A dev-time check (the Rust tests in tests/it/outside.rs speak the same
wire formats); it needs the packages above.
"""
import argparse
import json
import sys
import urllib.request

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient


def v1_predict(http, task, texts, max_new_tokens):
    req = urllib.request.Request(
        f"http://{http}/v1/tasks/{task}/predict",
        data=json.dumps({"inputs": texts, "max_new_tokens": max_new_tokens}).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(req) as r:
        return [o["text"] for o in json.load(r)["outputs"]]


def check(what, got, want):
    if got != want:
        print(f"FAIL {what}: {got!r} != {want!r}")
        sys.exit(1)
    print(f"ok   {what}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--http", default="127.0.0.1:8080")
    ap.add_argument("--grpc", default="127.0.0.1:50051")
    ap.add_argument("--task", default="sentiment")
    args = ap.parse_args()
    texts = ["the soup was cold", "kernel time who model"]
    want = v1_predict(args.http, args.task, texts, 8)
    data = np.array([[t.encode()] for t in texts], dtype=np.object_)

    h = httpclient.InferenceServerClient(args.http)
    check("http server live", h.is_server_live(), True)
    check("http server ready", h.is_server_ready(), True)
    check("http model ready", h.is_model_ready(args.task), True)
    check("http model metadata", h.get_model_metadata(args.task)["name"], args.task)
    for binary in (True, False):
        inp = httpclient.InferInput("text_input", [len(texts), 1], "BYTES")
        inp.set_data_from_numpy(data, binary_data=binary)
        out = httpclient.InferRequestedOutput("text_output", binary_data=binary)
        res = h.infer(args.task, [inp], outputs=[out], parameters={"max_new_tokens": 8})
        got = [x.decode() if isinstance(x, bytes) else x for x in res.as_numpy("text_output").ravel()]
        check(f"http infer (binary data: {binary})", got, want)
    # No outputs named: the client asks for every output as binary data.
    inp = httpclient.InferInput("text_input", [len(texts), 1], "BYTES")
    inp.set_data_from_numpy(data)
    res = h.infer(args.task, [inp], parameters={"max_new_tokens": 8})
    check("http infer (defaults)", [x.decode() for x in res.as_numpy("text_output").ravel()], want)

    g = grpcclient.InferenceServerClient(args.grpc)
    check("grpc server live", g.is_server_live(), True)
    check("grpc server ready", g.is_server_ready(), True)
    check("grpc model ready", g.is_model_ready(args.task), True)
    check("grpc model metadata", g.get_model_metadata(args.task).name, args.task)
    inp = grpcclient.InferInput("text_input", [len(texts), 1], "BYTES")
    inp.set_data_from_numpy(data)
    res = g.infer(args.task, [inp], parameters={"max_new_tokens": 8})
    check("grpc infer", [x.decode() for x in res.as_numpy("text_output").ravel()], want)

    import grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    channel = grpc.insecure_channel(args.grpc)
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = sorted(s.name for s in next(replies).list_services_response.service)
    check(
        "grpc reflection v1alpha lists the services",
        [n for n in names if n in ("inference.GRPCInferenceService", "promptd.v1.Promptd")],
        ["inference.GRPCInferenceService", "promptd.v1.Promptd"],
    )


if __name__ == "__main__":
    main()
