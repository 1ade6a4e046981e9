//! Tests of the record store. Expected values come from a naive model (a list scanned in full, times
//! compared as text by `protocol::cmp_time`), from a direct characterisation of the held set, or from
//! tables written here, never from the store itself.

use super::*;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

fn at(server: &str, id: &str, loc: &str, time: &str) -> Vec<u8> {
    format!("AT {server} +0.000000000 {id} {loc} {time}\n").into_bytes()
}

fn ts(secs: u64) -> Timestamp {
    Timestamp { secs, nanos: 0 }
}

fn offer(s: &mut RecordStore, line: &[u8], now: Timestamp) -> Offer {
    s.offer(line, split_fields(line), now)
}

/// The fields of a test line, found by its spaces alone: the store trusts the fields it is given (the
/// server validated them), so tests may use lines longer than the protocol allows.
fn split_fields(line: &[u8]) -> AtFields {
    let spaces: Vec<u32> = line.iter().enumerate().filter(|(_, &b)| b == b' ').map(|(i, _)| i as u32).collect();
    assert_eq!(spaces.len(), 5, "{}", String::from_utf8_lossy(line));
    AtFields {
        server: (spaces[0] + 1, spaces[1]),
        client_id: (spaces[2] + 1, spaces[3]),
        location: (spaces[3] + 1, spaces[4]),
        client_time: (spaces[4] + 1, line.len() as u32 - 1),
    }
}

/// Each version of a record is relayed in a repair once: the mark goes with the version (a newer one
/// starts unmarked), it changes neither the seq nor what a delta walk finds, and another version or an
/// unknown client is never relayed.
#[test]
fn a_version_is_relayed_once_and_a_newer_one_starts_unmarked() {
    let mut s = RecordStore::new();
    let v1 = at("A", "kiwi", "+1+1", "100");
    let v2 = at("B", "kiwi", "+1+1", "101");
    assert!(!s.relay_once(&v1), "nothing held");
    assert!(offer(&mut s, &v1, EPOCH).is_stored());
    let seq = s.get(b"kiwi").unwrap().seq();
    assert!(!s.relay_once(&v2), "another version than the one held");
    assert!(s.relay_once(&v1) && !s.relay_once(&v1), "once");
    assert_eq!(s.get(b"kiwi").unwrap().seq(), seq, "the mark is not part of the seq");
    assert_eq!(s.next_since(0, seq - 1).map(|(_, r)| r.seq()), Some(seq));
    assert!(offer(&mut s, &v2, EPOCH).is_stored());
    assert!(!s.relay_once(&v1), "superseded");
    assert!(s.relay_once(&v2), "the newer version starts unmarked");
    assert!(!s.relay_once(b"AT A +0.1 kiwi\n"), "not a record");
}

/// A notice names a version by client id and client time, and shares the relayed mark with the record
/// itself: whichever of the two reaches a server first relays it, the other then does nothing.
#[test]
fn a_notice_relays_the_version_of_its_client_time_once_and_shares_the_mark() {
    let mut s = RecordStore::new();
    let v1 = at("A", "kiwi", "+1+1", "100");
    let v2 = at("B", "kiwi", "+1+1", "101");
    assert!(!s.relay_notice(b"kiwi", b"100"), "nothing held");
    assert!(offer(&mut s, &v1, EPOCH).is_stored());
    assert!(!s.relay_notice(b"kiwi", b"101"), "a version not held yet");
    assert!(!s.relay_notice(b"kiwi", b"10"), "a prefix of the client time is another time");
    assert!(!s.relay_notice(b"kiw", b"100") && !s.relay_notice(b"lime", b"100"), "another client");
    assert!(s.relay_notice(b"kiwi", b"100") && !s.relay_notice(b"kiwi", b"100"), "once");
    assert!(!s.relay_once(&v1), "a notice's relay is the record's relay");
    assert!(offer(&mut s, &v2, EPOCH).is_stored());
    assert!(!s.relay_notice(b"kiwi", b"100"), "superseded");
    assert!(s.relay_once(&v2) && !s.relay_notice(b"kiwi", b"101"), "and the other way round");
}

fn bounded(max: usize) -> RecordStore {
    RecordStore::with_retention(Retention { max: Some(max), max_age_s: None })
}

fn held_lines(s: &RecordStore) -> BTreeSet<Vec<u8>> {
    s.iter().map(|r| r.to_line()).collect()
}

#[test]
fn a_full_table_takes_a_greater_new_client_and_evicts_the_least() {
    let mut s = bounded(2);
    assert!(offer(&mut s, &at("A", "b", "+1+1", "10"), EPOCH).is_stored());
    assert!(offer(&mut s, &at("A", "c", "+1+1", "20"), EPOCH).is_stored());
    assert_eq!(offer(&mut s, &at("A", "a", "+1+1", "5"), EPOCH), Offer::RefusedFull);
    // Same time as the least, smaller id: not greater.
    assert_eq!(offer(&mut s, &at("A", "a", "+1+1", "10"), EPOCH), Offer::RefusedFull);
    // Same time, greater id: greater.
    assert!(offer(&mut s, &at("A", "bb", "+1+1", "10"), EPOCH).is_stored());
    assert!(s.get(b"b").is_none(), "the least was evicted");
    assert_eq!(s.least().unwrap().client_id(), b"bb");
    assert_eq!((s.counters().evicted_full, s.counters().refused_full), (1, 2));
}

