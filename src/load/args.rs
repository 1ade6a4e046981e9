//! `herd load` options and their hand-written parser.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use super::workload::Workload;

/// The longest measured period a run may ask for; every run stops by itself.
pub const MAX_DURATION: Duration = Duration::from_secs(600);
/// The longest warm-up.
pub const MAX_WARMUP: Duration = Duration::from_secs(60);

pub const USAGE: &str = "\
usage: herd load [OPTIONS]

Drives TCP line-protocol servers (a herd, or anything with one-line replies) and reports throughput,
latency percentiles and errors by kind.

Targets and connections:
  --target HOST:PORT     server to drive; repeat to spread connections round-robin over several
                         (default 127.0.0.1:10000); only loopback unless --allow-remote
  --allow-remote         allow targets that are not loopback addresses
  --connections N        TCP connections (default 50)
  --depth D              requests in flight per connection, pipelined (default 1)

Pacing and length:
  --rate R               open loop: R requests/s in total on a fixed timetable; latency counts from
                         the scheduled send time (no coordinated omission). Default: closed loop, each
                         connection keeps D requests in flight
  --duration SECS        measured period (default 10; at most 600). With --requests and no
                         --duration, the run lasts until the requests are answered (600 s at most)
  --requests N           stop after N measured requests have been answered (or failed), or when
                         no connection could be opened for a whole --timeout-ms
  --warmup SECS          unrecorded warm-up before measuring (default 1; at most 60)
  --timeout-ms MS        a request not answered this long after its (scheduled) send is an error
                         and its connection is reopened (default 5000)

Workloads:
  --workload iamat       IAMAT client{k} LOCATION TIME over --clients ids, expects one AT line (default)
  --workload whatsat     seeds every id with IAMAT (unrecorded), then WHATSAT client{k} RADIUS BOUND,
                         expects the AT line, the JSON and an empty line
  --workload mixed       WHATSAT with probability --whatsat-ratio (default 0.1), IAMAT otherwise
  --workload raw         one line per request from --template, expects exactly one reply line
  --clients K            client ids client0..client{K-1} (default 1000)
  --radius KM            WHATSAT radius (default 10)
  --bound N              WHATSAT bound (default 5)
  --whatsat-ratio F      share of WHATSAT in mixed, 0 to 1 (default 0.1)
  --template 'LINE'      raw request line; {i} becomes a counter (e.g. 'SET k{i} v' for redis-server)
  --expect PREFIX        raw: a reply not starting with PREFIX is 'unexpected' (e.g. '+OK')

Output:
  --json                 print the report as one JSON object on stdout
  --plot FILE.svg        write the latency percentile curve as SVG
  --fail-on-error        exit 1 when the run had any error
  -h, --help             this text

A reply starting with '? ' counts as an 'invalid' error, a connection closed or reset with requests
outstanding as 'closed', a reply that does not match its request as 'unexpected', no reply in time as
'timeout', a refused or timed-out connect as 'connect'. Errors never stop the run; connections are reopened.
Exit status: 0, 1 (run failed, or errors with --fail-on-error), 2 (bad arguments).
";

/// Everything a run needs. `Default` gives the documented defaults (one target, 127.0.0.1:10000).
#[derive(Clone, Debug)]
pub struct Options {
    pub targets: Vec<SocketAddr>,
    pub allow_remote: bool,
    pub connections: usize,
    pub depth: usize,
    /// `Some(r)`: open loop at `r` requests/s in total.
    pub rate: Option<f64>,
    pub duration: Duration,
    pub requests: Option<u64>,
    pub warmup: Duration,
    pub workload: Workload,
    pub clients: u32,
    pub radius: String,
    pub bound: u32,
    /// Raw mode: required reply prefix.
    pub expect: Option<String>,
    pub timeout: Duration,
    pub json: bool,
    pub plot: Option<PathBuf>,
    pub fail_on_error: bool,
    /// A one-line progress update on stderr every second.
    pub progress: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            targets: vec![SocketAddr::from(([127, 0, 0, 1], 10000))],
            allow_remote: false,
            connections: 50,
            depth: 1,
            rate: None,
            duration: Duration::from_secs(10),
            requests: None,
            warmup: Duration::from_secs(1),
            workload: Workload::Iamat,
            clients: 1000,
            radius: "10".into(),
            bound: 5,
            expect: None,
            timeout: Duration::from_millis(5000),
            json: false,
            plot: None,
            fail_on_error: false,
            progress: false,
        }
    }
}

