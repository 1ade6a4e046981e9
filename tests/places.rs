//! WHATSAT end to end (PROTOCOL section 3): real servers asking the local Places service over real TLS
//! and HTTP/1.1, with a CA made at run time; the cache, coalescing, and every failure mode.

mod common;

use common::*;
use std::io::Write;
use std::time::{Duration, Instant};

const UCLA: &str = "+34.068930-118.445127";
const KEY_ENV: &str = "TEST_PLACES_KEY";

fn herd_with_places(service: &PlacesService, api: &str, timeout_ms: u64) -> Herd {
    let config = HerdConfig::from_shipped("config/herd.json", &service.config(api, KEY_ENV, timeout_ms));
    Herd::start_env(config, &[(KEY_ENV, "test-key-not-secret")])
}

fn single_server(service: &PlacesService, api: &str, timeout_ms: u64, env: &[(&str, &str)]) -> (HerdConfig, Proc) {
    let config = HerdConfig::new(&["Solo"], &[], &service.config(api, KEY_ENV, timeout_ms));
    let proc = config.serve_env("Solo", env);
    (config, proc)
}

fn check_places(value: &serde_json::Value, bound: usize, radius_km: f64) -> usize {
    assert!(value["html_attributions"].is_array(), "{value}");
    assert_eq!(value["status"], "OK", "{value}");
    let results = value["results"].as_array().expect("results");
    assert!(results.len() <= bound, "{} results for bound {bound}", results.len());
    for r in results {
        let loc = &r["geometry"]["location"];
        let (lat, lng) = (loc["lat"].as_f64().unwrap(), loc["lng"].as_f64().unwrap());
        let d = haversine_km(34.068930, -118.445127, lat, lng);
        assert!(d <= radius_km + 0.01, "{} is {d:.2} km away", r["name"]);
        assert!(r["name"].is_string() && r["place_id"].is_string(), "{r}");
    }
    results.len()
}

#[test]
fn whatsat_over_tls_at_every_server_answers_the_origin_line_and_places_cut_to_the_bound() {
    let service = PlacesService::start(&[]);
    let herd = herd_with_places(&service, "legacy", 3000);
    let time = now_text();
    let at = String::from_utf8(grader(herd.port("Bailey"), format!("IAMAT kiwi {UCLA} {time}").as_bytes())).unwrap();
    check_at(&at, "Bailey", "kiwi", UCLA, &time);
    for m in &herd.config.members {
        for bound in [0usize, 1, 5, 20] {
            // Grader style: one command, half-close, ONE read.
            let reply = grader(m.port, format!("WHATSAT kiwi 10 {bound}").as_bytes());
            let (line, value, _) = split_whatsat(&reply);
            assert_eq!(format!("{line}\n"), at, "{}: the stored line from the origin", m.name);
            let n = check_places(&value, bound, 10.0);
            if bound > 0 {
                assert!(n > 0, "Los Angeles has places within 10 km");
            }
        }
    }
    // The key never reaches a log.
    for m in &herd.config.members {
        assert!(!herd.config.log_text(&m.name).contains("test-key-not-secret"), "{} logged the key", m.name);
    }
    // A smaller radius: everything within 2.5 km.
    let reply = grader(herd.port("Jaquez"), b"WHATSAT kiwi 2.5 20");
    let (_, value, json) = split_whatsat(&reply);
    check_places(&value, 20, 2.5);
    assert!(json.contains("\n   \"results\" : ["), "Google's style: {json}");
}

