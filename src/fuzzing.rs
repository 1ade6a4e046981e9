//! The fuzz targets' checks, as library functions: `fuzz/fuzz_targets/*.rs` are one-line wrappers around
//! these, and `tests/fuzz_corpus.rs` replays the committed seed corpora (`fuzz/corpus/<target>/`) through
//! the same functions in a plain `cargo test`. So a change that breaks a target's code path, or an
//! invariant a target checks, fails CI, which has neither nightly Rust nor the C++ toolchain libFuzzer
//! needs. Each function panics when an invariant does not hold; it never panics otherwise.
//!
//! Not part of the server: hidden from the documentation and used by nothing else.

pub mod command_parser {
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

    use crate::protocol::{self, AtFields, Command, Fields, Timestamp};
    use std::cmp::Ordering;

    const NOW: Timestamp = Timestamp { secs: 1_700_000_000, nanos: 0 };

    /// The target's whole check of one input.
    pub fn run(data: &[u8]) {
        check_line(data);
        for line in data.split(|&b| b == b'\n') {
            check_line(line);
            // The connection strips a CR before the LF for the `?` echo; parsing must not care either way.
            if let Some(stripped) = line.strip_suffix(b"\r") {
                assert_eq!(protocol::parse_command(stripped), protocol::parse_command(line));
            }
        }
    }

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
                    // Alone in the buffer, and after earlier output: ranges are relative to the start of
                    // the line.
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
        let record = crate::record::Record::parse(out).expect("Record::parse of write_at's line");
        assert_eq!(record.line(), out);
        assert_eq!(record.client_id(), c.client_id);
    }
}

pub mod http_response {
    //! The Places upstream's HTTP/1.1 response parser, fed arbitrary bytes split anywhere.
    //!
    //! Input layout: byte 0 gives `k = byte0 % 16`, the next `2k` bytes are `k` little-endian u16 piece lengths
    //! (each taken modulo what is left, so a piece may be empty), and everything after them is the response
    //! stream. The stream is fed in those pieces (then the rest in one piece), then `finish()` is called, as
    //! the upstream does when the server closes.
    //!
    //! Checks: nothing panics; the outcome (a complete `Response`, or an error) is the same whether the bytes
    //! arrive in one piece or split; once complete, `finish()` says `AlreadyComplete`; after an error the
    //! parser keeps returning that error; `reset()` makes the parser as good as new.

    use crate::http::{HttpError, Parsed, ResponseParser};

    const MAX_HEAD: usize = 64 * 1024;
    const MAX_BODY: usize = 1 << 20;

    /// The target's whole check of one input.
    pub fn run(data: &[u8]) {
        let Some((&k, rest)) = data.split_first() else { return };
        let k = usize::from(k % 16);
        let lens_len = (2 * k).min(rest.len());
        let (lens, stream) = rest.split_at(lens_len);

        let mut pieces = Vec::with_capacity(k + 1);
        let mut left = stream;
        for len in lens.chunks_exact(2) {
            let len = usize::from(u16::from_le_bytes([len[0], len[1]])) % (left.len() + 1);
            let (piece, tail) = left.split_at(len);
            pieces.push(piece);
            left = tail;
        }
        pieces.push(left);

        let mut parser = ResponseParser::new(MAX_HEAD, MAX_BODY);
        let whole = outcome(&mut parser, &[stream]);
        let split = outcome(&mut parser_fresh(), &pieces);
        assert_eq!(whole, split, "one piece and split feeds disagree; pieces: {:?}", lens_of(&pieces));

        // The same parser, reset, gives the same answer again.
        parser.reset();
        assert_eq!(outcome(&mut parser, &pieces), whole, "reset parser disagrees");
    }

    fn parser_fresh() -> ResponseParser {
        ResponseParser::new(MAX_HEAD, MAX_BODY)
    }

    fn lens_of(pieces: &[&[u8]]) -> Vec<usize> {
        pieces.iter().map(|p| p.len()).collect()
    }

