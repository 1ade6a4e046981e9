#!/usr/bin/env bash
# Start-up with a journal of 1,000,000 records (issue 15: "served within 2 s of start"), for one or more
# herd binaries, ROUNDS interleaved starts each: the wall time from spawn to the answer to a WHATSAT for the
# last record, and the CPU time (user + system, /proc/PID/stat) the server had used by then, which does not
# depend on the machine's load. The journal is written once from the format alone (as tests/journal.rs's
# a_million test writes it: one segment, every record with the same client time) on a disk-backed DIR, and
# copied afresh before each start (a start may rewrite it). The page cache is warm.
#
#     benches/journal-replay.sh ROUNDS DIR BIN [BIN ...]     e.g. benches/journal-replay.sh 4 /var/tmp /tmp/herd-before target/release/herd
set -euo pipefail
[ $# -ge 3 ] || { sed -n 2,9p "$0" >&2; exit 2; }
rounds=$1; base=$2; shift 2
dir=$(mktemp -d "$base/herd-journal-replay.XXXXXX")
pid=
trap '[ -n "$pid" ] && kill $pid 2>/dev/null; rm -rf "$dir"' EXIT
echo "filesystem of $dir: $(df -T "$dir" | awk 'NR==2 {print $2 " on " $1}'); load average $(cut -d' ' -f1 /proc/loadavg)"
python3 - "$dir/journal/Solo" <<'PY'
import os, struct, sys, time, zlib
d = sys.argv[1]; os.makedirs(d)
n, t = 1_000_000, "%d.000000000" % int(time.time())
out = bytearray(b"HERDJNL1")
for i in range(1, n + 1):
    line = ("AT Solo +0.000001000 m%d +34.068930-118.445127 %s\n" % (i, t)).encode()
    ln, sq = struct.pack("<I", len(line)), struct.pack("<Q", i)
    out += ln + struct.pack("<I", zlib.crc32(sq + line, zlib.crc32(ln))) + sq + line
name = "seg-%020d.log" % 1
open(os.path.join(d, name), "wb").write(out)
open(os.path.join(d, "meta"), "w").write("herd-journal 1\nrid 00ff00ff\nmode always\nclean 1\nlast %d\nfile %s\n" % (n, name))
PY
echo '{"servers": [{"name": "Solo", "port": 31790, "peer_port": 31791}], "log_dir": "'"$dir"'/logs", "journal": {"dir": "'"$dir"'/run", "fsync": "always"}}' > "$dir/c.json"
for round in $(seq "$rounds"); do
    for bin in "$@"; do
        rm -rf "$dir/run"; cp -r "$dir/journal" "$dir/run"
        start=$(date +%s.%N)
        "$bin" serve Solo --config "$dir/c.json" > /dev/null 2>&1 &
        pid=$!
        python3 - <<'PY'
import socket, time
deadline = time.time() + 60
while True:
    try:
        s = socket.create_connection(("127.0.0.1", 31790)); break
    except OSError:
        if time.time() > deadline: raise
        time.sleep(0.005)
s.sendall(b"WHATSAT m1000000 10 1\n")
data = b""
while not data.endswith(b"\n\n"):
    data += s.recv(65536)
assert data.startswith(b"AT Solo "), data
PY
        end=$(date +%s.%N)
        cpu=$(awk '{print $14 + $15}' "/proc/$pid/stat")
        kill $pid; wait $pid 2>/dev/null || true; pid=
        python3 -c "print('round $round  %-40s spawn to answer %.2f s, CPU %.2f s' % ('$bin', $end - $start, $cpu / 100))"
    done
done
echo "load average at the end: $(cut -d' ' -f1 /proc/loadavg)"
