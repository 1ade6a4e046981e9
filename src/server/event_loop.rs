//! The readiness loop: where this program waits for the kernel, and what it does when it wakes.
//!
//! One `mio::Poll` owns every socket of one herd server. One loop turn, in order ([`Server::turn`]):
//!
//! 1. `poll` sleeps until a socket is ready or the next deadline (the only place this thread blocks,
//!    apart from the log's buffered file write), or not at all if work was left over from last turn;
//! 2. the clocks are read once: every command of the turn is stamped with the same time;
//! 3. connections left with input by their budget last turn are driven again, then every event is
//!    dispatched to its connection (peer links first, so a record that reached this host before a
//!    client's WHATSAT is stored before the WHATSAT is answered). A handler reads, answers into its
//!    output buffer, marks itself dirty, and leaves in `ctx.outbox` what others must get: right after
//!    it the hand-off delivers that (floods to the peer links, answers to waiting clients);
//! 4. deadlines that are due fire (idle clients, redials, Places time-outs, the log flush);
//! 5. every dirty connection is written once (redis's `beforeSleep`): one `write` per connection per
//!    turn, however many replies it collected; peer links first, so a flood leaves before the reply to
//!    the IAMAT that caused it;
//! 6. connections that reached their closed state are deregistered and freed (deferred close: an event
//!    for them later in the same batch reached a closed connection, which did nothing; once freed, any
//!    token still held for them finds its generation stale).
//!
//! What is below this file: `conn/` (the four connection kinds behind one trait, and the slab that
//! holds them), `handoff.rs` (delivering the outbox), `sockets.rs` (listening, accepting, dialling),
//! `herd.rs` and `ctx.rs` (the herd's rules and the state they work on), and the leaves.

use super::admin_auth::{self, AdminGuard};
use super::auth::{Auth, Secret};
use super::conn::{Conn, Connection, Conns, Delivery};
use super::ctx::{Counters, Ctx, Neighbour, OutLink};
use super::error::ServerError;
use super::handoff::HandOff;
use super::herd;
use super::journal;
use super::log::{self as server_log, ServerLog};
use super::peer_tls::PeerTls;
use super::places_client::PlacesClient;
use super::sockets::{self, Listeners};
use super::timer::Timer;
use super::token::{TokenName, ADMIN_LISTENER, CLIENT_LISTENER, PEER_LISTENER, SIGNALS, TRACE, WAKER};
use crate::config::Config;
use crate::protocol::Timestamp;
use crate::route::{Routes, Trees};
use mio::event::Event;
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Size of the shared read buffer.
const SCRATCH: usize = 64 * 1024;
/// How long a graceful shut-down may take before the loop gives up on slow clients.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);

/// One herd server: its poll, and everything the poll reports on.
pub struct Server {
    poll: Poll,
    events: Events,
    core: Core,
}

/// The parts of the server an event handler works on (everything but the `Poll` and its event buffer,
/// which are borrowed while events are dispatched).
struct Core {
    conns: Conns,
    ctx: Ctx,
    /// The read buffer every connection reads into (one per loop, not one per connection).
    scratch: Box<[u8]>,
    listeners: Listeners,
    signals: Signals,
    handoff: HandOff,
    finished: bool,
    /// A log flush is scheduled (it is only while lines are waiting, so an idle server sleeps).
    log_flush_armed: bool,
    /// The allocation a token queue gets while a pass takes its tokens (`take_queue`).
    spare_tokens: Vec<Token>,
    /// The journal to open (and replay) when the loop starts, and the waker its writer thread uses.
    journal_opts: Option<(journal::Options, Arc<mio::Waker>)>,
    /// Connections whose wait for the journal ended this turn.
    durable_ready: Vec<Token>,
    /// The journal got somewhere while this turn was ending: the next poll must not sleep.
    journal_again: bool,
    /// A `Timer::Journal` is armed; the seq stored last when it last fired (an idle server is not woken).
    journal_tick_armed: bool,
    journal_tick_seq: u64,
}

