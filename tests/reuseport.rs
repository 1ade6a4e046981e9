//! The hidden `herd serve NAME --reuseport` (benches/compare only): two server processes listen on one
//! client port with SO_REUSEPORT, and the kernel hands new connections to both. Without the flag the
//! second bind is refused as before.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Write};

/// Two one-server configs whose servers A and B share client port `port`: each config names the other
/// server with a port nobody uses, since a config may not give two servers one port.
fn configs(dir: &TempDir, port: u16) -> (String, String) {
    let (peer_a, peer_b, spare_a, spare_b) = (free_port(), free_port(), free_port(), free_port());
    let logs = dir.path().join("logs");
    let write = |name: &str, a: u16, b: u16| {
        let path = dir.path().join(name);
        let text = format!(
            r#"{{"servers": [{{"name": "A", "host": "127.0.0.1", "port": {a}, "peer_port": {peer_a}}},
                {{"name": "B", "host": "127.0.0.1", "port": {b}, "peer_port": {peer_b}}}],
               "links": [], "log_dir": {logs:?}}}"#
        );
        std::fs::write(&path, text).unwrap();
        path.to_string_lossy().into_owned()
    };
    (write("a.json", port, spare_b), write("b.json", spare_a, port))
}

/// The name of the server that answered one IAMAT on a new connection to `port`.
fn who_answers(port: u16, i: usize) -> String {
    let mut s = connect(port);
    writeln!(s, "IAMAT reuse{i} +34.068930-118.445127 1700000000.5").unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    let server = line.split(' ').nth(1).unwrap_or_default().to_string();
    assert!(line.starts_with("AT "), "not an AT line: {line:?}");
    server
}

#[test]
fn two_servers_with_reuseport_share_one_client_port() {
    let dir = TempDir::new("reuseport");
    let port = free_port();
    let (a, b) = configs(&dir, port);
    let _a = Proc::start("A", &["serve", "A", "--config", &a, "--reuseport"], &[], "listening");
    let _b = Proc::start("B", &["serve", "B", "--config", &b, "--reuseport"], &[], "listening");
    // The kernel picks a listener by a hash of each connection's addresses; 64 connections all landing
    // on one of two listeners has probability 2^-63.
    let answers: Vec<String> = (0..64).map(|i| who_answers(port, i)).collect();
    let to_a = answers.iter().filter(|s| *s == "A").count();
    let to_b = answers.iter().filter(|s| *s == "B").count();
    assert_eq!(to_a + to_b, 64, "{answers:?}");
    assert!(to_a > 0 && to_b > 0, "one listener got every connection: A {to_a}, B {to_b}");
}

#[test]
fn without_reuseport_a_second_server_on_the_port_is_refused() {
    let dir = TempDir::new("reuseport-off");
    let port = free_port();
    let (a, b) = configs(&dir, port);
    let _a = Proc::start("A", &["serve", "A", "--config", &a], &[], "listening");
    let out = std::process::Command::new(herd_bin())
        .args(["serve", "B", "--config", &b, "--reuseport"])
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    // A's listener did not set SO_REUSEPORT, so B may not join it even with the flag.
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("client port") && err.contains("Address already in use"), "{err}");
}
