//! The client side of PROTOCOL sections 1, 2 and 4 against a real `herd serve` on loopback.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

fn one_server() -> (HerdConfig, Proc) {
    let config = HerdConfig::new(&["Solo"], &[], "");
    let proc = config.serve("Solo");
    (config, proc)
}

#[test]
fn grader_style_iamat_without_newline_gets_the_whole_reply_in_one_read() {
    let (config, _server) = one_server();
    let port = config.port("Solo");
    let time = now_text();
    let reply = grader(port, format!("IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 {time}").as_bytes());
    let diff =
        check_at(std::str::from_utf8(&reply).unwrap(), "Solo", "kiwi.cs.ucla.edu", "+34.068930-118.445127", &time);
    assert!((0.0..5.0).contains(&diff), "time diff {diff}");

    // The spec's own example, whose client time is years in the past.
    let reply = grader(port, b"IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 1520023934.918963997");
    let diff = check_at(
        std::str::from_utf8(&reply).unwrap(),
        "Solo",
        "kiwi.cs.ucla.edu",
        "+34.068930-118.445127",
        "1520023934.918963997",
    );
    assert!(diff > 2.0e8, "{diff}");

    // A client time a little in the future (within limits.max_clock_skew_s, 300 s by default) gives a
    // negative difference.
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let ahead = format!("{}.5", secs + 100);
    let reply = grader(port, format!("IAMAT a +12-118 {ahead}\n").as_bytes());
    let diff = check_at(std::str::from_utf8(&reply).unwrap(), "Solo", "a", "+12-118", &ahead);
    assert!((-100.5..-98.0).contains(&diff), "time diff {diff}");
}

/// PROTOCOL section 2's bounds, each checked one byte past the limit and at the limit. A command that
/// breaks one is invalid: `? ` and the line. The accepted cases are what a client at the limit needs.
#[test]
fn every_field_bound_is_enforced_for_clients() {
    let (config, _server) = one_server();
    let port = config.port("Solo");
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let refused = |line: String| {
        let want = format!("? {line}\n");
        assert_eq!(String::from_utf8(grader(port, line.as_bytes())).unwrap(), want);
    };
    let accepted = |line: String| {
        let reply = String::from_utf8(grader(port, line.as_bytes())).unwrap();
        assert!(reply.starts_with("AT Solo "), "{line:?} must be accepted: {reply:?}");
    };
    // Client time: far in the future (the 16,361-digit attack, and just past the 300 s skew).
    refused(format!("IAMAT far +1+1 {}", "9".repeat(16_361)));
    refused(format!("IAMAT far +1+1 {}", secs + 400));
    accepted(format!("IAMAT near +1+1 {}", secs + 200));
    // Client time: 40 bytes at most (a long fraction of an old time is fine up to that).
    let t40 = format!("1700000000.{}", "1".repeat(29));
    assert_eq!(t40.len(), 40);
    accepted(format!("IAMAT t40 +1+1 {t40}"));
    refused(format!("IAMAT t41 +1+1 {t40}1"));
    // Location: 64 bytes at most.
    let loc64 = format!("+{}-118", "0".repeat(59));
    assert_eq!(loc64.len(), 64);
    accepted(format!("IAMAT l64 {loc64} 1700000000"));
    refused(format!("IAMAT l65 +0{} 1700000000", &loc64[1..]));
    // Client id: 255 bytes, no control byte.
    accepted(format!("IAMAT {} +1+1 1700000000", "i".repeat(255)));
    refused(format!("IAMAT {} +1+1 1700000000", "i".repeat(256)));
    refused("IAMAT esc\x1b[31m +1+1 1700000000".to_string());
    refused("IAMAT del\x7f +1+1 1700000000".to_string());
    refused("IAMAT nul\x00 +1+1 1700000000".to_string());
    refused("WHATSAT bell\x07 10 5".to_string());
    accepted("IAMAT caf\u{e9} +1+1 1700000000".to_string());
}

