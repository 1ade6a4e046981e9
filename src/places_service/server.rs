//! The local Places service's event loop: one thread, one `mio::Poll`, every socket in it.
//!
//! Each connection is a [`Conn`] in a slab, driven by [`Conn::drive`]: read TLS until `WouldBlock`,
//! hand plaintext to the request parser, answer, hand the answer to rustls, `write_tls` until it stops,
//! and loop while anything moved. Sockets are registered once for READABLE | WRITABLE (edge-triggered);
//! the connection keeps its own `readable` / `writable` bits and clears one only on `WouldBlock`.
//! rustls is driven only through `read_tls`, `process_new_packets`, `reader`, `writer`, `write_tls`
//! and `wants_write`.
//!
//! Timers (idle timeout, the `delay` and `trickle` faults, lingering, the wait before a reset) are a
//! min-heap of `(deadline, slab key, generation)`; the poll timeout is the time to the first one.
//! Closed connections are removed at the end of the loop turn, so a slab key is never reused while a
//! stale event for it can still be in the batch, and the generation keeps old timers from firing on a
//! new connection.

use super::api::{self, Stats};
use super::gazetteer::Gazetteer;
use super::http1::{self, Framed, Request};
use super::Faults;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use rustls::{ServerConfig, ServerConnection};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

const LISTENER: Token = Token(usize::MAX - 1);
const SIGNALS: Token = Token(usize::MAX - 2);

/// Plaintext input kept per connection: a request of the largest size, plus what was pipelined behind.
const MAX_INPUT: usize = http1::MAX_HEAD + http1::MAX_BODY + 16 * 1024;
/// Plaintext taken from rustls per read.
const READ_SIZE: usize = 16 * 1024;
/// After our close_notify and FIN, how long the peer's remaining input is read and discarded, and how
/// much of it, so closing never resets the connection under a response the peer has not read yet.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;
/// The `reset` fault waits until the kernel has sent (and the peer acknowledged) the partial response,
/// polling this often, for at most `RESET_GIVE_UP`.
const RESET_POLL: Duration = Duration::from_millis(5);
const RESET_GIVE_UP: Duration = Duration::from_secs(2);
/// On SIGTERM/SIGINT, how long responses already under way may take.
const DRAIN: Duration = Duration::from_millis(1500);
/// Drive iterations for one connection per loop turn before the others get their turn.
const BUDGET: usize = 64;
/// Retry delay after `accept` fails for lack of descriptors or memory.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

pub(crate) struct Settings {
    pub faults: Faults,
    pub chunked: bool,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

/// What a connection needs from the loop while it is driven.
struct Ctx {
    gazetteer: Gazetteer,
    stats: Stats,
    settings: Settings,
    draining: bool,
}

/// A response on its way into rustls: pieces (the whole response, or head / chunks / last chunk),
/// how far it got, and where it stops (before the end under the `reset` fault).
struct Outgoing {
    pieces: Vec<Vec<u8>>,
    piece: usize,
    offset: usize,
    sent: usize,
    stop_at: usize,
    reset: bool,
    trickle: Option<Duration>,
    close: bool,
}

impl Outgoing {
    fn new(framed: Framed, close: bool) -> Outgoing {
        Outgoing {
            stop_at: framed.total,
            pieces: framed.pieces,
            piece: 0,
            offset: 0,
            sent: 0,
            reset: false,
            trickle: None,
            close,
        }
    }

    /// Stop after the head and about half of the body.
    fn cut_for_reset(&mut self, head_len: usize) {
        let body = self.stop_at - head_len;
        self.stop_at = head_len + (body / 2).max(1).min(body.saturating_sub(1));
        self.reset = true;
    }

    fn done(&self) -> bool {
        self.sent >= self.stop_at
    }

    /// The next bytes to hand over, at most `max`.
    fn next_slice(&self, max: usize) -> &[u8] {
        if self.done() {
            return &[];
        }
        let rest = &self.pieces[self.piece][self.offset..];
        &rest[..rest.len().min(self.stop_at - self.sent).min(max)]
    }

