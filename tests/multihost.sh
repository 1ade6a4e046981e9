#!/usr/bin/env bash
# tests/multihost.sh: the Winter 2023 herd on five Linux network namespaces, over a lossy, slow network,
# through a partition and its healing. Needs root, iproute2 (ip netns, veth, bridge) and python3.
#
#     cargo build --release && sudo tests/multihost.sh
#
#  1. Namespaces herd-ns1..5 hold Bailey, Bona, Campbell, Clark, Jaquez on 10.77.0.1..5/24, each with a
#     veth `eth0` to the hub namespace herd-hub. There, bridge br-west holds Bailey and Bona, br-east holds
#     the rest, and a trunk veth joins the two bridges: `ip link set trunk down` is the partition
#     {Bailey, Bona} | {Campbell, Clark, Jaquez}, and nothing else changes.
#  2. A config in a temp dir (links from config/herd.json, client/peer/admin ports 10000/20000/30000),
#     one `herd serve` per namespace; waits for every `linked to X`.
#  3. `tc qdisc add dev eth0 root netem delay 20ms 5ms loss 1%` in each server namespace. A kernel without
#     sch_netem gets the same delay, jitter and loss from a userspace NFQUEUE delayer on eth0's egress
#     (needs iptables, installed with apt-get when missing).
#  4. Flood: 50 IAMATs at Bailey, one at a time; time until each is in Jaquez's /records.
#  5. Partition: updates on both sides (client times strictly increasing), HOLD_S seconds (default 25),
#     heal; time until every server's /records holds the newest record of every id, and until every
#     link is up again. Exit 1 when either takes CONVERGE_S (default 5) or more. The bound is what
#     PROTOCOL section 5 promises ("a partitioned server catches up at once"; redial backoff capped at a
#     fraction of a second) plus room for this network: a lost SYN costs a 1 s retransmission, and
#     the 1% loss may hit a handshake or two. The dead links must have been dropped during the hold
#     (TCP_USER_TIMEOUT 20 s, so HOLD_S >= 20; or the peer heartbeat); measured: 0.85 s.
# Everything it makes (namespaces, bridges, processes) is removed on any exit; leftovers of a killed run
# are removed at start, so it is safe to run again. Env: BIN (default target/release/herd), HOLD_S.
# What to expect: the cut links go silent, so the peer heartbeat (limits.peer_dead_after_ms, 3 s) drops
# both ends of each within 3 s (before it, TCP keepalive dropped only the idle receiving ends after about
# 20 s, and the sending ends learnt of the heal only at their next retransmission, up to 120 s later). The
# dialers then redial every 250 ms at most, so heal-to-converged should no longer grow with HOLD_S.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release/herd}
HOLD_S=${HOLD_S:-25}
CONVERGE_S=${CONVERGE_S:-5}
NAMES=(Bailey Bona Campbell Clark Jaquez)  # herd-ns1..5; the first two are the west side
NETEM=(delay 20ms 5ms loss 1%)
NSS=(herd-ns1 herd-ns2 herd-ns3 herd-ns4 herd-ns5 herd-hub)
[[ $EUID -eq 0 ]] || { echo "multihost: needs root (network namespaces)" >&2; exit 2; }
[[ -x $BIN ]] || { echo "multihost: no $BIN: run cargo build --release first" >&2; exit 2; }
exec 9>/run/herd-multihost.lock
flock -w 300 9 || { echo "multihost: another run holds /run/herd-multihost.lock" >&2; exit 2; }