#[test]
fn every_invalid_example_is_echoed_byte_for_byte() {
    let (config, _server) = one_server();
    let port = config.port("Solo");
    let id256 = "x".repeat(256);
    let cases: Vec<Vec<u8>> = vec![
        b"IAMAT kiwi.cs.ucla.edu +34.-118. 1520023934.918963997".to_vec(),
        b"IAMAT a 34.068930-118.445127 1".to_vec(),
        b"IAMAT a +90.0000001+0 1".to_vec(),
        b"IAMAT a +0+180.0000001 1".to_vec(),
        b"IAMAT a +1e1+0 1".to_vec(),
        b"IAMAT a +0+0 1700000000.".to_vec(),
        b"IAMAT a +0+0 .5".to_vec(),
        b"IAMAT a +0+0 +5".to_vec(),
        b"IAMAT a +0+0 1e9".to_vec(),
        b"IAMAT a +0+0".to_vec(),
        b"IAMAT a +0+0 1 1".to_vec(),
        format!("IAMAT {id256} +0+0 1").into_bytes(),
        b"WHATSAT a 10. 5".to_vec(),
        b"WHATSAT a .5 5".to_vec(),
        b"WHATSAT a 1e1 5".to_vec(),
        b"WHATSAT a 0 5".to_vec(),
        b"WHATSAT a 51 5".to_vec(),
        b"WHATSAT a 10 21".to_vec(),
        b"WHATSAT never-seen 10 5".to_vec(),
        b"AT Solo +0.263873386 kiwi.cs.ucla.edu +34.068930-118.445127 1520023934.918963997".to_vec(),
        b"hello world".to_vec(),
        b"\tIAMAT  a\x0b+0+0\x0c1 x ".to_vec(),
        b"IAMAT \xff\xfe +0+0 1 \x00".to_vec(),
    ];
    for case in &cases {
        // Without a newline, then half-close: one read.
        let mut want = b"? ".to_vec();
        want.extend_from_slice(case);
        want.push(b'\n');
        assert_eq!(grader(port, case), want, "case {:?}", String::from_utf8_lossy(case));
        // With CRLF the CR is not echoed; with LF alone everything before it is.
        let mut crlf = case.clone();
        crlf.extend_from_slice(b"\r\n");
        assert_eq!(grader(port, &crlf), want, "CRLF case {:?}", String::from_utf8_lossy(case));
    }
}

#[test]
fn blank_lines_get_no_reply_and_whatsat_answers_the_stored_line() {
    let (config, _server) = one_server();
    let port = config.port("Solo");
    let time = now_text();
    let iamat = format!("IAMAT kiwi +34.068930-118.445127 {time}\n");
    let out = ask(port, format!("\n \t\r\n\x0b\x0c\n{iamat}\n\nWHATSAT kiwi 10 5\n").as_bytes());
    let text = String::from_utf8(out).unwrap();
    let (at, rest) = text.split_once('\n').unwrap();
    check_at(&format!("{at}\n"), "Solo", "kiwi", "+34.068930-118.445127", &time);
    // WHATSAT: the stored AT line again, a legacy JSON object, an empty line.
    let (at2, json) = rest.split_once('\n').unwrap();
    assert_eq!(at2, at);
    assert!(json.ends_with("}\n\n"), "{json:?}");
    let value: serde_json::Value = serde_json::from_str(json.trim_end()).unwrap();
    assert_eq!(value["results"], serde_json::json!([]));
    assert!(value["status"].is_string());
    assert!(!json.trim_end().contains("\n\n"));
}

