//! Deadlines for the loop: a binary heap of (instant, what), read once per loop turn.
//!
//! Entries are not removed one by one. A connection that is closed, or whose deadline moved, simply finds
//! the stale entry when it fires and ignores or re-arms it. That keeps activity on the hot path down to
//! writing one `Instant` into the connection (no heap operation per command), at the cost of one spurious
//! wake-up per moved deadline, which the loop's timeout absorbs.
//!
//! Left alone, though, stale entries pile up: every connection accepted leaves one until its idle timeout
//! would have fired, so connection churn grows the heap by (connections per second × idle timeout) entries,
//! about 27 GB at 10,000 connections/s and a one-day timeout. So the heap is *compacted*: once it holds
//! twice as many entries as after the last compaction, [`Timers::needs_compaction`] says so and the loop
//! calls [`Timers::compact`] with a predicate that keeps only entries that still matter (O(n), once per
//! doubling: amortised O(1) per entry added), and the heap's memory shrinks with it.

use mio::Token;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// What a deadline is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Timer {
    /// Check a connection (client idle, line and wait deadlines; peer handshake; upstream keep-alive).
    Conn(Token),
    /// Redial the neighbour with this index.
    Redial(usize),
    /// Flush the log buffer to its file.
    LogFlush,
    /// Retry accepting after running out of file descriptors.
    AcceptRetry,
    /// At `max_clients` with no client idle long enough to close: look again when the idlest will be.
    AdmitRetry,
    /// Give up on a graceful shutdown.
    ShutdownDeadline,
    /// The deadline of a Places request.
    Places(u64),
    /// Look at the journal: start or continue a rewrite.
    Journal,
    /// Drop records older than `records.max_age_s` (a bounded slice of them).
    RecordSweep,
}

/// Below this many entries the heap is never compacted: not worth a pass.
const COMPACT_FLOOR: usize = 1024;

#[derive(Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(Instant, Timer)>>,
    /// Entries after the last compaction (the live ones, then).
    kept: usize,
}

impl Timers {
    pub fn add(&mut self, at: Instant, what: Timer) {
        self.heap.push(Reverse((at, what)));
    }

    /// Whether the heap has doubled since it was last compacted (and is past a small floor).
    pub fn needs_compaction(&self) -> bool {
        self.heap.len() >= COMPACT_FLOOR.max(2 * self.kept)
    }

    /// Keeps only the entries for which `keep(at, what)` holds, and gives back the memory of the rest.
    pub fn compact(&mut self, mut keep: impl FnMut(Instant, Timer) -> bool) {
        let mut entries = std::mem::take(&mut self.heap).into_vec();
        entries.retain(|Reverse((at, what))| keep(*at, *what));
        entries.shrink_to(COMPACT_FLOOR.max(2 * entries.len()));
        self.kept = entries.len();
        self.heap = BinaryHeap::from(entries);
    }

    /// The next timer due at or before `now`, if any.
    pub fn pop_due(&mut self, now: Instant) -> Option<Timer> {
        match self.heap.peek() {
            Some(Reverse((at, _))) if *at <= now => self.heap.pop().map(|Reverse((_, t))| t),
            _ => None,
        }
    }

    /// How long the loop may sleep: until the earliest deadline (rounded up to a whole millisecond, so the
    /// loop does not wake just before it and spin), or forever when there is none.
    pub fn timeout(&self, now: Instant) -> Option<Duration> {
        self.heap.peek().map(|Reverse((at, _))| {
            let d = at.saturating_duration_since(now);
            let ms = d.as_nanos().div_ceil(1_000_000) as u64;
            Duration::from_millis(ms)
        })
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Connection churn: each connection arms a deadline and closes long before it. Compacting with "is
    /// the connection still open" keeps the heap near the open connections, not the connections ever made.
    #[test]
    fn compaction_drops_what_no_longer_matters_and_keeps_the_rest_in_order() {
        let now = Instant::now();
        let mut t = Timers::default();
        let open = |token: usize| token % 100 == 0; // one connection in a hundred is still open
        let mut peak = 0;
        for token in 0..100_000usize {
            t.add(now + Duration::from_secs(300) + Duration::from_micros(token as u64), Timer::Conn(Token(token)));
            if token % 1000 == 0 {
                t.add(now + Duration::from_millis(10), Timer::Redial(token));
            }
            if t.needs_compaction() {
                t.compact(|_, what| match what {
                    Timer::Conn(Token(c)) => open(c),
                    _ => true,
                });
            }
            peak = peak.max(t.len());
        }
        // 1,000 open connections and 100 redials live; the heap never held more than twice that plus the floor.
        assert!(peak <= 2 * COMPACT_FLOOR.max(2 * 1_100), "peak {peak}");
        assert!(t.heap.capacity() <= 4 * COMPACT_FLOOR.max(2 * 1_100), "capacity {}", t.heap.capacity());
        t.compact(|_, what| match what {
            Timer::Conn(Token(c)) => open(c),
            _ => true,
        });
        assert_eq!(t.len(), 1_100);
        // Order survives: all redials first (10 ms), then the open connections by deadline.
        let late = now + Duration::from_secs(400);
        let fired: Vec<Timer> = std::iter::from_fn(|| t.pop_due(late)).collect();
        assert!(fired[..100].iter().all(|w| matches!(w, Timer::Redial(_))));
        let conns: Vec<usize> =
            fired[100..].iter().map(|w| if let Timer::Conn(Token(c)) = w { *c } else { 0 }).collect();
        assert_eq!(conns, (0..100_000).step_by(100).collect::<Vec<_>>());
    }

    #[test]
    fn due_timers_come_out_in_order() {
        let now = Instant::now();
        let mut t = Timers::default();
        t.add(now + Duration::from_millis(20), Timer::LogFlush);
        t.add(now + Duration::from_millis(10), Timer::Redial(3));
        assert_eq!(t.timeout(now), Some(Duration::from_millis(10)));
        assert_eq!(t.pop_due(now), None);
        let later = now + Duration::from_millis(25);
        assert_eq!(t.pop_due(later), Some(Timer::Redial(3)));
        assert_eq!(t.pop_due(later), Some(Timer::LogFlush));
        assert_eq!(t.pop_due(later), None);
        assert_eq!(t.timeout(later), None);
    }
}
