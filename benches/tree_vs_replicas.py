"""Helpers for benches/tree-vs-replicas.sh and benches/messages-per-record.sh (issue 19 point 6).

    python3 benches/tree_vs_replicas.py configs DIR BASE_PORT
        Writes DIR/plain.json, DIR/tls.json (the shipped five-server graph of config/herd.json, on loopback
        ports from BASE_PORT, without Places, with an admin listener each) and DIR/solo.json (one server).
    python3 benches/tree_vs_replicas.py fence herd CLIENT_PORT ADMIN_PORT...
    python3 benches/tree_vs_replicas.py fence redis PRIMARY_PORT REPLICA_PORT...
        Writes one last update at the origin (IAMAT of a new id at herd's client port; SET at redis's
        primary) and prints the milliseconds until every server holds it. Peer links and replication
        streams are FIFO and every write of the run went down them before the fence, so this is how long
        the herd (or the replicas) still needed, after the client had its last reply, to hold everything.
    python3 benches/tree_vs_replicas.py counters ADMIN_PORT...
        Prints, summed over the servers, the issue-19 counters (received, duplicate, forwarded, flooded,
        reflooded, synced) and the first server's records stored.
    python3 benches/tree_vs_replicas.py records ADMIN_PORT...
        Prints the records each server holds (its herd_records gauge).
    python3 benches/tree_vs_replicas.py peer_bytes PEER_PORT...
        Prints the bytes both ways on live TCP connections whose accepting end is one of these ports,
        from the kernel's tcp_info (`ss -tin`): what the links put on the wire, framing, heartbeats, TLS
        and all, counted outside the code under test.
"""

import json
import os
import re
import socket
import subprocess
import sys
import time

POLL_LIMIT_S = 120


def configs(d, base):
    c = json.load(open("config/herd.json"))
    for key in ("places", "local_places", "peer_tls", "records"):
        c.pop(key, None)
    for i, s in enumerate(c["servers"]):
        s["port"], s["peer_port"], s["admin_port"] = base + i, base + 10 + i, base + 20 + i
    c["log_dir"] = f"{d}/logs"
    if os.environ.get("LOG_DETAIL"):
        c["log_detail"] = os.environ["LOG_DETAIL"]
    json.dump(c, open(f"{d}/plain.json", "w"))
    c["peer_tls"] = {"ca_file": f"{d}/certs/ca.pem", "cert_dir": f"{d}/certs"}
    json.dump(c, open(f"{d}/tls.json", "w"))
    solo = {"servers": [{"name": "Bailey", "port": base + 30, "peer_port": base + 31, "admin_port": base + 32}],
            "log_dir": f"{d}/logs"}
    if os.environ.get("LOG_DETAIL"):
        solo["log_detail"] = os.environ["LOG_DETAIL"]
    json.dump(solo, open(f"{d}/solo.json", "w"))


def http_get(port, path):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n")[0], head
    return body.decode()


def metric(port, name):
    """The sum of the samples of `name` on a server's /metrics."""
    total = 0
    for line in http_get(port, "/metrics").splitlines():
        if line.startswith(name + "{"):
            total += int(line.rsplit(" ", 1)[1])
    return total


def redis_call(port, *args):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(("*%d\r\n" % len(args) + "".join("$%d\r\n%s\r\n" % (len(a), a) for a in args)).encode())
        return s.recv(4096).decode()


def fence(kind, origin, others):
    start = time.monotonic()
    if kind == "herd":
        now = "%.9f" % time.time()
        with socket.create_connection(("127.0.0.1", origin), timeout=10) as s:
            s.sendall(f"IAMAT zz-fence +00.000000+000.000000 {now}\n".encode())
            reply = s.recv(4096).decode()
            assert reply.startswith("AT "), reply
        want = metric(others[0], "herd_records")  # the first admin port is the origin's
        held = lambda p: metric(p, "herd_records") >= want
    else:
        assert redis_call(origin, "SET", "zz-fence", "1").startswith("+OK")
        held = lambda p: redis_call(p, "EXISTS", "zz-fence").startswith(":1")
    pending = list(others)
    while pending:
        pending = [p for p in pending if not held(p)]
        if time.monotonic() - start > POLL_LIMIT_S:
            sys.exit(f"fence not held by {pending} after {POLL_LIMIT_S} s")
        if pending:
            time.sleep(0.005)
    print("%.0f" % ((time.monotonic() - start) * 1e3))


def counters(ports):
    names = ["received", "duplicate", "forwarded", "flooded", "reflooded", "synced"]
    sums = [sum(metric(p, f"herd_records_{n}_total") for p in ports) for n in names]
    print(" ".join(map(str, sums + [metric(ports[0], "herd_records_stored_total")])))


def peer_bytes(ports):
    out = subprocess.run(["ss", "-tinH", "state", "established"], capture_output=True, text=True, check=True).stdout
    # A socket is a line "Recv-Q Send-Q LOCAL PEER" (no state column when filtering by state), then its
    # tcp_info on indented lines.
    total, local = 0, None
    for line in out.splitlines():
        if not line[:1].isspace():
            local = int(line.split()[2].rsplit(":", 1)[1])
        elif local in ports:
            total += sum(int(x) for x in re.findall(r"bytes_(?:acked|received):(\d+)", line))
    print(total)


if __name__ == "__main__":
    cmd, rest = sys.argv[1], sys.argv[2:]
    if cmd == "configs":
        configs(rest[0], int(rest[1]))
    elif cmd == "fence":
        fence(rest[0], int(rest[1]), [int(p) for p in rest[2:]])
    elif cmd == "counters":
        counters([int(p) for p in rest])
    elif cmd == "records":
        print(" ".join(str(metric(int(p), "herd_records")) for p in rest))
    elif cmd == "peer_bytes":
        peer_bytes({int(p) for p in rest})
    else:
        sys.exit(f"unknown command {cmd}")
