//! The simulated network and the event loop around the real `Ctx`s (see the module documentation of
//! `sim`). Time is in microseconds of simulated time; one *turn* of a server is everything that happens
//! to it at one instant, after which its links are flushed, one message per link.

use super::events::{push_frames, Edge, Entry, Ev, Link, Msg, Part, Rec};
use super::{connected, graph, Outcome, Params, Rng, Scheme};
use crate::config::Limits;
use crate::protocol::{self, IAmAt, Timestamp};
use crate::route::{Mode, Routes, Trees};
use crate::server::auth::Auth;
use crate::server::conn::peer::frame;
use crate::server::ctx::{Ctx, Neighbour, OutLink, Send};
use crate::server::log::ServerLog;
use mio::Token;
use std::collections::{BinaryHeap, HashMap};

/// A millisecond, in the simulation's microseconds.
const MS: u64 = 1000;
/// A frame's header (`T 00170\n`, or `F`, `R`, `N`): `conn/peer/frame.rs` (`HEADER`).
const FRAME_HEADER: u64 = frame::HEADER as u64;
/// The sending side pings every `peer_dead_after_ms / 3` (1 s by default), which flushes a paced `OFF`.
const PING_EVERY: u64 = 1000 * MS;
/// The wall clock at simulated time 0; every client time is this plus the simulated time.
const BASE_SECS: u64 = 1_700_000_000;
const LOCATION: &[u8] = b"+34.068930-118.445127";

pub(super) struct Sim {
    p: Params,
    ctxs: Vec<Ctx>,
    trees: Trees,
    names: Vec<String>,
    edges: Vec<Edge>,
    links: Vec<Link>,
    /// `out_links[s][slot]`: the directed link from `s` to its neighbour in `slot`.
    out_links: Vec<Vec<u32>>,
    heap: BinaryHeap<Entry>,
    seq: u64,
    now: u64,
    rng: Rng,
    /// The workload, drawn up front: (time, server, client).
    iamats: Vec<(u64, u32, u32)>,
    last_of_client: Vec<Option<u32>>,
    recs: Vec<Rec>,
    by_line: HashMap<Box<[u8]>, u32>,
    /// Per record: its sends in tree frames, in flood frames, in repair frames, in catch-ups.
    rec_sends: Vec<[u32; 4]>,
    /// Newest records held, per server; servers holding all of them; when the last one got there.
    held: Vec<u32>,
    clients_used: u32,
    complete: usize,
    converged_at: Option<u64>,
    last_fault: u64,
    /// Per server, this turn: it stored records (every live link flushes, as `Delivery::Advanced` makes
    /// them), and it took part at all.
    advanced: Vec<bool>,
    touched: Vec<bool>,
    live: Vec<bool>,
    sends: Vec<Send>,
    line: Vec<u8>,
    out: Outcome,
}