#[test]
fn the_cache_and_coalescing_cost_one_upstream_request() {
    let service = PlacesService::start(&["--fault", "delay=300"]);
    let (config, _server) = single_server(&service, "legacy", 3000, &[(KEY_ENV, "k")]);
    let port = config.port("Solo");
    ask(port, format!("IAMAT a {UCLA} 1\nIAMAT b {UCLA} 1\n").as_bytes());
    let before = service.requests();
    // Twenty concurrent WHATSATs for one place while the first is in flight (the service waits 300 ms).
    let mut conns: Vec<_> = (0..20)
        .map(|i| {
            let mut s = connect(port);
            s.write_all(format!("WHATSAT {} 10 {}\n", if i % 2 == 0 { "a" } else { "b" }, i % 21).as_bytes()).unwrap();
            s
        })
        .collect();
    for (i, s) in conns.iter_mut().enumerate() {
        let reply = read_until(s, b"}\n\n");
        let (_, value, _) = split_whatsat(&reply);
        check_places(&value, i % 21, 10.0);
    }
    assert_eq!(service.requests() - before, 1, "twenty WHATSATs, one upstream request");
    // Repeated later, with other bounds: the cache answers.
    for bound in [3, 20, 0] {
        let reply = ask(port, format!("WHATSAT a 10 {bound}\n").as_bytes());
        check_places(&split_whatsat(&reply).1, bound, 10.0);
    }
    assert_eq!(service.requests() - before, 1, "cache hits cost nothing upstream");
    // Another radius is another question.
    ask(port, b"WHATSAT a 9 1\n");
    assert_eq!(service.requests() - before, 2);
    // The counters say so too, in the stop line of the log.
    let mut server = _server;
    server.signal(libc::SIGTERM);
    server.wait_exit(Duration::from_secs(3)).expect("exits");
    let log = config.log_text("Solo");
    let stop = log.lines().find(|l| l.contains("stop: ")).expect("a stop line");
    assert!(stop.contains("hits=3 misses=2 coalesced=19"), "{stop}");
}

#[test]
fn a_host_name_is_resolved_off_the_loop() {
    let service = PlacesService::start(&[]);
    let extra = service.config("legacy", KEY_ENV, 3000).replace("https://127.0.0.1:", "https://localhost:");
    let config = HerdConfig::new(&["Solo"], &[], &extra);
    let _server = config.serve_env("Solo", &[(KEY_ENV, "k")]);
    let port = config.port("Solo");
    ask(port, format!("IAMAT dns {UCLA} 1\n").as_bytes());
    let (_, value, _) = split_whatsat(&grader(port, b"WHATSAT dns 10 3"));
    check_places(&value, 3, 10.0);
}

#[test]
fn the_new_api_is_translated_to_the_legacy_shape() {
    let service = PlacesService::start(&[]);
    let (config, _server) = single_server(&service, "new", 3000, &[(KEY_ENV, "k")]);
    let port = config.port("Solo");
    ask(port, format!("IAMAT n {UCLA} 1\n").as_bytes());
    for bound in [0, 1, 5, 20] {
        let reply = grader(port, format!("WHATSAT n 10 {bound}").as_bytes());
        let (_, value, json) = split_whatsat(&reply);
        check_places(&value, bound, 10.0);
        assert!(json.starts_with("{\n   \""), "{json}");
    }
}

#[test]
fn without_a_key_google_s_own_status_comes_through() {
    let service = PlacesService::start(&[]);
    let (config, _server) = single_server(&service, "legacy", 3000, &[]);
    let port = config.port("Solo");
    ask(port, format!("IAMAT nk {UCLA} 1\n").as_bytes());
    let (_, value, _) = split_whatsat(&grader(port, b"WHATSAT nk 10 5"));
    assert_eq!(value["status"], "REQUEST_DENIED");
    assert_eq!(value["results"], serde_json::json!([]));
    assert!(value["error_message"].is_string());
}

#[test]
fn chunked_bodies_are_read_as_well_as_content_length() {
    let service = PlacesService::start(&["--chunked"]);
    let (config, _server) = single_server(&service, "legacy", 3000, &[(KEY_ENV, "k")]);
    let port = config.port("Solo");
    ask(port, format!("IAMAT ch {UCLA} 1\n").as_bytes());
    let (_, value, _) = split_whatsat(&grader(port, b"WHATSAT ch 10 20"));
    assert!(check_places(&value, 20, 10.0) > 0);
}

