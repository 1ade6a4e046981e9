#!/usr/bin/env python3
"""The measuring half of benches/compare/run.sh (run that, not this: it builds and installs first).

    python3 benches/compare/measure.py [--quick] [--rounds N] [--out FILE] [--only herd,tokio,...] [--no-multicore]
                                       [--cells conformance,resources,throughput,whatsat,miss,alloc,flood,multicore]

`--only` picks implementations, `--cells` (or $HERD_COMPARE_CELLS) the measurements; both default to all.

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
     ids; redis `SET k{i} v`), and WHATSAT at 20 connections (50 ids: cache hits from the local Places
     service after the warm-up), then WHATSAT cache misses at 20 connections (every request a position and
     radius never asked before: an HTTPS request to the Places service each, whose CPU is read too); the
     asyncio process runs under a wrapper that times its garbage collections.
3. flooding (not redis): the 5-server herd on the server core, N IAMATs for new ids at Bailey, a sentinel
   after them; records/s until every server knows the sentinel, records received per record (kernel
   byte counters of the peer sockets, `ss -ti`), CPU per record over all five servers.
4. more than one loop: herd as one process on CPU 0 and on CPUs 0-1, two herd processes sharing the
   client port with SO_REUSEPORT (the hidden `herd serve --reuseport`), alone and linked as neighbours,
   tokio current-thread and multi-thread on CPUs 0-1, and asyncio as one process and as two sharing the
   port (`herd_asyncio.py --reuseport`) on CPUs 0-1; the client stays on CPU 1, so on a 2-core machine
   everything on CPU 1 competes with it.
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
import threading
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
    # herd again, for the cache-miss cell only, with a Places pool as large as the cell's concurrency
    # (solo_argv writes its config).
    "herd-pool": lambda name, cfg: [HERD, "serve", name, "--config", cfg],
    "tokio": lambda name, cfg: [TOKIO, name, "--config", cfg],
    "tokio-ct": lambda name, cfg: [TOKIO, name, "--config", cfg, "--current-thread"],
    "asyncio": lambda name, cfg: [sys.executable, ASYNCIO, name, "--config", cfg],
}
# Concurrent WHATSATs in the cache-miss cell.
MISS_CONNS = 20
LABEL = {"herd": "herd (mio loop)", "herd-pool": f"herd (mio loop), places.pool_size {MISS_CONNS}",
         "tokio": "tokio multi-thread", "tokio-ct": "tokio current-thread", "asyncio": "Python asyncio",
         "redis": "redis-server (SET)"}

# The measurements, in the order they run; `--cells` (or $HERD_COMPARE_CELLS) picks some. "conformance":
# the checks and the WHATSAT bytes; "resources": start-up, idle connections, bytes per record, CPU per
# request (the table's last columns); "throughput": IAMAT at 1, 20, 200 connections; "whatsat": cache
# hits; "miss": cache misses; "alloc": heap allocations (perf); "flood": the five-server herd;
# "multicore": SO_REUSEPORT processes and worker threads.
CELLS = ("conformance", "resources", "throughput", "whatsat", "miss", "alloc", "flood", "multicore")

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


def spawn(argv, log, cpu=None, env=None):
    """Starts argv (pinned to `cpu` when given) with its output to `log` (a file, or subprocess.PIPE)."""
    if cpu is not None:
        argv = ["taskset", "-c", cpu] + argv
    p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         env=dict(os.environ, **{KEY_ENV: "local"}, **(env or {})))
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


_next_port = [32000 + (os.getpid() % 200) * 40]


def free_ports(n):
    """n consecutive loopback ports nobody holds now, outside herd's defaults, and never handed out
    before by this script (several configs are written before any of their servers binds)."""
    base = _next_port[0]
    while True:
        socks = []
        try:
            for port in range(base, base + n):
                s = socket.socket()
                s.bind(("127.0.0.1", port))
                socks.append(s)
            _next_port[0] = base + n
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


def wait_line(path, text, proc, limit=10.0):
    """Polls the output file `path` of `proc` until it holds `text`."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}: see {path}")
        with open(path, errors="replace") as f:
            if text in f.read():
                return
        time.sleep(0.001)
    raise RuntimeError(f"{proc.args}: no {text!r} in {path} after {limit} s")


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


def solo_argv(impl, tmp, places_port, ca, tag="solo"):
    base = free_ports(30)
    port = base + 20
    if impl == "redis":
        return port, ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                      "no", "--maxclients", "20000", "--daemonize", "no"]
    cfg = os.path.join(tmp, f"{impl}-{tag}.json")
    config = herd_config(cfg, base, places_port, ca, os.path.join(tmp, f"logs-{impl}-{tag}"), False)
    if impl == "herd-pool":
        config["places"]["pool_size"] = MISS_CONNS
        with open(cfg, "w") as f:
            json.dump(config, f, indent=1)
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

    p, port, r["gc_file"] = start_solo(impl, tmp, places_port, ca, log)
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


def start_solo(impl, tmp, places_port, ca, log):
    """A fresh Solo server on the server core, listening: (process, client port, GC file or None). The
    asyncio server runs under a wrapper that times every garbage collection (gc.callbacks) and writes
    the pauses to the file at SIGTERM; it costs nothing between collections."""
    port, argv = solo_argv(impl, tmp, places_port, ca)
    gc_file = None
    if impl == "asyncio":
        gc_file = os.path.join(tmp, "asyncio-gc.json")
        argv = [sys.executable, "-c", GC_WRAPPER, gc_file] + argv[1:]
    p = spawn(argv, log, SERVER_CPU)
    wait_port(port, p)
    time.sleep(0.2)
    return p, port, gc_file


