//! Where a record goes next: shortest-path trees over the herd's graph, one per origin (issue 19).
//!
//! Plain flooding sends a record to every neighbour but the one it came from: over a graph of `N`
//! servers and `E` links that is `2E - (N - 1)` messages per record, and every server but the origin
//! receives it `deg - 1` times more than it needs. Here a record travels along the shortest-path tree of
//! its *origin* (the server named in its `AT` line, the one that took the client's `IAMAT`): each server
//! sends it only to its children in that tree, so with every link up each server receives it exactly
//! once, `N - 1` messages in all, and no record takes more hops than the graph distance (PROTOCOL
//! section 5's same-turn rule holds two hops away as it did).
//!
//! The trees are computed once from the configured graph, not from the links that happen to be up, so
//! every server agrees on them without exchanging anything: the parent of server `x` in the tree of
//! origin `o` is the neighbour of `x`, one hop closer to `o`, that a breadth-first search from `o`
//! (visiting neighbours in config order) reaches `x` from first.
//! What changes with the links is the *mode* of a record:
//!
//! - [`Mode::Tree`]: a server that receives it (or stores it from a client) sends it to its children in
//!   its origin's tree, if the sending link to every one of those children is live.
//! - [`Mode::Repair`]: otherwise the tree is broken below this server, and a repair starts here: the
//!   record goes round the break through the servers that hold it (see the variant).
//! - [`Mode::Flood`]: a record learned by anti-entropy when a link comes up floods on, to every live
//!   neighbour but the one it came from, and every server that stores it floods it on: whoever was cut
//!   off with the receiver needs it. (Without routes, every record floods: plain flooding.)
//!
//! A record whose tree link broke *after* it was sent (lost in flight, or held by a neighbour that died)
//! is repaired by the server above that link, with everything the neighbour had not acknowledged
//! (`Ctx::link_out_closed`).
//!
//! A repair costs at most what plain flooding costs, however many breaks it meets: per version of a
//! record, each server passes it on in one repair at most (`RecordStore::relay_once`), never sends the
//! record itself back over the link it first came from, and sends it on each other link once at most.
//! Where the neighbour holds the record already (down the tree, to this server or from it) a repair
//! sends a [`Mode::Notice`] instead: a few bytes that make the neighbour pass the repair on without
//! the record crossing the link again, the way Plumtree's lazy announcements stand in for payloads.
//!
//! This module is pure (no sockets, no clock): the server and the propagation simulation
//! (`herd::sim`) use the same code.

use std::cell::Cell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// How a record travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Down its origin's shortest-path tree: each server sends it to its children only.
    Tree,
    /// To every live neighbour but the sender; every server that stores it does the same.
    Flood,
    /// A repair: a record whose tree is broken at the sender, or that a broken link carried
    /// unacknowledged. Every server passes each version of a record on in a repair once, stored now or
    /// held already (`RecordStore::relay_once`), to every live neighbour but the one the repair came
    /// from: the record itself to a neighbour that may lack it, a [`Mode::Notice`] to one that holds it.
    ///
    /// A plain flood stops at the first server that already holds the record, which is right for a new
    /// record and wrong for a repair: the servers around a break hold it (it reached them down their
    /// own trees), and the ones that lack it are beyond them. Passing each version on once, in whatever
    /// repair reaches a server first, reaches every server still connected.
    Repair,
    /// A repair's notice (peer protocol version 4): "pass on your copy of this version in a repair". Sent
    /// instead of the record to a tree neighbour that holds it: the parent it came from, or a child it
    /// went to. A server that does not hold that version does nothing with it.
    Notice,
}

impl Mode {
    /// The mode's name in the log (`peer-send` counts, `records`-detail lines).
    pub fn name(self) -> &'static str {
        match self {
            Mode::Tree => "tree",
            Mode::Flood => "flood",
            Mode::Repair => "repair",
            Mode::Notice => "notice",
        }
    }
}

/// The shortest-path trees of a whole herd: `parent[o][x]`, the server that sends origin `o`'s records
/// to server `x` (`NONE` for `o` itself and for servers `o` cannot reach). Computed once by a
/// breadth-first search from every server: `O(N (N + E))` time, `N²` entries.
#[derive(Debug, Clone)]
pub struct Trees {
    servers: usize,
    parent: Vec<u32>,
}

/// No parent: the origin itself, or unreachable from it.
pub const NONE: u32 = u32::MAX;

