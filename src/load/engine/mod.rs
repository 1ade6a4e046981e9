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

use std::io;
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

/// Runs the load described by `opts` to its end and reports what it measured.
pub fn run(opts: &Options) -> Result<Report, String> {
    if opts.targets.is_empty() {
        return Err("no target".into());
    }
    if !opts.allow_remote {
        if let Some(t) = opts.targets.iter().find(|t| !t.ip().is_loopback()) {
            return Err(format!("target {t} is not a loopback address (allow_remote is off)"));
        }
    }
    if opts.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        return Err("rate must be positive".into());
    }
    let n = opts.connections.clamp(1, SLOT_MASK);
    let depth = opts.depth.max(1);

    let mut poll = Poll::new().map_err(|e| format!("poll: {e}"))?;
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
                return Err(format!("poll: {e}"));
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
