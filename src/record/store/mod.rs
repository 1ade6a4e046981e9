//! The record table: one record per client id, compact, bounded by a retention policy.
//!
//! # Layout
//!
//! A record lives in a *slot* (an index into `headers`) for as long as it is held. Its parts:
//!
//! * its `AT` line, once, in the [`LineArena`] (size-classed chunks; see `arena.rs`), without the `AT `
//!   and the final LF that every line has: [`RecordRef::write_line`] puts them back;
//! * a 12-byte [`Header`]: the line's chunk and length, the record's `seq` (47 bits) and whether this
//!   version was relayed in a repair (1 bit);
//! * an entry in the eviction order, an indexed min-heap (see `order.rs`): 12 bytes of entry (slot and
//!   compact time key) and 4 bytes of position;
//! * one `u32` in the index, a `hashbrown::HashTable<u32>` of slots keyed by the hash of the client id.
//!   The table holds no key: to compare ids it reads the id inside the stored line, so a client id is kept
//!   once, in its line (a `HashMap<Box<[u8]>, u32>` kept a second copy plus a 16-byte box per record).
//!
//! Memory per record, for the benchmark's records (lines of about 75 bytes, 1,000,000 clients):
//!
//! | part | bytes |
//! |---|---|
//! | line chunk (75 less "AT " and LF, rounded up to 2) | 72 |
//! | header | 12 |
//! | heap entry + position | 16 |
//! | index: 2^21 buckets of 4 bytes + 1 control byte, for 10^6 records | 10.5 |
//! | total | about 110 |
//!
//! against about 162 for redis-server holding the same keys and values (0.68x). The index's share moves
//! between 5.7 and 11.4 bytes with the table's power-of-two size (see `make_room_in_index` for how churn
//! is kept from doubling it); the rest is per record.
//!
//! Newest-wins between two records of one client, and retention's order between clients, are compared
//! through a compact 64-bit time key: see `point.rs`.
//!
//! # Retention
//!
//! [`Retention::max`] (N) and [`Retention::max_age_s`] (S), both optional:
//!
//! * When N records are held, a new client's record is stored only if it is greater than the least held
//!   (the heap's root), which is evicted. The greatest record ever evicted for space is remembered, and a new
//!   client's record at or below it is refused even when the table is no longer full, so a client evicted for
//!   space cannot come back with data older than what the table has already given up. Every record held is
//!   greater than that bound (evictions take the least; later records must beat it), so the held set is
//!   exactly the N greatest of the newest records per client, whatever the order of arrival: two servers
//!   that saw the same updates hold the same set.
//! * A record whose client time is more than S seconds before the server's clock is refused on arrival
//!   ([`Offer::RefusedOld`]) and dropped by [`RecordStore::sweep`], which takes the least records while they
//!   are that old, at most `budget` of them per call, so the caller bounds the work per loop turn.
//!
//! Every step is O(log n) (heap) or O(1) expected (index, arena); nothing scans the table per insert.
//!
//! # Cursors and sequence numbers
//!
//! A slot cursor ([`RecordStore::next_from`]) walks live slots in slot order. A record keeps its slot while
//! it lives (replacement is in place), so a walk visits every record held throughout it exactly once,
//! whatever is evicted meanwhile; a slot freed by eviction and taken by a new record may be visited with
//! the new record or not, and the new record is flooded live anyway.
//!
//! Every record stored gets the next value of the store's `seq` counter (from 1; 0 means nothing), kept in
//! its header: [`RecordStore::next_since`] walks records stored after a given seq (a slot scan).
//!
//! # Parts
//!
//! * this file: [`Retention`], the per-slot header and [`RecordStore`] itself (offer, eviction, sweep,
//!   cursors);
//! * `refs.rs`: what the store hands out: [`RecordRef`], [`Offer`], [`Evicted`], [`StoreCounters`];
//! * `point.rs`: the time key and retention's order: [`time_key`], [`cmp_order`], [`OrderPoint`];
//! * `text.rs`: reading the fields of a stored line.

