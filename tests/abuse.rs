//! Abuse: each case runs a well-behaved probe client (sequential IAMAT round trips on one connection)
//! on a calm server, then again while one kind of abuse goes on, and checks that
//! - the server stays up and keeps answering the probe correctly,
//! - its resident memory stays bounded (peak `VmHWM` during the abuse against `VmRSS` before it),
//! - the probe's p99 latency stays within 2× of the calm run.
//!
//! Memory is a count and is asserted as is. Latency on a shared 2-core machine is not: the assertion
//! allows 2× plus `SLACK` (scheduler noise), which still catches a loop that stalls behind the abuser
//! (a blocked write, a busy loop, a lost wake-up all cost far more). `HERD_ABUSE_STRICT=1` drops the
//! slack; TESTING.md reports such a run, with the command:
//!
//!     HERD_ABUSE_STRICT=1 cargo test --release --test abuse -- --nocapture
//!
//! The cases run one at a time (a lock), so they do not disturb each other's latencies.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Round trips per probe, one every `PROBE_EVERY`: the probe spans two seconds of the abuse.
const PROBES: usize = 4000;
const PROBE_EVERY: Duration = Duration::from_micros(500);
/// Allowed on top of 2× the calm p99 unless HERD_ABUSE_STRICT=1.
const SLACK: Duration = Duration::from_millis(2);
/// Longest any abuser runs, whatever happens to the probe.
const ABUSE_LIMIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy)]
struct Latency {
    p50: Duration,
    p99: Duration,
    max: Duration,
}

