//! The herd's rules, over [`Ctx`]: what storing a record means, how a WHATSAT is decided, how a wait for
//! a record from the herd starts and ends, how neighbour links are counted and redialled, and what a
//! finished Places request hands to its waiters.
//!
//! Connections call these as methods of `Ctx` (`ctx.store_and_flood(…)`, `ctx.whatsat(…)`); none of them
//! touches a socket. Their effects on other connections go to `ctx.outbox`, which the loop delivers
//! right after the handler (`handoff.rs`). So every rule here can be tested with a `Ctx` alone (see the
//! tests at the end).

use super::ctx::{Ctx, Flood, OutLink, Reflood, ReplayStats, Send, BACKOFF_CAP, BACKOFF_FIRST};
use super::journal;
use super::places_client::{Outcome, PlacesClient, Replies, Waiter, IDLE_KEEP};
use super::timer::Timer;
use crate::protocol::{self, AtFields, WhatsAt};
use crate::route::{Mode, Plan};
use mio::Token;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a WHATSAT got from the herd.
#[derive(Debug, PartialEq, Eq)]
pub enum Whatsat {
    /// The client has no record here: the command is invalid.
    UnknownClient,
    /// The client has no record here yet, but a neighbour is linked: wait until `deadline` for the herd
    /// to deliver one. `Client::record_arrived` or the deadline ends the wait.
    AwaitRecord { ticket: u64, deadline: Instant },
    /// The whole reply (AT line, JSON, blank line) was appended to the buffer.
    Answered,
    /// Places is being asked; the answer comes back through `Client::places_answered` with this ticket.
    Pending { ticket: u64, at_line: Vec<u8> },
}

impl Ctx {
    /// Stores an `AT` line if it is the newest record of its client, and passes it on if so: `from` is the
    /// neighbour it came from (`None` for a client's IAMAT), `mode` how it travels (`Tree` for an IAMAT).
    /// The outbox gets it; [`route_floods`](Self::route_floods) decides where it goes.
    pub fn store_and_flood(&mut self, line: &[u8], fields: AtFields, from: Option<usize>, mode: Mode) -> bool {
        if !self.offer_record(line, fields) {
            return false;
        }
        self.counters.records_stored += 1;
        // Only a record from the herd ends a wait: a local IAMAT that arrived after the WHATSAT must not be
        // seen by it (state effects in arrival order).
        if from.is_some() && !self.awaiting_record.is_empty() {
            let id = &line[fields.client_id.0 as usize..fields.client_id.1 as usize];
            if let Some(waiters) = self.awaiting_record.remove(id) {
                self.outbox.records_arrived.extend(waiters);
            }
        }
        // Every live link hears of it: the children of its origin's tree get the record (or every link but
        // its source, when it floods), the others only that this server's stream moved on (its offset,
        // for catch-up by delta).
        if self.neighbours.iter().any(|n| matches!(n.link, OutLink::Live(_))) {
            // A client's record starts at this server; a neighbour's names its origin.
            let origin = match from {
                None => self.routes.me(),
                Some(_) => self.routes.origin(&line[fields.server.0 as usize..fields.server.1 as usize]),
            };
            self.queue_flood(line, from, mode, origin, false);
        }
        true
    }

    /// Queues `line` for [`route_floods`](Self::route_floods) (see [`Flood`] for the rest).
    fn queue_flood(&mut self, line: &[u8], from: Option<usize>, mode: Mode, origin: Option<usize>, held: bool) {
        let start = self.outbox.floods.len() as u32;
        self.outbox.floods.extend_from_slice(line);
        self.mark_flood(start, from, mode, origin, held);
    }

    /// Marks what was appended to `outbox.floods` from `start` on as one record for `route_floods`.
    fn mark_flood(&mut self, start: u32, from: Option<usize>, mode: Mode, origin: Option<usize>, held: bool) {
        let (origin, end) = (origin.map_or(u32::MAX, |o| o as u32), self.outbox.floods.len() as u32);
        self.outbox.flood_marks.push(Flood { from, mode, origin, held, start, end });
    }

    /// Turns the records stored since the last hand-off into sends, one per (record, neighbour), their
    /// bytes staying in `outbox.floods`. `live[n]` says whether our sending link to neighbour `n` is live.
    /// A record travels down its origin's tree while every child's link is live (`route::Routes::plan`);
    /// where a child's link is down, a repair starts; one whose origin the routes do not know floods.
    /// Empties `flood_marks`.
    ///
    /// What a repair costs is bounded the way plain flooding is (`route` module documentation): each
    /// server relays a version once (`RecordStore::relay_once`), sends the record on each link once at
    /// most and never back where it first came from; a tree neighbour that holds it gets a notice.
    pub fn route_floods(&mut self, live: &[bool], sends: &mut Vec<Send>) {
        let mut marks = std::mem::take(&mut self.outbox.flood_marks);
        let trees = self.routes.me().is_some();
        let first = sends.len();
        for f in marks.drain(..) {
            let origin = (trees && f.origin != u32::MAX).then_some(f.origin as usize);
            // The common case first: down a whole tree.
            if let (Mode::Tree, Some(o)) = (f.mode, origin) {
                if let Plan::Tree(children) = self.routes.plan(o, Mode::Tree, live) {
                    for &c in children {
                        if Some(c as usize) != f.from {
                            sends.push(Send { neighbour: c, mode: Mode::Tree, start: f.start, end: f.end });
                        }
                    }
                    continue;
                }
            }
            self.route_off_tree(&f, origin, live, sends);
        }
        self.outbox.flood_marks = marks;
        let (mut tree, mut off_tree, mut notices) = (0, 0, 0);
        for s in &sends[first..] {
            match s.mode {
                Mode::Tree => tree += 1,
                Mode::Notice => notices += 1,
                Mode::Flood | Mode::Repair => off_tree += 1,
            }
        }
        self.counters.records_forwarded += tree + off_tree;
        self.counters.records_flooded += off_tree;
        self.counters.notices_sent += notices;
    }

