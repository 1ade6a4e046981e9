//! Who gets in: the per-address connection cap and the list of clients by idleness. A leaf (no sockets).
//!
//! Two attacks on `limits.max_clients` need two structures:
//!
//! - **One address opens every connection.** [`PerAddress`] counts client connections per source address
//!   (an IPv6 address per /64, the block one host is usually given, so walking the low 64 bits does not
//!   mint new identities) and refuses one past `limits.max_clients_per_ip`. Loopback addresses are
//!   exempt unless the config says otherwise: on one host every local client, tests and `herd load`
//!   included, shares 127.0.0.1, and whoever runs code on the host can already do worse.
//! - **Idle connections hold every slot.** At `max_clients`, a new client is admitted by closing the
//!   client that has been idle longest, if it has been idle more than a second. Finding it must not cost
//!   a scan of 10,000 connections per accept, so [`IdleList`] keeps clients in order of their last
//!   activity in an intrusive doubly-linked list over slab keys (memcached's LRU): touching a client
//!   moves it to the tail in O(1), the head is the idlest, and removal is O(1). The nodes live in one
//!   `Vec` indexed by slab key, so no allocation happens per touch. Like memcached
//!   (`ITEM_UPDATE_INTERVAL`), a client is moved at most once per [`BUMP_EVERY`]: the list is then in
//!   order to within that, which is far finer than the one second that matters, and a client that
//!   reads commands all the time costs one comparison per read instead of a list operation. Whoever
//!   evicts checks the client's own, exact, time of last activity.

use mio::Token;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// A client idle at least this long may be closed to admit a new one at `max_clients`: a client that
/// is merely between two commands of a conversation is never the one closed.
pub const EVICT_IDLE_AFTER: Duration = Duration::from_secs(1);

/// A client is moved to the tail of the [`IdleList`] at most this often.
pub const BUMP_EVERY: Duration = Duration::from_millis(100);

const NIL: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct Node {
    prev: u32,
    next: u32,
    linked: bool,
    token: Token,
    since: Instant,
}

/// Client connections in order of last activity (head: idle longest). Keys are slab keys, below 2^32.
#[derive(Debug, Default)]
pub struct IdleList {
    nodes: Vec<Node>,
    head: u32,
    tail: u32,
    len: usize,
}

impl IdleList {
    pub fn new() -> IdleList {
        IdleList { nodes: Vec::new(), head: NIL, tail: NIL, len: 0 }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The client in slot `key` (named `token`) was active at `now`: it becomes the most recent.
    pub fn touch(&mut self, key: usize, token: Token, now: Instant) {
        let k = u32::try_from(key).expect("slab keys fit in 32 bits");
        assert!(k != NIL, "slab key out of range");
        if key >= self.nodes.len() {
            let blank = Node { prev: NIL, next: NIL, linked: false, token, since: now };
            self.nodes.resize(key + 1, blank);
        }
        if self.nodes[key].linked {
            self.unlink(k);
        }
        let node = &mut self.nodes[key];
        *node = Node { prev: self.tail, next: NIL, linked: true, token, since: now };
        match self.tail {
            NIL => self.head = k,
            t => self.nodes[t as usize].next = k,
        }
        self.tail = k;
        self.len += 1;
    }

    /// The client in slot `key` is gone (or no longer counts as a client).
    pub fn remove(&mut self, key: usize) {
        if self.nodes.get(key).is_some_and(|n| n.linked) {
            self.unlink(key as u32);
        }
    }

    fn unlink(&mut self, k: u32) {
        let Node { prev, next, .. } = self.nodes[k as usize];
        match prev {
            NIL => self.head = next,
            p => self.nodes[p as usize].next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.nodes[n as usize].prev = prev,
        }
        let node = &mut self.nodes[k as usize];
        node.linked = false;
        node.prev = NIL;
        node.next = NIL;
        self.len -= 1;
    }

    /// Up to `n` clients from the idlest on, with the time of their last activity.
    pub fn idlest(&self, n: usize) -> impl Iterator<Item = (Token, Instant)> + '_ {
        let mut at = self.head;
        std::iter::from_fn(move || {
            if at == NIL {
                return None;
            }
            let node = &self.nodes[at as usize];
            at = node.next;
            Some((node.token, node.since))
        })
        .take(n)
    }
}

/// Client connections per source address, against `limits.max_clients_per_ip`.
#[derive(Debug)]
pub struct PerAddress {
    counts: HashMap<IpAddr, u32>,
    max: u32,
    exempt_loopback: bool,
}

impl PerAddress {
    pub fn new(max: usize, exempt_loopback: bool) -> PerAddress {
        PerAddress { counts: HashMap::new(), max: u32::try_from(max).unwrap_or(u32::MAX), exempt_loopback }
    }

