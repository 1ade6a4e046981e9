//! Asking Places from inside the loop: the response cache, coalescing, the keep-alive pool, deadlines,
//! and host resolution off the loop thread.
//!
//! A WHATSAT that misses the cache becomes a *request* keyed by the canonical decimals of latitude,
//! longitude and radius in metres ([`Key`]), so every spelling of one position and radius shares one
//! cache entry and one request. Every WHATSAT for the same key while it is in flight joins it as a
//! *waiter* (coalescing), so concurrent questions about one place cost one upstream request. A request runs on an idle pooled connection,
//! or a new one while fewer than `max_conns` are open, or waits in a FIFO queue. Its deadline is a
//! loop timer: when it fires, every waiter gets the failure object and the connection is dropped. A
//! request that fails because a reused connection turned out closed is retried once.
//!
//! What waits is bounded twice: per client connection (`limits.max_pending_places_per_client`, checked
//! by the caller with [`PlacesClient::admit`]) and for the whole server in bytes ([`PENDING_MAX_BYTES`]).
//! Past either bound a WHATSAT is answered at once with the failure object: a client cannot queue
//! upstream work faster than Places can do it, and distinct spellings of one position cannot multiply it.
//!
//! The host name is resolved on a helper thread (DNS blocks), which hands the address back through a
//! `mio::Waker`; an IP address in the URL needs no resolution at all. A complete response is shaped
//! into a [`PlacesAnswer`] on another helper thread, `herd-shaper`, which wakes the loop through the
//! same waker: parsing a 20-result body takes several hundred microseconds, which every other client
//! would otherwise wait.
//!
//! The parts: the requests, their waiters, the pool and the byte bound here; the answer cache and its
//! canonical [`Key`] in `cache.rs`; building the client and its two helper threads (resolver, shaper)
//! in `threads.rs`.

use crate::http::Response;
use crate::places::{self, Api, Endpoint, Failure, PlacesAnswer};
use mio::Token;
use rustls::pki_types::ServerName;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

mod cache;
mod queue;
mod threads;

pub use cache::Key;
pub use queue::Queue;

use cache::CacheEntry;
use threads::ShapeJob;

/// How long an idle keep-alive connection is kept, for the first `pool_size` of them.
pub const IDLE_KEEP: Duration = Duration::from_secs(30);
/// How long an idle connection past `pool_size` is kept (up to `max_conns`): long enough for the next
/// request of a steady burst to reuse it instead of paying a TCP and TLS handshake for a new one, short
/// enough that the pool shrinks back to `pool_size` a second after the burst. (Closing them at once, as
/// this pool first did, opened 3,417 connections for 9,960 cache misses at 20 concurrent WHATSATs:
/// `benches/compare`'s miss cell.)
pub const IDLE_LINGER: Duration = Duration::from_secs(1);

