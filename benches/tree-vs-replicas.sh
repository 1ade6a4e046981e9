#!/usr/bin/env bash
# Issue 19's check: the whole five-server herd against redis replication shaped like it, on ONE core.
#
#   herd       the shipped graph of config/herd.json (five servers, six links), plaintext peer links;
#   redis      redis-server primary with four replicas in the tree the herd's graph spans from Bailey:
#              primary (Bailey) -> replicas Bona and Campbell; Bona -> Clark, Campbell -> Jaquez
#              (replica-of chains, so each write crosses four replication streams, as a record crosses
#              four tree links);
#   herd TLS   the same herd with `peer_tls` (mutual TLS on every peer link);
#   solo       one herd server alone, and one redis-server alone.
#
# Every server process of a run is pinned to core 0 (taskset), so the five share one core; the client,
# `herd load`, is pinned to core 1 and writes only at Bailey / the primary: the same REQUESTS (IAMAT of
# --clients 1000 ids; redis `SET k{i} v`), the same connections and depth. Each run starts fresh
# processes. The runs alternate (herd, redis, herd TLS, solo herd, solo redis, then again) ROUNDS
# times; the table prints each run and the medians of the rates and of the per-round ratios.
#
# Two columns besides the rate, because a client rate alone could flatter a system whose replicas fall
# behind: "catch-up ms" is how long after the last reply every server held one more write sent then (a
# fence: links and replication streams are FIFO), and "CPU µs/write" is the user+system time of all the
# run's server processes (every thread) over the run and the catch-up, per write; "switches/write" counts
# their threads' context switches (voluntary and involuntary) the same way: with every server on one core,
# each wake-up is a turn of the core. "client CPU µs/write" is `herd load`'s own (on core 1): when it
# nears 1e6 / (writes/s), the client, not the servers, sets the rate.
#
#     benches/tree-vs-replicas.sh [ROUNDS] [REQUESTS] [CONNECTIONS] [DEPTH]      (defaults: 3 300000 50 1)
#     LOG_DETAIL=events benches/tree-vs-replicas.sh ...                          (herd's log without io lines)
#     NICE=-10 benches/tree-vs-replicas.sh ...                                   (see below)
#     PROFILE=1 benches/tree-vs-replicas.sh ...                                  (where the time goes)
#
# PROFILE=1 also counts, for each server process of each run, its CPU time and context switches (every
# thread, from /proc) and its system calls by name (perf stat on the syscalls tracepoints, which do not
# stop the process the way strace does, so batching stays as it is), and prints per server position the
# medians per write: herd's Bailey against redis's primary, Bona against the replica in Bona's place, and
# so on. perf slows every system call a little, so read the rates of a PROFILE run as indicative only.
#
# Needs redis-server and redis-cli (apt-get install -y redis-server), taskset and python3 (and perf for
# PROFILE). Ports 24100-24132 and 24200-24204 on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
requests=${2:-300000}
conns=${3:-50}
depth=${4:-1}
cargo build --release -q
herd=target/release/herd
helper="python3 benches/tree_vs_replicas.py"
# NICE=-10 (as root) runs every server and the client at that niceness, the same for herd and redis, so a
# busy machine's other work takes less of the two cores from the measurement.
pin="${NICE:+nice -n $NICE} taskset -c"
base=24100
rbase=24200
dir=$(mktemp -d)
pids=()
# `|| true`: under `set -e` a failing kill (no jobs left) would end the trap before the rm. Every run
# happens in this shell (never in a $(...) or <(...) subshell), so its servers are among these jobs.
trap 'kill "${pids[@]}" $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"' EXIT
$helper configs "$dir" $base
$herd certs --config "$dir/tls.json" >/dev/null
names=(Bailey Bona Campbell Clark Jaquez)
admins="$((base + 20)) $((base + 21)) $((base + 22)) $((base + 23)) $((base + 24))"

