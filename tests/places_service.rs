//! End-to-end tests of `herd places`: the real binary on a loopback port, spoken to over real TLS by a
//! blocking rustls client that trusts the CA the service wrote.
//!
//! The service logs at `info` into `stderr-N.log` in each test's temporary directory; set
//! `HERD_TEST_RUST_LOG` (for example `debug,herd=trace`) to change that level.

use herd::places_service::haversine_m;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use serde_json::Value;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const KEY: &str = "test-key-NEVER-LOGGED-7f3a";
const UCLA: &str = "location=34.068930,-118.445127";
const LEGACY: &str = "/maps/api/place/nearbysearch/json";

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let dir = std::env::temp_dir().join(format!("herd-places-{tag}-{}-{nanos}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A running `herd places`, killed on drop.
struct Service {
    child: Child,
    port: u16,
    ca_pem: PathBuf,
    log: PathBuf,
}

impl Service {
    /// Starts the binary with `--ca-out DIR/ca.pem` plus `extra`, and waits for its listening line.
    fn start(dir: &Path, extra: &[&str]) -> Service {
        let ca_pem = dir.join("run/ca.pem");
        let log = unique_log(dir);
        let mut child = Command::new(env!("CARGO_BIN_EXE_herd"))
            .args(["places", "--listen", "127.0.0.1:0", "--ca-out"])
            .arg(&ca_pem)
            .args(extra)
            .env("RUST_LOG", std::env::var("HERD_TEST_RUST_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn herd");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let Some(addr) = line.trim_end().strip_prefix("places listening on ") else {
            let _ = child.kill();
            panic!("no listening line: {line:?}; stderr:\n{}", fs::read_to_string(&log).unwrap_or_default());
        };
        let port = addr.strip_prefix("127.0.0.1:").expect("127.0.0.1:PORT").parse().unwrap();
        Service { child, port, ca_pem, log }
    }

    fn config(&self) -> Arc<ClientConfig> {
        client_config(&self.ca_pem)
    }

    fn connect(&self) -> Client {
        connect(self.port, self.config(), "localhost").expect("TLS connect")
    }

    /// One request on a fresh connection.
    fn call(&self, method: &str, target: &str, headers: &[(&str, &str)], body: &str) -> Response {
        let mut tls = self.connect();
        send(&mut tls, method, target, headers, body);
        read_response(&mut tls).expect("response")
    }

    fn get(&self, target: &str) -> Response {
        self.call("GET", target, &[], "")
    }

    fn stats(&self) -> Value {
        self.get("/__stats").json()
    }

    /// SIGTERM, then the exit status and how long it took.
    fn terminate(mut self) -> (ExitStatus, Duration) {
        let t = Instant::now();
        // SAFETY: signalling our own child process.
        assert_eq!(unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) }, 0);
        let status = self.child.wait().unwrap();
        (status, t.elapsed())
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `DIR/stderr-N.log` for the first N not taken (one log per start of the service).
fn unique_log(dir: &Path) -> PathBuf {
    (0..).map(|n| dir.join(format!("stderr-{n}.log"))).find(|p| !p.exists()).unwrap()
}

/// A blocking TLS client connection and the bytes read past the last response.
struct Client {
    tls: StreamOwned<ClientConnection, TcpStream>,
    buf: Vec<u8>,
}

fn client_config(ca_pem: &Path) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_pem).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Connects and completes the handshake (so certificate errors show up here).
fn connect(port: u16, config: Arc<ClientConfig>, name: &str) -> io::Result<Client> {
    let sock = TcpStream::connect(("127.0.0.1", port))?;
    sock.set_read_timeout(Some(Duration::from_secs(20)))?;
    sock.set_nodelay(true)?;
    let conn = ClientConnection::new(config, ServerName::try_from(name.to_string()).unwrap()).unwrap();
    let mut tls = StreamOwned::new(conn, sock);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    assert_eq!(tls.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    Ok(Client { tls, buf: Vec::new() })
}

fn request_bytes(method: &str, target: &str, headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: localhost\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    if method == "POST" {
        req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    req.into_bytes()
}

fn send(tls: &mut Client, method: &str, target: &str, headers: &[(&str, &str)], body: &str) {
    tls.write_all(&request_bytes(method, target, headers, body)).unwrap();
    tls.flush().unwrap();
}

#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Number of chunks when the body was chunked.
    chunks: Option<usize>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// What a failed read got before failing.
#[derive(Debug)]
struct Partial {
    error: io::Error,
    status: Option<u16>,
    content_length: Option<usize>,
    body_bytes: usize,
}

impl Client {
    fn fill(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 4096];
        let n = self.tls.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "clean EOF"));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    fn line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf[..i].to_vec();
                self.buf.drain(..i + 2);
                return Ok(line);
            }
            self.fill()?;
        }
    }

    fn exact(&mut self, n: usize) -> io::Result<Vec<u8>> {
        while self.buf.len() < n {
            self.fill()?;
        }
        Ok(self.buf.drain(..n).collect())
    }
}