impl Server {
    /// Binds the server `name` of `config`: nothing is left half-started when this fails.
    pub fn bind(config: &Config, name: &str) -> Result<Server, ServerError> {
        let index = config.server_index(name).ok_or_else(|| ServerError::UnknownServer {
            name: name.to_string(),
            known: config.servers.iter().map(|s| s.name.clone()).collect(),
        })?;
        let secret = Secret::from_env(config.herd_secret_env.as_deref())?;
        let admin_token = admin_auth::admin_token(config, index)?;
        let bad = ServerError::Config;
        let me = &config.servers[index];
        let (client_addr, peer_addr) = (me.client_addr().map_err(bad)?, me.peer_addr().map_err(bad)?);
        let mut neighbours = Vec::new();
        for n in config.neighbours(index) {
            let s = &config.servers[n];
            neighbours.push(Neighbour::new(s.name.clone(), s.peer_addr().map_err(bad)?));
        }
        let admin_addr = me.admin_port.map(|port| SocketAddr::new(config.admin_host, port));
        let mut listeners = Listeners::bind(name, client_addr, peer_addr, admin_addr, config.share_client_port)?;
        // Before the log file: a server that cannot present its certificate must not start at all.
        let peer_tls = match &config.peer_tls {
            Some(tls) => Some(PeerTls::load(tls, &config.path, name).map_err(ServerError::PeerTls)?),
            None => None,
        };
        let log = ServerLog::open(&config.log_file(name), &config.log)?;

        let poll = Poll::new().map_err(ServerError::io("cannot create poll"))?;
        let registry = poll.registry().try_clone().map_err(ServerError::io("cannot clone registry"))?;
        listeners.register(&registry, name)?;
        // SIGTERM and SIGINT stop the server; SIGHUP reopens its log file and rereads the peer certificate.
        let mut signals =
            Signals::new([SIGTERM, SIGINT, SIGHUP]).map_err(ServerError::io("cannot install signal handlers"))?;
        registry
            .register(&mut signals, SIGNALS, Interest::READABLE)
            .map_err(ServerError::io(format!("{name}: cannot register")))?;
        // One waker per poll: the Places helper threads and the journal's writer share it.
        let waker = match config.places.is_some() || config.journal.is_some() {
            true => {
                Some(Arc::new(mio::Waker::new(poll.registry(), WAKER).map_err(ServerError::io("cannot create waker"))?))
            }
            false => None,
        };
        let places = match (&config.places, &waker) {
            (Some(pc), Some(waker)) => Some(PlacesClient::new(pc, Arc::clone(waker))?),
            _ => None,
        };
        let journal_opts = match (&config.journal, &waker) {
            (Some(jc), Some(waker)) => {
                let fsync = journal::FsyncMode::parse(&jc.fsync)
                    .ok_or_else(|| ServerError::Journal(journal::JournalError::UnknownFsync(jc.fsync.clone())))?;
                let mut opts = journal::Options::new(jc.dir.join(name), fsync);
                opts.rewrite_ratio = jc.rewrite_ratio;
                opts.rewrite_min_bytes = jc.rewrite_min_bytes;
                opts.truncate_corrupt = jc.truncate_corrupt;
                Some((opts, Arc::clone(waker)))
            }
            _ => None,
        };
        let seed = Ctx::random_seed()?;
        let herd: Vec<&str> = config.servers.iter().map(|s| s.name.as_str()).collect();
        // Every origin's shortest-path tree over the configured graph, seen from here (`route.rs`).
        let trees = Trees::new(config.servers.len(), &config.links);
        let routes = Routes::new(&trees, &herd, index, &config.neighbours(index));
        let mut ctx = Ctx::new(&me.name, &herd, &config.limits, log, Auth::new(secret), neighbours, places, seed)
            .with_retention(config.records)
            .with_routes(routes);
        ctx.admin_guard = AdminGuard::new(&config.admin_host.to_string(), admin_token.as_deref());
        ctx.peer_tls = peer_tls;
        Ok(Server {
            poll,
            events: Events::with_capacity(1024),
            core: Core {
                conns: Conns::new(registry),
                ctx,
                scratch: vec![0u8; SCRATCH].into_boxed_slice(),
                listeners,
                signals,
                handoff: HandOff::default(),
                finished: false,
                log_flush_armed: false,
                spare_tokens: Vec::new(),
                journal_opts,
                durable_ready: Vec::new(),
                journal_again: false,
                journal_tick_armed: false,
                journal_tick_seq: 0,
            },
        })
    }

