#!/usr/bin/env bash
# Bytes per record held: one `herd serve` against redis-server holding the same ids as keys with values as
# long as herd's AT lines, in one run, both driven by `herd load` (raw template, distinct ids c0, c1, ...).
# Figure: RSS growth of the server process (from /proc/PID/status, before and after the load) divided by
# the records it holds afterwards (herd's admin /metrics `herd_records`, redis DBSIZE). herd runs with
# `records.max` = N (as the shipped config bounds it) and its default logging.
#
#     benches/records-mem.sh [N]        N distinct clients (default 1000000); needs redis-server
#                                       (apt-get install -y redis-server)
#     REUSE=0 benches/records-mem.sh    skip the reuse runs (10,000,000 updates each, a minute or two)
#
# Then space reuse through a server (herd load's iamat workload: 10,000,000 updates over 100,000 ids, line
# lengths varying by a few bytes), and the store ALONE (bench binary benches/records_mem.rs, no server):
# the same N clients, and 10,000,000 updates over 100,000 ids with line lengths uniform in 40..=300 (the
# protocol's field bounds keep a server's lines from spanning that range for one client), RSS at the end
# over RSS after the first pass.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000000}
cargo build --release -q
herd=target/release/herd
dir=$(mktemp -d)
hport=31700 aport=31702 rport=16380
cleanup() {
    kill "${herd_pid:-}" "${reuse_pid:-}" 2>/dev/null || true
    redis-cli -p $rport shutdown nosave >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap cleanup EXIT
cat > "$dir/herd.json" <<JSON
{"servers": [{"name": "Jaquez", "port": $hport, "peer_port": 31701, "admin_port": $aport}],
 "log_dir": "$dir/logs", "records": {"max": $n}}
JSON
wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }
rss() { awk '/^VmRSS:/ {print $2 * 1024}' "/proc/$1/status"; }

$herd serve Jaquez --config "$dir/herd.json" >/dev/null 2>&1 &
herd_pid=$!
redis-server --port $rport --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
    --pidfile "$dir/redis.pid" --dir "$dir" >/dev/null
wait_port $hport
wait_port $aport
wait_port $rport
redis_pid=$(cat "$dir/redis.pid")

# A 20-byte client time a few seconds old, and the AT line herd answers for a 7-byte id: its length is the
# redis value length.
t="$(( $(date +%s) - 5 )).123456789"
exec 3<>/dev/tcp/127.0.0.1/$hport
printf 'IAMAT probe00 +34.068930-118.445127 %s\n' "$t" >&3
read -r at_line <&3
exec 3>&-
line_len=$(( ${#at_line} + 1 ))
value=$(head -c "$line_len" /dev/zero | tr '\0' v)

load() { # port template expect
    $herd load --target "127.0.0.1:$1" --workload raw --template "$2" --expect "$3" --requests "$n" \
        --warmup 0 --connections 50 --depth 16 --json --fail-on-error 2>/dev/null |
        python3 -c "import json,sys; print('%.0f' % json.load(sys.stdin)['throughput_rps'])"
}
herd_records() {
    python3 -c "
import urllib.request
body = urllib.request.urlopen('http://127.0.0.1:$aport/metrics').read().decode()
print(next(l.split()[-1] for l in body.splitlines() if l.startswith('herd_records{')))"
}

h0=$(rss $herd_pid); r0=$(rss $redis_pid)
hn0=$(herd_records); rn0=$(redis-cli -p $rport dbsize)
h_rps=$(load $hport "IAMAT c{i} +34.068930-118.445127 $t" AT)
r_rps=$(load $rport "SET c{i} $value" +OK)
h1=$(rss $herd_pid); r1=$(rss $redis_pid)
hn=$(( $(herd_records) - hn0 )); rn=$(( $(redis-cli -p $rport dbsize) - rn0 ))

python3 - "$n" "$line_len" "$h0" "$h1" "$hn" "$h_rps" "$r0" "$r1" "$rn" "$r_rps" <<'PY'
import sys
n, line_len, h0, h1, hn, h_rps, r0, r1, rn, r_rps = map(int, sys.argv[1:])
hb, rb = (h1 - h0) / hn, (r1 - r0) / rn
print(f"{n} distinct clients, AT lines of {line_len} bytes (7-byte ids), redis values of {line_len} bytes\n")
print("| server | records held | RSS before | RSS after | bytes per record | load req/s |")
print("|---|---|---|---|---|---|")
print(f"| herd serve | {hn} | {h0/2**20:.1f} MiB | {h1/2**20:.1f} MiB | {hb:.1f} | {h_rps} |")
print(f"| redis-server | {rn} | {r0/2**20:.1f} MiB | {r1/2**20:.1f} MiB | {rb:.1f} | {r_rps} |")
print(f"\nherd / redis bytes per record: {hb / rb:.2f}x (goal: at most 0.75x)")
PY

if [ "${REUSE:-1}" != 0 ]; then
    # Space reuse through the server: herd load's iamat workload over 100,000 ids (client0..; each report
    # wanders around the client's home, so line lengths vary by a few bytes), 10,000,000 updates in all.
    # Logging is `events` here: with `io`, the log's backlog buffer (bounded at 8 MiB, filled when the
    # disk falls behind a long burst) adds a one-time 8-10 MiB that the first, short pass never reaches,
    # and writes 2 GB of log lines.
    cat > "$dir/reuse.json" <<JSON
{"servers": [{"name": "Jaquez", "port": 31710, "peer_port": 31711, "admin_port": 31712}],
 "log_dir": "$dir/logs2", "log_detail": "events", "records": {"max": 1000000}}
JSON
    $herd serve Jaquez --config "$dir/reuse.json" >/dev/null 2>&1 &
    reuse_pid=$!
    wait_port 31710
    r0=$(rss $reuse_pid)
    reuse_load() {
        $herd load --target 127.0.0.1:31710 --workload iamat --clients 100000 --requests "$1" --warmup 0 \
            --connections 50 --depth 16 --fail-on-error >/dev/null 2>&1
    }
    reuse_load 100000
    r1=$(rss $reuse_pid)
    reuse_load 9900000
    r2=$(rss $reuse_pid)
    kill $reuse_pid
    python3 -c "
r0, r1, r2 = $r0, $r1, $r2
print(f'Server reuse (log_detail events): 100,000 ids, herd load iamat workload: RSS growth after the first pass {(r1-r0)/2**20:.1f} MiB, '
      f'after 10,000,000 updates {(r2-r0)/2**20:.1f} MiB: {(r2-r0)/(r1-r0):.2f}x (goal: at most 1.25x)')"
fi

echo
echo "Store alone (bench binary, no server), $n clients:"
cargo bench -q --bench records_mem -- million "$n" | sed 's/^/    /'
if [ "${REUSE:-1}" != 0 ]; then
    echo "Store alone (bench binary, no server), space reuse:"
    cargo bench -q --bench records_mem -- reuse 100000 10000000 | sed 's/^/    /'
fi
