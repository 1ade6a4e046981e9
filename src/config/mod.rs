//! The herd's JSON configuration (PROTOCOL section 8), validated into typed values.
//!
//! Every problem is reported as one line naming the file, the place in it and what is wrong, e.g.
//! `config/herd.json: servers[2].port: expected an integer from 1 to 65535, found "x"`.
//! Relative paths in the file are taken relative to the directory the command runs in.
//!
//! The parts: the typed values and [`Config::load`] here; why a file is refused in `error.rs`; the
//! field-by-field JSON reader in `read.rs`; each section's parser and the checks across sections in
//! `parse.rs`.

use serde_json::Value;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

mod error;
mod parse;
mod read;

pub use error::{ConfigError, Problem};

use error::FieldError;
use parse::from_value;

pub const DEFAULT_PATH: &str = "config/herd.json";

#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub servers: Vec<ServerConfig>,
    /// Undirected links as pairs of indices into `servers`, each pair once, lower index first.
    pub links: Vec<(usize, usize)>,
    pub places: Option<PlacesConfig>,
    pub local_places: Option<LocalPlacesConfig>,
    pub log_dir: PathBuf,
    pub herd_secret_env: Option<String>,
    /// The address admin listeners bind (loopback unless said otherwise: it is not for the public).
    pub admin_host: IpAddr,
    /// The environment variable holding the admin listener's bearer token (never the token itself).
    pub admin_token_env: Option<String>,
    /// Where `herd up` keeps what it makes for a run (the admin token).
    pub run_dir: PathBuf,
    pub limits: Limits,
    /// The log file's rotation and detail (`log_max_bytes`, `log_keep`, `log_detail`).
    pub log: LogOptions,
    /// How many records a server keeps and for how long (`records.max`, `records.max_age_s`; absent:
    /// unbounded).
    pub records: crate::record::Retention,
    /// Mutual TLS on peer links; `None` keeps them plaintext (for trusted networks only).
    pub peer_tls: Option<PeerTlsConfig>,
    /// `journal` (issue 15): every stored record appended to `dir/NAME/` and replayed at start.
    pub journal: Option<JournalConfig>,
    /// Set by the hidden `herd serve NAME --reuseport` (benches/compare only), never by the file: the
    /// client listener gets `SO_REUSEPORT`, so several server processes can listen on one client port and
    /// the kernel spreads new connections over them by a hash of the address pair. It is not a feature
    /// of the herd: each process keeps its own record table, so processes sharing a port agree only if
    /// they are linked as neighbours in the config (benches/compare/measure.py measures both ways). Never
    /// set for the peer or admin ports.
    pub share_client_port: bool,
}

/// `"peer_tls": {"ca_file": F, "cert_dir": D}`: the herd CA every peer certificate must chain to, and the
/// directory holding each server's `NAME.pem` and `NAME.key` (as `herd certs` writes them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTlsConfig {
    pub ca_file: PathBuf,
    pub cert_dir: PathBuf,
}

impl PeerTlsConfig {
    /// The CA's private key: `ca.key` beside `ca.pem` (only `herd certs` and `herd up` read it).
    pub fn ca_key_file(&self) -> PathBuf {
        self.ca_file.with_extension("key")
    }

    /// Server `name`'s certificate chain (PEM).
    pub fn cert_file(&self, name: &str) -> PathBuf {
        self.cert_dir.join(format!("{name}.pem"))
    }

    /// Server `name`'s private key (PEM, mode 0600).
    pub fn key_file(&self, name: &str) -> PathBuf {
        self.cert_dir.join(format!("{name}.key"))
    }
}

/// Whether `name` can be a certificate's DNS name on its own: one label of ASCII letters, digits and `-`,
/// 1 to 63 bytes, not starting or ending with `-`, and not all digits (which a verifier would take for part
/// of an IP address). Certificates name servers by DNS name, so only such names can be bound to one.
pub fn is_dns_label(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && !b.iter().all(u8::is_ascii_digit)
}