#[test]
fn two_hundred_pipelined_commands_are_answered_in_order() {
    let (config, _server) = one_server();
    let port = config.port("Solo");
    let mut burst = Vec::new();
    let mut want_kinds = Vec::new();
    for i in 0..200 {
        match i % 4 {
            0 | 1 => {
                burst.extend_from_slice(format!("IAMAT c{i} +1.5-2.25 {}\n", 1_700_000_000 + i).as_bytes());
                want_kinds.push(format!("AT Solo c{i}"));
            }
            2 => {
                burst.extend_from_slice(format!("bogus {i}\n").as_bytes());
                want_kinds.push(format!("? bogus {i}"));
            }
            _ => {
                burst.extend_from_slice(format!("WHATSAT c{} 5 3\n", i - 3).as_bytes());
                want_kinds.push(format!("AT Solo c{}", i - 3));
            }
        }
    }
    let mut s = connect(port);
    s.write_all(&burst).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let text = String::from_utf8(read_to_end(&mut s)).unwrap();
    // Split replies: an AT line, optionally followed by JSON up to a blank line for WHATSAT.
    let mut replies = Vec::new();
    let mut rest = text.as_str();
    while !rest.is_empty() {
        let (line, after) = rest.split_once('\n').unwrap();
        if after.starts_with('{') {
            let end = after.find("\n\n").unwrap();
            rest = &after[end + 2..];
        } else {
            rest = after;
        }
        replies.push(line.to_string());
    }
    assert_eq!(replies.len(), 200);
    for (got, want) in replies.iter().zip(&want_kinds) {
        let got_kind = if got.starts_with("AT ") {
            let f: Vec<&str> = got.split(' ').collect();
            format!("AT {} {}", f[1], f[3])
        } else {
            got.clone()
        };
        assert_eq!(&got_kind, want);
    }
}

#[test]
fn an_over_long_line_closes_only_that_connection_after_the_replies_owed() {
    let (config, _server) = one_server();
    let port = config.port("Solo");
    let mut bystander = connect(port);
    bystander.write_all(b"IAMAT b +1+1 1\n").unwrap();
    read_until(&mut bystander, b"\n");

    for long in [16_385usize, 100_000] {
        let mut s = connect(port);
        let mut bytes = b"IAMAT a +1+1 1\n".to_vec();
        bytes.extend(std::iter::repeat_n(b'x', long));
        // Do not half-close: the server must close by itself.
        s.write_all(&bytes).unwrap();
        let got = read_to_end(&mut s);
        let text = String::from_utf8(got).unwrap();
        assert!(text.starts_with("AT Solo ") && text.ends_with(" a +1+1 1\n"), "{text:?}");
        assert_eq!(text.matches('\n').count(), 1, "no reply to the long line: {text:?}");
    }
    // Exactly at the limit is fine.
    let mut line = b"IAMAT a +1+1 1 ".to_vec();
    line.resize(16_384, b'y');
    line.push(b'\n');
    let reply = ask(port, &line);
    assert_eq!(&reply[..2], b"? ");
    assert_eq!(reply.len(), 2 + 16_384 + 1);

    bystander.write_all(b"IAMAT b +1+1 2\n").unwrap();
    let text = String::from_utf8(read_until(&mut bystander, b"\n")).unwrap();
    assert!(text.starts_with("AT Solo "), "the bystander is unaffected: {text}");
}

#[test]
fn a_thousand_concurrent_connections_are_each_answered() {
    let (config, _server) = one_server();
    let port = config.port("Solo");
    let mut conns: Vec<_> = (0..1000).map(|_| connect(port)).collect();
    for (i, s) in conns.iter_mut().enumerate() {
        s.write_all(format!("IAMAT conn{i} +1+1 {}\n", 1_700_000_000 + i).as_bytes()).unwrap();
    }
    for (i, s) in conns.iter_mut().enumerate() {
        let text = String::from_utf8(read_until(s, b"\n")).unwrap();
        assert!(text.starts_with("AT Solo ") && text.contains(&format!(" conn{i} ")), "{text}");
    }
    for (i, s) in conns.iter_mut().enumerate().step_by(100) {
        s.write_all(format!("WHATSAT conn{} 1 1\n", (i + 1) % 1000).as_bytes()).unwrap();
        let text = String::from_utf8(read_until(s, b"\n\n")).unwrap();
        assert!(text.contains(&format!(" conn{} ", (i + 1) % 1000)), "{text}");
    }
}

#[test]
fn newer_records_win_and_older_ones_are_answered_but_not_stored() {
    let (config, _server) = one_server();
    let port = config.port("Solo");
    ask(port, b"IAMAT k +1+1 1700000300.0000000001\n");
    let older = ask(port, b"IAMAT k +2+2 1700000300\n");
    assert!(String::from_utf8(older).unwrap().ends_with(" k +2+2 1700000300\n"), "answered normally");
    let out = String::from_utf8(ask(port, b"WHATSAT k 1 0\n")).unwrap();
    assert!(out.starts_with("AT Solo ") && out.contains(" k +1+1 1700000300.0000000001\n"), "{out}");
}

