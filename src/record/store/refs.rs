//! What the record store hands out: a borrowed view of a held record ([`RecordRef`]), the outcome of an
//! offer ([`Offer`]), why a record left ([`Evicted`]) and the store's counters ([`StoreCounters`]).

use crate::protocol::AtFields;
use crate::record::{RecencyKey, Record};
use std::cmp::Ordering;

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

/// A record as a reader sees it: its line, fields, seq and slot, borrowed from the store.
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    /// The stored text: the line without its leading `AT ` and its final LF.
    pub(super) body: &'a [u8],
    /// Field ranges inside `body`.
    pub(super) fields: AtFields,
    pub(super) seq: u64,
    pub(super) slot: u32,
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

    /// The fields, as ranges into the whole line (as [`protocol::parse_at`](crate::protocol::parse_at) gives them).
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
