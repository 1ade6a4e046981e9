//! `Ctx`: everything a connection's handler may touch besides its own connection.
//!
//! The clock of the turn, the record table, the counters and gauges, the dirty lists of the end-of-turn
//! flush, the log, the timers, the neighbours and their links, the Places client, and the *outbox*: what
//! a handler leaves for the loop to hand to other connections right after it (records to flood, waits
//! that ended, Places answers, neighbours to dial). A connection never holds another connection: it
//! writes to `Ctx`, and the loop delivers (`handoff.rs`). That is what lets every connection be a plain
//! `&mut` in the slab, without `Rc<RefCell<…>>`.
//!
//! This file holds the data and its small accessors; the herd's rules over it are in `herd.rs`. It
//! imports no connection module, and no socket: a `Ctx` can be built in a unit test.

use super::admin_auth::AdminGuard;
use super::admission::{IdleList, PerAddress};
use super::auth::Auth;
use super::journal::Journal;
use super::log::ServerLog;
use super::peer_tls::{PeerIo, PeerTls, Refusal};
use super::places_client::PlacesClient;
use super::timer::Timers;
use crate::config::Limits;
use crate::protocol::{AtFields, Timestamp};
use crate::record::RecordStore;
use crate::route::{Mode, Routes};
use mio::Token;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Records an age sweep may drop per loop turn: a few hundred microseconds of work at most.
pub const SWEEP_BUDGET: usize = 256;
/// The age sweep looks at least this often.
pub const SWEEP_IDLE: Duration = Duration::from_secs(1);
/// Reads one connection may do per event before it yields to the others (fairness under floods):
/// 256 KiB, a few thousand pipelined commands. With 16 (1 MiB a turn), a client pouring garbage into a
/// lingering close pushed others' p99 to 4.8× its calm value in one of three runs of tests/abuse.rs;
/// with 4, 1.4-1.8×.
pub const READS_PER_TURN: usize = 4;

/// Redial delays: from the first retry to the cap, doubling, each jittered down to half.
pub const BACKOFF_FIRST: Duration = Duration::from_millis(10);
pub const BACKOFF_CAP: Duration = Duration::from_millis(250);

