//! The herd protocol subset on tokio, written for benches/compare.
//!
//!     herd-tokio NAME [--config FILE] [--current-thread]
//!
//! Same config file as herd. Idiomatic tokio: one task per client connection, handling its commands in
//! arrival order (so pipelined replies leave in order); one task per incoming peer link; one task per
//! neighbour keeping an outgoing link up, fed by a `broadcast` channel of stored records. Records live
//! in a `Mutex<HashMap>`; a store and its broadcast happen under the lock, so a link that subscribes and
//! then snapshots the table (anti-entropy) misses nothing. WHATSAT asks the legacy Nearby Search endpoint
//! with `reqwest` (keep-alive pool, rustls) behind a TTL cache.
//!
//! Not here (herd has them): peer TLS and secrets, journal, admin port, logs, record retention, limits
//! on clients and buffers, request coalescing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

/// A stored record: the ordering key (client time as trimmed decimal digits: integer length, integer,
/// fraction; then server name and location) and the AT line itself.
#[derive(Clone)]
struct Record {
    key: (usize, Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>),
    line: Arc<[u8]>,
}

/// A record on its way to the neighbours, with the neighbour it came from (not sent back there).
#[derive(Clone)]
struct Flood {
    from: Option<String>,
    line: Arc<[u8]>,
}

/// Places answers by (location text, radius in metres), with the instant each one expires.
type Cache = HashMap<(Vec<u8>, String), (Instant, Value)>;

struct Places {
    http: reqwest::Client,
    url: String,
    key: Option<String>,
    ttl: Duration,
}

struct Shared {
    name: String,
    names: Vec<String>,
    neighbours: Vec<String>,
    max_line: usize,
    max_skew: u64,
    records: Mutex<HashMap<Vec<u8>, Record>>,
    flood: broadcast::Sender<Flood>,
    places: Option<Places>,
    cache: Mutex<Cache>,
}

// ----- exact decimals -----

/// `DIGITS` or `DIGITS.DIGITS` as (integer digits without leading zeros, fraction without trailing zeros).
fn decimal(s: &[u8]) -> Option<(&[u8], &[u8])> {
    let (int, frac) = match s.iter().position(|&b| b == b'.') {
        Some(p) => (&s[..p], &s[p + 1..]),
        None => (s, &b""[..]),
    };
    let digits = |d: &[u8]| !d.is_empty() && d.iter().all(u8::is_ascii_digit);
    if !digits(int) || (s.contains(&b'.') && !digits(frac)) {
        return None;
    }
    let int = &int[int.iter().position(|&b| b != b'0').unwrap_or(int.len())..];
    let frac = &frac[..frac.iter().rposition(|&b| b != b'0').map_or(0, |p| p + 1)];
    Some((int, frac))
}

/// `d <= n` for a small integer `n`.
fn at_most((int, frac): (&[u8], &[u8]), n: u64) -> bool {
    let v = if int.len() > 18 { u64::MAX } else { int.iter().fold(0, |v, &b| v * 10 + u64::from(b - b'0')) };
    v < n || (v == n && frac.is_empty())
}

fn is_zero((int, frac): (&[u8], &[u8])) -> bool {
    int.is_empty() && frac.is_empty()
}

/// The client time in nanoseconds (first nine fraction digits) and whether digits beyond the ninth
/// make it a little larger; `None` past 20 integer digits.
fn nanos((int, frac): (&[u8], &[u8])) -> Option<(i128, bool)> {
    if int.len() > 20 {
        return None;
    }
    let secs = int.iter().fold(0i128, |v, &b| v * 10 + i128::from(b - b'0'));
    let ns = (0..9).fold(0i128, |v, i| v * 10 + frac.get(i).map_or(0, |&b| i128::from(b - b'0')));
    Some((secs * 1_000_000_000 + ns, frac.len() > 9))
}

fn now_ns() -> i128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i128)
}