    /// The addresses the server listens on: (clients, peers).
    pub fn local_addrs(&self) -> (SocketAddr, SocketAddr) {
        self.core.listeners.local_addrs()
    }

    pub fn counters(&self) -> &Counters {
        &self.core.ctx.counters
    }

    /// Turns the log file off (benchmarks measure what logging costs by comparing with and without).
    pub fn disable_log(&mut self) {
        self.core.ctx.log = ServerLog::disabled();
    }

    /// Runs the loop until a signal asks it to stop and everything owed has been answered.
    pub fn run(&mut self) -> Result<(), ServerError> {
        let (client, peer) = self.local_addrs();
        let core = &mut self.core;
        core.ctx.log.set_time(core.ctx.wall);
        let name = String::from_utf8_lossy(&core.ctx.name).to_string();
        core.ctx.log.event(format_args!("start: {name} listening for clients on {client} and peers on {peer}"));
        // The journal is replayed before the first accept (connections wait in the listen backlog).
        if let Some((opts, waker)) = core.journal_opts.take() {
            core.ctx.open_journal(&opts, waker).map_err(ServerError::Journal)?;
            core.ctx.timers.add(core.ctx.now, Timer::Journal);
            core.journal_tick_armed = true;
        }
        // Dial every neighbour at once: those already up link within a round trip.
        for n in 0..core.ctx.neighbours.len() {
            sockets::dial_peer(n, &mut core.conns, &mut core.ctx);
        }
        if core.ctx.records().retention().max_age_s.is_some() {
            core.ctx.timers.add(core.ctx.now, Timer::RecordSweep);
        }
        while !self.core.finished {
            self.turn()?;
        }
        if let Some(j) = self.core.ctx.journal.as_mut() {
            // Clean close: everything written and fsynced, and the meta file says so.
            j.close();
        }
        let summary = self.core.ctx.summary();
        self.core.ctx.log.event(format_args!("stop: {summary}"));
        self.core.ctx.log.close();
        log::info!("stopped: {summary}");
        Ok(())
    }

