//! Client commands (PROTOCOL sections 2 to 4): `parse_command` on arbitrary bytes, and the replies built
//! from what it accepts.
//!
//! The input is parsed whole, then line by line (split on LF, as the client connection does). For every
//! line:
//! - `Blank` exactly when the line has no fields;
//! - an accepted `IAMAT` whose time is within the allowed clock skew (the server answers the others `?`)
//!   gives an `AT` reply that `parse_at` accepts again, whose field ranges are the ones `write_at`
//!   returned and whose fields are the command's bytes, with a well-formed time difference;
//! - an accepted `WHATSAT` has a client id of 1 to 255 bytes and a bound of at most 20;
//! - `write_invalid` echoes the line exactly.
#![no_main]

use herd::protocol::{self, AtFields, Command, Fields, Timestamp};
use libfuzzer_sys::fuzz_target;
use std::cmp::Ordering;

const NOW: Timestamp = Timestamp { secs: 1_700_000_000, nanos: 0 };

fuzz_target!(|data: &[u8]| {
    check_line(data);
    for line in data.split(|&b| b == b'\n') {
        check_line(line);
        // The connection strips a CR before the LF for the `?` echo; parsing must not care either way.
        if let Some(stripped) = line.strip_suffix(b"\r") {
            assert_eq!(protocol::parse_command(stripped), protocol::parse_command(line));
        }
    }
});

fn check_line(line: &[u8]) {
    let command = protocol::parse_command(line);
    let fields = Fields::new(line).count();
    assert_eq!(command == Command::Blank, fields == 0, "Blank exactly when there are no fields");

    match &command {
        Command::IAmAt(c) => {
            assert_eq!(fields, 4);
            assert!(!c.client_id.is_empty() && c.client_id.len() <= protocol::MAX_CLIENT_ID);
            assert!(protocol::parse_location(c.location).is_some());
            assert!(protocol::valid_time(c.client_time));

            // A time past the allowed skew is answered `?` by the server: no AT line is written.
            if protocol::time_at_most(c.client_time, NOW.plus_secs(300)) {
                // Alone in the buffer, and after earlier output: ranges are relative to the start of the line.
                let mut out = Vec::new();
                let at = protocol::write_at(&mut out, b"S", NOW, c);
                check_at(&out, at, c);
                let mut prefixed = b"AT X +0.000000000 a +0+0 0\n".to_vec();
                let start = prefixed.len();
                let at2 = protocol::write_at(&mut prefixed, b"S", NOW, c);
                assert_eq!(at, at2, "write_at fields depend on what was already in the buffer");
                assert_eq!(&prefixed[start..], &out[..]);
            }
        }
        Command::WhatsAt(w) => {
            assert_eq!(fields, 4);
            assert!(!w.client_id.is_empty() && w.client_id.len() <= protocol::MAX_CLIENT_ID);
            assert!(w.bound <= protocol::MAX_BOUND);
            assert!(protocol::parse_decimal(w.radius_km).is_some(), "radius is DIGITS or DIGITS.DIGITS");
        }
        Command::Blank | Command::Invalid => {}
    }

    let mut out = b"prev".to_vec();
    protocol::write_invalid(&mut out, line);
    assert_eq!(&out[..6], b"prev? ");
    assert_eq!(&out[6..out.len() - 1], line);
    assert_eq!(out.last(), Some(&b'\n'));
}

fn check_at(out: &[u8], at: AtFields, c: &protocol::IAmAt<'_>) {
    assert_eq!(out.last(), Some(&b'\n'));
    let parsed = protocol::parse_at(out).unwrap_or_else(|| {
        panic!("parse_at rejects write_at's line {:?}", String::from_utf8_lossy(out));
    });
    assert_eq!(parsed, at, "parse_at and write_at disagree on the fields of {:?}", String::from_utf8_lossy(out));
    let field = |r: (u32, u32)| &out[r.0 as usize..r.1 as usize];
    assert_eq!(field(at.server), b"S");
    assert_eq!(field(at.client_id), c.client_id);
    assert_eq!(field(at.location), c.location);
    assert_eq!(field(at.client_time), c.client_time);
    // Without the final LF too, as a peer line may arrive.
    assert_eq!(protocol::parse_at(&out[..out.len() - 1]), Some(at));

    // The time difference: `AT S <diff> ...`, sign, digits, point, nine digits, with the right sign.
    let diff = &out[5..at.client_id.0 as usize - 1];
    let (sign, magnitude) = diff.split_first().expect("a time difference");
    let d = protocol::parse_decimal(magnitude).expect("time difference digits");
    assert_eq!(d.frac.len(), 9);
    assert!(d.int.len() == 1 || d.int[0] != b'0', "leading zero in {:?}", String::from_utf8_lossy(diff));
    let zero = magnitude.iter().all(|&b| b == b'0' || b == b'.');
    match protocol::cmp_time(c.client_time, b"1700000000") {
        // Less than a nanosecond either way truncates to `+0.000000000`.
        Ordering::Less => assert_eq!(*sign, b'+', "diff {:?}", String::from_utf8_lossy(diff)),
        Ordering::Equal => assert_eq!(diff, b"+0.000000000"),
        Ordering::Greater => {
            assert!((*sign == b'-' && !zero) || diff == b"+0.000000000", "diff {:?}", String::from_utf8_lossy(diff))
        }
    }

    // The line is a record a server would store.
    let record = herd::record::Record::parse(out).expect("Record::parse of write_at's line");
    assert_eq!(record.line(), out);
    assert_eq!(record.client_id(), c.client_id);
}