/// Reads what was buffered by an earlier response read first (pipelined responses can arrive in one
/// read), then the TLS stream.
impl Read for Client {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.buf.is_empty() {
            return self.tls.read(out);
        }
        let n = out.len().min(self.buf.len());
        out[..n].copy_from_slice(&self.buf[..n]);
        self.buf.drain(..n);
        Ok(n)
    }
}

impl Write for Client {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.tls.write(data)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tls.flush()
    }
}

/// Reads one response: Content-Length or chunked body.
fn read_response(r: &mut Client) -> Result<Response, Partial> {
    let mut partial = Partial { error: io::Error::other("none"), status: None, content_length: None, body_bytes: 0 };
    let fail = |mut p: Partial, e: io::Error, r: &Client| {
        p.error = e;
        p.body_bytes += r.buf.len();
        p
    };
    let head = loop {
        if let Some(i) = r.buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break r.buf.drain(..i + 4).collect::<Vec<u8>>();
        }
        if let Err(e) = r.fill() {
            return Err(fail(partial, e, r));
        }
    };
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut parsed = httparse::Response::new(&mut headers);
    assert!(parsed.parse(&head).unwrap().is_complete());
    let status = parsed.code.unwrap();
    let headers: Vec<(String, String)> =
        parsed.headers.iter().map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned())).collect();
    partial.status = Some(status);
    let find = |name: &str| headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone());
    if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut body = Vec::new();
        let mut chunks = 0;
        loop {
            let size = match r.line() {
                Ok(line) => usize::from_str_radix(std::str::from_utf8(&line).unwrap(), 16).unwrap(),
                Err(e) => {
                    partial.body_bytes = body.len();
                    return Err(fail(partial, e, r));
                }
            };
            if size == 0 {
                let trailer = r.line().map_err(|e| fail(Partial { body_bytes: body.len(), ..partial }, e, r))?;
                assert!(trailer.is_empty());
                return Ok(Response { status, headers, body, chunks: Some(chunks) });
            }
            chunks += 1;
            match r.exact(size + 2) {
                Ok(data) => body.extend_from_slice(&data[..size]),
                Err(e) => {
                    partial.body_bytes = body.len();
                    return Err(fail(partial, e, r));
                }
            }
        }
    }
    let length: usize = find("content-length").expect("Content-Length").parse().unwrap();
    partial.content_length = Some(length);
    match r.exact(length) {
        Ok(body) => Ok(Response { status, headers, body, chunks: None }),
        Err(e) => Err(fail(partial, e, r)),
    }
}

fn legacy_url(params: &str) -> String {
    format!("{LEGACY}?{params}")
}

fn coordinates(result: &Value) -> (f64, f64) {
    let loc = &result["geometry"]["location"];
    (loc["lat"].as_f64().unwrap(), loc["lng"].as_f64().unwrap())
}

fn new_body(lat: f64, lng: f64, radius: f64, max: Option<u32>) -> String {
    let max = max.map(|m| format!("\"maxResultCount\": {m}, ")).unwrap_or_default();
    format!(
        r#"{{{max}"locationRestriction": {{"circle": {{"center": {{"latitude": {lat}, "longitude": {lng}}}, "radius": {radius}}}}}}}"#
    )
}

