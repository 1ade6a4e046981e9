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

use super::{Connection, Delivery};
use crate::protocol;
use crate::record::OrderPoint;
use crate::server::auth::{self, Handshake};
use crate::server::ctx::{Ctx, READS_PER_TURN};
use crate::server::heartbeat::{self, Beat, Heartbeat};
use crate::server::peer_tls::{IoRead, PeerIo, Refusal};
use crate::server::timer::Timer;
use crate::server::token::{TokenName, TRACE};
use mio::net::TcpStream;
use mio::Token;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long a link may take from connect to Live.
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(3);
/// Sync bytes queued per turn per link: a million records go out over many turns, never all at once.
const SYNC_BATCH: usize = 64 * 1024;
const SYNC_BATCHES_PER_TURN: usize = 4;
/// Records looked at per sync batch, sent or passed over.
const SYNC_VISITS: u64 = 4096;
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
    /// The last offset sent in an `OFF` line.
    off_sent: u64,
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
            off_sent: 0,
            dialer_rid: None,
            pending_acks: std::collections::VecDeque::new(),
            peer_least: None,
            close_when_flushed: false,
            deadline: now + HANDSHAKE_DEADLINE,
            identified: None,
            heartbeat: None,
            beat_at: None,
            write_blocked: false,
            io,
        }
    }

    /// The link is Live: its heartbeat starts (the dialer pings, the acceptor answers).
    fn start_heartbeat(&mut self, ctx: &mut Ctx) {
        let dead_after = Duration::from_millis(ctx.limits.peer_dead_after_ms);
        let pings = matches!(self.role, Role::Dialer(_));
        let hb = Heartbeat::new(dead_after, pings, ctx.now);
        self.arm_beat(hb.next_check(), ctx);
        self.heartbeat = Some(hb);
    }

    fn arm_beat(&mut self, at: Instant, ctx: &mut Ctx) {
        if self.beat_at.is_none_or(|t| at < t) {
            self.beat_at = Some(at);
            ctx.timers.add(at, Timer::Conn(self.token));
        }
    }

    /// A heartbeat check came due: drop a link that has gone silent, ping, and arm the next check.
    fn check_heartbeat(&mut self, ctx: &mut Ctx) {
        if !self.is_live() || self.beat_at.is_some_and(|t| t > ctx.now) {
            return; // not live, or a stale entry: the armed check is later
        }
        self.beat_at = None;
        let Some(mut hb) = self.heartbeat else { return };
        match hb.check(ctx.now) {
            Beat::Dead => {
                let ms = ctx.limits.peer_dead_after_ms;
                return self.close(PeerClose::Silent, ctx, format_args!("nothing heard for {ms} ms"));
            }
            Beat::Ping => {
                // Between whole lines: `out` only ever holds whole lines.
                self.out.extend_from_slice(heartbeat::PING);
                self.mark_dirty(ctx);
                hb.pinged(ctx.now);
            }
            Beat::Quiet => {}
        }
        self.heartbeat = Some(hb);
        self.arm_beat(hb.next_check(), ctx);
    }

    /// The other side showed it is alive.
    fn heard(&mut self, now: Instant) {
        if let Some(hb) = &mut self.heartbeat {
            hb.heard(now);
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
            (&PeerState::Live { neighbour }, Role::Acceptor) if text.starts_with(b"OFF ") => {
                self.on_offset(neighbour, text, ctx)
            }
            (&PeerState::Live { neighbour }, Role::Acceptor) => self.on_record(neighbour, line, ctx),
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

    /// A record from an identified neighbour: stored and flooded on if it is the newest.
    fn on_record(&mut self, neighbour: usize, line: &[u8], ctx: &mut Ctx) {
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
        if !ctx.store_and_flood(line, fields, Some(neighbour)) {
            ctx.counters.records_duplicate += 1;
        }
    }

    /// `OFF <seq>` from the dialer: every record of its stream up to `seq` has been sent before this
    /// line, so everything up to it is stored here (or something newer). Acknowledged once this server's
    /// journal has made durable what it stored up to now; at once without a journal.
    fn on_offset(&mut self, neighbour: usize, text: &[u8], ctx: &mut Ctx) {
        let Some(off) = std::str::from_utf8(&text[4..]).ok().and_then(|t| t.parse::<u64>().ok()) else {
            return self.close(PeerClose::Protocol, ctx, format_args!("bad OFF line"));
        };
        let need = ctx.records().max_seq();
        self.pending_acks.push_back((off, need));
        if ctx.journal.is_some() {
            ctx.await_durable(need, self.token);
        }
        self.release_acks(neighbour, ctx);
    }

    /// Sends `ACK` for the greatest offset whose records are durable here, and records it (in memory, and
    /// in the journal's meta file for the next start).
    fn release_acks(&mut self, neighbour: usize, ctx: &mut Ctx) {
        let mut acked = None;
        while let Some(&(off, need)) = self.pending_acks.front() {
            if need > ctx.durable {
                // Not yet (or the journal is failing): wait for the next durable point.
                ctx.await_durable(need, self.token);
                break;
            }
            self.pending_acks.pop_front();
            acked = Some(off);
        }
        let (Some(off), Some(rid)) = (acked, self.dialer_rid.clone()) else { return };
        let name = ctx.neighbours[neighbour].name.clone();
        if let Some(j) = ctx.journal.as_mut() {
            j.set_peer(&name, &rid, off);
        }
        ctx.peer_offsets.insert(name, (rid, off));
        self.out.extend_from_slice(format!("ACK {off}\n").as_bytes());
        ctx.counters.acks_sent += 1;
        self.mark_dirty(ctx);
    }

    /// Dialer, version 2, sync done: tells the neighbour how far our stream has been sent (all records up
    /// to our greatest seq are in `out` or were written before).
    fn note_offset(&mut self, ctx: &mut Ctx) {
        let seq = ctx.records().max_seq();
        if self.v2 && self.synced && self.is_live() && seq > self.off_sent {
            self.off_sent = seq;
            self.out.extend_from_slice(format!("OFF {seq}\n").as_bytes());
        }
    }

    fn on_proof(&mut self, text: &[u8], ctx: &mut Ctx) {
        let PeerState::AwaitProof { neighbour, nonce_d, nonce_a } = &self.state else { return };
        let neighbour = *neighbour;
        let ok = match auth::parse(text) {
            Handshake::Proof { mac } => {
                let me = String::from_utf8_lossy(&ctx.name).to_string();
                ctx.auth.verify("dialer", &ctx.neighbours[neighbour].name, &me, nonce_d, nonce_a, mac)
            }
            _ => false,
        };
        if !ok {
            ctx.refused(Refusal::BadProof);
            return self.close(PeerClose::Refused, ctx, format_args!("bad_proof: failed proof of the herd secret"));
        }
        self.state = PeerState::Live { neighbour };
        self.identified = Some(neighbour);
        self.start_heartbeat(ctx);
        ctx.on_link_in(neighbour);
        let name = &ctx.neighbours[neighbour].name;
        ctx.log.event(format_args!("peer link from {name} ({}) up: receiving", self.addr));
    }

    fn on_welcome(&mut self, text: &[u8], ctx: &mut Ctx) {
        let (PeerState::AwaitWelcome { nonce }, Role::Dialer(neighbour)) = (&self.state, self.role) else { return };
        let nonce = nonce.clone();
        let name = ctx.neighbours[neighbour].name.clone();
        let me = String::from_utf8_lossy(&ctx.name).to_string();
        match auth::parse(text) {
            Handshake::Welcome { acceptor, nonce: nonce_a, mac, ext } if acceptor == name.as_bytes() => {
                let nonce_a = String::from_utf8_lossy(nonce_a).to_string();
                if !ctx.auth.verify("acceptor", &me, &name, &nonce, &nonce_a, mac) {
                    ctx.refused(Refusal::BadProof);
                    return self.close(
                        PeerClose::Refused,
                        ctx,
                        format_args!("bad_proof: {name} failed its proof of the herd secret"),
                    );
                }
                let proof = ctx.auth.mac("dialer", &me, &name, &nonce, &nonce_a);
                self.out.extend_from_slice(auth::proof(&proof).as_bytes());
                self.state = PeerState::Live { neighbour };
                self.start_heartbeat(ctx);
                // Anti-entropy: what the neighbour may lack goes out first, in batches; floods follow. With
                // an offset under our replication id, that is what we stored after it (a delta); else all.
                self.v2 = ext.get("v") == Some(b"2");
                let off = ext.number("off").filter(|&off| {
                    off > 0 && ext.get("rid") == Some(ctx.rid.as_bytes()) && off <= ctx.records().max_seq()
                });
                self.sync_after = off.unwrap_or(0);
                if off.is_some() {
                    ctx.counters.delta_syncs += 1;
                } else {
                    ctx.counters.full_syncs += 1;
                }
                // What a full neighbour would refuse at once stays here.
                self.peer_least = ext.get("least").and_then(OrderPoint::parse);
                self.sync = Some(0);
                self.mark_dirty(ctx);
                ctx.on_link_out(neighbour, self.token);
                let held = ctx.records().len();
                let over = if self.io.is_tls() { " over TLS" } else { "" };
                let above = match (&self.peer_least, ext.get("least")) {
                    (Some(least), _) => format!(" above its least record {}", least.encode()),
                    (None, Some(bad)) => format!(" (its least= {:?} is not understood)", String::from_utf8_lossy(bad)),
                    (None, None) => String::new(),
                };
                match off {
                    Some(off) => ctx.log.event(format_args!(
                        "peer link to {name} ({}) up{over}: sending the records stored after offset {off} \
                         (delta){above}",
                        self.addr
                    )),
                    None => ctx.log.event(format_args!(
                        "peer link to {name} ({}) up{over}: sending {held} records{above}",
                        self.addr
                    )),
                }
                log::info!("linked to {name} ({}){over}", self.addr);
            }
            Handshake::Refused => {
                let why = String::from_utf8_lossy(text).to_string();
                self.close(PeerClose::Refused, ctx, format_args!("{why}"))
            }
            _ => self.close(PeerClose::Protocol, ctx, format_args!("expected WELCOME from {name}")),
        }
    }

    fn on_hello(&mut self, text: &[u8], ctx: &mut Ctx) {
        let me = String::from_utf8_lossy(&ctx.name).to_string();
        let Handshake::Hello { dialer: who, acceptor: to, nonce: nonce_d, ext } = auth::parse(text) else {
            return self.close(PeerClose::Protocol, ctx, format_args!("expected HELLO"));
        };
        let who = String::from_utf8_lossy(who).to_string();
        let neighbour = ctx.neighbours.iter().position(|n| n.name == who);
        let refuse = match neighbour {
            _ if to != me.as_bytes() => {
                Some((Refusal::WrongServer, format!("this is {me}, not {}", String::from_utf8_lossy(to))))
            }
            None => Some((Refusal::NotNeighbour, format!("{who} is not a neighbour of {me}"))),
            Some(_) if nonce_d.len() > 64 => Some((Refusal::BadHello, "nonce too long".into())),
            // With peer TLS, the certificate the handshake verified must name the server the HELLO claims
            // to be: Clark's certificate cannot speak for Bona.
            Some(_) if ctx.peer_tls.is_some() => match self.io.certificate_names(&who) {
                Ok(()) => None,
                Err(r) => Some((r, format!("the certificate does not name {who}"))),
            },
            Some(_) => None,
        };
        if let Some((refusal, reason)) = refuse {
            ctx.refused(refusal);
            // Written at once rather than through `out` and the end-of-turn flush: the link closes in
            // this turn, and the send buffer of a socket that has sent nothing has room for one line.
            // Best effort: a dialer that never reads it just sees the close. (With TLS, `PeerIo::write`
            // encrypts the line and pushes the record at once.)
            let _ = self.io.write(&mut self.stream, auth::refused(&reason).as_bytes());
            return self.close(PeerClose::Refused, ctx, format_args!("{}: {reason}", refusal.reason()));
        }
        let neighbour = neighbour.expect("checked");
        let nonce_d = String::from_utf8_lossy(nonce_d).to_string();
        let nonce_a = ctx.auth.nonce();
        let mac = ctx.auth.mac("acceptor", &who, &me, &nonce_d, &nonce_a);
        // The offset of the dialer's stream we hold all of, if it is under the replication id it has now.
        let rid = ext.get("rid").filter(|r| r.len() <= 64).map(|r| String::from_utf8_lossy(r).to_string());
        let ext = match &rid {
            Some(rid) => {
                let off = ctx.peer_offsets.get(&who).filter(|(held, _)| held == rid).map_or(0, |(_, off)| *off);
                format!("{} rid={rid} off={off}", handshake_ext(ctx))
            }
            None => handshake_ext(ctx),
        };
        self.dialer_rid = rid;
        self.out.extend_from_slice(auth::welcome(&me, &nonce_a, &mac, &ext).as_bytes());
        self.mark_dirty(ctx);
        self.state = PeerState::AwaitProof { neighbour, nonce_d, nonce_a };
    }

    /// Queues a record for this (sending, live) link. Past the bound the link is dropped rather than
    /// allowed to grow: the neighbour resyncs by anti-entropy when it relinks.
    pub fn send_record(&mut self, line: &[u8], ctx: &mut Ctx) {
        if !self.is_live() {
            return;
        }
        self.out.extend_from_slice(line);
        ctx.counters.records_forwarded += 1;
        if self.out.len() - self.sent > ctx.limits.peer_output_max {
            return self.close(
                PeerClose::OutputBound,
                ctx,
                format_args!("{} bytes unsent", self.out.len() - self.sent),
            );
        }
        self.mark_dirty(ctx);
    }

    fn mark_dirty(&mut self, ctx: &mut Ctx) {
        if !self.dirty {
            self.dirty = true;
            ctx.dirty_peers.push(self.token);
        }
    }

    /// Appends the next batch of the anti-entropy sync; false when there is nothing (more) to send.
    fn fill_sync_batch(&mut self, ctx: &mut Ctx) -> bool {
        let Some(mut cursor) = self.sync else { return false };
        // A slot cursor: a record keeps its slot while it lives, so the walk stays exact while records are
        // evicted (see record::store); a delta skips the records stored at or before `sync_after`. Records
        // the neighbour would refuse at once are passed over, at most SYNC_VISITS per batch, so a batch's
        // work stays bounded even when it sends nothing.
        let start = cursor;
        let (mut sent, mut skipped) = (0u64, 0u64);
        while self.out.len() < SYNC_BATCH && sent + skipped < SYNC_VISITS {
            let Some((next, record)) = ctx.records().next_since(cursor as u32, self.sync_after) else {
                cursor = ctx.records().slots() as usize;
                break;
            };
            cursor = next as usize;
            if self.peer_least.as_ref().is_some_and(|least| !least.is_below(&record)) {
                skipped += 1;
                continue;
            }
            record.write_line(&mut self.out);
            sent += 1;
        }
        let done = ctx.records().next_since(cursor as u32, self.sync_after).is_none();
        self.sync = if done { None } else { Some(cursor) };
        if done {
            self.synced = true;
            self.note_offset(ctx);
        }
        if cursor > start {
            ctx.counters.sync_batches += 1;
            ctx.counters.records_synced += sent;
            ctx.counters.records_sync_skipped += skipped;
            if let Some(n) = self.neighbour() {
                let name = &ctx.neighbours[n].name;
                ctx.log.event(format_args!(
                    "sync to {name}: slots {start}..{cursor}, {sent} records sent, {skipped} below its least{}",
                    if done { " (done)" } else { "" }
                ));
            }
        }
        cursor > start
    }
}

/// The `key=value` tokens of this server's HELLO and WELCOME: the peer protocol version and its retention
/// (`max=N` when bounded, `least=...` while full; see the module documentation).
fn handshake_ext(ctx: &Ctx) -> String {
    let mut ext = String::from("v=2");
    if let Some(max) = ctx.records().retention().max {
        ext.push_str(&format!(" max={max}"));
    }
    if let Some(least) = ctx.records().least_when_full() {
        ext.push_str(&format!(" least={}", least.encode()));
    }
    ext
}

/// The duties every connection has (see `conn/mod.rs`).
impl Connection for Peer {
    fn on_event(&mut self, ev: &mio::event::Event, ctx: &mut Ctx, scratch: &mut [u8]) {
        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
            self.readable = true;
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
            let Role::Dialer(n) = self.role else { unreachable!("only dialers connect") };
            let nonce = ctx.auth.nonce();
            let ext = format!("{} rid={}", handshake_ext(ctx), ctx.rid);
            let hello = auth::hello(&String::from_utf8_lossy(&ctx.name), &ctx.neighbours[n].name, &nonce, &ext);
            self.out.extend_from_slice(hello.as_bytes());
            self.mark_dirty(ctx);
            self.state = PeerState::AwaitWelcome { nonce };
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
                    self.take_input(&scratch[..n], ctx);
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
            if self.sync.is_some() && batches == SYNC_BATCHES_PER_TURN {
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
            Delivery::Record(line) => self.send_record(line, ctx),
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
