//! The load loop: one thread, one `mio::Poll`, every connection in a slab as an explicit state machine.
//! This file holds every place where the load generator waits for the kernel.
//!
//! A connection is `Down` (no socket; reconnect at a time), `Connecting` (a non-blocking connect under
//! way: no I/O before its first event, then `take_error()` and `peer_addr()`), or `Open` (sending and
//! awaiting replies). Sockets are registered once for READABLE | WRITABLE, edge-triggered; a connection
//! keeps its own readiness bits, sets them from events and clears one only on `WouldBlock`, so reads and
//! writes always run until the kernel says stop. Requests are formatted straight into the connection's
//! output buffer and replies framed in place in its input buffer: nothing is allocated per request.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Registry, Token};
use slab::Slab;

use super::args::{Options, MAX_DURATION, MAX_WARMUP};
use super::report::{fmt_us, new_histogram, ErrorCounts, LatencySummary, Report, TargetReport};
use super::timer::Timer;
use super::timetable::Timetable;
use super::workload::{classify, ErrorKind, Expect, Framer, Generator};

const TIMER: Token = Token(usize::MAX);
/// Low bits of a token: the slab key; the bits above: the connection's generation, so an event for a
/// socket closed earlier in the same poll batch never reaches the socket that replaced it.
const SLOT_BITS: u32 = 20;
const SLOT_MASK: usize = (1 << SLOT_BITS) - 1;
const GEN_MASK: usize = usize::MAX >> (SLOT_BITS + 1);
/// Housekeeping (time-outs, reconnects) runs this often.
const TICK_NS: u64 = 10_000_000;
const PROGRESS_NS: u64 = 1_000_000_000;
/// Seeding WHATSAT workloads gives up after this long and measures anyway (the report says how many
/// ids were seeded).
const SEED_LIMIT_NS: u64 = 30_000_000_000;
const IN_BUF: usize = 16 * 1024;
/// One reply larger than this is 'unexpected' (and its connection reopened).
const IN_BUF_MAX: usize = 8 << 20;
const BACKOFF_MAX_NS: u64 = 200_000_000;

fn token(slot: usize, gen: u32) -> Token {
    Token(((gen as usize & GEN_MASK) << SLOT_BITS) | slot)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// WHATSAT workloads: one unrecorded IAMAT per client id, closed loop.
    Seed,
    /// Unrecorded traffic until `measure_start`.
    Warmup,
    Measure,
    Done,
}

/// Which part of the run a request belongs to; only `Measured` ones reach the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tag {
    Seed,
    Warmup,
    Measured,
}

#[derive(Clone, Copy, Debug)]
struct InFlight {
    /// Send time (closed loop) or scheduled send time (open loop), ns on the run clock.
    start: u64,
    expect: Expect,
    tag: Tag,
}

