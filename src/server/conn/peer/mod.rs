//! The peer link state machine: long-lived TCP links between neighbouring servers (PROTOCOL section 5).
//!
//! Links are directional. Every server dials each of its neighbours and *sends* over the link it dialed:
//! first every record it holds (anti-entropy, in bounded batches), then every record it stores from then
//! on (flooding). It *receives* on the links its neighbours dialed. Two sockets per pair, and no arbitration
//! between duplicate links is ever needed.
//!
//! ```text
//!  dialer:   Connecting ──connected──▶ AwaitWelcome ──WELCOME ok, PROOF sent──▶ Live (send records)
//!  acceptor: AwaitHello ──HELLO from a neighbour, WELCOME sent──▶ AwaitProof ──PROOF ok──▶ Live (receive)
//!  any state ──EOF, reset, bad message, failed proof, output bound, handshake deadline──▶ Closed
//!  Live ──nothing heard for limits.peer_dead_after_ms──▶ Closed (silent)
//! ```
//!
//! The handshake is one line each way, HELLO, WELCOME (or REFUSED), PROOF: `auth.rs` reads and writes
//! those lines and computes and checks the proofs; this machine decides what each means in its state.
//! After the proof, the dialer sends `AT ...` lines and `PING` lines, and the acceptor answers each
//! `PING` with `PONG`: the heartbeat (`heartbeat.rs`) by which each side notices within
//! `limits.peer_dead_after_ms` that the other has gone silent.
//!
//! With `peer_tls` the same lines travel inside mutual TLS ([`PeerIo`], rustls driven by this state
//! machine, no thread): the dialer's rustls checks that the acceptor's certificate names the neighbour it
//! dialed, and the acceptor checks that the dialer's certificate names the server its `HELLO` claims to
//! be (the TLS handshake is over by the time the `HELLO` line can be read). Bytes that are not TLS fail
//! the handshake, so a plaintext `HELLO`, `PROOF` or `AT` never reaches the line protocol.
//!
//! Version 2 adds catch-up by delta: the dialer also sends `OFF <seq>` lines, and the acceptor answers
//! with `ACK <seq>` lines:
//!
//! ```text
//!  HELLO A B n v=2 rid=<A's replication id>
//!  WELCOME B m mac v=2 rid=<the same> off=<X: the offset of A's stream B holds all of, 0 if none>
//!  A: rid matches and X <= A's greatest seq? send the records stored after X (delta) : all (full)
//!  A: OFF <S>   once the sync is done, and after floods: every record of A up to seq S has been sent
//!  B: ACK <S>   once B holds all of them durably (its journal has fsynced what it stored up to then);
//!               B records (A's rid, S) in its journal's meta file, for its next HELLO answer
//! ```
//! HELLO and WELCOME carry `v=2` and the sender's retention (issue 14): `max=N` when its table is bounded,
//! and `least=<client-time>,<client-id-hex>` while it is full. A dialer whose acceptor stated `least=`
//! leaves out of its catch-up every record at or below it: the acceptor would refuse those at once.
//!
//! This file holds the link's state, its line dispatch and its I/O (the `Connection` duties); the parts
//! of the protocol live beside it: `handshake.rs` (HELLO, WELCOME, PROOF), `sync.rs` (anti-entropy
//! batches, `OFF` and `ACK`) and `liveness.rs` (the heartbeat).

pub mod frame;
mod handshake;
mod liveness;
pub mod sync;

use super::{Connection, Delivery};
use crate::protocol;
use crate::record::OrderPoint;
use crate::route::Mode;
use crate::server::ctx::{Ctx, READS_PER_TURN};
use crate::server::heartbeat::{self, Heartbeat};
use crate::server::peer_tls::{IoRead, PeerIo, Refusal};
use crate::server::token::{TokenName, TRACE};
use mio::net::TcpStream;
use mio::Token;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long a link may take from connect to Live.
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(3);
/// Longest peer line. Every record is at most [`protocol::MAX_AT_LINE`] bytes by construction (each field is
/// bounded), and handshake lines are shorter still, so this does not depend on the client line limit.
pub const MAX_PEER_LINE: usize = 4096;
const _: () = assert!(protocol::MAX_AT_LINE <= MAX_PEER_LINE);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// We dialed neighbour `.0`; we send records on this link.
    Dialer(usize),
    /// A server dialed us; we receive records on this link once it has identified itself.
    Acceptor,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerState {
    Connecting,
    AwaitWelcome { nonce: String },
    AwaitHello,
    AwaitProof { neighbour: usize, nonce_d: String, nonce_a: String },
    Live { neighbour: usize },
    Closed(PeerClose),
}

