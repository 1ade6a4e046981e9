//! One connection of the local Places service: a TLS-over-TCP, HTTP/1.1 keep-alive state machine.
//!
//! [`Conn::drive`] reads TLS until `WouldBlock`, hands plaintext to the request parser, has
//! [`respond`] answer, hands the answer to rustls, `write_tls` until it stops, and loops while anything
//! moved. The connection keeps its own `readable` / `writable` bits (the loop sets them from events) and
//! clears one only on `WouldBlock`. rustls is driven only through `read_tls`, `process_new_packets`,
//! `reader`, `writer`, `write_tls` and `wants_write`.
//!
//! After a response a connection reads the next request, or closes politely: close_notify, FIN, then
//! lingering (reading and discarding) so that closing never resets the connection under a response the
//! peer has not read yet. The `delay`, `trickle` and `reset` faults are phases too, so a misbehaving
//! answer never blocks the loop.

use super::http1::{self, Request};
use super::respond::{self, Ctx, Outgoing};
use mio::net::TcpStream;
use rustls::ServerConnection;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

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
/// Drive iterations for one connection per loop turn before the others get their turn.
const BUDGET: usize = 64;

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

pub(super) struct Conn {
    pub(super) sock: TcpStream,
    pub(super) tls: ServerConnection,
    pub(super) peer: SocketAddr,
    pub(super) generation: u64,
    pub(super) readable: bool,
    pub(super) writable: bool,
    /// `read_tls` saw EOF (or a close_notify): nothing more to read from the socket.
    tls_eof: bool,
    /// The peer's plaintext has ended (close_notify or EOF), after everything it sent was read.
    peer_done: bool,
    /// `input` is full while rustls may hold more plaintext: do not read the socket.
    plain_pending: bool,
    pub(super) input: Vec<u8>,
    phase: Phase,
    last_active: Instant,
    /// The earliest deadline of this connection already in the timer heap.
    pub(super) scheduled: Option<Instant>,
    lingered: usize,
    pub(super) queued_for_removal: bool,
    pub(super) requests: u64,
}

pub(super) fn would_block(e: &io::Error) -> bool {
    e.kind() == ErrorKind::WouldBlock
}

pub(super) fn interrupted(e: &io::Error) -> bool {
    e.kind() == ErrorKind::Interrupted
}

impl Conn {
    /// A connection just accepted, its TLS handshake not yet begun.
    pub(super) fn new(sock: TcpStream, tls: ServerConnection, peer: SocketAddr, generation: u64, now: Instant) -> Conn {
        Conn {
            sock,
            tls,
            peer,
            generation,
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
        }
    }

    pub(super) fn phase_name(&self) -> &'static str {
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

    pub(super) fn is_done(&self) -> bool {
        matches!(self.phase, Phase::Done)
    }

    /// Moves the connection as far as it can go without waiting for the kernel or a timer. Returns true
    /// when it stopped only because its budget ran out (drive it again next turn).
    pub(super) fn drive(&mut self, now: Instant, ctx: &mut Ctx) -> bool {
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
                self.input.clear();
                self.phase = Phase::Sending { out: respond::bad_request(&bad, self.peer), next: None };
                true
            }
        }
    }

    fn answer(&mut self, req: Request, now: Instant, ctx: &mut Ctx) {
        self.requests += 1;
        let (out, held) = respond::answer(&req, self.peer, self.peer_done, now, ctx);
        self.phase = match held {
            Some(until) => Phase::Held { until, out },
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
    pub(super) fn on_timer(&mut self, now: Instant, ctx: &mut Ctx) -> bool {
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
    pub(super) fn deadline(&self, now: Instant, idle: Duration) -> Option<Instant> {
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
    pub(super) fn finished(&self) -> bool {
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
