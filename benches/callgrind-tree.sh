#!/usr/bin/env bash
# Instructions per write at each server of the five-server herd (origin, tree forwarders, leaves), and at
# each redis-server of the primary-plus-four-replicas tree of benches/tree-vs-replicas.sh, under callgrind.
#
# Every server runs under valgrind --tool=callgrind, twice: once for N1 and once for N2 writes at Bailey
# (IAMAT over 1,000 ids, as in benches/tree-vs-replicas.sh) or at the primary (`SET k{i} v`), from
# `herd load` with CONNECTIONS connections at depth 1, then one fence write, waited for at every server;
# the figure per server is
# (Ir at N2 - Ir at N1) / (N2 - N1), so start-up, link-up, shut-down and the fence cancel out. On
# Bailey's tree Bona forwards to Clark and Campbell to Jaquez; Clark and Jaquez forward nothing.
# Instruction counts are user space only (system calls show as their count, not their kernel cost: see
# PROFILE=1 benches/tree-vs-replicas.sh) and do not drift with the machine's load. Under valgrind every
# server is ~50x slower, so loop turns batch more records than at full speed.
#
#     benches/callgrind-tree.sh [CONNECTIONS]        Env: N1 (default 1000), N2 (default 11000)
#     SYSTEMS=herd KEEP=/tmp/cg benches/callgrind-tree.sh    (herd only; keep each server's callgrind
#                                                             profile, for callgrind_annotate --inclusive=yes)
set -euo pipefail
cd "$(dirname "$0")/.."
conns=${1:-10}
N1=${N1:-1000}
N2=${N2:-11000}
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 2; }
cargo build --release -q
herd=target/release/herd
helper="python3 benches/tree_vs_replicas.py"
base=24400
rbase=24500
dir=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"' EXIT
$helper configs "$dir" $base
names=(Bailey Bona Campbell Clark Jaquez)
admins="$((base + 20)) $((base + 21)) $((base + 22)) $((base + 23)) $((base + 24))"
cg() { exec valgrind --tool=callgrind --callgrind-out-file="$dir/cg-$1.out" "${@:2}"; }
total_ir() { grep -h "^summary:\|^totals:" "$1" | tail -1 | awk '{print $2}'; }

herd_run() { # n: writes "Ir per server" to $dir/ir
    pids=()
    for n in "${names[@]}"; do
        cg "$n" $herd serve "$n" --config "$dir/plain.json" >/dev/null 2>"$dir/$n.err" &
        pids+=($!)
    done
    for _ in $(seq 1200); do [ "$(cat "$dir"/*.err | grep -c 'linked to')" -ge 12 ] && break; sleep 0.1; done
    [ "$(cat "$dir"/*.err | grep -c 'linked to')" -ge 12 ] || { echo "the herd did not link" >&2; exit 1; }
    $herd load --target 127.0.0.1:$base --workload iamat --clients 1000 --requests "$1" --connections "$conns" \
        --warmup 0 --timeout-ms 60000 --fail-on-error >/dev/null
    $helper fence herd $base $admins >/dev/null
    kill -TERM "${pids[@]}"
    wait "${pids[@]}" 2>/dev/null || true
    for n in "${names[@]}"; do total_ir "$dir/cg-$n.out"; done | paste -sd' ' >"$dir/ir"
    if [ -n "${KEEP:-}" ]; then
        mkdir -p "$KEEP"
        for n in "${names[@]}"; do cp "$dir/cg-$n.out" "$KEEP/herd-$1-$n.out"; done
    fi
    rm -rf "$dir"/logs "$dir"/*.err "$dir"/cg-*.out
}
redis_up() { redis-cli -p "$1" ping 2>/dev/null | grep -q PONG; }
redis_run() { # n
    pids=()
    local parent=(- 0 0 1 2)
    for i in 0 1 2 3 4; do
        local of=()
        [ "$i" -gt 0 ] && of=(--replicaof 127.0.0.1 $((rbase + ${parent[$i]})))
        cg "r$i" redis-server --port $((rbase + i)) --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
            --dir "$dir" --dbfilename "dump-$i.rdb" "${of[@]}" >"$dir/redis-$i.log" 2>&1 &
        pids+=($!)
    done
    for i in 0 1 2 3 4; do
        for _ in $(seq 1200); do redis_up $((rbase + i)) && break; sleep 0.1; done
    done
    for i in 1 2 3 4; do
        for _ in $(seq 1200); do
            redis-cli -p $((rbase + i)) info replication | grep -q 'master_link_status:up' && break
            sleep 0.1
        done
    done
    $herd load --target 127.0.0.1:$rbase --workload raw --template 'SET k{i} v' --expect +OK --requests "$1" \
        --connections "$conns" --warmup 0 --timeout-ms 60000 --fail-on-error >/dev/null
    $helper fence redis $rbase $((rbase + 1)) $((rbase + 2)) $((rbase + 3)) $((rbase + 4)) >/dev/null
    kill -TERM "${pids[@]}"
    wait "${pids[@]}" 2>/dev/null || true
    for i in 0 1 2 3 4; do total_ir "$dir/cg-r$i.out"; done | paste -sd' ' >"$dir/ir"
    rm -f "$dir"/cg-*.out "$dir"/dump-*.rdb
}

echo "commit $(git rev-parse --short HEAD); instructions per write, (Ir@$N2 - Ir@$N1) / $((N2 - N1)), $conns connections"
echo
echo "| system | origin | first hop (a) | first hop (b) | second hop (a) | second hop (b) | all five |"
echo "|---|---|---|---|---|---|---|"
for sys in ${SYSTEMS:-herd redis}; do
    ${sys}_run "$N1"; cp "$dir/ir" "$dir/ir1"
    ${sys}_run "$N2"; cp "$dir/ir" "$dir/ir2"
    python3 - "$sys" "$dir/ir1" "$dir/ir2" "$((N2 - N1))" <<'PY'
import sys
a = list(map(int, open(sys.argv[2]).read().split()))
b = list(map(int, open(sys.argv[3]).read().split()))
n = int(sys.argv[4])
per = [(y - x) / n for x, y in zip(a, b)]
label = {"herd": ["Bailey", "Bona", "Campbell", "Clark", "Jaquez"],
         "redis": ["primary", "replica", "replica", "replica of replica", "replica of replica"]}[sys.argv[1]]
print(f"| {sys.argv[1]} | " + " | ".join(f"{p:,.0f} ({l})" for p, l in zip(per, label)) + f" | {sum(per):,.0f} |")
PY
done