    /// One loop turn (see the module documentation for the order of its steps).
    pub fn turn(&mut self) -> Result<(), ServerError> {
        let core = &mut self.core;
        let busy = !core.ctx.again.is_empty()
            || std::mem::take(&mut core.journal_again)
            || !core.ctx.refloods.is_empty()
            || !core.ctx.dirty.is_empty()
            || !core.ctx.dirty_peers.is_empty();
        let timeout = if busy { Some(Duration::ZERO) } else { core.ctx.timers.timeout(core.ctx.now) };
        if let Err(e) = self.poll.poll(&mut self.events, timeout) {
            if e.kind() != ErrorKind::Interrupted {
                return Err(ServerError::Io { what: "poll failed".into(), source: e });
            }
        }
        core.ctx.now = Instant::now();
        core.ctx.wall = Timestamp::from_system_time(SystemTime::now());
        core.ctx.log.set_time(core.ctx.wall);
        core.ctx.counters.turns += 1;
        core.ctx.admin_budget = super::conn::admin::RECORDS_BYTES_PER_TURN;
        // The global level first (an atomic load); the per-target match only when it could be on.
        core.ctx.trace =
            log::max_level() >= log::LevelFilter::Trace && log::log_enabled!(target: TRACE, log::Level::Trace);
        let before = core.ctx.trace.then(|| core.ctx.counters.clone());

        core.conns.cause = "again";
        let again = core.take_queue(|ctx| &mut ctx.again);
        for &token in &again {
            core.drive(token);
        }
        core.recycle(again);
        core.conns.cause = "event";
        // Herd traffic first: a record that reached this host before a client's WHATSAT is stored
        // before the WHATSAT is answered, whatever order the kernel listed the events in.
        for peers in [true, false] {
            for event in self.events.iter() {
                if core.is_peer_event(event.token()) == peers {
                    core.ctx.counters.events += 1;
                    core.dispatch(event);
                }
            }
        }
        core.conns.cause = "timer";
        core.fire_timers();
        core.conns.cause = "journal";
        core.journal_turn();
        if core.ctx.timers.needs_compaction() {
            // Entries of connections that are gone (a token names one generation of a slab key) can no
            // longer matter; without this, connection churn grows the heap for a whole idle timeout.
            let conns = &core.conns;
            core.ctx.timers.compact(|_, what| match what {
                Timer::Conn(token) => conns.contains(token),
                _ => true,
            });
        }
        if !core.ctx.refloods.is_empty() {
            // A broken link's unacknowledged records, sent again as repairs one bounded step per turn
            // (`herd::reflood_step`): a large table is walked over many turns, never in one.
            core.ctx.reflood_step();
            core.hand_off();
        }
        core.conns.cause = "flush";
        core.flush_dirty();
        // Records stored while flushing (held-back lines answered) go to the writer now, not next turn;
        // replies released now are written next turn, which must not sleep.
        if core.journal_turn() || core.ctx.durable_ready() {
            core.journal_again = true;
        }
        core.conns.cause = "close";
        core.close_finished();

        if let Some(b) = before {
            let c = &core.ctx.counters;
            let commands = (c.iamat + c.whatsat + c.invalid + c.blank) - (b.iamat + b.whatsat + b.invalid + b.blank);
            let (turn, events, writes) = (c.turns, c.events - b.events, c.writes - b.writes);
            let micros = core.ctx.now.elapsed().as_micros();
            log::trace!(target: TRACE, "turn {turn}: {events} events, {commands} commands, {writes} writes, {micros} µs");
        }
        if core.ctx.log.has_pending() && !core.log_flush_armed {
            core.log_flush_armed = true;
            core.ctx.timers.add(core.ctx.now + server_log::FLUSH_EVERY, Timer::LogFlush);
        }
        if core.ctx.stopping && core.ctx.gauges.clients == 0 && core.ctx.gauges.peers == 0 {
            core.finished = true;
        }
        Ok(())
    }
}

impl Core {
    /// Hands the journal this turn's records and releases the replies and acknowledgements whose records
    /// are now durable (or failed to be written).
    fn journal_turn(&mut self) -> bool {
        if self.ctx.journal.is_some() && !self.journal_tick_armed && self.ctx.last_seq != self.journal_tick_seq {
            // Records were stored since the journal was last looked at: look again in a while.
            self.journal_tick_armed = true;
            self.ctx.timers.add(self.ctx.now + herd::JOURNAL_TICK, Timer::Journal);
        }
        let mut ready = std::mem::take(&mut self.durable_ready);
        self.ctx.journal_turn(&mut ready);
        for &token in &ready {
            if self.conns.contains(token) {
                self.handle(token, |conn, ctx, scratch| conn.deliver(Delivery::Durable, ctx, scratch));
            }
        }
        let delivered = !ready.is_empty();
        ready.clear();
        self.durable_ready = ready;
        delivered
    }

    fn is_peer_event(&self, token: Token) -> bool {
        token == PEER_LISTENER || self.conns.is_peer(token)
    }

