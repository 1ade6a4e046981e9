//! The attack suite of issue 16: each test drives real `herd` processes the way an attacker on the host,
//! or a careless operator, would, and checks that the attack fails while honest clients keep being served.
//! Each test failed on the code before the defence it names (see SECURITY.md, which lists them with what
//! each defence stops).
//!
//!     cargo test --test attacks
//!
//! Bounds in the assertions come from what users need (a WHATSAT answered within the Places deadline, an
//! IAMAT answered at once), never from how fast this machine happens to be.

mod common;

use common::*;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

const UCLA: &str = "+34.068930-118.445127";
const KEY_ENV: &str = "TEST_PLACES_KEY";

/// One server using the local Places service, with `limits` spliced into its config (or none).
fn places_server(service: &PlacesService, timeout_ms: u64, limits: &str) -> (HerdConfig, Proc) {
    let mut extra = service.config("legacy", KEY_ENV, timeout_ms);
    if !limits.is_empty() {
        extra.push_str(&format!(",\n\"limits\": {{{limits}}}"));
    }
    let config = HerdConfig::new(&["Solo"], &[], &extra);
    let proc = config.serve_env("Solo", &[(KEY_ENV, "k")]);
    (config, proc)
}

/// Reads `n` WHATSAT replies (each ends with an empty line) from `s`.
fn read_whatsats(s: &mut std::net::TcpStream, n: usize) -> Vec<(String, serde_json::Value)> {
    let mut out = Vec::new();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    while out.len() < n {
        if let Some(end) = buf.windows(3).position(|w| w == b"}\n\n") {
            let reply: Vec<u8> = buf.drain(..end + 3).collect();
            let (line, value, _) = split_whatsat(&reply);
            out.push((line, value));
            continue;
        }
        let got = s.read(&mut chunk).expect("read");
        assert!(got > 0, "EOF after {} of {n} replies", out.len());
        buf.extend_from_slice(&chunk[..got]);
    }
    out
}

/// Issue 16: the Places cache was keyed by the location text, so `+34.0-118.0` and `+34.00-118.00` cost two
/// upstream requests, and one client could keep every upstream connection busy with spellings of one
/// position. Now the key is the canonical decimal of each coordinate and of the radius: two spellings of
/// one position and radius (and another bound) cost ONE upstream request, whether the second comes while
/// the first is in flight or after it is cached.
#[test]
fn two_spellings_of_one_position_cost_one_upstream_request() {
    let service = PlacesService::start(&[]);
    let (config, _server) = places_server(&service, 3000, "");
    let port = config.port("Solo");
    // Three clients at one position, spelled three ways.
    ask(port, b"IAMAT plain +34.068930-118.445127 1\n");
    ask(port, b"IAMAT zeros +034.0689300-118.4451270 1\n");
    ask(port, b"IAMAT short +34.06893-0118.445127 1\n");
    let before = service.requests();

    // Two spellings at once on one connection (the second joins the request in flight or finds the
    // cache), then the third alone, with radius `10.000` for `10`.
    let mut s = connect(port);
    s.write_all(b"WHATSAT plain 10 5\nWHATSAT zeros 10.0 3\n").unwrap();
    let replies = read_whatsats(&mut s, 2);
    let (_, third, _) = split_whatsat(&ask(port, b"WHATSAT short 010.000 20\n"));
    for (_, value) in &replies {
        assert_eq!(value["status"], "OK", "{value}");
    }
    assert_eq!(third["status"], "OK", "{third}");
    // Each answer is cut to its own bound: the bound is not part of the key.
    assert_eq!(replies[0].1["results"].as_array().unwrap().len(), 5);
    assert_eq!(replies[1].1["results"].as_array().unwrap().len(), 3);
    assert!(third["results"].as_array().unwrap().len() > 5);
    assert_eq!(service.requests() - before, 1, "three spellings of one position and radius, one request");

    // A different position is a different request (the key did not merely collapse everything).
    ask(port, b"IAMAT other +34.068931-118.445127 1\n");
    let (_, value, _) = split_whatsat(&ask(port, b"WHATSAT other 10 1\n"));
    assert_eq!(value["status"], "OK");
    assert_eq!(service.requests() - before, 2);
}

