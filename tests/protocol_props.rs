//! Property tests of the pure protocol core: parsing never panics, formatting round-trips, and the
//! time arithmetic agrees with an independent exact computation.
//!
//! Every expected value comes from a reference model written here, never from the crate: the AT line
//! is built with `format!` from the reference time difference (i128 arithmetic), and newest-wins is
//! decided by comparing client times as digit strings (any length: PROTOCOL allows 40 bytes, more than
//! an i128 holds), then (server, location) bytewise, as PROTOCOL section 2 words it.

use herd::protocol::{self, Command, Timestamp};
use herd::record::{Record, RecordStore};
use proptest::prelude::*;
use std::cmp::Ordering;

fn digits(min: usize, max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(0u8..10, min..=max).prop_map(|v| v.into_iter().map(|d| (b'0' + d) as char).collect())
}

/// A valid coordinate: sign, integer part within `limit` (with optional leading zeros), optional fraction.
fn coordinate(limit: u32) -> impl Strategy<Value = String> {
    (any::<bool>(), 0..=limit, 0usize..3, proptest::option::of(digits(1, 8))).prop_map(
        move |(neg, int, zeros, frac)| {
            let sign = if neg { '-' } else { '+' };
            let frac = if int == limit { frac.map(|f| "0".repeat(f.len())) } else { frac };
            let pad = "0".repeat(zeros);
            match frac {
                Some(f) => format!("{sign}{pad}{int}.{f}"),
                None => format!("{sign}{pad}{int}"),
            }
        },
    )
}

/// One edit of `line`, if any: at an index, the byte replaced, a byte inserted, or the byte removed.
fn apply_edit(line: &mut Vec<u8>, edit: Option<(prop::sample::Index, usize, u8)>) {
    if let Some((at, kind, byte)) = edit {
        let i = at.index(line.len());
        match kind {
            0 => line[i] = byte,
            1 => line.insert(i, byte),
            _ => {
                line.remove(i);
            }
        }
    }
}

/// A valid coordinate of 27-37 bytes (leading zeros): two make a location on either side of its 64-byte
/// bound.
const LONG_COORDINATE: &str = "[-+]0{25,35}[1-8]";

/// A coordinate at its limit's edge, valid or not: integer part `limit - 1`, `limit` or `limit + 1`
/// (leading zeros optional), and a fraction that is zero, absent, or just above zero.
fn near_limit(limit: u32) -> impl Strategy<Value = String> {
    let frac = prop::sample::select(vec!["", ".0", ".000", ".5", ".01", ".0000001"]);
    (any::<bool>(), limit - 1..=limit + 1, 0usize..3, frac)
        .prop_map(|(neg, int, zeros, frac)| format!("{}{}{int}{frac}", if neg { '-' } else { '+' }, "0".repeat(zeros)))
}

/// A client time small enough for the i128 reference of the time difference.
fn client_time() -> impl Strategy<Value = String> {
    (digits(1, 12), proptest::option::of(digits(1, 15))).prop_map(|(i, f)| match f {
        Some(f) => format!("{i}.{f}"),
        None => i,
    })
}

/// A client time of any length PROTOCOL allows (40 bytes), leading and trailing zeros included.
fn long_client_time() -> impl Strategy<Value = String> {
    prop_oneof![
        client_time(),
        (digits(1, 20), proptest::option::of(digits(1, 19))).prop_map(|(i, f)| match f {
            Some(f) => format!("{i}.{f}"),
            None => i,
        }),
    ]
}

/// Reference: a decimal as its integer digits without leading zeros and its fraction digits without
/// trailing zeros, so equal values have equal strings.
fn normal(t: &str) -> (&str, &str) {
    let (int, frac) = t.split_once('.').unwrap_or((t, ""));
    (int.trim_start_matches('0'), frac.trim_end_matches('0'))
}

/// Reference: exact comparison of two decimals by their digit strings: the longer integer part is the
/// greater, then digit by digit; then the fractions digit by digit (a missing digit is a zero, and a
/// trimmed fraction that is a prefix of the other is the smaller).
fn ref_cmp_time(a: &str, b: &str) -> Ordering {
    let ((ai, af), (bi, bf)) = (normal(a), normal(b));
    ai.len().cmp(&bi.len()).then_with(|| ai.cmp(bi)).then_with(|| af.cmp(bf))
}