pub struct Ctx {
    pub name: Box<[u8]>,
    /// Monotonic time of this turn, for deadlines.
    pub now: Instant,
    /// Wall-clock time of this turn, for time differences.
    pub wall: Timestamp,
    /// The record table: connections read it through [`records`](Self::records); it is written only by
    /// `herd::store_and_flood`, through [`offer_record`](Self::offer_record). (The herd's rules read the
    /// field itself, to borrow it beside the Places client.)
    pub(super) records: RecordStore,
    pub limits: Limits,
    pub idle_timeout: Duration,
    /// How long a started line may take to finish.
    pub line_timeout: Duration,
    pub log: ServerLog,
    pub counters: Counters,
    pub gauges: Gauges,
    pub timers: Timers,
    /// Tracing for learners is on (`RUST_LOG=herd::event_loop=trace`): read once per turn, so a trace
    /// point costs one flag check when it is off.
    pub trace: bool,
    /// The server is shutting down: nothing new is accepted or dialed.
    pub stopping: bool,
    /// Connections with output to write at the end of this turn.
    pub dirty: Vec<Token>,
    /// Sending peer links with output to write at the end of this turn, written before the clients'. An
    /// accepted link goes in `dirty`, after them (see `Peer::mark_dirty`).
    pub dirty_peers: Vec<Token>,
    /// Connections that still had input when their read budget ran out: driven again next turn.
    pub again: Vec<Token>,
    /// What handlers leave for the loop to hand out right after them.
    pub outbox: Outbox,
    /// How this server proves itself to its neighbours, and checks them.
    pub auth: Auth,
    /// Mutual TLS on peer links, when the config has `peer_tls` (set by `Server::bind`).
    pub peer_tls: Option<PeerTls>,
    /// This server's neighbours, in config order.
    pub neighbours: Vec<Neighbour>,
    /// The Places client, when the config has `places`.
    pub places: Option<PlacesClient>,
    /// Client connections per source address, against `limits.max_clients_per_ip`.
    pub per_address: PerAddress,
    /// Client connections in order of last activity, to find the idlest at `max_clients`.
    pub idle_clients: IdleList,
    /// Who may ask the admin listener (Host names and the bearer token).
    pub admin_guard: AdminGuard,
    /// `/records` bytes the admin connections may still make this turn (reset every turn).
    pub admin_budget: usize,
    /// The legacy failure object served while Places is not configured.
    pub(super) places_unconfigured: Vec<u8>,
    /// The herd's own state (`herd.rs`): tickets, WHATSATs waiting for a record, jitter.
    pub(super) rng: u64,
    pub(super) next_ticket: u64,
    /// How long a WHATSAT for an unknown client waits for the herd.
    pub(super) unknown_grace: Duration,
    /// WHATSATs waiting for a record, by client id: (client connection, ticket).
    pub(super) awaiting_record: HashMap<Box<[u8]>, Vec<(Token, u64)>>,
    /// The journal (config `journal`): every record stored is appended to it (`offer_record`).
    pub journal: Option<Journal>,
    /// This server's replication id: its stream of seqs means something to a neighbour under this id
    /// only. The journal's; without a journal, a fresh one each start.
    pub rid: String,
    /// Per neighbour (by name): its replication id and the offset of its stream this server holds all
    /// of (acknowledged, and persisted in the journal's meta file).
    pub peer_offsets: HashMap<String, (String, u64)>,
    /// What the journal has made durable, and what failed to be written, as of this turn (`u64::MAX`
    /// and 0 without a journal): see `herd::journal_turn`.
    pub durable: u64,
    pub failed: u64,
    /// Connections waiting for `durable` to reach a seq: held IAMAT replies, peer acknowledgements.
    pub durable_waiters: VecDeque<(u64, Token)>,
    /// The seq of the record stored last.
    pub last_seq: u64,
    /// What the start-up replay did (for `/metrics`).
    pub replay: ReplayStats,
    /// The slot cursor of a journal rewrite walking the table, while one runs.
    pub(super) rewrite_cursor: Option<u32>,
    /// Where each origin's records go from here (`route.rs`): this server's children in every origin's
    /// shortest-path tree. Until `with_routes`, the herd's names without trees (every record floods).
    /// A record from a peer must name one of the herd's servers (`routes.origin`).
    pub routes: Routes,
    /// Records to send again as repair floods because a sending link broke before the neighbour
    /// acknowledged them (`herd::link_out_closed`), walked a step per turn.
    pub refloods: Vec<Reflood>,
}

/// A repair flood of what a broken link may have lost: every record stored after `after`, walked in
/// slot order from `cursor` (see `herd::reflood_step`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reflood {
    /// The neighbour whose link broke (it is not live, so nothing is sent to it).
    pub neighbour: usize,
    pub after: u64,
    pub cursor: u32,
}

/// A record stored and not yet handed to the peer links: how it arrived, and its bytes in
/// `Outbox::floods`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flood {
    /// The neighbour it came from (`None`: a client's IAMAT, or a reflood).
    pub from: Option<usize>,
    /// How it travels on (`route::Routes::plan`).
    pub mode: Mode,
    /// Its origin's index (the server its `AT` line names); `u32::MAX` when the routes do not know it.
    pub origin: u32,
    /// A repair of a version this server held before this turn (a repair's notice or a second copy, or
    /// a reflood), not one it has just stored: its tree neighbours hold it too (see `herd::route_floods`).
    pub held: bool,
    pub start: u32,
    pub end: u32,
}

/// One record for one neighbour, as the routes decided (`herd::route_floods`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Send {
    pub neighbour: u32,
    pub mode: Mode,
    pub start: u32,
    pub end: u32,
}

