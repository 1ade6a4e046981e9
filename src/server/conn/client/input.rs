//! The client's input: one `read(2)` at a time into the loop's shared scratch buffer, complete lines
//! answered straight from it, the rest (a partial line, or lines held back over the command budget or
//! while throttled) kept in `input`; the line limit and the slow-loris clock are enforced here.

use super::{Client, State, KEEP_BUFFER, MAX_WAITING};
use crate::server::ctx::{CloseReason, Ctx};
use std::io::{ErrorKind, Read};

/// What one `read` gave.
pub(super) enum ReadOutcome {
    Data(usize),
    Eof,
    WouldBlock,
    Failed,
}

impl Client {
    /// One `read(2)` into the scratch buffer. A short read clears `readable`: it drained the socket (see the
    /// `client` module documentation).
    pub(super) fn read(&mut self, scratch: &mut [u8], ctx: &mut Ctx) -> ReadOutcome {
        loop {
            return match self.stream.read(scratch) {
                Ok(0) => ReadOutcome::Eof,
                Ok(n) => {
                    // A short read drained the socket (epoll(7)); after a half-close keep reading to the EOF,
                    // which will raise no new edge.
                    if n < scratch.len() && !self.hup {
                        self.readable = false;
                    }
                    ReadOutcome::Data(n)
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => ReadOutcome::WouldBlock,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    ctx.log.event(format_args!("client {} read error: {e}", self.addr));
                    ReadOutcome::Failed
                }
            };
        }
    }

    /// The client half-closed: a final command without LF is still a command.
    pub(super) fn end_of_input(&mut self, ctx: &mut Ctx) {
        self.readable = false;
        let last = std::mem::take(&mut self.input);
        if !last.is_empty() && self.state == State::Open {
            self.command(&last, ctx);
        }
        if self.state == State::Open || self.state == State::Throttled {
            self.state = State::Draining(CloseReason::Eof);
        }
    }

    /// New bytes from the socket (or held-back input being resumed).
    pub(super) fn take_input(&mut self, data: &[u8], ctx: &mut Ctx) {
        if self.input.is_empty() {
            let used = self.lines(data, ctx);
            self.keep(&data[used..], ctx);
            return;
        }
        // While open, `input` holds only a partial line: append in place and look for its end in the new
        // bytes alone, so a line arriving a byte at a time costs linear, not quadratic, work.
        let old = self.input.len();
        self.input.extend_from_slice(data);
        if self.state == State::Open && memchr::memchr(b'\n', &self.input[old..]).is_none() {
            if self.input.len() > ctx.limits.max_line {
                let len = self.input.len();
                self.violation(len, ctx);
            }
            return;
        }
        self.answer_buffered(ctx);
    }

    /// Answers the complete lines waiting in `input` (a line finished by new bytes, lines held back over
    /// the command budget, or while throttled). It works in place: the unanswered rest moves to the front
    /// of the same buffer, so resuming allocates nothing, and a buffer answered to the end is freed, so an
    /// idle connection still owns none.
    pub(super) fn answer_buffered(&mut self, ctx: &mut Ctx) {
        let mut input = std::mem::take(&mut self.input);
        let used = self.lines(&input, ctx);
        if used < input.len() && matches!(self.state, State::Open | State::Throttled) {
            input.drain(..used);
            // Give back the memory of a burst, as `out` does; a working-size buffer is kept.
            if input.capacity() > KEEP_BUFFER {
                input.shrink_to_fit();
            }
            self.input = input;
        }
        self.check_kept(ctx);
    }

    /// Keeps unanswered bytes for later (`input` is empty: they came straight from the read buffer).
    fn keep(&mut self, rest: &[u8], ctx: &mut Ctx) {
        if matches!(self.state, State::Open | State::Throttled) {
            self.input.extend_from_slice(rest);
        }
        self.check_kept(ctx);
    }

    /// What `input` now holds decides: an incomplete line already over the limit is a violation; a
    /// partial line starts the slow-loris clock; a finished one stops it.
    fn check_kept(&mut self, ctx: &mut Ctx) {
        if self.state == State::Open && self.input.len() > ctx.limits.max_line && !self.input.contains(&b'\n') {
            let len = self.input.len();
            self.violation(len, ctx);
            return;
        }
        if self.input.is_empty() {
            self.line_started = None;
        } else if self.line_started.is_none() && self.state == State::Open {
            self.line_started = Some(ctx.now);
            self.arm(ctx.now + ctx.line_timeout, ctx);
        }
    }

    /// Answers every complete line of `buf` while the connection stays open; returns the bytes used.
    fn lines(&mut self, buf: &[u8], ctx: &mut Ctx) -> usize {
        let mut pos = 0;
        while self.state == State::Open {
            let Some(len) = memchr::memchr(b'\n', &buf[pos..]) else {
                break;
            };
            if self.budget == 0 {
                self.held_back = true;
                break;
            }
            self.budget -= 1;
            if len > ctx.limits.max_line {
                self.violation(len, ctx);
                return buf.len();
            }
            let line = &buf[pos..pos + len];
            pos += len + 1;
            self.command(line.strip_suffix(b"\r").unwrap_or(line), ctx);
            if (self.unsent() > ctx.limits.client_output_soft || self.waiting.len() >= MAX_WAITING)
                && self.state == State::Open
            {
                self.state = State::Throttled;
                ctx.counters.throttled += 1;
            }
        }
        pos
    }

    /// A line over the limit: no reply to it, nothing after it is read; flush what is owed, then close.
    fn violation(&mut self, len: usize, ctx: &mut Ctx) {
        self.line_started = None;
        ctx.counters.line_too_long += 1;
        ctx.log.event(format_args!(
            "client {} sent a line of more than {} bytes ({len} seen): closing after replies owed",
            self.addr, ctx.limits.max_line
        ));
        log::warn!("client {}: line longer than {} bytes, closing", self.addr, ctx.limits.max_line);
        self.input = Vec::new();
        self.readable = false;
        self.state = State::Draining(CloseReason::LineTooLong);
    }
}
