//! The admin listener: a small HTTP/1.1 endpoint served by the same loop, for operators and tests.
//!
//! * `GET /metrics`: the loop's counters and gauges in the Prometheus text format.
//! * `GET /records`: the record table as JSON, `[{"client_id": ..., "at": "AT ..."}, ...]`, streamed.
//!
//! One request per connection (`Connection: close`): read the head (at most 16 KiB), check who asks
//! (`admin_auth.rs`: the Host header, then the bearer token when one is configured; 403 or 401
//! otherwise), answer, close. Like every other connection it is a state machine driven by readiness,
//! and its reply is written at the end of the turn.
//!
//! `/records` is never built whole: with 200,000 records that took the loop 170 ms per fetch, and every
//! fetch that was not read held a copy of the table. It goes out in chunks (HTTP/1.1 chunked transfer
//! encoding) of about [`CHUNK`] bytes, at most one chunk per connection per loop turn and at most
//! [`RECORDS_BYTES_PER_TURN`] for all of them, and the next chunk is made only when the socket has taken
//! the last one, into a send buffer of [`ADMIN_SNDBUF`]. A reader that stops reading costs one chunk of
//! memory and no loop time, and one that takes nothing for [`ADMIN_DEADLINE`] is closed. The stream walks the table
//! by position while the table keeps changing: each client appears once, with its record as it was
//! when its chunk was made (records are replaced in place and never removed).

use super::{Connection, Delivery};
use crate::server::admin_auth::Refusal;
use crate::server::ctx::{CloseReason, Ctx, Gauges, OutLink};
use crate::server::journal;
use crate::server::timer::Timer;
use mio::net::TcpStream;
use mio::Token;
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const MAX_REQUEST: usize = 16 * 1024;
/// An admin connection has this long to send its request, and then between two writes that make
/// progress: a reader that takes nothing for this long is closed.
pub const ADMIN_DEADLINE: Duration = Duration::from_secs(5);
/// The body bytes of one `/records` chunk (about 150 records; the last record may pass it).
pub const CHUNK: usize = 16 * 1024;
/// `/records` bytes made per loop turn, for all admin connections together: however many fetch at once,
/// a turn spends a bounded time on them (a few chunks), and clients wait no longer for it.
pub const RECORDS_BYTES_PER_TURN: usize = 64 * 1024;
/// The kernel send buffer of an admin socket: a reader that stops reading is fed this much and one chunk,
/// not the megabytes loopback's autotuned buffers would take.
pub const ADMIN_SNDBUF: usize = 64 * 1024;

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
    /// `/records` is being streamed: the position of the next record.
    streaming: Option<usize>,
    /// When it is closed unless it makes progress (extended by every write the kernel takes).
    deadline: Instant,
}

