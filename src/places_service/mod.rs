//! The local Places-compatible HTTPS service (`herd places`, PROTOCOL section 8).
//!
//! It answers the legacy Nearby Search (`GET /maps/api/place/nearbysearch/json`) and Places (New)
//! `POST /v1/places:searchNearby` from the vendored GeoNames gazetteer (GeoNames (geonames.org),
//! CC BY 4.0), over TLS with a certificate signed by a root CA it writes to `--ca-out`, so herd servers
//! can be tested end to end with no API key and no network. `--fault` makes it misbehave on purpose.
//!
//! - [`gazetteer`]: the embedded places and their grid index.
//! - [`api`]: the endpoints as pure functions (request in, status and Google-style JSON out).
//! - [`http1`]: request parsing and response framing.
//! - [`certs`]: the CA (created once, then reused) and the leaf certificate.
//! - `server`: the single-threaded mio loop: accept, readiness, timers, signals, shut-down.
//! - `conn`: one connection's TLS and HTTP/1.1 state machine.
//! - `respond`: request routing: the endpoint's answer, the faults, the framing.

pub mod api;
pub mod certs;
mod conn;
pub mod gazetteer;
pub mod http1;
mod respond;
mod server;

pub use certs::CertError;
pub use gazetteer::{haversine_m, Gazetteer, GazetteerError, EARTH_RADIUS_M};

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A `herd places` command line that is refused (exit status 2). Each displays as one line, printed
/// after `herd places: ` and before `(see herd places --help)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsageError {
    /// `FLAG needs a value`.
    MissingValue { flag: &'static str },
    /// `FLAG "VALUE" is not WHAT` (an address, a number of milliseconds).
    BadValue { flag: &'static str, value: String, what: &'static str },
    /// `--ca-out needs a file name` (it was given an empty one).
    EmptyCaOut,
    /// `unknown argument "ARG"`.
    Unknown { arg: String },
    /// `FLAG is required` (`--listen ADDR`, `--ca-out FILE`).
    Required { flag: &'static str },
    /// A `--fault` that is not one of the kinds, or combines badly.
    Fault(FaultError),
}

/// Why a `--fault KIND` is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultError {
    /// `fault "KIND": "VALUE" is not a number of milliseconds`.
    NotMilliseconds { kind: String, value: String },
    /// `fault "KIND": the interval must be at least 1 ms` (`trickle=0`).
    ZeroInterval { kind: String },
    /// `unknown fault "KIND" (expected ...)`.
    Unknown { kind: String },
    /// `faults http500 and badjson cannot be combined`.
    Http500WithBadJson,
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UsageError::MissingValue { flag } => write!(f, "{flag} needs a value"),
            UsageError::BadValue { flag, value, what } => write!(f, "{flag} {value:?} is not {what}"),
            UsageError::EmptyCaOut => f.write_str("--ca-out needs a file name"),
            UsageError::Unknown { arg } => write!(f, "unknown argument {arg:?}"),
            UsageError::Required { flag } => write!(f, "{flag} is required"),
            UsageError::Fault(e) => e.fmt(f),
        }
    }
}

impl fmt::Display for FaultError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FaultError::NotMilliseconds { kind, value } => {
                write!(f, "fault {kind:?}: {value:?} is not a number of milliseconds")
            }
            FaultError::ZeroInterval { kind } => write!(f, "fault {kind:?}: the interval must be at least 1 ms"),
            FaultError::Unknown { kind } => write!(
                f,
                "unknown fault {kind:?} (expected delay=MS, reset, http500, badjson, wrongname or trickle=MS)"
            ),
            FaultError::Http500WithBadJson => f.write_str("faults http500 and badjson cannot be combined"),
        }
    }
}

impl std::error::Error for UsageError {}
impl std::error::Error for FaultError {}

impl From<FaultError> for UsageError {
    fn from(e: FaultError) -> UsageError {
        UsageError::Fault(e)
    }
}

