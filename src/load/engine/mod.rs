//! The load loop: one thread, one `mio::Poll`, every connection in a slab as an explicit state machine.
//! This module holds every place where the load generator waits for the kernel, and reads top to bottom
//! as one turn: sleep until the next event, send time, phase end or tick; drive the connections that
//! woke; hand due open-loop requests to their connections; housekeeping; progress; phase changes.
//!
//! - [`conn`]: one connection's state machine (connect, write requests, frame replies, time-outs).
//! - [`ctx`]: the run's shared state: the clock, the phases and every count.
//! - [`summary`]: the progress line and the final [`Report`].
//!
//! The loop imports all three; `conn` and `summary` import only `ctx`; `ctx` imports none of them.

mod conn;
mod ctx;
mod summary;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use mio::{Events, Poll, Token};
use slab::Slab;

use super::args::Options;
use super::report::Report;
use super::timer::Timer;
use conn::{token, Conn, State, SLOT_MASK};
use ctx::{Ctx, Phase, Tag};

const TIMER: Token = Token(usize::MAX);
/// Housekeeping (time-outs, reconnects) runs this often.
const TICK_NS: u64 = 10_000_000;
const PROGRESS_NS: u64 = 1_000_000_000;

/// Why a run could not be made (`herd load` exits 1). The command line's own mistakes are
/// [`ArgError`](super::args::ArgError)s; these are for [`Options`] built by a program.
#[derive(Debug)]
pub enum RunError {
    /// `targets` is empty.
    NoTarget,
    /// A target that is not a loopback address while `allow_remote` is off.
    NotLoopback(SocketAddr),
    /// `rate` is zero, negative or not finite.
    BadRate,
    /// `poll(2)` (or creating the poll) failed.
    Poll(io::Error),
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::NoTarget => f.write_str("no target"),
            RunError::NotLoopback(t) => write!(f, "target {t} is not a loopback address (allow_remote is off)"),
            RunError::BadRate => f.write_str("rate must be positive"),
            RunError::Poll(e) => write!(f, "poll: {e}"),
        }
    }
}

impl std::error::Error for RunError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RunError::Poll(e) => Some(e),
            _ => None,
        }
    }
}

