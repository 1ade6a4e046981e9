//! The journal with real processes (issue 15): acknowledged means durable.
//!
//! - the whole herd SIGKILLed under load and restarted keeps every acknowledged IAMAT, byte for byte;
//! - a torn tail is cut and the server starts; a corrupt entry in the middle stops the start (file and
//!   offset named) unless `--journal-truncate-corrupt`;
//! - a full disk stops acknowledgements and they resume by themselves (a small tmpfs; skipped loudly
//!   where mounting is not allowed);
//! - SIGKILL while the journal is being rewritten loses nothing;
//! - a 1,000,000-record journal is served within 2 s of start (release builds; skipped loudly in debug);
//! - a restarted neighbour catches up by delta: only what changed is sent.

mod common;

use common::*;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn journal(dir: &Path, fsync: &str) -> String {
    journal_with(dir, fsync, "")
}

/// The journal's config with more keys (`extra` starts with a comma).
fn journal_with(dir: &Path, fsync: &str, extra: &str) -> String {
    format!(r#""journal": {{"dir": {:?}, "fsync": "{fsync}"{extra}}}"#, dir.to_string_lossy())
}

/// client id → AT line (without LF), from `/records`.
fn records(admin_port: u16) -> HashMap<String, String> {
    let (_, body) = admin_get(admin_port, "/records");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| (r["client_id"].as_str().unwrap().to_string(), r["at"].as_str().unwrap().to_string()))
        .collect()
}

/// The sum of a metric's samples (every label set), from `/metrics`.
fn metric(admin_port: u16, name: &str) -> f64 {
    let (_, body) = admin_get(admin_port, "/metrics");
    let prefix = format!("herd_{name}{{");
    body.lines().filter(|l| l.starts_with(&prefix)).map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap()).sum()
}

