//! The client connection state machine.
//!
//! ```text
//!            read data, answer lines                 output back under the soft bound
//!   ┌──────┐ ─────────────────────────▶ ┌───────────┐ ◀──────────────────────────────
//!   │ Open │   output over soft bound   │ Throttled │
//!   └──────┘ ─────────────────────────▶ └───────────┘
//!      │ EOF, over-long or unfinished line,    │
//!      │ shut-down                             │
//!      ▼                                       ▼
//!   ┌──────────┐  nothing owed, all written  ┌────────┐
//!   │ Draining │ ──────────────────────────▶ │ Closed │ ◀── reset, write error, hard bound, idle
//!   └──────────┘                             └────────┘
//!      │ over-long/unfinished line: all written,    ▲
//!      ▼ write side shut                            │ client EOF, or deadline
//!   ┌───────────┐                                   │
//!   │ Lingering │ ──────────────────────────────────┘
//!   └───────────┘
//! ```
//!
//! * Input is read into the loop's shared scratch buffer; complete lines are answered straight from it and
//!   only a trailing partial line (or lines held back while throttled) is copied into the connection's own
//!   `input`. A connection that never sent anything owns no buffer at all; one that did keeps its reply
//!   buffer (up to 64 KiB) for the next reply, which is what makes a steady-state IAMAT allocation-free.
//! * Replies are appended to `out` and the connection is marked dirty; the loop writes every dirty
//!   connection once at the end of the turn, so one unpipelined request costs one `read` and one `write`,
//!   and a pipelined burst costs one of each for all of it.
//! * A WHATSAT waiting on Places takes a place in `waiting`; replies to later commands queue behind it and
//!   everything moves to `out` in arrival order once it is answered.
//!
//! Readiness is edge-triggered and tracked per socket (sozu's way): the `readable`/`writable` flags are set
//! by events and cleared only when the kernel says `WouldBlock` (or, for reads, a short read: on Linux a
//! read that returns less than asked has drained the socket, and new data raises a new edge).
//!
//! This file holds the connection's state and its `Connection` duties (the drive loop, the flush, the
//! close); beside it are `input.rs` (reads and lines), `commands.rs` (answering a command), `waits.rs`
//! (replies queued behind waiting WHATSATs) and `deadlines.rs` (timers: slow lines, idleness, lingering).

mod commands;
mod deadlines;
mod input;
mod waits;

use super::{Connection, Delivery};
use crate::server::admission::BUMP_EVERY;
use crate::server::ctx::{CloseReason, Ctx, READS_PER_TURN};
use crate::server::log::AddrText;
use crate::server::token::{self, TokenName, TRACE};
use input::ReadOutcome;
use mio::net::TcpStream;
use mio::Token;
use std::collections::VecDeque;
use std::io::{ErrorKind, Write};
use std::net::SocketAddr;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Reading and answering commands.
    Open,
    /// Too many unwritten reply bytes, or too many replies waiting: not reading (and not answering
    /// held-back lines) until they drain.
    Throttled,
    /// No more input will be answered; answering what is owed, then closing with the reason.
    Draining(CloseReason),
    /// Everything owed was written and our side is shut: discarding the client's unread input until its
    /// EOF or a short deadline. Closing with unread input would send a reset that can destroy the replies
    /// still in flight to the client (nginx calls this a lingering close).
    Lingering(CloseReason),
    /// Done: the loop deregisters and frees it at the end of the turn.
    Closed(CloseReason),
}

/// A reply slot behind a WHATSAT that still waits (on Places, or on the herd).
enum Pending {
    /// The WHATSAT itself: its AT line, known when it arrived, and the bound to cut the answer to.
    Places { ticket: u64, at_line: Vec<u8>, bound: u8 },
    /// A WHATSAT for a client unknown here, waiting until `deadline` for its record to arrive from a peer.
    /// `line` is the command, answered again when the record arrives, or echoed with `?` at the deadline.
    AwaitRecord { ticket: u64, line: Vec<u8>, deadline: Instant },
    /// Replies already made for later commands, coalesced into one buffer.
    Ready(Vec<u8>),
    /// IAMAT replies (`count` of them, coalesced) held until the journal has made durable every record up
    /// to `seq` (`journal.fsync` = `always`): acknowledged means durable.
    Durable { seq: u64, reply: Vec<u8>, count: u32 },
}