/// Why a peer link ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerClose {
    ConnectFailed,
    Eof,
    Reset,
    /// A line that is not what the protocol expects at this point.
    Protocol,
    /// Not a configured neighbour, or a failed proof.
    Refused,
    /// The neighbour cannot keep up: dropped, resynced when it relinks.
    OutputBound,
    HandshakeTimeout,
    /// Nothing heard from the other side for `limits.peer_dead_after_ms`.
    Silent,
    Shutdown,
}

impl PeerClose {
    pub fn name(self) -> &'static str {
        match self {
            PeerClose::ConnectFailed => "connect_failed",
            PeerClose::Eof => "eof",
            PeerClose::Reset => "reset",
            PeerClose::Protocol => "protocol_error",
            PeerClose::Refused => "refused",
            PeerClose::OutputBound => "output_bound",
            PeerClose::HandshakeTimeout => "handshake_timeout",
            PeerClose::Silent => "silent",
            PeerClose::Shutdown => "shutdown",
        }
    }
}

pub struct Peer {
    pub stream: TcpStream,
    pub addr: SocketAddr,
    pub token: Token,
    pub role: Role,
    pub state: PeerState,
    input: Vec<u8>,
    out: Vec<u8>,
    sent: usize,
    readable: bool,
    writable: bool,
    dirty: bool,
    /// Next slot of the anti-entropy sync, while it runs.
    sync: Option<usize>,
    /// The sync sends the records stored after this seq (0: every record).
    sync_after: u64,
    /// Dialer: the other side speaks version 2 (offsets), and the sync is done: `OFF` lines may go out.
    v2: bool,
    synced: bool,
    /// Dialer: the other side speaks version 3: records go in frames that say how they travel.
    v3: bool,
    /// Dialer: the other side speaks version 4: a repair's notices go as notices (to a version 3
    /// neighbour, the record itself goes in a repair frame instead, as version 3 did).
    v4: bool,
    /// Dialer: the frame being filled in `out`. Closed (its length written) before anything else is
    /// appended and before `out` is written.
    frame: Option<frame::Open>,
    /// Acceptor: the mode of the frame being read and how many of its bytes are still to come.
    frame_in: Option<(Mode, usize)>,
    /// The last offset sent in an `OFF` line, when, and whether records went out since.
    off_sent: u64,
    off_at: Instant,
    carried: bool,
    /// Acceptor: the dialer's replication id (from HELLO), and the offsets it sent that this server has not
    /// acknowledged yet: (offset, the seq this server must have made durable first).
    dialer_rid: Option<String>,
    pending_acks: std::collections::VecDeque<(u64, u64)>,
    /// Dialer: the acceptor's least record, stated while its table is full; the sync skips what is not
    /// above it.
    peer_least: Option<OrderPoint>,
    /// Close once everything queued is written (graceful shut-down).
    close_when_flushed: bool,
    /// The handshake must be done by then.
    pub deadline: Instant,
    /// The neighbour an accepted link proved to be (kept after it closes, for the bookkeeping).
    pub identified: Option<usize>,
    /// Once Live: when the other side was last heard, when to ping (the dialer), when it is dead.
    heartbeat: Option<Heartbeat>,
    /// The heartbeat check armed in the loop's timers (later entries for this link are stale).
    beat_at: Option<Instant>,
    /// The last write hit `WouldBlock`: the next writable edge means the neighbour's kernel took data.
    write_blocked: bool,
    /// The other side closed (or the socket failed): read to the EOF, which raises no new edge.
    hup: bool,
    /// The bytes under the lines: the socket itself, or TLS over it.
    pub io: PeerIo,
}