    fn advance(&mut self, n: usize) {
        self.offset += n;
        self.sent += n;
        if self.offset == self.pieces[self.piece].len() {
            self.piece += 1;
            self.offset = 0;
        }
    }
}

enum Phase {
    /// Waiting for (the rest of) a request.
    Reading,
    /// A response is ready but held until `until` (the `delay` fault).
    Held { until: Instant, out: Outgoing },
    /// Handing a response to rustls; `next` is the next byte's time when trickling.
    Sending { out: Outgoing, next: Option<Instant> },
    /// Part of a response was handed over (the `reset` fault); once the kernel has sent it, reset.
    Resetting { give_up: Instant },
    /// close_notify queued; once flushed, FIN and linger.
    Closing,
    /// FIN sent; discarding the peer's input until its EOF or `until`.
    Lingering { until: Instant },
    /// To be removed at the end of the loop turn.
    Done,
}

struct Conn {
    sock: TcpStream,
    tls: ServerConnection,
    peer: SocketAddr,
    generation: u64,
    readable: bool,
    writable: bool,
    /// `read_tls` saw EOF (or a close_notify): nothing more to read from the socket.
    tls_eof: bool,
    /// The peer's plaintext has ended (close_notify or EOF), after everything it sent was read.
    peer_done: bool,
    /// `input` is full while rustls may hold more plaintext: do not read the socket.
    plain_pending: bool,
    input: Vec<u8>,
    phase: Phase,
    last_active: Instant,
    /// The earliest deadline of this connection already in the timer heap.
    scheduled: Option<Instant>,
    lingered: usize,
    queued_for_removal: bool,
    requests: u64,
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == ErrorKind::WouldBlock
}

fn interrupted(e: &io::Error) -> bool {
    e.kind() == ErrorKind::Interrupted
}

impl Conn {
    fn phase_name(&self) -> &'static str {
        match self.phase {
            Phase::Reading => "reading",
            Phase::Held { .. } => "held",
            Phase::Sending { .. } => "sending",
            Phase::Resetting { .. } => "resetting",
            Phase::Closing => "closing",
            Phase::Lingering { .. } => "lingering",
            Phase::Done => "done",
        }
    }

    fn is_done(&self) -> bool {
        matches!(self.phase, Phase::Done)
    }

    /// Moves the connection as far as it can go without waiting for the kernel or a timer. Returns true
    /// when it stopped only because its budget ran out (drive it again next turn).
    fn drive(&mut self, now: Instant, ctx: &mut Ctx) -> bool {
        for _ in 0..BUDGET {
            let mut progress = self.read_side(now);
            if !self.is_done() {
                progress |= self.app(now, ctx);
            }
            if !self.is_done() {
                progress |= self.write_side(now);
            }
            if !self.is_done() {
                progress |= self.wind_down(now);
            }
            if self.is_done() || !progress {
                return false;
            }
        }
        true
    }

    fn read_side(&mut self, now: Instant) -> bool {
        match self.phase {
            Phase::Lingering { .. } => return self.discard_input(),
            Phase::Closing | Phase::Resetting { .. } | Phase::Done => return false,
            Phase::Reading | Phase::Held { .. } | Phase::Sending { .. } => {}
        }
        let mut progress = false;
        loop {
            progress |= self.pull_plaintext();
            if self.plain_pending || !self.readable || self.tls_eof {
                return progress;
            }
            match self.tls.read_tls(&mut self.sock) {
                Ok(0) => {
                    self.tls_eof = true;
                    progress = true;
                }
                Ok(_) => {
                    progress = true;
                    self.last_active = now;
                    if let Err(e) = self.tls.process_new_packets() {
                        log::info!("{}: TLS error: {e}", self.peer);
                        // Send the alert rustls queued, if the socket takes it.
                        let _ = self.tls.write_tls(&mut self.sock);
                        self.phase = Phase::Done;
                        return true;
                    }
                }
                Err(e) if would_block(&e) => self.readable = false,
                Err(e) if interrupted(&e) => {}
                Err(e) => {
                    log::debug!("{}: read: {e}", self.peer);
                    self.phase = Phase::Done;
                    return true;
                }
            }
        }
    }

