//! `herd up`: runs every server of a config as its own child process, plus the local Places service when
//! the config has `local_places`, and stops them all on Ctrl-C or SIGTERM.
//!
//! This is a supervisor, not a server: it may use a thread per child pipe, since it only relays their
//! output (each line prefixed with the child's name) and watches them. Children run in their own process
//! group, so a terminal's Ctrl-C reaches only `up`, which then sends each child exactly one SIGTERM (a
//! second signal would make a server exit at once); and each child gets SIGTERM from the kernel if `up`
//! itself dies (PR_SET_PDEATHSIG), so no server is orphaned.
//!
//! A herd that cannot start is stopped whole and reported as an [`UpError`], which `main` prints once
//! everything it started is gone.

use crate::config::{Config, ConfigError};
use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_millis(1800);

enum Msg {
    Ready(usize),
    Signal(i32),
}

struct Member {
    name: String,
    child: Child,
    ready: bool,
    exited: bool,
}

/// Why the herd did not start, or stopped by itself. Each displays as one line (printed after `herd: `).
#[derive(Debug)]
pub enum UpError {
    /// The config cannot be used as it is (a host that does not resolve).
    Config(ConfigError),
    /// A port the herd needs is in use (or not ours to bind): nothing was started.
    CannotListen { addr: SocketAddr, what: String, source: std::io::Error },
    /// With `peer_tls`, the missing certificates could not be written (the message says which file).
    PeerCerts(crate::certs::CertsError),
    /// SIGTERM and SIGINT could not be caught.
    Signals(std::io::Error),
    /// The path of the running `herd` executable, needed to start the children, is unknown.
    OwnExecutable(std::io::Error),
    /// A child process could not be started.
    Spawn { name: String, source: std::io::Error },
    /// A child exited before the whole herd was listening (its own stderr says why).
    ExitedDuringStartup { name: String },
    /// The herd was not listening within this many seconds.
    StartTimeout { secs: u64 },
    /// A signal (SIGTERM, SIGINT, or SIGHUP) came during start-up (exit status 130, no message).
    Interrupted,
    /// Every member of a running herd exited by itself.
    AllExited,
    /// No admin token could be made: no system randomness.
    NoRandomness,
    /// The admin token file could not be written.
    TokenFile { path: std::path::PathBuf, source: std::io::Error },
}

impl UpError {
    /// The exit status of `herd up` that ends with this error: 130 for a signal during start-up, 1 when
    /// a running herd died out, 2 when it could not start.
    pub fn exit_status(&self) -> u8 {
        match self {
            UpError::Interrupted => 130,
            UpError::AllExited => 1,
            _ => 2,
        }
    }
}

impl fmt::Display for UpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpError::Config(e) => e.fmt(f),
            UpError::CannotListen { addr, what, source } => write!(f, "cannot listen on {addr} ({what}): {source}"),
            UpError::PeerCerts(e) => write!(f, "peer_tls: {e}"),
            UpError::Signals(e) => write!(f, "cannot install signal handlers: {e}"),
            UpError::OwnExecutable(e) => write!(f, "cannot find my own executable: {e}"),
            UpError::Spawn { name, source } => write!(f, "cannot start {name}: {source}"),
            UpError::ExitedDuringStartup { name } => write!(f, "{name} exited during start-up; stopping the herd"),
            UpError::StartTimeout { secs } => write!(f, "the herd did not start within {secs}s; stopping it"),
            UpError::Interrupted => f.write_str("interrupted during start-up"),
            UpError::AllExited => f.write_str("every member has exited"),
            UpError::NoRandomness => f.write_str("no system randomness for the admin token"),
            UpError::TokenFile { path, source } => {
                write!(f, "cannot write the admin token to {}: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for UpError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            UpError::Config(e) => Some(e),
            UpError::CannotListen { source, .. }
            | UpError::Spawn { source, .. }
            | UpError::TokenFile { source, .. } => Some(source),
            UpError::Signals(e) | UpError::OwnExecutable(e) => Some(e),
            UpError::ExitedDuringStartup { .. } | UpError::StartTimeout { .. } => None,
            UpError::PeerCerts(e) => Some(e),
            UpError::Interrupted | UpError::AllExited | UpError::NoRandomness => None,
        }
    }
}

impl From<ConfigError> for UpError {
    fn from(e: ConfigError) -> UpError {
        UpError::Config(e)
    }
}

/// With `peer_tls`, the first start writes the herd's CA and certificates where the config says (files
/// that exist are kept, as by `herd certs`), so the default herd runs with mutual TLS without a setup step.
fn ensure_peer_certs(config: &Config) -> Result<(), UpError> {
    let Some(tls) = &config.peer_tls else { return Ok(()) };
    let report = crate::certs::run(config, &crate::certs::Layout::of_config(tls), crate::certs::Options::default())
        .map_err(UpError::PeerCerts)?;
    for line in report.lines.iter().filter(|l| !l.ends_with(": kept")) {
        println!("herd: {line}");
    }
    for w in &report.warnings {
        eprintln!("herd: warning: {w}");
    }
    Ok(())
}

