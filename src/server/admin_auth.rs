//! Who may ask the admin listener: the Host check and the bearer token. A leaf (no sockets).
//!
//! The admin listener binds loopback, but loopback is not a boundary against a web browser on the same
//! host: a page from anywhere can make the browser send requests to `127.0.0.1:PORT`, and with DNS
//! rebinding (its own name re-resolved to 127.0.0.1) read the answers, because to the browser it is the
//! page's own origin. Such a request always carries the page's host name in `Host`. So a request whose
//! `Host` is not `localhost`, `127.0.0.1`, `[::1]` or the configured `admin_host` (any port) is refused
//! with 403 before anything else is looked at.
//!
//! Other users of the host can reach the port directly, with any `Host` they like. Against them, when a
//! token is configured (`admin_token_env`), every request must carry `Authorization: Bearer <token>`;
//! anything else gets 401. The token is compared in constant time, so the time an answer takes says
//! nothing about how much of a guess was right.

/// What the guard decided against a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 403: the `Host` header is missing, repeated, or names a host this listener does not answer for.
    Host,
    /// 401: a token is required and the request did not carry it.
    Token,
}

impl Refusal {
    pub fn status(self) -> u16 {
        match self {
            Refusal::Host => 403,
            Refusal::Token => 401,
        }
    }
}

/// The admin listener's guard: the hosts it answers for and the token it wants, if any.
pub struct AdminGuard {
    /// `admin_host` as a `Host` header would name it: lowercased, an IPv6 address in brackets.
    admin_host: String,
    token: Option<Vec<u8>>,
}

impl std::fmt::Debug for AdminGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is never printed.
        f.debug_struct("AdminGuard")
            .field("admin_host", &self.admin_host)
            .field("token", &self.token.is_some())
            .finish()
    }
}

impl AdminGuard {
    /// `admin_host` is the configured bind address (an IP address or a name); `token` the bearer token,
    /// or `None` for no token check.
    pub fn new(admin_host: &str, token: Option<&str>) -> AdminGuard {
        let host = admin_host.trim().to_ascii_lowercase();
        let admin_host = if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host };
        AdminGuard { admin_host, token: token.map(|t| t.as_bytes().to_vec()) }
    }

    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// Checks a request's headers: the Host first (a browser's request is refused whatever else it
    /// carries), then the token.
    pub fn check(&self, headers: &[httparse::Header<'_>]) -> Result<(), Refusal> {
        let mut hosts = headers.iter().filter(|h| h.name.eq_ignore_ascii_case("host"));
        let (Some(host), None) = (hosts.next(), hosts.next()) else { return Err(Refusal::Host) };
        if !self.host_allowed(host.value) {
            return Err(Refusal::Host);
        }
        let Some(want) = &self.token else { return Ok(()) };
        let mut auths = headers.iter().filter(|h| h.name.eq_ignore_ascii_case("authorization"));
        let (Some(auth), None) = (auths.next(), auths.next()) else { return Err(Refusal::Token) };
        match bearer(auth.value) {
            Some(given) if constant_time_eq(given, want) => Ok(()),
            _ => Err(Refusal::Token),
        }
    }

    /// `Host` is `name[:port]` or `[v6][:port]`; the name must be one of the allowed ones, any port.
    fn host_allowed(&self, value: &[u8]) -> bool {
        let Ok(value) = std::str::from_utf8(value) else { return false };
        let value = value.trim().to_ascii_lowercase();
        let name = if value.starts_with('[') {
            match value.find(']') {
                Some(end) => {
                    let rest = &value[end + 1..];
                    if !(rest.is_empty() || port_ok(rest)) {
                        return false;
                    }
                    &value[..=end]
                }
                None => return false,
            }
        } else {
            match value.split_once(':') {
                Some((name, port)) if port_ok(&format!(":{port}")) => name,
                Some(_) => return false,
                None => value.as_str(),
            }
        };
        // A trailing dot names the same host (`localhost.`); a browser may send it.
        let name = name.strip_suffix('.').unwrap_or(name);
        matches!(name, "localhost" | "127.0.0.1" | "[::1]") || (!name.is_empty() && name == self.admin_host)
    }
}

/// `:` and 1 to 5 digits.
fn port_ok(s: &str) -> bool {
    let digits = &s[1..];
    s.starts_with(':') && (1..=5).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
}

/// The token of an `Authorization: Bearer <token>` value (the scheme is case-insensitive, RFC 7235).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let value = value.trim_ascii();
    let (scheme, rest) = value.split_at(value.iter().position(|&b| b == b' ')?);
    scheme.eq_ignore_ascii_case(b"bearer").then(|| rest.trim_ascii())
}

/// Equality whose time depends only on the lengths: every byte is looked at whatever differs, and the
/// accumulated difference goes through `black_box` so the compiler cannot turn the loop into an early
/// exit. The token's length is not a secret (`herd up` always makes 64 hex digits).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff = std::hint::black_box(diff | (x ^ y));
    }
    diff == 0
}

