//! `herd certs`: the herd's own certificate authority and one certificate per server, for mutual TLS on
//! peer links (PROTOCOL sections 5 and 8).
//!
//! ```text
//!   DIR/ca.pem    the herd CA (self-signed); every server trusts it and nothing else on peer links
//!   DIR/ca.key    its private key, mode 0600; only `herd certs` (and `herd up`'s first start) read it
//!   DIR/NAME.pem  server NAME's certificate: subject alternative name = NAME, signed by the CA,
//!                 usable both to accept (server auth) and to dial (client auth)
//!   DIR/NAME.key  its private key, mode 0600
//! ```
//!
//! Files that exist are kept: a second run adds what is missing (a server added to the config) and says
//! what it kept. `--renew` re-issues every server certificate (new keys too) with the existing CA, so
//! running servers keep trusting each other and pick the new files up on SIGHUP; `--force` starts over
//! with a new CA. The CA key is read only when something must be signed, so it can live offline once the
//! servers have their certificates.
//!
//! rcgen cannot read a certificate back without x509-parser, so a CA on disk is reused by rebuilding its
//! issuer from the fixed parameters below and its key, and proving the pair works: a probe certificate
//! signed that way must verify against the CA file.

use crate::config::Config;
use crate::places_service::certs::write_atomically;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Default validity of a server certificate.
pub const DEFAULT_DAYS: u32 = 365;
/// The CA outlives the server certificates it signs, so that renewing them never needs a new CA.
pub const CA_DAYS: u32 = 10 * 365;
/// Certificates start an hour in the past: a neighbour whose clock is a little behind still accepts them.
const BACKDATE: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// Where the files of one herd's certificates are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub dir: PathBuf,
}

impl Layout {
    /// `DIR/ca.pem`, `DIR/ca.key`, `DIR/NAME.pem`, `DIR/NAME.key`: what `herd certs --out DIR` writes.
    pub fn in_dir(dir: &Path) -> Layout {
        Layout { ca_cert: dir.join("ca.pem"), ca_key: dir.join("ca.key"), dir: dir.to_path_buf() }
    }

    /// The files a config's `peer_tls` names (the CA key is `ca.key` beside its `ca_file`).
    pub fn of_config(tls: &crate::config::PeerTlsConfig) -> Layout {
        Layout { ca_cert: tls.ca_file.clone(), ca_key: tls.ca_key_file(), dir: tls.cert_dir.clone() }
    }

    pub fn cert(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pem"))
    }

    pub fn key(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.key"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Replace everything, the CA included.
    pub force: bool,
    /// Re-issue every server certificate with the existing CA.
    pub renew: bool,
    /// Validity of the server certificates issued now.
    pub days: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options { force: false, renew: false, days: DEFAULT_DAYS }
    }
}

