#!/usr/bin/env python3
"""The measuring half of benches/compare/run.sh (run that, not this: it builds and installs first).

    python3 benches/compare/measure.py [--quick] [--out FILE] [--only herd,tokio,...]

For each implementation (herd, tokio multi-thread, tokio current-thread, asyncio) and redis-server:

1. conformance (not redis): the 5-server herd of config/herd.json on free loopback ports, every server
   asking the same local Places service (`herd places`); conformance.py against Bailey with the flood
   checked at Jaquez and Clark; then the WHATSAT bytes of a fixed session compared with herd's.
2. one server alone ("Solo", no neighbours), pinned with `taskset -c 0`; every client pinned with
   `taskset -c 1`:
   - start-up: exec to first accepted TCP connect, median of several starts;
   - RSS at 10,000 idle connections (each sent one invalid command and got its `?` reply, or PING for
     redis, then left idle): VmRSS with them open minus VmRSS before, and per connection;
   - RSS per stored record: VmRSS after N IAMATs for N new client ids (redis: N SETs of an AT-line-sized
     value under N new keys) minus before, divided by N;
   - CPU per request: the server's on-CPU time, all threads (sum of /proc/PID/task/*/schedstat), over a
     run of exactly M IAMAT updates at 20 connections, divided by M;
   - throughput and latency: `herd load` closed loop, depth 1, 1 / 20 / 200 connections (IAMAT over 1000
     ids; redis `SET k{i} v`).
Every load is bounded (--duration or --requests, with herd load's own 600 s cap) and every process this
script starts is killed when it ends, whatever happens.
"""

import argparse
import atexit
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
HERD = os.path.join(ROOT, "target/release/herd")
TOKIO = os.path.join(HERE, "tokio/target/release/herd-tokio")
ASYNCIO = os.path.join(HERE, "asyncio/herd_asyncio.py")
SERVER_CPU, LOAD_CPU = "0", "1"
KEY_ENV = "HERD_LOCAL_PLACES_KEY"

IMPLS = {
    "herd": lambda name, cfg: [HERD, "serve", name, "--config", cfg],
    "tokio": lambda name, cfg: [TOKIO, name, "--config", cfg],
    "tokio-ct": lambda name, cfg: [TOKIO, name, "--config", cfg, "--current-thread"],
    "asyncio": lambda name, cfg: [sys.executable, ASYNCIO, name, "--config", cfg],
}
LABEL = {"herd": "herd (mio loop)", "tokio": "tokio multi-thread", "tokio-ct": "tokio current-thread",
         "asyncio": "Python asyncio", "redis": "redis-server (SET)"}

procs = []


def cleanup():
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + 3
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


atexit.register(cleanup)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))


def spawn(argv, log, cpu=None):
    """Starts argv (pinned to `cpu` when given) with its output to `log` (a file, or subprocess.PIPE)."""
    if cpu is not None:
        argv = ["taskset", "-c", cpu] + argv
    p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         env=dict(os.environ, **{KEY_ENV: "local"}))
    procs.append(p)
    return p


def stop(p):
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(3)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def free_ports(n):
    """n consecutive loopback ports nobody holds now, outside herd's defaults."""
    base = 32000 + (os.getpid() % 200) * 40
    while True:
        socks = []
        try:
            for port in range(base, base + n):
                s = socket.socket()
                s.bind(("127.0.0.1", port))
                socks.append(s)
            return base
        except OSError:
            base += n
        finally:
            for s in socks:
                s.close()


def wait_port(port, proc, limit=10.0):
    """Polls connect every millisecond; returns seconds from now until accepted."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return time.monotonic() - t0
        except OSError:
            time.sleep(0.001)
    raise RuntimeError(f"port {port} not listening after {limit} s")


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read())[1])


def cpu_ns(pid):
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except FileNotFoundError:
            pass  # a thread that just ended
    return total


def load(port, *args):
    argv = ["taskset", "-c", LOAD_CPU, HERD, "load", "--target", f"127.0.0.1:{port}", "--json", *args]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=700)
    if out.returncode != 0 or not out.stdout.strip():
        raise RuntimeError(f"herd load failed: {out.stderr[-500:]}")
    return json.loads(out.stdout)


def idle_connections(port, n, redis):
    """Opens n connections, 50 at a time, each answering one command; keeps them open. In a child
    process pinned to the load core; returns it (it holds the sockets until its stdin closes)."""
    code = r"""