/// Splits `±lat±lng` into its two signed coordinates if both are in range.
fn location(s: &[u8]) -> Option<(&[u8], &[u8])> {
    if s.len() < 4 || s.len() > 64 || !matches!(s[0], b'+' | b'-') {
        return None;
    }
    let split = 1 + s[1..].iter().position(|&b| b == b'+' || b == b'-')?;
    let (lat, lng) = s.split_at(split);
    (at_most(decimal(&lat[1..])?, 90) && at_most(decimal(&lng[1..])?, 180)).then_some((lat, lng))
}

// ----- the herd rules -----

impl Shared {
    fn valid_iamat(&self, client: &[u8], loc: &[u8], time: &[u8]) -> bool {
        let ok_id = (1..=255).contains(&client.len()) && client.iter().all(|&b| b >= 0x20 && b != 0x7f);
        let ok_time = time.len() <= 40
            && decimal(time)
                .and_then(nanos)
                // Digits past the ninth make the exact time a little above `t`.
                .is_some_and(|(t, beyond)| {
                    t + i128::from(beyond) <= now_ns() + i128::from(self.max_skew) * 1_000_000_000
                });
        ok_id && location(loc).is_some() && ok_time
    }

    /// Keeps the record if it is newer than the one held and broadcasts it; true when stored.
    fn store(
        &self,
        client: &[u8],
        server: &[u8],
        loc: &[u8],
        time: &[u8],
        line: Arc<[u8]>,
        from: Option<String>,
    ) -> bool {
        let (int, frac) = decimal(time).expect("validated");
        let key = (int.len(), int.to_vec(), frac.to_vec(), server.to_vec(), loc.to_vec());
        let mut records = self.records.lock().unwrap();
        if records.get(client).is_some_and(|r| r.key >= key) {
            return false;
        }
        records.insert(client.to_vec(), Record { key, line: line.clone() });
        // Under the lock: the broadcast order is the store order. No receiver is fine (no neighbour up).
        let _ = self.flood.send(Flood { from, line });
        true
    }

    /// The reply to one command (without its LF), or `None` for a blank line.
    async fn command(&self, line: &[u8]) -> Option<Vec<u8>> {
        let f: Vec<&[u8]> = line.split(|b| b" \t\r\n\x0b\x0c".contains(b)).filter(|f| !f.is_empty()).collect();
        if f.is_empty() {
            return None;
        }
        if f.len() == 4 && f[0] == b"IAMAT" && self.valid_iamat(f[1], f[2], f[3]) {
            let (t, beyond) = decimal(f[3]).and_then(nanos).expect("validated");
            let mut diff = now_ns() - t;
            if beyond && diff > 0 {
                diff -= 1; // the exact difference is a little smaller; truncate toward zero
            }
            let sign = if diff < 0 { '-' } else { '+' };
            let (s, ns) = (diff.unsigned_abs() / 1_000_000_000, diff.unsigned_abs() % 1_000_000_000);
            let mut at = Vec::with_capacity(line.len() + 40);
            at.extend_from_slice(format!("AT {} {sign}{s}.{ns:09} ", self.name).as_bytes());
            at.extend_from_slice(&[f[1], f[2], f[3]].join(&b' '));
            let line: Arc<[u8]> = at.clone().into();
            self.store(f[1], self.name.as_bytes(), f[2], f[3], line, None);
            at.push(b'\n');
            return Some(at);
        }
        if f.len() == 4 && f[0] == b"WHATSAT" {
            let record = self.records.lock().unwrap().get(f[1]).cloned();
            let radius = decimal(f[2]).filter(|&r| !is_zero(r) && at_most(r, 50));
            let bound = decimal(f[3]).filter(|&(_, frac)| !f[3].contains(&b'.') && frac.is_empty());
            if let (Some(record), Some(radius), Some(bound)) = (record, radius, bound) {
                if at_most(bound, 20) {
                    let bound = bound.0.iter().fold(0usize, |v, &b| v * 10 + usize::from(b - b'0'));
                    let body = self.nearby(&record.key.4, radius, bound).await;
                    let mut reply = record.line.to_vec();
                    reply.push(b'\n');
                    reply.extend_from_slice(&body);
                    reply.extend_from_slice(b"\n\n");
                    return Some(reply);
                }
            }
        }
        let mut reply = b"? ".to_vec();
        reply.extend_from_slice(line);
        reply.push(b'\n');
        Some(reply)
    }