#[test]
fn at_or_below_the_greatest_evicted_is_refused_even_when_not_full() {
    let mut s = bounded(2);
    for (id, t) in [("x", "10"), ("y", "20"), ("z", "30")] {
        assert!(offer(&mut s, &at("A", id, "+1+1", t), EPOCH).is_stored());
    }
    // x (10) was evicted for space: it is the bound.
    assert_eq!(offer(&mut s, &at("A", "x", "+1+1", "10"), EPOCH), Offer::RefusedBelowEvicted);
    assert_eq!(offer(&mut s, &at("A", "w", "+1+1", "9.999"), EPOCH), Offer::RefusedBelowEvicted);
    // Equal time, greater id than the bound, but not greater than the least held (y 20): full.
    assert_eq!(offer(&mut s, &at("A", "xa", "+1+1", "10"), EPOCH), Offer::RefusedFull);
    // Not full any more (an age sweep made room), and still refused at or below the bound.
    let mut s2 = RecordStore::with_retention(Retention { max: Some(2), max_age_s: Some(100) });
    for (id, t) in [("x", "1000"), ("y", "1010"), ("z", "1500")] {
        assert!(offer(&mut s2, &at("A", id, "+1+1", t), ts(1050)).is_stored());
    }
    assert!(s2.get(b"x").is_none(), "x was evicted for space");
    assert_eq!(s2.sweep(ts(1600), 10), 1, "y is more than 100 s old at 1600, z is not");
    assert_eq!(s2.len(), 1);
    assert_eq!(offer(&mut s2, &at("A", "x", "+1+1", "1000"), ts(1050)), Offer::RefusedBelowEvicted);
    assert_eq!(offer(&mut s2, &at("A", "w", "+1+1", "999"), ts(1050)), Offer::RefusedBelowEvicted);
    assert!(offer(&mut s2, &at("A", "x", "+1+1", "1000.5"), ts(1050)).is_stored());
    assert_eq!(s2.len(), 2);
}

#[test]
fn updates_of_a_held_client_follow_newest_wins_not_the_bound() {
    let mut s = bounded(1);
    assert!(offer(&mut s, &at("A", "k", "+1+1", "10"), EPOCH).is_stored());
    assert_eq!(offer(&mut s, &at("A", "k", "+1+1", "9"), EPOCH), Offer::NotNewer);
    assert_eq!(offer(&mut s, &at("A", "k", "+1+1", "10.0"), EPOCH), Offer::NotNewer);
    assert!(offer(&mut s, &at("B", "k", "+1+1", "10"), EPOCH).is_stored(), "greater server on a tie");
    assert!(offer(&mut s, &at("B", "k", "+1+1", "11"), EPOCH).is_stored());
    assert_eq!(s.len(), 1);
    assert_eq!(s.get(b"k").unwrap().to_line(), at("B", "k", "+1+1", "11"));
}

#[test]
fn too_old_on_arrival_is_refused_and_counted() {
    let mut s = RecordStore::with_retention(Retention { max: None, max_age_s: Some(60) });
    let now = Timestamp { secs: 1000, nanos: 500 };
    // The limit is 940.0000005: exactly that is not older than 60 s; a nanosecond less is.
    assert_eq!(offer(&mut s, &at("A", "a", "+1+1", "940.000000499"), now), Offer::RefusedOld);
    assert_eq!(offer(&mut s, &at("A", "a", "+1+1", "940.0000004999999"), now), Offer::RefusedOld);
    assert!(offer(&mut s, &at("A", "a", "+1+1", "940.0000005"), now).is_stored());
    assert!(offer(&mut s, &at("A", "b", "+1+1", "940.00000050000001"), now).is_stored());
    assert_eq!(s.counters().refused_old, 2);
    assert_eq!(s.len(), 2);
}

#[test]
fn the_sweep_drops_the_oldest_first_and_at_most_its_budget_per_call() {
    let mut s = RecordStore::with_retention(Retention { max: None, max_age_s: Some(10) });
    // Times 100..=109 for ids in scrambled order, plus one young record.
    for i in [3, 7, 0, 9, 1, 5, 8, 2, 6, 4] {
        assert!(offer(&mut s, &at("A", &format!("c{i}"), "+1+1", &format!("{}", 100 + i)), ts(105)).is_stored());
    }
    assert!(offer(&mut s, &at("A", "young", "+1+1", "200"), ts(105)).is_stored());
    // At 116, times below 106 are too old: c0..c5 (six records).
    assert!(s.sweep_due(ts(116)));
    assert_eq!(s.sweep(ts(116), 4), 4);
    let left: BTreeSet<_> = s.iter().map(|r| r.client_id().to_vec()).collect();
    let expected: BTreeSet<_> =
        ["c4", "c5", "c6", "c7", "c8", "c9", "young"].iter().map(|s| s.as_bytes().to_vec()).collect();
    assert_eq!(left, expected, "the four oldest went first");
    assert_eq!(s.sweep(ts(116), 4), 2);
    assert!(!s.sweep_due(ts(116)));
    assert_eq!(s.sweep(ts(116), 4), 0);
    assert_eq!(s.len(), 5);
    assert_eq!(s.counters().evicted_age, 6);
    // An age sweep sets no bound: an aged-out client comes back with any time that is young enough.
    assert!(offer(&mut s, &at("A", "c0", "+1+1", "107"), ts(116)).is_stored());
}