impl Sim {
    pub(super) fn new(p: &Params) -> Sim {
        let mut rng = Rng::new(p.seed);
        let n = p.servers;
        let graph = p.graph.clone().unwrap_or_else(|| graph(n, p.degree, &mut rng));
        let trees = Trees::new(n, &graph);
        let names: Vec<String> = (0..n).map(|i| format!("s{i}")).collect();
        let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut adjacent = vec![Vec::new(); n];
        for &(a, b) in &graph {
            adjacent[a].push(b);
            adjacent[b].push(a);
        }
        adjacent.iter_mut().for_each(|l| l.sort_unstable());
        let limits = Limits::default();
        let wall = Timestamp { secs: BASE_SECS, nanos: 0 };
        let addr: std::net::SocketAddr = "127.0.0.1:9".parse().expect("an address");
        let ctxs = (0..n)
            .map(|s| {
                let neighbours = adjacent[s].iter().map(|&y| Neighbour::new(names[y].clone(), addr)).collect();
                let seed = p.seed ^ (s as u64 + 1);
                let ctx = Ctx::new(
                    &names[s],
                    &name_refs,
                    &limits,
                    ServerLog::disabled(),
                    Auth::default(),
                    neighbours,
                    None,
                    seed,
                );
                let mut ctx = match p.scheme {
                    Scheme::Tree => ctx.with_routes(Routes::new(&trees, &name_refs, s, &adjacent[s])),
                    Scheme::Flood => ctx,
                };
                ctx.wall = wall;
                ctx
            })
            .collect();
        let slot = |x: usize, y: usize| adjacent[x].binary_search(&y).expect("a neighbour");
        let mut edges = Vec::with_capacity(graph.len());
        let mut links = Vec::with_capacity(2 * graph.len());
        let mut out_links: Vec<Vec<u32>> = adjacent.iter().map(|l| vec![0; l.len()]).collect();
        for (e, &(a, b)) in graph.iter().enumerate() {
            let base = links.len() as u32;
            for (from, to) in [(a, b), (b, a)] {
                out_links[from][slot(from, to)] = links.len() as u32;
                links.push(Link {
                    from,
                    to,
                    edge: e as u32,
                    rev: if from == a { base + 1 } else { base },
                    slot_from: slot(from, to),
                    slot_to: slot(to, from),
                    delay: rng.range(p.delay_ms.0, p.delay_ms.1) * MS,
                    pending: Vec::new(),
                    sync: None,
                    synced: false,
                    off_sent: 0,
                    off_at: 0,
                    carried: false,
                    recv_off: 0,
                    ack_pending: None,
                });
            }
            edges.push(Edge { ends: [a, b], links: [base, base + 1], up: true, epoch: 0 });
        }
        let bound = (2 * graph.len() - (n - 1)) as u64;
        let out = Outcome::new(p.clone(), graph.len(), bound);
        let mut sim = Sim {
            p: p.clone(),
            ctxs,
            trees,
            names,
            edges,
            links,
            out_links,
            heap: BinaryHeap::new(),
            seq: 0,
            now: 0,
            rng,
            iamats: Vec::new(),
            last_of_client: vec![None; p.clients],
            recs: Vec::with_capacity(p.records),
            by_line: HashMap::with_capacity(p.records),
            rec_sends: Vec::with_capacity(p.records),
            held: vec![0; n],
            clients_used: 0,
            complete: 0,
            converged_at: None,
            last_fault: 0,
            advanced: vec![false; n],
            touched: vec![false; n],
            live: Vec::new(),
            sends: Vec::new(),
            line: Vec::new(),
            out,
        };
        sim.plan(&graph);
        sim
    }

    fn at(&mut self, time: u64, ev: Ev) {
        self.seq += 1;
        self.heap.push(Entry { time, seq: self.seq, ev });
    }

    /// Draws the workload and the faults, and schedules them: every link comes up at time 0, the IAMATs
    /// start at 1 ms.
    fn plan(&mut self, graph: &[(usize, usize)]) {
        for l in 0..self.links.len() as u32 {
            self.at(0, Ev::LinkUp { link: l });
        }
        let p = self.p.clone();
        for i in 0..p.records {
            let server = self.rng.below(p.servers as u64) as u32;
            // As many clients as records: one record each, so none is ever overtaken by a newer one.
            let client = if p.clients >= p.records { i as u32 } else { self.rng.below(p.clients as u64) as u32 };
            let time = MS + i as u64 * p.gap_us;
            self.iamats.push((time, server, client));
            self.last_of_client[client as usize] = Some(i as u32);
            self.at(time, Ev::Iamat(i as u32));
        }
        self.clients_used = self.last_of_client.iter().flatten().count() as u32;
        let load_end = MS + p.records as u64 * p.gap_us;
        // Permanent failures first: the given ones, then random links whose loss keeps the graph connected.
        let mut cut = vec![false; graph.len()];
        for &(e, ms) in &p.cuts {
            cut[e] = true;
            self.at(ms * MS, Ev::Fail { edge: e as u32, heal_at: None });
        }
        let mut tries = 0;
        let mut permanent = 0;
        while permanent < p.permanent && tries < 100 * (p.permanent + 1) {
            tries += 1;
            let e = self.rng.below(graph.len() as u64) as usize;
            if cut[e] {
                continue;
            }
            cut[e] = true;
            if !connected(p.servers, graph, &cut) {
                cut[e] = false;
                continue;
            }
            permanent += 1;
            let time = self.rng.range(MS, load_end);
            self.at(time, Ev::Fail { edge: e as u32, heal_at: None });
        }
        // Failures that heal: an edge fails again only once it is back up and relinked.
        let mut free_at = vec![0u64; graph.len()];
        let mut drawn = 0;
        tries = 0;
        while drawn < p.failures && tries < 100 * (p.failures + 1) {
            tries += 1;
            let e = self.rng.below(graph.len() as u64) as usize;
            let time = self.rng.range(MS, load_end);
            if cut[e] || time < free_at[e] {
                continue;
            }
            let outage = self.rng.range(p.outage_ms.0, p.outage_ms.1) * MS;
            let [l0, l1] = self.edges[e].links;
            let relink = self.links[l0 as usize].delay + self.links[l1 as usize].delay;
            free_at[e] = time + outage + relink + MS;
            drawn += 1;
            self.at(time, Ev::Fail { edge: e as u32, heal_at: Some(time + outage) });
        }
        self.at(PING_EVERY, Ev::Tick);
    }

