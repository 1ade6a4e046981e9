//! Peer authentication: who is at the other end of a peer link (PROTOCOL section 5). A leaf.
//!
//! Today that is the herd secret: each side of a handshake proves it holds it against a nonce the other
//! side chose, and the secret itself never travels. This is also the one place that reads and writes
//! the handshake's lines, so the peer state machine (`conn/peer/`) only decides what to do with them,
//! and a TLS identity can later replace the MACs here without touching the machine.
//!
//! ```text
//!  dialer → acceptor   HELLO <dialer> <acceptor> <nonce_d> [key=value ...]
//!  acceptor → dialer   WELCOME <acceptor> <nonce_a> <mac_a> [key=value ...]     (or REFUSED <reason>)
//!  dialer → acceptor   PROOF <mac_d>
//! ```
//!
//! The `key=value` tokens after the fixed fields are the handshake's extensions (README, "The peer
//! protocol"): `v` the protocol version, `rid`/`off` the replication id and offset of catch-up by delta.
//! They are read here, in one place ([`Ext`]); unknown keys are ignored.
//!
//! With a herd secret, `mac_a = HMAC-SHA256(secret, "herd acceptor " + dialer + " " + acceptor + " " +
//! nonce_d + " " + nonce_a)` and `mac_d` the same with `"herd dialer "`, hex-encoded; without one both
//! are `-`.

use crate::protocol::Fields;
use ring::hmac;

/// What this server proves itself with, and checks its neighbours against.
#[derive(Debug, Default)]
pub struct Auth {
    secret: Option<Secret>,
}

impl Auth {
    pub fn new(secret: Option<Secret>) -> Auth {
        Auth { secret }
    }

    /// A fresh random nonce for a handshake (hex).
    pub fn nonce(&self) -> String {
        use ring::rand::SecureRandom;
        let mut buf = [0u8; 16];
        ring::rand::SystemRandom::new().fill(&mut buf).expect("system randomness");
        hex(&buf)
    }

    /// The proof a side sends: the hex HMAC with a secret, `-` without.
    pub fn mac(&self, role: &str, dialer: &str, acceptor: &str, nonce_d: &str, nonce_a: &str) -> String {
        mac(self.secret.as_ref(), role, dialer, acceptor, nonce_d, nonce_a)
    }

    /// Checks a proof in constant time.
    pub fn verify(&self, role: &str, dialer: &str, acceptor: &str, nonce_d: &str, nonce_a: &str, given: &[u8]) -> bool {
        verify(self.secret.as_ref(), role, dialer, acceptor, nonce_d, nonce_a, given)
    }
}

/// One handshake line as it arrived (without its LF), split into its fields.
#[derive(Debug, PartialEq, Eq)]
pub enum Handshake<'a> {
    Hello {
        dialer: &'a [u8],
        acceptor: &'a [u8],
        nonce: &'a [u8],
        ext: Ext<'a>,
    },
    Welcome {
        acceptor: &'a [u8],
        nonce: &'a [u8],
        mac: &'a [u8],
        ext: Ext<'a>,
    },
    Proof {
        mac: &'a [u8],
    },
    /// `REFUSED <reason>`: the whole line is the reason shown.
    Refused,
    /// Anything else, including a known word with the wrong number of fields.
    Other,
}

pub fn parse(text: &[u8]) -> Handshake<'_> {
    let mut f = Fields::new(text);
    let fixed = (f.next(), f.next(), f.next(), f.next());
    let rest = Ext::after(f);
    match (fixed, rest) {
        ((Some(b"HELLO"), Some(dialer), Some(acceptor), Some(nonce)), Some(ext)) => {
            Handshake::Hello { dialer, acceptor, nonce, ext }
        }
        ((Some(b"WELCOME"), Some(acceptor), Some(nonce), Some(mac)), Some(ext)) => {
            Handshake::Welcome { acceptor, nonce, mac, ext }
        }
        ((Some(b"PROOF"), Some(mac), None, None), _) => Handshake::Proof { mac },
        ((Some(b"REFUSED"), ..), _) => Handshake::Refused,
        _ => Handshake::Other,
    }
}

/// The `key=value` tokens after a handshake line's fixed fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ext<'a>(&'a [u8]);

impl<'a> Ext<'a> {
    /// The tokens left in `f`, if every one is `key=value` (anything else makes the line malformed).
    fn after(f: Fields<'a>) -> Option<Ext<'a>> {
        let rest = f.clone_rest();
        Fields::new(rest).all(|t| t.iter().position(|&b| b == b'=').is_some_and(|i| i > 0)).then_some(Ext(rest))
    }

    /// The value of `key`, if present (the first one).
    pub fn get(&self, key: &str) -> Option<&'a [u8]> {
        Fields::new(self.0).find_map(|t| t.strip_prefix(key.as_bytes())?.strip_prefix(b"="))
    }

    /// The value of `key` as a number.
    pub fn number(&self, key: &str) -> Option<u64> {
        std::str::from_utf8(self.get(key)?).ok()?.parse().ok()
    }
}

/// `ext`: extension tokens (`key=value ...`), or empty.
pub fn hello(dialer: &str, acceptor: &str, nonce: &str, ext: &str) -> String {
    let sep = if ext.is_empty() { "" } else { " " };
    format!("HELLO {dialer} {acceptor} {nonce}{sep}{ext}\n")
}

