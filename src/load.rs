//! `herd load`: a load generator for line-protocol TCP servers (a herd, or redis-server's inline
//! protocol), in the same shape as the servers: one thread, one hand-written `mio` loop.
//!
//! - Closed loop (default): every connection keeps `--depth` requests in flight.
//! - Open loop (`--rate`): requests follow a fixed timetable and latency is measured from each request's
//!   *scheduled* send time, so a stalled server shows up in the percentiles instead of slowing the
//!   generator down (no coordinated omission).
//!
//! Semantics worth knowing:
//! - Phases: seeding (WHATSAT workloads: one unrecorded IAMAT per client id, closed loop, at most 30 s),
//!   warm-up (`--warmup`, unrecorded), then the measured period, which ends at `--duration` or once
//!   `--requests` measured requests have finished, whichever comes first. `--requests` without
//!   `--duration` runs up to the 600 s cap, and gives up (`stopped_by: "unreachable"`) when no
//!   connection could be opened for a whole `--timeout-ms`.
//! - A request is measured when it was issued (closed loop) or scheduled (open loop) in the measured
//!   period; replies after the period are not counted, the requests are reported as `unfinished`.
//! - Only good replies enter the latency histogram and the throughput; errors are counted by kind.
//!   When a connection fails (closed, reset, a reply time-out, an oversized reply, bytes nobody asked
//!   for), every request outstanding on it fails with that kind and the connection is reopened, at once
//!   when it had produced a reply, else after a back-off doubling from 1 ms to 200 ms. A failed connect
//!   counts one `connect` error. Open-loop requests still queued when their time-out passes count as
//!   `timeout` without being sent.
//!
//! Layout: [`args`] (options, parser, usage), [`workload`] (request formatting and reply framing, pure),
//! [`timetable`] (open-loop schedule, pure), [`engine`] (the Poll loop and connection state machines),
//! [`report`] (percentiles, JSON, text), [`plot`] (SVG percentile curve), [`timer`] (precise wake-ups).

pub mod args;
pub mod engine;
pub mod plot;
pub mod report;
pub mod timer;
pub mod timetable;
pub mod workload;

use std::io::{IsTerminal, Write};

pub use args::{ArgError, Options, Parsed, USAGE};
pub use engine::{run, RunError};
pub use report::{LatencySummary, Report, TargetReport};
pub use workload::{ErrorKind, Workload};

/// `herd load ARGS...`: 0 on success, 2 on bad arguments, 1 when the run failed (or had errors and
/// `--fail-on-error` was given).
pub fn cli(args: &[String]) -> i32 {
    let mut opts = match args::parse(args) {
        Ok(Parsed::Help) => {
            print!("{USAGE}");
            return 0;
        }
        Ok(Parsed::Run(o)) => *o,
        Err(e) => {
            eprintln!("herd load: {e}");
            return 2;
        }
    };
    opts.progress = std::io::stderr().is_terminal();
    // Open the plot file first: a bad path should not cost a whole run.
    let mut plot_file = match &opts.plot {
        Some(p) => match std::fs::File::create(p) {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!("herd load: --plot {}: {e}", p.display());
                return 2;
            }
        },
        None => None,
    };
    let report = match run(&opts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("herd load: {e}");
            if let Some(p) = &opts.plot {
                let _ = std::fs::remove_file(p);
            }
            return 1;
        }
    };
    if opts.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text());
    }
    if let Some(f) = plot_file.as_mut() {
        let mode = match opts.rate {
            Some(r) => format!("open loop {r} req/s"),
            None => format!("closed loop, depth {}", report.depth),
        };
        let title = format!(
            "herd load {}: {} connections, {mode}: {:.0} replies/s",
            report.workload, report.connections, report.throughput
        );
        if let Err(e) = f.write_all(plot::percentile_svg(&report.histogram, &title).as_bytes()) {
            eprintln!("herd load: --plot: {e}");
            return 1;
        }
    }
    if opts.fail_on_error && report.errors_total() > 0 {
        return 1;
    }
    0
}