GC_WRAPPER = r"""
import gc, json, runpy, signal, sys, time
out, script = sys.argv[1], sys.argv[2]
pauses, started = [], [0.0, 0.0]
def timed(phase, info):
    if phase == "start":
        started[:] = [time.perf_counter(), time.thread_time()]
    else:
        pauses.append((info["generation"], time.perf_counter() - started[0], time.thread_time() - started[1]))
gc.callbacks.append(timed)
def dump(*_):
    with open(out, "w") as f:
        json.dump(pauses, f)
    sys.exit(0)
signal.signal(signal.SIGTERM, dump)
sys.argv = sys.argv[2:]
runpy.run_path(script, run_name="__main__")
"""


def children_cpu_s():
    """CPU seconds (user + system) of every child this script has waited for: `herd load` runs."""
    import resource
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def cell(impl, proc, port, conns, o, workload=None, procs=None):
    """One throughput cell, with the share of a CPU the server got over the whole invocation (warm-up
    included): well under 100 % at a saturating load means it was starved by other jobs, or idle waiting
    for a client that was. `procs`: every process of the server (several with SO_REUSEPORT), each share
    reported; the client's share too (`herd load`'s own CPU time over the same wall time)."""
    if workload is None:
        workload = ["--workload", "raw", "--template", "SET k{i} v", "--expect", "+OK"] if impl == "redis" else []
    procs = procs or [proc]
    c0, t0, l0 = [cpu_ns(p.pid) for p in procs], time.monotonic(), children_cpu_s()
    # The servers' CPU time when the warm-up ends (herd load measures from then on), read by a timer
    # thread: CPU per reply = CPU after it / replies, a figure that a busy machine moves far less than
    # the rate.
    at_measure = []
    timer = threading.Timer(o.warmup, lambda: at_measure.append(sum(cpu_ns(p.pid) for p in procs)))
    timer.start()
    res = load(port, *workload, "--connections", str(conns), "--duration", str(o.duration), "--warmup",
               str(o.warmup))
    timer.join()
    wall = time.monotonic() - t0
    c1 = [cpu_ns(p.pid) for p in procs]
    shares = [(c - c_) / 1e9 / wall * 100 for c, c_ in zip(c1, c0)]
    client = (children_cpu_s() - l0) / wall * 100
    per_reply = (sum(c1) - at_measure[0]) / 1000 / res["replies"] if at_measure and res["replies"] else float("nan")
    lat = res["latency_us"]
    return (res["throughput_rps"], lat["p50"], lat["p99"], lat["p99.9"], res["errors_total"], sum(shares), shares,
            client, per_reply)


