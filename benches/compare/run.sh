#!/usr/bin/env bash
# herd against the same protocol on tokio and on Python asyncio, with redis-server (SET) as the anchor:
# conformance of all three, then throughput and latency at 1/20/200 connections, WHATSAT (cache hits and
# cache misses against the local Places service), CPU per request, RSS at start, at 10,000 idle
# connections and per stored record, start-up time, size, lines of code, Python's GC pauses, flooding
# through a five-server herd (records/s, records received per record), and more than one loop
# (SO_REUSEPORT processes of herd and of asyncio, tokio's worker threads). Writes one markdown report
# (stdout, and FILE with --out FILE).
#
#     benches/compare/run.sh [--quick] [--rounds N] [--out FILE] [--only herd,tokio,tokio-ct,asyncio,redis]
#                            [--cells conformance,resources,throughput,whatsat,miss,alloc,flood,multicore]
#                            [--no-multicore]
#
# --only picks implementations, --cells (or $HERD_COMPARE_CELLS) measurements; both default to all.
# --quick (3 s cells, one round, 30k records): about 3 minutes on the 2-core machine, 6 with --rounds 3;
# the full run (10 s cells, 3 rounds, 200k records) about 25. Servers are pinned to CPU 0 and every client
# to CPU 1 (taskset), except the multi-loop cells. Builds herd and the tokio crate in release first and
# installs redis-server (and iproute2 for ss) with apt-get when missing. All ports are free loopback ports
# found at run time; every process started is killed at the end. See README.md beside this file.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cargo build --release -q --manifest-path "$root/Cargo.toml" --bin herd
cargo build --release -q --manifest-path "$here/tokio/Cargo.toml"
if ! command -v redis-server >/dev/null; then
    echo "installing redis-server (apt-get)" >&2
    apt-get install -y -q redis-server >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q redis-server >/dev/null; }
fi
if ! command -v ss >/dev/null; then
    echo "installing iproute2 for ss (apt-get)" >&2
    apt-get install -y -q iproute2 >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q iproute2 >/dev/null; }
fi
for tool in taskset strip python3 ss; do command -v $tool >/dev/null || { echo "needs $tool" >&2; exit 2; }; done
# 10,000 idle connections: the client holds them, the server accepts them.
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
[ "$(ulimit -n)" -ge 10100 ] || { echo "needs ulimit -n >= 10100 (hard limit $(ulimit -Hn))" >&2; exit 2; }
exec python3 "$here/measure.py" "$@"