/// The herd CA, ready to sign.
pub struct HerdCa {
    pub cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its private key, both PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The CA's fixed parameters (its validity aside): reuse depends on them never changing.
/// Why `herd certs` (or `herd up`'s first start) could not make or reuse the herd's certificates. Each
/// variant prints the one line it always printed (after `herd certs: `, or `herd: peer_tls: `).
#[derive(Debug)]
pub enum CertsError {
    /// `servers[index].name` cannot be a certificate's DNS name.
    NotDnsLabel { index: usize, name: String },
    /// `--days 0`.
    ZeroDays,
    /// A directory for the files cannot be created.
    CreateDir { dir: PathBuf, source: std::io::Error },
    /// Server files exist but their CA does not: a new CA would silently replace them.
    CaMissing { ca: PathBuf, cert: PathBuf },
    /// A file cannot be read.
    Read { path: PathBuf, source: std::io::Error },
    /// A certificate file is not PEM.
    BadPem { path: PathBuf, source: rustls::pki_types::pem::Error },
    /// The CA key file is not a private key.
    BadKey { path: PathBuf, source: rcgen::Error },
    /// The CA key file holds the key of another certificate.
    KeyMismatch { key: PathBuf, cert: PathBuf },
    /// A certificate signed with the CA's key does not verify against the CA file.
    NotOurCa { cert: PathBuf, why: webpki::Error },
    /// The probe certificate just made cannot be read back (rcgen wrote a PEM rustls cannot read).
    Probe(rustls::pki_types::pem::Error),
    /// The CA on disk cannot be used to sign; `--force` is the way out.
    CaUnusable(Box<CertsError>),
    /// rcgen cannot make a key or a certificate (`doing`: "cannot generate the CA key", ...).
    Rcgen { doing: String, source: rcgen::Error },
    /// A server name rcgen refuses as a subject alternative name.
    BadName { name: String, source: rcgen::Error },
    /// A file cannot be written.
    Write(crate::places_service::CertError),
    /// A private key's mode cannot be read or tightened.
    KeyMode { path: PathBuf, chmod: bool, source: std::io::Error },
}

impl std::fmt::Display for CertsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CertsError::NotDnsLabel { index, name } => write!(
                f,
                "servers[{index}].name: {name:?} is not a DNS label (letters, digits and '-'), so no certificate \
                 can name it"
            ),
            CertsError::ZeroDays => f.write_str("--days must be at least 1"),
            CertsError::CreateDir { dir, source } => write!(f, "{}: cannot create: {source}", dir.display()),
            CertsError::CaMissing { ca, cert } => write!(
                f,
                "{} is missing but {} exists; `herd certs --force` makes a new CA and re-issues every server \
                 certificate",
                ca.display(),
                cert.display()
            ),
            CertsError::Read { path, source } => write!(f, "{}: cannot read: {source}", path.display()),
            CertsError::BadPem { path, source } => write!(f, "{}: not a PEM certificate: {source}", path.display()),
            CertsError::BadKey { path, source } => write!(f, "{}: not a private key: {source}", path.display()),
            CertsError::KeyMismatch { key, cert } => {
                write!(f, "{}: not the key of {}", key.display(), cert.display())
            }
            CertsError::NotOurCa { cert, why } => write!(
                f,
                "{}: not a CA made by `herd certs` (a certificate signed with it does not verify: {why})",
                cert.display()
            ),
            CertsError::Probe(e) => write!(f, "{e}"),
            CertsError::CaUnusable(e) => {
                write!(f, "{e}; `herd certs --force` makes a new CA (and re-issues every server certificate)")
            }
            CertsError::Rcgen { doing, source } => write!(f, "{doing}: {source}"),
            CertsError::BadName { name, source } => write!(f, "{name:?}: not a certificate name: {source}"),
            CertsError::Write(e) => write!(f, "{e}"),
            CertsError::KeyMode { path, chmod: false, source } => write!(f, "{}: {source}", path.display()),
            CertsError::KeyMode { path, chmod: true, source } => {
                write!(f, "{}: cannot chmod 0600: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for CertsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CertsError::CreateDir { source, .. }
            | CertsError::Read { source, .. }
            | CertsError::KeyMode { source, .. } => Some(source),
            CertsError::BadPem { source, .. } | CertsError::Probe(source) => Some(source),
            CertsError::BadKey { source, .. }
            | CertsError::Rcgen { source, .. }
            | CertsError::BadName { source, .. } => Some(source),
            CertsError::NotOurCa { why, .. } => Some(why),
            CertsError::CaUnusable(e) => Some(e.as_ref()),
            CertsError::Write(e) => Some(e),
            CertsError::NotDnsLabel { .. } | CertsError::ZeroDays | CertsError::CaMissing { .. } => None,
            CertsError::KeyMismatch { .. } => None,
        }
    }
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "herd");
    dn.push(DnType::CommonName, "herd peer CA");
    params.distinguished_name = dn;
    // Signs end-entity certificates only: no intermediate CA can hang below it.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

/// Sets the validity window (rcgen's date type is the `time` crate's, reached through `date_time_ymd`).
fn set_validity(params: &mut CertificateParams, not_before: SystemTime, not_after: SystemTime) {
    let since_epoch = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    params.not_before = rcgen::date_time_ymd(1970, 1, 1) + since_epoch(not_before);
    params.not_after = rcgen::date_time_ymd(1970, 1, 1) + since_epoch(not_after);
}

impl HerdCa {
    /// A new CA valid from now (backdated an hour) for `days`; returns it and its key's PEM.
    pub fn create(days: u32) -> Result<(HerdCa, String, String), CertsError> {
        let key = KeyPair::generate().map_err(rcgen_err("cannot generate the CA key"))?;
        let mut params = ca_params();
        let now = SystemTime::now();
        set_validity(&mut params, now - BACKDATE, now + DAY * days);
        let cert = params.self_signed(&key).map_err(rcgen_err("cannot make the CA certificate"))?;
        let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
        Ok((HerdCa { cert_der: cert.der().clone(), issuer: Issuer::new(ca_params(), key) }, cert_pem, key_pem))
    }

