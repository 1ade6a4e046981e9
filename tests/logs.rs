//! The log an operator leaves running for weeks (issue "Every input bounded", point 3), against real
//! `herd serve` processes: private files, rotation at a size, SIGHUP reopening the file instead of
//! killing the server, `log_detail: "events"`, and no raw control byte from the network in the file.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn log_dir(config: &HerdConfig) -> PathBuf {
    config.dir.path().join("logs")
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

/// Polls until `done` holds (the log is written by a thread, every 50 ms at the latest).
fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn log_files_are_private_and_their_directory_too() {
    let config = HerdConfig::new(&["Solo"], &[], "");
    let _server = config.serve("Solo");
    let log = log_dir(&config).join("Solo.log");
    // Every client's position is in there: owner only.
    assert_eq!(mode(&log), 0o600, "{}", log.display());
    assert_eq!(mode(&log_dir(&config)), 0o700);
}

#[test]
fn an_existing_world_readable_log_is_tightened() {
    let config = HerdConfig::new(&["Solo"], &[], "");
    let log = log_dir(&config).join("Solo.log");
    std::fs::create_dir_all(log_dir(&config)).unwrap();
    std::fs::write(&log, b"old line\n").unwrap();
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o644)).unwrap();
    let _server = config.serve("Solo");
    assert_eq!(mode(&log), 0o600);
    assert!(std::fs::read_to_string(&log).unwrap().starts_with("old line\n"), "appended, not truncated");
}