    /// What an address is counted as: IPv4 as it is (an IPv4-mapped IPv6 address as its IPv4 address),
    /// IPv6 by its /64.
    pub fn bucket(ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(v4) => IpAddr::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let s = v6.segments();
                    IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
                }
            },
        }
    }

    fn exempt(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.exempt_loopback && ip.is_loopback()
    }

    /// Counts a new client from `ip`, or returns false (and counts nothing) when its address is at the cap.
    pub fn admit(&mut self, ip: IpAddr) -> bool {
        if self.exempt(ip) {
            return true;
        }
        let count = self.counts.entry(Self::bucket(ip)).or_insert(0);
        if *count >= self.max {
            return false;
        }
        *count += 1;
        true
    }

    /// A client from `ip` that `admit` counted has gone.
    pub fn release(&mut self, ip: IpAddr) {
        if self.exempt(ip) {
            return;
        }
        let bucket = Self::bucket(ip);
        if let Some(count) = self.counts.get_mut(&bucket) {
            *count -= 1;
            if *count == 0 {
                self.counts.remove(&bucket);
            }
        }
    }

    /// Clients counted for `ip`'s bucket.
    pub fn count(&self, ip: IpAddr) -> u32 {
        self.counts.get(&Self::bucket(ip)).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(list: &IdleList) -> Vec<usize> {
        list.idlest(usize::MAX).map(|(t, _)| t.0).collect()
    }

    #[test]
    fn the_idle_list_keeps_clients_in_order_of_last_activity() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut list = IdleList::new();
        for k in [3usize, 0, 7, 5] {
            list.touch(k, Token(k), at(k as u64));
        }
        assert_eq!(order(&list), [3, 0, 7, 5]);
        // Touching moves to the tail, from the head, the middle and the tail.
        list.touch(3, Token(3), at(10));
        assert_eq!(order(&list), [0, 7, 5, 3]);
        list.touch(7, Token(7), at(11));
        assert_eq!(order(&list), [0, 5, 3, 7]);
        list.touch(7, Token(7), at(12));
        assert_eq!(order(&list), [0, 5, 3, 7]);
        assert_eq!(list.idlest(1).next(), Some((Token(0), at(0))));
        // Removal from anywhere; removing twice, or something never touched, is harmless.
        list.remove(5);
        list.remove(5);
        list.remove(99);
        assert_eq!(order(&list), [0, 3, 7]);
        list.remove(0);
        list.remove(7);
        assert_eq!(order(&list), [3]);
        list.remove(3);
        assert!(list.is_empty() && order(&list).is_empty());
        // A reused slot is a new client.
        list.touch(3, Token(1 << 32 | 3), at(20));
        assert_eq!(list.idlest(1).next(), Some((Token(1 << 32 | 3), at(20))));
        assert_eq!(list.len(), 1);
    }

    /// Against a model (a vector in order of last touch), over a long pseudo-random sequence.
    #[test]
    fn the_idle_list_agrees_with_a_simple_model() {
        let t0 = Instant::now();
        let mut list = IdleList::new();
        let mut model: Vec<usize> = Vec::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for step in 0..20_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let key = (x % 64) as usize;
            if x & (1 << 40) == 0 {
                list.touch(key, Token(key), t0 + Duration::from_nanos(step));
                model.retain(|&k| k != key);
                model.push(key);
            } else {
                list.remove(key);
                model.retain(|&k| k != key);
            }
            assert_eq!(list.len(), model.len());
            if step % 97 == 0 {
                assert_eq!(order(&list), model, "step {step}");
            }
        }
    }

    #[test]
    fn addresses_are_capped_per_address_and_ipv6_per_64() {
        let mut per = PerAddress::new(2, true);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(per.admit(a) && per.admit(a));
        assert!(!per.admit(a), "the third from one address");
        assert!(per.admit(b), "another address is counted apart");
        // The same IPv4 address written as IPv4-mapped IPv6 is the same address.
        assert!(!per.admit("::ffff:192.0.2.1".parse().unwrap()));
        per.release(a);
        assert_eq!(per.count(a), 1);
        assert!(per.admit(a));
        // IPv6: one /64 is one bucket, another /64 another.
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(per.admit(v6("2001:db8:1:2::1")) && per.admit(v6("2001:db8:1:2:ffff::9")));
        assert!(!per.admit(v6("2001:db8:1:2:1234:5678:9abc:def0")));
        assert!(per.admit(v6("2001:db8:1:3::1")));
        // Released to zero, the entry is gone.
        per.release(b);
        assert_eq!(per.count(b), 0);
        assert!(!per.counts.contains_key(&b));
    }

    #[test]
    fn loopback_is_exempt_unless_the_config_says_otherwise() {
        let mut exempt = PerAddress::new(1, true);
        for ip in ["127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(exempt.admit(ip) && exempt.admit(ip), "{ip}");
            exempt.release(ip);
        }
        let mut strict = PerAddress::new(1, false);
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(strict.admit(lo));
        assert!(!strict.admit(lo));
        strict.release(lo);
        assert!(strict.admit(lo));
    }
}
