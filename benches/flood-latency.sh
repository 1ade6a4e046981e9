#!/usr/bin/env bash
# Flood latency three hops away: 300 IAMATs at Welsh (Goloman herd), one every 5 ms, and the time from
# the loop turn at Welsh that read each one to the loop turn at Hands (3 hops away) that stored it, from
# the servers' own log timestamps (microseconds, the same clock). Prints the median, p90 and p99.
#
#     benches/flood-latency.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$dir"' EXIT
python3 - "$dir" <<'PY'
import json, sys
c = json.load(open("config/herds/goloman.json"))
for i, s in enumerate(c["servers"]):
    s["port"], s["peer_port"] = 41000 + i, 42000 + i
c.pop("places"); c.pop("local_places"); c["log_dir"] = sys.argv[1] + "/logs"
json.dump(c, open(sys.argv[1] + "/c.json", "w"))
PY
for n in Goloman Hands Holiday Welsh Wilkes; do
    target/release/herd serve $n --config "$dir/c.json" >/dev/null 2>"$dir/$n.err" &
done
for _ in $(seq 200); do [ "$(grep -h 'linked to' "$dir"/*.err 2>/dev/null | wc -l)" -ge 12 ] && break; sleep 0.05; done
python3 - "$dir" <<'PY'
import socket, sys, time, re, os, signal, subprocess, statistics
d = sys.argv[1]
for i in range(300):
    s = socket.create_connection(("127.0.0.1", 41003))
    s.sendall(b"IAMAT fl%d +34.068930-118.445127 %d\n" % (i, 1700000000 + i))
    s.recv(200); s.close()
    time.sleep(0.005)
time.sleep(0.2)
subprocess.run(["pkill", "-TERM", "-f", d + "/c.json"])
time.sleep(2)
def stamps(name, pat):
    out = {}
    for line in open(f"{d}/logs/{name}.log"):
        m = re.search(pat, line)
        if m:
            t = line.split(" ")[0]
            hms = t[11:-1].split(":")
            out.setdefault(m.group(1), float(hms[0]) * 3600 + float(hms[1]) * 60 + float(hms[2]))
    return out
sent = stamps("Welsh", r"recv \S+ IAMAT (fl\d+) ")
got = stamps("Hands", r"peer-recv \S+ AT \S+ \S+ (fl\d+) ")
lat = sorted((got[k] - sent[k]) * 1e6 for k in sent if k in got)
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]
print(f"{len(lat)} records, Welsh -> Hands (3 hops): median {statistics.median(lat):.0f} us, p90 {q(0.9):.0f} us, p99 {q(0.99):.0f} us, max {lat[-1]:.0f} us")
PY
