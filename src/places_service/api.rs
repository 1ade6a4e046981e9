//! The endpoints of the local Places service, as pure functions from a request to a status and a JSON
//! body (written in Google's style by [`crate::gjson`]). No I/O, no clock.
//!
//! - `GET /maps/api/place/nearbysearch/json?location=LAT,LNG&radius=M&key=K`: legacy Nearby Search.
//! - `POST /v1/places:searchNearby` with `X-Goog-Api-Key`, `X-Goog-FieldMask` and a JSON body: Places (New).
//! - `GET /__stats`: how many Places requests were served and connections accepted, for tests.
//!
//! Radius and result limits follow Google: the legacy radius is clamped to 50,000 m and at most 20
//! results are returned, nearest first; the new API refuses a radius outside (0, 50000] and a
//! `maxResultCount` outside 1..=20, and answers `{}` when nothing is within the radius.

use super::gazetteer::{place_id, Gazetteer, Place};
use super::http1::Request;
use serde_json::{json, Map, Number, Value};
use std::str::FromStr;

pub const LEGACY_PATH: &str = "/maps/api/place/nearbysearch/json";
pub const NEW_PATH: &str = "/v1/places:searchNearby";
pub const STATS_PATH: &str = "/__stats";

/// Google's largest radius, in metres.
pub const MAX_RADIUS_M: f64 = 50_000.0;
/// Google's largest page of results.
pub const MAX_RESULTS: usize = 20;

const TYPES: [&str; 2] = ["locality", "political"];

/// Which endpoint a request reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Legacy,
    New,
    Stats,
    Other,
}

impl Endpoint {
    /// Places requests are the ones counted by `/__stats` and the ones faults apply to.
    pub fn is_places(self) -> bool {
        matches!(self, Endpoint::Legacy | Endpoint::New)
    }
}

/// Requests served so far, and connections accepted (each a TLS handshake: what a client's keep-alive
/// pool saves).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub legacy: u64,
    pub new: u64,
    pub connections: u64,
}

/// What to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub endpoint: Endpoint,
    pub status: u16,
    pub body: Vec<u8>,
    /// A short outcome for the log (a status word and a count), never request data.
    pub note: String,
}

/// Answers one request.
pub fn handle(gazetteer: &Gazetteer, stats: &mut Stats, req: &Request) -> Reply {
    let (path, query) = match req.target.split_once('?') {
        Some((p, q)) => (p, q),
        None => (req.target.as_str(), ""),
    };
    let endpoint = match path {
        LEGACY_PATH => Endpoint::Legacy,
        NEW_PATH | "/v1/places%3AsearchNearby" | "/v1/places%3asearchNearby" => Endpoint::New,
        STATS_PATH => Endpoint::Stats,
        _ => Endpoint::Other,
    };
    match (endpoint, req.method.as_str()) {
        (Endpoint::Legacy, "GET") => {
            stats.legacy += 1;
            legacy(gazetteer, &parse_query(query))
        }
        (Endpoint::New, "POST") => {
            stats.new += 1;
            new_api(gazetteer, req, &parse_query(query))
        }
        (Endpoint::Stats, "GET") => {
            let value = json!({
                "requests": stats.legacy + stats.new,
                "legacy": stats.legacy,
                "new": stats.new,
                "connections": stats.connections,
            });
            reply(Endpoint::Stats, 200, &value, "stats".into())
        }
        _ => {
            let value = google_error(404, "Not Found", "NOT_FOUND");
            reply(Endpoint::Other, 404, &value, "not found".into())
        }
    }
}

fn reply(endpoint: Endpoint, status: u16, value: &Value, note: String) -> Reply {
    let mut body = Vec::with_capacity(1024);
    crate::gjson::write(&mut body, value);
    Reply { endpoint, status, body, note }
}

fn google_error(code: u16, message: &str, status: &str) -> Value {
    json!({ "error": { "code": code, "message": message, "status": status } })
}

// ---------------------------------------------------------------------------------------------------
// Legacy Nearby Search

fn legacy_status(status: &str, message: &str) -> Reply {
    let value = json!({
        "error_message": message,
        "html_attributions": [],
        "results": [],
        "status": status,
    });
    reply(Endpoint::Legacy, 200, &value, status.into())
}

