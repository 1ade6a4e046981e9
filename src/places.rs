//! Building Places requests and shaping Places replies (PROTOCOL section 3). Pure: no I/O, no clock.
//!
//! [`build_request`] writes the whole HTTP/1.1 request for either backend. [`PlacesAnswer`] turns whatever
//! came back (or a failure to get anything) into the legacy Nearby Search shape, once, and then hands out
//! the body for any bound 0..=20 cheaply: Google's own bytes when nothing is cut, a `gjson` re-serialization
//! (memoized per bound) when results are cut.
//!
//! The API key is written into the request bytes and nowhere else: no type here holds it, and no error or
//! `Debug` output can show it.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use serde_json::{Map, Value};

use crate::gjson;

/// The most results Nearby Search returns, and the largest bound a client may ask for.
pub const MAX_RESULTS: usize = 20;

/// The fields asked of Places (New): what maps onto the legacy result objects. `rating` and
/// `userRatingCount` are billed at a higher SKU than the rest; drop them here to save money.
pub const NEW_FIELD_MASK: &str = "places.id,places.displayName,places.location,places.viewport,places.types,\
places.shortFormattedAddress,places.formattedAddress,places.businessStatus,places.plusCode,\
places.iconBackgroundColor,places.iconMaskBaseUri,places.rating,places.userRatingCount";

const USER_AGENT: &str = "herd/0.1";

/// Which Places backend an endpoint speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// Nearby Search (legacy): `GET …/nearbysearch/json?location=…&radius=…&key=…`.
    Legacy,
    /// Places (New): `POST …/v1/places:searchNearby` with a JSON body.
    New,
}

/// Where Places requests go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub api: Api,
    /// A DNS name (lowercased) or an IP address; an IPv6 address is stored without its brackets, so
    /// `host.parse::<IpAddr>()` tells an address from a name.
    pub host: String,
    pub port: u16,
    /// The request target: starts with `/`, may carry a query (legacy parameters are then appended with `&`).
    pub path: String,
}

/// Why a Places URL was refused. The messages never echo the URL, which may carry a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlError {
    NotHttps,
    UserInfo,
    UnclosedBracket,
    BadIpv6,
    JunkAfterIpv6,
    NoHost,
    BadHostName,
    BadIpv4,
    BadPort,
    BadPath,
}

impl std::fmt::Display for UrlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            UrlError::NotHttps => "places url must start with https://",
            UrlError::UserInfo => "places url must not carry user information",
            UrlError::UnclosedBracket => "places url has an unclosed [ in its host",
            UrlError::BadIpv6 => "places url has a bad IPv6 address",
            UrlError::JunkAfterIpv6 => "places url has junk after its IPv6 address",
            UrlError::NoHost => "places url has no host",
            UrlError::BadHostName => "places url has a bad host name",
            UrlError::BadIpv4 => "places url has a bad IPv4 address",
            UrlError::BadPort => "places url has a bad port",
            UrlError::BadPath => "places url path must be ASCII without spaces or control characters",
        })
    }
}

impl std::error::Error for UrlError {}