    /// [`route_floods`](Self::route_floods) for a record that does not go down a whole tree: a repair
    /// starting here, a repair passed on, or a flood.
    fn route_off_tree(&mut self, f: &Flood, origin: Option<usize>, live: &[bool], sends: &mut Vec<Send>) {
        let mut send =
            |n: usize, mode: Mode| sends.push(Send { neighbour: n as u32, mode, start: f.start, end: f.end });
        let live_but_source = live.iter().enumerate().filter(|&(n, &up)| up && Some(n) != f.from).map(|(n, _)| n);
        match (f.mode, origin) {
            (Mode::Tree, Some(o)) => {
                // The tree is broken below this server: a repair starts here. The live children get the
                // record (in a repair, so they pass it on too), and so does every other neighbour but the
                // parent it came from, which gets a notice: the way around the break may start there (in
                // a ring, this server's only other link is the broken one), and only a repair makes the
                // servers there pass on the copies they hold.
                self.records.relay_once(&self.outbox.floods[f.start as usize..f.end as usize]);
                let parent = self.routes.parent(o);
                for (n, _) in live.iter().enumerate().filter(|(_, &up)| up) {
                    if Some(n) == parent {
                        send(n, Mode::Notice);
                    } else if Some(n) != f.from {
                        send(n, Mode::Repair);
                    }
                }
            }
            (Mode::Repair, _) => {
                // Stored just now: the record to every live link but its source. Held before: its tree
                // neighbours hold it too (it came down the tree to this server, and went on to the
                // children whose links were live, or the break would have started a repair then), so
                // they get a notice, and the others the record.
                for n in live_but_source {
                    let holds = f.held && origin.is_some_and(|o| self.routes.tree_neighbour(o, n));
                    send(n, if holds { Mode::Notice } else { Mode::Repair });
                }
            }
            (Mode::Notice, _) => unreachable!("a notice is sent, never queued"),
            // A flood (a record learned by catch-up), or a record whose origin has no tree here. Where
            // there are trees, flooding it is this server's relay of that version: a repair reaching it
            // later has nothing left to send.
            (Mode::Flood | Mode::Tree, _) => {
                if self.routes.me().is_some() {
                    self.records.relay_once(&self.outbox.floods[f.start as usize..f.end as usize]);
                }
                live_but_source.for_each(|n| send(n, Mode::Flood));
            }
        }
    }

    /// A record of a repair from neighbour `from`: stored if it is the newest, and passed on to every
    /// other live link if this version has not been passed on in a repair here before, stored now or
    /// not (`route::Mode::Repair`). Returns whether it was stored.
    pub fn repair_record(&mut self, line: &[u8], fields: AtFields, from: usize) -> bool {
        let stored = self.offer_record(line, fields);
        if stored {
            self.counters.records_stored += 1;
            if !self.awaiting_record.is_empty() {
                let id = &line[fields.client_id.0 as usize..fields.client_id.1 as usize];
                if let Some(waiters) = self.awaiting_record.remove(id) {
                    self.outbox.records_arrived.extend(waiters);
                }
            }
        }
        if self.records.relay_once(line) {
            let origin = self.routes.origin(&line[fields.server.0 as usize..fields.server.1 as usize]);
            self.queue_flood(line, Some(from), Mode::Repair, origin, !stored);
        }
        stored
    }

    /// A repair's notice from neighbour `from` (`route::Mode::Notice`): if this server holds that version
    /// of the client's record and has not relayed it, it relays it now, as a repair of a record it held.
    /// Returns whether it did.
    pub fn notice_record(&mut self, client_id: &[u8], client_time: &[u8], from: usize) -> bool {
        self.counters.notices_received += 1;
        if !self.records.relay_notice(client_id, client_time) {
            return false;
        }
        // Written from the store straight into the outbox.
        let record = self.records.get(client_id).expect("relay_notice found it");
        let origin = self.routes.origin(record.server());
        let start = self.outbox.floods.len() as u32;
        record.write_line(&mut self.outbox.floods);
        self.mark_flood(start, Some(from), Mode::Repair, origin, true);
        true
    }

    /// Walks the refloods a step: each record stored after a broken link's last acknowledged offset is
    /// queued again, as a repair (`route::Mode::Repair`: every server passes it on once, so it gets
    /// past the servers that hold it to the ones beyond the break), for every live link. Records of
    /// origins whose tree does not pass through that link here went to their own children (or flooded)
    /// and are passed over, as are versions relayed in a repair already. Returns whether anything was
    /// queued; at most [`REFLOOD_STEP`] records are looked at.
    pub fn reflood_step(&mut self) -> bool {
        let Some(mut job) = self.refloods.pop() else { return false };
        let mut queued = false;
        let mut line = Vec::with_capacity(protocol::MAX_AT_LINE);
        for _ in 0..REFLOOD_STEP {
            let Some((next, record)) = self.records.next_since(job.cursor, job.after) else {
                return queued || !self.refloods.is_empty();
            };
            job.cursor = next;
            // Only what went (or would have gone) down the tree to that neighbour can be missing there.
            let origin = self.routes.origin(record.server());
            if origin.is_some_and(|o| !self.routes.children(o).contains(&(job.neighbour as u32))) {
                continue;
            }
            line.clear();
            record.write_line(&mut line);
            if !self.records.relay_once(&line) {
                continue;
            }
            // To every live link, the tree parent's included (a notice): the way around the break may
            // start there.
            self.queue_flood(&line, None, Mode::Repair, origin, true);
            self.counters.records_reflooded += 1;
            queued = true;
        }
        self.refloods.push(job);
        true
    }