import socket, sys
port, n, redis = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
ask, answer = (b"PING\r\n", b"+PONG\r\n") if redis else (b"x\n", b"? x\n")
socks = []
while len(socks) < n:
    batch = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(min(50, n - len(socks)))]
    for s in batch:
        s.sendall(ask)
    for s in batch:
        got = b""
        while len(got) < len(answer):
            chunk = s.recv(64)
            if not chunk:
                sys.exit("closed by the server after %d connections" % len(socks))
            got += chunk
        assert got == answer, got
    socks += batch
print("open", len(socks), flush=True)
sys.stdin.read()
"""
    p = subprocess.Popen(["taskset", "-c", LOAD_CPU, sys.executable, "-c", code, str(port), str(n),
                          "1" if redis else "0"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    procs.append(p)
    line = p.stdout.readline()
    if not line.startswith("open"):
        p.wait()
        raise RuntimeError(f"idle connections failed (exit {p.returncode})")
    return p


def herd_config(path, base, places_port, ca, logs, five):
    with open(os.path.join(ROOT, "config/herd.json")) as f:
        ref = json.load(f)
    if five:
        servers = [dict(s, port=base + i, peer_port=base + 10 + i) for i, s in enumerate(ref["servers"])]
        links = ref["links"]
    else:
        servers = [{"name": "Solo", "host": "127.0.0.1", "port": base + 20, "peer_port": base + 21}]
        links = []
    config = {
        "servers": servers,
        "links": links,
        "places": dict(ref["places"], url=f"https://127.0.0.1:{places_port}/maps/api/place/nearbysearch/json",
                       ca_file=ca),
        "log_dir": logs,
        "limits": {"max_clients": 20000},
    }
    with open(path, "w") as f:
        json.dump(config, f, indent=1)
    return config


WHATSAT_SESSION = (b"IAMAT cmp-w +34.068930-118.445127 1764870000\nWHATSAT cmp-w 10 2\nWHATSAT cmp-w 10 20\n"
                   b"WHATSAT cmp-w 0.5 0\nWHATSAT cmp-w 50 20\n")


def whatsat_bytes(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(WHATSAT_SESSION)
    s.shutdown(socket.SHUT_WR)
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    s.close()
    # The AT line names the answering server and its clock: keep the rest.
    return re.sub(rb"^AT \S+ [+-][0-9.]+ ", b"AT ", out, flags=re.M)


def conformance(impl, tmp, places_port, ca, ref_bytes):
    base = free_ports(20)
    cfg = os.path.join(tmp, f"{impl}-five.json")
    config = herd_config(cfg, base, places_port, ca, os.path.join(tmp, f"logs-{impl}-five"), True)
    log = open(os.path.join(tmp, f"{impl}-five.log"), "w")
    ps = [spawn(IMPLS[impl](s["name"], cfg), log) for s in config["servers"]]
    try:
        for s, p in zip(config["servers"], ps):
            wait_port(s["port"], p)
        port = {s["name"]: s["port"] for s in config["servers"]}
        addrs = [f"127.0.0.1:{port[n]}" for n in ("Bailey", "Jaquez", "Clark")]
        out = subprocess.run([sys.executable, os.path.join(HERE, "conformance.py"), *addrs],
                             capture_output=True, text=True, timeout=120)
        print(out.stdout, end="", file=sys.stderr)
        got = whatsat_bytes(port["Bailey"])
        return out.returncode == 0, got
    finally:
        for p in ps:
            stop(p)
        log.close()


def solo_argv(impl, tmp, places_port, ca):
    base = free_ports(30)
    port = base + 20
    if impl == "redis":
        return port, ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                      "no", "--maxclients", "20000", "--daemonize", "no"]
    cfg = os.path.join(tmp, f"{impl}-solo.json")
    herd_config(cfg, base, places_port, ca, os.path.join(tmp, f"logs-{impl}-solo"), False)
    return port, IMPLS[impl]("Solo", cfg)


def resources(impl, tmp, places_port, ca, o):
    """Start-up, idle connections (each on a fresh process), then records and CPU per request on the
    process it returns, left running for the throughput rounds."""
    r = {}
    port, argv = solo_argv(impl, tmp, places_port, ca)
    log = open(os.path.join(tmp, f"{impl}-solo.log"), "w")
    starts = []
    for _ in range(o.starts):
        p = spawn(argv, log, SERVER_CPU)
        starts.append(wait_port(port, p))
        stop(p)
    r["start_ms"] = statistics.median(starts) * 1000

    p = spawn(argv, log, SERVER_CPU)
    wait_port(port, p)
    time.sleep(0.2)
    before = rss_kb(p.pid)  # taskset execs the server: same pid
    idle = idle_connections(port, o.idle, impl == "redis")
    r["idle_kb"] = rss_kb(p.pid) - before
    idle.stdin.close()
    idle.wait(30)
    stop(p)

    p = spawn(argv, log, SERVER_CPU)
    wait_port(port, p)
    time.sleep(0.2)
    r["rss0_kb"] = before = rss_kb(p.pid)
    if impl == "redis":
        value = '"AT Solo +0.000123456 client{i} +34.068930-118.445127 1764870000.123456789"'
        rec = load(port, "--workload", "raw", "--template", f"SET client{{i}} {value}", "--expect", "+OK",
                   "--connections", "20", "--requests", str(o.records), "--warmup", "0")
    else:
        rec = load(port, "--workload", "iamat", "--clients", str(o.records), "--connections", "20",
                   "--requests", str(o.records), "--warmup", "0")
    r["record_b"] = (rss_kb(p.pid) - before) * 1024 / o.records

    c0 = cpu_ns(p.pid)
    if impl == "redis":
        cpu = load(port, "--workload", "raw", "--template", "SET k{i} v", "--expect", "+OK", "--connections", "20",
                   "--requests", str(o.cpu_requests), "--warmup", "0")
    else:
        cpu = load(port, "--workload", "iamat", "--connections", "20", "--requests", str(o.cpu_requests),
                   "--warmup", "0")
    r["cpu_us"] = (cpu_ns(p.pid) - c0) / 1000 / max(1, cpu["replies"])
    r["errors"] = rec["errors_total"] + cpu["errors_total"]
    r["cells"] = {}
    return r, p, port


def cell(impl, proc, port, conns, o):
    """One throughput cell, with the share of a CPU the server got over the whole invocation (warm-up
    included): well under 100 % at a saturating load means it was starved by other jobs, or idle waiting
    for a client that was."""
    extra = ["--workload", "raw", "--template", "SET k{i} v", "--expect", "+OK"] if impl == "redis" else []
    c0, t0 = cpu_ns(proc.pid), time.monotonic()
    res = load(port, *extra, "--connections", str(conns), "--duration", str(o.duration), "--warmup", str(o.warmup))
    share = (cpu_ns(proc.pid) - c0) / 1e9 / (time.monotonic() - t0) * 100
    lat = res["latency_us"]
    return (res["throughput_rps"], lat["p50"], lat["p99"], lat["p99.9"], res["errors_total"], share)


def stripped_size(path):
    with tempfile.NamedTemporaryFile() as t:
        subprocess.run(["strip", "-o", t.name, path], check=True)
        return os.path.getsize(t.name)


def du(path):
    total = 0
    for d, dirs, files in os.walk(path):
        dirs[:] = [x for x in dirs if x not in ("site-packages", "dist-packages")]
        for f in files:
            fp = os.path.join(d, f)
            if not os.path.islink(fp):
                total += os.path.getsize(fp)
    return total


def code_lines(path):
    """Lines that are not blank and not comments; Rust stops at the first `#[cfg(test)]` (the unit
    tests sit at the end of each file), Python skips docstrings."""
    n, in_doc = 0, False
    for line in open(path, encoding="utf-8"):
        s = line.strip()
        if path.endswith(".rs"):
            if s.startswith("#[cfg(test)]"):
                break
            if s and not s.startswith("//"):
                n += 1
        else:
            if in_doc:
                in_doc = not (s.endswith('"""') or s.endswith("'''"))
                continue
            if s.startswith('"""') or s.startswith("'''"):
                in_doc = not (len(s) > 3 and (s.endswith('"""') or s.endswith("'''")))
                continue
            if s and not s.startswith("#"):
                n += 1
    return n