impl Admin {
    pub fn new(stream: TcpStream, addr: SocketAddr, token: Token, now: Instant) -> Admin {
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
            streaming: None,
            deadline: now + ADMIN_DEADLINE,
        }
    }

    fn respond(&mut self, status: u16, content_type: &str, body: &[u8], ctx: &mut Ctx) {
        let reason = match status {
            200 => "OK",
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            405 => "Method Not Allowed",
            _ => "Request Header Fields Too Large",
        };
        // A 401 says which scheme it wants (RFC 6750).
        let challenge = if status == 401 { "WWW-Authenticate: Bearer realm=\"herd admin\"\r\n" } else { "" };
        let _ = write!(
            self.out,
            "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{challenge}\
             Connection: close\r\n\r\n",
            body.len()
        );
        self.out.extend_from_slice(body);
        self.answered = true;
        self.input = Vec::new();
        self.mark_dirty(ctx);
    }

    /// Starts streaming `/records`: the head now, the chunks as the socket takes them (`flush`).
    fn start_records(&mut self, ctx: &mut Ctx) {
        self.out.extend_from_slice(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\
              Connection: close\r\n\r\n",
        );
        self.streaming = Some(0);
        self.answered = true;
        self.input = Vec::new();
        self.mark_dirty(ctx);
    }

    /// Appends the next chunk of `/records` to `out`: records from the stream's position until about
    /// [`CHUNK`] bytes, and after the last record the closing `]` and the last chunk.
    fn next_chunk(&mut self, ctx: &mut Ctx) {
        let Some(mut at) = self.streaming else { return };
        let mut body = Vec::with_capacity(CHUNK + 512);
        if at == 0 {
            body.push(b'[');
        }
        // A slot cursor (record::store): a record keeps its slot while it lives, so the stream stays exact
        // while records are evicted between chunks. The first chunk always holds the first record.
        let mut first = at == 0;
        while body.len() < CHUNK {
            let Some((next, r)) = ctx.records().next_from(at as u32) else { break };
            if !first {
                body.push(b',');
            }
            first = false;
            body.extend_from_slice(b"{\"client_id\":");
            let _ = serde_json::to_writer(&mut body, &String::from_utf8_lossy(r.client_id()));
            body.extend_from_slice(b",\"at\":");
            let line = format!("AT {}", String::from_utf8_lossy(r.body()));
            let _ = serde_json::to_writer(&mut body, &line);
            body.push(b'}');
            at = next as usize;
        }
        let done = ctx.records().next_from(at as u32).is_none();
        if done {
            body.push(b']');
        }
        let _ = write!(self.out, "{:x}\r\n", body.len());
        self.out.extend_from_slice(&body);
        self.out.extend_from_slice(b"\r\n");
        if done {
            self.out.extend_from_slice(b"0\r\n\r\n");
        }
        self.streaming = if done { None } else { Some(at) };
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
            if self.sent < self.out.len() || self.streaming.is_some() {
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
                // Who asks comes first: a refused request learns nothing, not even which paths exist.
                if let Err(refusal) = ctx.admin_guard.check(request.headers) {
                    ctx.counters.admin_refused += 1;
                    let (status, body): (u16, &[u8]) = match refusal {
                        Refusal::Host => (403, b"forbidden: the Host header must name this host\n"),
                        Refusal::Token => (401, b"unauthorized: send Authorization: Bearer <token>\n"),
                    };
                    ctx.log.event(format_args!("admin request from {} refused: {status}", self.addr));
                    return self.respond(status, "text/plain", body, ctx);
                }
                let (method, path) = (request.method.unwrap_or(""), request.path.unwrap_or(""));
                let path = path.split('?').next().unwrap_or("");
                match (method, path) {
                    ("GET", "/metrics") => {
                        let body = metrics(ctx, ctx.gauges);
                        self.respond(200, "text/plain; version=0.0.4", body.as_bytes(), ctx)
                    }
                    ("GET", "/records") => self.start_records(ctx),
                    ("GET", _) => self.respond(404, "text/plain", b"not found: try /metrics or /records\n", ctx),
                    _ => self.respond(405, "text/plain", b"method not allowed\n", ctx),
                }
            }
        }
    }

    /// Driven again the turn after a chunk went out whole: the next chunk, if the socket still takes bytes.
    fn drive(&mut self, ctx: &mut Ctx, _scratch: &mut [u8]) {
        if self.streaming.is_some() && self.writable && self.sent == self.out.len() {
            self.mark_dirty(ctx);
        }
    }

    /// Its deadline passed (see `ADMIN_DEADLINE`): it ends now, unless it made progress meanwhile.
    fn on_timer(&mut self, ctx: &mut Ctx, _scratch: &mut [u8]) {
        if ctx.now >= self.deadline {
            self.closed = true;
        } else {
            ctx.timers.add(self.deadline, Timer::Conn(self.token));
        }
    }

    /// End of turn: write the answer, or the next chunk of `/records` once the last one is all out (one
    /// chunk per turn, so a fast reader of a large table shares the loop with everyone else); close once
    /// everything is out.
    fn flush(&mut self, ctx: &mut Ctx, _scratch: &mut [u8]) {
        self.dirty = false;
        if self.sent == self.out.len() && self.streaming.is_some() && self.writable && ctx.admin_budget > 0 {
            self.out.clear();
            self.sent = 0;
            let before = self.out.len();
            self.next_chunk(ctx);
            ctx.admin_budget = ctx.admin_budget.saturating_sub(self.out.len() - before);
        }
        while self.sent < self.out.len() && self.writable {
            match self.stream.write(&self.out[self.sent..]) {
                Ok(n) => {
                    self.sent += n;
                    self.deadline = ctx.now + ADMIN_DEADLINE;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => self.writable = false,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    self.closed = true;
                    return;
                }
            }
        }
        if self.sent == self.out.len() && self.streaming.is_some() && self.writable {
            // The chunk is out and the socket takes more: the next one next turn, after the others.
            ctx.again.push(self.token);
        }
        if self.answered && self.sent == self.out.len() && self.streaming.is_none() {
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
            self.closed = true;
        }
    }

    fn deliver(&mut self, _what: Delivery<'_>, _ctx: &mut Ctx, _scratch: &mut [u8]) {}

    /// A request already read is still answered (a `/records` stream runs on until the grace period).
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
        match (self.closed, self.streaming) {
            (true, _) => "Closed".to_string(),
            (false, Some(at)) => format!("Streaming({at})"),
            (false, None) => "Open".to_string(),
        }
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
    metric("admin_refused_total", "counter", "Admin requests answered 401 or 403.", &one(c.admin_refused));
    metric(
        "clients_refused_total",
        "counter",
        "Client connections closed at once, by reason.",
        &[("reason=\"per_ip\"".to_string(), c.refused_per_ip)],
    );
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
    let store = ctx.records().counters();
    metric("record_bytes", "gauge", "Bytes the record table has allocated.", &one(ctx.records().bytes() as u64));
    let evicted =
        vec![("reason=\"full\"".to_string(), store.evicted_full), ("reason=\"age\"".to_string(), store.evicted_age)];
    metric("records_evicted_total", "counter", "Records dropped by retention, by reason.", &evicted);
    let declined = vec![
        ("reason=\"too_old\"".to_string(), store.refused_old),
        ("reason=\"full\"".to_string(), store.refused_full),
        ("reason=\"below_evicted\"".to_string(), store.refused_below_evicted),
    ];
    metric("records_declined_total", "counter", "Updates answered but not kept by retention, by reason.", &declined);
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
    let flooded = &one(c.records_flooded);
    metric(
        "records_flooded_total",
        "counter",
        "Of the records forwarded, those sent in flood or repair mode.",
        flooded,
    );
    let reflooded = &one(c.records_reflooded);
    metric("records_reflooded_total", "counter", "Records repaired after a link broke unacknowledged.", reflooded);
    metric("records_synced_total", "counter", "Records sent by anti-entropy.", &one(c.records_synced));
    let notices = &one(c.notices_sent);
    metric(
        "notices_sent_total",
        "counter",
        "Repair notices sent instead of records to neighbours holding them.",
        notices,
    );
    metric("notices_received_total", "counter", "Repair notices received.", &one(c.notices_received));
    metric(
        "peer_bytes_in_total",
        "counter",
        "Bytes of the peer protocol read from peer links (inside TLS, when on).",
        &one(c.peer_bytes_in),
    );
    metric(
        "peer_bytes_out_total",
        "counter",
        "Bytes of the peer protocol written to peer links (inside TLS, when on).",
        &one(c.peer_bytes_out),
    );
    metric(
        "records_sync_skipped_total",
        "counter",
        "Records a catch-up passed over: the full neighbour would have refused them.",
        &one(c.records_sync_skipped),
    );
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
        "timer_entries",
        "gauge",
        "Deadlines in the loop's timer heap, stale ones included.",
        &one(ctx.timers.len() as u64),
    );
    metric(
        "log_lines_dropped_total",
        "counter",
        "Log lines dropped because the log disk fell behind.",
        &one(ctx.log.dropped_total()),
    );
    metric(
        "peer_delta_syncs_total",
        "counter",
        "Link-ups that sent only what changed since the neighbour's offset.",
        &one(c.delta_syncs),
    );
    metric("peer_full_syncs_total", "counter", "Link-ups that sent the whole table.", &one(c.full_syncs));
    metric("peer_acks_sent_total", "counter", "ACK lines sent to neighbours.", &one(c.acks_sent));
    let acked: Vec<(String, u64)> =
        ctx.neighbours.iter().map(|n| (format!("neighbour=\"{}\"", n.name), n.acked)).collect();
    metric("peer_acked_offset", "gauge", "The offset of this server's stream each neighbour acknowledged.", &acked);
    metric("journal_last_seq", "gauge", "The seq of the record stored last.", &one(ctx.records().max_seq()));
    if let Some(j) = &ctx.journal {
        let st = j.stats();
        metric("journal_bytes", "gauge", "Bytes in the journal's files.", &one(st.bytes));
        metric("journal_entries", "gauge", "Entries in the journal's files (or on their way).", &one(st.entries));
        metric("journal_durable_seq", "gauge", "Every record up to this seq is durable.", &one(st.durable));
        metric("journal_fsyncs_total", "counter", "fsyncs of the journal.", &one(st.fsyncs));
        out_histogram(&mut metric, &st);
        metric(
            "journal_replies_waiting",
            "gauge",
            "IAMAT replies held until their record is on disk.",
            &one(g.replies_waiting_fsync as u64),
        );
        metric("journal_write_errors_total", "counter", "Failed journal writes or fsyncs.", &one(st.write_errors));
        metric("journal_failing", "gauge", "1 while journal writes fail.", &one(u64::from(st.failing)));
        metric(
            "journal_not_durable_total",
            "counter",
            "IAMATs unanswered: their record could not be written.",
            &one(c.not_durable),
        );
        metric("journal_dropped_total", "counter", "Entries dropped: the disk was too far behind.", &one(st.dropped));
        metric("journal_rewrites_total", "counter", "Journal rewrites installed.", &one(st.rewrites));
        metric("journal_rewrite_failures_total", "counter", "Journal rewrites given up.", &one(st.rewrite_failures));
        metric("journal_replayed_entries", "gauge", "Entries replayed at start.", &one(ctx.replay.entries));
        metric(
            "journal_replay_microseconds",
            "gauge",
            "Time the start-up replay took.",
            &one((ctx.replay.seconds * 1e6) as u64),
        );
        metric(
            "journal_cut_bytes",
            "gauge",
            "Bytes cut from a torn or corrupt tail at start.",
            &one(ctx.replay.cut_bytes),
        );
    }
    if let Some(p) = &ctx.places {
        let pc = &p.counters;
        metric("places_cache_hits_total", "counter", "WHATSATs answered from the cache.", &one(pc.hits));
        metric("places_cache_misses_total", "counter", "Upstream requests made for a WHATSAT.", &one(pc.misses));
        metric("places_coalesced_total", "counter", "WHATSATs that joined a request in flight.", &one(pc.coalesced));
        metric("places_retries_total", "counter", "Requests retried on a fresh connection.", &one(pc.retries));
        metric("places_connections_total", "counter", "Connections opened to Places.", &one(pc.connections));
        let errors = vec![
            ("kind=\"timeout\"".to_string(), pc.errors_timeout),
            ("kind=\"connect\"".to_string(), pc.errors_connect),
            ("kind=\"tls\"".to_string(), pc.errors_tls),
            ("kind=\"http\"".to_string(), pc.errors_http),
            ("kind=\"closed\"".to_string(), pc.errors_closed),
            ("kind=\"resolve\"".to_string(), pc.errors_resolve),
        ];
        metric("places_errors_total", "counter", "Places failures, by kind.", &errors);
        let refused = vec![
            ("bound=\"client\"".to_string(), pc.refused_client),
            ("bound=\"bytes\"".to_string(), pc.refused_bytes),
        ];
        metric(
            "places_refused_total",
            "counter",
            "WHATSATs answered at once with the failure object, by the bound that was reached.",
            &refused,
        );
        metric("places_pending_bytes", "gauge", "Bytes held by pending Places work.", &one(p.pending_bytes() as u64));
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

/// The fsync latency histogram in Prometheus form: `_bucket{le=...}` (cumulative), `_sum`, `_count`, all
/// in one unit, microseconds (the samples here are integers, and a microsecond resolves an fsync).
fn out_histogram(metric: &mut impl FnMut(&str, &str, &str, &[(String, u64)]), st: &journal::Stats) {
    let mut buckets: Vec<(String, u64)> =
        journal::FSYNC_BUCKETS_US.iter().zip(&st.fsync_buckets).map(|(us, n)| (format!("le=\"{us}\""), *n)).collect();
    buckets.push(("le=\"+Inf\"".to_string(), st.fsyncs));
    metric("journal_fsync_microseconds_bucket", "histogram", "fsync latency of the journal.", &buckets);
    let sum = [(String::new(), (st.fsync_seconds * 1e6) as u64)];
    metric("journal_fsync_microseconds_sum", "counter", "fsync latency of the journal, sum.", &sum);
    metric("journal_fsync_microseconds_count", "counter", "fsyncs timed.", &[(String::new(), st.fsyncs)]);
}
