//! Deadlines for the loop: a binary heap of (instant, what), read once per loop turn.
//!
//! Entries are never removed early. A connection that is closed, or whose deadline moved, simply finds the
//! stale entry when it fires and ignores or re-arms it. That keeps activity on the hot path down to writing
//! one `Instant` into the connection (no heap operation per command), at the cost of one spurious wake-up
//! per moved deadline, which the loop's timeout absorbs.

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
}

#[derive(Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(Instant, Timer)>>,
}

impl Timers {
    pub fn add(&mut self, at: Instant, what: Timer) {
        self.heap.push(Reverse((at, what)));
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
