#!/usr/bin/env python3
"""The herd protocol subset on Python asyncio streams, written for benches/compare.

    python3 herd_asyncio.py NAME [--config FILE] [--reuseport]

Same config file as herd (servers, links, places, limits.max_line, limits.max_clock_skew_s). What it does,
the way such a server is usually written with asyncio and nothing but the standard library:

- IAMAT / WHATSAT / `? line` on the client port, one coroutine per connection, commands handled in
  arrival order (so replies to pipelined commands leave in order), the last line answered after EOF.
- Records: newest client time wins, compared exactly as decimals (`decimal.Decimal`), ties broken by
  (server name, location) bytewise, as herd does.
- Flooding: a persistent outgoing link to every neighbour (`HELLO NAME` then AT lines), redialled every
  100 ms while down; on (re)connect every record held is sent first (anti-entropy). Records come in on
  the peer port, only from configured neighbours.
- WHATSAT: the legacy Nearby Search endpoint over HTTPS (the local Places service in comparison runs),
  one TLS connection per cache miss (one TLS context for them all, made at the first), a TTL cache keyed
  by (location, radius), results cut to the bound and re-serialized in Google's style.
- `--reuseport`: the client listener is opened with SO_REUSEPORT (`start_server(..., reuse_port=True)`),
  so several processes can share one client port, each with its own records: the GIL keeps a second
  thread from running Python in parallel, so a second process is asyncio's way to a second core.

Not here (herd has them): peer TLS and secrets, journal, admin port, logs, record retention, limits on
clients and buffers, request coalescing and a keep-alive pool for Places.
"""

import argparse
import asyncio
import decimal
import json
import os
import re
import ssl
import sys
import time
import urllib.parse
from decimal import Decimal

decimal.getcontext().prec = 100  # exact for 40-byte times and nanosecond clocks

LOCATION = re.compile(rb"([+-]\d+(?:\.\d+)?)([+-]\d+(?:\.\d+)?)")
DECIMAL = re.compile(rb"\d+(?:\.\d+)?")
NS = Decimal("1e-9")