#[test]
fn the_next_sweep_is_due_when_the_least_record_turns_too_old() {
    let mut s = RecordStore::with_retention(Retention { max: None, max_age_s: Some(60) });
    assert_eq!(s.sweep_due_in(ts(1000)), None, "nothing held");
    offer(&mut s, &at("A", "a", "+1+1", "990.25"), ts(1000));
    offer(&mut s, &at("A", "b", "+1+1", "995"), ts(1000));
    // a turns too old once the clock passes 990.25 + 60 = 1050.25.
    assert_eq!(s.sweep_due_in(ts(1000)), Some(Duration::from_millis(50_250)));
    let at_due = Timestamp { secs: 1050, nanos: 250_000_000 };
    assert_eq!(s.sweep_due_in(at_due), Some(Duration::ZERO));
    assert_eq!(s.sweep(at_due, 10), 0, "exactly 60 s old is not more than 60 s old");
    let after = Timestamp { secs: 1050, nanos: 250_000_001 };
    assert_eq!(s.sweep(after, 10), 1);
    assert_eq!(s.sweep_due_in(after), Some(Duration::from_millis(4750) - Duration::from_nanos(1)));
    assert_eq!(RecordStore::new().sweep_due_in(ts(1)), None, "no max_age_s");
    // A time with digits past the ninth is a little more than its nanoseconds: due a nanosecond later.
    let mut s = RecordStore::with_retention(Retention { max: None, max_age_s: Some(60) });
    offer(&mut s, &at("A", "a", "+1+1", "990.0000000001"), ts(1000));
    assert_eq!(s.sweep_due_in(ts(1000)), Some(Duration::from_secs(50) + Duration::from_nanos(1)));
}

#[test]
fn a_line_the_arena_cannot_hold_is_invalid() {
    let mut s = RecordStore::new();
    let long = at("A", &"i".repeat(255), &format!("+1.{}+1", "0".repeat(800)), "1");
    assert!(long.len() > MAX_LEN + 4);
    assert_eq!(offer(&mut s, &long, EPOCH), Offer::Invalid);
    assert!(s.is_empty());
}

#[test]
fn seq_rises_by_one_per_store_and_next_since_finds_exactly_the_later_ones() {
    let mut s = bounded(50);
    let mut model: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
    let mut last = 0;
    for step in 0u64..400 {
        let id = format!("c{}", (step * 7919) % 80);
        let line = at("A", &id, "+1+1", &format!("{}", 1000 + step));
        let outcome = offer(&mut s, &line, EPOCH);
        if let Offer::Stored { seq } = outcome {
            assert_eq!(seq, last + 1);
            last = seq;
            model.insert(id.into_bytes(), seq);
        }
        assert_eq!(s.max_seq(), last);
    }
    // The model forgets evicted ids: keep only those held.
    model.retain(|id, _| s.get(id).is_some());
    for after in [0, 100, 300, 350, last] {
        let mut cursor = 0;
        let mut got = BTreeMap::new();
        while let Some((next, r)) = s.next_since(cursor, after) {
            got.insert(r.client_id().to_vec(), r.seq());
            cursor = next;
        }
        let want: BTreeMap<_, _> = model.iter().filter(|(_, &q)| q > after).map(|(k, &v)| (k.clone(), v)).collect();
        assert_eq!(got, want, "after {after}");
    }
}

#[test]
fn a_replay_keeps_each_records_seq_and_the_counter_resumes_after_the_greatest() {
    let mut s = RecordStore::new();
    s.reserve(10);
    for (id, seq) in [("a", 7), ("b", 3), ("c", 12)] {
        let line = at("A", id, "+1+1", "5");
        assert_eq!(s.offer_with_seq(&line, split_fields(&line), EPOCH, seq), Offer::Stored { seq });
    }
    assert_eq!((s.get(b"b").unwrap().seq(), s.max_seq()), (3, 12));
    s.resume_seq_after(20);
    assert_eq!(offer(&mut s, &at("A", "d", "+1+1", "5"), EPOCH), Offer::Stored { seq: 21 });
}

