//! The readiness loop: one `mio::Poll` that owns every socket of one herd server.
//!
//! One loop turn, in order:
//!
//! 1. `poll` sleeps until a socket is ready or the next deadline (the only place this thread blocks, apart
//!    from the log's buffered file write);
//! 2. the clocks are read once: every command of the turn is stamped with the same time;
//! 3. every event is dispatched to its connection's state machine, which reads, answers into its output
//!    buffer and marks itself dirty; records it stores are queued for the peers;
//! 4. deadlines that are due fire (idle clients, redials, Places time-outs, the log flush);
//! 5. every dirty connection is written once (redis's `beforeSleep`): one `write` per connection per turn,
//!    however many replies it collected;
//! 6. connections that reached `Closed` are deregistered and freed (deferred close: an event for them
//!    later in the same batch reaches a `Closed` connection, which does nothing; once it is freed, any
//!    token still held for it (timers, waiters, the `again` list) finds its generation stale).
//!
//! Tokens carry a slab key and a generation. A slab reuses keys at once, so a token alone could name a
//! newer connection than the one an event was for; the generation tells them apart.

use super::admin::{Admin, Gauges};
use super::client::Client;
use super::log::{self as server_log, ServerLog};
use super::peer::{self, Peer, Role, Secret};
use super::places_client::{PlacesClient, Replies, Waiter};
use super::timer::{Timer, Timers};
use super::upstream::{Outcome, Upstream};
use crate::config::{Config, Limits};
use crate::protocol::{self, AtFields, Timestamp, WhatsAt};
use mio::event::Event;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Registry, Token};
use slab::Slab;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant, SystemTime};

const CLIENT_LISTENER: Token = Token(usize::MAX);
const PEER_LISTENER: Token = Token(usize::MAX - 1);
const SIGNALS: Token = Token(usize::MAX - 2);
/// The Places helper threads wake the loop with this token: the resolver when it has an address, the
/// shaper when it has built an answer. One token for both; the loop takes whatever each has.
const WAKER: Token = Token(usize::MAX - 3);
const ADMIN_LISTENER: Token = Token(usize::MAX - 4);
/// Admin connections open at once (it is an operator's tool, not a public service).
const MAX_ADMIN: usize = 16;

/// Peer-port connections allowed beyond two per neighbour (handshakes under way).
const MAX_HANDSHAKING: usize = 64;
/// Reads one connection may do per event before it yields to the others (fairness under floods):
/// 256 KiB, a few thousand pipelined commands. With 16 (1 MiB a turn), a client pouring garbage into a
/// lingering close pushed others' p99 to 4.8× its calm value in one of three runs of tests/abuse.rs;
/// with 4, 1.4-1.8×.
pub const READS_PER_TURN: usize = 4;
/// Size of the shared read buffer.
const SCRATCH: usize = 64 * 1024;
/// How long a graceful shut-down may take before the loop gives up on slow clients.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);

/// The log target of the trace for learners: `RUST_LOG=herd::event_loop=trace`.
pub const TRACE: &str = "herd::event_loop";

/// A connection's state, for the trace (only called while tracing).
fn describe(conn: &Conn) -> String {
    match conn {
        Conn::Client(c) => format!("{:?}", c.state),
        Conn::Peer(p) => p.state_name().to_string(),
        Conn::Upstream(u) => format!("{:?}", u.state),
        Conn::Admin(a) => (if a.is_closed() { "Closed" } else { "Open" }).to_string(),
    }
}

/// A token as the trace shows it: a listener's name, or `#key.generation`.
pub struct TokenName(pub Token);

impl std::fmt::Display for TokenName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            CLIENT_LISTENER => f.write_str("client-listener"),
            PEER_LISTENER => f.write_str("peer-listener"),
            ADMIN_LISTENER => f.write_str("admin-listener"),
            SIGNALS => f.write_str("signals"),
            WAKER => f.write_str("places-waker"),
            t => {
                let (key, gen) = split(t);
                write!(f, "#{key}.{gen}")
            }
        }
    }
}

fn kind(conn: &Conn) -> &'static str {
    match conn {
        Conn::Client(_) => "client",
        Conn::Peer(_) => "peer",
        Conn::Upstream(_) => "upstream",
        Conn::Admin(_) => "admin",
    }
}

/// A token for slab key `key` at generation `gen`: generation in the high half, key in the low half.
fn token(key: usize, gen: u32) -> Token {
    Token(((gen as usize) << 32) | key)
}

fn split(t: Token) -> (usize, u32) {
    (t.0 & 0xffff_ffff, (t.0 >> 32) as u32)
}

/// Why a connection ended: counted, logged, and the reason a draining client closes with.
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
    /// The server is shutting down.
    Shutdown,
}