    /// Moves decrypted bytes from rustls into `input`, as far as `input` has room.
    fn pull_plaintext(&mut self) -> bool {
        self.plain_pending = false;
        if self.peer_done {
            return false;
        }
        let mut progress = false;
        loop {
            let room = MAX_INPUT - self.input.len();
            if room == 0 {
                self.plain_pending = true;
                return progress;
            }
            let old = self.input.len();
            self.input.resize(old + room.min(READ_SIZE), 0);
            let result = self.tls.reader().read(&mut self.input[old..]);
            match result {
                Ok(n) if n > 0 => {
                    self.input.truncate(old + n);
                    progress = true;
                }
                Err(e) if would_block(&e) => {
                    self.input.truncate(old);
                    return progress;
                }
                // Ok(0): close_notify; an error: EOF without close_notify. Either way, the end.
                _ => {
                    self.input.truncate(old);
                    self.peer_done = true;
                    return true;
                }
            }
        }
    }

    fn discard_input(&mut self) -> bool {
        let mut scratch = [0u8; 4096];
        let mut progress = false;
        while self.readable {
            match self.sock.read(&mut scratch) {
                Ok(0) => {
                    self.phase = Phase::Done;
                    return true;
                }
                Ok(n) => {
                    progress = true;
                    self.lingered += n;
                    if self.lingered > LINGER_BYTES {
                        self.phase = Phase::Done;
                        return true;
                    }
                }
                Err(e) if would_block(&e) => self.readable = false,
                Err(e) if interrupted(&e) => {}
                Err(_) => {
                    self.phase = Phase::Done;
                    return true;
                }
            }
        }
        progress
    }

    fn app(&mut self, now: Instant, ctx: &mut Ctx) -> bool {
        match self.phase {
            Phase::Reading => self.next_request(now, ctx),
            Phase::Held { until, .. } if now >= until => {
                let Phase::Held { out, .. } = std::mem::replace(&mut self.phase, Phase::Done) else { unreachable!() };
                self.phase = Phase::Sending { out, next: None };
                true
            }
            Phase::Sending { .. } => self.feed(now),
            _ => false,
        }
    }

    fn next_request(&mut self, now: Instant, ctx: &mut Ctx) -> bool {
        match http1::parse_request(&self.input) {
            Ok(Some((req, used))) => {
                self.input.drain(..used);
                self.answer(req, now, ctx);
                true
            }
            Ok(None) => {
                if self.peer_done || (ctx.draining && self.input.is_empty()) {
                    if !self.input.is_empty() {
                        log::info!("{}: connection ended inside a request", self.peer);
                    }
                    self.start_close();
                    true
                } else {
                    false
                }
            }
            Err(bad) => {
                log::info!("{}: bad request: {} {}", self.peer, bad.status, bad.message);
                let word = if bad.status == 501 { "UNIMPLEMENTED" } else { "INVALID_ARGUMENT" };
                let body = crate::gjson::to_vec(&serde_json::json!({
                    "error": { "code": bad.status, "message": bad.message, "status": word }
                }));
                self.input.clear();
                let framed = http1::frame(bad.status, &body, false, true);
                self.phase = Phase::Sending { out: Outgoing::new(framed, true), next: None };
                true
            }
        }
    }

    fn answer(&mut self, req: Request, now: Instant, ctx: &mut Ctx) {
        let started = Instant::now();
        self.requests += 1;
        let reply = api::handle(&ctx.gazetteer, &mut ctx.stats, &req);
        let no_faults = Faults::default();
        let faults = if reply.endpoint.is_places() { &ctx.settings.faults } else { &no_faults };
        let (status, body) = if faults.http500 {
            (500, api::http500_body())
        } else if faults.badjson {
            (200, api::BAD_JSON_BODY.to_vec())
        } else {
            (reply.status, reply.body)
        };
        let close = !req.keep_alive() || self.peer_done || ctx.draining;
        let framed = http1::frame(status, &body, ctx.settings.chunked, close);
        let head_len = framed.head_len;
        let mut out = Outgoing::new(framed, close);
        if faults.reset {
            out.cut_for_reset(head_len);
        }
        out.trickle = faults.trickle;
        log::info!(
            "{} {} {} -> {} {} ({} bytes{}{}, {} us)",
            self.peer,
            req.method,
            api::redact_target(&req.target),
            status,
            reply.note,
            body.len(),
            if ctx.settings.chunked { ", chunked" } else { "" },
            if faults.is_empty() { String::new() } else { format!(", faults {faults}") },
            started.elapsed().as_micros()
        );
        self.phase = match faults.delay {
            Some(delay) => Phase::Held { until: now + delay, out },
            None => Phase::Sending { out, next: None },
        };
    }

