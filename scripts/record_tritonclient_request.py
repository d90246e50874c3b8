#!/usr/bin/env python3
"""Records the raw HTTP request tritonclient.http sends for an infer with its defaults (binary
tensor data for inputs and outputs, no Content-Type) into
tests/fixtures/kserve/tritonclient_http_infer.bin, which tests/it/outside.rs replays.

    pip install 'tritonclient[http]' numpy
    python3 scripts/record_tritonclient_request.py tests/fixtures/kserve/tritonclient_http_infer.bin
"""
import socket, threading, sys, numpy as np
import tritonclient.http as httpclient
out = sys.argv[1]
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0)); srv.listen(1); port = srv.getsockname()[1]
def serve():
    c, _ = srv.accept()
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += c.recv(65536)
    head, _, body = buf.partition(b"\r\n\r\n")
    n = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
    while len(body) < n:
        body += c.recv(65536)
    open(out, "wb").write(head + b"\r\n\r\n" + body)
    c.sendall(b"HTTP/1.1 500 x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
    c.close()
threading.Thread(target=serve, daemon=True).start()
h = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
inp = httpclient.InferInput("text_input", [2, 1], "BYTES")
inp.set_data_from_numpy(np.array([[b"kernel time"], [b"who model this"]], dtype=np.object_))
try:
    h.infer("keep", [inp], parameters={"max_new_tokens": 4})
except Exception as e:
    print("expected:", type(e).__name__)
