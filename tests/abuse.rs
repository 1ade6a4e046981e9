//! Abuse: each case runs a well-behaved probe client (sequential IAMAT round trips on one connection)
//! on a calm server, then again while one kind of abuse goes on, and checks that
//! - the server stays up and keeps answering the probe correctly,
//! - its resident memory stays bounded (peak `VmHWM` during the abuse against `VmRSS` before it),
//! - the probe's p99 latency under abuse stays within `RATIO` (3×) of the calm run's.
//!
//! Memory is a count and is asserted as is. Latency on a shared 2-core machine is noisy, but noise only
//! ever adds delay, and it does not follow the abuse: the ratio is asserted with no absolute slack, and
//! a case whose ratio is over the bound runs again, up to `ATTEMPTS` times in all. A server that stalls
//! behind an abuser (a blocked write, a busy loop, a turn that runs a thousand pipelined commands, a lost
//! wake-up) is over the bound on every attempt and fails; a burst of load from elsewhere on the machine
//! does not repeat three times in a row. Users need their tail latency not to multiply because someone
//! else misbehaves: 3× is a tail users notice, 10× (what the old 2×-plus-2-ms bound let through) is
//! broken. `HERD_ABUSE_STRICT=1` asserts the design goal, 2×, on a single attempt; TESTING.md reports
//! such runs, with the command:
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
/// The bound on abused p99 / calm p99 (2 with HERD_ABUSE_STRICT=1).
const RATIO: f64 = 3.0;
/// Runs of a case before a latency ratio over the bound fails it (1 with HERD_ABUSE_STRICT=1).
const ATTEMPTS: usize = 3;
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

fn strict() -> bool {
    std::env::var_os("HERD_ABUSE_STRICT").is_some_and(|v| v == "1")
}

/// The checks every attempt ends with; prints one line for TESTING.md. Up and memory are asserted at
/// once; returns whether the latency ratio is within the bound.
#[allow(clippy::too_many_arguments)]
fn report(
    case: &str,
    server: &mut Proc,
    calm: Latency,
    abused: Latency,
    rss_before: u64,
    bound_kib: u64,
    done: u64,
    allowance: Duration,
) -> bool {
    assert!(server.is_running(), "{case}: the server died: {:?}", server.stderr());
    let pid = server.child.id();
    let peak = status_kib(pid, "VmHWM:");
    let grew = peak.saturating_sub(rss_before);
    let ratio = abused.p99.as_secs_f64() / calm.p99.as_secs_f64();
    println!(
        "{case}: calm p50 {:?} p99 {:?} max {:?}; abused p50 {:?} p99 {:?} max {:?}; p99 ratio {ratio:.2}; \
         allowance {allowance:?}; RSS {rss_before} KiB, peak {peak} KiB (+{grew} KiB, bound {bound_kib}); \
         abuse count {done}",
        calm.p50, calm.p99, calm.max, abused.p50, abused.p99, abused.max,
    );
    assert!(grew <= bound_kib, "{case}: resident memory grew by {grew} KiB (bound {bound_kib} KiB)");
    let ratio_bound = if strict() { 2.0 } else { RATIO };
    abused.p99.as_secs_f64() <= ratio_bound * calm.p99.as_secs_f64() + allowance.as_secs_f64()
}

/// The server's command budget per connection and turn (`COMMANDS_PER_TURN` in src/server/conn/client/mod.rs).
const COMMAND_BUDGET: usize = 256;

/// How long this build of the server takes to answer one command budget: the median, over 15 tries, of
/// one write of `COMMAND_BUDGET` IAMATs until their last reply. A design that bounds the work per turn
/// keeps a probe's wait within a few of these, whatever the build (a debug build takes 20× a release
/// one); a turn that runs a whole 64 KiB read (a thousand commands) or more takes many.
fn budget_time(port: u16) -> Duration {
    let mut s = connect(port);
    let mut batch = Vec::new();
    for i in 0..COMMAND_BUDGET {
        writeln!(batch, "IAMAT budget{i} +34.068930-118.445127 1700000000.{i}").unwrap();
    }
    let mut times: Vec<Duration> = (0..15)
        .map(|_| {
            let t = Instant::now();
            s.write_all(&batch).unwrap();
            let (mut lines, mut buf) = (0, [0u8; 65536]);
            while lines < COMMAND_BUDGET {
                let k = s.read(&mut buf).expect("budget read");
                assert!(k > 0, "closed");
                lines += buf[..k].iter().filter(|&&b| b == b'\n').count();
            }
            t.elapsed()
        })
        .collect();
    times.sort_unstable();
    times[times.len() / 2]
}