    /// Checks a record from a peer against every rule a client's IAMAT obeys, plus the herd's own: the
    /// server it names is a server of the config.
    pub fn check_peer_record(&self, line: &[u8]) -> Result<AtFields, protocol::AtRefusal> {
        let fields = protocol::check_at(line)?;
        let field = |r: (u32, u32)| &line[r.0 as usize..r.1 as usize];
        if self.routes.origin(field(fields.server)).is_none() {
            return Err(protocol::AtRefusal::Field("unknown_server"));
        }
        if !protocol::time_at_most(field(fields.client_time), self.latest_client_time()) {
            return Err(protocol::AtRefusal::Field("client_time_ahead"));
        }
        Ok(fields)
    }

    pub fn ticket(&mut self) -> u64 {
        self.next_ticket += 1;
        self.next_ticket
    }

    /// Answers a WHATSAT into `out`, or starts what it waits for: a record from the herd, or Places.
    ///
    /// `places_waiting` is how many WHATSATs of this client connection wait on Places already: at
    /// `limits.max_pending_places_per_client` (or with pending work at its byte bound) the WHATSAT is
    /// answered at once with the failure object instead of waiting.
    pub fn whatsat(&mut self, cmd: &WhatsAt<'_>, client: Token, places_waiting: usize, out: &mut Vec<u8>) -> Whatsat {
        let Some(record) = self.records.get(cmd.client_id) else {
            // A record may be on its way: the IAMAT may have been answered elsewhere a moment ago.
            if self.unknown_grace.is_zero() || !self.neighbours.iter().any(|n| n.links_in > 0) {
                return Whatsat::UnknownClient;
            }
            let ticket = self.ticket();
            let deadline = self.now + self.unknown_grace;
            self.awaiting_record.entry(cmd.client_id.into()).or_default().push((client, ticket));
            return Whatsat::AwaitRecord { ticket, deadline };
        };
        let Some(places) = self.places.as_mut() else {
            record.write_line(out);
            out.extend_from_slice(&self.places_unconfigured);
            out.extend_from_slice(b"\n\n");
            return Whatsat::Answered;
        };
        let key = PlacesClient::key_for(record.location(), cmd.radius_km);
        if let Some(json) = places.cached(&key, cmd.bound, self.now) {
            record.write_line(out);
            out.extend_from_slice(json);
            out.extend_from_slice(b"\n\n");
            return Whatsat::Answered;
        }
        if let Err(json) = places.admit(places_waiting, self.limits.max_pending_places_per_client) {
            record.write_line(out);
            out.extend_from_slice(json);
            out.extend_from_slice(b"\n\n");
            return Whatsat::Answered;
        }
        self.next_ticket += 1;
        let ticket = self.next_ticket;
        let waiter = Waiter { client, ticket, bound: cmd.bound };
        if let Some(id) = places.join_or_create(key, record.location(), cmd.radius_km, waiter, self.now) {
            self.timers.add(self.now + places.timeout, Timer::Places(id));
        }
        Whatsat::Pending { ticket, at_line: record.to_line() }
    }

    /// A wait for `client_id`'s record ended without it: forget the waiter.
    pub fn stop_awaiting(&mut self, client_id: &[u8], client: Token, ticket: u64) {
        if let Some(waiters) = self.awaiting_record.get_mut(client_id) {
            waiters.retain(|&w| w != (client, ticket));
            if waiters.is_empty() {
                self.awaiting_record.remove(client_id);
            }
        }
    }

    /// Our sending link to `n` is live.
    pub fn on_link_out(&mut self, n: usize, token: Token) {
        self.neighbours[n].link = OutLink::Live(token);
        self.neighbours[n].live_seq = self.records.max_seq();
        self.neighbours[n].backoff = BACKOFF_FIRST;
        self.counters.links_up += 1;
    }

    /// Neighbour `n` linked to us. If our own link to it is waiting to redial, it is back: dial now.
    pub fn on_link_in(&mut self, n: usize) {
        self.neighbours[n].links_in += 1;
        self.counters.links_up += 1;
        if self.neighbours[n].link == OutLink::Backoff {
            self.outbox.dial_now.push(n);
        }
    }

    /// Our sending link to `n` on `token` is gone (if it is still the one we count): redial later. A live
    /// link may have lost what it carried since the neighbour last acknowledged: records that went down
    /// a tree through it are flooded again (`reflood_step`), so the servers below it get them another way.
    pub fn link_out_closed(&mut self, n: usize, token: Token) {
        let nb = &mut self.neighbours[n];
        if matches!(nb.link, OutLink::Live(t) | OutLink::Dialing(t) if t == token) {
            if matches!(nb.link, OutLink::Live(_)) {
                self.counters.links_down += 1;
                let after = nb.acked.max(nb.live_seq);
                // Only where records go down trees (without routes every record floods anyway).
                if after < self.records.max_seq() && !self.stopping && self.routes.me().is_some() {
                    self.refloods.retain(|r| r.neighbour != n);
                    self.refloods.push(Reflood { neighbour: n, after, cursor: 0 });
                }
            }
            let nb = &mut self.neighbours[n];
            nb.link = OutLink::Backoff;
            self.schedule_redial(n);
        }
    }

    /// An identified link from `n` is gone.
    pub fn link_in_closed(&mut self, n: usize) {
        let nb = &mut self.neighbours[n];
        nb.links_in = nb.links_in.saturating_sub(1);
    }

    /// Redial `n` after its backoff (jittered; doubling up to the cap).
    pub fn schedule_redial(&mut self, n: usize) {
        if self.stopping {
            return;
        }
        let delay = self.jitter(self.neighbours[n].backoff);
        let nb = &mut self.neighbours[n];
        nb.link = OutLink::Backoff;
        nb.backoff = (nb.backoff * 2).min(BACKOFF_CAP);
        self.timers.add(self.now + delay, Timer::Redial(n));
    }