/// Each fault gives the failure object within the deadline, while IAMATs on the same server keep
/// answering at once.
#[test]
fn every_places_failure_answers_within_the_deadline_and_iamat_is_not_held_up() {
    let timeout_ms = 1000;
    let faults: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--fault", "delay=5000"], "did not answer within 1000 ms"),
        (vec!["--fault", "trickle=500"], "did not answer within 1000 ms"),
        (vec!["--fault", "reset"], "Places request failed"),
        // The service sends Google's error body with its 500: its own message comes through.
        (vec!["--fault", "http500"], "Internal error"),
        (vec!["--fault", "badjson"], "not JSON"),
        (vec!["--fault", "wrongname"], "TLS error"),
    ];
    for (args, want) in faults {
        let service = PlacesService::start(&args);
        let (config, _server) = single_server(&service, "legacy", timeout_ms, &[(KEY_ENV, "k")]);
        let port = config.port("Solo");
        ask(port, format!("IAMAT f {UCLA} 1\n").as_bytes());
        let started = Instant::now();
        let mut waiting = connect(port);
        waiting.write_all(b"WHATSAT f 10 5\n").unwrap();
        // While that waits on Places, IAMATs are answered at once.
        for i in 0..5 {
            let t = Instant::now();
            let reply = ask(port, format!("IAMAT other{i} +1+1 1\n").as_bytes());
            assert!(reply.starts_with(b"AT Solo "));
            assert!(t.elapsed() < Duration::from_millis(300), "{args:?}: IAMAT took {:?}", t.elapsed());
        }
        let reply = read_until(&mut waiting, b"}\n\n");
        let elapsed = started.elapsed();
        let (_, value, _) = split_whatsat(&reply);
        assert_eq!(value["results"], serde_json::json!([]), "{args:?}");
        assert_eq!(value["status"], "UNKNOWN_ERROR", "{args:?}: {value}");
        let message = value["error_message"].as_str().unwrap();
        assert!(message.contains(want), "{args:?}: {message}");
        assert!(elapsed < Duration::from_millis(timeout_ms + 500), "{args:?}: answered after {elapsed:?}");
        assert!(!message.contains("test-key") && !message.contains("key=k"), "no key in errors: {message}");
    }
}

#[test]
fn an_unknown_ca_and_a_refused_port_fail_cleanly() {
    let service = PlacesService::start(&[]);
    let other = PlacesService::start(&[]);
    // Trust the other service's CA: the certificate is refused.
    let extra = format!(
        r#""places": {{"api": "legacy", "url": "https://127.0.0.1:{}/maps/api/place/nearbysearch/json", "key_env": "{KEY_ENV}", "ca_file": {:?}, "timeout_ms": 2000}}"#,
        service.port,
        other.ca.to_string_lossy()
    );
    let config = HerdConfig::new(&["Solo"], &[], &extra);
    let _server = config.serve_env("Solo", &[(KEY_ENV, "k")]);
    ask(config.port("Solo"), format!("IAMAT u {UCLA} 1\n").as_bytes());
    let (_, value, _) = split_whatsat(&ask(config.port("Solo"), b"WHATSAT u 10 5\n"));
    assert_eq!(value["status"], "UNKNOWN_ERROR");
    assert!(value["error_message"].as_str().unwrap().contains("TLS error"), "{value}");

    // Nothing listening: refused, at once.
    let dead = free_port();
    let extra = format!(
        r#""places": {{"api": "legacy", "url": "https://127.0.0.1:{dead}/x", "ca_file": {:?}, "timeout_ms": 2000}}"#,
        service.ca.to_string_lossy()
    );
    let config = HerdConfig::new(&["Solo"], &[], &extra);
    let _server = config.serve("Solo");
    ask(config.port("Solo"), format!("IAMAT r {UCLA} 1\n").as_bytes());
    let started = Instant::now();
    let (_, value, _) = split_whatsat(&ask(config.port("Solo"), b"WHATSAT r 10 5\n"));
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(value["error_message"].as_str().unwrap().contains("refused"), "{value}");
}

#[test]
fn keep_alive_connections_are_reused_and_a_restarted_service_keeps_its_ca() {
    let service = PlacesService::start(&[]);
    let (config, server) = single_server(&service, "legacy", 3000, &[(KEY_ENV, "k")]);
    let port = config.port("Solo");
    ask(port, format!("IAMAT ka {UCLA} 1\n").as_bytes());
    for radius in 6..=10 {
        let (_, value, _) = split_whatsat(&ask(port, format!("WHATSAT ka {radius} 1\n").as_bytes()));
        assert_eq!(value["status"], "OK");
    }
    // The service restarts with the same CA files: the server still trusts it, and its pooled
    // connection, now dead, is retried once on a fresh one.
    let PlacesService { mut proc, port: service_port, dir, .. } = service;
    proc.kill();
    let pem_before = std::fs::read(dir.path().join("ca.pem")).unwrap();
    let restarted = restart_on(dir, service_port);
    assert_eq!(std::fs::read(&restarted.ca).unwrap(), pem_before, "the CA is reused");
    let (_, value, _) = split_whatsat(&ask(port, b"WHATSAT ka 11 1\n"));
    assert_eq!(value["status"], "OK", "{value}");
    drop(server);
}

