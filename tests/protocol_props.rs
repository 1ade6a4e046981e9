//! Property tests of the pure protocol core: parsing never panics, formatting round-trips, and the
//! time arithmetic agrees with an independent exact computation.

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

fn client_time() -> impl Strategy<Value = String> {
    (digits(1, 12), proptest::option::of(digits(1, 15))).prop_map(|(i, f)| match f {
        Some(f) => format!("{i}.{f}"),
        None => i,
    })
}

/// A client time as an exact rational: (numerator, power of ten of the denominator).
fn exact(t: &str) -> (i128, u32) {
    match t.split_once('.') {
        Some((i, f)) => (format!("{i}{f}").parse().unwrap(), f.len() as u32),
        None => (t.parse().unwrap(), 0),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

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
        // The server writes an AT line only for a time within the allowed skew of its clock (it answers
        // `?` otherwise), so only those lines must round-trip.
        let now = Timestamp { secs, nanos };
        prop_assume!(protocol::time_at_most(time.as_bytes(), now.plus_secs(300)));
        let mut out = Vec::new();
        let fields = protocol::write_at(&mut out, b"Srv", now, &cmd);
        prop_assert_eq!(protocol::parse_at(&out), Some(fields));
        let record = Record::parse(&out).unwrap();
        prop_assert_eq!(record.client_id(), id.as_bytes());
        prop_assert_eq!(record.location(), loc.as_bytes());
        prop_assert_eq!(record.client_time(), time.as_bytes());
        prop_assert_eq!(record.line(), &out[..]);
    }

    #[test]
    fn time_difference_is_the_exact_difference_truncated_to_nanoseconds(
        secs in 0u64..4_000_000_000,
        nanos in 0u32..1_000_000_000,
        time in client_time(),
    ) {
        let mut out = Vec::new();
        protocol::write_time_diff(&mut out, Timestamp { secs, nanos }, time.as_bytes());
        let text = String::from_utf8(out).unwrap();

        // Independent reference: scale both to 10^max(9, fraction digits) and divide with Rust's
        // truncating integer division.
        let (num, places) = exact(&time);
        let scale_places = places.max(9);
        let now_scaled = (i128::from(secs) * 1_000_000_000 + i128::from(nanos)) * 10i128.pow(scale_places - 9);
        let t_scaled = num * 10i128.pow(scale_places - places);
        let diff_ns = (now_scaled - t_scaled) / 10i128.pow(scale_places - 9);
        let sign = if diff_ns < 0 { '-' } else { '+' };
        let abs = diff_ns.unsigned_abs();
        let want = format!("{sign}{}.{:09}", abs / 1_000_000_000, abs % 1_000_000_000);
        prop_assert_eq!(text, want);
    }

    #[test]
    fn client_times_compare_as_exact_rationals(a in client_time(), b in client_time()) {
        let (na, pa) = exact(&a);
        let (nb, pb) = exact(&b);
        let p = pa.max(pb);
        let want = (na * 10i128.pow(p - pa)).cmp(&(nb * 10i128.pow(p - pb)));
        prop_assert_eq!(protocol::cmp_time(a.as_bytes(), b.as_bytes()), want);
        // Trailing zeros and leading zeros change nothing.
        let padded = if a.contains('.') { format!("00{a}000") } else { format!("00{a}.000") };
        prop_assert_eq!(protocol::cmp_time(padded.as_bytes(), a.as_bytes()), Ordering::Equal);
    }

    #[test]
    fn the_store_keeps_the_maximum_whatever_the_order(
        records in proptest::collection::vec((client_time(), 0usize..3, coordinate(90)), 1..12),
        seed in any::<u64>(),
    ) {
        let servers = ["Bailey", "Bona", "Clark"];
        let lines: Vec<Vec<u8>> = records
            .iter()
            .map(|(t, s, lat)| format!("AT {} +0.000000000 id {lat}+0 {t}\n", servers[*s]).into_bytes())
            .collect();
        let newest = lines
            .iter()
            .map(|l| Record::parse(l).unwrap())
            .max_by(|a, b| a.cmp_recency(b))
            .unwrap();
        // Two different arrival orders give the same stored record.
        let mut order: Vec<usize> = (0..lines.len()).collect();
        let mut x = seed | 1;
        for i in (1..order.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            order.swap(i, (x % (i as u64 + 1)) as usize);
        }
        for ord in [order.clone(), order.into_iter().rev().collect()] {
            let mut store = RecordStore::new();
            for i in ord {
                store.offer_line(&lines[i]).unwrap();
            }
            prop_assert_eq!(store.get(b"id").unwrap().cmp_recency(&newest), Ordering::Equal);
        }
    }

    #[test]
    fn out_of_range_coordinates_are_refused(extra in 1u32..1000, frac in digits(1, 6)) {
        let over_lat = format!("+{}.{frac}+0", 90 + extra);
        let over_lng = format!("+0-{}.{frac}", 180 + extra);
        prop_assert!(protocol::parse_location(over_lat.as_bytes()).is_none());
        prop_assert!(protocol::parse_location(over_lng.as_bytes()).is_none());
    }
}