impl Endpoint {
    /// Parses an `https://` URL: host a name, an IPv4 address or a bracketed IPv6 address; port 443 unless
    /// given. Errors name the problem without echoing the URL.
    pub fn parse(api: Api, url: &str) -> Result<Endpoint, UrlError> {
        let rest = match url.get(..8) {
            Some(scheme) if scheme.eq_ignore_ascii_case("https://") => &url[8..],
            _ => return Err(UrlError::NotHttps),
        };
        let rest = rest.split('#').next().unwrap_or("");
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        if authority.contains('@') {
            return Err(UrlError::UserInfo);
        }

        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let Some((addr, after)) = bracketed.split_once(']') else {
                return Err(UrlError::UnclosedBracket);
            };
            if addr.parse::<Ipv6Addr>().is_err() {
                return Err(UrlError::BadIpv6);
            }
            let port = match after {
                "" => None,
                _ => Some(after.strip_prefix(':').ok_or(UrlError::JunkAfterIpv6)?),
            };
            (addr.to_ascii_lowercase(), port)
        } else {
            let (host, port) = match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            };
            check_host_name(host)?;
            (host.to_ascii_lowercase(), port)
        };
        let port = match port {
            None => 443,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(UrlError::BadPort),
            },
        };

        if path.bytes().any(|b| b <= b' ' || b >= 0x7f) {
            return Err(UrlError::BadPath);
        }
        let path = if path.starts_with('/') { path.to_owned() } else { format!("/{path}") };
        Ok(Endpoint { api, host, port, path })
    }

    /// `host[:port]` as the `Host` header wants it: the port only when it is not 443, an IPv6 address in
    /// brackets.
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        if self.port == 443 {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// A DNS name of letters, digits, `-` and `_` labels, or a dotted-quad IPv4 address.
fn check_host_name(host: &str) -> Result<(), UrlError> {
    if host.is_empty() {
        return Err(UrlError::NoHost);
    }
    let labels_ok = host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !labels_ok {
        return Err(UrlError::BadHostName);
    }
    let numeric = host.split('.').all(|label| label.bytes().all(|b| b.is_ascii_digit()));
    if numeric && host.parse::<Ipv4Addr>().is_err() {
        return Err(UrlError::BadIpv4);
    }
    Ok(())
}

/// `radius_km` × 1000 as decimal text, computed by moving the point three places (never through a float):
/// `"2.5"` → `"2500"`, `"0.0001"` → `"0.1"`, `"50"` → `"50000"`, `"007.50"` → `"7500"`. `None` unless the
/// text is DIGITS or DIGITS `.` DIGITS.
pub fn radius_metres(radius_km: &str) -> Option<String> {
    let (int, frac) = match radius_km.split_once('.') {
        Some((int, frac)) => (int, frac),
        None => (radius_km, ""),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || (radius_km.contains('.') && !digits(frac)) {
        return None;
    }
    let shifted = frac.len().min(3);
    let mut whole = String::with_capacity(int.len() + 3);
    whole.push_str(int);
    whole.push_str(&frac[..shifted]);
    whole.extend(std::iter::repeat_n('0', 3 - shifted));
    let whole = whole.trim_start_matches('0');
    let rest = frac[shifted..].trim_end_matches('0');
    let mut out = String::from(if whole.is_empty() { "0" } else { whole });
    if !rest.is_empty() {
        out.push('.');
        out.push_str(rest);
    }
    Some(out)
}

/// The canonical decimal of a signed coordinate, for the Places cache key: an explicit sign, the integer
/// part without leading zeros (`0` when nothing is left), the fraction without trailing zeros (and no `.`
/// when nothing is left), and `+` for zero whatever sign was written. `"+034.50"`, `"+34.5"` and
/// `"+34.500"` all give `"+34.5"`; `"-0.000"` gives `"+0"`. Nothing is rounded: two texts give one key
/// exactly when they are the same number. `None` unless the text is a sign, DIGITS, and optionally `.`
/// DIGITS (what PROTOCOL section 2 lets through).
pub fn canonical_coordinate(text: &[u8]) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    push_canonical_coordinate(text, &mut out).then_some(out)
}

/// [`canonical_coordinate`] appended to `out`; false (and nothing appended) when the text is not a
/// signed decimal.
pub fn push_canonical_coordinate(text: &[u8], out: &mut String) -> bool {
    let Some((&sign, unsigned)) = text.split_first() else { return false };
    if sign != b'+' && sign != b'-' {
        return false;
    }
    let (int, frac) = match unsigned.iter().position(|&b| b == b'.') {
        Some(dot) => (&unsigned[..dot], Some(&unsigned[dot + 1..])),
        None => (unsigned, None),
    };
    let digits = |s: &[u8]| !s.is_empty() && s.iter().all(u8::is_ascii_digit);
    if !digits(int) || frac.is_some_and(|f| !digits(f)) {
        return false;
    }
    let int = &int[int.iter().position(|&b| b != b'0').unwrap_or(int.len())..];
    let frac = frac.unwrap_or_default();
    let frac = &frac[..frac.iter().rposition(|&b| b != b'0').map_or(0, |i| i + 1)];
    let zero = int.is_empty() && frac.is_empty();
    out.push(if sign == b'-' && !zero { '-' } else { '+' });
    // Only ASCII digits are left (checked above), so each byte is a char.
    if int.is_empty() {
        out.push('0');
    }
    out.extend(int.iter().map(|&b| char::from(b)));
    if !frac.is_empty() {
        out.push('.');
        out.extend(frac.iter().map(|&b| char::from(b)));
    }
    true
}

/// An ISO 6709 coordinate as a JSON number: `"+040.50"` → `"40.50"`, `"-118.445127"` unchanged. `None`
/// unless the text is an optional sign, DIGITS, and optionally `.` DIGITS.
fn json_decimal(text: &str) -> Option<String> {
    let (negative, unsigned) = match text.as_bytes().first() {
        Some(b'+') => (false, &text[1..]),
        Some(b'-') => (true, &text[1..]),
        _ => (false, text),
    };
    let (int, frac) = match unsigned.split_once('.') {
        Some((int, frac)) => (int, Some(frac)),
        None => (unsigned, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || frac.is_some_and(|f| !digits(f)) {
        return None;
    }
    let int = int.trim_start_matches('0');
    let mut out = String::with_capacity(text.len());
    if negative {
        out.push('-');
    }
    out.push_str(if int.is_empty() { "0" } else { int });
    if let Some(frac) = frac {
        out.push('.');
        out.push_str(frac);
    }
    Some(out)
}

/// Appends the complete HTTP/1.1 request bytes for a Nearby Search around (`lat`, `lng`) within
/// `radius_km`.
///
/// `lat`/`lng` are the ISO 6709 decimal texts as the client sent them, sign included (`"+34.068930"`,
/// `"-118.445127"`); `radius_km` is the client's decimal text (`"10"`, `"2.5"`). They are expected to be
/// valid (the protocol parser checks them); text that is not still cannot break the request: it is
/// percent-encoded in a query, or sent as a JSON string (which Places then refuses as INVALID_REQUEST).
/// `key` is omitted when `None`; in the `X-Goog-Api-Key` header only its visible ASCII bytes are sent.
pub fn build_request(ep: &Endpoint, lat: &str, lng: &str, radius_km: &str, key: Option<&str>, out: &mut Vec<u8>) {
    let lat_n = json_decimal(lat);
    let lng_n = json_decimal(lng);
    let metres = radius_metres(radius_km);
    match ep.api {
        Api::Legacy => {
            out.extend_from_slice(b"GET ");
            out.extend_from_slice(ep.path.as_bytes());
            out.push(if ep.path.contains('?') { b'&' } else { b'?' });
            out.extend_from_slice(b"location=");
            percent_encode(lat_n.as_deref().unwrap_or(lat), out);
            out.push(b',');
            percent_encode(lng_n.as_deref().unwrap_or(lng), out);
            out.extend_from_slice(b"&radius=");
            percent_encode(metres.as_deref().unwrap_or(radius_km), out);
            if let Some(key) = key {
                out.extend_from_slice(b"&key=");
                percent_encode(key, out);
            }
            out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
            out.extend_from_slice(ep.authority().as_bytes());
            out.extend_from_slice(b"\r\nUser-Agent: ");
            out.extend_from_slice(USER_AGENT.as_bytes());
            out.extend_from_slice(b"\r\nAccept: application/json\r\nConnection: keep-alive\r\n\r\n");
        }
        Api::New => {
            let number = |n: Option<String>, text: &str| n.unwrap_or_else(|| Value::from(text).to_string());
            let body = format!(
                "{{\"maxResultCount\":{MAX_RESULTS},\"locationRestriction\":{{\"circle\":{{\"center\":\
                 {{\"latitude\":{},\"longitude\":{}}},\"radius\":{}}}}}}}",
                number(lat_n, lat),
                number(lng_n, lng),
                number(metres, radius_km),
            );
            out.extend_from_slice(b"POST ");
            out.extend_from_slice(ep.path.as_bytes());
            out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
            out.extend_from_slice(ep.authority().as_bytes());
            out.extend_from_slice(b"\r\nUser-Agent: ");
            out.extend_from_slice(USER_AGENT.as_bytes());
            out.extend_from_slice(b"\r\nAccept: application/json\r\nContent-Type: application/json\r\n");
            if let Some(key) = key {
                out.extend_from_slice(b"X-Goog-Api-Key: ");
                out.extend(key.bytes().filter(|b| b.is_ascii_graphic()));
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"X-Goog-FieldMask: ");
            out.extend_from_slice(NEW_FIELD_MASK.as_bytes());
            out.extend_from_slice(b"\r\nContent-Length: ");
            out.extend_from_slice(body.len().to_string().as_bytes());
            out.extend_from_slice(b"\r\nConnection: keep-alive\r\n\r\n");
            out.extend_from_slice(body.as_bytes());
        }
    }
}

/// RFC 3986 query-value encoding: unreserved bytes as they are, everything else `%XX`.
fn percent_encode(s: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
}

/// A Places answer in the legacy shape, ready to be cut to any bound 0..=20. Built once per upstream
/// response (and kept in the response cache); cutting is memoized per bound.
pub struct PlacesAnswer {
    status: String,
    error_message: Option<String>,
    /// Entries in `results`.
    results: usize,
    /// The body when nothing is cut (bound >= `results`), newline rules applied.
    full: Vec<u8>,
    /// The whole answer as parsed, kept only when there is something to cut (`results` > 0).
    doc: Option<Value>,
    /// Memoized bodies for bounds below `results` (and at most [`MAX_RESULTS`]).
    cuts: Vec<Option<Box<[u8]>>>,
}

impl fmt::Debug for PlacesAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlacesAnswer")
            .field("status", &self.status)
            .field("error_message", &self.error_message)
            .field("results", &self.results)
            .field("bytes", &self.full.len())
            .finish()
    }
}

const NOT_JSON: &str = "Places answered with a body that is not JSON";
const NOT_PLACES: &str = "Places answered with JSON that is not a Places answer";

/// Why a WHATSAT got the failure object rather than an answer from Places: the whole set of
/// `error_message`s the server writes itself. Google's own messages (an error body's `error_message` or
/// `error.message`) pass through as Google wrote them; nothing else reaches a client. In particular no
/// variant carries an OS error, a TLS library's text, a host name or an address: a client learns what
/// kind of thing failed, and the operator reads the details in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The request's deadline (`places.timeout_ms`, given here) passed.
    Timeout(u64),
    /// No connection: refused, unreachable, or the host name did not resolve.
    Refused,
    /// The TLS handshake or a TLS record failed (a certificate not trusted, a bad name, a bad record).
    Tls,
    /// A non-2xx status without an error body in either of Google's shapes.
    Http(u16),
    /// The connection closed or broke before a whole response arrived.
    Closed,
    /// The response was not HTTP/1.1 as the parser accepts it (or larger than its bounds).
    BadHttp,
    /// A 2xx body that is not JSON.
    NotJson,
    /// A 2xx JSON body that is neither a legacy nor a New answer.
    NotPlaces,
    /// The client connection already has `limits.max_pending_places_per_client` WHATSATs waiting on
    /// Places: answered at once, no request made.
    ClientPending,
    /// The server's pending Places work is at its byte bound: answered at once, no request made.
    ServerPending,
    /// The config has no `places` section.
    NotConfigured,
}