    /// The CA from its PEM files, checked to be a pair that signs certificates the CA file verifies.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<HerdCa, CertsError> {
        let cert_der = read_cert(cert_file)?;
        let key_pem =
            fs::read_to_string(key_file).map_err(|source| CertsError::Read { path: key_file.to_path_buf(), source })?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|source| CertsError::BadKey { path: key_file.to_path_buf(), source })?;
        let spki = key.subject_public_key_info();
        if !cert_der.windows(spki.len()).any(|w| w == spki.as_slice()) {
            return Err(CertsError::KeyMismatch { key: key_file.to_path_buf(), cert: cert_file.to_path_buf() });
        }
        let ca = HerdCa { cert_der, issuer: Issuer::new(ca_params(), key) };
        let now = SystemTime::now();
        let probe = ca.issue("probe", now - BACKDATE, now + DAY)?;
        let probe = CertificateDer::from_pem_slice(probe.cert_pem.as_bytes()).map_err(CertsError::Probe)?;
        check_certificate(&ca.cert_der, &probe, "probe", UnixTime::now())
            .map_err(|why| CertsError::NotOurCa { cert: cert_file.to_path_buf(), why })?;
        Ok(ca)
    }

    /// A certificate for server `name` (its subject alternative name and common name), valid from
    /// `not_before` to `not_after`, with a fresh key.
    pub fn issue(&self, name: &str, not_before: SystemTime, not_after: SystemTime) -> Result<Issued, CertsError> {
        let mut params = CertificateParams::new(vec![name.to_string()])
            .map_err(|source| CertsError::BadName { name: name.to_string(), source })?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "herd");
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // Every server both accepts links (TLS server) and dials them (TLS client) with the same certificate.
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, not_before, not_after);
        let key = KeyPair::generate().map_err(rcgen_err("cannot generate a key"))?;
        let cert =
            params.signed_by(&key, &self.issuer).map_err(rcgen_err(format!("cannot sign {name}'s certificate")))?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

/// The first certificate of a PEM file.
pub fn read_cert(file: &Path) -> Result<CertificateDer<'static>, CertsError> {
    let pem = fs::read(file).map_err(|source| CertsError::Read { path: file.to_path_buf(), source })?;
    CertificateDer::from_pem_slice(&pem).map_err(|source| CertsError::BadPem { path: file.to_path_buf(), source })
}

/// The `map_err` of an rcgen step, named as the message names it.
fn rcgen_err(doing: impl Into<String>) -> impl FnOnce(rcgen::Error) -> CertsError {
    let doing = doing.into();
    move |source| CertsError::Rcgen { doing, source }
}

/// Whether `cert` chains to `ca`, is valid at `now`, may authenticate both ends of a TLS connection,
/// and names `name`: what a neighbour will check when it links with this server.
pub fn check_certificate(
    ca: &CertificateDer<'_>,
    cert: &CertificateDer<'_>,
    name: &str,
    now: UnixTime,
) -> Result<(), webpki::Error> {
    let anchor = webpki::anchor_from_trusted_cert(ca)?;
    let ee = webpki::EndEntityCert::try_from(cert)?;
    for usage in [webpki::KeyUsage::server_auth(), webpki::KeyUsage::client_auth()] {
        ee.verify_for_usage(webpki::ALL_VERIFICATION_ALGS, std::slice::from_ref(&anchor), &[], now, usage, None, None)?;
    }
    let server_name = ServerName::try_from(name).map_err(|_| webpki::Error::MalformedDnsIdentifier)?;
    ee.verify_is_valid_for_subject_name(&server_name)
}

/// A short description of why a certificate check failed.
pub fn describe(e: &webpki::Error) -> String {
    match e {
        webpki::Error::CertExpired { .. } => "expired".into(),
        webpki::Error::CertNotValidYet { .. } => "not valid yet".into(),
        // Every `herd certs` CA has the same subject, so another herd's certificate finds an issuer of
        // the right name whose key does not verify its signature: signed by another CA all the same.
        webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey => "not signed by this CA".into(),
        webpki::Error::CertNotValidForName(_) => "does not name this server".into(),
        other => format!("{other:?}"),
    }
}

