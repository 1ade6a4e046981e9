//! Decoding a realistic 20-result Places response, fed in TLS-record-sized pieces.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use herd::http::{Parsed, ResponseParser};

const FIXTURE: &[u8] = include_bytes!("../tests/fixtures/nearby-legacy-20.json");
/// rustls hands out plaintext at most a TLS record (16 KiB) at a time.
const READ: usize = 16 * 1024;

fn content_length(body: &[u8]) -> Vec<u8> {
    let mut wire = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=UTF-8\r\nContent-Length: {}\r\n\
         Server: scaffolding on HTTPServer2\r\nVary: Accept-Language\r\n\r\n",
        body.len()
    )
    .into_bytes();
    wire.extend_from_slice(body);
    wire
}

fn chunked(body: &[u8], chunk: usize) -> Vec<u8> {
    let mut wire =
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=UTF-8\r\nTransfer-Encoding: chunked\r\n\
        Server: scaffolding on HTTPServer2\r\nVary: Accept-Language\r\n\r\n"
            .to_vec();
    for piece in body.chunks(chunk) {
        wire.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        wire.extend_from_slice(piece);
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"0\r\n\r\n");
    wire
}

fn parse(wire: &[u8]) -> usize {
    let mut parser = ResponseParser::new(16 * 1024, 1 << 20);
    for piece in wire.chunks(READ) {
        if let Parsed::Complete(response) = parser.feed(piece).unwrap() {
            return response.body.len();
        }
    }
    panic!("incomplete");
}

fn http(c: &mut Criterion) {
    let mut group = c.benchmark_group("http");
    group.throughput(Throughput::Bytes(FIXTURE.len() as u64));
    let wire = chunked(FIXTURE, 1024);
    assert_eq!(parse(&wire), FIXTURE.len());
    group.bench_function("chunked_1k_chunks", |b| b.iter(|| parse(black_box(&wire))));
    let wire = content_length(FIXTURE);
    assert_eq!(parse(&wire), FIXTURE.len());
    group.bench_function("content_length", |b| b.iter(|| parse(black_box(&wire))));
    group.finish();
}

criterion_group!(benches, http);
criterion_main!(benches);