/// Seqs are 47 bits, split over two header words: values past 32 bits come back whole (with the relayed
/// mark set beside them), and the limit is 2^47 exclusive. Expected values written out by hand.
#[test]
fn seqs_past_32_bits_come_back_whole_up_to_the_47_bit_limit() {
    let mut s = RecordStore::new();
    let cases: [(&str, u64); 3] = [("a", (1 << 32) + 7), ("b", (1 << 46) + (1 << 32) + 3), ("c", (1 << 47) - 1)];
    for (id, seq) in cases {
        let line = at("A", id, "+1+1", "5");
        assert_eq!(s.offer_with_seq(&line, split_fields(&line), EPOCH, seq), Offer::Stored { seq });
        assert!(s.relay_once(&line), "marked relayed");
    }
    for (id, seq) in cases {
        assert_eq!(s.get(id.as_bytes()).unwrap().seq(), seq, "{id}");
    }
    assert_eq!(s.max_seq(), (1 << 47) - 1);
    s.resume_seq_after((1 << 47) - 1); // the greatest seq a journal can hold: accepted
                                       // A delta walk after b's seq finds c alone; after a's, b and c.
    let since = |after: u64| {
        let (mut cursor, mut ids) = (0, Vec::new());
        while let Some((next, r)) = s.next_since(cursor, after) {
            ids.push(r.client_id().to_vec());
            cursor = next;
        }
        ids
    };
    assert_eq!(since((1 << 46) + (1 << 32) + 3), vec![b"c".to_vec()]);
    assert_eq!(since((1 << 32) + 7), vec![b"b".to_vec(), b"c".to_vec()]);
    assert_eq!(since(6), vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
}

#[test]
#[should_panic(expected = "sequence numbers are 47 bits")]
fn a_replayed_seq_of_2_47_is_refused() {
    let mut s = RecordStore::new();
    let line = at("A", "a", "+1+1", "5");
    s.offer_with_seq(&line, split_fields(&line), EPOCH, 1 << 47);
}

#[test]
#[should_panic(expected = "sequence numbers are 47 bits")]
fn resuming_at_2_47_is_refused() {
    let mut s = RecordStore::new();
    s.resume_seq_after(1 << 47);
}

/// `reserve(n)` sizes the index for n more records, so a replay of n records never grows (rehashes) it.
#[test]
fn a_reserved_store_takes_that_many_records_without_growing_its_index() {
    for n in [1usize, 7, 1000, 5000] {
        let mut s = RecordStore::new();
        assert!(offer(&mut s, &at("A", "first", "+1+1", "1"), EPOCH).is_stored());
        s.reserve(n);
        let capacity = s.index.capacity();
        assert!(capacity > n, "{capacity} buckets for {n} + 1 records");
        for i in 0..n {
            assert!(offer(&mut s, &at("A", &format!("c{i}"), "+1+1", "2"), EPOCH).is_stored());
            assert_eq!(s.index.capacity(), capacity, "grew at record {i} of {n}");
        }
    }
}

#[test]
fn a_cursor_walk_visits_every_record_held_throughout_exactly_once() {
    let mut s = bounded(100);
    // Fifty anchors too recent to be evicted, fifty old records that go first.
    for i in 0..50u64 {
        assert!(offer(&mut s, &at("A", &format!("anchor{i}"), "+1+1", &(1_000_000 + i).to_string()), EPOCH).is_stored());
        assert!(offer(&mut s, &at("A", &format!("old{i}"), "+1+1", &i.to_string()), EPOCH).is_stored());
    }
    let mut visited = Vec::new();
    let mut cursor = 0;
    let mut step = 0u64;
    while let Some((next, r)) = s.next_from(cursor) {
        visited.push(r.client_id().to_vec());
        cursor = next;
        // Each step stores a new client, which evicts the least record and likely takes its slot.
        step += 1;
        assert!(offer(&mut s, &at("A", &format!("new{step}"), "+1+1", &(1000 + step).to_string()), EPOCH).is_stored());
    }
    assert!(step >= 100, "the walk saw evictions all along");
    for i in 0..50 {
        let id = format!("anchor{i}").into_bytes();
        assert_eq!(visited.iter().filter(|v| **v == id).count(), 1, "anchor{i}");
    }
    let unique: BTreeSet<_> = visited.iter().collect();
    assert_eq!(unique.len(), visited.len(), "no record twice");
}

/// A line whose length is `len` exactly (40 to 300), for client `id`: the time-diff takes the padding.
fn line_of_len(id: &str, time: u64, len: usize) -> Vec<u8> {
    let short = at("A", id, "+1+1", &time.to_string());
    let pad = len.checked_sub(short.len()).expect("room for the padding");
    format!("AT A +{}0.000000000 {id} +1+1 {time}\n", "0".repeat(pad)).into_bytes()
}

#[test]
fn replaced_lines_reuse_their_space() {
    let mut s = RecordStore::new();
    let ids = 20_000u64;
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut len = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        40 + (rng % 261) as usize
    };
    for i in 0..ids {
        let l = line_of_len(&format!("c{i:05}"), 100_000 + i, len());
        assert!(offer(&mut s, &l, EPOCH).is_stored());
    }
    let first = s.bytes();
    for pass in 2..=10 {
        for i in 0..ids {
            let l = line_of_len(&format!("c{i:05}"), pass * 100_000 + i, len());
            assert!((40..=300).contains(&l.len()));
            assert!(offer(&mut s, &l, EPOCH).is_stored());
        }
    }
    assert_eq!(s.len() as u64, ids);
    assert!(s.bytes() as f64 <= first as f64 * 1.25, "first pass {first} bytes, after 10 passes {}", s.bytes());
}

