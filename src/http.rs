//! Incremental HTTP/1.1 *response* parser on top of `httparse`, for the Places upstream.
//!
//! The upstream state machine feeds whatever plaintext rustls hands it, split anywhere; [`ResponseParser`]
//! accumulates the head until its blank line, parses it once with `httparse`, then frames the body by
//! `Transfer-Encoding: chunked`, `Content-Length`, or the end of the connection (RFC 9112 section 6.3).
//!
//! Pure: no I/O, no clock. Each byte is looked at a bounded number of times: while waiting for the head the
//! search for its end resumes where the previous one stopped, and `httparse` runs once per head.
//!
//! Choices worth knowing:
//! - interim 1xx responses (100 Continue, 103 Early Hints) are skipped; 101 Switching Protocols is an error
//!   (we never ask to upgrade);
//! - 204 and 304 have no body whatever their headers say;
//! - `Transfer-Encoding` must be exactly `chunked` (we never ask for anything else); it wins over a
//!   `Content-Length`, and then the connection is not kept alive (RFC 9112 section 6.1);
//! - a `Content-Encoding` other than `identity` is an error: we never send `Accept-Encoding`, so a
//!   compressed body is one we cannot read;
//! - chunk extensions and trailer fields are accepted and dropped; a bare LF is accepted where CRLF is due;
//! - any byte after the end of the response is an error: we never pipeline, so it cannot belong to
//!   anything we asked for.

use std::fmt;

/// Most header fields accepted in one head. Google sends about fifteen.
const MAX_HEADERS: usize = 64;
/// Most interim 1xx responses accepted before the final one.
const MAX_INTERIM: u32 = 8;

/// A complete response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Header fields in the order received, names as sent; values that are not UTF-8 are converted lossily.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked; empty for 204 and 304.
    pub body: Vec<u8>,
    /// Whether the connection may carry another request after this response.
    pub keep_alive: bool,
}

impl Response {
    /// The first header field called `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// What [`ResponseParser::feed`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed.
    Incomplete,
    /// The whole response is in.
    Complete(Response),
}

/// Why a response cannot be read. Once a parser has returned an error it returns the same error from then on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HttpError {
    /// The head (status line and header fields) is longer than `max_head`.
    HeadTooLarge,
    /// `httparse` rejected the head.
    BadHead(httparse::Error),
    /// 101 Switching Protocols: we never ask to upgrade.
    UnexpectedUpgrade,
    /// More than a handful of interim 1xx responses before the final one.
    TooManyInterim,
    /// A `Content-Length` that is not a number, or several that disagree.
    BadContentLength,
    /// A `Transfer-Encoding` other than `chunked`.
    UnsupportedTransferEncoding,
    /// A `Content-Encoding` other than `identity`.
    UnsupportedContentEncoding,
    /// A chunk-size line that is not hex digits, optional whitespace, optional extensions.
    BadChunkSize,
    /// Chunk data not followed by CRLF, or a malformed end of trailers.
    BadChunkFraming,
    /// Trailer fields or chunk extensions longer than `max_head`.
    TrailersTooLarge,
    /// The body is longer than `max_body`.
    BodyTooLarge,
    /// Bytes after the end of the response.
    TrailingBytes,
    /// The connection ended before any byte of a response.
    ClosedBeforeResponse,
    /// The connection ended inside the head.
    ClosedInHead,
    /// The connection ended before the end of a `Content-Length` or chunked body.
    ClosedInBody,
    /// `feed` or `finish` after the response was complete.
    AlreadyComplete,
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::HeadTooLarge => f.write_str("response head too large"),
            HttpError::BadHead(e) => write!(f, "bad response head: {e}"),
            HttpError::UnexpectedUpgrade => f.write_str("unexpected 101 switching protocols"),
            HttpError::TooManyInterim => f.write_str("too many interim 1xx responses"),
            HttpError::BadContentLength => f.write_str("bad content-length"),
            HttpError::UnsupportedTransferEncoding => f.write_str("unsupported transfer-encoding"),
            HttpError::UnsupportedContentEncoding => f.write_str("unsupported content-encoding"),
            HttpError::BadChunkSize => f.write_str("bad chunk size"),
            HttpError::BadChunkFraming => f.write_str("bad chunk framing"),
            HttpError::TrailersTooLarge => f.write_str("chunk extensions or trailers too large"),
            HttpError::BodyTooLarge => f.write_str("response body too large"),
            HttpError::TrailingBytes => f.write_str("bytes after the end of the response"),
            HttpError::ClosedBeforeResponse => f.write_str("connection closed before a response"),
            HttpError::ClosedInHead => f.write_str("connection closed inside the response head"),
            HttpError::ClosedInBody => f.write_str("connection closed inside the response body"),
            HttpError::AlreadyComplete => f.write_str("response already complete"),
        }
    }
}

impl std::error::Error for HttpError {}

/// Where the chunked decoder is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// Reading the hex digits of a chunk size; `digits` seen so far.
    Size { size: u64, digits: u32 },
    /// After the digits: whitespace, then `;` extensions or the end of the line.
    SizeWs { size: u64 },
    /// Inside chunk extensions, up to the end of the line.
    Ext { size: u64 },
    /// Seen CR at the end of the size line.
    SizeLf { size: u64 },
    /// Copying chunk data.
    Data { remaining: u64 },
    /// After chunk data: CRLF (or a bare LF) is due.
    DataEnd,
    /// After chunk data and CR: LF is due.
    DataLf,
    /// After the last chunk: at the start of a trailer line (or of the final empty line).
    TrailerStart,
    /// Inside a trailer field line.
    TrailerLine,
    /// Seen CR at the start of a line after the last chunk: LF ends the body.
    TrailerEndLf,
    /// The final CRLF is in.
    Done,
}

