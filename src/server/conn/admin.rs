//! The admin listener: a small HTTP/1.1 endpoint served by the same loop, for operators and tests.
//!
//! * `GET /metrics`: the loop's counters and gauges in the Prometheus text format.
//! * `GET /records`: the record table as JSON, `[{"client_id": ..., "at": "AT ..."}, ...]`.
//!
//! One request per connection (`Connection: close`): read the head (at most 16 KiB), answer, close.
//! Like every other connection it is a state machine driven by readiness, and its reply is written
//! at the end of the turn.

use super::{Connection, Delivery};
use crate::server::ctx::{CloseReason, Ctx, Gauges, OutLink};
use mio::net::TcpStream;
use mio::Token;
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;

const MAX_REQUEST: usize = 16 * 1024;
/// An admin connection has this long to send its request and take the answer.
pub const ADMIN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

pub struct Admin {
    pub stream: TcpStream,
    pub addr: SocketAddr,
    pub token: Token,
    input: Vec<u8>,
    out: Vec<u8>,
    sent: usize,
    answered: bool,
    closed: bool,
    writable: bool,
    dirty: bool,
}

impl Admin {
    pub fn new(stream: TcpStream, addr: SocketAddr, token: Token) -> Admin {
        Admin {
            stream,
            addr,
            token,
            input: Vec::new(),
            out: Vec::new(),
            sent: 0,
            answered: false,
            closed: false,
            writable: true,
            dirty: false,
        }
    }

    fn respond(&mut self, status: u16, content_type: &str, body: &[u8], ctx: &mut Ctx) {
        let reason = match status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            _ => "Request Header Fields Too Large",
        };
        let _ = write!(
            self.out,
            "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        self.out.extend_from_slice(body);
        self.answered = true;
        self.input = Vec::new();
        self.mark_dirty(ctx);
    }

    fn mark_dirty(&mut self, ctx: &mut Ctx) {
        if !self.dirty {
            self.dirty = true;
            ctx.dirty.push(self.token);
        }
    }
}