impl Trees {
    /// The trees of the graph with `servers` servers and the undirected `links` (pairs of indices).
    /// Ties between equally short paths are broken by the search order alone, so every server computes
    /// the same trees from the same config.
    pub fn new(servers: usize, links: &[(usize, usize)]) -> Trees {
        let mut adjacent = vec![Vec::new(); servers];
        for &(a, b) in links {
            adjacent[a].push(b as u32);
            adjacent[b].push(a as u32);
        }
        for list in &mut adjacent {
            list.sort_unstable();
            list.dedup();
        }
        let mut parent = vec![NONE; servers * servers];
        let mut queue = std::collections::VecDeque::with_capacity(servers);
        let mut seen = vec![false; servers];
        for origin in 0..servers {
            let row = &mut parent[origin * servers..(origin + 1) * servers];
            seen.iter_mut().for_each(|s| *s = false);
            seen[origin] = true;
            queue.push_back(origin as u32);
            // Breadth first: a server is first reached from a neighbour one hop closer to the origin, so
            // the path to it is a shortest one.
            while let Some(x) = queue.pop_front() {
                for &y in &adjacent[x as usize] {
                    if !seen[y as usize] {
                        seen[y as usize] = true;
                        row[y as usize] = x;
                        queue.push_back(y);
                    }
                }
            }
        }
        Trees { servers, parent }
    }

    pub fn servers(&self) -> usize {
        self.servers
    }

    /// The server that sends `origin`'s records to `server` ([`NONE`] for the origin itself).
    pub fn parent(&self, origin: usize, server: usize) -> u32 {
        self.parent[origin * self.servers + server]
    }

    /// Hops from `origin` to `server` along the tree (`None` if unreachable).
    pub fn depth(&self, origin: usize, server: usize) -> Option<usize> {
        let mut hops = 0;
        let mut x = server;
        while x != origin {
            let p = self.parent(origin, x);
            if p == NONE {
                return None;
            }
            x = p as usize;
            hops += 1;
        }
        Some(hops)
    }
}

/// One server's view of the trees: for each origin, which of its neighbours are its children.
/// Neighbours are numbered by their slot in the server's neighbour list (`Ctx::neighbours`).
#[derive(Debug, Clone, Default)]
pub struct Routes {
    /// Origin index by server name (the name in an `AT` line), looked up for every record received.
    origins: NameIndex,
    /// The names by origin index, and the origin [`origin`](Self::origin) found last.
    names: Vec<Box<[u8]>>,
    last_origin: Cell<u32>,
    /// `children[starts[o]..starts[o + 1]]`: the neighbour slots that are this server's children in the
    /// tree of origin `o`. One flat allocation for every origin.
    starts: Vec<u32>,
    children: Vec<u32>,
    /// The neighbour slot of this server's parent in each origin's tree (`NONE` for its own).
    parents: Vec<u32>,
    /// This server's own origin index (`NONE` in the empty routes, where every record floods).
    me: u32,
}

impl Routes {
    /// Server `me`'s routes, its neighbours being the servers `neighbours` (slot `i` is server
    /// `neighbours[i]`), `names` naming every server by index.
    pub fn new(trees: &Trees, names: &[&str], me: usize, neighbours: &[usize]) -> Routes {
        let slot_of: HashMap<usize, u32> = neighbours.iter().enumerate().map(|(slot, &s)| (s, slot as u32)).collect();
        let mut starts = Vec::with_capacity(trees.servers() + 1);
        let mut children = Vec::new();
        let mut parents = Vec::with_capacity(trees.servers());
        for origin in 0..trees.servers() {
            starts.push(children.len() as u32);
            for (slot, &n) in neighbours.iter().enumerate() {
                if trees.parent(origin, n) == me as u32 {
                    children.push(slot as u32);
                }
            }
            let p = trees.parent(origin, me);
            parents.push(if p == NONE { NONE } else { slot_of.get(&(p as usize)).copied().unwrap_or(NONE) });
        }
        starts.push(children.len() as u32);
        let (origins, names) = name_index(names);
        Routes { origins, names, last_origin: Cell::new(0), starts, children, parents, me: me as u32 }
    }

    /// This server's origin index: its clients' records start their tree here.
    pub fn me(&self) -> Option<usize> {
        (self.me != NONE && !self.starts.is_empty()).then_some(self.me as usize)
    }

    /// Routes that know the herd's servers by name and no trees: every record floods (plain flooding,
    /// the routes of a `Ctx` until `with_routes`).
    pub fn flooding(names: &[&str]) -> Routes {
        let (origins, names) = name_index(names);
        Routes { origins, names, ..Routes::default() }
    }

    /// The origin index of a server name, if it is a server of the herd. Records come in runs from one
    /// origin (a busy server's clients), so the last name found is tried first.
    pub fn origin(&self, name: &[u8]) -> Option<usize> {
        let last = self.last_origin.get();
        if self.names.get(last as usize).is_some_and(|n| **n == *name) {
            return Some(last as usize);
        }
        let o = *self.origins.get(name)?;
        self.last_origin.set(o);
        Some(o as usize)
    }