    // ----- Places -----

    async fn nearby(&self, loc: &[u8], (int, frac): (&[u8], &[u8]), bound: usize) -> Vec<u8> {
        // Radius in metres as exact decimal text: km × 1000.
        let mut digits: Vec<u8> = int.to_vec();
        digits.extend((0..3).map(|i| frac.get(i).copied().unwrap_or(b'0')));
        let mut metres = String::from_utf8(digits).unwrap().trim_start_matches('0').to_string();
        if frac.len() > 3 {
            metres = format!(
                "{}.{}",
                if metres.is_empty() { "0" } else { &metres },
                std::str::from_utf8(&frac[3..]).unwrap()
            );
        }
        let key = (loc.to_vec(), metres.clone());
        let cached = self.cache.lock().unwrap().get(&key).filter(|(t, _)| *t > Instant::now()).map(|(_, v)| v.clone());
        let mut answer = match cached {
            Some(answer) => answer,
            None => {
                let answer = self.fetch(loc, &metres).await;
                let status = answer.get("status").and_then(Value::as_str);
                if let (Some(p), Some("OK" | "ZERO_RESULTS")) = (&self.places, status) {
                    self.cache.lock().unwrap().insert(key, (Instant::now() + p.ttl, answer.clone()));
                }
                answer
            }
        };
        if let Some(Value::Array(results)) = answer.get_mut("results") {
            results.truncate(bound);
        }
        let mut text = Vec::new();
        google_json(&mut text, &answer, 0);
        // Runs of LFs collapsed, trailing LFs removed.
        let mut out: Vec<u8> = Vec::with_capacity(text.len());
        for &b in &text {
            if !(b == b'\n' && out.last() == Some(&b'\n')) {
                out.push(b);
            }
        }
        while out.last() == Some(&b'\n') {
            out.pop();
        }
        out
    }

    async fn fetch(&self, loc: &[u8], metres: &str) -> Value {
        let failure = |why: String| serde_json::json!({"html_attributions": [], "results": [], "status": "UNKNOWN_ERROR", "error_message": why});
        let Some(p) = &self.places else { return failure("no places configured".into()) };
        let (lat, lng) = location(loc).expect("stored records are valid");
        let plain = |c: &[u8]| String::from_utf8_lossy(c.strip_prefix(b"+").unwrap_or(c)).into_owned();
        let mut query = vec![("location", format!("{},{}", plain(lat), plain(lng))), ("radius", metres.to_string())];
        if let Some(key) = &p.key {
            query.push(("key", key.clone()));
        }
        let response = match p.http.get(&p.url).query(&query).send().await {
            Ok(r) => r,
            Err(e) => return failure(format!("Places request failed: {}", e.without_url())),
        };
        match response.bytes().await.map(|b| serde_json::from_slice::<Value>(&b)) {
            Ok(Ok(v)) if v.get("status").is_some() => v,
            Ok(_) => failure("Places answered something that is not a Places answer".into()),
            Err(e) => failure(format!("Places request failed: {}", e.without_url())),
        }
    }
}

/// Google's legacy style: three-space indent, `"key" : value`, arrays of scalars inline.
fn google_json(out: &mut Vec<u8>, v: &Value, indent: usize) {
    let pad = |out: &mut Vec<u8>, n: usize| out.resize(out.len() + n, b' ');
    match v {
        Value::Object(m) if m.is_empty() => out.extend_from_slice(b"{}"),
        Value::Object(m) => {
            out.extend_from_slice(b"{\n");
            for (i, (k, x)) in m.iter().enumerate() {
                if i > 0 {
                    out.extend_from_slice(b",\n");
                }
                pad(out, indent + 3);
                google_json(out, &Value::String(k.clone()), 0);
                out.extend_from_slice(b" : ");
                google_json(out, x, indent + 3);
            }
            out.push(b'\n');
            pad(out, indent);
            out.push(b'}');
        }
        Value::Array(a) if a.is_empty() => out.extend_from_slice(b"[]"),
        Value::Array(a) if a.iter().all(|x| !x.is_object() && !x.is_array()) => {
            out.extend_from_slice(b"[ ");
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.extend_from_slice(b", ");
                }
                google_json(out, x, indent);
            }
            out.extend_from_slice(b" ]");
        }
        Value::Array(a) => {
            out.extend_from_slice(b"[\n");
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.extend_from_slice(b",\n");
                }
                pad(out, indent + 3);
                google_json(out, x, indent + 3);
            }
            out.push(b'\n');
            pad(out, indent);
            out.push(b']');
        }
        Value::String(s) => {
            let text = serde_json::to_string(s).unwrap();
            out.extend_from_slice(text.replace('<', "\\u003c").replace('>', "\\u003e").as_bytes());
        }
        other => out.extend_from_slice(other.to_string().as_bytes()),
    }
}