/// A steady burst of cache misses, four at a time with `pool_size` 1 (so up to four connections open),
/// each answered in 10 ms:
/// the connections past the pool linger between requests and are reused, so the burst costs about four
/// TCP and TLS handshakes, not one per request. Counted by the service (connections it accepted) and by
/// the server's `herd_places_connections_total`. Then, a second after the burst, the pool is back to one
/// idle connection: the next four questions, asked together, open three more.
#[test]
fn a_steady_burst_reuses_connections_past_the_pool_and_the_pool_shrinks_after_it() {
    const CLIENTS: u32 = 4;
    const EACH: u32 = 20;
    // Each answer takes 10 ms, so the four questions are in flight together.
    let service = PlacesService::start(&["--fault", "delay=10"]);
    let config = HerdConfig::new(&["Solo"], &[], &places_with(&service, r#""pool_size": 1"#));
    let admin = config.member("Solo").admin_port;
    let _server = config.serve_env("Solo", &[(KEY_ENV, "k")]);
    let port = config.port("Solo");
    ask(port, format!("IAMAT burst {UCLA} 1\n").as_bytes());
    let before = service.connections();
    std::thread::scope(|s| {
        for c in 0..CLIENTS {
            s.spawn(move || {
                let mut conn = connect(port);
                for i in 0..EACH {
                    // A radius no other question asks: every WHATSAT is a miss.
                    let radius = format!("{}.{:03}", 10 + i, c);
                    conn.write_all(format!("WHATSAT burst {radius} 1\n").as_bytes()).unwrap();
                    let (_, value, _) = split_whatsat(&read_until(&mut conn, b"}\n\n"));
                    assert_eq!(value["status"], "OK", "{value}");
                }
            });
        }
    });
    let opened = service.connections() - before - 1; // less the question just asked
    let requests = u64::from(CLIENTS * EACH);
    assert_eq!(metric(admin, "herd_places_cache_misses_total"), requests);
    assert!(opened <= 2 * u64::from(CLIENTS), "{opened} connections for {requests} misses at {CLIENTS} at a time");
    assert_eq!(metric(admin, "herd_places_connections_total"), opened);
    // Past the linger, the extra connections have closed: four questions at once need three new ones.
    std::thread::sleep(Duration::from_millis(1500));
    let before = service.connections();
    let mut conns: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let mut conn = connect(port);
            conn.write_all(format!("WHATSAT burst 40.{c} 1\n").as_bytes()).unwrap();
            conn
        })
        .collect();
    for conn in &mut conns {
        read_until(conn, b"}\n\n");
    }
    assert_eq!(service.connections() - before - 1, u64::from(CLIENTS) - 1, "one idle connection kept");
}

/// Restarts the service on the same port with the CA files already in `dir`.
fn restart_on(dir: TempDir, port: u16) -> PlacesService {
    let ca = dir.path().join("ca.pem");
    let listen = format!("127.0.0.1:{port}");
    let proc =
        Proc::start("places", &["places", "--listen", &listen, "--ca-out", ca.to_str().unwrap()], &[], "listening on");
    PlacesService { proc, port, ca, dir }
}

#[test]
fn up_on_a_config_with_local_places_starts_the_service_first() {
    let dir = TempDir::new("upplaces");
    let places_port = free_port();
    let ca = dir.path().join("run").join("ca.pem");
    let extra = format!(
        r#""places": {{"api": "legacy", "url": "https://127.0.0.1:{places_port}/maps/api/place/nearbysearch/json", "key_env": "HERD_TEST_UP_KEY", "ca_file": {ca:?}}},
        "local_places": {{"listen": "127.0.0.1:{places_port}", "ca_out": {ca:?}}}"#
    );
    let config = HerdConfig::from_shipped("config/herd.json", &extra);
    let mut up = Proc::start("up", &["up", "--config", config.path.to_str().unwrap()], &[], "servers up");
    let at = ask(config.port("Clark"), format!("IAMAT upc {UCLA} 1\n").as_bytes());
    assert!(at.starts_with(b"AT Clark "));
    // The key variable was unset: `up` made one up for the local service, so the answer is real.
    let (_, value, _) = split_whatsat(&grader(config.port("Clark"), b"WHATSAT upc 10 3"));
    check_places(&value, 3, 10.0);
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(Duration::from_secs(4)).expect("up exits").success());
    assert!(std::net::TcpStream::connect(("127.0.0.1", places_port)).is_err(), "the service stopped too");
}

