#!/usr/bin/env bash
# Issue 19's count check: messages and bytes per record on the shipped five-server herd, for each herd
# binary given (e.g. the build of an older commit, then this one), plaintext links and again with peer TLS.
#
# Each run starts the herd (the graph of config/herd.json on loopback ports 24100-24124, no Places), waits
# for its 12 directed links, sends REQUESTS IAMATs at Bailey (`herd load`, REQUESTS distinct ids), waits
# until the counters stop moving, and divides by the records Bailey stored:
#   received   records received from peers, summed over the five servers (herd_records_received_total);
#   duplicate  of those, the ones not newer than the one held (herd_records_duplicate_total);
#   forwarded  records queued to peer links, summed (herd_records_forwarded_total);
#   flooded    of those, sent in flood mode (herd_records_flooded_total; 0 where the binary lacks it);
#   peer bytes the bytes on the peer connections both ways, from the kernel's tcp_info (`ss -tin`) after
#              the run minus before it: framing, heartbeats, acknowledgements and TLS included.
#
#     benches/messages-per-record.sh [REQUESTS] [LABEL=]HERD_BINARY...      (default REQUESTS: 20000)
#     e.g. git worktree add /tmp/before 1d8d471 && (cd /tmp/before && cargo build --release)
#          benches/messages-per-record.sh 20000 1d8d471=/tmp/before/target/release/herd now=target/release/herd
set -euo pipefail
cd "$(dirname "$0")/.."
requests=20000
if [[ ${1:-} =~ ^[0-9]+$ ]]; then requests=$1; shift; fi
[ $# -gt 0 ] || set -- target/release/herd
helper="python3 benches/tree_vs_replicas.py"
base=24100
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"' EXIT
$helper configs "$dir" $base
names=(Bailey Bona Campbell Clark Jaquez)
admins="$((base + 20)) $((base + 21)) $((base + 22)) $((base + 23)) $((base + 24))"
peers="$((base + 10)) $((base + 11)) $((base + 12)) $((base + 13)) $((base + 14))"

echo "| binary | links | records stored at Bailey | received/record | duplicate/record | forwarded/record | flooded/record | peer bytes/record |"
echo "|---|---|---|---|---|---|---|---|"
for arg in "$@"; do
    version=${arg%%=*} bin=${arg#*=}
    [ -f "$dir/certs/ca.pem" ] || $bin certs --config "$dir/tls.json" >/dev/null
    for kind in plain tls; do
        pids=()
        for n in "${names[@]}"; do
            $bin serve "$n" --config "$dir/$kind.json" >/dev/null 2>"$dir/$kind-$n.err" &
            pids+=($!)
        done
        for _ in $(seq 400); do
            [ "$(cat "$dir"/"$kind"-*.err | grep -c 'linked to')" -ge 12 ] && break
            sleep 0.05
        done
        [ "$(cat "$dir"/"$kind"-*.err | grep -c 'linked to')" -ge 12 ] || { echo "$bin $kind: no links" >&2; exit 1; }
        bytes0=$($helper peer_bytes $peers)
        $bin load --target 127.0.0.1:$base --workload iamat --clients "$requests" --requests "$requests" \
            --warmup 0 --json >"$dir/load.json" 2>/dev/null
        # Settled: every server holds as many records as Bailey, and the counters read the same twice,
        # 300 ms apart (a flood's duplicates may still be on their way when the last server has them all).
        prev=""
        for _ in $(seq 200); do
            now="$($helper counters $admins)"
            [ "$now" = "$prev" ] && [ "$($helper records $admins | tr ' ' '\n' | sort -u | wc -l)" = 1 ] && break
            prev=$now
            sleep 0.3
        done
        bytes1=$($helper peer_bytes $peers)
        read -r received duplicate forwarded flooded _ _ stored <<<"$($helper counters $admins)"
        kill "${pids[@]}" 2>/dev/null || true
        wait "${pids[@]}" 2>/dev/null || true
        rm -rf "$dir/logs"
        python3 - "$version" "$kind" "$stored" "$received" "$duplicate" "$forwarded" "$flooded" "$((bytes1 - bytes0))" <<'PY'
import sys
v, kind, stored, *n = sys.argv[1:]
stored = int(stored)
print(f"| {v} | {kind} | {stored} | " + " | ".join(f"{int(x) / stored:.2f}" for x in n) + " |")
PY
    done
done