/// Reference: the AT line's time difference, `now - time` truncated toward zero to nanoseconds. Both
/// are scaled to 10^max(9, fraction digits) and divided with Rust's truncating integer division.
fn ref_time_diff(secs: u64, nanos: u32, time: &str) -> String {
    let (num, places) = exact(time);
    let scale_places = places.max(9);
    let now_scaled = (i128::from(secs) * 1_000_000_000 + i128::from(nanos)) * 10i128.pow(scale_places - 9);
    let t_scaled = num * 10i128.pow(scale_places - places);
    let diff_ns = (now_scaled - t_scaled) / 10i128.pow(scale_places - 9);
    let sign = if diff_ns < 0 { '-' } else { '+' };
    let abs = diff_ns.unsigned_abs();
    format!("{sign}{}.{:09}", abs / 1_000_000_000, abs % 1_000_000_000)
}

/// A refused peer record is logged and counted under the name of what broke: the names are part of the
/// log and metrics an operator reads, written out here by hand.
#[test]
fn refused_records_are_named_by_the_field_that_broke() {
    let cases: [(&[u8], &str); 4] = [
        (b"this is not a record\n", "not_a_record"),
        (b"AT Bona +0.000000001 c\x1b +1+1 1\n", "client_id"),
        (b"AT Bona +0.000000001 c +91+1 1\n", "location"),
        (b"AT Bona +0.000000001 c +1+1 1e9\n", "client_time"),
    ];
    for (line, name) in cases {
        let refusal = protocol::check_at(line).expect_err("refused");
        assert_eq!(refusal.name(), name, "{}", String::from_utf8_lossy(line));
    }
}

#[test]
fn the_reference_comparison_agrees_with_protocol_examples() {
    // PROTOCOL section 2's own examples, so the model is checked against the contract, not the crate.
    assert_eq!(ref_cmp_time("1700000300.0000000001", "1700000300"), Ordering::Greater);
    assert_eq!(ref_cmp_time("1.5", "1.50"), Ordering::Equal);
    assert_eq!(ref_cmp_time("0009", "10"), Ordering::Less);
    assert_eq!(ref_cmp_time("2.05", "2.5"), Ordering::Less);
    assert_eq!(ref_time_diff(10, 0, "12.0000000019"), "-2.000000001");
    assert_eq!(ref_time_diff(1, 263_873_386, "1"), "+0.263873386");
}

/// A client time as an exact rational: (numerator, power of ten of the denominator).
fn exact(t: &str) -> (i128, u32) {
    match t.split_once('.') {
        Some((i, f)) => (format!("{i}{f}").parse().unwrap(), f.len() as u32),
        None => (t.parse().unwrap(), 0),
    }
}

