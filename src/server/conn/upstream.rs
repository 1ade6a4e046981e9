//! The Places upstream connection state machine: TCP, then TLS (rustls), then HTTP/1.1 requests and
//! responses, kept alive between requests.
//!
//! ```text
//!   Connecting ──connected──▶ Active ──response complete, keep-alive──▶ Idle ──next request──▶ Active
//!       │                       │                                        │
//!       └──refused──┐           └──EOF, reset, TLS or HTTP error,        └──server closed it,
//!                   ▼              response without keep-alive              idle too long
//!                 Closed ◀──────────────────────────────────────────────────┘
//! ```
//!
//! rustls is driven only through `read_tls` / `process_new_packets` / `reader` / `writer` / `write_tls` /
//! `wants_write`, in the same edge-triggered style as every other socket: the socket is registered once
//! for READABLE | WRITABLE, `readable` and `writable` are cleared on `WouldBlock` (and on a spurious connect wake-up or the
//! server's EOF, after which nothing more will come), and a request is
//! written into rustls's plaintext buffer as soon as the connection exists (rustls holds it until the
//! handshake is done).

use super::{Connection, Delivery};
use crate::http::{Parsed, Response, ResponseParser};
use crate::server::ctx::Ctx;
use crate::server::places_client::{FailKind, Outcome};
use mio::net::TcpStream;
use mio::Token;
use rustls::ClientConnection;
use std::io::{ErrorKind, Read, Write};
use std::time::Instant;

/// Largest response head and body accepted from Places.
const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpState {
    Connecting,
    /// TLS handshake, request and response: rustls and the HTTP parser say where exactly.
    Active,
    /// In the pool, kept alive for the next request.
    Idle,
    Closed,
}

pub struct Upstream {
    pub stream: TcpStream,
    pub token: Token,
    tls: ClientConnection,
    pub state: UpState,
    parser: ResponseParser,
    /// The request in flight, if any.
    pub request: Option<u64>,
    /// Requests this connection completed.
    served: u32,
    /// Response bytes seen for the current request.
    got_bytes: bool,
    readable: bool,
    writable: bool,
    /// When an idle connection is closed.
    pub idle_until: Instant,
}

impl Upstream {
    pub fn new(stream: TcpStream, token: Token, tls: ClientConnection, now: Instant) -> Upstream {
        Upstream {
            stream,
            token,
            tls,
            state: UpState::Connecting,
            parser: ResponseParser::new(MAX_HEAD, MAX_BODY),
            request: None,
            served: 0,
            got_bytes: false,
            readable: false,
            writable: false,
            idle_until: now,
        }
    }