enum State {
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

struct Conn {
    target: SocketAddr,
    /// Index of `target` in the options (for per-target counts).
    tix: usize,
    gen: u32,
    state: State,
    readable: bool,
    writable: bool,
    out: Vec<u8>,
    out_pos: usize,
    inb: Vec<u8>,
    in_start: usize,
    in_end: usize,
    framer: Framer,
    /// Requests written to `out` (or the socket) and not yet answered, oldest first.
    inflight: VecDeque<InFlight>,
    /// Open loop: scheduled send times waiting for a free pipeline slot (or for the connection).
    queue: VecDeque<u64>,
    /// A reply came on the current socket.
    replied: bool,
    /// Consecutive sockets that ended without a reply: the reconnect back-off grows with it.
    failures: u32,
    dirty: bool,
}

/// Measured counts of one target.
struct TargetStats {
    replies: u64,
    errors: ErrorCounts,
    hist: Histogram<u64>,
}

/// Run-wide state the connections share.
struct Ctx {
    base: Instant,
    depth: usize,
    timeout_ns: u64,
    raw_prefix: Vec<u8>,
    gen: Generator,
    phase: Phase,
    rate: Option<f64>,
    timetable: Option<Timetable>,
    warmup_ns: u64,
    duration_ns: u64,
    seed_next: u32,
    seed_done: u32,
    seeded_ok: u64,
    seed_deadline: u64,
    measure_start: u64,
    measure_end: u64,
    limit: Option<u64>,
    /// Measured requests issued (closed loop) or scheduled (open loop).
    measured_issued: u64,
    /// Measured requests written.
    measured_sent: u64,
    /// Measured requests finished: replied to or failed.
    measured_done: u64,
    last_done_at: u64,
    /// Last housekeeping tick that found a connection open.
    last_open_at: u64,
    replies: u64,
    errors: ErrorCounts,
    hist: Histogram<u64>,
    lag: Histogram<u64>,
    per_target: Vec<TargetStats>,
    connects: u64,
    iv_hist: Histogram<u64>,
    iv_replies: u64,
}

impl Ctx {
    fn now(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    /// Seeding is over (or there is none): warm-up starts now, then measuring.
    fn enter_warmup(&mut self, now: u64) {
        self.measure_start = now + self.warmup_ns;
        self.measure_end = self.measure_start + self.duration_ns;
        if let Some(rate) = self.rate {
            self.timetable = Some(Timetable::new(now, rate));
        }
        self.phase = if self.warmup_ns == 0 { Phase::Measure } else { Phase::Warmup };
    }

    fn may_schedule(&self) -> bool {
        self.phase != Phase::Done && self.limit.is_none_or(|l| self.measured_issued < l)
    }

    /// When the current phase ends by the clock.
    fn phase_deadline(&self) -> u64 {
        match self.phase {
            Phase::Seed => self.seed_deadline,
            Phase::Warmup => self.measure_start,
            Phase::Measure => self.measure_end,
            Phase::Done => 0,
        }
    }

    fn tag_at(&self, t: u64) -> Tag {
        if t >= self.measure_start {
            Tag::Measured
        } else {
            Tag::Warmup
        }
    }

    /// A request is finished: replied to (`Ok`, or an error reply) or abandoned.
    fn complete(&mut self, tix: usize, f: InFlight, now: u64, res: Result<(), ErrorKind>) {
        let latency = now.saturating_sub(f.start).max(1);
        if res.is_ok() {
            // The progress line shows seeding and warm-up too.
            self.iv_hist.saturating_record(latency);
            self.iv_replies += 1;
        }
        match f.tag {
            Tag::Seed => {
                self.seed_done += 1;
                self.seeded_ok += res.is_ok() as u64;
            }
            Tag::Warmup => {}
            Tag::Measured => {
                // Past the end of the duration, nothing more is counted (it is 'unfinished').
                if self.phase == Phase::Done || now >= self.measure_end {
                    return;
                }
                self.measured_done += 1;
                self.last_done_at = now;
                let t = &mut self.per_target[tix];
                match res {
                    Ok(()) => {
                        self.replies += 1;
                        self.hist.saturating_record(latency);
                        t.replies += 1;
                        t.hist.saturating_record(latency);
                    }
                    Err(k) => {
                        self.errors.add(k);
                        t.errors.add(k);
                    }
                }
            }
        }
    }

    /// An error that belongs to no request (a failed connect, bytes nobody asked for).
    fn error_outside_request(&mut self, tix: usize, kind: ErrorKind, now: u64) {
        if self.phase == Phase::Measure && now < self.measure_end {
            self.errors.add(kind);
            self.per_target[tix].errors.add(kind);
        }
    }
}

impl Conn {
    fn new(target: SocketAddr, tix: usize, depth: usize) -> Conn {
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
    fn drive(&mut self, key: usize, ctx: &mut Ctx, reg: &Registry) {
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
    fn housekeeping(&mut self, key: usize, ctx: &mut Ctx, reg: &Registry, now: u64) {
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

fn progress_line(ctx: &mut Ctx, now: u64, since: u64, in_flight: usize, queued: usize) -> String {
    let l = LatencySummary::from_histogram(&ctx.iv_hist);
    let (label, t) = match ctx.phase {
        Phase::Seed => ("seeding", now),
        Phase::Warmup => ("warm-up", now),
        _ => ("", now.saturating_sub(ctx.measure_start)),
    };
    let mut s = format!(
        "\r{label:>7} {:6.1}s  {:>8} replies/s  p50 {}  p99 {}  max {}  errors {}  in flight {in_flight}",
        t as f64 / 1e9,
        (ctx.iv_replies as f64 * 1e9 / now.saturating_sub(since).max(1) as f64).round(),
        fmt_us(l.p50),
        fmt_us(l.p99),
        fmt_us(l.max),
        ctx.errors.total()
    );
    if ctx.rate.is_some() {
        s.push_str(&format!("  queued {queued}"));
    }
    s.push_str("\x1b[K");
    ctx.iv_hist.reset();
    ctx.iv_replies = 0;
    s
}

/// Runs the load described by `opts` to its end and reports what it measured.
pub fn run(opts: &Options) -> Result<Report, String> {
    if opts.targets.is_empty() {
        return Err("no target".into());
    }
    if !opts.allow_remote {
        if let Some(t) = opts.targets.iter().find(|t| !t.ip().is_loopback()) {
            return Err(format!("target {t} is not a loopback address (allow_remote is off)"));
        }
    }
    if opts.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        return Err("rate must be positive".into());
    }
    let n = opts.connections.clamp(1, SLOT_MASK);
    let depth = opts.depth.max(1);

    let mut poll = Poll::new().map_err(|e| format!("poll: {e}"))?;
    let mut events = Events::with_capacity(1024);
    let mut timer = match opts.rate {
        Some(_) => Timer::new(poll.registry(), TIMER),
        None => None,
    };
    let mut conns: Slab<Conn> = Slab::with_capacity(n);
    for i in 0..n {
        let tix = i % opts.targets.len();
        conns.insert(Conn::new(opts.targets[tix], tix, depth));
    }
    let gen = Generator::new(&opts.workload, opts.clients, &opts.radius, opts.bound);
    let mut ctx = Ctx {
        base: Instant::now(),
        depth,
        timeout_ns: opts.timeout.as_nanos().max(1) as u64,
        raw_prefix: opts.expect.clone().unwrap_or_default().into_bytes(),
        gen,
        phase: Phase::Seed,
        rate: opts.rate,
        timetable: None,
        warmup_ns: opts.warmup.min(MAX_WARMUP).as_nanos() as u64,
        duration_ns: opts.duration.min(MAX_DURATION).as_nanos().max(1) as u64,
        seed_next: 0,
        seed_done: 0,
        seeded_ok: 0,
        seed_deadline: SEED_LIMIT_NS,
        measure_start: u64::MAX,
        measure_end: u64::MAX,
        limit: opts.requests,
        measured_issued: 0,
        measured_sent: 0,
        measured_done: 0,
        last_done_at: 0,
        last_open_at: 0,
        replies: 0,
        errors: ErrorCounts::default(),
        hist: new_histogram(),
        lag: new_histogram(),
        per_target: (0..opts.targets.len())
            .map(|_| TargetStats { replies: 0, errors: ErrorCounts::default(), hist: new_histogram() })
            .collect(),
        connects: 0,
        iv_hist: new_histogram(),
        iv_replies: 0,
    };
    let seeding = opts.workload.needs_seed();
    if !seeding {
        ctx.enter_warmup(0);
    }
    for key in 0..n {
        conns[key].drive(key, &mut ctx, poll.registry());
    }

    let mut stopped_by = "duration";
    let mut next_tick = TICK_NS;
    let mut next_progress = PROGRESS_NS;
    let mut dirty: Vec<usize> = Vec::with_capacity(n);
    let mut progress_shown = false;
    loop {
        // Sleep until the next event, the next scheduled send, the phase's end or housekeeping.
        let now = ctx.now();
        let mut deadline = next_tick.min(ctx.phase_deadline());
        if ctx.may_schedule() {
            if let Some(tt) = &ctx.timetable {
                let t = tt.next_time();
                match timer.as_mut() {
                    Some(timer) if t > now => {
                        if timer.arm(t, t - now).is_err() {
                            deadline = deadline.min(t);
                        }
                    }
                    _ => deadline = deadline.min(t),
                }
            }
        }
        let timeout = Duration::from_nanos(deadline.saturating_sub(now));
        if let Err(e) = poll.poll(&mut events, Some(timeout)) {
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(format!("poll: {e}"));
            }
        }
        for ev in events.iter() {
            if ev.token() == TIMER {
                if let Some(t) = timer.as_mut() {
                    t.clear();
                }
                continue;
            }
            let key = ev.token().0 & SLOT_MASK;
            let Some(c) = conns.get_mut(key) else {
                continue;
            };
            if token(key, c.gen) != ev.token() {
                continue;
            }
            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                c.readable = true;
            }
            if ev.is_writable() || ev.is_write_closed() || ev.is_error() {
                c.writable = true;
            }
            c.drive(key, &mut ctx, poll.registry());
        }

        let now = ctx.now();
        // Open loop: hand every request now due to its connection, round-robin by index.
        if ctx.timetable.is_some() {
            while ctx.may_schedule() {
                let Some((i, t)) = ctx.timetable.as_mut().and_then(|tt| tt.pop_due(now)) else {
                    break;
                };
                if ctx.tag_at(t) == Tag::Measured {
                    ctx.measured_issued += 1;
                }
                let key = (i % n as u64) as usize;
                let c = &mut conns[key];
                c.queue.push_back(t);
                if !c.dirty {
                    c.dirty = true;
                    dirty.push(key);
                }
            }
            for key in dirty.drain(..) {
                conns[key].dirty = false;
                conns[key].drive(key, &mut ctx, poll.registry());
            }
        }
        if now >= next_tick {
            for key in 0..n {
                conns[key].housekeeping(key, &mut ctx, poll.registry(), now);
            }
            if conns.iter().any(|(_, c)| matches!(c.state, State::Open { .. })) {
                ctx.last_open_at = now;
            }
            next_tick = now + TICK_NS;
        }
        if opts.progress && now >= next_progress {
            let in_flight = conns.iter().map(|(_, c)| c.inflight.len()).sum();
            let queued = conns.iter().map(|(_, c)| c.queue.len()).sum();
            let since = next_progress - PROGRESS_NS;
            eprint!("{}", progress_line(&mut ctx, now, since, in_flight, queued));
            progress_shown = true;
            next_progress = now + PROGRESS_NS;
        }

        // Phase changes.
        match ctx.phase {
            Phase::Seed if ctx.seed_done >= ctx.gen.clients() || now >= ctx.seed_deadline => {
                ctx.enter_warmup(now);
                // Closed-loop connections sit idle once seeding is done: start them.
                for key in 0..n {
                    conns[key].drive(key, &mut ctx, poll.registry());
                }
            }
            Phase::Warmup if now >= ctx.measure_start => ctx.phase = Phase::Measure,
            Phase::Measure if now >= ctx.measure_end => ctx.phase = Phase::Done,
            Phase::Measure if ctx.limit.is_some_and(|l| ctx.measured_done >= l) => {
                stopped_by = "requests";
                ctx.phase = Phase::Done;
            }
            // Waiting for N replies from a target that cannot be reached would last the whole cap.
            Phase::Measure
                if ctx.limit.is_some()
                    && now.saturating_sub(ctx.last_open_at.max(ctx.measure_start)) >= ctx.timeout_ns =>
            {
                stopped_by = "unreachable";
                ctx.phase = Phase::Done;
            }
            _ => {}
        }
        if ctx.phase == Phase::Done {
            break;
        }
    }
    if progress_shown {
        eprint!("\r\x1b[K");
    }

    let end = match stopped_by {
        "requests" => ctx.last_done_at,
        "unreachable" => ctx.now(),
        _ => ctx.measure_end,
    };
    let measured_ns = end.saturating_sub(ctx.measure_start);
    let duration_s = measured_ns as f64 / 1e9;
    Ok(Report {
        workload: opts.workload.name().into(),
        targets: opts.targets.iter().map(|t| t.to_string()).collect(),
        connections: n,
        depth,
        rate: opts.rate,
        warmup_s: ctx.warmup_ns as f64 / 1e9,
        duration_s,
        stopped_by: stopped_by.into(),
        requests: ctx.measured_sent,
        replies: ctx.replies,
        throughput: if duration_s > 0.0 { ctx.replies as f64 / duration_s } else { 0.0 },
        latency: LatencySummary::from_histogram(&ctx.hist),
        send_lag: opts.rate.map(|_| LatencySummary::from_histogram(&ctx.lag)),
        errors: ctx.errors.clone(),
        per_target: opts
            .targets
            .iter()
            .zip(&ctx.per_target)
            .map(|(addr, t)| TargetReport {
                target: addr.to_string(),
                replies: t.replies,
                errors: t.errors.clone(),
                latency: LatencySummary::from_histogram(&t.hist),
            })
            .collect(),
        unfinished: ctx.measured_issued.saturating_sub(ctx.measured_done),
        connects: ctx.connects,
        seeded: seeding.then_some(ctx.seeded_ok),
        histogram: ctx.hist,
    })
}