TMP=$(mktemp -d /tmp/herd-multihost.XXXXXX)
PIDS=()
alive() { local p; for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && return 0; done; return 1; }
teardown() {  # every process in our namespaces (this run's or a killed run's), then the namespaces
    local ns pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 30); do alive || break; sleep 0.1; done  # herd exits within 2 s of SIGTERM
    for ns in "${NSS[@]}"; do
        [[ -e /run/netns/$ns ]] || continue
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
    done
    PIDS=()
}
cleanup() {
    local rc=$?
    set +e
    teardown
    wait 2>/dev/null
    if [[ $rc -eq 0 ]]; then rm -rf "$TMP"; else echo "multihost: failed ($rc); logs kept in $TMP" >&2; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
teardown

# The client side, the delayer and the checks: python3, entering a namespace with setns(2) per socket.
PY=$TMP/mh.py
cat >"$PY" <<'EOF'
import ctypes, datetime, glob, heapq, json, os, random, select, socket, statistics, struct, sys, time
libc, TMP = ctypes.CDLL(None, use_errno=True), os.path.dirname(__file__)
NAMES = ["Bailey", "Bona", "Campbell", "Clark", "Jaquez"]
WHERE = {"west": "+34.068930-118.445127", "east": "+37.427500-122.169700"}
IDS = [f"mh{i:02d}" for i in range(50)]
EXPECTED = os.path.join(TMP, "expected.json")

def talk(server, port, data):  # one connection from inside the server's namespace, to the server
    k = NAMES.index(server) + 1
    fd = os.open(f"/run/netns/herd-ns{k}", os.O_RDONLY)
    if libc.setns(fd, 0x40000000):  # CLONE_NEWNET
        raise OSError(ctypes.get_errno(), "setns")
    os.close(fd)
    host = "127.0.0.1" if port == 30000 else f"10.77.0.{k}"  # admin_host is loopback
    with socket.create_connection((host, port), timeout=5) as c:
        c.sendall(data)
        c.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := c.recv(1 << 16):
            out += chunk
    return out.decode()

def body(raw):  # an HTTP answer's body; /records comes chunked (the admin listener streams it)
    head, rest = raw.split("\r\n\r\n", 1)
    if "transfer-encoding: chunked" not in head.lower():
        return rest
    out = []
    while True:
        size, rest = rest.split("\r\n", 1)
        n = int(size, 16)
        if n == 0:
            return "".join(out)
        out.append(rest[:n])
        rest = rest[n + 2:]

def records(server):  # the admin listener answers only requests that name this host
    raw = talk(server, 30000, b"GET /records HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    return {r["client_id"]: r["at"] for r in json.loads(body(raw))}

def iamat(server, ids, side, t):  # t: client times, strictly increasing; remembers the newest reply
    lines = "".join(f"IAMAT {cid} {WHERE[side]} {t}.{IDS.index(cid):09d}\n" for cid in ids)
    replies = talk(server, 10000, lines.encode()).splitlines()
    assert len(replies) == len(ids) and all(r.startswith("AT ") for r in replies), replies
    exp = json.load(open(EXPECTED)) if os.path.exists(EXPECTED) else {}
    exp.update(zip(ids, replies))
    json.dump(exp, open(EXPECTED, "w"))

def agreeing():
    exp = json.load(open(EXPECTED))
    return {s: sum(records(s).get(cid) == at for cid, at in exp.items()) for s in NAMES}, len(exp)

def delay(ms, jitter_ms, loss_pct):  # netem by hand: hold each packet of NFQUEUE 0, drop loss% of them
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)  # NETLINK_NETFILTER
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    s.bind((0, 0))
    def send(kind, attrs, flags=1):  # nfnetlink_queue message to queue 0
        body = struct.pack("!BBH", socket.AF_UNSPEC, 0, 0)
        for t, v in attrs:
            body += struct.pack("=HH", 4 + len(v), t) + v + b"\0" * (-len(v) % 4)
        s.send(struct.pack("=IHHII", 16 + len(body), (3 << 8) | kind, flags, 0, 0) + body)
    send(2, [(1, struct.pack("!BxH", 1, socket.AF_INET))])  # config: bind
    send(2, [(2, struct.pack("!IB", 0, 1)), (4, struct.pack("!I", 1)), (5, struct.pack("!I", 1))])  # meta, fail-open
    held, d, j = [], float(ms) / 1e3, float(jitter_ms) / 1e3
    while True:
        if select.select([s], [], [], max(0, held[0][0] - time.monotonic()) if held else None)[0]:
            data = s.recv(1 << 16)
            while len(data) >= 16:
                n, kind = struct.unpack_from("=IH", data)
                off = 20
                while kind == 3 << 8 and off < n:  # a packet: find its id (NFQA_PACKET_HDR)
                    alen, atype = struct.unpack_from("=HH", data, off)
                    if atype & 0x7FFF == 1:
                        verdict = int(random.random() >= float(loss_pct) / 100)  # 0 drop, 1 accept
                        due = time.monotonic() + d + random.uniform(-j, j)
                        heapq.heappush(held, (due, struct.unpack_from("!I", data, off + 4)[0], verdict))
                    off += (alen + 3) & ~3
                data = data[(n + 3) & ~3:]
        while held and held[0][0] <= time.monotonic():
            _, pid, verdict = heapq.heappop(held)
            send(1, [(2, struct.pack("!II", verdict, pid))])

cmd, args = sys.argv[1], sys.argv[2:]
if cmd == "delay":
    delay(*args)
elif cmd == "flood":  # one IAMAT at a time at Bailey, then poll Jaquez until it has it
    lat = []
    for cid in IDS:
        t0 = time.monotonic()
        iamat("Bailey", [cid], "west", args[0])
        while cid not in records("Jaquez"):
            if time.monotonic() - t0 > 10:
                sys.exit(f"multihost: {cid} did not reach Jaquez in 10 s")
            time.sleep(0.001)
        lat.append((time.monotonic() - t0) * 1e3)
    print(f"{len(lat)} ids Bailey -> Jaquez: median {statistics.median(lat):.1f} ms, max {max(lat):.1f} ms")
elif cmd == "update":  # update SERVER SIDE TIME all|even
    iamat(args[0], IDS if args[3] == "all" else IDS[::2], args[1], args[2])
elif cmd == "agree":
    got, n = agreeing()
    print(" ".join(f"{s} {k}/{n}" for s, k in got.items()))
elif cmd == "converge":  # converge LIMIT_S: seconds until every server holds exactly the newest records
    t0 = time.monotonic()
    while time.monotonic() - t0 < float(args[0]):
        got, n = agreeing()
        if all(k == n for k in got.values()) and all(len(records(s)) == n for s in NAMES):
            print(f"{time.monotonic() - t0:.2f}")
            sys.exit(0)
        time.sleep(0.05)
    print(f"not within {args[0]} s (" + " ".join(f"{s} {k}/{n}" for s, k in got.items()) + ")")
    sys.exit(1)
elif cmd == "links":  # links SINCE_EPOCH: peer links dropped / come up since then, from the logs
    since, drops, ups = float(args[0]), {}, []
    for line in (l for f in glob.glob(os.path.join(TMP, "logs", "*.log")) for l in open(f)):
        at = datetime.datetime.fromisoformat(line.split(" ", 1)[0].replace("Z", "+00:00")).timestamp()
        if at >= since and " dropped: " in line:
            why = line.split(" dropped: ", 1)[1].split()[0]
            drops[why] = drops.get(why, 0) + 1
        if at >= since and " up: sending " in line:
            ups.append(at - since)
    print(f"{sum(drops.values())} peer links dropped" + "".join(f", {n} {why}" for why, n in drops.items())
          + f"; {len(ups)} came up" + (f" ({min(ups):.1f}-{max(ups):.1f} s after)" if ups else ""))
elif cmd == "relinked":  # relinked SINCE_EPOCH LIMIT_S N: wait until every herd_link_up is 1 again
    up, want = 0, int(args[2])
    while up < want and time.time() - float(args[0]) < float(args[1]):
        time.sleep(0.05)
        up = sum(int(l.rsplit(" ", 1)[1]) for s in NAMES
                 for l in talk(s, 30000, b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                 .splitlines() if l.startswith("herd_link_up{"))
    print(f"herd_link_up {up}/{want}" + ("" if up == want else f" {args[1]} s after heal"))
    sys.exit(0 if up == want else 1)
EOF

# 1. The network.
START=$EPOCHREALTIME
ip netns add herd-hub
ip -n herd-hub link set lo up
for br in br-west br-east; do ip -n herd-hub link add $br type bridge && ip -n herd-hub link set $br up; done
ip -n herd-hub link add trunk type veth peer name trunk-east
ip -n herd-hub link set trunk master br-west up
ip -n herd-hub link set trunk-east master br-east up
for k in 1 2 3 4 5; do
    ns=herd-ns$k name=${NAMES[k - 1]} br=$([[ $k -le 2 ]] && echo br-west || echo br-east)
    ip netns add $ns
    ip -n $ns link set lo up
    ip link add "h-$name" netns herd-hub type veth peer name eth0 netns $ns
    ip -n herd-hub link set "h-$name" master $br up
    ip -n $ns addr add 10.77.0.$k/24 dev eth0
    ip -n $ns link set eth0 up
done

# 2. The config and the servers.
python3 - "$ROOT/config/herd.json" "$TMP" <<'EOF'
import json, sys
shipped, tmp = json.load(open(sys.argv[1])), sys.argv[2]
names = ["Bailey", "Bona", "Campbell", "Clark", "Jaquez"]
assert [s["name"] for s in shipped["servers"]] == names, "config/herd.json is not the Winter 2023 herd"
servers = [{"name": n, "host": f"10.77.0.{k}", "port": 10000, "peer_port": 20000, "admin_port": 30000}
           for k, n in enumerate(names, 1)]
cfg = {"servers": servers, "links": shipped["links"], "log_dir": f"{tmp}/logs"}
json.dump(cfg, open(f"{tmp}/herd.json", "w"), indent=1)
EOF
LINKS=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["links"]))' "$TMP/herd.json")
for k in 1 2 3 4 5; do
    name=${NAMES[k - 1]}
    ip netns exec herd-ns$k env RUST_LOG=info "$BIN" serve "$name" --config "$TMP/herd.json" \
        >"$TMP/$name.out" 2>"$TMP/$name.err" 9>&- &
    PIDS+=($!)