/// One server, calm probe, then the same probe under `start_abuse`; again (on the same server) while
/// the latency ratio is over the bound, `ATTEMPTS` times at most. The bound is `RATIO` × calm p99, plus
/// `budgets` × the time this server takes to run one command budget (see `budget_time`).
fn run_case(
    case: &str,
    config: &HerdConfig,
    envs: &[(&str, &str)],
    bound_kib: u64,
    budgets: u32,
    start_abuse: impl Fn(u16, &mut Abuse),
) {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut server = config.serve_env("Solo", envs);
    let port = config.port("Solo");
    probe(port, "warm-up");
    // Waiting behind `budgets` command budgets of an abuser's is by design (0 for most cases).
    let allowance = if budgets == 0 { Duration::ZERO } else { budget_time(port) * budgets };
    let attempts = if strict() { 1 } else { ATTEMPTS };
    let mut ratios = Vec::new();
    for attempt in 1..=attempts {
        let calm = probe(port, "calm");
        let pid = server.child.id();
        let rss_before = status_kib(pid, "VmRSS:");
        reset_peak(pid);
        let mut abuse = Abuse::new();
        start_abuse(port, &mut abuse);
        let abused = probe(port, "probe");
        let done = abuse.finish();
        // The calm baseline again, after the abuse: the smaller of the two calm tails is the
        // baseline, since load from elsewhere on the machine only ever lengthens a tail.
        let after = probe(port, "calm-after");
        let calm = if after.p99 < calm.p99 { after } else { calm };
        let within = report(case, &mut server, calm, abused, rss_before, bound_kib, done, allowance);
        // Still serving after the abuse ends.
        assert!(ask(port, b"IAMAT after +1+1 1\n").starts_with(b"AT Solo "));
        ratios.push(abused.p99.as_secs_f64() / calm.p99.as_secs_f64());
        if within {
            return;
        }
        if cfg!(debug_assertions) && !strict() {
            eprintln!(
                "\n*** {case}: latency ratio NOT ASSERTED in a debug build (about 20× slower per command than \
                 release, so any per-turn or per-connection work looks like a stall on a loaded machine); \
                 liveness and memory were checked. The ratio is asserted by tests/slow.sh (release). ***\n"
            );
            return;
        }
        eprintln!("{case}: attempt {attempt} of {attempts}: p99 ratio over the bound");
    }
    panic!("{case}: abused p99 / calm p99 over the bound on every attempt: {ratios:.2?}");
}

