#!/usr/bin/env bash
# IAMAT on one herd server with a journal against redis-server SET with its append-only file, in the same
# fsync mode, driven by the same tool (herd load) with the same connection counts and depths; each server
# pinned to core 0 and the load to core 1. Also herd with `everysec` against herd without a journal, and,
# as the anchor for that ratio, redis with `appendfsync everysec` against redis without an AOF.
# The journal and the AOF go to the same disk-backed directory (the filesystem type is printed: not tmpfs).
#
# ROUNDS interleaved rounds at 50 connections, depth 1 and 16, and the medians: the machine is shared
# and noisy, and so is its disk. Then what the throughput cannot show on a loaded machine: the CPU time
# (user + system, every thread, from /proc/PID/stat) herd spends per IAMAT with `everysec` and without a
# journal, ROUNDS interleaved runs of 1,000,000 IAMATs at depth 16, and the writer thread's share.
#
#     benches/journal-vs-redis.sh [ROUNDS] [SECONDS] [DIR]   (needs redis-server: apt-get install -y redis-server)
#     PIN=0 benches/journal-vs-redis.sh ...     servers and load unpinned: the journal's writer thread (and
#                                               redis's fsync thread) may run on the other core
set -euo pipefail
cd "$(dirname "$0")/.."
server_cpu="taskset -c 0"; load_cpu="taskset -c 1"
if [ "${PIN:-1}" = 0 ]; then server_cpu=""; load_cpu=""; echo "unpinned (PIN=0)"; fi
rounds=${1:-5}
secs=${2:-4}
base=${3:-/var/tmp}
cargo build --release -q
herd=target/release/herd
dir=$(mktemp -d "$base/herd-journal-bench.XXXXXX")
echo "filesystem of $dir: $(df -T "$dir" | awk 'NR==2 {print $2 " on " $1}')"
trap 'kill $(jobs -p) 2>/dev/null; for p in 16380 16381 16382; do redis-cli -p $p shutdown nosave >/dev/null 2>&1 || true; done; rm -rf "$dir"' EXIT
conf() { # name port journal-json
    echo "{\"servers\": [{\"name\": \"$1\", \"port\": $2, \"peer_port\": $(($2 + 1))}], \"log_dir\": \"$dir/logs\"$3}" > "$dir/$1.json"
}
conf Always 31700 ", \"journal\": {\"dir\": \"$dir/j\", \"fsync\": \"always\"}"
conf Everysec 31710 ", \"journal\": {\"dir\": \"$dir/j\", \"fsync\": \"everysec\"}"
conf Plain 31720 ""
wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return; sleep 0.05; done; }
declare -A pid
for s in Always Everysec Plain; do
    $server_cpu $herd serve $s --config "$dir/$s.json" >/dev/null 2>&1 &
    pid[$s]=$!
done
mkdir -p "$dir/ra" "$dir/re"
$server_cpu redis-server --port 16380 --bind 127.0.0.1 --save '' --appendonly yes --appendfsync always --dir "$dir/ra" --daemonize yes >/dev/null
$server_cpu redis-server --port 16381 --bind 127.0.0.1 --save '' --appendonly yes --appendfsync everysec --dir "$dir/re" --daemonize yes >/dev/null
mkdir -p "$dir/rn"
$server_cpu redis-server --port 16382 --bind 127.0.0.1 --save '' --appendonly no --dir "$dir/rn" --daemonize yes >/dev/null
for p in 31700 31710 31720 16380 16381 16382; do wait_port $p; done
sleep 0.5
run() { # target extra-args...
    $load_cpu $herd load --target "127.0.0.1:$1" "${@:2}" --duration "$secs" --warmup 1 --json 2>/dev/null |
        python3 -c "import json,sys;r=json.load(sys.stdin);l=r['latency_us'];print('%.0f %.0f %.0f %d'%(r['throughput_rps'],l['p50'],l['p99'],r['errors_total']))"
}
redis() { run "$1" --workload raw --template 'SET k{i} v' --expect +OK "${@:2}"; }
results=$dir/results
echo
echo "Interleaved rounds at 50 connections (medians below): herd always, redis always, herd everysec, herd without a journal, redis everysec, redis without an AOF"
for depth in 1 16; do
    for round in $(seq "$rounds"); do
        read -r a ap50 ap99 aerr < <(run 31700 --connections 50 --depth $depth)
        read -r r rp50 rp99 rerr < <(redis 16380 --connections 50 --depth $depth)
        read -r e ep50 ep99 eerr < <(run 31710 --connections 50 --depth $depth)
        read -r n np50 np99 nerr < <(run 31720 --connections 50 --depth $depth)
        read -r re rep50 rep99 reerr < <(redis 16381 --connections 50 --depth $depth)
        read -r rn rnp50 rnp99 rnerr < <(redis 16382 --connections 50 --depth $depth)
        echo "depth $depth round $round: herd always $a ($ap50/$ap99 µs)  redis always $r ($rp50/$rp99 µs)  herd everysec $e  herd no journal $n  redis everysec $re  redis no AOF $rn"
        echo "$depth $a $r $e $n $ap50 $ap99 $rp50 $rp99 $re $rn" >> "$results"
        [ "$aerr$rerr$eerr$nerr$reerr$rnerr" = "000000" ] || echo "errors: $aerr $rerr $eerr $nerr $reerr $rnerr" >&2
    done