/// Checks a legacy OK reply: within `radius` of (lat, lng), nearest first, at most 20.
fn check_legacy_ok(value: &Value, lat: f64, lng: f64, radius: f64) -> Vec<f64> {
    assert_eq!(value["status"], "OK", "{value}");
    let results = value["results"].as_array().unwrap();
    assert!(!results.is_empty() && results.len() <= 20, "{} results", results.len());
    let distances: Vec<f64> = results
        .iter()
        .map(|r| {
            let (a, b) = coordinates(r);
            haversine_m(lat, lng, a, b)
        })
        .collect();
    assert!(distances.iter().all(|&d| d <= radius), "{distances:?}");
    assert!(distances.windows(2).all(|w| w[0] <= w[1]), "not nearest first: {distances:?}");
    distances
}

#[test]
fn legacy_ok_near_los_angeles() {
    let dir = TempDir::new("legacy");
    let svc = Service::start(&dir.0, &[]);
    let r = svc.get(&legacy_url(&format!("{UCLA}&radius=10000&key={KEY}")));
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("application/json"));
    assert_eq!(r.header("content-length").unwrap(), r.body.len().to_string());
    assert!(r.text().starts_with("{\n   \"html_attributions\" : [],\n   \"results\" : [\n"), "{}", r.text());
    let v = r.json();
    check_legacy_ok(&v, 34.068930, -118.445127, 10_000.0);
    let results = v["results"].as_array().unwrap();
    assert!(results.len() >= 10, "{} places", results.len());
    assert_eq!(results[0]["name"], "Bel Air");
    let names: Vec<&str> = results.iter().map(|r| r["name"].as_str().unwrap()).collect();
    for expected in ["Westwood", "Brentwood", "Century City"] {
        assert!(names.contains(&expected), "{names:?}");
    }
    for result in results {
        assert!(result["vicinity"].as_str().unwrap().contains("Los Angeles County"), "{result}");
        let keys: Vec<&str> = result.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["geometry", "name", "place_id", "reference", "scope", "types", "vicinity"]);
        assert_eq!(result["types"], serde_json::json!(["locality", "political"]));
        assert!(result["place_id"].as_str().unwrap().starts_with("GN"));
    }
    // %2B / %2C encodings give the same answer.
    let encoded = svc.get(&legacy_url(&format!("location=%2B34.068930%2C-118.445127&radius=10000&key={KEY}")));
    assert_eq!(encoded.body, r.body);
    // The key never reaches the log.
    let log = svc.log_text();
    assert!(log.contains("key=REDACTED"), "{log}");
    assert!(!log.contains(KEY), "{log}");
}

#[test]
fn legacy_statuses_zero_denied_invalid_and_radius_clamp() {
    let dir = TempDir::new("statuses");
    let svc = Service::start(&dir.0, &[]);
    // Mid-Pacific: nothing within 50 km.
    let v = svc.get(&legacy_url(&format!("location=0,-150&radius=50000&key={KEY}"))).json();
    assert_eq!(v["status"], "ZERO_RESULTS");
    assert_eq!(v["results"], serde_json::json!([]));

    let denied = "{\n   \"error_message\" : \"You must use an API key to authenticate each request to Google Maps Platform APIs.\",\n   \"html_attributions\" : [],\n   \"results\" : [],\n   \"status\" : \"REQUEST_DENIED\"\n}";
    for target in [legacy_url(&format!("{UCLA}&radius=10000")), legacy_url(&format!("{UCLA}&radius=10000&key="))] {
        let r = svc.get(&target);
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), denied);
    }

    for bad in ["location=abc", "location=91,0", "location=34.0", "location=34,-200", "radius=5"] {
        let params =
            if bad.starts_with("radius") { format!("{bad}&key={KEY}") } else { format!("{bad}&radius=1000&key={KEY}") };
        let v = svc.get(&legacy_url(&params)).json();
        assert_eq!(v["status"], "INVALID_REQUEST", "{bad}: {v}");
        assert_eq!(v["results"], serde_json::json!([]));
    }
    for bad in ["0", "-10", "abc", ""] {
        let v = svc.get(&legacy_url(&format!("{UCLA}&radius={bad}&key={KEY}"))).json();
        assert_eq!(v["status"], "INVALID_REQUEST", "radius {bad:?}");
    }

    // A radius above 50 km is clamped to 50 km.
    let huge = svc.get(&legacy_url(&format!("{UCLA}&radius=2000000&key={KEY}")));
    let max = svc.get(&legacy_url(&format!("{UCLA}&radius=50000&key={KEY}")));
    assert_eq!(huge.body, max.body);
    let d = check_legacy_ok(&huge.json(), 34.068930, -118.445127, 50_000.0);
    assert_eq!(d.len(), 20);
    // Far from any place but within 50 km of some: every one within 50 km, not the 2,000 km asked for.
    let sparse = svc.get(&legacy_url(&format!("location=36.5,-117.0&radius=2000000&key={KEY}"))).json();
    if sparse["status"] == "OK" {
        check_legacy_ok(&sparse, 36.5, -117.0, 50_000.0);
    }
}

