//! The client's reply queue behind WHATSATs that wait (on Places, or for a record from the herd).
//!
//! Replies leave in the order their commands arrived. A WHATSAT that waits takes a slot in `waiting`;
//! replies to later commands are coalesced into a ready buffer behind it, and everything at the head
//! that is ready moves to `out` as soon as the slot is filled.

use super::{Client, Pending, State};
use crate::protocol::{self, Command};
use crate::server::ctx::{CloseReason, Ctx};
use crate::server::herd::Whatsat;

impl Client {
    /// Where a reply made now must go: straight to `out`, or behind a WHATSAT still waiting on Places.
    pub(super) fn reply_buf(&mut self) -> &mut Vec<u8> {
        if self.waiting.is_empty() {
            return &mut self.out;
        }
        if !matches!(self.waiting.back(), Some(Pending::Ready(_))) {
            self.waiting.push_back(Pending::Ready(Vec::new()));
        }
        match self.waiting.back_mut() {
            Some(Pending::Ready(buf)) => buf,
            _ => unreachable!("just pushed"),
        }
    }

    /// Places answered the WHATSAT with this ticket: fill its slot and release every reply now in order.
    pub(super) fn places_answered(&mut self, ticket: u64, json: &[u8], ctx: &mut Ctx) {
        let Some(slot) =
            self.waiting.iter_mut().find(|p| matches!(p, Pending::Places { ticket: t, .. } if *t == ticket))
        else {
            return;
        };
        let Pending::Places { at_line, .. } = slot else { unreachable!() };
        self.places_waiting -= 1;
        let mut reply = std::mem::take(at_line);
        reply.extend_from_slice(json);
        reply.extend_from_slice(b"\n\n");
        ctx.counters.replies += 1;
        ctx.log.reply(&self.addr_text, &reply);
        self.waiting_bytes += reply.len();
        *slot = Pending::Ready(reply);
        self.release_ready(ctx);
    }

    /// Moves the replies at the head of the queue that are ready to `out`, in order: made replies, and
    /// held IAMAT replies whose records are durable. A held reply whose record failed to be written is
    /// never sent: the queue from it on is dropped and the connection closes once what precedes it is
    /// written (its record may have been flooded already; it is not retracted).
    pub(super) fn release_ready(&mut self, ctx: &mut Ctx) {
        loop {
            match self.waiting.front() {
                Some(Pending::Ready(_)) => {
                    let Some(Pending::Ready(buf)) = self.waiting.pop_front() else { unreachable!() };
                    self.waiting_bytes -= buf.len();
                    self.out.extend_from_slice(&buf);
                }
                Some(Pending::Durable { seq, .. }) if *seq <= ctx.durable => {
                    let Some(Pending::Durable { mut reply, count, .. }) = self.waiting.pop_front() else {
                        unreachable!()
                    };
                    self.waiting_bytes -= reply.len();
                    ctx.gauges.replies_waiting_fsync -= count as usize;
                    self.out.extend_from_slice(&reply);
                    reply.clear();
                    if reply.capacity() <= 64 * 1024 {
                        self.spare = reply;
                    }
                }
                Some(Pending::Durable { seq, .. }) if *seq <= ctx.failed => {
                    self.not_durable(ctx);
                    break;
                }
                _ => break,
            }
        }
        self.mark_dirty(ctx);
        if self.unsent() > ctx.limits.client_output_hard {
            self.state = State::Closed(CloseReason::OutputBound);
        }
    }

    /// The journal could not write the record of the held reply at the head: drop every reply from it on,
    /// read nothing more, and close once the replies owed before it are written.
    fn not_durable(&mut self, ctx: &mut Ctx) {
        self.forget_waits(ctx);
        let mut unanswered = 0;
        for slot in self.waiting.drain(..) {
            if let Pending::Durable { count, .. } = slot {
                ctx.gauges.replies_waiting_fsync -= count as usize;
                unanswered += u64::from(count);
            }
        }
        self.waiting_bytes = 0;
        ctx.counters.not_durable += unanswered;
        ctx.log.event(format_args!(
            "client {}: {unanswered} IAMAT replies withheld, the journal could not write their records: closing",
            self.addr
        ));
        self.input = Vec::new();
        self.held_back = false;
        self.readable = false;
        self.state = State::Draining(CloseReason::NotDurable);
    }

    /// The record a waiting WHATSAT needed has arrived from the herd: answer the command now.
    pub(super) fn record_arrived(&mut self, ticket: u64, ctx: &mut Ctx) {
        let Some(i) =
            self.waiting.iter().position(|p| matches!(p, Pending::AwaitRecord { ticket: t, .. } if *t == ticket))
        else {
            return;
        };
        let Pending::AwaitRecord { line, .. } = &self.waiting[i] else { unreachable!() };
        let line = line.clone();
        let Command::WhatsAt(cmd) = protocol::parse_command(&line) else { unreachable!("it parsed before") };
        let mut reply = Vec::new();
        self.waiting[i] = match ctx.whatsat(&cmd, self.token, self.places_waiting, &mut reply) {
            Whatsat::Answered => {
                ctx.counters.replies += 1;
                ctx.log.reply(&self.addr_text, &reply);
                self.waiting_bytes += reply.len();
                Pending::Ready(reply)
            }
            Whatsat::Pending { ticket, at_line } => {
                self.places_waiting += 1;
                Pending::Places { ticket, at_line, bound: cmd.bound }
            }
            // Cannot happen (the record was just stored), but answer rather than hang.
            Whatsat::UnknownClient | Whatsat::AwaitRecord { .. } => {
                protocol::write_invalid(&mut reply, &line);
                self.waiting_bytes += reply.len();
                Pending::Ready(reply)
            }
        };
        self.release_ready(ctx);
    }

    /// Answers `?` to every WHATSAT whose wait for the herd is over.
    pub(super) fn expire_waits(&mut self, ctx: &mut Ctx) {
        let mut expired = false;
        for slot in self.waiting.iter_mut() {
            if let Pending::AwaitRecord { ticket, line, deadline } = slot {
                if *deadline <= ctx.now {
                    if let Command::WhatsAt(cmd) = protocol::parse_command(line) {
                        ctx.stop_awaiting(cmd.client_id, self.token, *ticket);
                    }
                    let mut reply = Vec::with_capacity(line.len() + 3);
                    protocol::write_invalid(&mut reply, line);
                    ctx.counters.invalid += 1;
                    ctx.counters.replies += 1;
                    ctx.log.reply(&self.addr_text, &reply);
                    self.waiting_bytes += reply.len();
                    *slot = Pending::Ready(reply);
                    expired = true;
                }
            }
        }
        if expired {
            self.release_ready(ctx);
        }
    }

    /// The connection is going away: forget the waits registered in the server's context.
    pub(super) fn forget_waits(&mut self, ctx: &mut Ctx) {
        for slot in &self.waiting {
            if let Pending::AwaitRecord { ticket, line, .. } = slot {
                if let Command::WhatsAt(cmd) = protocol::parse_command(line) {
                    ctx.stop_awaiting(cmd.client_id, self.token, *ticket);
                }
            }
        }
    }

    /// The bound of the WHATSAT waiting on `ticket`, if it is still waiting.
    pub fn bound_for(&self, ticket: u64) -> Option<u8> {
        self.waiting.iter().find_map(|p| match p {
            Pending::Places { ticket: t, bound, .. } if *t == ticket => Some(*bound),
            _ => None,
        })
    }
}