impl CloseReason {
    pub const ALL: [CloseReason; 7] = [
        CloseReason::Eof,
        CloseReason::Reset,
        CloseReason::LineTooLong,
        CloseReason::LineTimeout,
        CloseReason::OutputBound,
        CloseReason::Idle,
        CloseReason::Shutdown,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CloseReason::Eof => "eof",
            CloseReason::Reset => "reset",
            CloseReason::LineTooLong => "line_too_long",
            CloseReason::LineTimeout => "line_timeout",
            CloseReason::OutputBound => "output_bound",
            CloseReason::Idle => "idle",
            CloseReason::Shutdown => "shutdown",
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
    pub records_synced: u64,
    pub sync_batches: u64,
    pub links_up: u64,
    pub links_down: u64,
    pub peers_refused: u64,
    pub peer_bytes_in: u64,
    pub peer_bytes_out: u64,
}

impl Counters {
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

/// What a WHATSAT got from the server's context.
pub enum Whatsat {
    /// The client has no record here: the command is invalid.
    UnknownClient,
    /// The client has no record here yet, but a neighbour is linked: wait until `deadline` for the herd
    /// to deliver one. `Client::record_arrived` or the deadline ends the wait.
    AwaitRecord { ticket: u64, deadline: Instant },
    /// The whole reply (AT line, JSON, blank line) was appended to the buffer.
    Answered,
    /// Places is being asked; the answer comes back through `Client::places_answered` with this ticket.
    Pending { ticket: u64, at_line: Vec<u8> },
}

/// Everything a connection's handler may touch besides its own connection: the server's shared state.
pub struct Ctx {
    pub name: Box<[u8]>,
    /// Every server name of the config: a record from a peer must name one of them.
    pub herd_names: Box<[Box<[u8]>]>,
    pub registry: Registry,
    /// Monotonic time of this turn, for deadlines.
    pub now: Instant,
    /// Wall-clock time of this turn, for time differences.
    pub wall: Timestamp,
    pub records: crate::record::RecordStore,
    pub limits: Limits,
    pub idle_timeout: Duration,
    /// How long a started line may take to finish.
    pub line_timeout: Duration,
    pub log: ServerLog,
    pub counters: Counters,
    pub timers: Timers,
    /// Tracing for learners is on (`RUST_LOG=herd::event_loop=trace`): read once per turn, so a trace
    /// point costs one flag check when it is off.
    pub trace: bool,
    /// Connections with output to write at the end of this turn.
    pub dirty: Vec<Token>,
    /// Connections that still had input when their read budget ran out: driven again next turn.
    pub again: Vec<Token>,
    /// The legacy failure object served while Places is not configured.
    places_unconfigured: Vec<u8>,
    /// The Places client, when the config has `places`.
    pub places: Option<PlacesClient>,
    /// Places answers to hand to clients after this handler: (client, ticket, JSON bytes).
    places_replies: Vec<(Token, u64, Vec<u8>)>,
    /// This server's neighbours, in config order.
    pub neighbours: Vec<Neighbour>,
    /// Peer links with output to write at the end of this turn (written before the clients').
    pub dirty_peers: Vec<Token>,
    /// Records stored this turn and not yet handed to the peer links: the bytes, and for each record
    /// the neighbour it came from and its range in the bytes.
    floods: Vec<u8>,
    flood_marks: Vec<(Option<usize>, u32, u32)>,
    /// Neighbours to dial at once (they just dialed us while our link to them was down).
    dial_now: Vec<usize>,
    secret: Option<Secret>,
    rng: u64,
    next_ticket: u64,
    /// How long a WHATSAT for an unknown client waits for the herd.
    unknown_grace: Duration,
    /// WHATSATs waiting for a record, by client id: (client connection, ticket).
    awaiting_record: std::collections::HashMap<Box<[u8]>, Vec<(Token, u64)>>,
    /// Waits ended by a record stored in this handler: delivered to their clients right after it.
    records_arrived: Vec<(Token, u64)>,
}

/// A neighbour and the state of our sending link to it.
pub struct Neighbour {
    pub name: String,
    pub addr: SocketAddr,
    pub link: OutLink,
    /// The current redial delay (doubling, capped, jittered).
    backoff: Duration,
    /// Identified links from this neighbour (normally 0 or 1).
    pub links_in: usize,
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

/// Redial delays: from the first retry to the cap, doubling, each jittered down to half.
const BACKOFF_FIRST: Duration = Duration::from_millis(10);
const BACKOFF_CAP: Duration = Duration::from_millis(250);

impl Ctx {
    /// Stores an `AT` line if it is the newest record of its client, and floods it if so.
    /// `from` is the neighbour it came from (it is not sent back there), `None` for a client's IAMAT.
    pub fn store_and_flood(&mut self, line: &[u8], fields: AtFields, from: Option<usize>) -> bool {
        if !self.records.offer(line, fields) {
            return false;
        }
        self.counters.records_stored += 1;
        // Only a record from the herd ends a wait: a local IAMAT that arrived after the WHATSAT must not be
        // seen by it (state effects in arrival order).
        if from.is_some() && !self.awaiting_record.is_empty() {
            let id = &line[fields.client_id.0 as usize..fields.client_id.1 as usize];
            if let Some(waiters) = self.awaiting_record.remove(id) {
                self.records_arrived.extend(waiters);
            }
        }
        let any_link =
            self.neighbours.iter().enumerate().any(|(i, n)| Some(i) != from && matches!(n.link, OutLink::Live(_)));
        if any_link {
            let start = self.floods.len() as u32;
            self.floods.extend_from_slice(line);
            self.flood_marks.push((from, start, self.floods.len() as u32));
        }
        true
    }

    /// The latest client time a record may carry now: the clock plus `limits.max_clock_skew_s`.
    pub fn latest_client_time(&self) -> Timestamp {
        self.wall.plus_secs(self.limits.max_clock_skew_s)
    }

    /// Checks a record from a peer against every rule a client's IAMAT obeys, plus the herd's own: the
    /// server it names is a server of the config.
    pub fn check_peer_record(&self, line: &[u8]) -> Result<AtFields, protocol::AtRefusal> {
        let fields = protocol::check_at(line)?;
        let field = |r: (u32, u32)| &line[r.0 as usize..r.1 as usize];
        if !self.herd_names.iter().any(|n| **n == *field(fields.server)) {
            return Err(protocol::AtRefusal::Field("unknown_server"));
        }
        if !protocol::time_at_most(field(fields.client_time), self.latest_client_time()) {
            return Err(protocol::AtRefusal::Field("client_time_ahead"));
        }
        Ok(fields)
    }

    pub fn ticket(&mut self) -> u64 {
        self.next_ticket += 1;
        self.next_ticket
    }

    /// A wait for `client_id`'s record ended without it: forget the waiter.
    pub fn stop_awaiting(&mut self, client_id: &[u8], client: Token, ticket: u64) {
        if let Some(waiters) = self.awaiting_record.get_mut(client_id) {
            waiters.retain(|&w| w != (client, ticket));
            if waiters.is_empty() {
                self.awaiting_record.remove(client_id);
            }
        }
    }

    /// A fresh random nonce for a handshake (hex).
    pub fn nonce(&mut self) -> String {
        use ring::rand::SecureRandom;
        let mut buf = [0u8; 16];
        ring::rand::SystemRandom::new().fill(&mut buf).expect("system randomness");
        peer::hex(&buf)
    }

    pub fn mac(&self, role: &str, dialer: &str, acceptor: &str, nonce_d: &str, nonce_a: &str) -> String {
        peer::mac(self.secret.as_ref(), role, dialer, acceptor, nonce_d, nonce_a)
    }

    pub fn verify_mac(
        &self,
        role: &str,
        dialer: &str,
        acceptor: &str,
        nonce_d: &str,
        nonce_a: &str,
        given: &[u8],
    ) -> bool {
        peer::verify(self.secret.as_ref(), role, dialer, acceptor, nonce_d, nonce_a, given)
    }

    /// Our sending link to `n` is live.
    pub fn on_link_out(&mut self, n: usize, token: Token) {
        self.neighbours[n].link = OutLink::Live(token);
        self.neighbours[n].backoff = BACKOFF_FIRST;
        self.counters.links_up += 1;
    }

    /// Neighbour `n` linked to us. If our own link to it is waiting to redial, it is back: dial now.
    pub fn on_link_in(&mut self, n: usize) {
        self.neighbours[n].links_in += 1;
        self.counters.links_up += 1;
        if self.neighbours[n].link == OutLink::Backoff {
            self.dial_now.push(n);
        }
    }

    /// A jittered delay in [d/2, d] (xorshift; not for secrets).
    fn jitter(&mut self, d: Duration) -> Duration {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let half = d / 2;
        half + Duration::from_nanos(self.rng % (half.as_nanos() as u64 + 1))
    }