impl Peer {
    pub fn dialer(
        stream: TcpStream,
        addr: SocketAddr,
        token: Token,
        neighbour: usize,
        now: Instant,
        io: PeerIo,
    ) -> Peer {
        Self::new(stream, addr, token, Role::Dialer(neighbour), PeerState::Connecting, now, io)
    }

    pub fn acceptor(stream: TcpStream, addr: SocketAddr, token: Token, now: Instant, io: PeerIo) -> Peer {
        Self::new(stream, addr, token, Role::Acceptor, PeerState::AwaitHello, now, io)
    }

    fn new(
        stream: TcpStream,
        addr: SocketAddr,
        token: Token,
        role: Role,
        state: PeerState,
        now: Instant,
        io: PeerIo,
    ) -> Peer {
        Peer {
            stream,
            addr,
            token,
            role,
            state,
            input: Vec::new(),
            out: Vec::new(),
            sent: 0,
            readable: false,
            writable: false,
            dirty: false,
            sync: None,
            sync_after: 0,
            v2: false,
            synced: false,
            v3: false,
            v4: false,
            frame: None,
            frame_in: None,
            off_sent: 0,
            off_at: now,
            carried: false,
            dialer_rid: None,
            pending_acks: std::collections::VecDeque::new(),
            peer_least: None,
            close_when_flushed: false,
            deadline: now + HANDSHAKE_DEADLINE,
            identified: None,
            heartbeat: None,
            beat_at: None,
            write_blocked: false,
            hup: false,
            io,
        }
    }

    pub fn is_live(&self) -> bool {
        matches!(self.state, PeerState::Live { .. })
    }

    /// The neighbour this link is identified with, if it is.
    pub fn neighbour(&self) -> Option<usize> {
        match (&self.state, self.role) {
            (PeerState::Live { neighbour } | PeerState::AwaitProof { neighbour, .. }, _) => Some(*neighbour),
            (_, Role::Dialer(n)) => Some(n),
            _ => self.identified,
        }
    }

    fn close(&mut self, why: PeerClose, ctx: &mut Ctx, detail: std::fmt::Arguments<'_>) {
        if self.is_closed() {
            return;
        }
        let name = self.neighbour().map(|n| ctx.neighbours[n].name.clone()).unwrap_or_else(|| "?".into());
        ctx.log.event(format_args!(
            "peer link {} {name} ({}) dropped: {} {detail}",
            if matches!(self.role, Role::Dialer(_)) { "to" } else { "from" },
            self.addr,
            why.name()
        ));
        if why != PeerClose::ConnectFailed && why != PeerClose::Shutdown {
            log::info!("peer link with {name} ({}) dropped: {} {detail}", self.addr, why.name());
        }
        if why != PeerClose::ConnectFailed {
            self.io.close(&mut self.stream);
        }
        self.state = PeerState::Closed(why);
    }

    /// The TLS layer refused the link (a certificate that does not chain to the CA, names another
    /// server, has expired; no certificate; not TLS at all), or the other side refused ours.
    fn tls_failed(&mut self, reason: Refusal, e: &rustls::Error, ctx: &mut Ctx) {
        if reason == Refusal::PeerAlert {
            // Not our refusal: the other side's log and counters say why it refused us.
            return self.close(PeerClose::Refused, ctx, format_args!("by the other side: {e}"));
        }
        ctx.refused(reason);
        self.close(PeerClose::Refused, ctx, format_args!("{}: {e}", reason.reason()))
    }

    fn take_input(&mut self, data: &[u8], ctx: &mut Ctx) {
        if self.input.is_empty() {
            let used = self.lines(data, ctx);
            self.keep(&data[used..], ctx);
        } else {
            let mut input = std::mem::take(&mut self.input);
            input.extend_from_slice(data);
            let used = self.lines(&input, ctx);
            self.keep(&input[used..], ctx);
        }
    }

    fn keep(&mut self, rest: &[u8], ctx: &mut Ctx) {
        if self.is_closed() {
            return;
        }
        if rest.len() > MAX_PEER_LINE {
            return self.close(PeerClose::Protocol, ctx, format_args!("line too long"));
        }
        self.input.clear();
        self.input.extend_from_slice(rest);
    }

