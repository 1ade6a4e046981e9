//! Anti-entropy and catch-up offsets: the dialer's sync of every record (or, with a version 2 offset, of
//! the records stored after it) in bounded batches, its `OFF <seq>` lines once synced, and the acceptor's
//! `ACK <seq>` answers once what it stored is durable (see the module documentation of `peer`).

use super::{Peer, PeerClose};
use crate::route::Mode;
use crate::server::ctx::Ctx;
use std::io::Write;
use std::time::Duration;

/// A link that carries no records (they go down other trees) tells its neighbour the stream's offset
/// when it has moved this far, or this long after the last time: the offset only shortens the delta of
/// the next link-up, and must cost far fewer bytes than the records it is about.
pub const OFF_PACE: Duration = Duration::from_secs(10);
pub const OFF_ADVANCE: u64 = 4096;

/// A link that carries records states its offset once the stream moved this far, or this long after the
/// last time (and, after the records stop, with the next `PING`, within a second): the offset bounds what
/// is sent again if the link breaks, and each one costs the neighbour a write of its `ACK` and this
/// server a wake-up to read it. Stating it after every turn, as version 3 first did, cost both a system
/// call per batch of records; redis's replicas acknowledge once a second (`REPLCONF ACK`).
pub const OFF_CARRIED_PACE: Duration = Duration::from_millis(100);
pub const OFF_CARRIED_ADVANCE: u64 = 1024;

/// Whether a link whose stream moved `advanced` seqs since its last `OFF`, `since` ago, states its offset
/// now: on a link that `carried` records since then, past [`OFF_CARRIED_ADVANCE`] or
/// [`OFF_CARRIED_PACE`]; on one that carried none, past [`OFF_ADVANCE`] or [`OFF_PACE`]. (The
/// propagation simulation asks the same function.)
pub fn off_due(carried: bool, advanced: u64, since: Duration) -> bool {
    if carried {
        advanced >= OFF_CARRIED_ADVANCE || since >= OFF_CARRIED_PACE
    } else {
        advanced >= OFF_ADVANCE || since >= OFF_PACE
    }
}

/// Sync bytes queued per turn per link: a million records go out over many turns, never all at once.
const SYNC_BATCH: usize = 64 * 1024;
pub(super) const SYNC_BATCHES_PER_TURN: usize = 4;
/// Records looked at per sync batch, sent or passed over.
const SYNC_VISITS: u64 = 4096;

impl Peer {
    /// `OFF <seq>` from the dialer: every record of its stream up to `seq` has been sent before this
    /// line, so everything up to it is stored here (or something newer). Acknowledged once this server's
    /// journal has made durable what it stored up to now; at once without a journal.
    pub(super) fn on_offset(&mut self, neighbour: usize, text: &[u8], ctx: &mut Ctx) {
        let Some(off) = std::str::from_utf8(&text[4..]).ok().and_then(|t| t.parse::<u64>().ok()) else {
            return self.close(PeerClose::Protocol, ctx, format_args!("bad OFF line"));
        };
        let need = ctx.records().max_seq();
        self.pending_acks.push_back((off, need));
        if ctx.journal.is_some() {
            ctx.await_durable(need, self.token);
        }
        self.release_acks(neighbour, ctx);
    }

    /// Sends `ACK` for the greatest offset whose records are durable here, and records it (in memory, and
    /// in the journal's meta file for the next start).
    pub(super) fn release_acks(&mut self, neighbour: usize, ctx: &mut Ctx) {
        let mut acked = None;
        while let Some(&(off, need)) = self.pending_acks.front() {
            if need > ctx.durable {
                // Not yet (or the journal is failing): wait for the next durable point.
                ctx.await_durable(need, self.token);
                break;
            }
            self.pending_acks.pop_front();
            acked = Some(off);
        }
        let (Some(off), Some(rid)) = (acked, self.dialer_rid.clone()) else { return };
        let name = ctx.neighbours[neighbour].name.clone();
        if let Some(j) = ctx.journal.as_mut() {
            j.set_peer(&name, &rid, off);
        }
        ctx.peer_offsets.insert(name, (rid, off));
        let _ = writeln!(self.out, "ACK {off}"); // into the buffer: no allocation per acknowledgement
        ctx.counters.acks_sent += 1;
        self.mark_dirty(ctx);
    }