    /// Hands the response to rustls: all of it, or one byte per tick when trickling.
    fn feed(&mut self, now: Instant) -> bool {
        let Phase::Sending { out, next } = &mut self.phase else {
            return false;
        };
        let mut progress = false;
        match out.trickle {
            None => loop {
                let slice = out.next_slice(usize::MAX);
                if slice.is_empty() {
                    break;
                }
                match self.tls.writer().write(slice) {
                    Ok(0) => break, // rustls's buffer is full: write_tls first
                    Ok(n) => {
                        out.advance(n);
                        progress = true;
                    }
                    Err(e) => {
                        log::debug!("{}: TLS write: {e}", self.peer);
                        self.phase = Phase::Done;
                        return true;
                    }
                }
            },
            Some(every) => {
                if !out.done() && next.is_none_or(|t| now >= t) {
                    if let Ok(n @ 1..) = self.tls.writer().write(out.next_slice(1)) {
                        out.advance(n);
                        *next = Some(now + every);
                        progress = true;
                    }
                }
            }
        }
        if out.done() {
            let (reset, close) = (out.reset, out.close);
            if reset {
                self.phase = Phase::Resetting { give_up: now + RESET_GIVE_UP };
            } else if close {
                self.start_close();
            } else {
                self.phase = Phase::Reading;
            }
            progress = true;
        }
        progress
    }

    fn start_close(&mut self) {
        self.tls.send_close_notify();
        self.phase = Phase::Closing;
    }

    fn write_side(&mut self, now: Instant) -> bool {
        if matches!(self.phase, Phase::Lingering { .. } | Phase::Done) {
            return false;
        }
        let mut progress = false;
        while self.writable && self.tls.wants_write() {
            match self.tls.write_tls(&mut self.sock) {
                Ok(0) => break,
                Ok(_) => {
                    progress = true;
                    self.last_active = now;
                }
                Err(e) if would_block(&e) => self.writable = false,
                Err(e) if interrupted(&e) => {}
                Err(e) => {
                    log::debug!("{}: write: {e}", self.peer);
                    self.phase = Phase::Done;
                    return true;
                }
            }
        }
        progress
    }

    /// Transitions that wait for rustls to have flushed everything (or, for a reset, for a deadline).
    fn wind_down(&mut self, now: Instant) -> bool {
        let flushed = !self.tls.wants_write();
        match self.phase {
            Phase::Closing if flushed => {
                let _ = self.sock.shutdown(Shutdown::Write);
                self.phase = if self.tls_eof { Phase::Done } else { Phase::Lingering { until: now + LINGER } };
                true
            }
            // Reset once the peer has acknowledged every byte sent, or after a while regardless (a
            // peer that does not read must not keep the connection forever).
            Phase::Resetting { give_up } if now >= give_up || (flushed && unsent_bytes(&self.sock) == Some(0)) => {
                log::info!("{}: resetting the connection mid-body (fault)", self.peer);
                set_linger_zero(&self.sock);
                self.phase = Phase::Done; // dropping the socket now sends RST
                true
            }
            _ => false,
        }
    }

    /// A deadline passed (or maybe not: timers are checked lazily).
    fn on_timer(&mut self, now: Instant, ctx: &mut Ctx) -> bool {
        if let Phase::Lingering { until } = self.phase {
            if now >= until {
                self.phase = Phase::Done;
                return false;
            }
        }
        if self.idle_applies() && now >= self.last_active + ctx.settings.idle_timeout {
            log::info!("{}: idle for {:?}, closing", self.peer, ctx.settings.idle_timeout);
            self.tls.send_close_notify();
            let _ = self.tls.write_tls(&mut self.sock);
            let _ = self.sock.shutdown(Shutdown::Both);
            self.phase = Phase::Done;
            return false;
        }
        self.drive(now, ctx)
    }

    fn idle_applies(&self) -> bool {
        matches!(self.phase, Phase::Reading | Phase::Sending { .. } | Phase::Closing)
    }