pub fn welcome(acceptor: &str, nonce: &str, mac: &str, ext: &str) -> String {
    let sep = if ext.is_empty() { "" } else { " " };
    format!("WELCOME {acceptor} {nonce} {mac}{sep}{ext}\n")
}

pub fn proof(mac: &str) -> String {
    format!("PROOF {mac}\n")
}

pub fn refused(reason: &str) -> String {
    format!("REFUSED {reason}\n")
}

/// The herd secret as an HMAC key. Debug prints nothing of it.
pub struct Secret(hmac::Key);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Secret {
    /// The herd secret from the environment variable `herd_secret_env` names, if the config names one.
    /// A named variable that is unset or empty stops the start: peers would otherwise go unauthenticated.
    pub fn from_env(var: Option<&str>) -> Result<Option<Secret>, crate::server::error::ServerError> {
        let Some(var) = var else { return Ok(None) };
        match std::env::var(var) {
            Ok(v) if !v.is_empty() => Ok(Some(Secret::new(v.as_bytes()))),
            _ => Err(crate::server::error::ServerError::Secret { var: var.to_string() }),
        }
    }

    pub fn new(secret: &[u8]) -> Secret {
        Secret(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }
}

fn mac_input(role: &str, dialer: &str, acceptor: &str, nonce_d: &str, nonce_a: &str) -> String {
    format!("herd {role} {dialer} {acceptor} {nonce_d} {nonce_a}")
}

/// The proof a side sends: the hex HMAC with a secret, `-` without.
pub fn mac(secret: Option<&Secret>, role: &str, dialer: &str, acceptor: &str, nonce_d: &str, nonce_a: &str) -> String {
    match secret {
        None => "-".into(),
        Some(Secret(key)) => {
            hex(hmac::sign(key, mac_input(role, dialer, acceptor, nonce_d, nonce_a).as_bytes()).as_ref())
        }
    }
}

/// Checks a proof in constant time. Without a secret only `-` is accepted; with one, only the right MAC.
pub fn verify(
    secret: Option<&Secret>,
    role: &str,
    dialer: &str,
    acceptor: &str,
    nonce_d: &str,
    nonce_a: &str,
    given: &[u8],
) -> bool {
    match secret {
        None => given == b"-",
        Some(Secret(key)) => {
            let Some(tag) = unhex(given) else { return false };
            hmac::verify(key, mac_input(role, dialer, acceptor, nonce_d, nonce_a).as_bytes(), &tag).is_ok()
        }
    }
}

pub fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

fn unhex(text: &[u8]) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 || text.len() > 128 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    text.chunks(2).map(|p| Some(digit(p[0])? << 4 | digit(p[1])?)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_verify_only_with_the_same_secret_and_nonces() {
        let s = Secret::new(b"correct horse");
        let other = Secret::new(b"battery staple");
        let m = mac(Some(&s), "dialer", "A", "B", "n1", "n2");
        assert_eq!(m.len(), 64);
        assert!(verify(Some(&s), "dialer", "A", "B", "n1", "n2", m.as_bytes()));
        assert!(!verify(Some(&other), "dialer", "A", "B", "n1", "n2", m.as_bytes()));
        assert!(!verify(Some(&s), "acceptor", "A", "B", "n1", "n2", m.as_bytes()), "roles differ");
        assert!(!verify(Some(&s), "dialer", "A", "B", "n1", "n3", m.as_bytes()), "a replayed proof fails");
        assert!(!verify(Some(&s), "dialer", "A", "B", "n1", "n2", b"-"));
        assert!(!verify(None, "dialer", "A", "B", "n1", "n2", m.as_bytes()));
        assert!(verify(None, "dialer", "A", "B", "n1", "n2", b"-"));
        assert!(!verify(Some(&s), "dialer", "A", "B", "n1", "n2", b"zz"));
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
    }

    #[test]
    fn handshake_lines_parse_only_with_their_exact_fields() {
        assert_eq!(
            parse(hello("A", "B", "n", "").trim_end().as_bytes()),
            Handshake::Hello { dialer: b"A", acceptor: b"B", nonce: b"n", ext: Ext(b"") }
        );
        assert_eq!(parse(b"HELLO A B"), Handshake::Other);
        assert_eq!(parse(b"HELLO A B n extra"), Handshake::Other, "extensions are key=value");
        assert_eq!(parse(b"HELLO A B n =x"), Handshake::Other);
        let line = hello("A", "B", "n", "v=2 rid=ab12 off=7 new=x");
        let Handshake::Hello { ext, .. } = parse(line.trim_end().as_bytes()) else { panic!("a HELLO with extensions") };
        assert_eq!((ext.get("v"), ext.get("rid"), ext.number("off")), (Some(&b"2"[..]), Some(&b"ab12"[..]), Some(7)));
        assert_eq!((ext.get("ri"), ext.number("rid")), (None, None));
        assert_eq!(
            parse(welcome("B", "n", "-", "").trim_end().as_bytes()),
            Handshake::Welcome { acceptor: b"B", nonce: b"n", mac: b"-", ext: Ext(b"") }
        );
        assert_eq!(parse(proof("ab").trim_end().as_bytes()), Handshake::Proof { mac: b"ab" });
        assert_eq!(parse(b"PROOF a b"), Handshake::Other);
        assert_eq!(parse(refused("no").trim_end().as_bytes()), Handshake::Refused);
        assert_eq!(parse(b"AT x"), Handshake::Other);
    }
}