    fn lines(&mut self, buf: &[u8], ctx: &mut Ctx) -> usize {
        let mut pos = 0;
        while !self.is_closed() {
            let Some(len) = memchr::memchr(b'\n', &buf[pos..]) else { break };
            let line = &buf[pos..pos + len + 1];
            pos += len + 1;
            self.line(line, ctx);
        }
        pos
    }

    /// One line from the other side, final LF included.
    fn line(&mut self, line: &[u8], ctx: &mut Ctx) {
        let text = line.strip_suffix(b"\n").unwrap_or(line);
        if self.is_live() {
            self.heard(ctx.now);
        }
        match (&self.state, self.role) {
            (PeerState::Live { .. }, Role::Acceptor) if line == heartbeat::PING => {
                self.out.extend_from_slice(heartbeat::PONG);
                self.mark_dirty(ctx);
            }
            (&PeerState::Live { neighbour }, Role::Acceptor) if self.frame_in.is_some() => {
                let Some((mode, left)) = self.frame_in else { unreachable!() };
                if line.len() > left {
                    return self.close(PeerClose::Protocol, ctx, format_args!("a line runs past its frame"));
                }
                self.frame_in = (line.len() < left).then_some((mode, left - line.len()));
                if mode == Mode::Notice {
                    return self.on_notice(neighbour, line, ctx);
                }
                self.on_record(neighbour, line, mode, ctx)
            }
            (&PeerState::Live { .. }, Role::Acceptor) if frame::is_header(line) => match frame::parse_header(line) {
                Some(open) => self.frame_in = Some(open),
                None => self.close(PeerClose::Protocol, ctx, format_args!("bad frame header")),
            },
            (&PeerState::Live { neighbour }, Role::Acceptor) if text.starts_with(b"OFF ") => {
                self.on_offset(neighbour, text, ctx)
            }
            // A record outside a frame (a version 2 neighbour): it floods, as version 2 did.
            (&PeerState::Live { neighbour }, Role::Acceptor) => self.on_record(neighbour, line, Mode::Flood, ctx),
            // The answer to our PING: heard (above), nothing more.
            (PeerState::Live { .. }, Role::Dialer(_)) if line == heartbeat::PONG => {}
            (PeerState::Live { .. }, Role::Dialer(n)) if text.starts_with(b"ACK ") => {
                match std::str::from_utf8(&text[4..]).ok().and_then(|t| t.parse::<u64>().ok()) {
                    Some(off) => ctx.neighbours[n].acked = off,
                    None => self.close(PeerClose::Protocol, ctx, format_args!("bad ACK line")),
                }
            }
            (PeerState::AwaitHello, _) => self.on_hello(text, ctx),
            (PeerState::AwaitProof { .. }, _) => self.on_proof(text, ctx),
            (PeerState::AwaitWelcome { .. }, _) => self.on_welcome(text, ctx),
            // A sending link receives nothing after WELCOME but PONG and acknowledgements.
            (PeerState::Live { .. }, Role::Dialer(_)) => {
                self.close(PeerClose::Protocol, ctx, format_args!("unexpected line on a sending link"))
            }
            (PeerState::Connecting | PeerState::Closed(_), _) => {}
        }
    }