use super::arena::{LineArena, MAX_LEN, MIN_LEN};
use super::order::{Entry, OrderHeap};
use crate::protocol::{self, AtFields, Timestamp};
use hashbrown::HashTable;
use std::cmp::Ordering;
use std::hash::{BuildHasher, RandomState};

mod point;
mod refs;
mod text;

pub use point::{cmp_order, time_key, OrderPoint};
pub use refs::{Evicted, Offer, RecordRef, StoreCounters};

use point::{cmp_time_keyed, SECS_BITS};
use text::{fields_in, id_in, time_in};

/// How many records a store keeps, and for how long. `None` means unbounded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// At most this many records (N).
    pub max: Option<usize>,
    /// Records whose client time is more than this many seconds before the clock are dropped (S).
    pub max_age_s: Option<u64>,
}

/// Per-slot header: where the line is and the record's seq. A free slot has `len == 0` and `chunk` holds
/// the next free slot. Three `u32`-aligned words: 12 bytes, where a `u64` seq field would pad it to 16.
#[derive(Debug, Clone, Copy)]
struct Header {
    chunk: u32,
    len: u16,
    seq_hi: u16,
    seq_lo: u32,
}

impl Header {
    fn seq(&self) -> u64 {
        u64::from(self.seq_hi & !RELAYED) << 32 | u64::from(self.seq_lo)
    }

    fn is_live(&self) -> bool {
        self.len != 0
    }
}

/// Sequence numbers are 47 bits: 2^47 stores is 44 years at 100,000 stores per second. The header's
/// 48th bit says that this version of the record was relayed in a repair ([`RecordStore::relay_once`]).
const SEQ_LIMIT: u64 = 1 << 47;
const RELAYED: u16 = 1 << 15;
/// End of the free-slot list.
const NO_SLOT: u32 = u32::MAX;

/// The record table. See the module documentation.
pub struct RecordStore {
    headers: Vec<Header>,
    /// Head of the free-slot list.
    free_slot: u32,
    live: usize,
    arena: LineArena,
    index: HashTable<u32>,
    /// SipHash with a per-process random key: client ids come from the network, so the index must not
    /// let anyone choose colliding ids.
    hasher: RandomState,
    /// The index's capacity when it was last built or grown (its capacity with no tombstones).
    index_full: usize,
    order: OrderHeap,
    retention: Retention,
    seq: u64,
    /// The greatest record ever evicted for space.
    evicted_max: Option<Bound>,
    counters: StoreCounters,
}

/// A (client time, client id) kept after its record is gone.
#[derive(Debug, Clone)]
struct Bound {
    key: u64,
    time: Vec<u8>,
    id: Vec<u8>,
}

impl Default for RecordStore {
    fn default() -> Self {
        Self::with_retention(Retention::default())
    }
}

impl RecordStore {
    /// An unbounded store.
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_retention(retention: Retention) -> Self {
        RecordStore {
            headers: Vec::new(),
            free_slot: NO_SLOT,
            live: 0,
            arena: LineArena::default(),
            index: HashTable::new(),
            hasher: RandomState::new(),
            index_full: 0,
            order: OrderHeap::default(),
            retention,
            seq: 0,
            evicted_max: None,
            counters: StoreCounters::default(),
        }
    }

    pub fn retention(&self) -> Retention {
        self.retention
    }

    /// Records held.
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    pub fn counters(&self) -> &StoreCounters {
        &self.counters
    }

    /// The greatest seq given to a record so far (0: none).
    pub fn max_seq(&self) -> u64 {
        self.seq
    }

    /// Bytes the store has allocated: line pages, headers, heap and index (capacities, not lengths).
    pub fn bytes(&self) -> usize {
        self.arena.page_bytes()
            + self.headers.capacity() * size_of::<Header>()
            + self.order.bytes()
            + self.index.allocation_size()
    }

    /// Bytes of the lines held, exactly (no rounding, no free chunks).
    pub fn line_bytes(&self) -> usize {
        self.arena.line_bytes()
    }

    /// Slots ever used: cursors run from 0 to this.
    pub fn slots(&self) -> u32 {
        self.headers.len() as u32
    }