    /// Answers a WHATSAT into `out`, or starts the Places request it needs.
    pub fn whatsat(&mut self, cmd: &WhatsAt<'_>, client: Token, out: &mut Vec<u8>) -> Whatsat {
        let Some(record) = self.records.get(cmd.client_id) else {
            // A record may be on its way: the IAMAT may have been answered elsewhere a moment ago.
            if self.unknown_grace.is_zero() || !self.neighbours.iter().any(|n| n.links_in > 0) {
                return Whatsat::UnknownClient;
            }
            let ticket = self.ticket();
            let deadline = self.now + self.unknown_grace;
            self.awaiting_record.entry(cmd.client_id.into()).or_default().push((client, ticket));
            return Whatsat::AwaitRecord { ticket, deadline };
        };
        let Some(places) = self.places.as_mut() else {
            out.extend_from_slice(record.line());
            out.extend_from_slice(&self.places_unconfigured);
            out.extend_from_slice(b"\n\n");
            return Whatsat::Answered;
        };
        let key = PlacesClient::key_for(record.location(), cmd.radius_km);
        if let Some(json) = places.cached(&key, cmd.bound, self.now) {
            out.extend_from_slice(record.line());
            out.extend_from_slice(json);
            out.extend_from_slice(b"\n\n");
            return Whatsat::Answered;
        }
        self.next_ticket += 1;
        let ticket = self.next_ticket;
        let waiter = Waiter { client, ticket, bound: cmd.bound };
        if let Some(id) = places.join_or_create(key, record.location(), cmd.radius_km, waiter, self.now) {
            self.timers.add(self.now + places.timeout, Timer::Places(id));
        }
        Whatsat::Pending { ticket, at_line: record.line().to_vec() }
    }

    /// A Places request ended (failed, to be retried, or answered: a response is shaped off the loop
    /// and comes back through [`places_shaped`](Self::places_shaped)).
    pub fn places_outcome(&mut self, id: u64, outcome: Outcome) {
        let Some(places) = self.places.as_mut() else { return };
        if let Some((replies, line)) = places.finish(id, outcome, self.now) {
            self.places_done(replies, &line);
        }
    }

    /// The shaper thread woke the loop: end the requests whose answers it built.
    fn places_shaped(&mut self) {
        let Some(places) = self.places.as_mut() else { return };
        for (replies, line) in places.take_shaped(self.now) {
            self.places_done(replies, &line);
        }
    }

    /// Logs a Places request that ended and queues its waiters' replies for `after_handler`.
    fn places_done(&mut self, replies: Replies, line: &str) {
        self.log.event(format_args!("{line}"));
        self.places_replies.extend(replies.into_iter().map(|(w, body)| (w.client, w.ticket, body)));
    }

    /// An upstream connection finished a request and can be kept: returns false if the pool is full.
    pub fn places_idle(&mut self, token: Token) -> bool {
        let Some(places) = self.places.as_mut() else { return false };
        let kept = !places.queue.is_empty() || places.idle_conn(token);
        if kept && !places.idle.contains(&token) {
            places.idle.push(token);
        }
        if kept {
            self.timers.add(self.now + super::places_client::IDLE_KEEP, Timer::Conn(token));
        }
        kept
    }

    /// An upstream connection closed.
    pub fn places_closed(&mut self, token: Token) {
        if let Some(places) = self.places.as_mut() {
            places.conn_closed(token);
        }
    }
}

/// A connection in the slab, with the generation its tokens carry.
struct Entry {
    gen: u32,
    conn: Conn,
}

/// The kinds of connection one loop drives.
enum Conn {
    Client(Client),
    Peer(Peer),
    /// Boxed: rustls's connection state is large, and there are only a few of these.
    Upstream(Box<Upstream>),
    /// A request to the admin listener.
    Admin(Box<Admin>),
}

/// One herd server: its poll, its listeners, its connections and its state.
pub struct Server {
    poll: Poll,
    events: Events,
    core: Core,
}

/// The parts of the server an event handler works on (everything but the `Poll` and its event buffer,
/// which are borrowed while events are dispatched).
struct Core {
    conns: Slab<Entry>,
    next_gen: u32,
    ctx: Ctx,
    scratch: Box<[u8]>,
    client_listener: Option<TcpListener>,
    peer_listener: Option<TcpListener>,
    admin_listener: Option<TcpListener>,
    admins: usize,
    signals: signal_hook_mio::v1_0::Signals,
    clients: usize,
    peers: usize,
    /// The client listener has connections we did not accept yet (at the client limit, or out of fds).
    accept_pending: bool,
    /// A `Timer::AcceptRetry` is armed (out of fds): one at a time, however often accept fails.
    accept_retry_armed: bool,
    stopping: bool,
    finished: bool,
    /// A log flush is scheduled (it is only while lines are waiting, so an idle server sleeps).
    log_flush_armed: bool,
    /// Connections to free at the end of the turn.
    closing: Vec<Token>,
    /// The allocation a token queue gets while a pass takes its tokens (`take_queue`).
    spare_tokens: Vec<Token>,
    /// Scratch list of live sending links, reused for every flood.
    live_links: Vec<(usize, Token)>,
    /// What the loop is doing (for the trace of state transitions).
    cause: &'static str,
}

/// Binds a listener, with an error that names the server, the address and its role.
/// How long to wait before accepting again after running out of descriptors.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// The accept queue asked of the kernel (it caps it at `net.core.somaxconn`, 4096 by default).
const LISTEN_BACKLOG: i32 = 4096;

fn listen(name: &str, addr: SocketAddr, what: &str) -> Result<TcpListener, String> {
    let listener = TcpListener::bind(addr).map_err(|e| format!("{name}: cannot listen on {addr} ({what}): {e}"))?;
    // mio (like std) listens with a backlog of 128. A burst of connects larger than that while the loop
    // is busy, or descheduled for a few milliseconds, overflows the queue, and each dropped SYN costs
    // its client a one-second retransmit: opening 10,000 connections took 40 s instead of under one.
    // Calling listen(2) again on a listening socket only changes its backlog.
    // SAFETY: listen(2) on a socket we own.
    if unsafe { libc::listen(listener.as_raw_fd(), LISTEN_BACKLOG) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(format!("{name}: cannot set the accept queue on {addr} ({what}): {e}"));
    }
    Ok(listener)
}

impl Server {
    /// Binds the server `name` of `config`: nothing is left half-started when this fails.
    pub fn bind(config: &Config, name: &str) -> Result<Server, String> {
        let index = config.server_index(name).ok_or_else(|| {
            let names: Vec<&str> = config.servers.iter().map(|s| s.name.as_str()).collect();
            format!("unknown server {name:?} (the config has {})", names.join(", "))
        })?;
        let secret = match &config.herd_secret_env {
            None => None,
            Some(var) => match std::env::var(var) {
                Ok(v) if !v.is_empty() => Some(Secret::new(v.as_bytes())),
                _ => return Err(format!("herd_secret_env names {var}, which is not set or empty")),
            },
        };
        let me = &config.servers[index];
        let client_addr = me.client_addr()?;
        let peer_addr = me.peer_addr()?;
        let mut neighbours = Vec::new();
        for n in config.neighbours(index) {
            let s = &config.servers[n];
            neighbours.push(Neighbour {
                name: s.name.clone(),
                addr: s.peer_addr()?,
                link: OutLink::Backoff,
                backoff: BACKOFF_FIRST,
                links_in: 0,
            });
        }
        let client_listener = listen(name, client_addr, "client port")?;
        let peer_listener = listen(name, peer_addr, "peer port")?;
        let admin_listener = match me.admin_port {
            Some(port) => Some(listen(name, SocketAddr::new(config.admin_host, port), "admin port")?),
            None => None,
        };
        let log = ServerLog::open(&config.log_file(name), &config.log)?;
        let mut server = Self::with_listeners(config, index, client_listener, peer_listener, log, neighbours, secret)?;
        if let Some(mut admin) = admin_listener {
            server
                .core
                .ctx
                .registry
                .register(&mut admin, ADMIN_LISTENER, Interest::READABLE)
                .map_err(|e| format!("{name}: cannot register the admin listener: {e}"))?;
            server.core.admin_listener = Some(admin);
        }
        Ok(server)
    }

