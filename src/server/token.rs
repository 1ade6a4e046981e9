//! Tokens: how the loop names a socket to the kernel, and how the kernel's events name it back. A leaf.
//!
//! A connection's token carries its slab key and a generation. A slab reuses keys at once, so a key
//! alone could name a newer connection than the one an event, a timer or a queued hand-off was for; the
//! generation tells them apart (`conn::Conns` checks it on every look-up). The listeners, the signal
//! pipe and the helper threads' waker have fixed tokens at the top of the range, which no generation
//! reaches.

use mio::Token;

pub const CLIENT_LISTENER: Token = Token(usize::MAX);
pub const PEER_LISTENER: Token = Token(usize::MAX - 1);
pub const SIGNALS: Token = Token(usize::MAX - 2);
/// The Places helper threads wake the loop with this token: the resolver when it has an address, the
/// shaper when it has built an answer. One token for both; the loop takes whatever each has.
pub const WAKER: Token = Token(usize::MAX - 3);
pub const ADMIN_LISTENER: Token = Token(usize::MAX - 4);

/// The log target of the trace for learners: `RUST_LOG=herd::event_loop=trace`.
pub const TRACE: &str = "herd::event_loop";

/// A token for slab key `key` at generation `gen`: generation in the high half, key in the low half.
pub fn token(key: usize, gen: u32) -> Token {
    Token(((gen as usize) << 32) | key)
}

/// The slab key and generation a token carries.
pub fn split(t: Token) -> (usize, u32) {
    (t.0 & 0xffff_ffff, (t.0 >> 32) as u32)
}

/// A token as the trace shows it: a listener's name, or `#key.generation`.
pub struct TokenName(pub Token);

impl std::fmt::Display for TokenName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            CLIENT_LISTENER => f.write_str("client-listener"),
            PEER_LISTENER => f.write_str("peer-listener"),
            ADMIN_LISTENER => f.write_str("admin-listener"),
            SIGNALS => f.write_str("signals"),
            WAKER => f.write_str("places-waker"),
            t => {
                let (key, gen) = split(t);
                write!(f, "#{key}.{gen}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_gives_back_its_key_and_generation() {
        assert_eq!(split(token(7, 3)), (7, 3));
        assert_eq!(TokenName(token(7, 3)).to_string(), "#7.3");
        assert_eq!(TokenName(WAKER).to_string(), "places-waker");
    }
}
