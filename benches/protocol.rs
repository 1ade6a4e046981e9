//! Microbenchmarks of the pure protocol core: parsing, formatting, exact time arithmetic, records.
//!
//!     cargo bench --bench protocol

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use herd::protocol::{self, Command, Timestamp};
use herd::record::RecordStore;
use std::hint::black_box;

const IAMAT: &[u8] = b"IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 1520023934.918963997";
const NOW: Timestamp = Timestamp { secs: 1_520_023_935, nanos: 182_837_383 };

fn parsing(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse");
    g.bench_function("iamat", |b| b.iter(|| black_box(protocol::parse_command(black_box(IAMAT)))));
    g.bench_function("whatsat", |b| {
        b.iter(|| black_box(protocol::parse_command(black_box(b"WHATSAT kiwi.cs.ucla.edu 10 5"))))
    });
    g.bench_function("invalid", |b| {
        b.iter(|| black_box(protocol::parse_command(black_box(b"IAMAT kiwi.cs.ucla.edu +34.-118. 1"))))
    });
    let at = b"AT Hill +0.263873386 kiwi.cs.ucla.edu +34.068930-118.445127 1520023934.918963997\n";
    g.bench_function("at_line", |b| b.iter(|| black_box(protocol::parse_at(black_box(at)))));
    g.finish();
}

fn formatting(c: &mut Criterion) {
    let Command::IAmAt(cmd) = protocol::parse_command(IAMAT) else { unreachable!() };
    let mut g = c.benchmark_group("format");
    let mut out = Vec::with_capacity(256);
    g.bench_function("at_reply", |b| {
        b.iter(|| {
            out.clear();
            black_box(protocol::write_at(&mut out, b"Hill", NOW, black_box(&cmd)));
        })
    });
    g.bench_function("invalid_echo", |b| {
        b.iter(|| {
            out.clear();
            protocol::write_invalid(&mut out, black_box(b"IAMAT kiwi.cs.ucla.edu +34.-118. 1"));
        })
    });
    for (name, time) in [
        ("time_diff/9_digits", &b"1520023934.918963997"[..]),
        ("time_diff/12_digits", b"1520023934.918963997123"),
        ("time_diff/integer", b"1520023934"),
        ("time_diff/40_digits", b"1234567890123456789012345678901234567890.5"),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                protocol::write_time_diff(&mut out, NOW, black_box(time));
            })
        });
    }
    g.finish();
}

fn records(c: &mut Criterion) {
    let mut g = c.benchmark_group("record");
    g.bench_function("cmp_time", |b| {
        b.iter(|| black_box(protocol::cmp_time(black_box(b"1700000300.0000000001"), black_box(b"1700000300.000"))))
    });
    let newer = b"AT Bona +0.000000001 kiwi +34.068930-118.445127 1700000300.5\n";
    let older = b"AT Bona +0.000000001 kiwi +34.068930-118.445127 1700000300.4\n";
    let f_new = protocol::parse_at(newer).unwrap();
    let f_old = protocol::parse_at(older).unwrap();
    g.bench_function("offer_newer_in_place", |b| {
        b.iter_batched_ref(
            || {
                let mut s = RecordStore::new();
                s.offer(older, f_old, NOW);
                s
            },
            |s| black_box(s.offer(newer, f_new, NOW)),
            BatchSize::SmallInput,
        )
    });
    let mut store = RecordStore::new();
    store.offer(newer, f_new, NOW);
    g.bench_function("offer_stale", |b| b.iter(|| black_box(store.offer(black_box(older), f_old, NOW))));
    g.finish();
}

criterion_group!(benches, parsing, formatting, records);
criterion_main!(benches);