    pub(super) fn run(mut self) -> Outcome {
        let mut batch: Vec<(u64, Ev)> = Vec::new();
        while let Some(first) = self.heap.pop() {
            self.now = first.time;
            batch.clear();
            batch.push((first.seq, first.ev));
            while self.heap.peek().is_some_and(|e| e.time == self.now) {
                let e = self.heap.pop().expect("peeked");
                batch.push((e.seq, e.ev));
            }
            self.turn(&mut batch);
        }
        self.finish()
    }

    /// Everything due at `now`: faults first, then each server's events in the order scheduled, each
    /// followed by the hand-off; then every server that took part flushes its links.
    fn turn(&mut self, batch: &mut Vec<(u64, Ev)>) {
        let wall = Timestamp { secs: BASE_SECS + self.now / 1_000_000, nanos: (self.now % 1_000_000) as u32 * 1000 };
        let mut tick = false;
        let mut rest = Vec::with_capacity(batch.len());
        for (seq, ev) in batch.drain(..) {
            match ev {
                Ev::Fail { edge, heal_at } => self.fail(edge, heal_at),
                Ev::Heal { edge } => self.heal(edge),
                Ev::Tick => tick = true,
                ev => rest.push((self.server_of(&ev), seq, ev)),
            }
        }
        rest.sort_by_key(|&(server, seq, _)| (server, seq));
        for (server, _, ev) in rest {
            self.touched[server] = true;
            self.ctxs[server].wall = wall;
            match ev {
                Ev::Iamat(i) => self.iamat(i),
                Ev::Deliver { link, epoch, msg } => self.deliver(link, epoch, msg),
                Ev::Detect { edge, side } => self.detect(edge, side),
                Ev::LinkUp { link } => self.link_up(link),
                Ev::Step(_) => {}
                Ev::Fail { .. } | Ev::Heal { .. } | Ev::Tick => unreachable!("handled above"),
            }
            self.handoff(server);
        }
        for s in 0..self.ctxs.len() {
            if self.touched[s] && !self.ctxs[s].refloods.is_empty() {
                // The event loop's own hand-off when a reflood runs: one step a turn, and another
                // turn while it is not done.
                self.ctxs[s].reflood_step();
                self.handoff(s);
                if !self.ctxs[s].refloods.is_empty() {
                    self.at(self.now + 1, Ev::Step(s as u32));
                }
            }
            if self.touched[s] || tick {
                self.flush(s, tick);
            }
            self.touched[s] = false;
            self.advanced[s] = false;
        }
        if tick {
            let due = self.links.iter().any(|l| {
                l.synced && self.is_live(l.from, l.slot_from) && self.ctxs[l.from].records().max_seq() > l.off_sent
            });
            if !self.heap.is_empty() || due {
                self.at(self.now + PING_EVERY, Ev::Tick);
            }
        }
    }

    fn server_of(&self, ev: &Ev) -> usize {
        match ev {
            Ev::Iamat(i) => self.iamats[*i as usize].1 as usize,
            Ev::Deliver { link, msg: Msg::Batch(_), .. } => self.links[*link as usize].to,
            Ev::Deliver { link, msg: Msg::Ack { .. }, .. } => self.links[*link as usize].from,
            Ev::Detect { edge, side } => self.edges[*edge as usize].ends[*side],
            Ev::LinkUp { link } => self.links[*link as usize].from,
            Ev::Step(s) => *s as usize,
            Ev::Fail { .. } | Ev::Heal { .. } | Ev::Tick => usize::MAX,
        }
    }

