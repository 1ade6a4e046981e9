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
//!    later in the same batch finds its generation stale and is dropped).
//!
//! Tokens carry a slab key and a generation. A slab reuses keys at once, so a token alone could name a
//! newer connection than the one an event was for; the generation tells them apart.

use super::client::Client;
use super::log::{self as server_log, ServerLog};
use super::timer::{Timer, Timers};
use crate::config::{Config, Limits};
use crate::protocol::{AtFields, Timestamp, WhatsAt};
use mio::event::Event;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Registry, Token};
use slab::Slab;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

const CLIENT_LISTENER: Token = Token(usize::MAX);
const PEER_LISTENER: Token = Token(usize::MAX - 1);
const SIGNALS: Token = Token(usize::MAX - 2);

/// Reads one connection may do per event before it yields to the others (fairness under floods).
pub const READS_PER_TURN: usize = 16;
/// Size of the shared read buffer.
const SCRATCH: usize = 64 * 1024;
/// How long a graceful shut-down may take before the loop gives up on slow clients.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);

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
    /// Unwritten replies past the hard bound: the client does not read.
    OutputBound,
    /// Nothing sent and nothing owed for the idle time-out.
    Idle,
    /// The server is shutting down.
    Shutdown,
}

impl CloseReason {
    pub const ALL: [CloseReason; 6] = [
        CloseReason::Eof,
        CloseReason::Reset,
        CloseReason::LineTooLong,
        CloseReason::OutputBound,
        CloseReason::Idle,
        CloseReason::Shutdown,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CloseReason::Eof => "eof",
            CloseReason::Reset => "reset",
            CloseReason::LineTooLong => "line_too_long",
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
             bytes_in={} bytes_out={} writes={} stored={}",
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
            self.records_stored
        )
    }
}

/// What a WHATSAT got from the server's context.
pub enum Whatsat {
    /// The client has no record here: the command is invalid.
    UnknownClient,
    /// The whole reply (AT line, JSON, blank line) was appended to the buffer.
    Answered,
    /// Places is being asked; the answer comes back through `Client::places_answered` with this ticket.
    Pending { ticket: u64, at_line: Vec<u8> },
}

/// Everything a connection's handler may touch besides its own connection: the server's shared state.
pub struct Ctx {
    pub name: Box<[u8]>,
    pub registry: Registry,
    /// Monotonic time of this turn, for deadlines.
    pub now: Instant,
    /// Wall-clock time of this turn, for time differences.
    pub wall: Timestamp,
    pub records: crate::record::RecordStore,
    pub limits: Limits,
    pub idle_timeout: Duration,
    pub log: ServerLog,
    pub counters: Counters,
    pub timers: Timers,
    /// Connections with output to write at the end of this turn.
    pub dirty: Vec<Token>,
    /// Connections that still had input when their read budget ran out: driven again next turn.
    pub again: Vec<Token>,
    /// The legacy failure object served while Places is not configured.
    places_unconfigured: Vec<u8>,
}

impl Ctx {
    /// Stores an `AT` line if it is the newest record of its client, and floods it if so.
    pub fn store_and_flood(
        &mut self,
        line: &[u8],
        fields: AtFields,
        _from_peer: Option<usize>,
    ) -> bool {
        let stored = self.records.offer(line, fields);
        if stored {
            self.counters.records_stored += 1;
        }
        stored
    }

    /// Answers a WHATSAT into `out`, or starts the Places request it needs.
    pub fn whatsat(&mut self, cmd: &WhatsAt<'_>, _client: Token, out: &mut Vec<u8>) -> Whatsat {
        let Some(record) = self.records.get(cmd.client_id) else {
            return Whatsat::UnknownClient;
        };
        out.extend_from_slice(record.line());
        out.extend_from_slice(&self.places_unconfigured);
        out.extend_from_slice(b"\n\n");
        Whatsat::Answered
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
    signals: signal_hook_mio::v1_0::Signals,
    clients: usize,
    /// The client listener has connections we did not accept yet (at the client limit, or out of fds).
    accept_pending: bool,
    stopping: bool,
    finished: bool,
    /// A log flush is scheduled (it is only while lines are waiting, so an idle server sleeps).
    log_flush_armed: bool,
    /// Connections to free at the end of the turn.
    closing: Vec<Token>,
}

/// Binds a listener, with an error that names the server, the address and its role.
fn listen(name: &str, addr: SocketAddr, what: &str) -> Result<TcpListener, String> {
    TcpListener::bind(addr).map_err(|e| format!("{name}: cannot listen on {addr} ({what}): {e}"))
}

impl Server {
    /// Binds the server `name` of `config`: nothing is left half-started when this fails.
    pub fn bind(config: &Config, name: &str) -> Result<Server, String> {
        let index = config.server_index(name).ok_or_else(|| {
            let names: Vec<&str> = config.servers.iter().map(|s| s.name.as_str()).collect();
            format!(
                "unknown server {name:?} (the config has {})",
                names.join(", ")
            )
        })?;
        let me = &config.servers[index];
        let client_addr = me.client_addr()?;
        let peer_addr = me.peer_addr()?;
        let client_listener = listen(name, client_addr, "client port")?;
        let peer_listener = listen(name, peer_addr, "peer port")?;
        let log = ServerLog::open(&config.log_file(name))?;
        Self::with_listeners(config, index, client_listener, peer_listener, log)
    }

