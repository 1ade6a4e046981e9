#!/usr/bin/env bash
# IAMAT on one herd server with a journal against redis-server SET with its append-only file, in the same
# fsync mode, driven by the same tool (herd load) with the same connection counts and depths; each server
# pinned to core 0 and the load to core 1. Also herd with `everysec` against herd without a journal.
# The journal and the AOF go to the same disk-backed directory (the filesystem type is printed: not tmpfs).
#
# ROUNDS interleaved rounds at 50 connections, depth 1 and 16, and the medians: the machine is shared
# and noisy, and so is its disk.
#
#     benches/journal-vs-redis.sh [ROUNDS] [SECONDS] [DIR]   (needs redis-server: apt-get install -y redis-server)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
secs=${2:-4}
base=${3:-/var/tmp}
cargo build --release -q
herd=target/release/herd
dir=$(mktemp -d "$base/herd-journal-bench.XXXXXX")
echo "filesystem of $dir: $(df -T "$dir" | awk 'NR==2 {print $2 " on " $1}')"
trap 'kill $(jobs -p) 2>/dev/null; for p in 16380 16381; do redis-cli -p $p shutdown nosave >/dev/null 2>&1 || true; done; rm -rf "$dir"' EXIT
conf() { # name port journal-json
    echo "{\"servers\": [{\"name\": \"$1\", \"port\": $2, \"peer_port\": $(($2 + 1))}], \"log_dir\": \"$dir/logs\"$3}" > "$dir/$1.json"
}
conf Always 31700 ", \"journal\": {\"dir\": \"$dir/j\", \"fsync\": \"always\"}"
conf Everysec 31710 ", \"journal\": {\"dir\": \"$dir/j\", \"fsync\": \"everysec\"}"
conf Plain 31720 ""
wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return; sleep 0.05; done; }
for s in Always Everysec Plain; do taskset -c 0 $herd serve $s --config "$dir/$s.json" >/dev/null 2>&1 & done
mkdir -p "$dir/ra" "$dir/re"
taskset -c 0 redis-server --port 16380 --bind 127.0.0.1 --save '' --appendonly yes --appendfsync always --dir "$dir/ra" --daemonize yes >/dev/null
taskset -c 0 redis-server --port 16381 --bind 127.0.0.1 --save '' --appendonly yes --appendfsync everysec --dir "$dir/re" --daemonize yes >/dev/null
for p in 31700 31710 31720 16380 16381; do wait_port $p; done
sleep 0.5
run() { # target extra-args...
    taskset -c 1 $herd load --target "127.0.0.1:$1" "${@:2}" --duration "$secs" --warmup 1 --json 2>/dev/null |
        python3 -c "import json,sys;r=json.load(sys.stdin);l=r['latency_us'];print('%.0f %.0f %.0f %d'%(r['throughput_rps'],l['p50'],l['p99'],r['errors_total']))"
}
redis() { run "$1" --workload raw --template 'SET k{i} v' --expect +OK "${@:2}"; }
results=$dir/results
echo
echo "Interleaved rounds at 50 connections (medians below): herd always, redis always, herd everysec, herd without a journal"
for depth in 1 16; do
    for round in $(seq "$rounds"); do
        read -r a ap50 ap99 aerr < <(run 31700 --connections 50 --depth $depth)
        read -r r rp50 rp99 rerr < <(redis 16380 --connections 50 --depth $depth)
        read -r e ep50 ep99 eerr < <(run 31710 --connections 50 --depth $depth)
        read -r n np50 np99 nerr < <(run 31720 --connections 50 --depth $depth)
        echo "depth $depth round $round: herd always $a ($ap50/$ap99 µs)  redis always $r ($rp50/$rp99 µs)  herd everysec $e  herd no journal $n"
        echo "$depth $a $r $e $n $ap50 $ap99 $rp50 $rp99" >> "$results"
        [ "$aerr$rerr$eerr$nerr" = "0000" ] || echo "errors: $aerr $rerr $eerr $nerr" >&2
    done
done
python3 - "$results" <<'PY'
import sys, statistics as st
rows = [list(map(float, l.split())) for l in open(sys.argv[1])]
print()
print("| depth | herd always IAMAT/s | p50/p99 µs | redis always SET/s | p50/p99 µs | herd/redis (median of rounds) | herd everysec | herd no journal | everysec/none (median of rounds) |")
print("|---|---|---|---|---|---|---|---|---|")
for d in (1, 16):
    r = [x for x in rows if x[0] == d]
    m = lambda i: st.median(x[i] for x in r)
    print(f"| {d} | {m(1):.0f} | {m(5):.0f}/{m(6):.0f} | {m(2):.0f} | {m(7):.0f}/{m(8):.0f} | {st.median(x[1]/x[2] for x in r):.2f} | {m(3):.0f} | {m(4):.0f} | {st.median(x[3]/x[4] for x in r):.2f} |")
PY