    fn is_live(&self, s: usize, slot: usize) -> bool {
        matches!(self.ctxs[s].neighbours[slot].link, OutLink::Live(_))
    }

    /// A client's IAMAT at its server: the AT line as the client connection writes it, stored in tree mode.
    fn iamat(&mut self, i: u32) {
        let (time, server, client) = self.iamats[i as usize];
        let s = server as usize;
        let nanos = BASE_SECS as u128 * 1_000_000_000 + time as u128 * 1000;
        let client_time = format!("{}.{:09}", nanos / 1_000_000_000, nanos % 1_000_000_000);
        let id = format!("c{client}");
        let cmd = IAmAt { client_id: id.as_bytes(), location: LOCATION, client_time: client_time.as_bytes() };
        let mut line = Vec::with_capacity(protocol::MAX_AT_LINE);
        let ctx = &mut self.ctxs[s];
        let fields = protocol::write_at(&mut line, &ctx.name, ctx.wall, &cmd);
        let rid = self.recs.len() as u32;
        let last = self.last_of_client[client as usize] == Some(i);
        self.by_line.insert(line.clone().into_boxed_slice(), rid);
        self.recs.push(Rec { line: line.clone().into_boxed_slice(), origin: server, last });
        self.rec_sends.push([0; 4]);
        if self.ctxs[s].store_and_flood(&line, fields, None, Mode::Tree) {
            self.stored(s, rid);
        }
    }

    /// Server `s` stored record `rid`: one more newest record held, perhaps the last one missing.
    fn stored(&mut self, s: usize, rid: u32) {
        if !self.recs[rid as usize].last {
            return;
        }
        self.held[s] += 1;
        if self.held[s] == self.clients_used {
            self.complete += 1;
            if self.complete == self.ctxs.len() {
                self.converged_at = Some(self.now);
            }
        }
    }

    fn deliver(&mut self, l: u32, epoch: u32, msg: Msg) {
        let link = &self.links[l as usize];
        if self.edges[link.edge as usize].epoch != epoch {
            self.out.messages_lost += 1;
            return;
        }
        let (from, to, slot_from, slot_to) = (link.from, link.to, link.slot_from, link.slot_to);
        match msg {
            Msg::Ack { off, .. } => self.ctxs[from].neighbours[slot_from].acked = off,
            Msg::Batch(parts) => {
                for part in parts {
                    match part {
                        Part::Frame { mode: Mode::Notice, rids, .. } => {
                            for rid in rids {
                                self.line.clear();
                                frame::write_notice(&mut self.line, &self.recs[rid as usize].line);
                                let (id, time) = frame::parse_notice(&self.line).expect("a notice of a record");
                                self.ctxs[to].notice_record(id, time, slot_to);
                            }
                            self.handoff(to);
                        }
                        Part::Frame { mode, rids, .. } => {
                            for rid in rids {
                                let line = &self.recs[rid as usize].line;
                                let ctx = &mut self.ctxs[to];
                                ctx.counters.records_received += 1;
                                let fields = ctx.check_peer_record(line).expect("the simulation's records are valid");
                                let stored = match mode {
                                    Mode::Repair => ctx.repair_record(line, fields, slot_to),
                                    mode => ctx.store_and_flood(line, fields, Some(slot_to), mode),
                                };
                                if stored {
                                    self.stored(to, rid);
                                } else {
                                    ctx.counters.records_duplicate += 1;
                                }
                            }
                            self.handoff(to);
                        }
                        // Everything before it was processed: acknowledged at once (no journal).
                        Part::Off { off, announce } => {
                            let link = &mut self.links[l as usize];
                            link.recv_off = off;
                            link.ack_pending = Some((off, announce && link.ack_pending.is_none_or(|(_, a)| a)));
                        }
                    }
                }
            }
        }
    }