    /// Runs a handler on one connection, then delivers what it left for the others.
    fn handle(&mut self, token: Token, f: impl FnOnce(&mut Conn, &mut Ctx, &mut [u8])) {
        self.conns.with(token, &mut self.ctx, &mut self.scratch, f);
        self.after_handler();
    }

    /// The hand-off (`handoff.rs`): records to flood, WHATSATs whose record arrived, Places answers
    /// for clients, Places requests to start, neighbours to dial. Runs after every handler, so all of
    /// it happens in the same loop turn.
    fn after_handler(&mut self) {
        if self.ctx.outbox.is_empty() && self.ctx.places.as_ref().is_none_or(|p| p.queue.is_empty()) {
            return;
        }
        self.hand_off();
    }

    fn hand_off(&mut self) {
        let cause = std::mem::replace(&mut self.conns.cause, "hand-off");
        self.handoff.run(&mut self.conns, &mut self.ctx, &mut self.scratch);
        self.conns.cause = cause;
    }

    fn dispatch(&mut self, event: &Event) {
        if self.ctx.trace {
            let (r, w, c, e) = (event.is_readable(), event.is_writable(), event.is_read_closed(), event.is_error());
            let t = TokenName(event.token());
            log::trace!(target: TRACE, "event {t}: readable={r} writable={w} read_closed={c} error={e}");
        }
        let (conns, ctx) = (&mut self.conns, &mut self.ctx);
        match event.token() {
            CLIENT_LISTENER => {
                self.listeners.accept_pending = true;
                self.listeners.accept_clients(conns, ctx);
            }
            PEER_LISTENER => self.listeners.accept_peers(conns, ctx),
            ADMIN_LISTENER => self.listeners.accept_admin(conns, ctx),
            SIGNALS => self.on_signal(),
            WAKER => {
                // Either helper thread may have woken the loop (wake-ups coalesce): take from both.
                ctx.places_woken();
                self.after_handler();
            }
            token => self.handle(token, |conn, ctx, scratch| conn.on_event(event, ctx, scratch)),
        }
    }

    /// Drives a connection without an event: its read or sync budget ran out last turn, or its output
    /// was made too late in the turn to be flushed.
    fn drive(&mut self, token: Token) {
        if self.conns.contains(token) {
            self.handle(token, |conn, ctx, scratch| conn.drive(ctx, scratch));
        }
    }