/// A new token: 32 random bytes from the system's CSPRNG, as 64 hex digits.
pub fn new_token() -> Result<String, String> {
    use ring::rand::SecureRandom;
    let mut buf = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut buf).map_err(|_| "the system's random source failed".to_string())?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes `token` to `path`, readable and writable by its owner only (0600 from the moment it exists:
/// the mode is given to `open`, never fixed afterwards), replacing an older file. The directory is
/// created 0700 if missing.
pub fn write_token_file(path: &std::path::Path, token: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    }
    // A file left by an earlier run may have other permissions: remove it rather than write into it.
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    // The umask may only take bits away; make sure of 0600 exactly.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(token.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

/// The admin listener's token: from `admin_token_env`, or `HERD_ADMIN_TOKEN` (which `herd up` sets) when
/// the config names none. A config that names a variable must have it set: the operator asked for a
/// token, and a listener without one would be open.
pub fn admin_token(
    config: &crate::config::Config,
    index: usize,
) -> Result<Option<String>, crate::server::error::ServerError> {
    let me = &config.servers[index];
    if me.admin_port.is_none() {
        return Ok(None);
    }
    let var = config.admin_token_var();
    match std::env::var(var) {
        Ok(t) if !t.is_empty() => Ok(Some(t)),
        _ if config.admin_token_env.is_some() => {
            Err(crate::server::error::ServerError::AdminToken { var: var.to_string() })
        }
        _ => {
            log::warn!("{}: the admin listener has no token ({var} is not set): Host checks only", me.name);
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(guard: &AdminGuard, headers: &[(&str, &str)]) -> Result<(), Refusal> {
        let headers: Vec<httparse::Header<'_>> =
            headers.iter().map(|(n, v)| httparse::Header { name: n, value: v.as_bytes() }).collect();
        guard.check(&headers)
    }

    #[test]
    fn the_host_must_be_loopback_or_the_admin_host_at_any_port() {
        let guard = AdminGuard::new("192.0.2.7", None);
        let table: &[(&str, bool)] = &[
            ("localhost", true),
            ("localhost:9100", true),
            ("LOCALHOST:1", true),
            ("localhost.", true),
            ("127.0.0.1", true),
            ("127.0.0.1:65535", true),
            ("[::1]", true),
            ("[::1]:8080", true),
            ("192.0.2.7:9100", true),
            ("192.0.2.7", true),
            // A rebinding page's own name, or anything else.
            ("evil.example", false),
            ("evil.example:9100", false),
            ("localhost.evil.example", false),
            ("127.0.0.1.nip.io", false),
            ("127.0.0.2", false),
            ("::1", false),
            ("[::1", false),
            ("localhost:", false),
            ("localhost:port", false),
            ("localhost:123456", false),
            ("[::1]x", false),
            ("", false),
        ];
        for (host, ok) in table {
            let got = check(&guard, &[("Host", host)]);
            assert_eq!(got.is_ok(), *ok, "Host: {host:?}");
            if !ok {
                assert_eq!(got, Err(Refusal::Host));
            }
        }
        assert_eq!(check(&guard, &[]), Err(Refusal::Host), "no Host");
        assert_eq!(check(&guard, &[("Host", "localhost"), ("host", "localhost")]), Err(Refusal::Host), "two");
        // An IPv6 admin_host is matched in brackets.
        let v6 = AdminGuard::new("2001:db8::5", None);
        assert!(check(&v6, &[("Host", "[2001:db8::5]:9100")]).is_ok());
        assert_eq!(check(&v6, &[("Host", "[2001:db8::6]")]), Err(Refusal::Host));
    }

    #[test]
    fn with_a_token_every_request_must_carry_it() {
        let token = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let guard = AdminGuard::new("127.0.0.1", Some(token));
        let bearer = format!("Bearer {token}");
        let lower = format!("bearer {token}");
        let spaced = format!("Bearer   {token}  ");
        let short = format!("Bearer {}", &token[..63]);
        let long = format!("Bearer {token}0");
        let basic = format!("Basic {token}");
        type Case<'a> = (&'a [(&'a str, &'a str)], Result<(), Refusal>);
        let table: &[Case<'_>] = &[
            (&[("Host", "localhost"), ("Authorization", &bearer)], Ok(())),
            (&[("Host", "localhost"), ("authorization", &lower)], Ok(())),
            (&[("Host", "localhost"), ("Authorization", &spaced)], Ok(())),
            (&[("Host", "localhost")], Err(Refusal::Token)),
            (&[("Host", "localhost"), ("Authorization", &short)], Err(Refusal::Token)),
            (&[("Host", "localhost"), ("Authorization", &long)], Err(Refusal::Token)),
            (&[("Host", "localhost"), ("Authorization", &basic)], Err(Refusal::Token)),
            (&[("Host", "localhost"), ("Authorization", "Bearer")], Err(Refusal::Token)),
            (&[("Host", "localhost"), ("Authorization", &bearer), ("Authorization", &bearer)], Err(Refusal::Token)),
            // The Host is checked first: a browser's request is 403 even with the right token.
            (&[("Host", "evil.example"), ("Authorization", &bearer)], Err(Refusal::Host)),
        ];
        for (headers, want) in table {
            assert_eq!(check(&guard, headers), *want, "{headers:?}");
        }
        assert_eq!(Refusal::Token.status(), 401);
        assert_eq!(Refusal::Host.status(), 403);
        assert!(!format!("{guard:?}").contains(token), "Debug never shows the token");
    }

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"bbc"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn a_token_file_is_0600_and_holds_a_fresh_token() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("herd-token-test-{}", std::process::id()));
        let path = dir.join("run").join("admin-token");
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert!(a.len() == 64 && a.bytes().all(|c| c.is_ascii_hexdigit()) && a != b);
        // A world-readable file left by someone else is replaced, not reused.
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_token_file(&path, &a).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{a}\n"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
