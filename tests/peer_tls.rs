//! Mutual TLS on peer links (issue 17, PROTOCOL sections 5 and 8) with real processes on loopback: a herd
//! whose certificates come from `herd certs`, every forgery of the issue's check refused (and counted by
//! reason), flooding, relinking and catch-up over TLS, a renewed certificate picked up on SIGHUP without
//! dropping a link, and the start-up errors.
//!
//! The forgeries are made by this test with rustls as any local process could: plaintext lines, a
//! certificate of another CA, no certificate, Clark's genuine certificate claiming to be Bona, an expired
//! certificate. A positive control (Bona's own certificate, which must get through) shows that the
//! refusals are the server's doing and not the test client's.

mod common;

use common::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// A five-server herd config (the shipped topology, free ports) with `peer_tls` pointing at `certs`.
fn tls_config(certs: &Path) -> HerdConfig {
    let extra = format!(
        r#""peer_tls": {{"ca_file": {:?}, "cert_dir": {:?}}}"#,
        certs.join("ca.pem").to_string_lossy(),
        certs.to_string_lossy()
    );
    HerdConfig::from_shipped("config/herd.json", &extra)
}

/// Runs `herd certs ARGS` to completion; returns (status code, stdout, stderr).
fn herd_certs(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(herd_bin()).arg("certs").args(args).output().expect("run herd certs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn make_certs(config: &HerdConfig, out: &Path, extra: &[&str]) {
    let mut args = vec!["--config", config.path.to_str().unwrap(), "--out", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    let (code, stdout, stderr) = herd_certs(&args);
    assert_eq!(code, 0, "herd certs: {stdout} {stderr}");
}

/// A herd with TLS links, started and linked.
struct TlsHerd {
    herd: Herd,
    certs: TempDir,
}

fn start_tls_herd() -> TlsHerd {
    let certs = TempDir::new("peer-certs");
    let config = tls_config(certs.path());
    make_certs(&config, certs.path(), &[]);
    TlsHerd { herd: Herd::start(config), certs }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS client configuration trusting `ca` and presenting `identity` (certificate and key PEM), if any.
fn client_config(ca: &Path, identity: Option<(&str, &str)>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(ca).unwrap()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    Arc::new(match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
    })
}

fn read_pem(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap()
}

/// Dials `port` as a TLS peer expecting the server to be `server`, sends `lines`, and returns everything
/// read until the server closes (or an error ends the stream). Blocking rustls is fine in a test client.
fn tls_forge(port: u16, server: &str, config: Arc<rustls::ClientConfig>, lines: &str) -> String {
    let sock = connect(port);
    let conn = rustls::ClientConnection::new(config, ServerName::try_from(server.to_string()).unwrap()).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    let _ = tls.write_all(lines.as_bytes());
    let _ = tls.flush();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tls.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                // The positive control stays linked: stop once WELCOME came and the record was sent.
                if got.ends_with(b"\n") && got.starts_with(b"WELCOME") {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&got).to_string()
}

/// Sends plaintext `lines` to `port` and reads until the server closes.
fn plain_forge(port: u16, lines: &str) -> Vec<u8> {
    let mut s = connect(port);
    let _ = s.write_all(lines.as_bytes());
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    got
}

/// The forged handshake and record: a valid record in every field, so only the link's identity is judged.
fn forged_lines(claim: &str, id: &str) -> String {
    format!("HELLO {claim} Bailey nonce1\nPROOF -\nAT {claim} +0.000000001 {id} +34.068930-118.445127 {}\n", now_text())
}

/// Bailey's `herd_peers_refused_total` by reason, from its admin port.
fn refused(herd: &Herd, server: &str) -> std::collections::HashMap<String, u64> {
    let (status, text) = admin_get(herd.config.member(server).admin_port, "/metrics");
    assert_eq!(status, 200, "{text}");
    text.lines()
        .filter(|l| l.starts_with("herd_peers_refused_total{"))
        .map(|l| {
            let reason = l.split("reason=\"").nth(1).unwrap().split('"').next().unwrap().to_string();
            (reason, l.rsplit(' ').next().unwrap().parse().unwrap())
        })
        .collect()
}

fn assert_not_planted(herd: &Herd, id: &str) {
    let got = whatsat_first_line(herd.port("Bailey"), id);
    assert!(got.starts_with("? "), "a forged record for {id} was stored at Bailey: {got:?}");
}

#[test]
fn a_tls_herd_floods_from_bailey_to_jaquez_before_the_client_asks() {
    let t = start_tls_herd();
    let herd = &t.herd;
    assert_eq!(herd.config.hops("Bailey")["Jaquez"], Some(2));
    for (name, proc) in &herd.procs {
        let n = herd.config.neighbours(name).len();
        assert_eq!(proc.stderr_count("over TLS"), n, "{name}: every link over TLS: {:#?}", proc.stderr());
    }
    for i in 0..5 {
        let time = now_text();
        let id = format!("tls{i}");
        let reply = grader(herd.port("Bailey"), format!("IAMAT {id} +34.068930-118.445127 {time}").as_bytes());
        let at = String::from_utf8(reply).unwrap();
        check_at(&at, "Bailey", &id, "+34.068930-118.445127", &time);
        assert_eq!(whatsat_first_line(herd.port("Jaquez"), &id), at.trim_end());
    }
    // No link was refused along the way.
    assert!(refused(herd, "Bailey").values().all(|&n| n == 0));
}

#[test]
fn no_forgery_plants_a_record_at_bailey() {
    let t = start_tls_herd();
    let (herd, certs) = (&t.herd, t.certs.path());
    let peer_port = herd.config.member("Bailey").peer_port;
    let ca = certs.join("ca.pem");
    let expected_refusals: &[(&str, u64)] =
        &[("not_tls", 1), ("unknown_ca", 1), ("no_certificate", 1), ("bad_name", 1), ("not_neighbour", 1)];

    // 1. Plaintext HELLO / PROOF / AT, as in the issue.
    let got = plain_forge(peer_port, &forged_lines("Bona", "plain"));
    assert!(!String::from_utf8_lossy(&got).contains("WELCOME"), "{got:?}");
    // The issue's own forgery: any server name, a time from far in the future.
    let got =
        plain_forge(peer_port, "HELLO Bona Bailey x\nPROOF -\nAT Mallory +0.1 far +1+1 99999999999999999999999\n");
    assert!(!String::from_utf8_lossy(&got).contains("WELCOME"), "{got:?}");

    // 2. A certificate from a foreign CA, made the same way, naming Bona.
    let foreign = TempDir::new("foreign-certs");
    make_certs(&herd.config, foreign.path(), &[]);
    let mallory =
        client_config(&ca, Some((&read_pem(foreign.path(), "Bona.pem"), &read_pem(foreign.path(), "Bona.key"))));
    let got = tls_forge(peer_port, "Bailey", mallory, &forged_lines("Bona", "foreign"));
    assert!(!got.contains("WELCOME"), "{got:?}");

    // 3. No client certificate.
    let got = tls_forge(peer_port, "Bailey", client_config(&ca, None), &forged_lines("Bona", "anonymous"));
    assert!(!got.contains("WELCOME"), "{got:?}");

    // 4. Clark's genuine certificate claiming to be Bona (and, as itself, Clark is no neighbour of Bailey).
    let clark = || client_config(&ca, Some((&read_pem(certs, "Clark.pem"), &read_pem(certs, "Clark.key"))));
    let got = tls_forge(peer_port, "Bailey", clark(), &forged_lines("Bona", "clark-as-bona"));
    assert!(got.starts_with("REFUSED") && !got.contains("WELCOME"), "{got:?}");
    let got = tls_forge(peer_port, "Bailey", clark(), &forged_lines("Clark", "clark"));
    assert!(got.starts_with("REFUSED") && !got.contains("WELCOME"), "{got:?}");

    for id in ["plain", "far", "foreign", "anonymous", "clark-as-bona", "clark"] {
        assert_not_planted(herd, id);
    }
    let by_reason = refused(herd, "Bailey");
    for (reason, n) in expected_refusals {
        // The two plaintext attempts are two refusals.
        let n = if *reason == "not_tls" { n + 1 } else { *n };
        assert_eq!(by_reason.get(*reason), Some(&n), "{reason}: {by_reason:?}");
    }
    let bailey = &herd.procs["Bailey"];
    for (reason, _) in expected_refusals {
        assert!(bailey.stderr_count(&format!("refused {reason}")) >= 1, "{reason} logged: {:#?}", bailey.stderr());
    }

    // Positive control: the same client with Bona's own certificate gets in, and its record is stored.
    let bona = client_config(&ca, Some((&read_pem(certs, "Bona.pem"), &read_pem(certs, "Bona.key"))));
    let got = tls_forge(peer_port, "Bailey", bona, &forged_lines("Bona", "control"));
    assert!(got.starts_with("WELCOME Bailey "), "{got:?}");
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let line = whatsat_first_line(herd.port("Bailey"), "control");
        if line.starts_with("AT Bona +0.000000001 control ") {
            break;
        }
        assert!(Instant::now() < deadline, "the control record was not stored: {line:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn an_expired_certificate_is_refused_and_the_log_says_so() {
    let t = start_tls_herd();
    let (herd, certs) = (&t.herd, t.certs.path());
    let ca = herd::certs::HerdCa::load(&certs.join("ca.pem"), &certs.join("ca.key")).unwrap();
    let day = Duration::from_secs(86_400);
    let now = SystemTime::now();
    let old = ca.issue("Bona", now - day * 30, now - day).unwrap();
    let config = client_config(&certs.join("ca.pem"), Some((&old.cert_pem, &old.key_pem)));
    let got = tls_forge(herd.config.member("Bailey").peer_port, "Bailey", config, &forged_lines("Bona", "stale"));
    assert!(!got.contains("WELCOME"), "{got:?}");
    assert_not_planted(herd, "stale");
    assert_eq!(refused(herd, "Bailey").get("expired"), Some(&1));
    let bailey = &herd.procs["Bailey"];
    bailey.wait_stderr("refused expired", 1, Duration::from_secs(2));
}

#[test]
fn relink_and_catch_up_over_tls_after_a_kill() {
    let mut t = start_tls_herd();
    let herd = &mut t.herd;
    herd.procs.get_mut("Campbell").unwrap().signal(libc::SIGKILL);
    herd.kill("Campbell");
    let mut lines = Vec::new();
    for (i, at) in ["Bailey", "Bona", "Clark", "Jaquez"].iter().enumerate() {
        let reply = ask(herd.port(at), format!("IAMAT missed{i} +1+1 {}\n", now_text()).as_bytes());
        lines.push(String::from_utf8(reply).unwrap().trim_end().to_string());
    }
    let restarted = Instant::now();
    herd.restart("Campbell");
    // Catch-up: Campbell's neighbours send it what it missed, over TLS (plaintext would be refused).
    for (i, line) in lines.iter().enumerate() {
        wait_record(herd.port("Campbell"), &format!("missed{i}"), line, Duration::from_secs(2));
    }
    assert!(restarted.elapsed() < Duration::from_secs(3));
    // Relink: both directions again, each over TLS, and Campbell's own records reach its neighbours.
    let campbell = &herd.procs["Campbell"];
    campbell.wait_stderr("over TLS", 3, Duration::from_secs(2));
    for n in ["Bailey", "Bona", "Jaquez"] {
        herd.procs[n].wait_stderr("linked to Campbell", 2, Duration::from_secs(2));
        let reply = ask(herd.port("Campbell"), format!("IAMAT back-{n} +1+1 {}\n", now_text()).as_bytes());
        wait_record(
            herd.port(n),
            &format!("back-{n}"),
            String::from_utf8(reply).unwrap().trim_end(),
            Duration::from_secs(1),
        );
    }
    for n in ["Bailey", "Bona", "Clark", "Jaquez", "Campbell"] {
        assert!(refused(herd, n).values().all(|&v| v == 0), "{n}: {:?}", refused(herd, n));
    }
}

#[test]
fn a_renewed_certificate_is_picked_up_on_sighup_without_dropping_links() {
    let t = start_tls_herd();
    let (herd, certs) = (&t.herd, t.certs.path());
    let old_bailey = CertificateDer::from_pem_file(certs.join("Bailey.pem")).unwrap();
    make_certs(&herd.config, certs, &["--renew", "--days", "30"]);
    let new_bailey = CertificateDer::from_pem_file(certs.join("Bailey.pem")).unwrap();
    assert_ne!(old_bailey, new_bailey);

    let bailey = &herd.procs["Bailey"];
    let links_before = bailey.stderr_count("linked to ");
    bailey.signal(libc::SIGHUP);
    bailey.wait_stderr("SIGHUP: peer certificate reloaded", 1, Duration::from_secs(2));

    // Live links stayed up: a record still floods at once, and nothing was dropped or relinked.
    let time = now_text();
    let at = String::from_utf8(grader(herd.port("Bailey"), format!("IAMAT hup +1+1 {time}").as_bytes())).unwrap();
    assert_eq!(whatsat_first_line(herd.port("Jaquez"), "hup"), at.trim_end());
    assert_eq!(bailey.stderr_count("dropped"), 0, "{:#?}", bailey.stderr());
    assert_eq!(bailey.stderr_count("linked to "), links_before);

    // A new link sees the renewed certificate (Bona's renewed one, presented by this test, is accepted).
    let bona = client_config(&certs.join("ca.pem"), Some((&read_pem(certs, "Bona.pem"), &read_pem(certs, "Bona.key"))));
    let sock = connect(herd.config.member("Bailey").peer_port);
    let conn = rustls::ClientConnection::new(bona, ServerName::try_from("Bailey").unwrap()).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(b"HELLO Bona Bailey n2\n").unwrap();
    let mut buf = [0u8; 256];
    let n = tls.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"WELCOME Bailey "), "{:?}", String::from_utf8_lossy(&buf[..n]));
    assert_eq!(tls.conn.peer_certificates().unwrap()[0], new_bailey);
}

#[test]
fn serve_with_missing_certificates_fails_naming_herd_certs() {
    let certs = TempDir::new("no-certs");
    let config = tls_config(certs.path());
    let out =
        Command::new(herd_bin()).args(["serve", "Bailey", "--config", config.path.to_str().unwrap()]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("herd: ")).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains("herd certs") && lines[0].contains("ca.pem"), "{stderr}");
}