/// The duties every connection has (see `conn/mod.rs`).
impl Connection for Admin {
    fn on_event(&mut self, ev: &mio::event::Event, ctx: &mut Ctx, scratch: &mut [u8]) {
        if ev.is_writable() {
            self.writable = true;
            if self.sent < self.out.len() {
                self.mark_dirty(ctx);
            }
        }
        if !(ev.is_readable() || ev.is_read_closed() || ev.is_error()) || self.answered {
            return;
        }
        let mut eof = false;
        loop {
            match self.stream.read(scratch) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    self.input.extend_from_slice(&scratch[..n]);
                    if self.input.len() > MAX_REQUEST {
                        return self.respond(431, "text/plain", b"request too large\n", ctx);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    self.closed = true;
                    return;
                }
            }
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&self.input) {
            // The client gave up before a whole request: nothing to answer.
            Ok(httparse::Status::Partial) => self.closed = eof,
            Err(_) => self.respond(400, "text/plain", b"bad request\n", ctx),
            Ok(httparse::Status::Complete(_)) => {
                let (method, path) = (request.method.unwrap_or(""), request.path.unwrap_or(""));
                let path = path.split('?').next().unwrap_or("");
                match (method, path) {
                    ("GET", "/metrics") => {
                        let body = metrics(ctx, ctx.gauges);
                        self.respond(200, "text/plain; version=0.0.4", body.as_bytes(), ctx)
                    }
                    ("GET", "/records") => {
                        let body = records(ctx);
                        self.respond(200, "application/json", &body, ctx)
                    }
                    ("GET", _) => self.respond(404, "text/plain", b"not found: try /metrics or /records\n", ctx),
                    _ => self.respond(405, "text/plain", b"method not allowed\n", ctx),
                }
            }
        }
    }

    /// Everything happens on events: reading the request, answering it into `out`.
    fn drive(&mut self, _ctx: &mut Ctx, _scratch: &mut [u8]) {}

    /// Its deadline passed (see `ADMIN_DEADLINE`): whatever it was doing, it ends now.
    fn on_timer(&mut self, _ctx: &mut Ctx, _scratch: &mut [u8]) {
        self.closed = true;
    }

    /// End of turn: write the answer; close once it is all out.
    fn flush(&mut self, _ctx: &mut Ctx, _scratch: &mut [u8]) {
        self.dirty = false;
        while self.sent < self.out.len() && self.writable {
            match self.stream.write(&self.out[self.sent..]) {
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => self.writable = false,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => self.closed = true,
            }
        }
        if self.answered && self.sent == self.out.len() {
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
            self.closed = true;
        }
    }

    fn deliver(&mut self, _what: Delivery<'_>, _ctx: &mut Ctx, _scratch: &mut [u8]) {}

    /// A request already read is still answered.
    fn shut_down(&mut self, _ctx: &mut Ctx, _scratch: &mut [u8]) {}

    fn is_closed(&self) -> bool {
        self.closed
    }

    fn on_closed(&mut self, ctx: &mut Ctx) {
        ctx.gauges.admins -= 1;
    }

    fn socket(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    fn state_name(&self) -> String {
        (if self.closed { "Closed" } else { "Open" }).to_string()
    }
}

/// The Prometheus text format: `# HELP`, `# TYPE`, then `name{labels} value` lines.
fn metrics(ctx: &Ctx, g: Gauges) -> String {
    let c = &ctx.counters;
    let server = String::from_utf8_lossy(&ctx.name).to_string();
    let mut out = String::with_capacity(4096);
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
        out.push_str(&format!("# HELP herd_{name} {help}\n# TYPE herd_{name} {kind}\n"));
        for (labels, value) in samples {
            let sep = if labels.is_empty() { "" } else { "," };
            out.push_str(&format!("herd_{name}{{server=\"{server}\"{sep}{labels}}} {value}\n"));
        }
    };
    let one = |v: u64| vec![(String::new(), v)];
    metric("loop_turns_total", "counter", "Loop turns.", &one(c.turns));
    metric("events_total", "counter", "Readiness events handled.", &one(c.events));
    metric("stale_events_total", "counter", "Events for connections already gone.", &one(c.stale_events));
    metric("accepts_total", "counter", "Client connections accepted.", &one(c.accepts));
    let closes: Vec<(String, u64)> =
        CloseReason::ALL.iter().zip(c.closes).map(|(r, n)| (format!("reason=\"{}\"", r.name()), n)).collect();
    metric("client_closes_total", "counter", "Client connections closed, by reason.", &closes);
    let commands = vec![
        ("kind=\"iamat\"".to_string(), c.iamat),
        ("kind=\"whatsat\"".to_string(), c.whatsat),
        ("kind=\"blank\"".to_string(), c.blank),
    ];
    metric("commands_total", "counter", "Commands received, by kind.", &commands);
    metric("invalid_total", "counter", "Commands answered with `?`.", &one(c.invalid));
    metric("replies_total", "counter", "Replies made.", &one(c.replies));
    metric("client_bytes_in_total", "counter", "Bytes read from clients.", &one(c.bytes_in));
    metric("client_bytes_out_total", "counter", "Bytes written to clients.", &one(c.bytes_out));
    metric("client_writes_total", "counter", "write(2) calls to clients.", &one(c.writes));
    metric("records", "gauge", "Records held.", &one(ctx.records().len() as u64));
    metric("records_stored_total", "counter", "Records stored (newer than the one held).", &one(c.records_stored));
    metric("records_received_total", "counter", "Records received from peers.", &one(c.records_received));
    metric("records_duplicate_total", "counter", "Records from peers not newer.", &one(c.records_duplicate));
    metric(
        "records_refused_total",
        "counter",
        "Records from peers refused for breaking a protocol rule (the link stays up).",
        &one(c.records_refused),
    );
    metric("records_forwarded_total", "counter", "Records queued to peer links.", &one(c.records_forwarded));
    metric("records_synced_total", "counter", "Records sent by anti-entropy.", &one(c.records_synced));
    metric("sync_batches_total", "counter", "Anti-entropy batches.", &one(c.sync_batches));
    metric("links_up_total", "counter", "Peer links that came up.", &one(c.links_up));
    metric("links_down_total", "counter", "Sending peer links that went down.", &one(c.links_down));
    let refused: Vec<(String, u64)> = crate::server::peer_tls::Refusal::ALL
        .iter()
        .map(|r| (format!("reason=\"{}\"", r.reason()), c.peers_refused_by[r.index()]))
        .collect();
    metric("peers_refused_total", "counter", "Peer connections refused, by reason.", &refused);
    let live: Vec<(String, u64)> = ctx
        .neighbours
        .iter()
        .map(|n| {
            let up = matches!(n.link, OutLink::Live(_)) && n.links_in > 0;
            (format!("neighbour=\"{}\"", n.name), u64::from(up))
        })
        .collect();
    metric("link_up", "gauge", "1 when both directions of the link to a neighbour are up.", &live);
    metric("clients", "gauge", "Open client connections.", &one(g.clients as u64));
    metric("peer_connections", "gauge", "Open peer connections.", &one(g.peers as u64));
    metric("connections", "gauge", "Connections in the loop's slab.", &one(g.connections as u64));
    metric(
        "log_lines_dropped_total",
        "counter",
        "Log lines dropped because the log disk fell behind.",
        &one(ctx.log.dropped_total()),
    );
    if let Some(p) = &ctx.places {
        let pc = &p.counters;
        metric("places_cache_hits_total", "counter", "WHATSATs answered from the cache.", &one(pc.hits));
        metric("places_cache_misses_total", "counter", "Upstream requests made for a WHATSAT.", &one(pc.misses));
        metric("places_coalesced_total", "counter", "WHATSATs that joined a request in flight.", &one(pc.coalesced));
        metric("places_retries_total", "counter", "Requests retried on a fresh connection.", &one(pc.retries));
        let errors = vec![
            ("kind=\"timeout\"".to_string(), pc.errors_timeout),
            ("kind=\"connect\"".to_string(), pc.errors_connect),
            ("kind=\"tls\"".to_string(), pc.errors_tls),
            ("kind=\"http\"".to_string(), pc.errors_http),
            ("kind=\"closed\"".to_string(), pc.errors_closed),
            ("kind=\"resolve\"".to_string(), pc.errors_resolve),
        ];
        metric("places_errors_total", "counter", "Places failures, by kind.", &errors);
        metric("places_cached", "gauge", "Answers in the cache.", &one(p.cache_len() as u64));
        metric(
            "places_upstream_latency_microseconds_sum",
            "counter",
            "Upstream latency, sum.",
            &one(pc.latency_us_sum),
        );
        metric(
            "places_upstream_latency_microseconds_count",
            "counter",
            "Upstream answers timed.",
            &one(pc.latency_count),
        );
    }
    out
}

/// The record table as JSON (client ids and lines that are not UTF-8 are shown lossily).
fn records(ctx: &Ctx) -> Vec<u8> {
    let list: Vec<serde_json::Value> = ctx
        .records()
        .iter()
        .map(|r| {
            serde_json::json!({
                "client_id": String::from_utf8_lossy(r.client_id()),
                "at": String::from_utf8_lossy(r.line().strip_suffix(b"\n").unwrap_or(r.line())),
            })
        })
        .collect();
    serde_json::to_vec(&list).unwrap_or_default()
}