    /// The hand-off after a handler, as `server::handoff` runs it: the routes decide where the stored
    /// records go, until nothing is left.
    fn handoff(&mut self, s: usize) {
        while !self.ctxs[s].outbox.flood_marks.is_empty() {
            let ctx = &mut self.ctxs[s];
            self.live.clear();
            self.live.extend(ctx.neighbours.iter().map(|n| matches!(n.link, OutLink::Live(_))));
            self.sends.clear();
            ctx.route_floods(&self.live, &mut self.sends);
            for send in &self.sends {
                let line = &ctx.outbox.floods[send.start as usize..send.end as usize];
                let rid = self.by_line[line];
                let l = self.out_links[s][send.neighbour as usize];
                self.links[l as usize].pending.push((send.mode, rid));
            }
            ctx.outbox.floods.clear();
            self.advanced[s] = true;
        }
        let ctx = &mut self.ctxs[s];
        ctx.outbox.records_arrived.clear();
        ctx.outbox.dial_now.clear();
    }

    fn fail(&mut self, e: u32, heal_at: Option<u64>) {
        let edge = &mut self.edges[e as usize];
        edge.up = false;
        edge.epoch += 1;
        self.last_fault = self.last_fault.max(heal_at.unwrap_or(self.now));
        let outage = heal_at.map_or(u64::MAX, |h| h - self.now);
        for side in 0..2 {
            // Each side notices on its own (a reset, or the heartbeat), before the link heals.
            let after = self.rng.range(0, self.p.detect_ms * MS).min(outage / 2);
            self.at(self.now + after, Ev::Detect { edge: e, side });
        }
        if let Some(h) = heal_at {
            self.at(h, Ev::Heal { edge: e });
        }
    }

    /// One side of a failed edge notices: its sending link closes (`link_out_closed`, which queues the
    /// refloods), and so does the link it received on.
    fn detect(&mut self, e: u32, side: usize) {
        let edge = &self.edges[e as usize];
        let (out, back) = (edge.links[side], edge.links[1 - side]);
        let (x, slot) = (self.links[out as usize].from, self.links[out as usize].slot_from);
        self.ctxs[x].link_out_closed(slot, Token(out as usize));
        self.ctxs[x].link_in_closed(slot);
        let link = &mut self.links[out as usize];
        link.pending.clear();
        link.sync = None;
        link.synced = false;
        self.links[back as usize].ack_pending = None;
    }

    /// The edge is back: each side's dial completes its handshake a round trip later.
    fn heal(&mut self, e: u32) {
        self.edges[e as usize].up = true;
        for l in self.edges[e as usize].links {
            let link = &self.links[l as usize];
            let rtt = link.delay + self.links[link.rev as usize].delay;
            self.at(self.now + rtt, Ev::LinkUp { link: l });
        }
    }

    /// The dialer's link is live (`on_link_out`; the acceptor counts it in with `on_link_in`), and the
    /// catch-up goes out at the end of the turn: the records stored after the offset the acceptor
    /// acknowledged last (every record if that offset is beyond our stream), as `on_welcome` decides.
    fn link_up(&mut self, l: u32) {
        let link = &self.links[l as usize];
        let (a, b, slot_a, slot_b) = (link.from, link.to, link.slot_from, link.slot_to);
        debug_assert!(self.edges[link.edge as usize].up);
        debug_assert_eq!(self.ctxs[a].neighbours[slot_a].link, OutLink::Backoff);
        self.ctxs[a].on_link_out(slot_a, Token(l as usize));
        self.ctxs[b].on_link_in(slot_b);
        self.ctxs[b].outbox.dial_now.clear();
        let max = self.ctxs[a].records().max_seq();
        let link = &mut self.links[l as usize];
        let delta = link.recv_off > 0 && link.recv_off <= max;
        if delta {
            self.out.delta_syncs += 1;
        } else {
            self.out.full_syncs += 1;
        }
        link.sync = Some(if delta { link.recv_off } else { 0 });
        link.synced = false;
        link.off_sent = 0;
        link.off_at = self.now;
        link.carried = false;
        link.pending.clear();
    }