fn legacy(g: &Gazetteer, query: &[(String, String)]) -> Reply {
    let param = |name: &str| query.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    if param("key").is_none_or(|k| k.trim().is_empty()) {
        return legacy_status(
            "REQUEST_DENIED",
            "You must use an API key to authenticate each request to Google Maps Platform APIs.",
        );
    }
    let (lat, lng) = match param("location") {
        None => return legacy_status("INVALID_REQUEST", "Invalid request. Missing the 'location' parameter."),
        Some(text) => match parse_lat_lng(text) {
            Some(ll) => ll,
            None => return legacy_status("INVALID_REQUEST", "Invalid request. Invalid 'location' parameter."),
        },
    };
    let radius = match param("radius") {
        None => return legacy_status("INVALID_REQUEST", "Invalid request. Missing the 'radius' parameter."),
        Some(text) => match text.trim().parse::<f64>() {
            Ok(r) if r.is_finite() && r > 0.0 => r.min(MAX_RADIUS_M),
            _ => return legacy_status("INVALID_REQUEST", "Invalid request. Invalid 'radius' parameter."),
        },
    };
    let hits = g.nearby(lat, lng, radius, MAX_RESULTS);
    let results: Vec<Value> = hits.iter().map(|h| legacy_result(h.row, &g.place(h.row))).collect();
    let status = if results.is_empty() { "ZERO_RESULTS" } else { "OK" };
    let note = format!("{status} {}", results.len());
    let value = json!({
        "html_attributions": [],
        "results": results,
        "status": status,
    });
    reply(Endpoint::Legacy, 200, &value, note)
}

fn number(text: &str) -> Value {
    // arbitrary_precision keeps the file's exact text.
    Number::from_str(text).map(Value::Number).unwrap_or(Value::Null)
}

/// "admin2, admin1" (whichever are known), else the country code.
fn vicinity(p: &Place) -> String {
    let parts: Vec<&str> = [p.admin2, p.admin1].into_iter().filter(|s| !s.is_empty()).collect();
    if parts.is_empty() {
        p.country.to_string()
    } else {
        parts.join(", ")
    }
}

fn formatted_address(p: &Place) -> String {
    let mut parts: Vec<&str> = Vec::with_capacity(4);
    for s in [p.name, p.admin2, p.admin1, p.country] {
        if !s.is_empty() && parts.last() != Some(&s) {
            parts.push(s);
        }
    }
    parts.join(", ")
}

fn legacy_result(row: u32, p: &Place) -> Value {
    let id = place_id(row);
    json!({
        "geometry": { "location": { "lat": number(p.lat), "lng": number(p.lng) } },
        "name": p.name,
        "place_id": id,
        "reference": id,
        "scope": "GOOGLE",
        "types": TYPES,
        "vicinity": vicinity(p),
    })
}

// ---------------------------------------------------------------------------------------------------
// Places (New) searchNearby

fn new_error(status: u16, message: &str) -> Reply {
    let word = match status {
        400 => "INVALID_ARGUMENT",
        403 => "PERMISSION_DENIED",
        _ => "INTERNAL",
    };
    reply(Endpoint::New, status, &google_error(status, message, word), word.into())
}

/// The top-level place fields this service can fill, in the order it writes them.
const NEW_FIELDS: [&str; 6] = ["id", "displayName", "location", "types", "formattedAddress", "shortFormattedAddress"];

