//! One connection of the load generator as an explicit state machine.
//!
//! A connection is `Down` (no socket; reconnect at a time), `Connecting` (a non-blocking connect under
//! way: no I/O before its first event, then `take_error()` and `peer_addr()`), or `Open` (sending and
//! awaiting replies). Sockets are registered once for READABLE | WRITABLE, edge-triggered; a connection
//! keeps its own readiness bits, which the loop sets from events and [`Conn::drive`] clears only on
//! `WouldBlock`, so reads and writes always run until the kernel says stop. Requests are formatted
//! straight into the connection's output buffer and replies framed in place in its input buffer:
//! nothing is allocated per request.
//!
//! What a request counts for is not decided here: a finished request goes to [`Ctx::complete`].

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use super::ctx::{Ctx, InFlight, Phase, Tag};
use crate::load::workload::{classify, ErrorKind, Expect, Framer};

/// Low bits of a token: the slab key; the bits above: the connection's generation, so an event for a
/// socket closed earlier in the same poll batch never reaches the socket that replaced it.
const SLOT_BITS: u32 = 20;
pub(super) const SLOT_MASK: usize = (1 << SLOT_BITS) - 1;
const GEN_MASK: usize = usize::MAX >> (SLOT_BITS + 1);
const IN_BUF: usize = 16 * 1024;
/// One reply larger than this is 'unexpected' (and its connection reopened).
const IN_BUF_MAX: usize = 8 << 20;
const BACKOFF_MAX_NS: u64 = 200_000_000;

/// The token of the connection in slab slot `slot` in its generation `gen`.
pub(super) fn token(slot: usize, gen: u32) -> Token {
    Token(((gen as usize & GEN_MASK) << SLOT_BITS) | slot)
}

pub(super) enum State {
    /// No socket; connect again at `at`.
    Down {
        at: u64,
    },
    /// Connect under way since `since`.
    Connecting {
        sock: TcpStream,
        since: u64,
    },
    Open {
        sock: TcpStream,
    },
}

pub(super) struct Conn {
    target: SocketAddr,
    /// Index of `target` in the options (for per-target counts).
    tix: usize,
    pub(super) gen: u32,
    pub(super) state: State,
    pub(super) readable: bool,
    pub(super) writable: bool,
    out: Vec<u8>,
    out_pos: usize,
    inb: Vec<u8>,
    in_start: usize,
    in_end: usize,
    framer: Framer,
    /// Requests written to `out` (or the socket) and not yet answered, oldest first.
    pub(super) inflight: VecDeque<InFlight>,
    /// Open loop: scheduled send times waiting for a free pipeline slot (or for the connection).
    pub(super) queue: VecDeque<u64>,
    /// A reply came on the current socket.
    replied: bool,
    /// Consecutive sockets that ended without a reply: the reconnect back-off grows with it.
    failures: u32,
    /// Already on the loop's list of connections to drive at the end of this turn.
    pub(super) dirty: bool,
}

impl Conn {
    pub(super) fn new(target: SocketAddr, tix: usize, depth: usize) -> Conn {
        Conn {
            target,
            tix,
            gen: 0,
            state: State::Down { at: 0 },
            readable: false,
            writable: false,
            out: Vec::with_capacity(depth * 96),
            out_pos: 0,
            inb: vec![0; IN_BUF],
            in_start: 0,
            in_end: 0,
            framer: Framer::default(),
            inflight: VecDeque::with_capacity(depth),
            queue: VecDeque::new(),
            replied: false,
            failures: 0,
            dirty: false,
        }
    }

    fn backoff_ns(&self) -> u64 {
        match self.failures {
            0 => 0,
            f => (1_000_000u64 << (f - 1).min(10)).min(BACKOFF_MAX_NS),
        }
    }

