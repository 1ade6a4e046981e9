#!/usr/bin/env bash
# Instructions per IAMAT under callgrind, for one or more herd binaries side by side.
#
# Each binary serves one server under valgrind --tool=callgrind twice, once for N1 and once for N2 IAMATs
# (10 connections, depth 1, from the first binary's `herd load`); the figure is
# (Ir at N2 - Ir at N1) / (N2 - N1), so start-up, shut-down and the load's warm-up cancel out.
# Instruction counts do not drift with the machine's load, unlike times: this is how a change to the hot
# path is shown to cost nothing (or what it costs) on a shared, noisy machine.
#
# Usage: benches/callgrind-iamat.sh BIN [BIN ...]      e.g. target/release/herd /tmp/herd-before
# Env:   N1 (default 1000), N2 (default 11000)
set -euo pipefail
N1=${N1:-1000}
N2=${N2:-11000}
[ $# -ge 1 ] || { echo "usage: $0 BIN [BIN ...]" >&2; exit 2; }
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 2; }
load_bin=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Total instructions of one run of BIN answering N IAMATs.
count() {
    local bin=$1 n=$2 port peer dir pid
    port=$(free_port); peer=$(free_port); dir=$(mktemp -d -p "$work")
    printf '{"servers": [{"name": "Solo", "port": %s, "peer_port": %s}], "log_dir": "%s/logs"}\n' \
        "$port" "$peer" "$dir" > "$dir/c.json"
    valgrind --tool=callgrind --callgrind-out-file="$dir/cg.out" "$bin" serve Solo --config "$dir/c.json" \
        > "$dir/out" 2> "$dir/err" &
    pid=$!
    for _ in $(seq 600); do grep -q listening "$dir/out" 2>/dev/null && break; sleep 0.1; done
    grep -q listening "$dir/out" || { echo "$bin did not start" >&2; kill $pid; exit 1; }
    "$load_bin" load --target "127.0.0.1:$port" --connections 10 --depth 1 --requests "$n" --warmup 0 \
        --fail-on-error > /dev/null 2>&1
    kill -TERM $pid; wait $pid || true
    grep -h "^summary:\|^totals:" "$dir/cg.out" | tail -1 | awk '{print $2}'
}

printf '%-40s %14s %14s %16s\n' binary "Ir@$N1" "Ir@$N2" "Ir per IAMAT"
for bin in "$@"; do
    a=$(count "$bin" "$N1"); b=$(count "$bin" "$N2")
    printf '%-40s %14s %14s %16s\n' "$bin" "$a" "$b" "$(( (b - a) / (N2 - N1) ))"
done
