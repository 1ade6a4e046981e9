//! Everything that waits for the kernel: one readiness loop per server process, in layers that only
//! point down (ARCHITECTURE.md draws them).
//!
//! - `event_loop`: the top, and only the loop: `Poll`, dispatch, timers, the end-of-turn flush, signals,
//!   shut-down.
//! - `handoff`: after each handler, delivers what it left for other connections.
//! - `sockets`: listening, accepting, dialling.
//! - `conn`: the four connection kinds (`client`, `peer`, `upstream`, `admin`) behind one `Connection`
//!   trait, and the slab with generation-checked tokens that holds them.
//! - `herd`: the herd's rules over `Ctx` (store and flood, WHATSAT decisions, waits, links, Places
//!   outcomes), testable without sockets.
//! - `peer_tls` (a leaf): mutual TLS for peer links: rustls configurations, name binding, refusal
//!   reasons, and `PeerIo`, the byte layer under the peer line protocol.
//! - `places_client`: the Places cache, coalescing, pool, deadlines and off-loop resolution.
//! - `ctx`: what every connection may touch: clock, records, counters, dirty lists, outbox.
//! - leaves: `timer` (deadlines), `log` (the buffered log file), `auth` (peer authentication and the
//!   handshake lines), `token` (token encoding, names for the trace), `error` (`ServerError`),
//!   `admin_auth` (the admin listener's Host check and bearer token), `admission` (the per-address cap
//!   and the clients in order of idleness), `heartbeat` (when a peer link pings, when it is dead),
//!   `journal` (the append-only journal of stored records: fsync on its own thread, replay, rewrite).

pub mod admin_auth;
pub mod admission;
pub mod auth;
pub mod conn;
pub mod ctx;
pub mod error;
pub mod event_loop;
pub mod handoff;
pub mod heartbeat;
pub mod herd;
pub mod journal;
pub mod log;
pub mod peer_tls;
pub mod places_client;
pub mod sockets;
pub mod timer;
pub mod token;

pub use error::ServerError;
pub use event_loop::Server;

use crate::config::Config;

/// `herd serve NAME`: binds, prints one line to stdout once listening, and runs until SIGTERM or SIGINT.
/// Returns a one-line error for the exit status 2 cases (unknown name, port in use, bad log directory).
pub fn serve(config: &Config, name: &str) -> Result<(), ServerError> {
    raise_fd_limit();
    let mut server = Server::bind(config, name)?;
    let (client, peer) = server.local_addrs();
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        // The readiness line `herd up` and the tests wait for. Ignore a closed stdout.
        let _ = writeln!(out, "{name} listening on {client} (peers on {peer})");
        let _ = out.flush();
    }
    ::log::info!("{name}: listening for clients on {client}, peers on {peer}");
    server.run()
}

/// Raises the soft limit on open files to the hard limit: every client costs a descriptor, and the
/// default soft limit of 1,024 would cap the server long before `limits.max_clients`.
pub fn raise_fd_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