    /// Feeds `pieces` in order, then finishes: the response, or the first error.
    fn outcome(parser: &mut ResponseParser, pieces: &[&[u8]]) -> Result<crate::http::Response, HttpError> {
        let mut complete = None;
        for piece in pieces {
            if complete.is_some() {
                // After the response, an empty read is nothing; any byte is one too many.
                if piece.is_empty() {
                    continue;
                }
                let err = parser.feed(piece).expect_err("bytes after a complete response accepted");
                assert_eq!(err, HttpError::TrailingBytes);
                return sticky(parser, err);
            }
            match parser.feed(piece) {
                Ok(Parsed::Incomplete) => {}
                Ok(Parsed::Complete(response)) => {
                    check_response(&response);
                    complete = Some(response);
                }
                Err(e) => return sticky(parser, e),
            }
        }
        match complete {
            Some(response) => {
                assert_eq!(parser.finish(), Err(HttpError::AlreadyComplete));
                Ok(response)
            }
            None => {
                let result = parser.finish();
                match &result {
                    Ok(response) => {
                        check_response(response);
                        // A second close is not a second response.
                        assert_eq!(parser.finish(), Err(HttpError::AlreadyComplete));
                    }
                    Err(e) => {
                        assert_eq!(parser.finish().as_ref(), Err(e), "error not sticky after finish");
                    }
                }
                result
            }
        }
    }

    /// After an error, feeding or finishing returns the same error.
    fn sticky(parser: &mut ResponseParser, e: HttpError) -> Result<crate::http::Response, HttpError> {
        assert_eq!(parser.feed(b"x").as_ref().err(), Some(&e), "error not sticky on feed");
        assert_eq!(parser.feed(b"").as_ref().err(), Some(&e), "error not sticky on empty feed");
        assert_eq!(parser.finish().as_ref().err(), Some(&e), "error not sticky on finish");
        let _ = e.to_string();
        Err(e)
    }

    fn check_response(r: &crate::http::Response) {
        assert!((200..1000).contains(&r.status) || r.status < 100, "status {}", r.status);
        assert!(r.body.len() <= MAX_BODY);
        if r.status == 204 || r.status == 304 {
            assert!(r.body.is_empty(), "body on a {}", r.status);
        }
        for (name, _) in &r.headers {
            let _ = r.header(name).expect("header lookup by its own name");
        }
    }
}

pub mod peer_messages {
    //! What a peer link does with the lines it reads that is pure: tokenizing handshake lines with `Fields`,
    //! validating records with `parse_at`, and storing them with `RecordStore::offer_line` (newest wins).
    //!
    //! The input is split into lines on LF (each line keeps its LF, as the peer link hands them on; a last
    //! line without LF is offered too). For every line:
    //! - `Fields` yields non-empty runs of non-whitespace, in order, separated only by whitespace;
    //! - `parse_at` ranges lie inside the line, in order, and hold valid fields; it agrees on the line with
    //!   and without its LF;
    //! - `offer_line` is `None` exactly when the line is not a valid `AT` line ending in LF; a stored line is
    //!   held byte for byte and its line parses again; a line not stored loses to the held record; the same
    //!   line offered twice is `Some(false)` the second time.
    //!
    //! At the end every held record parses again and is found under its own client id.

    use crate::protocol::{self, AtFields, Fields};
    use crate::record::{Record, RecordStore};
    use std::cmp::Ordering;

    /// The target's whole check of one input.
    pub fn run(data: &[u8]) {
        let mut store = RecordStore::new();
        for line in data.split_inclusive(|&b| b == b'\n') {
            check_fields(line);
            check_record(&mut store, line);
        }
        for record in store.iter() {
            let line = record.to_line();
            let fields = protocol::parse_at(&line).expect("a held record no longer parses");
            check_at_fields(&line, fields);
            let found = store.get(record.client_id()).map(|r| r.to_line());
            assert_eq!(found.as_deref(), Some(&line[..]), "record not found under its client id");
        }
        assert_eq!(store.iter().count(), store.len());
    }

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
            let held_line = held.to_line();
            assert_eq!(held_line, line, "stored line not held byte for byte");
            assert_eq!(held.to_record(), candidate);
            let f = protocol::parse_at(&held_line).expect("a stored record's line does not parse again");
            assert_eq!(Some(f), parsed);
            assert!(store.len() == before || store.len() == before + 1);
        } else {
            assert_eq!(store.len(), before);
            assert_ne!(held.cmp_recency(&candidate), Ordering::Less, "a more recent record was not stored");
        }
        // Newest wins: the same line again is never stored.
        let after = store.len();
        assert_eq!(store.offer_line(line), Some(false), "the same line offered twice was stored twice");
        assert_eq!(store.len(), after);
    }
}