#[test]
fn sigterm_answers_what_was_received_then_exits() {
    let (config, mut server) = one_server();
    let port = config.port("Solo");
    let mut s = connect(port);
    s.write_all(b"IAMAT late +1+1 1\nIAMAT late2 +1+1 1\n").unwrap();
    server.signal(libc::SIGTERM);
    let text = String::from_utf8(read_to_end(&mut s)).unwrap();
    assert_eq!(text.lines().count(), 2, "{text:?}");
    let status = server.wait_exit(Duration::from_secs(2)).expect("exits within 2 s");
    assert!(status.success(), "{status}");
    let log = config.log_text("Solo");
    assert!(log.contains("recv 127.0.0.1:") && log.contains("IAMAT late2 +1+1 1"), "{log}");
    assert!(log.contains("stop: "), "{log}");
}

#[test]
fn the_log_records_commands_replies_and_connections() {
    let (config, mut server) = one_server();
    let port = config.port("Solo");
    ask(port, b"IAMAT logged +1+1 1\nnonsense \xff\n");
    server.signal(libc::SIGTERM);
    server.wait_exit(Duration::from_secs(2)).expect("exit");
    let log = config.log_text("Solo");
    for want in [
        "start: Solo listening",
        "connected",
        "recv 127.0.0.1:",
        "IAMAT logged +1+1 1",
        "send 127.0.0.1:",
        "nonsense \\xff",
        "closed: eof",
    ] {
        assert!(log.contains(want), "log lacks {want:?}:\n{log}");
    }
}