    /// The next time this connection must be looked at without an event.
    fn deadline(&self, now: Instant, idle: Duration) -> Option<Instant> {
        let own = match &self.phase {
            Phase::Held { until, .. } => Some(*until),
            Phase::Sending { out, next } if out.trickle.is_some() && !out.done() => *next,
            Phase::Resetting { give_up } if self.tls.wants_write() => Some(*give_up),
            Phase::Resetting { give_up } => Some((now + RESET_POLL).min(*give_up)),
            Phase::Lingering { until } => Some(*until),
            _ => None,
        };
        let idle = self.idle_applies().then_some(self.last_active + idle);
        match (own, idle) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Winding down already: nothing owed to the peer any more.
    fn finished(&self) -> bool {
        matches!(self.phase, Phase::Lingering { .. } | Phase::Done)
    }
}

fn set_linger_zero(sock: &TcpStream) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: a valid descriptor and a correctly sized, initialised option value.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        log::warn!("SO_LINGER: {}", io::Error::last_os_error());
    }
}

/// Bytes in the socket's send queue not yet acknowledged by the peer (`TIOCOUTQ`).
fn unsent_bytes(sock: &TcpStream) -> Option<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: a valid descriptor and a pointer to an int, as TIOCOUTQ expects.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    (rc == 0).then_some(n.max(0) as usize)
}

struct Server {
    poll: Poll,
    listener: Option<TcpListener>,
    signals: Signals,
    tls: Arc<ServerConfig>,
    conns: Slab<Conn>,
    ctx: Ctx,
    timers: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    dead: Vec<usize>,
    again: Vec<usize>,
    generation: u64,
    accept_retry: Option<Instant>,
    drain_deadline: Option<Instant>,
    accepted: u64,
}

/// Runs the loop until SIGTERM or SIGINT. `listener` is bound; the listening line is printed here, once
/// everything is registered.
pub(crate) fn serve(
    listener: std::net::TcpListener,
    mut signals: Signals,
    tls: Arc<ServerConfig>,
    gazetteer: Gazetteer,
    settings: Settings,
    started: Instant,
) -> Result<(), String> {
    listener.set_nonblocking(true).map_err(|e| format!("listener: {e}"))?;
    let mut listener = TcpListener::from_std(listener);
    let poll = Poll::new().map_err(|e| format!("poll: {e}"))?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
        .map_err(|e| format!("register listener: {e}"))?;
    poll.registry()
        .register(&mut signals, SIGNALS, Interest::READABLE)
        .map_err(|e| format!("register signals: {e}"))?;
    let local = listener.local_addr().map_err(|e| format!("listener: {e}"))?;
    {
        let mut stdout = io::stdout().lock();
        let _ = writeln!(stdout, "places listening on {local}");
        let _ = stdout.flush();
    }
    log::info!("places listening on {local} (ready {} ms after start)", started.elapsed().as_millis());
    let mut server = Server {
        poll,
        listener: Some(listener),
        signals,
        tls,
        conns: Slab::new(),
        ctx: Ctx { gazetteer, stats: Stats::default(), settings, draining: false },
        timers: BinaryHeap::new(),
        dead: Vec::new(),
        again: Vec::new(),
        generation: 0,
        accept_retry: None,
        drain_deadline: None,
        accepted: 0,
    };
    server.run()
}