start_herd() { # plain|tls: the five servers, until their 12 directed links are up
    pids=()
    for n in "${names[@]}"; do
        $pin 0 $herd serve "$n" --config "$dir/$1.json" >/dev/null 2>"$dir/$1-$n.err" &
        pids+=($!)
    done
    for _ in $(seq 400); do
        [ "$(cat "$dir"/"$1"-*.err | grep -c 'linked to')" -ge 12 ] && return
        sleep 0.05
    done
    echo "the $1 herd did not link" >&2; exit 1
}
start_solo() {
    $pin 0 $herd serve Bailey --config "$dir/solo.json" >"$dir/solo.out" 2>"$dir/solo.err" &
    pids=($!)
    for _ in $(seq 400); do grep -q listening "$dir/solo.out" "$dir/solo.err" && return; sleep 0.05; done
    echo "the solo server did not start" >&2; exit 1
}
redis_up() { redis-cli -p "$1" ping 2>/dev/null | grep -q PONG; }
start_redis() { # tree|solo
    pids=()
    local parent=(- 0 0 1 2) count=5
    [ "$1" = solo ] && count=1
    for i in $(seq 0 $((count - 1))); do
        local of=()
        [ "$i" -gt 0 ] && of=(--replicaof 127.0.0.1 $((rbase + ${parent[$i]})))
        $pin 0 redis-server --port $((rbase + i)) --bind 127.0.0.1 --save '' --appendonly no \
            --daemonize no --dir "$dir" --dbfilename "dump-$i.rdb" "${of[@]}" >"$dir/redis-$i.log" 2>&1 &
        pids+=($!)
    done
    for i in $(seq 0 $((count - 1))); do
        for _ in $(seq 400); do redis_up $((rbase + i)) && break; sleep 0.05; done
        redis_up $((rbase + i)) || { echo "redis $i did not start" >&2; exit 1; }
    done
    for i in $(seq 1 $((count - 1))); do
        for _ in $(seq 400); do
            redis-cli -p $((rbase + i)) info replication | grep -q 'master_link_status:up' && break
            sleep 0.05
        done
        redis-cli -p $((rbase + i)) info replication | grep -q 'master_link_status:up' ||
            { echo "redis replica $i did not sync" >&2; exit 1; }
    done
}
stop() {
    kill "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
    rm -rf "$dir"/logs "$dir"/*.err "$dir"/*.out "$dir"/dump-*.rdb
}
cpu_ticks() { # user + system clock ticks of the run's server processes, every thread
    local t=0
    for p in "${pids[@]}"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
    echo $t
}
hz=$(getconf CLK_TCK)
switches() { # context switches (voluntary and not) of every thread of the run's server processes
    local p
    for p in "${pids[@]}"; do cat /proc/"$p"/task/*/status; done | awk '/ctxt_switches/ {s += $2} END {print s}'
}
# PROFILE: per server, "cpu_ns switches" of every thread, one line per process.
per_server() {
    local p
    for p in "${pids[@]}"; do
        echo "$(cat /proc/"$p"/task/*/schedstat | awk '{ns += $1} END {printf "%.0f", ns}')" \
            "$(cat /proc/"$p"/task/*/status | awk '/ctxt_switches/ {s += $2} END {print s}')"
    done
}
calls=(epoll_wait epoll_pwait read recvfrom write sendto writev futex epoll_ctl)
events=$(printf 'syscalls:sys_enter_%s,' "${calls[@]}")raw_syscalls:sys_enter
perfs=()
profile_start() {
    per_server >"$dir/ps0"
    perfs=()
    local i=0 p
    for p in "${pids[@]}"; do
        perf stat -x, -e "$events" -p "$p" -o "$dir/perf-$i.csv" &
        perfs+=($!)
        i=$((i + 1))
    done
    sleep 0.5 # perf has attached
}
profile_stop() { # kind round
    kill -INT "${perfs[@]}" 2>/dev/null || true
    wait "${perfs[@]}" 2>/dev/null || true
    per_server >"$dir/ps1"
    python3 - "$dir" "$1" "$2" "$requests" "${calls[*]}" <<'PY' >>"$dir/profile"
import sys
d, kind, rnd, n, calls = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5].split()
before = [list(map(int, l.split())) for l in open(f"{d}/ps0")]
after = [list(map(int, l.split())) for l in open(f"{d}/ps1")]
for i, (b, a) in enumerate(zip(before, after)):
    counts = {}
    for line in open(f"{d}/perf-{i}.csv"):
        f = line.strip().split(",")
        if len(f) > 2 and f[0].isdigit():
            counts[f[2].split(":")[-1].replace("sys_enter_", "")] = int(f[0])
    total = counts.get("sys_enter", 0)
    named = [counts.get(c, 0) for c in calls]
    row = [(a[0] - b[0]) / 1e3 / n, (a[1] - b[1]) / n, total / n] + [x / n for x in named]
    row.append((total - sum(named)) / n)
    print(kind, rnd, i, " ".join("%.4f" % x for x in row))
PY
}

