//! Mutual TLS identity for peer links (PROTOCOL section 5, config `peer_tls`).
//!
//! Both ends of a link present a certificate from the herd CA (`herd certs`) and accept nothing else:
//!
//! - the dialer verifies that the acceptor's certificate chains to the CA and names the neighbour it
//!   dialed (rustls's server-certificate check, with the neighbour's name as the TLS server name);
//! - the acceptor requires a client certificate chaining to the CA ([`WebPkiClientVerifier`]); a TLS
//!   server cannot know which neighbour is calling until the `HELLO` line, so the peer state machine then
//!   checks with [`peer_is`] that the certificate names the server the `HELLO` claims to be. A process
//!   holding Clark's key can therefore only ever speak as Clark, and only where Clark is a neighbour.
//!
//! The configurations are built once and shared (`Arc`) by every connection; [`PeerTls::reload`] builds
//! new ones from the files (SIGHUP), which only connections made afterwards use: a live session keeps the
//! configuration it started with, so renewing certificates never drops a link. Session resumption is off:
//! links are long-lived, and a full handshake each time means a reloaded CA or a renewed certificate is
//! checked on every new link, never skipped by a ticket from before.
//!
//! This module owns no sockets; the peer connection drives its `rustls` connection through `read_tls` /
//! `process_new_packets` / `reader` / `writer` / `write_tls`, as the Places client does.

use crate::config::PeerTlsConfig;
use crate::places_service::certs::provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why a peer was refused: the `reason` label of `herd_peers_refused_total` and the word in the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The certificate's validity ended (or has not begun: the certificate is not valid *now*).
    Expired,
    /// The certificate does not chain to our CA (another herd's CA, self-signed, forged signature).
    UnknownCa,
    /// The certificate is valid but names another server than the one the link is with.
    BadName,
    /// The dialer sent no client certificate.
    NoCertificate,
    /// Some other defect of the certificate (wrong key usage, bad encoding, ...).
    BadCertificate,
    /// The bytes are not TLS at all: a plaintext `HELLO`, `PROOF` or `AT` on a TLS peer port.
    NotTls,
    /// The other side refused us, by a TLS alert (its own log says why).
    PeerAlert,
    /// Any other TLS failure.
    Tls,
    /// The `HELLO` names a server that is not a configured neighbour.
    NotNeighbour,
    /// The `HELLO` is addressed to another server than this one.
    WrongServer,
    /// A failed proof of the herd secret.
    BadProof,
    /// More peer connections than neighbours can explain: turned away at accept.
    TooMany,
    /// A malformed `HELLO` field (an over-long nonce).
    BadHello,
}

impl Refusal {
    pub const ALL: [Refusal; 13] = [
        Refusal::Expired,
        Refusal::UnknownCa,
        Refusal::BadName,
        Refusal::NoCertificate,
        Refusal::BadCertificate,
        Refusal::NotTls,
        Refusal::PeerAlert,
        Refusal::Tls,
        Refusal::NotNeighbour,
        Refusal::WrongServer,
        Refusal::BadProof,
        Refusal::TooMany,
        Refusal::BadHello,
    ];

    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Expired => "expired",
            Refusal::UnknownCa => "unknown_ca",
            Refusal::BadName => "bad_name",
            Refusal::NoCertificate => "no_certificate",
            Refusal::BadCertificate => "bad_certificate",
            Refusal::NotTls => "not_tls",
            Refusal::PeerAlert => "peer_alert",
            Refusal::Tls => "tls_error",
            Refusal::NotNeighbour => "not_neighbour",
            Refusal::WrongServer => "wrong_server",
            Refusal::BadProof => "bad_proof",
            Refusal::TooMany => "too_many",
            Refusal::BadHello => "bad_hello",
        }
    }

    /// Its index in [`Refusal::ALL`], for a counter array.
    pub fn index(self) -> usize {
        Refusal::ALL.iter().position(|&r| r == self).expect("listed")
    }

    /// The refusal a failed handshake stands for.
    pub fn of(e: &rustls::Error) -> Refusal {
        use CertificateError as C;
        match e {
            rustls::Error::InvalidCertificate(c) => match c {
                C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. } => {
                    Refusal::Expired
                }
                // Every `herd certs` CA has the same subject: another herd's certificate meets an issuer of
                // the right name whose key does not verify it. Not signed by our CA either way.
                C::UnknownIssuer | C::BadSignature => Refusal::UnknownCa,
                C::NotValidForName | C::NotValidForNameContext { .. } => Refusal::BadName,
                _ => Refusal::BadCertificate,
            },
            rustls::Error::NoCertificatesPresented => Refusal::NoCertificate,
            rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => Refusal::NotTls,
            rustls::Error::AlertReceived(_) => Refusal::PeerAlert,
            _ => Refusal::Tls,
        }
    }
}

/// Whether `cert` (an end-entity certificate) names server `name`. DNS names compare case-insensitively,
/// which is why config validation refuses server names differing only in case.
pub fn names(cert: &CertificateDer<'_>, name: &str) -> bool {
    let Ok(server_name) = ServerName::try_from(name) else { return false };
    webpki::EndEntityCert::try_from(cert).is_ok_and(|ee| ee.verify_is_valid_for_subject_name(&server_name).is_ok())
}

