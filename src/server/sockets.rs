//! Where sockets come from: binding the listeners, accepting, and dialling neighbours and Places.
//!
//! Everything here is non-blocking and edge-triggered: a listener is accepted from until the kernel says
//! `WouldBlock`, and a dialled socket does no I/O before its first event (the connection's own state
//! machine checks `take_error` and `peer_addr` then). Every socket gets `TCP_NODELAY`, or small replies
//! would wait 40 ms for Nagle, and is registered once for its whole life (`Conns::add`).

use super::admission::EVICT_IDLE_AFTER;
use super::conn::admin::{Admin, ADMIN_DEADLINE, ADMIN_SNDBUF};
use super::conn::client::Client;
use super::conn::peer::{Peer, HANDSHAKE_DEADLINE};
use super::conn::upstream::Upstream;
use super::conn::{Conn, Conns};
use super::ctx::{Ctx, OutLink};
use super::error::ServerError;
use super::peer_tls::Refusal;
use super::places_client::{FailKind, Outcome};
use super::timer::Timer;
use super::token::{self, ADMIN_LISTENER, CLIENT_LISTENER, PEER_LISTENER};
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd};
use std::time::{Duration, Instant};

/// Admin connections open at once (it is an operator's tool, not a public service).
const MAX_ADMIN: usize = 16;
/// Peer-port connections allowed beyond two per neighbour (handshakes under way).
const MAX_HANDSHAKING: usize = 64;
/// How long to wait before accepting again after running out of descriptors.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// The accept queue asked of the kernel (it caps it at `net.core.somaxconn`, 4096 by default).
const LISTEN_BACKLOG: i32 = 4096;

/// The three listening sockets of a server, and the state of accepting from them.
pub struct Listeners {
    client: Option<TcpListener>,
    peer: Option<TcpListener>,
    admin: Option<TcpListener>,
    /// The client listener has connections we did not accept yet (at the client limit, or out of fds).
    pub accept_pending: bool,
    /// A `Timer::AcceptRetry` is armed (out of fds): one at a time, however often accept fails.
    pub retry_armed: bool,
    /// A `Timer::AdmitRetry` is armed (at `max_clients`, nobody idle long enough yet): one at a time.
    pub admit_armed: bool,
}

impl Listeners {
    /// Binds the client and peer ports, and the admin port if there is one: all or nothing. With
    /// `share_client_port` (`Config::share_client_port`) the client listener gets `SO_REUSEPORT`.
    pub fn bind(
        server: &str,
        client: SocketAddr,
        peer: SocketAddr,
        admin: Option<SocketAddr>,
        share_client_port: bool,
    ) -> Result<Listeners, ServerError> {
        let client = listen(server, client, "client port", share_client_port)?;
        let peer = listen(server, peer, "peer port", false)?;
        let admin = admin.map(|addr| listen(server, addr, "admin port", false)).transpose()?;
        Ok(Listeners {
            client: Some(client),
            peer: Some(peer),
            admin,
            accept_pending: false,
            retry_armed: false,
            admit_armed: false,
        })
    }

    /// Registers the listeners with the poll, for reading only.
    pub fn register(&mut self, registry: &Registry, server: &str) -> Result<(), ServerError> {
        let io = || ServerError::io(format!("{server}: cannot register"));
        let listeners = [(&mut self.client, CLIENT_LISTENER), (&mut self.peer, PEER_LISTENER)];
        for (listener, token) in listeners {
            if let Some(l) = listener {
                registry.register(l, token, Interest::READABLE).map_err(io())?;
            }
        }
        if let Some(l) = &mut self.admin {
            registry
                .register(l, ADMIN_LISTENER, Interest::READABLE)
                .map_err(ServerError::io(format!("{server}: cannot register the admin listener")))?;
        }
        Ok(())
    }

    /// The addresses the server listens on: (clients, peers).
    pub fn local_addrs(&self) -> (SocketAddr, SocketAddr) {
        let addr = |l: &Option<TcpListener>| l.as_ref().and_then(|l| l.local_addr().ok()).expect("bound");
        (addr(&self.client), addr(&self.peer))
    }

    /// Shut-down: stop listening (the sockets close; the kernel refuses what comes next).
    pub fn close(&mut self, registry: &Registry) {
        for mut listener in [self.client.take(), self.peer.take(), self.admin.take()].into_iter().flatten() {
            let _ = registry.deregister(&mut listener);
        }
    }

