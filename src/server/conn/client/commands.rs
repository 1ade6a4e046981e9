//! Answering one command: IAMAT (stored and flooded, its reply held while the journal must first make it
//! durable), WHATSAT (answered here, or given a slot in `waiting`), and anything else as invalid; then the
//! reply's bookkeeping (counters, log, output bounds).

use super::{Client, Pending, State};
use crate::protocol::{self, Command};
use crate::route::Mode;
use crate::server::ctx::{CloseReason, Ctx};
use crate::server::herd::Whatsat;

impl Client {
    /// Answers one command.
    pub(super) fn command(&mut self, line: &[u8], ctx: &mut Ctx) {
        ctx.log.command(&self.addr_text, line);
        let command = protocol::parse_command(line);
        if let Command::IAmAt(cmd) = &command {
            if ctx.holds_replies() && protocol::time_at_most(cmd.client_time, ctx.latest_client_time()) {
                return self.iamat_held(cmd, ctx);
            }
        }
        let queued = !self.waiting.is_empty();
        let token = self.token;
        let places_waiting = self.places_waiting;
        let buf = self.reply_buf();
        let start = buf.len();
        match command {
            Command::Blank => {
                ctx.counters.blank += 1;
                return;
            }
            Command::Invalid => {
                ctx.counters.invalid += 1;
                protocol::write_invalid(buf, line);
            }
            Command::IAmAt(cmd) if !protocol::time_at_most(cmd.client_time, ctx.latest_client_time()) => {
                ctx.counters.iamat += 1;
                ctx.counters.invalid += 1;
                protocol::write_invalid(buf, line);
            }
            Command::IAmAt(cmd) => {
                ctx.counters.iamat += 1;
                let fields = protocol::write_at(buf, &ctx.name, ctx.wall, &cmd);
                ctx.store_and_flood(&buf[start..], fields, None, Mode::Tree);
            }
            Command::WhatsAt(cmd) => {
                ctx.counters.whatsat += 1;
                match ctx.whatsat(&cmd, token, places_waiting, buf) {
                    Whatsat::Answered => {}
                    Whatsat::UnknownClient => {
                        ctx.counters.invalid += 1;
                        protocol::write_invalid(buf, line);
                    }
                    Whatsat::Pending { ticket, at_line } => {
                        self.waiting.push_back(Pending::Places { ticket, at_line, bound: cmd.bound });
                        self.places_waiting += 1;
                        return;
                    }
                    Whatsat::AwaitRecord { ticket, deadline } => {
                        self.waiting.push_back(Pending::AwaitRecord { ticket, line: line.to_vec(), deadline });
                        self.arm(deadline, ctx);
                        return;
                    }
                }
            }
        }
        self.replied(start, queued, ctx);
    }

    /// An IAMAT whose reply waits until its record is durable (`journal.fsync` = `always`). The reply
    /// goes into the `Durable` slot at the back of the queue, one slot for a run of IAMATs: they share the
    /// fsync anyway, and a pipelined burst costs one slot, not one per command.
    fn iamat_held(&mut self, cmd: &protocol::IAmAt<'_>, ctx: &mut Ctx) {
        ctx.counters.iamat += 1;
        if !matches!(self.waiting.back(), Some(Pending::Durable { .. })) {
            let reply = std::mem::take(&mut self.spare);
            self.waiting.push_back(Pending::Durable { seq: 0, reply, count: 0 });
        }
        let Some(Pending::Durable { seq, reply, count }) = self.waiting.back_mut() else { unreachable!("just pushed") };
        let start = reply.len();
        let fields = protocol::write_at(reply, &ctx.name, ctx.wall, cmd);
        // A record not newer than the one held is not stored: its reply waits only for what precedes it.
        if ctx.store_and_flood(&reply[start..], fields, None, Mode::Tree) {
            *seq = ctx.last_seq;
            ctx.await_durable(*seq, self.token);
        }
        *count += 1;
        ctx.gauges.replies_waiting_fsync += 1;
        ctx.counters.replies += 1;
        ctx.log.reply(&self.addr_text, &reply[start..]);
        self.waiting_bytes += reply.len() - start;
        self.release_ready(ctx);
    }

    /// Bookkeeping after a reply was appended at `start` of the reply buffer.
    fn replied(&mut self, start: usize, queued: bool, ctx: &mut Ctx) {
        let buf = if queued {
            match self.waiting.back() {
                Some(Pending::Ready(buf)) => buf,
                _ => unreachable!("queued replies go to a ready buffer"),
            }
        } else {
            &self.out
        };
        let reply = &buf[start..];
        ctx.counters.replies += 1;
        ctx.log.reply(&self.addr_text, reply);
        if queued {
            self.waiting_bytes += reply.len();
        } else {
            self.mark_dirty(ctx);
        }
        if self.unsent() > ctx.limits.client_output_hard {
            self.state = State::Closed(CloseReason::OutputBound);
        }
    }
}