    fn with_listeners(
        config: &Config,
        index: usize,
        mut client_listener: TcpListener,
        mut peer_listener: TcpListener,
        log: ServerLog,
        neighbours: Vec<Neighbour>,
        secret: Option<Secret>,
    ) -> Result<Server, String> {
        let me = &config.servers[index];
        let poll = Poll::new().map_err(|e| format!("cannot create poll: {e}"))?;
        let registry = poll.registry().try_clone().map_err(|e| format!("cannot clone registry: {e}"))?;
        let io = |e: std::io::Error| format!("{}: cannot register: {e}", me.name);
        registry.register(&mut client_listener, CLIENT_LISTENER, Interest::READABLE).map_err(io)?;
        registry.register(&mut peer_listener, PEER_LISTENER, Interest::READABLE).map_err(io)?;
        let mut signals = signal_hook_mio::v1_0::Signals::new([
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGHUP,
        ])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
        registry.register(&mut signals, SIGNALS, Interest::READABLE).map_err(io)?;

        let places = match &config.places {
            Some(pc) => {
                let waker = mio::Waker::new(poll.registry(), WAKER).map_err(|e| format!("cannot create waker: {e}"))?;
                Some(PlacesClient::new(pc, std::sync::Arc::new(waker))?)
            }
            None => None,
        };
        let mut unconfigured =
            crate::places::PlacesAnswer::failure("UNKNOWN_ERROR", "Places is not configured for this server");
        let seed = {
            use ring::rand::SecureRandom;
            let mut b = [0u8; 8];
            ring::rand::SystemRandom::new().fill(&mut b).map_err(|_| "no system randomness".to_string())?;
            u64::from_le_bytes(b) | 1
        };
        let ctx = Ctx {
            name: me.name.as_bytes().into(),
            herd_names: config.servers.iter().map(|s| s.name.as_bytes().into()).collect(),
            registry,
            now: Instant::now(),
            wall: Timestamp::from_system_time(SystemTime::now()),
            records: crate::record::RecordStore::new(),
            limits: config.limits.clone(),
            idle_timeout: Duration::from_millis(config.limits.idle_timeout_ms),
            line_timeout: Duration::from_millis(config.limits.line_timeout_ms),
            log,
            counters: Counters::default(),
            timers: Timers::default(),
            trace: false,
            dirty: Vec::new(),
            again: Vec::new(),
            places_unconfigured: unconfigured.body(0).to_vec(),
            neighbours,
            dirty_peers: Vec::new(),
            floods: Vec::new(),
            flood_marks: Vec::new(),
            dial_now: Vec::new(),
            secret,
            rng: seed,
            next_ticket: 0,
            unknown_grace: Duration::from_millis(config.limits.unknown_client_grace_ms),
            awaiting_record: Default::default(),
            records_arrived: Vec::new(),
            places,
            places_replies: Vec::new(),
        };
        Ok(Server {
            poll,
            events: Events::with_capacity(1024),
            core: Core {
                conns: Slab::with_capacity(1024),
                next_gen: 1,
                ctx,
                scratch: vec![0u8; SCRATCH].into_boxed_slice(),
                client_listener: Some(client_listener),
                peer_listener: Some(peer_listener),
                admin_listener: None,
                admins: 0,
                signals,
                clients: 0,
                peers: 0,
                accept_pending: false,
                accept_retry_armed: false,
                stopping: false,
                finished: false,
                log_flush_armed: false,
                closing: Vec::new(),
                spare_tokens: Vec::new(),
                live_links: Vec::new(),
                cause: "",
            },
        })
    }

    /// The addresses the server listens on: (clients, peers).
    pub fn local_addrs(&self) -> (SocketAddr, SocketAddr) {
        let addr = |l: &Option<TcpListener>| l.as_ref().and_then(|l| l.local_addr().ok()).expect("bound");
        (addr(&self.core.client_listener), addr(&self.core.peer_listener))
    }

    pub fn counters(&self) -> &Counters {
        &self.core.ctx.counters
    }

    /// Turns the log file off (benchmarks measure what logging costs by comparing with and without).
    pub fn disable_log(&mut self) {
        self.core.ctx.log = ServerLog::disabled();
    }