/// A command line `herd load` refuses (exit status 2). Each displays as one line, printed after
/// `herd load: `.
#[derive(Debug)]
pub enum ArgError {
    /// `unknown argument "ARG" (see herd load --help)`.
    Unknown { arg: String },
    /// `FLAG needs a value`.
    MissingValue { flag: String },
    /// A switch given a value: `FLAG takes no value`.
    UnwantedValue { flag: String },
    /// `FLAG: not a valid number: "VALUE"`.
    NotANumber { flag: String, value: String },
    /// A value outside what the flag accepts: `FLAG RULE`, where the rule says what it must be and what
    /// it was (e.g. `--depth must be from 1 to 10000, not 0`).
    BadValue { flag: String, rule: String },
    /// `--target HOST:PORT` did not resolve: `--target TARGET: ERROR`.
    Unresolvable { target: String, source: std::io::Error },
    /// `--target TARGET: no address`.
    NoAddress { target: String },
    /// A target that is not a loopback address, without `--allow-remote`.
    NotLoopback { target: String },
    /// `unknown --workload "NAME" (iamat, whatsat, mixed, raw)`.
    UnknownWorkload { name: String },
    /// `--workload raw` without `--template`.
    NeedsTemplate,
    /// A flag of another workload: `FLAG only applies to --workload WORKLOAD`.
    OnlyFor { flag: &'static str, workload: &'static str },
}

impl fmt::Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgError::Unknown { arg } => write!(f, "unknown argument {arg:?} (see herd load --help)"),
            ArgError::MissingValue { flag } => write!(f, "{flag} needs a value"),
            ArgError::UnwantedValue { flag } => write!(f, "{flag} takes no value"),
            ArgError::NotANumber { flag, value } => write!(f, "{flag}: not a valid number: {value:?}"),
            ArgError::BadValue { flag, rule } => write!(f, "{flag} {rule}"),
            ArgError::Unresolvable { target, source } => write!(f, "--target {target}: {source}"),
            ArgError::NoAddress { target } => write!(f, "--target {target}: no address"),
            ArgError::NotLoopback { target } => {
                write!(f, "--target {target} is not a loopback address (pass --allow-remote to drive it)")
            }
            ArgError::UnknownWorkload { name } => write!(f, "unknown --workload {name:?} (iamat, whatsat, mixed, raw)"),
            ArgError::NeedsTemplate => f.write_str("--workload raw needs --template 'LINE'"),
            ArgError::OnlyFor { flag, workload } => write!(f, "{flag} only applies to --workload {workload}"),
        }
    }
}

