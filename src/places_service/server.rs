//! The local Places service's event loop: one thread, one `mio::Poll`, every socket in it. This file
//! is where the service waits for the kernel: the listener, the signals, the connections' readiness,
//! and the timers.
//!
//! Each connection is a [`Conn`] in a slab (the state machine is in [`super::conn`], what it answers in
//! [`super::respond`]). Timers (idle timeout, the `delay` and `trickle` faults, lingering, the wait
//! before a reset) are a min-heap of `(deadline, slab key, generation)`; the poll timeout is the time
//! to the first one. Closed connections are removed at the end of the loop turn, so a slab key is never
//! reused while a stale event for it can still be in the batch, and the generation keeps old timers
//! from firing on a new connection.

use super::api::Stats;
use super::conn::{interrupted, would_block, Conn};
use super::gazetteer::Gazetteer;
use super::respond::{Ctx, Settings};
use super::ServiceError;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use rustls::{ServerConfig, ServerConnection};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

const LISTENER: Token = Token(usize::MAX - 1);
const SIGNALS: Token = Token(usize::MAX - 2);

/// On SIGTERM/SIGINT, how long responses already under way may take.
const DRAIN: Duration = Duration::from_millis(1500);
/// Retry delay after `accept` fails for lack of descriptors or memory.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

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
) -> Result<(), ServiceError> {
    let failed = |doing: &'static str| move |source| ServiceError::Loop { doing, source };
    listener.set_nonblocking(true).map_err(failed("listener"))?;
    let mut listener = TcpListener::from_std(listener);
    let poll = Poll::new().map_err(failed("poll"))?;
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE).map_err(failed("register listener"))?;
    poll.registry().register(&mut signals, SIGNALS, Interest::READABLE).map_err(failed("register signals"))?;
    let local = listener.local_addr().map_err(failed("listener"))?;
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
    };
    server.run()
}

impl Server {
    fn run(&mut self) -> Result<(), ServiceError> {
        let mut events = Events::with_capacity(256);
        loop {
            let timeout = self.timeout(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if interrupted(&e) {
                    continue;
                }
                return Err(ServiceError::Loop { doing: "poll", source: e });
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
            self.ctx.stats.connections,
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
            self.ctx.stats.connections += 1;
            log::debug!("{peer}: connected");
            entry.insert(Conn::new(sock, tls, peer, self.generation, now));
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
