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
#![no_main]

use herd::http::{HttpError, Parsed, ResponseParser};
use libfuzzer_sys::fuzz_target;

const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
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
});

fn parser_fresh() -> ResponseParser {
    ResponseParser::new(MAX_HEAD, MAX_BODY)
}

fn lens_of(pieces: &[&[u8]]) -> Vec<usize> {
    pieces.iter().map(|p| p.len()).collect()
}

/// Feeds `pieces` in order, then finishes: the response, or the first error.
fn outcome(parser: &mut ResponseParser, pieces: &[&[u8]]) -> Result<herd::http::Response, HttpError> {
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
fn sticky(parser: &mut ResponseParser, e: HttpError) -> Result<herd::http::Response, HttpError> {
    assert_eq!(parser.feed(b"x").as_ref().err(), Some(&e), "error not sticky on feed");
    assert_eq!(parser.feed(b"").as_ref().err(), Some(&e), "error not sticky on empty feed");
    assert_eq!(parser.finish().as_ref().err(), Some(&e), "error not sticky on finish");
    let _ = e.to_string();
    Err(e)
}

fn check_response(r: &herd::http::Response) {
    assert!((200..1000).contains(&r.status) || r.status < 100, "status {}", r.status);
    assert!(r.body.len() <= MAX_BODY);
    if r.status == 204 || r.status == 304 {
        assert!(r.body.is_empty(), "body on a {}", r.status);
    }
    for (name, _) in &r.headers {
        let _ = r.header(name).expect("header lookup by its own name");
    }
}