#[derive(Clone, Copy, Debug)]
enum Framing {
    Length { remaining: u64 },
    Chunked(Chunk),
    Close,
}

#[derive(Debug)]
enum State {
    Head,
    Body(Framing),
    Complete,
    Failed(HttpError),
}

/// Incremental parser for one HTTP/1.1 response. For the next response on a kept-alive connection, call
/// [`reset`](ResponseParser::reset) (or make a new parser).
#[derive(Debug)]
pub struct ResponseParser {
    max_head: usize,
    max_body: usize,
    state: State,
    /// Head bytes received so far (and, once a feed completes the head, whatever followed it in that feed).
    head: Vec<u8>,
    /// Where the search for the end of the head resumes.
    scan_from: usize,
    /// Whether any byte arrived, to tell "closed before a response" from "closed inside the head".
    received: bool,
    /// Interim 1xx responses skipped so far.
    interim: u32,
    status: u16,
    headers: Vec<(String, String)>,
    keep_alive: bool,
    body: Vec<u8>,
    /// Bytes of chunk extensions and trailers seen, capped by `max_head`.
    overhead: usize,
}

impl ResponseParser {
    /// A parser that accepts a head of at most `max_head` bytes and a body of at most `max_body` bytes.
    pub fn new(max_head: usize, max_body: usize) -> Self {
        ResponseParser {
            max_head,
            max_body,
            state: State::Head,
            head: Vec::new(),
            scan_from: 0,
            received: false,
            interim: 0,
            status: 0,
            headers: Vec::new(),
            keep_alive: false,
            body: Vec::new(),
            overhead: 0,
        }
    }

    /// Ready for a new response, keeping the head buffer's capacity.
    pub fn reset(&mut self) {
        self.state = State::Head;
        self.head.clear();
        self.scan_from = 0;
        self.received = false;
        self.interim = 0;
        self.status = 0;
        self.headers.clear();
        self.keep_alive = false;
        self.body = Vec::new();
        self.overhead = 0;
    }

    /// Feeds bytes as they arrive. Returns [`Parsed::Complete`] once the whole response is in.
    pub fn feed(&mut self, data: &[u8]) -> Result<Parsed, HttpError> {
        let result = self.feed_inner(data);
        if let Err(e) = &result {
            self.state = State::Failed(e.clone());
        }
        result
    }

    /// The server closed the connection (or sent close_notify): completes a close-delimited body; an
    /// incomplete head, `Content-Length` body or chunked body is an error.
    pub fn finish(&mut self) -> Result<Response, HttpError> {
        let result = match &self.state {
            State::Failed(e) => return Err(e.clone()),
            State::Complete => return Err(HttpError::AlreadyComplete),
            State::Head if !self.received => Err(HttpError::ClosedBeforeResponse),
            State::Head => Err(HttpError::ClosedInHead),
            State::Body(Framing::Close) => Ok(self.take_response()),
            State::Body(_) => Err(HttpError::ClosedInBody),
        };
        self.state = match &result {
            Ok(_) => State::Complete,
            Err(e) => State::Failed(e.clone()),
        };
        result
    }

    fn feed_inner(&mut self, data: &[u8]) -> Result<Parsed, HttpError> {
        match &self.state {
            State::Failed(e) => return Err(e.clone()),
            State::Complete => {
                return Err(if data.is_empty() { HttpError::AlreadyComplete } else { HttpError::TrailingBytes })
            }
            State::Body(_) => return self.feed_body(data),
            State::Head => {}
        }
        if data.is_empty() {
            return Ok(Parsed::Incomplete);
        }
        self.received = true;
        self.head.extend_from_slice(data);
        loop {
            let Some(end) = find_head_end(&self.head, self.scan_from) else {
                if self.head.len() > self.max_head {
                    return Err(HttpError::HeadTooLarge);
                }
                // A blank line may start in the last two bytes (LF, or LF CR): look at them again.
                self.scan_from = self.head.len().saturating_sub(2);
                return Ok(Parsed::Incomplete);
            };
            if end > self.max_head {
                return Err(HttpError::HeadTooLarge);
            }
            let framing = self.parse_head(end)?;
            match framing {
                None => {
                    // An interim 1xx response: drop it and look for the next head in what followed.
                    self.interim += 1;
                    if self.interim > MAX_INTERIM {
                        return Err(HttpError::TooManyInterim);
                    }
                    self.head.drain(..end);
                    self.scan_from = 0;
                    if self.head.is_empty() {
                        return Ok(Parsed::Incomplete);
                    }
                }
                Some(framing) => {
                    self.state = State::Body(framing);
                    let buf = std::mem::take(&mut self.head);
                    let result = self.feed_body(&buf[end..]);
                    self.head = buf;
                    self.head.clear();
                    self.scan_from = 0;
                    return result;
                }
            }
        }
    }

    /// Parses `self.head[..end]`. Returns `None` for an interim 1xx response, else the body framing.
    fn parse_head(&mut self, end: usize) -> Result<Option<Framing>, HttpError> {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut fields);
        match response.parse(&self.head[..end]) {
            Ok(httparse::Status::Complete(n)) if n == end => {}
            // Our blank-line search and httparse disagree (for example a bare CR at a line end).
            Ok(_) => return Err(HttpError::BadHead(httparse::Error::NewLine)),
            Err(e) => return Err(HttpError::BadHead(e)),
        }
        let status = response.code.unwrap_or(0);
        let http11 = response.version == Some(1);
        if status == 101 {
            return Err(HttpError::UnexpectedUpgrade);
        }
        if (100..200).contains(&status) {
            return Ok(None);
        }

