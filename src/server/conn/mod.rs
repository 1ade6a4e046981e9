//! The connections one loop drives: four kinds behind one trait, and the table that holds them.
//!
//! | kind       | file          | what it is                                                          |
//! |------------|---------------|---------------------------------------------------------------------|
//! | `Client`   | `client/`     | a client of the herd: IAMAT, WHATSAT, the reply queue               |
//! | `Peer`     | `peer/`       | a link to or from a neighbour: handshake, anti-entropy, floods      |
//! | `Upstream` | `upstream.rs` | a connection to Places: TCP, TLS, HTTP/1.1, keep-alive              |
//! | `Admin`    | `admin.rs`    | one request to the admin port: `/metrics`, `/records`               |
//!
//! Every kind is a state machine driven by readiness, and every kind does the same duties under the
//! same names ([`Connection`]): take an event, drive itself until it must wait, check its deadline,
//! write at the end of the turn, take a delivery from the herd, shut down, settle its books once freed.
//! The loop calls only these. [`Conn`] dispatches them with one `match` per method (static dispatch,
//! no `Box<dyn>`: the hot path stays inlinable), and [`Conns`] is the slab with generation-checked
//! tokens that holds them.

pub mod admin;
pub mod client;
pub mod peer;
pub mod upstream;

use super::ctx::Ctx;
use super::token::{self, TokenName, TRACE};
use crate::route::Mode;
use admin::Admin;
use client::Client;
use mio::event::Event;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use peer::Peer;
use slab::Slab;
use upstream::Upstream;