/// How much the log keeps: every command and reply, and the records exchanged with each neighbour counted
/// once per read and per hand-off (`io`); all that and every record itself (`records`); or only what
/// happens to connections, links and Places (`events`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogDetail {
    Io,
    Records,
    Events,
}

/// The log's rotation and detail.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// The file is rotated when it would pass this many bytes.
    pub max_bytes: u64,
    /// Rotated files kept (`NAME.log.1` is the newest).
    pub keep: u32,
    pub detail: LogDetail,
}

impl Default for LogOptions {
    fn default() -> Self {
        // 128 MiB × (7 + 1) = 1 GiB of disk at most per server.
        LogOptions { max_bytes: 128 * 1024 * 1024, keep: 7, detail: LogDetail::Io }
    }
}

/// The variable a server reads its admin token from when the config names none (and `herd up` sets).
pub const DEFAULT_ADMIN_TOKEN_ENV: &str = "HERD_ADMIN_TOKEN";

impl Config {
    /// The variable the admin token is read from: `admin_token_env`, or [`DEFAULT_ADMIN_TOKEN_ENV`].
    pub fn admin_token_var(&self) -> &str {
        self.admin_token_env.as_deref().unwrap_or(DEFAULT_ADMIN_TOKEN_ENV)
    }

    /// Whether any server of the herd has an admin listener.
    pub fn has_admin(&self) -> bool {
        self.servers.iter().any(|s| s.admin_port.is_some())
    }
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub peer_port: u16,
    /// The admin listener's port (`/metrics`, `/records`), if any; it binds `admin_host`.
    pub admin_port: Option<u16>,
}

impl ServerConfig {
    /// Resolves `host` (an IP address, or a name resolved once here, at start-up, never on the loop).
    pub fn resolve(&self, port: u16) -> Result<SocketAddr, ConfigError> {
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, port));
        }
        (self.host.as_str(), port)
            .to_socket_addrs()
            .map_err(|source| ConfigError::Unresolvable { server: self.name.clone(), host: self.host.clone(), source })?
            .next()
            .ok_or_else(|| ConfigError::NoAddress { server: self.name.clone(), host: self.host.clone() })
    }

    pub fn client_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.resolve(self.port)
    }

    pub fn peer_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.resolve(self.peer_port)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlacesApi {
    Legacy,
    New,
}

#[derive(Debug, Clone)]
pub struct PlacesConfig {
    pub api: PlacesApi,
    pub url: String,
    /// The name of the environment variable holding the API key (never the key itself).
    pub key_env: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub timeout_ms: u64,
    /// Idle keep-alive connections kept per server.
    pub pool_size: usize,
    /// How long a Places answer may be served from the cache; 0 turns the cache off.
    pub cache_ttl_s: u64,
    /// Bytes of cached answers kept at most (each counted with its parsed tree, about 6× its JSON).
    pub cache_max_bytes: usize,
}

#[derive(Debug, Clone)]
pub struct LocalPlacesConfig {
    pub listen: SocketAddr,
    pub ca_out: PathBuf,
}