fn new_api(g: &Gazetteer, req: &Request, query: &[(String, String)]) -> Reply {
    let param = |name: &str| query.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    let key = req.header("x-goog-api-key").or_else(|| param("key"));
    if key.is_none_or(|k| k.trim().is_empty()) {
        return new_error(403, "The request is missing a valid API key. Pass it in the X-Goog-Api-Key header.");
    }
    let mask = req.header("x-goog-fieldmask").or_else(|| param("fields")).or_else(|| param("$fields"));
    let Some(mask) = mask.filter(|m| !m.trim().is_empty()) else {
        return new_error(
            400,
            "FieldMask is a required parameter. Set the header 'X-Goog-FieldMask' to '*' for all \
             fields, or to a list such as 'places.displayName,places.location'.",
        );
    };
    let fields = match field_mask(mask) {
        Ok(f) => f,
        Err(message) => return new_error(400, &message),
    };
    let body: Value = match serde_json::from_slice(&req.body) {
        Ok(v @ Value::Object(_)) => v,
        _ => return new_error(400, "Invalid JSON payload received: expected a JSON object."),
    };
    let max = match body.get("maxResultCount") {
        None | Some(Value::Null) => MAX_RESULTS,
        Some(v) => match integer(v) {
            Some(n) if (1..=MAX_RESULTS as i64).contains(&n) => n as usize,
            _ => return new_error(400, "Invalid maxResultCount: it must be between 1 and 20, inclusive."),
        },
    };
    let Some(circle) = body.pointer("/locationRestriction/circle").filter(|c| c.is_object()) else {
        return new_error(400, "Invalid request: locationRestriction.circle is required.");
    };
    let coordinate = |name: &str, limit: f64| match circle.pointer(&format!("/center/{name}")) {
        None | Some(Value::Null) => Some(0.0), // proto3 default
        Some(v) => float(v).filter(|x| x.abs() <= limit),
    };
    let (Some(lat), Some(lng)) = (coordinate("latitude", 90.0), coordinate("longitude", 180.0)) else {
        return new_error(400, "Invalid locationRestriction.circle.center: latitude must be within [-90, 90] and longitude within [-180, 180].");
    };
    let radius = match circle.get("radius").and_then(float) {
        Some(r) if r > 0.0 && r <= MAX_RADIUS_M => r,
        _ => {
            return new_error(
                400,
                "Invalid locationRestriction.circle.radius: it must be greater than 0 and at most 50000.",
            )
        }
    };
    let hits = g.nearby(lat, lng, radius, max);
    let note = format!("OK {}", hits.len());
    if hits.is_empty() {
        return reply(Endpoint::New, 200, &Value::Object(Map::new()), note);
    }
    let places: Vec<Value> = hits.iter().map(|h| new_place(h.row, &g.place(h.row), &fields)).collect();
    reply(Endpoint::New, 200, &json!({ "places": places }), note)
}

/// Which of [`NEW_FIELDS`] the mask selects. `*`, `places` and `places.*` select all; `places.X` or
/// `places.X.Y` selects X; other `places.` fields are valid but this service has nothing for them.
fn field_mask(mask: &str) -> Result<[bool; NEW_FIELDS.len()], String> {
    let mut selected = [false; NEW_FIELDS.len()];
    for path in mask.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if path == "*" || path == "places" || path == "places.*" {
            selected = [true; NEW_FIELDS.len()];
            continue;
        }
        let Some(rest) = path.strip_prefix("places.") else {
            if path == "nextPageToken" || path == "routingSummaries" || path.starts_with("routingSummaries.") {
                continue;
            }
            return Err("Invalid field mask: every path must start with 'places.'.".into());
        };
        let top = rest.split('.').next().unwrap_or("");
        if top.is_empty() || !top.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err("Invalid field mask: a path names no field.".into());
        }
        if let Some(i) = NEW_FIELDS.iter().position(|f| *f == top) {
            selected[i] = true;
        }
    }
    Ok(selected)
}

fn new_place(row: u32, p: &Place, fields: &[bool; NEW_FIELDS.len()]) -> Value {
    let mut place = Map::new();
    for (i, name) in NEW_FIELDS.iter().enumerate() {
        if !fields[i] {
            continue;
        }
        let value = match *name {
            "id" => Value::String(place_id(row)),
            "displayName" => json!({ "text": p.name, "languageCode": "en" }),
            "location" => json!({ "latitude": number(p.lat), "longitude": number(p.lng) }),
            "types" => json!(TYPES),
            "formattedAddress" => Value::String(formatted_address(p)),
            _ => Value::String(vicinity(p)), // shortFormattedAddress
        };
        place.insert((*name).to_string(), value);
    }
    Value::Object(place)
}

fn float(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|x: &f64| x.is_finite())
}

fn integer(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------------
// Query strings

/// `LAT,LNG` in decimal degrees, each within range.
pub fn parse_lat_lng(text: &str) -> Option<(f64, f64)> {
    let (lat, lng) = text.split_once(',')?;
    let lat: f64 = lat.trim().parse().ok()?;
    let lng: f64 = lng.trim().parse().ok()?;
    ((-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lng)).then_some((lat, lng))
}

/// Decodes `application/x-www-form-urlencoded` text: `%XX` escapes and `+` for space. A `%` that does not
/// start a valid escape stays as it is.
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() && hex(bytes[i + 1]).is_some() && hex(bytes[i + 2]).is_some() => {
                out.push(hex(bytes[i + 1]).unwrap() * 16 + hex(bytes[i + 2]).unwrap());
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// The decoded `name=value` pairs of a query string, in order.
pub fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((n, v)) => (percent_decode(n), percent_decode(v)),
            None => (percent_decode(pair), String::new()),
        })
        .collect()
}

