//! Test harness: real `herd` processes on free loopback ports, plain blocking clients.
//!
//! Every process is waited for by its readiness line on stdout (never a sleep) and killed when its guard
//! drops, so a failing test leaves nothing running. Every socket read has a time-out, so nothing hangs.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
const READY_TIMEOUT: Duration = Duration::from_secs(60);

pub fn herd_bin() -> &'static str {
    env!("CARGO_BIN_EXE_herd")
}

/// A loopback port nobody listens on right now, for a server a test starts.
///
/// Not port 0's choice: that comes from the kernel's ephemeral range (32768-60999 here), where any
/// client socket of a parallel test may take it between this pick and the server's bind. Ports come
/// instead from 25000-32767, each test process walking its own stretch of it (by pid), each one
/// checked free. The shipped configs' ports (10000-14004, 18443-18447, 20000-24004) are never used.
pub fn free_port() -> u16 {
    const LOW: u32 = 25_000;
    const SPAN: u32 = 32_768 - LOW;
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let base = std::process::id().wrapping_mul(2_654_435_761) % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + (base + n) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {LOW}..32768");
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "herd-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running child process, killed (SIGKILL) and reaped on drop.
pub struct Proc {
    pub child: Child,
    pub name: String,
    /// Lines the child printed on stdout after its readiness line.
    pub stdout: mpsc::Receiver<String>,
    pub stderr_lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// The line that said the process was ready.
    pub ready_line: String,
}

impl Proc {
    /// Starts `herd ARGS` and waits until it prints a line containing `ready_marker` on stdout.
    pub fn start(name: &str, args: &[&str], envs: &[(&str, &str)], ready_marker: &str) -> Proc {
        let mut cmd = Command::new(herd_bin());
        cmd.args(args);
        // A token in the developer's environment would turn on the admin token check in every test.
        cmd.env_remove("HERD_ADMIN_TOKEN");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        Self::start_command(name, cmd, ready_marker)
    }

    /// Like `start`, for a command the caller prepared (extra settings such as resource limits).
    pub fn start_command(name: &str, mut cmd: Command, ready_marker: &str) -> Proc {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        if !cmd.get_envs().any(|(k, _)| k == "RUST_LOG") {
            cmd.env("RUST_LOG", "info");
        }
        let mut child = cmd.spawn().expect("spawn herd");
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr_lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = stderr_lines.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let mut proc = Proc { child, name: name.to_string(), stdout: rx, stderr_lines, ready_line: String::new() };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match proc.stdout.recv_timeout(Duration::from_millis(50)) {
                Ok(line) if line.contains(ready_marker) => {
                    proc.ready_line = line;
                    break;
                }
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(status)) = proc.child.try_wait() {
                        panic!("{name} exited before it was ready ({status}): {:?}", proc.stderr());
                    }
                    assert!(Instant::now() < deadline, "{name} not ready in time: {:?}", proc.stderr());
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = proc.child.wait().unwrap();
                    panic!("{name} closed stdout before it was ready ({status}): {:?}", proc.stderr());
                }
            }
        }
        proc
    }

    pub fn stderr(&self) -> Vec<String> {
        self.stderr_lines.lock().unwrap().clone()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
    }

    /// Waits for the process to exit, at most `limit`; returns its status (None on time-out).
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One server of a test herd.
#[derive(Clone, Debug)]
pub struct Member {
    pub name: String,
    pub port: u16,
    pub peer_port: u16,
    pub admin_port: u16,
}

/// A herd config written to a scratch directory, with free ports.
pub struct HerdConfig {
    pub dir: TempDir,
    pub path: PathBuf,
    pub members: Vec<Member>,
}

