//! Certificates of the local Places service (PROTOCOL section 8).
//!
//! A root CA made with rcgen: its PEM at `FILE`, its private key at `FILE.key` (mode 0600). When both
//! files exist, parse, belong together and still sign a leaf that verifies against the root, they are
//! reused, so servers that trust `FILE` keep trusting it across restarts; otherwise a new pair replaces
//! them. Each start signs a fresh leaf certificate for `localhost`, `127.0.0.1`, `::1` and the listen IP
//! (or only for `wrong.invalid` under the `wrongname` fault).

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{RootCertStore, ServerConfig};
use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The name in the leaf certificate under the `wrongname` fault.
pub const WRONG_NAME: &str = "wrong.invalid";

/// Why a certificate could not be made, stored or turned into a TLS configuration. Each displays as one
/// line, as `herd places` prints it.
#[derive(Debug)]
pub enum CertError {
    /// rcgen could not make a key or a certificate: `DOING: ERROR` (e.g. `cannot sign the leaf
    /// certificate: ...`).
    Rcgen { doing: &'static str, source: rcgen::Error },
    /// A file or directory could not be read, written or changed: `DOING PATH: ERROR` (e.g.
    /// `cannot write run/ca.pem: ...`).
    Io { doing: &'static str, path: PathBuf, source: std::io::Error },
    /// `--ca-out` names no file (it ends in `..` or is a root).
    NotAFileName { path: PathBuf },
    /// rustls refused the configuration: `TLS configuration: ERROR`.
    Tls(rustls::Error),
    /// The CA already on disk cannot be reused: `WHY` or `WHY: DETAIL`. Only logged; a new CA replaces it.
    NotReusable { why: &'static str, detail: String },
}

impl fmt::Display for CertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertError::Rcgen { doing, source } => write!(f, "{doing}: {source}"),
            CertError::Io { doing, path, source } => write!(f, "{doing} {}: {source}", path.display()),
            CertError::NotAFileName { path } => write!(f, "{} is not a file name", path.display()),
            CertError::Tls(e) => write!(f, "TLS configuration: {e}"),
            CertError::NotReusable { why, detail } if detail.is_empty() => f.write_str(why),
            CertError::NotReusable { why, detail } => write!(f, "{why}: {detail}"),
        }
    }
}

impl std::error::Error for CertError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CertError::Rcgen { source, .. } => Some(source),
            CertError::Io { source, .. } => Some(source),
            CertError::Tls(e) => Some(e),
            CertError::NotAFileName { .. } | CertError::NotReusable { .. } => None,
        }
    }
}

fn rcgen_error(doing: &'static str) -> impl FnOnce(rcgen::Error) -> CertError {
    move |source| CertError::Rcgen { doing, source }
}

fn io_error(doing: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CertError {
    let path = path.to_path_buf();
    move |source| CertError::Io { doing, path, source }
}

fn not_reusable<E: fmt::Display>(why: &'static str) -> impl FnOnce(E) -> CertError {
    move |e| CertError::NotReusable { why, detail: e.to_string() }
}

/// The root CA, ready to sign leaves.
pub struct Ca {
    pub cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    /// Whether the files already on disk were reused.
    pub reused: bool,
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// `FILE.key` beside `FILE`.
pub fn key_path(ca_out: &Path) -> PathBuf {
    let mut name = ca_out.as_os_str().to_owned();
    name.push(".key");
    PathBuf::from(name)
}

/// The CA's parameters. Reusing a CA rebuilds its issuer from these (rcgen cannot parse a certificate
/// without x509-parser), which is why a reused pair is checked by signing and verifying a leaf.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "herd");
    dn.push(DnType::CommonName, "herd local Places CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    params
}

/// Loads the CA at `ca_out` (and `ca_out.key`), or makes and writes a new one.
pub fn load_or_create_ca(ca_out: &Path) -> Result<Ca, CertError> {
    let key_file = key_path(ca_out);
    match (ca_out.exists(), key_file.exists()) {
        (true, true) => match reuse(ca_out, &key_file) {
            Ok(ca) => {
                tighten_key_mode(&key_file)?;
                return Ok(ca);
            }
            Err(why) => log::warn!("existing CA {} is not usable ({why}); making a new one", ca_out.display()),
        },
        (true, false) | (false, true) => {
            log::warn!("only one of {} and {} exists; making a new CA", ca_out.display(), key_file.display())
        }
        (false, false) => {}
    }
    create(ca_out, &key_file)
}

fn reuse(cert_file: &Path, key_file: &Path) -> Result<Ca, CertError> {
    let key_pem = fs::read_to_string(key_file).map_err(not_reusable("cannot read the key"))?;
    let key = KeyPair::from_pem(&key_pem).map_err(not_reusable("cannot parse the key"))?;
    let cert_der = CertificateDer::from_pem_file(cert_file).map_err(not_reusable("cannot parse the certificate"))?;
    let spki = key.subject_public_key_info();
    if !cert_der.windows(spki.len()).any(|w| w == spki.as_slice()) {
        return Err(CertError::NotReusable {
            why: "the key does not belong to the certificate",
            detail: String::new(),
        });
    }
    let ca = Ca { cert_der, issuer: Issuer::new(ca_params(), key), reused: true };
    // Prove that leaves signed now chain to the root on disk.
    let (leaf, _) = leaf(&ca, &["localhost".to_string()])?;
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert_der.clone()).map_err(not_reusable("not a usable root"))?;
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(not_reusable("cannot build a verifier"))?;
    let name = ServerName::try_from("localhost").expect("valid name");
    verifier
        .verify_server_cert(&leaf, &[], &name, &[], UnixTime::now())
        .map_err(not_reusable("a leaf signed with it does not verify"))?;
    Ok(ca)
}

fn create(cert_file: &Path, key_file: &Path) -> Result<Ca, CertError> {
    let key = KeyPair::generate().map_err(rcgen_error("cannot generate the CA key"))?;
    let params = ca_params();
    let cert = params.self_signed(&key).map_err(rcgen_error("cannot make the CA certificate"))?;
    if let Some(dir) = cert_file.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(io_error("cannot create", dir))?;
    }
    write_atomically(key_file, key.serialize_pem().as_bytes(), 0o600)?;
    write_atomically(cert_file, cert.pem().as_bytes(), 0o644)?;
    log::info!("created a new CA: {} (key {})", cert_file.display(), key_file.display());
    Ok(Ca { cert_der: cert.der().clone(), issuer: Issuer::new(params, key), reused: false })
}

