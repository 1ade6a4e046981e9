#!/usr/bin/env python3
"""What a /records reader costs the other clients (issue 16): an open-loop IAMAT probe (2,000/s for 5 s,
one connection, latency from the scheduled send time, `herd load`) on a server holding 200,000 records,
first calm, then while one admin connection fetches /records back to back. Run it for two builds to
compare, e.g. before and after a change:

    python3 benches/records-stall.py target/release/herd /tmp/herd-before

Each binary drives its own probe (`BIN load`). Latencies are microseconds. On a shared machine the tail
(p99, max) moves with the machine's load: compare p50, and repeat.
"""
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading

RECORDS = 200_000


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def probe(binary, port):
    out = subprocess.run([binary, "load", "--target", f"127.0.0.1:{port}", "--connections", "1", "--rate",
                          "2000", "--duration", "5", "--warmup", "1", "--json"], capture_output=True,
                         text=True, check=True).stdout
    r = json.loads(out)
    lat = r["latency_us"]
    return {"replies": r["replies"], "errors": r["errors_total"], "p50": lat.get("p50"), "p99": lat.get("p99"),
            "max": lat.get("max")}


def run(binary):
    with tempfile.TemporaryDirectory() as d:
        port, peer, admin = free_port(), free_port(), free_port()
        with open(f"{d}/c.json", "w") as f:
            json.dump({"servers": [{"name": "Solo", "port": port, "peer_port": peer, "admin_port": admin}],
                       "log_dir": f"{d}/logs", "log_detail": "events"}, f)
        env = {k: v for k, v in os.environ.items() if k != "HERD_ADMIN_TOKEN"} | {"RUST_LOG": "warn"}
        server = subprocess.Popen([binary, "serve", "Solo", "--config", f"{d}/c.json"], stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, env=env)
        try:
            server.stdout.readline()  # the readiness line
            lines = "".join(f"IAMAT c{i:06d} +34.068930-118.445127 1700000000.{i}\n" for i in range(RECORDS))
            with socket.create_connection(("127.0.0.1", port)) as c:
                # Write and read at once: a client that only writes is throttled (and would wait forever).
                writer = threading.Thread(target=lambda: (c.sendall(lines.encode()), c.shutdown(socket.SHUT_WR)))
                writer.start()
                while c.recv(1 << 20):
                    pass
                writer.join()
            calm = probe(binary, port)
            stop, fetches = threading.Event(), [0]

            def fetch():
                while not stop.is_set():
                    with socket.create_connection(("127.0.0.1", admin)) as c:
                        c.sendall(b"GET /records HTTP/1.1\r\nHost: localhost\r\n\r\n")
                        while c.recv(1 << 20):
                            pass
                    fetches[0] += 1

            reader = threading.Thread(target=fetch)
            reader.start()
            busy = probe(binary, port)
            stop.set()
            reader.join()
            return calm, busy, fetches[0]
        finally:
            server.terminate()
            server.wait()


for binary in sys.argv[1:] or ["target/release/herd"]:
    calm, busy, n = run(binary)
    print(f"{binary}: calm {calm}; /records fetched back to back ({n} fetches of {RECORDS} records): {busy}")