/// Bounds on what one client or peer may cost. Every buffer in the server is bounded by one of these.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest command, in bytes before its LF.
    pub max_line: usize,
    pub max_clients: usize,
    /// Unwritten reply bytes past which a client is no longer read until it drains.
    pub client_output_soft: usize,
    /// Unwritten reply bytes past which a client is dropped.
    pub client_output_hard: usize,
    /// Unwritten bytes past which a peer link is dropped (and resynced when it comes back).
    pub peer_output_max: usize,
    /// A client that sends nothing and is owed nothing for this long is closed.
    pub idle_timeout_ms: u64,
    /// A line started but not finished (no LF yet) for this long closes the connection (slow-loris).
    pub line_timeout_ms: u64,
    /// How long a WHATSAT for a client this server does not know waits for the herd to deliver its
    /// record before it is answered with `?` (only while a neighbour is linked; 0 answers at once).
    pub unknown_client_grace_ms: u64,
    /// How far ahead of the server's clock a client time may be (PROTOCOL section 2): a client cannot pin
    /// its record with a time from the far future. 300 s is the skew Kerberos tolerates.
    pub max_clock_skew_s: u64,
    /// WHATSATs of one client connection that may wait on Places at once; past it a WHATSAT is answered
    /// at once with the Places failure object.
    pub max_pending_places_per_client: usize,
    /// Client connections from one address (an IPv6 address counts by its /64); the next is closed.
    pub max_clients_per_ip: usize,
    /// Loopback addresses are not counted against `max_clients_per_ip`.
    pub per_ip_exempt_loopback: bool,
    /// A peer link on which nothing was heard for this long is dropped (and redialled); each sending
    /// link pings every third of it.
    pub peer_dead_after_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_line: 16_384,
            max_clients: 10_000,
            client_output_soft: 256 * 1024,
            client_output_hard: 4 * 1024 * 1024,
            peer_output_max: 16 * 1024 * 1024,
            idle_timeout_ms: 300_000,
            unknown_client_grace_ms: 100,
            line_timeout_ms: 60_000,
            max_clock_skew_s: 300,
            max_pending_places_per_client: 8,
            max_clients_per_ip: 1024,
            per_ip_exempt_loopback: true,
            peer_dead_after_ms: 3000,
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Unreadable { file: path.to_path_buf(), source })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let value: Value =
            serde_json::from_str(text).map_err(|source| ConfigError::NotJson { file: path.to_path_buf(), source })?;
        let mut config = from_value(&value).map_err(|FieldError { field, problem }| ConfigError::Invalid {
            file: path.to_path_buf(),
            field,
            problem,
        })?;
        config.path = path.to_path_buf();
        Ok(config)
    }

    pub fn server_index(&self, name: &str) -> Option<usize> {
        self.servers.iter().position(|s| s.name == name)
    }

    /// The neighbours of server `i`, as indices.
    pub fn neighbours(&self, i: usize) -> Vec<usize> {
        let mut out: Vec<usize> = self
            .links
            .iter()
            .filter_map(|&(a, b)| {
                if a == i {
                    Some(b)
                } else if b == i {
                    Some(a)
                } else {
                    None
                }
            })
            .collect();
        out.sort_unstable();
        out
    }

    /// Where the log file of server `name` goes.
    pub fn log_file(&self, name: &str) -> PathBuf {
        self.log_dir.join(format!("{name}.log"))
    }
}

/// The default of `journal.rewrite_min_bytes`: 64 MiB, as redis's `auto-aof-rewrite-min-size`. A rewrite
/// has a fixed cost (about eight fsyncs, renames and a new file) whatever the table's size: with 1,000
/// clients updated 400,000 times a second, a minimum of 10,000 entries (1 MB) rewrote the journal ten times
/// a second, and the `everysec` server lost a third of its throughput to it.
pub const JOURNAL_REWRITE_MIN_BYTES: u64 = 64 << 20;