/// Every file at most `log_max_bytes`, at most `log_keep` rotated files, lines never split, and together
/// the files hold every IAMAT that was logged, in order.
#[test]
fn the_log_rotates_at_its_size_and_keeps_log_keep_files() {
    let max = 4096;
    let config = HerdConfig::new(&["Solo"], &[], &format!(r#""log_max_bytes": {max}, "log_keep": 2"#));
    let _server = config.serve("Solo");
    let port = config.port("Solo");
    let mut s = connect(port);
    let n = 200;
    let mut burst = Vec::new();
    for i in 0..n {
        burst.extend_from_slice(format!("IAMAT rot{i:04} +1+1 1700000000\n").as_bytes());
    }
    s.write_all(&burst).unwrap();
    let got = read_until(&mut s, format!("rot{:04} +1+1 1700000000\n", n - 1).as_bytes());
    assert_eq!(got.iter().filter(|&&b| b == b'\n').count(), n);
    let dir = log_dir(&config);
    let file = |k: u32| if k == 0 { dir.join("Solo.log") } else { dir.join(format!("Solo.log.{k}")) };
    // About 150 bytes of log per IAMAT, 30 KB in all: rotated several times; only the newest 3 files stay.
    wait_for("the last reply in the log", Duration::from_secs(5), || {
        std::fs::read_to_string(file(0)).unwrap_or_default().contains("AT Solo")
            && std::fs::read_to_string(file(0)).unwrap_or_default().contains(&format!("rot{:04}", n - 1))
    });
    assert!(file(1).exists() && file(2).exists(), "two rotated files kept");
    assert!(!file(3).exists(), "log_keep 2: no third rotated file");
    let mut all = String::new();
    for k in [2, 1, 0] {
        let text = std::fs::read_to_string(file(k)).unwrap();
        assert!(text.len() <= max, "{}: {} bytes", file(k).display(), text.len());
        assert!(text.ends_with('\n'), "{}: a line was split", file(k).display());
        assert_eq!(mode(&file(k)), 0o600);
        all.push_str(&text);
    }
    // The newest lines are kept, contiguous and in order: the received commands form a run that ends at
    // the last one.
    let received: Vec<usize> = all
        .lines()
        .filter(|l| l.contains(" recv "))
        .filter_map(|l| l.split("IAMAT rot").nth(1))
        .map(|rest| rest[..4].parse().unwrap())
        .collect();
    assert_eq!(received.last(), Some(&(n - 1)));
    assert!(received.windows(2).all(|w| w[1] == w[0] + 1), "{received:?}");
}

/// logrotate's `create` mode: the file is renamed away, SIGHUP, and the server writes a fresh file. SIGHUP
/// must never stop the server.
#[test]
fn sighup_reopens_the_log_and_the_server_keeps_serving() {
    let config = HerdConfig::new(&["Solo"], &[], "");
    let mut server = config.serve("Solo");
    let port = config.port("Solo");
    let dir = log_dir(&config);
    grader(port, b"IAMAT before +1+1 1700000000\n");
    wait_for("the first IAMAT in the log", Duration::from_secs(5), || {
        std::fs::read_to_string(dir.join("Solo.log")).unwrap_or_default().contains("before")
    });
    std::fs::rename(dir.join("Solo.log"), dir.join("Solo.log.old")).unwrap();
    server.signal(libc::SIGHUP);
    wait_for("a fresh Solo.log", Duration::from_secs(5), || dir.join("Solo.log").exists());
    let reply = grader(port, b"IAMAT after +1+1 1700000000\n");
    assert!(reply.starts_with(b"AT Solo "), "still serving: {:?}", String::from_utf8_lossy(&reply));
    wait_for("the second IAMAT in the new file", Duration::from_secs(5), || {
        std::fs::read_to_string(dir.join("Solo.log")).unwrap_or_default().contains("after")
    });
    assert!(!std::fs::read_to_string(dir.join("Solo.log.old")).unwrap().contains("after"));
    assert_eq!(mode(&dir.join("Solo.log")), 0o600);
    assert!(server.is_running(), "SIGHUP stopped the server");
    // And SIGTERM still stops it cleanly, with its shut-down line in the new file.
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(Duration::from_secs(3)).is_some_and(|s| s.success()));
    assert!(std::fs::read_to_string(dir.join("Solo.log")).unwrap().contains("stop:"));
}

#[test]
fn log_detail_events_keeps_connections_but_not_commands() {
    let config = HerdConfig::new(&["Solo"], &[], r#""log_detail": "events""#);
    let mut server = config.serve("Solo");
    let port = config.port("Solo");
    let reply = grader(port, b"IAMAT secret-spot +34.068930-118.445127 1700000000\n");
    assert!(reply.starts_with(b"AT Solo "));
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(Duration::from_secs(3)).is_some());
    let text = config.log_text("Solo");
    assert!(text.contains(" connected"), "{text}");
    assert!(!text.contains("secret-spot"), "no command or reply line with detail=events:\n{text}");
    assert!(!text.contains(" recv ") && !text.contains(" send "), "{text}");
}

/// Records exchanged with a neighbour: at the default detail (`io`) one line per read and per hand-off
/// with their counts, never the records themselves; at `records`, a line per record sent and received.
/// Two linked servers, three IAMATs at A answered one at a time: three reads at B, three hand-offs at A.
#[test]
fn peer_records_are_counted_at_io_and_logged_one_by_one_at_records() {
    for detail in ["io", "records"] {
        let config = HerdConfig::new(&["A", "B"], &[("A", "B")], &format!(r#""log_detail": "{detail}""#));
        let mut herd = Herd::start(config);
        let mut lines = Vec::new();
        for i in 0..3 {
            let reply = grader(herd.port("A"), format!("IAMAT counted{i} +1+1 1700000000\n").as_bytes());
            let line = String::from_utf8(reply).unwrap();
            wait_record(herd.port("B"), &format!("counted{i}"), line.trim_end(), Duration::from_secs(5));
            lines.push(line.trim_end().to_string());
        }
        // SIGTERM, waited for: every line reaches the files.
        for p in herd.procs.values_mut() {
            p.signal(libc::SIGTERM);
        }
        for p in herd.procs.values_mut() {
            p.wait_exit(Duration::from_secs(3)).expect("exits");
        }
        let (a, b) = (herd.config.log_text("A"), herd.config.log_text("B"));
        let count = |text: &str, pat: &str| text.lines().filter(|l| l.contains(pat)).count();
        match detail {
            "io" => {
                assert_eq!(count(&b, " peer-recv A records=1 bytes="), 3, "B:\n{b}");
                // The whole line: `notice=` only when there were notices, and no line for a hand-off that
                // sent a neighbour nothing.
                let ends = |text: &str, pat: &str| text.lines().filter(|l| l.ends_with(pat)).count();
                assert_eq!(ends(&a, " peer-send B tree=1 flood=0 repair=0"), 3, "A:\n{a}");
                assert_eq!(count(&a, " peer-send "), 3, "A:\n{a}");
                assert!(!b.contains("peer-recv A AT") && !a.contains(" flood tree: B AT"), "A:\n{a}\nB:\n{b}");
            }
            _ => {
                for line in &lines {
                    assert_eq!(count(&b, &format!(" peer-recv A {line}")), 1, "B:\n{b}");
                    assert_eq!(count(&a, &format!(" flood tree: B {line}")), 1, "A:\n{a}");
                }
                assert!(!b.contains("records=") && !a.contains("peer-send"), "A:\n{a}\nB:\n{b}");
            }
        }
    }
}

/// Bytes from the network reach the log escaped, whichever way they come in: a client's command, a name
/// in a peer's HELLO.
#[test]
fn no_raw_control_byte_from_the_network_reaches_the_log() {
    let config = HerdConfig::new(&["A", "B"], &[("A", "B")], "");
    let mut server = config.serve("A");
    grader(config.port("A"), b"IAMAT evil\x1b[2J +1+1 1700000000\x07\n");
    grader(config.port("A"), b"WHATSAT \x1b]0;owned\x07 10 5\n");
    let peer = connect(config.member("A").peer_port);
    let mut r = BufReader::new(peer.try_clone().unwrap());
    (&peer).write_all(b"HELLO Mal\x1b[31mlory A 00\n").unwrap();
    let mut line = String::new();
    let _ = r.read_line(&mut line);
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(Duration::from_secs(3)).is_some());
    let bytes = std::fs::read(log_dir(&config).join("A.log")).unwrap();
    let raw: Vec<(usize, u8)> =
        bytes.iter().copied().enumerate().filter(|&(_, b)| (b < 0x20 && b != b'\n') || b == 0x7f).collect();
    assert!(raw.is_empty(), "raw control bytes at {raw:?} in:\n{}", String::from_utf8_lossy(&bytes));
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("evil\\x1b[2J"), "the command is there, escaped:\n{text}");
    assert!(text.contains("Mal\\x1b[31mlory"), "the HELLO name is there, escaped:\n{text}");
}