/// What one run did, one line per file, for the operator.
#[derive(Debug, Default)]
pub struct Report {
    pub lines: Vec<String>,
    /// Certificates kept although they would be refused (expired, another CA, wrong name).
    pub warnings: Vec<String>,
}

/// Makes sure `layout` holds a CA and a certificate for every server of `config`, following `opts`.
pub fn run(config: &Config, layout: &Layout, opts: Options) -> Result<Report, CertsError> {
    for (index, s) in config.servers.iter().enumerate() {
        if !crate::config::is_dns_label(&s.name) {
            return Err(CertsError::NotDnsLabel { index, name: s.name.clone() });
        }
    }
    if opts.days == 0 {
        return Err(CertsError::ZeroDays);
    }
    fs::create_dir_all(&layout.dir).map_err(|source| CertsError::CreateDir { dir: layout.dir.clone(), source })?;
    if let Some(dir) = layout.ca_cert.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|source| CertsError::CreateDir { dir: dir.to_path_buf(), source })?;
    }
    let mut report = Report::default();

    // Which server pairs need issuing; the CA key is read only if one does.
    let ca_exists = layout.ca_cert.exists() || layout.ca_key.exists();
    let new_ca = opts.force || !ca_exists;
    if new_ca && !opts.force {
        // Server files without their CA were issued by a CA that is gone (or kept elsewhere): a new CA
        // would have to replace them, and existing files are replaced only when asked.
        if let Some(s) = config.servers.iter().find(|s| layout.cert(&s.name).exists() || layout.key(&s.name).exists()) {
            return Err(CertsError::CaMissing { ca: layout.ca_cert.clone(), cert: layout.cert(&s.name) });
        }
    }
    let mut todo = Vec::new();
    let existing_ca = if new_ca { None } else { Some(read_cert(&layout.ca_cert)?) };
    for s in &config.servers {
        let (cert, key) = (layout.cert(&s.name), layout.key(&s.name));
        let present = cert.exists() && key.exists();
        if new_ca || opts.renew || !present {
            todo.push(s.name.as_str());
            continue;
        }
        let ca = existing_ca.as_ref().expect("read above");
        let checked = match read_cert(&cert) {
            Ok(c) => check_certificate(ca, &c, &s.name, UnixTime::now()).map_err(|e| describe(&e)),
            Err(e) => Err(e.to_string()),
        };
        match checked {
            Ok(()) => report.lines.push(format!("{}: kept", cert.display())),
            Err(why) => {
                report.lines.push(format!("{}: kept", cert.display()));
                report.warnings.push(format!(
                    "{}: {why}; neighbours will refuse it (`herd certs --renew` re-issues it)",
                    cert.display()
                ));
            }
        }
        tighten_key_mode(&key)?;
    }

    let ca = if new_ca {
        let (ca, cert_pem, key_pem) = HerdCa::create(CA_DAYS.max(opts.days))?;
        // Key first: a CA file is never on disk without its key.
        write_atomically(&layout.ca_key, key_pem.as_bytes(), 0o600).map_err(CertsError::Write)?;
        write_atomically(&layout.ca_cert, cert_pem.as_bytes(), 0o644).map_err(CertsError::Write)?;
        report.lines.push(format!(
            "{}: new herd CA (key {}, mode 0600), valid {} days",
            layout.ca_cert.display(),
            layout.ca_key.display(),
            CA_DAYS.max(opts.days)
        ));
        Some(ca)
    } else if todo.is_empty() {
        report.lines.insert(0, format!("{}: kept", layout.ca_cert.display()));
        None
    } else {
        let ca = HerdCa::load(&layout.ca_cert, &layout.ca_key).map_err(|e| CertsError::CaUnusable(Box::new(e)))?;
        tighten_key_mode(&layout.ca_key)?;
        report.lines.insert(0, format!("{}: kept", layout.ca_cert.display()));
        Some(ca)
    };

    if let Some(ca) = ca {
        let now = SystemTime::now();
        for name in todo {
            let issued = ca.issue(name, now - BACKDATE, now + DAY * opts.days)?;
            write_atomically(&layout.key(name), issued.key_pem.as_bytes(), 0o600).map_err(CertsError::Write)?;
            write_atomically(&layout.cert(name), issued.cert_pem.as_bytes(), 0o644).map_err(CertsError::Write)?;
            report.lines.push(format!(
                "{}: issued for {name}, valid {} days (key {}, mode 0600)",
                layout.cert(name).display(),
                opts.days,
                layout.key(name).display()
            ));
        }
    }
    Ok(report)
}