// ----- connections -----

/// Reads one line of at most `max` bytes before its LF into `buf`. `Ok(false)` at EOF and for a line
/// over the limit (a protocol violation: the caller flushes what it owes and closes).
async fn read_line<R: AsyncRead + Unpin>(r: &mut BufReader<R>, buf: &mut Vec<u8>, max: usize) -> std::io::Result<bool> {
    buf.clear();
    let n = (&mut *r).take(max as u64 + 1).read_until(b'\n', buf).await?;
    Ok(n > 0 && (buf.last() == Some(&b'\n') || buf.len() <= max))
}

async fn client_conn(shared: Arc<Shared>, sock: TcpStream) -> std::io::Result<()> {
    sock.set_nodelay(true)?;
    let (r, w) = sock.into_split();
    let (mut r, mut w) = (BufReader::new(r), BufWriter::new(w));
    let mut line = Vec::new();
    while read_line(&mut r, &mut line, shared.max_line).await? {
        let complete = line.last() == Some(&b'\n');
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if let Some(reply) = shared.command(text).await {
            w.write_all(&reply).await?;
        }
        // Pipelined commands already read are answered before one flush.
        if r.buffer().is_empty() {
            w.flush().await?;
        }
        if !complete {
            break;
        }
    }
    w.flush().await?;
    w.shutdown().await
}

async fn peer_conn(shared: Arc<Shared>, sock: TcpStream) -> std::io::Result<()> {
    let mut r = BufReader::new(sock);
    let mut line = Vec::new();
    read_line(&mut r, &mut line, 300).await?;
    let hello = String::from_utf8_lossy(&line).trim().to_string();
    let Some(peer) = hello.strip_prefix("HELLO ").filter(|p| shared.neighbours.iter().any(|n| n == p)) else {
        return Ok(());
    };
    let peer = peer.to_string();
    while read_line(&mut r, &mut line, shared.max_line).await? {
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let f: Vec<&[u8]> = text.split(|&b| b == b' ').collect();
        let known = f.len() == 6 && shared.names.iter().any(|n| n.as_bytes() == f[1]);
        if known && f[0] == b"AT" && shared.valid_iamat(f[3], f[4], f[5]) {
            shared.store(f[3], f[1], f[4], f[5], text.into(), Some(peer.clone()));
        }
    }
    Ok(())
}

