//! What a peer link does with the lines it reads that is pure: tokenizing handshake lines with `Fields`,
//! validating records with `parse_at`, and storing them with `RecordStore::offer_line` (newest wins).
//!
//! The input is split into lines on LF (each line keeps its LF, as the peer link hands them on; a last
//! line without LF is offered too). For every line:
//! - `Fields` yields non-empty runs of non-whitespace, in order, separated only by whitespace;
//! - `parse_at` ranges lie inside the line, in order, and hold valid fields; it agrees on the line with
//!   and without its LF;
//! - `offer_line` is `None` exactly when the line is not a valid `AT` line ending in LF; a stored line is
//!   held byte for byte and its `line()` parses again; a line not stored loses to the held record; the same
//!   line offered twice is `Some(false)` the second time.
//! At the end every held record parses again and is found under its own client id.
#![no_main]

use herd::protocol::{self, AtFields, Fields};
use herd::record::{Record, RecordStore};
use libfuzzer_sys::fuzz_target;
use std::cmp::Ordering;

fuzz_target!(|data: &[u8]| {
    let mut store = RecordStore::new();
    for line in data.split_inclusive(|&b| b == b'\n') {
        check_fields(line);
        check_record(&mut store, line);
    }
    for (i, record) in store.iter().enumerate() {
        let fields = protocol::parse_at(record.line()).expect("a held record no longer parses");
        check_at_fields(record.line(), fields);
        assert_eq!(store.get(record.client_id()), Some(record), "record not found under its client id");
        assert_eq!(store.at(i), Some(record));
    }
    assert_eq!(store.iter().count(), store.len());
});

/// The handshake tokenizer: fields are the runs of non-whitespace, separated by whitespace only.
fn check_fields(line: &[u8]) {
    let text = line.strip_suffix(b"\n").unwrap_or(line);
    let base = text.as_ptr() as usize;
    let mut end = 0;
    for field in Fields::new(text) {
        assert!(!field.is_empty(), "empty field");
        assert!(!field.iter().any(|&b| protocol::is_whitespace(b)), "whitespace inside a field");
        let start = field.as_ptr() as usize - base;
        assert!(start >= end && start + field.len() <= text.len(), "field out of order or out of the line");
        assert!(text[end..start].iter().all(|&b| protocol::is_whitespace(b)), "skipped a non-whitespace byte");
        if end > 0 {
            assert!(start > end, "two fields not separated by whitespace");
        }
        end = start + field.len();
    }
    assert!(text[end..].iter().all(|&b| protocol::is_whitespace(b)), "trailing field missed");
}

fn check_at_fields(line: &[u8], f: AtFields) {
    let body_len = line.strip_suffix(b"\n").unwrap_or(line).len() as u32;
    let ranges = [f.server, f.client_id, f.location, f.client_time];
    let mut prev = 3; // after "AT "
    for (i, &(a, b)) in ranges.iter().enumerate() {
        assert!(a <= b && b <= body_len, "range {i} {a}..{b} outside the line");
        assert!(a >= prev, "range {i} overlaps the one before");
        prev = b;
    }
    assert_eq!(f.client_time.1, body_len, "client time does not end the line");
    let field = |r: (u32, u32)| &line[r.0 as usize..r.1 as usize];
    assert!(!field(f.server).is_empty());
    let id = field(f.client_id);
    assert!(!id.is_empty() && id.len() <= protocol::MAX_CLIENT_ID);
    assert!(!id.iter().any(|&b| protocol::is_whitespace(b)));
    assert!(protocol::parse_location(field(f.location)).is_some());
    assert!(protocol::valid_time(field(f.client_time)));
}

fn check_record(store: &mut RecordStore, line: &[u8]) {
    let parsed = protocol::parse_at(line);
    if let Some(f) = parsed {
        check_at_fields(line, f);
        // With or without the LF, the same fields.
        match line.strip_suffix(b"\n") {
            Some(text) => assert_eq!(protocol::parse_at(text), Some(f)),
            None => {
                let mut with_lf = line.to_vec();
                with_lf.push(b'\n');
                assert_eq!(protocol::parse_at(&with_lf), Some(f));
            }
        }
        let record = Record::parse(line).expect("Record::parse rejects what parse_at accepts");
        assert_eq!(protocol::parse_at(record.line()), Some(f));
    } else {
        assert!(Record::parse(line).is_none(), "Record::parse accepts what parse_at rejects");
    }

    let before = store.len();
    let offered = store.offer_line(line);
    let ends_in_lf = line.last() == Some(&b'\n');
    assert_eq!(offered.is_some(), parsed.is_some() && ends_in_lf, "offer_line and parse_at disagree");
    let Some(stored) = offered else {
        assert_eq!(store.len(), before, "a rejected line changed the store");
        return;
    };
    let candidate = Record::parse(line).expect("offered a valid line");
    let held = store.get(candidate.client_id()).expect("no record for an offered client id");
    if stored {
        assert_eq!(held.line(), line, "stored line not held byte for byte");
        assert_eq!(held, &candidate);
        let f = protocol::parse_at(held.line()).expect("a stored record's line() does not parse again");
        assert_eq!(Some(f), parsed);
        assert!(store.len() == before || store.len() == before + 1);
    } else {
        assert_eq!(store.len(), before);
        assert_ne!(candidate.cmp_recency(held), Ordering::Greater, "a more recent record was not stored");
    }
    // Newest wins: the same line again is never stored.
    let after = store.len();
    assert_eq!(store.offer_line(line), Some(false), "the same line offered twice was stored twice");
    assert_eq!(store.len(), after);
}