#[test]
fn herd_certs_writes_private_keys_and_keeps_files() {
    use std::os::unix::fs::PermissionsExt;
    let certs = TempDir::new("certs-cli");
    let config = tls_config(certs.path());
    let out = certs.path().join("out");
    make_certs(&config, &out, &[]);
    let mode = |f: &str| std::fs::metadata(out.join(f)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("ca.key"), 0o600);
    for m in &config.members {
        assert_eq!(mode(&format!("{}.key", m.name)), 0o600);
        assert!(out.join(format!("{}.pem", m.name)).exists());
    }
    let before = std::fs::read(out.join("Bailey.pem")).unwrap();
    let (_, stdout, _) = herd_certs(&["--config", config.path.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert_eq!(stdout.lines().filter(|l| l.ends_with(": kept")).count(), 6, "{stdout}");
    assert_eq!(std::fs::read(out.join("Bailey.pem")).unwrap(), before);
    // The secret keys are never printed.
    assert!(!stdout.contains("PRIVATE KEY"));
}

#[test]
fn herd_up_generates_missing_certificates_on_first_start() {
    let run = TempDir::new("up-run");
    let config = tls_config(&run.path().join("peer-certs"));
    let mut up = Proc::start("up", &["up", "--config", config.path.to_str().unwrap()], &[], "servers up");
    for m in &config.members {
        assert!(run.path().join("peer-certs").join(format!("{}.pem", m.name)).exists(), "{}", m.name);
    }
    // And the herd it started links over TLS: a record floods from Bailey to Jaquez.
    let reply = ask(config.port("Bailey"), format!("IAMAT up1 +1+1 {}\n", now_text()).as_bytes());
    wait_record(config.port("Jaquez"), "up1", String::from_utf8(reply).unwrap().trim_end(), Duration::from_secs(2));
    // SIGHUP to `herd up` reaches every server, which reloads and keeps running.
    up.signal(libc::SIGHUP);
    up.wait_stderr("SIGHUP: peer certificate reloaded", config.members.len(), Duration::from_secs(5));
    let reply = ask(config.port("Bailey"), format!("IAMAT up2 +1+1 {}\n", now_text()).as_bytes());
    wait_record(config.port("Jaquez"), "up2", String::from_utf8(reply).unwrap().trim_end(), Duration::from_secs(2));
    assert!(up.is_running());
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(Duration::from_secs(5)).is_some());
}