/// Keeps one outgoing link to `peer` up: every record first (anti-entropy), then each new one.
async fn dial(shared: Arc<Shared>, peer: String, addr: String) {
    loop {
        if let Ok(sock) = TcpStream::connect(&addr).await {
            let _ = sock.set_nodelay(true);
            let mut rx = shared.flood.subscribe(); // before the snapshot: nothing stored in between is lost
            let mut w = BufWriter::new(sock);
            let result: std::io::Result<()> = async {
                w.write_all(format!("HELLO {}\n", shared.name).as_bytes()).await?;
                loop {
                    let snapshot: Vec<Arc<[u8]>> =
                        shared.records.lock().unwrap().values().map(|r| r.line.clone()).collect();
                    for line in snapshot {
                        w.write_all(&line).await?;
                        w.write_all(b"\n").await?;
                    }
                    w.flush().await?;
                    loop {
                        match rx.recv().await {
                            Ok(f) if f.from.as_deref() != Some(&peer) => {
                                w.write_all(&f.line).await?;
                                w.write_all(b"\n").await?;
                            }
                            Ok(_) => {} // it came from this neighbour
                            Err(broadcast::error::RecvError::Lagged(_)) => break, // resend everything
                            Err(broadcast::error::RecvError::Closed) => return Ok(()),
                        }
                        // One write for a burst, and nothing left behind when the burst ends with a
                        // record that was not for this link.
                        if rx.is_empty() {
                            w.flush().await?;
                        }
                    }
                }
            }
            .await;
            drop(result);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ----- start-up -----

/// One line naming the problem and exit status 2, as herd does for a port in use.
fn fail(e: &dyn std::fmt::Display) -> ! {
    eprintln!("herd-tokio: {e}");
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut config_path = "config/herd.json".to_string();
    let mut name = None;
    let mut current_thread = false;
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--config" => config_path = it.next().expect("--config FILE"),
            "--current-thread" => current_thread = true,
            _ => name = Some(a),
        }
    }
    let name = name.expect("usage: herd-tokio NAME [--config FILE] [--current-thread]");
    let mut rt = if current_thread {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    rt.enable_all().build().expect("runtime").block_on(serve(name, &config_path));
}

async fn serve(name: String, config_path: &str) {
    let config: Value = serde_json::from_slice(&std::fs::read(config_path).expect("config")).expect("config JSON");
    let servers = config["servers"].as_array().expect("servers");
    let server = |n: &str| servers.iter().find(|s| s["name"] == n).expect("server in config");
    let me = server(&name);
    let host = me["host"].as_str().unwrap_or("127.0.0.1").to_string();
    let neighbours: Vec<String> = config["links"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| match (l[0].as_str(), l[1].as_str()) {
            (Some(a), Some(b)) if a == name => Some(b.to_string()),
            (Some(a), Some(b)) if b == name => Some(a.to_string()),
            _ => None,
        })
        .collect();
    let places = config.get("places").map(|p| {
        let mut http =
            reqwest::Client::builder().timeout(Duration::from_millis(p["timeout_ms"].as_u64().unwrap_or(3000)));
        if let Some(ca) = p["ca_file"].as_str() {
            let pem = std::fs::read(ca).expect("places.ca_file");
            http = http.add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("CA PEM"));
        }
        Places {
            http: http.build().expect("HTTP client"),
            url: p["url"].as_str().expect("places.url").to_string(),
            key: p["key_env"].as_str().and_then(|k| std::env::var(k).ok()),
            ttl: Duration::from_secs(p["cache_ttl_s"].as_u64().unwrap_or(300)),
        }
    });
    let limits = &config["limits"];
    let shared = Arc::new(Shared {
        name: name.clone(),
        names: servers.iter().filter_map(|s| s["name"].as_str().map(String::from)).collect(),
        neighbours: neighbours.clone(),
        max_line: limits["max_line"].as_u64().unwrap_or(16384) as usize,
        max_skew: limits["max_clock_skew_s"].as_u64().unwrap_or(300),
        records: Mutex::new(HashMap::new()),
        flood: broadcast::channel(4096).0,
        places,
        cache: Mutex::new(HashMap::new()),
    });
    let clients = TcpListener::bind((host.as_str(), me["port"].as_u64().expect("port") as u16))
        .await
        .unwrap_or_else(|e| fail(&e));
    let peers = TcpListener::bind((host.as_str(), me["peer_port"].as_u64().expect("peer_port") as u16))
        .await
        .unwrap_or_else(|e| fail(&e));
    for n in neighbours {
        let s = server(&n);
        let addr = format!("{}:{}", s["host"].as_str().unwrap_or("127.0.0.1"), s["peer_port"]);
        tokio::spawn(dial(shared.clone(), n, addr));
    }
    let s = shared.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = peers.accept().await {
            tokio::spawn(peer_conn(s.clone(), sock));
        }
    });
    println!("{name} listening on {} (peers on {})", clients.local_addr().unwrap(), me["peer_port"]);
    loop {
        match clients.accept().await {
            Ok((sock, _)) => drop(tokio::spawn(client_conn(shared.clone(), sock))),
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await, // out of descriptors
        }
    }
}