#[test]
fn a_mebibyte_of_garbage_without_a_newline() {
    let config = HerdConfig::new(&["Solo"], &[], "");
    run_case("1 MiB of garbage, no newline", &config, &[], 16 * 1024, 0, |port, abuse| {
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
    // Never a smaller count in silence: a run that holds fewer connections does not test what the name
    // says, so it says so and stops.
    let n = 10_000;
    if limit < n as u64 + 500 {
        eprintln!(
            "\n*** SKIPPED ten_thousand_connections_that_send_nothing: the hard open-file limit is {limit}, \
             and 10,000 connections need 10,500 (raise it: ulimit -Hn 20000) ***\n"
        );
        return;
    }
    let config = HerdConfig::new(&["Solo"], &[], r#""limits": {"max_clients": 10100}"#);
    let admin = config.member("Solo").admin_port;
    // 2 KiB per idle connection is the memory target (issue 5).
    run_case("10,000 silent connections", &config, &[], n as u64 * 2, 0, move |port, abuse| {
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

/// Clients that pipeline and never read, arriving all through the probe (not only before it), at about
/// a quarter of the server's capacity: each new connection writes 5,000 IAMATs at once (270 KB, more than the server answers before it throttles
/// a client at the 256 KiB soft output bound), never reads, and is reset when eight newer ones are held.
/// So the server always has fresh pipelined input to work through while the probe waits: what keeps the
/// probe's tail short is the command budget per connection and turn (`COMMANDS_PER_TURN`); without it
/// a turn runs every command it reads (up to four 64 KiB reads: 4,000 commands, 16 budgets) before the
/// probe's one. The probe may wait for the turn under way and its own, each running a budget for each
/// of the fresh abusers (one to three at a time, as the server throttles them): eight budgets' time is
/// allowed on top of the ratio, a quarter of what the missing budget costs (measured on a debug build
/// on a loaded 2-core machine: p99 6-9 ms with a 1.5 ms budget time).
#[test]
fn clients_that_pipeline_thousands_of_commands_and_never_read() {
    let config = HerdConfig::new(&["Solo"], &[], "");
    // Eight throttled clients hold at most the soft output bound each (256 KiB) plus the input held
    // back; the churn of reset ones frees theirs.
    run_case("pipelining clients that never read", &config, &[], 16 * 1024, 8, |port, abuse| {
        let mut batch = Vec::new();
        for i in 0..5_000 {
            writeln!(batch, "IAMAT greedy{} +34.068930-118.445127 1700000000.{i}", i % 1000).unwrap();
        }
        // About a quarter of this server's capacity: a new abuser each time the server could have run
        // 60 command budgets (the ~3,700 commands it answers per abuser before throttling it, four
        // times over). A fixed rate would overload a slow (debug, loaded) build, and any server shares
        // its time among a growing backlog then; the budget only bounds a turn.
        let period = budget_time(port) * 60;
        let mut kept: std::collections::VecDeque<TcpStream> = Default::default();
        abuse.spawn(period, move || {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_write_timeout(Some(Duration::from_millis(200))).unwrap();
            // Never reads a reply; a write that times out (the server stopped reading) ends the batch.
            let written = s.write_all(&batch).is_ok();
            kept.push_back(s);
            if kept.len() > 8 {
                kept.pop_front(); // closed with unread replies: a reset
            }
            u64::from(written)
        });
        abuse.wait_done(3);
    });
}

#[test]
fn a_places_upstream_that_sends_one_byte_a_second() {
    let service = PlacesService::start(&["--fault", "trickle=1000"]);
    let extra = service.config("legacy", "ABUSE_PLACES_KEY", 3000);
    let config = HerdConfig::new(&["Solo"], &[], &extra);
    run_case("Places upstream at 1 byte/s", &config, &[("ABUSE_PLACES_KEY", "k")], 32 * 1024, 0, |port, abuse| {
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
    run_case("peer garbage after HELLO", &config, &[], 16 * 1024, 0, move |_port, abuse| {
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

/// The command budget, counted rather than timed: one connection pipelines 20,000 IAMATs, and no loop
/// turn may run more than one command budget of them. The server's log stamps every line with its
/// loop turn's time (formatted once per turn, microseconds), so the `recv` lines that share a stamp are
/// one turn's commands. The budget is per connection and turn, however many times a turn drives the
/// connection (from the `again` list, for its events, on a timer, in each of up to three flush rounds
/// that free its output: src/server/event_loop.rs). A budget refilled by each drive ran 2,304 commands
/// (9 budgets) in most turns and 4,037 in some, once `again` held the connection several times over;
/// a server that answers all a drive reads (four 64 KiB reads: 4,800 commands, or 3,700 until the
/// output bound throttles it) fails too, on any machine, where the probe's latency above can only show
/// it on a quiet one.
#[test]
fn a_pipelined_burst_is_answered_one_command_budget_per_turn() {
    const N: usize = 20_000;
    const MOST_PER_TURN: usize = COMMAND_BUDGET;
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let config = HerdConfig::new(&["Solo"], &[], "");
    let _server = config.serve("Solo");
    let port = config.port("Solo");
    let mut batch = Vec::new();
    for i in 0..N {
        writeln!(batch, "IAMAT burst{} +34.068930-118.445127 1700000000.{i}", i % 100).unwrap();
    }
    let mut s = connect(port);
    // Written by a thread, read here: the server's output (1.3 MB) must not wait on this client.
    let mut writer = s.try_clone().unwrap();
    let sender = std::thread::spawn(move || writer.write_all(&batch).unwrap());
    let (mut lines, mut buf) = (0, vec![0u8; 1 << 16]);
    while lines < N {
        let k = s.read(&mut buf).expect("read replies");
        assert!(k > 0, "closed after {lines} replies");
        lines += buf[..k].iter().filter(|&&b| b == b'\n').count();
    }
    sender.join().unwrap();
    // The log reaches its file within 50 ms of a turn; wait until every command is there.
    let deadline = Instant::now() + Duration::from_secs(10);
    let per_turn = loop {
        let log = config.log_text("Solo");
        let mut per_turn: std::collections::BTreeMap<&str, usize> = Default::default();
        for line in log.lines().filter(|l| l.contains(" IAMAT burst")) {
            let (stamp, rest) = line.split_once(' ').unwrap();
            if rest.starts_with("recv ") {
                *per_turn.entry(stamp).or_default() += 1;
            }
        }
        if per_turn.values().sum::<usize>() >= N {
            break per_turn.into_values().collect::<Vec<usize>>();
        }
        assert!(Instant::now() < deadline, "the log holds {} of the {N} commands", per_turn.values().sum::<usize>());
        std::thread::sleep(Duration::from_millis(20));
    };
    let most = per_turn.iter().copied().max().unwrap();
    eprintln!("{N} pipelined commands over {} turns, at most {most} in one", per_turn.len());
    assert!(most <= MOST_PER_TURN, "{most} commands of one connection in one turn (bound {MOST_PER_TURN})");
}