    /// A jittered delay in [d/2, d] (xorshift; not for secrets).
    fn jitter(&mut self, d: Duration) -> Duration {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let half = d / 2;
        half + Duration::from_nanos(self.rng % (half.as_nanos() as u64 + 1))
    }

    /// A Places request ended (failed, to be retried, or answered: a response is shaped off the loop
    /// and comes back through [`places_woken`](Self::places_woken)).
    pub fn places_outcome(&mut self, id: u64, outcome: Outcome) {
        let Some(places) = self.places.as_mut() else { return };
        if let Some((replies, line)) = places.finish(id, outcome, self.now) {
            self.places_done(replies, &line);
        }
    }

    /// The helper threads woke the loop: take the resolver's address and the shaper's answers.
    pub fn places_woken(&mut self) {
        let Some(places) = self.places.as_mut() else { return };
        places.take_resolved();
        for (replies, line) in places.take_shaped(self.now) {
            self.places_done(replies, &line);
        }
    }

    /// Request `id`'s deadline passed: its waiters get the failure; returns the connection it was on,
    /// which the loop aborts.
    pub fn places_expired(&mut self, id: u64) -> Option<Token> {
        let places = self.places.as_mut()?;
        let (replies, conn, line) = places.expire(id, self.now)?;
        self.places_done(replies, &line);
        conn
    }

    /// The name does not resolve: every queued request fails.
    pub fn places_unresolvable(&mut self) {
        let Some(places) = self.places.as_mut() else { return };
        for (replies, line) in places.fail_unresolvable(self.now) {
            self.places_done(replies, &line);
        }
    }

    /// Logs a Places request that ended and queues its waiters' replies for the hand-off.
    fn places_done(&mut self, replies: Replies, line: &str) {
        self.log.event(format_args!("{line}"));
        self.outbox.places_replies.extend(replies.into_iter().map(|(w, body)| (w.client, w.ticket, body)));
    }

    /// An upstream connection finished a request and can be kept: returns until when it may stay idle,
    /// or `None` if the pool is full.
    pub fn places_idle(&mut self, token: Token) -> Option<Instant> {
        let places = self.places.as_mut()?;
        // With requests queued it takes the next at once (the hand-off), so it is kept whatever the pool.
        let keep = match places.idle_conn(token) {
            Some(keep) => keep,
            None if !places.queue.is_empty() => {
                places.idle.push(token);
                IDLE_KEEP
            }
            None => return None,
        };
        let until = self.now + keep;
        self.timers.add(until, Timer::Conn(token));
        Some(until)
    }

    /// An upstream connection closed.
    pub fn places_closed(&mut self, token: Token) {
        if let Some(places) = self.places.as_mut() {
            places.conn_closed(token);
        }
    }
}

/// Records a reflood looks at per step (one step per loop turn): bounded work, like a sync batch.
pub const REFLOOD_STEP: usize = 4096;

/// Records handed to a rewrite of the journal per step (a step per loop turn, or per tick of the timer).
const REWRITE_STEP: usize = 4096;
/// How soon after records were stored the loop looks at the journal (whether to rewrite it). Not armed
/// while nothing is stored: an idle server is not woken.
pub const JOURNAL_TICK: Duration = Duration::from_millis(100);
/// ... and while a rewrite walks the table.
pub const JOURNAL_TICK_REWRITING: Duration = Duration::from_millis(2);

/// The journal's rules: replay at start, replies and acknowledgements that wait for the disk, rewrites.
impl Ctx {
    /// Opens the journal and replays it into the record table, before the first accept. Each entry is
    /// offered as a record with the seq it was stored with; the seq counter resumes where the journal
    /// says (see `journal`'s replication id rule). Fails as the journal does (a corrupt middle, say).
    pub fn open_journal(
        &mut self,
        opts: &journal::Options,
        waker: Arc<mio::Waker>,
    ) -> Result<(), journal::JournalError> {
        let started = Instant::now();
        // Room for the table up front: growing the index on the way rehashes every id each time.
        let expected = journal::Journal::estimate_entries(&opts.dir) as usize;
        self.records.reserve(expected.min(1 << 26));
        let records = &mut self.records;
        // Retention applies to replayed records as to any: one past `max_age_s` by now is not kept.
        let now = self.wall;
        let mut unreadable = 0u64;
        // Each entry's fields by its shape alone (`journal::entry_fields`): it was checked before it was
        // stored and its CRC was checked just now; a full check again was half the replay's time.
        let (journal, replayed) =
            journal::Journal::open(opts, waker, &mut |seq, line| match journal::entry_fields(line) {
                Some(fields) => {
                    records.offer_with_seq(line, fields, now, seq);
                }
                None => unreadable += 1,
            })?;
        self.records.resume_seq_after(replayed.next_seq - 1);
        self.rid = replayed.rid.clone();
        self.peer_offsets = replayed.peers.into_iter().collect();
        self.durable = journal.durable();
        self.failed = journal.failed();
        let seconds = started.elapsed().as_secs_f64();
        self.replay = ReplayStats { seconds, entries: replayed.entries, cut_bytes: replayed.cut_bytes };
        let held = self.records.len();
        log::info!(
            "journal {}: replayed {} entries in {seconds:.3} s: {held} records, next seq {}, replication id {}",
            opts.dir.display(),
            replayed.entries,
            replayed.next_seq,
            self.rid
        );
        if unreadable > 0 {
            log::warn!("journal {}: {unreadable} entries are not AT lines (skipped)", opts.dir.display());
        }
        self.log.event(format_args!(
            "journal: replayed {} entries in {seconds:.3} s, {held} records, replication id {}",
            replayed.entries, self.rid
        ));
        self.journal = Some(journal);
        Ok(())
    }

    /// With `journal.fsync` = `always`, an IAMAT's reply is held until its record is durable.
    pub fn holds_replies(&self) -> bool {
        self.journal.as_ref().is_some_and(|j| j.mode() == journal::FsyncMode::Always)
    }