/// The duties every connection kind has. `scratch` is the loop's shared read buffer.
pub trait Connection {
    /// A readiness event for this socket: note what the kernel said, then drive.
    fn on_event(&mut self, ev: &Event, ctx: &mut Ctx, scratch: &mut [u8]);
    /// Runs the state machine until it has to wait (for the kernel, for Places, for the herd).
    fn drive(&mut self, ctx: &mut Ctx, scratch: &mut [u8]);
    /// A deadline armed for it fired: it checks its own deadlines (the entry may be stale) and moves on.
    fn on_timer(&mut self, ctx: &mut Ctx, scratch: &mut [u8]);
    /// End of turn: writes what it collected (one `write` for all of it, more only if the kernel took
    /// part), then moves on if the written output lets it.
    fn flush(&mut self, ctx: &mut Ctx, scratch: &mut [u8]);
    /// Something the herd hands it (see [`Delivery`]); a kind ignores what is not for it.
    fn deliver(&mut self, what: Delivery<'_>, ctx: &mut Ctx, scratch: &mut [u8]);
    /// Graceful shut-down began: answer or send what is owed, then close.
    fn shut_down(&mut self, ctx: &mut Ctx, scratch: &mut [u8]);
    /// Reached its final state: the loop frees it at the end of the turn.
    fn is_closed(&self) -> bool;
    /// It is being freed: settle what `Ctx` counts of it (gauges, close reasons, waits, links).
    fn on_closed(&mut self, ctx: &mut Ctx);
    /// Its socket, to deregister.
    fn socket(&mut self) -> &mut TcpStream;
    /// Its state, for the trace (only called while tracing).
    fn state_name(&self) -> String;
}

/// What the loop hands a connection on behalf of the herd, after the handler that produced it.
pub enum Delivery<'a> {
    /// To a client or an accepted peer link: the journal made more durable (or failed to): release the
    /// held replies or acknowledgements that can go now.
    Durable,
    /// To a sending peer link: a record stored here, for its neighbour, travelling in `mode`.
    Record { line: &'a [u8], mode: Mode },
    /// To every live sending peer link, after the records: this server's stream moved on; tell the
    /// neighbour its offset (an `OFF` line at the end of the turn, paced on links that carried nothing).
    Advanced,
    /// To a client: the record its WHATSAT with this ticket waited for has arrived.
    RecordArrived { ticket: u64 },
    /// To a client: Places answered its WHATSAT with this ticket.
    PlacesAnswer { ticket: u64, json: &'a [u8] },
    /// To an upstream connection: start request `id` (its complete HTTP/1.1 bytes).
    Request { id: u64, bytes: &'a [u8] },
    /// To an upstream connection: its request's deadline passed (already answered); drop the connection.
    Abort,
}

/// The kinds of connection one loop drives.
pub enum Conn {
    Client(Client),
    Peer(Peer),
    /// Boxed: rustls's connection state is large, and there are only a few of these.
    Upstream(Box<Upstream>),
    /// A request to the admin listener.
    Admin(Box<Admin>),
}

/// One `match` per method: the whole of the dispatch.
macro_rules! each {
    ($conn:expr, $c:ident => $call:expr) => {
        match $conn {
            Conn::Client($c) => $call,
            Conn::Peer($c) => $call,
            Conn::Upstream($c) => $call,
            Conn::Admin($c) => $call,
        }
    };
}

impl Connection for Conn {
    #[inline]
    fn on_event(&mut self, ev: &Event, ctx: &mut Ctx, scratch: &mut [u8]) {
        each!(self, c => c.on_event(ev, ctx, scratch))
    }
    #[inline]
    fn drive(&mut self, ctx: &mut Ctx, scratch: &mut [u8]) {
        each!(self, c => c.drive(ctx, scratch))
    }
    fn on_timer(&mut self, ctx: &mut Ctx, scratch: &mut [u8]) {
        each!(self, c => c.on_timer(ctx, scratch))
    }
    #[inline]
    fn flush(&mut self, ctx: &mut Ctx, scratch: &mut [u8]) {
        each!(self, c => c.flush(ctx, scratch))
    }
    #[inline]
    fn deliver(&mut self, what: Delivery<'_>, ctx: &mut Ctx, scratch: &mut [u8]) {
        each!(self, c => c.deliver(what, ctx, scratch))
    }
    fn shut_down(&mut self, ctx: &mut Ctx, scratch: &mut [u8]) {
        each!(self, c => c.shut_down(ctx, scratch))
    }
    #[inline]
    fn is_closed(&self) -> bool {
        each!(self, c => c.is_closed())
    }
    fn on_closed(&mut self, ctx: &mut Ctx) {
        each!(self, c => c.on_closed(ctx))
    }
    fn socket(&mut self) -> &mut TcpStream {
        each!(self, c => c.socket())
    }
    fn state_name(&self) -> String {
        each!(self, c => c.state_name())
    }
}

impl Conn {
    /// The kind's name, for the trace.
    pub fn kind(&self) -> &'static str {
        match self {
            Conn::Client(_) => "client",
            Conn::Peer(_) => "peer",
            Conn::Upstream(_) => "upstream",
            Conn::Admin(_) => "admin",
        }
    }
}

/// A connection in the slab, with the generation its tokens carry.
struct Entry {
    gen: u32,
    conn: Conn,
}

/// Every connection of the loop: a slab whose tokens carry a generation, registered with the poll.
///
/// A slab reuses keys at once, and one poll batch can carry a stale event for a connection closed and
/// freed earlier, so every look-up checks the generation. Closing is deferred: a handler only moves its
/// connection to a closed state; the loop frees it at the end of the turn ([`take_closing`]), and any
/// event, timer or hand-off for it until then finds a closed connection that does nothing.
///
/// [`take_closing`]: Conns::take_closing
pub struct Conns {
    slab: Slab<Entry>,
    next_gen: u32,
    registry: Registry,
    /// Connections to free at the end of the turn.
    closing: Vec<Token>,
    /// What the loop is doing, for the trace of state transitions.
    pub cause: &'static str,
}

impl Conns {
    pub fn new(registry: Registry) -> Conns {
        Conns { slab: Slab::with_capacity(1024), next_gen: 1, registry, closing: Vec::new(), cause: "" }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn len(&self) -> usize {
        self.slab.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    /// Registers `stream` for READABLE | WRITABLE once (edge-triggered, for its whole life), then stores
    /// the connection `make` builds around it under the token it was registered with.
    pub fn add(
        &mut self,
        mut stream: TcpStream,
        make: impl FnOnce(TcpStream, Token) -> Conn,
    ) -> std::io::Result<Token> {
        let gen = self.next_gen;
        let entry = self.slab.vacant_entry();
        let token = token::token(entry.key(), gen);
        self.registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)?;
        entry.insert(Entry { gen, conn: make(stream, token) });
        // Generations wrap, skipping the values the listener tokens use.
        self.next_gen = if gen >= u32::MAX - 16 { 1 } else { gen + 1 };
        Ok(token)
    }

    /// The connection `token` names, if it is still the one the token was made for.
    pub fn get_mut(&mut self, token: Token) -> Option<&mut Conn> {
        let (key, gen) = token::split(token);
        self.slab.get_mut(key).filter(|e| e.gen == gen).map(|e| &mut e.conn)
    }

    pub fn contains(&self, token: Token) -> bool {
        let (key, gen) = token::split(token);
        self.slab.get(key).is_some_and(|e| e.gen == gen)
    }

    /// Whether `token` names a peer link (their events go first in a turn).
    pub fn is_peer(&self, token: Token) -> bool {
        let (key, gen) = token::split(token);
        matches!(self.slab.get(key), Some(Entry { gen: g, conn: Conn::Peer(_) }) if *g == gen)
    }

    /// Every live token, peer links first, then the others, for a pass over all of them (shut-down).
    pub fn tokens_peers_last(&self) -> Vec<Token> {
        let all = self.slab.iter().map(|(key, e)| (token::token(key, e.gen), matches!(e.conn, Conn::Peer(_))));
        let (peers, others): (Vec<_>, Vec<_>) = all.partition(|(_, peer)| *peer);
        others.into_iter().chain(peers).map(|(t, _)| t).collect()
    }

    /// Runs `f` on the connection `token` names, if it still exists, and queues it for freeing if it
    /// closed. A stale token is counted and does nothing.
    #[inline]
    pub fn with(
        &mut self,
        token: Token,
        ctx: &mut Ctx,
        scratch: &mut [u8],
        f: impl FnOnce(&mut Conn, &mut Ctx, &mut [u8]),
    ) {
        ctx.gauges.connections = self.slab.len();
        let (key, gen) = token::split(token);
        let Some(entry) = self.slab.get_mut(key).filter(|e| e.gen == gen) else {
            ctx.counters.stale_events += 1;
            return;
        };
        let was = ctx.trace.then(|| entry.conn.state_name());
        f(&mut entry.conn, ctx, scratch);
        if let Some(was) = was {
            let now = entry.conn.state_name();
            if now != was {
                let kind = entry.conn.kind();
                log::trace!(target: TRACE, "{kind}{}: {was} -> {now} ({})", TokenName(token), self.cause);
            }
        }
        if entry.conn.is_closed() {
            self.closing.push(token);
        }
    }

    /// The connections that closed this turn (possibly listed twice; [`remove`](Self::remove) copes).
    pub fn take_closing(&mut self) -> Vec<Token> {
        std::mem::take(&mut self.closing)
    }

    /// Deregisters and frees the connection `token` names, if it is still there.
    pub fn remove(&mut self, token: Token) -> Option<Conn> {
        if !self.contains(token) {
            return None;
        }
        let mut conn = self.slab.remove(token::split(token).0).conn;
        let _ = self.registry.deregister(conn.socket());
        Some(conn)
    }
}