impl Failure {
    /// The `error_message` a client reads.
    pub fn message(self) -> String {
        match self {
            Failure::Timeout(ms) => format!("Places did not answer within {ms} ms"),
            Failure::Refused => "Places request failed: connection refused or unreachable".into(),
            Failure::Tls => "Places request failed: TLS error".into(),
            Failure::Http(status) => format!("Places answered HTTP {status}"),
            Failure::Closed => "Places request failed: connection closed before the answer was complete".into(),
            Failure::BadHttp => "Places request failed: malformed HTTP response".into(),
            Failure::NotJson => NOT_JSON.into(),
            Failure::NotPlaces => NOT_PLACES.into(),
            Failure::ClientPending => "too many WHATSATs of this connection are waiting on Places".into(),
            Failure::ServerPending => "too many Places requests are pending on this server".into(),
            Failure::NotConfigured => "Places is not configured for this server".into(),
        }
    }

    /// The failure object for it: `"results" : []`, status `UNKNOWN_ERROR`, and [`message`](Self::message).
    pub fn answer(self) -> PlacesAnswer {
        PlacesAnswer::failure("UNKNOWN_ERROR", &self.message())
    }
}

impl PlacesAnswer {
    /// Never fails: a non-2xx status, a body that is not JSON, or a JSON that is not a Places answer gives
    /// the failure object. `api` says how to read a 2xx body (New bodies are translated to the legacy
    /// shape); an error body is recognized in either shape whatever `api` says.
    pub fn from_response(api: Api, http_status: u16, body: &[u8]) -> PlacesAnswer {
        let parsed = serde_json::from_slice::<Value>(body).ok();
        if !(200..300).contains(&http_status) {
            return parsed
                .as_ref()
                .and_then(|v| Self::from_error_body(http_status, v))
                .unwrap_or_else(|| Failure::Http(http_status).answer());
        }
        let Some(value) = parsed else {
            return Failure::NotJson.answer();
        };
        if value.get("error").is_some_and(Value::is_object) {
            // A New-style error object, whatever the status line said.
            let answer = Self::from_error_body(http_status, &value);
            return answer.unwrap_or_else(|| Failure::NotPlaces.answer());
        }
        let answer = match api {
            Api::Legacy => Self::from_legacy(body, value),
            Api::New => Self::from_new(value),
        };
        answer.unwrap_or_else(|| Failure::NotPlaces.answer())
    }

    /// The legacy failure object:
    /// `{"html_attributions" : [], "results" : [], "status" : STATUS, "error_message" : MSG}`.
    pub fn failure(status: &str, message: &str) -> PlacesAnswer {
        // Google's own key order for its failures (alphabetical, as in a REQUEST_DENIED answer).
        let mut doc = Map::new();
        doc.insert("error_message".into(), Value::from(message));
        doc.insert("html_attributions".into(), Value::Array(Vec::new()));
        doc.insert("results".into(), Value::Array(Vec::new()));
        doc.insert("status".into(), Value::from(status));
        let mut full = Vec::with_capacity(128 + message.len());
        gjson::write(&mut full, &Value::Object(doc));
        PlacesAnswer {
            status: status.to_owned(),
            error_message: Some(message.to_owned()),
            results: 0,
            full,
            doc: None,
            cuts: Vec::new(),
        }
    }

    /// `"OK"`, `"ZERO_RESULTS"`, `"UNKNOWN_ERROR"`, `"REQUEST_DENIED"`, ...
    pub fn status(&self) -> &str {
        &self.status
    }

    /// The `error_message` of the answer, when it has one (for logs).
    pub fn error_message(&self) -> Option<&str> {
        self.error_message.as_deref()
    }

    /// Entries in the uncut `results` array.
    pub fn result_count(&self) -> usize {
        self.results
    }

    /// Only real answers are worth caching: `OK` and `ZERO_RESULTS`.
    pub fn is_cacheable(&self) -> bool {
        self.status == "OK" || self.status == "ZERO_RESULTS"
    }

    /// The JSON bytes for `bound` (clamped to 20), per PROTOCOL section 3: the first `bound` results, no
    /// trailing LF, runs of LFs collapsed. Google's own bytes when nothing is cut.
    pub fn body(&mut self, bound: usize) -> &[u8] {
        let bound = bound.min(MAX_RESULTS);
        if bound >= self.results {
            return &self.full;
        }
        let doc = self.doc.as_mut().expect("a document is kept whenever there are results to cut");
        self.cuts[bound].get_or_insert_with(|| cut(doc, bound, self.full.len()))
    }

    /// A legacy body: an object with a string `status` and an array `results` is an answer, passed through
    /// whatever its status. One without `results` but with a failure status becomes a failure object.
    fn from_legacy(raw: &[u8], value: Value) -> Option<PlacesAnswer> {
        let obj = value.as_object()?;
        let status = obj.get("status")?.as_str()?.to_owned();
        let error_message = obj.get("error_message").and_then(Value::as_str).map(str::to_owned);
        let results = match obj.get("results") {
            Some(Value::Array(items)) => items.len(),
            None if !matches!(status.as_str(), "OK" | "ZERO_RESULTS") => {
                let message = error_message.unwrap_or_else(|| format!("Places answered {status}"));
                return Some(Self::failure(&status, &message));
            }
            _ => return None,
        };
        let mut full = Vec::with_capacity(raw.len());
        collapse_newlines(raw, &mut full);
        Some(Self::with_doc(status, error_message, results, full, value))
    }

    /// A Places (New) body: `{"places": [...]}`, or `{}` when nothing is near, translated to the legacy
    /// shape and always serialized with `gjson`.
    fn from_new(value: Value) -> Option<PlacesAnswer> {
        let obj = value.as_object()?;
        let results = match obj.get("places") {
            None => Vec::new(),
            Some(Value::Array(places)) => {
                places.iter().map(|p| p.as_object().map(translate_place)).collect::<Option<Vec<_>>>()?
            }
            Some(_) => return None,
        };
        let status = if results.is_empty() { "ZERO_RESULTS" } else { "OK" };
        let count = results.len();
        let mut doc = Map::new();
        doc.insert("html_attributions".into(), Value::Array(Vec::new()));
        doc.insert("results".into(), Value::Array(results));
        doc.insert("status".into(), Value::from(status));
        let doc = Value::Object(doc);
        let mut full = Vec::with_capacity(1024 * (count + 1));
        gjson::write(&mut full, &doc);
        Some(Self::with_doc(status.to_owned(), None, count, full, doc))
    }

    /// A failure described by an error body in either shape: legacy `{"status": ..., "error_message": ...}`
    /// or New `{"error": {"code": ..., "message": ..., "status": ...}}`.
    fn from_error_body(http_status: u16, value: &Value) -> Option<PlacesAnswer> {
        let obj = value.as_object()?;
        let fallback = || Failure::Http(http_status).message();
        if let Some(status) = obj.get("status").and_then(Value::as_str) {
            if status.is_empty() || matches!(status, "OK" | "ZERO_RESULTS") {
                return None;
            }
            let message = obj.get("error_message").and_then(Value::as_str).map_or_else(fallback, str::to_owned);
            return Some(Self::failure(status, &message));
        }
        let error = obj.get("error")?.as_object()?;
        let code = error.get("code").and_then(Value::as_u64);
        let legacy_status = match error.get("status").and_then(Value::as_str) {
            Some("PERMISSION_DENIED" | "UNAUTHENTICATED") => "REQUEST_DENIED",
            Some("INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE") => "INVALID_REQUEST",
            Some("RESOURCE_EXHAUSTED") => "OVER_QUERY_LIMIT",
            Some(_) => "UNKNOWN_ERROR",
            None => match code {
                Some(401 | 403) => "REQUEST_DENIED",
                Some(400) => "INVALID_REQUEST",
                Some(429) => "OVER_QUERY_LIMIT",
                _ => "UNKNOWN_ERROR",
            },
        };
        let message = match error.get("message").and_then(Value::as_str) {
            Some(m) if !m.is_empty() => m.to_owned(),
            _ => fallback(),
        };
        Some(Self::failure(legacy_status, &message))
    }