    fn with_listeners(
        config: &Config,
        index: usize,
        mut client_listener: TcpListener,
        mut peer_listener: TcpListener,
        log: ServerLog,
    ) -> Result<Server, String> {
        let me = &config.servers[index];
        let poll = Poll::new().map_err(|e| format!("cannot create poll: {e}"))?;
        let registry = poll
            .registry()
            .try_clone()
            .map_err(|e| format!("cannot clone registry: {e}"))?;
        let io = |e: std::io::Error| format!("{}: cannot register: {e}", me.name);
        registry
            .register(&mut client_listener, CLIENT_LISTENER, Interest::READABLE)
            .map_err(io)?;
        registry
            .register(&mut peer_listener, PEER_LISTENER, Interest::READABLE)
            .map_err(io)?;
        let mut signals = signal_hook_mio::v1_0::Signals::new([
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGINT,
        ])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
        registry
            .register(&mut signals, SIGNALS, Interest::READABLE)
            .map_err(io)?;

        let now = Instant::now();
        let timers = Timers::default();
        let failure = serde_json::json!({
            "error_message": "Places is not configured for this server",
            "html_attributions": [],
            "results": [],
            "status": "UNKNOWN_ERROR",
        });
        let ctx = Ctx {
            name: me.name.as_bytes().into(),
            registry,
            now,
            wall: Timestamp::from_system_time(SystemTime::now()),
            records: crate::record::RecordStore::new(),
            limits: config.limits.clone(),
            idle_timeout: Duration::from_millis(config.limits.idle_timeout_ms),
            log,
            counters: Counters::default(),
            timers,
            dirty: Vec::new(),
            again: Vec::new(),
            places_unconfigured: crate::gjson::to_vec(&failure),
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
                signals,
                clients: 0,
                accept_pending: false,
                stopping: false,
                finished: false,
                log_flush_armed: false,
                closing: Vec::new(),
            },
        })
    }

    /// The addresses the server listens on: (clients, peers).
    pub fn local_addrs(&self) -> (SocketAddr, SocketAddr) {
        let addr =
            |l: &Option<TcpListener>| l.as_ref().and_then(|l| l.local_addr().ok()).expect("bound");
        (
            addr(&self.core.client_listener),
            addr(&self.core.peer_listener),
        )
    }

    pub fn counters(&self) -> &Counters {
        &self.core.ctx.counters
    }

    /// Runs the loop until a signal asks it to stop and everything owed has been answered.
    pub fn run(&mut self) -> Result<(), String> {
        let (client, peer) = self.local_addrs();
        self.core.ctx.log.set_time(self.core.ctx.wall);
        self.core.ctx.log.event(format_args!(
            "start: {} listening for clients on {client} and peers on {peer}",
            String::from_utf8_lossy(&self.core.ctx.name)
        ));
        while !self.core.finished {
            self.turn()?;
        }
        self.core
            .ctx
            .log
            .event(format_args!("stop: {}", self.core.ctx.counters.summary()));
        self.core.ctx.log.flush();
        log::info!("stopped: {}", self.core.ctx.counters.summary());
        Ok(())
    }

    /// One loop turn (see the module documentation for the order of its steps).
    pub fn turn(&mut self) -> Result<(), String> {
        let core = &mut self.core;
        let timeout = if core.ctx.again.is_empty() {
            core.ctx.timers.timeout(core.ctx.now)
        } else {
            Some(Duration::ZERO)
        };
        if let Err(e) = self.poll.poll(&mut self.events, timeout) {
            if e.kind() != ErrorKind::Interrupted {
                return Err(format!("poll failed: {e}"));
            }
        }
        core.ctx.now = Instant::now();
        core.ctx.wall = Timestamp::from_system_time(SystemTime::now());
        core.ctx.log.set_time(core.ctx.wall);
        core.ctx.counters.turns += 1;

        for token in std::mem::take(&mut core.ctx.again) {
            core.drive(token);
        }
        for event in self.events.iter() {
            core.ctx.counters.events += 1;
            core.dispatch(event);
        }
        core.fire_timers();
        core.flush_dirty();
        core.close_finished();
        if core.ctx.log.has_pending() && !core.log_flush_armed {
            core.log_flush_armed = true;
            core.ctx
                .timers
                .add(core.ctx.now + server_log::FLUSH_EVERY, Timer::LogFlush);
        }
        if core.stopping && core.clients == 0 {
            core.finished = true;
        }
        Ok(())
    }
}

