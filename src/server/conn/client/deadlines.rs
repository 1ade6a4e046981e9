//! The connection's deadlines without an event: waits on the herd that expire, a line left unfinished
//! (slow-loris), a client that takes none of its replies, idleness, and the end of a lingering close. One
//! deadline at a time is armed in the loop's timer heap; entries that fire early are stale and ignored.

use super::{Client, Pending, State};
use crate::server::conn::Connection;
use crate::server::ctx::{CloseReason, Ctx};
use crate::server::timer::Timer;
use std::time::Instant;

impl Client {
    /// Arms the connection's deadline at `at` unless an earlier one is armed already.
    pub(super) fn arm(&mut self, at: Instant, ctx: &mut Ctx) {
        if self.timer_at.is_none_or(|t| at < t) {
            self.timer_at = Some(at);
            ctx.timers.add(at, Timer::Conn(self.token));
        }
    }

    /// The earliest thing this connection must do without an event.
    fn next_deadline(&self, ctx: &Ctx) -> Option<Instant> {
        let waits = self.waiting.iter().filter_map(|p| match p {
            Pending::AwaitRecord { deadline, .. } => Some(*deadline),
            _ => None,
        });
        let line = self.line_started.filter(|_| self.state == State::Open).map(|t| t + ctx.line_timeout);
        let blocked = self.blocked_since.map(|t| t + ctx.idle_timeout);
        let idle = match self.state {
            State::Closed(_) => None,
            _ => Some(self.idle_at),
        };
        waits.chain(line).chain(blocked).chain(idle).min()
    }

    /// Its deadline came: ends waits that are over, ends a slow line, drops a client that has not
    /// taken a byte of its replies for the idle time-out, closes one that sent nothing and is owed nothing
    /// for the idle time-out, ends a lingering close. Then arms the next deadline.
    pub(super) fn check_deadlines(&mut self, ctx: &mut Ctx) {
        if self.is_closed() || self.timer_at.is_some_and(|t| t > ctx.now) {
            return; // closed, or a stale entry: the armed deadline is later
        }
        self.timer_at = None;
        self.expire_waits(ctx);
        if let (Some(started), State::Open) = (self.line_started, self.state) {
            if started + ctx.line_timeout <= ctx.now {
                // Slow-loris: a line that never ends. Answer what is owed, then a lingering close.
                ctx.log.event(format_args!(
                    "client {} left a line unfinished for {:?}: closing",
                    self.addr, ctx.line_timeout
                ));
                self.line_started = None;
                self.input = Vec::new();
                self.readable = false;
                self.state = State::Draining(CloseReason::LineTimeout);
            }
        }
        if self.blocked_since.is_some_and(|t| t + ctx.idle_timeout <= ctx.now) {
            ctx.log.event(format_args!("client {} took no reply bytes for {:?}: dropped", self.addr, ctx.idle_timeout));
            self.state = State::Closed(CloseReason::OutputBound);
        }
        match self.state {
            State::Lingering(reason) if self.idle_at <= ctx.now => self.state = State::Closed(reason),
            State::Open if self.idle_at <= ctx.now && !self.owes() && self.input.is_empty() => {
                self.state = State::Closed(CloseReason::Idle)
            }
            _ => {}
        }
        if !self.is_closed() {
            if let Some(at) = self.next_deadline(ctx) {
                // Never sooner than a fraction of the idle time for a deadline already past (the idle
                // time moves on with activity; waits and lines have their own exact deadlines).
                let at = if at <= ctx.now { ctx.now + ctx.idle_timeout / 8 } else { at };
                self.arm(at, ctx);
            }
        }
    }
}