pub struct Client {
    pub stream: TcpStream,
    pub addr: SocketAddr,
    /// The address as text, for the log.
    addr_text: AddrText,
    pub token: Token,
    pub state: State,
    /// Unanswered input: a partial line, or whole lines held back while throttled or over budget.
    input: Vec<u8>,
    /// `input` holds whole lines left when this turn's command budget ran out: they go first next turn.
    held_back: bool,
    /// Commands this connection may still run in the loop turn `budget_turn` (see `COMMANDS_PER_TURN`).
    budget: u16,
    /// The loop turn (`ctx.counters.turns`) the budget was last filled for: the first `drive` of a new
    /// turn fills it again, every other `drive` of the same turn spends what is left.
    budget_turn: u64,
    /// The turn this connection is queued in `ctx.again` for, so it is queued once whatever number of
    /// drives of this turn ran out of budget (each would add it again, and no-op drives would multiply).
    again_turn: u64,
    /// Replies not yet written; `out[sent..]` is what is left.
    out: Vec<u8>,
    sent: usize,
    waiting: VecDeque<Pending>,
    /// `Pending::Places` slots in `waiting`: WHATSATs of this connection waiting on Places (bounded by
    /// `limits.max_pending_places_per_client`).
    places_waiting: usize,
    /// Bytes held in `waiting`'s ready buffers (for the output bounds).
    waiting_bytes: usize,
    /// The buffer of the last held reply slot released, kept for the next one.
    spare: Vec<u8>,
    readable: bool,
    writable: bool,
    /// The peer half-closed: read to EOF even after a short read.
    hup: bool,
    dirty: bool,
    /// When the connection counts as idle, if nothing happens before (while lingering: when to give up).
    pub idle_at: Instant,
    /// When it last sent a byte (or was accepted): exact, for admission at `max_clients`.
    last_read: Instant,
    /// When a read next moves it in the loop's idle list (`admission::BUMP_EVERY`).
    bump_at: Instant,
    /// Bytes discarded while lingering.
    lingered: usize,
    /// When the partial line in `input` started arriving.
    line_started: Option<Instant>,
    /// Since when the kernel has refused our output without taking a byte (the client does not read).
    blocked_since: Option<Instant>,
    /// The one deadline armed in the loop's timer heap for this connection. Other entries for it that
    /// fire are stale and ignored, so the heap holds a bounded number per connection however many
    /// deadlines come and go.
    timer_at: Option<Instant>,
}

/// Replies waiting (on Places or on the herd) per client before it is throttled: a waiting reply has no
/// bytes yet, so the output bound alone would let one client queue any number of upstream requests.
const MAX_WAITING: usize = 64;

/// How long a lingering close waits for the client's EOF, and how much input it discards at most.
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;

/// Commands one connection may run per loop turn before the others get theirs (memcached's
/// `reqs_per_event`, counted per turn). A 64 KiB read can hold a thousand IAMATs, and the read budget
/// bounds bytes, not work: a client pipelining 100,000 commands made turns of several milliseconds, and
/// every other client's reply waited for them (tests/abuse.rs measured the probe's p99 at 5-10× its
/// calm value). The rest of the input waits in `input`, and the connection goes on the `again` list.
///
/// The budget is the turn's, not a `drive` call's: one turn drives a connection several times (from
/// the `again` list, for its event, on a timer, in each of up to three flush rounds that free its
/// output), and a budget refilled by every `drive` let one connection run 9 budgets in a turn, and up
/// to 15.8 (4,037 commands; every drive that ran out had queued it on `again` once more) (tests/abuse.rs,
/// `a_pipelined_burst_is_answered_one_command_budget_per_turn`). So the first `drive` of a turn
/// fills it (`budget_turn`), the others spend what is left, and a connection is queued on `again` once
/// per turn (`again_turn`). A graceful shut-down answers everything received, whatever the budget.
///
/// A burst now spans more turns (20,000 commands: 79 instead of 20), each one short. An earlier
/// measurement had a once-per-turn budget worse for the other clients (probe p99 1.56-4.67× calm
/// against 0.93-1.37×); it did not repeat: in runs of tests/abuse.rs's pipelining case taken in turn
/// with the per-`drive` budget (release, `HERD_ABUSE_STRICT=1`, load average 8-9), the probe's abused
/// p99 was 0.69-2.77 ms with this budget and 2.43-4.17 ms with the per-`drive` one.
const COMMANDS_PER_TURN: u16 = 256;
/// A connection's `input` or `out` that grew past this in a burst is given back once drained; below it,
/// the allocation is kept for the next command or reply.
const KEEP_BUFFER: usize = 64 * 1024;