#[test]
fn new_endpoint() {
    let dir = TempDir::new("new");
    let svc = Service::start(&dir.0, &[]);
    let headers = [("X-Goog-Api-Key", KEY), ("X-Goog-FieldMask", "*")];
    let body = new_body(34.068930, -118.445127, 10_000.0, Some(5));
    let r = svc.call("POST", "/v1/places:searchNearby", &headers, &body);
    assert_eq!(r.status, 200);
    let v = r.json();
    let places = v["places"].as_array().unwrap();
    assert_eq!(places.len(), 5);
    let mut last = 0.0;
    for p in places {
        let keys: Vec<&str> = p.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["id", "displayName", "location", "types", "formattedAddress", "shortFormattedAddress"]);
        assert_eq!(p["displayName"]["languageCode"], "en");
        let d = haversine_m(
            34.068930,
            -118.445127,
            p["location"]["latitude"].as_f64().unwrap(),
            p["location"]["longitude"].as_f64().unwrap(),
        );
        assert!(d <= 10_000.0 && d >= last, "{d} after {last}");
        last = d;
    }
    assert_eq!(places[0]["displayName"]["text"], "Bel Air");

    // The same places as the legacy endpoint, in the same order.
    let legacy = svc.get(&legacy_url(&format!("{UCLA}&radius=10000&key={KEY}"))).json();
    for (p, l) in places.iter().zip(legacy["results"].as_array().unwrap()) {
        assert_eq!(p["id"], l["place_id"]);
    }

    // Default maxResultCount is 20 (more than 20 places within 50 km); the field mask limits the fields.
    let r = svc.call(
        "POST",
        "/v1/places:searchNearby",
        &[("X-Goog-Api-Key", KEY), ("X-Goog-FieldMask", "places.displayName,places.id")],
        &new_body(34.068930, -118.445127, 50_000.0, None),
    );
    let v = r.json();
    assert_eq!(v["places"].as_array().unwrap().len(), 20);
    let keys: Vec<&str> = v["places"][0].as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["id", "displayName"]);

    // Nothing within the radius: {}.
    let r = svc.call("POST", "/v1/places:searchNearby", &headers, &new_body(0.0, -150.0, 50_000.0, Some(5)));
    assert_eq!((r.status, r.text()), (200, "{}"));

    // Errors in Google's shape.
    let r = svc.call("POST", "/v1/places:searchNearby", &[("X-Goog-FieldMask", "*")], &body);
    assert_eq!(r.status, 403);
    let v = r.json();
    assert_eq!(v["error"]["code"], 403);
    assert_eq!(v["error"]["status"], "PERMISSION_DENIED");
    let r = svc.call("POST", "/v1/places:searchNearby", &[("X-Goog-Api-Key", KEY)], &body);
    assert_eq!((r.status, r.json()["error"]["status"].as_str().unwrap()), (400, "INVALID_ARGUMENT"));
    for bad in [
        new_body(34.0, -118.0, 50_001.0, Some(5)),
        new_body(34.0, -118.0, 0.0, Some(5)),
        new_body(34.0, -118.0, 1000.0, Some(21)),
        new_body(34.0, -118.0, 1000.0, Some(0)),
        "{not json".to_string(),
    ] {
        let r = svc.call("POST", "/v1/places:searchNearby", &headers, &bad);
        assert_eq!(r.status, 400, "{bad}");
        assert_eq!(r.json()["error"]["status"], "INVALID_ARGUMENT");
    }
    assert!(!svc.log_text().contains(KEY));
}