/// Issue 16: one connection could queue any number of distinct WHATSATs on upstream (up to its 64
/// waiting replies). Now at most `limits.max_pending_places_per_client` (default 8) of one connection wait
/// on Places at once; past that a WHATSAT is answered at once with the failure object and no request is
/// made. Other connections are not affected.
#[test]
fn one_connection_cannot_keep_more_than_its_share_of_places_requests_waiting() {
    // The service answers each request after 400 ms, so the first WHATSATs are still waiting when the
    // later ones arrive (they arrive in one write and are read in one turn anyway).
    let service = PlacesService::start(&["--fault", "delay=400"]);
    let (config, _server) = places_server(&service, 5000, "");
    let port = config.port("Solo");
    ask(port, format!("IAMAT a {UCLA} 1\n").as_bytes());
    let before = service.requests();

    // Twelve distinct radii: twelve distinct requests, were they all let through.
    let mut attacker = connect(port);
    let burst: String = (1..=12).map(|r| format!("WHATSAT a {} 1\n", 20 + r)).collect();
    attacker.write_all(burst.as_bytes()).unwrap();
    // Meanwhile another connection's WHATSAT still goes to Places.
    let started = Instant::now();
    let (_, other, _) = split_whatsat(&ask(port, b"WHATSAT a 33 1\n"));
    assert_eq!(other["status"], "OK", "another connection is not refused: {other}");

    let replies = read_whatsats(&mut attacker, 12);
    for (i, (_, value)) in replies.iter().enumerate() {
        if i < 8 {
            assert_eq!(value["status"], "OK", "WHATSAT {} of 12 is within the bound: {value}", i + 1);
        } else {
            assert_eq!(value["status"], "UNKNOWN_ERROR", "WHATSAT {} of 12: {value}", i + 1);
            assert_eq!(value["results"], serde_json::json!([]));
            assert_eq!(value["error_message"], "too many WHATSATs of this connection are waiting on Places");
        }
    }
    // Answered within the deadline (the refused ones were not made to wait for a request of their own).
    assert!(started.elapsed() < Duration::from_millis(5000), "{:?}", started.elapsed());
    assert_eq!(service.requests() - before, 9, "8 for the attacker, 1 for the other connection");

    // Once its WHATSATs are answered, the connection may ask again.
    attacker.write_all(b"WHATSAT a 40 1\n").unwrap();
    let again = read_whatsats(&mut attacker, 1);
    assert_eq!(again[0].1["status"], "OK", "{}", again[0].1);

    // The bound is a config key: 2 lets two through.
    let (config, _server) = places_server(&service, 5000, r#""max_pending_places_per_client": 2"#);
    let port = config.port("Solo");
    ask(port, format!("IAMAT b {UCLA} 1\n").as_bytes());
    let mut s = connect(port);
    s.write_all(b"WHATSAT b 11 1\nWHATSAT b 12 1\nWHATSAT b 13 1\n").unwrap();
    let statuses: Vec<String> =
        read_whatsats(&mut s, 3).iter().map(|(_, v)| v["status"].as_str().unwrap().to_string()).collect();
    assert_eq!(statuses, ["OK", "OK", "UNKNOWN_ERROR"]);
}

/// Issue 16: the failure object's `error_message` carried the OS's words and could carry an address.
/// Now it is one of a fixed set; the details go to the log.
#[test]
fn a_places_failure_tells_the_client_no_os_error_and_no_address() {
    let service = PlacesService::start(&[]);
    let dead = free_port();
    let extra = format!(
        r#""places": {{"api": "legacy", "url": "https://127.0.0.1:{dead}/x", "ca_file": {:?}, "timeout_ms": 2000}}"#,
        service.ca.to_string_lossy()
    );
    let config = HerdConfig::new(&["Solo"], &[], &extra);
    let _server = config.serve("Solo");
    let port = config.port("Solo");
    ask(port, format!("IAMAT r {UCLA} 1\n").as_bytes());
    let (_, value, _) = split_whatsat(&ask(port, b"WHATSAT r 10 5\n"));
    assert_eq!(value["status"], "UNKNOWN_ERROR");
    assert_eq!(value["error_message"], "Places request failed: connection refused or unreachable");
    let text = value.to_string();
    assert!(!text.contains("os error") && !text.contains("127.0.0.1") && !text.contains(&dead.to_string()));
}

/// Issue 16's first attack: an IAMAT whose client time has 16,361 digits was accepted, its AT line was
/// longer than a peer accepts, and the link to that peer dropped on every catch-up, so records stored
/// afterwards never reached the far side. Now the command is invalid, and an honest IAMAT that follows
/// reaches every server of the default herd.
#[test]
fn an_oversized_client_time_is_refused_and_the_herd_keeps_flooding() {
    let herd = Herd::start(HerdConfig::from_shipped("config/herd.json", ""));
    let port = herd.port("Bailey");
    // 16,361 digits: the line (16,374 bytes) is within max_line, the AT line it made was not.
    let huge = format!("IAMAT big +1+1 1{}", "0".repeat(16_360));
    let reply = ask(port, format!("{huge}\n").as_bytes());
    assert!(
        reply == format!("? {huge}\n").into_bytes(),
        "got {} bytes: {:?}…",
        reply.len(),
        &reply[..reply.len().min(80)]
    );
    // A control byte in a client id is refused too.
    assert_eq!(ask(port, b"IAMAT a\x1bb +1+1 1\n"), b"? IAMAT a\x1bb +1+1 1\n".to_vec());

    let time = now_text();
    let at = String::from_utf8(ask(port, format!("IAMAT honest {UCLA} {time}\n").as_bytes())).unwrap();
    check_at(&at, "Bailey", "honest", UCLA, &time);
    for m in &herd.config.members {
        wait_record(m.port, "honest", at.trim_end(), Duration::from_secs(2));
        assert_eq!(whatsat_first_line(m.port, "big").chars().next(), Some('?'), "{}", m.name);
    }
    // No link dropped.
    for (name, proc) in &herd.procs {
        assert_eq!(proc.stderr_count(") dropped: "), 0, "{name}: {:?}", proc.stderr());
    }
}