/// The request target with the value of every `key` parameter replaced, for logs. Long targets are cut
/// and control characters escaped, so a log line stays one line.
pub fn redact_target(target: &str) -> String {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let mut out = String::from(path);
    if let Some(query) = query {
        out.push('?');
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            let name = pair.split_once('=').map_or(pair, |(n, _)| n);
            if percent_decode(name).trim().eq_ignore_ascii_case("key") {
                out.push_str(name);
                out.push_str("=REDACTED");
            } else {
                out.push_str(pair);
            }
        }
    }
    let mut safe: String = out.chars().flat_map(char::escape_default).collect();
    if safe.len() > 300 {
        let mut cut = 300;
        while !safe.is_char_boundary(cut) {
            cut -= 1;
        }
        safe.truncate(cut);
        safe.push_str("...");
    }
    safe
}

// ---------------------------------------------------------------------------------------------------
// Fault bodies

/// The body of the `http500` fault (Google's error shape).
pub fn http500_body() -> Vec<u8> {
    crate::gjson::to_vec(&google_error(500, "Internal error encountered.", "INTERNAL"))
}

/// The body of the `badjson` fault: an HTML error page served as JSON with status 200.
pub const BAD_JSON_BODY: &[u8] =
    b"<!DOCTYPE html>\n<html><head><title>Error</title></head><body><p>That is an error.</p></body></html>\n";

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::OnceLock;

    fn gazetteer() -> &'static Gazetteer {
        static G: OnceLock<Gazetteer> = OnceLock::new();
        G.get_or_init(|| Gazetteer::embedded().unwrap())
    }

    fn get(target: &str) -> Request {
        Request { method: "GET".into(), target: target.into(), minor_version: 1, headers: vec![], body: vec![] }
    }

    fn post(headers: &[(&str, &str)], body: &str) -> Request {
        Request {
            method: "POST".into(),
            target: NEW_PATH.into(),
            minor_version: 1,
            headers: headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
            body: body.as_bytes().to_vec(),
        }
    }

    fn json(reply: &Reply) -> Value {
        serde_json::from_slice(&reply.body).unwrap()
    }

    #[test]
    fn legacy_near_ucla_is_google_shaped() {
        let mut stats = Stats::default();
        let r = handle(
            gazetteer(),
            &mut stats,
            &get("/maps/api/place/nearbysearch/json?location=34.068930,-118.445127&radius=10000&key=k"),
        );
        assert_eq!(r.status, 200);
        let text = String::from_utf8(r.body.clone()).unwrap();
        assert!(
            text.starts_with(
                "{\n   \"html_attributions\" : [],\n   \"results\" : [\n      {\n         \"geometry\" : {"
            ),
            "{text}"
        );
        assert!(text.contains("\"types\" : [ \"locality\", \"political\" ]"), "{text}");
        assert!(text.ends_with("\n   ],\n   \"status\" : \"OK\"\n}"), "{text}");
        let v = json(&r);
        let results = v["results"].as_array().unwrap();
        assert!(!results.is_empty() && results.len() <= 20);
        let first = results[0].as_object().unwrap();
        let keys: Vec<&str> = first.keys().map(String::as_str).collect();
        assert_eq!(keys, ["geometry", "name", "place_id", "reference", "scope", "types", "vicinity"]);
        assert_eq!(first["place_id"], first["reference"]);
        assert_eq!(first["name"], "Bel Air");
        assert_eq!(first["vicinity"], "Los Angeles County, California");
        assert_eq!(stats, Stats { legacy: 1, new: 0, connections: 0 });
    }

    #[test]
    fn legacy_statuses() {
        let mut stats = Stats::default();
        let g = gazetteer();
        let status = |stats: &mut Stats, target: &str| json(&handle(g, stats, &get(target)))["status"].clone();
        let base = "/maps/api/place/nearbysearch/json?";
        assert_eq!(status(&mut stats, &format!("{base}location=34,-118&radius=1000")), "REQUEST_DENIED");
        assert_eq!(status(&mut stats, &format!("{base}location=34,-118&radius=1000&key=")), "REQUEST_DENIED");
        assert_eq!(status(&mut stats, &format!("{base}location=91,0&radius=1000&key=k")), "INVALID_REQUEST");
        assert_eq!(status(&mut stats, &format!("{base}location=abc&radius=1000&key=k")), "INVALID_REQUEST");
        assert_eq!(status(&mut stats, &format!("{base}radius=1000&key=k")), "INVALID_REQUEST");
        assert_eq!(status(&mut stats, &format!("{base}location=34,-118&radius=0&key=k")), "INVALID_REQUEST");
        assert_eq!(status(&mut stats, &format!("{base}location=34,-118&radius=-3&key=k")), "INVALID_REQUEST");
        assert_eq!(status(&mut stats, &format!("{base}location=34,-118&radius=nan&key=k")), "INVALID_REQUEST");
        assert_eq!(status(&mut stats, &format!("{base}location=34,-118&key=k")), "INVALID_REQUEST");
        assert_eq!(status(&mut stats, &format!("{base}location=0,-150&radius=50000&key=k")), "ZERO_RESULTS");
        assert_eq!(status(&mut stats, &format!("{base}location=%2B34.068930%2C-118.445127&radius=5000&key=k")), "OK");
        assert_eq!(stats.legacy, 11);
        let denied = handle(g, &mut stats, &get(&format!("{base}location=34,-118&radius=1")));
        assert_eq!(
            String::from_utf8(denied.body).unwrap(),
            "{\n   \"error_message\" : \"You must use an API key to authenticate each request to Google Maps Platform APIs.\",\n   \"html_attributions\" : [],\n   \"results\" : [],\n   \"status\" : \"REQUEST_DENIED\"\n}"
        );
    }

    #[test]
    fn legacy_radius_is_clamped() {
        let mut stats = Stats::default();
        let g = gazetteer();
        let base = "/maps/api/place/nearbysearch/json?location=34.068930,-118.445127&key=k&radius=";
        let big = json(&handle(g, &mut stats, &get(&format!("{base}1000000"))));
        let max = json(&handle(g, &mut stats, &get(&format!("{base}50000"))));
        assert_eq!(big, max);
    }

    #[test]
    fn new_api_answers_and_validates() {
        let g = gazetteer();
        let mut stats = Stats::default();
        let body = r#"{"maxResultCount": 5, "locationRestriction": {"circle": {"center": {"latitude": 34.068930, "longitude": -118.445127}, "radius": 10000}}}"#;
        let ok = handle(g, &mut stats, &post(&[("x-goog-api-key", "k"), ("x-goog-fieldmask", "*")], body));
        assert_eq!(ok.status, 200);
        let v = json(&ok);
        let places = v["places"].as_array().unwrap();
        assert_eq!(places.len(), 5);
        let keys: Vec<&str> = places[0].as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, NEW_FIELDS);
        assert_eq!(places[0]["displayName"]["languageCode"], "en");

        let masked = handle(
            g,
            &mut stats,
            &post(
                &[("x-goog-api-key", "k"), ("x-goog-fieldmask", "places.displayName,places.location.latitude")],
                body,
            ),
        );
        let v = json(&masked);
        let keys: Vec<&str> = v["places"][0].as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["displayName", "location"]);

        let status = |stats: &mut Stats, h: &[(&str, &str)], b: &str| handle(g, stats, &post(h, b)).status;
        let both = [("x-goog-api-key", "k"), ("x-goog-fieldmask", "*")];
        assert_eq!(status(&mut stats, &[("x-goog-fieldmask", "*")], body), 403);
        assert_eq!(status(&mut stats, &[("x-goog-api-key", "k")], body), 400);
        assert_eq!(status(&mut stats, &both, "not json"), 400);
        assert_eq!(status(&mut stats, &both, &body.replace("10000", "50001")), 400);
        assert_eq!(status(&mut stats, &both, &body.replace("10000", "0")), 400);
        assert_eq!(status(&mut stats, &both, &body.replace(": 5", ": 21")), 400);
        assert_eq!(status(&mut stats, &both, &body.replace(": 5", ": 0")), 400);
        assert_eq!(status(&mut stats, &both, r#"{"maxResultCount": 5}"#), 400);
        let denied = json(&handle(g, &mut stats, &post(&[], body)));
        assert_eq!(denied["error"]["code"], 403);
        assert_eq!(denied["error"]["status"], "PERMISSION_DENIED");

        let pacific = body.replace("34.068930", "0").replace("-118.445127", "-150");
        let empty = handle(g, &mut stats, &post(&both, &pacific));
        assert_eq!((empty.status, empty.body.as_slice()), (200, &b"{}"[..]));
        assert_eq!(stats, Stats { legacy: 0, new: 12, connections: 0 });
    }

    #[test]
    fn stats_and_not_found() {
        let g = gazetteer();
        let mut stats = Stats { legacy: 2, new: 3, connections: 7 };
        let r = handle(g, &mut stats, &get("/__stats"));
        assert_eq!(
            String::from_utf8(r.body).unwrap(),
            "{\n   \"requests\" : 5,\n   \"legacy\" : 2,\n   \"new\" : 3,\n   \"connections\" : 7\n}"
        );
        assert_eq!(handle(g, &mut stats, &get("/nope")).status, 404);
        assert_eq!(handle(g, &mut stats, &post(&[], "{}")).endpoint, Endpoint::New);
        let mut wrong_method = get(NEW_PATH);
        wrong_method.method = "GET".into();
        assert_eq!(handle(g, &mut stats, &wrong_method).status, 404);
        assert_eq!(stats, Stats { legacy: 2, new: 4, connections: 7 });
    }

    #[test]
    fn query_decoding_and_redaction() {
        assert_eq!(percent_decode("%2B34.5%2c-118+x%zz%4"), "+34.5,-118 x%zz%4");
        assert_eq!(parse_lat_lng("+34.5,-118"), Some((34.5, -118.0)));
        assert_eq!(parse_lat_lng(" 34.5 , -118 "), Some((34.5, -118.0)));
        assert_eq!(parse_lat_lng("34.5"), None);
        assert_eq!(parse_lat_lng("34.5,-181"), None);
        assert_eq!(
            redact_target("/p?location=1,2&key=SECRET&k%65y=SECRET2&radius=5"),
            "/p?location=1,2&key=REDACTED&k%65y=REDACTED&radius=5"
        );
        assert!(!redact_target("/p?KEY=SECRET").contains("SECRET"));
        assert_eq!(redact_target("/p\n"), "/p\\n");
    }
}

