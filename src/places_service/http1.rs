//! Server-side HTTP/1.1 for the local Places service: request heads parsed with `httparse`, bodies by
//! `Content-Length`, responses framed with `Content-Length` or as several chunks. No I/O here.

/// Largest request head accepted.
pub const MAX_HEAD: usize = 16 * 1024;
/// Largest request body accepted.
pub const MAX_BODY: usize = 32 * 1024;
/// Most headers in a request.
const MAX_HEADERS: usize = 64;

/// A complete request, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// Header names in lower case, values as text (invalid UTF-8 replaced).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The first header called `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Whether the client wants the connection kept open after this request.
    pub fn keep_alive(&self) -> bool {
        let tokens = |v: &str, t: &str| v.split(',').any(|x| x.trim().eq_ignore_ascii_case(t));
        let connection = self.headers.iter().filter(|(n, _)| n == "connection");
        let mut close = false;
        let mut keep = false;
        for (_, v) in connection {
            close |= tokens(v, "close");
            keep |= tokens(v, "keep-alive");
        }
        if self.minor_version == 0 {
            keep && !close
        } else {
            !close
        }
    }
}

/// Why a request could not be read: answered with this status, then the connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadRequest {
    pub status: u16,
    pub message: &'static str,
}

/// Parses one request from the front of `buf`: `Ok(None)` when more bytes are needed, otherwise the
/// request and how many bytes of `buf` it used.
pub fn parse_request(buf: &[u8]) -> Result<Option<(Request, usize)>, BadRequest> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > MAX_HEAD {
                Err(BadRequest { status: 431, message: "Request header fields too large." })
            } else {
                Ok(None)
            };
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(BadRequest { status: 431, message: "Too many request header fields." })
        }
        Err(_) => return Err(BadRequest { status: 400, message: "Malformed HTTP request." }),
    };
    if head_len > MAX_HEAD {
        return Err(BadRequest { status: 431, message: "Request header fields too large." });
    }
    let mut content_length: Option<usize> = None;
    let mut owned = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let name = h.name.to_ascii_lowercase();
        let value = String::from_utf8_lossy(h.value).trim().to_string();
        if name == "transfer-encoding" {
            return Err(BadRequest { status: 501, message: "Request bodies must use Content-Length." });
        }
        if name == "content-length" {
            let bad = BadRequest { status: 400, message: "Invalid Content-Length." };
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad);
            }
            let n: usize = value.parse().map_err(|_| BadRequest { status: 413, message: "Request body too large." })?;
            if content_length.is_some_and(|m| m != n) {
                return Err(bad);
            }
            content_length = Some(n);
        }
        owned.push((name, value));
    }
    let body_len = content_length.unwrap_or(0);
    if body_len > MAX_BODY {
        return Err(BadRequest { status: 413, message: "Request body too large." });
    }
    if buf.len() < head_len + body_len {
        return Ok(None);
    }
    let request = Request {
        method: req.method.unwrap_or_default().to_string(),
        target: req.path.unwrap_or_default().to_string(),
        minor_version: req.version.unwrap_or(1),
        headers: owned,
        body: buf[head_len..head_len + body_len].to_vec(),
    };
    Ok(Some((request, head_len + body_len)))
}

/// A response as the pieces it is handed to TLS in: the head with the whole body for `Content-Length`
/// framing, or the head, each chunk and the last chunk for chunked framing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Framed {
    pub pieces: Vec<Vec<u8>>,
    pub head_len: usize,
    pub total: usize,
}