/// How a request on an upstream connection ended (the connection reports it; this client decides).
pub enum Outcome {
    Response(Response),
    /// The connection failed. `retry` is true when it failed before the first response byte on a
    /// connection that had served requests before: the server probably closed it while it was idle.
    Failed {
        kind: FailKind,
        message: String,
        retry: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailKind {
    Connect,
    Tls,
    Http,
    Closed,
}

impl FailKind {
    pub fn name(self) -> &'static str {
        match self {
            FailKind::Connect => "connect",
            FailKind::Tls => "tls",
            FailKind::Http => "http",
            FailKind::Closed => "closed",
        }
    }
}

/// The bytes pending Places work may hold at most: requests queued or in flight (their HTTP bytes, log
/// text, key and waiters) and response bodies waiting for the shaper thread. A request costs about 600
/// bytes, so 8 MiB is some 14,000 distinct requests: far more than the pool (`4 × pool_size` connections)
/// can finish within one deadline, so nothing that could still be answered in time is refused.
pub const PENDING_MAX_BYTES: usize = 8 * 1024 * 1024;

/// Every waiter of a finished request with the JSON bytes to answer it with.
pub type Replies = Vec<(Waiter, Vec<u8>)>;

/// A WHATSAT waiting for a request: which client, which of its reply slots, and the bound to cut to.
#[derive(Debug, Clone, Copy)]
pub struct Waiter {
    pub client: Token,
    pub ticket: u64,
    pub bound: u8,
}

pub struct Request {
    key: Key,
    bytes: Vec<u8>,
    waiters: Vec<Waiter>,
    started: Instant,
    pub conn: Option<Token>,
    retried: bool,
    /// Connects that failed for it (each moves on to the name's next address).
    connect_failures: usize,
    /// What the log shows of it (never the key).
    what: String,
    /// Set once its response arrived, to the time it took, while the shaper thread builds the answer:
    /// the request then has no connection and is not queued, and only `take_shaped` or its deadline
    /// ends it. New waiters for its key still join it.
    shaping: Option<Duration>,
    /// Bytes it counts for in `PlacesClient::pending_bytes`.
    cost: usize,
}

#[derive(Debug, Clone)]
pub enum Address {
    Resolving,
    Ready(SocketAddr),
    Failed(String),
}

/// Places counters.
#[derive(Debug, Default, Clone)]
pub struct PlacesCounters {
    pub hits: u64,
    pub misses: u64,
    pub coalesced: u64,
    pub requests: u64,
    pub retries: u64,
    /// Connections opened to Places (each a TCP and a TLS handshake).
    pub connections: u64,
    pub errors_timeout: u64,
    pub errors_connect: u64,
    pub errors_tls: u64,
    pub errors_http: u64,
    pub errors_closed: u64,
    pub errors_resolve: u64,
    /// WHATSATs answered at once because their connection had `max_pending_places_per_client` waiting.
    pub refused_client: u64,
    /// WHATSATs answered at once because pending work was at `PENDING_MAX_BYTES`.
    pub refused_bytes: u64,
    /// Upstream latency of answered requests, in microseconds: sum and count.
    pub latency_us_sum: u64,
    pub latency_count: u64,
}

pub struct PlacesClient {
    pub endpoint: Endpoint,
    api: Api,
    key: Option<String>,
    pub tls: Arc<rustls::ClientConfig>,
    pub server_name: ServerName<'static>,
    pub timeout: Duration,
    ttl: Duration,
    pool_size: usize,
    pub max_conns: usize,
    pub address: Address,
    resolver: Option<mpsc::Sender<(String, u16)>>,
    resolved: Option<mpsc::Receiver<Result<Vec<SocketAddr>, String>>>,
    /// Every address the name resolved to; a failed connect moves on to the next.
    addresses: Vec<SocketAddr>,
    /// A resolution is under way (at most one at a time, however many requests fail meanwhile).
    resolving: bool,
    /// Response bodies to the shaper thread, and the answers it built back.
    shaper: mpsc::Sender<ShapeJob>,
    shaped: mpsc::Receiver<(u64, PlacesAnswer)>,
    cache: HashMap<Key, CacheEntry>,
    cache_bytes: usize,
    /// Bytes of cached answers kept at most (`places.cache_max_bytes`; a 20-result answer with its
    /// parsed tree is about 200 KB).
    cache_max_bytes: usize,
    pub requests: HashMap<u64, Request>,
    by_key: HashMap<Key, u64>,
    /// Requests waiting for a connection (removal by id is O(1), for deadlines that fire in bursts).
    pub queue: Queue,
    pub idle: Vec<Token>,
    pub conns: usize,
    next_id: u64,
    /// Bytes held by pending work: the sum of the requests' `cost`.
    pending_bytes: usize,
    /// The failure objects for the two bounds, made once.
    refusal_client: Vec<u8>,
    refusal_bytes: Vec<u8>,
    pub counters: PlacesCounters,
}

impl std::fmt::Debug for PlacesClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is never printed.
        f.debug_struct("PlacesClient").field("endpoint", &self.endpoint).field("address", &self.address).finish()
    }
}