done
wait_for() {  # wait_for SECONDS WHAT COMMAND...: poll every 0.1 s
    local limit=$1 what=$2 i
    shift 2
    for ((i = 0; i < limit * 10; i++)); do "$@" && return 0; sleep 0.1; done
    echo "multihost: no $what within $limit s" >&2
    return 1
}
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { print b - a }'; }
all_ready() { for n in "${NAMES[@]}"; do grep -q "^$n listening on" "$TMP/$n.out" || return 1; done; }
links_up() { [[ $(for n in "${NAMES[@]}"; do grep -o 'linked to [A-Za-z]*' "$TMP/$n.err" | sort -u; done | wc -l) -ge $((2 * LINKS)) ]]; }
wait_for 10 "ready line from every server" all_ready
wait_for 20 "linked to X for all $((2 * LINKS)) directed links" links_up
printf 'setup: 5 servers in herd-ns1..5 (10.77.0.1-5/24), all %d directed peer links up %.1f s after start\n' \
    $((2 * LINKS)) "$(since "$START")"
echo "       hub herd-hub: br-west {Bailey, Bona} + br-east {Campbell, Clark, Jaquez}, joined by veth trunk"

# 3. Latency and loss on every server's eth0 egress.
if ip netns exec herd-ns1 tc qdisc add dev eth0 root netem "${NETEM[@]}" 2>/dev/null; then
    for k in 2 3 4 5; do ip netns exec herd-ns$k tc qdisc add dev eth0 root netem "${NETEM[@]}"; done
    echo "netem: ${NETEM[*]} on eth0 of each server namespace (tc netem)"