#[test]
fn unknown_paths_are_404() {
    let dir = TempDir::new("404");
    let svc = Service::start(&dir.0, &[]);
    assert_eq!(svc.get("/").status, 404);
    assert_eq!(svc.get("/maps/api/place/textsearch/json?query=x").status, 404);
    assert_eq!(svc.call("POST", LEGACY, &[], "{}").status, 404);
    assert_eq!(svc.get("/v1/places:searchNearby").status, 404);
}

#[test]
fn stats_count_places_requests_and_keep_alive_pipelining_works() {
    let dir = TempDir::new("stats");
    let svc = Service::start(&dir.0, &[]);
    // Each `stats()` is a connection of its own, counted with the others.
    assert_eq!(svc.stats(), serde_json::json!({"requests": 0, "legacy": 0, "new": 0, "connections": 1}));
    // Three legacy requests pipelined in one write on one connection, then a new one and a 404.
    let mut tls = svc.connect();
    let mut batch = Vec::new();
    for radius in ["1000", "5000", "10000"] {
        batch.extend(request_bytes("GET", &legacy_url(&format!("{UCLA}&radius={radius}&key={KEY}")), &[], ""));
    }
    tls.write_all(&batch).unwrap();
    let counts: Vec<usize> = (0..3)
        .map(|_| {
            let r = read_response(&mut tls).unwrap_or_else(|p| panic!("{p:?}\n{}", svc.log_text()));
            r.json()["results"].as_array().unwrap().len()
        })
        .collect();
    assert!(counts[0] <= counts[1] && counts[1] <= counts[2], "{counts:?}");
    send(
        &mut tls,
        "POST",
        "/v1/places:searchNearby",
        &[("X-Goog-Api-Key", KEY), ("X-Goog-FieldMask", "*")],
        &new_body(48.85, 2.35, 5000.0, Some(3)),
    );
    assert_eq!(read_response(&mut tls).unwrap().json()["places"].as_array().unwrap().len(), 3);
    send(&mut tls, "GET", "/elsewhere", &[], "");
    assert_eq!(read_response(&mut tls).unwrap().status, 404);
    // Five requests on one connection: three in all, with the two `stats()` connections.
    assert_eq!(svc.stats(), serde_json::json!({"requests": 4, "legacy": 3, "new": 1, "connections": 3}));
    // Connection: close is honoured.
    send(&mut tls, "GET", "/__stats", &[("Connection", "close")], "");
    let r = read_response(&mut tls).unwrap();
    assert_eq!(r.header("connection"), Some("close"));
    let mut rest = Vec::new();
    assert_eq!(tls.read_to_end(&mut rest).unwrap(), 0, "clean close_notify and EOF");
}

#[test]
fn chunked_mode() {
    let dir = TempDir::new("chunked");
    let svc = Service::start(&dir.0, &["--chunked"]);
    let mut tls = svc.connect();
    for _ in 0..2 {
        send(&mut tls, "GET", &legacy_url(&format!("{UCLA}&radius=10000&key={KEY}")), &[], "");
        let r = read_response(&mut tls).unwrap();
        assert_eq!(r.header("transfer-encoding"), Some("chunked"));
        assert!(r.header("content-length").is_none());
        assert!(r.chunks.unwrap() >= 3, "{:?} chunks", r.chunks);
        check_legacy_ok(&r.json(), 34.068930, -118.445127, 10_000.0);
    }
    let r = svc.call(
        "POST",
        "/v1/places:searchNearby",
        &[("X-Goog-Api-Key", KEY), ("X-Goog-FieldMask", "*")],
        &new_body(0.0, -150.0, 1000.0, None),
    );
    assert_eq!(r.text(), "{}");
    assert!(r.chunks.unwrap() >= 1);
}