HERD_FILES = ["src/protocol.rs", "src/record.rs", "src/config.rs", "src/places.rs", "src/http.rs", "src/gjson.rs"]


def sizes_and_lines():
    herd_server = HERD_FILES + sorted("src/server/" + f for f in os.listdir(os.path.join(ROOT, "src/server")))
    py_stdlib = sysconfig.get_paths()["stdlib"]
    py_lib = os.path.join(sysconfig.get_config_var("LIBDIR") or "", sysconfig.get_config_var("LDLIBRARY") or "")
    py_bin = os.path.getsize(os.path.realpath(sys.executable)) + (os.path.getsize(py_lib) if os.path.isfile(py_lib) else 0)
    redis = shutil.which("redis-server")
    loaded = subprocess.run([sys.executable, "-c", "import os, sys; sys.path.insert(0, sys.argv[1]); "
                             "import herd_asyncio; print(sum(os.path.getsize(m.__file__) for m in "
                             "list(sys.modules.values()) if getattr(m, '__file__', None)))", os.path.dirname(ASYNCIO)],
                            capture_output=True, text=True).stdout.strip()
    return {
        "herd": (f"{os.path.getsize(HERD) / 1e6:.1f} MB ({stripped_size(HERD) / 1e6:.1f} MB stripped)",
                 sum(code_lines(os.path.join(ROOT, f)) for f in herd_server),
                 f"{len(herd_server)} files: src/server/*.rs + {' '.join(os.path.basename(f) for f in HERD_FILES)}"),
        "tokio": (f"{os.path.getsize(TOKIO) / 1e6:.1f} MB ({stripped_size(TOKIO) / 1e6:.1f} MB stripped)",
                  code_lines(os.path.join(HERE, "tokio/src/main.rs")), "tokio/src/main.rs"),
        "asyncio": (f"{os.path.getsize(ASYNCIO) / 1e3:.1f} kB script + CPython {sys.version.split()[0]}: "
                    f"{py_bin / 1e6:.1f} MB interpreter and libpython, {int(loaded or 0) / 1e6:.1f} MB of modules "
                    f"loaded, in a {du(py_stdlib) / 1e6:.0f} MB stdlib directory",
                    code_lines(ASYNCIO), "asyncio/herd_asyncio.py"),
        "redis": (f"{os.path.getsize(redis) / 1e6:.1f} MB (Debian package, stripped)" if redis else "-", None, ""),
    }