/// Runs the herd until a signal (`Ok`), or until it cannot start or dies out (`Err`). Either way every
/// child it started has exited when this returns.
pub fn run(config: &Config) -> Result<(), UpError> {
    check_ports(config)?;
    ensure_peer_certs(config)?;
    let (tx, rx) = mpsc::channel();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])
    .map_err(UpError::Signals)?;
    let signal_tx = tx.clone();
    std::thread::spawn(move || {
        for sig in signals.forever() {
            if signal_tx.send(Msg::Signal(sig)).is_err() {
                break;
            }
        }
    });

    let exe = std::env::current_exe().map_err(UpError::OwnExecutable)?;
    let config_arg = config.path.to_string_lossy().to_string();
    let mut extra_env: Vec<(String, String)> = Vec::new();
    if config.local_places.is_some() {
        // The local service accepts any non-empty key. When none is given, make one up for this run so that
        // the servers ask it the way they would ask Google, without any real key involved.
        if let Some(var) = config.places.as_ref().and_then(|p| p.key_env.clone()) {
            if std::env::var_os(&var).is_none() {
                extra_env.push((var, random_hex(16)));
            }
        }
    }

    // An admin listener is never left open: unless the operator gave a token in the variable the
    // servers read it from, make one for this run, in a file only its owner can read, and say where
    // (never the token itself).
    if config.has_admin() {
        let var = config.admin_token_var().to_string();
        if std::env::var_os(&var).is_none_or(|v| v.is_empty()) {
            let path = config.run_dir.join("admin-token");
            let token = crate::server::admin_auth::new_token().map_err(|_| UpError::NoRandomness)?;
            crate::server::admin_auth::write_token_file(&path, &token)
                .map_err(|source| UpError::TokenFile { path: path.clone(), source })?;
            eprintln!("herd: admin token in {} (mode 0600); send it as Authorization: Bearer <token>", path.display());
            extra_env.push((var, token));
        } else {
            eprintln!("herd: admin token from ${var}");
        }
    }

    // Start-up in order: the local Places service first (the servers point at it), then every server.
    let mut members: Vec<Member> = Vec::new();
    let mut commands: Vec<(String, Vec<String>)> = Vec::new();
    if let Some(local) = &config.local_places {
        let args = vec![
            "places".to_string(),
            "--listen".into(),
            local.listen.to_string(),
            "--ca-out".into(),
            local.ca_out.to_string_lossy().into(),
        ];
        commands.push(("places".into(), args));
    }
    let first_server = commands.len();
    for s in &config.servers {
        commands.push((s.name.clone(), vec!["serve".into(), s.name.clone(), "--config".into(), config_arg.clone()]));
    }

    let mut result = Ok(());
    'start: for (i, (name, args)) in commands.iter().enumerate() {
        match spawn(&exe, name, args, &extra_env, i, tx.clone()) {
            Ok(child) => members.push(Member { name: name.clone(), child, ready: false, exited: false }),
            Err(source) => {
                result = Err(UpError::Spawn { name: name.clone(), source });
                break;
            }
        }
        // The service must be up before servers that trust its CA start; servers start together.
        let wait_for: Vec<usize> =
            if i + 1 == first_server || i + 1 == commands.len() { (0..=i).collect() } else { vec![] };
        let deadline = Instant::now() + START_TIMEOUT;
        while wait_for.iter().any(|&j| !members[j].ready) {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(Msg::Ready(j)) => members[j].ready = true,
                Ok(Msg::Signal(_)) => {
                    result = Err(UpError::Interrupted);
                    break 'start;
                }
                Err(_) => {}
            }
            if let Some(m) = members.iter_mut().find_map(|m| matches!(m.child.try_wait(), Ok(Some(_))).then_some(m)) {
                m.exited = true;
                result = Err(UpError::ExitedDuringStartup { name: m.name.clone() });
                break 'start;
            }
            if Instant::now() > deadline {
                result = Err(UpError::StartTimeout { secs: START_TIMEOUT.as_secs() });
                break 'start;
            }
        }
    }

    if result.is_ok() {
        println!(
            "herd: {} servers up{}; Ctrl-C stops them",
            config.servers.len(),
            if first_server > 0 { " with the local Places service" } else { "" }
        );
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(Msg::Signal(signal_hook::consts::SIGHUP)) => {
                    // Every server reopens its log file (rotation) and rereads its peer certificate (renewal);
                    // nothing stops. (The local Places service, started first, keeps no log file.)
                    for m in members.iter().skip(first_server).filter(|m| !m.exited) {
                        // SAFETY: kill(2) with a pid we spawned and have not reaped.
                        unsafe { libc::kill(m.child.id() as libc::pid_t, libc::SIGHUP) };
                    }
                }
                Ok(Msg::Signal(sig)) => {
                    println!("herd: signal {sig}: stopping the herd");
                    break;
                }
                Ok(Msg::Ready(_)) | Err(_) => {}
            }
            for m in members.iter_mut().filter(|m| !m.exited) {
                if let Ok(Some(st)) = m.child.try_wait() {
                    m.exited = true;
                    eprintln!("herd: {} exited ({st}); the rest of the herd keeps running", m.name);
                }
            }
            if members.iter().all(|m| m.exited) {
                result = Err(UpError::AllExited);
                break;
            }
        }
    }

    // Stop servers first, so WHATSATs already received still reach the Places service, then the service;
    // all under one deadline, so `up` is done within 2 s of the signal.
    let deadline = Instant::now() + STOP_TIMEOUT;
    let split = first_server.min(members.len());
    let (services, servers) = members.split_at_mut(split);
    signal_all(servers);
    wait_until(servers, deadline - Duration::from_millis(500));
    signal_all(services);
    wait_until(services, deadline);
    reap(&mut members);
    result
}