        let mut content_length: Option<u64> = None;
        let mut chunked = false;
        let mut transfer_encoding = false;
        let mut conn_close = false;
        let mut conn_keep_alive = false;
        self.headers.clear();
        for field in response.headers.iter() {
            let name = field.name;
            let value = field.value;
            if name.eq_ignore_ascii_case("content-length") {
                for item in value.split(|&b| b == b',') {
                    let n = parse_content_length(trim(item)).ok_or(HttpError::BadContentLength)?;
                    if content_length.is_some_and(|m| m != n) {
                        return Err(HttpError::BadContentLength);
                    }
                    content_length = Some(n);
                }
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                for item in value.split(|&b| b == b',').map(trim) {
                    if item.is_empty() {
                        continue;
                    }
                    // `chunked` must be the only coding, and appear once.
                    if !item.eq_ignore_ascii_case(b"chunked") || chunked {
                        return Err(HttpError::UnsupportedTransferEncoding);
                    }
                    chunked = true;
                }
                transfer_encoding = true;
            } else if name.eq_ignore_ascii_case("content-encoding") {
                for item in value.split(|&b| b == b',').map(trim) {
                    if !item.is_empty() && !item.eq_ignore_ascii_case(b"identity") {
                        return Err(HttpError::UnsupportedContentEncoding);
                    }
                }
            } else if name.eq_ignore_ascii_case("connection") {
                for item in value.split(|&b| b == b',').map(trim) {
                    conn_close |= item.eq_ignore_ascii_case(b"close");
                    conn_keep_alive |= item.eq_ignore_ascii_case(b"keep-alive");
                }
            }
            self.headers.push((name.to_owned(), String::from_utf8_lossy(value).into_owned()));
        }
        if transfer_encoding && !chunked {
            return Err(HttpError::UnsupportedTransferEncoding);
        }

        self.status = status;
        self.keep_alive = if http11 { !conn_close } else { conn_keep_alive && !conn_close };
        self.body = Vec::new();
        self.overhead = 0;
        let framing = if status == 204 || status == 304 {
            Framing::Length { remaining: 0 }
        } else if chunked {
            // RFC 9112 section 6.1: a response with both must not be trusted to frame the next one.
            if content_length.is_some() {
                self.keep_alive = false;
            }
            Framing::Chunked(Chunk::Size { size: 0, digits: 0 })
        } else if let Some(n) = content_length {
            if n > self.max_body as u64 {
                return Err(HttpError::BodyTooLarge);
            }
            self.body.reserve_exact(n as usize);
            Framing::Length { remaining: n }
        } else {
            self.keep_alive = false;
            Framing::Close
        };
        Ok(Some(framing))
    }

    fn feed_body(&mut self, data: &[u8]) -> Result<Parsed, HttpError> {
        let State::Body(framing) = self.state else {
            unreachable!("feed_body outside the body");
        };
        let framing = match framing {
            Framing::Length { remaining } => {
                if data.len() as u64 > remaining {
                    return Err(HttpError::TrailingBytes);
                }
                self.body.extend_from_slice(data);
                Framing::Length { remaining: remaining - data.len() as u64 }
            }
            Framing::Close => {
                if data.len() > self.max_body - self.body.len() {
                    return Err(HttpError::BodyTooLarge);
                }
                self.body.extend_from_slice(data);
                Framing::Close
            }
            Framing::Chunked(chunk) => Framing::Chunked(self.feed_chunked(chunk, data)?),
        };
        match framing {
            Framing::Length { remaining: 0 } | Framing::Chunked(Chunk::Done) => {
                self.state = State::Complete;
                Ok(Parsed::Complete(self.take_response()))
            }
            _ => {
                self.state = State::Body(framing);
                Ok(Parsed::Incomplete)
            }
        }
    }

    /// Runs the chunked decoder over `data` from state `chunk`; returns the new state.
    fn feed_chunked(&mut self, mut chunk: Chunk, data: &[u8]) -> Result<Chunk, HttpError> {
        let mut i = 0;
        while i < data.len() {
            if let Chunk::Data { remaining } = chunk {
                let n = remaining.min((data.len() - i) as u64) as usize;
                self.body.extend_from_slice(&data[i..i + n]);
                i += n;
                chunk = if remaining == n as u64 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data { remaining: remaining - n as u64 }
                };
                continue;
            }
            let b = data[i];
            i += 1;
            chunk = match chunk {
                Chunk::Size { size, digits } => match hex_value(b) {
                    Some(v) => {
                        let size = size.saturating_mul(16).saturating_add(u64::from(v));
                        // Checking every digit also keeps `size` far from overflowing.
                        if size > (self.max_body - self.body.len()) as u64 {
                            return Err(HttpError::BodyTooLarge);
                        }
                        Chunk::Size { size, digits: digits + 1 }
                    }
                    None if digits == 0 => return Err(HttpError::BadChunkSize),
                    None => self.after_size(size, b)?,
                },
                Chunk::SizeWs { size } => self.after_size(size, b)?,
                Chunk::Ext { size } => {
                    self.count_overhead(1)?;
                    match b {
                        b'\r' => Chunk::SizeLf { size },
                        b'\n' => size_line_done(size),
                        _ => Chunk::Ext { size },
                    }
                }
                Chunk::SizeLf { size } => match b {
                    b'\n' => size_line_done(size),
                    _ => return Err(HttpError::BadChunkSize),
                },
                Chunk::Data { .. } => unreachable!("handled above"),
                Chunk::DataEnd => match b {
                    b'\r' => Chunk::DataLf,
                    b'\n' => Chunk::Size { size: 0, digits: 0 },
                    _ => return Err(HttpError::BadChunkFraming),
                },
                Chunk::DataLf => match b {
                    b'\n' => Chunk::Size { size: 0, digits: 0 },
                    _ => return Err(HttpError::BadChunkFraming),
                },
                Chunk::TrailerStart => match b {
                    b'\r' => Chunk::TrailerEndLf,
                    b'\n' => Chunk::Done,
                    _ => {
                        self.count_overhead(1)?;
                        Chunk::TrailerLine
                    }
                },
                Chunk::TrailerLine => {
                    self.count_overhead(1)?;
                    match b {
                        b'\n' => Chunk::TrailerStart,
                        _ => Chunk::TrailerLine,
                    }
                }
                Chunk::TrailerEndLf => match b {
                    b'\n' => Chunk::Done,
                    _ => return Err(HttpError::BadChunkFraming),
                },
                Chunk::Done => return Err(HttpError::TrailingBytes),
            };
        }
        Ok(chunk)
    }

    /// The byte `b` after the hex digits of a chunk size.
    fn after_size(&mut self, size: u64, b: u8) -> Result<Chunk, HttpError> {
        Ok(match b {
            b' ' | b'\t' => Chunk::SizeWs { size },
            b';' => {
                self.count_overhead(1)?;
                Chunk::Ext { size }
            }
            b'\r' => Chunk::SizeLf { size },
            b'\n' => size_line_done(size),
            _ => return Err(HttpError::BadChunkSize),
        })
    }

    fn count_overhead(&mut self, n: usize) -> Result<(), HttpError> {
        self.overhead += n;
        if self.overhead > self.max_head {
            return Err(HttpError::TrailersTooLarge);
        }
        Ok(())
    }

    fn take_response(&mut self) -> Response {
        Response {
            status: self.status,
            headers: std::mem::take(&mut self.headers),
            body: std::mem::take(&mut self.body),
            keep_alive: self.keep_alive,
        }
    }
}

