//! Everything that waits for the kernel: one readiness loop per server process.
//!
//! - `event_loop`: the `Poll` loop, tokens, dispatch, deferred writes and closes, timers, shut-down.
//! - `client`: the client connection state machine.
//! - `admin`: the admin listener (`/metrics`, `/records`).
//! - `peer`: the peer link state machine (handshake, sync, flooding).
//! - `upstream`: the Places connection state machine (TCP, TLS, HTTP/1.1, keep-alive).
//! - `places_client`: the Places cache, coalescing, pool, deadlines and off-loop resolution.
//! - `timer`: deadlines.
//! - `log`: the server's buffered log file.

pub mod admin;
pub mod client;
pub mod event_loop;
pub mod log;
pub mod peer;
pub mod places_client;
pub mod timer;
pub mod upstream;

pub use event_loop::Server;

use crate::config::Config;

/// `herd serve NAME`: binds, prints one line to stdout once listening, and runs until SIGTERM or SIGINT.
/// Returns a one-line error for the exit status 2 cases (unknown name, port in use, bad log directory).
pub fn serve(config: &Config, name: &str) -> Result<(), String> {
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