def miss_cell(proc, port, o, rnd, places_pid):
    """WHATSAT cache misses: every request asks a position and radius that no request before it asked,
    so each one costs the server an HTTPS request to the local Places service. `herd load --workload
    whatsat` seeds client{k} (k < N) with one IAMAT each, at a position of its own (home(k) plus a
    random wander, to a millionth of a degree), then asks WHATSAT client0, client1, ... in turn. With
    --warmup 0, whatever a connection sends before the window opens (a request or two at most) is
    warm-up, and at most N less two per connection are measured, so no id is asked twice. The radius
    is new in every round (10.001 km, 10.002, ...) and unlike every other cell's: herd load's wander is
    the same sequence in every run, so a position may come back, but not with this radius.

    The server's and the Places service's CPU are sampled every 10 ms; the measured window is the last
    `duration_s` seconds before `herd load` exited (it exits as the window ends), which leaves the
    seeding IAMATs out. Returns the row's figures, the Places service's two columns last."""
    n = o.miss_clients
    samples, done = [], threading.Event()

    def sample():
        while not done.is_set():
            samples.append((time.monotonic(), cpu_ns(proc.pid), cpu_ns(places_pid)))
            done.wait(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0, l0 = time.monotonic(), children_cpu_s()
    res = load(port, "--workload", "whatsat", "--clients", str(n), "--radius", f"10.{rnd + 1:03d}", "--bound",
               "5", "--connections", str(MISS_CONNS), "--warmup", "0", "--requests", str(n - 2 * MISS_CONNS),
               "--duration", str(o.miss_duration))
    t1 = time.monotonic()
    done.set()
    sampler.join()
    samples.append((t1, cpu_ns(proc.pid), cpu_ns(places_pid)))

    def at(t, i):
        """CPU ns of column i at instant t, linear between the samples either side."""
        for (ta, *a), (tb, *b) in zip(samples, samples[1:]):
            if ta <= t <= tb:
                return a[i] + (b[i] - a[i]) * ((t - ta) / (tb - ta) if tb > ta else 1)
        return samples[0][1 + i]

    window = res["duration_s"]
    start = max(t0, t1 - window)
    server_ns, places_ns = (at(t1, i) - at(start, i) for i in (0, 1))
    replies = max(1, res["replies"])
    lat = res["latency_us"]
    client = (children_cpu_s() - l0) / (t1 - t0) * 100
    return (res["throughput_rps"], lat["p50"], lat["p99"], lat["p99.9"], res["errors_total"],
            server_ns / 1e9 / window * 100 if window else 0, [], client, server_ns / 1000 / replies,
            places_ns / 1000 / replies, places_ns / 1e9 / window * 100 if window else 0, res["replies"])


def gc_pauses(path):
    """From GC_WRAPPER's file: collections by generation, the longest pause in wall time and in the
    thread's CPU time (wall time also counts any preemption during the collection), and the CPU total."""
    try:
        with open(path) as f:
            pauses = json.load(f)
    except (OSError, ValueError):
        return None
    return {"count": len(pauses), "by_gen": [sum(1 for g, _, _ in pauses if g == k) for k in range(3)],
            "max_wall_ms": max((w for _, w, _ in pauses), default=0) * 1000,
            "max_cpu_ms": max((c for _, _, c in pauses), default=0) * 1000,
            "cpu_ms": sum(c for _, _, c in pauses) * 1000}


# ----- heap allocations per request -----

ALLOC_FUNCS = ("malloc", "realloc", "calloc")


def add_malloc_probes():
    """uprobes on libc's malloc, realloc and calloc (`perf probe`, needs root): returns the ones this run
    added (to remove at the end), or None when perf cannot place them."""
    if not shutil.which("perf"):
        return None
    libc = re.search(r"libc\.so\.6 => (\S+)", subprocess.run(["ldd", HERD], capture_output=True, text=True).stdout)
    if not libc:
        return None
    have = subprocess.run(["perf", "probe", "-l"], capture_output=True, text=True).stdout
    added = []
    for f in ALLOC_FUNCS:
        if f"probe_libc:{f} " in have:
            continue
        if subprocess.run(["perf", "probe", "-q", "-x", libc[1], "--add", f], capture_output=True).returncode != 0:
            remove_malloc_probes(added)
            return None
        added.append(f)
    atexit.register(remove_malloc_probes, list(added))
    return added


def remove_malloc_probes(added):
    for f in added:
        subprocess.run(["perf", "probe", "-q", "-d", f"probe_libc:{f}"], capture_output=True)
    added.clear()


def allocations(impl, tmp, places_port, ca, o):
    """Calls to libc's malloc + realloc + calloc per IAMAT (perf stat on the uprobes, every thread of a
    fresh server) over o.cpu_requests IAMAT updates at 20 connections, after 5,000 that create the ids
    and grow the buffers. Python runs with PYTHONMALLOC=malloc so that every object allocation goes to
    libc (its own small-object allocator would hide most of them)."""
    port, argv = solo_argv(impl, tmp, places_port, ca, "alloc")
    log = open(os.path.join(tmp, f"{impl}-alloc.log"), "w")
    p = spawn(argv, log, SERVER_CPU, {"PYTHONMALLOC": "malloc"} if impl == "asyncio" else None)
    try:
        wait_port(port, p)
        load(port, "--workload", "iamat", "--connections", "20", "--requests", "5000", "--warmup", "0")
        out = os.path.join(tmp, f"{impl}-alloc.perf")
        events = ",".join(f"probe_libc:{f}" for f in ALLOC_FUNCS)
        perf = subprocess.Popen(["perf", "stat", "-x,", "-o", out, "-e", events, "-p", str(p.pid)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(perf)
        time.sleep(0.3)  # perf attached
        r = load(port, "--workload", "iamat", "--connections", "20", "--requests", str(o.cpu_requests),
                 "--warmup", "0")
        perf.send_signal(signal.SIGINT)
        perf.wait(10)
        with open(out) as f:
            calls = sum(int(x.split(",")[0]) for x in f if x.split(",")[0].isdigit())
        return calls / max(1, r["replies"])
    finally:
        stop(p)
        log.close()


# ----- flooding through a five-server herd -----

# Every IAMAT of the flooding cell: a new client id each time (so every one is stored and flooded), one
# location, an old fixed time, so every AT line's length is known from its counter alone.
FLOOD_TIME = 1764870000.5
FLOOD_TEMPLATE = "IAMAT f{i} +34.068930-118.445127 1764870000.5"


def flood_line_bytes(n, server="Bailey"):
    """Bytes of the AT lines (with LF) that the first n requests of FLOOD_TEMPLATE make `server` store."""
    diff = len(str(int(time.time() - FLOOD_TIME))) + 10  # seconds, '.', nine digits
    fixed = len(f"AT {server} + f +34.068930-118.445127 1764870000.5\n") + diff
    return sum(fixed + len(str(i)) for i in range(n))


def peer_bytes_received(peer_ports):
    """Bytes the kernel has received on every established socket whose local port is a peer port: the
    accepting side of every peer link, whatever the implementation (`ss -ti`)."""
    filt = " or ".join(f"sport = :{p}" for p in peer_ports)
    out = subprocess.run(["ss", "-tinH", "state", "established", f"( {filt} )"], capture_output=True,
                         text=True).stdout
    return sum(int(x) for x in re.findall(r"bytes_received:(\d+)", out))


def ask_until_known(port, client, deadline):
    """WHATSAT `client` 10 1 until the server answers with its AT line; the instant it did, or None."""
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(f"WHATSAT {client} 10 1\n".encode())
                s.shutdown(socket.SHUT_WR)
                got = b""
                while chunk := s.recv(65536):
                    got += chunk
            if got.startswith(b"AT "):
                return time.monotonic()
        except OSError:
            pass
        time.sleep(0.002)
    return None


def iamat_now(port, client):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"IAMAT {client} +34.068930-118.445127 {time.time():.9f}\n".encode())
        s.recv(4096)


def flood(impl, tmp, places_port, ca, o):
    """The 5-server herd of config/herd.json, every server on the server core: o.flood_records IAMATs for
    new ids at Bailey (20 connections, closed loop), then one more (the sentinel) once they are answered,
    until every other server knows the sentinel. Records flow over each link in order, so the sentinel
    arriving means every record before it did. Returns the figures of the flooding table."""
    base = free_ports(20)
    cfg = os.path.join(tmp, f"{impl}-flood.json")
    logs = os.path.join(tmp, f"logs-{impl}-flood")
    config = herd_config(cfg, base, places_port, ca, logs, True)
    log = open(os.path.join(tmp, f"{impl}-flood.log"), "w")
    servers = config["servers"]
    ps = [spawn(IMPLS[impl](s["name"], cfg), log, SERVER_CPU) for s in servers]
    try:
        for s, p in zip(servers, ps):
            wait_port(s["port"], p)
        port = {s["name"]: s["port"] for s in servers}
        others = [port[n] for n in port if n != "Bailey"]
        # A first record seen everywhere: the links are up, and each server has cached the Places answer
        # for the location every record below has, so the sentinel's WHATSAT asks nobody.
        iamat_now(port["Bailey"], "fwarm")
        if None in [ask_until_known(p, "fwarm", time.monotonic() + 20) for p in others]:
            raise RuntimeError(f"{impl}: the warm-up record never reached every server")
        time.sleep(0.3)  # every link up: the comparison servers redial every 100 ms
        peer_ports = [s["peer_port"] for s in servers]
        b0, c0, t0 = peer_bytes_received(peer_ports), sum(cpu_ns(p.pid) for p in ps), time.monotonic()
        res = load(port["Bailey"], "--workload", "raw", "--template", FLOOD_TEMPLATE, "--expect", "AT ",
                   "--connections", "20", "--requests", str(o.flood_records), "--warmup", "0")
        iamat_now(port["Bailey"], "fsentinel")
        seen = [ask_until_known(p, "fsentinel", time.monotonic() + 300) for p in others]
        if None in seen:
            raise RuntimeError(f"{impl}: the sentinel never reached every server")
        t1, c1 = max(seen), sum(cpu_ns(p.pid) for p in ps)
        # Late duplicates (flooding sends a record on to neighbours that already have it): wait until no
        # more bytes arrive.
        b1 = peer_bytes_received(peer_ports)
        for _ in range(100):
            time.sleep(0.05)
            b = peer_bytes_received(peer_ports)
            if b == b1:
                break
            b1 = b
        n = res["replies"] + res["errors_total"]
    finally:
        for p in ps:
            stop(p)
        log.close()
    own = None
    if impl == "herd":  # herd's own count, from the counters each server logs as it stops
        own = 0
        for s in servers:
            try:
                text = open(os.path.join(logs, f"{s['name']}.log"), errors="replace").read()
                own += int(re.findall(r"stop: .*?\breceived=(\d+)", text)[-1])
            except (OSError, IndexError):
                own = None
                break
    return {
        "records": n, "entry_rps": res["throughput_rps"], "errors": res["errors_total"], "seconds": t1 - t0,
        "through": n / (t1 - t0), "per_record": (b1 - b0) / flood_line_bytes(n), "cpu_us": (c1 - c0) / 1000 / n,
        "own": None if own is None else own / n, "servers": len(servers), "links": len(config["links"]),
    }


# ----- more than one loop: SO_REUSEPORT, and tokio's worker threads -----

BOTH_CPUS = "0,1"


def shared_port_configs(tmp, places_port, ca, linked, tag="herd"):
    """Two servers A and B for one client port, one config each (a config may not give two servers one
    port, so each names the other with a port nobody uses). `linked`: A and B are neighbours, so each
    floods its records to the other and both end up with every record."""
    base = free_ports(10)
    port = base
    paths = []
    for me in ("A", "B"):
        servers = [{"name": n, "host": "127.0.0.1", "port": port if n == me else base + 1 + i,
                    "peer_port": base + 5 + i} for i, n in enumerate(("A", "B"))]
        config = {"servers": servers, "links": [["A", "B"]] if linked else [],
                  "places": {"api": "legacy", "url": f"https://127.0.0.1:{places_port}/maps/api/place/nearbysearch/"
                             "json", "key_env": KEY_ENV, "ca_file": ca},
                  "log_dir": os.path.join(tmp, f"logs-shared-{tag}-{'linked' if linked else 'alone'}"),
                  "limits": {"max_clients": 20000}}
        path = os.path.join(tmp, f"shared-{tag}-{'linked' if linked else 'alone'}-{me}.json")
        with open(path, "w") as f:
            json.dump(config, f)
        paths.append((me, path))
    return port, paths


HERD_FREE = "herd, 1 process, CPUs 0-1"
TOKIO_CT_FREE = "tokio current-thread, CPUs 0-1"
ASYNCIO_FREE = "Python asyncio, 1 process, CPUs 0-1"


def multicore_setups(tmp, places_port, ca, only):
    """(label, port, [process argvs], CPU list, anchor label) for each way of using more than one core.
    Each set-up is compared with one loop of its own kind free on CPUs 0-1 (its anchor): herd's with one
    herd process, tokio's worker threads with its current-thread runtime, asyncio's pair with one
    asyncio process. herd pinned to CPU 0, as in the main table, is there to show what the pinning did.
    Only the kinds in `only` (tokio's needs both runtimes)."""
    port1, herd1 = solo_argv("herd", tmp, places_port, ca, "multi-pinned")
    port_tk, tk = solo_argv("tokio", tmp, places_port, ca, "multi")
    port_ct, ct = solo_argv("tokio-ct", tmp, places_port, ca, "multi")
    alone, alone_cfgs = shared_port_configs(tmp, places_port, ca, False)
    linked, linked_cfgs = shared_port_configs(tmp, places_port, ca, True)
    port1b, herd1b = solo_argv("herd", tmp, places_port, ca, "multi-free")
    herd = [
        ("herd, 1 process, CPU 0", port1, [herd1], SERVER_CPU, HERD_FREE),
        (HERD_FREE, port1b, [herd1b], BOTH_CPUS, HERD_FREE),
        ("herd, 2 processes, SO_REUSEPORT, not linked", alone,
         [[HERD, "serve", n, "--config", c, "--reuseport"] for n, c in alone_cfgs], BOTH_CPUS, HERD_FREE),
        ("herd, 2 processes, SO_REUSEPORT, linked", linked,
         [[HERD, "serve", n, "--config", c, "--reuseport"] for n, c in linked_cfgs], BOTH_CPUS, HERD_FREE),
    ]
    tokio = [
        (TOKIO_CT_FREE, port_ct, [ct], BOTH_CPUS, TOKIO_CT_FREE),
        ("tokio multi-thread (2 workers), CPUs 0-1", port_tk, [tk], BOTH_CPUS, TOKIO_CT_FREE),
    ]
    setups = (herd if "herd" in only else []) + (tokio if "tokio" in only and "tokio-ct" in only else [])
    if "asyncio" in only:
        # The GIL lets one thread run Python at a time, so asyncio's second loop is a second process:
        # the same two-process set-up as herd's, each with its own records.
        port_py, py = solo_argv("asyncio", tmp, places_port, ca, "multi")
        py_port, py_cfgs = shared_port_configs(tmp, places_port, ca, False, "asyncio")
        setups += [
            (ASYNCIO_FREE, port_py, [py], BOTH_CPUS, ASYNCIO_FREE),
            ("Python asyncio, 2 processes, SO_REUSEPORT, not linked", py_port,
             [[sys.executable, ASYNCIO, n, "--config", c, "--reuseport"] for n, c in py_cfgs], BOTH_CPUS,
             ASYNCIO_FREE),
        ]
    return setups


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


# What `herd serve` runs, below src/: the server, and the modules it uses that the other two also need
# (protocol, records, config, Places requests and answers, HTTP framing, Google-style JSON).
HERD_DIRS = ["src/server", "src/record", "src/config"]
HERD_FILES = ["src/protocol.rs", "src/record.rs", "src/places.rs", "src/http.rs", "src/gjson.rs", "src/route.rs"]
# Files (or directories, by prefix) of features the comparison servers do not have: the journal, the admin
# port and its guard, peer TLS and the herd secret, the log file, heartbeats, the OFF/ACK delta sync,
# admission limits, record retention (the eviction heap), propagation along shortest-path trees (route.rs,
# the peer frames; the other two flood every link). Mixed files (a state machine that also checks
# limits, the Places client that also coalesces) stay in the like-for-like count whole.
HERD_ONLY = ["src/server/journal", "src/server/conn/admin.rs", "src/server/admin_auth.rs", "src/server/auth.rs",
             "src/server/peer_tls.rs", "src/server/log.rs", "src/server/heartbeat.rs",
             "src/server/conn/peer/liveness.rs", "src/server/conn/peer/sync.rs", "src/server/admission.rs",
             "src/record/order.rs", "src/route.rs", "src/server/conn/peer/frame.rs"]


def rust_files():
    """Every .rs file of HERD_DIRS (recursively) and HERD_FILES that exists, test-only files left out."""
    out = [f for f in HERD_FILES if os.path.isfile(os.path.join(ROOT, f))]
    for d in HERD_DIRS:
        for dirpath, _, files in os.walk(os.path.join(ROOT, d)):
            out += [os.path.relpath(os.path.join(dirpath, f), ROOT) for f in files
                    if f.endswith(".rs") and f != "tests.rs"]
    return sorted(out)


def sizes_and_lines():
    herd_server = rust_files()
    herd_same = [f for f in herd_server if not any(f == x or f.startswith(x + "/") for x in HERD_ONLY)]
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
                 f"{len(herd_server)} files: src/server/, src/record/, src/config/, "
                 f"{', '.join(os.path.basename(f) for f in HERD_FILES)}; without the features the others lack "
                 f"({len(herd_same)} files, measure.py's HERD_ONLY): "
                 f"{sum(code_lines(os.path.join(ROOT, f)) for f in herd_same):,}"),
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
    ap.add_argument("--no-multicore", action="store_true", help="skip the SO_REUSEPORT / worker-thread cells")
    ap.add_argument("--cells", default=os.environ.get("HERD_COMPARE_CELLS", ",".join(CELLS)),
                    help=f"which measurements to run, comma-separated from {','.join(CELLS)} (default: all, "
                    "or $HERD_COMPARE_CELLS)")
    ap.add_argument("--rounds", type=int, dest="set_rounds", default=None,
                    help="throughput rounds (median reported); default 1 with --quick, 3 without")
    o = ap.parse_args()
    o.duration, o.warmup, o.starts, o.rounds = (3, 1, 3, 1) if o.quick else (10, 2, 7, 3)
    o.rounds = o.set_rounds or o.rounds
    o.records, o.cpu_requests = (30_000, 20_000) if o.quick else (200_000, 100_000)
    o.flood_records = 20_000 if o.quick else 100_000
    o.idle = 10_000
    o.miss_clients, o.miss_duration = (10_000, 3) if o.quick else (30_000, 10)
    only = o.only.split(",")
    cells = set(o.cells.split(","))
    if cells - set(CELLS):
        ap.error(f"unknown cells {','.join(sorted(cells - set(CELLS)))} (known: {','.join(CELLS)})")
    if o.no_multicore:
        cells.discard("multicore")
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
    # It stays up for the WHATSAT and flooding cells: drain what it prints, or a full pipe would stop it.
    # Its last line counts the connections and requests it served.
    places_end = []

    def drain():
        for x in places.stdout:
            places_log.write(x.decode(errors="replace"))
            if b"shut down:" in x:
                places_end.append(x.decode(errors="replace").split("shut down:", 1)[1].strip())

    places_drain = threading.Thread(target=drain, daemon=True)
    places_drain.start()

    conf, ref, results = {}, None, {}
    for impl in [i for i in IMPLS if i in only and "conformance" in cells]:
        print(f"== {impl}: conformance", file=sys.stderr)
        ok, got = conformance(impl, tmp, places_port, ca, ref)
        if impl == "herd":
            ref = got
        same = "-" if ref is None else ("same bytes as herd" if got == ref else "DIFFERS from herd")
        conf[impl] = ("pass" if ok else "FAIL", same)

    running = {}
    kinds = [k for k in (1, 20, 200) if "throughput" in cells] + [k for k in ("whatsat", "miss") if k in cells]
    for impl in [i for i in list(IMPLS) + ["redis"] if i in only]:
        if impl == "redis" and not shutil.which("redis-server"):
            print("!! redis-server not installed: its row is skipped", file=sys.stderr)
            continue
        if "resources" in cells:
            print(f"== {impl}: start-up, idle connections, records, CPU per request", file=sys.stderr)
            results[impl], proc, port = resources(impl, tmp, places_port, ca, o)
        elif impl != "redis" or "throughput" in cells:
            results[impl] = {"cells": {}}
            if not kinds:
                continue
            log = open(os.path.join(tmp, f"{impl}-solo.log"), "w")
            proc, port, results[impl]["gc_file"] = start_solo(impl, tmp, places_port, ca, log)
        else:
            continue
        running[impl] = (proc, port)
    # The cache-miss cell also runs herd with a Places pool that keeps every connection its concurrent
    # misses open, as reqwest's does: config/herd.json's pool_size (4) keeps four idle and closes the
    # rest, and each one opened again costs a TLS handshake on both sides.
    if "miss" in cells and "herd" in running:
        log = open(os.path.join(tmp, "herd-pool-solo.log"), "w")
        results["herd-pool"] = {"cells": {}}
        proc, port, _ = start_solo("herd-pool", tmp, places_port, ca, log)
        running["herd-pool"] = (proc, port)

    # Throughput rounds: every server is up (idle ones cost nothing), and the cells of one connection
    # count run back to back across implementations, so a change in the machine's background load hits
    # them alike. The median round by throughput is reported. WHATSAT: 50 client ids, so after the first
    # 50 (in the warm-up) every answer comes from the server's own Places cache, cut to the bound and
    # written in Google's style; 20 connections.
    # Cache misses ("miss"): every WHATSAT asks a position and radius never asked before (miss_cell),
    # after the cells that fill the caches, so nothing they cached can be hit.
    whatsat = ["--workload", "whatsat", "--clients", "50", "--radius", "10", "--bound", "5"]
    rounds = {impl: {c: [] for c in kinds} for impl in running}
    for rnd in range(o.rounds):
        for conns in kinds:
            for impl, (proc, port) in running.items():
                if (conns in ("whatsat", "miss") and impl == "redis") or (conns != "miss" and impl == "herd-pool"):
                    continue
                print(f"== round {rnd + 1}/{o.rounds}: {impl} at {conns} connections", file=sys.stderr)
                if conns == "whatsat":
                    rounds[impl][conns].append(cell(impl, proc, port, 20, o, workload=whatsat))
                elif conns == "miss":
                    rounds[impl][conns].append(miss_cell(proc, port, o, rnd, places.pid))
                else:
                    rounds[impl][conns].append(cell(impl, proc, port, conns, o))
    for impl, (proc, port) in running.items():
        for conns, runs in rounds[impl].items():
            if runs:
                results[impl]["cells"][conns] = sorted(runs, key=lambda c: c[0])[len(runs) // 2]
        stop(proc)
        if results[impl].get("gc_file"):
            results[impl]["gc"] = gc_pauses(results[impl]["gc_file"])
    load_mid = os.getloadavg()

    # Heap allocations per request, where perf can count them.
    probes = add_malloc_probes() if "alloc" in cells else None
    for impl in [i for i in IMPLS if i in only]:
        if probes is not None:
            print(f"== {impl}: allocations per request", file=sys.stderr)
            results.setdefault(impl, {"cells": {}})["mallocs"] = allocations(impl, tmp, places_port, ca, o)
    if probes:
        remove_malloc_probes(probes)

    # Flooding through the five-server herd.
    floods = {}
    for impl in [i for i in IMPLS if i in only and "flood" in cells]:
        print(f"== {impl}: flooding through five servers", file=sys.stderr)
        floods[impl] = flood(impl, tmp, places_port, ca, o)
    stop(places)
    places_drain.join(5)

    # More than one loop. All set-ups up at once (idle ones cost nothing), cells interleaved by round.
    multi = []
    if "multicore" in cells:
        for k, (label, port, argvs, cpus, anchor) in enumerate(multicore_setups(tmp, places_port, ca, only)):
            ps = []
            for j, argv in enumerate(argvs):
                path = os.path.join(tmp, f"multicore-{k}-{j}.log")
                ps.append(spawn(argv, open(path, "w"), cpus))
                # Its own `listening` line: with SO_REUSEPORT a connect succeeds once either one listens.
                wait_line(path, " listening on ", ps[-1])
            multi.append((label, port, ps, cpus, anchor, {20: [], 200: []}))
        time.sleep(0.5)  # the linked pair's links up (redial within milliseconds; nothing to wait on)
        for rnd in range(o.rounds):
            for conns in (20, 200):
                for label, port, ps, cpus, _, runs in multi:
                    print(f"== round {rnd + 1}/{o.rounds}: {label} at {conns} connections", file=sys.stderr)
                    runs[conns].append(cell("herd", ps[0], port, conns, o, procs=ps))
        for _, _, ps, _, _, _ in multi:
            for p in ps:
                stop(p)
    load_end = os.getloadavg()

    sl = sizes_and_lines() if "resources" in cells else {}
    cores = os.cpu_count()
    lines = [
        f"Commit measured: {git_commit()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"{'--quick' if o.quick else 'full'} run; {cores} cores; servers pinned to CPU {SERVER_CPU}, "
        f"every client (herd load, idle-connection holder) to CPU {LOAD_CPU}, except where a table says "
        f"otherwise; kernel {os.uname().release}; Python {sys.version.split()[0]}. Load average (1 min) "
        f"{load_start[0]:.1f} at the start, {load_mid[0]:.1f} after the throughput rounds, {load_end[0]:.1f} at "
        "the end: other jobs share these cores, so compare ratios within this run, not absolute figures "
        "across runs." + ("" if cells == set(CELLS) else f" Cells run: {', '.join(c for c in CELLS if c in cells)}."),
    ]
    throughput = [
        "",
        f"Throughput: `herd load` closed loop, depth 1, {o.duration} s measured after {o.warmup} s warm-up, "
        f"median of {o.rounds} round(s) run back to back across implementations; IAMAT over 1000 client ids "
        "(redis: `SET k{i} v`), one server with no neighbours. Latency in µs. Server CPU %: the server's "
        "on-CPU time over the cell's wall time (warm-up included); a saturated server that got the whole "
        "core shows about 100. Server CPU µs/reply: the server's on-CPU time (all threads) from the end of the "
        "warm-up to the end of the cell, over the replies measured. Client CPU %: `herd load`'s own.",
        "",
        "| implementation | conns | req/s | p50 | p99 | p99.9 | errors | server CPU % | server CPU µs/reply | "
        "client CPU % | req/s vs redis |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def row(label, conns, c, ratio):
        rps, p50, p99, p999, err, share, shares, client, per_reply = c
        share = f"{share:.0f}" + (f" ({' + '.join(f'{x:.0f}' for x in shares)})" if len(shares) > 1 else "")
        if rps == 0:  # not one reply in the measured window, and too short for herd load's time-out
            return (f"| {label} | {conns} | 0: no reply in the window | - | - | - | {err} | {share} | - | "
                    f"{client:.0f} | - |")
        return (f"| {label} | {conns} | {rps:,.0f} | {p50:.0f} | {p99:.0f} | {p999:.0f} | {err} | {share} | "
                f"{per_reply:.1f} | {client:.0f} | {ratio} |")

    if "throughput" in cells and results:
        lines += throughput
    for impl, r in results.items():
        for conns in (1, 20, 200):
            c = r["cells"].get(conns)
            if c is None:
                continue
            red = results.get("redis", {}).get("cells", {}).get(conns)
            lines.append(row(LABEL[impl], conns, c, f"{c[0] / red[0]:.2f}" if red and red[0] else "-"))
    if "whatsat" in cells and results:
        lines += [
            "",
            "WHATSAT: `herd load --workload whatsat --clients 50 --radius 10 --bound 5`, 20 connections, same cell "
            "length and rounds; every implementation asks the same local Places service (`herd places`, HTTPS) "
            "through its own client and cache, so after the first request per client id (in the warm-up) every "
            "answer is a cache hit: the cost measured is the cached answer cut to the bound and written in "
            "Google's style (herd's WHATSAT bytes are checked equal above).",
            "",
            "| implementation | conns | WHATSAT/s | p50 | p99 | p99.9 | errors | server CPU % | server CPU µs/reply | "
            "client CPU % | vs herd |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
    herd_w = results.get("herd", {}).get("cells", {}).get("whatsat")
    for impl, r in results.items():
        c = r["cells"].get("whatsat")
        if c:
            lines.append(row(LABEL[impl], 20, c, f"{c[0] / herd_w[0]:.2f}" if herd_w and herd_w[0] else "-"))
    if "miss" in cells and results:
        pool = json.load(open(os.path.join(ROOT, "config/herd.json")))["places"].get("pool_size", 4)
        lines += [
            "",
            f"WHATSAT cache misses: `herd load --workload whatsat --clients {o.miss_clients} --radius 10.00R "
            f"--bound 5 --connections 20 --warmup 0 --requests {o.miss_clients - 40} --duration "
            f"{o.miss_duration}` in round R, same rounds, median round. Every measured WHATSAT asks about a client "
            "id of its own, seeded by one IAMAT at a position of its own before the window opens, with a radius "
            "that no earlier request asked, so every reply waits for an HTTPS request to the local Places "
            f"service: herd's over its keep-alive pool, as config/herd.json sets it (pool_size {pool}: at most "
            f"{4 * pool} connections, {pool} kept idle for 30 s, the others for a second after their last "
            "answer, so a steady burst reuses them), and again with pool_size "
            f"{MISS_CONNS}, which keeps every connection the {MISS_CONNS} concurrent misses open, as reqwest's "
            "pool does for tokio; asyncio's over a new TLS connection each (standard library only, one TLS "
            "context for all). Server CPU: the server's on-CPU time (all threads) over "
            "the measured window (the seeding IAMATs left out), as a share of the window and per reply. Places "
            "service: `herd places`, a process of its own (under `herd up` too) on CPU 1 with the client, "
            "single-threaded, no cache; its on-CPU time over the same window, in no server's figure: the cost "
            "each implementation's way of asking puts on the upstream. Client CPU % over the whole invocation "
            "(seeding included).",
            "",
            "| implementation | conns | WHATSAT/s | p50 | p99 | p99.9 | errors | server CPU % | server CPU µs/reply | "
            "Places service CPU % | Places service CPU µs/reply | client CPU % | vs herd |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        herd_m = results.get("herd", {}).get("cells", {}).get("miss")
        for impl in [i for i in ("herd", "herd-pool", "tokio", "tokio-ct", "asyncio") if i in results]:
            c = results[impl]["cells"].get("miss")
            if c:
                rps, p50, p99, p999, err, share, _, client, per_reply, up_reply, up_share, _ = c
                ratio = f"{rps / herd_m[0]:.2f}" if herd_m and herd_m[0] else "-"
                lines.append(f"| {LABEL[impl]} | 20 | {rps:,.0f} | {p50:.0f} | {p99:.0f} | {p999:.0f} | {err} | "
                             f"{share:.0f} | {per_reply:.1f} | {up_share:.0f} | {up_reply:.1f} | {client:.0f} | "
                             f"{ratio} |")
    if places_end and cells & {"conformance", "whatsat", "miss"}:
        lines += ["", f"The Places service at the end of the run: {places_end[0]} (every request of the run: the "
                  "conformance checks, the WHATSAT bytes, the first request per id of the cache-hit cells, every "
                  "miss)."]
    if floods:
        f0 = next(iter(floods.values()))
        lines += [
            "",
            f"Flooding: the five servers and {f0['links']} links of config/herd.json, all on CPU {SERVER_CPU}, "
            f"plaintext links; {o.flood_records:,} IAMATs for new client ids at Bailey (`herd load --workload raw "
            f"--template '{FLOOD_TEMPLATE}'`, 20 connections), then a sentinel IAMAT once they are answered; "
            "'through' = records / time until every other server knows the sentinel (WHATSAT polled every "
            "2 ms). Received per record: bytes received on the accepting side of every peer link (`ss -ti`, "
            "kernel counters, the same for all three) over the bytes of the records' AT lines: one copy to "
            f"each other server is {f0['servers'] - 1}; flooding every link sends "
            f"{2 * f0['links'] - (f0['servers'] - 1)} (each server forwards a new record to every neighbour but "
            "the one it came from). herd's own count: the `received=` counters its servers log as they stop, "
            "over records. CPU: all five servers' on-CPU time over records.",
            "",
            "| implementation | records | IAMAT/s at Bailey | seconds until all know the last | records/s through the herd "
            "| received per record (kernel bytes) | herd's own count | CPU µs per record (5 servers) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for impl, f in floods.items():
            own = f"{f['own']:.2f}" if f["own"] is not None else "-"
            lines.append(f"| {LABEL[impl]} | {f['records']:,} | {f['entry_rps']:,.0f} | {f['seconds']:.2f} | "
                         f"{f['through']:,.0f} | {f['per_record']:.2f} | {own} | {f['cpu_us']:.1f} |")
    if multi:
        lines += [
            "",
            f"More than one loop: the same IAMAT cells at 20 and 200 connections, `herd load` on CPU {LOAD_CPU} "
            f"as always, the servers on CPU {SERVER_CPU} or free on CPUs {BOTH_CPUS}. **This machine has "
            f"{cores} cores: a server process or worker thread on CPU 1 competes with the client for it**, so "
            "these cells show what a second loop costs and gains here, not what it would give with a core of "
            "its own. 'not linked': each process keeps its own records (a WHATSAT may reach the other one); "
            "'linked': the two are neighbours and flood every record to each other. Server CPU %: the sum "
            "over the processes, each process's share in brackets. 'vs one loop, free': the rate over that of one "
            f"loop of the same kind free on CPUs {BOTH_CPUS} in this table (herd's rows over one herd process, "
            "tokio's worker threads over its current-thread runtime, asyncio's pair over one asyncio "
            f"process), not over the process pinned to CPU {SERVER_CPU}, whose rate says as much about that "
            "CPU's other tenants as about the server.",
            "",
            "| set-up | conns | req/s | p50 | p99 | p99.9 | errors | server CPU % | server CPU µs/reply | client CPU % "
            "| vs one loop, free |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        median = {label: {c: sorted(runs[c], key=lambda x: x[0])[len(runs[c]) // 2] for c in (20, 200)}
                  for label, _, _, _, _, runs in multi}
        for label, _, _, _, anchor, _ in multi:
            for conns in (20, 200):
                c, a = median[label][conns], median[anchor][conns]
                lines.append(row(label, conns, c, f"{c[0] / a[0]:.2f}" if a[0] else "-"))
    resources_text = [
        "",
        f"Resources: CPU per request = server on-CPU time (all threads, /proc/PID/task/*/schedstat) over "
        f"{o.cpu_requests:,} IAMAT updates at 20 connections / replies; idle = VmRSS growth with {o.idle:,} "
        f"connections open (each answered one command); per record = VmRSS growth over {o.records:,} IAMATs "
        "for new client ids (redis: SET of an AT-line-sized value under a new key) / count; start-up = exec to "
        f"first accepted connect, median of {o.starts}; lines = non-blank, non-comment lines before any "
        "`#[cfg(test)]` (Python: without docstrings), counted by measure.py's code_lines; heap allocations = "
        "calls to libc malloc + realloc + calloc (perf uprobes, all threads) over "
        f"{o.cpu_requests:,} IAMAT updates at 20 connections on a fresh warmed-up server / replies, Python with "
        "PYTHONMALLOC=malloc so that its object allocator goes through libc too.",
        "",
        "| implementation | conformance | WHATSAT bytes | CPU µs/req | heap allocations per IAMAT | RSS at start | "
        "RSS +10k idle conns (per conn) | bytes/record | start-up ms | size | lines of code |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    def mallocs(impl, r):
        if "mallocs" in r:
            return f"{r['mallocs']:.3f}"
        if impl == "redis":
            return "- (jemalloc, linked in: not counted)"
        return "- (perf probe unavailable)"

    if "resources" in cells:
        lines += resources_text
    for impl, r in results.items():
        if impl == "herd-pool":  # the cache-miss cell only
            continue
        if "resources" not in cells:
            if "mallocs" in r:
                lines += ["", f"{LABEL[impl]}: {r['mallocs']:.3f} heap allocations per IAMAT (libc malloc + "
                          f"realloc + calloc, perf uprobes, over {o.cpu_requests:,} IAMAT updates)."]
            if impl in conf:
                lines += ["", f"{LABEL[impl]}: conformance {conf[impl][0]}, WHATSAT bytes {conf[impl][1]}."]
            continue
        c = conf.get(impl, ("-", "-"))
        size, loc, files = sl["tokio" if impl.startswith("tokio") else impl]
        loc_text = f"{loc:,} ({files})" if loc else "-"
        errs = r["errors"]
        lines.append(
            f"| {LABEL[impl]} | {c[0]} | {c[1]} | {r['cpu_us']:.1f}{' (errors %d)' % errs if errs else ''} | "
            f"{mallocs(impl, r)} | {r['rss0_kb'] / 1024:.1f} MiB | {r['idle_kb'] / 1024:.1f} MiB ({r['idle_kb'] * 1024 / o.idle:,.0f} B) | "
            f"{r['record_b']:.0f} | {r['start_ms']:.1f} | {size} | {loc_text} |")
    gc = results.get("asyncio", {}).get("gc")
    if gc:
        g = gc["by_gen"]
        lines += ["", "Python's garbage collector in the asyncio server, over the phases above that ran on it "
                  "(records, CPU per request, throughput, WHATSAT hits and misses; gc.callbacks; wall time by "
                  f"perf_counter, CPU time by thread_time): {gc['count']:,} collections ({g[0]:,} of generation "
                  f"0, {g[1]:,} of 1, {g[2]:,} of 2); longest {gc['max_cpu_ms']:.1f} ms of CPU "
                  f"({gc['max_wall_ms']:.1f} ms of wall time, which includes any preemption), {gc['cpu_ms']:.0f} ms "
                  "of CPU in all."]
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
