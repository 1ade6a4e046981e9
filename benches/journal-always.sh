#!/usr/bin/env bash
# `always` at depth 1, where throughput is set by the fsync: one or more herd builds with `journal.fsync`
# `always` against redis-server `appendfsync always` (SET), interleaved rounds at 50 connections and depth
# 1, same load tool; for each herd build also its fsyncs in the round and their mean latency, read from its
# metrics (herd_journal_fsyncs_total, herd_journal_fsync_microseconds_sum). Journals and the AOF go to DIR
# (disk-backed, not tmpfs: the filesystem type is printed). Servers and load unpinned, as deployed.
#
#     benches/journal-always.sh ROUNDS SECONDS DIR LABEL=BIN ...     (needs redis-server)
#     e.g. benches/journal-always.sh 9 3 /var/tmp before=/tmp/herd-before now=target/release/herd
set -euo pipefail
[ $# -ge 4 ] || { sed -n 2,9p "$0" >&2; exit 2; }
rounds=$1; secs=$2; base=$3; shift 3
cd "$(dirname "$0")/.."
cargo build --release -q
load=target/release/herd
dir=$(mktemp -d "$base/herd-journal-always.XXXXXX")
echo "filesystem of $dir: $(df -T "$dir" | awk 'NR==2 {print $2 " on " $1}'); load average $(cut -d' ' -f1 /proc/loadavg)"
trap 'kill $(jobs -p) 2>/dev/null; redis-cli -p 16395 shutdown nosave >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
labels=(); ports=(); port=31770
for spec in "$@"; do
    label=${spec%%=*}; bin=${spec#*=}
    echo "{\"servers\": [{\"name\": \"A$label\", \"port\": $port, \"peer_port\": $((port + 1)), \"admin_port\": $((port + 2))}],
      \"log_dir\": \"$dir/logs\", \"journal\": {\"dir\": \"$dir/j-$label\", \"fsync\": \"always\"}}" > "$dir/$label.json"
    "$bin" serve "A$label" --config "$dir/$label.json" >/dev/null 2>&1 &
    labels+=("$label"); ports+=("$port"); port=$((port + 10))
done
mkdir -p "$dir/r"
redis-server --port 16395 --bind 127.0.0.1 --save '' --appendonly yes --appendfsync always --dir "$dir/r" \
    --daemonize yes >/dev/null
wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return; sleep 0.05; done; }
for p in "${ports[@]}" 16395; do wait_port "$p"; done
fsync_stats() { # admin port -> "count sum_us"
    exec 3<>/dev/tcp/127.0.0.1/"$1"
    printf 'GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
    awk '/^herd_journal_fsyncs_total/ {c=$2} /^herd_journal_fsync_microseconds_sum/ {s=$2} END {print c+0, s+0}' <&3
    exec 3<&-
}
run() { # port extra-args...
    $load load --target "127.0.0.1:$1" "${@:2}" --connections 50 --depth 1 --duration "$secs" --warmup 1 --json \
        2>/dev/null | python3 -c "import json,sys;print('%.0f' % json.load(sys.stdin)['throughput_rps'])"
}
results=$dir/results
for round in $(seq "$rounds"); do
    line="round $round:"
    for i in "${!labels[@]}"; do
        read -r c0 s0 < <(fsync_stats $((ports[i] + 2)))
        t=$(run "${ports[i]}")
        read -r c1 s1 < <(fsync_stats $((ports[i] + 2)))
        mean=$(python3 -c "print('%.0f' % ((float($s1) - float($s0)) / max(1, $c1 - $c0)))")
        line="$line ${labels[i]} $t IAMAT/s (fsync mean $mean µs, $((c1 - c0)) fsyncs)"
        echo "${labels[i]} $round $t $mean" >> "$results"
    done
    r=$(run 16395 --workload raw --template 'SET k{i} v' --expect +OK)
    echo "redis $round $r 0" >> "$results"
    echo "$line  redis $r SET/s"
done
python3 - "$results" "${labels[@]}" <<'PY'
import sys, statistics as st
rows = [l.split() for l in open(sys.argv[1])]
labels = sys.argv[2:]
redis = {r[1]: float(r[2]) for r in rows if r[0] == "redis"}
print()
print("| herd build | IAMAT/s (median) | fsync mean µs (median) | redis `always` SET/s (median) | herd/redis (median of rounds) |")
print("|---|---|---|---|---|")
for l in labels:
    mine = [r for r in rows if r[0] == l]
    print(f"| {l} | {st.median(float(r[2]) for r in mine):.0f} | {st.median(float(r[3]) for r in mine):.0f} | "
          f"{st.median(redis.values()):.0f} | {st.median(float(r[2]) / redis[r[1]] for r in mine):.2f} |")
PY
