//! The answer cache: the canonical [`Key`] every spelling of one position and radius shares, and the
//! entries, bounded by bytes (`places.cache_max_bytes`) and by age (`places.cache_ttl_s`).

use super::PlacesClient;
use crate::places::{self, PlacesAnswer};
use std::time::Instant;

/// A cache key: the canonical decimals of the latitude and longitude ([`places::canonical_coordinate`])
/// and of the radius in metres ([`places::radius_metres`]), in one string (`+34.5-118 2500`: one
/// allocation per WHATSAT). `+34.0-118.0`, `+034.000-118` and `+34-118.00` are one key; the bound is not
/// part of it (one answer serves every bound).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    text: String,
    /// Where the longitude starts in `text`, and where the radius starts.
    lng_at: usize,
    metres_at: usize,
}

impl Key {
    pub fn lat(&self) -> &str {
        &self.text[..self.lng_at]
    }

    pub fn lng(&self) -> &str {
        &self.text[self.lng_at..self.metres_at - 1]
    }

    pub fn metres(&self) -> &str {
        &self.text[self.metres_at..]
    }

    /// Bytes the key holds (for the byte bounds).
    pub(super) fn size(&self) -> usize {
        std::mem::size_of::<Key>() + self.text.capacity()
    }
}

pub(super) struct CacheEntry {
    pub(super) answer: PlacesAnswer,
    pub(super) expires: Instant,
    pub(super) size: usize,
}

impl PlacesClient {
    /// The cache key of a valid location and radius (text that is not valid, which the protocol parser
    /// never lets through, is kept as it is rather than canonicalised).
    pub fn key_for(location: &[u8], radius_km: &[u8]) -> Key {
        let mut text = String::with_capacity(location.len() + radius_km.len() + 4);
        let push = |text: &mut String, b: &[u8]| {
            if !places::push_canonical_coordinate(b, text) {
                text.push_str(&String::from_utf8_lossy(b));
            }
        };
        let lng_at = match crate::protocol::parse_location(location) {
            Some(loc) => {
                push(&mut text, loc.lat);
                let at = text.len();
                push(&mut text, loc.lng);
                at
            }
            None => {
                text.push_str(&String::from_utf8_lossy(location));
                text.len()
            }
        };
        text.push(' ');
        let metres_at = text.len();
        let radius = String::from_utf8_lossy(radius_km);
        match places::radius_metres(&radius) {
            Some(m) => text.push_str(&m),
            None => text.push_str(&radius),
        }
        Key { text, lng_at, metres_at }
    }

    /// A cached answer's bytes for `bound`, if one is fresh.
    pub fn cached(&mut self, key: &Key, bound: u8, now: Instant) -> Option<&[u8]> {
        let fresh = self.cache.get(key).is_some_and(|e| e.expires > now);
        if !fresh {
            if let Some(old) = self.cache.remove(key) {
                self.cache_bytes -= old.size;
            }
            return None;
        }
        self.counters.hits += 1;
        let entry = self.cache.get_mut(key).expect("fresh");
        Some(entry.answer.body(usize::from(bound)))
    }

    pub(super) fn store(&mut self, key: Key, mut answer: PlacesAnswer, now: Instant) {
        if self.ttl.is_zero() || !answer.is_cacheable() {
            return;
        }
        // The answer's bytes plus its parsed tree, roughly: bound the cache by bytes, not entries.
        let size = answer.body(places::MAX_RESULTS).len() * 6 + key.size() + 64;
        if self.cache_bytes + size > self.cache_max_bytes {
            self.evict(now);
        }
        if self.cache_bytes + size > self.cache_max_bytes {
            return;
        }
        self.cache_bytes += size;
        if let Some(old) = self.cache.insert(key, CacheEntry { answer, expires: now + self.ttl, size }) {
            self.cache_bytes -= old.size;
        }
    }

    /// Drops expired entries, then (if still over half the budget) arbitrary ones.
    pub fn evict(&mut self, now: Instant) {
        let mut freed = 0;
        self.cache.retain(|_, e| {
            let keep = e.expires > now;
            if !keep {
                freed += e.size;
            }
            keep
        });
        self.cache_bytes -= freed;
        while self.cache_bytes > self.cache_max_bytes / 2 {
            let Some(k) = self.cache.keys().next().cloned() else { break };
            let e = self.cache.remove(&k).expect("present");
            self.cache_bytes -= e.size;
        }
    }

    pub fn cache_len(&self) -> usize {
        self.cache.len()
    }
}
