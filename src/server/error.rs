//! Why a server could not start (or its loop could not go on): one typed error for the server layer.
//!
//! Every variant prints the same one line the server always printed (`herd: ...` on stderr, exit status
//! 2), so scripts that read the text keep working, while tests and callers can match the variant.
//! Near a leaf: it imports only the error types of the leaves below it (config, journal, peer TLS).

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug)]
pub enum ServerError {
    /// `herd serve NAME` with a name the config does not have.
    UnknownServer { name: String, known: Vec<String> },
    /// `herd_secret_env` names a variable that is not set, or empty.
    Secret { var: String },
    /// `admin_token_env` names a variable that is not set, or empty, for a server with an admin port.
    AdminToken { var: String },
    /// An address of the config that does not resolve.
    Config(crate::config::ConfigError),
    /// A port that cannot be bound: most often, in use.
    Listen { server: String, what: &'static str, addr: SocketAddr, source: io::Error },
    /// The accept queue of a bound port could not be set.
    Backlog { server: String, what: &'static str, addr: SocketAddr, source: io::Error },
    /// The log directory cannot be created.
    LogDir { dir: PathBuf, source: io::Error },
    /// The log file cannot be opened for appending.
    LogFile { path: PathBuf, source: io::Error },
    /// The Places client cannot be set up: its URL, its CA file, or the TLS configuration.
    Places(String),
    /// `peer_tls` is configured but this server's certificate, key or the CA cannot be used (the message
    /// names the file and `herd certs`).
    PeerTls(super::peer_tls::TlsError),
    /// A helper thread (log writer, Places resolver or shaper) cannot be started.
    Thread { what: &'static str, source: io::Error },
    /// A system resource of the loop (poll, registration, waker, signal handlers) failed.
    Io { what: String, source: io::Error },
    /// No system randomness for the handshake nonces and jitter.
    NoRandomness,
    /// The journal cannot be opened or replayed (a corrupt entry in the middle names its file and offset).
    Journal(super::journal::JournalError),
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerError::UnknownServer { name, known } => {
                write!(f, "unknown server {name:?} (the config has {})", known.join(", "))
            }
            ServerError::Secret { var } => write!(f, "herd_secret_env names {var}, which is not set or empty"),
            ServerError::AdminToken { var } => {
                write!(f, "admin_token_env names {var}, which is not set or empty (the admin listener would be open)")
            }
            ServerError::Config(e) => write!(f, "{e}"),
            ServerError::Places(message) => f.write_str(message),
            ServerError::PeerTls(e) => write!(f, "{e}"),
            ServerError::Journal(e) => write!(f, "{e}"),
            ServerError::Listen { server, what, addr, source } => {
                write!(f, "{server}: cannot listen on {addr} ({what}): {source}")
            }
            ServerError::Backlog { server, what, addr, source } => {
                write!(f, "{server}: cannot set the accept queue on {addr} ({what}): {source}")
            }
            ServerError::LogDir { dir, source } => write!(f, "cannot create log directory {}: {source}", dir.display()),
            ServerError::LogFile { path, source } => write!(f, "cannot open log file {}: {source}", path.display()),
            ServerError::Thread { what, source } => write!(f, "cannot start the {what} thread: {source}"),
            ServerError::Io { what, source } => write!(f, "{what}: {source}"),
            ServerError::NoRandomness => f.write_str("no system randomness"),
        }
    }
}

impl std::error::Error for ServerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ServerError::Listen { source, .. }
            | ServerError::Backlog { source, .. }
            | ServerError::LogDir { source, .. }
            | ServerError::LogFile { source, .. }
            | ServerError::Thread { source, .. }
            | ServerError::Io { source, .. } => Some(source),
            ServerError::Config(e) => Some(e),
            ServerError::Journal(e) => Some(e),
            ServerError::PeerTls(e) => Some(e),
            _ => None,
        }
    }
}

impl ServerError {
    /// A failed system call of the loop's own resources, named as it always was ("cannot create poll").
    pub fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> ServerError {
        let what = what.into();
        move |source| ServerError::Io { what, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_read_as_they_always_did() {
        let in_use = io::Error::from(io::ErrorKind::AddrInUse);
        let e = ServerError::Listen {
            server: "A".into(),
            what: "client port",
            addr: "127.0.0.1:7".parse().unwrap(),
            source: in_use,
        };
        assert!(e.to_string().starts_with("A: cannot listen on 127.0.0.1:7 (client port): "), "{e}");
        let e = ServerError::UnknownServer { name: "Z".into(), known: vec!["A".into(), "B".into()] };
        assert_eq!(e.to_string(), "unknown server \"Z\" (the config has A, B)");
        let e = ServerError::Secret { var: "S".into() };
        assert_eq!(e.to_string(), "herd_secret_env names S, which is not set or empty");
    }
}