/// Binds a handshake's certificate to a name: Ok when the peer's certificate (already verified to chain to
/// the CA by rustls) names `name`.
pub fn peer_is(conn: &rustls::CommonState, name: &str) -> Result<(), Refusal> {
    match conn.peer_certificates().and_then(|chain| chain.first()) {
        None => Err(Refusal::NoCertificate),
        Some(cert) if names(cert, name) => Ok(()),
        Some(_) => Err(Refusal::BadName),
    }
}

/// What one read from a peer link gave.
#[derive(Debug)]
pub enum IoRead {
    /// Plaintext bytes, at the start of the buffer.
    Data(usize),
    /// The other side closed (TCP EOF, or TLS close_notify).
    Eof,
    /// Nothing more until the socket is readable again.
    WouldBlock,
    Failed(std::io::Error),
    /// The TLS handshake or a record failed: the link is refused for this reason.
    Refused(Refusal, rustls::Error),
}

/// The byte layer under the peer line protocol: the socket itself, or TLS over it.
///
/// Both behave like a non-blocking socket to the peer state machine: [`PeerIo::read`] gives plaintext or
/// `WouldBlock`, [`PeerIo::write`] takes what it can. TLS adds one duty: rustls may have records to send
/// that no plaintext write asked for (handshake messages after a read, an alert), so after reading the
/// caller checks [`PeerIo::wants_write`] and flushes, with an empty write if it has nothing of its own.
pub enum PeerIo {
    Plain,
    Tls(Box<TlsIo>),
}

/// Socket bytes read per read(2) on a TLS link: as much as a plaintext link reads at once. rustls's own
/// `read_tls` from the socket reads 4 KiB at a time, which would cost a TLS link several times the read
/// calls of a plaintext one under load; reading into this buffer and feeding rustls from it does not.
const STAGE: usize = 64 * 1024;

/// A rustls connection and the socket bytes read but not yet handed to it.
pub struct TlsIo {
    conn: rustls::Connection,
    /// Allocated at the first read (a link refused at once never needs it).
    stage: Vec<u8>,
    /// `stage[start..end]` is still to be given to rustls.
    start: usize,
    end: usize,
}

impl TlsIo {
    fn new(conn: rustls::Connection) -> TlsIo {
        TlsIo { conn, stage: Vec::new(), start: 0, end: 0 }
    }
}

impl PeerIo {
    pub fn is_tls(&self) -> bool {
        matches!(self, PeerIo::Tls(_))
    }