    /// Connection `token` waits until the journal has made durable every record up to `seq`. Waiters stay
    /// in seq order (seqs only grow); a run of waits of one connection is one entry.
    pub fn await_durable(&mut self, seq: u64, token: Token) {
        if let Some(back) = self.durable_waiters.back_mut() {
            if back.1 == token && back.0 <= seq {
                back.0 = seq;
                return;
            }
        }
        self.durable_waiters.push_back((seq, token));
    }

    /// Once per turn after the handlers: hands the journal what was appended (it never waits for the disk),
    /// reads how far it is durable (or failed), and puts the connections whose wait is over in `ready`.
    /// When some still wait, the writer thread is asked to wake the loop at its next fsync.
    pub fn journal_turn(&mut self, ready: &mut Vec<Token>) {
        let Some(j) = self.journal.as_mut() else { return };
        j.flush();
        if !self.durable_waiters.is_empty() {
            // Asked before reading, so an fsync that ends in between still wakes the loop.
            j.want_wake();
        }
        self.durable = j.durable();
        self.failed = j.failed();
        let reach = self.durable.max(self.failed);
        while let Some(&(seq, token)) = self.durable_waiters.front() {
            if seq > reach {
                break;
            }
            self.durable_waiters.pop_front();
            ready.push(token);
        }
    }

    /// Whether a connection's wait could end now (the writer got there between two checks this turn).
    pub fn durable_ready(&self) -> bool {
        let Some(j) = self.journal.as_ref() else { return false };
        self.durable_waiters.front().is_some_and(|&(seq, _)| seq <= j.durable().max(j.failed()))
    }