/// The journal replay at start-up.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReplayStats {
    pub seconds: f64,
    pub entries: u64,
    pub cut_bytes: u64,
}

/// What handlers leave for others: the loop empties it after every handler (`handoff.rs`), so all of
/// it happens in the same turn, and no connection ever reaches into another.
#[derive(Default)]
pub struct Outbox {
    /// Records stored and not yet handed to the peer links: the bytes, and for each record where it
    /// came from, how it travels on and its range in the bytes.
    pub floods: Vec<u8>,
    pub flood_marks: Vec<Flood>,
    /// WHATSATs whose awaited record arrived from the herd: (client, ticket).
    pub records_arrived: Vec<(Token, u64)>,
    /// Places answers for clients: (client, ticket, JSON bytes).
    pub places_replies: Vec<(Token, u64, Vec<u8>)>,
    /// Neighbours to dial at once (they just dialed us while our link to them was down).
    pub dial_now: Vec<usize>,
}

impl Outbox {
    pub fn is_empty(&self) -> bool {
        self.flood_marks.is_empty()
            && self.records_arrived.is_empty()
            && self.places_replies.is_empty()
            && self.dial_now.is_empty()
    }
}

/// A neighbour and the state of our sending link to it.
pub struct Neighbour {
    pub name: String,
    pub addr: SocketAddr,
    pub link: OutLink,
    /// The current redial delay (doubling, capped, jittered).
    pub(super) backoff: Duration,
    /// Identified links from this neighbour (normally 0 or 1).
    pub links_in: usize,
    /// The offset of this server's stream the neighbour last acknowledged (`ACK` lines).
    pub acked: u64,
    /// The greatest seq when our link to it last went live: what was stored before went by the sync or
    /// by flooding; what came after, in tree mode too, is sent again if the link breaks unacknowledged.
    pub live_seq: u64,
}