/// Nothing half-started: every port the herd needs must be free before any child starts.
fn check_ports(config: &Config) -> Result<(), UpError> {
    let mut wanted = Vec::new();
    for s in &config.servers {
        wanted.push((format!("{} client port", s.name), s.client_addr()?));
        wanted.push((format!("{} peer port", s.name), s.peer_addr()?));
        if let Some(port) = s.admin_port {
            wanted.push((format!("{} admin port", s.name), SocketAddr::new(config.admin_host, port)));
        }
    }
    if let Some(local) = &config.local_places {
        wanted.push(("local Places service".into(), local.listen));
    }
    for (what, addr) in wanted {
        // mio's bind sets SO_REUSEADDR as the servers do, so TIME_WAIT leftovers do not count as "in use".
        if let Err(source) = mio::net::TcpListener::bind(addr) {
            return Err(UpError::CannotListen { addr, what, source });
        }
    }
    Ok(())
}

fn spawn(
    exe: &std::path::Path,
    name: &str,
    args: &[String],
    env: &[(String, String)],
    index: usize,
    tx: mpsc::Sender<Msg>,
) -> std::io::Result<Child> {
    let mut cmd = Command::new(exe);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    for (k, v) in env {
        cmd.env(k, v);
    }
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let prefix = format!("[{name}] ");
    let out_prefix = prefix.clone();
    std::thread::spawn(move || {
        let mut ready_sent = false;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if !ready_sent && line.contains(" listening on ") {
                ready_sent = true;
                let _ = tx.send(Msg::Ready(index));
            }
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{out_prefix}{line}");
        }
    });
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "{prefix}{line}");
        }
    });
    Ok(child)
}

/// One SIGTERM each to the members still running.
fn signal_all(members: &mut [Member]) {
    for m in members.iter_mut().filter(|m| !m.exited) {
        // SAFETY: kill(2) with a pid we spawned and have not reaped.
        unsafe { libc::kill(m.child.id() as libc::pid_t, libc::SIGTERM) };
    }
}

/// Waits until every member has exited or the deadline passes.
fn wait_until(members: &mut [Member], deadline: Instant) {
    while Instant::now() < deadline
        && members.iter_mut().any(|m| !m.exited && m.child.try_wait().ok().flatten().is_none())
    {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGKILL for whoever is still there, then reap everyone.
fn reap(members: &mut [Member]) {
    for m in members.iter_mut() {
        if matches!(m.child.try_wait(), Ok(None)) {
            eprintln!("herd: {} did not stop in time; killing it", m.name);
            let _ = m.child.kill();
        }
        let _ = m.child.wait();
    }
}

fn random_hex(bytes: usize) -> String {
    use ring::rand::SecureRandom;
    let mut buf = vec![0u8; bytes];
    let _ = ring::rand::SystemRandom::new().fill(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn a_port_in_use_is_found_before_anything_starts() {
        let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let taken = holder.local_addr().unwrap().port();
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let text = format!(r#"{{"servers": [{{"name": "A", "port": {free}, "peer_port": {taken}}}]}}"#);
        let config = Config::parse(Path::new("up.json"), &text).unwrap();
        let err = check_ports(&config).unwrap_err();
        let UpError::CannotListen { addr, what, source } = &err else { panic!("{err:?}") };
        assert_eq!((addr.port(), what.as_str()), (taken, "A peer port"));
        assert_eq!(source.kind(), std::io::ErrorKind::AddrInUse);
        assert_eq!(err.exit_status(), 2);
        let line = err.to_string();
        assert!(line.starts_with(&format!("cannot listen on 127.0.0.1:{taken} (A peer port): ")), "{line}");
        drop(holder);
    }

    #[test]
    fn exit_statuses_say_how_up_ended() {
        assert_eq!(UpError::Interrupted.exit_status(), 130);
        assert_eq!(UpError::AllExited.exit_status(), 1);
        assert_eq!(UpError::StartTimeout { secs: 30 }.exit_status(), 2);
        assert_eq!(UpError::StartTimeout { secs: 30 }.to_string(), "the herd did not start within 30s; stopping it");
        let e = UpError::ExitedDuringStartup { name: "B".into() };
        assert_eq!((e.exit_status(), e.to_string().as_str()), (2, "B exited during start-up; stopping the herd"));
    }
}
