#!/usr/bin/env bash
# The cost of mutual TLS on peer links: the five-server herd (shipped topology) driven with IAMATs spread
# over all five servers by one `herd load`, once with plaintext links and once with `peer_tls`, in
# alternating rounds of the same run (plain, tls, plain, tls, ...). Every IAMAT is stored and flooded to the
# four other servers, so each one crosses peer links (TLS records, or plain bytes) several times.
# Prints each round, with what a busy machine disturbs less than the rate: the five servers' CPU time
# and system calls per IAMAT (perf stat, task-clock and raw_syscalls:sys_enter, over the warm-up and the
# measured period; left out without perf). Then the median of the per-round TLS/plain rate ratios (each
# round's two runs are back to back, so they share the machine's mood) and the ratio of the medians;
# issue 17 asks for at least 0.8.
#
#     benches/peer-tls.sh [SECONDS] [ROUNDS] [CONNECTIONS] [DEPTH]     (defaults: 5 3 50 1)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
rounds=${2:-3}
conns=${3:-50}
depth=${4:-1}
cargo build --release -q
herd=target/release/herd
dir=$(mktemp -d)
# `|| true`: under `set -e` a failing kill (no jobs left) would end the trap before the rm.
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
python3 - "$dir" <<'PY'
import json, sys
d = sys.argv[1]
c = json.load(open("config/herd.json"))
c.pop("places", None); c.pop("local_places", None); c.pop("peer_tls", None)
for tls, base in ((False, 17000), (True, 17200)):
    for i, s in enumerate(c["servers"]):
        s["port"], s["peer_port"] = base + i, base + 100 + i
    c["log_dir"] = f"{d}/logs-{'tls' if tls else 'plain'}"
    if tls:
        c["peer_tls"] = {"ca_file": f"{d}/certs/ca.pem", "cert_dir": f"{d}/certs"}
    json.dump(c, open(f"{d}/{'tls' if tls else 'plain'}.json", "w"))
PY
$herd certs --config "$dir/tls.json" >/dev/null
names="Bailey Bona Campbell Clark Jaquez"

start() { # plain|tls: starts the herd, waits until its 12 directed links are up
    for n in $names; do $herd serve $n --config "$dir/$1.json" >/dev/null 2>"$dir/$1-$n.err" & done
    for _ in $(seq 200); do
        [ "$(cat "$dir"/$1-*.err | grep -c 'linked to')" -ge 12 ] && return
        sleep 0.05
    done
    echo "the $1 herd did not link" >&2; exit 1
}
# Each run logs every command, reply and record (the default log_detail), gigabytes a round: the logs
# go as soon as the herd has stopped.
stop() { kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"/logs-*; }
has_perf=0
perf stat -e task-clock true >/dev/null 2>&1 && has_perf=1
load() { # base port
    targets=""
    for i in 0 1 2 3 4; do targets="$targets --target 127.0.0.1:$(($1 + i))"; done
    local perf=""
    rm -f "$dir/perf.csv"
    if [ $has_perf = 1 ]; then
        perf stat -x, -e task-clock,raw_syscalls:sys_enter -p "$(jobs -p | paste -sd,)" -o "$dir/perf.csv" &
        perf=$!
        sleep 0.2
    fi
    $herd load $targets --workload iamat --connections "$conns" --depth "$depth" --duration "$secs" --warmup 1 \
        --json 2>/dev/null >"$dir/load.json"
    if [ -n "$perf" ]; then kill -INT $perf; wait $perf 2>/dev/null || true; fi
    # Per IAMAT over the warm-up and the measured period, at the measured rate.
    python3 - "$dir/load.json" "$dir/perf.csv" "$secs" <<'PY'
import json, os, sys
r = json.load(open(sys.argv[1])); l = r['latency_us']
n = r['throughput_rps'] * (float(sys.argv[3]) + 1)
cpu, calls = '-', '-'
if os.path.exists(sys.argv[2]):
    for line in open(sys.argv[2]):
        f = line.strip().split(',')
        if len(f) > 2 and f[0].replace('.', '').isdigit():
            if f[2].startswith('task-clock'):
                cpu = '%.1f' % (float(f[0]) * 1e3 / n)  # msec -> us
            elif 'sys_enter' in f[2]:
                calls = '%.2f' % (float(f[0]) / n)
print('%.0f %.0f %.0f %d %s %s' % (r['throughput_rps'], l['p50'], l['p99'], r['errors_total'], cpu, calls))
PY
}

plain=(); tls=()
echo "| round | links | IAMAT/s | p50 µs | p99 µs | errors | herd CPU µs/IAMAT | herd syscalls/IAMAT |"
echo "|---|---|---|---|---|---|---|---|"
for r in $(seq "$rounds"); do
    for kind in plain tls; do
        start $kind
        base=17000; [ $kind = tls ] && base=17200
        read -r rps p50 p99 err cpu calls < <(load $base)
        stop
        echo "| $r | $kind | $rps | $p50 | $p99 | $err | $cpu | $calls |"
        if [ $kind = plain ]; then plain+=("$rps"); else tls+=("$rps"); fi
    done
done
python3 - "${plain[*]}" "${tls[*]}" <<'PY'
import statistics, sys
p = [float(x) for x in sys.argv[1].split()]
t = [float(x) for x in sys.argv[2].split()]
paired = statistics.median(b / a for a, b in zip(p, t))
print(f"median plain {statistics.median(p):.0f}/s, median TLS {statistics.median(t):.0f}/s, "
      f"ratio of medians {statistics.median(t) / statistics.median(p):.2f}, median of per-round ratios {paired:.2f}")
PY