    /// Runs the loop until a signal asks it to stop and everything owed has been answered.
    pub fn run(&mut self) -> Result<(), String> {
        let (client, peer) = self.local_addrs();
        self.core.ctx.log.set_time(self.core.ctx.wall);
        self.core.ctx.log.event(format_args!(
            "start: {} listening for clients on {client} and peers on {peer}",
            String::from_utf8_lossy(&self.core.ctx.name)
        ));
        // Dial every neighbour at once: those already up link within a round trip.
        for n in 0..self.core.ctx.neighbours.len() {
            self.core.dial(n);
        }
        while !self.core.finished {
            self.turn()?;
        }
        let mut summary = self.core.ctx.counters.summary();
        if let Some(p) = &self.core.ctx.places {
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
        self.core.ctx.log.event(format_args!("stop: {summary}"));
        self.core.ctx.log.close();
        log::info!("stopped: {summary}");
        Ok(())
    }

    /// One loop turn (see the module documentation for the order of its steps).
    pub fn turn(&mut self) -> Result<(), String> {
        let core = &mut self.core;
        let timeout =
            if core.ctx.again.is_empty() { core.ctx.timers.timeout(core.ctx.now) } else { Some(Duration::ZERO) };
        if let Err(e) = self.poll.poll(&mut self.events, timeout) {
            if e.kind() != ErrorKind::Interrupted {
                return Err(format!("poll failed: {e}"));
            }
        }
        core.ctx.now = Instant::now();
        core.ctx.wall = Timestamp::from_system_time(SystemTime::now());
        core.ctx.log.set_time(core.ctx.wall);
        core.ctx.counters.turns += 1;
        // The global level first (an atomic load); the per-target match only when it could be on.
        core.ctx.trace =
            log::max_level() >= log::LevelFilter::Trace && log::log_enabled!(target: TRACE, log::Level::Trace);
        let before = core.ctx.trace.then(|| core.ctx.counters.clone());

        core.cause = "again";
        let again = core.take_queue(|ctx| &mut ctx.again);
        for &token in &again {
            core.drive(token);
        }
        core.recycle(again);
        core.cause = "event";
        // Herd traffic first: a record that reached this host before a client's WHATSAT is stored
        // before the WHATSAT is answered, whatever order the kernel listed the events in.
        for event in self.events.iter() {
            if core.is_peer_event(event.token()) {
                core.ctx.counters.events += 1;
                core.dispatch(event);
            }
        }
        for event in self.events.iter() {
            if !core.is_peer_event(event.token()) {
                core.ctx.counters.events += 1;
                core.dispatch(event);
            }
        }
        core.cause = "timer";
        core.fire_timers();
        core.cause = "flush";
        core.flush_dirty();
        core.cause = "close";
        core.close_finished();
        if let Some(b) = before {
            let c = &core.ctx.counters;
            let commands = (c.iamat + c.whatsat + c.invalid + c.blank) - (b.iamat + b.whatsat + b.invalid + b.blank);
            log::trace!(
                target: TRACE,
                "turn {}: {} events, {commands} commands, {} writes, {} µs",
                c.turns,
                c.events - b.events,
                c.writes - b.writes,
                core.ctx.now.elapsed().as_micros()
            );
        }
        if core.ctx.log.has_pending() && !core.log_flush_armed {
            core.log_flush_armed = true;
            core.ctx.timers.add(core.ctx.now + server_log::FLUSH_EVERY, Timer::LogFlush);
        }
        if core.stopping && core.clients == 0 && core.peers == 0 {
            core.finished = true;
        }
        Ok(())
    }
}

impl Core {
    fn is_peer_event(&self, token: Token) -> bool {
        if token == PEER_LISTENER {
            return true;
        }
        let (key, gen) = split(token);
        matches!(self.conns.get(key), Some(Entry { gen: g, conn: Conn::Peer(_) }) if *g == gen)
    }

    /// Runs `f` on the connection `token` names, if it still exists, and queues it for freeing if it closed.
    fn with_conn(&mut self, token: Token, f: impl FnOnce(&mut Conn, &mut Ctx, &mut [u8])) {
        let (key, gen) = split(token);
        let Some(entry) = self.conns.get_mut(key).filter(|e| e.gen == gen) else {
            self.ctx.counters.stale_events += 1;
            return;
        };
        let was = self.ctx.trace.then(|| describe(&entry.conn));
        f(&mut entry.conn, &mut self.ctx, &mut self.scratch);
        if let Some(was) = was {
            let now = describe(&entry.conn);
            if now != was {
                log::trace!(target: TRACE, "{}{}: {was} -> {now} ({})", kind(&entry.conn), TokenName(token), self.cause);
            }
        }
        let closed = match &entry.conn {
            Conn::Client(c) => c.is_closed(),
            Conn::Peer(p) => p.is_closed(),
            Conn::Upstream(u) => u.is_closed(),
            Conn::Admin(a) => a.is_closed(),
        };
        if closed {
            self.closing.push(token);
        }
    }

    /// [`with_conn`](Self::with_conn), then hands out what the handler produced for the others.
    fn handle(&mut self, token: Token, f: impl FnOnce(&mut Conn, &mut Ctx, &mut [u8])) {
        self.with_conn(token, f);
        self.after_handler();
    }

    fn dispatch(&mut self, event: &Event) {
        if self.ctx.trace {
            log::trace!(
                target: TRACE,
                "event {}: readable={} writable={} read_closed={} error={}",
                TokenName(event.token()),
                event.is_readable(),
                event.is_writable(),
                event.is_read_closed(),
                event.is_error()
            );
        }
        match event.token() {
            CLIENT_LISTENER => {
                self.accept_pending = true;
                self.accept_clients();
            }
            PEER_LISTENER => self.accept_peers(),
            ADMIN_LISTENER => self.accept_admin(),
            SIGNALS => self.on_signal(),
            WAKER => {
                // Either helper thread may have woken the loop (wake-ups coalesce): take from both.
                if let Some(places) = self.ctx.places.as_mut() {
                    places.take_resolved();
                }
                self.ctx.places_shaped();
                self.after_handler();
            }
            token => {
                let gauges = Gauges { clients: self.clients, peers: self.peers, connections: self.conns.len() };
                self.handle(token, |conn, ctx, scratch| match conn {
                    Conn::Client(c) => c.on_event(event, ctx, scratch),
                    Conn::Peer(p) => p.on_event(event, ctx, scratch),
                    Conn::Upstream(u) => u.on_event(event, ctx, scratch),
                    Conn::Admin(a) => a.on_event(event, ctx, scratch, gauges),
                })
            }
        }
    }

    /// Drives a connection without an event: its read or sync budget ran out last turn, or its output
    /// was made too late in the turn to be flushed.
    fn drive(&mut self, token: Token) {
        let (key, gen) = split(token);
        if self.conns.get(key).is_none_or(|e| e.gen != gen) {
            return;
        }
        self.handle(token, |conn, ctx, scratch| match conn {
            Conn::Client(c) => c.drive(ctx, scratch),
            Conn::Peer(p) => p.drive(ctx, scratch),
            Conn::Upstream(u) => u.drive(ctx, scratch),
            Conn::Admin(_) => {}
        });
    }

    /// Hands out what the last handler produced for others, until nothing is left: records to flood,
    /// WHATSATs whose record arrived, Places answers for clients, Places requests to start, neighbours
    /// to dial. Runs after every handler, so all of it happens in the same loop turn.
    fn after_handler(&mut self) {
        let cause = std::mem::replace(&mut self.cause, "hand-off");
        self.hand_off();
        self.cause = cause;
    }

    fn hand_off(&mut self) {
        loop {
            let mut worked = self.deliver_floods();
            while let Some((token, ticket)) = self.ctx.records_arrived.pop() {
                worked = true;
                self.with_conn(token, |conn, ctx, _| {
                    if let Conn::Client(c) = conn {
                        c.record_arrived(ticket, ctx);
                    }
                });
            }
            while let Some((token, ticket, body)) = self.ctx.places_replies.pop() {
                worked = true;
                self.with_conn(token, |conn, ctx, _| {
                    if let Conn::Client(c) = conn {
                        c.places_answered(ticket, &body, ctx);
                    }
                });
            }
            worked |= self.pump_places();
            while let Some(n) = self.ctx.dial_now.pop() {
                if self.ctx.neighbours[n].link == OutLink::Backoff && !self.stopping {
                    self.dial(n);
                }
            }
            if !worked {
                return;
            }
        }
    }