fn wait_metric(admin_port: u16, name: &str, at_least: f64, limit: Duration) -> f64 {
    let deadline = Instant::now() + limit;
    loop {
        let v = metric(admin_port, name);
        if v >= at_least {
            return v;
        }
        assert!(Instant::now() < deadline, "herd_{name} is {v}, want at least {at_least}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// IAMATs `prefix{i % ids}` for i in `from..from + n` on one connection, pipelined (a writer thread),
/// each with a client time one nanosecond after the one before, and the replies read back in order.
/// Returns the AT lines acknowledged (all of them, when the server stays up).
fn pipeline_ids(port: u16, prefix: &str, from: u64, n: u64, ids: u64) -> Vec<String> {
    // Not `connect`, which panics: a test may SIGKILL the server before this thread got to connect.
    let Ok(s) = TcpStream::connect(("127.0.0.1", port)) else { return Vec::new() };
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut w = s.try_clone().unwrap();
    let prefix2 = prefix.to_string();
    let base = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let writer = std::thread::spawn(move || {
        let mut buf = Vec::with_capacity(1 << 16);
        for i in from..from + n {
            let t = base + u128::from(i - from);
            let (secs, nanos) = (t / 1_000_000_000, t % 1_000_000_000);
            let line = format!("IAMAT {prefix2}{} +34.068930-118.445127 {secs}.{nanos:09}\n", i % ids);
            buf.extend_from_slice(line.as_bytes());
            if buf.len() > 60_000 {
                if w.write_all(&buf).is_err() {
                    return;
                }
                buf.clear();
            }
        }
        let _ = w.write_all(&buf);
    });
    let mut out = Vec::with_capacity(n as usize);
    let mut r = BufReader::new(s);
    let mut line = String::new();
    while (out.len() as u64) < n {
        line.clear();
        match r.read_line(&mut line) {
            Ok(_) if line.starts_with("AT ") && line.ends_with('\n') => out.push(line.trim_end().to_string()),
            _ => break,
        }
    }
    let _ = writer.join();
    out
}

fn pipeline(port: u16, prefix: &str, from: u64, n: u64) -> Vec<String> {
    pipeline_ids(port, prefix, from, n, u64::MAX)
}

fn id_of(at: &str) -> String {
    at.split(' ').nth(3).unwrap().to_string()
}

/// Waits until every line of `want` is held, byte for byte, by the server at `admin_port`.
fn wait_holds(admin_port: u16, want: &[String], limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let held = records(admin_port);
        let missing: Vec<&String> = want.iter().filter(|at| held.get(&id_of(at)) != Some(at)).collect();
        if missing.is_empty() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "admin port {admin_port}: {} of {} acknowledged records missing or different, e.g. {:?}",
            missing.len(),
            want.len(),
            &missing[..missing.len().min(3)]
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn time_of(at: &str) -> f64 {
    at.rsplit(' ').next().unwrap().parse().unwrap()
}

/// Waits until the server at `admin_port` holds, for every client of `want`, that record or a newer one
/// (a record written to the journal but not yet acknowledged when the server was killed may be newer).
fn wait_holds_at_least(admin_port: u16, want: &HashMap<String, String>, limit: Duration) {
    let started = Instant::now();
    loop {
        let held = records(admin_port);
        let behind: Vec<(&String, Option<&String>)> = want
            .iter()
            .filter(|(id, at)| held.get(*id).is_none_or(|h| time_of(h) < time_of(at)))
            .map(|(id, at)| (at, held.get(id)))
            .collect();
        if behind.is_empty() {
            return;
        }
        assert!(
            started.elapsed() < limit,
            "{} of {} clients behind what was acknowledged, e.g. {:?}",
            behind.len(),
            want.len(),
            &behind[..behind.len().min(3)]
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Eight clients sending IAMATs with unique ids to every server, 50 pipelined at a time on a kept-open
/// connection per server (so replies stream right up to a SIGKILL or SIGSTOP); each reply received is
/// pushed to `acked` at once. They stop once `stop` is set (or after a bounded number).
fn load_herd(
    ports: Vec<u16>,
    round: u64,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
) -> Vec<std::thread::JoinHandle<()>> {
    const BATCH: u64 = 50;
    (0..8u64)
        .map(|c| {
            let (stop, ports, acked) = (stop.clone(), ports.clone(), acked.clone());
            std::thread::spawn(move || {
                let mut conns: Vec<Option<BufReader<TcpStream>>> = ports.iter().map(|_| None).collect();
                let mut n = 0u64;
                // Bounded: a few seconds of load at most, whatever happens.
                while !stop.load(Ordering::Relaxed) && n < 400_000 {
                    let k = ((c * 7 + n / BATCH) % ports.len() as u64) as usize;
                    let time = now_text();
                    let batch: String =
                        (n..n + BATCH).map(|i| format!("IAMAT k{round}-{c}-{i} +1.5-2.5 {time}\n")).collect();
                    n += BATCH;
                    if conns[k].is_none() {
                        let Ok(s) = TcpStream::connect(("127.0.0.1", ports[k])) else { continue };
                        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                        conns[k] = Some(BufReader::new(s));
                    }
                    let r = conns[k].as_mut().unwrap();
                    if r.get_mut().write_all(batch.as_bytes()).is_err() {
                        conns[k] = None;
                        continue;
                    }
                    for _ in 0..BATCH {
                        let mut line = String::new();
                        match r.read_line(&mut line) {
                            Ok(_) if line.starts_with("AT ") && line.ends_with('\n') => {
                                acked.lock().unwrap().push(line.trim_end().to_string())
                            }
                            _ => {
                                conns[k] = None;
                                break;
                            }
                        }
                    }
                }
            })
        })
        .collect()
}

/// Waits until no reply has arrived for 100 ms (every server is stopped or dead, and the clients have
/// read what the kernel had buffered), at most 3 s; returns how many replies there are.
fn settled(acked: &Mutex<Vec<String>>) -> usize {
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut seen = acked.lock().unwrap().len();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = acked.lock().unwrap().len();
        if now == seen || Instant::now() > deadline {
            return now;
        }
        seen = now;
    }
}

/// Asserts that every line of `acked` is in the journal files of the server that acknowledged it (the
/// name in the AT line), byte for byte.
fn assert_on_own_disk(data: &Path, names: &[String], acked: &[String], when: &str) {
    let on_disk: HashMap<&String, std::collections::HashSet<String>> =
        names.iter().map(|n| (n, journalled_lines(&data.join(n)))).collect();
    let not_durable: Vec<&String> =
        acked.iter().filter(|at| !on_disk[&at.split(' ').nth(1).unwrap().to_string()].contains(*at)).collect();
    assert!(
        not_durable.is_empty(),
        "{when}: {} of {} acknowledged records are not in their server's journal, e.g. {:?}",
        not_durable.len(),
        acked.len(),
        &not_durable[..not_durable.len().min(3)]
    );
}

/// The AT lines (without LF) of every whole entry with a good CRC in the journal files of `dir` (`seg-*` and
/// `snap-*`), read with the format of src/server/journal/format.rs written down here on its own.
fn journalled_lines(dir: &Path) -> std::collections::HashSet<String> {
    let mut lines = std::collections::HashSet::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !(name.starts_with("seg-") || name.starts_with("snap-")) || !name.ends_with(".log") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let mut at = 8;
        while at + 16 <= bytes.len() {
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            let Some(payload) = bytes.get(at + 16..at + 16 + len) else { break };
            let mut h = crc32fast::Hasher::new();
            h.update(&bytes[at..at + 4]);
            h.update(&bytes[at + 8..at + 16]);
            h.update(payload);
            if h.finalize() != u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) {
                break; // a torn tail
            }
            lines.insert(String::from_utf8_lossy(payload).trim_end().to_string());
            at += 16 + len;
        }
    }
    lines
}

/// The check of issue 15: five servers with `always`, eight clients, every server SIGKILLed at once
/// mid-load and restarted: every acknowledged IAMAT is held byte for byte by all five within 15 s.
///
/// A server that answered before its record was on disk would mostly get away with that check alone: a
/// SIGKILL leaves the page cache, so such a server loses only what its writer had not yet written (a
/// millisecond's worth, during an fsync), and its neighbours hold those records too. So every record
/// acknowledged is also looked for in the journal files of the server that acknowledged it ("acknowledged
/// means durable" on that server's own disk), and not only after the SIGKILL: six times a round, the whole
/// herd is frozen (SIGSTOP) mid-load, the clients read what was sent, the files are read, and the herd goes
/// on (SIGCONT). With the hold taken out (replies sent at once) this fails within the first round or two
/// (checked by hand: see TESTING.md).
#[test]
fn every_acknowledged_iamat_survives_a_sigkill_of_the_whole_herd() {
    let data = TempDir::new("journal-herd");
    let mut herd = Herd::start(HerdConfig::from_shipped("config/herd.json", &journal(data.path(), "always")));
    let ports: Vec<u16> = herd.config.members.iter().map(|m| m.port).collect();
    let names: Vec<String> = herd.config.members.iter().map(|m| m.name.clone()).collect();
    let mut acked: Vec<String> = Vec::new();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..3 {
        let stop = Arc::new(AtomicBool::new(false));
        let sink = Arc::new(Mutex::new(Vec::new()));
        let clients = load_herd(ports.clone(), round, stop.clone(), sink.clone());
        for probe in 0..6 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            std::thread::sleep(Duration::from_millis(50 + rng % 100));
            for p in herd.procs.values() {
                p.signal(libc::SIGSTOP);
            }
            let n = settled(&sink);
            let so_far = sink.lock().unwrap()[..n].to_vec();
            assert_on_own_disk(data.path(), &names, &so_far, &format!("round {round}, frozen {probe}"));
            for p in herd.procs.values() {
                p.signal(libc::SIGCONT);
            }
        }
        // Load for a moment more, then SIGKILL all five at once, mid-load.
        std::thread::sleep(Duration::from_millis(200));
        for p in herd.procs.values() {
            p.signal(libc::SIGKILL);
        }
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            c.join().unwrap();
        }
        let this_round = std::mem::take(&mut *sink.lock().unwrap());
        assert!(this_round.len() >= 100, "the load ran: {} acknowledged", this_round.len());
        for name in &names {
            herd.kill(name);
        }
        // On the acknowledging server's own disk, byte for byte, before anything replays or rewrites it.
        assert_on_own_disk(data.path(), &names, &this_round, &format!("round {round}, killed"));
        acked.extend(this_round);
        let restarted = Instant::now();
        for name in &names {
            herd.restart(name);
        }
        for m in herd.config.members.clone() {
            let left = Duration::from_secs(15).saturating_sub(restarted.elapsed());
            wait_holds(m.admin_port, &acked, left);
        }
        println!(
            "round {round}: {} acknowledged records held by all five {:?} after the restart",
            acked.len(),
            restarted.elapsed()
        );
        herd.wait_linked();
    }
}

/// One server, no neighbours, with a journal under `data`.
fn solo(data: &Path, fsync: &str) -> HerdConfig {
    HerdConfig::new(&["Solo"], &[], &journal(data, fsync))
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("seg-"))
        .collect();
    v.sort();
    v
}

/// Start offsets of the entries of a journal file: `[len u32 LE][crc][seq][line]` after an 8-byte magic
/// (the format written down in src/server/journal/format.rs, read here on its own), and where they end.
/// A zero length ends them: the zero padding of the last `O_DIRECT` write, up to a 4 KiB boundary.
fn entry_offsets(bytes: &[u8]) -> (Vec<usize>, usize) {
    let mut at = 8;
    let mut v = Vec::new();
    while at + 16 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        if len == 0 {
            break;
        }
        v.push(at);
        at += 16 + len;
    }
    (v, at)
}

