//! The handshake, one line each way: the dialer's HELLO, the acceptor's WELCOME (or REFUSED), the
//! dialer's PROOF. `server/auth.rs` reads and writes those lines and computes and checks the proofs; this
//! file decides what each means in the link's state, and what the version 2 extensions (replication id,
//! offset, retention) set up for the sync that follows.

use super::{Peer, PeerClose, PeerState, Role};
use crate::record::OrderPoint;
use crate::server::auth::{self, Handshake};
use crate::server::ctx::Ctx;
use crate::server::peer_tls::Refusal;

impl Peer {
    /// Dialer, connected: sends HELLO, with this server's replication id and retention, and awaits WELCOME.
    pub(super) fn hello(&mut self, ctx: &mut Ctx) {
        let Role::Dialer(n) = self.role else { unreachable!("only dialers connect") };
        let nonce = ctx.auth.nonce();
        let ext = format!("{} rid={}", handshake_ext(ctx), ctx.rid);
        let hello = auth::hello(&String::from_utf8_lossy(&ctx.name), &ctx.neighbours[n].name, &nonce, &ext);
        self.out.extend_from_slice(hello.as_bytes());
        self.mark_dirty(ctx);
        self.state = PeerState::AwaitWelcome { nonce };
    }

    pub(super) fn on_proof(&mut self, text: &[u8], ctx: &mut Ctx) {
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

    pub(super) fn on_welcome(&mut self, text: &[u8], ctx: &mut Ctx) {
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
                let version = ext.number("v").unwrap_or(1);
                self.v2 = version >= 2;
                self.v3 = version >= 3;
                self.v4 = version >= 4;
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

    pub(super) fn on_hello(&mut self, text: &[u8], ctx: &mut Ctx) {
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
}

/// The `key=value` tokens of this server's HELLO and WELCOME: the peer protocol version and its retention
/// (`max=N` when bounded, `least=...` while full; see the `peer` module documentation).
fn handshake_ext(ctx: &Ctx) -> String {
    let mut ext = String::from("v=4");
    if let Some(max) = ctx.records().retention().max {
        ext.push_str(&format!(" max={max}"));
    }
    if let Some(least) = ctx.records().least_when_full() {
        ext.push_str(&format!(" least={}", least.encode()));
    }
    ext
}