def git_commit():
    out = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock",
                            "benches/compare"], capture_output=True, text=True).stdout.strip()
    return out.stdout.strip() + (" (with uncommitted changes)" if dirty else "")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None)
    ap.add_argument("--only", default="herd,tokio,tokio-ct,asyncio,redis")
    o = ap.parse_args()
    o.duration, o.warmup, o.starts, o.rounds = (3, 1, 3, 1) if o.quick else (10, 2, 7, 3)
    o.records, o.cpu_requests = (30_000, 20_000) if o.quick else (200_000, 100_000)
    o.idle = 10_000
    only = o.only.split(",")
    tmp = tempfile.mkdtemp(prefix="herd-compare-")
    t_start = time.monotonic()
    load_start = os.getloadavg()

    # One local Places service for every implementation's WHATSAT.
    places_port = free_ports(1)
    ca = os.path.join(tmp, "places-ca.pem")
    places_log = open(os.path.join(tmp, "places.log"), "w")
    places = spawn([HERD, "places", "--listen", f"127.0.0.1:{places_port}", "--ca-out", ca], subprocess.PIPE,
                   LOAD_CPU)
    # Its `listening` line, not a successful connect: the kernel completes handshakes as soon as the
    # socket listens, before the service has written its CA file.
    for line in places.stdout:
        places_log.write(line.decode(errors="replace"))
        if line.startswith(b"places listening on"):
            break
    else:
        raise RuntimeError(f"the Places service exited with {places.wait()}: see {tmp}/places.log")

    conf, ref, results = {}, None, {}
    for impl in [i for i in IMPLS if i in only]:
        print(f"== {impl}: conformance", file=sys.stderr)
        ok, got = conformance(impl, tmp, places_port, ca, ref)
        if impl == "herd":
            ref = got
        same = "-" if ref is None else ("same bytes as herd" if got == ref else "DIFFERS from herd")
        conf[impl] = ("pass" if ok else "FAIL", same)
    stop(places)  # the measured servers get no WHATSAT: keep the Places service off their core and the load's

    running = {}
    for impl in [i for i in list(IMPLS) + ["redis"] if i in only]:
        if impl == "redis" and not shutil.which("redis-server"):
            print("!! redis-server not installed: its row is skipped", file=sys.stderr)
            continue
        print(f"== {impl}: start-up, idle connections, records, CPU per request", file=sys.stderr)
        results[impl], proc, port = resources(impl, tmp, places_port, ca, o)
        running[impl] = (proc, port)

    # Throughput rounds: every server is up (idle ones cost nothing), and the cells of one connection
    # count run back to back across implementations, so a change in the machine's background load hits
    # them alike. The median round by throughput is reported.
    rounds = {impl: {c: [] for c in (1, 20, 200)} for impl in running}
    for rnd in range(o.rounds):
        for conns in (1, 20, 200):
            for impl, (proc, port) in running.items():
                print(f"== round {rnd + 1}/{o.rounds}: {impl} at {conns} connections", file=sys.stderr)
                rounds[impl][conns].append(cell(impl, proc, port, conns, o))
    for impl, (proc, port) in running.items():
        for conns, runs in rounds[impl].items():
            results[impl]["cells"][conns] = sorted(runs)[len(runs) // 2]
        stop(proc)
    load_end = os.getloadavg()

    sl = sizes_and_lines()
    cores = os.cpu_count()
    lines = [
        f"Commit measured: {git_commit()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"{'--quick' if o.quick else 'full'} run; {cores} cores; servers pinned to CPU {SERVER_CPU}, "
        f"every client (herd load, idle-connection holder) to CPU {LOAD_CPU}; kernel {os.uname().release}; "
        f"Python {sys.version.split()[0]}. Load average (1 min) {load_start[0]:.1f} at the start, "
        f"{load_end[0]:.1f} after the throughput rounds: other jobs share these cores, so compare ratios "
        "within this run, not absolute figures across runs.",
        "",
        f"Throughput: `herd load` closed loop, depth 1, {o.duration} s measured after {o.warmup} s warm-up, "
        f"median of {o.rounds} round(s) run back to back across implementations; IAMAT over 1000 client ids "
        "(redis: `SET k{i} v`), one server with no neighbours. Latency in µs. Server CPU %: the server's "
        "on-CPU time over the cell's wall time (warm-up included); a saturated server that got the whole "
        "core shows about 100.",
        "",
        "| implementation | conns | req/s | p50 | p99 | p99.9 | errors | server CPU % | req/s vs redis |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for impl, r in results.items():
        for conns, (rps, p50, p99, p999, err, share) in r["cells"].items():
            red = results.get("redis", {}).get("cells", {}).get(conns)
            ratio = f"{rps / red[0]:.2f}" if red and red[0] else "-"
            if rps == 0:  # not one reply in the measured window, and too short for herd load's time-out
                lines.append(f"| {LABEL[impl]} | {conns} | 0: no reply in the window | - | - | - | {err} | "
                             f"{share:.0f} | - |")
                continue
            lines.append(f"| {LABEL[impl]} | {conns} | {rps:,.0f} | {p50:.0f} | {p99:.0f} | {p999:.0f} | {err} | "
                         f"{share:.0f} | {ratio} |")
    lines += [
        "",
        f"Resources: CPU per request = server on-CPU time (all threads, /proc/PID/task/*/schedstat) over "
        f"{o.cpu_requests:,} IAMAT updates at 20 connections / replies; idle = VmRSS growth with {o.idle:,} "
        f"connections open (each answered one command); per record = VmRSS growth over {o.records:,} IAMATs "
        "for new client ids (redis: SET of an AT-line-sized value under a new key) / count; start-up = exec to "
        f"first accepted connect, median of {o.starts}; lines = non-blank, non-comment lines before any "
        "`#[cfg(test)]` (Python: without docstrings), counted by measure.py's code_lines.",
        "",
        "| implementation | conformance | WHATSAT bytes | CPU µs/req | RSS at start | RSS +10k idle conns "
        "(per conn) | bytes/record | start-up ms | size | lines of code |",
        "|---|---|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for impl, r in results.items():
        c = conf.get(impl, ("-", "-"))
        size, loc, files = sl["tokio" if impl.startswith("tokio") else impl]
        loc_text = f"{loc:,} ({files})" if loc else "-"
        errs = r["errors"]
        lines.append(
            f"| {LABEL[impl]} | {c[0]} | {c[1]} | {r['cpu_us']:.1f}{' (errors %d)' % errs if errs else ''} | "
            f"{r['rss0_kb'] / 1024:.1f} MiB | {r['idle_kb'] / 1024:.1f} MiB ({r['idle_kb'] * 1024 / o.idle:,.0f} B) | "
            f"{r['record_b']:.0f} | {r['start_ms']:.1f} | {size} | {loc_text} |")
    lines += ["", f"Whole run: {time.monotonic() - t_start:.0f} s."]
    text = "\n".join(lines) + "\n"
    print(text)
    if o.out:
        with open(o.out, "w") as f:
            f.write(text)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0 if all(c[0] == "pass" for c in conf.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
