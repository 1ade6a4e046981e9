//! The FIFO of Places requests waiting for a connection, with removal from the middle in O(1).
//!
//! A request leaves the queue in two ways: from the front, when a connection takes it, or from anywhere,
//! when its deadline passes first. Removing from the middle of a `VecDeque` is a linear scan, and
//! deadlines come in bursts: requests created together expire together, so some 14,000 queued
//! requests (the [`PENDING_MAX_BYTES`](super::PENDING_MAX_BYTES) bound) expiring in one loop turn cost
//! 14,000 scans of a queue of up to 14,000 ids — quadratic, about 10^8 comparisons in one turn.
//!
//! Here removal is *lazy*: the id stays in the deque as a tombstone, and only the set of live ids
//! (`live`) forgets it at once. Tombstones are dropped when they reach the front. One invariant makes
//! the lazy part invisible to callers: **the deque's front is always live, or the deque is empty**
//! (every operation that can expose a tombstone at the front trims them). So `front`, `pop_front` and
//! `is_empty` answer exactly as an eagerly pruned queue would, each id is pushed, tombstoned and popped
//! at most once, and every operation is amortised O(1).
//!
//! Memory: a tombstone is 8 bytes and lives only until the live request ahead of it leaves, which its
//! own deadline bounds; the live ids are bounded by the pending-bytes bound.

use std::collections::{HashSet, VecDeque};

/// Request ids waiting for a connection, first come first served (a retried request goes first).
#[derive(Debug, Default)]
pub struct Queue {
    /// Ids in queue order, live ones and tombstones; the front is live (see the module doc).
    order: VecDeque<u64>,
    /// The ids in `order` that are still queued.
    live: HashSet<u64>,
}

impl Queue {
    /// Queues a new request last.
    pub fn push_back(&mut self, id: u64) {
        debug_assert!(!self.live.contains(&id), "request {id} queued twice");
        self.live.insert(id);
        self.order.push_back(id);
    }

    /// Queues a request first (a retry, or a connect that moves on to the name's next address).
    pub fn push_front(&mut self, id: u64) {
        debug_assert!(!self.live.contains(&id), "request {id} queued twice");
        self.live.insert(id);
        self.order.push_front(id);
    }

    /// The request that goes next.
    pub fn front(&self) -> Option<&u64> {
        self.order.front()
    }

    /// Takes the request that goes next.
    pub fn pop_front(&mut self) -> Option<u64> {
        let id = self.order.pop_front()?;
        self.live.remove(&id);
        self.trim();
        Some(id)
    }

    /// Whether no request is waiting.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// How many requests are waiting (tombstones do not count).
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Takes request `id` out wherever it is; returns whether it was queued. O(1): the id becomes a
    /// tombstone unless it is at the front.
    pub fn remove(&mut self, id: u64) -> bool {
        if !self.live.remove(&id) {
            return false;
        }
        self.trim();
        true
    }

    /// Takes every waiting request, in queue order.
    pub fn take_all(&mut self) -> Vec<u64> {
        let live = std::mem::take(&mut self.live);
        std::mem::take(&mut self.order).into_iter().filter(|id| live.contains(id)).collect()
    }

    /// Restores the invariant: drops the tombstones at the front.
    fn trim(&mut self) {
        while let Some(id) = self.order.front() {
            if self.live.contains(id) {
                break;
            }
            self.order.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The obvious queue the lazy one must agree with: a `Vec` pruned at once, linear removal.
    #[derive(Default)]
    struct Model(Vec<u64>);

    impl Model {
        fn remove(&mut self, id: u64) -> bool {
            let before = self.0.len();
            self.0.retain(|&q| q != id);
            self.0.len() != before
        }
    }

    /// Every operation, in a deterministic pseudo-random mix, on both queues: every answer agrees.
    #[test]
    fn agrees_with_an_eagerly_pruned_queue() {
        let mut q = Queue::default();
        let mut model = Model::default();
        let mut next = 0u64;
        // xorshift64: a fixed sequence, no dependency.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut rand = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let mut taken: Vec<u64> = Vec::new();
        for step in 0..20_000 {
            match rand(10) {
                0..=2 => {
                    next += 1;
                    q.push_back(next);
                    model.0.push(next);
                }
                3 => {
                    // Put back one that was taken (a retry): it goes first.
                    if let Some(id) = taken.pop() {
                        q.push_front(id);
                        model.0.insert(0, id);
                    }
                }
                4 | 5 => {
                    let got = q.pop_front();
                    let want = if model.0.is_empty() { None } else { Some(model.0.remove(0)) };
                    assert_eq!(got, want, "pop_front at step {step}");
                    taken.extend(got);
                }
                6 => {
                    if rand(50) == 0 {
                        let want = std::mem::take(&mut model.0);
                        assert_eq!(q.take_all(), want, "take_all at step {step}");
                    }
                }
                _ => {
                    // Remove any id ever made: queued, taken, or already removed.
                    let id = 1 + rand(next.max(1));
                    taken.retain(|&t| t != id);
                    assert_eq!(q.remove(id), model.remove(id), "remove({id}) at step {step}");
                }
            }
            assert_eq!(q.front().copied(), model.0.first().copied(), "front at step {step}");
            assert_eq!((q.is_empty(), q.len()), (model.0.is_empty(), model.0.len()), "size at step {step}");
            assert!(q.order.len() <= next as usize);
        }
    }

    /// The burst the lazy removal is for: everything queued expires, oldest first, then newest first;
    /// the queue ends empty, with no tombstone left behind.
    #[test]
    fn a_burst_of_removals_leaves_nothing_behind() {
        for newest_first in [false, true] {
            let mut q = Queue::default();
            for id in 1..=1000 {
                q.push_back(id);
            }
            let ids: Vec<u64> = if newest_first { (1..=1000).rev().collect() } else { (1..=1000).collect() };
            for (i, id) in ids.into_iter().enumerate() {
                assert!(q.remove(id));
                assert_eq!(q.len(), 999 - i);
            }
            assert!(q.is_empty() && q.front().is_none() && q.order.is_empty() && !q.remove(1));
        }
    }
}