impl Client {
    pub fn new(stream: TcpStream, addr: SocketAddr, token: Token, now: Instant, idle_at: Instant) -> Client {
        Client {
            stream,
            addr,
            addr_text: AddrText::new(addr),
            token,
            state: State::Open,
            input: Vec::new(),
            held_back: false,
            budget: COMMANDS_PER_TURN,
            budget_turn: 0,
            again_turn: 0,
            out: Vec::new(),
            sent: 0,
            waiting: VecDeque::new(),
            places_waiting: 0,
            waiting_bytes: 0,
            spare: Vec::new(),
            readable: false,
            // A new socket can take bytes: write optimistically, wait for an event only after WouldBlock.
            writable: true,
            hup: false,
            dirty: false,
            idle_at,
            last_read: now,
            bump_at: now + BUMP_EVERY,
            lingered: 0,
            line_started: None,
            blocked_since: None,
            timer_at: Some(idle_at),
        }
    }

    /// Reply bytes made but not yet written (including those queued behind a pending WHATSAT).
    fn unsent(&self) -> usize {
        self.out.len() - self.sent + self.waiting_bytes
    }

    /// Whether the connection still owes the client anything.
    fn owes(&self) -> bool {
        !self.waiting.is_empty() || self.sent < self.out.len()
    }

    /// When it last sent anything (or was accepted).
    pub fn last_read(&self) -> Instant {
        self.last_read
    }

    /// Whether it may be closed to admit a new client at `max_clients`: open, and owed nothing (a
    /// client waiting for a reply is not idle, however long ago it spoke). Its idle time is checked
    /// by the caller, from [`last_read`](Self::last_read).
    pub fn evictable(&self) -> bool {
        self.state == State::Open && !self.owes()
    }

    /// Closed at `max_clients` to admit a new client. Its slot is counted free at once, so the client
    /// it makes room for is admitted in the same turn; the loop frees it at the end of the turn.
    pub fn evict(&mut self, ctx: &mut Ctx) {
        ctx.log.event(format_args!("client {} closed to admit a new client: idlest at max_clients", self.addr));
        self.state = State::Closed(CloseReason::Evicted);
        ctx.gauges.clients -= 1;
        ctx.idle_clients.remove(token::split(self.token).0);
    }

    /// Fills the command budget at the first `drive` of a loop turn; later drives of the same turn
    /// spend what is left of it (see `COMMANDS_PER_TURN`).
    fn fill_budget(&mut self, ctx: &Ctx) {
        if self.budget_turn != ctx.counters.turns {
            self.budget_turn = ctx.counters.turns;
            self.budget = COMMANDS_PER_TURN;
        }
    }

    /// Queues the connection to be driven at the start of the next turn (its budget ran out with input
    /// left), once however many of this turn's drives ask.
    fn come_back_next_turn(&mut self, ctx: &mut Ctx) {
        let next = ctx.counters.turns + 1;
        if self.again_turn != next {
            self.again_turn = next;
            ctx.again.push(self.token);
        }
    }

    fn mark_dirty(&mut self, ctx: &mut Ctx) {
        if !self.dirty {
            self.dirty = true;
            ctx.dirty.push(self.token);
        }
    }
}