#[test]
fn config_and_start_up_errors_exit_2_with_one_line() {
    let dir = TempDir::new("cfg");
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let run = |args: &[&str]| {
        let out = std::process::Command::new(herd_bin()).args(args).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let (a, b) = (free_port(), free_port());
    let good = format!(
        r#"{{"servers": [{{"name": "A", "port": {a}, "peer_port": {b}}}], "log_dir": "{}"}}"#,
        dir.path().join("l").display()
    );
    let path = write("good.json", &good);
    let cases = [
        (vec!["serve", "Nobody", "--config", path.to_str().unwrap()], "unknown server \"Nobody\""),
        (vec!["serve", "A", "--config", "/nonexistent/herd.json"], "cannot read"),
        (vec!["serve"], "exactly one server NAME"),
        (vec!["frobnicate"], "unknown command"),
    ];
    for (args, want) in cases {
        let (code, err) = run(&args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    let bad = [
        (good.replace(&format!("\"port\": {a}"), "\"port\": \"x\""), "servers[0].port: expected an integer"),
        (good.replace(&format!("{b}"), &format!("{a}")), "already used by A.port"),
        (good.replace("\"log_dir\"", "\"links\": [[\"A\", \"Z\"]], \"log_dir\""), "links[0]: unknown server \"Z\""),
        (good.replace("\"name\": \"A\", ", ""), "servers[0].name: missing"),
    ];
    for (i, (text, want)) in bad.iter().enumerate() {
        let p = write(&format!("bad{i}.json"), text);
        for cmd in ["serve", "up"] {
            let mut args = vec![cmd];
            if cmd == "serve" {
                args.push("A");
            }
            args.extend(["--config", p.to_str().unwrap()]);
            let (code, err) = run(&args);
            assert_eq!(code, Some(2), "{cmd} {text}: {err}");
            assert!(err.contains(want) && err.trim_end().lines().count() == 1, "{cmd}: want {want:?}, got {err:?}");
        }
    }
    // A port in use: the running server keeps it, the second exits 2 naming the address.
    let config = HerdConfig::new(&["A"], &[], "");
    let _first = config.serve("A");
    let started = Instant::now();
    let (code, err) = run(&["serve", "A", "--config", config.path.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(&format!("127.0.0.1:{}", config.port("A"))) && err.contains("in use"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let (code, err) = run(&["up", "--config", config.path.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("in use"), "{err}");
}

#[test]
fn up_runs_every_server_and_stops_them_all_on_sigterm() {
    let names = ["Bailey", "Bona", "Campbell", "Clark", "Jaquez"];
    let config = HerdConfig::new(&names, &[], "");
    let mut up = Proc::start("up", &["up", "--config", config.path.to_str().unwrap()], &[], "servers up");
    for name in names {
        let reply = grader(config.port(name), b"IAMAT u +1+1 1");
        assert!(reply.starts_with(format!("AT {name} ").as_bytes()), "{name}: {:?}", String::from_utf8_lossy(&reply));
    }
    up.signal(libc::SIGTERM);
    let status = up.wait_exit(Duration::from_secs(3)).expect("up exits");
    assert!(status.success(), "{status}");
    for name in names {
        assert!(std::net::TcpStream::connect(("127.0.0.1", config.port(name))).is_err(), "{name} still listening");
    }
}

#[test]
fn a_client_that_vanishes_costs_only_itself() {
    let (config, _server) = one_server();
    let port = config.port("Solo");
    for _ in 0..20 {
        let mut s = connect(port);
        s.write_all(b"IAMAT gone +1+1 1\nIAMAT gone +1+1 2\nWHATSAT gone 1 1\n").unwrap();
        // Reset instead of a clean close.
        socket_linger_zero(&s);
        drop(s);
    }
    let reply = grader(port, b"IAMAT after +1+1 1\n");
    assert!(reply.starts_with(b"AT Solo "));
    let mut s = connect(port);
    let mut buf = [0u8; 1];
    s.write_all(b"\n").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    assert!(s.read(&mut buf).is_err(), "a blank line gets no reply");
}

fn socket_linger_zero(s: &std::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setsockopt on a socket we own, with a properly sized struct.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_client_that_does_not_read_is_throttled_and_the_others_are_not() {
    let limits = r#""limits": {"client_output_soft": 65536, "client_output_hard": 1048576}"#;
    let config = HerdConfig::new(&["Solo"], &[], limits);
    let server = config.serve("Solo");
    let port = config.port("Solo");
    const N: usize = 400_000;
    let mut burst = Vec::with_capacity(N * 28);
    for i in 0..N {
        burst.extend_from_slice(format!("IAMAT t{} +1+1 {i}\n", i % 100).as_bytes());
    }
    let hog = connect(port);
    hog.set_write_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut writer = hog.try_clone().unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = done.clone();
    let handle = std::thread::spawn(move || {
        writer.write_all(&burst).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    // Another client is answered promptly while the hog does not read.
    for i in 0..50 {
        let started = Instant::now();
        let reply = ask(port, format!("IAMAT polite +1+1 {i}\n").as_bytes());
        assert!(reply.starts_with(b"AT Solo "));
        assert!(started.elapsed() < Duration::from_millis(500), "{:?}", started.elapsed());
    }
    // 10 MB do not fit the kernel's buffers: the hog's writer is still blocked, because the server
    // stopped reading it, and the server holds no more than its bounds.
    assert!(!done.load(std::sync::atomic::Ordering::SeqCst), "the server should have stopped reading");
    assert!(rss_kib(server.child.id()) < 64 * 1024, "RSS {} KiB", rss_kib(server.child.id()));
    // Now the hog reads: every reply, in order.
    let mut reader = hog;
    reader.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut all = Vec::new();
    reader.read_to_end(&mut all).unwrap();
    handle.join().unwrap();
    let text = String::from_utf8(all).unwrap();
    let mut count = 0;
    for (i, line) in text.lines().enumerate() {
        assert!(line.ends_with(&format!(" t{} +1+1 {i}", i % 100)), "reply {i}: {line}");
        count += 1;
    }
    assert_eq!(count, N);
}

#[test]
fn a_line_left_unfinished_is_closed_after_the_line_time_out() {
    let config = HerdConfig::new(&["Solo"], &[], r#""limits": {"line_timeout_ms": 300}"#);
    let _server = config.serve("Solo");
    let port = config.port("Solo");
    let mut slow = connect(port);
    let started = Instant::now();
    slow.write_all(b"IAMAT done +1+1 1\nIAMAT never-fin").unwrap();
    // The finished command is answered; the unfinished one ends the connection, without a reply.
    let text = String::from_utf8(read_to_end(&mut slow)).unwrap();
    assert!(text.starts_with("AT Solo ") && text.ends_with(" done +1+1 1\n"), "{text:?}");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(3), "{took:?}");
    // A client that finishes its lines in time is unaffected.
    let mut steady = connect(port);
    for i in 0..3 {
        steady.write_all(format!("IAMAT steady +1+1 {i}").as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        steady.write_all(b"\n").unwrap();
        assert!(read_until(&mut steady, b"\n").starts_with(b"AT Solo "));
    }
    // Our EOF ends the server's lingering close; the log says why it closed.
    drop(slow);
    let deadline = Instant::now() + Duration::from_secs(3);
    while !config.log_text("Solo").contains("closed: line_timeout") {
        assert!(Instant::now() < deadline, "{}", config.log_text("Solo"));
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn at_the_client_limit_the_server_stops_accepting_and_resumes_when_a_slot_frees() {
    let config = HerdConfig::new(&["Solo"], &[], r#""limits": {"max_clients": 3}"#);
    let _server = config.serve("Solo");
    let port = config.port("Solo");
    let mut first: Vec<_> = (0..3).map(|_| connect(port)).collect();
    for (i, s) in first.iter_mut().enumerate() {
        s.write_all(format!("IAMAT c{i} +1+1 1\n").as_bytes()).unwrap();
        read_until(s, b"\n");
    }
    // The fourth connects (the kernel's backlog) but is not served while three are open.
    let mut fourth = connect(port);
    fourth.write_all(b"IAMAT c3 +1+1 1\n").unwrap();
    fourth.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut buf = [0u8; 64];
    assert!(fourth.read(&mut buf).is_err(), "served beyond the limit");
    // One closes: the fourth is accepted and answered at once.
    drop(first.pop());
    fourth.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let text = String::from_utf8(read_until(&mut fourth, b"\n")).unwrap();
    assert!(text.starts_with("AT Solo ") && text.contains(" c3 "), "{text}");
}

#[test]
fn a_whatsat_does_not_see_an_iamat_that_arrived_after_it() {
    // With a neighbour linked, an unknown client waits for the herd; a later local IAMAT must not end it.
    let config = HerdConfig::new(&["A", "B"], &[("A", "B")], "");
    let _b = config.serve("B");
    let a = config.serve("A");
    a.wait_stderr("linked to B", 1, Duration::from_secs(5));
    let text = String::from_utf8(ask(config.port("A"), b"WHATSAT late 1 1\nIAMAT late +1+1 1700000000\n")).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("? WHATSAT late 1 1"), "{text}");
    assert!(lines.next().unwrap().starts_with("AT A "), "{text}");
}

#[test]
fn a_client_that_never_reads_is_dropped_after_the_idle_time_out() {
    let limits = r#""limits": {"idle_timeout_ms": 300, "client_output_soft": 65536}"#;
    let config = HerdConfig::new(&["Solo"], &[], limits);
    let _server = config.serve("Solo");
    let port = config.port("Solo");
    let mut burst = Vec::new();
    // 25 MB: more than the kernel's buffers in both directions hold.
    for i in 0..1_000_000 {
        burst.extend_from_slice(format!("IAMAT n{} +1+1 {i}\n", i % 10).as_bytes());
    }
    // Connect only now: building the burst takes longer than the idle time-out.
    let mut hog = connect(port);
    hog.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    // The server stops reading, then drops the connection: the writes end in an error, not a hang.
    let started = Instant::now();
    let result = hog.write_all(&burst);
    assert!(result.is_err(), "the server kept a client that never reads");
    assert!(started.elapsed() < Duration::from_secs(8), "{:?}", started.elapsed());
    let deadline = Instant::now() + Duration::from_secs(3);
    while !config.log_text("Solo").contains("closed: output_bound") {
        assert!(Instant::now() < deadline, "{}", config.log_text("Solo"));
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn shutdown_drops_a_half_sent_line_and_is_not_held_up_by_a_streaming_client() {
    let (config, mut server) = one_server();
    let port = config.port("Solo");
    // A client that streams blank lines without end, and one that has sent half a command.
    let stream_port = port;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let streamer = std::thread::spawn(move || {
        let mut s = connect(stream_port);
        let chunk = vec![b'\n'; 64 * 1024];
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            if s.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    let mut half = connect(port);
    half.write_all(b"IAMAT half +1+1 1").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(2)).expect("exits within 2 s while a client streams");
    assert!(status.success(), "{status}");
    assert!(started.elapsed() < Duration::from_secs(2));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = streamer.join();
    // The half-sent line was not a command: no reply, nothing stored.
    let got = read_to_end(&mut half);
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    assert!(config.log_text("Solo").contains("unfinished line dropped at shut-down"));
}

#[test]
fn the_trace_shows_every_event_transition_write_and_turn_of_a_session() {
    let config = HerdConfig::new(&["Solo"], &[], "");
    let server = config.serve_env("Solo", &[("RUST_LOG", "herd::event_loop=trace")]);
    let reply = ask(config.port("Solo"), b"IAMAT kiwi +1+1 1\nWHATSAT kiwi 10 1\n");
    assert!(reply.starts_with(b"AT Solo "));
    let deadline = Instant::now() + Duration::from_secs(3);
    let want = [
        "event client-listener: readable=true",
        "event #",
        "read_closed=true",
        ": Open -> Draining(Eof) (event)",
        ": wrote ",
        ": Draining(Eof) -> Closed(Eof) (flush)",
        " 2 commands, 1 writes, ",
    ];
    loop {
        let err = server.stderr().join("\n");
        if want.iter().all(|w| err.contains(w)) {
            break;
        }
        assert!(Instant::now() < deadline, "trace lacks some of {want:?}:\n{err}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// PROTOCOL section 1: "A final command without LF is still a command when the client half-closes".
/// Until the half-close the unfinished line is not a command (no reply to it, checked with a read that
/// must time out), and at the half-close it is answered like any other, after the replies before it,
/// and then the server closes (EOF, not a time-out): for an IAMAT, a WHATSAT waiting on Places, an
/// invalid command (echoed exactly) and a blank line (no reply).
#[test]
fn a_final_command_without_lf_is_answered_at_the_half_close() {
    let service = PlacesService::start(&["--fault", "delay=200"]);
    let config = HerdConfig::new(&["Solo"], &[], &service.config("legacy", "HC_KEY", 3000));
    let _server = config.serve_env("Solo", &[("HC_KEY", "k")]);
    let port = config.port("Solo");

    // An IAMAT after a complete one, sent before the half-close in a separate write.
    let mut s = connect(port);
    s.write_all(b"IAMAT first +1+1 1\nIAMAT last +34.068930-118.445127 1700000000.5").unwrap();
    let first = read_until(&mut s, b"\n");
    check_at(std::str::from_utf8(&first).unwrap(), "Solo", "first", "+1+1", "1");
    s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut buf = [0u8; 256];
    match s.read(&mut buf) {
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
        other => panic!("an unfinished line was answered before the half-close: {other:?} {:?}", &buf[..8]),
    }
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let rest = read_to_end(&mut s); // EOF after the reply: a time-out fails here
    check_at(std::str::from_utf8(&rest).unwrap(), "Solo", "last", "+34.068930-118.445127", "1700000000.5");

    // A WHATSAT that waits 200 ms on Places, unfinished at the half-close: answered, then closed.
    let out = ask(port, b"WHATSAT last 10 3");
    let (at, value, _) = split_whatsat(&out);
    assert_eq!(format!("{at}\n").as_bytes(), &rest[..]);
    assert_eq!(value["status"], "OK");
    assert_eq!(value["results"].as_array().unwrap().len(), 3);

    // After a pipelined pair, an invalid final command is echoed exactly, in order.
    let out = ask(port, b"IAMAT x +1+1 1\nWHATSAT nobody 1 1\nnot a \xffcommand");
    let text = String::from_utf8_lossy(&out);
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    assert_eq!(lines.len(), 3, "{text:?}");
    assert!(lines[0].starts_with("AT Solo "), "{text:?}");
    assert_eq!(lines[1], "? WHATSAT nobody 1 1\n");
    assert_eq!(&out[out.len() - 17..], b"? not a \xffcommand\n");

    // A final blank line gets no reply: just the earlier one, then EOF.
    let out = ask(port, b"IAMAT y +1+1 1\n \t");
    assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1, "{:?}", String::from_utf8_lossy(&out));
}
