#!/usr/bin/env python3
"""Conformance checks shared by herd and the comparison servers (PROTOCOL.md sections 1-5).

    python3 benches/compare/conformance.py HOST:PORT [HOST:PORT ...]

Every check talks plain TCP to the first address; the flood check sends IAMAT to the first and asks
WHATSAT at each further address (the herd must link them). WHATSAT needs the servers' Places endpoint
up (the local Places service in comparison runs). Expected values come from this script's own model of
the protocol (the regexes and the clock read around each request), never from a server's answer.
Exit status 0 when every check passes, 1 otherwise.
"""

import json
import re
import socket
import sys
import time
from decimal import Decimal

AT = re.compile(rb"AT (\S+) ([+-])(\d+)\.(\d{9}) (\S+) (\S+) (\S+)")
TIMEOUT = 5.0
failures = []


def addr(s):
    host, port = s.rsplit(":", 1)
    return host, int(port)


def connect(a):
    s = socket.create_connection(addr(a), timeout=TIMEOUT)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


class Replies:
    """Reads replies off a socket: AT / `?` lines, and WHATSAT replies (AT line, JSON, empty line)."""

    def __init__(self, sock):
        self.sock, self.buf = sock, b""

    def _until(self, sep):
        deadline = time.monotonic() + TIMEOUT
        while sep not in self.buf:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"closed with {self.buf[:80]!r} unanswered")
            self.buf += chunk
        i = self.buf.index(sep) + len(sep)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def line(self):
        return self._until(b"\n")

    def whatsat(self):
        return self._until(b"\n\n")

    def eof(self):
        """True when the server closes with nothing more to say."""
        self.sock.settimeout(TIMEOUT)
        while True:
            chunk = self.sock.recv(65536)
            if not chunk:
                return not self.buf
            self.buf += chunk


def now_text():
    ns = time.time_ns()
    return f"{ns // 10**9}.{ns % 10**9:09d}"


def check(name, fn):
    try:
        fn()
        print(f"PASS {name}")
    except Exception as e:  # a check's failure is reported, the others still run
        failures.append(name)
        print(f"FAIL {name}: {type(e).__name__}: {e}")


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


def diff_ns(m):
    v = int(m[3]) * 10**9 + int(m[4])
    return -v if m[2] == b"-" else v


def time_ns(text):
    """Client time text to nanoseconds, truncated past the ninth digit, exactly."""
    return int(Decimal(text) * 10**9)