    /// A record from an identified neighbour, travelling in `mode`: stored and passed on if it is the
    /// newest.
    fn on_record(&mut self, neighbour: usize, line: &[u8], mode: Mode, ctx: &mut Ctx) {
        ctx.counters.records_received += 1;
        let fields = match ctx.check_peer_record(line) {
            Ok(fields) => fields,
            Err(protocol::AtRefusal::NotARecord) => {
                let shown = String::from_utf8_lossy(&line[..line.len().min(80)]).to_string();
                return self.close(PeerClose::Protocol, ctx, format_args!("not a record: {shown:?}"));
            }
            Err(refusal) => {
                // A record that breaks a rule is refused, never stored or forwarded; the link stays up, so
                // one bad record cannot cut a neighbour off from every later one.
                ctx.counters.records_refused += 1;
                let shown = String::from_utf8_lossy(&line[..line.len().min(80)]).escape_debug().to_string();
                let name = &ctx.neighbours[neighbour].name;
                ctx.log.event(format_args!("peer {name}: record refused ({}): {shown}", refusal.name()));
                return;
            }
        };
        ctx.log.peer("peer-recv", &ctx.neighbours[neighbour].name, line);
        if mode == Mode::Repair {
            if !ctx.repair_record(line, fields, neighbour) {
                ctx.counters.records_duplicate += 1;
            }
            return;
        }
        if !ctx.store_and_flood(line, fields, Some(neighbour), mode) {
            ctx.counters.records_duplicate += 1;
        }
    }

    /// A repair's notice from an identified neighbour: the version it names is relayed if held here.
    fn on_notice(&mut self, neighbour: usize, line: &[u8], ctx: &mut Ctx) {
        let Some((id, time)) = frame::parse_notice(line) else {
            let shown = String::from_utf8_lossy(&line[..line.len().min(80)]).to_string();
            return self.close(PeerClose::Protocol, ctx, format_args!("not a notice: {shown:?}"));
        };
        ctx.log.peer("notice-recv", &ctx.neighbours[neighbour].name, line);
        ctx.notice_record(id, time, neighbour);
    }

    /// Queues a record for this (sending, live) link, in `mode`. Past the bound the link is dropped
    /// rather than allowed to grow: the neighbour resyncs by anti-entropy when it relinks (and what it
    /// had not acknowledged is flooded again meanwhile).
    pub fn send_record(&mut self, line: &[u8], mode: Mode, ctx: &mut Ctx) {
        if !self.is_live() {
            return;
        }
        self.push_record(mode, line);
        self.carried = true;
        if self.out.len() - self.sent > ctx.limits.peer_output_max {
            return self.close(
                PeerClose::OutputBound,
                ctx,
                format_args!("{} bytes unsent", self.out.len() - self.sent),
            );
        }
        self.mark_dirty(ctx);
    }

    /// Appends a record to `out` inside a frame of `mode` (version 3), or as a bare line (version 2). A
    /// notice is the record's client id and client time in a notice frame (version 4).
    fn push_record(&mut self, mode: Mode, line: &[u8]) {
        match mode {
            Mode::Notice if self.v4 => {
                self.frame_room(mode, line.len());
                frame::write_notice(&mut self.out, line);
            }
            Mode::Notice => self.push_record(Mode::Repair, line),
            _ => {
                self.frame_room(mode, line.len());
                self.out.extend_from_slice(line);
            }
        }
    }

    /// Makes sure `out` ends in an open frame of `mode` with room for `len` more bytes (version 3; a
    /// version 2 neighbour gets bare lines).
    fn frame_room(&mut self, mode: Mode, len: usize) {
        if !self.v3 {
            return;
        }
        match &self.frame {
            Some(open) if open.takes(mode, len, self.out.len()) => {}
            _ => {
                self.close_frame();
                self.frame = Some(frame::open(&mut self.out, mode));
            }
        }
    }

    /// Writes the open frame's length into its header: `out` holds only whole frames and lines again.
    fn close_frame(&mut self) {
        if let Some(open) = self.frame.take() {
            frame::close(&mut self.out, &open);
        }
    }

    /// Appends a line that is not a record (`PING`; `OFF` is formatted in place), after closing any open
    /// frame.
    fn push_line(&mut self, line: &[u8]) {
        self.close_frame();
        self.out.extend_from_slice(line);
    }

    /// Queues the link for the end-of-turn flush. Sending links are written first, before every client;
    /// an accepted link's output (`WELCOME`, `PONG`, `ACK`) goes with the clients', after every sending
    /// link's: an `ACK` never leaves before the records it vouches for were written on down their trees.
    fn mark_dirty(&mut self, ctx: &mut Ctx) {
        if !self.dirty {
            self.dirty = true;
            match self.role {
                Role::Dialer(_) => ctx.dirty_peers.push(self.token),
                Role::Acceptor => ctx.dirty.push(self.token),
            }
        }
    }
}