#[test]
fn fault_delay_does_not_block_the_loop() {
    let dir = TempDir::new("delay");
    let svc = Service::start(&dir.0, &["--fault", "delay=700"]);
    let mut slow = svc.connect();
    let t = Instant::now();
    send(&mut slow, "GET", &legacy_url(&format!("{UCLA}&radius=10000&key={KEY}")), &[], "");
    // Meanwhile another connection is served at once (stats are not delayed).
    let stats = svc.stats();
    let quick = t.elapsed();
    assert_eq!(stats["legacy"], 1);
    let r = read_response(&mut slow).unwrap();
    let slow_took = t.elapsed();
    assert_eq!(r.json()["status"], "OK");
    assert!(slow_took >= Duration::from_millis(700), "{slow_took:?}");
    assert!(quick < Duration::from_millis(700), "stats took {quick:?}");
}

#[test]
fn fault_reset_breaks_the_body() {
    let dir = TempDir::new("reset");
    let svc = Service::start(&dir.0, &["--fault", "reset"]);
    let mut tls = svc.connect();
    send(&mut tls, "GET", &legacy_url(&format!("{UCLA}&radius=10000&key={KEY}")), &[], "");
    let partial = read_response(&mut tls).expect_err("the body must not arrive whole");
    assert_eq!(partial.status, Some(200), "the head arrives: {partial:?}");
    let length = partial.content_length.unwrap();
    assert!(partial.body_bytes > 0 && partial.body_bytes < length, "{partial:?}");
    assert_eq!(partial.error.kind(), io::ErrorKind::ConnectionReset, "{partial:?}");
    // The service lives on.
    assert_eq!(svc.stats()["legacy"], 1);
}

#[test]
fn fault_http500_and_badjson() {
    let dir = TempDir::new("500");
    let svc = Service::start(&dir.0, &["--fault", "http500"]);
    let r = svc.get(&legacy_url(&format!("{UCLA}&radius=10000&key={KEY}")));
    assert_eq!(r.status, 500);
    assert_eq!(r.json()["error"]["code"], 500);
    let r = svc.call(
        "POST",
        "/v1/places:searchNearby",
        &[("X-Goog-Api-Key", KEY), ("X-Goog-FieldMask", "*")],
        &new_body(34.0, -118.0, 1000.0, None),
    );
    assert_eq!(r.status, 500);
    assert_eq!(svc.get("/__stats").status, 200, "stats are not faulted");
    drop(svc);

    let svc = Service::start(&dir.0, &["--fault", "badjson"]);
    let r = svc.get(&legacy_url(&format!("{UCLA}&radius=10000&key={KEY}")));
    assert_eq!(r.status, 200);
    assert!(serde_json::from_slice::<Value>(&r.body).is_err(), "{}", r.text());
    svc.stats();
}

#[test]
fn fault_wrongname_is_refused_by_a_verifying_client() {
    let dir = TempDir::new("wrongname");
    let svc = Service::start(&dir.0, &["--fault", "wrongname"]);
    let err = connect(svc.port, svc.config(), "localhost").err().expect("must be refused");
    let text = err.to_string();
    assert!(text.contains("NotValidForName") || text.contains("not valid for name"), "{text}");
    // Same CA, other name: the certificate itself is fine, only the name is wrong.
    let mut tls = connect(svc.port, svc.config(), "wrong.invalid").unwrap();
    send(&mut tls, "GET", "/__stats", &[], "");
    assert_eq!(read_response(&mut tls).unwrap().status, 200);
}