    /// The neighbour slots that receive `origin`'s records from this server in tree mode.
    pub fn children(&self, origin: usize) -> &[u32] {
        &self.children[self.starts[origin] as usize..self.starts[origin + 1] as usize]
    }

    /// The neighbour slot that sends this server `origin`'s records in tree mode (`None` for its own).
    pub fn parent(&self, origin: usize) -> Option<usize> {
        self.parents.get(origin).filter(|&&p| p != NONE).map(|&p| p as usize)
    }

    /// Whether neighbour `slot` holds `origin`'s records that this server holds down the tree: it is this
    /// server's parent in that tree (they came from it) or one of its children (they went to it).
    pub fn tree_neighbour(&self, origin: usize, slot: usize) -> bool {
        !self.starts.is_empty() && (self.parent(origin) == Some(slot) || self.children(origin).contains(&(slot as u32)))
    }

    /// How a record of `origin` that arrived in `mode` (a client's `IAMAT`: `Tree`) goes on, given
    /// which sending links are live (`live[slot]`). A flood stays a flood; a tree record stays in the
    /// tree while every child's link is live, and floods otherwise.
    pub fn plan(&self, origin: usize, mode: Mode, live: &[bool]) -> Plan<'_> {
        if self.starts.is_empty() {
            return Plan::Flood; // no trees
        }
        match mode {
            Mode::Flood | Mode::Repair | Mode::Notice => Plan::Flood,
            Mode::Tree => {
                let children = self.children(origin);
                if children.iter().all(|&c| live[c as usize]) {
                    Plan::Tree(children)
                } else {
                    Plan::Flood
                }
            }
        }
    }
}

/// Where a record goes from here: see [`Routes::plan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan<'a> {
    /// To these neighbour slots, in tree mode.
    Tree(&'a [u32]),
    /// To every live neighbour but the one it came from, in flood mode.
    Flood,
}

type NameIndex = HashMap<Box<[u8]>, u32, BuildHasherDefault<Fnv>>;

/// The origin index by name, and the names by index.
fn name_index(names: &[&str]) -> (NameIndex, Vec<Box<[u8]>>) {
    let by_index: Vec<Box<[u8]>> = names.iter().map(|n| n.as_bytes().into()).collect();
    (by_index.iter().enumerate().map(|(i, n)| (n.clone(), i as u32)).collect(), by_index)
}

/// FNV-1a, for the server-name index: a few instructions a byte where SipHash costs a few hundred a
/// lookup, and it is looked up for every record received. An unkeyed hash is safe here: the table holds
/// the config's names and never grows, so names chosen to collide can only lengthen a probe within it,
/// not fill it.
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325) // the offset basis
    }
}