impl Neighbour {
    pub fn new(name: String, addr: SocketAddr) -> Neighbour {
        Neighbour { name, addr, link: OutLink::Backoff, backoff: BACKOFF_FIRST, links_in: 0, acked: 0, live_seq: 0 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutLink {
    /// Waiting for the redial timer.
    Backoff,
    /// Connecting or handshaking on this token.
    Dialing(Token),
    /// Live: records go out on this token.
    Live(Token),
}

/// Connections open now, by kind (for `/metrics` and the client limit).
#[derive(Debug, Default, Clone, Copy)]
pub struct Gauges {
    pub clients: usize,
    pub peers: usize,
    pub admins: usize,
    /// IAMAT replies held until their record is durable (`journal.fsync` = `always`).
    pub replies_waiting_fsync: usize,
    /// Every connection in the loop's slab.
    pub connections: usize,
}

impl Ctx {
    /// A seed for the redial jitter (xorshift: not for secrets; nonces come from the system each time).
    pub fn random_seed() -> Result<u64, crate::server::error::ServerError> {
        use ring::rand::SecureRandom;
        let mut b = [0u8; 8];
        ring::rand::SystemRandom::new().fill(&mut b).map_err(|_| crate::server::error::ServerError::NoRandomness)?;
        Ok(u64::from_le_bytes(b))
    }

    /// A context with an empty record table, at the present time. `herd` names every server of the
    /// config; `seed` seeds the redial jitter.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: &str,
        herd: &[&str],
        limits: &Limits,
        log: ServerLog,
        auth: Auth,
        neighbours: Vec<Neighbour>,
        places: Option<PlacesClient>,
        seed: u64,
    ) -> Ctx {
        let mut unconfigured = crate::places::Failure::NotConfigured.answer();
        Ctx {
            name: name.as_bytes().into(),
            now: Instant::now(),
            wall: Timestamp::from_system_time(std::time::SystemTime::now()),
            records: RecordStore::new(),
            limits: limits.clone(),
            idle_timeout: Duration::from_millis(limits.idle_timeout_ms),
            line_timeout: Duration::from_millis(limits.line_timeout_ms),
            log,
            counters: Counters::default(),
            gauges: Gauges::default(),
            timers: Timers::default(),
            trace: false,
            stopping: false,
            dirty: Vec::new(),
            dirty_peers: Vec::new(),
            again: Vec::new(),
            outbox: Outbox::default(),
            auth,
            peer_tls: None,
            neighbours,
            places,
            per_address: PerAddress::new(limits.max_clients_per_ip, limits.per_ip_exempt_loopback),
            idle_clients: IdleList::new(),
            admin_guard: AdminGuard::new("127.0.0.1", None),
            admin_budget: 0,
            places_unconfigured: unconfigured.body(0).to_vec(),
            rng: seed | 1,
            next_ticket: 0,
            unknown_grace: Duration::from_millis(limits.unknown_client_grace_ms),
            awaiting_record: HashMap::new(),
            journal: None,
            rid: super::journal::new_rid(),
            peer_offsets: HashMap::new(),
            durable: u64::MAX,
            failed: 0,
            durable_waiters: VecDeque::new(),
            last_seq: 0,
            replay: ReplayStats::default(),
            rewrite_cursor: None,
            routes: Routes::flooding(herd),
            refloods: Vec::new(),
        }
    }

    /// The same context with the routes of the herd's graph (`route.rs`); without them every record
    /// floods.
    pub fn with_routes(mut self, routes: Routes) -> Ctx {
        self.routes = routes;
        self
    }

    /// The same context with a record table that keeps records as `retention` says (`records` in the
    /// config); `new` makes an unbounded one.
    pub fn with_retention(mut self, retention: crate::record::Retention) -> Ctx {
        self.records = RecordStore::with_retention(retention);
        self
    }

    /// Drops the records that `records.max_age_s` says are too old, at most [`SWEEP_BUDGET`] of them,
    /// and says when to sweep next: at once (next turn) when the budget ran out, when the least record
    /// turns too old otherwise, and at least every [`SWEEP_IDLE`] (records keep arriving). `None` without
    /// `max_age_s`.
    pub fn sweep_records(&mut self) -> Option<Instant> {
        self.records.retention().max_age_s?;
        let dropped = self.records.sweep(self.wall, SWEEP_BUDGET);
        if dropped > 0 {
            let held = self.records.len();
            self.log.event(format_args!("records: {dropped} too old dropped, {held} held"));
        }
        let wait = if dropped == SWEEP_BUDGET {
            Duration::from_millis(1)
        } else {
            self.records.sweep_due_in(self.wall).map_or(SWEEP_IDLE, |d| d.min(SWEEP_IDLE))
        };
        Some(self.now + wait)
    }

    /// The record table, read-only: WHATSAT answers, the anti-entropy sync, `/records`.
    /// A peer refused, for `reason`: counted (`herd_peers_refused_total{reason=...}`); the caller logs it.
    pub fn refused(&mut self, reason: Refusal) {
        self.counters.peers_refused += 1;
        self.counters.peers_refused_by[reason.index()] += 1;
    }

    /// The byte layer of a new peer link: TLS when the config has `peer_tls` (dialing neighbour `dial`,
    /// or accepting when None), the socket itself otherwise.
    pub fn peer_io(&self, dial: Option<usize>) -> Result<PeerIo, super::peer_tls::TlsError> {
        match (&self.peer_tls, dial) {
            (None, _) => Ok(PeerIo::Plain),
            (Some(tls), Some(n)) => tls.dial_io(&self.neighbours[n].name),
            (Some(tls), None) => tls.accept_io(),
        }
    }

    /// SIGHUP: the peer certificate, its key and the CA are read again. Links that are up keep the
    /// session they have; links made from now on use the new files. A failed reload changes nothing.
    pub fn reload_peer_tls(&mut self) {
        let Some(tls) = &mut self.peer_tls else { return };
        match tls.reload() {
            Ok(()) => {
                let (cert, ca) = (tls.files().cert.display().to_string(), tls.files().ca.display().to_string());
                log::info!("SIGHUP: peer certificate reloaded from {cert} (CA {ca})");
                self.log.event(format_args!("SIGHUP: peer certificate reloaded from {cert} (CA {ca})"));
            }
            Err(e) => {
                log::warn!("SIGHUP: peer certificate not reloaded, keeping the one in use: {e}");
                self.log.event(format_args!("SIGHUP: peer certificate not reloaded, keeping the one in use: {e}"));
            }
        }
    }

    pub fn records(&self) -> &RecordStore {
        &self.records
    }

    /// Offers a record to the table: true if it is the newest of its client and was stored. The one
    /// way records get in (`herd::store_and_flood` calls it), so a journal or a store has one seam.
    /// Every record stored gets the next seq and is appended to the journal (made durable at the end of
    /// the turn, by the journal's writer thread).
    pub(super) fn offer_record(&mut self, line: &[u8], fields: AtFields) -> bool {
        let crate::record::Offer::Stored { seq } = self.records.offer(line, fields, self.wall) else {
            return false;
        };
        self.last_seq = seq;
        if let Some(j) = self.journal.as_mut() {
            j.append(seq, line);
        }
        true
    }

    /// The latest client time a record may carry now: the clock plus `limits.max_clock_skew_s`.
    pub fn latest_client_time(&self) -> Timestamp {
        self.wall.plus_secs(self.limits.max_clock_skew_s)
    }

    /// The name of neighbour `n`, or `?` for a link not identified yet.
    pub fn neighbour_name(&self, n: Option<usize>) -> &str {
        n.map_or("?", |n| self.neighbours[n].name.as_str())
    }

    /// The counters in one line, for the log's last line and stderr at exit.
    pub fn summary(&self) -> String {
        let mut summary = self.counters.summary();
        if let Some(p) = &self.places {
            let c = &p.counters;
            let mean_ms =
                if c.latency_count > 0 { c.latency_us_sum as f64 / c.latency_count as f64 / 1000.0 } else { 0.0 };
            summary.push_str(&format!(
                " places[hits={} misses={} coalesced={} requests={} retries={} cached={} mean_ms={mean_ms:.1} \
                 errors: timeout={} connect={} tls={} http={} closed={} resolve={}]",
                c.hits,
                c.misses,
                c.coalesced,
                c.requests,
                c.retries,
                p.cache_len(),
                c.errors_timeout,
                c.errors_connect,
                c.errors_tls,
                c.errors_http,
                c.errors_closed,
                c.errors_resolve
            ));
        }
        summary
    }
}

/// Why a client connection ended: counted, logged, and the reason a draining client closes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client half-closed and everything it asked was answered.
    Eof,
    /// Reset, or a read or write failed.
    Reset,
    /// A line over the limit.
    LineTooLong,
    /// A line started and not finished within the line time-out (slow-loris).
    LineTimeout,
    /// Unwritten replies past the hard bound: the client does not read.
    OutputBound,
    /// Nothing sent and nothing owed for the idle time-out.
    Idle,
    /// Closed at `max_clients` to admit a new client: it was the idlest, idle more than a second.
    Evicted,
    /// The server is shutting down.
    Shutdown,
    /// An IAMAT's record could not be written to the journal (disk full): no reply, and the connection
    /// closes after the replies owed before it.
    NotDurable,
}

impl CloseReason {
    pub const ALL: [CloseReason; 9] = [
        CloseReason::Eof,
        CloseReason::Reset,
        CloseReason::LineTooLong,
        CloseReason::LineTimeout,
        CloseReason::OutputBound,
        CloseReason::Idle,
        CloseReason::Evicted,
        CloseReason::Shutdown,
        CloseReason::NotDurable,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CloseReason::Eof => "eof",
            CloseReason::Reset => "reset",
            CloseReason::LineTooLong => "line_too_long",
            CloseReason::LineTimeout => "line_timeout",
            CloseReason::OutputBound => "output_bound",
            CloseReason::Idle => "idle",
            CloseReason::Evicted => "evicted",
            CloseReason::Shutdown => "shutdown",
            CloseReason::NotDurable => "not_durable",
        }
    }
}