done
python3 - "$results" <<'PY'
import sys, statistics as st
rows = [list(map(float, l.split())) for l in open(sys.argv[1])]
print()
print("| depth | herd always IAMAT/s | p50/p99 µs | redis always SET/s | p50/p99 µs | herd/redis (median of rounds) | herd everysec | herd no journal | everysec/none (median of rounds) | redis everysec/no AOF (median of rounds) |")
print("|---|---|---|---|---|---|---|---|---|---|")
for d in (1, 16):
    r = [x for x in rows if x[0] == d]
    m = lambda i: st.median(x[i] for x in r)
    print(f"| {d} | {m(1):.0f} | {m(5):.0f}/{m(6):.0f} | {m(2):.0f} | {m(7):.0f}/{m(8):.0f} | {st.median(x[1]/x[2] for x in r):.2f} | {m(3):.0f} | {m(4):.0f} | {st.median(x[3]/x[4] for x in r):.2f} | {st.median(x[9]/x[10] for x in r):.2f} |")
PY

# CPU ticks (1/100 s) of a process, or of its thread named $2.
ticks() {
    if [ -z "${2:-}" ]; then awk '{print $14 + $15}' "/proc/$1/stat"; return; fi
    for t in /proc/"$1"/task/*; do
        if [ "$(cat "$t/comm")" = "$2" ]; then awk '{print $14 + $15}' "$t/stat"; fi
    done
}
cpu=$dir/cpu
echo
echo "CPU per IAMAT, 1,000,000 IAMATs at depth 16 per run, interleaved (load average $(cut -d' ' -f1 /proc/loadavg))"
for round in $(seq "$rounds"); do
    line="round $round:"
    for s in Everysec Plain; do
        p=${pid[$s]}
        port=$([ $s = Everysec ] && echo 31710 || echo 31720)
        before=$(ticks "$p"); wbefore=$(ticks "$p" herd-journal)
        $load_cpu $herd load --target "127.0.0.1:$port" --connections 50 --depth 16 --requests 1000000 --warmup 0 \
            >/dev/null 2>&1
        after=$(ticks "$p"); wafter=$(ticks "$p" herd-journal)
        echo "$s $after $before ${wafter:-0} ${wbefore:-0}" >> "$cpu"
        # Ticks of 10 ms for 10^6 IAMATs: ticks / 100 is µs per IAMAT.
        line="$line $s $(python3 -c "print('%.2f' % (($after - $before) / 100))") µs/IAMAT"
    done
    echo "$line"
done
python3 - "$cpu" <<'PY'
import sys, statistics as st
rows = [l.split() for l in open(sys.argv[1])]
e = [(int(a) - int(b)) / 100 for s, a, b, wa, wb in rows if s == "Everysec"]
w = [(int(wa) - int(wb)) / 100 for s, a, b, wa, wb in rows if s == "Everysec"]
n = [(int(a) - int(b)) / 100 for s, a, b, wa, wb in rows if s == "Plain"]
print()
print("| herd `everysec` CPU µs/IAMAT | of which the writer thread | herd, no journal | everysec/none CPU (median of rounds) |")
print("|---|---|---|---|")
print(f"| {st.median(e):.2f} | {st.median(w):.2f} | {st.median(n):.2f} | {st.median(x / y for x, y in zip(e, n)):.2f} |")
PY