    fn with_doc(status: String, error_message: Option<String>, results: usize, full: Vec<u8>, doc: Value) -> Self {
        let cuts = results.min(MAX_RESULTS + 1);
        PlacesAnswer { status, error_message, results, full, doc: (results > 0).then_some(doc), cuts: vec![None; cuts] }
    }
}

/// The answer with `results` cut to its first `bound` entries, in Google's style, newline rules applied.
fn cut(doc: &mut Value, bound: usize, size_hint: usize) -> Box<[u8]> {
    let tail = match doc.get_mut("results") {
        Some(Value::Array(items)) => items.split_off(bound),
        _ => Vec::new(),
    };
    let mut text = Vec::with_capacity(size_hint);
    gjson::write(&mut text, doc);
    if let Some(Value::Array(items)) = doc.get_mut("results") {
        items.extend(tail);
    }
    let mut out = Vec::with_capacity(text.len());
    collapse_newlines(&text, &mut out);
    out.into_boxed_slice()
}

/// Appends `src` with every run of two or more LF bytes replaced by one LF and trailing LFs removed.
fn collapse_newlines(src: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    let mut rest = src;
    while let Some(lf) = rest.iter().position(|&b| b == b'\n') {
        out.extend_from_slice(&rest[..=lf]);
        let run = rest[lf..].iter().take_while(|&&b| b == b'\n').count();
        rest = &rest[lf + run..];
    }
    out.extend_from_slice(rest);
    while out.len() > start && out.last() == Some(&b'\n') {
        out.pop();
    }
}

/// One Places (New) place as a legacy result object, keys in Google's legacy (alphabetical) order.
fn translate_place(place: &Map<String, Value>) -> Value {
    let get = |key: &str| place.get(key);
    let text = |key: &str| get(key).and_then(Value::as_str);
    let lat_lng = |v: &Value| -> Option<Value> {
        let mut m = Map::new();
        m.insert("lat".into(), v.get("latitude")?.clone());
        m.insert("lng".into(), v.get("longitude")?.clone());
        Some(Value::Object(m))
    };
    let mut r = Map::new();
    if let Some(s) = text("businessStatus") {
        r.insert("business_status".into(), s.into());
    }
    if let Some(location) = get("location").and_then(lat_lng) {
        let mut geometry = Map::new();
        geometry.insert("location".into(), location);
        if let Some(vp) = get("viewport") {
            if let (Some(ne), Some(sw)) = (vp.get("high").and_then(lat_lng), vp.get("low").and_then(lat_lng)) {
                let mut viewport = Map::new();
                viewport.insert("northeast".into(), ne);
                viewport.insert("southwest".into(), sw);
                geometry.insert("viewport".into(), Value::Object(viewport));
            }
        }
        r.insert("geometry".into(), Value::Object(geometry));
    }
    if let Some(s) = text("iconBackgroundColor") {
        r.insert("icon_background_color".into(), s.into());
    }
    if let Some(s) = text("iconMaskBaseUri") {
        r.insert("icon_mask_base_uri".into(), s.into());
    }
    if let Some(name) = get("displayName").and_then(|d| d.get("text")).and_then(Value::as_str) {
        r.insert("name".into(), name.into());
    }
    if let Some(id) = text("id") {
        r.insert("place_id".into(), id.into());
    }
    if let Some(plus) = get("plusCode").and_then(Value::as_object) {
        let mut code = Map::new();
        if let Some(c) = plus.get("compoundCode").and_then(Value::as_str) {
            code.insert("compound_code".into(), c.into());
        }
        if let Some(g) = plus.get("globalCode").and_then(Value::as_str) {
            code.insert("global_code".into(), g.into());
        }
        if !code.is_empty() {
            r.insert("plus_code".into(), Value::Object(code));
        }
    }
    if let Some(level) = text("priceLevel").and_then(price_level) {
        r.insert("price_level".into(), level.into());
    }
    if let Some(rating) = get("rating").filter(|v| v.is_number()) {
        r.insert("rating".into(), rating.clone());
    }
    if let Some(types) = get("types").filter(|v| v.is_array()) {
        r.insert("types".into(), types.clone());
    }
    if let Some(count) = get("userRatingCount").filter(|v| v.is_number()) {
        r.insert("user_ratings_total".into(), count.clone());
    }
    if let Some(vicinity) = text("shortFormattedAddress").or_else(|| text("formattedAddress")) {
        r.insert("vicinity".into(), vicinity.into());
    }
    Value::Object(r)
}

