#!/usr/bin/env bash
# System calls per request, herd IAMAT against redis-server SET, in the same run and with the same load
# (herd load, a fixed number of requests, server on core 0 and load on core 1).
#
#     benches/syscalls.sh [REQUESTS]      (needs strace, perf, redis-server: apt-get install -y strace
#                                          linux-perf redis-server)
#     HERD=/tmp/before/target/release/herd benches/syscalls.sh     (another build of the server)
#
# Each cell is counted twice:
# - `strace -c -f -p PID`: every system call of every thread of the server, by name. strace stops the
#   server at each call, which slows it down and can change how many events one epoll_wait returns.
# - `perf stat -e syscalls:sys_enter_… -p PID`, three runs: the same calls from kernel tracepoints, which
#   do not slow the server, so the batching is the real one. The breakdown is the run with the median total.
# "per request" is the total divided by the requests answered. For a request that arrives alone the floor
# is one read and one write; epoll_wait is shared by the requests of one loop turn. The server's CPU time
# per request (all its threads, from /proc/PID/task/*/schedstat, during the perf runs) says how busy it
# was: a server with CPU to spare returns to epoll_wait sooner, with fewer events ready, so its
# epoll_wait share is larger.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-200000}
cargo build --release -q
herd=${HERD:-target/release/herd}
load_tool=target/release/herd
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; redis-cli -p 16379 shutdown nosave >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
echo "{\"servers\": [{\"name\": \"Solo\", \"port\": 31500, \"peer_port\": 31501}], \"log_dir\": \"$dir/logs\"}" > "$dir/solo.json"
taskset -c 0 $herd serve Solo --config "$dir/solo.json" >/dev/null 2>&1 &
herd_pid=$!
taskset -c 0 redis-server --port 16379 --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
    --pidfile "$dir/redis.pid" >/dev/null
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return; sleep 0.05; done; }
# The calls either server makes in these runs, by name, and every call (raw_syscalls) to be sure none is
# missed: what the names do not cover shows as "other".
events=$(for c in epoll_wait epoll_pwait recvfrom sendto read write futex sched_yield epoll_ctl accept4 \
    setsockopt getpeername fcntl close openat; do printf 'syscalls:sys_enter_%s,' $c; done)
events=${events}raw_syscalls:sys_enter
wait_port 31500
wait_port 16379
redis_pid=$(cat "$dir/redis.pid")

load() { # port requests conns depth
    local extra=()
    [ "$1" = 16379 ] && extra=(--workload raw --template 'SET k{i} v' --expect +OK)
    taskset -c 1 $load_tool load --target "127.0.0.1:$1" --connections "$3" --depth "$4" --requests "$2" \
        --warmup 0 --fail-on-error "${extra[@]}" >/dev/null
}
# CPU time of every thread of PID so far, in ns (the first field of each thread's schedstat).
cpu_ns() { cat /proc/"$1"/task/*/schedstat | awk '{ns += $1} END {printf "%.0f", ns}'; } # mawk's %d stops at 2^31
# Waits until a tracer holds PID, so no request goes by uncounted.
traced() { for _ in $(seq 200); do [ "$(awk '/TracerPid/ {print $2}' "/proc/$1/status")" != 0 ] && return; sleep 0.01; done; }

count() { # name pid port conns depth requests
    local name=$1 pid=$2 port=$3 conns=$4 depth=$5 req=$6
    load "$port" 2000 "$conns" "$depth" # every connection opened and warm before counting
    strace -c -f -p "$pid" -o "$dir/strace" 2>/dev/null &
    local tracer=$!
    traced "$pid"
    load "$port" "$req" "$conns" "$depth"
    kill -INT $tracer
    wait $tracer 2>/dev/null || true
    for run in 1 2 3; do
        perf stat -x, -e "$events" -p "$pid" -o "$dir/perf.$run" &
        local perf=$!
        sleep 0.2 # perf attaches without stopping the process; give it the moment it needs
        local cpu0
        cpu0=$(cpu_ns "$pid")
        load "$port" "$req" "$conns" "$depth"
        echo $(($(cpu_ns "$pid") - cpu0)) > "$dir/cpu.$run"
        kill -INT $perf
        wait $perf 2>/dev/null || true
    done
    python3 - "$dir" "$name" "$conns" "$depth" "$req" <<'PY'
import sys
d, name, conns, depth, req = sys.argv[1:]
req = int(req)
total = 0
for line in open(f"{d}/strace"):
    f = line.split()
    if len(f) >= 4 and f[-1] == "total":
        total = int(f[3])  # % time, seconds, usecs/call, calls, [errors,] total
cpu = sorted(int(open(f"{d}/cpu.{run}").read()) for run in (1, 2, 3))[1] / req / 1000
runs = []
for run in (1, 2, 3):
    calls = {}
    for line in open(f"{d}/perf.{run}"):
        f = line.split(",")
        if len(f) > 2 and f[2].startswith("syscalls:sys_enter_") and f[0].isdigit():
            calls[f[2][len("syscalls:sys_enter_"):]] = int(f[0])
        elif len(f) > 2 and f[2] == "raw_syscalls:sys_enter":
            raw = int(f[0])
    calls["other"] = raw - sum(calls.values())
    runs.append(calls)
med = sorted(runs, key=lambda c: sum(c.values()))[1]  # the run with the median total
top = ", ".join(f"{k} {v/req:.4f}" for k, v in sorted(med.items(), key=lambda kv: -kv[1])[:6] if v)
totals = ", ".join(f"{sum(c.values())/req:.3f}" for c in runs)
print(f"| {name} | {conns} | {depth} | {req:,} | {total/req:.4f} | {sum(med.values())/req:.4f} ({totals}) | {cpu:.2f} | {top} |")
PY
}

echo "| server | conns | depth | requests | per request (strace -c -f) | per request (perf, not slowed: median (3 runs)) | server CPU µs per request (median) | by call, per request (perf, median run) |"
echo "|---|---|---|---|---|---|---|---|"
for cell in "50 1 $n" "50 16 $((n * 2))" "500 1 $n"; do
    read -r conns depth req <<<"$cell"
    count herd "$herd_pid" 31500 "$conns" "$depth" "$req"
    count redis "$redis_pid" 16379 "$conns" "$depth" "$req"
done
