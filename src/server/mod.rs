//! Everything that waits for the kernel: one readiness loop per server process.
//!
//! * [`event_loop`]: the `Poll` loop, tokens, dispatch, deferred writes and closes, timers, shut-down.
//! * [`client`]: the client connection state machine.
//! * [`timer`]: deadlines.
//! * [`log`]: the server's buffered log file.

pub mod client;
pub mod event_loop;
pub mod log;
pub mod timer;

pub use event_loop::Server;

use crate::config::Config;

/// `herd serve NAME`: binds, prints one line to stdout once listening, and runs until SIGTERM or SIGINT.
/// Returns a one-line error for the exit status 2 cases (unknown name, port in use, bad log directory).
pub fn serve(config: &Config, name: &str) -> Result<(), String> {
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