    fn fire_timers(&mut self) {
        while let Some(timer) = self.ctx.timers.pop_due(self.ctx.now) {
            match timer {
                // Each connection keeps its own deadlines and re-arms itself; nothing is re-added here,
                // so stale entries cannot multiply.
                Timer::Conn(token) => self.handle(token, |conn, ctx, scratch| conn.on_timer(ctx, scratch)),
                Timer::Redial(n) => {
                    if self.ctx.neighbours[n].link == OutLink::Backoff {
                        sockets::dial_peer(n, &mut self.conns, &mut self.ctx);
                    }
                }
                Timer::RecordSweep => {
                    if let Some(next) = self.ctx.sweep_records() {
                        self.ctx.timers.add(next, Timer::RecordSweep);
                    }
                }
                Timer::Places(id) => {
                    if let Some(conn) = self.ctx.places_expired(id) {
                        self.conns.with(conn, &mut self.ctx, &mut self.scratch, |c, ctx, s| {
                            c.deliver(Delivery::Abort, ctx, s)
                        });
                    }
                    self.after_handler();
                }
                Timer::LogFlush => {
                    self.log_flush_armed = false;
                    self.ctx.log.flush();
                }
                Timer::AdmitRetry => {
                    self.listeners.admit_armed = false;
                    let (conns, ctx) = (&mut self.conns, &mut self.ctx);
                    self.listeners.accept_clients(conns, ctx);
                }
                Timer::AcceptRetry => {
                    let (conns, ctx) = (&mut self.conns, &mut self.ctx);
                    self.listeners.retry_armed = false;
                    self.listeners.accept_clients(conns, ctx);
                    self.listeners.accept_peers(conns, ctx);
                    self.listeners.accept_admin(conns, ctx);
                }
                Timer::Journal => {
                    // Re-armed only while a rewrite runs; otherwise by the next record stored.
                    self.journal_tick_armed = false;
                    self.journal_tick_seq = self.ctx.last_seq;
                    if let Some(next) = self.ctx.journal_housekeeping() {
                        if next < herd::JOURNAL_TICK {
                            self.journal_tick_armed = true;
                            self.ctx.timers.add(self.ctx.now + next, Timer::Journal);
                        }
                    }
                }
                Timer::ShutdownDeadline => {
                    log::warn!("shut-down grace period over: closing {} connections", self.conns.len());
                    self.finished = true;
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
                self.conns.with(token, &mut self.ctx, &mut self.scratch, |conn, ctx, s| conn.flush(ctx, s));
            }
            self.recycle(peers);
            let dirty = self.take_queue(|ctx| &mut ctx.dirty);
            for &token in &dirty {
                self.handle(token, |conn, ctx, scratch| conn.flush(ctx, scratch));
            }
            self.recycle(dirty);
        }
        // Still dirty: they stay queued for the next turn's flush, which must come without sleeping (see
        // `turn`). (Driving them again instead would not write them: a connection already marked dirty is
        // not queued twice, so its output would wait for an unrelated event.)
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

    /// Deregisters and frees every connection that closed this turn; each settles its own books.
    fn close_finished(&mut self) {
        let clients_before = self.ctx.gauges.clients;
        for token in self.conns.take_closing() {
            if let Some(mut conn) = self.conns.remove(token) {
                conn.on_closed(&mut self.ctx);
            }
        }
        // A client slot (and a descriptor) freed this turn: take the next one waiting in the backlog.
        // Only then: out of descriptors, calling accept every turn would fail every turn.
        let l = &mut self.listeners;
        if self.ctx.gauges.clients < clients_before && l.accept_pending && !l.retry_armed {
            l.accept_clients(&mut self.conns, &mut self.ctx);
        }
    }

    /// Signal dispatch: SIGHUP reloads, SIGTERM and SIGINT stop the server.
    fn on_signal(&mut self) {
        let mut signals: Vec<i32> = self.signals.pending().collect();
        if signals.contains(&SIGHUP) {
            self.on_hangup();
            signals.retain(|&s| s != SIGHUP);
        }
        if signals.is_empty() {
            return;
        }
        if self.ctx.stopping {
            log::warn!("second signal: exiting at once");
            self.ctx.log.event(format_args!("second signal: exiting at once"));
            self.ctx.log.close();
            std::process::exit(1);
        }
        log::info!("signal {}: shutting down", signals[0]);
        self.ctx.log.event(format_args!("signal {}: shutting down, answering what was received", signals[0]));
        self.begin_shutdown();
    }

    /// SIGHUP never stops the server: it reopens the log file (external rotation) and rereads the peer
    /// certificate, key and CA (renewal), without dropping anything.
    fn on_hangup(&mut self) {
        log::info!("SIGHUP: reopening the log file");
        self.ctx.log.event(format_args!("SIGHUP: reopening the log file"));
        self.ctx.log.reopen();
        self.ctx.reload_peer_tls();
    }

    /// Stops accepting, answers everything already received (including bytes still in the kernel's
    /// buffers), sends the peers what is queued for them, then lets the loop finish once every
    /// connection is closed, or at the grace deadline.
    fn begin_shutdown(&mut self) {
        self.ctx.stopping = true;
        self.listeners.close(self.conns.registry());
        // Clients first: what they sent may still flood to the peers before the links close. Places
        // requests in flight still answer the clients waiting on them; an admin request already read
        // is answered too.
        for token in self.conns.tokens_peers_last() {
            self.handle(token, |conn, ctx, scratch| conn.shut_down(ctx, scratch));
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
}