impl Core {
    fn dispatch(&mut self, event: &Event) {
        match event.token() {
            CLIENT_LISTENER => {
                self.accept_pending = true;
                self.accept_clients();
            }
            PEER_LISTENER => self.accept_peers(),
            SIGNALS => self.on_signal(),
            token => {
                let (key, gen) = split(token);
                let Some(entry) = self.conns.get_mut(key).filter(|e| e.gen == gen) else {
                    self.ctx.counters.stale_events += 1;
                    return;
                };
                match &mut entry.conn {
                    Conn::Client(c) => {
                        c.on_event(event, &mut self.ctx, &mut self.scratch);
                        if c.is_closed() {
                            self.closing.push(token);
                        }
                    }
                }
            }
        }
    }

    /// Drives a connection without an event (its read budget ran out last turn).
    fn drive(&mut self, token: Token) {
        let (key, gen) = split(token);
        let Some(entry) = self.conns.get_mut(key).filter(|e| e.gen == gen) else {
            return;
        };
        match &mut entry.conn {
            Conn::Client(c) => {
                c.drive(&mut self.ctx, &mut self.scratch);
                if c.is_closed() {
                    self.closing.push(token);
                }
            }
        }
    }

    fn insert(&mut self, make: impl FnOnce(Token) -> Conn) -> Token {
        let gen = self.next_gen;
        // Generations wrap, skipping the values the listener tokens use.
        self.next_gen = if gen >= u32::MAX - 16 { 1 } else { gen + 1 };
        let entry = self.conns.vacant_entry();
        let token = token(entry.key(), gen);
        entry.insert(Entry {
            gen,
            conn: make(token),
        });
        token
    }