    /// Moves the connection forward until it must wait for the kernel or the clock.
    pub(super) fn drive(&mut self, key: usize, ctx: &mut Ctx, reg: &Registry) {
        loop {
            let now = ctx.now();
            match std::mem::replace(&mut self.state, State::Down { at: u64::MAX }) {
                State::Down { at } => {
                    if now < at || ctx.phase == Phase::Done {
                        self.state = State::Down { at };
                        return;
                    }
                    self.gen = self.gen.wrapping_add(1);
                    self.readable = false;
                    self.writable = false;
                    let opened = TcpStream::connect(self.target).and_then(|mut sock| {
                        reg.register(&mut sock, token(key, self.gen), Interest::READABLE | Interest::WRITABLE)?;
                        Ok(sock)
                    });
                    match opened {
                        // No I/O until the socket's first event.
                        Ok(sock) => self.state = State::Connecting { sock, since: now },
                        Err(_) => self.connect_failed(ctx, now),
                    }
                    return;
                }
                State::Connecting { mut sock, since } => {
                    if !(self.readable || self.writable) {
                        self.state = State::Connecting { sock, since };
                        return;
                    }
                    match established(&sock) {
                        Ok(true) => {
                            let _ = sock.set_nodelay(true);
                            ctx.connects += 1;
                            self.replied = false;
                            self.state = State::Open { sock };
                        }
                        Ok(false) => {
                            // A spurious wake-up: wait for the next event.
                            self.readable = false;
                            self.writable = false;
                            self.state = State::Connecting { sock, since };
                            return;
                        }
                        Err(_) => {
                            let _ = reg.deregister(&mut sock);
                            self.connect_failed(ctx, now);
                            return;
                        }
                    }
                }
                State::Open { mut sock } => match self.service(&mut sock, ctx) {
                    Ok(()) => {
                        self.state = State::Open { sock };
                        return;
                    }
                    Err(kind) => {
                        // Reopen (now, or after a back-off when this socket never got a reply).
                        self.abandon(sock, kind, ctx, reg, now);
                        if matches!(self.state, State::Down { at } if at > now) {
                            return;
                        }
                    }
                },
            }
        }
    }

    fn connect_failed(&mut self, ctx: &mut Ctx, now: u64) {
        ctx.error_outside_request(self.tix, ErrorKind::Connect, now);
        self.failures += 1;
        self.state = State::Down { at: now + self.backoff_ns() };
    }

    /// Reads what has arrived, tops the pipeline up, writes what is pending.
    fn service(&mut self, sock: &mut TcpStream, ctx: &mut Ctx) -> Result<(), ErrorKind> {
        if self.readable {
            self.read_replies(sock, ctx)?;
        }
        self.issue(ctx);
        if self.writable && self.out_pos < self.out.len() {
            self.flush(sock)?;
        }
        Ok(())
    }

    /// Formats requests onto `out` until `depth` are in flight or there is nothing to send.
    fn issue(&mut self, ctx: &mut Ctx) {
        let now = ctx.now();
        while self.inflight.len() < ctx.depth {
            let f = if ctx.phase == Phase::Seed {
                if ctx.seed_next >= ctx.gen.clients() {
                    break;
                }
                let k = ctx.seed_next;
                ctx.seed_next += 1;
                InFlight { start: now, expect: ctx.gen.seed(k, &mut self.out), tag: Tag::Seed }
            } else if ctx.rate.is_some() {
                let Some(sched) = self.queue.pop_front() else {
                    break;
                };
                let tag = ctx.tag_at(sched);
                if tag == Tag::Measured {
                    ctx.lag.saturating_record(now.saturating_sub(sched).max(1));
                }
                InFlight { start: sched, expect: ctx.gen.next(&mut self.out), tag }
            } else {
                let tag = match ctx.phase {
                    Phase::Warmup => Tag::Warmup,
                    Phase::Measure if ctx.may_schedule() => {
                        ctx.measured_issued += 1;
                        Tag::Measured
                    }
                    _ => break,
                };
                InFlight { start: now, expect: ctx.gen.next(&mut self.out), tag }
            };
            if f.tag == Tag::Measured {
                ctx.measured_sent += 1;
            }
            self.inflight.push_back(f);
        }
    }

    /// Writes until done or `WouldBlock`.
    fn flush(&mut self, sock: &mut TcpStream) -> Result<(), ErrorKind> {
        while self.out_pos < self.out.len() {
            match sock.write(&self.out[self.out_pos..]) {
                Ok(0) => return Err(ErrorKind::Closed),
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.writable = false;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(ErrorKind::Closed),
            }
        }
        self.out.clear();
        self.out_pos = 0;
        Ok(())
    }