/// Misbehaviour on purpose, applied to every Places request (not to `/__stats` or 404s).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// `delay=MS`: answer after this long (a timer; the loop keeps serving others).
    pub delay: Option<Duration>,
    /// `reset`: send the head and about half the body, then reset the TCP connection.
    pub reset: bool,
    /// `http500`: answer 500 with Google's error shape.
    pub http500: bool,
    /// `badjson`: answer 200 with a body that is not JSON.
    pub badjson: bool,
    /// `wrongname`: serve a leaf certificate for `wrong.invalid` only.
    pub wrongname: bool,
    /// `trickle=MS`: send the response one byte every MS ms.
    pub trickle: Option<Duration>,
}

impl Faults {
    /// Adds one `--fault` KIND.
    pub fn add(&mut self, kind: &str) -> Result<(), FaultError> {
        let ms = |value: &str| -> Result<Duration, FaultError> {
            value
                .parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|_| FaultError::NotMilliseconds { kind: kind.into(), value: value.into() })
        };
        match kind.split_once('=') {
            Some(("delay", v)) => self.delay = Some(ms(v)?),
            Some(("trickle", v)) => {
                let every = ms(v)?;
                if every.is_zero() {
                    return Err(FaultError::ZeroInterval { kind: kind.into() });
                }
                self.trickle = Some(every);
            }
            None if kind == "reset" => self.reset = true,
            None if kind == "http500" => self.http500 = true,
            None if kind == "badjson" => self.badjson = true,
            None if kind == "wrongname" => self.wrongname = true,
            _ => return Err(FaultError::Unknown { kind: kind.into() }),
        }
        if self.http500 && self.badjson {
            return Err(FaultError::Http500WithBadJson);
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        *self == Faults::default()
    }
}

impl fmt::Display for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(d) = self.delay {
            parts.push(format!("delay={}", d.as_millis()));
        }
        if self.reset {
            parts.push("reset".into());
        }
        if self.http500 {
            parts.push("http500".into());
        }
        if self.badjson {
            parts.push("badjson".into());
        }
        if self.wrongname {
            parts.push("wrongname".into());
        }
        if let Some(d) = self.trickle {
            parts.push(format!("trickle={}", d.as_millis()));
        }
        if parts.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&parts.join(","))
        }
    }
}

/// Why the service could not start, or stopped. Each displays as one line (printed after
/// `herd places: `); [`ServiceError::exit_status`] tells start-up failures (2) from later ones (1).
#[derive(Debug)]
pub enum ServiceError {
    /// SIGTERM and SIGINT could not be caught.
    Signals(std::io::Error),
    /// The listen address is in use, or not ours to bind: `cannot listen on ADDR: ERROR`.
    Bind { addr: SocketAddr, source: std::io::Error },
    /// The CA could not be loaded, created or written, or the TLS configuration was refused.
    Cert(CertError),
    /// The embedded gazetteer could not be read (a build problem, never the user's).
    Gazetteer(GazetteerError),
    /// The loop's own machinery failed: `DOING: ERROR` (`poll`, `listener`, `register listener`, ...).
    Loop { doing: &'static str, source: std::io::Error },
}

impl ServiceError {
    /// 2 when the service could not start (signals, the listen address, the CA, the gazetteer), 1 when
    /// the loop's machinery failed (poll, registration, as `herd places` always answered).
    pub fn exit_status(&self) -> i32 {
        match self {
            ServiceError::Loop { .. } => 1,
            _ => 2,
        }
    }
}

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceError::Signals(e) => write!(f, "cannot handle signals: {e}"),
            ServiceError::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            ServiceError::Cert(e) => e.fmt(f),
            ServiceError::Gazetteer(e) => e.fmt(f),
            ServiceError::Loop { doing, source } => write!(f, "{doing}: {source}"),
        }
    }
}