#[cfg(test)]
mod timing {
    use super::*;

    /// Where the time of one legacy request goes (index, JSON values, gjson text). Run with
    /// `cargo test --release --lib api_timing -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn api_timing() {
        let g = Gazetteer::embedded().unwrap();
        let mut stats = Stats::default();
        let req = Request {
            method: "GET".into(),
            target: format!("{LEGACY_PATH}?location=34.068930,-118.445127&radius=10000&key=k"),
            minor_version: 1,
            headers: vec![],
            body: vec![],
        };
        let n = 5_000;
        let t = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(handle(&g, &mut stats, &req));
        }
        println!("legacy handle: {:?} per request", t.elapsed() / n);
        let t = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(g.nearby(34.068930, -118.445127, 10_000.0, 20));
        }
        println!("index only: {:?} per query", t.elapsed() / n);
        let hits = g.nearby(34.068930, -118.445127, 10_000.0, 20);
        let t = std::time::Instant::now();
        for _ in 0..n {
            let v: Vec<Value> = hits.iter().map(|h| legacy_result(h.row, &g.place(h.row))).collect();
            std::hint::black_box(v);
        }
        println!("build the result values (and drop them): {:?}", t.elapsed() / n);
        let v: Vec<Value> = hits.iter().map(|h| legacy_result(h.row, &g.place(h.row))).collect();
        let value = json!({"html_attributions": [], "results": v, "status": "OK"});
        let t = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(crate::gjson::to_vec(&value));
        }
        println!("gjson: {:?} ({} bytes)", t.elapsed() / n, crate::gjson::to_vec(&value).len());
        let t = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(serde_json::to_vec_pretty(&value).unwrap());
        }
        println!("serde_json pretty: {:?}", t.elapsed() / n);
    }
}
