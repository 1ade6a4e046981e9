//! The propagation simulation (issue 19 point 3): the herd's own propagation code, run on generated graphs
//! of many servers with the network replaced by a discrete-event model.
//!
//! Every simulated server is a real [`Ctx`](crate::server::ctx::Ctx) built without sockets (as the unit
//! tests of `herd.rs` build one), with the real [`Routes`](crate::route::Routes) of the graph. The
//! simulation drives exactly the entry points the event loop drives:
//!
//! - a client's `IAMAT`: the AT line made by `protocol::write_at`, then `store_and_flood(.., None, Tree)`;
//! - a frame of records from a neighbour: `check_peer_record`, then `store_and_flood(.., Some(n), mode)`,
//!   or `repair_record` for a repair frame; for a notice frame, `notice_record` with each record's
//!   notice as `conn/peer/frame.rs` writes and reads it;
//! - the hand-off after every handler: `route_floods` until nothing is left, as `server::handoff` does,
//!   the sends going to the simulated links; and at the end of a turn while a reflood runs, one step of
//!   it (`reflood_step`) and a hand-off, as the event loop does;
//! - a link that breaks: `link_out_closed` and `link_in_closed` on each side, when that side notices;
//! - a link that comes back: `on_link_out` at the dialer, `on_link_in` at the acceptor, and the
//!   catch-up of every record stored after the acceptor's acknowledged offset
//!   (`records().next_since`), in flood frames, which the receiver stores with `Mode::Flood`;
//! - `ACK <seq>` answers: `neighbours[n].acked`.
//!
//! What the simulation models itself is only what the sockets and the peer connection do
//! (`transport.rs`): directed links with a delay, delivering messages in order; a failed link that loses
//! what is in flight on it, both ways; one message per link per turn holding the turn's records in
//! frames (`T`/`F`/`R`/`N` headers of 8 bytes, as `conn/peer/frame.rs` writes them; bare lines for plain
//! flooding) followed by an `OFF <seq>` line under the pacing rule of `conn/peer/sync.rs`; the
//! acceptor's `ACK` once it has processed everything before the `OFF`.
//!
//! Plain flooding, for comparison, is the same `Ctx` with the routes it starts with (`Routes::flooding`:
//! the herd's names, no trees), so
//! every record floods. Both columns of the report run the same code.
//!
//! Nothing here reads a clock or opens a socket: a run is a pure function of its [`Params`] (seeded
//! xorshift), so a seed that shows a problem shows it again.

mod events;
mod outcome;
pub mod report;
mod transport;

pub use outcome::Outcome;

/// xorshift64* (Vigna): enough for graphs and workloads, not for secrets.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // Spread small seeds over the state; never zero.
        Rng((seed ^ 0x9E37_79B9_7F4A_7C15).wrapping_mul(0xBF58_476D_1CE4_E5B9) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (`n > 0`; the modulo bias is negligible for the sizes used here).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
}

/// Which propagation the servers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// The shortest-path trees of `route.rs` (with their repair by flooding).
    Tree,
    /// Plain flooding: the `Ctx`'s own routes (`Routes::flooding`), so every record floods.
    Flood,
}

impl Scheme {
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Tree => "tree",
            Scheme::Flood => "flooding",
        }
    }
}

/// One run: the graph, the workload and the faults.
#[derive(Debug, Clone)]
pub struct Params {
    pub servers: usize,
    /// Average degree of the generated graph (a ring plus random chords).
    pub degree: f64,
    pub seed: u64,
    pub scheme: Scheme,
    /// IAMATs, each at a random server for a random client.
    pub records: usize,
    /// Clients the IAMATs are drawn from; with as many as records, each record has a client of its own.
    pub clients: usize,
    /// Microseconds between two IAMATs (herd-wide).
    pub gap_us: u64,
    /// One-way delay of each directed link, drawn once per link, in whole milliseconds.
    pub delay_ms: (u64, u64),
    /// Link failures that heal, at random times during the load, on random links.
    pub failures: usize,
    /// How long a failed link stays down, in milliseconds.
    pub outage_ms: (u64, u64),
    /// Each side notices a failure after a random delay up to this (heartbeat or reset), in
    /// milliseconds; what it sends meanwhile is lost.
    pub detect_ms: u64,
    /// Links that fail during the load and never come back (chosen so that the graph stays connected).
    pub permanent: usize,
    /// A given graph instead of a generated one (undirected links between server indices).
    pub graph: Option<Vec<(usize, usize)>>,
    /// Given link failures that never heal: (index in the graph's links, simulated time in ms).
    pub cuts: Vec<(usize, u64)>,
}

impl Params {
    /// The defaults of the benchmark for a herd of `servers`: degree 4.5, 1 IAMAT a millisecond, 4
    /// records per client, 1-10 ms links, no faults.
    pub fn new(servers: usize, scheme: Scheme, seed: u64) -> Params {
        Params {
            servers,
            degree: 4.5,
            seed,
            scheme,
            records: 1000,
            clients: 250,
            gap_us: 1000,
            delay_ms: (1, 10),
            failures: 0,
            outage_ms: (20, 300),
            detect_ms: 50,
            permanent: 0,
            graph: None,
            cuts: Vec::new(),
        }
    }

    /// The same run with `failures` healing link failures (and `permanent` that never heal).
    pub fn with_failures(mut self, failures: usize, permanent: usize) -> Params {
        self.failures = failures;
        self.permanent = permanent;
        self
    }
}

/// A connected sparse graph: the ring `0-1-…-(n-1)-0` plus random chords up to an average degree of
/// `degree` (no loops, no duplicates). Links are `(a, b)` with `a < b`, in the order drawn.
pub fn graph(servers: usize, degree: f64, rng: &mut Rng) -> Vec<(usize, usize)> {
    let mut links: Vec<(usize, usize)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut add = |a: usize, b: usize, links: &mut Vec<(usize, usize)>| {
        let key = (a.min(b), a.max(b));
        if a != b && seen.insert(key) {
            links.push(key);
        }
    };
    if servers == 2 {
        add(0, 1, &mut links);
        return links;
    }
    for i in 0..servers {
        add(i, (i + 1) % servers, &mut links);
    }
    let max = servers * (servers - 1) / 2;
    let want = ((servers as f64 * degree / 2.0).round() as usize).clamp(links.len(), max);
    while links.len() < want {
        let (a, b) = (rng.below(servers as u64) as usize, rng.below(servers as u64) as usize);
        add(a, b, &mut links);
    }
    links
}

/// Whether the graph of `servers` over `links`, without the links marked in `cut`, is connected.
pub fn connected(servers: usize, links: &[(usize, usize)], cut: &[bool]) -> bool {
    let mut adjacent = vec![Vec::new(); servers];
    for (i, &(a, b)) in links.iter().enumerate() {
        if !cut[i] {
            adjacent[a].push(b);
            adjacent[b].push(a);
        }
    }
    let mut seen = vec![false; servers];
    let mut stack = vec![0];
    seen[0] = true;
    while let Some(x) = stack.pop() {
        for &y in &adjacent[x] {
            if !seen[y] {
                seen[y] = true;
                stack.push(y);
            }
        }
    }
    seen.iter().all(|&s| s)
}

/// Runs one simulation.
pub fn run(params: &Params) -> Outcome {
    transport::Sim::new(params).run()
}