    /// Accepts until the kernel has no more, the client limit is reached, or file descriptors run out.
    fn accept_clients(&mut self) {
        while self.accept_pending && !self.stopping {
            if self.clients >= self.ctx.limits.max_clients {
                // Leave them in the backlog; a close resumes accepting.
                self.ctx.counters.accept_paused += 1;
                return;
            }
            let Some(listener) = &self.client_listener else {
                return;
            };
            match listener.accept() {
                Ok((stream, addr)) => self.add_client(stream, addr),
                Err(e) if e.kind() == ErrorKind::WouldBlock => self.accept_pending = false,
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::Interrupted | ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS: try again shortly instead of spinning on a ready listener.
                    log::warn!("accept failed: {e}; retrying in 100 ms");
                    self.ctx.log.event(format_args!("accept failed: {e}"));
                    self.ctx.counters.accept_paused += 1;
                    self.ctx.timers.add(
                        self.ctx.now + Duration::from_millis(100),
                        Timer::AcceptRetry,
                    );
                    return;
                }
            }
        }
    }

    fn add_client(&mut self, mut stream: mio::net::TcpStream, addr: SocketAddr) {
        // Small replies must not wait 40 ms for Nagle.
        let _ = stream.set_nodelay(true);
        let idle_at = self.ctx.now + self.ctx.idle_timeout;
        let registry = &self.ctx.registry;
        let gen = self.next_gen;
        let key = self.conns.vacant_key();
        if let Err(e) = registry.register(
            &mut stream,
            token(key, gen),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::warn!("cannot register client {addr}: {e}");
            return;
        }
        let token = self.insert(|t| Conn::Client(Client::new(stream, addr, t, idle_at)));
        self.clients += 1;
        self.ctx.counters.accepts += 1;
        self.ctx.timers.add(idle_at, Timer::Conn(token));
        self.ctx.log.event(format_args!("client {addr} connected"));
    }

    fn accept_peers(&mut self) {
        // Peer links arrive with the herd (issue 3); until then the port is held and connections refused.
        let Some(listener) = &self.peer_listener else {
            return;
        };
        while let Ok((stream, addr)) = listener.accept() {
            self.ctx.log.event(format_args!(
                "peer connection from {addr} refused: peering not enabled"
            ));
            drop(stream);
        }
    }

    fn on_signal(&mut self) {
        let signals: Vec<i32> = self.signals.pending().collect();
        if signals.is_empty() {
            return;
        }
        if self.stopping {
            log::warn!("second signal: exiting at once");
            self.ctx
                .log
                .event(format_args!("second signal: exiting at once"));
            self.ctx.log.flush();
            std::process::exit(1);
        }
        log::info!("signal {}: shutting down", signals[0]);
        self.ctx.log.event(format_args!(
            "signal {}: shutting down, answering what was received",
            signals[0]
        ));
        self.begin_shutdown();
    }

    /// Stops accepting, answers everything already received (including bytes still in the kernel's
    /// buffers), then lets the loop finish once every client is closed, or at the grace deadline.
    pub fn begin_shutdown(&mut self) {
        self.stopping = true;
        for mut listener in [self.client_listener.take(), self.peer_listener.take()]
            .into_iter()
            .flatten()
        {
            let _ = self.ctx.registry.deregister(&mut listener);
        }
        let tokens: Vec<Token> = self
            .conns
            .iter()
            .map(|(key, entry)| token(key, entry.gen))
            .collect();
        for t in tokens {
            let (key, _) = split(t);
            match &mut self.conns[key].conn {
                Conn::Client(c) => {
                    c.shut_down(&mut self.ctx, &mut self.scratch);
                    if c.is_closed() {
                        self.closing.push(t);
                    }
                }
            }
        }
        self.ctx
            .timers
            .add(self.ctx.now + SHUTDOWN_GRACE, Timer::ShutdownDeadline);
    }

    fn fire_timers(&mut self) {
        while let Some(timer) = self.ctx.timers.pop_due(self.ctx.now) {
            match timer {
                Timer::LogFlush => {
                    self.log_flush_armed = false;
                    self.ctx.log.flush();
                }
                Timer::AcceptRetry => self.accept_clients(),
                Timer::ShutdownDeadline => {
                    log::warn!(
                        "shut-down grace period over: closing {} connections",
                        self.conns.len()
                    );
                    self.finished = true;
                }
                Timer::Conn(token) => {
                    let (key, gen) = split(token);
                    let Some(entry) = self.conns.get_mut(key).filter(|e| e.gen == gen) else {
                        continue;
                    };
                    match &mut entry.conn {
                        Conn::Client(c) => match c.idle_check(&mut self.ctx) {
                            Some(next) => self.ctx.timers.add(next, Timer::Conn(token)),
                            None => self.closing.push(token),
                        },
                    }
                }
                Timer::Redial(_) | Timer::CacheSweep => {}
            }
        }
    }

    /// Writes every dirty connection: one `write` each for everything it collected this turn.
    fn flush_dirty(&mut self) {
        // A flush can unthrottle a client, whose held-back lines make new replies: go round at most
        // twice, and leave the rest for the next turn.
        for _ in 0..2 {
            if self.ctx.dirty.is_empty() {
                break;
            }
            let dirty = std::mem::take(&mut self.ctx.dirty);
            for &token in &dirty {
                let (key, gen) = split(token);
                let Some(entry) = self.conns.get_mut(key).filter(|e| e.gen == gen) else {
                    continue;
                };
                match &mut entry.conn {
                    Conn::Client(c) => {
                        c.flush(&mut self.ctx, &mut self.scratch);
                        if c.is_closed() {
                            self.closing.push(token);
                        }
                    }
                }
            }
            // Keep the allocation for the next turn.
            let mut dirty = dirty;
            dirty.clear();
            if self.ctx.dirty.is_empty() {
                self.ctx.dirty = dirty;
            }
        }
        if !self.ctx.dirty.is_empty() {
            // Still dirty: make sure the next poll does not sleep.
            self.ctx.again.extend(self.ctx.dirty.iter().copied());
        }
    }

    /// Deregisters and frees every connection that reached `Closed` this turn.
    fn close_finished(&mut self) {
        for token in std::mem::take(&mut self.closing) {
            let (key, gen) = split(token);
            if self.conns.get(key).is_none_or(|e| e.gen != gen) {
                continue; // already freed this turn
            }
            let entry = self.conns.remove(key);
            match entry.conn {
                Conn::Client(mut c) => {
                    let reason = match c.state {
                        super::client::State::Closed(r) => r,
                        _ => CloseReason::Shutdown,
                    };
                    let _ = self.ctx.registry.deregister(&mut c.stream);
                    self.ctx.counters.closes[CloseReason::ALL
                        .iter()
                        .position(|r| *r == reason)
                        .unwrap_or(0)] += 1;
                    self.ctx
                        .log
                        .event(format_args!("client {} closed: {}", c.addr, reason.name()));
                    self.clients -= 1;
                }
            }
        }
        if self.accept_pending && self.clients < self.ctx.limits.max_clients {
            self.accept_clients();
        }
    }
}