impl PlacesClient {
    /// Whether a WHATSAT that missed the cache may wait on Places: `Err` with the failure object to answer
    /// at once when its connection already has `max_per_client` WHATSATs waiting, or when pending work is
    /// at [`PENDING_MAX_BYTES`]. The caller counts its connection's waiting WHATSATs (it owns them).
    pub fn admit(&mut self, client_waiting: usize, max_per_client: usize) -> Result<(), &[u8]> {
        if client_waiting >= max_per_client {
            self.counters.refused_client += 1;
            return Err(&self.refusal_client);
        }
        if self.pending_bytes >= PENDING_MAX_BYTES {
            self.counters.refused_bytes += 1;
            return Err(&self.refusal_bytes);
        }
        Ok(())
    }

    /// Bytes held by pending Places work (bounded by about [`PENDING_MAX_BYTES`]).
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    /// Joins the request for `key` in flight, or makes a new one. Returns the new request's id (the
    /// caller schedules its deadline and starts it) or None when the waiter joined an existing one.
    pub fn join_or_create(
        &mut self,
        key: Key,
        location: &[u8],
        radius_km: &[u8],
        waiter: Waiter,
        now: Instant,
    ) -> Option<u64> {
        if let Some(id) = self.by_key.get(&key) {
            self.counters.coalesced += 1;
            let request = self.requests.get_mut(id).expect("indexed");
            request.waiters.push(waiter);
            request.cost += std::mem::size_of::<Waiter>();
            self.pending_bytes += std::mem::size_of::<Waiter>();
            return None;
        }
        self.counters.misses += 1;
        self.next_id += 1;
        let id = self.next_id;
        let text = |b: &[u8]| String::from_utf8_lossy(b).to_string();
        let mut bytes = Vec::with_capacity(512);
        // The request carries the canonical coordinates, so every spelling asks Places the same thing.
        places::build_request(&self.endpoint, key.lat(), key.lng(), &text(radius_km), self.key.as_deref(), &mut bytes);
        let what = format!("location={} radius={}m", text(location), key.metres());
        let cost = std::mem::size_of::<Request>()
            + bytes.capacity()
            + what.len()
            + 2 * key.size()
            + std::mem::size_of::<Waiter>();
        self.pending_bytes += cost;
        self.by_key.insert(key.clone(), id);
        self.requests.insert(
            id,
            Request {
                key,
                bytes,
                waiters: vec![waiter],
                started: now,
                conn: None,
                retried: false,
                connect_failures: 0,
                what,
                shaping: None,
                cost,
            },
        );
        self.queue.push_back(id);
        Some(id)
    }

    /// The bytes of request `id`, to start it on connection `conn`.
    pub fn assign(&mut self, id: u64, conn: Token) -> Option<&[u8]> {
        let r = self.requests.get_mut(&id)?;
        r.conn = Some(conn);
        self.counters.requests += 1;
        Some(&r.bytes)
    }