    /// End of `s`'s turn: each live sending link that has something writes one message (this turn's
    /// records in frames, an `OFF` under the pacing rule, then any catch-up), and each receiving link owes
    /// its `ACK`.
    fn flush(&mut self, s: usize, tick: bool) {
        for slot in 0..self.out_links[s].len() {
            let l = self.out_links[s][slot] as usize;
            if !self.is_live(s, slot) {
                self.links[l].pending.clear();
                continue;
            }
            let link = &self.links[l];
            if link.pending.is_empty() && link.sync.is_none() && !self.advanced[s] && !tick {
                continue;
            }
            let max = self.ctxs[s].records().max_seq();
            let mut parts = Vec::new();
            let pending = std::mem::take(&mut self.links[l].pending);
            if !pending.is_empty() {
                self.links[l].carried = true;
                push_frames(&mut parts, pending.iter().copied(), false, &self.recs);
            }
            self.note_offset(l, max, &mut parts);
            if let Some(after) = self.links[l].sync.take() {
                let mut rids = Vec::new();
                let mut cursor = 0;
                while let Some((next, record)) = self.ctxs[s].records().next_since(cursor, after) {
                    cursor = next;
                    self.line.clear();
                    record.write_line(&mut self.line);
                    rids.push(self.by_line[&self.line[..]]);
                }
                push_frames(&mut parts, rids.iter().map(|&r| (Mode::Flood, r)), true, &self.recs);
                self.links[l].carried |= !rids.is_empty();
                self.links[l].synced = true;
                self.note_offset(l, max, &mut parts);
            }
            if !parts.is_empty() {
                self.account(l, &mut parts);
                self.transmit(l as u32, Msg::Batch(parts));
            }
        }
        for slot in 0..self.out_links[s].len() {
            // The link the neighbour in `slot` dialed to us is the reverse of ours to it.
            let back = self.links[self.out_links[s][slot] as usize].rev;
            if let Some((off, announce)) = self.links[back as usize].ack_pending.take() {
                let bytes = format!("ACK {off}\n").len() as u64;
                self.out.ack_bytes += bytes;
                if announce {
                    self.out.non_tree_bytes += bytes;
                }
                self.transmit(back, Msg::Ack { off });
            }
        }
    }

    /// `Peer::note_offset`: when `off_due` says so (paced one way on a link that carried records since
    /// the last `OFF`, another on one that carried none); only once the catch-up is done and the stream
    /// moved on.
    fn note_offset(&mut self, l: usize, max: u64, parts: &mut Vec<Part>) {
        let link = &mut self.links[l];
        if !(link.synced && max > link.off_sent) {
            return;
        }
        let since = std::time::Duration::from_micros(self.now.saturating_sub(link.off_at));
        if !crate::server::conn::peer::sync::off_due(link.carried, max - link.off_sent, since) {
            return;
        }
        link.off_sent = max;
        link.off_at = self.now;
        link.carried = false;
        parts.push(Part::Off { off: max, announce: false });
    }

    /// Counts a message's sends and bytes, and which of them are off the trees: record lines on a link
    /// that is not in their origin's tree, and the headers and `OFF` of a message without a tree record
    /// (its `OFF` is then an announcement, and so is the `ACK` that answers it).
    fn account(&mut self, l: usize, parts: &mut [Part]) {
        let (from, to) = (self.links[l].from, self.links[l].to);
        let framed = self.p.scheme == Scheme::Tree;
        let mut tree_record = false;
        let mut control = 0;
        for part in parts.iter() {
            match part {
                Part::Frame { mode: Mode::Notice, rids, .. } => {
                    // A repair's notices: announcements, whichever link they take.
                    self.out.header_bytes += FRAME_HEADER;
                    control += FRAME_HEADER;
                    for &rid in rids {
                        self.line.clear();
                        frame::write_notice(&mut self.line, &self.recs[rid as usize].line);
                        self.out.notice_sends += 1;
                        self.out.notice_bytes += self.line.len() as u64;
                        control += self.line.len() as u64;
                    }
                }
                Part::Frame { mode, rids, sync } => {
                    if framed {
                        self.out.header_bytes += FRAME_HEADER;
                        control += FRAME_HEADER;
                    }
                    for &rid in rids {
                        let rec = &self.recs[rid as usize];
                        let len = rec.line.len() as u64;
                        self.out.record_bytes += len;
                        let kind = match (sync, mode) {
                            (true, _) => 3,
                            (false, Mode::Tree) => 0,
                            (false, Mode::Flood) => 1,
                            (false, Mode::Repair) => 2,
                            (false, Mode::Notice) => unreachable!("notice frames are counted above"),
                        };
                        self.rec_sends[rid as usize][kind] += 1;
                        let out = &mut self.out;
                        *[&mut out.tree_sends, &mut out.flood_sends, &mut out.repair_sends, &mut out.sync_sends]
                            [kind] += 1;
                        if self.trees.parent(rec.origin as usize, to) == from as u32 {
                            self.out.tree_record_bytes += len;
                            tree_record = true;
                        } else {
                            self.out.non_tree_bytes += len;
                        }
                    }
                }
                Part::Off { off, .. } => {
                    let bytes = format!("OFF {off}\n").len() as u64;
                    self.out.off_bytes += bytes;
                    control += bytes;
                }
            }
        }
        if !tree_record {
            self.out.non_tree_bytes += control;
            for part in parts.iter_mut() {
                if let Part::Off { announce, .. } = part {
                    *announce = true;
                }
            }
        }
    }