#[test]
fn fault_trickle_sends_one_byte_at_a_time() {
    let dir = TempDir::new("trickle");
    let svc = Service::start(&dir.0, &["--fault", "trickle=2"]);
    let mut tls = svc.connect();
    let t = Instant::now();
    // No key: the short REQUEST_DENIED reply.
    send(&mut tls, "GET", &legacy_url(UCLA), &[("Connection", "close")], "");
    let mut received = Vec::new();
    let mut reads = 0;
    let mut chunk = [0u8; 4096];
    loop {
        let n = tls.read(&mut chunk).unwrap();
        if n == 0 {
            break;
        }
        reads += 1;
        received.extend_from_slice(&chunk[..n]);
    }
    let took = t.elapsed();
    let text = String::from_utf8(received).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n") && text.ends_with("\"REQUEST_DENIED\"\n}"), "{text}");
    let bytes = text.len() as u32;
    assert!(took >= Duration::from_millis(2) * (bytes - 1), "{bytes} bytes in {took:?}");
    assert!(reads > bytes as usize / 4, "{reads} reads for {bytes} bytes");
}

#[test]
fn idle_connections_are_closed() {
    let dir = TempDir::new("idle");
    let svc = Service::start(&dir.0, &["--idle-timeout", "300"]);
    let mut tls = svc.connect();
    send(&mut tls, "GET", "/__stats", &[], "");
    read_response(&mut tls).unwrap();
    let t = Instant::now();
    let mut rest = Vec::new();
    let n = tls.read_to_end(&mut rest).unwrap();
    assert_eq!(n, 0);
    assert!(t.elapsed() >= Duration::from_millis(250), "{:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

#[test]
fn restart_reuses_the_ca_and_sigterm_exits_cleanly() {
    let dir = TempDir::new("restart");
    let first = Service::start(&dir.0, &[]);
    let ca_pem = first.ca_pem.clone();
    let pem = fs::read(&ca_pem).unwrap();
    let key = dir.0.join("run/ca.pem.key");
    assert_eq!(fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    let trusted = first.config(); // a client that read the CA once
    assert_eq!(first.stats()["requests"], 0);
    let (status, took) = first.terminate();
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");

    let second = Service::start(&dir.0, &[]);
    assert_eq!(fs::read(&ca_pem).unwrap(), pem, "same CA PEM bytes");
    assert_eq!(fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    let mut tls = connect(second.port, trusted, "localhost").expect("the old trust still works");
    send(&mut tls, "GET", "/__stats", &[], "");
    assert_eq!(read_response(&mut tls).unwrap().status, 200);
    // SIGTERM with an idle keep-alive connection open still exits at once.
    let (status, took) = second.terminate();
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
}

#[test]
fn port_in_use_and_bad_arguments_exit_2_with_one_line() {
    let dir = TempDir::new("exit2");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_herd")).arg("places").args(args).output().unwrap();
        let stderr = String::from_utf8(out.stderr).unwrap();
        (out.status.code(), out.stdout.is_empty(), stderr)
    };
    let ca = dir.0.join("ca.pem");
    let ca = ca.to_str().unwrap();
    let listen = format!("127.0.0.1:{port}");
    for args in [
        vec!["--listen", listen.as_str(), "--ca-out", ca],
        vec!["--listen", "127.0.0.1:0"],
        vec!["--listen", "127.0.0.1:0", "--ca-out", ca, "--fault", "meteor"],
        vec!["--listen", "127.0.0.1:0", "--ca-out", "/proc/self/nope/ca.pem"],
    ] {
        let (code, no_stdout, stderr) = run(&args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(no_stdout, "{args:?}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
    }
    assert!(!Path::new(ca).exists(), "nothing half-started when the port is in use");
}

#[test]
fn a_port_in_use_exits_2_with_one_line() {
    let dir = TempDir::new("inuse");
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = holder.local_addr().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_herd"))
        .args(["places", "--listen", &addr.to_string(), "--ca-out"])
        .arg(dir.0.join("ca.pem"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn herd");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("herd places kept running on a port in use");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(status.code(), Some(2), "{err}");
    let want = format!("herd places: cannot listen on {addr}: ");
    assert!(err.starts_with(&want) && err.lines().count() == 1, "{err}");
    drop(holder);
}