impl HerdConfig {
    /// `names` with `links` (pairs of names); `extra` is spliced into the top-level object (e.g.
    /// `"places": {...}`), or empty.
    pub fn new(names: &[&str], links: &[(&str, &str)], extra: &str) -> HerdConfig {
        let dir = TempDir::new("herd");
        let members: Vec<Member> = names
            .iter()
            .map(|n| Member { name: n.to_string(), port: free_port(), peer_port: free_port(), admin_port: free_port() })
            .collect();
        let servers: Vec<String> = members
            .iter()
            .map(|m| {
                format!(
                    r#"{{"name": "{}", "host": "127.0.0.1", "port": {}, "peer_port": {}, "admin_port": {}}}"#,
                    m.name, m.port, m.peer_port, m.admin_port
                )
            })
            .collect();
        let links: Vec<String> = links.iter().map(|(a, b)| format!(r#"["{a}", "{b}"]"#)).collect();
        let extra = if extra.is_empty() { String::new() } else { format!(",\n{extra}") };
        // `herd up` writes its admin token under run_dir: the scratch directory, never the repository's.
        let text = format!(
            "{{\"servers\": [{}],\n\"links\": [{}],\n\"log_dir\": {:?},\n\"run_dir\": {:?}{extra}}}",
            servers.join(",\n"),
            links.join(", "),
            dir.path().join("logs").to_string_lossy(),
            dir.path().join("run").to_string_lossy()
        );
        let path = dir.path().join("herd.json");
        std::fs::write(&path, text).unwrap();
        HerdConfig { dir, path, members }
    }

    pub fn member(&self, name: &str) -> &Member {
        self.members.iter().find(|m| m.name == name).unwrap_or_else(|| panic!("no member {name}"))
    }

    pub fn port(&self, name: &str) -> u16 {
        self.member(name).port
    }

    /// Starts `herd serve NAME` on this config.
    pub fn serve(&self, name: &str) -> Proc {
        self.serve_env(name, &[])
    }

    pub fn serve_env(&self, name: &str, envs: &[(&str, &str)]) -> Proc {
        Proc::start(name, &["serve", name, "--config", self.path.to_str().unwrap()], envs, " listening on ")
    }

    pub fn log_text(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join("logs").join(format!("{name}.log"))).unwrap_or_default()
    }
}

pub fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// The grader's client: connect, send, half-close, read ONCE. Returns what that single read gave.
pub fn grader(port: u16, bytes: &[u8]) -> Vec<u8> {
    let mut s = connect(port);
    s.write_all(bytes).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    // One read, as the grader does; a signal to this test process (EINTR) is not the server's doing.
    let n = loop {
        match s.read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => break r.expect("read"),
        }
    };
    buf.truncate(n);
    buf
}

/// Connect, send, half-close, read until the server closes.
pub fn ask(port: u16, bytes: &[u8]) -> Vec<u8> {
    let mut s = connect(port);
    s.write_all(bytes).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    read_to_end(&mut s)
}

pub fn read_to_end(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read to end");
    out
}

/// Reads until `out` ends with `suffix` (or fails on time-out / EOF).
pub fn read_until(s: &mut TcpStream, suffix: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    while !out.ends_with(suffix) {
        let n = s.read(&mut buf).expect("read");
        assert!(n > 0, "EOF before {:?}; got {:?}", String::from_utf8_lossy(suffix), String::from_utf8_lossy(&out));
        out.extend_from_slice(&buf[..n]);
    }
    out
}

/// Current Unix time with nanoseconds, as text.
pub fn now_text() -> String {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
}

/// Checks an `AT` reply line against the IAMAT it answers; returns the time difference in seconds.
pub fn check_at(reply: &str, server: &str, id: &str, loc: &str, time: &str) -> f64 {
    let fields: Vec<&str> = reply.strip_suffix('\n').expect("ends in LF").split(' ').collect();
    assert_eq!(fields.len(), 6, "{reply:?}");
    assert_eq!((fields[0], fields[1], fields[3], fields[4], fields[5]), ("AT", server, id, loc, time), "{reply:?}");
    let diff = fields[2];
    assert!(diff.starts_with('+') || diff.starts_with('-'), "{reply:?}");
    let (_, frac) = diff.split_once('.').expect("a point");
    assert_eq!(frac.len(), 9, "{reply:?}");
    diff.parse::<f64>().unwrap()
}