/// Writes `bytes` to a temporary file beside `path` with `mode`, then renames it over `path`, so a
/// reader never sees half a file.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CertError> {
    let file_name = path.file_name().ok_or_else(|| CertError::NotAFileName { path: path.to_path_buf() })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let result = (|| {
        let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io_error("cannot write", path))
}

fn tighten_key_mode(key_file: &Path) -> Result<(), CertError> {
    let mode = fs::metadata(key_file).map_err(io_error("cannot read", key_file))?.permissions().mode();
    if mode & 0o077 != 0 {
        log::warn!("{} was readable by others (mode {:o}); setting 0600", key_file.display(), mode & 0o777);
        fs::set_permissions(key_file, fs::Permissions::from_mode(0o600)).map_err(io_error("cannot chmod", key_file))?;
    }
    Ok(())
}

/// The current year, near enough for validity periods.
fn this_year() -> i32 {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    1970 + (secs / 31_556_952) as i32
}

/// A fresh leaf certificate for `names` (DNS names or IP addresses), signed by the CA.
pub fn leaf(ca: &Ca, names: &[String]) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), CertError> {
    let mut params = CertificateParams::new(names.to_vec()).map_err(rcgen_error("bad certificate name"))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, names.first().map_or("localhost", String::as_str));
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let year = this_year();
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + 2, 1, 1);
    let key = KeyPair::generate().map_err(rcgen_error("cannot generate a leaf key"))?;
    let cert = params.signed_by(&key, &ca.issuer).map_err(rcgen_error("cannot sign the leaf certificate"))?;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok((cert.der().clone(), key_der))
}

/// The names of the leaf: `localhost`, `127.0.0.1`, `::1` and the listen IP unless unspecified.
pub fn leaf_names(listen: std::net::IpAddr) -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    let ip = listen.to_string();
    if !listen.is_unspecified() && !names.contains(&ip) {
        names.push(ip);
    }
    names
}

/// The rustls server configuration: ring provider, TLS 1.2 and 1.3, ALPN `http/1.1`.
pub fn server_config(ca: &Ca, names: &[String]) -> Result<Arc<ServerConfig>, CertError> {
    let (cert, key) = leaf(ca, names)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(CertError::Tls)?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .map_err(CertError::Tls)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(tag: &str) -> PathBuf {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let dir = std::env::temp_dir().join(format!("herd-certs-{tag}-{}-{nanos}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn creates_then_reuses_and_replaces_broken_files() {
        let dir = tempdir("reuse");
        let file = dir.join("nested/ca.pem");
        let first = load_or_create_ca(&file).unwrap();
        assert!(!first.reused);
        let pem = fs::read(&file).unwrap();
        let key_file = key_path(&file);
        assert_eq!(key_file, dir.join("nested/ca.pem.key"));
        assert_eq!(fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600);

        fs::set_permissions(&key_file, fs::Permissions::from_mode(0o644)).unwrap();
        let second = load_or_create_ca(&file).unwrap();
        assert!(second.reused);
        assert_eq!(fs::read(&file).unwrap(), pem);
        assert_eq!(second.cert_der, first.cert_der);
        assert_eq!(fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600);

        // A key of another CA: replaced.
        let other = dir.join("other.pem");
        load_or_create_ca(&other).unwrap();
        fs::copy(key_path(&other), &key_file).unwrap();
        let third = load_or_create_ca(&file).unwrap();
        assert!(!third.reused);
        assert_ne!(fs::read(&file).unwrap(), pem);

        // Garbage: replaced.
        fs::write(&file, "not a certificate").unwrap();
        assert!(!load_or_create_ca(&file).unwrap().reused);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unwritable_destination_is_an_error() {
        let dir = tempdir("unwritable");
        fs::create_dir_all(&dir).unwrap();
        let blocker = dir.join("file");
        fs::write(&blocker, "x").unwrap();
        let err = load_or_create_ca(&blocker.join("ca.pem")).err().unwrap();
        // The parent of ca.pem is a file: creating the directory fails, and the message says where.
        let CertError::Io { doing, path, .. } = &err else { panic!("{err:?}") };
        assert_eq!((*doing, path.as_path()), ("cannot create", blocker.as_path()));
        let line = err.to_string();
        assert!(line.starts_with(&format!("cannot create {}: ", blocker.display())), "{line}");
        assert!(!line.contains('\n'), "{line}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn leaf_names_include_the_listen_ip() {
        assert_eq!(leaf_names("127.0.0.1".parse().unwrap()).len(), 3);
        assert_eq!(leaf_names("0.0.0.0".parse().unwrap()).len(), 3);
        assert_eq!(leaf_names("10.1.2.3".parse().unwrap())[3], "10.1.2.3");
    }
}