    /// Writes what rustls has to send; true if anything was written.
    fn write_tls(&mut self, ctx: &mut Ctx) -> bool {
        let mut any = false;
        while self.writable && self.tls.wants_write() {
            match self.tls.write_tls(&mut self.stream) {
                Ok(_) => any = true,
                Err(e) if e.kind() == ErrorKind::WouldBlock => self.writable = false,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    self.fail(FailKind::Closed, format!("write failed: {e}"), ctx);
                    return false;
                }
            }
        }
        any
    }

    /// Reads TLS records and the plaintext they carry; true if anything was read.
    fn read_tls(&mut self, ctx: &mut Ctx, scratch: &mut [u8]) -> bool {
        let mut any = false;
        while self.readable && !self.is_closed() {
            match self.tls.read_tls(&mut self.stream) {
                Ok(0) => {
                    self.readable = false;
                    self.end_of_stream(ctx);
                    return true;
                }
                Ok(_) => any = true,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.readable = false;
                    break;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.fail(FailKind::Closed, format!("read failed: {e}"), ctx);
                    return false;
                }
            }
            if let Err(e) = self.tls.process_new_packets() {
                // Send the alert rustls queued (e.g. bad certificate), then give up.
                let _ = self.tls.write_tls(&mut self.stream);
                self.fail(FailKind::Tls, format!("TLS error: {e}"), ctx);
                return false;
            }
            self.read_plaintext(ctx, scratch);
        }
        any
    }

    fn read_plaintext(&mut self, ctx: &mut Ctx, scratch: &mut [u8]) {
        loop {
            match self.tls.reader().read(scratch) {
                Ok(0) => return self.end_of_stream(ctx), // close_notify
                Ok(n) => {
                    if self.state == UpState::Idle || self.request.is_none() {
                        // Bytes nobody asked for: this connection cannot be trusted any more.
                        return self.close(ctx);
                    }
                    self.got_bytes = true;
                    match self.parser.feed(&scratch[..n]) {
                        Ok(Parsed::Incomplete) => {}
                        Ok(Parsed::Complete(response)) => return self.complete(response, ctx),
                        Err(e) => return self.fail(FailKind::Http, format!("bad HTTP response: {e}"), ctx),
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => return self.end_of_stream(ctx),
                Err(e) => return self.fail(FailKind::Tls, format!("TLS read failed: {e}"), ctx),
            }
        }
    }

    /// The server closed (close_notify or TCP EOF): completes a close-delimited response, or fails.
    fn end_of_stream(&mut self, ctx: &mut Ctx) {
        if self.request.is_none() {
            return self.close(ctx);
        }
        if !self.got_bytes {
            return self.fail(FailKind::Closed, "Places closed the connection before answering".into(), ctx);
        }
        match self.parser.finish() {
            Ok(response) => {
                let mut response = response;
                response.keep_alive = false;
                self.complete(response, ctx)
            }
            Err(e) => self.fail(FailKind::Http, format!("Places closed the connection mid-response: {e}"), ctx),
        }
    }

    fn complete(&mut self, response: Response, ctx: &mut Ctx) {
        let Some(id) = self.request.take() else { return };
        self.served += 1;
        let keep = response.keep_alive;
        ctx.places_outcome(id, Outcome::Response(response));
        let kept = if keep && self.state != UpState::Closed { ctx.places_idle(self.token) } else { None };
        match kept {
            Some(until) => {
                self.state = UpState::Idle;
                self.idle_until = until;
            }
            None => self.close(ctx),
        }
    }

    fn fail(&mut self, kind: FailKind, message: String, ctx: &mut Ctx) {
        if let Some(id) = self.request.take() {
            let retry = self.served > 0 && !self.got_bytes && kind == FailKind::Closed;
            ctx.places_outcome(id, Outcome::Failed { kind, message, retry });
        }
        self.close(ctx);
    }

    fn close(&mut self, ctx: &mut Ctx) {
        if self.state == UpState::Closed {
            return;
        }
        if self.state != UpState::Connecting {
            self.tls.send_close_notify();
            let _ = self.tls.write_tls(&mut self.stream);
        }
        self.state = UpState::Closed;
        ctx.places_closed(self.token);
    }

    /// Starts request `id` (its complete HTTP/1.1 bytes) on this connection.
    fn start(&mut self, id: u64, request: &[u8], ctx: &mut Ctx, scratch: &mut [u8]) {
        debug_assert!(self.request.is_none());
        self.request = Some(id);
        self.got_bytes = false;
        self.parser.reset();
        if self.tls.writer().write_all(request).is_err() {
            return self.fail(FailKind::Tls, "cannot buffer the request".into(), ctx);
        }
        if self.state == UpState::Idle {
            self.state = UpState::Active;
        }
        self.drive(ctx, scratch);
    }

    /// The request's deadline passed: drop the connection (the request was already answered).
    fn abort(&mut self, ctx: &mut Ctx) {
        self.request = None;
        self.close(ctx);
    }
}

/// The duties every connection has (see `conn/mod.rs`).
impl Connection for Upstream {
    fn on_event(&mut self, ev: &mio::event::Event, ctx: &mut Ctx, scratch: &mut [u8]) {
        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
            self.readable = true;
        }
        if ev.is_writable() || ev.is_write_closed() || ev.is_error() {
            self.writable = true;
        }
        self.drive(ctx, scratch);
    }

    fn drive(&mut self, ctx: &mut Ctx, scratch: &mut [u8]) {
        if self.state == UpState::Connecting {
            if !self.readable && !self.writable {
                return;
            }
            match self.stream.take_error() {
                Ok(Some(e)) | Err(e) => return self.fail(FailKind::Connect, format!("connect failed: {e}"), ctx),
                Ok(None) => {}
            }
            match self.stream.peer_addr() {
                Ok(_) => self.state = UpState::Active,
                Err(e) if e.kind() == ErrorKind::NotConnected => {
                    self.readable = false;
                    self.writable = false;
                    return;
                }
                Err(e) => return self.fail(FailKind::Connect, format!("connect failed: {e}"), ctx),
            }
        }
        // Alternate writing and reading until neither can make progress: a TLS handshake needs both.
        loop {
            if self.is_closed() {
                return;
            }
            let wrote = self.write_tls(ctx);
            let read = self.read_tls(ctx, scratch);
            if !wrote && !read {
                return;
            }
        }
    }

    /// Timer check: an idle connection past its keep-alive time is closed. Each return to the pool arms
    /// its own entry at its own `idle_until`, so earlier entries find the time not yet come and do nothing.
    fn on_timer(&mut self, ctx: &mut Ctx, _scratch: &mut [u8]) {
        if self.state == UpState::Idle && ctx.now >= self.idle_until {
            self.close(ctx);
        }
    }

    /// Its writes happen as rustls produces bytes, in `drive`: nothing waits for the end of the turn.
    fn flush(&mut self, _ctx: &mut Ctx, _scratch: &mut [u8]) {}

    fn deliver(&mut self, what: Delivery<'_>, ctx: &mut Ctx, scratch: &mut [u8]) {
        match what {
            Delivery::Request { id, bytes } => self.start(id, bytes, ctx, scratch),
            Delivery::Abort => self.abort(ctx),
            Delivery::Record { .. }
            | Delivery::RecordArrived { .. }
            | Delivery::PlacesAnswer { .. }
            | Delivery::Durable
            | Delivery::Advanced => {}
        }
    }

    /// A request in flight still answers the clients waiting on it (or fails at its deadline).
    fn shut_down(&mut self, _ctx: &mut Ctx, _scratch: &mut [u8]) {}

    fn is_closed(&self) -> bool {
        self.state == UpState::Closed
    }

    /// The Places client counted it out when it closed (`close`).
    fn on_closed(&mut self, _ctx: &mut Ctx) {}

    fn socket(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    fn state_name(&self) -> String {
        format!("{:?}", self.state)
    }
}
