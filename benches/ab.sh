#!/usr/bin/env bash
# Two herd builds side by side: A and B each serve on core 0, `herd load` (from B) drives them in
# interleaved rounds from core 1, 50 connections, depth 1 and 16. Prints throughput, p99 and p99.9 per
# round and their medians. For before/after comparisons of a change:
#
#     git worktree add /tmp/before <commit> && (cd /tmp/before && cargo build --release)
#     benches/ab.sh /tmp/before/target/release/herd target/release/herd [ROUNDS] [SECONDS]
set -euo pipefail
a=$1
b=$2
rounds=${3:-5}
secs=${4:-4}
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$dir"' EXIT
echo "{\"servers\": [{\"name\": \"Solo\", \"port\": 31600, \"peer_port\": 31601}], \"log_dir\": \"$dir/logs-a\"}" > "$dir/a.json"
echo "{\"servers\": [{\"name\": \"Solo\", \"port\": 31610, \"peer_port\": 31611}], \"log_dir\": \"$dir/logs-b\"}" > "$dir/b.json"
taskset -c 0 "$a" serve Solo --config "$dir/a.json" >/dev/null 2>&1 &
taskset -c 0 "$b" serve Solo --config "$dir/b.json" >/dev/null 2>&1 &
sleep 0.5
tp() {
    taskset -c 1 "$b" load "$@" --connections 50 --duration "$secs" --warmup 1 --json 2>/dev/null |
        python3 -c "import json,sys;d=json.load(sys.stdin);l=d['latency_us'];print('%.0f %.0f %.0f'%(d['throughput_rps'],l['p99'],l['p99.9']))"
}
for depth in 1 16; do
    for round in $(seq "$rounds"); do
        x=$(tp --target 127.0.0.1:31600 --depth "$depth")
        y=$(tp --target 127.0.0.1:31610 --depth "$depth")
        echo "depth $depth round $round: A $x  B $y"
        echo "$depth $x $y" >> "$dir/results"
    done
done
python3 - "$dir/results" <<'PY'
import sys, statistics as st
rows = [list(map(float, l.split())) for l in open(sys.argv[1])]
print("| depth | A: IAMAT/s, p99, p99.9 µs (medians) | B | B / A throughput (median of rounds) |")
print("|---|---|---|---|")
for d in (1, 16):
    r = [x for x in rows if x[0] == d]
    m = lambda i: st.median(x[i] for x in r)
    print(f"| {d} | {m(1):.0f}, {m(2):.0f}, {m(3):.0f} | {m(4):.0f}, {m(5):.0f}, {m(6):.0f} | {st.median(x[4] / x[1] for x in r):.2f} |")
PY
