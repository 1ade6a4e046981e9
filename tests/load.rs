//! `herd load` as a real process against small servers started here on free loopback ports.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// A line-echo server: one reply line per request line. Returns its port and a count of lines seen.
fn echo_server() -> (u16, Arc<AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let lines = Arc::new(AtomicU64::new(0));
    let seen = lines.clone();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            let seen = seen.clone();
            thread::spawn(move || {
                let _ = s.set_nodelay(true);
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::new(s);
                let mut line = Vec::new();
                loop {
                    line.clear();
                    match r.read_until(b'\n', &mut line) {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {
                            seen.fetch_add(1, Ordering::Relaxed);
                            if w.write_all(&line).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (port, lines)
}

/// A server answering every request line with `reply(line number)`, from one thread per connection.
fn line_server(reply: impl Fn(u64, &[u8]) -> Vec<u8> + Send + Sync + 'static) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let reply = Arc::new(reply);
    let count = Arc::new(AtomicU64::new(0));
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            let (reply, count) = (reply.clone(), count.clone());
            thread::spawn(move || {
                let _ = s.set_nodelay(true);
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::new(s);
                let mut line = Vec::new();
                loop {
                    line.clear();
                    match r.read_until(b'\n', &mut line) {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {
                            let n = count.fetch_add(1, Ordering::Relaxed);
                            if w.write_all(&reply(n, &line)).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    port
}

/// Runs `herd load ARGS`, killing it (and failing) if it has not finished within `limit`.
fn herd_load(args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_herd"))
        .arg("load")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "herd load {args:?} still running after {limit:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn json_of(out: &Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 1, "one JSON line on stdout: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn raw_against_an_echo_server_counts_every_reply() {
    let (port, lines) = echo_server();
    let target = format!("127.0.0.1:{port}");
    let dir = std::env::temp_dir().join(format!("herd-load-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let svg = dir.join("curve.svg");
    let out = herd_load(
        &[
            "--target",
            &target,
            "--workload",
            "raw",
            "--template",
            "SET k{i} v",
            "--connections",
            "8",
            "--depth",
            "4",
            "--requests",
            "2000",
            "--json",
            "--plot",
            svg.to_str().unwrap(),
        ],
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr_of(&out));
    let j = json_of(&out);
    assert_eq!(j["replies"], 2000, "{j}");
    assert_eq!(j["requests"], 2000, "{j}");
    assert_eq!(j["errors_total"], 0, "{j}");
    for k in ["invalid", "closed", "unexpected", "timeout", "connect"] {
        assert_eq!(j["errors"][k], 0, "{j}");
    }
    assert_eq!(j["unfinished"], 0, "{j}");
    assert_eq!(j["stopped_by"], "requests", "{j}");
    assert_eq!(j["latency_us"]["count"], 2000, "{j}");
    let p50 = j["latency_us"]["p50"].as_f64().unwrap();
    let p99 = j["latency_us"]["p99"].as_f64().unwrap();
    let max = j["latency_us"]["max"].as_f64().unwrap();
    assert!(p50 > 0.0 && p50 <= p99 && p99 <= max, "{j}");
    assert!(j["throughput_rps"].as_f64().unwrap() > 0.0, "{j}");
    // The default one-second warm-up came on top of the 2000 measured requests.
    assert!(lines.load(Ordering::Relaxed) >= 2000);
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(plot.starts_with("<svg") && plot.contains("<polyline"), "{plot}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn connections_spread_over_several_targets() {
    let (a, seen_a) = echo_server();
    let (b, seen_b) = echo_server();
    let (ta, tb) = (format!("127.0.0.1:{a}"), format!("127.0.0.1:{b}"));
    let out = herd_load(
        &[
            "--target",
            &ta,
            "--target",
            &tb,
            "--workload",
            "raw",
            "--template",
            "x{i}",
            "--connections",
            "4",
            "--requests",
            "1000",
            "--warmup",
            "0",
            "--json",
        ],
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr_of(&out));
    let j = json_of(&out);
    assert_eq!(j["replies"], 1000, "{j}");
    assert_eq!(j["per_target"][0]["target"], ta.as_str(), "{j}");
    assert_eq!(j["per_target"][1]["target"], tb.as_str(), "{j}");
    let ra = j["per_target"][0]["replies"].as_u64().unwrap();
    let rb = j["per_target"][1]["replies"].as_u64().unwrap();
    assert_eq!(ra + rb, 1000, "{j}");
    assert!(ra > 0 && rb > 0, "{j}");
    assert!(seen_a.load(Ordering::Relaxed) >= ra && seen_b.load(Ordering::Relaxed) >= rb);
}

#[test]
fn open_loop_sends_on_the_timetable() {
    let (port, _) = echo_server();
    let target = format!("127.0.0.1:{port}");
    let out = herd_load(
        &[
            "--target",
            &target,
            "--workload",
            "raw",
            "--template",
            "PING {i}",
            "--connections",
            "4",
            "--rate",
            "1000",
            "--requests",
            "500",
            "--warmup",
            "0",
            "--json",
        ],
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr_of(&out));
    let j = json_of(&out);
    assert_eq!(j["mode"], "open");
    assert_eq!(j["replies"], 500, "{j}");
    assert_eq!(j["errors_total"], 0, "{j}");
    // 500 requests at 1000/s: the last one is due at 499 ms, so the run cannot be shorter than that.
    let d = j["duration_s"].as_f64().unwrap();
    assert!((0.499..5.0).contains(&d), "{j}");
    assert_eq!(j["send_lag_us"]["count"], 500, "{j}");
}

#[test]
fn a_server_that_closes_connections_gives_closed_errors_and_no_hang() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    thread::spawn(move || {
        // Reads a little of what the client sent, then hangs up without answering.
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = [0u8; 16];
            let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
            let _ = s.read(&mut buf);
            drop(s);
        }
    });
    let target = format!("127.0.0.1:{port}");
    let args = [
        "--target",
        &target,
        "--workload",
        "raw",
        "--template",
        "PING",
        "--connections",
        "4",
        "--depth",
        "2",
        "--duration",
        "1",
        "--warmup",
        "0",
        "--json",
    ];
    let out = herd_load(&args, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr_of(&out));
    let j = json_of(&out);
    assert_eq!(j["replies"], 0, "{j}");
    assert!(j["errors"]["closed"].as_u64().unwrap() > 0, "{j}");
    assert!(j["connects"].as_u64().unwrap() > 4, "reconnected: {j}");
    // The same run with --fail-on-error exits 1.
    let mut failing = args.to_vec();
    failing.push("--fail-on-error");
    let out = herd_load(&failing, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn a_silent_server_gives_timeouts_and_no_hang() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming().flatten() {
            held.push(s); // accepts, never answers
        }
    });
    let target = format!("127.0.0.1:{port}");
    let out = herd_load(
        &[
            "--target",
            &target,
            "--workload",
            "raw",
            "--template",
            "PING",
            "--connections",
            "2",
            "--timeout-ms",
            "100",
            "--duration",
            "1",
            "--warmup",
            "0",
            "--json",
        ],
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr_of(&out));
    let j = json_of(&out);
    assert_eq!(j["replies"], 0, "{j}");
    assert!(j["errors"]["timeout"].as_u64().unwrap() >= 2, "{j}");
}

#[test]
fn nothing_listening_gives_connect_errors() {
    // Bind then drop: a loopback port with (almost certainly) nobody on it.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let target = format!("127.0.0.1:{port}");
    let out = herd_load(
        &["--target", &target, "--connections", "2", "--duration", "0.5", "--warmup", "0", "--json"],
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr_of(&out));
    let j = json_of(&out);
    assert!(j["errors"]["connect"].as_u64().unwrap() > 0, "{j}");
    assert_eq!(j["connects"], 0, "{j}");
    assert_eq!(j["stopped_by"], "duration", "{j}");

    // Waiting for a number of replies gives up after a time-out instead of the 600 s cap.
    let start = Instant::now();
    let out = herd_load(
        &["--target", &target, "--requests", "100", "--timeout-ms", "300", "--warmup", "0", "--json"],
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr_of(&out));
    let j = json_of(&out);
    assert_eq!(j["stopped_by"], "unreachable", "{j}");
    assert_eq!(j["replies"], 0, "{j}");
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn bad_arguments_exit_2_with_one_line() {
    for args in
        [vec!["--connections", "0"], vec!["--bogus"], vec!["--target", "10.0.0.1:80"], vec!["--workload", "raw"]]
    {
        let out = herd_load(&args, Duration::from_secs(30));
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = stderr_of(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with("herd load: "), "{err}");
        assert!(out.stdout.is_empty());
    }
    let out = herd_load(&["--help"], Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--rate R"));
}

#[test]
fn open_loop_latency_includes_a_stall_closed_loop_hides_it() {
    // Answers at once, except that the 200th request waits 300 ms.
    let stall = |n: u64, line: &[u8]| {
        if n == 200 {
            thread::sleep(Duration::from_millis(300));
        }
        line.to_vec()
    };
    let common = [
        "--workload",
        "raw",
        "--template",
        "x{i}",
        "--connections",
        "1",
        "--requests",
        "1000",
        "--warmup",
        "0",
        "--json",
    ];
    let run = |extra: &[&str]| {
        let target = format!("127.0.0.1:{}", line_server(stall));
        let mut args = vec!["--target", &target];
        args.extend_from_slice(&common);
        args.extend_from_slice(extra);
        let out = herd_load(&args, Duration::from_secs(60));
        assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr_of(&out));
        json_of(&out)
    };
    // Open loop at 1000/s: the ~300 requests due during the stall wait for it, and their latency says so.
    let open = run(&["--rate", "1000"]);
    assert_eq!(open["replies"], 1000, "{open}");
    let lat = &open["latency_us"];
    assert!(lat["max"].as_f64().unwrap() >= 280_000.0, "{open}");
    assert!(lat["p90"].as_f64().unwrap() >= 100_000.0, "{open}");
    // Closed loop: the generator waits with the server, so only one request sees the stall.
    let closed = run(&[]);
    assert_eq!(closed["replies"], 1000, "{closed}");
    let lat = &closed["latency_us"];
    assert!(lat["max"].as_f64().unwrap() >= 280_000.0, "{closed}");
    assert!(lat["p99"].as_f64().unwrap() < 100_000.0, "{closed}");
}

#[test]
fn replies_larger_than_the_read_buffer() {
    // 100 KiB reply lines: the input buffer grows, partial replies are kept across reads.
    let port = line_server(|_, _| {
        let mut v = vec![b'y'; 100 * 1024];
        v.push(b'\n');
        v
    });
    let target = format!("127.0.0.1:{port}");
    let out = herd_load(
        &[
            "--target",
            &target,
            "--workload",
            "raw",
            "--template",
            "big {i}",
            "--connections",
            "2",
            "--depth",
            "3",
            "--requests",
            "300",
            "--warmup",
            "0",
            "--expect",
            "yyy",
            "--json",
        ],
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr_of(&out));
    let j = json_of(&out);
    assert_eq!(j["replies"], 300, "{j}");
    assert_eq!(j["errors_total"], 0, "{j}");
}

#[test]
fn invalid_and_unexpected_replies_are_counted() {
    let (port, _) = echo_server();
    let target = format!("127.0.0.1:{port}");
    let raw = |template: &str, extra: &[&str]| {
        let mut args = vec![
            "--target",
            &target,
            "--workload",
            "raw",
            "--template",
            template,
            "--requests",
            "100",
            "--warmup",
            "0",
            "--json",
        ];
        args.extend_from_slice(extra);
        let out = herd_load(&args, Duration::from_secs(60));
        assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr_of(&out));
        json_of(&out)
    };
    // The echo of '? x' reads like a herd server rejecting a command.
    let j = raw("? x{i}", &[]);
    assert_eq!(j["replies"], 0, "{j}");
    assert_eq!(j["errors"]["invalid"], 100, "{j}");
    let j = raw("PING", &["--expect", "+PONG"]);
    assert_eq!(j["replies"], 0, "{j}");
    assert_eq!(j["errors"]["unexpected"], 100, "{j}");
}