proptest! {
    // 2,000 cases; PROPTEST_CASES overrides (the mutation runs in TESTING.md use 256 per mutant).
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000)
    ))]

    #[test]
    fn parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = protocol::parse_command(&bytes);
        let _ = protocol::parse_at(&bytes);
        let _ = protocol::parse_location(&bytes);
        let mut store = RecordStore::new();
        let _ = store.offer_line(&bytes);
    }

    #[test]
    fn near_valid_commands_never_panic(
        verb in prop_oneof![Just("IAMAT"), Just("WHATSAT"), Just("AT")],
        fields in proptest::collection::vec("[-+.0-9eE a-z]{0,12}", 0..6),
    ) {
        let line = format!("{verb} {}", fields.join(" "));
        let _ = protocol::parse_command(line.as_bytes());
    }

    #[test]
    fn at_lines_round_trip(
        id in "[!-~]{1,40}",
        lat in coordinate(90),
        lng in coordinate(180),
        time in client_time(),
        secs in 0u64..4_000_000_000,
        nanos in 0u32..1_000_000_000,
    ) {
        let loc = format!("{lat}{lng}");
        let line = format!("IAMAT {id} {loc} {time}");
        let Command::IAmAt(cmd) = protocol::parse_command(line.as_bytes()) else {
            panic!("valid IAMAT refused: {line}");
        };
        // The server writes an AT line only for a time within the allowed skew of its clock (300 s by
        // default; it answers `?` otherwise), so only those lines must round-trip. Decided by the
        // reference comparison, not the crate's.
        prop_assume!(ref_cmp_time(&time, &format!("{}.{nanos:09}", secs + 300)) != Ordering::Greater);
        let mut out = Vec::new();
        let fields = protocol::write_at(&mut out, b"Srv", Timestamp { secs, nanos }, &cmd);
        // The expected line, built here from the reference time difference.
        let want = format!("AT Srv {} {id} {loc} {time}\n", ref_time_diff(secs, nanos, &time));
        prop_assert_eq!(String::from_utf8_lossy(&out), want);
        prop_assert_eq!(protocol::parse_at(&out), Some(fields));
        let record = Record::parse(&out).unwrap();
        prop_assert_eq!(record.server(), b"Srv");
        prop_assert_eq!(record.client_id(), id.as_bytes());
        prop_assert_eq!(record.location(), loc.as_bytes());
        prop_assert_eq!(record.client_time(), time.as_bytes());
        prop_assert_eq!(record.line(), &out[..]);
    }

    /// The one-pass scan of a peer record (the fast path) accepts exactly what the field-by-field check
    /// accepts, with the same fields: every valid line, and, for lines one edit away from valid, the same
    /// answer either way (the scan says "not sure" and the field check gives the reason).
    #[test]
    fn the_one_pass_scan_agrees_with_the_field_by_field_check(
        server in "[!-~]{1,70}",
        diff_int in digits(1, 13),
        diff_frac in digits(8, 10),
        id in prop_oneof!["[!-~]{1,40}", "[!-~\u{80}-\u{ff}]{1,300}"],
        lat in prop_oneof![coordinate(90), near_limit(90), "[-+][0-9]{1,3}(\\.[0-9]{1,4})?", LONG_COORDINATE],
        lng in prop_oneof![coordinate(180), near_limit(180), "[-+][0-9]{1,4}(\\.[0-9]{1,4})?", LONG_COORDINATE],
        time in prop_oneof![long_client_time(), digits(38, 42)],
        edit in proptest::option::of((any::<prop::sample::Index>(), 0usize..3, prop::sample::select(
            b" .+-09a\t\n\x7f\x80\x00".to_vec()))),
    ) {
        let sign = if diff_int.len() % 2 == 0 { '+' } else { '-' };
        let mut line = format!("AT {server} {sign}{diff_int}.{diff_frac} {id} {lat}{lng} {time}\n").into_bytes();
        apply_edit(&mut line, edit);
        let by_field = protocol::check_at_by_field(&line);
        prop_assert_eq!(protocol::scan_at(&line), by_field.ok(), "{}", String::from_utf8_lossy(&line));
        prop_assert_eq!(protocol::check_at(&line), by_field);
    }

    /// The one-pass IAMAT scan (the fast path of every client update) agrees with the field-by-field
    /// parser on valid lines, limits' edges, and lines one edit away: another whitespace byte, a doubled
    /// or missing space, a byte changed, inserted or removed anywhere.
    #[test]
    fn the_one_pass_iamat_scan_agrees_with_the_field_by_field_parser(
        id in prop_oneof!["[!-~]{1,40}", "[!-~\u{80}-\u{ff}]{1,300}"],
        lat in prop_oneof![coordinate(90), near_limit(90), "[-+][0-9]{1,3}(\\.[0-9]{1,4})?", LONG_COORDINATE],
        lng in prop_oneof![coordinate(180), near_limit(180), "[-+][0-9]{1,4}(\\.[0-9]{1,4})?", LONG_COORDINATE],
        time in prop_oneof![long_client_time(), digits(38, 42)],
        edit in proptest::option::of((any::<prop::sample::Index>(), 0usize..3, prop::sample::select(
            b" \t\r\x0b\x0c.+-09a\x7f\x80\x00".to_vec()))),
    ) {
        let mut line = format!("IAMAT {id} {lat}{lng} {time}").into_bytes();
        let valid = edit.is_none();
        apply_edit(&mut line, edit);
        let by_field = protocol::parse_command_by_field(&line);
        prop_assert_eq!(protocol::parse_command(&line), by_field.clone(), "{}", String::from_utf8_lossy(&line));
        if let Some(cmd) = protocol::scan_iamat(&line) {
            prop_assert_eq!(Command::IAmAt(cmd), by_field);
        } else if valid {
            prop_assert!(!matches!(by_field, Command::IAmAt(_)), "a valid IAMAT missed the fast path");
        }
    }

    #[test]
    fn time_difference_is_the_exact_difference_truncated_to_nanoseconds(
        secs in 0u64..4_000_000_000,
        nanos in 0u32..1_000_000_000,
        time in client_time(),
    ) {
        let mut out = Vec::new();
        protocol::write_time_diff(&mut out, Timestamp { secs, nanos }, time.as_bytes());
        prop_assert_eq!(String::from_utf8(out).unwrap(), ref_time_diff(secs, nanos, &time));
    }

    #[test]
    fn client_times_compare_as_exact_decimals(a in long_client_time(), b in long_client_time()) {
        prop_assert_eq!(protocol::cmp_time(a.as_bytes(), b.as_bytes()), ref_cmp_time(&a, &b));
        // Trailing zeros and leading zeros change nothing.
        let padded = if a.contains('.') { format!("00{a}000") } else { format!("00{a}.000") };
        prop_assert_eq!(protocol::cmp_time(padded.as_bytes(), a.as_bytes()), Ordering::Equal);
    }

    #[test]
    fn the_store_keeps_the_newest_whatever_the_order(
        records in proptest::collection::vec((long_client_time(), 0usize..3, coordinate(90)), 1..12),
        seed in any::<u64>(),
    ) {
        let servers = ["Bailey", "Bona", "Clark"];
        let lines: Vec<String> = records
            .iter()
            .map(|(t, s, lat)| format!("AT {} +0.000000000 id {lat}+0 {t}\n", servers[*s]))
            .collect();
        // The reference newest-wins order: client time exactly, then (server, location) bytewise.
        let newer = |a: usize, b: usize| {
            let ((ta, sa, la), (tb, sb, lb)) = (&records[a], &records[b]);
            ref_cmp_time(ta, tb)
                .then_with(|| servers[*sa].as_bytes().cmp(servers[*sb].as_bytes()))
                .then_with(|| format!("{la}+0").into_bytes().cmp(&format!("{lb}+0").into_bytes()))
        };
        // Two different arrival orders.
        let mut order: Vec<usize> = (0..lines.len()).collect();
        let mut x = seed | 1;
        for i in (1..order.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            order.swap(i, (x % (i as u64 + 1)) as usize);
        }
        for ord in [order.clone(), order.into_iter().rev().collect::<Vec<_>>()] {
            // Expected: the first line to arrive among the greatest (a later equal one is not more
            // recent, so it is not stored), and whether each offer stores.
            let mut held: Option<usize> = None;
            let mut store = RecordStore::new();
            for &i in &ord {
                let stores = held.is_none_or(|h| newer(i, h) == Ordering::Greater);
                if stores {
                    held = Some(i);
                }
                prop_assert_eq!(store.offer_line(lines[i].as_bytes()), Some(stores), "offering {}", lines[i]);
            }
            let want = &lines[held.unwrap()];
            let held_line = store.get(b"id").unwrap().to_line();
            prop_assert_eq!(String::from_utf8_lossy(&held_line), want.as_str());
            prop_assert_eq!((store.len(), store.is_empty()), (1, false), "one client, one record");
        }
    }

    /// The clock-skew bound (PROTOCOL section 2: not more than `max_clock_skew_s` ahead) compared
    /// exactly: client times at, just under and just over a limit, with trailing zeros and digits past
    /// the ninth, against the reference digit-string comparison.
    #[test]
    fn the_clock_skew_bound_is_compared_exactly(
        secs in 1u64..4_000_000_000,
        nanos in 0u32..1_000_000_000,
        shape in 0usize..8,
        zeros in 0usize..4,
        digit in 1u8..10,
    ) {
        let limit = Timestamp { secs, nanos };
        let exact = format!("{secs}.{nanos:09}");
        let z = "0".repeat(zeros);
        let t = match shape {
            0 => exact.clone(),
            1 => format!("{exact}{z}"),
            2 => format!("{exact}{z}{digit}"),
            3 => format!("{}", secs),
            4 => format!("{}", secs + 1),
            5 => format!("{}.999999999{z}{digit}", secs - 1),
            6 => format!("{secs}.{:09}{z}", nanos.saturating_sub(1)),
            _ => format!("{secs}.{:09}{z}", (nanos + 1).min(999_999_999)),
        };
        let want = ref_cmp_time(&t, &exact) != Ordering::Greater;
        prop_assert_eq!(protocol::time_at_most(t.as_bytes(), limit), want, "{} against {}", t, exact);
    }

    #[test]
    fn out_of_range_coordinates_are_refused(extra in 1u32..1000, frac in digits(1, 6)) {
        let over_lat = format!("+{}.{frac}+0", 90 + extra);
        let over_lng = format!("+0-{}.{frac}", 180 + extra);
        prop_assert!(protocol::parse_location(over_lat.as_bytes()).is_none());
        prop_assert!(protocol::parse_location(over_lng.as_bytes()).is_none());
    }
}