class Server:
    def __init__(self, name, config):
        self.name = name
        servers = {s["name"]: s for s in config["servers"]}
        self.me = servers[name]
        self.names = set(servers)
        self.neighbours = {b if a == name else a for a, b in config.get("links", []) if name in (a, b)}
        self.peers = {n: servers[n] for n in self.neighbours}
        limits = config.get("limits", {})
        self.max_line = limits.get("max_line", 16384)
        self.max_skew = limits.get("max_clock_skew_s", 300)
        self.places = config.get("places")
        self.records = {}  # client id -> (time, server, location, AT line)
        self.links = {}  # neighbour -> asyncio.Queue of AT lines to send, while the link is up
        self.cache = {}  # (location, metres) -> (expires, parsed answer)
        self.tls = None  # the TLS context of every Places request, made at the first one

    # ----- records and flooding -----

    def store(self, client, at_line, server, location, t, came_from=None):
        """Keeps the record if it is newer than the one held and floods it; True when stored."""
        key = (Decimal(t.decode()), server, location)
        held = self.records.get(client)
        if held is not None and key <= held[:3]:
            return False
        self.records[client] = key + (at_line,)
        for peer, queue in self.links.items():
            if peer != came_from:
                queue.put_nowait(at_line)
        return True

    async def dial(self, peer):
        """Keeps one outgoing link to `peer` up for ever: every record first, then each new one."""
        s = self.peers[peer]
        while True:
            try:
                reader, writer = await asyncio.open_connection(s.get("host", "127.0.0.1"), s["peer_port"])
            except OSError:
                await asyncio.sleep(0.1)
                continue
            queue = asyncio.Queue()
            self.links[peer] = queue
            writer.write(b"HELLO " + self.name.encode() + b"\n")
            for record in self.records.values():
                writer.write(record[3] + b"\n")
            try:
                while True:
                    line = await queue.get()
                    writer.write(line + b"\n")
                    await writer.drain()
            except OSError:
                pass
            finally:
                del self.links[peer]
                writer.close()
            await asyncio.sleep(0.1)

    async def peer_conn(self, reader, writer):
        """An incoming link: `HELLO NAME` from a configured neighbour, then AT lines."""
        try:
            hello = (await reader.readline()).split()
            if len(hello) != 2 or hello[0] != b"HELLO" or hello[1].decode(errors="replace") not in self.neighbours:
                return
            peer = hello[1].decode()
            async for line in reader:
                f = line.split()
                if len(f) == 6 and f[0] == b"AT" and f[1].decode(errors="replace") in self.names:
                    if self.valid_iamat(f[3], f[4], f[5]):
                        self.store(f[3], line.rstrip(b"\r\n"), f[1], f[4], f[5], came_from=peer)
        except (OSError, ValueError):
            pass
        finally:
            writer.close()

    # ----- the client protocol -----

    def valid_iamat(self, client, location, t):
        if not 1 <= len(client) <= 255 or any(b < 0x20 or b == 0x7F for b in client):
            return False
        m = LOCATION.fullmatch(location)
        if len(location) > 64 or not m or abs(Decimal(m[1].decode())) > 90 or abs(Decimal(m[2].decode())) > 180:
            return False
        if len(t) > 40 or not DECIMAL.fullmatch(t):
            return False
        return Decimal(t.decode()) <= Decimal(time.time_ns()) * NS + self.max_skew

    async def command(self, line):
        """The reply to one command line (without its LF), or None for a blank line."""
        f = line.split()  # bytes.split() splits on exactly the protocol's six whitespace bytes
        if not f:
            return None
        if len(f) == 4 and f[0] == b"IAMAT" and self.valid_iamat(f[1], f[2], f[3]):
            diff = (Decimal(time.time_ns()) * NS - Decimal(f[3].decode())).quantize(NS, decimal.ROUND_DOWN)
            sign = "-" if diff < 0 else "+"
            at = b"AT %s %s%s %s %s %s" % (self.name.encode(), sign.encode(), f"{abs(diff):f}".encode(), *f[1:])
            self.store(f[1], at, self.name.encode(), f[2], f[3])
            return at + b"\n"
        if len(f) == 4 and f[0] == b"WHATSAT" and f[1] in self.records:
            radius, bound = f[2], f[3]
            if DECIMAL.fullmatch(radius) and 0 < Decimal(radius.decode()) <= 50 and bound.isdigit():
                if int(bound) <= 20:
                    record = self.records[f[1]]
                    body = await self.nearby(record[2], Decimal(radius.decode()) * 1000, int(bound))
                    return record[3] + b"\n" + body + b"\n\n"
        return b"? " + line + b"\n"

    async def client_conn(self, reader, writer):
        try:
            while True:
                try:
                    line = await reader.readuntil(b"\n")
                except asyncio.IncompleteReadError as eof:
                    line = eof.partial  # the final command of a half-closed connection, if any
                except asyncio.LimitOverrunError:
                    break  # a line over the limit: flush what is owed and close
                if line:
                    reply = await self.command(line.removesuffix(b"\n").removesuffix(b"\r"))
                    if reply:
                        writer.write(reply)
                        await writer.drain()
                if not line.endswith(b"\n"):
                    break
        except OSError:
            pass
        finally:
            writer.close()

    # ----- Places -----

    async def nearby(self, location, metres, bound):
        m = LOCATION.fullmatch(location)
        key = (location, metres)
        hit = self.cache.get(key)
        if hit is None or hit[0] < time.monotonic():
            answer = await self.fetch(Decimal(m[1].decode()), Decimal(m[2].decode()), metres)
            if answer.get("status") in ("OK", "ZERO_RESULTS"):
                self.cache[key] = (time.monotonic() + self.places.get("cache_ttl_s", 300), answer)
        else:
            answer = hit[1]
        results = answer.get("results", [])
        if len(results) > bound:
            answer = dict(answer, results=results[:bound])
        return re.sub(rb"\n\n+", b"\n", google_json(answer).encode()).rstrip(b"\n")

    async def fetch(self, lat, lng, metres):
        """One GET over a fresh TLS connection; any failure becomes a legacy-shaped error object."""
        p = self.places or {}
        try:
            url = urllib.parse.urlsplit(p["url"])
            query = {"location": f"{lat:f},{lng:f}", "radius": f"{metres.normalize():f}"}
            if os.environ.get(p.get("key_env", "")):
                query["key"] = os.environ[p["key_env"]]
            if self.tls is None:
                # One context for all requests: making one loads the CA file and costs about a
                # millisecond with OpenSSL 3, more than the handshake it serves.
                self.tls = ssl.create_default_context(cafile=p.get("ca_file"))
            target = url.path + "?" + urllib.parse.urlencode(query)

            async def get():
                reader, writer = await asyncio.open_connection(url.hostname, url.port or 443, ssl=self.tls)
                writer.write(f"GET {target} HTTP/1.1\r\nHost: {url.netloc}\r\nConnection: close\r\n\r\n".encode())
                try:
                    return await reader.read()  # to EOF
                finally:
                    writer.close()

            raw = await asyncio.wait_for(get(), p.get("timeout_ms", 3000) / 1000)
            head, _, body = raw.partition(b"\r\n\r\n")
            if b"transfer-encoding: chunked" in head.lower():
                body = dechunk(body)
            answer = json.loads(body, object_pairs_hook=dict, parse_float=Number, parse_int=Number)
            if not isinstance(answer, dict) or "status" not in answer:
                raise ValueError("not a Places answer")
            return answer
        except (OSError, ValueError, KeyError, asyncio.TimeoutError, ssl.SSLError) as e:
            return {"html_attributions": [], "results": [], "status": "UNKNOWN_ERROR",
                    "error_message": f"Places request failed: {type(e).__name__}"}