/// The duties every connection has (see `conn/mod.rs`).
impl Connection for Peer {
    fn on_event(&mut self, ev: &mio::event::Event, ctx: &mut Ctx, scratch: &mut [u8]) {
        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
            self.readable = true;
        }
        if ev.is_read_closed() || ev.is_error() {
            self.hup = true;
        }
        if ev.is_writable() || ev.is_write_closed() || ev.is_error() {
            self.writable = true;
            if std::mem::take(&mut self.write_blocked) && ev.is_writable() && !ev.is_error() {
                // Room again in a send buffer that was full: the neighbour's kernel acknowledged data,
                // so it is alive, only busy (a long sync must not look like silence).
                self.heard(ctx.now);
            }
            if self.sent < self.out.len() || self.sync.is_some() || self.io.wants_write() {
                self.mark_dirty(ctx);
            }
        }
        self.drive(ctx, scratch);
    }

    /// Runs the state machine until it must wait for the kernel.
    fn drive(&mut self, ctx: &mut Ctx, scratch: &mut [u8]) {
        if self.state == PeerState::Connecting {
            if !self.writable && !self.readable {
                return;
            }
            // The first event of a non-blocking connect: no I/O before it; then the socket's error,
            // then whether it is connected at all (a spurious wake-up leaves it still connecting).
            match self.stream.take_error() {
                Ok(Some(e)) | Err(e) => return self.close(PeerClose::ConnectFailed, ctx, format_args!("{e}")),
                Ok(None) => {}
            }
            match self.stream.peer_addr() {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::NotConnected => {
                    self.writable = false;
                    self.readable = false;
                    return;
                }
                Err(e) => return self.close(PeerClose::ConnectFailed, ctx, format_args!("{e}")),
            }
            self.hello(ctx);
        }
        let mut reads = 0;
        while self.readable && !self.is_closed() {
            if reads == READS_PER_TURN {
                ctx.again.push(self.token);
                return;
            }
            reads += 1;
            match self.io.read(&mut self.stream, scratch) {
                IoRead::Data(n) => {
                    ctx.counters.peer_bytes_in += n as u64;
                    // A short plaintext read drained the socket (epoll(7)): the next bytes raise a new
                    // edge, so a second read(2) that would say WouldBlock is saved. (TLS may hold
                    // decrypted bytes back; after a half-close, read on to the EOF.)
                    if n < scratch.len() && !self.hup && !self.io.is_tls() {
                        self.readable = false;
                    }
                    let before = ctx.counters.records_received;
                    self.take_input(&scratch[..n], ctx);
                    let records = ctx.counters.records_received - before;
                    if records > 0 && ctx.log.logs_peer_counts() {
                        if let Some(from) = self.neighbour() {
                            let counts = [("records", records), ("bytes", n as u64)];
                            ctx.log.peer_counts("peer-recv", &ctx.neighbours[from].name, &counts);
                        }
                    }
                }
                IoRead::Eof => self.close(PeerClose::Eof, ctx, format_args!("")),
                IoRead::WouldBlock => self.readable = false,
                IoRead::Failed(_) => self.close(PeerClose::Reset, ctx, format_args!("")),
                IoRead::Refused(reason, e) => self.tls_failed(reason, &e, ctx),
            }
        }
        // TLS handshake messages (or an alert) that the reads produced go out at the end of the turn.
        if self.io.wants_write() && !self.is_closed() {
            self.mark_dirty(ctx);
        }
    }

    /// The handshake deadline: a link that is not Live in time is dropped (armed once, at the deadline).
    /// Once Live, the heartbeat's checks.
    fn on_timer(&mut self, ctx: &mut Ctx, _scratch: &mut [u8]) {
        if !self.is_closed() && !self.is_live() && ctx.now >= self.deadline {
            self.close(PeerClose::HandshakeTimeout, ctx, format_args!(""));
        }
        self.check_heartbeat(ctx);
    }

    /// End of turn: write what is queued, then the next sync batches while the socket takes them.
    fn flush(&mut self, ctx: &mut Ctx, _scratch: &mut [u8]) {
        self.dirty = false;
        self.note_offset(ctx);
        let mut batches = 0;
        loop {
            self.close_frame();
            // With TLS, rustls may hold records of its own (handshake, or data the socket did not take)
            // even when `out` is empty: an empty write pushes them.
            while (self.sent < self.out.len() || self.io.wants_write()) && self.writable && !self.is_closed() {
                match self.io.write(&mut self.stream, &self.out[self.sent..]) {
                    // rustls holds all it may until the handshake ends: the next read moves it on.
                    Ok(0) if self.sent < self.out.len() => break,
                    Ok(n) => {
                        if ctx.trace {
                            log::trace!(target: TRACE, "peer{}: wrote {n} bytes", TokenName(self.token));
                        }
                        self.sent += n;
                        ctx.counters.peer_bytes_out += n as u64;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        self.writable = false;
                        self.write_blocked = true;
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => self.close(PeerClose::Reset, ctx, format_args!("{e}")),
                }
            }
            if self.sent == self.out.len() {
                self.out.clear();
                self.sent = 0;
            }
            if self.is_closed() || !self.writable || self.sent != 0 || self.io.is_handshaking() {
                break;
            }
            if self.sync.is_some() && batches == sync::SYNC_BATCHES_PER_TURN {
                // More to sync, and the socket still takes bytes: continue next turn, after the others.
                self.mark_dirty(ctx);
                ctx.again.push(self.token);
                break;
            }
            if !self.fill_sync_batch(ctx) {
                break;
            }
            batches += 1;
        }
        if self.close_when_flushed && self.out.is_empty() && self.sync.is_none() && !self.io.wants_write() {
            self.close(PeerClose::Shutdown, ctx, format_args!(""));
        }
        if self.out.capacity() > 1 << 20 && self.out.is_empty() {
            self.out = Vec::new();
        }
    }

    fn deliver(&mut self, what: Delivery<'_>, ctx: &mut Ctx, _scratch: &mut [u8]) {
        match what {
            Delivery::Record { line, mode } => self.send_record(line, mode, ctx),
            Delivery::Advanced if self.v2 && self.synced && self.is_live() => self.mark_dirty(ctx),
            Delivery::Durable => {
                if let (PeerState::Live { neighbour }, Role::Acceptor) = (&self.state, self.role) {
                    self.release_acks(*neighbour, ctx);
                }
            }
            _ => {}
        }
    }

    /// Graceful shut-down: a sending link finishes what it queued (not the sync), the others close now.
    fn shut_down(&mut self, ctx: &mut Ctx, _scratch: &mut [u8]) {
        self.sync = None;
        if matches!(self.role, Role::Dialer(_)) && self.is_live() && self.sent < self.out.len() {
            self.close_when_flushed = true;
            self.mark_dirty(ctx);
        } else {
            self.close(PeerClose::Shutdown, ctx, format_args!(""));
        }
    }

    fn is_closed(&self) -> bool {
        matches!(self.state, PeerState::Closed(_))
    }

    /// Freed: the neighbour bookkeeping. A sending link redials; a receiving one is counted out (only
    /// one that passed the handshake was counted in).
    fn on_closed(&mut self, ctx: &mut Ctx) {
        ctx.gauges.peers -= 1;
        match self.role {
            Role::Dialer(n) => ctx.link_out_closed(n, self.token),
            Role::Acceptor => {
                if let Some(n) = self.identified {
                    ctx.link_in_closed(n);
                }
            }
        }
    }

    fn socket(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// The state's name, without its nonces (for the trace).
    fn state_name(&self) -> String {
        match &self.state {
            PeerState::Connecting => "Connecting".into(),
            PeerState::AwaitWelcome { .. } => "AwaitWelcome".into(),
            PeerState::AwaitHello => "AwaitHello".into(),
            PeerState::AwaitProof { neighbour, .. } => format!("AwaitProof({neighbour})"),
            PeerState::Live { neighbour } => format!("Live({neighbour})"),
            PeerState::Closed(why) => format!("Closed({})", why.name()),
        }
    }
}