#[test]
fn a_full_table_under_new_clients_does_not_grow() {
    let mut s = bounded(1000);
    for i in 0..1000u64 {
        assert!(offer(&mut s, &at("A", &format!("c{i:06}"), "+1+1", &(1_000_000 + i).to_string()), EPOCH).is_stored());
    }
    let full = s.bytes();
    for i in 1000..100_000u64 {
        assert!(offer(&mut s, &at("A", &format!("c{i:06}"), "+1+1", &(1_000_000 + i).to_string()), EPOCH).is_stored());
    }
    assert_eq!(s.len(), 1000);
    assert_eq!(s.bytes(), full, "slots, chunks and index buckets are all reused");
    assert_eq!(s.least().unwrap().client_id(), b"c099000");
    assert_eq!(s.counters().evicted_full, 99_000);
}

#[test]
fn stored_lines_come_back_with_their_fields() {
    let mut s = RecordStore::new();
    let l = b"AT Bona +12.500000000 kiwi -33.8587+151.2100 1700000000.25\n";
    assert_eq!(offer(&mut s, l, EPOCH), Offer::Stored { seq: 1 });
    let r = s.get(b"kiwi").unwrap();
    assert_eq!(r.to_line(), l);
    assert_eq!(r.line_len(), l.len());
    assert_eq!(r.body(), &l[3..l.len() - 1]);
    assert_eq!(r.fields(), protocol::parse_at(l).unwrap());
    assert_eq!(
        (r.server(), r.client_id(), r.location(), r.client_time(), r.seq()),
        (&b"Bona"[..], &b"kiwi"[..], &b"-33.8587+151.2100"[..], &b"1700000000.25"[..], 1)
    );
    assert!(s.get(b"kiw").is_none() && s.get(b"kiwis").is_none());
}

#[test]
fn time_keys_follow_a_table() {
    // (a, b, exact order of a against b)
    let table: &[(&str, &str, Ordering)] = &[
        ("1", "2", Ordering::Less),
        ("1.5", "1.50", Ordering::Equal),
        ("01.5", "1.5", Ordering::Equal),
        ("1.000000001", "1.0000000010", Ordering::Equal),
        ("1.0000000001", "1.0000000002", Ordering::Less),
        ("1.0000000001", "1.000000001", Ordering::Less),
        ("1.999999999", "1.9999999991", Ordering::Less),
        ("8589934591.999999999", "8589934592", Ordering::Less),
        ("8589934592", "8589934593", Ordering::Less),
        ("99999999999999999999", "100000000000000000000", Ordering::Less),
        ("0", "0.0", Ordering::Equal),
    ];
    for &(a, b, want) in table {
        let (ka, kb) = (time_key(a.as_bytes()), time_key(b.as_bytes()));
        assert_eq!(cmp_time_keyed(ka, a.as_bytes(), kb, b.as_bytes()), want, "{a} vs {b}");
        assert_eq!(cmp_time_keyed(kb, b.as_bytes(), ka, a.as_bytes()), want.reverse(), "{b} vs {a}");
    }
}

#[test]
fn the_handshake_states_the_least_record_only_when_full() {
    let mut s = bounded(2);
    assert_eq!(s.least_when_full(), None);
    offer(&mut s, &at("A", "a,b", "+1+1", "10.5"), EPOCH);
    assert_eq!(s.least_when_full(), None, "room left: nothing would be refused");
    offer(&mut s, &at("A", "z", "+1+1", "11"), EPOCH);
    let least = s.least_when_full().unwrap();
    assert_eq!(least.encode(), "10.5,612c62", "the id in hex (it holds a comma)");
    assert_eq!(OrderPoint::parse(b"10.5,612c62"), Some(least.clone()));
    for bad in [&b"10.5"[..], b"10.5,", b"10.5,6", b"10.5,zz", b"1e3,61", b",61", b"10.5,612c6"] {
        assert_eq!(OrderPoint::parse(bad), None, "{}", String::from_utf8_lossy(bad));
    }
    let mut other = RecordStore::new();
    for (id, t, below) in
        [("a,b", "10.5", false), ("a,a", "10.5", false), ("a,c", "10.5", true), ("b", "10.50001", true)]
    {
        offer(&mut other, &at("B", id, "+1+1", t), EPOCH);
        assert_eq!(least.is_below(&other.get(id.as_bytes()).unwrap()), below, "{id} {t}");
    }
    assert!(RecordStore::new().least_when_full().is_none(), "an unbounded store is never full");
}