#[test]
fn more_requests_than_connections_do_not_stall_when_connections_fail() {
    // Nothing listens where Places should be: every connect fails at once. Twenty different questions
    // on one connection (more than the 16 connections allowed) must all be answered at once, not at
    // the deadline.
    let service = PlacesService::start(&[]);
    let dead = free_port();
    let extra = format!(
        r#""places": {{"api": "legacy", "url": "https://127.0.0.1:{dead}/x", "ca_file": {:?}, "timeout_ms": 3000}}"#,
        service.ca.to_string_lossy()
    );
    let config = HerdConfig::new(&["Solo"], &[], &extra);
    let _server = config.serve("Solo");
    let port = config.port("Solo");
    ask(port, format!("IAMAT k {UCLA} 1\n").as_bytes());
    let burst: String = (1..=20).map(|r| format!("WHATSAT k {r} 1\n")).collect();
    let started = Instant::now();
    let out = ask(port, burst.as_bytes());
    assert_eq!(out.windows(2).filter(|w| w == b"\n\n").count(), 20);
    assert!(started.elapsed() < Duration::from_millis(1500), "{:?}", started.elapsed());
}

/// Responses are shaped into answers on the `herd-shaper` thread and handed back through the waker:
/// twelve distinct questions whose responses arrive together (the service waits 300 ms) each get their
/// own place list, and the log and the stop line count each request once, with its result count. The
/// SIGTERM, sent while the responses are still due, does not cut them off: they are shaped and
/// answered within the grace period.
#[test]
fn answers_shaped_off_the_loop_are_complete_counted_and_survive_a_shut_down() {
    let service = PlacesService::start(&["--fault", "delay=300"]);
    let (config, mut server) = single_server(&service, "legacy", 3000, &[(KEY_ENV, "k")]);
    let port = config.port("Solo");
    ask(port, format!("IAMAT shaped {UCLA} 1\n").as_bytes());
    let radii: Vec<u32> = (9..=20).collect();
    let mut waiting: Vec<_> = radii
        .iter()
        .map(|r| {
            let mut s = connect(port);
            s.write_all(format!("WHATSAT shaped {r} 20\n").as_bytes()).unwrap();
            s
        })
        .collect();
    // Connections are accepted in order: once these are answered, every WHATSAT connection is in.
    for i in 0..5 {
        let reply = ask(port, format!("IAMAT other{i} +1+1 1\n").as_bytes());
        assert!(reply.starts_with(b"AT Solo "), "{}", String::from_utf8_lossy(&reply));
    }
    server.signal(libc::SIGTERM);
    let mut counts = Vec::new();
    for (s, r) in waiting.iter_mut().zip(&radii) {
        let reply = read_until(s, b"}\n\n");
        let (line, value, _) = split_whatsat(&reply);
        assert!(line.starts_with("AT Solo ") && line.contains(" shaped "), "{line}");
        counts.push(check_places(&value, 20, f64::from(*r)));
    }
    server.wait_exit(Duration::from_secs(3)).expect("exits within the grace period");

    let log = config.log_text("Solo");
    for (r, n) in radii.iter().zip(&counts) {
        let want = format!("radius={}m: OK ({n} results) in ", r * 1000);
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(&want)).collect();
        assert_eq!(lines.len(), 1, "one log line for {r} km with its result count:\n{log}");
        assert!(lines[0].ends_with("for 1 waiters"), "{}", lines[0]);
    }
    assert!(!log.contains("timed out"), "{log}");
    let stop = log.lines().find(|l| l.contains("stop: ")).expect("a stop line");
    assert!(stop.contains("hits=0 misses=12 coalesced=0 requests=12 retries=0 cached=12"), "{stop}");
    assert!(stop.contains("errors: timeout=0 connect=0 tls=0 http=0 closed=0 resolve=0"), "{stop}");
}

/// The `places` config object of `service` with extra keys (`"cache_ttl_s": 2`, ...).
fn places_with(service: &PlacesService, extra: &str) -> String {
    let base = service.config("legacy", KEY_ENV, 3000);
    format!("{}, {extra}}}", base.strip_suffix('}').unwrap())
}