    /// Starts a rewrite of the journal when it has grown past `rewrite_ratio` times the table, and walks
    /// the table into it a step at a time while one runs. Returns when to look again.
    pub fn journal_housekeeping(&mut self) -> Option<Duration> {
        let j = self.journal.as_mut()?;
        let Some(mut cursor) = self.rewrite_cursor else {
            if j.wants_rewrite(self.records.len() as u64) {
                j.start_rewrite();
                self.rewrite_cursor = Some(0);
                self.log.event(format_args!("journal: rewriting to the {} live records", self.records.len()));
                return Some(JOURNAL_TICK_REWRITING);
            }
            return Some(JOURNAL_TICK);
        };
        if !j.rewrite_room() {
            return Some(JOURNAL_TICK_REWRITING);
        }
        // Slot order: a record keeps its slot while it lives, and one stored or replaced behind the cursor
        // is in the journal's live tail, which the rewrite keeps.
        let mut line = Vec::with_capacity(protocol::MAX_AT_LINE);
        for _ in 0..REWRITE_STEP {
            match self.records.next_from(cursor) {
                Some((next, record)) => {
                    line.clear();
                    record.write_line(&mut line);
                    j.rewrite_record(record.seq(), &line);
                    cursor = next;
                }
                None => {
                    j.finish_rewrite();
                    self.rewrite_cursor = None;
                    return Some(JOURNAL_TICK);
                }
            }
        }
        self.rewrite_cursor = Some(cursor);
        Some(JOURNAL_TICK_REWRITING)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Limits;
    use crate::protocol::{self, Command};
    use crate::server::auth::Auth;
    use crate::server::ctx::Neighbour;
    use crate::server::log::ServerLog;

    /// A context for server `A` with neighbours `B` and `C`, no sockets, no log, no Places.
    fn ctx(grace_ms: u64) -> Ctx {
        let limits = Limits { unknown_client_grace_ms: grace_ms, ..Limits::default() };
        let neighbours = ["B", "C"]
            .iter()
            .enumerate()
            .map(|(i, n)| Neighbour::new(n.to_string(), format!("127.0.0.1:{}", 9 + i).parse().unwrap()))
            .collect();
        Ctx::new("A", &["A", "B", "C"], &limits, ServerLog::disabled(), Auth::default(), neighbours, None, 42)
    }

    /// An AT line for `id`, with client time `t`, as a peer would send it.
    fn at(id: &str, t: &str) -> (Vec<u8>, AtFields) {
        let line = format!("AT B +0.100000000 {id} +34.068930-118.445127 {t}\n").into_bytes();
        let fields = protocol::parse_at(&line).expect("a valid AT line");
        (line, fields)
    }

    fn whatsat(ctx: &mut Ctx, line: &[u8], client: Token) -> (Whatsat, Vec<u8>) {
        let Command::WhatsAt(cmd) = protocol::parse_command(line) else { panic!("not a WHATSAT") };
        let mut out = Vec::new();
        (ctx.whatsat(&cmd, client, 0, &mut out), out)
    }

    /// A context for `A` in the line B - A - C (B index 1, C index 2), with its routes: A is the parent
    /// of C in B's tree and of B in C's, and of both in its own.
    fn routed() -> Ctx {
        let trees = crate::route::Trees::new(3, &[(0, 1), (0, 2)]);
        let routes = crate::route::Routes::new(&trees, &["A", "B", "C"], 0, &[1, 2]);
        ctx(100).with_routes(routes)
    }

    fn sends(ctx: &mut Ctx, live: &[bool]) -> Vec<(u32, Mode)> {
        let mut sends = Vec::new();
        ctx.route_floods(live, &mut sends);
        sends.iter().map(|s| (s.neighbour, s.mode)).collect()
    }

    #[test]
    fn only_a_newer_record_is_stored_and_it_goes_on_only_while_a_link_is_live() {
        let mut ctx = routed();
        let (line, fields) = at("kiwi", "1520023934.9");
        // No live link: stored, nothing to send.
        assert!(ctx.store_and_flood(&line, fields, None, Mode::Tree));
        assert!(ctx.outbox.flood_marks.is_empty());
        ctx.on_link_out(0, Token(5));
        ctx.on_link_out(1, Token(6));
        let (newer, fields) = at("kiwi", "1520023935.0");
        assert!(ctx.store_and_flood(&newer, fields, Some(0), Mode::Tree), "newer client time wins");
        assert_eq!(ctx.outbox.floods, newer);
        let (older, fields) = at("kiwi", "1520023934.0");
        assert!(!ctx.store_and_flood(&older, fields, None, Mode::Tree), "an older record is not stored");
        assert_eq!(ctx.outbox.flood_marks.len(), 1, "nor sent");
        assert_eq!(ctx.records().get(b"kiwi").unwrap().to_line(), &newer[..]);
        assert_eq!(ctx.counters.records_stored, 2);
    }

    /// The routing table of `routed()`, by hand: B's records (from B, slot 0) go to C only, C's to B
    /// only, A's own to both; a flood goes to every live link but its source; a tree record whose child
    /// link is down starts a repair: the record to the live children (in repair frames, passed on by every
    /// server), a notice to the tree parent it came from. A repair of a record stored just now goes to
    /// every live link but its source, the record itself; a repair of one held already sends a notice to
    /// the tree neighbours, which hold it too.
    #[test]
    fn records_follow_their_origins_tree_and_flood_where_it_is_broken() {
        let mut ctx = routed();
        ctx.on_link_out(0, Token(5));
        ctx.on_link_out(1, Token(6));
        let record = |server: &str, id: &str| {
            let line = format!("AT {server} +0.100000000 {id} +34.068930-118.445127 1520023934.9\n").into_bytes();
            let fields = protocol::parse_at(&line).unwrap();
            (line, fields)
        };
        // (origin, from, mode, live links, what is sent)
        type Row = (&'static str, Option<usize>, Mode, [bool; 2], &'static [(u32, Mode)]);
        let table: [Row; 7] = [
            ("B", Some(0), Mode::Tree, [true, true], &[(1, Mode::Tree)]),
            ("C", Some(1), Mode::Tree, [true, true], &[(0, Mode::Tree)]),
            ("A", None, Mode::Tree, [true, true], &[(0, Mode::Tree), (1, Mode::Tree)]),
            ("A", None, Mode::Tree, [true, false], &[(0, Mode::Repair)]),
            ("B", Some(0), Mode::Tree, [true, false], &[(0, Mode::Notice)]),
            ("B", Some(0), Mode::Flood, [true, true], &[(1, Mode::Flood)]),
            ("A", None, Mode::Flood, [true, true], &[(0, Mode::Flood), (1, Mode::Flood)]),
        ];
        for (i, (server, from, mode, live, want)) in table.into_iter().enumerate() {
            let (line, fields) = record(server, &format!("id{i}"));
            assert!(ctx.store_and_flood(&line, fields, from, mode));
            assert_eq!(sends(&mut ctx, &live), want, "row {i}: {server} from {from:?} {mode:?} live {live:?}");
        }
        // A flood from a neighbour floods on to the others.
        let (line, fields) = record("B", "zed");
        assert!(ctx.store_and_flood(&line, fields, Some(0), Mode::Flood));
        assert_eq!(sends(&mut ctx, &[true, true]), [(1, Mode::Flood)]);
        // A repair of B's record from C, new here: the record to B too, which it did not come from.
        let (line, fields) = record("B", "mended");
        assert!(ctx.repair_record(&line, fields, 1));
        assert_eq!(sends(&mut ctx, &[true, true]), [(0, Mode::Repair)]);
        // B's record down B's tree, then a notice from C (its child there): a notice back to B, and no
        // record crosses a link twice.
        let (line, fields) = record("B", "noticed");
        assert!(ctx.store_and_flood(&line, fields, Some(0), Mode::Tree));
        assert_eq!(sends(&mut ctx, &[true, true]), [(1, Mode::Tree)]);
        ctx.outbox.floods.clear(); // as the hand-off does
        assert!(ctx.notice_record(b"noticed", b"1520023934.9", 1));
        assert_eq!(sends(&mut ctx, &[true, true]), [(0, Mode::Notice)]);
        assert_eq!(ctx.outbox.floods, line, "the notice's record is queued as the store holds it");
        ctx.outbox.floods.clear();
        assert!(!ctx.notice_record(b"noticed", b"1520023934.9", 0), "relayed once");
        assert!(!ctx.notice_record(b"noticed", b"1520023935.0", 1), "another version");
        assert!(!ctx.notice_record(b"nobody", b"1520023934.9", 1), "no record");
        assert!(ctx.outbox.flood_marks.is_empty());
        assert_eq!((ctx.counters.notices_received, ctx.counters.notices_sent), (4, 2));
    }

    /// A live link that breaks before its neighbour acknowledged what went down a tree through it: those
    /// records (and only those: B's own go to C, not to B) are repaired, on every live link, the tree
    /// parent they came from included: as notices, since the tree neighbours hold them.
    #[test]
    fn a_link_that_breaks_unacknowledged_has_its_tree_records_flooded_again() {
        let mut ctx = routed();
        ctx.on_link_out(0, Token(5));
        ctx.on_link_out(1, Token(6));
        // C's record, which A sends down C's tree to B; B acknowledges it.
        let acked = "AT C +0.100000000 acked +34.068930-118.445127 1520023934.9\n";
        assert!(ctx.store_and_flood(
            acked.as_bytes(),
            protocol::parse_at(acked.as_bytes()).unwrap(),
            Some(1),
            Mode::Tree
        ));
        ctx.neighbours[0].acked = ctx.records().max_seq();
        let mut lines = Vec::new();
        for (id, server, from) in [("lost", "C", 1), ("mine", "A", 9), ("other", "B", 0)] {
            let line = format!("AT {server} +0.100000000 {id} +34.068930-118.445127 1520023934.9\n");
            let fields = protocol::parse_at(line.as_bytes()).unwrap();
            let from = (from != 9).then_some(from);
            assert!(ctx.store_and_flood(line.as_bytes(), fields, from, Mode::Tree));
            lines.push(line);
        }
        let _ = sends(&mut ctx, &[true, true]);
        ctx.outbox.floods.clear();
        ctx.link_out_closed(0, Token(5));
        assert!(ctx.reflood_step());
        while ctx.reflood_step() {}
        let again: Vec<(u32, Mode)> = sends(&mut ctx, &[false, true]);
        let text = String::from_utf8(ctx.outbox.floods.clone()).unwrap();
        // "lost" (C's, through A to B) and "mine" (A's own, to B) are sent again; "acked" was
        // acknowledged, "other" (B's own) never went to B.
        assert!(text.contains(&lines[1]), "{text}");
        assert!(!text.contains("acked") && !text.contains("other"), "{text}");
        // "lost" goes back to C, its tree parent, and "mine" to C although C has it: C must relay them for
        // the repair to reach the servers beyond the break. C holds both, so it gets notices.
        assert_eq!(again, [(1, Mode::Notice), (1, Mode::Notice)], "{text}");
        assert!(text.contains(&lines[0]), "{text}");
        assert_eq!(ctx.counters.records_reflooded, 2);
        // Those versions were relayed in a repair here: another copy of one is not passed on again.
        let mine = protocol::parse_at(lines[1].as_bytes()).unwrap();
        assert!(!ctx.repair_record(lines[1].as_bytes(), mine, 1));
        assert!(ctx.outbox.flood_marks.is_empty());
        // A version held here and never relayed is passed on once, though it is not stored again.
        let other = protocol::parse_at(lines[2].as_bytes()).unwrap();
        ctx.on_link_out(0, Token(7));
        assert!(!ctx.repair_record(lines[2].as_bytes(), other, 1), "held already: not stored");
        assert_eq!(sends(&mut ctx, &[true, true]), [(0, Mode::Notice)], "passed on, not back to its source");
        assert!(!ctx.repair_record(lines[2].as_bytes(), other, 0), "once");
        assert!(ctx.outbox.flood_marks.is_empty());
    }

    /// A ring of four, O - S - C - D - O, whose link S - C is down. O's tree reaches C through S (BFS from
    /// O, neighbours in config order: S before D), so C can get O's record only the other way round:
    /// S, where the tree breaks, sends O a notice; O, holding it, passes the repair on once to D (its
    /// other link), as a notice too, since D got the record down O's tree; D sends the record itself to
    /// C. Three records in all, N - 1, as with every link up; two notices. Each step is the context of
    /// one server of the ring.
    #[test]
    fn in_a_ring_a_broken_tree_link_is_repaired_the_other_way_round() {
        let names = ["O", "S", "C", "D"];
        let trees = crate::route::Trees::new(4, &[(0, 1), (1, 2), (2, 3), (3, 0)]);
        // The context of server `me`, its sending links live as `live` says (neighbours by index).
        let server = |me: usize, neighbours: [usize; 2]| {
            let limits = Limits::default();
            let ns = neighbours
                .iter()
                .map(|&n| Neighbour::new(names[n].to_string(), format!("127.0.0.1:{}", 9 + n).parse().unwrap()))
                .collect();
            let routes = crate::route::Routes::new(&trees, &names, me, &neighbours);
            let mut ctx = Ctx::new(names[me], &names, &limits, ServerLog::disabled(), Auth::default(), ns, None, 42)
                .with_routes(routes);
            ctx.on_link_out(0, Token(5));
            ctx.on_link_out(1, Token(6));
            ctx
        };
        let line = b"AT O +0.100000000 ringed +34.068930-118.445127 1520023934.9\n";
        let fields = protocol::parse_at(line).unwrap();
        // S (neighbours O, C): the record comes down O's tree from O; its child C is cut off.
        let mut s = server(1, [0, 2]);
        assert!(s.store_and_flood(line, fields, Some(0), Mode::Tree));
        assert_eq!(sends(&mut s, &[true, false]), [(0, Mode::Notice)], "back to O, as a notice");
        let (id, time) = (&b"ringed"[..], &b"1520023934.9"[..]);
        // O (neighbours S, D) has it (it sent it) and passes the repair on once, to D only.
        let mut o = server(0, [1, 3]);
        assert!(o.store_and_flood(line, fields, None, Mode::Tree));
        assert_eq!(sends(&mut o, &[true, true]), [(0, Mode::Tree), (1, Mode::Tree)]);
        assert!(o.notice_record(id, time, 0), "held already: relayed");
        assert_eq!(sends(&mut o, &[true, true]), [(1, Mode::Notice)]);
        // D (neighbours C, O) got it down O's tree, has no child there, and passes the repair to C, which
        // is not its tree neighbour: the record itself.
        let mut d = server(3, [2, 0]);
        assert!(d.store_and_flood(line, fields, Some(1), Mode::Tree));
        assert_eq!(sends(&mut d, &[true, true]), [], "D is a leaf of O's tree");
        assert!(d.notice_record(id, time, 1));
        assert_eq!(sends(&mut d, &[true, true]), [(0, Mode::Repair)]);
        // C (neighbours S, D) stores it, and passes it on to every live link but D: none (S - C is down).
        let mut c = server(2, [1, 3]);
        assert!(c.repair_record(line, fields, 1), "C has it, from D");
        assert_eq!(sends(&mut c, &[false, true]), []);
    }

    /// Every stored record goes to the journal with its seq; a wait for a seq ends only once the writer
    /// has made it durable, and the writer wakes the poll for it; the journal replays into a new context.
    #[test]
    fn stored_records_are_journalled_and_waits_end_once_durable() {
        let dir = std::env::temp_dir().join(format!("herd-herd-rules-journal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut poll = mio::Poll::new().unwrap();
        let waker = Arc::new(mio::Waker::new(poll.registry(), Token(0)).unwrap());
        let opts = journal::Options::new(dir.clone(), journal::FsyncMode::Always);
        let mut first = ctx(100);
        first.open_journal(&opts, Arc::clone(&waker)).unwrap();
        assert!(first.holds_replies());
        let (line, fields) = at("kiwi", "1520023934.9");
        assert!(first.store_and_flood(&line, fields, None, Mode::Tree));
        assert_eq!(first.last_seq, 1);
        first.await_durable(1, Token(7));
        first.await_durable(1, Token(7));
        assert_eq!(first.durable_waiters.len(), 1, "a run of waits of one connection is one entry");
        let mut ready = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut events = mio::Events::with_capacity(4);
        loop {
            first.journal_turn(&mut ready);
            if !ready.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "the writer never made seq 1 durable");
            poll.poll(&mut events, Some(Duration::from_secs(1))).unwrap();
        }
        assert_eq!(ready, vec![Token(7)]);
        assert!(first.durable >= 1);
        first.journal.as_mut().unwrap().close();
        let mut second = ctx(100);
        second.open_journal(&opts, waker).unwrap();
        assert_eq!(second.records().get(b"kiwi").unwrap().to_line(), line);
        assert_eq!((second.records().max_seq(), second.rid.clone()), (1, first.rid.clone()));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_whatsat_for_an_unknown_client_waits_only_while_a_neighbour_is_linked() {
        let mut ctx = ctx(100);
        let ask = b"WHATSAT kiwi 10 5";
        assert_eq!(whatsat(&mut ctx, ask, Token(1)).0, Whatsat::UnknownClient, "no link in: no wait");
        ctx.on_link_in(0);
        assert_eq!(ctx.outbox.dial_now, vec![0], "a neighbour that dialed us is dialed back at once");
        let (decision, _) = whatsat(&mut ctx, ask, Token(1));
        let Whatsat::AwaitRecord { ticket, deadline } = decision else { panic!("{decision:?}") };
        assert_eq!(deadline, ctx.now + Duration::from_millis(100));
        // A local IAMAT does not end the wait; the record from the herd does.
        let (line, fields) = at("kiwi", "1520023934.9");
        ctx.store_and_flood(&line, fields, None, Mode::Tree);
        assert!(ctx.outbox.records_arrived.is_empty());
        let (line, fields) = at("kiwi", "1520023935.9");
        ctx.store_and_flood(&line, fields, Some(0), Mode::Flood);
        assert_eq!(ctx.outbox.records_arrived, vec![(Token(1), ticket)]);
        // Now known, and without Places: answered at once with the AT line and the failure object.
        let (decision, out) = whatsat(&mut ctx, ask, Token(1));
        assert_eq!(decision, Whatsat::Answered);
        assert!(out.starts_with(&line) && out.ends_with(b"\n\n"), "{}", String::from_utf8_lossy(&out));
    }

    #[test]
    fn a_peer_record_must_name_a_server_of_the_herd_and_not_come_from_the_future() {
        let ctx = ctx(100);
        let (line, fields) = at("kiwi", "1520023934.9");
        assert_eq!(ctx.check_peer_record(&line), Ok(fields));
        let stranger = b"AT Z +0.100000000 kiwi +34.068930-118.445127 1520023934.9\n";
        assert_eq!(ctx.check_peer_record(stranger), Err(protocol::AtRefusal::Field("unknown_server")));
        // The skew allowed is 300 s by default: an hour ahead is refused, a minute ahead is not.
        let ahead = |secs: u64| format!("AT B +0.100000000 kiwi +34.068930-118.445127 {}\n", ctx.wall.secs + secs);
        let refused = ctx.check_peer_record(ahead(3600).as_bytes());
        assert_eq!(refused, Err(protocol::AtRefusal::Field("client_time_ahead")));
        assert!(ctx.check_peer_record(ahead(60).as_bytes()).is_ok());
        assert_eq!(ctx.check_peer_record(b"HELLO A B n\n"), Err(protocol::AtRefusal::NotARecord));
    }

    #[test]
    fn a_wait_that_ends_without_its_record_is_forgotten() {
        let mut ctx = ctx(100);
        ctx.on_link_in(1);
        let Whatsat::AwaitRecord { ticket, .. } = whatsat(&mut ctx, b"WHATSAT kiwi 10 5", Token(3)).0 else {
            panic!("expected a wait")
        };
        ctx.stop_awaiting(b"kiwi", Token(3), ticket);
        let (line, fields) = at("kiwi", "1520023935.9");
        ctx.store_and_flood(&line, fields, Some(1), Mode::Flood);
        assert!(ctx.outbox.records_arrived.is_empty());
    }

    #[test]
    fn a_lost_sending_link_redials_after_a_growing_jittered_backoff() {
        let mut ctx = ctx(100);
        ctx.neighbours[0].link = OutLink::Dialing(Token(7));
        ctx.on_link_out(0, Token(7));
        ctx.link_out_closed(0, Token(8));
        assert_eq!(ctx.neighbours[0].link, OutLink::Live(Token(7)), "a stale token changes nothing");
        ctx.link_out_closed(0, Token(7));
        assert_eq!(ctx.neighbours[0].link, OutLink::Backoff);
        assert_eq!(ctx.counters.links_down, 1);
        let wait = ctx.timers.timeout(ctx.now).expect("a redial is armed");
        assert!(wait >= BACKOFF_FIRST / 2 && wait <= BACKOFF_FIRST + Duration::from_millis(1), "{wait:?}");
        assert_eq!(ctx.neighbours[0].backoff, BACKOFF_FIRST * 2);
        ctx.stopping = true;
        ctx.schedule_redial(1);
        assert_eq!(ctx.timers.len(), 1, "no redial while stopping");
    }
}