impl std::error::Error for ArgError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ArgError::Unresolvable { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn bad_value(flag: &str, rule: String) -> ArgError {
    ArgError::BadValue { flag: flag.into(), rule }
}

/// What the command line asked for.
#[derive(Debug)]
pub enum Parsed {
    Help,
    Run(Box<Options>),
}

fn num<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, ArgError> {
    v.parse().map_err(|_| ArgError::NotANumber { flag: flag.into(), value: v.into() })
}

fn int_in(flag: &str, v: &str, lo: u64, hi: u64) -> Result<u64, ArgError> {
    let n: u64 = num(flag, v)?;
    if n < lo || n > hi {
        return Err(bad_value(flag, format!("must be from {lo} to {hi}, not {n}")));
    }
    Ok(n)
}

fn secs(flag: &str, v: &str, max: Duration, zero_ok: bool) -> Result<Duration, ArgError> {
    let s: f64 = num(flag, v)?;
    if !s.is_finite() || s < 0.0 || (s == 0.0 && !zero_ok) {
        return Err(bad_value(flag, format!("must be a positive number of seconds, not {v:?}")));
    }
    if s > max.as_secs_f64() {
        return Err(bad_value(flag, format!("is at most {} s, not {v}", max.as_secs())));
    }
    Ok(Duration::from_secs_f64(s))
}

/// DIGITS or DIGITS.DIGITS, above 0 and at most 50 (the protocol's radius grammar).
fn radius_ok(r: &str) -> bool {
    let (a, b) = r.split_once('.').unwrap_or((r, "0"));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    digits(a) && digits(b) && r.parse::<f64>().is_ok_and(|v| v > 0.0 && v <= 50.0)
}

/// Resolves `HOST:PORT` once, before the run (name resolution blocks; the loop never does it).
pub fn resolve_target(s: &str, allow_remote: bool) -> Result<SocketAddr, ArgError> {
    let addrs: Vec<SocketAddr> =
        s.to_socket_addrs().map_err(|source| ArgError::Unresolvable { target: s.into(), source })?.collect();
    if allow_remote {
        return addrs.first().copied().ok_or_else(|| ArgError::NoAddress { target: s.into() });
    }
    addrs.iter().find(|a| a.ip().is_loopback()).copied().ok_or_else(|| ArgError::NotLoopback { target: s.into() })
}

/// Parses the arguments after `herd load`.
pub fn parse(args: &[String]) -> Result<Parsed, ArgError> {
    // Asking for help wins over any mistake elsewhere on the line.
    if args.iter().any(|a| a == "-h" || a == "--help") {
        return Ok(Parsed::Help);
    }
    let mut o = Options::default();
    let mut targets: Vec<String> = Vec::new();
    let mut workload = String::from("iamat");
    let mut template: Option<String> = None;
    let mut ratio: Option<f64> = None;
    let mut duration_given = false;

    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_str();
        i += 1;
        // Both `--flag value` and `--flag=value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg, None),
        };
        let switch = |on: &mut bool| -> Result<(), ArgError> {
            if inline.is_some() {
                return Err(ArgError::UnwantedValue { flag: flag.into() });
            }
            *on = true;
            Ok(())
        };
        match flag {
            "-h" | "--help" => return Ok(Parsed::Help),
            "--allow-remote" => switch(&mut o.allow_remote)?,
            "--json" => switch(&mut o.json)?,
            "--fail-on-error" => switch(&mut o.fail_on_error)?,
            _ => {
                let known = [
                    "--target",
                    "--connections",
                    "--depth",
                    "--rate",
                    "--duration",
                    "--requests",
                    "--warmup",
                    "--workload",
                    "--clients",
                    "--radius",
                    "--bound",
                    "--whatsat-ratio",
                    "--template",
                    "--expect",
                    "--timeout-ms",
                    "--plot",
                ];
                if !known.contains(&flag) {
                    return Err(ArgError::Unknown { arg: arg.into() });
                }
                let v = match inline {
                    Some(v) => v,
                    None => {
                        let v = args.get(i).ok_or_else(|| ArgError::MissingValue { flag: flag.into() })?;
                        i += 1;
                        v.clone()
                    }
                };
                match flag {
                    "--target" => targets.push(v),
                    "--connections" => o.connections = int_in(flag, &v, 1, 10_000)? as usize,
                    "--depth" => o.depth = int_in(flag, &v, 1, 10_000)? as usize,
                    "--rate" => {
                        let r: f64 = num(flag, &v)?;
                        if !(0.001..=10_000_000.0).contains(&r) {
                            return Err(bad_value(flag, format!("must be from 0.001 to 10000000 requests/s, not {v}")));
                        }
                        o.rate = Some(r);
                    }
                    "--duration" => {
                        o.duration = secs(flag, &v, MAX_DURATION, false)?;
                        duration_given = true;
                    }
                    "--requests" => o.requests = Some(int_in(flag, &v, 1, u64::MAX >> 1)?),
                    "--warmup" => o.warmup = secs(flag, &v, MAX_WARMUP, true)?,
                    "--workload" => workload = v,
                    "--clients" => o.clients = int_in(flag, &v, 1, 100_000_000)? as u32,
                    "--radius" => {
                        if !radius_ok(&v) {
                            return Err(bad_value(
                                flag,
                                format!("must be DIGITS or DIGITS.DIGITS, above 0 and at most 50, not {v:?}"),
                            ));
                        }
                        o.radius = v;
                    }
                    "--bound" => o.bound = int_in(flag, &v, 0, 20)? as u32,
                    "--whatsat-ratio" => {
                        let r: f64 = num(flag, &v)?;
                        if !(0.0..=1.0).contains(&r) {
                            return Err(bad_value(flag, format!("must be from 0 to 1, not {v}")));
                        }
                        ratio = Some(r);
                    }
                    "--template" => {
                        if v.is_empty() || v.contains('\n') || v.contains('\r') {
                            return Err(bad_value(flag, "must be one non-empty line".into()));
                        }
                        template = Some(v);
                    }
                    "--expect" => o.expect = Some(v),
                    "--timeout-ms" => {
                        o.timeout = Duration::from_millis(int_in(flag, &v, 1, 600_000)?);
                    }
                    "--plot" => o.plot = Some(PathBuf::from(v)),
                    _ => unreachable!(),
                }
            }
        }
    }

    o.workload = match workload.as_str() {
        "iamat" => Workload::Iamat,
        "whatsat" => Workload::Whatsat,
        "mixed" => Workload::Mixed { whatsat_ratio: ratio.unwrap_or(0.1) },
        "raw" => Workload::Raw { template: template.take().ok_or(ArgError::NeedsTemplate)? },
        w => return Err(ArgError::UnknownWorkload { name: w.into() }),
    };
    if template.is_some() {
        return Err(ArgError::OnlyFor { flag: "--template", workload: "raw" });
    }
    if ratio.is_some() && workload != "mixed" {
        return Err(ArgError::OnlyFor { flag: "--whatsat-ratio", workload: "mixed" });
    }
    if o.expect.is_some() && workload != "raw" {
        return Err(ArgError::OnlyFor { flag: "--expect", workload: "raw" });
    }
    if o.requests.is_some() && !duration_given {
        o.duration = MAX_DURATION;
    }
    if !targets.is_empty() {
        o.targets = targets.iter().map(|t| resolve_target(t, o.allow_remote)).collect::<Result<_, _>>()?;
    }
    Ok(Parsed::Run(Box::new(o)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Options, ArgError> {
        let args: Vec<String> = s.split_whitespace().map(String::from).collect();
        match parse(&args)? {
            Parsed::Run(o) => Ok(*o),
            Parsed::Help => panic!("help asked for in {s:?}"),
        }
    }

    #[test]
    fn defaults() {
        let o = p("").unwrap();
        assert_eq!(o.targets, vec!["127.0.0.1:10000".parse().unwrap()]);
        assert_eq!((o.connections, o.depth, o.rate, o.requests), (50, 1, None, None));
        assert_eq!((o.duration, o.warmup), (Duration::from_secs(10), Duration::from_secs(1)));
        assert_eq!(o.workload, Workload::Iamat);
        assert_eq!((o.clients, o.radius.as_str(), o.bound), (1000, "10", 5));
        assert_eq!(o.timeout, Duration::from_millis(5000));
    }

    #[test]
    fn flags() {
        let o = p("--target 127.0.0.1:6379 --target=localhost:7000 --connections 8 --depth 16 --rate 2500.5 \
                   --duration 2.5 --warmup 0 --workload raw --template SET_k{i}_v --expect +OK --json \
                   --plot x.svg --fail-on-error --timeout-ms 250")
        .unwrap();
        assert_eq!(o.targets.len(), 2);
        assert!(o.targets[1].ip().is_loopback() && o.targets[1].port() == 7000);
        assert_eq!((o.connections, o.depth, o.rate), (8, 16, Some(2500.5)));
        assert_eq!((o.duration, o.warmup), (Duration::from_millis(2500), Duration::ZERO));
        assert_eq!(o.workload, Workload::Raw { template: "SET_k{i}_v".into() });
        assert_eq!(o.expect.as_deref(), Some("+OK"));
        assert!(o.json && o.fail_on_error);
        assert_eq!(o.timeout, Duration::from_millis(250));
        let o = p("--workload mixed --whatsat-ratio 0.3 --radius 2.5 --bound 0 --clients 7").unwrap();
        assert_eq!(o.workload, Workload::Mixed { whatsat_ratio: 0.3 });
        assert_eq!((o.radius.as_str(), o.bound, o.clients), ("2.5", 0, 7));
        assert!(matches!(parse(&["x".into(), "--help".into()]), Ok(Parsed::Help)));
    }

    #[test]
    fn requests_alone_lifts_the_default_duration() {
        assert_eq!(p("--requests 5").unwrap().duration, MAX_DURATION);
        assert_eq!(p("--requests 5 --duration 3").unwrap().duration, Duration::from_secs(3));
    }

    /// Each refused line, and the flag its error names (an independent table, not read from the parser).
    #[test]
    fn bad_arguments() {
        use ArgError as E;
        let flag_of = |e: &ArgError| -> String {
            match e {
                E::Unknown { arg } => arg.clone(),
                E::MissingValue { flag } | E::UnwantedValue { flag } => flag.clone(),
                E::NotANumber { flag, .. } | E::BadValue { flag, .. } => flag.clone(),
                E::Unresolvable { .. } | E::NoAddress { .. } | E::NotLoopback { .. } => "--target".into(),
                E::UnknownWorkload { .. } | E::NeedsTemplate => "--workload".into(),
                E::OnlyFor { flag, .. } => flag.to_string(),
            }
        };
        for (bad, kind, flag) in [
            ("--bogus", "Unknown", "--bogus"),
            ("--connections", "MissingValue", "--connections"),
            ("--connections 0", "BadValue", "--connections"),
            ("--connections x", "NotANumber", "--connections"),
            ("--depth 0", "BadValue", "--depth"),
            ("--rate 0", "BadValue", "--rate"),
            ("--rate -5", "BadValue", "--rate"),
            ("--rate nan", "BadValue", "--rate"),
            ("--duration 0", "BadValue", "--duration"),
            ("--duration 601", "BadValue", "--duration"),
            ("--warmup 61", "BadValue", "--warmup"),
            ("--workload nope", "UnknownWorkload", "--workload"),
            ("--workload raw", "NeedsTemplate", "--workload"),
            ("--template x", "OnlyFor", "--template"),
            ("--whatsat-ratio 0.5", "OnlyFor", "--whatsat-ratio"),
            ("--workload mixed --whatsat-ratio 1.5", "BadValue", "--whatsat-ratio"),
            ("--radius 10.", "BadValue", "--radius"),
            ("--radius 51", "BadValue", "--radius"),
            ("--radius .5", "BadValue", "--radius"),
            ("--bound 21", "BadValue", "--bound"),
            ("--json=yes", "UnwantedValue", "--json"),
            ("--expect +OK", "OnlyFor", "--expect"),
            ("--timeout-ms 0", "BadValue", "--timeout-ms"),
            ("--target 127.0.0.1", "Unresolvable", "--target"),
            ("--target 10.1.2.3:80", "NotLoopback", "--target"),
            ("--target 192.168.0.1:6379", "NotLoopback", "--target"),
        ] {
            let err = p(bad).expect_err(bad);
            let got = format!("{err:?}");
            assert!(got.starts_with(kind), "{bad}: {got}");
            assert_eq!(flag_of(&err), flag, "{bad}: {got}");
        }
        assert!(p("--target 10.1.2.3:80 --allow-remote").is_ok());
        assert!(p("--target [::1]:80").is_ok());
    }

    /// The messages are what users read (after `herd load: `): one line per kind, as they always were.
    #[test]
    fn bad_arguments_read_as_one_line() {
        for (bad, want) in [
            ("--bogus", "unknown argument \"--bogus\" (see herd load --help)"),
            ("--connections", "--connections needs a value"),
            ("--json=yes", "--json takes no value"),
            ("--depth x", "--depth: not a valid number: \"x\""),
            ("--depth 0", "--depth must be from 1 to 10000, not 0"),
            ("--duration 601", "--duration is at most 600 s, not 601"),
            (
                "--target 10.1.2.3:80",
                "--target 10.1.2.3:80 is not a loopback address (pass --allow-remote to drive it)",
            ),
            ("--workload nope", "unknown --workload \"nope\" (iamat, whatsat, mixed, raw)"),
            ("--workload raw", "--workload raw needs --template 'LINE'"),
            ("--expect +OK", "--expect only applies to --workload raw"),
        ] {
            assert_eq!(p(bad).unwrap_err().to_string(), want);
        }
        let err = p("--target 127.0.0.1").unwrap_err().to_string();
        assert!(err.starts_with("--target 127.0.0.1: ") && !err.contains('\n'), "{err}");
    }
}
