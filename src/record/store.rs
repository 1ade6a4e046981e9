//! The record table: one record per client id, compact, bounded by a retention policy.
//!
//! # Layout
//!
//! A record lives in a *slot* (an index into `headers`) for as long as it is held. Its parts:
//!
//! * its `AT` line, once, in the [`LineArena`] (size-classed chunks; see `arena.rs`), without the `AT `
//!   and the final LF that every line has: [`RecordRef::write_line`] puts them back;
//! * a 12-byte [`Header`]: the line's chunk and length, and the record's `seq` (48 bits);
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
//! # Ordering
//!
//! Newest-wins between two records of one client is [`RecencyKey`](super::RecencyKey)'s order: client time,
//! then server name, then location. Retention orders records of *different* clients by (client time,
//! client id bytewise). Client times are decimals of any length, so both orders first compare a compact
//! 64-bit key ([`time_key`]): whole seconds (33 bits, good until the year 2242), the first nine fraction
//! digits (30 bits), and one bit saying whether digits past the ninth are non-zero. The key is monotone in
//! the exact time, so different keys decide at once; equal keys are equal times unless the low bit is set
//! (both times go past nanoseconds, or are past 2242), and only then are the texts compared.
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

use super::arena::{LineArena, MAX_LEN, MIN_LEN};
use super::order::{Entry, OrderHeap};
use super::{RecencyKey, Record};
use crate::protocol::{self, AtFields, Timestamp};
use hashbrown::HashTable;
use memchr::{memchr, memrchr};
use std::cmp::Ordering;
use std::hash::{BuildHasher, RandomState};

/// How many records a store keeps, and for how long. `None` means unbounded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// At most this many records (N).
    pub max: Option<usize>,
    /// Records whose client time is more than this many seconds before the clock are dropped (S).
    pub max_age_s: Option<u64>,
}

/// What became of an offered record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Stored with this sequence number: flood it.
    Stored { seq: u64 },
    /// The record held for this client is at least as recent.
    NotNewer,
    /// A new client while the table is full, and not greater than the least record held.
    RefusedFull,
    /// A new client at or below the greatest record ever evicted for space.
    RefusedBelowEvicted,
    /// Older than `max_age_s` on arrival: answered, neither stored nor flooded.
    RefusedOld,
    /// Not a line the store can hold: not `AT ` .. LF, or longer than the arena's chunks. (Lines that obey
    /// the protocol's field limits never are.)
    Invalid,
}

impl Offer {
    pub fn is_stored(&self) -> bool {
        matches!(self, Offer::Stored { .. })
    }
}

/// Why a record left the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evicted {
    /// The table was full and a greater record of a new client came.
    Full,
    /// Its client time became more than `max_age_s` old.
    Age,
}

/// What the store did, counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreCounters {
    pub stored: u64,
    pub not_newer: u64,
    pub refused_full: u64,
    pub refused_below_evicted: u64,
    pub refused_old: u64,
    pub invalid: u64,
    pub evicted_full: u64,
    pub evicted_age: u64,
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
        u64::from(self.seq_hi) << 32 | u64::from(self.seq_lo)
    }

    fn is_live(&self) -> bool {
        self.len != 0
    }
}

/// Sequence numbers are 48 bits: 2^48 stores is 89 years at 100,000 stores per second.
const SEQ_LIMIT: u64 = 1 << 48;
/// End of the free-slot list.
const NO_SLOT: u32 = u32::MAX;

/// A record as a reader sees it: its line, fields, seq and slot, borrowed from the store.
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    /// The stored text: the line without its leading `AT ` and its final LF.
    body: &'a [u8],
    /// Field ranges inside `body`.
    fields: AtFields,
    seq: u64,
    slot: u32,
}

impl<'a> RecordRef<'a> {
    /// Appends the whole line, `AT ` to the final LF.
    pub fn write_line(&self, out: &mut Vec<u8>) {
        out.reserve(self.line_len());
        out.extend_from_slice(b"AT ");
        out.extend_from_slice(self.body);
        out.push(b'\n');
    }

