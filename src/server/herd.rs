//! The herd's rules, over [`Ctx`]: what storing a record means, how a WHATSAT is decided, how a wait for
//! a record from the herd starts and ends, how neighbour links are counted and redialled, and what a
//! finished Places request hands to its waiters.
//!
//! Connections call these as methods of `Ctx` (`ctx.store_and_flood(…)`, `ctx.whatsat(…)`); none of them
//! touches a socket. Their effects on other connections go to `ctx.outbox`, which the loop delivers
//! right after the handler (`handoff.rs`). So every rule here can be tested with a `Ctx` alone (see the
//! tests at the end).

use super::ctx::{Ctx, OutLink, BACKOFF_CAP, BACKOFF_FIRST};
use super::places_client::{Outcome, PlacesClient, Replies, Waiter, IDLE_KEEP};
use super::timer::Timer;
use crate::protocol::{self, AtFields, WhatsAt};
use mio::Token;
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
    /// Stores an `AT` line if it is the newest record of its client, and floods it if so.
    /// `from` is the neighbour it came from (it is not sent back there), `None` for a client's IAMAT.
    pub fn store_and_flood(&mut self, line: &[u8], fields: AtFields, from: Option<usize>) -> bool {
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
        let any_link =
            self.neighbours.iter().enumerate().any(|(i, n)| Some(i) != from && matches!(n.link, OutLink::Live(_)));
        if any_link {
            let floods = &mut self.outbox.floods;
            let start = floods.len() as u32;
            floods.extend_from_slice(line);
            self.outbox.flood_marks.push((from, start, floods.len() as u32));
        }
        true
    }

    /// Checks a record from a peer against every rule a client's IAMAT obeys, plus the herd's own: the
    /// server it names is a server of the config.
    pub fn check_peer_record(&self, line: &[u8]) -> Result<AtFields, protocol::AtRefusal> {
        let fields = protocol::check_at(line)?;
        let field = |r: (u32, u32)| &line[r.0 as usize..r.1 as usize];
        if !self.herd_names.iter().any(|n| **n == *field(fields.server)) {
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

    /// Our sending link to `n` on `token` is gone (if it is still the one we count): redial later.
    pub fn link_out_closed(&mut self, n: usize, token: Token) {
        let nb = &mut self.neighbours[n];
        if matches!(nb.link, OutLink::Live(t) | OutLink::Dialing(t) if t == token) {
            if matches!(nb.link, OutLink::Live(_)) {
                self.counters.links_down += 1;
            }
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

    /// An upstream connection finished a request and can be kept: returns false if the pool is full.
    pub fn places_idle(&mut self, token: Token) -> bool {
        let Some(places) = self.places.as_mut() else { return false };
        let kept = !places.queue.is_empty() || places.idle_conn(token);
        if kept && !places.idle.contains(&token) {
            places.idle.push(token);
        }
        if kept {
            self.timers.add(self.now + IDLE_KEEP, Timer::Conn(token));
        }
        kept
    }

    /// An upstream connection closed.
    pub fn places_closed(&mut self, token: Token) {
        if let Some(places) = self.places.as_mut() {
            places.conn_closed(token);
        }
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

    #[test]
    fn only_a_newer_record_is_stored_and_it_floods_to_live_links_but_its_source() {
        let mut ctx = ctx(100);
        let (line, fields) = at("kiwi", "1520023934.9");
        // No live link: stored, nothing to flood.
        assert!(ctx.store_and_flood(&line, fields, None));
        assert!(ctx.outbox.flood_marks.is_empty());
        ctx.on_link_out(0, Token(5));
        ctx.on_link_out(1, Token(6));
        let (newer, fields) = at("kiwi", "1520023935.0");
        assert!(ctx.store_and_flood(&newer, fields, Some(0)), "newer client time wins");
        assert_eq!(ctx.outbox.flood_marks, vec![(Some(0), 0, newer.len() as u32)]);
        assert_eq!(ctx.outbox.floods, newer);
        let (older, fields) = at("kiwi", "1520023934.0");
        assert!(!ctx.store_and_flood(&older, fields, None), "an older record is not stored");
        assert_eq!(ctx.outbox.flood_marks.len(), 1, "nor flooded");
        assert_eq!(ctx.records().get(b"kiwi").unwrap().to_line(), &newer[..]);
        assert_eq!(ctx.counters.records_stored, 2);
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
        ctx.store_and_flood(&line, fields, None);
        assert!(ctx.outbox.records_arrived.is_empty());
        let (line, fields) = at("kiwi", "1520023935.9");
        ctx.store_and_flood(&line, fields, Some(0));
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
        ctx.store_and_flood(&line, fields, Some(1));
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
