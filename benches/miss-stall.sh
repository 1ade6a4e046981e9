#!/usr/bin/env bash
# What WHATSAT cache misses cost the other clients: an open-loop IAMAT probe (2,000/s, latency from the
# scheduled send time) on a server that is also answering WHATSAT misses (cache off) at a fixed rate,
# from the local Places service. Run it for two builds to compare, e.g. before and after a change:
#
#     benches/miss-stall.sh [HERD_BINARY] [SECONDS] [MISSES_PER_S]
#
# The Places service and both loads run on core 1. The server is not pinned (SERVER_CPUS=0 pins it to
# core 0): its helper threads exist to use another core than the loop's.
set -euo pipefail
cd "$(dirname "$0")/.."
herd=${1:-target/release/herd}
secs=${2:-8}
rate=${3:-1000}
pin=(taskset -c "${SERVER_CPUS:-0,1}")
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$dir"' EXIT
taskset -c 1 "$herd" places --listen 127.0.0.1:18643 --ca-out "$dir/ca.pem" >"$dir/places.out" 2>/dev/null &
for _ in $(seq 200); do grep -q "listening on" "$dir/places.out" 2>/dev/null && break; sleep 0.05; done
cat > "$dir/c.json" <<JSON
{"servers": [{"name": "Solo", "port": 31800, "peer_port": 31801}],
 "places": {"api": "legacy", "url": "https://127.0.0.1:18643/maps/api/place/nearbysearch/json", "key_env": "BENCH_KEY",
            "ca_file": "$dir/ca.pem", "cache_ttl_s": 0},
 "log_dir": "$dir/logs"}
JSON
BENCH_KEY=bench "${pin[@]}" "$herd" serve Solo --config "$dir/c.json" >"$dir/serve.out" 2>&1 &
for _ in $(seq 200); do grep -q "listening on" "$dir/serve.out" 2>/dev/null && break; sleep 0.05; done
probe() {
    taskset -c 1 "$herd" load --target 127.0.0.1:31800 --connections 4 --rate 2000 --duration "$secs" --warmup 1 --json \
        2>/dev/null | python3 -c "import json,sys;r=json.load(sys.stdin);l=r['latency_us'];print('IAMAT p50 %.0f  p99 %.0f  p99.9 %.0f  max %.0f us'%(l['p50'],l['p99'],l['p99.9'],l['max']))"
}
echo "calm:          $(probe)"
taskset -c 1 "$herd" load --target 127.0.0.1:31800 --connections 20 --rate "$rate" --workload whatsat --clients 1000 \
    --duration $((secs + 4)) --warmup 0 --json >"$dir/misses.json" 2>/dev/null &
sleep 1
echo "with misses:   $(probe)"
wait %3 2>/dev/null || true
python3 -c "import json,sys;r=json.load(open('$dir/misses.json'));print('misses: %.0f WHATSAT/s, errors %d'%(r['throughput_rps'],r['errors_total']))"