    /// Ends request `id` with an outcome; returns every waiter with the bytes to answer it with, and a
    /// line for the log. A stale reused connection instead puts the request back in the queue, once. A
    /// response returns None: its body goes to the shaper thread, and `take_shaped` ends the request.
    pub fn finish(&mut self, id: u64, outcome: Outcome, now: Instant) -> Option<(Replies, String)> {
        let request = self.requests.get_mut(&id)?;
        request.conn = None;
        if let Outcome::Failed { retry: true, .. } = &outcome {
            if !request.retried {
                request.retried = true;
                self.counters.retries += 1;
                self.queue.push_front(id);
                return None;
            }
        }
        if let Outcome::Failed { kind: FailKind::Connect, .. } = &outcome {
            request.connect_failures += 1;
            if request.connect_failures < self.addresses.len() {
                // The name has another address: rotate to it and try again (within the same deadline).
                if let Address::Ready(current) = self.address {
                    let i = self.addresses.iter().position(|a| *a == current).unwrap_or(0);
                    self.address = Address::Ready(self.addresses[(i + 1) % self.addresses.len()]);
                }
                self.counters.errors_connect += 1;
                self.queue.push_front(id);
                return None;
            }
        }
        let elapsed = now.saturating_duration_since(request.started);
        let mut detail = None;
        let answer = match outcome {
            Outcome::Response(response) => {
                // The upstream latency ends here, when the last byte arrived, not when the answer is
                // shaped.
                self.counters.latency_us_sum += elapsed.as_micros() as u64;
                self.counters.latency_count += 1;
                if !(200..300).contains(&response.status) {
                    self.counters.errors_http += 1;
                }
                // The body counts as pending work until its answer is back from the shaper.
                let body_bytes = response.body.capacity();
                let job = ShapeJob { id, api: self.api, status: response.status, body: response.body };
                match self.shaper.send(job) {
                    Ok(()) => {
                        request.shaping = Some(elapsed);
                        request.cost += body_bytes;
                        self.pending_bytes += body_bytes;
                        return None;
                    }
                    // The shaper is gone (it panicked): shape here rather than leave the waiters to the
                    // deadline.
                    Err(mpsc::SendError(job)) => PlacesAnswer::from_response(job.api, job.status, &job.body),
                }
            }
            Outcome::Failed { kind, message, .. } => {
                let failure = match kind {
                    FailKind::Connect => {
                        self.counters.errors_connect += 1;
                        Failure::Refused
                    }
                    FailKind::Tls => {
                        self.counters.errors_tls += 1;
                        Failure::Tls
                    }
                    FailKind::Http => {
                        self.counters.errors_http += 1;
                        Failure::BadHttp
                    }
                    FailKind::Closed => {
                        self.counters.errors_closed += 1;
                        Failure::Closed
                    }
                };
                if kind == FailKind::Connect {
                    // Try the name's next address next time, and ask the resolver again: it may have moved.
                    if let (Address::Ready(current), true) = (&self.address, self.addresses.len() > 1) {
                        let i = self.addresses.iter().position(|a| a == current).unwrap_or(0);
                        self.address = Address::Ready(self.addresses[(i + 1) % self.addresses.len()]);
                    }
                    self.resolve();
                }
                // The client reads only the fixed message; the OS's or rustls's words (which may name
                // an address) go to the log, for the operator.
                detail = Some(message);
                failure.answer()
            }
        };
        Some(self.complete(id, answer, detail.as_deref(), elapsed, now))
    }

    /// Takes the answers the shaper thread built (after the waker woke the loop) and ends their requests
    /// as `finish` ends a failed one. An answer for a request whose deadline passed meanwhile is dropped:
    /// its waiters already have the failure object.
    pub fn take_shaped(&mut self, now: Instant) -> Vec<(Replies, String)> {
        let mut done = Vec::new();
        while let Ok((id, answer)) = self.shaped.try_recv() {
            // Ids are never reused, so a request still under this id is the one that was shaped.
            let Some(elapsed) = self.requests.get(&id).and_then(|r| r.shaping) else { continue };
            done.push(self.complete(id, answer, None, elapsed, now));
        }
        done
    }

    /// Ends request `id` with `answer`: one body per waiter's bound, the cache, and the log line (with
    /// `detail`, what the connection said about a failure, which the client does not see).
    fn complete(
        &mut self,
        id: u64,
        mut answer: PlacesAnswer,
        detail: Option<&str>,
        elapsed: Duration,
        now: Instant,
    ) -> (Replies, String) {
        let request = self.requests.remove(&id).expect("present");
        self.by_key.remove(&request.key);
        self.pending_bytes -= request.cost;
        let log = format!(
            "places {}: {} ({} results{}{}) in {:.1} ms for {} waiters",
            request.what,
            answer.status(),
            answer.result_count(),
            answer.error_message().map(|m| format!(", {m}")).unwrap_or_default(),
            detail.map(|d| format!(": {d}")).unwrap_or_default(),
            elapsed.as_secs_f64() * 1000.0,
            request.waiters.len()
        );
        let replies = request.waiters.iter().map(|w| (*w, answer.body(usize::from(w.bound)).to_vec())).collect();
        self.store(request.key, answer, now);
        (replies, log)
    }