/// The duties every connection has (see `conn/mod.rs`).
impl Connection for Client {
    /// A readiness event for this socket.
    fn on_event(&mut self, ev: &mio::event::Event, ctx: &mut Ctx, scratch: &mut [u8]) {
        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
            self.readable = true;
        }
        if ev.is_read_closed() || ev.is_error() {
            self.hup = true;
        }
        if ev.is_writable() || ev.is_write_closed() {
            self.writable = true;
            if self.sent < self.out.len() {
                self.mark_dirty(ctx);
            }
        }
        self.drive(ctx, scratch);
    }

    /// Runs the state machine until it has to wait for the kernel (or for Places).
    fn drive(&mut self, ctx: &mut Ctx, scratch: &mut [u8]) {
        let mut reads = 0;
        self.fill_budget(ctx);
        loop {
            match self.state {
                State::Open => {
                    if self.held_back {
                        // Lines left when the budget ran out come before anything new is read.
                        if self.budget == 0 {
                            self.come_back_next_turn(ctx);
                            return;
                        }
                        self.held_back = false;
                        self.answer_buffered(ctx);
                        continue;
                    }
                    if !self.readable {
                        return;
                    }
                    if reads == READS_PER_TURN {
                        // Fairness: let the other connections have this turn; come back next turn.
                        self.come_back_next_turn(ctx);
                        return;
                    }
                    reads += 1;
                    match self.read(scratch, ctx) {
                        ReadOutcome::Data(n) => {
                            ctx.counters.bytes_in += n as u64;
                            self.idle_at = ctx.now + ctx.idle_timeout;
                            self.last_read = ctx.now;
                            if ctx.now >= self.bump_at {
                                self.bump_at = ctx.now + BUMP_EVERY;
                                ctx.idle_clients.touch(token::split(self.token).0, self.token, ctx.now);
                            }
                            self.take_input(&scratch[..n], ctx);
                        }
                        ReadOutcome::Eof => self.end_of_input(ctx),
                        ReadOutcome::WouldBlock => self.readable = false,
                        ReadOutcome::Failed => self.state = State::Closed(CloseReason::Reset),
                    }
                }
                State::Throttled => {
                    if self.unsent() > ctx.limits.client_output_soft / 2 || self.waiting.len() > MAX_WAITING / 2 {
                        return;
                    }
                    // Drained enough: answer the lines held back, then read again.
                    self.state = State::Open;
                    self.answer_buffered(ctx);
                }
                State::Draining(reason) => {
                    if self.owes() {
                        return;
                    }
                    if matches!(reason, CloseReason::LineTooLong | CloseReason::LineTimeout) && !self.hup {
                        let _ = self.stream.shutdown(std::net::Shutdown::Write);
                        self.idle_at = ctx.now + LINGER;
                        self.arm(self.idle_at, ctx);
                        // Drain what the kernel already holds; later input raises new edges.
                        self.readable = true;
                        self.state = State::Lingering(reason);
                    } else {
                        self.state = State::Closed(reason);
                    }
                }
                State::Lingering(reason) => {
                    if !self.readable {
                        return;
                    }
                    // The same budget as an open connection: a client pouring garbage into a lingering
                    // close must not hold the turn for the megabyte it may send (LINGER_BYTES).
                    if reads == READS_PER_TURN {
                        self.come_back_next_turn(ctx);
                        return;
                    }
                    reads += 1;
                    match self.read(scratch, ctx) {
                        ReadOutcome::Data(n) => {
                            self.lingered += n;
                            if self.lingered > LINGER_BYTES {
                                self.state = State::Closed(reason);
                            }
                        }
                        ReadOutcome::WouldBlock => self.readable = false,
                        ReadOutcome::Eof | ReadOutcome::Failed => self.state = State::Closed(reason),
                    }
                }
                State::Closed(_) => return,
            }
        }
    }

    /// Its deadline came (the entry may be stale: [`check_deadlines`](Client::check_deadlines) knows),
    /// then it moves on: a wait answered or a slow line ended may let it.
    fn on_timer(&mut self, ctx: &mut Ctx, scratch: &mut [u8]) {
        self.check_deadlines(ctx);
        self.drive(ctx, scratch);
    }

    /// End of turn: write what is owed in one `write` (more only if the kernel took part of it).
    fn flush(&mut self, ctx: &mut Ctx, scratch: &mut [u8]) {
        self.dirty = false;
        while self.sent < self.out.len() && self.writable && !self.is_closed() {
            match self.stream.write(&self.out[self.sent..]) {
                Ok(n) => {
                    if ctx.trace {
                        log::trace!(target: TRACE, "client{}: wrote {n} bytes", TokenName(self.token));
                    }
                    self.sent += n;
                    self.blocked_since = None;
                    ctx.counters.bytes_out += n as u64;
                    ctx.counters.writes += 1;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.writable = false;
                    if self.blocked_since.is_none() {
                        // A client that takes nothing for the idle time-out is dropped (see on_timer).
                        self.blocked_since = Some(ctx.now);
                        self.arm(ctx.now + ctx.idle_timeout, ctx);
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => self.state = State::Closed(CloseReason::Reset),
            }
        }
        if self.sent == self.out.len() {
            self.out.clear();
            self.sent = 0;
            // Give back the memory of a burst; keep a small buffer for the next reply.
            if self.out.capacity() > KEEP_BUFFER {
                self.out = Vec::new();
            }
        }
        // Written output may let a throttled or draining connection move on.
        self.drive(ctx, scratch);
    }

    fn deliver(&mut self, what: Delivery<'_>, ctx: &mut Ctx, _scratch: &mut [u8]) {
        match what {
            Delivery::Durable => self.release_ready(ctx),
            Delivery::RecordArrived { ticket } => self.record_arrived(ticket, ctx),
            Delivery::PlacesAnswer { ticket, json } => self.places_answered(ticket, json, ctx),
            Delivery::Record { .. } | Delivery::Advanced | Delivery::Request { .. } | Delivery::Abort => {}
        }
    }

    /// Starts a graceful shut-down: answer what was received (including bytes still in the kernel), then close.
    fn shut_down(&mut self, ctx: &mut Ctx, scratch: &mut [u8]) {
        if self.state == State::Open {
            // Everything received is answered now, whatever the command budget.
            self.budget = u16::MAX;
            if std::mem::take(&mut self.held_back) {
                self.answer_buffered(ctx);
            }
            // One last read of what the kernel already holds, within the usual read budget: a client
            // streaming without end must not keep the server from stopping.
            self.readable = true;
            let mut reads = 0;
            while self.state == State::Open && self.readable && reads < READS_PER_TURN {
                reads += 1;
                match self.read(scratch, ctx) {
                    ReadOutcome::Data(n) => self.take_input(&scratch[..n], ctx),
                    ReadOutcome::Eof | ReadOutcome::WouldBlock => self.readable = false,
                    ReadOutcome::Failed => self.state = State::Closed(CloseReason::Reset),
                }
            }
        }
        if let State::Open | State::Throttled = self.state {
            // Only EOF makes a final line without LF a command; a half-sent line at shut-down is dropped.
            if !self.input.is_empty() && self.state == State::Open {
                ctx.log.event(format_args!("client {}: unfinished line dropped at shut-down", self.addr));
                self.input = Vec::new();
            }
            self.state = State::Draining(CloseReason::Shutdown);
        }
        self.drive(ctx, scratch);
    }

    fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed(_))
    }

    /// Freed: forget its waits, count and log why it closed.
    fn on_closed(&mut self, ctx: &mut Ctx) {
        self.forget_waits(ctx);
        for slot in &self.waiting {
            if let Pending::Durable { count, .. } = slot {
                ctx.gauges.replies_waiting_fsync -= *count as usize;
            }
        }
        let reason = match self.state {
            State::Closed(r) => r,
            _ => CloseReason::Shutdown,
        };
        ctx.counters.closed(reason);
        ctx.log.event(format_args!("client {} closed: {}", self.addr, reason.name()));
        if reason != CloseReason::Evicted {
            // An evicted client was counted out when it was evicted.
            ctx.gauges.clients -= 1;
            ctx.idle_clients.remove(token::split(self.token).0);
        }
        ctx.per_address.release(self.addr.ip());
    }

    fn socket(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    fn state_name(&self) -> String {
        format!("{:?}", self.state)
    }
}