/// A private key readable by others is made 0600 (it may have been copied in with a loose umask).
fn tighten_key_mode(key: &Path) -> Result<(), CertsError> {
    use std::os::unix::fs::PermissionsExt;
    let failed = |chmod| move |source| CertsError::KeyMode { path: key.to_path_buf(), chmod, source };
    let mode = fs::metadata(key).map_err(failed(false))?.permissions().mode();
    if mode & 0o077 != 0 {
        fs::set_permissions(key, fs::Permissions::from_mode(0o600)).map_err(failed(true))?;
    }
    Ok(())
}

const USAGE: &str = "usage: herd certs [--config FILE] [--out DIR] [--renew] [--force] [--days N]
  writes DIR/ca.pem + DIR/ca.key (the herd CA) and DIR/NAME.pem + DIR/NAME.key for every server of FILE;
  keeps existing files; --renew re-issues every server certificate with the existing CA; --force starts
  over with a new CA; --days: validity of server certificates (default 365). Without --out: the files the
  config's peer_tls names.";

/// `herd certs ...`; returns the exit status.
pub fn cli(args: &[String]) -> i32 {
    let mut config_path = PathBuf::from(crate::config::DEFAULT_PATH);
    let mut out: Option<PathBuf> = None;
    let mut opts = Options::default();
    let mut it = args.iter();
    let usage = |msg: &str| {
        eprintln!("herd certs: {msg}\n{USAGE}");
        2
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--config" | "-c" => match it.next() {
                Some(v) => config_path = v.into(),
                None => return usage("--config needs a FILE"),
            },
            "--out" => match it.next() {
                Some(v) => out = Some(v.into()),
                None => return usage("--out needs a DIR"),
            },
            "--days" => match it.next().and_then(|v| v.parse::<u32>().ok()).filter(|d| (1..=36_500).contains(d)) {
                Some(d) => opts.days = d,
                None => return usage("--days needs a number of days from 1 to 36500"),
            },
            "--force" => opts.force = true,
            "--renew" => opts.renew = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return 0;
            }
            other => return usage(&format!("unknown argument {other:?}")),
        }
    }
    let config = match Config::load(&config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("herd: {e}");
            return 2;
        }
    };
    let layout = match (&out, &config.peer_tls) {
        (Some(dir), _) => Layout::in_dir(dir),
        (None, Some(tls)) => Layout::of_config(tls),
        (None, None) => return usage("--out DIR is needed: the config has no peer_tls"),
    };
    match run(&config, &layout, opts) {
        Ok(report) => {
            for line in &report.lines {
                println!("{line}");
            }
            for w in &report.warnings {
                eprintln!("herd certs: warning: {w}");
            }
            0
        }
        Err(e) => {
            eprintln!("herd certs: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tempdir(tag: &str) -> PathBuf {
        let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos();
        let dir = std::env::temp_dir().join(format!("herd-peer-certs-{tag}-{}-{nanos}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn config(names: &[&str]) -> Config {
        let servers: Vec<String> = names
            .iter()
            .enumerate()
            .map(|(i, n)| format!(r#"{{"name": "{n}", "port": {}, "peer_port": {}}}"#, 31000 + i, 32000 + i))
            .collect();
        Config::parse(Path::new("t.json"), &format!(r#"{{"servers": [{}]}}"#, servers.join(","))).unwrap()
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    fn check(dir: &Path, name: &str, as_name: &str) -> Result<(), webpki::Error> {
        let l = Layout::in_dir(dir);
        check_certificate(&read_cert(&l.ca_cert).unwrap(), &read_cert(&l.cert(name)).unwrap(), as_name, UnixTime::now())
    }

    #[test]
    fn writes_a_ca_and_a_certificate_naming_each_server_with_private_keys() {
        let dir = tempdir("fresh");
        let names = ["Bailey", "Bona", "Campbell", "Clark", "Jaquez"];
        let report = run(&config(&names), &Layout::in_dir(&dir), Options::default()).unwrap();
        assert!(report.warnings.is_empty());
        assert_eq!(report.lines.len(), 1 + names.len());
        assert_eq!(mode(&dir.join("ca.key")), 0o600);
        for n in names {
            assert_eq!(mode(&dir.join(format!("{n}.key"))), 0o600, "{n}");
            // The SAN names the server, read back by webpki; case does not matter to DNS names.
            check(&dir, n, n).unwrap();
            check(&dir, n, &n.to_ascii_lowercase()).unwrap();
        }
        // ...and only that server.
        assert!(matches!(check(&dir, "Clark", "Bona"), Err(webpki::Error::CertNotValidForName(_))));
        // Keys are PEM private keys, distinct per server.
        let a = fs::read_to_string(dir.join("Bailey.key")).unwrap();
        assert!(a.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert_ne!(a, fs::read_to_string(dir.join("Bona.key")).unwrap());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn keeps_existing_files_unless_forced_and_adds_missing_servers() {
        let dir = tempdir("keep");
        let l = Layout::in_dir(&dir);
        run(&config(&["A", "B"]), &l, Options::default()).unwrap();
        let snapshot = |names: &[&str]| -> Vec<Vec<u8>> {
            let mut files = vec![fs::read(&l.ca_cert).unwrap(), fs::read(&l.ca_key).unwrap()];
            for n in names {
                files.push(fs::read(l.cert(n)).unwrap());
                files.push(fs::read(l.key(n)).unwrap());
            }
            files
        };
        let first = snapshot(&["A", "B"]);

        // Again, with a server added: A, B and the CA unchanged; C signed by the same CA.
        let report = run(&config(&["A", "B", "C"]), &l, Options::default()).unwrap();
        assert!(report.lines.iter().filter(|l| l.ends_with(": kept")).count() == 3, "{:?}", report.lines);
        assert_eq!(snapshot(&["A", "B"]), first);
        check(&dir, "C", "C").unwrap();

        // --force: a new CA, new certificates, which the old CA does not sign.
        let old_ca = read_cert(&l.ca_cert).unwrap();
        run(&config(&["A", "B", "C"]), &l, Options { force: true, ..Options::default() }).unwrap();
        assert_ne!(snapshot(&["A", "B"])[0], first[0]);
        check(&dir, "A", "A").unwrap();
        let a = read_cert(&l.cert("A")).unwrap();
        let refused = check_certificate(&old_ca, &a, "A", UnixTime::now()).unwrap_err();
        assert_eq!(describe(&refused), "not signed by this CA");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn renew_reissues_server_certificates_and_keeps_the_ca() {
        let dir = tempdir("renew");
        let l = Layout::in_dir(&dir);
        run(&config(&["A", "B"]), &l, Options::default()).unwrap();
        let (ca, ca_key, a, a_key) = (
            fs::read(&l.ca_cert).unwrap(),
            fs::read(&l.ca_key).unwrap(),
            fs::read(l.cert("A")).unwrap(),
            fs::read(l.key("A")).unwrap(),
        );
        let report = run(&config(&["A", "B"]), &l, Options { renew: true, days: 30, force: false }).unwrap();
        assert!(report.lines[0].ends_with(": kept"), "{:?}", report.lines);
        assert_eq!(fs::read(&l.ca_cert).unwrap(), ca);
        assert_eq!(fs::read(&l.ca_key).unwrap(), ca_key);
        assert_ne!(fs::read(l.cert("A")).unwrap(), a);
        assert_ne!(fs::read(l.key("A")).unwrap(), a_key, "renewal rotates the key too");
        check(&dir, "A", "A").unwrap();
        assert_eq!(mode(&l.key("A")), 0o600);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn days_bound_the_validity() {
        let dir = tempdir("days");
        let l = Layout::in_dir(&dir);
        run(&config(&["A"]), &l, Options { days: 2, ..Options::default() }).unwrap();
        let (ca, a) = (read_cert(&l.ca_cert).unwrap(), read_cert(&l.cert("A")).unwrap());
        let at = |d: Duration| {
            UnixTime::since_unix_epoch(SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap() + d)
        };
        check_certificate(&ca, &a, "A", at(DAY)).unwrap();
        assert!(matches!(check_certificate(&ca, &a, "A", at(DAY * 3)), Err(webpki::Error::CertExpired { .. })));
        // The CA itself outlives its certificates: a renewed one in 3 years still verifies.
        let ca_obj = HerdCa::load(&l.ca_cert, &l.ca_key).unwrap();
        let later = SystemTime::now() + DAY * 3 * 365;
        let c = ca_obj.issue("A", later, later + DAY).unwrap();
        let c = CertificateDer::from_pem_slice(c.cert_pem.as_bytes()).unwrap();
        check_certificate(&ca, &c, "A", at(DAY * 3 * 365 + Duration::from_secs(60))).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_kept_certificate_that_would_be_refused_is_reported() {
        let dir = tempdir("warn");
        let l = Layout::in_dir(&dir);
        run(&config(&["A", "B"]), &l, Options::default()).unwrap();
        // B's files swapped for A's: B's certificate names A.
        fs::copy(l.cert("A"), l.cert("B")).unwrap();
        fs::copy(l.key("A"), l.key("B")).unwrap();
        let report = run(&config(&["A", "B"]), &l, Options::default()).unwrap();
        assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
        assert!(report.warnings[0].contains("does not name this server"), "{:?}", report.warnings);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_broken_ca_is_an_error_unless_forced_and_its_key_is_needed_only_to_sign() {
        let dir = tempdir("broken");
        let l = Layout::in_dir(&dir);
        run(&config(&["A"]), &l, Options::default()).unwrap();
        // The CA key kept offline: nothing to sign, nothing needed.
        let key = fs::read(&l.ca_key).unwrap();
        fs::remove_file(&l.ca_key).unwrap();
        run(&config(&["A"]), &l, Options::default()).unwrap();
        // A new server needs it.
        let err = run(&config(&["A", "B"]), &l, Options::default()).unwrap_err();
        assert!(
            matches!(&err, CertsError::CaUnusable(e) if matches!(e.as_ref(), CertsError::Read { path, .. } if *path == l.ca_key)),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(text.contains("ca.key: cannot read") && text.contains("--force"), "{text}");
        assert!(!text.contains('\n'));
        // A key of another CA is refused, not silently replaced.
        let other = tempdir("other");
        run(&config(&["A"]), &Layout::in_dir(&other), Options::default()).unwrap();
        fs::copy(other.join("ca.key"), &l.ca_key).unwrap();
        let err = run(&config(&["A", "B"]), &l, Options::default()).unwrap_err();
        assert!(
            matches!(&err, CertsError::CaUnusable(e) if matches!(e.as_ref(), CertsError::KeyMismatch { .. })),
            "{err:?}"
        );
        fs::write(&l.ca_key, key).unwrap();
        run(&config(&["A", "B"]), &l, Options::default()).unwrap();
        check(&dir, "B", "B").unwrap();
        fs::remove_dir_all(&dir).unwrap();
        fs::remove_dir_all(&other).unwrap();
    }

    #[test]
    fn server_files_without_their_ca_are_kept_unless_forced() {
        let dir = tempdir("orphans");
        let l = Layout::in_dir(&dir);
        run(&config(&["A"]), &l, Options::default()).unwrap();
        let a = fs::read(l.cert("A")).unwrap();
        fs::remove_file(&l.ca_cert).unwrap();
        fs::remove_file(&l.ca_key).unwrap();
        let err = run(&config(&["A"]), &l, Options::default()).unwrap_err();
        assert!(
            matches!(&err, CertsError::CaMissing { ca, cert } if *ca == l.ca_cert && *cert == l.cert("A")),
            "{err:?}"
        );
        assert!(err.to_string().contains("ca.pem is missing") && err.to_string().contains("--force"), "{err}");
        assert_eq!(fs::read(l.cert("A")).unwrap(), a, "kept");
        assert!(!l.ca_cert.exists());
        run(&config(&["A"]), &l, Options { force: true, ..Options::default() }).unwrap();
        check(&dir, "A", "A").unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn names_that_no_certificate_can_carry_are_refused() {
        let dir = tempdir("names");
        let err = run(&config(&["A", "b_c"]), &Layout::in_dir(&dir), Options::default()).unwrap_err();
        assert!(matches!(&err, CertsError::NotDnsLabel { index: 1, name } if name == "b_c"), "{err:?}");
        assert_eq!(
            err.to_string(),
            "servers[1].name: \"b_c\" is not a DNS label (letters, digits and '-'), so no certificate can name it"
        );
        let _ = fs::remove_dir_all(&dir);
    }
}
