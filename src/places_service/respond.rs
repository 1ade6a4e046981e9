//! From a parsed request to the bytes the connection will hand to rustls: which endpoint answers
//! ([`api::handle`]), which `--fault` applies to it, how the answer is framed, and where a `reset`
//! fault cuts it. This is the service's request routing; it knows nothing of sockets or TLS, and the
//! connection state machine in [`super::conn`] only carries its [`Outgoing`] to the peer.

use super::api::{self, Stats};
use super::gazetteer::Gazetteer;
use super::http1::{self, BadRequest, Framed, Request};
use super::Faults;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How the service answers, fixed at start-up.
pub(crate) struct Settings {
    pub faults: Faults,
    pub chunked: bool,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

/// What a connection needs from the loop while it is driven.
pub(super) struct Ctx {
    pub(super) gazetteer: Gazetteer,
    pub(super) stats: Stats,
    pub(super) settings: Settings,
    /// SIGTERM or SIGINT came: answer what is under way with `Connection: close`, start nothing new.
    pub(super) draining: bool,
}

/// A response on its way into rustls: pieces (the whole response, or head / chunks / last chunk),
/// how far it got, and where it stops (before the end under the `reset` fault).
pub(super) struct Outgoing {
    pieces: Vec<Vec<u8>>,
    piece: usize,
    offset: usize,
    sent: usize,
    stop_at: usize,
    /// Reset the connection once the cut response is sent (the `reset` fault).
    pub(super) reset: bool,
    /// Hand over one byte per this interval (the `trickle` fault).
    pub(super) trickle: Option<Duration>,
    /// Close the connection after this response.
    pub(super) close: bool,
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

    pub(super) fn done(&self) -> bool {
        self.sent >= self.stop_at
    }

    /// The next bytes to hand over, at most `max`.
    pub(super) fn next_slice(&self, max: usize) -> &[u8] {
        if self.done() {
            return &[];
        }
        let rest = &self.pieces[self.piece][self.offset..];
        &rest[..rest.len().min(self.stop_at - self.sent).min(max)]
    }

    pub(super) fn advance(&mut self, n: usize) {
        self.offset += n;
        self.sent += n;
        if self.offset == self.pieces[self.piece].len() {
            self.piece += 1;
            self.offset = 0;
        }
    }
}

/// The answer to `req` from `peer`, and until when it is held back (the `delay` fault). `peer_done`:
/// the peer has ended its side, so the connection closes after this answer.
pub(super) fn answer(
    req: &Request,
    peer: SocketAddr,
    peer_done: bool,
    now: Instant,
    ctx: &mut Ctx,
) -> (Outgoing, Option<Instant>) {
    let started = Instant::now();
    let reply = api::handle(&ctx.gazetteer, &mut ctx.stats, req);
    let no_faults = Faults::default();
    let faults = if reply.endpoint.is_places() { &ctx.settings.faults } else { &no_faults };
    let (status, body) = if faults.http500 {
        (500, api::http500_body())
    } else if faults.badjson {
        (200, api::BAD_JSON_BODY.to_vec())
    } else {
        (reply.status, reply.body)
    };
    let close = !req.keep_alive() || peer_done || ctx.draining;
    let framed = http1::frame(status, &body, ctx.settings.chunked, close);
    let head_len = framed.head_len;
    let mut out = Outgoing::new(framed, close);
    if faults.reset {
        out.cut_for_reset(head_len);
    }
    out.trickle = faults.trickle;
    log::info!(
        "{} {} {} -> {} {} ({} bytes{}{}, {} us)",
        peer,
        req.method,
        api::redact_target(&req.target),
        status,
        reply.note,
        body.len(),
        if ctx.settings.chunked { ", chunked" } else { "" },
        if faults.is_empty() { String::new() } else { format!(", faults {faults}") },
        started.elapsed().as_micros()
    );
    (out, faults.delay.map(|delay| now + delay))
}

/// The answer to a request that could not be parsed, in Google's error shape; the connection closes
/// after it.
pub(super) fn bad_request(bad: &BadRequest, peer: SocketAddr) -> Outgoing {
    log::info!("{}: bad request: {} {}", peer, bad.status, bad.message);
    let word = if bad.status == 501 { "UNIMPLEMENTED" } else { "INVALID_ARGUMENT" };
    let body = crate::gjson::to_vec(&serde_json::json!({
        "error": { "code": bad.status, "message": bad.message, "status": word }
    }));
    Outgoing::new(http1::frame(bad.status, &body, false, true), true)
}