/// Runs the load described by `opts` to its end and reports what it measured.
pub fn run(opts: &Options) -> Result<Report, RunError> {
    if opts.targets.is_empty() {
        return Err(RunError::NoTarget);
    }
    if !opts.allow_remote {
        if let Some(t) = opts.targets.iter().find(|t| !t.ip().is_loopback()) {
            return Err(RunError::NotLoopback(*t));
        }
    }
    if opts.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        return Err(RunError::BadRate);
    }
    let n = opts.connections.clamp(1, SLOT_MASK);
    let depth = opts.depth.max(1);

    let mut poll = Poll::new().map_err(RunError::Poll)?;
    let mut events = Events::with_capacity(1024);
    let mut timer = match opts.rate {
        Some(_) => Timer::new(poll.registry(), TIMER),
        None => None,
    };
    let mut conns: Slab<Conn> = Slab::with_capacity(n);
    for i in 0..n {
        let tix = i % opts.targets.len();
        conns.insert(Conn::new(opts.targets[tix], tix, depth));
    }
    let mut ctx = Ctx::new(opts, depth);
    let seeding = opts.workload.needs_seed();
    if !seeding {
        ctx.enter_warmup(0);
    }
    for key in 0..n {
        conns[key].drive(key, &mut ctx, poll.registry());
    }

    let mut stopped_by = "duration";
    let mut next_tick = TICK_NS;
    let mut next_progress = PROGRESS_NS;
    let mut dirty: Vec<usize> = Vec::with_capacity(n);
    let mut progress_shown = false;
    loop {
        // Sleep until the next event, the next scheduled send, the phase's end or housekeeping.
        let now = ctx.now();
        let mut deadline = next_tick.min(ctx.phase_deadline());
        if ctx.may_schedule() {
            if let Some(tt) = &ctx.timetable {
                let t = tt.next_time();
                match timer.as_mut() {
                    Some(timer) if t > now => {
                        if timer.arm(t, t - now).is_err() {
                            deadline = deadline.min(t);
                        }
                    }
                    _ => deadline = deadline.min(t),
                }
            }
        }
        let timeout = Duration::from_nanos(deadline.saturating_sub(now));
        if let Err(e) = poll.poll(&mut events, Some(timeout)) {
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(RunError::Poll(e));
            }
        }
        for ev in events.iter() {
            if ev.token() == TIMER {
                if let Some(t) = timer.as_mut() {
                    t.clear();
                }
                continue;
            }
            let key = ev.token().0 & SLOT_MASK;
            let Some(c) = conns.get_mut(key) else {
                continue;
            };
            if token(key, c.gen) != ev.token() {
                continue;
            }
            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                c.readable = true;
            }
            if ev.is_writable() || ev.is_write_closed() || ev.is_error() {
                c.writable = true;
            }
            c.drive(key, &mut ctx, poll.registry());
        }

        let now = ctx.now();
        // Open loop: hand every request now due to its connection, round-robin by index.
        if ctx.timetable.is_some() {
            while ctx.may_schedule() {
                let Some((i, t)) = ctx.timetable.as_mut().and_then(|tt| tt.pop_due(now)) else {
                    break;
                };
                if ctx.tag_at(t) == Tag::Measured {
                    ctx.measured_issued += 1;
                }
                let key = (i % n as u64) as usize;
                let c = &mut conns[key];
                c.queue.push_back(t);
                if !c.dirty {
                    c.dirty = true;
                    dirty.push(key);
                }
            }
            for key in dirty.drain(..) {
                conns[key].dirty = false;
                conns[key].drive(key, &mut ctx, poll.registry());
            }
        }
        if now >= next_tick {
            for key in 0..n {
                conns[key].housekeeping(key, &mut ctx, poll.registry(), now);
            }
            if conns.iter().any(|(_, c)| matches!(c.state, State::Open { .. })) {
                ctx.last_open_at = now;
            }
            next_tick = now + TICK_NS;
        }
        if opts.progress && now >= next_progress {
            let in_flight = conns.iter().map(|(_, c)| c.inflight.len()).sum();
            let queued = conns.iter().map(|(_, c)| c.queue.len()).sum();
            let since = next_progress - PROGRESS_NS;
            eprint!("{}", summary::progress_line(&mut ctx, now, since, in_flight, queued));
            progress_shown = true;
            next_progress = now + PROGRESS_NS;
        }

        // Phase changes.
        match ctx.phase {
            Phase::Seed if ctx.seed_done >= ctx.gen.clients() || now >= ctx.seed_deadline => {
                ctx.enter_warmup(now);
                // Closed-loop connections sit idle once seeding is done: start them.
                for key in 0..n {
                    conns[key].drive(key, &mut ctx, poll.registry());
                }
            }
            Phase::Warmup if now >= ctx.measure_start => ctx.phase = Phase::Measure,
            Phase::Measure if now >= ctx.measure_end => ctx.phase = Phase::Done,
            Phase::Measure if ctx.limit.is_some_and(|l| ctx.measured_done >= l) => {
                stopped_by = "requests";
                ctx.phase = Phase::Done;
            }
            // Waiting for N replies from a target that cannot be reached would last the whole cap.
            Phase::Measure
                if ctx.limit.is_some()
                    && now.saturating_sub(ctx.last_open_at.max(ctx.measure_start)) >= ctx.timeout_ns =>
            {
                stopped_by = "unreachable";
                ctx.phase = Phase::Done;
            }
            _ => {}
        }
        if ctx.phase == Phase::Done {
            break;
        }
    }
    if progress_shown {
        eprint!("\r\x1b[K");
    }

    Ok(summary::report(ctx, opts, n, stopped_by, seeding))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Options a program builds are checked before any socket is opened.
    #[test]
    fn impossible_options_are_refused_before_the_run() {
        let none = Options { targets: vec![], ..Options::default() };
        assert!(matches!(run(&none), Err(RunError::NoTarget)));
        let remote: SocketAddr = "192.0.2.1:80".parse().unwrap();
        let far = Options { targets: vec![remote], ..Options::default() };
        let err = run(&far).unwrap_err();
        assert!(matches!(err, RunError::NotLoopback(t) if t == remote), "{err:?}");
        assert_eq!(err.to_string(), "target 192.0.2.1:80 is not a loopback address (allow_remote is off)");
        let stopped = Options { rate: Some(0.0), ..Options::default() };
        assert_eq!(run(&stopped).unwrap_err().to_string(), "rate must be positive");
    }
}