impl std::error::Error for ServiceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ServiceError::Signals(e) | ServiceError::Bind { source: e, .. } | ServiceError::Loop { source: e, .. } => {
                Some(e)
            }
            ServiceError::Cert(e) => Some(e),
            ServiceError::Gazetteer(e) => Some(e),
        }
    }
}

impl From<CertError> for ServiceError {
    fn from(e: CertError) -> ServiceError {
        ServiceError::Cert(e)
    }
}

/// How to run the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Address to listen on; port 0 picks a free port (printed on the listening line).
    pub listen: SocketAddr,
    /// Where the root CA's PEM goes; its key goes to the same path plus `.key`.
    pub ca_out: PathBuf,
    pub faults: Faults,
    /// Answer with chunked bodies (several chunks) instead of `Content-Length`.
    pub chunked: bool,
    /// A connection with no traffic for this long is closed (30 s).
    pub idle_timeout: Duration,
    /// Connections beyond this many are closed as soon as they are accepted.
    pub max_connections: usize,
}

impl Options {
    pub fn new(listen: SocketAddr, ca_out: impl Into<PathBuf>) -> Options {
        Options {
            listen,
            ca_out: ca_out.into(),
            faults: Faults::default(),
            chunked: false,
            idle_timeout: Duration::from_secs(30),
            max_connections: 1024,
        }
    }
}

pub const USAGE: &str = "\
usage: herd places --listen ADDR --ca-out FILE [--chunked] [--fault KIND]... [--idle-timeout MS]

  --listen ADDR      address to listen on, such as 127.0.0.1:18443 (port 0: any free port)
  --ca-out FILE      write the root CA certificate (PEM) here and its key to FILE.key (mode 0600);
                     both are reused when they already exist
  --chunked          answer with chunked transfer encoding
  --fault KIND       misbehave on Places requests; KIND is delay=MS, reset, http500, badjson,
                     wrongname or trickle=MS; repeatable
  --idle-timeout MS  close connections idle this long (default 30000)

Prints `places listening on ADDR:PORT` on stdout once it accepts; logs go to stderr (RUST_LOG).";

/// Parses the arguments after `places`. `Ok(None)` means help was asked for.
pub fn parse_args(args: &[String]) -> Result<Option<Options>, UsageError> {
    let mut listen: Option<SocketAddr> = None;
    let mut ca_out: Option<PathBuf> = None;
    let mut faults = Faults::default();
    let mut chunked = false;
    let mut idle: Option<Duration> = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = |flag: &'static str| -> Result<String, UsageError> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => it.next().cloned().ok_or(UsageError::MissingValue { flag }),
            }
        };
        match flag {
            "-h" | "--help" => return Ok(None),
            "--listen" => {
                let v = value("--listen")?;
                let bad = || UsageError::BadValue { flag: "--listen", value: v.clone(), what: "an IP:PORT address" };
                listen = Some(v.parse().map_err(|_| bad())?);
            }
            "--ca-out" => {
                let v = value("--ca-out")?;
                if v.is_empty() {
                    return Err(UsageError::EmptyCaOut);
                }
                ca_out = Some(PathBuf::from(v));
            }
            "--fault" => faults.add(&value("--fault")?)?,
            "--chunked" if inline.is_none() => chunked = true,
            "--idle-timeout" => {
                let v = value("--idle-timeout")?;
                let ms: u64 = v.parse().ok().filter(|&ms| ms > 0).ok_or_else(|| UsageError::BadValue {
                    flag: "--idle-timeout",
                    value: v.clone(),
                    what: "a positive number of ms",
                })?;
                idle = Some(Duration::from_millis(ms));
            }
            _ => return Err(UsageError::Unknown { arg: arg.clone() }),
        }
    }
    let listen = listen.ok_or(UsageError::Required { flag: "--listen ADDR" })?;
    let ca_out = ca_out.ok_or(UsageError::Required { flag: "--ca-out FILE" })?;
    let mut options = Options::new(listen, ca_out);
    options.faults = faults;
    options.chunked = chunked;
    if let Some(idle) = idle {
        options.idle_timeout = idle;
    }
    Ok(Some(options))
}