/// `PROBES` sequential IAMATs from a fresh connection, each waiting for its reply, started at most
/// one per `PROBE_EVERY`.
fn probe(port: u16, id: &str) -> Latency {
    let mut s = connect(port);
    let mut times = Vec::with_capacity(PROBES);
    let mut buf = [0u8; 512];
    let mut next = Instant::now();
    for i in 0..PROBES {
        let now = Instant::now();
        if now < next {
            std::thread::sleep(next - now);
        }
        next += PROBE_EVERY;
        let line = format!("IAMAT {id} +34.068930-118.445127 {}.5\n", 1_700_000_000 + i);
        let t = Instant::now();
        s.write_all(line.as_bytes()).unwrap();
        let mut got = 0;
        while got == 0 || buf[got - 1] != b'\n' {
            let k = s.read(&mut buf[got..]).expect("probe read");
            assert!(k > 0, "the server closed the probe's connection");
            got += k;
        }
        times.push(t.elapsed());
        assert!(buf.starts_with(b"AT "), "{}", String::from_utf8_lossy(&buf[..got]));
    }
    times.sort_unstable();
    Latency { p50: times[PROBES / 2], p99: times[PROBES * 99 / 100], max: times[PROBES - 1] }
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("no {field}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Clears the peak resident size (`VmHWM`) of `pid`, so the next reading is the peak since now.
fn reset_peak(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("clear_refs");
}

/// Abuser threads sharing one stop flag; each also stops by itself after `ABUSE_LIMIT`.
struct Abuse {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// A count each case defines (connections made, bytes sent...), to show the abuse happened.
    done: Arc<AtomicU64>,
    /// Connections the abuse keeps open until it ends.
    held: Vec<TcpStream>,
}

impl Abuse {
    fn new() -> Abuse {
        Abuse {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            done: Arc::new(AtomicU64::new(0)),
            held: Vec::new(),
        }
    }

    /// Runs `step` over and over on a thread until stopped, starting one at most every `period`;
    /// `step` returns how much it did.
    ///
    /// The period keeps the abuser from simply taking the probe's CPU: on a 2-core machine an
    /// abuser looping flat out in this process competes with the probe and the server for the cores
    /// directly, which says nothing about the server. A remote abuser costs the server only its bytes.
    fn spawn(&mut self, period: Duration, mut step: impl FnMut() -> u64 + Send + 'static) {
        let stop = self.stop.clone();
        let done = self.done.clone();
        self.threads.push(std::thread::spawn(move || {
            let started = Instant::now();
            let mut next = started;
            while !stop.load(Ordering::Relaxed) && started.elapsed() < ABUSE_LIMIT {
                let now = Instant::now();
                if now < next {
                    std::thread::sleep((next - now).min(Duration::from_millis(10)));
                    continue;
                }
                next = now + period;
                done.fetch_add(step(), Ordering::Relaxed);
            }
        }));
    }

    /// Waits until the abusers have done at least `n`.
    fn wait_done(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.done.load(Ordering::Relaxed) < n {
            assert!(Instant::now() < deadline, "the abuse did not get going: {}", self.done.load(Ordering::Relaxed));
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        self.done.load(Ordering::Relaxed)
    }
}

/// The checks every case ends with; prints one line for TESTING.md.
fn report(case: &str, server: &mut Proc, calm: Latency, abused: Latency, rss_before: u64, bound_kib: u64, done: u64) {
    assert!(server.is_running(), "{case}: the server died: {:?}", server.stderr());
    let pid = server.child.id();
    let peak = status_kib(pid, "VmHWM:");
    let grew = peak.saturating_sub(rss_before);
    println!(
        "{case}: calm p50 {:?} p99 {:?} max {:?}; abused p50 {:?} p99 {:?} max {:?}; p99 ratio {:.2}; \
         RSS {rss_before} KiB, peak {peak} KiB (+{grew} KiB, bound {bound_kib}); abuse count {done}",
        calm.p50,
        calm.p99,
        calm.max,
        abused.p50,
        abused.p99,
        abused.max,
        abused.p99.as_secs_f64() / calm.p99.as_secs_f64()
    );
    assert!(grew <= bound_kib, "{case}: resident memory grew by {grew} KiB (bound {bound_kib} KiB)");
    let strict = std::env::var_os("HERD_ABUSE_STRICT").is_some_and(|v| v == "1");
    let allowed = calm.p99 * 2 + if strict { Duration::ZERO } else { SLACK };
    assert!(abused.p99 <= allowed, "{case}: p99 {:?} under abuse, calm {:?}", abused.p99, calm.p99);
}

/// One server, calm probe, then the same probe under `start_abuse`.
fn run_case(
    case: &str,
    config: &HerdConfig,
    envs: &[(&str, &str)],
    bound_kib: u64,
    start_abuse: impl FnOnce(u16, &mut Abuse),
) {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut server = config.serve_env("Solo", envs);
    let port = config.port("Solo");
    probe(port, "warm-up");
    let calm = probe(port, "calm");
    let pid = server.child.id();
    let rss_before = status_kib(pid, "VmRSS:");
    reset_peak(pid);
    let mut abuse = Abuse::new();
    start_abuse(port, &mut abuse);
    let abused = probe(port, "probe");
    let done = abuse.finish();
    report(case, &mut server, calm, abused, rss_before, bound_kib, done);
    // Still serving after the abuse ends.
    assert!(ask(port, b"IAMAT after +1+1 1\n").starts_with(b"AT Solo "));
}

#[test]
fn a_mebibyte_of_garbage_without_a_newline() {
    let config = HerdConfig::new(&["Solo"], &[], "");
    run_case("1 MiB of garbage, no newline", &config, &[], 16 * 1024, |port, abuse| {
        let garbage: Vec<u8> = (0..1 << 20).map(|i| b'!' + (i % 90) as u8).collect();
        abuse.spawn(Duration::from_millis(50), move || {
            // A fresh connection 20 times a second (20 MiB/s): the server closes it once the line passes
            // max_line, discarding at most 1 MiB more, so the rest of each write may fail.
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
            let _ = s.write_all(&garbage);
            1
        });
        abuse.wait_done(3);
    });
}

/// Raises this process's open-file limit to its hard limit; returns it.
fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit read and write the struct passed.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    lim.rlim_cur
}

#[test]
fn ten_thousand_connections_that_send_nothing() {
    let limit = raise_nofile();
    // The test holds one end of each connection, the server the other (its own limit is raised the same
    // way); leave room for everything else the test process has open.
    let n = 10_000.min(limit.saturating_sub(500) as usize);
    if n < 10_000 {
        eprintln!("open-file limit {limit}: testing {n} silent connections, not 10,000");
    }
    let config = HerdConfig::new(&["Solo"], &[], r#""limits": {"max_clients": 10100}"#);
    let admin = config.member("Solo").admin_port;
    // 2 KiB per idle connection is the memory target (issue 5).
    run_case("10,000 silent connections", &config, &[], n as u64 * 2, move |port, abuse| {
        let t = Instant::now();
        let mut silent = Vec::with_capacity(n);
        for _ in 0..n {
            silent.push(TcpStream::connect(("127.0.0.1", port)).unwrap());
        }
        eprintln!("connected in {:?}", t.elapsed());
        // Wait until the server has accepted every one of them.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, metrics) = admin_get(admin, "/metrics");
            let clients: usize = metrics
                .lines()
                .find(|l| l.starts_with("herd_clients{"))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if clients >= n {
                break;
            }
            assert!(Instant::now() < deadline, "only {clients} of {n} connections accepted");
            std::thread::sleep(Duration::from_millis(20));
        }
        // Held open (silent) until the abuse ends.
        abuse.held = silent;
        abuse.done.store(n as u64, Ordering::Relaxed);
    });
}

#[test]
fn a_client_that_pipelines_100000_commands_and_never_reads() {
    let config = HerdConfig::new(&["Solo"], &[], "");
    // The client output bound (4 MiB by default) plus what is in flight.
    run_case("100,000 pipelined, never read", &config, &[], 16 * 1024, |port, abuse| {
        let mut batch = Vec::new();
        for i in 0..100_000 {
            writeln!(batch, "IAMAT greedy{} +34.068930-118.445127 1700000000.{i}", i % 1000).unwrap();
        }
        // The connection, kept open and unread until the abuse ends.
        let mut kept: Option<TcpStream> = None;
        abuse.spawn(Duration::from_millis(50), move || {
            if kept.is_some() {
                return 0;
            }
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
            // Blocks once the server stops reading (it throttles a client that does not read), and
            // fails when the server drops it; never reads a reply.
            let mut written = 0u64;
            for chunk in batch.chunks(64 * 1024) {
                match s.write_all(chunk) {
                    Ok(()) => written += chunk.len() as u64,
                    Err(_) => break,
                }
            }
            kept = Some(s);
            written.max(1)
        });
        abuse.wait_done(1);
    });
}

#[test]
fn a_places_upstream_that_sends_one_byte_a_second() {
    let service = PlacesService::start(&["--fault", "trickle=1000"]);
    let extra = service.config("legacy", "ABUSE_PLACES_KEY", 3000);
    let config = HerdConfig::new(&["Solo"], &[], &extra);
    run_case("Places upstream at 1 byte/s", &config, &[("ABUSE_PLACES_KEY", "k")], 32 * 1024, |port, abuse| {
        // One connection keeps 60 WHATSATs for 60 distinct places waiting on the trickling upstream
        // (every one a cache miss), asks again as their time-outs answer them.
        let mut round = 0u64;
        abuse.spawn(Duration::ZERO, move || {
            round += 1;
            let mut s = connect(port);
            let mut batch = Vec::new();
            for i in 0..60 {
                writeln!(batch, "IAMAT slow{i} +{}.{i:02}-118.{round:06} {round}", 30 + i % 5).unwrap();
            }
            for i in 0..60 {
                writeln!(batch, "WHATSAT slow{i} 10 5").unwrap();
            }
            s.write_all(&batch).unwrap();
            // Every WHATSAT reply ends with a blank line: wait for 60 of them (they fail after 3 s).
            let mut all = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(10);
            while all.windows(3).filter(|w| w == b"}\n\n").count() < 60 && Instant::now() < deadline {
                let mut buf = [0u8; 65536];
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => all.extend_from_slice(&buf[..k]),
                }
            }
            60
        });
        abuse.wait_done(1);
        // At least one round of requests is stuck on the upstream before the probe starts.
        std::thread::sleep(Duration::from_millis(100));
    });
}

#[test]
fn a_peer_that_sends_garbage_after_identifying() {
    // Solo's neighbour Ghost never runs: the abuser speaks for it.
    let config = HerdConfig::new(&["Solo", "Ghost"], &[("Solo", "Ghost")], "");
    let peer_port = config.member("Solo").peer_port;
    run_case("peer garbage after HELLO", &config, &[], 16 * 1024, move |_port, abuse| {
        let garbage: Vec<u8> = (0..256 * 1024).map(|i| (i * 7 % 251) as u8).collect();
        abuse.spawn(Duration::from_millis(50), move || {
            let mut s = connect(peer_port);
            if s.write_all(b"HELLO Ghost Solo 00\n").is_err() {
                return 0;
            }
            let mut welcome = [0u8; 256];
            if !matches!(s.read(&mut welcome), Ok(k) if k > 0 && welcome.starts_with(b"WELCOME")) {
                return 0;
            }
            let _ = s.write_all(b"PROOF -\n");
            let _ = s.write_all(&garbage); // dropped at the first bad line
            1
        });
        abuse.wait_done(3);
    });
}
