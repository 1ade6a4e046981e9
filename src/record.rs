//! A client's stored record and the table of them, with newest-wins ordering (PROTOCOL section 2).
//!
//! A record is the whole `AT` line a server answered to an IAMAT, kept byte for byte so that every server
//! of the herd can hand it out unchanged. Ordering is exact and total: client time compared as decimals,
//! then (server name, location) bytewise, so every server keeps the same record whatever order updates
//! arrive in. No I/O and no clock here: the table of records, [`RecordStore`], is in `record/store/`.

use crate::protocol::{self, AtFields};
use std::cmp::Ordering;

mod arena;
mod order;
pub mod store;

pub use store::{cmp_order, Evicted, Offer, OrderPoint, RecordRef, RecordStore, Retention, StoreCounters};

/// One stored `AT` line and where its fields are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    line: Vec<u8>,
    fields: AtFields,
}

impl Record {
    /// Validates an `AT` line ending in LF and makes a record of it.
    pub fn parse(line: &[u8]) -> Option<Record> {
        let mut record = Record { line: Vec::new(), fields: protocol::parse_at(line)? };
        record.line.extend_from_slice(line);
        if record.line.last() != Some(&b'\n') {
            record.line.push(b'\n');
        }
        Some(record)
    }

    /// The whole line, final LF included.
    pub fn line(&self) -> &[u8] {
        &self.line
    }

    fn field(&self, r: (u32, u32)) -> &[u8] {
        &self.line[r.0 as usize..r.1 as usize]
    }

    pub fn server(&self) -> &[u8] {
        self.field(self.fields.server)
    }

    pub fn client_id(&self) -> &[u8] {
        self.field(self.fields.client_id)
    }

    pub fn location(&self) -> &[u8] {
        self.field(self.fields.location)
    }

    pub fn client_time(&self) -> &[u8] {
        self.field(self.fields.client_time)
    }

    /// The herd's total order on records of one client: greater is more recent.
    pub fn cmp_recency(&self, other: &Record) -> Ordering {
        RecencyKey::of(self).cmp_recency(&RecencyKey::of(other))
    }
}

/// What decides which of two records of one client is the more recent.
#[derive(Debug, Clone, Copy)]
pub struct RecencyKey<'a> {
    pub client_time: &'a [u8],
    pub server: &'a [u8],
    pub location: &'a [u8],
}

impl<'a> RecencyKey<'a> {
    pub fn of(record: &'a Record) -> Self {
        RecencyKey { client_time: record.client_time(), server: record.server(), location: record.location() }
    }

    pub fn cmp_recency(&self, other: &RecencyKey<'_>) -> Ordering {
        protocol::cmp_time(self.client_time, other.client_time)
            .then_with(|| self.server.cmp(other.server))
            .then_with(|| self.location.cmp(other.location))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(server: &str, id: &str, loc: &str, time: &str) -> Vec<u8> {
        format!("AT {server} +0.000000001 {id} {loc} {time}\n").into_bytes()
    }

    #[test]
    fn newest_wins_whatever_the_arrival_order() {
        let older = line("Bona", "c", "+1+1", "1700000300");
        let newer = line("Bona", "c", "+1+1", "1700000300.0000000001");
        for order in [[&older, &newer], [&newer, &older]] {
            let mut store = RecordStore::new();
            for l in order {
                store.offer_line(l).unwrap();
            }
            assert_eq!(store.get(b"c").unwrap().to_line(), newer);
            assert_eq!(store.len(), 1);
        }
    }

    #[test]
    fn equal_times_break_ties_by_server_then_location() {
        let a = line("Bailey", "c", "+9+9", "5.50");
        let b = line("Bona", "c", "+1+1", "5.5");
        let c = line("Bona", "c", "+2+1", "5.5000");
        let mut store = RecordStore::new();
        assert_eq!(store.offer_line(&c), Some(true));
        assert_eq!(store.offer_line(&a), Some(false));
        assert_eq!(store.offer_line(&b), Some(false));
        assert_eq!(store.get(b"c").unwrap().to_line(), c);
        assert_eq!(store.offer_line(&c), Some(false), "the same record again is not more recent");
    }

    #[test]
    fn invalid_lines_are_refused() {
        let mut store = RecordStore::new();
        assert_eq!(store.offer_line(b"AT Bona +0.000000001 c +1+1 1"), None, "no final LF");
        assert_eq!(store.offer_line(b"AT Bona 1 c +1+1 1\n"), None);
        assert!(store.is_empty());
    }

    #[test]
    fn record_accessors() {
        let l = line("Bona", "kiwi", "+1-2", "3.25");
        let r = Record::parse(&l).unwrap();
        assert_eq!(
            (r.server(), r.client_id(), r.location(), r.client_time()),
            (&b"Bona"[..], &b"kiwi"[..], &b"+1-2"[..], &b"3.25"[..])
        );
        assert_eq!(r.line(), &l[..]);
    }
}
