//! Why a configuration cannot be used: [`ConfigError`] (the one line users see) and [`Problem`] (what is
//! wrong with one value), and the [`FieldError`] the readers return before the file name is known.

use std::fmt;
use std::path::PathBuf;

/// Why a configuration cannot be used. Every variant displays as the one line users see today, e.g.
/// `config/herd.json: servers[2].port: expected an integer from 1 to 65535, found "x"`; `main` prints
/// it after `herd: ` and exits with status 2.
#[derive(Debug)]
pub enum ConfigError {
    /// The file could not be read: `FILE: cannot read: ERROR`.
    Unreadable { file: PathBuf, source: std::io::Error },
    /// The file is not JSON: `FILE: not valid JSON: ERROR`.
    NotJson { file: PathBuf, source: serde_json::Error },
    /// One value in the file is wrong: `FILE: FIELD: PROBLEM`.
    Invalid { file: PathBuf, field: String, problem: Problem },
    /// A server's `host` is a name that did not resolve (at start-up, never on the loop).
    Unresolvable { server: String, host: String, source: std::io::Error },
    /// A server's `host` resolved to no address.
    NoAddress { server: String, host: String },
}

/// What is wrong with one value of the file (the part after `FIELD: `).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A required field is absent (or null).
    Missing,
    /// A key this object does not know (a typo is an error, not a silent default).
    UnknownField { known: String },
    /// A value of the wrong type or out of range: `expected WHAT, found VALUE`.
    Expected { what: String, found: String },
    /// A server name with whitespace, a control byte, or over 64 bytes.
    BadName { name: String },
    /// Two servers with one name.
    DuplicateName { name: String },
    /// Two listeners on one port of one host; `by` is the earlier one, as `NAME.FIELD`.
    PortTaken { port: u16, host: String, by: String },
    /// A link names a server the file does not have.
    UnknownServer { name: String },
    /// A link from a server to itself.
    SelfLink,
    /// The same link twice (in either direction).
    DuplicateLink,
    /// `servers` is empty.
    NoServers,
    /// `limits.client_output_hard` is below `limits.client_output_soft`.
    HardBelowSoft,
    /// With `peer_tls`, a server name that a certificate cannot carry as its DNS name.
    NotDnsLabel { name: String },
    /// With `peer_tls`, two server names that differ only in case (certificate names ignore case).
    CaseCollision { name: String, other: String },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Unreadable { file, source } => write!(f, "{}: cannot read: {source}", file.display()),
            ConfigError::NotJson { file, source } => write!(f, "{}: not valid JSON: {source}", file.display()),
            ConfigError::Invalid { file, field, problem } => write!(f, "{}: {field}: {problem}", file.display()),
            ConfigError::Unresolvable { server, host, source } => {
                write!(f, "server {server}: cannot resolve host {host:?}: {source}")
            }
            ConfigError::NoAddress { server, host } => write!(f, "server {server}: host {host:?} has no address"),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Missing => f.write_str("missing"),
            Problem::UnknownField { known } => write!(f, "unknown field (known: {known})"),
            Problem::Expected { what, found } => write!(f, "expected {what}, found {found}"),
            Problem::BadName { name } => write!(f, "{name:?} must be 1 to 64 bytes without whitespace"),
            Problem::DuplicateName { name } => write!(f, "duplicate server name {name:?}"),
            Problem::PortTaken { port, host, by } => write!(f, "port {port} on {host} is already used by {by}"),
            Problem::UnknownServer { name } => write!(f, "unknown server {name:?}"),
            Problem::SelfLink => f.write_str("a server cannot link to itself"),
            Problem::DuplicateLink => f.write_str("duplicate link"),
            Problem::NoServers => f.write_str("the herd needs at least one server"),
            Problem::HardBelowSoft => f.write_str("must be at least limits.client_output_soft"),
            Problem::NotDnsLabel { name } => write!(
                f,
                "{name:?} is not a DNS label (letters, digits and '-', at most 63, not all digits), which \
                 peer_tls needs to name it in a certificate"
            ),
            Problem::CaseCollision { name, other } => {
                write!(f, "{name:?} differs from {other:?} only in case, and certificate names ignore case")
            }
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Unreadable { source, .. } | ConfigError::Unresolvable { source, .. } => Some(source),
            ConfigError::NotJson { source, .. } => Some(source),
            ConfigError::Invalid { .. } | ConfigError::NoAddress { .. } => None,
        }
    }
}

/// A problem found while reading the JSON, before the file name is known: `FIELD: PROBLEM`.
#[derive(Debug)]
pub(super) struct FieldError {
    pub(super) field: String,
    pub(super) problem: Problem,
}

pub(super) fn bad(field: impl Into<String>, problem: Problem) -> FieldError {
    FieldError { field: field.into(), problem }
}

/// `expected WHAT, found FOUND` at `field`.
pub(super) fn expected(field: impl Into<String>, what: impl Into<String>, found: String) -> FieldError {
    bad(field, Problem::Expected { what: what.into(), found })
}