impl Proc {
    /// Waits until `count` stderr lines (in all) contain `needle`.
    pub fn wait_stderr(&self, needle: &str, count: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let n = self.stderr().iter().filter(|l| l.contains(needle)).count();
            if n >= count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: {count}× {needle:?} not seen in time: {:#?}",
                self.name,
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn stderr_count(&self, needle: &str) -> usize {
        self.stderr().iter().filter(|l| l.contains(needle)).count()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl HerdConfig {
    /// The topology of a shipped config (names and links), on fresh free ports.
    pub fn from_shipped(path: &str, extra: &str) -> HerdConfig {
        let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let names: Vec<String> =
            v["servers"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap().to_string()).collect();
        let links: Vec<(String, String)> = v["links"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| (l[0].as_str().unwrap().to_string(), l[1].as_str().unwrap().to_string()))
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let links: Vec<(&str, &str)> = links.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        HerdConfig::new(&names, &links, extra)
    }

    /// The names of `name`'s neighbours.
    pub fn neighbours(&self, name: &str) -> Vec<String> {
        let text = std::fs::read_to_string(&self.path).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let mut out = Vec::new();
        for l in v["links"].as_array().unwrap() {
            let (a, b) = (l[0].as_str().unwrap(), l[1].as_str().unwrap());
            if a == name {
                out.push(b.to_string());
            } else if b == name {
                out.push(a.to_string());
            }
        }
        out
    }

    /// Hop distances from `from` to every server (None when unreachable).
    pub fn hops(&self, from: &str) -> std::collections::HashMap<String, Option<usize>> {
        let mut dist: std::collections::HashMap<String, Option<usize>> =
            self.members.iter().map(|m| (m.name.clone(), None)).collect();
        dist.insert(from.to_string(), Some(0));
        let mut queue = std::collections::VecDeque::from([from.to_string()]);
        while let Some(x) = queue.pop_front() {
            let d = dist[&x].unwrap();
            for n in self.neighbours(&x) {
                if dist[&n].is_none() {
                    dist.insert(n.clone(), Some(d + 1));
                    queue.push_back(n);
                }
            }
        }
        dist
    }
}

/// A running herd: one `herd serve` per member.
pub struct Herd {
    pub config: HerdConfig,
    pub procs: std::collections::HashMap<String, Proc>,
    pub env: Vec<(String, String)>,
}

impl Herd {
    pub fn start(config: HerdConfig) -> Herd {
        Self::start_env(config, &[])
    }

    pub fn start_env(config: HerdConfig, env: &[(&str, &str)]) -> Herd {
        let mut herd = Herd {
            config,
            procs: Default::default(),
            env: env.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(),
        };
        let names: Vec<String> = herd.config.members.iter().map(|m| m.name.clone()).collect();
        for name in &names {
            herd.restart(name);
        }
        herd.wait_linked();
        herd
    }

    /// Starts (or restarts) one member.
    pub fn restart(&mut self, name: &str) {
        let env: Vec<(&str, &str)> = self.env.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        let proc = self.config.serve_env(name, &env);
        self.procs.insert(name.to_string(), proc);
    }

    /// Waits until every running member has linked to each of its running neighbours.
    pub fn wait_linked(&self) {
        for (name, proc) in &self.procs {
            let live = self.config.neighbours(name).into_iter().filter(|n| self.procs.contains_key(n)).count();
            proc.wait_stderr("linked to ", live, Duration::from_secs(10));
        }
    }

    pub fn kill(&mut self, name: &str) {
        if let Some(mut p) = self.procs.remove(name) {
            p.kill();
        }
    }

    pub fn port(&self, name: &str) -> u16 {
        self.config.port(name)
    }
}

/// The first line of a WHATSAT answer from `port` for `id`, or the `?` line.
pub fn whatsat_first_line(port: u16, id: &str) -> String {
    let out = ask(port, format!("WHATSAT {id} 1 0\n").as_bytes());
    let text = String::from_utf8_lossy(&out).to_string();
    text.split('\n').next().unwrap_or("").to_string()
}

/// Polls `port` until its record for `id` equals `want` (an AT line without LF), at most `limit`.
pub fn wait_record(port: u16, id: &str, want: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let got = whatsat_first_line(port, id);
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "port {port}: record for {id} is {got:?}, want {want:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The local Places service, started on a free port with its CA in a scratch directory.
pub struct PlacesService {
    pub proc: Proc,
    pub port: u16,
    pub ca: PathBuf,
    pub dir: TempDir,
}

impl PlacesService {
    pub fn start(extra_args: &[&str]) -> PlacesService {
        let dir = TempDir::new("places");
        Self::start_in(dir, extra_args)
    }

    /// Starts it writing its CA into `dir` (reusing a CA already there).
    pub fn start_in(dir: TempDir, extra_args: &[&str]) -> PlacesService {
        let ca = dir.path().join("ca.pem");
        let mut args = vec!["places", "--listen", "127.0.0.1:0", "--ca-out", ca.to_str().unwrap()];
        args.extend_from_slice(extra_args);
        let proc = Proc::start("places", &args, &[], "listening on");
        let port = proc.ready_line.rsplit(':').next().unwrap().trim().parse().expect("port in the ready line");
        PlacesService { proc, port, ca, dir }
    }

    /// The `places` config object for a herd using this service.
    pub fn config(&self, api: &str, key_env: &str, timeout_ms: u64) -> String {
        let path = if api == "new" { "/v1/places:searchNearby" } else { "/maps/api/place/nearbysearch/json" };
        format!(
            r#""places": {{"api": "{api}", "url": "https://127.0.0.1:{}{path}", "key_env": "{key_env}", "ca_file": {:?}, "timeout_ms": {timeout_ms}}}"#,
            self.port,
            self.ca.to_string_lossy()
        )
    }

    /// Places requests the service has answered so far (from its /__stats endpoint, over TLS).
    pub fn requests(&self) -> u64 {
        self.stat("requests")
    }

    /// Connections the service has accepted so far, this question's own included.
    pub fn connections(&self) -> u64 {
        self.stat("connections")
    }

    fn stat(&self, name: &str) -> u64 {
        let body = https_get(self.port, &self.ca, "/__stats");
        let v: serde_json::Value = serde_json::from_slice(&body).expect("stats JSON");
        v[name].as_u64().unwrap_or_else(|| panic!("{name} in {v}"))
    }
}

/// A blocking HTTPS GET to the local service, trusting `ca`; returns the body.
pub fn https_get(port: u16, ca: &Path, path: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let sock = connect(port);
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = tls.read_to_end(&mut raw);
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a head");
    let head = String::from_utf8_lossy(&raw[..split]).to_lowercase();
    let body = raw[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let eol = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let size =
                usize::from_str_radix(std::str::from_utf8(&rest[..eol]).unwrap().split(';').next().unwrap().trim(), 16)
                    .unwrap();
            rest = &rest[eol + 2..];
            if size == 0 {
                return out;
            }
            out.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
    }
    body
}

/// Great-circle distance in kilometres.
pub fn haversine_km(lat1: f64, lng1: f64, lat2: f64, lng2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = (lat2 - lat1).to_radians();
    let dl = (lng2 - lng1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * 6371.0088 * a.sqrt().asin()
}

/// Splits a WHATSAT reply into its AT line and its JSON, checking the framing (`AT…\n{…}\n\n`).
pub fn split_whatsat(reply: &[u8]) -> (String, serde_json::Value, String) {
    let text = String::from_utf8(reply.to_vec()).expect("UTF-8 reply");
    assert!(text.ends_with("}\n\n"), "a WHATSAT reply ends with the JSON and an empty line: {text:?}");
    let (at, json) = text.split_once('\n').unwrap();
    let json = json.strip_suffix("\n\n").unwrap().to_string();
    assert!(!json.contains("\n\n"), "no empty line inside the JSON");
    let value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("JSON: {e}: {json}"));
    (at.to_string(), value, json)
}

/// A GET to a server's admin port; returns (status, body), the body decoded when it is chunked.
pub fn admin_get(port: u16, path: &str) -> (u16, String) {
    let mut s = connect(port);
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes()).unwrap();
    let text = String::from_utf8(read_to_end(&mut s)).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    if !head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return (status, body.to_string());
    }
    let mut out = String::new();
    let mut rest = body;
    loop {
        let (size, after) = rest.split_once("\r\n").expect("a chunk size line");
        let size = usize::from_str_radix(size.trim(), 16).expect("a hex chunk size");
        if size == 0 {
            return (status, out);
        }
        out.push_str(&after[..size]);
        rest = after[size..].strip_prefix("\r\n").expect("CRLF after a chunk");
    }
}
