//! The hand-off: after every handler, the loop delivers what it left in `ctx.outbox` to the
//! connections it is for, until nothing is left, so all of it happens in the same turn.
//!
//! - records stored → the peer links their origin's tree says (or every live one but the source, when a
//!   record floods: see `route.rs`);
//! - WHATSATs whose record arrived from the herd → their clients;
//! - Places answers → the clients waiting on them;
//! - queued Places requests → idle pooled connections, or new ones while under the limit;
//! - neighbours that linked to us while our link to them was down → dialled now.
//!
//! Delivering can make more (a client answered may store nothing, but a Places failure may start the
//! next request), hence the loop. Every delivery goes through the `Connection` trait.

use super::conn::{Connection, Conns, Delivery};
use super::ctx::{Ctx, OutLink, Send};
use super::places_client::Address;
use super::sockets;
use crate::route::Mode;
use mio::Token;

/// The hand-off's reusable scratch: nothing is allocated per flood in steady state.
#[derive(Default)]
pub struct HandOff {
    /// Per neighbour, whether our sending link is live, and its token.
    live: Vec<bool>,
    tokens: Vec<Option<Token>>,
    /// What the routes decided for the records being delivered.
    sends: Vec<Send>,
    /// The neighbour names of a logged send (kept: no allocation per record logged).
    log_to: String,
    /// Records sent per neighbour in this hand-off, by mode (tree, flood, repair, notice), for the log.
    log_counts: Vec<[u64; 4]>,
}

impl HandOff {
    /// Delivers everything in the outbox, and what delivering it produced, until it is empty.
    pub fn run(&mut self, conns: &mut Conns, ctx: &mut Ctx, scratch: &mut [u8]) {
        loop {
            let mut worked = self.flood(conns, ctx, scratch);
            while let Some((token, ticket)) = ctx.outbox.records_arrived.pop() {
                worked = true;
                conns.with(token, ctx, scratch, |c, ctx, s| c.deliver(Delivery::RecordArrived { ticket }, ctx, s));
            }
            while let Some((token, ticket, json)) = ctx.outbox.places_replies.pop() {
                worked = true;
                let answer = Delivery::PlacesAnswer { ticket, json: &json };
                conns.with(token, ctx, scratch, |c, ctx, s| c.deliver(answer, ctx, s));
            }
            worked |= pump_places(conns, ctx, scratch);
            while let Some(n) = ctx.outbox.dial_now.pop() {
                if ctx.neighbours[n].link == OutLink::Backoff && !ctx.stopping {
                    sockets::dial_peer(n, conns, ctx);
                }
            }
            if !worked {
                return;
            }
        }
    }

    /// Hands the records stored by the last handler to the links the routes chose for each (its origin's
    /// tree, or every live link but its source), and tells every other live link that this server's
    /// stream moved on. Returns whether there was anything.
    fn flood(&mut self, conns: &mut Conns, ctx: &mut Ctx, scratch: &mut [u8]) -> bool {
        if ctx.outbox.flood_marks.is_empty() {
            return false;
        }
        self.live.clear();
        self.tokens.clear();
        for n in &ctx.neighbours {
            let token = match n.link {
                OutLink::Live(t) => Some(t),
                _ => None,
            };
            self.live.push(token.is_some());
            self.tokens.push(token);
        }
        self.sends.clear();
        ctx.route_floods(&self.live, &mut self.sends);
        let floods = std::mem::take(&mut ctx.outbox.floods);
        for send in &self.sends {
            let line = &floods[send.start as usize..send.end as usize];
            if let Some(token) = self.tokens[send.neighbour as usize] {
                let record = Delivery::Record { line, mode: send.mode };
                conns.with(token, ctx, scratch, |c, ctx, s| c.deliver(record, ctx, s));
            }
        }
        // Links that got nothing still learn that the stream moved on (their `OFF` lines are paced).
        for token in self.tokens.iter().flatten() {
            conns.with(*token, ctx, scratch, |c, ctx, s| c.deliver(Delivery::Advanced, ctx, s));
        }
        if ctx.log.logs_records() {
            log_sends(ctx, &self.sends, &floods, &mut self.log_to);
        } else if ctx.log.logs_peer_counts() {
            log_send_counts(ctx, &self.sends, &mut self.log_counts);
        }
        // Keep the allocation.
        let mut floods = floods;
        floods.clear();
        ctx.outbox.floods = floods;
        true
    }
}