    /// Reads until `WouldBlock`, taking complete replies off the buffer after every read.
    fn read_replies(&mut self, sock: &mut TcpStream, ctx: &mut Ctx) -> Result<(), ErrorKind> {
        loop {
            if self.in_end == self.inb.len() {
                if self.in_start > 0 {
                    // Keep the partial reply, at the front.
                    self.inb.copy_within(self.in_start..self.in_end, 0);
                    self.in_end -= self.in_start;
                    self.in_start = 0;
                } else if self.inb.len() < IN_BUF_MAX {
                    let n = (self.inb.len() * 2).min(IN_BUF_MAX);
                    self.inb.resize(n, 0);
                } else {
                    return Err(ErrorKind::Unexpected);
                }
            }
            match sock.read(&mut self.inb[self.in_end..]) {
                Ok(0) => return Err(ErrorKind::Closed),
                Ok(n) => {
                    self.in_end += n;
                    self.take_replies(ctx)?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.readable = false;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(ErrorKind::Closed),
            }
        }
    }

    fn take_replies(&mut self, ctx: &mut Ctx) -> Result<(), ErrorKind> {
        let now = ctx.now();
        while self.in_start < self.in_end {
            let Some(&f) = self.inflight.front() else {
                // Bytes nobody asked for: the stream cannot be trusted any more.
                ctx.error_outside_request(self.tix, ErrorKind::Unexpected, now);
                return Err(ErrorKind::Unexpected);
            };
            let Some(n) = self.framer.next(&self.inb[self.in_start..self.in_end], f.expect) else {
                break;
            };
            let res = classify(&self.inb[self.in_start..self.in_start + n], f.expect, &ctx.raw_prefix);
            self.in_start += n;
            self.inflight.pop_front();
            self.replied = true;
            ctx.complete(self.tix, f, now, res);
        }
        if self.in_start == self.in_end {
            self.in_start = 0;
            self.in_end = 0;
        }
        Ok(())
    }

    /// Drops the socket; every request on it fails with `kind`; reconnect after the back-off.
    fn abandon(&mut self, mut sock: TcpStream, kind: ErrorKind, ctx: &mut Ctx, reg: &Registry, now: u64) {
        let _ = reg.deregister(&mut sock);
        drop(sock);
        while let Some(f) = self.inflight.pop_front() {
            ctx.complete(self.tix, f, now, Err(kind));
        }
        self.out.clear();
        self.out_pos = 0;
        self.in_start = 0;
        self.in_end = 0;
        self.framer.reset();
        self.readable = false;
        self.writable = false;
        if self.replied {
            self.failures = 0;
        } else {
            self.failures += 1;
        }
        self.state = State::Down { at: now + self.backoff_ns() };
    }

    /// Time-outs of the connect, of the oldest request, and of open-loop requests still queued.
    pub(super) fn housekeeping(&mut self, key: usize, ctx: &mut Ctx, reg: &Registry, now: u64) {
        while let Some(&t) = self.queue.front() {
            if now < t.saturating_add(ctx.timeout_ns) {
                break;
            }
            self.queue.pop_front();
            let f = InFlight { start: t, expect: Expect::Line, tag: ctx.tag_at(t) };
            ctx.complete(self.tix, f, now, Err(ErrorKind::Timeout));
        }
        match std::mem::replace(&mut self.state, State::Down { at: u64::MAX }) {
            State::Connecting { mut sock, since } if now >= since.saturating_add(ctx.timeout_ns) => {
                let _ = reg.deregister(&mut sock);
                self.connect_failed(ctx, now);
            }
            State::Open { sock } => {
                let late = self.inflight.front().is_some_and(|f| now >= f.start.saturating_add(ctx.timeout_ns));
                if late {
                    self.abandon(sock, ErrorKind::Timeout, ctx, reg, now);
                } else {
                    self.state = State::Open { sock };
                }
            }
            s => self.state = s,
        }
        if matches!(self.state, State::Down { at } if at <= now) {
            self.drive(key, ctx, reg);
        }
    }
}

/// Whether a non-blocking connect has completed (`Err` when it failed).
fn established(sock: &TcpStream) -> io::Result<bool> {
    if let Some(e) = sock.take_error()? {
        return Err(e);
    }
    match sock.peer_addr() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
        Err(e) => Err(e),
    }
}