fn size_line_done(size: u64) -> Chunk {
    if size == 0 {
        Chunk::TrailerStart
    } else {
        Chunk::Data { remaining: size }
    }
}

/// The end of the head (just past its blank line) in `buf`, looking at line ends from `from` on: an LF
/// followed by LF or by CR LF.
fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(p) = buf[i..].iter().position(|&b| b == b'\n') {
        let lf = i + p;
        match buf.get(lf + 1) {
            Some(b'\n') => return Some(lf + 2),
            Some(b'\r') if buf.get(lf + 2) == Some(&b'\n') => return Some(lf + 3),
            _ => i = lf + 1,
        }
    }
    None
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn trim(s: &[u8]) -> &[u8] {
    let is_ws = |b: &u8| *b == b' ' || *b == b'\t';
    let start = s.iter().position(|b| !is_ws(b)).unwrap_or(s.len());
    let end = s.iter().rposition(|b| !is_ws(b)).map_or(start, |e| e + 1);
    &s[start..end]
}

fn parse_content_length(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FIXTURE: &[u8] = include_bytes!("../tests/fixtures/nearby-legacy-20.json");

    fn parser() -> ResponseParser {
        ResponseParser::new(8 * 1024, 1024 * 1024)
    }

    /// Feeds `input` in pieces cut at `cuts` (offsets, ascending); checks that only the last feed completes.
    fn feed_split(p: &mut ResponseParser, input: &[u8], cuts: &[usize]) -> Result<Parsed, HttpError> {
        let mut start = 0;
        for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
            let cut = cut.clamp(start, input.len());
            let parsed = p.feed(&input[start..cut])?;
            start = cut;
            if start == input.len() {
                return Ok(parsed);
            }
            assert_eq!(parsed, Parsed::Incomplete, "completed before byte {start} of {}", input.len());
        }
        unreachable!()
    }

    fn complete(input: &[u8]) -> Response {
        match parser().feed(input) {
            Ok(Parsed::Complete(r)) => r,
            other => panic!("{other:?} for {:?}", String::from_utf8_lossy(input)),
        }
    }

    fn error(input: &[u8]) -> HttpError {
        match parser().feed(input) {
            Err(e) => e,
            other => panic!("{other:?} for {:?}", String::from_utf8_lossy(input)),
        }
    }

    const SIMPLE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=UTF-8\r\n\
        Content-Length: 12\r\nServer: scaffolding on HTTPServer2\r\n\r\n{\"a\" : [1]}\n";

    const CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
        5;foo=bar\r\nhello\r\n1A\r\n abcdefghijklmnopqrstuvwxy\r\n\
        001a ;name=\"quoted;value\";x\r\nABCDEFGHIJKLMNOPQRSTUVWXYZ\r\n0\r\nX-Trailer: yes\r\nOther: 1\r\n\r\n";

    fn chunked_body() -> Vec<u8> {
        b"hello abcdefghijklmnopqrstuvwxyABCDEFGHIJKLMNOPQRSTUVWXYZ".to_vec()
    }

    #[test]
    fn content_length() {
        // Leading zeros are digits like any other (RFC 9112: 1*DIGIT): nineteen of them still say 2.
        assert_eq!(complete(b"HTTP/1.1 200 OK\r\nContent-Length: 0000000000000000002\r\n\r\nok").body, b"ok");
        let r = complete(SIMPLE);
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"{\"a\" : [1]}\n");
        assert!(r.keep_alive);
        assert_eq!(r.headers.len(), 3);
        assert_eq!(r.header("content-type"), Some("application/json; charset=UTF-8"));
        assert_eq!(r.header("SERVER"), Some("scaffolding on HTTPServer2"));
        assert_eq!(r.header("missing"), None);
    }

    #[test]
    fn every_single_split_and_one_byte_at_a_time() {
        for input in [SIMPLE, CHUNKED] {
            let whole = complete(input);
            for cut in 0..=input.len() {
                let mut p = parser();
                match feed_split(&mut p, input, &[cut]) {
                    Ok(Parsed::Complete(r)) => assert_eq!(r, whole, "cut at {cut}"),
                    other => panic!("cut at {cut}: {other:?}"),
                }
            }
            let cuts: Vec<usize> = (1..input.len()).collect();
            match feed_split(&mut parser(), input, &cuts) {
                Ok(Parsed::Complete(r)) => assert_eq!(r, whole),
                other => panic!("bytewise: {other:?}"),
            }
        }
    }

    #[test]
    fn chunked_with_extensions_trailers_and_both_hex_cases() {
        let r = complete(CHUNKED);
        assert_eq!(r.body, chunked_body());
        assert!(r.keep_alive);
        // Trailers are dropped, not merged into the header fields.
        assert_eq!(r.headers, vec![("Transfer-Encoding".to_owned(), "chunked".to_owned())]);
        let lower =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n";
        assert_eq!(complete(lower).body, b"abcdefghijklmnopqrstuvwxyz");
        let bare_lf = b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n3\nabc\n0\n\n";
        assert_eq!(complete(bare_lf).body, b"abc");
        let te_list = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: , chunked\r\n\r\n0\r\n\r\n";
        assert_eq!(complete(te_list).body, b"");
    }

    #[test]
    fn chunked_wins_over_content_length_and_closes() {
        let r = complete(
            b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        );
        assert_eq!(r.body, b"ok");
        assert!(!r.keep_alive);
    }

    #[test]
    fn close_delimited_bodies() {
        for head in [
            &b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n\r\n",
        ] {
            let mut p = parser();
            assert_eq!(p.feed(head), Ok(Parsed::Incomplete));
            assert_eq!(p.feed(b"{\"status\" : "), Ok(Parsed::Incomplete));
            assert_eq!(p.feed(b""), Ok(Parsed::Incomplete));
            assert_eq!(p.feed(b"\"OK\"}"), Ok(Parsed::Incomplete));
            let r = p.finish().unwrap();
            assert_eq!(r.body, b"{\"status\" : \"OK\"}");
            assert!(!r.keep_alive);
            assert_eq!(p.finish(), Err(HttpError::AlreadyComplete));
        }
        // An empty close-delimited body is a body.
        let mut p = parser();
        assert_eq!(p.feed(b"HTTP/1.0 200 OK\r\n\r\n"), Ok(Parsed::Incomplete));
        assert_eq!(p.finish().unwrap().body, b"");
    }

    #[test]
    fn keep_alive_rules() {
        let cases: &[(&[u8], bool)] = &[
            (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", true),
            (b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", true),
            (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", false),
            (b"HTTP/1.1 200 OK\r\nConnection: Upgrade, CLOSE\r\nContent-Length: 0\r\n\r\n", false),
            (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false),
            (b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n", true),
            (b"HTTP/1.1 204 No Content\r\n\r\n", true),
            (b"HTTP/1.0 204 No Content\r\n\r\n", false),
        ];
        for (input, keep_alive) in cases {
            assert_eq!(complete(input).keep_alive, *keep_alive, "{:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn interim_responses_are_skipped() {
        let input = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n\
            HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let r = complete(input);
        assert_eq!((r.status, &r.body[..]), (200, &b"ok"[..]));
        assert_eq!(r.headers, vec![("Content-Length".to_owned(), "2".to_owned())]);
        let cuts: Vec<usize> = (1..input.len()).collect();
        assert_eq!(feed_split(&mut parser(), input, &cuts), Ok(Parsed::Complete(r)));
        // Interim alone is not a response.
        let mut p = parser();
        assert_eq!(p.feed(b"HTTP/1.1 100 Continue\r\n\r\n"), Ok(Parsed::Incomplete));
        assert_eq!(p.finish(), Err(HttpError::ClosedInHead));
        // Eight interim responses are skipped (MAX_INTERIM); a ninth is one too many.
        let eight =
            [&b"HTTP/1.1 100 Continue\r\n\r\n".repeat(8)[..], b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"];
        assert_eq!(complete(&eight.concat()).body, b"ok");
        let many = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(9);
        assert_eq!(error(&many), HttpError::TooManyInterim);
        assert_eq!(error(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n"), HttpError::UnexpectedUpgrade);
    }

    #[test]
    fn no_body_for_204_and_304() {
        let r = complete(b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n");
        assert_eq!((r.status, r.body.len(), r.keep_alive), (204, 0, true));
        let r = complete(b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!((r.status, r.body.len()), (304, 0));
        assert_eq!(error(b"HTTP/1.1 204 No Content\r\n\r\nx"), HttpError::TrailingBytes);
    }

    #[test]
    fn bytes_after_the_response_are_an_error() {
        assert_eq!(error(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokX"), HttpError::TrailingBytes);
        assert_eq!(
            error(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nHTTP/1.1"),
            HttpError::TrailingBytes
        );
        let mut p = parser();
        assert!(matches!(p.feed(SIMPLE), Ok(Parsed::Complete(_))));
        assert_eq!(p.feed(b"H"), Err(HttpError::TrailingBytes));
        // Sticky: the parser keeps answering with its error.
        assert_eq!(p.feed(b""), Err(HttpError::TrailingBytes));
        assert_eq!(p.finish(), Err(HttpError::TrailingBytes));
        let mut p = parser();
        assert!(matches!(p.feed(SIMPLE), Ok(Parsed::Complete(_))));
        assert_eq!(p.feed(b""), Err(HttpError::AlreadyComplete));
    }

    #[test]
    fn size_limits() {
        let mut small = ResponseParser::new(64, 10);
        assert_eq!(small.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n"), Err(HttpError::BodyTooLarge));
        let mut small = ResponseParser::new(64, 10);
        assert!(matches!(
            small.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789"),
            Ok(Parsed::Complete(_))
        ));
        let mut small = ResponseParser::new(64, 10);
        assert_eq!(
            small.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n01234\r\n6\r\n"),
            Err(HttpError::BodyTooLarge)
        );
        let mut small = ResponseParser::new(64, 10);
        assert_eq!(
            small.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffffffffff\r\n"),
            Err(HttpError::BodyTooLarge)
        );
        let mut small = ResponseParser::new(64, 10);
        assert_eq!(small.feed(b"HTTP/1.0 200 OK\r\n\r\n0123456789"), Ok(Parsed::Incomplete));
        assert_eq!(small.feed(b"a"), Err(HttpError::BodyTooLarge));
        // The head cap holds whether or not its end has arrived...
        let mut small = ResponseParser::new(64, 10);
        let long_head = format!("HTTP/1.1 200 OK\r\nX-Long: {}\r\n", "x".repeat(60));
        assert_eq!(small.feed(long_head.as_bytes()), Err(HttpError::HeadTooLarge));
        let mut small = ResponseParser::new(64, 10);
        let long_head = format!("HTTP/1.1 200 OK\r\nX-Long: {}\r\n\r\n", "x".repeat(60));
        assert_eq!(small.feed(long_head.as_bytes()), Err(HttpError::HeadTooLarge));
        // ...but a body arriving in the same feed as a small head does not count against it.
        let mut small = ResponseParser::new(64, 1000);
        let input = format!("HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{}", "b".repeat(500));
        assert!(matches!(small.feed(input.as_bytes()), Ok(Parsed::Complete(r)) if r.body.len() == 500));
        // "At most `max_head` bytes": a head of exactly that many (its blank line included) is accepted,
        // whole or a byte at a time, and one byte more is refused.
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        assert!(matches!(ResponseParser::new(head.len(), 10).feed(head), Ok(Parsed::Complete(_))));
        let cuts: Vec<usize> = (1..head.len()).collect();
        assert!(matches!(feed_split(&mut ResponseParser::new(head.len(), 10), head, &cuts), Ok(Parsed::Complete(_))));
        assert_eq!(ResponseParser::new(head.len() - 1, 10).feed(head), Err(HttpError::HeadTooLarge));
        // A chunked body of exactly `max_body` bytes is accepted, in one chunk or several; one more is not.
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        let exact = [&chunked[..], b"a\r\n0123456789\r\n0\r\n\r\n"].concat();
        assert!(matches!(ResponseParser::new(64, 10).feed(&exact), Ok(Parsed::Complete(r)) if r.body == b"0123456789"));
        let split = [&chunked[..], b"4\r\n0123\r\n6\r\n456789\r\n0\r\n\r\n"].concat();
        assert!(matches!(ResponseParser::new(64, 10).feed(&split), Ok(Parsed::Complete(r)) if r.body == b"0123456789"));
        let over = [&chunked[..], b"4\r\n0123\r\n7\r\n"].concat();
        assert_eq!(ResponseParser::new(64, 10).feed(&over), Err(HttpError::BodyTooLarge));
        // Trailer fields (their lines, CRLFs included) of exactly `max_head` bytes are accepted; one more
        // byte is refused.
        let trailer = |len: usize| format!("T: {}\r\n", "t".repeat(len - 5));
        let exact = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n{}\r\n", trailer(64));
        assert!(matches!(ResponseParser::new(64, 10).feed(exact.as_bytes()), Ok(Parsed::Complete(_))));
        let over = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n{}\r\n", trailer(65));
        assert_eq!(ResponseParser::new(64, 10).feed(over.as_bytes()), Err(HttpError::TrailersTooLarge));
        // Extensions and trailers are capped too.
        let mut small = ResponseParser::new(64, 10);
        let ext = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;{}", "e".repeat(70));
        assert_eq!(small.feed(ext.as_bytes()), Err(HttpError::TrailersTooLarge));
        let mut small = ResponseParser::new(64, 10);
        let trailers = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nT: {}", "t".repeat(70));
        assert_eq!(small.feed(trailers.as_bytes()), Err(HttpError::TrailersTooLarge));
    }

    #[test]
    fn bad_framing() {
        let cases: &[(&[u8], HttpError)] = &[
            (b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n", HttpError::BadContentLength),
            (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", HttpError::BadContentLength),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\n", HttpError::BadContentLength),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n", HttpError::BadContentLength),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n", HttpError::BadContentLength),
            // Nineteen digits always fit in a u64: a valid length (RFC 9112: 1*DIGIT), just too large.
            (b"HTTP/1.1 200 OK\r\nContent-Length: 9999999999999999999\r\n\r\n", HttpError::BodyTooLarge),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", HttpError::UnsupportedTransferEncoding),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", HttpError::UnsupportedTransferEncoding),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\n", HttpError::UnsupportedTransferEncoding),
            (
                b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 1\r\n\r\n",
                HttpError::UnsupportedContentEncoding,
            ),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", HttpError::BadChunkSize),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n;ext\r\n", HttpError::BadChunkSize),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1 x\r\n", HttpError::BadChunkSize),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\rx", HttpError::BadChunkSize),
            // A CR ends the chunk-size line even inside an extension (RFC 9112 7.1.1: no CR in chunk-ext).
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;a\rb\r\nx\r\n0\r\n\r\n", HttpError::BadChunkSize),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n", HttpError::BadChunkFraming),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\rb", HttpError::BadChunkFraming),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\rx", HttpError::BadChunkFraming),
            (b"HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n", HttpError::BadHead(httparse::Error::HeaderName)),
            (b"HTTQ/1.1 200 OK\r\n\r\n", HttpError::BadHead(httparse::Error::Version)),
            (b"HTTP/1.1 2x0 OK\r\n\r\n", HttpError::BadHead(httparse::Error::Status)),
        ];
        for (input, expected) in cases {
            assert_eq!(&error(input), expected, "{:?}", String::from_utf8_lossy(input));
        }
        // Repeated identical lengths are one length.
        assert_eq!(complete(b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\nContent-Length: 2\r\n\r\nok").body, b"ok");
        assert_eq!(
            complete(b"HTTP/1.1 200 OK\r\nContent-Encoding: identity\r\nContent-Length: 2\r\n\r\nok").body,
            b"ok"
        );
        let too_many: String = (0..MAX_HEADERS + 1).map(|i| format!("X-{i}: v\r\n")).collect();
        let input = format!("HTTP/1.1 200 OK\r\n{too_many}\r\n");
        assert_eq!(
            ResponseParser::new(1 << 16, 10).feed(input.as_bytes()),
            Err(HttpError::BadHead(httparse::Error::TooManyHeaders))
        );
    }

    #[test]
    fn finish_before_the_end() {
        let mut p = parser();
        assert_eq!(p.finish(), Err(HttpError::ClosedBeforeResponse));
        let mut p = parser();
        assert_eq!(p.feed(b""), Ok(Parsed::Incomplete));
        assert_eq!(p.finish(), Err(HttpError::ClosedBeforeResponse));
        let mut p = parser();
        assert_eq!(p.feed(b"HTTP/1.1 200 OK\r\n"), Ok(Parsed::Incomplete));
        assert_eq!(p.finish(), Err(HttpError::ClosedInHead));
        let mut p = parser();
        assert_eq!(p.feed(&SIMPLE[..SIMPLE.len() - 1]), Ok(Parsed::Incomplete));
        assert_eq!(p.finish(), Err(HttpError::ClosedInBody));
        let mut p = parser();
        assert_eq!(p.feed(&CHUNKED[..CHUNKED.len() - 2]), Ok(Parsed::Incomplete));
        assert_eq!(p.finish(), Err(HttpError::ClosedInBody));
        assert_eq!(p.feed(b"\r\n"), Err(HttpError::ClosedInBody));
    }

    #[test]
    fn reset_reads_the_next_response() {
        let mut p = parser();
        assert!(matches!(p.feed(CHUNKED), Ok(Parsed::Complete(_))));
        p.reset();
        assert_eq!(p.finish(), Err(HttpError::ClosedBeforeResponse));
        p.reset();
        match p.feed(SIMPLE) {
            Ok(Parsed::Complete(r)) => assert_eq!(r, complete(SIMPLE)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn head_end_search() {
        assert_eq!(find_head_end(b"A\r\n\r\n", 0), Some(5));
        assert_eq!(find_head_end(b"A\n\n", 0), Some(3));
        assert_eq!(find_head_end(b"A\n\r\n", 0), Some(4));
        assert_eq!(find_head_end(b"A\r\nB\r\n\r", 0), None);
        assert_eq!(find_head_end(b"A\r\nB\r\n\rX\r\n\r\n", 0), Some(12));
        assert_eq!(find_head_end(b"A\r\nB\r\n\r\n", 5), Some(8));
    }

    #[test]
    fn error_messages_are_short() {
        assert_eq!(HttpError::BadChunkSize.to_string(), "bad chunk size");
        assert_eq!(
            HttpError::BadHead(httparse::Error::HeaderName).to_string(),
            "bad response head: invalid header name"
        );
        assert_eq!(HttpError::ClosedInBody.to_string(), "connection closed inside the response body");
    }

    // ---- property tests ----

    #[derive(Clone, Debug)]
    enum Framing {
        Length,
        Chunked {
            sizes: Vec<usize>,
            ext: Vec<Option<&'static str>>,
            upper: bool,
            zeros: usize,
            bare_lf: bool,
            trailers: bool,
        },
        Http10Close,
        ConnectionClose,
    }

    const EXTS: &[&str] = &[";foo=bar", ";a", " ;b=\"x;y\"", ";ieof", ";n=1;m=2"];

    fn framing() -> impl Strategy<Value = Framing> {
        prop_oneof![
            Just(Framing::Length),
            (
                prop::collection::vec(1usize..3000, 1..12),
                prop::collection::vec(prop::option::of(prop::sample::select(EXTS)), 1..5),
                any::<bool>(),
                0usize..3,
                any::<bool>(),
                any::<bool>(),
            )
                .prop_map(|(sizes, ext, upper, zeros, bare_lf, trailers)| {
                    Framing::Chunked { sizes, ext, upper, zeros, bare_lf, trailers }
                }),
            Just(Framing::Http10Close),
            Just(Framing::ConnectionClose),
        ]
    }

    /// The chunk-extension bytes `frame` writes for a body of `len` bytes.
    fn extension_bytes(len: usize, framing: &Framing) -> usize {
        let Framing::Chunked { sizes, ext, .. } = framing else { return 0 };
        let (mut rest, mut i, mut total) = (len, 0, 0);
        while rest > 0 {
            rest -= sizes[i % sizes.len()].min(rest);
            total += ext[i % ext.len()].map_or(0, str::len);
            i += 1;
        }
        total
    }

    /// Frames `body` as a response; returns the bytes and whether the connection stays alive.
    fn frame(body: &[u8], framing: &Framing, interim: bool) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        if interim {
            out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        let keep_alive = match framing {
            Framing::Length => {
                out.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=UTF-8\r\n");
                out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
                out.extend_from_slice(body);
                true
            }
            Framing::Chunked { sizes, ext, upper, zeros, bare_lf, trailers } => {
                let eol: &[u8] = if *bare_lf { b"\n" } else { b"\r\n" };
                out.extend_from_slice(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nVary: Accept-Language\r\n\r\n",
                );
                let mut rest = body;
                let mut i = 0;
                while !rest.is_empty() {
                    let n = sizes[i % sizes.len()].min(rest.len());
                    let size = if *upper { format!("{n:X}") } else { format!("{n:x}") };
                    out.extend_from_slice("0".repeat(*zeros).as_bytes());
                    out.extend_from_slice(size.as_bytes());
                    out.extend_from_slice(ext[i % ext.len()].unwrap_or("").as_bytes());
                    out.extend_from_slice(eol);
                    out.extend_from_slice(&rest[..n]);
                    out.extend_from_slice(eol);
                    rest = &rest[n..];
                    i += 1;
                }
                out.extend_from_slice(b"0");
                out.extend_from_slice(ext[0].unwrap_or("").as_bytes());
                out.extend_from_slice(eol);
                if *trailers {
                    out.extend_from_slice(b"Server-Timing: gfet4t7; dur=42\r\nX-Checksum: abc\n");
                }
                out.extend_from_slice(eol);
                true
            }
            Framing::Http10Close => {
                out.extend_from_slice(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n");
                out.extend_from_slice(body);
                false
            }
            Framing::ConnectionClose => {
                out.extend_from_slice(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
                out.extend_from_slice(body);
                false
            }
        };
        (out, keep_alive)
    }

    #[derive(Clone, Debug)]
    enum Split {
        Bytewise,
        Sizes(Vec<usize>),
    }

    fn split() -> impl Strategy<Value = Split> {
        prop_oneof![
            1 => Just(Split::Bytewise),
            4 => prop::collection::vec(1usize..5000, 1..30).prop_map(Split::Sizes),
        ]
    }

    fn cuts(len: usize, split: &Split) -> Vec<usize> {
        match split {
            Split::Bytewise => (1..len).collect(),
            Split::Sizes(sizes) => {
                let mut cuts = Vec::new();
                let mut at = 0;
                for size in sizes.iter().cycle() {
                    at += size;
                    if at >= len {
                        break;
                    }
                    cuts.push(at);
                }
                cuts
            }
        }
    }

    /// Real-looking bodies: the 20-result fixture, slices of it, or any bytes.
    fn body() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            2 => Just(FIXTURE.to_vec()),
            2 => (0..FIXTURE.len(), 0..FIXTURE.len()).prop_map(|(a, b)| FIXTURE[a.min(b)..a.max(b)].to_vec()),
            1 => prop::collection::vec(any::<u8>(), 0..600),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn framed_bodies_come_back_identical(
            body in body(),
            framing in framing(),
            interim in any::<bool>(),
            split in split(),
        ) {
            // The parser bounds a body's chunk extensions in all to `max_head` (a deliberate limit,
            // tested on its own above): a framing whose extensions pass it is not a case for this test
            // (one-byte chunks of a 35 KB body, each with `;foo=bar`, are 280 KB of extensions).
            prop_assume!(extension_bytes(body.len(), &framing) <= 4096 / 2);
            let (wire, keep_alive) = frame(&body, &framing, interim);
            let mut p = ResponseParser::new(4096, FIXTURE.len() + 1);
            let cuts = cuts(wire.len(), &split);
            let last = feed_split(&mut p, &wire, &cuts);
            let response = match framing {
                Framing::Http10Close | Framing::ConnectionClose => {
                    prop_assert_eq!(last, Ok(Parsed::Incomplete));
                    p.finish().unwrap()
                }
                _ => match last {
                    Ok(Parsed::Complete(r)) => r,
                    other => return Err(TestCaseError::fail(format!("{other:?}"))),
                },
            };
            prop_assert_eq!(response.status, 200);
            prop_assert_eq!(response.keep_alive, keep_alive);
            prop_assert!(response.body == body, "body differs");
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..1500), split in split()) {
            let mut p = ResponseParser::new(512, 1024);
            let cuts = cuts(data.len(), &split);
            let mut start = 0;
            for cut in cuts.into_iter().chain(std::iter::once(data.len())) {
                let _ = p.feed(&data[start..cut]);
                start = cut;
            }
            let _ = p.finish();
        }

        #[test]
        fn damaged_responses_never_panic(
            body in prop::collection::vec(any::<u8>(), 0..400),
            framing in framing(),
            damage in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6),
            split in split(),
        ) {
            let (mut wire, _) = frame(&body, &framing, false);
            for (at, byte, how) in damage {
                let i = at.index(wire.len() + 1);
                match how {
                    0 => wire.insert(i, byte),
                    1 if i < wire.len() => wire[i] = byte,
                    _ if i < wire.len() => { wire.remove(i); }
                    _ => {}
                }
            }
            let mut p = ResponseParser::new(256, 300);
            let cuts = cuts(wire.len(), &split);
            let mut start = 0;
            for cut in cuts.into_iter().chain(std::iter::once(wire.len())) {
                let _ = p.feed(&wire[start..cut]);
                start = cut;
            }
            let _ = p.finish();
        }
    }
}