/// `herd places ...`: parses `args` (those after `places`), runs until SIGTERM or SIGINT, and returns
/// the exit status: 0 after a clean shutdown, 2 on bad arguments, a port in use or an unwritable CA
/// (with a one-line error on stderr), 1 if the loop fails later.
pub fn cli(args: &[String]) -> i32 {
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).try_init();
    let options = match parse_args(args) {
        Ok(Some(options)) => options,
        Ok(None) => {
            println!("{USAGE}");
            return 0;
        }
        Err(e) => {
            eprintln!("herd places: {e} (see herd places --help)");
            return 2;
        }
    };
    match run(options) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("herd places: {e}");
            e.exit_status()
        }
    }
}

/// Runs the service until SIGTERM or SIGINT. Prints `places listening on ADDR:PORT` on stdout when it
/// accepts. Errors before that (address in use, CA not writable) and after it are both returned.
pub fn run(options: Options) -> Result<(), ServiceError> {
    start(options)?.serve()
}

/// Everything set up, not yet accepting.
struct Ready {
    listener: std::net::TcpListener,
    signals: signal_hook_mio::v1_0::Signals,
    tls: std::sync::Arc<rustls::ServerConfig>,
    gazetteer: Gazetteer,
    settings: respond::Settings,
    started: Instant,
}

impl Ready {
    fn serve(self) -> Result<(), ServiceError> {
        server::serve(self.listener, self.signals, self.tls, self.gazetteer, self.settings, self.started)
    }
}