    /// Accepts until the kernel has no more, or file descriptors run out. At the client limit a new
    /// client is admitted by closing the client idle longest, if it has been idle more than
    /// [`EVICT_IDLE_AFTER`]; when none has, the rest wait in the backlog until one has (a timer) or a
    /// client closes. A client from an address at `limits.max_clients_per_ip` is closed at once.
    pub fn accept_clients(&mut self, conns: &mut Conns, ctx: &mut Ctx) {
        while self.accept_pending && !ctx.stopping {
            let mut victim = None;
            if ctx.gauges.clients >= ctx.limits.max_clients {
                match idlest_evictable(conns, ctx) {
                    Ok(token) => victim = Some(token),
                    Err(retry_at) => {
                        // Leave them in the backlog; a close, or the idlest growing idle enough, resumes.
                        ctx.counters.accept_paused += 1;
                        if !self.admit_armed {
                            self.admit_armed = true;
                            ctx.timers.add(retry_at, Timer::AdmitRetry);
                        }
                        return;
                    }
                }
            }
            let Some(listener) = &self.client else { return };
            match listener.accept() {
                Ok((stream, addr)) => {
                    if !ctx.per_address.admit(addr.ip()) {
                        // Refused before it costs anything; nobody is evicted for it.
                        ctx.counters.refused_per_ip += 1;
                        ctx.log.event(format_args!(
                            "client {addr} refused: {} connections from its address already",
                            ctx.limits.max_clients_per_ip
                        ));
                        drop(stream);
                        continue;
                    }
                    if let Some(token) = victim {
                        conns.with(token, ctx, &mut [], |conn, ctx, _| {
                            if let Conn::Client(c) = conn {
                                c.evict(ctx)
                            }
                        });
                    }
                    if !add_client(stream, addr, conns, ctx) {
                        ctx.per_address.release(addr.ip());
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => self.accept_pending = false,
                Err(e) if matches!(e.kind(), ErrorKind::Interrupted | ErrorKind::ConnectionAborted) => {}
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS: try again shortly instead of spinning on a ready listener.
                    ctx.counters.accept_paused += 1;
                    return self.failed("client", &e, ctx);
                }
            }
        }
    }

    /// Accepts peer connections: each starts as an acceptor, waiting for HELLO.
    pub fn accept_peers(&mut self, conns: &mut Conns, ctx: &mut Ctx) {
        loop {
            let Some(listener) = &self.peer else { return };
            match listener.accept() {
                Ok((stream, addr)) => {
                    // Two links per neighbour at most, plus room for handshakes: past that, whoever is
                    // dialing is not a well-behaved neighbour, and is turned away before costing anything.
                    if ctx.gauges.peers >= 2 * ctx.neighbours.len() + MAX_HANDSHAKING {
                        ctx.refused(Refusal::TooMany);
                        ctx.log.event(format_args!("peer connection from {addr} refused: too many peer connections"));
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    set_keepalive(&stream);
                    let now = ctx.now;
                    let io = match ctx.peer_io(None) {
                        Ok(io) => io,
                        Err(e) => {
                            ctx.log.event(format_args!("peer connection from {addr} dropped: {e}"));
                            continue;
                        }
                    };
                    let Ok(token) = conns.add(stream, |s, t| Conn::Peer(Peer::acceptor(s, addr, t, now, io))) else {
                        continue;
                    };
                    ctx.gauges.peers += 1;
                    ctx.timers.add(now + HANDSHAKE_DEADLINE, Timer::Conn(token));
                    ctx.log.event(format_args!("peer connection from {addr}"));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if matches!(e.kind(), ErrorKind::Interrupted | ErrorKind::ConnectionAborted) => {}
                Err(e) => return self.failed("peer", &e, ctx),
            }
        }
    }

    /// Accepts admin requests (at most `MAX_ADMIN` open; the rest are turned away at once).
    pub fn accept_admin(&mut self, conns: &mut Conns, ctx: &mut Ctx) {
        loop {
            let Some(listener) = &self.admin else { return };
            match listener.accept() {
                Ok((stream, addr)) => {
                    if ctx.gauges.admins >= MAX_ADMIN {
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    set_sndbuf(&stream, ADMIN_SNDBUF);
                    let Ok(token) = conns.add(stream, |s, t| Conn::Admin(Box::new(Admin::new(s, addr, t, ctx.now))))
                    else {
                        continue;
                    };
                    ctx.gauges.admins += 1;
                    ctx.timers.add(ctx.now + ADMIN_DEADLINE, Timer::Conn(token));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if matches!(e.kind(), ErrorKind::Interrupted | ErrorKind::ConnectionAborted) => {}
                Err(e) => return self.failed("admin", &e, ctx),
            }
        }
    }

    /// Out of descriptors (or kernel memory) on accept. The listener stays ready, and being
    /// edge-triggered it will not say so again, so the connections left in its backlog are picked up by
    /// one retry timer, 100 ms later, for all three listeners; never by spinning, and never by one
    /// timer per failure.
    fn failed(&mut self, listener: &str, e: &std::io::Error, ctx: &mut Ctx) {
        if self.retry_armed {
            return;
        }
        self.retry_armed = true;
        log::warn!("{listener} accept failed: {e}; retrying in {} ms", ACCEPT_RETRY.as_millis());
        ctx.log.event(format_args!("{listener} accept failed: {e}; retrying in {} ms", ACCEPT_RETRY.as_millis()));
        ctx.timers.add(ctx.now + ACCEPT_RETRY, Timer::AcceptRetry);
    }
}

/// How many of the idlest clients are looked at to find one that may be closed: a client owed a
/// reply is skipped, and a bound keeps the look constant-time however many clients are waiting.
const EVICT_SCAN: usize = 8;

/// The idlest client that may be closed to admit a new one: idle more than [`EVICT_IDLE_AFTER`] and
/// owed nothing. Otherwise `Err` with when to look again.
///
/// The list is in order of the times clients were last moved in it, and a client's true last activity
/// is at or after that time (it is moved at most every `BUMP_EVERY`). So an entry moved within the last
/// second ends the search (every later one is more recent still), and an older entry is checked against
/// the client's own time.
fn idlest_evictable(conns: &mut Conns, ctx: &Ctx) -> Result<Token, Instant> {
    let mut retry = ctx.now + EVICT_IDLE_AFTER;
    for (token, listed) in ctx.idle_clients.idlest(EVICT_SCAN) {
        if ctx.now.saturating_duration_since(listed) <= EVICT_IDLE_AFTER {
            return Err(retry.min(listed + EVICT_IDLE_AFTER + Duration::from_millis(1)));
        }
        let Some(Conn::Client(c)) = conns.get_mut(token) else { continue };
        if !c.evictable() {
            continue;
        }
        let last = c.last_read();
        if ctx.now.saturating_duration_since(last) > EVICT_IDLE_AFTER {
            return Ok(token);
        }
        retry = retry.min(last + EVICT_IDLE_AFTER + Duration::from_millis(1));
    }
    Err(retry)
}

/// Adds an accepted client; false if it could not be registered (the caller gives back its address's
/// count).
fn add_client(stream: TcpStream, addr: SocketAddr, conns: &mut Conns, ctx: &mut Ctx) -> bool {
    // Small replies must not wait 40 ms for Nagle.
    let _ = stream.set_nodelay(true);
    let idle_at = ctx.now + ctx.idle_timeout;
    let token = match conns.add(stream, |s, t| Conn::Client(Client::new(s, addr, t, ctx.now, idle_at))) {
        Ok(token) => token,
        Err(e) => {
            log::warn!("cannot register client {addr}: {e}");
            return false;
        }
    };
    ctx.idle_clients.touch(token::split(token).0, token, ctx.now);
    ctx.gauges.clients += 1;
    ctx.counters.accepts += 1;
    ctx.timers.add(idle_at, Timer::Conn(token));
    ctx.log.event(format_args!("client {addr} connected"));
    true
}

/// Starts a non-blocking connect to neighbour `n`. Nothing is read or written until its first event.
pub fn dial_peer(n: usize, conns: &mut Conns, ctx: &mut Ctx) {
    if ctx.stopping {
        return;
    }
    let addr = ctx.neighbours[n].addr;
    let stream = match TcpStream::connect(addr) {
        Ok(s) => s,
        Err(e) => {
            ctx.log.event(format_args!("dial {} ({addr}) failed: {e}", ctx.neighbours[n].name));
            return ctx.schedule_redial(n);
        }
    };
    let _ = stream.set_nodelay(true);
    set_keepalive(&stream);
    let now = ctx.now;
    let io = match ctx.peer_io(Some(n)) {
        Ok(io) => io,
        Err(e) => {
            ctx.log.event(format_args!("dial {} ({addr}) failed: {e}", ctx.neighbours[n].name));
            return ctx.schedule_redial(n);
        }
    };
    let Ok(token) = conns.add(stream, |s, t| Conn::Peer(Peer::dialer(s, addr, t, n, now, io))) else {
        return ctx.schedule_redial(n);
    };
    ctx.gauges.peers += 1;
    ctx.neighbours[n].link = OutLink::Dialing(token);
    ctx.timers.add(now + HANDSHAKE_DEADLINE, Timer::Conn(token));
}

/// Opens a connection to Places (non-blocking; TLS starts once it is connected). A connect that fails
/// at once fails the request at the head of the queue rather than spin on it.
pub fn dial_places(addr: SocketAddr, conns: &mut Conns, ctx: &mut Ctx) -> Option<Token> {
    let places = ctx.places.as_ref()?;
    let tls = match rustls::ClientConnection::new(places.tls.clone(), places.server_name.clone()) {
        Ok(t) => t,
        Err(e) => {
            log::warn!("cannot start TLS: {e}");
            return None;
        }
    };
    let stream = match TcpStream::connect(addr) {
        Ok(s) => s,
        Err(e) => {
            ctx.log.event(format_args!("places connect to {addr} failed: {e}"));
            let id = ctx.places.as_mut()?.queue.pop_front()?;
            let message = format!("connect failed: {e}");
            ctx.places_outcome(id, Outcome::Failed { kind: FailKind::Connect, message, retry: false });
            return None;
        }
    };
    let _ = stream.set_nodelay(true);
    let now = ctx.now;
    let token = conns.add(stream, |s, t| Conn::Upstream(Box::new(Upstream::new(s, t, tls, now)))).ok()?;
    let places = ctx.places.as_mut()?;
    places.conns += 1;
    places.counters.connections += 1;
    Some(token)
}

/// Binds a listener, with an error that names the server, the address and its role; with `share`, the
/// socket gets `SO_REUSEPORT` before it binds (`Config::share_client_port`).
fn listen(server: &str, addr: SocketAddr, what: &'static str, share: bool) -> Result<TcpListener, ServerError> {
    let bound = if share { bind_shared(addr) } else { TcpListener::bind(addr) };
    let listener = bound.map_err(|source| ServerError::Listen { server: server.to_string(), what, addr, source })?;
    // mio (like std) listens with a backlog of 128. A burst of connects larger than that while the loop
    // is busy, or descheduled for a few milliseconds, overflows the queue, and each dropped SYN costs
    // its client a one-second retransmit: opening 10,000 connections took 40 s instead of under one.
    // Calling listen(2) again on a listening socket only changes its backlog.
    // SAFETY: listen(2) on a socket we own.
    if unsafe { libc::listen(listener.as_raw_fd(), LISTEN_BACKLOG) } != 0 {
        let source = std::io::Error::last_os_error();
        return Err(ServerError::Backlog { server: server.to_string(), what, addr, source });
    }
    Ok(listener)
}

/// A non-blocking listening socket with `SO_REUSEADDR` (as mio sets) and `SO_REUSEPORT`: mio's
/// `TcpListener::bind` offers no way to set an option between socket(2) and bind(2), so this does the
/// three calls itself. `listen` then raises the backlog as for any listener.
fn bind_shared(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let (family, storage, len) = sockaddr(addr);
    // SAFETY: plain socket calls on a descriptor this function owns until it is wrapped below or closed;
    // `storage` is a sockaddr_storage holding a sockaddr_in or sockaddr_in6 of length `len`.
    unsafe {
        let fd = libc::socket(family, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let one: libc::c_int = 1;
        let opt = |name| {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                name,
                &one as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        let ok = opt(libc::SO_REUSEADDR) == 0
            && opt(libc::SO_REUSEPORT) == 0
            && libc::bind(fd, &storage as *const libc::sockaddr_storage as *const libc::sockaddr, len) == 0
            && libc::listen(fd, LISTEN_BACKLOG) == 0;
        if !ok {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            return Err(e);
        }
        Ok(TcpListener::from_std(std::net::TcpListener::from_raw_fd(fd)))
    }
}

/// `addr` as the C structure bind(2) takes: (address family, the structure, its length).
fn sockaddr(addr: SocketAddr) -> (libc::c_int, libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all zeroes is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from(*a.ip()).to_be() },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than, and aligned for, sockaddr_in.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin) };
            (libc::AF_INET, storage, std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t)
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than, and aligned for, sockaddr_in6.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
            (libc::AF_INET6, storage, std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t)
        }
    }
}

/// A fixed kernel send buffer (no autotuning): bounds what a reader that stops reading is sent.
fn set_sndbuf(stream: &TcpStream, bytes: usize) {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: setsockopt on a socket we own, with a c_int option value.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            &value as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// TCP keepalive and a user time-out on a peer socket: a neighbour that vanishes without a FIN (power
/// loss, a cable, a partition) is noticed after about 20 s of silence instead of never, so its link is
/// dropped, its count in `links_in` goes, and redialling starts.
pub fn set_keepalive(stream: &TcpStream) {
    let fd = stream.as_raw_fd();
    let set = |level: libc::c_int, name: libc::c_int, value: libc::c_int| {
        // SAFETY: setsockopt on a socket we own, with a c_int option value.
        unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                &value as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    };
    set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 10);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 3);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 3);
    // Keepalive probes only an idle connection. A sending link across a partition is never idle: its
    // records wait unacknowledged while TCP retransmits with doubling gaps, up to two minutes. The user
    // time-out drops a connection whose sent data has gone unacknowledged for 20 s, so the link is
    // redialled, and resynced, soon after the partition heals (tests/multihost.sh measures it).
    set(libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, 20_000);
}