    /// The record held for `client_id`.
    pub fn get(&self, client_id: &[u8]) -> Option<RecordRef<'_>> {
        let hash = self.hasher.hash_one(client_id);
        let slot = *self.index.find(hash, |&s| id_in(self.line(s)) == client_id)?;
        Some(self.record(slot))
    }

    /// The least record held (by client time, then client id): the next to go when the table is full.
    pub fn least(&self) -> Option<RecordRef<'_>> {
        self.order.peek().map(|e| self.record(e.slot))
    }

    /// What this store states in a handshake as `least=`: its least record, only while it is full (then a
    /// new client's record at or below it would be refused at once; while there is room, none would).
    pub fn least_when_full(&self) -> Option<OrderPoint> {
        let max = self.retention.max?;
        if self.live < max {
            return None;
        }
        self.least().map(|r| OrderPoint::of(&r))
    }

    /// The first record at slot `cursor` or after, and the cursor that follows it.
    pub fn next_from(&self, cursor: u32) -> Option<(u32, RecordRef<'_>)> {
        let start = (cursor as usize).min(self.headers.len());
        let i = self.headers[start..].iter().position(Header::is_live)? + start;
        Some((i as u32 + 1, self.record(i as u32)))
    }

    /// The first record at slot `cursor` or after whose seq is greater than `after`, and the next cursor.
    pub fn next_since(&self, cursor: u32, after: u64) -> Option<(u32, RecordRef<'_>)> {
        let start = (cursor as usize).min(self.headers.len());
        let i = self.headers[start..].iter().position(|h| h.is_live() && h.seq() > after)? + start;
        Some((i as u32 + 1, self.record(i as u32)))
    }

    /// Every record, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = RecordRef<'_>> {
        let mut cursor = 0;
        std::iter::from_fn(move || {
            let (next, r) = self.next_from(cursor)?;
            cursor = next;
            Some(r)
        })
    }

    /// Offers a validated `AT` line (final LF included) whose fields are `fields`, at server time `now`.
    pub fn offer(&mut self, line: &[u8], fields: AtFields, now: Timestamp) -> Offer {
        self.offer_at(line, fields, now, None)
    }

    /// Offers a record replayed from a journal with the seq it was stored with; the counter resumes after
    /// the greatest seq seen. The same rules apply as for [`offer`](Self::offer).
    pub fn offer_with_seq(&mut self, line: &[u8], fields: AtFields, now: Timestamp, seq: u64) -> Offer {
        self.offer_at(line, fields, now, Some(seq))
    }

    /// Makes room for `additional` more records without growing the index on the way (a journal replay
    /// knows about how many are coming; each growth rehashes every id, which dominated a replay).
    pub fn reserve(&mut self, additional: usize) {
        self.headers.reserve(additional);
        let (headers, arena, hasher) = (&self.headers, &self.arena, &self.hasher);
        self.index.reserve(additional, |&s| hasher.hash_one(id_in(line_of(headers, arena, s))));
        self.index_full = self.index_full.max(self.index.capacity());
    }

    /// After a journal replay: the next seq given is greater than `seq` (a journal resumes past the greatest
    /// seq it replayed after an unclean stop; see `server::journal`).
    pub fn resume_seq_after(&mut self, seq: u64) {
        assert!(seq < SEQ_LIMIT, "sequence numbers are 47 bits");
        self.seq = self.seq.max(seq);
    }

    /// Offers a line that still has to be validated. `None` when it is not a valid `AT` line; otherwise
    /// whether it was stored. No clock: `max_age_s` refuses nothing here (tests and benchmarks).
    pub fn offer_line(&mut self, line: &[u8]) -> Option<bool> {
        let fields = protocol::parse_at(line)?;
        (line.last() == Some(&b'\n')).then(|| self.offer(line, fields, EPOCH).is_stored())
    }

    fn offer_at(&mut self, line: &[u8], fields: AtFields, now: Timestamp, given_seq: Option<u64>) -> Offer {
        let body = match line.strip_prefix(b"AT ").and_then(|l| l.strip_suffix(b"\n")) {
            Some(body) if (MIN_LEN..=MAX_LEN).contains(&body.len()) => body,
            _ => {
                self.counters.invalid += 1;
                return Offer::Invalid;
            }
        };
        let field = |r: (u32, u32)| &line[r.0 as usize..r.1 as usize];
        let (id, time) = (field(fields.client_id), field(fields.client_time));
        debug_assert_eq!(id_in(body), id, "fields must be the line's own");
        debug_assert_eq!(time_in(body), time, "fields must be the line's own");
        let key = time_key(time);
        if self.age_limit(now).is_some_and(|limit| key < limit) {
            self.counters.refused_old += 1;
            return Offer::RefusedOld;
        }
        let hash = self.hasher.hash_one(id);
        if let Some(&slot) = self.index.find(hash, |&s| id_in(self.line(s)) == id) {
            // The keys nearly always decide; the held line's fields are found only on a tie.
            let held_key = self.order.key_of(slot);
            let newer = key.cmp(&held_key).then_with(|| {
                let held = self.record(slot);
                cmp_time_keyed(key, time, held_key, held.client_time())
                    .then_with(|| field(fields.server).cmp(held.server()))
                    .then_with(|| field(fields.location).cmp(held.location()))
            });
            if newer != Ordering::Greater {
                self.counters.not_newer += 1;
                return Offer::NotNewer;
            }
            let seq = self.next_seq(given_seq);
            let h = self.headers[slot as usize];
            let chunk = self.arena.replace(h.chunk, usize::from(h.len), body);
            self.headers[slot as usize] = header(chunk, body.len(), seq);
            self.order.update(slot, key, |a, b| order_cmp(&self.headers, &self.arena, a, b));
            self.counters.stored += 1;
            return Offer::Stored { seq };
        }
        if let Some(max) = self.retention.max {
            if let Some(bound) = &self.evicted_max {
                if cmp_time_keyed(key, time, bound.key, &bound.time).then_with(|| id.cmp(&bound.id))
                    != Ordering::Greater
                {
                    self.counters.refused_below_evicted += 1;
                    return Offer::RefusedBelowEvicted;
                }
            }
            if self.live >= max {
                let least = self.order.peek().filter(|least| {
                    let l = self.line(least.slot);
                    cmp_time_keyed(key, time, least.key(), time_in(l)).then_with(|| id.cmp(id_in(l)))
                        == Ordering::Greater
                });
                let Some(least) = least else {
                    self.counters.refused_full += 1;
                    return Offer::RefusedFull;
                };
                self.evict(least.slot, Evicted::Full);
            }
        }
        let seq = self.next_seq(given_seq);
        let chunk = self.arena.alloc(body);
        let slot = self.take_slot(header(chunk, body.len(), seq));
        if self.index.len() == self.index.capacity() {
            self.make_room_in_index();
        }
        let (headers, arena, hasher) = (&self.headers, &self.arena, &self.hasher);
        self.index.insert_unique(hash, slot, |&s| hasher.hash_one(id_in(line_of(headers, arena, s))));
        self.index_full = self.index_full.max(self.index.capacity());
        self.order.push(slot, key, |a, b| order_cmp(&self.headers, &self.arena, a, b));
        self.live += 1;
        self.counters.stored += 1;
        Offer::Stored { seq }
    }

    /// Drops records older than `max_age_s` at `now`, oldest first, at most `budget` of them; returns how
    /// many. Call again (next loop turn) while it returns `budget`.
    pub fn sweep(&mut self, now: Timestamp, budget: usize) -> usize {
        let Some(limit) = self.age_limit(now) else { return 0 };
        let mut dropped = 0;
        while dropped < budget {
            match self.order.peek() {
                Some(least) if least.key() < limit => self.evict(least.slot, Evicted::Age),
                _ => break,
            }
            dropped += 1;
        }
        dropped
    }

    /// Whether [`sweep`](Self::sweep) at `now` would drop anything.
    pub fn sweep_due(&self, now: Timestamp) -> bool {
        match (self.age_limit(now), self.order.peek()) {
            (Some(limit), Some(least)) => least.key() < limit,
            _ => false,
        }
    }

    /// How long from `now` until [`sweep`](Self::sweep) has something to drop (zero: now), or `None` when
    /// nothing ever will (no `max_age_s`, or no record). Read from the least record's time key, so it is
    /// at most a nanosecond early for times with more than nine fraction digits: the sweep then finds
    /// nothing yet and the caller asks again.
    pub fn sweep_due_in(&self, now: Timestamp) -> Option<std::time::Duration> {
        let max_age = self.retention.max_age_s?;
        let key = self.order.peek()?.key();
        if key == u64::MAX {
            return None; // past the year 2242
        }
        let (secs, nanos) = (key >> 31, (key >> 1) & ((1 << 30) - 1));
        // Old once now - max_age passes the time: at time + max_age (+1 ns when the time had more digits).
        let due = std::time::Duration::new(secs + max_age, nanos as u32) + std::time::Duration::from_nanos(key & 1);
        let now = std::time::Duration::new(now.secs, now.nanos);
        Some(due.saturating_sub(now))
    }

    /// The key below which a client time is too old at `now`, when `max_age_s` is set.
    fn age_limit(&self, now: Timestamp) -> Option<u64> {
        let secs = now.secs.checked_sub(self.retention.max_age_s?)?;
        // A clock past the key's range (the year 2242) cannot say what is old: nothing is.
        (secs < 1 << SECS_BITS).then(|| secs << 31 | u64::from(now.nanos) << 1)
    }

    fn evict(&mut self, slot: u32, why: Evicted) {
        let line = line_of(&self.headers, &self.arena, slot);
        let id = id_in(line);
        match why {
            Evicted::Full => {
                let bound = self.evicted_max.get_or_insert_with(|| Bound { key: 0, time: Vec::new(), id: Vec::new() });
                bound.key = self.order.key_of(slot);
                bound.time.clear();
                bound.time.extend_from_slice(time_in(line));
                bound.id.clear();
                bound.id.extend_from_slice(id);
                self.counters.evicted_full += 1;
            }
            Evicted::Age => self.counters.evicted_age += 1,
        }
        let hash = self.hasher.hash_one(id);
        let entry = self.index.find_entry(hash, |&s| s == slot).expect("a live slot is indexed");
        entry.remove();
        self.order.remove(slot, |a, b| order_cmp(&self.headers, &self.arena, a, b));
        let h = self.headers[slot as usize];
        self.arena.free(h.chunk, usize::from(h.len));
        self.headers[slot as usize] = Header { chunk: self.free_slot, len: 0, seq_hi: 0, seq_lo: 0 };
        self.free_slot = slot;
        self.live -= 1;
    }

    /// The index is out of room. Under churn (an eviction and an insert per new client) a `HashTable`
    /// runs out of room without holding more entries: a removed entry often leaves a tombstone, which
    /// keeps its bucket from counting as room. hashbrown then rehashes in place only when at most half
    /// full and doubles otherwise, so a table of 10^6 records in 2^21 buckets (55% full) would double
    /// although it holds no more. Rebuilding at the same size instead, whenever the live entries fill at
    /// most three quarters of it, keeps the index at its high-water mark; the rebuild costs one hash per
    /// entry, and at least a quarter of the capacity is inserted between two rebuilds.
    fn make_room_in_index(&mut self) {
        if (self.index.len() + 1) * 4 > self.index_full * 3 {
            return; // genuinely full: let it grow
        }
        let mut fresh = HashTable::with_capacity(self.index_full);
        let (headers, arena, hasher) = (&self.headers, &self.arena, &self.hasher);
        let hash = |&s: &u32| hasher.hash_one(id_in(line_of(headers, arena, s)));
        for s in self.index.drain() {
            fresh.insert_unique(hash(&s), s, hash);
        }
        self.index = fresh;
        self.index_full = self.index.capacity();
    }

    fn take_slot(&mut self, h: Header) -> u32 {
        if self.free_slot == NO_SLOT {
            assert!(self.headers.len() < NO_SLOT as usize, "at most 2^32 - 1 records");
            self.headers.push(h);
            return (self.headers.len() - 1) as u32;
        }
        let slot = self.free_slot;
        self.free_slot = self.headers[slot as usize].chunk;
        self.headers[slot as usize] = h;
        slot
    }

    fn next_seq(&mut self, given: Option<u64>) -> u64 {
        let seq = match given {
            Some(s) => {
                self.seq = self.seq.max(s);
                s
            }
            None => {
                self.seq += 1;
                self.seq
            }
        };
        assert!(seq < SEQ_LIMIT, "sequence numbers are 47 bits");
        seq
    }

    /// A repair copy of `line` (an `AT` line) arrived, or is about to be sent: true the first time for
    /// the version held, which is then marked relayed (the mark goes with the version: a newer one starts
    /// unmarked). False when the held record is another version, or this one was relayed already, or
    /// none is held. This is how each server passes each repair record on once without a table of its
    /// own (see `route::Mode::Repair`).
    pub fn relay_once(&mut self, line: &[u8]) -> bool {
        let Some(body) = line.strip_prefix(b"AT ").and_then(|l| l.strip_suffix(b"\n")) else { return false };
        if !(MIN_LEN..=MAX_LEN).contains(&body.len()) || memchr::memchr_iter(b' ', body).count() != 4 {
            return false;
        }
        let id = id_in(body);
        let hash = self.hasher.hash_one(id);
        let Some(&slot) = self.index.find(hash, |&s| id_in(self.line(s)) == id) else { return false };
        let h = &mut self.headers[slot as usize];
        if h.seq_hi & RELAYED != 0 || self.arena.get(h.chunk, usize::from(h.len)) != body {
            return false;
        }
        h.seq_hi |= RELAYED;
        true
    }

    /// A repair's notice named `client_id`'s record of `client_time`: true the first time, if the version
    /// held has that client time, which is then marked relayed as [`relay_once`](Self::relay_once) marks
    /// it. False when another version is held (an older one: the record itself is on its way by another
    /// path; a newer one: that version's own travels reach the same servers), or none, or it was relayed.
    pub fn relay_notice(&mut self, client_id: &[u8], client_time: &[u8]) -> bool {
        let hash = self.hasher.hash_one(client_id);
        let Some(&slot) = self.index.find(hash, |&s| id_in(self.line(s)) == client_id) else { return false };
        if self.headers[slot as usize].seq_hi & RELAYED != 0 || self.record(slot).client_time() != client_time {
            return false;
        }
        self.headers[slot as usize].seq_hi |= RELAYED;
        true
    }

    /// The stored text of `slot`'s record (its line without `AT ` and LF).
    #[inline]
    fn line(&self, slot: u32) -> &[u8] {
        line_of(&self.headers, &self.arena, slot)
    }

    fn record(&self, slot: u32) -> RecordRef<'_> {
        let body = self.line(slot);
        RecordRef { body, fields: fields_in(body), seq: self.headers[slot as usize].seq(), slot }
    }
}

const EPOCH: Timestamp = Timestamp { secs: 0, nanos: 0 };

fn header(chunk: u32, len: usize, seq: u64) -> Header {
    Header { chunk, len: len as u16, seq_hi: (seq >> 32) as u16, seq_lo: seq as u32 }
}

#[inline]
fn line_of<'a>(headers: &[Header], arena: &'a LineArena, slot: u32) -> &'a [u8] {
    let h = headers[slot as usize];
    arena.get(h.chunk, usize::from(h.len))
}

/// Retention's order on two heap entries: time key, then (on a tie that the key cannot settle) the client
/// times' text, then client ids bytewise, read from the stored lines.
fn order_cmp(headers: &[Header], arena: &LineArena, a: Entry, b: Entry) -> Ordering {
    a.key().cmp(&b.key()).then_with(|| {
        let (la, lb) = (line_of(headers, arena, a.slot), line_of(headers, arena, b.slot));
        let times = if a.key() & 1 == 1 { protocol::cmp_time(time_in(la), time_in(lb)) } else { Ordering::Equal };
        times.then_with(|| id_in(la).cmp(id_in(lb)))
    })
}

#[cfg(test)]
mod tests;
