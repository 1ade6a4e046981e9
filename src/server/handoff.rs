//! The hand-off: after every handler, the loop delivers what it left in `ctx.outbox` to the
//! connections it is for, until nothing is left, so all of it happens in the same turn.
//!
//! - records stored → every live sending peer link but the one each came from (the flood);
//! - WHATSATs whose record arrived from the herd → their clients;
//! - Places answers → the clients waiting on them;
//! - queued Places requests → idle pooled connections, or new ones while under the limit;
//! - neighbours that linked to us while our link to them was down → dialled now.
//!
//! Delivering can make more (a client answered may store nothing, but a Places failure may start the
//! next request), hence the loop. Every delivery goes through the `Connection` trait.

use super::conn::{Connection, Conns, Delivery};
use super::ctx::{Ctx, OutLink};
use super::places_client::Address;
use super::sockets;
use mio::Token;

/// The hand-off's reusable scratch: nothing is allocated per flood in steady state.
#[derive(Default)]
pub struct HandOff {
    /// The live sending links of the flood being delivered: (neighbour, token).
    live_links: Vec<(usize, Token)>,
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

    /// Hands the records stored by the last handler to every live sending link but the one each came
    /// from. Returns whether there was anything.
    fn flood(&mut self, conns: &mut Conns, ctx: &mut Ctx, scratch: &mut [u8]) -> bool {
        if ctx.outbox.flood_marks.is_empty() {
            return false;
        }
        self.live_links.clear();
        for (i, n) in ctx.neighbours.iter().enumerate() {
            if let OutLink::Live(t) = n.link {
                self.live_links.push((i, t));
            }
        }
        let mut floods = std::mem::take(&mut ctx.outbox.floods);
        let mut marks = std::mem::take(&mut ctx.outbox.flood_marks);
        for &(from, start, end) in &marks {
            let line = &floods[start as usize..end as usize];
            let mut sent_to = 0;
            for &(i, token) in &self.live_links {
                if Some(i) != from {
                    conns.with(token, ctx, scratch, |c, ctx, s| {
                        c.deliver(Delivery::Record(line), ctx, s);
                        sent_to += 1;
                    });
                } else {
                    conns.with(token, ctx, scratch, |c, ctx, s| c.deliver(Delivery::Advanced, ctx, s));
                }
            }
            if sent_to > 0 {
                ctx.log.peer("flood", &format!("to {sent_to} neighbours"), line);
            }
        }
        // Keep both allocations.
        floods.clear();
        marks.clear();
        ctx.outbox.floods = floods;
        ctx.outbox.flood_marks = marks;
        true
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