/// How many chunks a chunked body is cut into (fewer when it is shorter).
const CHUNKS: usize = 4;

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Frames a JSON response body.
pub fn frame(status: u16, body: &[u8], chunked: bool, close: bool) -> Framed {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json; charset=UTF-8\r\nServer: herd-places\r\n",
        reason(status)
    );
    if chunked {
        head.push_str("Transfer-Encoding: chunked\r\n");
    } else {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let head = head.into_bytes();
    let head_len = head.len();
    let mut pieces = Vec::with_capacity(CHUNKS + 2);
    if chunked {
        pieces.push(head);
        let size = body.len().div_ceil(CHUNKS).max(1);
        for part in body.chunks(size) {
            let mut chunk = format!("{:x}\r\n", part.len()).into_bytes();
            chunk.extend_from_slice(part);
            chunk.extend_from_slice(b"\r\n");
            pieces.push(chunk);
        }
        pieces.push(b"0\r\n\r\n".to_vec());
    } else {
        let mut all = head;
        all.extend_from_slice(body);
        pieces.push(all);
    }
    let total = pieces.iter().map(Vec::len).sum();
    Framed { pieces, head_len, total }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_get_and_post_with_bodies() {
        let raw = b"GET /a?b=c HTTP/1.1\r\nHost: x\r\n\r\nPOST /v1/places:searchNearby HTTP/1.1\r\nContent-Length: 2\r\nX-Goog-Api-Key: k\r\n\r\n{}";
        let (a, used) = parse_request(raw).unwrap().unwrap();
        assert_eq!((a.method.as_str(), a.target.as_str()), ("GET", "/a?b=c"));
        assert!(a.keep_alive());
        let (b, used2) = parse_request(&raw[used..]).unwrap().unwrap();
        assert_eq!(b.method, "POST");
        assert_eq!(b.header("x-goog-api-key"), Some("k"));
        assert_eq!(b.body, b"{}");
        assert_eq!(used + used2, raw.len());
    }

    #[test]
    fn waits_for_the_whole_head_and_body_at_any_split() {
        let raw = b"POST /p HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
        for cut in 0..raw.len() {
            assert_eq!(parse_request(&raw[..cut]), Ok(None), "cut at {cut}");
        }
        assert!(parse_request(raw).unwrap().is_some());
    }

    #[test]
    fn rejects_what_it_does_not_serve() {
        let status = |raw: &[u8]| parse_request(raw).unwrap_err().status;
        assert_eq!(status(b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"), 501);
        assert_eq!(status(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"), 400);
        assert_eq!(status(b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"), 400);
        assert_eq!(status(b"POST / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n"), 413);
        assert_eq!(status(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"), 400);
        let mut long = b"GET / HTTP/1.1\r\nX: ".to_vec();
        long.resize(MAX_HEAD + 10, b'a');
        assert_eq!(status(&long), 431);
    }

    #[test]
    fn keep_alive_follows_version_and_connection() {
        let req = |raw: &[u8]| parse_request(raw).unwrap().unwrap().0;
        assert!(!req(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive());
        assert!(!req(b"GET / HTTP/1.0\r\n\r\n").keep_alive());
        assert!(req(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive());
    }

    #[test]
    fn frames_content_length_and_chunks() {
        let f = frame(200, b"{\"a\" : 1}", false, false);
        assert_eq!(f.pieces.len(), 1);
        let text = String::from_utf8(f.pieces[0].clone()).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("Content-Length: 9\r\n"));
        assert!(text.ends_with("\r\n\r\n{\"a\" : 1}"));
        assert_eq!(f.total, text.len());

        let body = b"0123456789abcdef-";
        let f = frame(500, body, true, true);
        let text = String::from_utf8(f.pieces.concat()).unwrap();
        assert!(text.contains("Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"));
        assert_eq!(f.pieces.len(), 2 + 4);
        // Decode the chunks back.
        let mut rest = &text.as_bytes()[f.head_len..];
        let mut decoded = Vec::new();
        loop {
            let line_end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let size = usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).unwrap(), 16).unwrap();
            rest = &rest[line_end + 2..];
            if size == 0 {
                assert_eq!(rest, b"\r\n");
                break;
            }
            decoded.extend_from_slice(&rest[..size]);
            assert_eq!(&rest[size..size + 2], b"\r\n");
            rest = &rest[size + 2..];
        }
        assert_eq!(decoded, body);
    }
}