/// A record's slot is where it lives: slots are taken from 0 in order of arrival, a slot freed by an
/// eviction is the next one taken, and a cursor walk returns each record with the cursor just past its
/// slot. Expected slots written out by hand.
#[test]
fn slots_are_taken_in_order_and_reused_after_an_eviction() {
    let mut s = bounded(3);
    for (id, time) in [("a", "5"), ("b", "6"), ("c", "7")] {
        assert!(offer(&mut s, &at("A", id, "+1+1", time), EPOCH).is_stored());
    }
    let slot = |s: &RecordStore, id: &str| s.get(id.as_bytes()).unwrap().slot();
    assert_eq!((slot(&s, "a"), slot(&s, "b"), slot(&s, "c")), (0, 1, 2));
    // d evicts a (the least) and takes its slot.
    assert!(offer(&mut s, &at("A", "d", "+1+1", "8"), EPOCH).is_stored());
    assert!(s.get(b"a").is_none());
    assert_eq!((slot(&s, "d"), s.slots()), (0, 3));
    let walk: Vec<(u32, u32, Vec<u8>)> = {
        let (mut cursor, mut out) = (0, Vec::new());
        while let Some((next, r)) = s.next_from(cursor) {
            out.push((next, r.slot(), r.client_id().to_vec()));
            cursor = next;
        }
        out
    };
    assert_eq!(walk, vec![(1, 0, b"d".to_vec()), (2, 1, b"b".to_vec()), (3, 2, b"c".to_vec())]);
}

/// The store's gauges: `line_bytes` is the exact length of the lines held without their `AT ` and LF
/// (lengths counted by hand), through a replacement and an eviction; `bytes` is one 16 KiB page for
/// lines of one size class (23 and 24 bytes), plus 12 bytes a header slot, the heap's bytes and the index's allocation;
/// `retention` is what the store was made with.
#[test]
fn the_gauges_add_up() {
    let retention = Retention { max: Some(2), max_age_s: Some(60) };
    let mut s = RecordStore::with_retention(retention);
    assert_eq!(s.retention(), retention);
    assert_eq!((s.line_bytes(), s.bytes()), (0, 0));
    // "AT A +0.000000000 a +1+1 5\n" is 27 bytes, 23 without "AT " and LF.
    assert!(offer(&mut s, &at("A", "a", "+1+1", "5"), ts(10)).is_stored());
    assert_eq!(s.line_bytes(), 23);
    assert!(offer(&mut s, &at("A", "b", "+1+1", "6"), ts(10)).is_stored());
    assert_eq!(s.line_bytes(), 46);
    assert!(offer(&mut s, &at("A", "b", "+1+1", "60"), ts(10)).is_stored()); // b's line grows by 1
    assert_eq!(s.line_bytes(), 47);
    assert!(offer(&mut s, &at("A", "cc", "+1+1", "7"), ts(10)).is_stored()); // evicts a (23), adds 24
    assert_eq!((s.line_bytes(), s.len()), (48, 2));
    assert_eq!(size_of::<Header>(), 12);
    let parts = 16_384 + s.headers.capacity() * 12 + s.order.bytes() + s.index.allocation_size();
    assert!(s.index.allocation_size() > 0 && s.order.bytes() > 0);
    assert_eq!(s.bytes(), parts);
}

/// The age limit ends where the time key does: with the clock such that now - max_age_s is 2^33 s (the
/// year 2242) or later, nothing is too old, whatever the nanoseconds; one second earlier, a record of
/// time 0 is. (2^33 = 8,589,934,592, written out.)
#[test]
fn past_the_keys_range_nothing_is_too_old() {
    let max_age = 10;
    let mut s = RecordStore::with_retention(Retention { max: None, max_age_s: Some(max_age) });
    let past = Timestamp { secs: 8_589_934_592 + max_age, nanos: 500_000_000 };
    assert_eq!(offer(&mut s, &at("A", "a", "+1+1", "0.0000001"), past), Offer::Stored { seq: 1 });
    assert!(!s.sweep_due(past));
    assert_eq!(s.sweep(past, 10), 0);
    let before = Timestamp { secs: 8_589_934_591 + max_age, nanos: 500_000_000 };
    assert_eq!(offer(&mut s, &at("A", "b", "+1+1", "0"), before), Offer::RefusedOld);
    assert!(s.sweep_due(before));
}