    fn transmit(&mut self, l: u32, msg: Msg) {
        let link = &self.links[l as usize];
        let edge = &self.edges[link.edge as usize];
        // An ACK travels back on the connection `l`: from its acceptor, with the reverse link's delay.
        let delay = match msg {
            Msg::Batch(_) => link.delay,
            Msg::Ack { .. } => self.links[link.rev as usize].delay,
        };
        if !edge.up {
            self.out.messages_lost += 1;
            return;
        }
        let epoch = edge.epoch;
        self.at(self.now + delay, Ev::Deliver { link: l, epoch, msg });
    }

    fn finish(mut self) -> Outcome {
        for ctx in &self.ctxs {
            self.out.duplicates += ctx.counters.records_duplicate;
            self.out.reflooded += ctx.counters.records_reflooded;
        }
        let total = |s: &[u32; 4]| s.iter().sum::<u32>() as u64;
        if let Some((rid, worst)) = self.rec_sends.iter().enumerate().max_by_key(|(_, s)| total(s)) {
            self.out.max_sends = total(worst);
            let (_, server, client) = self.iamats[rid];
            self.out.worst = format!(
                "record {rid} (c{client} at {}): {} tree + {} flood + {} repair + {} catch-up sends",
                self.names[server as usize], worst[0], worst[1], worst[2], worst[3]
            );
        }
        self.out.max_live_sends = self.rec_sends.iter().map(|s| (s[0] + s[1] + s[2]) as u64).max().unwrap_or(0);
        for (client, last) in self.last_of_client.iter().enumerate() {
            let Some(i) = last else { continue };
            let rid = *i as usize;
            let (time, server, _) = self.iamats[rid];
            let nanos = BASE_SECS as u128 * 1_000_000_000 + time as u128 * 1000;
            let want_time = format!("{}.{:09}", nanos / 1_000_000_000, nanos % 1_000_000_000);
            let id = format!("c{client}");
            for (s, ctx) in self.ctxs.iter().enumerate() {
                let holds = ctx.records().get(id.as_bytes()).is_some_and(|r| {
                    r.client_time() == want_time.as_bytes() && r.server() == self.names[server as usize].as_bytes()
                });
                if !holds {
                    self.out.missing += 1;
                    if self.out.missing_examples.len() < 5 {
                        let had = ctx
                            .records()
                            .get(id.as_bytes())
                            .map(|r| String::from_utf8_lossy(r.client_time()).to_string());
                        self.out.missing_examples.push(format!(
                            "{} lacks {id}'s newest record (from {}, client time {want_time}); holds {had:?}",
                            self.names[s], self.names[server as usize]
                        ));
                    }
                }
            }
        }
        let from = self.last_fault.max(self.iamats.last().map_or(0, |i| i.0));
        if self.out.missing == 0 {
            self.out.convergence_ms = self.converged_at.map(|t| t.saturating_sub(from) as f64 / MS as f64);
        }
        self.out.end_ms = self.now as f64 / MS as f64;
        self.out
    }
}