    /// Dialer, version 2, sync done: tells the neighbour how far our stream has been sent (all records up
    /// to our greatest seq are in `out` or were written before), when [`off_due`] says so. Called at the
    /// end of every turn in which the link was written to, the heartbeat's `PING` included.
    pub(super) fn note_offset(&mut self, ctx: &mut Ctx) {
        let seq = ctx.records().max_seq();
        if !(self.v2 && self.synced && self.is_live() && seq > self.off_sent) {
            return;
        }
        if !off_due(self.carried, seq - self.off_sent, ctx.now.saturating_duration_since(self.off_at)) {
            return;
        }
        self.off_sent = seq;
        self.off_at = ctx.now;
        self.carried = false;
        self.close_frame();
        let _ = writeln!(self.out, "OFF {seq}"); // into the buffer: no allocation per offset
    }

    /// Appends the next batch of the anti-entropy sync; false when there is nothing (more) to send.
    pub(super) fn fill_sync_batch(&mut self, ctx: &mut Ctx) -> bool {
        let Some(mut cursor) = self.sync else { return false };
        // A slot cursor: a record keeps its slot while it lives, so the walk stays exact while records are
        // evicted (see record::store); a delta skips the records stored at or before `sync_after`. Records
        // the neighbour would refuse at once are passed over, at most SYNC_VISITS per batch, so a batch's
        // work stays bounded even when it sends nothing.
        let start = cursor;
        let (mut sent, mut skipped) = (0u64, 0u64);
        while self.out.len() < SYNC_BATCH && sent + skipped < SYNC_VISITS {
            let Some((next, record)) = ctx.records().next_since(cursor as u32, self.sync_after) else {
                cursor = ctx.records().slots() as usize;
                break;
            };
            cursor = next as usize;
            if self.peer_least.as_ref().is_some_and(|least| !least.is_below(&record)) {
                skipped += 1;
                continue;
            }
            // Learned by anti-entropy: whoever was cut off with the neighbour may lack it too, so it floods
            // on from there.
            self.frame_room(Mode::Flood, crate::protocol::MAX_AT_LINE);
            record.write_line(&mut self.out);
            sent += 1;
        }
        // Records sent by the catch-up were carried too: their offset is stated under the same pacing.
        self.carried |= sent > 0;
        let done = ctx.records().next_since(cursor as u32, self.sync_after).is_none();
        self.sync = if done { None } else { Some(cursor) };
        if done {
            self.synced = true;
            self.note_offset(ctx);
        }
        if cursor > start {
            ctx.counters.sync_batches += 1;
            ctx.counters.records_synced += sent;
            ctx.counters.records_sync_skipped += skipped;
            if let Some(n) = self.neighbour() {
                let name = &ctx.neighbours[n].name;
                ctx.log.event(format_args!(
                    "sync to {name}: slots {start}..{cursor}, {sent} records sent, {skipped} below its least{}",
                    if done { " (done)" } else { "" }
                ));
            }
        }
        cursor > start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A carrying link states its offset past 1,024 seqs or 100 ms; an idle one only past 4,096 seqs or
    /// 10 s (the values README's peer protocol section promises).
    #[test]
    fn an_offset_is_due_past_the_pacing_bounds() {
        let (s, ms) = (Duration::from_secs, Duration::from_millis);
        let table = [
            (true, 1, s(0), false),
            (true, 1023, ms(99), false),
            (true, 1024, s(0), true),
            (true, 1, ms(100), true),
            (false, 1, s(0), false),
            (false, 1024, ms(100), false),
            (false, 4095, s(9), false),
            (false, 4096, s(0), true),
            (false, 1, s(10), true),
        ];
        for (carried, advanced, since, want) in table {
            assert_eq!(off_due(carried, advanced, since), want, "{carried} {advanced} {since:?}");
        }
    }
}