/// One log line per record sent: where it went, and how (`tree` or `flood`). A record's sends are
/// consecutive in `sends` (`route_floods` makes them a record at a time).
fn log_sends(ctx: &mut Ctx, sends: &[Send], floods: &[u8], to: &mut String) {
    for group in sends.chunk_by(|a, b| (a.start, a.end) == (b.start, b.end)) {
        to.clear();
        to.push_str(group[0].mode.name());
        to.push(':');
        for s in group {
            to.push(' ');
            to.push_str(&ctx.neighbours[s.neighbour as usize].name);
        }
        ctx.log.peer("flood", to, &floods[group[0].start as usize..group[0].end as usize]);
    }
}

/// One log line per neighbour that this hand-off sent records to, with how many went down a tree, as
/// floods and as repairs, and how many repair notices it got, if any (`log_detail` `io`).
fn log_send_counts(ctx: &mut Ctx, sends: &[Send], counts: &mut Vec<[u64; 4]>) {
    counts.clear();
    counts.resize(ctx.neighbours.len(), [0; 4]);
    // In declaration order: `mode as usize`.
    const MODES: [Mode; 4] = [Mode::Tree, Mode::Flood, Mode::Repair, Mode::Notice];
    for s in sends {
        counts[s.neighbour as usize][s.mode as usize] += 1;
    }
    for (n, c) in counts.iter().enumerate().filter(|(_, c)| **c != [0; 4]) {
        let counts: [(&str, u64); 4] = std::array::from_fn(|i| (MODES[i].name(), c[i]));
        // `notice=` only when there were notices: they come with repairs, and the line is written per
        // hand-off and neighbour.
        let shown = if c[3] == 0 { &counts[..3] } else { &counts[..] };
        ctx.log.peer_counts("peer-send", &ctx.neighbours[n].name, shown);
    }
}

/// Starts queued Places requests on idle pooled connections, or on new ones while fewer than the
/// limit are open. Returns whether anything happened.
fn pump_places(conns: &mut Conns, ctx: &mut Ctx, scratch: &mut [u8]) -> bool {
    let mut worked = false;
    loop {
        let Some(places) = ctx.places.as_mut() else { return worked };
        let Some(&id) = places.queue.front() else { return worked };
        if !places.requests.contains_key(&id) {
            places.queue.pop_front(); // already answered (its deadline passed)
            continue;
        }
        let addr = match &places.address {
            Address::Ready(a) => *a,
            Address::Resolving => return worked,
            Address::Failed(_) => {
                ctx.places_unresolvable();
                return true;
            }
        };
        let token = if let Some(t) = places.idle.pop() {
            t
        } else if places.conns < places.max_conns {
            match sockets::dial_places(addr, conns, ctx) {
                Some(t) => t,
                // A connect that failed at once answered the request at the head of the queue:
                // that is work (its replies are waiting to be handed out).
                None => {
                    let head = ctx.places.as_ref().and_then(|p| p.queue.front().copied());
                    return worked || head != Some(id);
                }
            }
        } else {
            return worked;
        };
        let places = ctx.places.as_mut().expect("checked");
        places.queue.pop_front();
        let bytes = places.assign(id, token).map(<[u8]>::to_vec).expect("checked above");
        worked = true;
        conns.with(token, ctx, scratch, |c, ctx, s| c.deliver(Delivery::Request { id, bytes: &bytes }, ctx, s));
    }
}
