//! The simulation's events and the messages its links carry.

use crate::route::Mode;
use std::cmp::Ordering;

/// The largest frame payload: `conn/peer/frame.rs` (`MAX`); a sender starts a new frame past it.
/// The real frame bound (`conn/peer/frame.rs`).
const FRAME_MAX: usize = crate::server::conn::peer::frame::MAX;

/// An undirected link: both sockets fail and heal together. A failure bumps `epoch`, so whatever was in
/// flight (sent under the old epoch) is lost.
pub(super) struct Edge {
    pub ends: [usize; 2],
    /// The directed links `ends[0] → ends[1]` and back.
    pub links: [u32; 2],
    pub up: bool,
    pub epoch: u32,
}

/// A directed link: the connection its `from` server dialed and sends records on. The fields below
/// `pending` mirror what `conn/peer` keeps per connection (reset at every link-up); `recv_off` is what
/// the acceptor keeps across connections (`Ctx::peer_offsets`).
pub(super) struct Link {
    pub from: usize,
    pub to: usize,
    pub edge: u32,
    /// The other direction of the same edge.
    pub rev: u32,
    /// `to`'s slot in `from`'s neighbours, and `from`'s slot in `to`'s.
    pub slot_from: usize,
    pub slot_to: usize,
    pub delay: u64,
    /// Records the routes sent to this link this turn.
    pub pending: Vec<(Mode, u32)>,
    /// The catch-up to send at the end of the turn: the records stored after this seq.
    pub sync: Option<u64>,
    pub synced: bool,
    pub off_sent: u64,
    pub off_at: u64,
    pub carried: bool,
    pub recv_off: u64,
    pub ack_pending: Option<(u64, bool)>,
}

pub(super) struct Rec {
    pub line: Box<[u8]>,
    pub origin: u32,
    /// The newest IAMAT of its client: every server must end up holding it.
    pub last: bool,
}

pub(super) enum Ev {
    Iamat(u32),
    Deliver {
        link: u32,
        epoch: u32,
        msg: Msg,
    },
    Fail {
        edge: u32,
        heal_at: Option<u64>,
    },
    Detect {
        edge: u32,
        side: usize,
    },
    Heal {
        edge: u32,
    },
    LinkUp {
        link: u32,
    },
    /// Another turn of a server walking a reflood: the event loop keeps turning while one runs.
    Step(u32),
    Tick,
}

pub(super) enum Msg {
    /// What a dialer wrote in one turn: frames and `OFF` lines, in order.
    Batch(Vec<Part>),
    /// The acceptor's `ACK`, travelling back on the same connection.
    Ack { off: u64 },
}

pub(super) enum Part {
    /// Records in one frame; `sync`: of a link-up catch-up.
    Frame {
        mode: Mode,
        rids: Vec<u32>,
        sync: bool,
    },
    Off {
        off: u64,
        announce: bool,
    },
}

pub(super) struct Entry {
    pub time: u64,
    pub seq: u64,
    pub ev: Ev,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.time, self.seq) == (other.time, other.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    /// Reversed: the heap pops the earliest event, and events of one instant in the order scheduled.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.time, other.seq).cmp(&(self.time, self.seq))
    }
}

/// Appends `records` as frames: consecutive records of one mode share a frame, up to `FRAME_MAX` bytes.
pub(super) fn push_frames(parts: &mut Vec<Part>, records: impl Iterator<Item = (Mode, u32)>, sync: bool, recs: &[Rec]) {
    let mut size = 0;
    for (mode, rid) in records {
        let len = recs[rid as usize].line.len();
        match parts.last_mut() {
            Some(Part::Frame { mode: m, rids, sync: s }) if *m == mode && *s == sync && size + len <= FRAME_MAX => {
                rids.push(rid);
                size += len;
            }
            _ => {
                parts.push(Part::Frame { mode, rids: vec![rid], sync });
                size = len;
            }
        }
    }
}