impl Server {
    fn run(&mut self) -> Result<(), String> {
        let mut events = Events::with_capacity(256);
        loop {
            let timeout = self.timeout(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if interrupted(&e) {
                    continue;
                }
                return Err(format!("poll: {e}"));
            }
            let now = Instant::now();
            let again = std::mem::take(&mut self.again);
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(now),
                    SIGNALS => self.on_signal(now),
                    Token(key) => {
                        let Some(conn) = self.conns.get_mut(key) else {
                            continue;
                        };
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            conn.readable = true;
                        }
                        if event.is_writable() || event.is_write_closed() || event.is_error() {
                            conn.writable = true;
                        }
                        self.drive(key, now);
                    }
                }
            }
            for key in again {
                self.drive(key, now);
            }
            self.fire_timers(now);
            if self.accept_retry.is_some_and(|t| now >= t) {
                self.accept_retry = None;
                self.accept(now);
            }
            self.reap();
            if let Some(deadline) = self.drain_deadline {
                if self.conns.iter().all(|(_, c)| c.finished()) || now >= deadline {
                    break;
                }
            }
        }
        log::info!(
            "shut down: {} connections accepted, {} legacy and {} new Places requests served",
            self.accepted,
            self.ctx.stats.legacy,
            self.ctx.stats.new
        );
        Ok(())
    }

    fn timeout(&self, now: Instant) -> Option<Duration> {
        if !self.again.is_empty() {
            return Some(Duration::ZERO);
        }
        let next = [self.timers.peek().map(|Reverse((t, _, _))| *t), self.accept_retry, self.drain_deadline]
            .into_iter()
            .flatten()
            .min();
        next.map(|t| t.saturating_duration_since(now))
    }

    fn accept(&mut self, now: Instant) {
        loop {
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            let (mut sock, peer) = match listener.accept() {
                Ok(pair) => pair,
                Err(e) if would_block(&e) => return,
                Err(e) if interrupted(&e) => continue,
                Err(e) => {
                    log::warn!("accept: {e}; retrying in {ACCEPT_RETRY:?}");
                    self.accept_retry = Some(now + ACCEPT_RETRY);
                    return;
                }
            };
            if self.conns.len() >= self.ctx.settings.max_connections {
                log::warn!("{peer}: refused, {} connections open", self.conns.len());
                continue; // dropping the socket closes it
            }
            let _ = sock.set_nodelay(true);
            let tls = match ServerConnection::new(self.tls.clone()) {
                Ok(tls) => tls,
                Err(e) => {
                    log::warn!("{peer}: TLS: {e}");
                    continue;
                }
            };
            let entry = self.conns.vacant_entry();
            let key = entry.key();
            if let Err(e) =
                self.poll.registry().register(&mut sock, Token(key), Interest::READABLE | Interest::WRITABLE)
            {
                log::warn!("{peer}: register: {e}");
                continue;
            }
            self.generation += 1;
            self.accepted += 1;
            log::debug!("{peer}: connected");
            entry.insert(Conn {
                sock,
                tls,
                peer,
                generation: self.generation,
                readable: false,
                writable: false,
                tls_eof: false,
                peer_done: false,
                plain_pending: false,
                input: Vec::new(),
                phase: Phase::Reading,
                last_active: now,
                scheduled: None,
                lingered: 0,
                queued_for_removal: false,
                requests: 0,
            });
            self.settle(key, now);
        }
    }

    fn on_signal(&mut self, now: Instant) {
        for signal in self.signals.pending() {
            log::info!("signal {signal}: shutting down");
        }
        if self.drain_deadline.is_some() {
            return;
        }
        self.drain_deadline = Some(now + DRAIN);
        self.ctx.draining = true;
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.drive(key, now);
        }
    }

    fn drive(&mut self, key: usize, now: Instant) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.queued_for_removal {
            return;
        }
        if conn.drive(now, &mut self.ctx) {
            self.again.push(key);
        }
        log::trace!(
            "{} driven: phase {} readable {} writable {} wants_write {} input {}",
            conn.peer,
            conn.phase_name(),
            conn.readable,
            conn.writable,
            conn.tls.wants_write(),
            conn.input.len()
        );
        self.settle(key, now);
    }

    /// After a connection moved: queue it for removal, or make sure its next deadline is in the heap.
    fn settle(&mut self, key: usize, now: Instant) {
        let conn = &mut self.conns[key];
        if conn.is_done() {
            if !conn.queued_for_removal {
                conn.queued_for_removal = true;
                self.dead.push(key);
            }
            return;
        }
        if let Some(t) = conn.deadline(now, self.ctx.settings.idle_timeout) {
            if conn.scheduled.is_none_or(|s| t < s) {
                conn.scheduled = Some(t);
                self.timers.push(Reverse((t, key, conn.generation)));
            }
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(&Reverse((t, key, generation))) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            if conn.generation != generation || conn.queued_for_removal {
                continue;
            }
            if conn.scheduled == Some(t) {
                conn.scheduled = None;
            }
            if conn.on_timer(now, &mut self.ctx) {
                self.again.push(key);
            }
            self.settle(key, now);
        }
    }

    fn reap(&mut self) {
        for key in self.dead.drain(..) {
            let mut conn = self.conns.remove(key);
            let _ = self.poll.registry().deregister(&mut conn.sock);
            log::debug!("{}: closed after {} requests", conn.peer, conn.requests);
        }
    }
}
