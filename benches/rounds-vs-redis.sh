#!/usr/bin/env bash
# The issue-5 target, measured the way a noisy shared machine allows: ROUNDS interleaved rounds of
# herd IAMAT and redis SET (k{i} and one key) at 50 connections, depth 1 and 16, same tool, server on
# core 0 and load on core 1. Prints each round and the medians of the throughputs and of the ratios.
# A second herd server writes its log to /dev/null (its log file is a symlink there): the same
# formatting and hand-off, without the copy into the page cache, which shows what that copy costs when
# the writer thread shares the server's core.
#
#     benches/rounds-vs-redis.sh [ROUNDS] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
secs=${2:-4}
cargo build --release -q
herd=target/release/herd
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; redis-cli -p 16379 shutdown nosave >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
echo "{\"servers\": [{\"name\": \"Solo\", \"port\": 31500, \"peer_port\": 31501}], \"log_dir\": \"$dir/logs\"}" > "$dir/solo.json"
mkdir -p "$dir/logs-null"
ln -s /dev/null "$dir/logs-null/Solo.log"
echo "{\"servers\": [{\"name\": \"Solo\", \"port\": 31510, \"peer_port\": 31511}], \"log_dir\": \"$dir/logs-null\"}" > "$dir/null.json"
taskset -c 0 $herd serve Solo --config "$dir/solo.json" >/dev/null 2>&1 &
taskset -c 0 $herd serve Solo --config "$dir/null.json" >/dev/null 2>&1 &
taskset -c 0 redis-server --port 16379 --bind 127.0.0.1 --save '' --appendonly no --daemonize yes >/dev/null
sleep 0.5
tp() { taskset -c 1 $herd load "$@" --connections 50 --duration "$secs" --warmup 1 --json 2>/dev/null |
    python3 -c "import json,sys;print('%.0f'%json.load(sys.stdin)['throughput_rps'])"; }
results=$dir/results
for depth in 1 16; do
    for round in $(seq "$rounds"); do
        h=$(tp --target 127.0.0.1:31500 --depth $depth)
        r=$(tp --target 127.0.0.1:16379 --workload raw --template 'SET k{i} v' --expect +OK --depth $depth)
        o=$(tp --target 127.0.0.1:16379 --workload raw --template 'SET key v' --expect +OK --depth $depth)
        n=$(tp --target 127.0.0.1:31510 --depth $depth)
        echo "depth $depth round $round: herd $h  redis SET k{i} $r  redis SET key $o  herd, log to /dev/null $n"
        echo "$depth $h $r $o $n" >> "$results"
    done
done
python3 - "$results" <<'PY'
import sys, statistics as st
rows = [list(map(float, l.split())) for l in open(sys.argv[1])]
print("| depth | herd IAMAT/s (median) | redis SET k{i}/s | redis SET key/s | herd / SET k{i} (median of rounds) | herd / SET key | herd, log to /dev/null: IAMAT/s | its / SET key |")
print("|---|---|---|---|---|---|---|---|")
for d in (1, 16):
    r = [x for x in rows if x[0] == d]
    m = lambda i: st.median(x[i] for x in r)
    ratio = lambda i: st.median(x[1] / x[i] for x in r)
    null = st.median(x[4] / x[3] for x in r)
    print(f"| {d} | {m(1):.0f} | {m(2):.0f} | {m(3):.0f} | {ratio(2):.2f} | {ratio(3):.2f} | {m(4):.0f} | {null:.2f} |")
PY