/// `"journal": {"dir": D, "fsync": "always" | "everysec" | "no", "rewrite_ratio": R, "rewrite_min_bytes": B}`.
#[derive(Debug, Clone, PartialEq)]
pub struct JournalConfig {
    pub dir: PathBuf,
    /// `always`, `everysec` or `no` (checked here; the server maps it to its mode).
    pub fsync: String,
    /// Rewrite when the journal holds more than this many entries per live record (default 2).
    pub rewrite_ratio: f64,
    /// ... once its files hold at least this many bytes (default 64 MiB, as redis's
    /// `auto-aof-rewrite-min-size`).
    pub rewrite_min_bytes: u64,
    /// `herd serve --journal-truncate-corrupt`: keep what precedes a corrupt entry in the middle.
    pub truncate_corrupt: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("c.json"), text)
    }

    const GOOD: &str = r#"{
        "servers": [
            {"name": "A", "port": 1000, "peer_port": 2000},
            {"name": "B", "host": "127.0.0.1", "port": 1001, "peer_port": 2001},
            {"name": "C", "port": 1002, "peer_port": 2002}
        ],
        "links": [["A", "B"], ["C", "B"]],
        "places": {"api": "new", "url": "https://127.0.0.1:1/v1/places:searchNearby", "key_env": "K"},
        "log_dir": "l"
    }"#;

    #[test]
    fn a_good_config_reads() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.servers.len(), 3);
        assert_eq!(c.links, vec![(0, 1), (1, 2)]);
        assert_eq!(c.neighbours(1), vec![0, 2]);
        assert_eq!(c.neighbours(0), vec![1]);
        let p = c.places.clone().unwrap();
        assert_eq!((p.api, p.timeout_ms, p.cache_ttl_s), (PlacesApi::New, 3000, 300));
        assert_eq!(c.limits.max_line, 16_384);
        let l = &c.limits;
        assert_eq!((l.max_pending_places_per_client, l.max_clients_per_ip, l.peer_dead_after_ms), (8, 1024, 3000));
        assert!(l.per_ip_exempt_loopback);
        assert_eq!((c.admin_token_var(), c.run_dir.to_str()), ("HERD_ADMIN_TOKEN", Some("run")));
        assert_eq!(c.records, crate::record::Retention { max: None, max_age_s: None }, "unbounded by default");
    }

    fn with_tls(text: &str) -> String {
        text.replace(
            r#""log_dir""#,
            r#""peer_tls": {"ca_file": "run/certs/ca.pem", "cert_dir": "run/certs"}, "log_dir""#,
        )
    }

    #[test]
    fn peer_tls_reads_and_names_its_files() {
        assert_eq!(parse(GOOD).unwrap().peer_tls, None);
        let tls = parse(&with_tls(GOOD)).unwrap().peer_tls.unwrap();
        assert_eq!(tls.ca_file, Path::new("run/certs/ca.pem"));
        assert_eq!(tls.ca_key_file(), Path::new("run/certs/ca.key"));
        assert_eq!(tls.cert_file("B"), Path::new("run/certs/B.pem"));
        assert_eq!(tls.key_file("B"), Path::new("run/certs/B.key"));
        // Without peer_tls, names that no certificate could carry are still fine.
        let odd = GOOD.replace(r#""name": "C""#, r#""name": "c_1""#).replace(r#"["C", "B"]"#, r#"["c_1", "B"]"#);
        assert!(parse(&odd).is_ok());
        let (field, problem) = invalid(
            &GOOD.replace(r#""log_dir""#, r#""peer_tls": {"ca_file": "a", "cert_dir": "d", "x": 1}, "log_dir""#),
        );
        assert_eq!(field, "peer_tls.x");
        assert!(matches!(problem, Problem::UnknownField { .. }), "{problem:?}");
    }

    #[test]
    fn the_journal_rewrite_minimum_reads_with_redis_default() {
        let with = |j: &str| GOOD.replace(r#""log_dir""#, &format!(r#""journal": {{"dir": "j"{j}}}, "log_dir""#));
        let j = parse(&with("")).unwrap().journal.unwrap();
        assert_eq!((j.fsync.as_str(), j.rewrite_ratio, j.rewrite_min_bytes), ("everysec", 2.0, 64 * 1024 * 1024));
        let j = parse(&with(r#", "rewrite_min_bytes": 500000"#)).unwrap().journal.unwrap();
        assert_eq!(j.rewrite_min_bytes, 500_000);
        let (field, _) = invalid(&with(r#", "rewrite_min_bytes": "64mb""#));
        assert_eq!(field, "journal.rewrite_min_bytes");
    }

    #[test]
    fn dns_labels_by_the_rules() {
        for good in ["Bailey", "a", "x-1", "9lives", "A1", &"a".repeat(63)] {
            assert!(is_dns_label(good), "{good}");
        }
        for bad in ["", "-a", "a-", "a.b", "a_b", "123", "é", &"a".repeat(64), "a b"] {
            assert!(!is_dns_label(bad), "{bad}");
        }
    }

    #[test]
    fn retention_reads_and_the_shipped_config_is_bounded() {
        let c = parse(&GOOD.replace(r#""log_dir""#, r#""records": {"max": 100000, "max_age_s": 86400}, "log_dir""#))
            .unwrap();
        assert_eq!(c.records, crate::record::Retention { max: Some(100_000), max_age_s: Some(86_400) });
        let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/herd.json")).unwrap();
        let c = parse(&shipped).unwrap();
        assert!(c.records.max.is_some_and(|n| n >= 1_000_000), "herd up is bounded by default");
        assert_eq!(c.records.max_age_s, None);
    }

    /// The field and problem of an `Invalid` error (panics on any other kind).
    fn invalid(text: &str) -> (String, Problem) {
        match parse(text) {
            Err(ConfigError::Invalid { file, field, problem }) => {
                assert_eq!(file, Path::new("c.json"));
                (field, problem)
            }
            other => panic!("expected an Invalid error, got {other:?}"),
        }
    }

    fn found(what: &str, found: &str) -> Problem {
        Problem::Expected { what: what.into(), found: found.into() }
    }

    #[test]
    fn errors_say_which_field_and_what_is_wrong() {
        let cases = [
            (
                GOOD.replace(r#""port": 1001"#, r#""port": "x""#),
                "servers[1].port",
                found("an integer from 1 to 65535", "\"x\""),
            ),
            (
                GOOD.replace(r#""port": 1001"#, r#""port": 1000"#),
                "servers[1].port",
                Problem::PortTaken { port: 1000, host: "127.0.0.1".into(), by: "A.port".into() },
            ),
            (
                GOOD.replace(r#""name": "C""#, r#""name": "A""#),
                "servers[2].name",
                Problem::DuplicateName { name: "A".into() },
            ),
            (
                GOOD.replace(r#""name": "C""#, r#""name": "C D""#),
                "servers[2].name",
                Problem::BadName { name: "C D".into() },
            ),
            (GOOD.replace(r#"["C", "B"]"#, r#"["C", "Z"]"#), "links[1]", Problem::UnknownServer { name: "Z".into() }),
            (GOOD.replace(r#"["C", "B"]"#, r#"["C", "C"]"#), "links[1]", Problem::SelfLink),
            (GOOD.replace(r#"["C", "B"]"#, r#"["B", "A"]"#), "links[1]", Problem::DuplicateLink),
            (GOOD.replace(r#", "peer_port": 2002"#, ""), "servers[2].peer_port", Problem::Missing),
            (GOOD.replace(r#""new""#, r#""old""#), "places.api", found("\"legacy\" or \"new\"", "\"old\"")),
            (
                GOOD.replace(r#""log_dir""#, r#""log_detail": "all", "log_dir""#),
                "log_detail",
                found("\"io\", \"records\" or \"events\"", "\"all\""),
            ),
            (
                GOOD.replace(r#""log_dir""#, r#""limits": {"max_clock_skew_s": -1}, "log_dir""#),
                "limits.max_clock_skew_s",
                found("an integer from 0 to 31622400", "-1"),
            ),
            (r#"{"servers": []}"#.into(), "servers", Problem::NoServers),
            (
                GOOD.replace(r#""log_dir""#, r#""peer_tls": {"ca_file": "ca.pem"}, "log_dir""#),
                "peer_tls.cert_dir",
                Problem::Missing,
            ),
            (
                with_tls(&GOOD.replace(r#""name": "C""#, r#""name": "b""#).replace(r#"["C", "B"]"#, r#"["b", "B"]"#)),
                "servers[2].name",
                Problem::CaseCollision { name: "b".into(), other: "B".into() },
            ),
            (
                with_tls(
                    &GOOD.replace(r#""name": "C""#, r#""name": "C_1""#).replace(r#"["C", "B"]"#, r#"["C_1", "B"]"#),
                ),
                "servers[2].name",
                Problem::NotDnsLabel { name: "C_1".into() },
            ),
            ("[]".into(), "top level", found("an object", "[]")),
            (
                GOOD.replace(
                    r#""log_dir""#,
                    r#""limits": {"client_output_soft": 4096, "client_output_hard": 2048}, "log_dir""#,
                ),
                "limits.client_output_hard",
                Problem::HardBelowSoft,
            ),
        ];
        for (text, field, problem) in cases {
            assert_eq!(invalid(&text), (field.to_string(), problem), "{text}");
        }
        let (field, problem) = invalid(&GOOD.replace(r#""log_dir""#, r#""log_dri""#));
        assert_eq!(field, "log_dri");
        assert!(matches!(problem, Problem::UnknownField { .. }), "{problem:?}");
        assert!(matches!(parse("{"), Err(ConfigError::NotJson { .. })));
        let missing = Config::load(Path::new("/nonexistent/herd.json")).unwrap_err();
        assert!(
            matches!(&missing, ConfigError::Unreadable { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
        );
    }

    /// The messages are a user contract (scripts and people read them): one line, `FILE: FIELD: PROBLEM`.
    #[test]
    fn errors_read_as_one_line_naming_file_field_and_problem() {
        let cases = [
            (
                GOOD.replace(r#""port": 1001"#, r#""port": "x""#),
                "c.json: servers[1].port: expected an integer from 1 to 65535, found \"x\"",
            ),
            (
                GOOD.replace(r#""port": 1001"#, r#""port": 1000"#),
                "c.json: servers[1].port: port 1000 on 127.0.0.1 is already used by A.port",
            ),
            (GOOD.replace(r#""name": "C""#, r#""name": "A""#), "c.json: servers[2].name: duplicate server name \"A\""),
            (
                GOOD.replace(r#""name": "C""#, r#""name": "C D""#),
                "c.json: servers[2].name: \"C D\" must be 1 to 64 bytes without whitespace",
            ),
            (GOOD.replace(r#"["C", "B"]"#, r#"["C", "Z"]"#), "c.json: links[1]: unknown server \"Z\""),
            (GOOD.replace(r#"["C", "B"]"#, r#"["C", "C"]"#), "c.json: links[1]: a server cannot link to itself"),
            (GOOD.replace(r#"["C", "B"]"#, r#"["B", "A"]"#), "c.json: links[1]: duplicate link"),
            (GOOD.replace(r#", "peer_port": 2002"#, ""), "c.json: servers[2].peer_port: missing"),
            (GOOD.replace(r#""log_dir""#, r#""log_dri""#), "c.json: log_dri: unknown field (known: servers, links, "),
            (GOOD.replace(r#""new""#, r#""old""#), "c.json: places.api: expected \"legacy\" or \"new\", found \"old\""),
            (r#"{"servers": []}"#.into(), "c.json: servers: the herd needs at least one server"),
            (
                with_tls(&GOOD.replace(r#""name": "C""#, r#""name": "b""#).replace(r#"["C", "B"]"#, r#"["b", "B"]"#)),
                "c.json: servers[2].name: \"b\" differs from \"B\" only in case, and certificate names ignore case",
            ),
            (
                with_tls(
                    &GOOD.replace(r#""name": "C""#, r#""name": "C_1""#).replace(r#"["C", "B"]"#, r#"["C_1", "B"]"#),
                ),
                "c.json: servers[2].name: \"C_1\" is not a DNS label (letters, digits and '-', at most 63, not all \
                 digits), which peer_tls needs to name it in a certificate",
            ),
            ("[]".into(), "c.json: top level: expected an object, found []"),
            (
                GOOD.replace(
                    r#""log_dir""#,
                    r#""limits": {"client_output_soft": 4096, "client_output_hard": 2048}, "log_dir""#,
                ),
                "c.json: limits.client_output_hard: must be at least limits.client_output_soft",
            ),
            (
                GOOD.replace(r#""log_dir""#, r#""log_detail": "all", "log_dir""#),
                "c.json: log_detail: expected \"io\", \"records\" or \"events\", found \"all\"",
            ),
            (
                GOOD.replace(r#""log_dir""#, r#""log_max_bytes": 10, "log_dir""#),
                "c.json: log_max_bytes: expected an integer",
            ),
            (
                GOOD.replace(r#""log_dir""#, r#""limits": {"max_clock_skew_s": -1}, "log_dir""#),
                "c.json: limits.max_clock_skew_s: expected an integer",
            ),
            ("{".into(), "c.json: not valid JSON: "),
            (
                GOOD.replace(r#""log_dir""#, r#""limits": {"max_pending_places_per_client": 0}, "log_dir""#),
                "c.json: limits.max_pending_places_per_client: expected an integer from 1 to 64, found 0",
            ),
            (
                GOOD.replace(r#""log_dir""#, r#""limits": {"per_ip_exempt_loopback": "no"}, "log_dir""#),
                "c.json: limits.per_ip_exempt_loopback: expected true or false, found \"no\"",
            ),
            (
                GOOD.replace(r#""log_dir""#, r#""limits": {"peer_dead_after_ms": 50}, "log_dir""#),
                "c.json: limits.peer_dead_after_ms: expected an integer from 300 to 600000, found 50",
            ),
            (
                GOOD.replace(r#""log_dir""#, r#""admin_token_env": "", "log_dir""#),
                "c.json: admin_token_env: expected a non-empty string",
            ),
            (
                GOOD.replace(r#""log_dir""#, r#""records": {"max": 0}, "log_dir""#),
                "c.json: records.max: expected an integer from 1 to 4294967294, found 0",
            ),
            (
                GOOD.replace(r#""log_dir""#, r#""records": {"max_age": 5}, "log_dir""#),
                "c.json: records.max_age: unknown field",
            ),
            (
                GOOD.replace(r#""log_dir""#, r#""records": {"max_age_s": 1.5}, "log_dir""#),
                "c.json: records.max_age_s: expected an integer",
            ),
            (GOOD.replace(r#""log_dir""#, r#""records": 5, "log_dir""#), "c.json: records: expected an object"),
        ];
        for (text, want) in cases {
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.starts_with(want), "got {err:?}, want {want:?}");
            assert!(!err.contains('\n'), "one line: {err:?}");
        }
        let err = Config::load(Path::new("/nonexistent/herd.json")).unwrap_err().to_string();
        assert!(err.starts_with("/nonexistent/herd.json: cannot read: "), "{err}");
    }

    /// Resolution is not exercised for real (no name service in tests): the messages are built by hand.
    #[test]
    fn hosts_that_do_not_resolve_name_the_server() {
        let (server, host) = ("A".to_string(), "db.example".to_string());
        let source = std::io::Error::other("lookup failed");
        let err = ConfigError::Unresolvable { server: server.clone(), host: host.clone(), source };
        assert_eq!(err.to_string(), "server A: cannot resolve host \"db.example\": lookup failed");
        assert_eq!(ConfigError::NoAddress { server, host }.to_string(), "server A: host \"db.example\" has no address");
        // An IP address is taken as it is, without asking any resolver.
        let s = ServerConfig { name: "A".into(), host: "127.0.0.2".into(), port: 1, peer_port: 2, admin_port: None };
        assert_eq!(s.peer_addr().unwrap(), "127.0.0.2:2".parse().unwrap());
    }
}
