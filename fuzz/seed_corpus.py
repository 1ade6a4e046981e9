#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz targets into fuzz/corpus/<target>/ (committed: `cargo test --test
fuzz_corpus` replays every file there through the targets' checks, src/fuzzing.rs).

Seeds are realistic inputs: the examples of PROTOCOL.md (commands, AT lines, peer handshake lines) and
tests/fixtures/nearby-legacy-20.json framed as HTTP responses (Content-Length, chunked, close-delimited,
after a 100 Continue). Every seed fits the 4096-byte -max_len the runs use. Run from anywhere:

    python3 fuzz/seed_corpus.py
"""

import hashlib
import pathlib

FUZZ = pathlib.Path(__file__).resolve().parent
FIXTURE = FUZZ.parent / "tests" / "fixtures" / "nearby-legacy-20.json"
MAX_LEN = 4096


def write(target, data):
    assert len(data) <= MAX_LEN, (target, len(data))
    d = FUZZ / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    (d / hashlib.sha1(data).hexdigest()).write_bytes(data)


COMMANDS = [
    b"IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 1520023934.918963997",
    b"IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 1520023934.918963997\n",
    b"IAMAT a +12-118 1646272345.1234567\n",
    b"IAMAT b -33.8587+151.2100 1700000000\r\n",
    b"IAMAT c +040.5-075.25 1700000000.0000000001\n",
    b"IAMAT d +90-180 99999999999999999999999.5\n",
    b"WHATSAT kiwi.cs.ucla.edu 10 5\n",
    b"WHATSAT kiwi.cs.ucla.edu 2.5 20\n",
    b"WHATSAT a 50 0\n",
    b"IAMAT a +34.-118. 1\nIAMAT a +0+0 1700000000.\nIAMAT a +0+0 .5\nIAMAT a +0+0 1e9\n",
    b"WHATSAT a 10. 1\nWHATSAT a .5 1\nWHATSAT a 1e1 1\nWHATSAT a 51 21\n",
    b"\n   \t\x0b\x0c\r\n",
    b"AT Solo +0.263873386 kiwi.cs.ucla.edu +34.068930-118.445127 1520023934.918963997\n",
    b"IAMAT \xff\xfe +0+0 1 \x00\n",
    b"IAMAT a +1+1 1\nWHATSAT a 1 1\nIAMAT b +2+2 2\nbogus\n",
]

AT_LINES = [
    b"AT Solo +0.263873386 kiwi.cs.ucla.edu +34.068930-118.445127 1520023934.918963997\n",
    b"AT Bailey +0.000000000 kiwi +34.068930-118.445127 1520023934.918963997\n",
    b"AT Bona -2.000000001 kiwi +34.068930-118.445127 1520023934.9189639970\n",
    b"AT Clark +1.5 kiwi +12-118 1\n",
    b"AT Bona +0.000000001 forged +1+1 1\n",
    b"AT Jaquez -99999999999999.000000000 a +90-180 99999999999999999999999.5\n",
    b"AT Bona +0.000000000 long +0+0 0000000000000000001700000000.00000000000\n",
    b"AT Bona +0.000000000 " + b"i" * 255 + b" +90.000000-180.000000 1700000000\n",
]

HANDSHAKE = [
    b"HELLO Bona Bailey 00\n",
    b"HELLO Bona Bailey 3f9a0c61d2e847b5\n",
    b"WELCOME Bailey 7c1e 5d41402abc4b2a76b9719d911017c592\n",
    b"PROOF 5d41402abc4b2a76b9719d911017c592\n",
    b"REFUSED Mallory is not a neighbour of Bailey\n",
    b"HELLO Bona Bailey 3f9a0c61d2e847b5 v=2 max=100000 least=1700000000.5,6b697769 rid=9f2e off=42\n",
    b"WELCOME Bailey 7c1e 5d41402abc4b2a76b9719d911017c592 v=2 rid=77aa off=0 future=yes\n",
]


def http(head_lines, body):
    return b"".join(l + b"\r\n" for l in head_lines) + b"\r\n" + body


def chunked(body, sizes):
    out, i = b"", 0
    for n in sizes:
        out += b"%x\r\n" % n + body[i:i + n] + b"\r\n"
        i += n
    if i < len(body):
        out += b"%x;ext=1\r\n" % (len(body) - i) + body[i:] + b"\r\n"
    return out + b"0\r\n\r\n"


def split_prefix(lens):
    """The http_response target's split header: a count, then little-endian u16 piece lengths."""
    return bytes([len(lens)]) + b"".join(n.to_bytes(2, "little") for n in lens)


def main():
    for c in COMMANDS + [b"".join(COMMANDS)]:
        write("command_parser", c)

    for l in AT_LINES + HANDSHAKE:
        write("peer_messages", l)
    write("peer_messages", b"".join(HANDSHAKE[:2] + AT_LINES))
    write("peer_messages", b"".join(AT_LINES + AT_LINES[::-1]))
    write("peer_messages", AT_LINES[0][:-1])

    fixture = FIXTURE.read_bytes()
    small = fixture[:1200]
    date = b"Date: Tue, 07 Mar 2023 05:12:00 GMT"
    ctype = b"Content-Type: application/json; charset=UTF-8"
    responses = [
        http([b"HTTP/1.1 200 OK", ctype, date, b"Content-Length: %d" % len(small)], small),
        http([b"HTTP/1.1 200 OK", ctype, b"Transfer-Encoding: chunked"], chunked(small, [400, 1, 16])),
        http([b"HTTP/1.1 200 OK", ctype, b"Connection: close"], small),
        http([b"HTTP/1.0 200 OK", ctype], small[:300]),
        http([b"HTTP/1.1 100 Continue"], b"")
        + http([b"HTTP/1.1 200 OK", b"Content-Length: %d" % len(small[:200])], small[:200]),
        http([b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked", b"Content-Length: 5"], chunked(b"hello", [5])),
        http([b"HTTP/1.1 204 No Content", b"Content-Length: 10"], b""),
        http([b"HTTP/1.1 403 Forbidden", b"Content-Length: 2", b"Content-Encoding: identity"], b"{}"),
        http([b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked"], b"5\nhello\n0\nX-Trailer: 1\n\n"),
        http([b"HTTP/1.1 200 OK", b"Content-Length: 3, 3"], b"abc"),
    ]
    # The fixture's head-to-near-max_len, framed both ways.
    big = fixture[:3600]
    responses.append(http([b"HTTP/1.1 200 OK", ctype, b"Content-Length: %d" % len(big)], big))
    big = fixture[:3400]
    responses.append(http([b"HTTP/1.1 200 OK", ctype, b"Transfer-Encoding: chunked"], chunked(big, [1024, 1024])))
    for r in responses:
        write("http_response", split_prefix([]) + r)
        write("http_response", split_prefix([1, 17, 40, 2, 0, 300]) + r)


if __name__ == "__main__":
    main()