/// Places (New) `priceLevel` as the legacy 0..=4 `price_level`.
fn price_level(level: &str) -> Option<u8> {
    Some(match level {
        "PRICE_LEVEL_FREE" => 0,
        "PRICE_LEVEL_INEXPENSIVE" => 1,
        "PRICE_LEVEL_MODERATE" => 2,
        "PRICE_LEVEL_EXPENSIVE" => 3,
        "PRICE_LEVEL_VERY_EXPENSIVE" => 4,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = include_str!("../tests/fixtures/nearby-legacy-20.json");

    const PROTOCOL_EXAMPLE: &str = r#"{
   "html_attributions" : [],
   "results" : [
      {
         "geometry" : {
            "location" : {
               "lat" : 34.068921,
               "lng" : -118.445181
            }
         },
         "name" : "University of California, Los Angeles",
         "types" : [ "university", "establishment" ],
         "vicinity" : "Los Angeles"
      }
   ],
   "status" : "OK"
}"#;

    fn text(answer: &mut PlacesAnswer, bound: usize) -> String {
        String::from_utf8(answer.body(bound).to_vec()).unwrap()
    }

    fn legacy(body: &str) -> PlacesAnswer {
        PlacesAnswer::from_response(Api::Legacy, 200, body.as_bytes())
    }

    /// The fixture cut to `k` results by editing its text line by line (not through gjson): keeps the lines
    /// of the first `k` result objects, which start at a line `      {` and end at `      }` or `      },`.
    fn textual_cut(fixture: &str, k: usize) -> String {
        let lines: Vec<&str> = fixture.trim_end_matches('\n').split('\n').collect();
        let open = lines.iter().position(|l| *l == "   \"results\" : [").unwrap();
        let close = lines.iter().position(|l| *l == "   ],").unwrap();
        let mut out: Vec<String> = lines[..open].iter().map(|l| l.to_string()).collect();
        if k == 0 {
            out.push("   \"results\" : [],".into());
        } else {
            out.push(lines[open].into());
            let mut seen = 0;
            for line in &lines[open + 1..close] {
                if seen == k {
                    break;
                }
                if *line == "      }," || *line == "      }" {
                    seen += 1;
                    out.push("      }".into());
                    if seen < k {
                        out.last_mut().unwrap().push(',');
                    }
                } else {
                    out.push(line.to_string());
                }
            }
            out.push(lines[close].into());
        }
        out.extend(lines[close + 1..].iter().map(|l| l.to_string()));
        out.join("\n")
    }

    #[test]
    fn fixture_is_in_google_style() {
        let value: Value = serde_json::from_str(FIXTURE).unwrap();
        assert_eq!(String::from_utf8(gjson::to_vec(&value)).unwrap(), FIXTURE.trim_end_matches('\n'));
        assert_eq!(value["results"].as_array().unwrap().len(), 20);
        assert!(FIXTURE.contains("\\u003ca href="), "fixture should carry escaped HTML attributions");
    }

    #[test]
    fn protocol_example() {
        let body = format!("{PROTOCOL_EXAMPLE}\n");
        let mut answer = legacy(&body);
        assert_eq!((answer.status(), answer.result_count(), answer.is_cacheable()), ("OK", 1, true));
        for bound in [1, 2, 20, 21, 1000] {
            assert_eq!(answer.body(bound), PROTOCOL_EXAMPLE.as_bytes(), "bound {bound}");
        }
        let expected = "{\n   \"html_attributions\" : [],\n   \"results\" : [],\n   \"status\" : \"OK\"\n}";
        assert_eq!(text(&mut answer, 0), expected);
    }

    #[test]
    fn cutting_the_fixture_keeps_key_order_and_number_text() {
        let mut answer = legacy(FIXTURE);
        assert_eq!(answer.result_count(), 20);
        assert_eq!(answer.error_message(), None);
        for bound in 0..=20 {
            let expected =
                if bound == 20 { FIXTURE.trim_end_matches('\n').to_owned() } else { textual_cut(FIXTURE, bound) };
            assert_eq!(text(&mut answer, bound), expected, "bound {bound}");
            // Memoized: asking again gives the same bytes.
            assert_eq!(text(&mut answer, bound), expected, "bound {bound}, again");
        }
        // Bound 20 of 20 is Google's own bytes, not a re-serialization.
        assert_eq!(answer.body(25).as_ptr(), answer.body(20).as_ptr());
    }

    #[test]
    fn uncut_bodies_are_googles_bytes_even_when_not_in_google_style() {
        let body = "{\"html_attributions\":[],\"results\":[{\"name\":\"A\",\"rating\":4.50}],\"status\":\"OK\"}";
        let mut answer = legacy(&format!("{body}\n\n"));
        assert_eq!(text(&mut answer, 1), body);
        assert_eq!(
            text(&mut answer, 0),
            "{\n   \"html_attributions\" : [],\n   \"results\" : [],\n   \"status\" : \"OK\"\n}"
        );
    }

    #[test]
    fn cut_keeps_unusual_number_text_and_other_keys() {
        // Number text survives byte for byte, except that serde_json's arbitrary_precision writes an exponent
        // marker as `e` (Google never sends exponents in Nearby Search answers).
        let body = r#"{
   "html_attributions" : [ "\u003cb\u003ex\u003c/b\u003e" ],
   "next_page_token" : "tok",
   "results" : [
      { "geometry" : { "location" : { "lat" : 34.068921000, "lng" : -0 } }, "rating" : 4.50, "n" : 1.5E+3, "big" : 123456789012345678901234567890 },
      { "name" : "second" }
   ],
   "status" : "OK",
   "info_messages" : [ "kept too" ]
}"#;
        let mut answer = legacy(body);
        assert_eq!(
            text(&mut answer, 1),
            r#"{
   "html_attributions" : [ "\u003cb\u003ex\u003c/b\u003e" ],
   "next_page_token" : "tok",
   "results" : [
      {
         "geometry" : {
            "location" : {
               "lat" : 34.068921000,
               "lng" : -0
            }
         },
         "rating" : 4.50,
         "n" : 1.5e+3,
         "big" : 123456789012345678901234567890
      }
   ],
   "status" : "OK",
   "info_messages" : [ "kept too" ]
}"#
        );
        assert_eq!(text(&mut answer, 2), body);
    }

    #[test]
    fn newline_rules() {
        let cases: &[(&str, &str)] = &[
            ("a\n\n\nb\n", "a\nb"),
            ("a\nb", "a\nb"),
            ("\n\na\n\n\n\n", "\na"),
            ("a\r\n\r\n", "a\r\n\r"),
            ("\n\n\n", ""),
            ("", ""),
            ("ab", "ab"),
        ];
        for (input, expected) in cases {
            let mut out = b"keep".to_vec();
            collapse_newlines(input.as_bytes(), &mut out);
            assert_eq!(std::str::from_utf8(&out).unwrap(), format!("keep{expected}"), "{input:?}");
            // It appends: what `out` held before is never touched, even a trailing LF of its own.
            let mut out = b"keep\n".to_vec();
            collapse_newlines(input.as_bytes(), &mut out);
            assert_eq!(std::str::from_utf8(&out).unwrap(), format!("keep\n{expected}"), "{input:?} after LF");
        }
        let body =
            "{\n\n\n   \"html_attributions\" : [],\n\n   \"results\" : [],\n   \"status\" : \"ZERO_RESULTS\"\n}\n\n\n";
        let mut answer = legacy(body);
        assert_eq!(answer.status(), "ZERO_RESULTS");
        assert!(answer.is_cacheable());
        let expected = "{\n   \"html_attributions\" : [],\n   \"results\" : [],\n   \"status\" : \"ZERO_RESULTS\"\n}";
        for bound in [0, 5, 20] {
            assert_eq!(text(&mut answer, bound), expected);
        }
        // The same rules apply to Google's bytes when a cut leaves them be.
        let spaced = format!("{}\n\n", PROTOCOL_EXAMPLE.replace("\n   \"status\"", "\n\n\n   \"status\""));
        let mut answer = legacy(&spaced);
        assert_eq!(text(&mut answer, 1), PROTOCOL_EXAMPLE);
    }

    const NEW_BODY: &str = r#"{
  "places": [
    {
      "id": "ChIJ-abc",
      "types": ["university", "point_of_interest", "establishment"],
      "formattedAddress": "Los Angeles, CA 90095, USA",
      "location": { "latitude": 34.068921, "longitude": -118.44518099999999 },
      "viewport": {
        "low": { "latitude": 34.0597, "longitude": -118.4532 },
        "high": { "latitude": 34.0775, "longitude": -118.4372 }
      },
      "rating": 4.5,
      "businessStatus": "OPERATIONAL",
      "userRatingCount": 2544,
      "displayName": { "text": "University of California, Los Angeles", "languageCode": "en" },
      "shortFormattedAddress": "Los Angeles",
      "plusCode": { "globalCode": "8553399V+J5", "compoundCode": "399V+J5 Los Angeles, CA, USA" },
      "priceLevel": "PRICE_LEVEL_MODERATE"
    },
    {
      "id": "ChIJ-def",
      "displayName": { "text": "Café <Bruin>" },
      "location": { "latitude": 34.07, "longitude": -118.44 },
      "formattedAddress": "308 Westwood Plaza, Los Angeles"
    }
  ]
}
"#;

    #[test]
    fn new_answers_are_translated_to_the_legacy_shape() {
        let mut answer = PlacesAnswer::from_response(Api::New, 200, NEW_BODY.as_bytes());
        assert_eq!((answer.status(), answer.result_count(), answer.is_cacheable()), ("OK", 2, true));
        let expected = r#"{
   "html_attributions" : [],
   "results" : [
      {
         "business_status" : "OPERATIONAL",
         "geometry" : {
            "location" : {
               "lat" : 34.068921,
               "lng" : -118.44518099999999
            },
            "viewport" : {
               "northeast" : {
                  "lat" : 34.0775,
                  "lng" : -118.4372
               },
               "southwest" : {
                  "lat" : 34.0597,
                  "lng" : -118.4532
               }
            }
         },
         "name" : "University of California, Los Angeles",
         "place_id" : "ChIJ-abc",
         "plus_code" : {
            "compound_code" : "399V+J5 Los Angeles, CA, USA",
            "global_code" : "8553399V+J5"
         },
         "price_level" : 2,
         "rating" : 4.5,
         "types" : [ "university", "point_of_interest", "establishment" ],
         "user_ratings_total" : 2544,
         "vicinity" : "Los Angeles"
      },
      {
         "geometry" : {
            "location" : {
               "lat" : 34.07,
               "lng" : -118.44
            }
         },
         "name" : "Café \u003cBruin\u003e",
         "place_id" : "ChIJ-def",
         "vicinity" : "308 Westwood Plaza, Los Angeles"
      }
   ],
   "status" : "OK"
}"#;
        assert_eq!(text(&mut answer, 20), expected);
        assert_eq!(text(&mut answer, 2), expected);
        let one = text(&mut answer, 1);
        assert!(one.ends_with("\"vicinity\" : \"Los Angeles\"\n      }\n   ],\n   \"status\" : \"OK\"\n}"), "{one}");
        assert!(!one.contains("ChIJ-def"));
        assert_eq!(
            text(&mut answer, 0),
            "{\n   \"html_attributions\" : [],\n   \"results\" : [],\n   \"status\" : \"OK\"\n}"
        );
    }

    #[test]
    fn new_price_levels_become_the_legacy_scale() {
        // Places (New)'s PriceLevel enum against the legacy API's documented scale: 0 free, 1 inexpensive,
        // 2 moderate, 3 expensive, 4 very expensive; an unspecified or unknown level gives no field.
        let table = [
            ("PRICE_LEVEL_FREE", Some(0)),
            ("PRICE_LEVEL_INEXPENSIVE", Some(1)),
            ("PRICE_LEVEL_MODERATE", Some(2)),
            ("PRICE_LEVEL_EXPENSIVE", Some(3)),
            ("PRICE_LEVEL_VERY_EXPENSIVE", Some(4)),
            ("PRICE_LEVEL_UNSPECIFIED", None),
            ("", None),
        ];
        for (level, expected) in table {
            let body = format!(
                r#"{{"places": [{{"id": "p", "location": {{"latitude": 1, "longitude": 2}}, "priceLevel": "{level}"}}]}}"#
            );
            let mut answer = PlacesAnswer::from_response(Api::New, 200, body.as_bytes());
            let value: Value = serde_json::from_slice(answer.body(20)).unwrap();
            assert_eq!(value["results"][0].get("price_level").and_then(Value::as_u64), expected, "{level:?}");
        }
    }

    #[test]
    fn new_answer_with_nothing_near_is_zero_results() {
        let zero = "{\n   \"html_attributions\" : [],\n   \"results\" : [],\n   \"status\" : \"ZERO_RESULTS\"\n}";
        for body in ["{}", "{}\n", "{\"places\": []}"] {
            let mut answer = PlacesAnswer::from_response(Api::New, 200, body.as_bytes());
            assert_eq!(answer.status(), "ZERO_RESULTS", "{body}");
            assert!(answer.is_cacheable());
            assert_eq!(text(&mut answer, 0), zero);
            assert_eq!(text(&mut answer, 20), zero);
        }
    }

    fn failure_text(status: &str, message: &str) -> String {
        format!(
            "{{\n   \"error_message\" : {},\n   \"html_attributions\" : [],\n   \"results\" : [],\n   \"status\" : {}\n}}",
            Value::from(message),
            Value::from(status)
        )
    }

    #[test]
    fn failure_object() {
        let mut answer = PlacesAnswer::failure("UNKNOWN_ERROR", "Places timed out after 3000 ms <sic>");
        assert_eq!(answer.status(), "UNKNOWN_ERROR");
        assert!(!answer.is_cacheable());
        let expected = "{\n   \"error_message\" : \"Places timed out after 3000 ms \\u003csic\\u003e\",\n   \
                        \"html_attributions\" : [],\n   \"results\" : [],\n   \"status\" : \"UNKNOWN_ERROR\"\n}";
        for bound in [0, 1, 20] {
            assert_eq!(text(&mut answer, bound), expected);
        }
    }

    #[test]
    fn every_failure_kind() {
        let denied_legacy = "{\n   \"error_message\" : \"The provided API key is invalid. \",\n   \
                             \"html_attributions\" : [],\n   \"results\" : [],\n   \"status\" : \"REQUEST_DENIED\"\n}\n";
        let new_error = |code: u16, status: &str, message: &str| {
            format!(r#"{{"error": {{"code": {code}, "message": "{message}", "status": "{status}"}}}}"#)
        };
        // (api, HTTP status, body, status, error message)
        let cases: Vec<(Api, u16, String, &str, &str)> = vec![
            (Api::Legacy, 500, "<html>oops</html>".into(), "UNKNOWN_ERROR", "Places answered HTTP 500"),
            (Api::New, 502, String::new(), "UNKNOWN_ERROR", "Places answered HTTP 502"),
            (Api::Legacy, 200, "<html>not json</html>".into(), "UNKNOWN_ERROR", NOT_JSON),
            (Api::New, 200, "{\"places\": [".into(), "UNKNOWN_ERROR", NOT_JSON),
            (Api::Legacy, 200, String::new(), "UNKNOWN_ERROR", NOT_JSON),
            (Api::Legacy, 200, "[1, 2]".into(), "UNKNOWN_ERROR", NOT_PLACES),
            (Api::Legacy, 200, "{\"status\": \"OK\"}".into(), "UNKNOWN_ERROR", NOT_PLACES),
            (Api::Legacy, 200, "{\"results\": []}".into(), "UNKNOWN_ERROR", NOT_PLACES),
            (Api::Legacy, 200, "{\"status\": \"OK\", \"results\": {}}".into(), "UNKNOWN_ERROR", NOT_PLACES),
            (Api::New, 200, "{\"places\": 5}".into(), "UNKNOWN_ERROR", NOT_PLACES),
            (Api::New, 200, "{\"places\": [1]}".into(), "UNKNOWN_ERROR", NOT_PLACES),
            (Api::New, 200, "\"places\"".into(), "UNKNOWN_ERROR", NOT_PLACES),
            // Legacy failure status without results.
            (
                Api::Legacy,
                200,
                "{\"status\": \"OVER_QUERY_LIMIT\"}".into(),
                "OVER_QUERY_LIMIT",
                "Places answered OVER_QUERY_LIMIT",
            ),
            // Legacy error bodies on an HTTP error.
            (Api::Legacy, 403, denied_legacy.into(), "REQUEST_DENIED", "The provided API key is invalid. "),
            (
                Api::Legacy,
                400,
                "{\"status\": \"INVALID_REQUEST\"}".into(),
                "INVALID_REQUEST",
                "Places answered HTTP 400",
            ),
            (
                Api::Legacy,
                503,
                "{\"status\": \"OK\", \"results\": []}".into(),
                "UNKNOWN_ERROR",
                "Places answered HTTP 503",
            ),
            // New error bodies, whichever API is configured.
            (
                Api::New,
                403,
                new_error(403, "PERMISSION_DENIED", "Places API (New) has not been used in project 1 before"),
                "REQUEST_DENIED",
                "Places API (New) has not been used in project 1 before",
            ),
            (
                Api::New,
                400,
                new_error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key."),
                "INVALID_REQUEST",
                "API key not valid. Please pass a valid API key.",
            ),
            (Api::New, 401, new_error(401, "UNAUTHENTICATED", "no key"), "REQUEST_DENIED", "no key"),
            (Api::New, 429, new_error(429, "RESOURCE_EXHAUSTED", "quota"), "OVER_QUERY_LIMIT", "quota"),
            (Api::New, 500, new_error(500, "INTERNAL", "boom"), "UNKNOWN_ERROR", "boom"),
            (Api::New, 503, new_error(503, "UNAVAILABLE", ""), "UNKNOWN_ERROR", "Places answered HTTP 503"),
            (Api::Legacy, 403, "{\"error\": {\"code\": 403}}".into(), "REQUEST_DENIED", "Places answered HTTP 403"),
            // A New error with a code and no status: the legacy status that Google's HTTP mapping of
            // google.rpc codes gives (400 INVALID_ARGUMENT, 401 UNAUTHENTICATED, 429 RESOURCE_EXHAUSTED).
            (Api::New, 400, "{\"error\": {\"code\": 400}}".into(), "INVALID_REQUEST", "Places answered HTTP 400"),
            (Api::New, 401, "{\"error\": {\"code\": 401}}".into(), "REQUEST_DENIED", "Places answered HTTP 401"),
            (Api::New, 429, "{\"error\": {\"code\": 429}}".into(), "OVER_QUERY_LIMIT", "Places answered HTTP 429"),
            (Api::New, 500, "{\"error\": {\"code\": 500}}".into(), "UNKNOWN_ERROR", "Places answered HTTP 500"),
            (Api::New, 200, new_error(429, "RESOURCE_EXHAUSTED", "quota"), "OVER_QUERY_LIMIT", "quota"),
        ];
        for (api, http_status, body, status, message) in cases {
            let what = format!("{api:?} {http_status} {body:?}");
            let mut answer = PlacesAnswer::from_response(api, http_status, body.as_bytes());
            assert_eq!(answer.status(), status, "{what}");
            assert_eq!(answer.error_message(), Some(message), "{what}");
            assert!(!answer.is_cacheable(), "{what}");
            for bound in [0, 20] {
                assert_eq!(text(&mut answer, bound), failure_text(status, message), "{what}");
            }
        }
    }

    #[test]
    fn googles_own_failure_status_is_passed_through() {
        let body = "{\n   \"error_message\" : \"You have exceeded your daily request quota for this API.\",\n   \
                    \"html_attributions\" : [],\n   \"results\" : [],\n   \"status\" : \"OVER_QUERY_LIMIT\"\n}\n";
        let mut answer = legacy(body);
        assert_eq!(answer.status(), "OVER_QUERY_LIMIT");
        assert_eq!(answer.error_message(), Some("You have exceeded your daily request quota for this API."));
        assert!(!answer.is_cacheable());
        assert_eq!(text(&mut answer, 0), body.trim_end());
        assert_eq!(text(&mut answer, 20), body.trim_end());
    }

    #[test]
    fn more_than_twenty_results_are_cut_to_twenty() {
        let value: Value = serde_json::from_str(FIXTURE).unwrap();
        let mut doc = value.as_object().unwrap().clone();
        let mut results = doc["results"].as_array().unwrap().clone();
        results.extend(results.clone());
        doc.insert("results".into(), Value::Array(results));
        let body = gjson::to_vec(&Value::Object(doc));
        let mut answer = PlacesAnswer::from_response(Api::Legacy, 200, &body);
        assert_eq!(answer.result_count(), 40);
        assert_eq!(text(&mut answer, 20), FIXTURE.trim_end());
        assert_eq!(text(&mut answer, 1000), FIXTURE.trim_end());
        assert_eq!(text(&mut answer, 3), textual_cut(FIXTURE, 3));
    }

    #[test]
    fn debug_output_is_short() {
        let answer = legacy(FIXTURE);
        let debug = format!("{answer:?}");
        assert!(debug.starts_with("PlacesAnswer { status: \"OK\""), "{debug}");
        assert!(debug.len() < 200, "{debug}");
    }

    // ---- requests ----

    fn request(ep: &Endpoint, lat: &str, lng: &str, radius: &str, key: Option<&str>) -> String {
        let mut out = b"previous bytes|".to_vec();
        build_request(ep, lat, lng, radius, key, &mut out);
        let text = String::from_utf8(out).unwrap();
        text.strip_prefix("previous bytes|").expect("appends").to_owned()
    }

    fn legacy_google() -> Endpoint {
        Endpoint::parse(Api::Legacy, "https://maps.googleapis.com/maps/api/place/nearbysearch/json").unwrap()
    }

    fn new_google() -> Endpoint {
        Endpoint::parse(Api::New, "https://places.googleapis.com/v1/places:searchNearby").unwrap()
    }

    #[test]
    fn canonical_coordinates_normalise_spelling_and_never_round() {
        // Written by hand: (text, canonical).
        let cases: &[(&str, &str)] = &[
            ("+34", "+34"),
            ("+34.0", "+34"),
            ("+34.000", "+34"),
            ("+034", "+34"),
            ("+0034.500", "+34.5"),
            ("-118.445127", "-118.445127"),
            ("-0118.4451270", "-118.445127"),
            ("+0", "+0"),
            ("-0", "+0"),
            ("-000.000", "+0"),
            ("+00.0", "+0"),
            ("-0.5", "-0.5"),
            ("-00.50", "-0.5"),
            ("+90", "+90"),
            ("+90.00", "+90"),
            ("+10", "+10"),
            ("+10.01", "+10.01"),
            ("+1.0100", "+1.01"),
            // Past a float's precision: no rounding, so these stay apart.
            ("+34.0689300000000000000001", "+34.0689300000000000000001"),
            ("+34.06893", "+34.06893"),
        ];
        for (text, want) in cases {
            assert_eq!(canonical_coordinate(text.as_bytes()).as_deref(), Some(*want), "{text}");
        }
        for bad in ["34", "+", "+.5", "+5.", "++5", "+5e1", "+ 5", "", "+3-4"] {
            assert_eq!(canonical_coordinate(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn every_failure_message_is_one_of_a_fixed_set() {
        // Written by hand: the whole set a client can read from the server itself.
        let table: &[(Failure, &str)] = &[
            (Failure::Timeout(3000), "Places did not answer within 3000 ms"),
            (Failure::Refused, "Places request failed: connection refused or unreachable"),
            (Failure::Tls, "Places request failed: TLS error"),
            (Failure::Http(503), "Places answered HTTP 503"),
            (Failure::Closed, "Places request failed: connection closed before the answer was complete"),
            (Failure::BadHttp, "Places request failed: malformed HTTP response"),
            (Failure::NotJson, "Places answered with a body that is not JSON"),
            (Failure::NotPlaces, "Places answered with JSON that is not a Places answer"),
            (Failure::ClientPending, "too many WHATSATs of this connection are waiting on Places"),
            (Failure::ServerPending, "too many Places requests are pending on this server"),
            (Failure::NotConfigured, "Places is not configured for this server"),
        ];
        for (failure, want) in table {
            let mut answer = failure.answer();
            assert_eq!(answer.error_message(), Some(*want), "{failure:?}");
            assert_eq!(answer.status(), "UNKNOWN_ERROR");
            let value: Value = serde_json::from_slice(answer.body(20)).unwrap();
            assert_eq!(value["results"], serde_json::json!([]), "{failure:?}");
            assert_eq!(value["error_message"], *want, "{failure:?}");
        }
        // The bodies the server shapes itself use the same set.
        let shaped = [
            (PlacesAnswer::from_response(Api::Legacy, 200, b"<html>"), "Places answered with a body that is not JSON"),
            (PlacesAnswer::from_response(Api::Legacy, 502, b"<html>"), "Places answered HTTP 502"),
            (
                PlacesAnswer::from_response(Api::Legacy, 200, b"[1]"),
                "Places answered with JSON that is not a Places answer",
            ),
        ];
        for (answer, want) in shaped {
            assert_eq!(answer.error_message(), Some(want));
        }
    }

    #[test]
    fn radius_in_metres_is_exact() {
        let cases = [
            ("10", "10000"),
            ("2.5", "2500"),
            ("0.0001", "0.1"),
            ("50", "50000"),
            ("0.5", "500"),
            ("1.234", "1234"),
            ("1.2345", "1234.5"),
            ("007.50", "7500"),
            ("0.001", "1"),
            ("0.000123", "0.123"),
            ("12.3456789012345678901", "12345.6789012345678901"),
            ("0", "0"),
            ("0.000", "0"),
        ];
        for (km, m) in cases {
            assert_eq!(radius_metres(km).as_deref(), Some(m), "{km}");
        }
        for bad in ["", ".5", "10.", "1e1", "-1", "+1", "1.2.3", " 1", "١"] {
            assert_eq!(radius_metres(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn coordinates_as_json_numbers() {
        let cases = [
            ("+34.068930", "34.068930"),
            ("-118.445127", "-118.445127"),
            ("+12", "12"),
            ("+040.5", "40.5"),
            ("-000.25", "-0.25"),
            ("-0", "-0"),
            ("90", "90"),
        ];
        for (iso, json) in cases {
            assert_eq!(json_decimal(iso).as_deref(), Some(json), "{iso}");
        }
        for bad in ["", "+", "+.5", "+5.", "1e3", "--1", "+3,4"] {
            assert_eq!(json_decimal(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn legacy_request_bytes() {
        let got = request(&legacy_google(), "+34.068930", "-118.445127", "10", Some("AIzaFAKE-key_123"));
        assert_eq!(
            got,
            "GET /maps/api/place/nearbysearch/json?location=34.068930,-118.445127&radius=10000&key=AIzaFAKE-key_123 HTTP/1.1\r\n\
             Host: maps.googleapis.com\r\nUser-Agent: herd/0.1\r\nAccept: application/json\r\nConnection: keep-alive\r\n\r\n"
        );
        assert!(!got.to_ascii_lowercase().contains("accept-encoding"));
        let got = request(&legacy_google(), "+040.5", "+151.2100", "2.5", None);
        assert!(
            got.starts_with("GET /maps/api/place/nearbysearch/json?location=40.5,151.2100&radius=2500 HTTP/1.1\r\n"),
            "{got}"
        );
        assert!(!got.contains("key="));
    }

    #[test]
    fn legacy_request_percent_encodes() {
        let ep = Endpoint::parse(Api::Legacy, "https://127.0.0.1:18443/maps/api/place/nearbysearch/json?language=en")
            .unwrap();
        let got = request(&ep, "+1", "-2", "0.0001", Some("a+b/c=d&e f%é"));
        assert_eq!(
            got,
            "GET /maps/api/place/nearbysearch/json?language=en&location=1,-2&radius=0.1&key=a%2Bb%2Fc%3Dd%26e%20f%25%C3%A9 HTTP/1.1\r\n\
             Host: 127.0.0.1:18443\r\nUser-Agent: herd/0.1\r\nAccept: application/json\r\nConnection: keep-alive\r\n\r\n"
        );
        // Text that is not a decimal (the protocol parser should have refused it) is encoded, never raw.
        let got = request(&ep, "+1 HTTP/1.1\r\nX: y", "-2&radius=9", "1e3", None);
        let line = got.split("\r\n").next().unwrap();
        assert_eq!(
            line,
            "GET /maps/api/place/nearbysearch/json?language=en&location=%2B1%20HTTP%2F1.1%0D%0AX%3A%20y,-2%26radius%3D9&radius=1e3 HTTP/1.1"
        );
    }

    #[test]
    fn new_request_bytes() {
        let got = request(&new_google(), "+34.068930", "-118.445127", "2.5", Some("AIzaFAKE"));
        let body = "{\"maxResultCount\":20,\"locationRestriction\":{\"circle\":{\"center\":\
                    {\"latitude\":34.068930,\"longitude\":-118.445127},\"radius\":2500}}}";
        assert_eq!(
            got,
            format!(
                "POST /v1/places:searchNearby HTTP/1.1\r\nHost: places.googleapis.com\r\nUser-Agent: herd/0.1\r\n\
                 Accept: application/json\r\nContent-Type: application/json\r\nX-Goog-Api-Key: AIzaFAKE\r\n\
                 X-Goog-FieldMask: {NEW_FIELD_MASK}\r\nContent-Length: {}\r\nConnection: keep-alive\r\n\r\n{body}",
                body.len()
            )
        );
        let parsed: Value = serde_json::from_str(body).unwrap();
        assert_eq!(parsed["locationRestriction"]["circle"]["radius"].to_string(), "2500");
        let got = request(&new_google(), "+040.5", "-0", "0.0001", None);
        assert!(!got.contains("X-Goog-Api-Key"), "{got}");
        assert!(got.ends_with("{\"latitude\":40.5,\"longitude\":-0},\"radius\":0.1}}}"), "{got}");
    }

    #[test]
    fn new_request_stays_well_formed_with_bad_input() {
        let got = request(&new_google(), "+1\"}", "-2", "x", Some("bad\r\nX-Injected: 1 key"));
        let (head, body) = got.split_once("\r\n\r\n").unwrap();
        assert!(head.contains("\r\nX-Goog-Api-Key: badX-Injected:1key\r\n"), "{head}");
        assert!(!head.contains("\r\nX-Injected"), "{head}");
        let value: Value = serde_json::from_str(body).expect("still JSON");
        assert_eq!(value["locationRestriction"]["circle"]["center"]["latitude"], "+1\"}");
        let length: usize =
            head.split("Content-Length: ").nth(1).unwrap().split("\r\n").next().unwrap().parse().unwrap();
        assert_eq!(length, body.len());
        // The field mask asks for what the translation reads.
        for field in NEW_FIELD_MASK.split(',') {
            assert!(field.starts_with("places."), "{field}");
        }
    }

    #[test]
    fn endpoint_parsing() {
        let ok: &[(&str, &str, u16, &str)] = &[
            (
                "https://maps.googleapis.com/maps/api/place/nearbysearch/json",
                "maps.googleapis.com",
                443,
                "/maps/api/place/nearbysearch/json",
            ),
            (
                "HTTPS://Places.GoogleAPIs.com/v1/places:searchNearby",
                "places.googleapis.com",
                443,
                "/v1/places:searchNearby",
            ),
            (
                "https://127.0.0.1:18443/maps/api/place/nearbysearch/json",
                "127.0.0.1",
                18443,
                "/maps/api/place/nearbysearch/json",
            ),
            ("https://[::1]:8443/v1/places:searchNearby", "::1", 8443, "/v1/places:searchNearby"),
            ("https://[2001:DB8::1]/x", "2001:db8::1", 443, "/x"),
            ("https://localhost", "localhost", 443, "/"),
            ("https://localhost:443?a=b", "localhost", 443, "/?a=b"),
            ("https://my_host.internal:1/p?q=1#frag", "my_host.internal", 1, "/p?q=1"),
        ];
        for (url, host, port, path) in ok {
            let ep = Endpoint::parse(Api::Legacy, url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!((ep.host.as_str(), ep.port, ep.path.as_str()), (*host, *port, *path), "{url}");
            assert_eq!(ep.api, Api::Legacy);
        }
        let authority = |url| Endpoint::parse(Api::New, url).unwrap().authority();
        assert_eq!(authority("https://[::1]:8443/"), "[::1]:8443");
        assert_eq!(authority("https://[::1]/"), "[::1]");
        assert_eq!(authority("https://example.com:443/"), "example.com");
        assert_eq!(authority("https://example.com:8443/"), "example.com:8443");

        let bad = [
            ("http://maps.googleapis.com/x", UrlError::NotHttps),
            ("maps.googleapis.com/x", UrlError::NotHttps),
            ("https://", UrlError::NoHost),
            ("https:///x", UrlError::NoHost),
            ("https://user:SECRET@host/x", UrlError::UserInfo),
            ("https://host:0/x", UrlError::BadPort),
            ("https://host:65536/x", UrlError::BadPort),
            ("https://host:+1/x", UrlError::BadPort),
            ("https://host:/x", UrlError::BadPort),
            ("https://host:SECRET/x", UrlError::BadPort),
            ("https://[::1/x", UrlError::UnclosedBracket),
            ("https://[not-v6]/x", UrlError::BadIpv6),
            ("https://[::1]x/", UrlError::JunkAfterIpv6),
            ("https://999.1.1.1/x", UrlError::BadIpv4),
            ("https://ho st/x", UrlError::BadHostName),
            ("https://a..b/x", UrlError::BadHostName),
            ("https://host./x", UrlError::BadHostName),
            ("https://hôst/x", UrlError::BadHostName),
            ("https://host/a b", UrlError::BadPath),
            ("https://host/a\r\nX: y", UrlError::BadPath),
        ];
        for (url, kind) in bad {
            let err = Endpoint::parse(Api::Legacy, url).expect_err(url);
            assert_eq!(err, kind, "{url}");
            let err = err.to_string();
            assert!(err.starts_with("places url"), "{url}: {err}");
            assert!(!err.contains("SECRET"), "{url}: {err}");
        }
    }
}