    /// Hands the records stored by the last handler to every live sending link but the one each came
    /// from. Returns whether there was anything.
    fn deliver_floods(&mut self) -> bool {
        if self.ctx.flood_marks.is_empty() {
            return false;
        }
        self.live_links.clear();
        for (i, n) in self.ctx.neighbours.iter().enumerate() {
            if let OutLink::Live(t) = n.link {
                self.live_links.push((i, t));
            }
        }
        let floods = std::mem::take(&mut self.ctx.floods);
        let marks = std::mem::take(&mut self.ctx.flood_marks);
        for &(from, start, end) in &marks {
            let line = &floods[start as usize..end as usize];
            let mut sent_to = 0;
            for &(i, token) in &self.live_links {
                if Some(i) == from {
                    continue;
                }
                let (key, gen) = split(token);
                if let Some(Entry { gen: g, conn: Conn::Peer(p) }) = self.conns.get_mut(key) {
                    if *g == gen {
                        p.send_record(line, &mut self.ctx);
                        sent_to += 1;
                        if p.is_closed() {
                            self.closing.push(token);
                        }
                    }
                }
            }
            if sent_to > 0 {
                self.ctx.log.peer("flood", &format!("to {sent_to} neighbours"), line);
            }
        }
        // Keep both allocations.
        let (mut floods, mut marks) = (floods, marks);
        floods.clear();
        marks.clear();
        self.ctx.floods = floods;
        self.ctx.flood_marks = marks;
        true
    }

    /// Starts queued Places requests on idle pooled connections, or on new ones while fewer than the
    /// limit are open. Returns whether anything happened.
    fn pump_places(&mut self) -> bool {
        let mut worked = false;
        loop {
            let Some(places) = self.ctx.places.as_mut() else { return worked };
            let Some(&id) = places.queue.front() else { return worked };
            if !places.requests.contains_key(&id) {
                places.queue.pop_front(); // already answered (its deadline passed)
                continue;
            }
            let addr = match &places.address {
                super::places_client::Address::Ready(a) => *a,
                super::places_client::Address::Resolving => return worked,
                super::places_client::Address::Failed(_) => {
                    let now = self.ctx.now;
                    for (replies, line) in places.fail_unresolvable(now) {
                        self.ctx.places_done(replies, &line);
                    }
                    return true;
                }
            };
            let token = if let Some(t) = places.idle.pop() {
                t
            } else if places.conns < places.max_conns {
                match self.open_upstream(addr) {
                    Some(t) => t,
                    // A connect that failed at once answered the request at the head of the queue:
                    // that is work (its replies are waiting to be handed out).
                    None => {
                        let head = self.ctx.places.as_ref().and_then(|p| p.queue.front().copied());
                        return worked || head != Some(id);
                    }
                }
            } else {
                return worked;
            };
            let places = self.ctx.places.as_mut().expect("checked");
            places.queue.pop_front();
            let bytes = places.assign(id, token).map(<[u8]>::to_vec).expect("checked above");
            worked = true;
            self.with_conn(token, |conn, ctx, scratch| {
                if let Conn::Upstream(u) = conn {
                    u.start(id, &bytes, ctx, scratch);
                }
            });
        }
    }

    /// Opens a connection to Places (non-blocking; TLS starts once it is connected).
    fn open_upstream(&mut self, addr: SocketAddr) -> Option<Token> {
        let places = self.ctx.places.as_ref()?;
        let tls = match rustls::ClientConnection::new(places.tls.clone(), places.server_name.clone()) {
            Ok(t) => t,
            Err(e) => {
                log::warn!("cannot start TLS: {e}");
                return None;
            }
        };
        let mut stream = match mio::net::TcpStream::connect(addr) {
            Ok(s) => s,
            Err(e) => {
                self.ctx.log.event(format_args!("places connect to {addr} failed: {e}"));
                // Fail the request at the head of the queue rather than spin on it.
                let places = self.ctx.places.as_mut()?;
                let id = places.queue.pop_front()?;
                let kind = super::upstream::FailKind::Connect;
                self.ctx.places_outcome(
                    id,
                    Outcome::Failed { kind, message: format!("connect failed: {e}"), retry: false },
                );
                return None;
            }
        };
        let _ = stream.set_nodelay(true);
        let interest = Interest::READABLE | Interest::WRITABLE;
        self.ctx.registry.register(&mut stream, self.next_token(), interest).ok()?;
        let now = self.ctx.now;
        let token = self.insert(|t| Conn::Upstream(Box::new(Upstream::new(stream, t, tls, now))));
        self.ctx.places.as_mut()?.conns += 1;
        Some(token)
    }

    fn insert(&mut self, make: impl FnOnce(Token) -> Conn) -> Token {
        let gen = self.next_gen;
        // Generations wrap, skipping the values the listener tokens use.
        self.next_gen = if gen >= u32::MAX - 16 { 1 } else { gen + 1 };
        let entry = self.conns.vacant_entry();
        let token = token(entry.key(), gen);
        entry.insert(Entry { gen, conn: make(token) });
        token
    }

    /// The token the next `insert` will hand out, so a socket can be registered before it is stored.
    fn next_token(&self) -> Token {
        token(self.conns.vacant_key(), self.next_gen)
    }

    /// Accepts until the kernel has no more, the client limit is reached, or file descriptors run out.
    fn accept_clients(&mut self) {
        while self.accept_pending && !self.stopping {
            if self.clients >= self.ctx.limits.max_clients {
                // Leave them in the backlog; a close resumes accepting.
                self.ctx.counters.accept_paused += 1;
                return;
            }
            let Some(listener) = &self.client_listener else { return };
            match listener.accept() {
                Ok((stream, addr)) => self.add_client(stream, addr),
                Err(e) if e.kind() == ErrorKind::WouldBlock => self.accept_pending = false,
                Err(e) if matches!(e.kind(), ErrorKind::Interrupted | ErrorKind::ConnectionAborted) => {}
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS: try again shortly instead of spinning on a ready listener.
                    self.ctx.counters.accept_paused += 1;
                    self.accept_failed("client", &e);
                    return;
                }
            }
        }
    }

    fn add_client(&mut self, mut stream: mio::net::TcpStream, addr: SocketAddr) {
        // Small replies must not wait 40 ms for Nagle.
        let _ = stream.set_nodelay(true);
        let idle_at = self.ctx.now + self.ctx.idle_timeout;
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(e) = self.ctx.registry.register(&mut stream, self.next_token(), interest) {
            log::warn!("cannot register client {addr}: {e}");
            return;
        }
        let token = self.insert(|t| Conn::Client(Client::new(stream, addr, t, idle_at)));
        self.clients += 1;
        self.ctx.counters.accepts += 1;
        self.ctx.timers.add(idle_at, Timer::Conn(token));
        self.ctx.log.event(format_args!("client {addr} connected"));
    }