    /// The whole line, final LF included, in a new vector.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = Vec::new();
        self.write_line(&mut line);
        line
    }

    /// The length of the whole line, final LF included.
    pub fn line_len(&self) -> usize {
        self.body.len() + 4
    }

    /// The line as stored: without its leading `AT ` and its final LF.
    pub fn body(&self) -> &'a [u8] {
        self.body
    }

    /// The fields, as ranges into the whole line (as [`protocol::parse_at`] gives them).
    pub fn fields(&self) -> AtFields {
        let shift = |r: (u32, u32)| (r.0 + 3, r.1 + 3);
        let f = self.fields;
        AtFields {
            server: shift(f.server),
            client_id: shift(f.client_id),
            location: shift(f.location),
            client_time: shift(f.client_time),
        }
    }

    fn field(&self, r: (u32, u32)) -> &'a [u8] {
        &self.body[r.0 as usize..r.1 as usize]
    }

    pub fn server(&self) -> &'a [u8] {
        self.field(self.fields.server)
    }

    pub fn client_id(&self) -> &'a [u8] {
        self.field(self.fields.client_id)
    }

    pub fn location(&self) -> &'a [u8] {
        self.field(self.fields.location)
    }

    pub fn client_time(&self) -> &'a [u8] {
        self.field(self.fields.client_time)
    }

    /// The sequence number it was stored with.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The slot it lives in (a cursor position).
    pub fn slot(&self) -> u32 {
        self.slot
    }

    pub fn recency_key(&self) -> RecencyKey<'a> {
        RecencyKey { client_time: self.client_time(), server: self.server(), location: self.location() }
    }

    /// Newest-wins order against another record of the same client.
    pub fn cmp_recency(&self, other: &Record) -> Ordering {
        self.recency_key().cmp_recency(&RecencyKey::of(other))
    }

    /// An owned copy.
    pub fn to_record(&self) -> Record {
        Record::parse(&self.to_line()).expect("a stored line is valid")
    }
}

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
        assert!(seq < SEQ_LIMIT, "sequence numbers are 48 bits");
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
            let held = self.record(slot);
            let newer = cmp_time_keyed(key, time, self.order.key_of(slot), held.client_time())
                .then_with(|| field(fields.server).cmp(held.server()))
                .then_with(|| field(fields.location).cmp(held.location()));
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
        assert!(seq < SEQ_LIMIT, "sequence numbers are 48 bits");
        seq
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

/// Compares two client times given with their keys: the keys decide unless equal and inexact.
#[inline]
fn cmp_time_keyed(ka: u64, ta: &[u8], kb: u64, tb: &[u8]) -> Ordering {
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

const SECS_BITS: u32 = 33;

/// The compact key of a client time (DIGITS or DIGITS.DIGITS): `secs << 31 | nanos << 1 | inexact`, where
/// `inexact` says that fraction digits past the ninth are not all zero. Times of 2^33 seconds or more
/// (the year 2242) all get `u64::MAX`. Monotone: a greater time never gets a smaller key; equal keys with
/// the low bit clear are equal times.
pub fn time_key(time: &[u8]) -> u64 {
    let Some(d) = protocol::parse_decimal(time) else { return 0 };
    let zeros = d.int.iter().take_while(|&&b| b == b'0').count();
    let int = &d.int[zeros..];
    if int.len() > 10 {
        return u64::MAX;
    }
    let secs = int.iter().fold(0u64, |v, &b| v * 10 + u64::from(b - b'0'));
    if secs >= 1 << SECS_BITS {
        return u64::MAX;
    }
    let mut nanos = 0u64;
    for i in 0..9 {
        nanos = nanos * 10 + d.frac.get(i).map_or(0, |&b| u64::from(b - b'0'));
    }
    let inexact = d.frac.iter().skip(9).any(|&b| b != b'0');
    secs << 31 | nanos << 1 | u64::from(inexact)
}

// A stored text is an `AT` line without its `AT ` and its LF: `server time-diff id location time`, five
// fields between single spaces (validated before it was stored).

/// The client id of a stored text: its third field.
#[inline]
fn id_in(body: &[u8]) -> &[u8] {
    let mut start = 0;
    for _ in 0..2 {
        start += memchr(b' ', &body[start..]).expect("a stored line has six fields") + 1;
    }
    let end = start + memchr(b' ', &body[start..]).expect("a stored line has six fields");
    &body[start..end]
}

/// The client time of a stored text: its last field.
#[inline]
fn time_in(body: &[u8]) -> &[u8] {
    &body[memrchr(b' ', body).expect("a stored line has six fields") + 1..]
}

/// The fields of a stored text, as ranges into it.
fn fields_in(body: &[u8]) -> AtFields {
    let mut spaces = [0u32; 4];
    let mut at = 0;
    for s in &mut spaces {
        at += memchr(b' ', &body[at..]).expect("a stored line has six fields");
        *s = at as u32;
        at += 1;
    }
    AtFields {
        server: (0, spaces[0]),
        client_id: (spaces[1] + 1, spaces[2]),
        location: (spaces[2] + 1, spaces[3]),
        client_time: (spaces[3] + 1, body.len() as u32),
    }
}

#[cfg(test)]
mod tests;