run() { # kind: writes "rate p50 p99 errors catch-up-ms cpu-us-per-write switches-per-write client-cpu" to $dir/row
    local kind=$1 target fence load_args=()
    case $kind in
    herd | tls) start_herd "${kind/herd/plain}"; target=$base
        fence="herd $base $admins" ;;
    solo-herd) start_solo; target=$((base + 30)); fence="herd $((base + 30)) $((base + 32))" ;;
    redis) start_redis tree; target=$rbase
        fence="redis $rbase $((rbase + 1)) $((rbase + 2)) $((rbase + 3)) $((rbase + 4))" ;;
    solo-redis) start_redis solo; target=$rbase; fence="redis $rbase $rbase" ;;
    esac
    case $kind in
    redis | solo-redis) load_args=(--workload raw --template 'SET k{i} v' --expect +OK) ;;
    *) load_args=(--workload iamat --clients 1000) ;;
    esac
    local t0 t1 s0 s1 lag
    [ -z "${PROFILE:-}" ] || profile_start
    t0=$(cpu_ticks)
    s0=$(switches)
    /usr/bin/time -f '%U %S' -o "$dir/client-cpu" $pin 1 $herd load --target 127.0.0.1:$target "${load_args[@]}" --connections "$conns" \
        --depth "$depth" --requests "$requests" --warmup 0 --json 2>/dev/null >"$dir/load.json"
    $pin 1 $helper fence $fence >"$dir/lag"
    lag=$(cat "$dir/lag")
    t1=$(cpu_ticks)
    s1=$(switches)
    [ -z "${PROFILE:-}" ] || profile_stop "$kind" "$round"
    stop
    python3 - "$dir/load.json" "$lag" "$((t1 - t0))" "$hz" "$requests" "$((s1 - s0))" "$dir/client-cpu" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); l = r['latency_us']
ticks, hz, n, switches = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
client = sum(map(float, open(sys.argv[7]).read().split()[-2:]))
print('%.0f %.0f %.0f %d %s %.2f %.2f %.2f' % (r['throughput_rps'], l['p50'], l['p99'], r['errors_total'], sys.argv[2],
                                               ticks / hz * 1e6 / n, switches / n, client * 1e6 / n))
PY
} >"$dir/row"

kinds=(herd redis tls solo-herd solo-redis)
results=$dir/results
echo "commit $(git rev-parse --short HEAD), load average at start: $(cut -d' ' -f1-3 /proc/loadavg)," \
    "$requests requests, $conns connections, depth $depth${LOG_DETAIL:+, log_detail $LOG_DETAIL}${NICE:+, nice $NICE}"
echo
echo "| round | run | writes/s | p50 µs | p99 µs | errors | catch-up ms | CPU µs/write | switches/write | client CPU µs/write |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for round in $(seq "$rounds"); do
    for k in "${kinds[@]}"; do
        run "$k"
        read -r rate p50 p99 err lag cpu sw client <"$dir/row"
        echo "| $round | $k | $rate | $p50 | $p99 | $err | $lag | $cpu | $sw | $client |"
        echo "$round $k $rate $lag $cpu" >>"$results"
    done
done
echo
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
python3 - "$results" <<'PY'
import statistics as st, sys
rows = [l.split() for l in open(sys.argv[1])]
rate = {(int(r), k): float(v) for r, k, v, _, _ in rows}
cpu = {(int(r), k): float(c) for r, k, _, _, c in rows}
rounds = sorted({r for r, _ in rate})
med = lambda k, d=rate: st.median(d[(r, k)] for r in rounds)
print("| comparison | medians (writes/s) | ratio of medians | median of per-round ratios | CPU µs/write (medians) | target |")
print("|---|---|---|---|---|---|")
for a, b, target in (("herd", "redis", "≥ 1.6"), ("tls", "redis", "-"), ("solo-herd", "solo-redis", "≥ 1.0")):
    paired = st.median(rate[(r, a)] / rate[(r, b)] for r in rounds)
    print(f"| {a} / {b} | {med(a):.0f} / {med(b):.0f} | {med(a) / med(b):.2f} | {paired:.2f} | "
          f"{med(a, cpu):.2f} / {med(b, cpu):.2f} | {target} |")
PY
[ -z "${PROFILE:-}" ] && exit 0
echo
python3 - "$dir/profile" "${calls[*]}" <<'PY'
import statistics as st, sys
calls = sys.argv[2].split()
rows = [l.split() for l in open(sys.argv[1])]
names = {"herd": "Bailey Bona Campbell Clark Jaquez", "tls": "Bailey Bona Campbell Clark Jaquez",
         "redis": "primary replica(Bona) replica(Campbell) replica-of-Bona(Clark) replica-of-Campbell(Jaquez)",
         "solo-herd": "Bailey", "solo-redis": "redis"}
print("Per server, medians over the rounds, per write: CPU µs, context switches, system calls (all, then by name)")
print()
print("| run | server | CPU µs | switches | syscalls | " + " | ".join(calls) + " | other |")
print("|---|---|---|---|---|" + "---|" * (len(calls) + 1))
for kind in ("herd", "redis", "tls", "solo-herd", "solo-redis"):
    for i, name in enumerate(names[kind].split()):
        mine = [list(map(float, r[3:])) for r in rows if r[0] == kind and int(r[2]) == i]
        if not mine:
            continue
        med = [st.median(col) for col in zip(*mine)]
        cells = ["%.2f" % med[0], "%.3f" % med[1], "%.2f" % med[2]] + ["%.3f" % x for x in med[3:]]
        print(f"| {kind} | {name} | " + " | ".join(cells) + " |")
PY
