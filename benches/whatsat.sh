#!/usr/bin/env bash
# WHATSAT throughput against the local Places service, on cache hits and on misses (cache off), next to
# IAMAT on the same server in the same run. Server on core 0; load and the Places service on core 1.
#
#     benches/whatsat.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
cargo build --release -q
herd=target/release/herd
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$dir"' EXIT
taskset -c 1 $herd places --listen 127.0.0.1:18543 --ca-out "$dir/ca.pem" >"$dir/places.out" 2>/dev/null &
for _ in $(seq 200); do grep -q "listening on" "$dir/places.out" 2>/dev/null && break; sleep 0.05; done
places() { echo "{\"api\": \"legacy\", \"url\": \"https://127.0.0.1:18543/maps/api/place/nearbysearch/json\", \"key_env\": \"BENCH_KEY\", \"ca_file\": \"$dir/ca.pem\", \"cache_ttl_s\": $1}"; }
cat > "$dir/c.json" <<JSON
{"servers": [{"name": "Cached", "port": 31700, "peer_port": 31701}, {"name": "Uncached", "port": 31702, "peer_port": 31703}],
 "places": $(places 300), "log_dir": "$dir/logs"}
JSON
sed "s/\"cache_ttl_s\": 300/\"cache_ttl_s\": 0/" "$dir/c.json" > "$dir/nocache.json"
BENCH_KEY=bench taskset -c 0 $herd serve Cached --config "$dir/c.json" >/dev/null 2>&1 &
BENCH_KEY=bench taskset -c 0 $herd serve Uncached --config "$dir/nocache.json" >/dev/null 2>&1 &
sleep 0.5
run() {
    taskset -c 1 $herd load "$@" --duration "$secs" --warmup 1 --json 2>/dev/null |
        python3 -c "import json,sys;r=json.load(sys.stdin);l=r['latency_us'];print('%.0f/s  p50 %.0f us  p99 %.0f us  errors %d'%(r['throughput_rps'],l['p50'],l['p99'],r['errors_total']))"
}
echo "IAMAT                    : $(run --target 127.0.0.1:31700 --connections 50)"
echo "WHATSAT, cache hits      : $(run --target 127.0.0.1:31700 --connections 50 --workload whatsat --clients 1000)"
echo "WHATSAT, misses (no cache): $(run --target 127.0.0.1:31702 --connections 50 --workload whatsat --clients 1000)"