fn start(options: Options) -> Result<Ready, ServiceError> {
    let started = Instant::now();
    // Signals first: from here on SIGTERM is an event for the loop, never an abrupt death.
    let signals = signal_hook_mio::v1_0::Signals::new([signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT])
        .map_err(ServiceError::Signals)?;
    let listener = std::net::TcpListener::bind(options.listen)
        .map_err(|source| ServiceError::Bind { addr: options.listen, source })?;
    let ca = certs::load_or_create_ca(&options.ca_out)?;
    if ca.reused {
        log::info!("reusing the CA in {}", options.ca_out.display());
    }
    let names = if options.faults.wrongname {
        vec![certs::WRONG_NAME.to_string()]
    } else {
        certs::leaf_names(options.listen.ip())
    };
    let tls = certs::server_config(&ca, &names)?;
    let t = Instant::now();
    let gazetteer = Gazetteer::embedded().map_err(ServiceError::Gazetteer)?;
    log::info!(
        "gazetteer: {} places indexed in {} ms (GeoNames (geonames.org), CC BY 4.0); leaf for {}; faults {}{}",
        gazetteer.len(),
        t.elapsed().as_millis(),
        names.join(", "),
        options.faults,
        if options.chunked { "; chunked bodies" } else { "" }
    );
    Ok(Ready {
        listener,
        signals,
        tls,
        gazetteer,
        settings: respond::Settings {
            faults: options.faults,
            chunked: options.chunked,
            idle_timeout: options.idle_timeout,
            max_connections: options.max_connections,
        },
        started,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parses_the_command_line() {
        let o = parse_args(&args(
            "--listen 127.0.0.1:0 --ca-out run/ca.pem --chunked --fault delay=250 --fault=reset --fault trickle=3",
        ))
        .unwrap()
        .unwrap();
        assert_eq!(o.listen, "127.0.0.1:0".parse().unwrap());
        assert_eq!(o.ca_out, PathBuf::from("run/ca.pem"));
        assert!(o.chunked);
        assert_eq!(o.faults.delay, Some(Duration::from_millis(250)));
        assert!(o.faults.reset);
        assert_eq!(o.faults.trickle, Some(Duration::from_millis(3)));
        assert_eq!(o.faults.to_string(), "delay=250,reset,trickle=3");
        assert_eq!(o.idle_timeout, Duration::from_secs(30));
        let o = parse_args(&args("--ca-out=x --listen=[::1]:9 --idle-timeout 50")).unwrap().unwrap();
        assert_eq!(o.idle_timeout, Duration::from_millis(50));
        assert_eq!(parse_args(&args("--help")), Ok(None));
    }

    #[test]
    fn rejects_bad_command_lines() {
        let bad_value = |flag, value: &str, what| UsageError::BadValue { flag, value: value.into(), what };
        let fault = |e| UsageError::Fault(e);
        for (bad, want) in [
            ("", UsageError::Required { flag: "--listen ADDR" }),
            ("--listen 127.0.0.1:0", UsageError::Required { flag: "--ca-out FILE" }),
            ("--ca-out x", UsageError::Required { flag: "--listen ADDR" }),
            ("--listen nowhere --ca-out x", bad_value("--listen", "nowhere", "an IP:PORT address")),
            ("--listen 127.0.0.1:0 --ca-out x --fault explode", fault(FaultError::Unknown { kind: "explode".into() })),
            (
                "--listen 127.0.0.1:0 --ca-out x --fault delay=soon",
                fault(FaultError::NotMilliseconds { kind: "delay=soon".into(), value: "soon".into() }),
            ),
            (
                "--listen 127.0.0.1:0 --ca-out x --fault trickle=0",
                fault(FaultError::ZeroInterval { kind: "trickle=0".into() }),
            ),
            ("--listen 127.0.0.1:0 --ca-out x --fault http500 --fault badjson", fault(FaultError::Http500WithBadJson)),
            ("--listen 127.0.0.1:0 --ca-out x --extra", UsageError::Unknown { arg: "--extra".into() }),
            ("--listen 127.0.0.1:0 --ca-out", UsageError::MissingValue { flag: "--ca-out" }),
            ("--listen 127.0.0.1:0 --ca-out=", UsageError::EmptyCaOut),
            ("--listen 127.0.0.1:0 --ca-out x --chunked=yes", UsageError::Unknown { arg: "--chunked=yes".into() }),
            (
                "--listen 127.0.0.1:0 --ca-out x --idle-timeout 0",
                bad_value("--idle-timeout", "0", "a positive number of ms"),
            ),
        ] {
            assert_eq!(parse_args(&args(bad)), Err(want), "{bad:?}");
        }
    }

    /// The messages users read, one per kind, as they always were.
    #[test]
    fn refusals_read_as_one_line() {
        for (bad, want) in [
            ("--listen nowhere --ca-out x", "--listen \"nowhere\" is not an IP:PORT address"),
            ("--listen 127.0.0.1:0", "--ca-out FILE is required"),
            ("--listen 127.0.0.1:0 --ca-out", "--ca-out needs a value"),
            ("--listen 127.0.0.1:0 --ca-out=", "--ca-out needs a file name"),
            ("--listen 127.0.0.1:0 --ca-out x --extra", "unknown argument \"--extra\""),
            (
                "--listen 127.0.0.1:0 --ca-out x --fault delay=soon",
                "fault \"delay=soon\": \"soon\" is not a number of milliseconds",
            ),
            (
                "--listen 127.0.0.1:0 --ca-out x --fault trickle=0",
                "fault \"trickle=0\": the interval must be at least 1 ms",
            ),
            (
                "--listen 127.0.0.1:0 --ca-out x --fault explode",
                "unknown fault \"explode\" (expected delay=MS, reset, http500, badjson, wrongname or trickle=MS)",
            ),
            (
                "--listen 127.0.0.1:0 --ca-out x --fault badjson --fault http500",
                "faults http500 and badjson cannot be combined",
            ),
        ] {
            assert_eq!(parse_args(&args(bad)).unwrap_err().to_string(), want, "{bad:?}");
        }
    }
}