/// Every counter against a hand-written table: a run of offers, a sweep, with the outcome of each
/// worked out by hand from the rules (max 2, max_age_s 100, clock at 1000 s).
#[test]
fn counters_follow_a_table() {
    let mut s = RecordStore::with_retention(Retention { max: Some(2), max_age_s: Some(100) });
    let now = ts(1000);
    let steps: [(&[u8], Offer); 11] = [
        (b"AT A +0.000000000 a +1+1 950\n", Offer::Stored { seq: 1 }),
        (b"AT A +0.000000000 a +1+1 950\n", Offer::NotNewer),
        (b"AT A +0.000000000 a +1+1 940\n", Offer::NotNewer),
        (b"AT A +0.000000000 a +1+1 955\n", Offer::Stored { seq: 2 }), // an update, in place
        (b"AT A +0.000000000 b +1+1 800\n", Offer::RefusedOld),
        (b"AT A +0.000000000 b +1+1 960\n", Offer::Stored { seq: 3 }),
        (b"AT A +0.000000000 c +1+1 930\n", Offer::RefusedFull),
        (b"AT A +0.000000000 c +1+1 970\n", Offer::Stored { seq: 4 }), // evicts a (955)
        (b"AT A +0.000000000 a +1+1 949\n", Offer::RefusedBelowEvicted), // a new client again, below 955
        (b"AT A +0.000000000 d +1+1 899\n", Offer::RefusedOld),
        (b"AT A +0.000000000 e +1+1 990", Offer::Invalid), // no final LF
    ];
    for (line, want) in steps {
        let got = if want == Offer::Invalid {
            s.offer(line, AtFields { server: (0, 0), client_id: (0, 0), location: (0, 0), client_time: (0, 0) }, now)
        } else {
            offer(&mut s, line, now)
        };
        assert_eq!(got, want, "{}", String::from_utf8_lossy(line));
    }
    // At 1061 s, b (960) is more than 100 s old; c (970) is not.
    assert_eq!(s.sweep(ts(1061), 10), 1);
    let want = StoreCounters {
        stored: 4,
        not_newer: 2,
        refused_full: 1,
        refused_below_evicted: 1,
        refused_old: 2,
        invalid: 1,
        evicted_full: 1,
        evicted_age: 1,
    };
    assert_eq!(*s.counters(), want);
}

/// A handshake's `least=` value at PROTOCOL.md's field limits: a client time of 40 bytes and a client id
/// of 255 bytes (510 hex digits) are read, one byte more of either is refused, and the id's bytes come
/// back from their hex digits (high digit first) in either case of hex.
#[test]
fn a_least_value_is_read_up_to_the_field_limits() {
    let time40 = format!("{}.{}", "1".repeat(10), "5".repeat(29));
    assert_eq!(time40.len(), 40);
    let id255 = "fA".repeat(255);
    let point = OrderPoint::parse(format!("{time40},{id255}").as_bytes()).expect("at the limits");
    assert_eq!((point.time.len(), point.id.len()), (40, 255));
    assert!(point.id.iter().all(|&b| b == 0xfa), "each byte from its two digits, high first");
    assert_eq!(OrderPoint::parse(format!("{time40}5,{id255}").as_bytes()), None, "a 41-byte time");
    assert_eq!(OrderPoint::parse(format!("{time40},{id255}fa").as_bytes()), None, "a 256-byte id");
    let one = OrderPoint::parse(b"7,0f").expect("one byte");
    assert_eq!((one.time, one.id), (b"7".to_vec(), vec![0x0f]));
    assert_eq!(OrderPoint::parse(b"7,f0").unwrap().id, vec![0xf0]);
}

// ---- Property tests against a model ----