/// Event counters (Pelikan and redis style): an event loop without counters is debugged by guessing.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    pub turns: u64,
    pub events: u64,
    pub stale_events: u64,
    pub accepts: u64,
    pub accept_paused: u64,
    /// Client connections closed at once because their address was at `limits.max_clients_per_ip`.
    pub refused_per_ip: u64,
    /// Admin requests answered 401 or 403.
    pub admin_refused: u64,
    pub closes: [u64; CloseReason::ALL.len()],
    pub iamat: u64,
    pub whatsat: u64,
    pub invalid: u64,
    pub blank: u64,
    pub replies: u64,
    pub line_too_long: u64,
    pub throttled: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub writes: u64,
    pub records_stored: u64,
    pub records_received: u64,
    pub records_duplicate: u64,
    /// Records from peers refused for breaking a rule of PROTOCOL section 2 or 5 (the link stays up).
    pub records_refused: u64,
    pub records_forwarded: u64,
    /// Of `records_forwarded`: those sent in flood or repair mode (a tree broken below this server, a
    /// record learned by anti-entropy, or a reflood), the rest went down their origin's tree.
    pub records_flooded: u64,
    /// Records sent again as repairs because a link broke before the neighbour acknowledged them.
    pub records_reflooded: u64,
    /// A repair's notices (`route::Mode::Notice`) sent to neighbours that hold the record, and received.
    pub notices_sent: u64,
    pub notices_received: u64,
    pub records_synced: u64,
    /// Records a catch-up passed over because the neighbour, full, would have refused them at once.
    pub records_sync_skipped: u64,
    pub sync_batches: u64,
    pub links_up: u64,
    pub links_down: u64,
    pub peers_refused: u64,
    /// `peers_refused` by reason (indexed by `Refusal::index`).
    pub peers_refused_by: [u64; Refusal::ALL.len()],
    pub peer_bytes_in: u64,
    pub peer_bytes_out: u64,
    /// Link-ups that sent only what changed since the neighbour's offset, and those that sent the table.
    pub delta_syncs: u64,
    pub full_syncs: u64,
    /// `ACK` lines sent to neighbours.
    pub acks_sent: u64,
    /// IAMATs whose journal write failed: no reply, connection closed.
    pub not_durable: u64,
}

impl Counters {
    /// Counts a client connection that ended.
    pub fn closed(&mut self, reason: CloseReason) {
        let slot = CloseReason::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        self.closes[slot] += 1;
    }

    pub fn summary(&self) -> String {
        let closes: Vec<String> = CloseReason::ALL
            .iter()
            .zip(self.closes)
            .filter(|(_, n)| *n > 0)
            .map(|(r, n)| format!("{}={n}", r.name()))
            .collect();
        format!(
            "turns={} events={} stale={} accepts={} closes[{}] iamat={} whatsat={} invalid={} replies={} \
             bytes_in={} bytes_out={} writes={} stored={} received={} duplicate={} forwarded={} synced={} \
             sync_batches={} links_up={} links_down={} peers_refused={} records_refused={}",
            self.turns,
            self.events,
            self.stale_events,
            self.accepts,
            closes.join(" "),
            self.iamat,
            self.whatsat,
            self.invalid,
            self.replies,
            self.bytes_in,
            self.bytes_out,
            self.writes,
            self.records_stored,
            self.records_received,
            self.records_duplicate,
            self.records_forwarded,
            self.records_synced,
            self.sync_batches,
            self.links_up,
            self.links_down,
            self.peers_refused,
            self.records_refused
        )
    }
}