    /// Accepts admin requests (at most `MAX_ADMIN` open; the rest are turned away at once).
    fn accept_admin(&mut self) {
        loop {
            let Some(listener) = &self.admin_listener else { return };
            match listener.accept() {
                Ok((mut stream, addr)) => {
                    if self.admins >= MAX_ADMIN {
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    let interest = Interest::READABLE | Interest::WRITABLE;
                    if self.ctx.registry.register(&mut stream, self.next_token(), interest).is_err() {
                        continue;
                    }
                    let token = self.insert(|t| Conn::Admin(Box::new(Admin::new(stream, addr, t))));
                    self.admins += 1;
                    self.ctx.timers.add(self.ctx.now + super::admin::ADMIN_DEADLINE, Timer::Conn(token));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if matches!(e.kind(), ErrorKind::Interrupted | ErrorKind::ConnectionAborted) => {}
                Err(e) => return self.accept_failed("admin", &e),
            }
        }
    }

    /// Out of descriptors (or kernel memory) on accept. The listener stays ready, and being
    /// edge-triggered it will not say so again, so the connections left in its backlog are picked up by
    /// one retry timer, 100 ms later, for all three listeners; never by spinning, and never by one
    /// timer per failure.
    fn accept_failed(&mut self, listener: &str, e: &std::io::Error) {
        if self.accept_retry_armed {
            return;
        }
        self.accept_retry_armed = true;
        log::warn!("{listener} accept failed: {e}; retrying in {} ms", ACCEPT_RETRY.as_millis());
        self.ctx.log.event(format_args!("{listener} accept failed: {e}; retrying in {} ms", ACCEPT_RETRY.as_millis()));
        self.ctx.timers.add(self.ctx.now + ACCEPT_RETRY, Timer::AcceptRetry);
    }

    fn accept_peers(&mut self) {
        loop {
            let Some(listener) = &self.peer_listener else { return };
            match listener.accept() {
                Ok((mut stream, addr)) => {
                    // Two links per neighbour at most, plus room for handshakes: past that, whoever is
                    // dialing is not a well-behaved neighbour, and is turned away before costing anything.
                    if self.peers >= 2 * self.ctx.neighbours.len() + MAX_HANDSHAKING {
                        self.ctx.counters.peers_refused += 1;
                        self.ctx
                            .log
                            .event(format_args!("peer connection from {addr} refused: too many peer connections"));
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    peer::set_keepalive(&stream);
                    let interest = Interest::READABLE | Interest::WRITABLE;
                    if self.ctx.registry.register(&mut stream, self.next_token(), interest).is_err() {
                        continue;
                    }
                    let now = self.ctx.now;
                    let token = self.insert(|t| Conn::Peer(Peer::acceptor(stream, addr, t, now)));
                    self.peers += 1;
                    self.ctx.timers.add(now + peer::HANDSHAKE_DEADLINE, Timer::Conn(token));
                    self.ctx.log.event(format_args!("peer connection from {addr}"));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if matches!(e.kind(), ErrorKind::Interrupted | ErrorKind::ConnectionAborted) => {}
                Err(e) => return self.accept_failed("peer", &e),
            }
        }
    }

    /// Starts a non-blocking connect to neighbour `n`. Nothing is read or written until its first event.
    fn dial(&mut self, n: usize) {
        if self.stopping {
            return;
        }
        let addr = self.ctx.neighbours[n].addr;
        let mut stream = match mio::net::TcpStream::connect(addr) {
            Ok(s) => s,
            Err(e) => {
                self.ctx.log.event(format_args!("dial {} ({addr}) failed: {e}", self.ctx.neighbours[n].name));
                return self.schedule_redial(n);
            }
        };
        let _ = stream.set_nodelay(true);
        peer::set_keepalive(&stream);
        let interest = Interest::READABLE | Interest::WRITABLE;
        if self.ctx.registry.register(&mut stream, self.next_token(), interest).is_err() {
            return self.schedule_redial(n);
        }
        let now = self.ctx.now;
        let token = self.insert(|t| Conn::Peer(Peer::dialer(stream, addr, t, n, now)));
        self.peers += 1;
        self.ctx.neighbours[n].link = OutLink::Dialing(token);
        self.ctx.timers.add(now + peer::HANDSHAKE_DEADLINE, Timer::Conn(token));
    }

    /// Redial `n` after its backoff (jittered; doubling up to the cap).
    fn schedule_redial(&mut self, n: usize) {
        if self.stopping {
            return;
        }
        let delay = self.ctx.jitter(self.ctx.neighbours[n].backoff);
        let nb = &mut self.ctx.neighbours[n];
        nb.link = OutLink::Backoff;
        nb.backoff = (nb.backoff * 2).min(BACKOFF_CAP);
        self.ctx.timers.add(self.ctx.now + delay, Timer::Redial(n));
    }

    fn on_signal(&mut self) {
        let mut signals: Vec<i32> = self.signals.pending().collect();
        // SIGHUP never stops the server: it reopens the log file (external rotation).
        if signals.contains(&signal_hook::consts::SIGHUP) {
            log::info!("SIGHUP: reopening the log file");
            self.ctx.log.event(format_args!("SIGHUP: reopening the log file"));
            self.ctx.log.reopen();
            signals.retain(|&s| s != signal_hook::consts::SIGHUP);
        }
        if signals.is_empty() {
            return;
        }
        if self.stopping {
            log::warn!("second signal: exiting at once");
            self.ctx.log.event(format_args!("second signal: exiting at once"));
            self.ctx.log.close();
            std::process::exit(1);
        }
        log::info!("signal {}: shutting down", signals[0]);
        self.ctx.log.event(format_args!("signal {}: shutting down, answering what was received", signals[0]));
        self.begin_shutdown();
    }

    /// Stops accepting, answers everything already received (including bytes still in the kernel's
    /// buffers), sends the peers what is queued for them, then lets the loop finish once every
    /// connection is closed, or at the grace deadline.
    pub fn begin_shutdown(&mut self) {
        self.stopping = true;
        let listeners = [self.client_listener.take(), self.peer_listener.take(), self.admin_listener.take()];
        for mut listener in listeners.into_iter().flatten() {
            let _ = self.ctx.registry.deregister(&mut listener);
        }
        let tokens: Vec<Token> = self.conns.iter().map(|(key, entry)| token(key, entry.gen)).collect();
        // Clients first: what they sent may still flood to the peers before the links close.
        for pass in [false, true] {
            for &t in &tokens {
                let is_peer = self.is_peer_event(t);
                if is_peer == pass {
                    self.handle(t, |conn, ctx, scratch| match conn {
                        Conn::Client(c) => c.shut_down(ctx, scratch),
                        Conn::Peer(p) => p.shut_down(ctx),
                        // Requests in flight still answer the clients waiting on them; an admin request
                        // already read is answered too.
                        Conn::Upstream(_) | Conn::Admin(_) => {}
                    });
                }
            }
        }
        // Places requests in flight must answer (or fail) before the grace period ends; one whose answer
        // is being shaped is still in `requests`, so it is cut off the same way.
        if let Some(places) = &self.ctx.places {
            let cut = self.ctx.now + SHUTDOWN_GRACE - Duration::from_millis(300);
            for &id in places.requests.keys() {
                self.ctx.timers.add(cut, Timer::Places(id));
            }
        }
        self.ctx.timers.add(self.ctx.now + SHUTDOWN_GRACE, Timer::ShutdownDeadline);
    }

    fn fire_timers(&mut self) {
        while let Some(timer) = self.ctx.timers.pop_due(self.ctx.now) {
            match timer {
                Timer::LogFlush => {
                    self.log_flush_armed = false;
                    self.ctx.log.flush();
                }
                Timer::AcceptRetry => {
                    self.accept_retry_armed = false;
                    self.accept_clients();
                    self.accept_peers();
                    self.accept_admin();
                }
                Timer::ShutdownDeadline => {
                    log::warn!("shut-down grace period over: closing {} connections", self.conns.len());
                    self.finished = true;
                }
                Timer::Redial(n) => {
                    if self.ctx.neighbours[n].link == OutLink::Backoff {
                        self.dial(n);
                    }
                }
                Timer::Conn(token) => {
                    // Each connection keeps its own deadlines and re-arms itself; nothing is re-added here,
                    // so stale entries cannot multiply.
                    self.handle(token, |conn, ctx, scratch| match conn {
                        Conn::Client(c) => {
                            c.on_timer(ctx);
                            // The timer may have moved it on (a wait answered, a slow line ended).
                            c.drive(ctx, scratch);
                        }
                        Conn::Peer(p) => p.check_deadline(ctx),
                        Conn::Upstream(u) => u.check_idle(ctx),
                        Conn::Admin(a) => a.expire(),
                    });
                }
                Timer::Places(id) => {
                    let now = self.ctx.now;
                    let Some(places) = self.ctx.places.as_mut() else { continue };
                    let Some((replies, conn, line)) = places.expire(id, now) else { continue };
                    self.ctx.places_done(replies, &line);
                    if let Some(conn) = conn {
                        self.with_conn(conn, |c, ctx, _| {
                            if let Conn::Upstream(u) = c {
                                u.abort(ctx);
                            }
                        });
                    }
                    self.after_handler();
                }
            }
        }
    }

    /// Writes every dirty connection: one `write` each for everything it collected this turn. Peer links
    /// go first, so a flood leaves before the reply to the IAMAT that caused it.
    fn flush_dirty(&mut self) {
        // Writing can make more work: a client whose output drained is unthrottled and answers its
        // held-back lines, which store records to flood and may start Places requests. So each round
        // writes the peers, then the clients, handing out what every client produced right after it
        // (`handle`), and the floods it made go out in the next round, before that client's next write.
        // At most three rounds; what is left goes out next turn.
        for _ in 0..3 {
            if self.ctx.dirty_peers.is_empty() && self.ctx.dirty.is_empty() {
                return;
            }
            let peers = self.take_queue(|ctx| &mut ctx.dirty_peers);
            for &token in &peers {
                self.with_conn(token, |conn, ctx, _| {
                    if let Conn::Peer(p) = conn {
                        p.flush(ctx);
                    }
                });
            }
            self.recycle(peers);
            let dirty = self.take_queue(|ctx| &mut ctx.dirty);
            for &token in &dirty {
                self.handle(token, |conn, ctx, scratch| match conn {
                    Conn::Client(c) => c.flush(ctx, scratch),
                    Conn::Admin(a) => a.flush(),
                    _ => {}
                });
            }
            self.recycle(dirty);
        }
        // Still dirty: the next turn must not sleep.
        self.ctx.again.extend(self.ctx.dirty.iter().chain(&self.ctx.dirty_peers));
    }

    /// Takes the tokens of one queue (`again`, `dirty`, `dirty_peers`) for a pass over them. What the pass
    /// queues again goes into the spare allocation left in the queue's place, and `recycle` keeps the
    /// taken one as the next spare: the buffers rotate, and queueing allocates nothing in steady state.
    fn take_queue(&mut self, queue: fn(&mut Ctx) -> &mut Vec<Token>) -> Vec<Token> {
        let spare = std::mem::take(&mut self.spare_tokens);
        std::mem::replace(queue(&mut self.ctx), spare)
    }

    fn recycle(&mut self, mut taken: Vec<Token>) {
        taken.clear();
        if taken.capacity() >= self.spare_tokens.capacity() {
            self.spare_tokens = taken;
        }
    }

    /// Deregisters and frees every connection that reached `Closed` this turn.
    fn close_finished(&mut self) {
        let clients_before = self.clients;
        for token in std::mem::take(&mut self.closing) {
            let (key, gen) = split(token);
            if self.conns.get(key).is_none_or(|e| e.gen != gen) {
                continue; // already freed this turn
            }
            match self.conns.remove(key).conn {
                Conn::Admin(mut a) => {
                    let _ = self.ctx.registry.deregister(&mut a.stream);
                    self.admins -= 1;
                }
                Conn::Client(mut c) => {
                    c.forget_waits(&mut self.ctx);
                    let reason = match c.state {
                        super::client::State::Closed(r) => r,
                        _ => CloseReason::Shutdown,
                    };
                    let _ = self.ctx.registry.deregister(&mut c.stream);
                    let slot = CloseReason::ALL.iter().position(|r| *r == reason).unwrap_or(0);
                    self.ctx.counters.closes[slot] += 1;
                    self.ctx.log.event(format_args!("client {} closed: {}", c.addr, reason.name()));
                    self.clients -= 1;
                }
                Conn::Upstream(mut u) => {
                    let _ = self.ctx.registry.deregister(&mut u.stream);
                    // The Places client counted it out when it closed (Upstream::close).
                }
                Conn::Peer(mut p) => {
                    let _ = self.ctx.registry.deregister(&mut p.stream);
                    self.peers -= 1;
                    match p.role {
                        Role::Dialer(n) => {
                            let nb = &mut self.ctx.neighbours[n];
                            if matches!(nb.link, OutLink::Live(t) | OutLink::Dialing(t) if t == token) {
                                if matches!(nb.link, OutLink::Live(_)) {
                                    self.ctx.counters.links_down += 1;
                                }
                                nb.link = OutLink::Backoff;
                                self.schedule_redial(n);
                            }
                        }
                        Role::Acceptor => {
                            // Only a link that passed the handshake was counted in.
                            if let Some(n) = p.identified {
                                let nb = &mut self.ctx.neighbours[n];
                                nb.links_in = nb.links_in.saturating_sub(1);
                            }
                        }
                    }
                }
            }
        }
        // A client slot (and a descriptor) freed this turn: take the next one waiting in the backlog.
        // Only then: out of descriptors, calling accept every turn would fail every turn.
        if self.clients < clients_before && self.accept_pending && !self.accept_retry_armed {
            self.accept_clients();
        }
    }
}
