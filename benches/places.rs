//! Shaping a Places answer: building it from a realistic 20-result legacy body and cutting it to a bound.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use herd::places::{build_request, Api, Endpoint, PlacesAnswer};

const FIXTURE: &[u8] = include_bytes!("../tests/fixtures/nearby-legacy-20.json");

fn places(c: &mut Criterion) {
    // Baselines, to read the numbers below as ratios on a shared machine.
    c.bench_function("baseline/serde_json_parse_and_drop_20", |b| {
        b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(FIXTURE)).unwrap())
    });
    let doc: serde_json::Value = serde_json::from_slice(FIXTURE).unwrap();
    c.bench_function("baseline/gjson_write_20", |b| {
        let mut out = Vec::with_capacity(FIXTURE.len());
        b.iter(|| {
            out.clear();
            herd::gjson::write(&mut out, black_box(&doc));
            out.len()
        })
    });
    c.bench_function("places/from_response_legacy_20", |b| {
        b.iter(|| PlacesAnswer::from_response(Api::Legacy, 200, black_box(FIXTURE)))
    });
    c.bench_function("places/from_response_and_cut_5", |b| {
        b.iter(|| {
            let mut answer = PlacesAnswer::from_response(Api::Legacy, 200, black_box(FIXTURE));
            answer.body(5).len()
        })
    });
    // The answer is dropped outside the measurement: this is the cost of the first cut alone.
    c.bench_function("places/first_cut_5", |b| {
        b.iter_batched_ref(
            || PlacesAnswer::from_response(Api::Legacy, 200, FIXTURE),
            |answer| answer.body(black_box(5)).len(),
            BatchSize::SmallInput,
        )
    });
    let mut answer = PlacesAnswer::from_response(Api::Legacy, 200, FIXTURE);
    answer.body(5);
    c.bench_function("places/memoized_cut_5", |b| b.iter(|| answer.body(black_box(5)).len()));
    c.bench_function("places/uncut_20", |b| b.iter(|| answer.body(black_box(20)).len()));

    let ep = Endpoint::parse(Api::Legacy, "https://maps.googleapis.com/maps/api/place/nearbysearch/json").unwrap();
    let mut out = Vec::with_capacity(512);
    c.bench_function("places/build_request_legacy", |b| {
        b.iter(|| {
            out.clear();
            build_request(&ep, black_box("+34.068930"), "-118.445127", "2.5", Some("not-a-real-key"), &mut out);
            out.len()
        })
    });
}

criterion_group!(benches, places);
criterion_main!(benches);
