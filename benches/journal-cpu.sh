#!/usr/bin/env bash
# CPU time per IAMAT of herd servers with and without a journal, for one or more builds side by side: what a
# throughput ratio cannot show on a shared, loaded machine (a server that gets less of the CPU answers
# fewer IAMATs whatever its code). Each LABEL=BIN:MODE (MODE: always, everysec, no, or none for no journal)
# serves one server pinned to core 0, journal under DIR (disk-backed, not tmpfs); ROUNDS interleaved runs of
# REQUESTS IAMATs at 50 connections and depth 16 (herd load, pinned to core 1) each; the figure is the
# server's user + system time over the run (every thread, from /proc/PID/stat, in ticks of 10 ms) per IAMAT,
# with the loop thread's share (the one thread that serves every connection: what bounds throughput when
# the writer thread has a core of its own), the journal writer thread's share, and the loop thread's
# voluntary and involuntary context switches.
#
#     benches/journal-cpu.sh ROUNDS REQUESTS DIR LABEL=BIN:MODE ...
#     e.g. benches/journal-cpu.sh 5 1000000 /var/tmp before=/tmp/herd-before:everysec \
#              after=target/release/herd:everysec none=target/release/herd:none
set -euo pipefail
[ $# -ge 4 ] || { sed -n 2,13p "$0" >&2; exit 2; }
rounds=$1; n=$2; base=$3; shift 3
cd "$(dirname "$0")/.."
cargo build --release -q
load=target/release/herd
dir=$(mktemp -d "$base/herd-journal-cpu.XXXXXX")
echo "filesystem of $dir: $(df -T "$dir" | awk 'NR==2 {print $2 " on " $1}')"
labels=(); ports=(); pids=()
port=31750
for spec in "$@"; do
    label=${spec%%=*}; rest=${spec#*=}; bin=${rest%%:*}; mode=${rest#*:}
    j=""
    [ "$mode" = none ] || j=", \"journal\": {\"dir\": \"$dir/j-$label\", \"fsync\": \"$mode\"}"
    echo "{\"servers\": [{\"name\": \"S$label\", \"port\": $port, \"peer_port\": $((port + 1))}], \"log_dir\": \"$dir/logs\"$j}" \
        > "$dir/$label.json"
    taskset -c 0 "$bin" serve "S$label" --config "$dir/$label.json" > "$dir/$label.out" 2>&1 &
    pids+=($!); labels+=("$label"); ports+=($port)
    port=$((port + 10))
done
trap 'kill ${pids[*]} 2>/dev/null; wait; rm -rf "$dir"' EXIT
for label in "${labels[@]}"; do
    for _ in $(seq 200); do grep -q listening "$dir/$label.out" && break; sleep 0.05; done
done
# ticks PID [THREAD]: CPU ticks of the process, or of its thread of that name (0 if none; the loop thread
# is the one named like the process, whose id is the process's).
ticks() {
    local sum=0 t
    if [ -z "${2:-}" ]; then awk '{print $14 + $15}' "/proc/$1/stat"; return; fi
    if [ "$2" = loop ]; then awk '{print $14 + $15}' "/proc/$1/task/$1/stat"; return; fi
    for t in /proc/"$1"/task/*; do
        [ "$(cat "$t/comm")" = "$2" ] && sum=$(awk '{print $14 + $15}' "$t/stat")
    done
    echo "$sum"
}
switches() { awk '/^voluntary/ {v=$2} /^nonvoluntary/ {n=$2} END {print v, n}' "/proc/$1/task/$1/status"; }
results=$dir/results
echo "load average at the start: $(cut -d' ' -f1 /proc/loadavg)"
for round in $(seq "$rounds"); do
    line="round $round:"
    for i in "${!labels[@]}"; do
        p=${pids[$i]}
        read -r a w0 l0 <<< "$(ticks "$p") $(ticks "$p" herd-journal) $(ticks "$p" loop)"
        read -r v0 i0 <<< "$(switches "$p")"
        taskset -c 1 $load load --target "127.0.0.1:${ports[$i]}" --connections 50 --depth 16 --requests "$n" \
            --warmup 0 > /dev/null 2>&1
        read -r b w1 l1 <<< "$(ticks "$p") $(ticks "$p" herd-journal) $(ticks "$p" loop)"
        read -r v1 i1 <<< "$(switches "$p")"
        echo "${labels[$i]} $((b - a)) $((w1 - w0)) $((v1 - v0)) $((i1 - i0)) $((l1 - l0))" >> "$results"
        line="$line ${labels[$i]} $(python3 -c "print('%.3f' % (($b - $a) * 1e4 / $n))") µs"
    done
    echo "$line"
done
echo "load average at the end: $(cut -d' ' -f1 /proc/loadavg)"
python3 - "$results" "$n" "${labels[@]}" <<'PY'
import sys, statistics as st
rows = [l.split() for l in open(sys.argv[1])]
n, labels = int(sys.argv[2]), sys.argv[3:]
per = lambda ticks: ticks * 1e4 / n  # 10 ms ticks -> µs per IAMAT
print()
print("| build | CPU µs per IAMAT (median) | of which the loop thread | of which the journal writer | loop context switches per 1,000 IAMATs, voluntary / involuntary | CPU vs " + labels[-1] + " (median of rounds) | loop thread's CPU vs " + labels[-1] + " |")
print("|---|---|---|---|---|---|---|")
col = lambda l, i: [float(r[i]) for r in rows if r[0] == l]
for l in labels:
    ratios = [a / b for a, b in zip(col(l, 1), col(labels[-1], 1))]
    loops = [a / b for a, b in zip(col(l, 5), col(labels[-1], 5))]
    print(f"| {l} | {per(st.median(col(l, 1))):.3f} | {per(st.median(col(l, 5))):.3f} | {per(st.median(col(l, 2))):.3f} | "
          f"{st.median(col(l, 3)) * 1000 / n:.1f} / {st.median(col(l, 4)) * 1000 / n:.1f} | {st.median(ratios):.2f} | "
          f"{st.median(loops):.2f} |")
PY