def main(addrs):
    a = addrs[0]
    tag = f"c{time.time_ns() % 10**12}"

    def invalid_echo():
        cases = [b"HELLO  world\tfoo", b"IAMAT only three", b"\xff\xfe not utf-8 \x01",
                 b"IAMAT x +34.-118. 1700000000", b"WHATSAT nobody-" + tag.encode() + b" 10 5",
                 b"AT Bailey +0.1 x +1+1 1700000000", b"IAMAT x +34-118 1700000000.", b"iamat x +1+1 1"]
        with connect(a) as s:
            r = Replies(s)
            for c in cases:
                s.sendall(c + b"\r\n")
                got = r.line()
                expect(got == b"? " + c + b"\n", f"{c!r}: got {got!r}")

    def nine_digit_diff():
        with connect(a) as s:
            r = Replies(s)
            cases = [now_text(), "1700000000", f"{time.time_ns() // 10**9}.123456789123456",
                     f"{time.time_ns() // 10**9 + 100}.5", "0001520023934.9"]
            for i, t in enumerate(cases):
                cmd = f"IAMAT {tag}-d{i} +34.068930-118.445127 {t}".encode()
                before = time.time_ns()
                s.sendall(cmd + b"\n")
                got = r.line()
                after = time.time_ns()
                m = AT.fullmatch(got.rstrip(b"\n"))
                expect(m and got.endswith(b"\n"), f"not an AT line: {got!r}")
                expect(m.groups()[4:7] == tuple(cmd.split()[1:]), f"fields not echoed: {got!r}")
                lo, hi = before - time_ns(t) - 1, after - time_ns(t)
                expect(lo <= diff_ns(m) <= hi, f"diff {m[2]+m[3]+b'.'+m[4]} outside [{lo}, {hi}] ns for {t}")
                expect(not (m[2] == b"-" and diff_ns(m) == 0), f"negative zero: {got!r}")

    def pipelined_order():
        me = f"{tag}-p"
        cmds = [f"IAMAT {me} +34.068930-118.445127 {now_text()}", f"WHATSAT {me} 10 2", "bogus one",
                f"IAMAT {me}2 -33.8587+151.2100 {now_text()}", f"WHATSAT {me}2 5 1", "WHATSAT x 0 1",
                f"IAMAT {me}3 +1+1 {now_text()}"]
        with connect(a) as s:
            r = Replies(s)
            s.sendall("".join(c + "\n" for c in cmds).encode())
            for c in cmds:
                f = c.split()
                if f[0] == "IAMAT":
                    got = r.line()
                    m = AT.fullmatch(got.rstrip(b"\n"))
                    expect(m and m[5].decode() == f[1], f"for {c!r} got {got!r}")
                elif f[0] == "WHATSAT" and f[2] != "0":
                    got = r.whatsat()
                    at, _, body = got.partition(b"\n")
                    m = AT.fullmatch(at)
                    expect(m and m[5].decode() == f[1], f"for {c!r} got {got[:120]!r}")
                    answer = json.loads(body)
                    expect(len(answer["results"]) <= int(f[3]), f"bound {f[3]} not applied")
                    expect(b"\n\n" not in body.rstrip(b"\n"), "a run of LFs inside the JSON")
                else:
                    got = r.line()
                    expect(got == f"? {c}\n".encode(), f"for {c!r} got {got!r}")

    def half_close():
        with connect(a) as s:
            r = Replies(s)
            cmd = f"IAMAT {tag}-h +10-20 {now_text()}"
            s.sendall(f"IAMAT {tag}-h0 +10-20 {now_text()}\n{cmd}".encode())
            s.shutdown(socket.SHUT_WR)
            for client in (f"{tag}-h0", f"{tag}-h"):
                got = r.line()
                m = AT.fullmatch(got.rstrip(b"\n"))
                expect(m and m[5].decode() == client, f"got {got!r}")
            expect(r.eof(), f"bytes after the last reply: {r.buf!r}")

    def flood():
        client = f"{tag}-f"
        with connect(a) as s:
            s.sendall(f"IAMAT {client} +34.068930-118.445127 {now_text()}\n".encode())
            at = Replies(s).line().rstrip(b"\n")
        for other in addrs[1:]:
            # Within 1 s (herd promises at once; the others flood asynchronously, so poll briefly).
            deadline = time.monotonic() + 1.0
            while True:
                with connect(other) as s:
                    s.sendall(f"WHATSAT {client} 10 1\n".encode())
                    r = Replies(s)
                    first = r.line().rstrip(b"\n")
                    if first.startswith(b"AT "):
                        r.whatsat()  # the rest of the reply: the JSON and its empty line
                        expect(first == at, f"{other}: {first!r} != {at!r}")
                        break
                expect(time.monotonic() < deadline, f"{other} never learned {client}: {first!r}")
                time.sleep(0.01)

    check("invalid command echoed exactly", invalid_echo)
    check("IAMAT time diff: sign, 9 digits, exact", nine_digit_diff)
    check("replies in order under pipelining (with WHATSAT)", pipelined_order)
    check("half-close: last command without LF answered, then close", half_close)
    if len(addrs) > 1:
        check(f"flood: IAMAT at {a} seen by WHATSAT at {', '.join(addrs[1:])}", flood)
    print("all passed" if not failures else f"{len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1:]))