class Number(str):
    """A JSON number kept as its text, so `1.50` goes back out as `1.50`."""


def dechunk(body):
    out = b""
    while body:
        size, _, body = body.partition(b"\r\n")
        n = int(size.split(b";")[0], 16)
        if n == 0:
            break
        out += body[:n]
        body = body[n + 2:]
    return out


def google_json(v, indent=0):
    """Google's legacy style: three-space indent, `"key" : value`, arrays of scalars inline."""
    pad, inner = " " * indent, " " * (indent + 3)
    if isinstance(v, dict):
        if not v:
            return "{}"
        items = ",\n".join(f"{inner}{google_json(str(k))} : {google_json(x, indent + 3)}" for k, x in v.items())
        return "{\n" + items + "\n" + pad + "}"
    if isinstance(v, list):
        if not v:
            return "[]"
        if all(not isinstance(x, (dict, list)) for x in v):
            return "[ " + ", ".join(google_json(x, indent) for x in v) + " ]"
        return "[\n" + ",\n".join(inner + google_json(x, indent + 3) for x in v) + "\n" + pad + "]"
    if isinstance(v, Number):
        return str(v)
    if isinstance(v, str):
        s = json.dumps(v, ensure_ascii=False)
        return s.replace("<", "\\u003c").replace(">", "\\u003e")
    return json.dumps(v)  # true, false, null


async def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("name")
    ap.add_argument("--config", default="config/herd.json")
    ap.add_argument("--reuseport", action="store_true", help="share the client port (SO_REUSEPORT)")
    args = ap.parse_args()
    with open(args.config) as f:
        server = Server(args.name, json.load(f))
    host = server.me.get("host", "127.0.0.1")
    clients = await asyncio.start_server(server.client_conn, host, server.me["port"], limit=server.max_line + 1,
                                         reuse_port=args.reuseport or None)
    peers = await asyncio.start_server(server.peer_conn, host, server.me["peer_port"])
    links = [asyncio.create_task(server.dial(p)) for p in sorted(server.neighbours)]  # noqa: F841 (kept alive)
    print(f"{args.name} listening on {host}:{server.me['port']} (peers on {host}:{server.me['peer_port']})",
          flush=True)
    async with clients, peers:
        await asyncio.gather(clients.serve_forever(), peers.serve_forever())


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