/// The naive model of the rules, written from the text: a list scanned in full.
#[derive(Default)]
struct Model {
    max: Option<usize>,
    held: Vec<Rec>,
    bound: Option<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rec {
    server: String,
    id: String,
    loc: String,
    time: String,
}

impl Rec {
    fn line(&self) -> Vec<u8> {
        at(&self.server, &self.id, &self.loc, &self.time)
    }
    /// Newest-wins: time, then server, then location.
    fn recency(&self, o: &Rec) -> Ordering {
        protocol::cmp_time(self.time.as_bytes(), o.time.as_bytes())
            .then_with(|| self.server.cmp(&o.server))
            .then_with(|| self.loc.cmp(&o.loc))
    }
    /// Retention: time, then id.
    fn order(&self, time: &str, id: &str) -> Ordering {
        protocol::cmp_time(self.time.as_bytes(), time.as_bytes()).then_with(|| self.id.as_bytes().cmp(id.as_bytes()))
    }
}

impl Model {
    fn offer(&mut self, r: &Rec) -> Offer {
        if let Some(i) = self.held.iter().position(|h| h.id == r.id) {
            if r.recency(&self.held[i]) != Ordering::Greater {
                return Offer::NotNewer;
            }
            self.held[i] = r.clone();
            return Offer::Stored { seq: 0 };
        }
        if let Some(max) = self.max {
            if let Some((t, id)) = &self.bound {
                if r.order(t, id) != Ordering::Greater {
                    return Offer::RefusedBelowEvicted;
                }
            }
            if self.held.len() >= max {
                let least =
                    (0..self.held.len()).min_by(|&a, &b| self.held[a].order(&self.held[b].time, &self.held[b].id));
                let Some(least) = least else { return Offer::RefusedFull };
                if r.order(&self.held[least].time, &self.held[least].id) != Ordering::Greater {
                    return Offer::RefusedFull;
                }
                let gone = self.held.remove(least);
                self.bound = Some((gone.time, gone.id));
            }
        }
        self.held.push(r.clone());
        Offer::Stored { seq: 0 }
    }
}

/// Small pools so that ids collide and times tie, with fractions past nanoseconds and past the year 2242.
fn rec() -> impl Strategy<Value = Rec> {
    let servers = prop::sample::select(vec!["Al", "Bo"]);
    let ids = prop::sample::select(vec!["a", "b", "ab", "b0", "c", "d", "e"]);
    let locs = prop::sample::select(vec!["+1+1", "+2-2"]);
    let times = prop::sample::select(vec![
        "1",
        "1.0",
        "01.5",
        "1.50",
        "2",
        "1.0000000001",
        "1.00000000010",
        "1.000000001",
        "1.0000000002",
        "8589934591.9999999999",
        "8589934592",
        "8589934592.1",
        "99999999999.5",
        "3",
    ]);
    (servers, ids, locs, times).prop_map(|(s, i, l, t)| Rec {
        server: s.into(),
        id: i.into(),
        loc: l.into(),
        time: t.into(),
    })
}

fn same_kind(a: Offer, b: Offer) -> bool {
    std::mem::discriminant(&a) == std::mem::discriminant(&b)
}

/// The held set characterised directly: the `max` greatest (by time, then id) of the newest record of
/// each client.
fn top_of_newest(recs: &[Rec], max: Option<usize>) -> BTreeSet<Vec<u8>> {
    let mut newest: BTreeMap<&str, &Rec> = BTreeMap::new();
    for r in recs {
        let e = newest.entry(&r.id).or_insert(r);
        if r.recency(e) == Ordering::Greater {
            *e = r;
        }
    }
    let mut all: Vec<&Rec> = newest.into_values().collect();
    all.sort_by(|a, b| b.order(&a.time, &a.id)); // greatest first
    all.into_iter().take(max.unwrap_or(usize::MAX)).map(Rec::line).collect()
}

/// Lines with their client time written canonically (no leading zeros, no trailing fraction zeros).
fn canonical(lines: BTreeSet<Vec<u8>>) -> BTreeSet<Vec<u8>> {
    lines
        .into_iter()
        .map(|l| {
            let text = String::from_utf8(l).unwrap();
            let (head, time) = text.trim_end().rsplit_once(' ').unwrap();
            let (int, frac) = time.split_once('.').unwrap_or((time, ""));
            let (int, frac) = (int.trim_start_matches('0'), frac.trim_end_matches('0'));
            format!("{head} {}{}{frac}", if int.is_empty() { "0" } else { int }, if frac.is_empty() { "" } else { "." })
                .into_bytes()
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn every_offer_matches_the_model(
        recs in prop::collection::vec(rec(), 1..60),
        max in prop::option::of(0usize..6),
    ) {
        let mut s = RecordStore::with_retention(Retention { max, max_age_s: None });
        let mut m = Model { max, ..Model::default() };
        for r in &recs {
            let (got, want) = (offer(&mut s, &r.line(), EPOCH), m.offer(r));
            prop_assert!(same_kind(got, want), "{:?}: store {:?}, model {:?}", r, got, want);
            let model_set: BTreeSet<Vec<u8>> = m.held.iter().map(Rec::line).collect();
            prop_assert_eq!(held_lines(&s), model_set);
            let least = m.held.iter().min_by(|a, b| a.order(&b.time, &b.id)).map(Rec::line);
            prop_assert_eq!(s.least().map(|r| r.to_line()), least);
        }
    }

    #[test]
    fn the_held_set_does_not_depend_on_the_order_of_arrival(
        recs in prop::collection::vec(rec(), 1..60),
        max in prop::option::of(1usize..6),
        seed in any::<u64>(),
    ) {
        let mut other = recs.clone();
        // A seeded Fisher-Yates shuffle: a second order of arrival.
        let mut x = seed | 1;
        for i in (1..other.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            other.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let mut a = RecordStore::with_retention(Retention { max, max_age_s: None });
        let mut b = RecordStore::with_retention(Retention { max, max_age_s: None });
        for r in &recs {
            offer(&mut a, &r.line(), EPOCH);
        }
        for r in &other {
            offer(&mut b, &r.line(), EPOCH);
        }
        // Records equal under newest-wins (same server and location, times equal as decimals but written
        // differently: "1.5" and "01.50") are interchangeable; compare them in a canonical form.
        let expected = canonical(top_of_newest(&recs, max));
        prop_assert_eq!(canonical(held_lines(&a)), expected.clone());
        prop_assert_eq!(canonical(held_lines(&b)), expected);
    }

    #[test]
    fn time_keys_never_contradict_the_exact_order(
        a in "[0-9]{1,12}(\\.[0-9]{1,12})?",
        b in "[0-9]{1,12}(\\.[0-9]{1,12})?",
    ) {
        let (ka, kb) = (time_key(a.as_bytes()), time_key(b.as_bytes()));
        let exact = protocol::cmp_time(a.as_bytes(), b.as_bytes());
        prop_assert_eq!(cmp_time_keyed(ka, a.as_bytes(), kb, b.as_bytes()), exact);
        if ka != kb {
            prop_assert_eq!(ka.cmp(&kb), exact, "keys that differ decide alone");
        }
    }
}
