//! A client's stored record and the table of them, with newest-wins ordering (PROTOCOL section 2).
//!
//! A record is the whole `AT` line a server answered to an IAMAT, kept byte for byte so that every server
//! of the herd can hand it out unchanged. Ordering is exact and total: client time compared as decimals,
//! then (server name, location) bytewise, so every server keeps the same record whatever order updates
//! arrive in. No I/O and no clock here.

use crate::protocol::{self, AtFields};
use std::cmp::Ordering;
use std::collections::HashMap;

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

/// The record table: one record per client id, in insertion order so that a sync can walk it with a
/// plain index while the table keeps changing (records are replaced in place and never removed).
///
/// Every record stored gets the next value of the table's sequence counter (`seq`, from 1; 0 means
/// nothing), kept beside it: the journal writes it, and a neighbour catching up asks for the records
/// stored after a seq ([`next_since`](Self::next_since)). (The compact store of issue 14 keeps the same
/// numbers in its record headers.)
#[derive(Default)]
pub struct RecordStore {
    records: Vec<Record>,
    /// `seqs[i]`: the seq at which `records[i]` was last stored.
    seqs: Vec<u64>,
    seq: u64,
    index: HashMap<Box<[u8]>, u32>,
}

impl RecordStore {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn get(&self, client_id: &[u8]) -> Option<&Record> {
        self.index.get(client_id).map(|&i| &self.records[i as usize])
    }

    /// The record at position `i` of insertion order (for anti-entropy cursors).
    pub fn at(&self, i: usize) -> Option<&Record> {
        self.records.get(i)
    }

    /// Offers a validated `AT` line (final LF included) whose fields are `fields`. Stores it when it is more
    /// recent than the record held for its client, reusing that record's buffer, and returns whether it
    /// was stored.
    pub fn offer(&mut self, line: &[u8], fields: AtFields) -> bool {
        self.store(line, fields, None).is_some()
    }

    /// Like [`offer`](Self::offer), and returns the seq the record was stored with.
    pub fn offer_seq(&mut self, line: &[u8], fields: AtFields) -> Option<u64> {
        self.store(line, fields, None)
    }

    /// Offers a record replayed from a journal with the seq it was stored with; the counter resumes after
    /// the greatest seq seen. Whether it was stored.
    pub fn offer_with_seq(&mut self, line: &[u8], fields: AtFields, seq: u64) -> bool {
        self.store(line, fields, Some(seq)).is_some()
    }

    /// The greatest seq given so far (0: none).
    pub fn max_seq(&self) -> u64 {
        self.seq
    }

    /// After a journal replay: the next seq given is greater than `seq` (a journal resumes past the
    /// greatest seq it replayed after an unclean stop; see `server::journal`).
    pub fn resume_seq_after(&mut self, seq: u64) {
        self.seq = self.seq.max(seq);
    }

    /// Makes room for `additional` more records (a journal replay knows about how many are coming; each
    /// growth of the index on the way rehashes every id).
    pub fn reserve(&mut self, additional: usize) {
        self.records.reserve(additional);
        self.seqs.reserve(additional);
        self.index.reserve(additional);
    }

    /// The seq of the record at position `i`.
    pub fn seq_at(&self, i: usize) -> Option<u64> {
        self.seqs.get(i).copied()
    }

    /// The first record at position `cursor` or after that was stored after seq `after`, its position,
    /// and its seq (a scan of the seqs: catch-up by delta).
    pub fn next_since(&self, cursor: usize, after: u64) -> Option<(usize, &Record, u64)> {
        let i = cursor + self.seqs.get(cursor..)?.iter().position(|&s| s > after)?;
        Some((i, &self.records[i], self.seqs[i]))
    }

    fn next_seq(&mut self, given: Option<u64>) -> u64 {
        match given {
            Some(s) => {
                self.seq = self.seq.max(s);
                s
            }
            None => {
                self.seq += 1;
                self.seq
            }
        }
    }

    fn store(&mut self, line: &[u8], fields: AtFields, given: Option<u64>) -> Option<u64> {
        let candidate = |r: (u32, u32)| &line[r.0 as usize..r.1 as usize];
        let key = RecencyKey {
            client_time: candidate(fields.client_time),
            server: candidate(fields.server),
            location: candidate(fields.location),
        };
        let id = candidate(fields.client_id);
        match self.index.get(id) {
            Some(&i) => {
                if key.cmp_recency(&RecencyKey::of(&self.records[i as usize])) != Ordering::Greater {
                    return None;
                }
                let seq = self.next_seq(given);
                let held = &mut self.records[i as usize];
                held.line.clear();
                held.line.extend_from_slice(line);
                held.fields = fields;
                self.seqs[i as usize] = seq;
                Some(seq)
            }
            None => {
                let seq = self.next_seq(given);
                self.index.insert(id.into(), self.records.len() as u32);
                self.records.push(Record { line: line.to_vec(), fields });
                self.seqs.push(seq);
                Some(seq)
            }
        }
    }

    /// Offers a line that still has to be validated (from a peer). `None` when it is not a valid `AT` line.
    pub fn offer_line(&mut self, line: &[u8]) -> Option<bool> {
        let fields = protocol::parse_at(line)?;
        (line.last() == Some(&b'\n')).then(|| self.offer(line, fields))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Record> {
        self.records.iter()
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
            assert_eq!(store.get(b"c").unwrap().line(), &newer[..]);
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
        assert_eq!(store.get(b"c").unwrap().line(), &c[..]);
        assert_eq!(store.offer_line(&c), Some(false), "the same record again is not more recent");
    }

    #[test]
    fn every_store_takes_the_next_seq_and_a_delta_walk_finds_what_changed() {
        let mut store = RecordStore::new();
        let a1 = line("Bona", "a", "+1+1", "1");
        let b1 = line("Bona", "b", "+1+1", "1");
        let a2 = line("Bona", "a", "+1+1", "2");
        let fields = |l: &[u8]| protocol::parse_at(l).unwrap();
        assert_eq!(store.offer_seq(&a1, fields(&a1)), Some(1));
        assert_eq!(store.offer_seq(&b1, fields(&b1)), Some(2));
        assert_eq!(store.offer_seq(&a1, fields(&a1)), None, "not newer: no seq");
        assert_eq!(store.offer_seq(&a2, fields(&a2)), Some(3), "replaced in place, with a new seq");
        assert_eq!((store.max_seq(), store.seq_at(0), store.seq_at(1)), (3, Some(3), Some(2)));
        // Stored after seq 2: only a's new line, at position 0.
        let (i, r, seq) = store.next_since(0, 2).unwrap();
        assert_eq!((i, r.line(), seq), (0, &a2[..], 3));
        assert!(store.next_since(1, 2).is_none());
        assert_eq!(store.next_since(0, 0).map(|(i, ..)| i), Some(0));
        assert!(store.next_since(5, 0).is_none());
        // Replay: given seqs, and the counter resumes past them (or past a skip).
        let mut replayed = RecordStore::new();
        assert!(replayed.offer_with_seq(&b1, fields(&b1), 2));
        assert!(replayed.offer_with_seq(&a2, fields(&a2), 3));
        replayed.resume_seq_after(10);
        let c = line("Bona", "c", "+1+1", "1");
        assert_eq!(replayed.offer_seq(&c, fields(&c)), Some(11));
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
