#!/usr/bin/env bash
# IAMAT on one herd server against redis-server SET, driven by the same tool (herd load) with the same
# connection counts and depths, server pinned to core 0 and the load to core 1. Prints a markdown table.
#
#     benches/herd-vs-redis.sh [SECONDS]        (needs redis-server: apt-get install -y redis-server)
#
# "flooding" runs the same server with two live neighbours (pinned to core 1 with the load), so every
# stored IAMAT is also written to two peer links.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
cargo build --release -q
herd=target/release/herd
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; redis-cli -p 16379 shutdown nosave >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
cat > "$dir/solo.json" <<JSON
{"servers": [{"name": "Solo", "port": 31500, "peer_port": 31501}], "log_dir": "$dir/logs"}
JSON
cat > "$dir/flood.json" <<JSON
{"servers": [{"name": "Hub", "port": 31600, "peer_port": 31601},
             {"name": "Left", "port": 31602, "peer_port": 31603},
             {"name": "Right", "port": 31604, "peer_port": 31605}],
 "links": [["Hub", "Left"], ["Hub", "Right"]], "log_dir": "$dir/logs"}
JSON
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return; sleep 0.05; done; }
taskset -c 0 $herd serve Solo --config "$dir/solo.json" >/dev/null 2>&1 &
taskset -c 0 $herd serve Hub --config "$dir/flood.json" >/dev/null 2>&1 &
taskset -c 1 $herd serve Left --config "$dir/flood.json" >/dev/null 2>&1 &
taskset -c 1 $herd serve Right --config "$dir/flood.json" >/dev/null 2>&1 &
taskset -c 0 redis-server --port 16379 --bind 127.0.0.1 --save '' --appendonly no --daemonize yes >/dev/null
for p in 31500 31600 31602 31604 16379; do wait_port $p; done
sleep 0.5
run() { # target extra-args...
    taskset -c 1 $herd load --target "127.0.0.1:$1" "${@:2}" --duration "$secs" --warmup 1 --json 2>/dev/null |
        python3 -c "import json,sys;r=json.load(sys.stdin);l=r['latency_us'];print('%.0f %.0f %.0f %d'%(r['throughput_rps'],l['p50'],l['p99'],r['errors_total']))"
}
echo "| conns | depth | herd IAMAT/s | p50/p99 µs | herd+flood IAMAT/s | p50/p99 µs | redis SET/s | p50/p99 µs | herd/redis |"
echo "|---|---|---|---|---|---|---|---|---|"
for conns in 1 50 500; do
    for depth in 1 16; do
        read -r h hp50 hp99 herr < <(run 31500 --connections $conns --depth $depth)
        read -r f fp50 fp99 ferr < <(run 31600 --connections $conns --depth $depth)
        read -r r rp50 rp99 rerr < <(run 16379 --workload raw --template 'SET k{i} v' --expect +OK --connections $conns --depth $depth)
        ratio=$(python3 -c "print(f'{$h/$r:.2f}')")
        echo "| $conns | $depth | $h | $hp50/$hp99 | $f | $fp50/$fp99 | $r | $rp50/$rp99 | $ratio |"
        [ "$herr$ferr$rerr" = "000" ] || echo "errors: herd $herr flood $ferr redis $rerr" >&2
    done
done
