//! Retention's order and the compact time key the store compares first.
//!
//! # Ordering
//!
//! Newest-wins between two records of one client is [`RecencyKey`](crate::record::RecencyKey)'s order: client time,
//! then server name, then location. Retention orders records of *different* clients by (client time,
//! client id bytewise). Client times are decimals of any length, so both orders first compare a compact
//! 64-bit key ([`time_key`]): whole seconds (33 bits, good until the year 2242), the first nine fraction
//! digits (30 bits), and one bit saying whether digits past the ninth are non-zero. The key is monotone in
//! the exact time, so different keys decide at once; equal keys are equal times unless the low bit is set
//! (both times go past nanoseconds, or are past 2242), and only then are the texts compared.
//!
//! [`OrderPoint`] is a place in that order as a full peer states it in the handshake (`least=`).

use super::RecordRef;
use crate::protocol;
use memchr::memchr;
use std::cmp::Ordering;

/// Compares two client times given with their keys: the keys decide unless equal and inexact.
#[inline]
pub(super) fn cmp_time_keyed(ka: u64, ta: &[u8], kb: u64, tb: &[u8]) -> Ordering {
    ka.cmp(&kb).then_with(|| if ka & 1 == 1 { protocol::cmp_time(ta, tb) } else { Ordering::Equal })
}

/// Retention's order on (client time, client id), for records that are not in a store (a peer's `least=`).
pub fn cmp_order(a_time: &[u8], a_id: &[u8], b_time: &[u8], b_id: &[u8]) -> Ordering {
    protocol::cmp_time(a_time, b_time).then_with(|| a_id.cmp(b_id))
}

/// A place in retention's order, (client time, client id), as a full peer states its least record in the
/// handshake: `least=<client-time>,<client-id-hex>` (the id in hex, since an id may hold any byte but
/// whitespace, commas included). A record at or below it would be refused by that peer at once, so a
/// catch-up does not send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderPoint {
    pub time: Vec<u8>,
    pub id: Vec<u8>,
}

impl OrderPoint {
    pub fn of(r: &RecordRef<'_>) -> Self {
        OrderPoint { time: r.client_time().to_vec(), id: r.client_id().to_vec() }
    }

    /// The handshake value: `<client-time>,<client-id-hex>`.
    pub fn encode(&self) -> String {
        let mut s = String::from_utf8_lossy(&self.time).into_owned();
        s.push(',');
        for b in &self.id {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    /// Reads a handshake value; `None` unless it is a valid client time and a valid client id in hex.
    pub fn parse(value: &[u8]) -> Option<Self> {
        let comma = memchr(b',', value)?;
        let (time, hex) = (&value[..comma], &value[comma + 1..]);
        if time.len() > protocol::MAX_CLIENT_TIME || !protocol::valid_time(time) {
            return None;
        }
        if hex.is_empty() || hex.len() % 2 != 0 || hex.len() > 2 * protocol::MAX_CLIENT_ID {
            return None;
        }
        let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        let id = hex.chunks(2).map(|p| Some(digit(p[0])? << 4 | digit(p[1])?)).collect::<Option<Vec<u8>>>()?;
        Some(OrderPoint { time: time.to_vec(), id })
    }

    /// Whether `r` comes after this point (a full peer whose least record this is would take it).
    pub fn is_below(&self, r: &RecordRef<'_>) -> bool {
        cmp_order(&self.time, &self.id, r.client_time(), r.client_id()) == Ordering::Less
    }
}

pub(super) const SECS_BITS: u32 = 33;

/// The compact key of a client time (DIGITS or DIGITS.DIGITS): `secs << 31 | nanos << 1 | inexact`, where
/// `inexact` says that fraction digits past the ninth are not all zero. Times of 2^33 seconds or more
/// (the year 2242) all get `u64::MAX`. Monotone: a greater time never gets a smaller key; equal keys with
/// the low bit clear are equal times.
pub fn time_key(time: &[u8]) -> u64 {
    match protocol::TimeValue::parse(time) {
        None => 0,
        Some(t) if t.secs >= 1 << SECS_BITS => u64::MAX,
        Some(t) => t.secs << 31 | u64::from(t.nanos) << 1 | u64::from(t.beyond),
    }
}