impl Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        let mut h = self.0;
        for &b in bytes {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default herd: Bailey 0, Bona 1, Campbell 2, Clark 3, Jaquez 4.
    const NAMES: [&str; 5] = ["Bailey", "Bona", "Campbell", "Clark", "Jaquez"];
    const LINKS: [(usize, usize); 6] = [(0, 1), (0, 2), (1, 2), (1, 3), (2, 4), (3, 4)];

    /// FNV-1a (64 bits) against the published test vectors (Fowler, Noll, Vo: "FNV-1a" of "", "a" and
    /// "foobar"): the name index spreads names as FNV does, not by some weaker accident.
    #[test]
    fn fnv_1a_matches_its_test_vectors() {
        for (text, want) in
            [("", 0xcbf2_9ce4_8422_2325u64), ("a", 0xaf63_dc4c_8601_ec8c), ("foobar", 0x8594_4171_f739_67e8)]
        {
            let mut h = Fnv::default();
            h.write(text.as_bytes());
            assert_eq!(h.finish(), want, "{text:?}");
        }
    }

    /// Names map to their index in the config whatever was looked up before (the last one found is tried
    /// first): runs, alternations, a name that is a prefix of another, and names of no server.
    #[test]
    fn origins_are_found_by_name_in_any_order() {
        let routes = Routes::flooding(&NAMES);
        let asks: [(&str, Option<usize>); 10] = [
            ("Bona", Some(1)),
            ("Bona", Some(1)),
            ("Bailey", Some(0)),
            ("Bon", None),
            ("Bona", Some(1)),
            ("Bonaa", None),
            ("Jaquez", Some(4)),
            ("", None),
            ("Jaquez", Some(4)),
            ("Campbell", Some(2)),
        ];
        for (name, want) in asks {
            assert_eq!(routes.origin(name.as_bytes()), want, "{name}");
        }
        assert_eq!(Routes::default().origin(b"Bailey"), None);
    }

    /// Parents worked out by hand from the graph (a breadth-first search, neighbours in index order):
    /// from Bailey: Bona and Campbell at 1 hop; Clark via Bona, Jaquez via Campbell.
    /// from Clark: Bona and Jaquez at 1; Bailey via Bona; Campbell via Bona (dequeued before Jaquez).
    #[test]
    fn parents_follow_a_breadth_first_search_from_the_origin() {
        let t = Trees::new(5, &LINKS);
        let table: [(usize, [u32; 5]); 2] = [(0, [NONE, 0, 0, 1, 2]), (3, [1, 3, 1, NONE, 3])];
        for (origin, parents) in table {
            for (x, &p) in parents.iter().enumerate() {
                assert_eq!(t.parent(origin, x), p, "origin {origin} server {x}");
            }
        }
        assert_eq!(t.depth(0, 4), Some(2));
        assert_eq!(t.depth(3, 2), Some(2));
    }

    /// Every server but the origin has exactly one parent, so a tree over N servers has N-1 edges: the
    /// message count with every link up. Checked on a ring, a star, a line and a grid.
    #[test]
    fn each_tree_spans_every_reachable_server_with_n_minus_1_edges() {
        let ring: Vec<_> = (0..10).map(|i| (i, (i + 1) % 10)).collect();
        let star: Vec<_> = (1..10).map(|i| (0, i)).collect();
        let line: Vec<_> = (0..9).map(|i| (i, i + 1)).collect();
        let grid: Vec<_> = (0..9)
            .flat_map(|i: usize| {
                let mut v = Vec::new();
                if i % 3 < 2 {
                    v.push((i, i + 1));
                }
                if i < 6 {
                    v.push((i, i + 3));
                }
                v
            })
            .collect();
        for (name, n, links) in [("ring", 10, ring), ("star", 10, star), ("line", 10, line), ("grid", 9, grid)] {
            let t = Trees::new(n, &links);
            let names: Vec<String> = (0..n).map(|i| format!("s{i}")).collect();
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let adjacent = |x: usize| -> Vec<usize> {
                let mut v: Vec<usize> =
                    links.iter().filter_map(|&(a, b)| (a == x).then_some(b).or((b == x).then_some(a))).collect();
                v.sort_unstable();
                v
            };
            for origin in 0..n {
                let mut edges = 0;
                for x in 0..n {
                    let r = Routes::new(&t, &names, x, &adjacent(x));
                    edges += r.children(origin).len();
                    if x != origin {
                        let p = r.parent(origin).expect("every other server has a parent");
                        // The parent is a neighbour one hop closer to the origin.
                        let p_server = adjacent(x)[p];
                        assert_eq!(t.depth(origin, p_server).unwrap() + 1, t.depth(origin, x).unwrap(), "{name}");
                    }
                }
                assert_eq!(edges, n - 1, "{name}: origin {origin}");
            }
        }
        // The ring's far side is reached both ways round in 5 hops: the graph distance.
        let ring: Vec<_> = (0..10).map(|i| (i, (i + 1) % 10)).collect();
        assert_eq!(Trees::new(10, &ring).depth(0, 5), Some(5));
    }

    #[test]
    fn a_tree_record_floods_once_a_childs_link_is_down_and_a_flood_stays_a_flood() {
        let t = Trees::new(5, &LINKS);
        // Bailey's neighbours: Bona (slot 0), Campbell (slot 1); both are its children for its own
        // records; for Jaquez's records (parent of Bailey: Campbell) it has none.
        let r = Routes::new(&t, &NAMES, 0, &[1, 2]);
        assert_eq!((r.origin(b"Bailey"), r.me(), Routes::default().me()), (Some(0), Some(0), None));
        assert_eq!(r.origin(b"Nobody"), None);
        assert_eq!(r.plan(0, Mode::Tree, &[true, true]), Plan::Tree(&[0, 1]));
        assert_eq!(r.plan(0, Mode::Tree, &[true, false]), Plan::Flood);
        assert_eq!(r.plan(4, Mode::Tree, &[false, true]), Plan::Tree(&[]), "a leaf sends nothing on");
        assert_eq!(r.parent(4), Some(1));
        assert_eq!(r.parent(0), None);
        assert_eq!(r.plan(4, Mode::Flood, &[true, true]), Plan::Flood);
        assert_eq!(r.plan(0, Mode::Repair, &[true, true]), Plan::Flood);
        let flooding = Routes::flooding(&NAMES);
        assert_eq!((flooding.origin(b"Clark"), flooding.me()), (Some(3), None));
        assert_eq!(flooding.plan(3, Mode::Tree, &[true, true]), Plan::Flood, "no trees: everything floods");
    }
}