    /// Reads plaintext into `buf` (non-empty): what rustls already decrypted first, then more TLS records
    /// from the socket as long as it has them.
    pub fn read<S: Read + Write>(&mut self, stream: &mut S, buf: &mut [u8]) -> IoRead {
        use std::io::ErrorKind;
        let tls = match self {
            PeerIo::Plain => loop {
                return match stream.read(buf) {
                    Ok(0) => IoRead::Eof,
                    Ok(n) => IoRead::Data(n),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => IoRead::WouldBlock,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => IoRead::Failed(e),
                };
            },
            PeerIo::Tls(tls) => tls,
        };
        // Fill `buf` from as many records as the staged socket bytes hold, so that one call gives a TLS
        // link as much as one read(2) gives a plaintext link (the loop's read budget counts calls).
        let mut filled = 0;
        loop {
            if filled == buf.len() {
                return IoRead::Data(filled);
            }
            let data_or = |r: IoRead| if filled > 0 { IoRead::Data(filled) } else { r };
            // Plaintext rustls already has first: it is never asked to buffer more than one read's worth.
            match tls.conn.reader().read(&mut buf[filled..]) {
                Ok(0) => return data_or(IoRead::Eof), // close_notify (rustls says so again next call)
                Ok(n) => {
                    filled += n;
                    continue;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {} // needs more records
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => return data_or(IoRead::Eof),
                Err(e) => return data_or(IoRead::Failed(e)),
            }
            if tls.start == tls.end {
                if filled > 0 {
                    // One read(2) per call, as for plaintext; the next call reads the socket again.
                    return IoRead::Data(filled);
                }
                if tls.stage.is_empty() {
                    tls.stage = vec![0; STAGE];
                }
                match stream.read(&mut tls.stage) {
                    Ok(0) => return IoRead::Eof, // TCP EOF (without close_notify: rustls would say the same)
                    Ok(n) => (tls.start, tls.end) = (0, n),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return IoRead::WouldBlock,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => return IoRead::Failed(e),
                }
            }
            // rustls takes what fits its record buffer (a record or more); the rest waits in `stage`.
            let mut staged = &tls.stage[tls.start..tls.end];
            match tls.conn.read_tls(&mut staged) {
                Ok(n) => tls.start += n,
                Err(e) => return data_or(IoRead::Failed(e)),
            }
            if let Err(e) = tls.conn.process_new_packets() {
                // Best effort: the alert rustls queued tells the other side why (bad certificate, ...).
                // The link is refused; plaintext decrypted before the bad record goes with it (a
                // neighbour's records come back by anti-entropy when it relinks).
                let _ = tls.conn.write_tls(stream);
                return IoRead::Refused(Refusal::of(&e), e);
            }
        }
    }

    /// Writes plaintext like a non-blocking socket: `Ok(n)` for the bytes taken (TLS: encrypted and
    /// pushed to the socket as far as it takes them), `Err(WouldBlock)` when the socket is full and the
    /// caller must wait for WRITABLE. With TLS, records left over from earlier go first, and `Ok(0)` for a
    /// non-empty `buf` means rustls holds all it may before the handshake ends: wait for a read, not for
    /// WRITABLE. An empty `buf` only pushes what rustls has queued.
    pub fn write<S: Write>(&mut self, stream: &mut S, buf: &[u8]) -> std::io::Result<usize> {
        use std::io::ErrorKind;
        let tls = match self {
            PeerIo::Plain => return if buf.is_empty() { Ok(0) } else { stream.write(buf) },
            PeerIo::Tls(tls) => tls,
        };
        let push = |tls: &mut rustls::Connection, stream: &mut S| -> std::io::Result<()> {
            while tls.wants_write() {
                match tls.write_tls(stream) {
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        };
        let tls = &mut tls.conn;
        push(tls, stream)?;
        if buf.is_empty() {
            return Ok(0);
        }
        let n = tls.writer().write(buf)?;
        match push(tls, stream) {
            // Taken; the rest of the records go out first on the next call, which sees the WouldBlock.
            Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(n),
            Err(e) => Err(e),
            Ok(()) => Ok(n),
        }
    }

    /// Whether rustls has records to send (handshake, alerts, or encrypted data the socket did not take).
    pub fn wants_write(&self) -> bool {
        match self {
            PeerIo::Plain => false,
            PeerIo::Tls(tls) => tls.conn.wants_write(),
        }
    }

    /// Whether the TLS handshake is still going on (never for plaintext).
    pub fn is_handshaking(&self) -> bool {
        match self {
            PeerIo::Plain => false,
            PeerIo::Tls(tls) => tls.conn.is_handshaking(),
        }
    }

    /// Whether the verified peer certificate names `name` (see [`peer_is`]); a plaintext link has none.
    pub fn certificate_names(&self, name: &str) -> Result<(), Refusal> {
        match self {
            PeerIo::Plain => Err(Refusal::NoCertificate),
            PeerIo::Tls(tls) => peer_is(&tls.conn, name),
        }
    }

    /// Closing: a TLS close_notify, best effort (the socket closes right after).
    pub fn close<S: Write>(&mut self, stream: &mut S) {
        if let PeerIo::Tls(tls) = self {
            if !tls.conn.is_handshaking() {
                tls.conn.send_close_notify();
            }
            let _ = tls.conn.write_tls(stream);
        }
    }
}

/// The files one server's peer TLS is built from.
/// Why peer TLS cannot be set up (at start, or on a SIGHUP reload) or a link's TLS side cannot be made.
/// Each variant prints the one line it always printed: a missing or unusable file names it and the
/// `herd certs` command that makes it.
#[derive(Debug)]
pub enum TlsError {
    /// A file cannot be read (most often: missing); `remedy` is the `herd certs` command to run.
    Read { what: &'static str, path: PathBuf, source: std::io::Error, remedy: String },
    /// A file is not the PEM it should be.
    BadPem { path: PathBuf, expected: Pem, source: rustls::pki_types::pem::Error },
    /// The certificate file holds no certificate.
    NoCertificate { path: PathBuf },
    /// Our own certificate would be refused by our neighbours (expired, another CA, another name).
    /// (`why` is boxed to keep the error, and `ServerError` with it, small.)
    Refused { cert: PathBuf, ca: PathBuf, own: String, why: Box<webpki::Error>, remedy: String },
    /// The files are read but rustls refuses to build a configuration from them.
    Build { cert: PathBuf, source: BuildError },
    /// A neighbour's name that is not a DNS name (the config refuses those, so only by misuse).
    NotDnsName(String),
    /// rustls refuses to start a connection.
    Rustls(rustls::Error),
}

/// What a PEM file should hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pem {
    /// The CA file: one certificate.
    Certificate,
    /// A server's certificate file: a chain.
    Certificates,
    /// A server's key file.
    PrivateKey,
}

/// Why [`build`] cannot make the two configurations.
#[derive(Debug)]
pub enum BuildError {
    /// The CA certificate cannot be a trust anchor.
    BadCa(rustls::Error),
    /// The client-certificate verifier cannot be built.
    Verifier(rustls::server::VerifierBuilderError),
    /// rustls refuses the protocol versions, the chain or the key.
    Rustls(rustls::Error),
}

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BuildError::BadCa(e) => write!(f, "not a usable CA certificate: {e}"),
            BuildError::Verifier(e) => write!(f, "client verifier: {e}"),
            BuildError::Rustls(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for BuildError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BuildError::BadCa(e) | BuildError::Rustls(e) => Some(e),
            BuildError::Verifier(e) => Some(e),
        }
    }
}

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsError::Read { what, path, source, remedy } => write!(
                f,
                "peer_tls: cannot read {what} {}: {source}; {remedy} writes the herd's certificates",
                path.display()
            ),
            TlsError::BadPem { path, expected, source } => {
                let expected = match expected {
                    Pem::Certificate => "not a PEM certificate",
                    Pem::Certificates => "not PEM certificates",
                    Pem::PrivateKey => "not a PEM private key",
                };
                write!(f, "peer_tls: {}: {expected}: {source}", path.display())
            }
            TlsError::NoCertificate { path } => write!(f, "peer_tls: {}: no certificate in it", path.display()),
            TlsError::Refused { cert, ca, own, why, remedy } => write!(
                f,
                "peer_tls: {}: {} (for {own}, against {}); {remedy} --renew issues a new one",
                cert.display(),
                crate::certs::describe(why),
                ca.display()
            ),
            TlsError::Build { cert, source } => write!(f, "peer_tls: {}: {source}", cert.display()),
            TlsError::NotDnsName(name) => write!(f, "{name:?} is not a DNS name"),
            TlsError::Rustls(e) => write!(f, "TLS: {e}"),
        }
    }
}