    /// The deadline of request `id` passed: answer its waiters with the failure object. That holds for a
    /// request whose answer is being shaped too; `take_shaped` then finds nothing under its id.
    pub fn expire(&mut self, id: u64, now: Instant) -> Option<(Replies, Option<Token>, String)> {
        let request = self.requests.remove(&id)?;
        self.by_key.remove(&request.key);
        self.pending_bytes -= request.cost;
        self.queue.remove(id);
        self.counters.errors_timeout += 1;
        let mut answer = Failure::Timeout(self.timeout.as_millis() as u64).answer();
        let log = format!(
            "places {}: timed out after {:.1} ms for {} waiters",
            request.what,
            now.saturating_duration_since(request.started).as_secs_f64() * 1000.0,
            request.waiters.len()
        );
        let replies = request.waiters.iter().map(|w| (*w, answer.body(usize::from(w.bound)).to_vec())).collect();
        Some((replies, request.conn, log))
    }

    /// Requests that cannot start because the address is unknown: fail them all.
    pub fn fail_unresolvable(&mut self, now: Instant) -> Vec<(Replies, String)> {
        let Address::Failed(why) = self.address.clone() else { return Vec::new() };
        let ids = self.queue.take_all();
        let mut out = Vec::new();
        for id in ids {
            let outcome = Outcome::Failed { kind: FailKind::Connect, message: why.clone(), retry: false };
            if let Some(done) = self.finish(id, outcome, now) {
                out.push(done);
            }
        }
        // Try again for the next request.
        self.address = Address::Resolving;
        self.resolve();
        out
    }

    /// A connection finished its request and may take another: the next queued one, or the pool. Returns
    /// how long it may wait idle there ([`IDLE_KEEP`] within `pool_size`, [`IDLE_LINGER`] past it), or
    /// `None` when `max_conns` are idle already: it closes.
    pub fn idle_conn(&mut self, token: Token) -> Option<Duration> {
        let keep = match self.idle.len() {
            n if n < self.pool_size => IDLE_KEEP,
            n if n < self.max_conns => IDLE_LINGER,
            _ => return None,
        };
        self.idle.push(token);
        Some(keep)
    }