/// A metric's value from a server's `/metrics`.
fn metric(admin_port: u16, name: &str) -> u64 {
    let (_, text) = admin_get(admin_port, "/metrics");
    let line =
        text.lines().find(|l| l.starts_with(&format!("{name}{{"))).unwrap_or_else(|| panic!("no {name} in {text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// PROTOCOL section 3: "A cached Places answer younger than the cache TTL may be served, also while
/// Places is down", and not once it is older. TTL 2 s: answers asked within it cost nothing upstream;
/// past it, the next WHATSAT asks again; a fresh answer is served with the service gone, and once it
/// is past the TTL the service's absence shows.
#[test]
fn cached_answers_are_served_within_the_ttl_even_with_places_down_and_not_after_it() {
    const TTL: Duration = Duration::from_secs(2);
    let service = PlacesService::start(&[]);
    let config = HerdConfig::new(&["Solo"], &[], &places_with(&service, r#""cache_ttl_s": 2"#));
    let mut service = service;
    let _server = config.serve_env("Solo", &[(KEY_ENV, "k")]);
    let port = config.port("Solo");
    ask(port, format!("IAMAT ttl {UCLA} 1\n").as_bytes());
    let base = service.requests();
    let whatsat = |bound: usize| {
        let (_, value, _) = split_whatsat(&ask(port, format!("WHATSAT ttl 10 {bound}\n").as_bytes()));
        value
    };

    // Asked before the first answer is stored: the entry expires no earlier than TTL after this.
    let asked = Instant::now();
    check_places(&whatsat(5), 5, 10.0);
    assert_eq!(service.requests() - base, 1, "a miss asks upstream");
    check_places(&whatsat(20), 20, 10.0);
    assert!(asked.elapsed() < TTL, "this machine took {:?} for two WHATSATs: cannot test a 2 s TTL", asked.elapsed());
    assert_eq!(service.requests() - base, 1, "within the TTL the cache answers");

    // Past the TTL (from when the answer was stored, at most now): asked again.
    std::thread::sleep(TTL + Duration::from_millis(100));
    let asked = Instant::now();
    check_places(&whatsat(3), 3, 10.0);
    assert_eq!(service.requests() - base, 2, "an expired answer is not served");

    // Places goes away; the fresh answer is still served, with Google's OK.
    service.proc.kill();
    let value = whatsat(4);
    assert!(asked.elapsed() < TTL, "this machine is too slow to test a 2 s TTL");
    assert_eq!(check_places(&value, 4, 10.0), 4, "served from the cache while Places is down");

    // Once that answer is past the TTL, the failure shows.
    std::thread::sleep(TTL + Duration::from_millis(100));
    let value = whatsat(4);
    assert_eq!(value["status"], "UNKNOWN_ERROR", "{value}");
    assert_eq!(value["results"], serde_json::json!([]));
}

/// `places.cache_max_bytes` bounds the cache: sixty distinct places, each answer bigger than a tenth
/// of the budget, never leave more answers cached than the budget holds even counting each by its
/// JSON alone (the cache counts its parsed tree too, so it holds fewer), and the earliest ones have
/// to be asked again.
#[test]
fn the_places_cache_keeps_to_its_byte_budget() {
    const BUDGET: u64 = 150_000;
    const PLACES: usize = 60;
    let service = PlacesService::start(&[]);
    let config = HerdConfig::new(&["Solo"], &[], &places_with(&service, &format!(r#""cache_max_bytes": {BUDGET}"#)));
    let admin = config.member("Solo").admin_port;
    let _server = config.serve_env("Solo", &[(KEY_ENV, "k")]);
    let port = config.port("Solo");
    let base = service.requests();
    let mut smallest = usize::MAX;
    let mut most_cached = 0;
    for i in 0..PLACES {
        // Points about 140 m apart in central Los Angeles: each a distinct question with an answer.
        let loc = format!("+34.{:06}-118.{:06}", 20_000 + i * 1_000, 250_000 + i * 1_000);
        let reply = ask(port, format!("IAMAT p{i} {loc} 1\nWHATSAT p{i} 20 20\n").as_bytes());
        let text = String::from_utf8(reply).unwrap();
        let (_, whatsat) = text.split_once('\n').unwrap();
        let (_, value, json) = split_whatsat(whatsat.as_bytes());
        assert!(!value["results"].as_array().unwrap().is_empty(), "{loc}: an answer with places: {value}");
        smallest = smallest.min(json.len());
        most_cached = most_cached.max(metric(admin, "herd_places_cached"));
    }
    assert_eq!(service.requests() - base, PLACES as u64, "every place asked once");
    let fits = BUDGET / smallest as u64;
    assert!(PLACES as u64 > 2 * fits, "answers of {smallest} bytes: {PLACES} places do not overflow the budget");
    assert!(most_cached <= fits, "{most_cached} answers of at least {smallest} bytes cached; the budget holds {fits}");
    assert!(most_cached > 0, "nothing cached at all");
    // The first places were evicted: asking them again costs requests.
    for i in 0..PLACES / 2 {
        ask(port, format!("WHATSAT p{i} 20 1\n").as_bytes());
    }
    assert!(service.requests() - base > PLACES as u64, "no early answer was evicted");
}

/// Twenty WHATSATs for one place join one request; the service sends the head and half the body, then
/// resets the connection. Every waiter gets the failure object (not a hang, not a half answer), the
/// failure is not cached (the next WHATSAT asks again), and the server serves on.
#[test]
fn coalesced_waiters_all_get_the_failure_when_the_upstream_fails_mid_response() {
    let service = PlacesService::start(&["--fault", "delay=300", "--fault", "reset"]);
    let (config, _server) = single_server(&service, "legacy", 3000, &[(KEY_ENV, "k")]);
    let port = config.port("Solo");
    ask(port, format!("IAMAT a {UCLA} 1\n").as_bytes());
    let before = service.requests();
    let started = Instant::now();
    let mut conns: Vec<_> = (0..20)
        .map(|i| {
            let mut s = connect(port);
            s.write_all(format!("WHATSAT a 10 {}\n", i % 21).as_bytes()).unwrap();
            s
        })
        .collect();
    for s in conns.iter_mut() {
        let reply = read_until(s, b"}\n\n");
        let (_, value, _) = split_whatsat(&reply);
        assert_eq!(value["status"], "UNKNOWN_ERROR", "{value}");
        assert_eq!(value["results"], serde_json::json!([]));
        assert!(value["error_message"].is_string(), "{value}");
    }
    assert!(started.elapsed() < Duration::from_millis(3000), "answered within the deadline: {:?}", started.elapsed());
    let asked = service.requests() - before;
    assert!((1..=2).contains(&asked), "twenty waiters, one request (and at most one retry): {asked}");
    // Not cached: the next WHATSAT asks again.
    let reply = ask(port, b"WHATSAT a 10 1\n");
    assert_eq!(split_whatsat(&reply).1["status"], "UNKNOWN_ERROR");
    assert!(service.requests() - before > asked, "a failure was cached");
    assert!(ask(port, b"IAMAT b +1+1 1\n").starts_with(b"AT Solo "));
}

/// WHATSAT end to end against the upstream's own answer: for each (radius, bound), the JSON a client
/// receives equals the local Places service's answer for that position and radius, asked directly
/// over HTTPS by this test, with `results` cut to the first `bound`: result for result, key for key,
/// number text for number text. Nothing of herd's computes the expectation.
#[test]
fn whatsat_answers_the_first_bound_results_the_upstream_serves_for_that_place() {
    let service = PlacesService::start(&[]);
    let (config, _server) = single_server(&service, "legacy", 3000, &[(KEY_ENV, "k")]);
    let port = config.port("Solo");
    for (loc, lat_lng) in [(UCLA, "34.068930,-118.445127"), ("-33.8587+151.2100", "-33.8587,151.2100")] {
        ask(port, format!("IAMAT e2e {loc} 1\n").as_bytes());
        for (radius, metres, bound) in
            [("10", 10_000, 5), ("2.5", 2_500, 20), ("50", 50_000, 1), ("1", 1_000, 0), ("10", 10_000, 20)]
        {
            let reply = ask(port, format!("WHATSAT e2e {radius} {bound}\n").as_bytes());
            let (_, got, _) = split_whatsat(&reply);
            let direct = https_get(
                service.port,
                &service.ca,
                &format!("/maps/api/place/nearbysearch/json?location={lat_lng}&radius={metres}&key=k"),
            );
            let mut want: serde_json::Value = serde_json::from_slice(&direct).expect("the service's JSON");
            let results = want["results"].as_array_mut().unwrap();
            if radius == "10" {
                assert!(results.len() >= 5, "{loc} {radius} km: the gazetteer has places there: {want}");
            }
            results.truncate(bound);
            assert_eq!(got, want, "{loc}, {radius} km, bound {bound}");
        }
    }
}