#[test]
fn a_torn_tail_is_cut_logged_and_the_server_starts() {
    let data = TempDir::new("journal-torn");
    let config = solo(data.path(), "always");
    let mut p = config.serve("Solo");
    let acked = pipeline(config.port("Solo"), "t", 0, 100);
    assert_eq!(acked.len(), 100);
    p.signal(libc::SIGKILL);
    p.wait_exit(Duration::from_secs(5));
    let seg = segments(&data.path().join("Solo")).pop().unwrap();
    let bytes = std::fs::read(&seg).unwrap();
    let (offsets, end) = entry_offsets(&bytes);
    assert_eq!(offsets.len(), 100);
    // Half an entry after the last whole one: what a crash in the middle of a write leaves. The zeros of
    // the last write's padding, if any, follow it and are cut with it.
    let torn = [40, 0, 0, 0, 1, 2, 3, 4, 5, 0, 0, 0, 0, 0, 0, 0, b'A', b'T'];
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &torn, end as u64).unwrap();
    drop(f);
    let cut = bytes.len().max(end + torn.len()) - end;
    let p = config.serve("Solo");
    wait_holds(config.member("Solo").admin_port, &acked, Duration::from_secs(5));
    // Logged before the replay ended; the thread that reads the child's stderr may not have it yet.
    let deadline = Instant::now() + Duration::from_secs(5);
    while p.stderr_count(&format!("cut {cut} bytes")) == 0 {
        assert!(Instant::now() < deadline, "{:?}", p.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(metric(config.member("Solo").admin_port, "journal_cut_bytes"), cut as f64);
}

#[test]
fn a_corrupt_entry_in_the_middle_stops_the_start_unless_told_to_truncate() {
    let data = TempDir::new("journal-corrupt");
    let config = solo(data.path(), "always");
    let mut p = config.serve("Solo");
    let acked = pipeline(config.port("Solo"), "m", 0, 100);
    assert_eq!(acked.len(), 100);
    p.signal(libc::SIGTERM);
    p.wait_exit(Duration::from_secs(5)).expect("a clean stop");
    let seg = segments(&data.path().join("Solo")).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let (offsets, _) = entry_offsets(&bytes);
    assert_eq!(offsets.len(), 100);
    bytes[offsets[40] + 30] ^= 0x01; // inside the 41st entry's line
    std::fs::write(&seg, &bytes).unwrap();

    let out = std::process::Command::new(herd_bin())
        .args(["serve", "Solo", "--config", config.path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or("");
    assert!(last.contains(&seg.display().to_string()) && last.contains(&format!("at byte {}", offsets[40])), "{err}");

    let p = Proc::start(
        "Solo",
        &["serve", "Solo", "--config", config.path.to_str().unwrap(), "--journal-truncate-corrupt"],
        &[],
        " listening on ",
    );
    let admin = config.member("Solo").admin_port;
    wait_holds(admin, &acked[..40], Duration::from_secs(5));
    assert_eq!(records(admin).len(), 40, "what precedes the corrupt entry, and nothing after it");
    drop(p);
}

/// A small tmpfs for the journal: writes fail with "no space left" once it is full.
struct SmallFs(TempDir);

impl SmallFs {
    fn mount(kib: u32) -> Option<SmallFs> {
        let dir = TempDir::new("journal-smallfs");
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs", dir.path().to_str().unwrap()])
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(SmallFs(dir))
    }

    fn grow(&self, kib: u32) {
        let ok = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={kib}k"), self.0.path().to_str().unwrap()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "remount");
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(self.0.path()).status();
    }
}

#[test]
fn a_full_disk_stops_acknowledgements_and_they_resume_by_themselves() {
    let Some(fs) = SmallFs::mount(128) else {
        eprintln!("SKIPPED a_full_disk_stops_acknowledgements_and_they_resume_by_themselves: cannot mount a tmpfs (not root?)");
        return;
    };
    let config = solo(fs.0.path(), "always");
    let mut p = config.serve("Solo");
    let (port, admin) = (config.port("Solo"), config.member("Solo").admin_port);
    // One connection, one IAMAT at a time, until one is not answered: the connection closes instead.
    let mut acked = Vec::new();
    let mut s = BufReader::new(connect(port));
    let mut refused_at = None;
    for i in 0..20_000u64 {
        s.get_mut().write_all(format!("IAMAT full{i} +1+1 {}\n", now_text()).as_bytes()).unwrap();
        let mut line = String::new();
        match s.read_line(&mut line) {
            Ok(_) if line.starts_with("AT ") => acked.push(line.trim_end().to_string()),
            _ => {
                refused_at = Some(i);
                break;
            }
        }
    }
    let refused_at = refused_at.expect("128 KiB fill up before 20,000 records");
    assert!(metric(admin, "journal_write_errors_total") >= 1.0);
    // Room again: acknowledgements resume without a restart.
    fs.grow(16 * 1024);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut i = refused_at + 1;
    loop {
        let reply = ask(port, format!("IAMAT full{i} +1+1 {}\n", now_text()).as_bytes());
        let text = String::from_utf8_lossy(&reply).to_string();
        if text.starts_with("AT ") {
            acked.push(text.trim_end().to_string());
            break;
        }
        assert!(Instant::now() < deadline, "no acknowledgement after the disk has room again");
        i += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    // Nothing acknowledged was lost.
    p.signal(libc::SIGKILL);
    p.wait_exit(Duration::from_secs(5));
    let _p = config.serve("Solo");
    wait_holds(admin, &acked, Duration::from_secs(5));
}

#[test]
fn a_sigkill_during_a_rewrite_loses_nothing() {
    let data = TempDir::new("journal-rewrite");
    // A rewrite once the journal passes 500 KB (about 5,000 entries) and twice the table.
    let config =
        HerdConfig::new(&["Solo"], &[], &journal_with(data.path(), "always", r#", "rewrite_min_bytes": 500000"#));
    let (port, admin) = (config.port("Solo"), config.member("Solo").admin_port);
    let mut newest: HashMap<String, String> = HashMap::new();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut from = 0;
    for round in 0..4 {
        let mut p = config.serve("Solo");
        if round > 0 {
            wait_holds_at_least(admin, &newest, Duration::from_secs(5));
        }
        // 100 clients updated 30,000 times: the journal passes twice the table again and again (a rewrite
        // starts past 500 KB), and the SIGKILL lands at some moment of that.
        let load = std::thread::spawn(move || pipeline_ids(port, "r", from, 30_000, 100));
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(100 + rng % 400));
        p.signal(libc::SIGKILL);
        p.wait_exit(Duration::from_secs(5));
        for at in load.join().unwrap() {
            newest.insert(id_of(&at), at);
        }
        from += 30_000;
    }
    let _p = config.serve("Solo");
    wait_holds_at_least(admin, &newest, Duration::from_secs(5));
    // 120,000 entries for 100 records: the journal is rewritten (if no round's rewrite finished before
    // its SIGKILL, this start's does).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let files: Vec<String> = std::fs::read_dir(data.path().join("Solo"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        if files.iter().any(|f| f.starts_with("snap-")) {
            break;
        }
        assert!(Instant::now() < deadline, "no rewrite happened: {files:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_million_record_journal_is_served_within_two_seconds() {
    if cfg!(debug_assertions) {
        eprintln!(
            "SKIPPED a_million_record_journal_is_served_within_two_seconds: a debug build; run \
             `cargo test --release --test journal a_million` for the figure"
        );
        return;
    }
    let data = TempDir::new("journal-million");
    let config = solo(data.path(), "always");
    // The journal written here from the format alone: a meta file and one segment.
    let dir = data.path().join("Solo");
    std::fs::create_dir_all(&dir).unwrap();
    let n = 1_000_000u64;
    let mut seg = Vec::with_capacity(100 << 20);
    seg.extend_from_slice(b"HERDJNL1");
    let time = now_text();
    for i in 1..=n {
        let line = format!("AT Solo +0.000001000 m{i} +34.068930-118.445127 {time}\n");
        let len = (line.len() as u32).to_le_bytes();
        let seq = i.to_le_bytes();
        let mut h = crc32fast::Hasher::new();
        h.update(&len);
        h.update(&seq);
        h.update(line.as_bytes());
        seg.extend_from_slice(&len);
        seg.extend_from_slice(&h.finalize().to_le_bytes());
        seg.extend_from_slice(&seq);
        seg.extend_from_slice(line.as_bytes());
    }
    let name = format!("seg-{:020}.log", 1);
    std::fs::write(dir.join(&name), &seg).unwrap();
    std::fs::write(
        dir.join("meta"),
        format!("herd-journal 1\nrid 00ff00ff\nmode always\nclean 1\nlast {n}\nfile {name}\n"),
    )
    .unwrap();
    let started = Instant::now();
    let _p = config.serve("Solo");
    let last = format!("AT Solo +0.000001000 m{n} +34.068930-118.445127 {time}");
    wait_record(config.port("Solo"), &format!("m{n}"), &last, Duration::from_secs(10));
    let took = started.elapsed();
    assert_eq!(metric(config.member("Solo").admin_port, "records"), n as f64);
    println!("1,000,000-record journal: served {took:?} after the start");
    assert!(took < Duration::from_secs(2), "served only after {took:?}");
}

#[test]
fn a_restarted_neighbour_catches_up_by_delta() {
    let data = TempDir::new("journal-delta");
    let mut herd = Herd::start(HerdConfig::new(&["A", "B"], &[("A", "B")], &journal(data.path(), "always")));
    let (a, b) = (herd.config.member("A").clone(), herd.config.member("B").clone());
    let n = 200_000u64;
    let first = pipeline(a.port, "d", 0, n);
    assert_eq!(first.len() as u64, n);
    wait_metric(b.admin_port, "records", n as f64, Duration::from_secs(30));
    // B has acknowledged all of A's stream, and written that in its journal's meta file (within a
    // second: README, "The peer protocol"), and A has acknowledged all of B's, before B is killed.
    let a_seq = metric(a.admin_port, "journal_last_seq");
    // A setup step, not the property under test, so a generous bound: under the whole suite A's offset
    // was once still at 199,080 of 200,000 after 10 s (not investigated: when an `OFF` goes out is the
    // propagation's decision, `peer/sync.rs`).
    wait_metric(a.admin_port, "peer_acked_offset", a_seq, Duration::from_secs(30));
    let b_seq = metric(b.admin_port, "journal_last_seq");
    wait_metric(b.admin_port, "peer_acked_offset", b_seq, Duration::from_secs(30));
    let deadline = Instant::now() + Duration::from_secs(5);
    let meta = data.path().join("B").join("meta");
    let persisted = |meta: &Path| {
        std::fs::read_to_string(meta).unwrap_or_default().lines().any(|l| {
            l.starts_with("peer A ") && l.rsplit(' ').next().and_then(|o| o.parse::<f64>().ok()) == Some(a_seq)
        })
    };
    while !persisted(&meta) {
        assert!(Instant::now() < deadline, "B's meta file never recorded A's offset {a_seq}");
        std::thread::sleep(Duration::from_millis(20));
    }
    herd.procs.get_mut("B").unwrap().signal(libc::SIGKILL);
    herd.kill("B");
    let sent_before = metric(a.admin_port, "records_forwarded_total") + metric(a.admin_port, "records_synced_total");
    let more = pipeline(a.port, "d", n, 1_000);
    assert_eq!(more.len(), 1_000);
    let restarted = Instant::now();
    herd.restart("B");
    wait_metric(b.admin_port, "records", (n + 1_000) as f64, Duration::from_secs(15));
    let took = restarted.elapsed();
    assert!(took < Duration::from_secs(15));
    herd.wait_linked();
    let a_sent =
        metric(a.admin_port, "records_forwarded_total") + metric(a.admin_port, "records_synced_total") - sent_before;
    let b_sent = metric(b.admin_port, "records_forwarded_total") + metric(b.admin_port, "records_synced_total");
    println!("B caught up in {took:?}: A sent {a_sent} records, B sent {b_sent}");
    assert!(a_sent <= 5_000.0 && b_sent <= 5_000.0, "A sent {a_sent}, B sent {b_sent}");
    assert!(metric(a.admin_port, "peer_delta_syncs_total") >= 1.0);
    // The new ones, byte for byte (every 20th: the count above covers the rest).
    for at in more.iter().step_by(20) {
        assert_eq!(&whatsat_first_line(b.port, &id_of(at)), at);
    }
}