impl std::error::Error for TlsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TlsError::Read { source, .. } => Some(source),
            TlsError::BadPem { source, .. } => Some(source),
            TlsError::Refused { why, .. } => Some(why.as_ref()),
            TlsError::Build { source, .. } => Some(source),
            TlsError::Rustls(e) => Some(e),
            TlsError::NoCertificate { .. } | TlsError::NotDnsName(_) => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Files {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Files {
    pub fn of(tls: &PeerTlsConfig, own: &str) -> Files {
        Files { ca: tls.ca_file.clone(), cert: tls.cert_file(own), key: tls.key_file(own) }
    }
}

/// One server's peer TLS: its identity, the CA it trusts, and the rustls configurations built from them.
pub struct PeerTls {
    own: String,
    files: Files,
    /// How to make the files, for the error when they are missing (e.g. `herd certs --config c.json`).
    remedy: String,
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

impl PeerTls {
    /// Loads server `own`'s certificate and key and the CA. Missing or unusable files are a one-line
    /// error that names `herd certs`; `config_path` is the config to name in it.
    pub fn load(tls: &PeerTlsConfig, config_path: &Path, own: &str) -> Result<PeerTls, TlsError> {
        let files = Files::of(tls, own);
        let remedy = format!("`herd certs --config {}`", config_path.display());
        let (server, client) = build_from_files(own, &files, &remedy)?;
        Ok(PeerTls { own: own.to_string(), files, remedy, server, client })
    }

    /// Reads the files again and rebuilds both configurations (SIGHUP). Live sessions keep the old ones;
    /// new links use the new ones. On an error nothing changes and the error says why.
    pub fn reload(&mut self) -> Result<(), TlsError> {
        let (server, client) = build_from_files(&self.own, &self.files, &self.remedy)?;
        self.server = server;
        self.client = client;
        Ok(())
    }

    pub fn files(&self) -> &Files {
        &self.files
    }

    pub fn server_config(&self) -> &Arc<ServerConfig> {
        &self.server
    }

    pub fn client_config(&self) -> &Arc<ClientConfig> {
        &self.client
    }

    /// The TLS side of a link a neighbour dialed.
    pub fn accept(&self) -> Result<ServerConnection, TlsError> {
        ServerConnection::new(self.server.clone()).map_err(TlsError::Rustls)
    }

    /// The TLS side of a link we dial to `neighbour`: its certificate must name it.
    pub fn dial(&self, neighbour: &str) -> Result<ClientConnection, TlsError> {
        let name =
            ServerName::try_from(neighbour.to_string()).map_err(|_| TlsError::NotDnsName(neighbour.to_string()))?;
        ClientConnection::new(self.client.clone(), name).map_err(TlsError::Rustls)
    }

    /// [`PeerTls::accept`] as the byte layer of a peer link.
    pub fn accept_io(&self) -> Result<PeerIo, TlsError> {
        Ok(PeerIo::Tls(Box::new(TlsIo::new(self.accept()?.into()))))
    }

    /// [`PeerTls::dial`] as the byte layer of a peer link.
    pub fn dial_io(&self, neighbour: &str) -> Result<PeerIo, TlsError> {
        Ok(PeerIo::Tls(Box::new(TlsIo::new(self.dial(neighbour)?.into()))))
    }
}

fn build_from_files(
    own: &str,
    files: &Files,
    remedy: &str,
) -> Result<(Arc<ServerConfig>, Arc<ClientConfig>), TlsError> {
    let read = |what: &'static str, path: &Path| -> Result<Vec<u8>, TlsError> {
        std::fs::read(path).map_err(|source| TlsError::Read {
            what,
            path: path.to_path_buf(),
            source,
            remedy: remedy.to_string(),
        })
    };
    let bad_pem = |path: &Path, expected| {
        let path = path.to_path_buf();
        move |source| TlsError::BadPem { path, expected, source }
    };
    let ca_pem = read("the CA", &files.ca)?;
    let cert_pem = read("the certificate", &files.cert)?;
    let key_pem = read("the key", &files.key)?;
    let ca = CertificateDer::from_pem_slice(&ca_pem).map_err(bad_pem(&files.ca, Pem::Certificate))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(bad_pem(&files.cert, Pem::Certificates))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(bad_pem(&files.key, Pem::PrivateKey))?;
    let Some(leaf) = chain.first() else {
        return Err(TlsError::NoCertificate { path: files.cert.clone() });
    };
    // Our own certificate must pass the check our neighbours will make, or every link would fail later,
    // one by one, with the reason only in their logs.
    crate::certs::check_certificate(&ca, leaf, own, UnixTime::now()).map_err(|why| TlsError::Refused {
        cert: files.cert.clone(),
        ca: files.ca.clone(),
        own: own.to_string(),
        why: Box::new(why),
        remedy: remedy.to_string(),
    })?;
    build(ca, chain, key).map_err(|source| TlsError::Build { cert: files.cert.clone(), source })
}

/// The two configurations: TLS 1.3 only, ring, trusting `ca` alone, presenting `chain` with `key`, client
/// certificates required, no session resumption.
pub fn build(
    ca: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<(Arc<ServerConfig>, Arc<ClientConfig>), BuildError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca).map_err(BuildError::BadCa)?;
    let roots = Arc::new(roots);
    let versions = &[&rustls::version::TLS13];

    let verifier =
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider()).build().map_err(BuildError::Verifier)?;
    let mut server = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .map_err(BuildError::Rustls)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(BuildError::Rustls)?;
    server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    server.send_tls13_tickets = 0;

    let mut client = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .map_err(BuildError::Rustls)?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(BuildError::Rustls)?;
    client.resumption = rustls::client::Resumption::disabled();
    Ok((Arc::new(server), Arc::new(client)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::{HerdCa, Layout, Options};
    use crate::config::Config;
    use std::io::{Read, Write};
    use std::time::{Duration, SystemTime};

    const NAMES: [&str; 5] = ["Bailey", "Bona", "Campbell", "Clark", "Jaquez"];

    struct Herd {
        dir: PathBuf,
        tls: PeerTlsConfig,
    }

    impl Drop for Herd {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    impl Herd {
        /// A five-server herd's certificates, made by `herd certs`' own code in a fresh directory.
        fn new(tag: &str) -> Herd {
            let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos();
            let dir = std::env::temp_dir().join(format!("herd-peer-tls-{tag}-{}-{nanos}", std::process::id()));
            let servers: Vec<String> = NAMES
                .iter()
                .enumerate()
                .map(|(i, n)| format!(r#"{{"name": "{n}", "port": {}, "peer_port": {}}}"#, 31000 + i, 32000 + i))
                .collect();
            let config =
                Config::parse(Path::new("t.json"), &format!(r#"{{"servers": [{}]}}"#, servers.join(","))).unwrap();
            crate::certs::run(&config, &Layout::in_dir(&dir), Options::default()).unwrap();
            Herd { tls: PeerTlsConfig { ca_file: dir.join("ca.pem"), cert_dir: dir.clone() }, dir }
        }

        fn server(&self, name: &str) -> PeerTls {
            PeerTls::load(&self.tls, Path::new("t.json"), name).unwrap()
        }
    }

    /// Moves bytes between the two ends until neither has anything to send: the handshake, in memory.
    /// Returns each side's error, if it failed.
    fn handshake(
        client: &mut ClientConnection,
        server: &mut ServerConnection,
    ) -> (Option<rustls::Error>, Option<rustls::Error>) {
        let (mut client_err, mut server_err) = (None, None);
        for _ in 0..20 {
            let mut moved = false;
            while client.wants_write() {
                let mut buf = Vec::new();
                client.write_tls(&mut buf).unwrap();
                moved = true;
                if server_err.is_none() {
                    server.read_tls(&mut buf.as_slice()).unwrap();
                    if let Err(e) = server.process_new_packets() {
                        server_err = Some(e);
                    }
                }
            }
            while server.wants_write() {
                let mut buf = Vec::new();
                server.write_tls(&mut buf).unwrap();
                moved = true;
                if client_err.is_none() {
                    client.read_tls(&mut buf.as_slice()).unwrap();
                    if let Err(e) = client.process_new_packets() {
                        client_err = Some(e);
                    }
                }
            }
            if !moved {
                break;
            }
        }
        (client_err, server_err)
    }

    /// A client configuration presenting the given files' certificate (for forgeries the loader refuses).
    fn client_with(ca: &Path, cert_pem: &str, key_pem: &str) -> Arc<ClientConfig> {
        let ca = CertificateDer::from_pem_file(ca).unwrap();
        let chain = vec![CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
        build(ca, chain, key).unwrap().1
    }

    fn dial(config: &Arc<ClientConfig>, name: &str) -> ClientConnection {
        ClientConnection::new(config.clone(), ServerName::try_from(name.to_string()).unwrap()).unwrap()
    }

    #[test]
    fn neighbours_complete_the_handshake_and_each_certificate_names_its_server() {
        let herd = Herd::new("ok");
        let (bailey, bona) = (herd.server("Bailey"), herd.server("Bona"));
        let mut client = bona.dial("Bailey").unwrap();
        let mut server = bailey.accept().unwrap();
        let (c, s) = handshake(&mut client, &mut server);
        assert!(c.is_none() && s.is_none(), "{c:?} {s:?}");
        assert!(!client.is_handshaking() && !server.is_handshaking());
        // Each side sees the other's certificate naming it, and nobody else.
        assert_eq!(peer_is(&server, "Bona"), Ok(()));
        assert_eq!(peer_is(&server, "bona"), Ok(()), "DNS names ignore case");
        assert_eq!(peer_is(&server, "Clark"), Err(Refusal::BadName));
        assert_eq!(peer_is(&client, "Bailey"), Ok(()));
        // And the line protocol goes through.
        client.writer().write_all(b"HELLO Bona Bailey n1 v=2\n").unwrap();
        handshake(&mut client, &mut server);
        let mut got = String::new();
        let _ = server.reader().read_to_string(&mut got);
        assert_eq!(got, "HELLO Bona Bailey n1 v=2\n");
    }

    #[test]
    fn clarks_valid_certificate_cannot_claim_to_be_bona() {
        let herd = Herd::new("clark");
        let (bailey, clark) = (herd.server("Bailey"), herd.server("Clark"));
        // Clark dials Bailey: the handshake itself succeeds (the certificate chains to the CA)...
        let mut client = clark.dial("Bailey").unwrap();
        let mut server = bailey.accept().unwrap();
        let (c, s) = handshake(&mut client, &mut server);
        assert!(c.is_none() && s.is_none(), "{c:?} {s:?}");
        // ...but the binding to a HELLO claiming Bona fails.
        assert_eq!(peer_is(&server, "Bona"), Err(Refusal::BadName));
        assert_eq!(Refusal::BadName.reason(), "bad_name");
    }

    #[test]
    fn a_dialer_refuses_an_acceptor_whose_certificate_names_another_server() {
        let herd = Herd::new("impostor");
        let (bona, clark) = (herd.server("Bona"), herd.server("Clark"));
        // Bona dials what it thinks is Bailey; Clark answers.
        let mut client = bona.dial("Bailey").unwrap();
        let mut server = clark.accept().unwrap();
        let (c, _) = handshake(&mut client, &mut server);
        assert_eq!(Refusal::of(&c.expect("refused")), Refusal::BadName);
    }

    #[test]
    fn a_certificate_of_a_foreign_ca_is_refused_both_ways() {
        let (herd, foreign) = (Herd::new("home"), Herd::new("foreign"));
        let bailey = herd.server("Bailey");
        // Mallory trusts our CA (its certificate is no secret) but presents a "Bona" of her own CA.
        let read = |f: &str| std::fs::read_to_string(foreign.dir.join(f)).unwrap();
        let mallory = client_with(&herd.tls.ca_file, &read("Bona.pem"), &read("Bona.key"));
        let mut client = dial(&mallory, "Bailey");
        let mut server = bailey.accept().unwrap();
        let (_, s) = handshake(&mut client, &mut server);
        let s = s.expect("acceptor refuses");
        assert_eq!(Refusal::of(&s), Refusal::UnknownCa, "{s:?}");
        assert_eq!(peer_is(&server, "Bona"), Err(Refusal::NoCertificate), "no identity after a refusal");

        // And a dialer of our herd refuses a foreign acceptor.
        let bona = herd.server("Bona");
        let foreign_bailey = foreign.server("Bailey");
        let mut client = bona.dial("Bailey").unwrap();
        let mut server = foreign_bailey.accept().unwrap();
        let (c, _) = handshake(&mut client, &mut server);
        assert_eq!(Refusal::of(&c.expect("dialer refuses")), Refusal::UnknownCa);
    }

    #[test]
    fn a_dialer_without_a_client_certificate_is_refused() {
        let herd = Herd::new("nocert");
        let bailey = herd.server("Bailey");
        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from_pem_file(&herd.tls.ca_file).unwrap()).unwrap();
        let anonymous = Arc::new(
            ClientConfig::builder_with_provider(provider())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        );
        let mut client = dial(&anonymous, "Bailey");
        let mut server = bailey.accept().unwrap();
        let (_, s) = handshake(&mut client, &mut server);
        let s = s.expect("refused");
        assert_eq!(Refusal::of(&s), Refusal::NoCertificate, "{s:?}");
        assert_eq!(Refusal::NoCertificate.reason(), "no_certificate");
    }

    #[test]
    fn an_expired_certificate_is_refused_as_expired() {
        let herd = Herd::new("expired");
        let bailey = herd.server("Bailey");
        let ca = HerdCa::load(&herd.tls.ca_file, &herd.dir.join("ca.key")).unwrap();
        let now = SystemTime::now();
        let day = Duration::from_secs(86_400);
        let old = ca.issue("Bona", now - day * 30, now - day).unwrap();
        let mut client = dial(&client_with(&herd.tls.ca_file, &old.cert_pem, &old.key_pem), "Bailey");
        let mut server = bailey.accept().unwrap();
        let (_, s) = handshake(&mut client, &mut server);
        let s = s.expect("refused");
        assert_eq!(Refusal::of(&s), Refusal::Expired, "{s:?}");
        assert_eq!(Refusal::of(&s).reason(), "expired");

        // Our own expired certificate is refused at load, naming the remedy.
        std::fs::write(herd.dir.join("Bona.pem"), &old.cert_pem).unwrap();
        std::fs::write(herd.dir.join("Bona.key"), &old.key_pem).unwrap();
        let err = PeerTls::load(&herd.tls, Path::new("t.json"), "Bona").err().unwrap();
        assert!(
            matches!(&err, TlsError::Refused { cert, own, why, .. }
                if *cert == herd.dir.join("Bona.pem") && own == "Bona"
                    && matches!(**why, webpki::Error::CertExpired { .. })),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(text.contains("Bona.pem: expired") && text.contains("herd certs"), "{text}");
        assert!(!text.contains('\n'));
    }

    #[test]
    fn plaintext_on_a_tls_peer_port_fails_the_handshake() {
        let herd = Herd::new("plain");
        let bailey = herd.server("Bailey");
        for line in [&b"HELLO Bona Bailey x\n"[..], b"PROOF -\n", b"AT Mallory +0.1 c +1+1 99999999999999999999999\n"] {
            let mut server = bailey.accept().unwrap();
            server.read_tls(&mut &line[..]).unwrap();
            let e = server.process_new_packets().expect_err("not TLS");
            assert_eq!(Refusal::of(&e), Refusal::NotTls, "{e:?}");
            let mut plain = Vec::new();
            assert!(server.reader().read_to_end(&mut plain).is_err() || plain.is_empty());
        }
    }

    #[test]
    fn missing_files_are_a_one_line_error_naming_herd_certs() {
        let herd = Herd::new("missing");
        std::fs::remove_file(herd.dir.join("Bona.key")).unwrap();
        let err = PeerTls::load(&herd.tls, Path::new("conf/h.json"), "Bona").err().unwrap();
        assert!(
            matches!(&err, TlsError::Read { what: "the key", path, .. } if *path == herd.dir.join("Bona.key")),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(text.starts_with("peer_tls: cannot read the key "), "{text}");
        assert!(text.contains("Bona.key") && text.contains("`herd certs --config conf/h.json`"), "{text}");
        assert!(!text.contains('\n'));
        // A server the directory has no certificate for at all.
        let err = PeerTls::load(&herd.tls, Path::new("t.json"), "Hands").err().unwrap();
        assert!(
            matches!(&err, TlsError::Read { what: "the certificate", path, .. } if *path == herd.dir.join("Hands.pem")),
            "{err:?}"
        );
    }

    #[test]
    fn reload_picks_up_renewed_files_without_touching_live_sessions() {
        let herd = Herd::new("reload");
        let (mut bailey, bona) = (herd.server("Bailey"), herd.server("Bona"));
        let mut live_client = bona.dial("Bailey").unwrap();
        let mut live_server = bailey.accept().unwrap();
        handshake(&mut live_client, &mut live_server);
        let before = std::fs::read(herd.dir.join("Bailey.pem")).unwrap();
        let old_server_config = bailey.server_config().clone();

        // Renew every certificate with the same CA, then reload.
        let servers: Vec<String> = NAMES
            .iter()
            .enumerate()
            .map(|(i, n)| format!(r#"{{"name": "{n}", "port": {}, "peer_port": {}}}"#, 31000 + i, 32000 + i))
            .collect();
        let config = Config::parse(Path::new("t.json"), &format!(r#"{{"servers": [{}]}}"#, servers.join(","))).unwrap();
        crate::certs::run(&config, &Layout::in_dir(&herd.dir), Options { renew: true, ..Options::default() }).unwrap();
        assert_ne!(std::fs::read(herd.dir.join("Bailey.pem")).unwrap(), before);
        bailey.reload().unwrap();
        assert!(!Arc::ptr_eq(&old_server_config, bailey.server_config()));

        // The live session still carries data.
        live_client.writer().write_all(b"AT Bailey +0.1 c +1+1 1\n").unwrap();
        let (c, s) = handshake(&mut live_client, &mut live_server);
        assert!(c.is_none() && s.is_none());
        let mut got = String::new();
        let _ = live_server.reader().read_to_string(&mut got);
        assert_eq!(got, "AT Bailey +0.1 c +1+1 1\n");

        // A new link presents the renewed certificate.
        let mut client = bona.dial("Bailey").unwrap();
        let mut server = bailey.accept().unwrap();
        let (c, s) = handshake(&mut client, &mut server);
        assert!(c.is_none() && s.is_none(), "{c:?} {s:?}");
        let presented = client.peer_certificates().unwrap()[0].clone();
        let renewed = CertificateDer::from_pem_file(herd.dir.join("Bailey.pem")).unwrap();
        assert_eq!(presented, renewed);

        // A reload that fails (key gone) keeps what worked.
        std::fs::remove_file(herd.dir.join("Bailey.key")).unwrap();
        let kept = bailey.server_config().clone();
        let err = bailey.reload().unwrap_err();
        assert!(matches!(&err, TlsError::Read { what: "the key", .. }), "{err:?}");
        assert!(Arc::ptr_eq(&kept, bailey.server_config()));
    }

    /// A connected pair of non-blocking loopback sockets.
    fn socket_pair() -> (std::net::TcpStream, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (b, _) = listener.accept().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        (a, b)
    }

    type End<'a> = (&'a mut PeerIo, &'a mut std::net::TcpStream);

    /// Both ends as the peer state machine drives them: each step writes what is queued (an empty write
    /// when only rustls has something) and reads what came, until everything sent has arrived, or a read
    /// says something else than data or WouldBlock.
    fn pump<'b>(
        d: End<'_>,
        a: End<'_>,
        mut d_out: &'b [u8],
        mut a_out: &'b [u8],
    ) -> Result<(Vec<u8>, Vec<u8>), IoRead> {
        let ((d_io, d_sock), (a_io, a_sock)) = (d, a);
        let (want_a, want_d) = (d_out.len(), a_out.len());
        let (mut at_a, mut at_d) = (Vec::new(), Vec::new());
        let mut buf = [0u8; 4096];
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while at_a.len() < want_a || at_d.len() < want_d || d_io.wants_write() || a_io.wants_write() {
            assert!(
                std::time::Instant::now() < deadline,
                "stuck: {} of {want_a}, {} of {want_d}",
                at_a.len(),
                at_d.len()
            );
            for (io, sock, out) in [(&mut *d_io, &mut *d_sock, &mut d_out), (&mut *a_io, &mut *a_sock, &mut a_out)] {
                match io.write(sock, out) {
                    Ok(n) => *out = &out[n..],
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("write: {e}"),
                }
            }
            for (io, sock, got) in [(&mut *a_io, &mut *a_sock, &mut at_a), (&mut *d_io, &mut *d_sock, &mut at_d)] {
                loop {
                    match io.read(sock, &mut buf) {
                        IoRead::Data(n) => got.extend_from_slice(&buf[..n]),
                        IoRead::WouldBlock => break,
                        other => return Err(other),
                    }
                }
            }
            std::thread::yield_now();
        }
        Ok((at_a, at_d))
    }

    #[test]
    fn peer_io_carries_lines_both_ways_over_tls_and_plain() {
        let herd = Herd::new("io");
        let (bailey, bona) = (herd.server("Bailey"), herd.server("Bona"));
        // More than rustls buffers before the handshake ends and more than a socket takes at once.
        let big: Vec<u8> = (0..300_000u32).flat_map(|i| format!("AT Bona +0.1 c{i} +1+1 1\n").into_bytes()).collect();
        for tls in [true, false] {
            let (mut d_sock, mut a_sock) = socket_pair();
            let (mut d_io, mut a_io) = if tls {
                (bona.dial_io("Bailey").unwrap(), bailey.accept_io().unwrap())
            } else {
                (PeerIo::Plain, PeerIo::Plain)
            };
            let hello = [&b"HELLO Bona Bailey n1 v=2\n"[..], &big].concat();
            let (at_a, at_d) =
                pump((&mut d_io, &mut d_sock), (&mut a_io, &mut a_sock), &hello, b"WELCOME Bailey n2 -\n").unwrap();
            assert!(at_a == hello, "tls={tls}: {} bytes of {}", at_a.len(), hello.len());
            assert_eq!(at_d, b"WELCOME Bailey n2 -\n");
            assert_eq!(a_io.certificate_names("Bona").is_ok(), tls);
            let wrong = if tls { Refusal::BadName } else { Refusal::NoCertificate };
            assert_eq!(a_io.certificate_names("Clark"), Err(wrong));
            // Closing: the other side reads an end of stream.
            d_io.close(&mut d_sock);
            drop(d_sock);
            let mut buf = [0u8; 64];
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                match a_io.read(&mut a_sock, &mut buf) {
                    IoRead::Eof => break,
                    IoRead::WouldBlock => assert!(std::time::Instant::now() < deadline, "no EOF"),
                    other => panic!("tls={tls}: {other:?}"),
                }
                std::thread::yield_now();
            }
        }
    }

    #[test]
    fn peer_io_refuses_plaintext_at_a_tls_acceptor() {
        let herd = Herd::new("io-plain");
        let bailey = herd.server("Bailey");
        let (mut d_sock, mut a_sock) = socket_pair();
        let mut a_io = bailey.accept_io().unwrap();
        let forged = b"HELLO Bona Bailey x\nPROOF -\n";
        let err = pump((&mut PeerIo::Plain, &mut d_sock), (&mut a_io, &mut a_sock), forged, b"").unwrap_err();
        assert!(matches!(err, IoRead::Refused(Refusal::NotTls, _)), "{err:?}");
    }

    #[test]
    fn reasons_are_distinct_labels() {
        let mut seen = std::collections::HashSet::new();
        for r in Refusal::ALL {
            assert!(seen.insert(r.reason()), "{r:?}");
            assert!(r.reason().bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
        }
    }
}