    /// An upstream connection closed: counted out at once, so queued requests can start on a new one in
    /// the same turn.
    pub fn conn_closed(&mut self, token: Token) {
        self.idle.retain(|&t| t != token);
        self.conns = self.conns.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{PlacesApi, PlacesConfig};
    use crate::http::Response;

    /// The 20-result body `benches/places.rs` measures.
    const FIXTURE: &[u8] = include_bytes!("../../../tests/fixtures/nearby-legacy-20.json");
    const UCLA: &[u8] = b"+34.068930-118.445127";
    const WAKE: Token = Token(7);

    /// A client with an IP address (no resolver thread), and the poll its waker belongs to.
    fn client() -> (mio::Poll, PlacesClient) {
        let poll = mio::Poll::new().unwrap();
        let waker = Arc::new(mio::Waker::new(poll.registry(), WAKE).unwrap());
        let config = PlacesConfig {
            api: PlacesApi::Legacy,
            url: "https://127.0.0.1:9/maps/api/place/nearbysearch/json".into(),
            key_env: None,
            ca_file: None,
            timeout_ms: 1000,
            pool_size: 1,
            cache_ttl_s: 60,
            cache_max_bytes: 64 << 20,
        };
        (poll, PlacesClient::new(&config, waker).unwrap())
    }

    /// Idle connections: the first `pool_size` (1) are kept 30 s, the rest up to `max_conns` (4 × 1) for a
    /// second, and past that they close.
    #[test]
    fn idle_connections_are_kept_long_within_the_pool_and_briefly_past_it() {
        let (_poll, mut c) = client();
        let keeps: Vec<Option<Duration>> = (1..=5).map(|t| c.idle_conn(Token(t))).collect();
        let (long, brief) = (Some(Duration::from_secs(30)), Some(Duration::from_secs(1)));
        assert_eq!(keeps, [long, brief, brief, brief, None]);
        assert_eq!(c.idle, [Token(1), Token(2), Token(3), Token(4)]);
    }

    /// Sleeps in `poll` until the waker fires, as the loop does (a generous limit, not a latency bound).
    fn wait_for_wake(poll: &mut mio::Poll) {
        let mut events = mio::Events::with_capacity(4);
        poll.poll(&mut events, Some(Duration::from_secs(10))).unwrap();
        assert!(events.iter().any(|e| e.token() == WAKE), "the shaper wakes the loop");
    }

    /// A new request for (UCLA, `radius`) started on a connection, as `pump_places` starts one.
    fn started(c: &mut PlacesClient, radius: &[u8], bound: u8, now: Instant) -> (u64, Key) {
        let key = PlacesClient::key_for(UCLA, radius);
        let waiter = Waiter { client: Token(1), ticket: 1, bound };
        let id = c.join_or_create(key.clone(), UCLA, radius, waiter, now).expect("a new request");
        assert_eq!(c.queue.pop_front(), Some(id));
        c.assign(id, Token(2)).expect("present");
        (id, key)
    }

    fn json(body: &[u8]) -> serde_json::Value {
        serde_json::from_slice(body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)))
    }

    /// The fixture's JSON with `results` cut to its first `n` entries (the expected answer for bound n).
    fn first_results(n: usize) -> serde_json::Value {
        let mut v = json(FIXTURE);
        v["results"].as_array_mut().unwrap().truncate(n);
        v
    }

    fn response(body: &[u8]) -> Outcome {
        Outcome::Response(Response { status: 200, headers: Vec::new(), body: body.to_vec(), keep_alive: true })
    }

    #[test]
    fn a_response_is_shaped_on_the_shaper_thread_and_answers_as_if_shaped_inline() {
        let (mut poll, mut c) = client();
        let t0 = Instant::now();
        let (id, key) = started(&mut c, b"10", 5, t0);
        // The response arrives 40 ms after the request started: finish hands it over and answers nothing.
        assert!(c.finish(id, response(FIXTURE), t0 + Duration::from_millis(40)).is_none());
        assert!(c.requests[&id].shaping.is_some() && c.requests[&id].conn.is_none() && c.queue.is_empty());
        assert_eq!((c.counters.latency_count, c.counters.latency_us_sum), (1, 40_000));
        // A WHATSAT for the same place while it is shaped joins it.
        let late = Waiter { client: Token(3), ticket: 9, bound: 20 };
        assert_eq!(c.join_or_create(key.clone(), UCLA, b"10", late, t0), None);

        wait_for_wake(&mut poll);
        let done = c.take_shaped(t0 + Duration::from_millis(500));
        assert_eq!(done.len(), 1);
        let (replies, line) = &done[0];
        assert_eq!(replies.len(), 2);
        assert_eq!((replies[0].0.client, replies[1].0.client), (Token(1), Token(3)));
        // Expected bodies from the fixture itself, not from the shaping code: bound 20 cuts nothing, so
        // the body is Google's own bytes (no run of LFs in this fixture, trailing LFs removed); bound 5
        // is the same JSON with its results cut to the first five.
        let own = FIXTURE.strip_suffix(b"\n").unwrap_or(FIXTURE);
        assert!(!own.windows(2).any(|w| w == b"\n\n") && !own.ends_with(b"\n"));
        assert_eq!(replies[1].1.as_slice(), own);
        assert_eq!(json(&replies[0].1), first_results(5));
        assert!(!replies[0].1.windows(2).any(|w| w == b"\n\n"), "no empty line inside the JSON");
        // The time logged is the upstream's, not the shaping's.
        assert!(line.contains(": OK (20 results) in 40.0 ms for 2 waiters"), "{line}");
        assert!(c.requests.is_empty() && c.by_key.is_empty());
        // And it is cached like any answer.
        let cached = c.cached(&key, 3, t0 + Duration::from_secs(1)).expect("cached").to_vec();
        assert_eq!(json(&cached), first_results(3));
    }

    #[test]
    fn a_deadline_while_shaping_answers_the_failure_and_the_late_answer_is_dropped() {
        let (mut poll, mut c) = client();
        let t0 = Instant::now();
        let (id, _) = started(&mut c, b"10", 5, t0);
        assert!(c.finish(id, response(FIXTURE), t0).is_none());
        let (replies, conn, line) = c.expire(id, t0 + Duration::from_millis(1000)).expect("still present");
        assert_eq!(conn, None, "no connection to abort");
        assert!(String::from_utf8_lossy(&replies[0].1).contains("UNKNOWN_ERROR"));
        assert!(line.contains("timed out"), "{line}");
        wait_for_wake(&mut poll);
        assert!(c.take_shaped(t0 + Duration::from_millis(1001)).is_empty());
        assert_eq!((c.cache_len(), c.requests.len(), c.counters.errors_timeout), (0, 0, 1));
    }

    #[test]
    fn spellings_of_one_position_and_radius_share_a_key() {
        // Written by hand: groups of (location, radius km) that are one position and radius.
        let same: &[&[(&str, &str)]] = &[
            &[("+34.0-118.0", "10"), ("+34.00-118.00", "10"), ("+034-118", "10.0"), ("+34.000-0118.0", "010.000")],
            &[("-0+0", "1"), ("+0-0", "1"), ("-0.0-00.000", "1.000"), ("+00+000", "01")],
            &[("+34.068930-118.445127", "2.5"), ("+34.06893-118.4451270", "2.500"), ("+034.068930-118.445127", "2.50")],
        ];
        for group in same {
            let keys: Vec<Key> = group.iter().map(|(l, r)| PlacesClient::key_for(l.as_bytes(), r.as_bytes())).collect();
            assert!(keys.windows(2).all(|w| w[0] == w[1]), "{group:?}: {keys:?}");
        }
        let key = PlacesClient::key_for(b"+034.50-118.0", b"2.5");
        assert_eq!((key.lat(), key.lng(), key.metres()), ("+34.5", "-118", "2500"));
        // Different numbers stay different keys: nothing is rounded.
        let different = [
            ("+34-118", "10"),
            ("+34-118", "10.001"),
            ("+34.0000000001-118", "10"),
            ("-34-118", "10"),
            ("+34+118", "10"),
            ("+3.4-118", "10"),
        ];
        let keys: std::collections::HashSet<Key> =
            different.iter().map(|(l, r)| PlacesClient::key_for(l.as_bytes(), r.as_bytes())).collect();
        assert_eq!(keys.len(), different.len());
    }

    #[test]
    fn two_spellings_coalesce_and_the_second_is_served_from_the_cache() {
        let (mut poll, mut c) = client();
        let t0 = Instant::now();
        let (id, _) = started(&mut c, b"10", 5, t0);
        // The same place spelled otherwise, and another bound, joins the request in flight.
        let key = PlacesClient::key_for(b"+034.0689300-118.445127", b"10.0");
        let waiter = Waiter { client: Token(3), ticket: 2, bound: 1 };
        assert_eq!(c.join_or_create(key.clone(), b"+034.0689300-118.445127", b"10.0", waiter, t0), None);
        assert_eq!((c.counters.misses, c.counters.coalesced), (1, 1));
        assert!(c.finish(id, response(FIXTURE), t0).is_none());
        wait_for_wake(&mut poll);
        assert_eq!(c.take_shaped(t0)[0].0.len(), 2);
        assert!(c.cached(&key, 20, t0).is_some());
    }

    #[test]
    fn pending_work_is_bounded_per_client_and_in_bytes() {
        let (_poll, mut c) = client();
        let t0 = Instant::now();
        assert!(c.admit(7, 8).is_ok());
        let refused = c.admit(8, 8).expect_err("at the per-client bound");
        let value: serde_json::Value = serde_json::from_slice(refused).unwrap();
        assert_eq!(value["results"], serde_json::json!([]));
        assert_eq!(value["status"], "UNKNOWN_ERROR");
        assert_eq!(value["error_message"], Failure::ClientPending.message());
        assert_eq!(c.counters.refused_client, 1);

        // Distinct positions until the byte bound: then every WHATSAT is refused at once, whatever its
        // client's count, until work ends.
        let mut ids = Vec::new();
        let mut n = 0u32;
        while c.admit(0, 8).is_ok() {
            let location = format!("+{}.{:06}-118", n % 90, n);
            let key = PlacesClient::key_for(location.as_bytes(), b"10");
            let waiter = Waiter { client: Token(1), ticket: u64::from(n), bound: 1 };
            ids.push(c.join_or_create(key, location.as_bytes(), b"10", waiter, t0).expect("new"));
            n += 1;
            assert!(n < 1_000_000, "the byte bound never took effect");
        }
        assert!(c.pending_bytes() >= PENDING_MAX_BYTES && c.pending_bytes() < PENDING_MAX_BYTES + 4096);
        // About 600 bytes a request, as the bound's doc says (within a factor of two).
        let per_request = c.pending_bytes() / ids.len();
        assert!((300..1200).contains(&per_request), "{per_request} bytes a request");
        let refused = c.admit(0, 8).expect_err("at the byte bound");
        let value: serde_json::Value = serde_json::from_slice(refused).unwrap();
        assert_eq!(value["error_message"], Failure::ServerPending.message());
        assert_eq!(c.counters.refused_bytes, 2);
        // Expiring them gives every byte back, and empties the queue.
        assert_eq!(c.queue.len(), ids.len());
        for id in ids {
            c.expire(id, t0 + Duration::from_secs(1)).expect("pending");
        }
        assert_eq!(c.pending_bytes(), 0);
        assert!(c.queue.is_empty() && c.queue.front().is_none());
        assert!(c.admit(0, 8).is_ok());
    }

    #[test]
    fn an_expired_request_leaves_the_queue_and_the_rest_keep_their_order() {
        let (_poll, mut c) = client();
        let t0 = Instant::now();
        let ids: Vec<u64> = (0..5u8)
            .map(|i| {
                let location = format!("+3{i}-118");
                let key = PlacesClient::key_for(location.as_bytes(), b"10");
                let waiter = Waiter { client: Token(1), ticket: u64::from(i), bound: 1 };
                c.join_or_create(key, location.as_bytes(), b"10", waiter, t0).expect("new")
            })
            .collect();
        // The first, a middle one and the last expire while queued; an expiry twice answers nothing.
        for i in [0, 2, 4] {
            let (replies, conn, _) = c.expire(ids[i], t0 + Duration::from_secs(1)).expect("pending");
            assert_eq!((replies.len(), conn), (1, None));
        }
        assert!(c.expire(ids[2], t0 + Duration::from_secs(1)).is_none());
        // The two left start in the order they came, and nothing else is queued.
        assert_eq!(c.queue.front(), Some(&ids[1]));
        assert_eq!((c.queue.pop_front(), c.queue.pop_front(), c.queue.pop_front()), (Some(ids[1]), Some(ids[3]), None));
        assert!(c.queue.is_empty());
        assert_eq!(c.counters.errors_timeout, 3);
    }

    #[test]
    fn a_failed_connection_answers_a_fixed_message_and_logs_the_detail() {
        let cases = [
            (FailKind::Connect, "connect failed: Connection refused (os error 111) to 10.1.2.3:443", Failure::Refused),
            (FailKind::Tls, "TLS error: invalid peer certificate: UnknownIssuer", Failure::Tls),
            (FailKind::Http, "bad HTTP response: head too long", Failure::BadHttp),
            (FailKind::Closed, "read failed: Connection reset by peer (os error 104)", Failure::Closed),
        ];
        for (kind, detail, failure) in cases {
            let (_poll, mut c) = client();
            let t0 = Instant::now();
            let (id, _) = started(&mut c, b"10", 5, t0);
            let outcome = Outcome::Failed { kind, message: detail.into(), retry: false };
            let (replies, line) = c.finish(id, outcome, t0).expect("answered");
            let value: serde_json::Value = serde_json::from_slice(&replies[0].1).unwrap();
            assert_eq!(value["error_message"], failure.message(), "{kind:?}");
            assert_eq!(value["results"], serde_json::json!([]));
            assert!(line.contains(detail), "the log has the detail: {line}");
            assert_eq!(c.pending_bytes(), 0);
        }
    }
}