else
    command -v iptables >/dev/null || timeout 300 apt-get install -y -qq iptables >/dev/null ||
        { timeout 300 apt-get update -qq && timeout 300 apt-get install -y -qq iptables >/dev/null; }
    for k in 1 2 3 4 5; do
        ip netns exec herd-ns$k iptables -A OUTPUT -o eth0 -j NFQUEUE --queue-num 0 --queue-bypass
        ip netns exec herd-ns$k python3 "$PY" delay 20 5 1 9>&- &
        PIDS+=($!)
    done
    echo "netem: ${NETEM[*]} on eth0 egress of each server namespace" \
        "(userspace NFQUEUE delayer: this kernel has no sch_netem)"
fi
sleep 0.5

# 4. Flood propagation, two hops at least.
T=$(date +%s)
FLOOD=$(python3 "$PY" flood "$((T + 1))")
echo "flood: $FLOOD"

# 5. Partition, updates on both sides, heal.
ip -n herd-hub link set trunk down
CUT=$EPOCHREALTIME
python3 "$PY" update Bailey west "$((T + 2))" all   # odd ids: the east's update below is newest
python3 "$PY" update Jaquez east "$((T + 3))" all
python3 "$PY" update Bailey west "$((T + 4))" even  # even ids: this west update is newest
sleep 2
echo "partition: trunk down; 50 updates at Bailey, then 50 at Jaquez, then 25 (even ids) at Bailey"
AGREE=$(python3 "$PY" agree)
echo "  newest records held before heal: $AGREE"
sleep "$((HOLD_S > 2 ? HOLD_S - 2 : 0))"
CUT_LINKS=$(python3 "$PY" links "$CUT")
echo "  during the partition ($(since "$CUT" | xargs printf %.0f) s): $CUT_LINKS"
ip -n herd-hub link set trunk up
HEAL=$EPOCHREALTIME
if HEALED=$(python3 "$PY" converge "$CONVERGE_S"); then CONVERGED=yes; else CONVERGED=no; fi
echo "  heal (trunk up) -> every /records holds the newest record per id: $HEALED s"
if RELINKED=$(python3 "$PY" relinked "$HEAL" "$CONVERGE_S" $((2 * LINKS))); then ALL_UP=yes; else ALL_UP=no; fi
sleep 0.2  # log lines are flushed 50 ms after they are written
HEAL_LINKS=$(python3 "$PY" links "$HEAL")
echo "  since heal: $HEAL_LINKS; $RELINKED"
printf 'total: %.0f s\n' "$(since "$START")"
echo "converged within $CONVERGE_S s: $CONVERGED; every link up again within $CONVERGE_S s: $ALL_UP"
[[ $CONVERGED == yes && $ALL_UP == yes ]]
