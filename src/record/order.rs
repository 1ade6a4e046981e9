//! The eviction order: an indexed binary min-heap of record slots.
//!
//! The least record held (by client time, then client id) is at the root, so eviction for space and the age
//! sweep both take the root: O(log n) each. "Indexed" means the heap also knows where each slot sits in
//! it (`pos`), so a record whose time moves (its client sent a newer update) is sifted from where it is, in
//! O(log n), instead of being searched for in O(n).
//!
//! Each heap entry carries the record's compact time key (see `store::time_key`) next to its slot, so
//! sifting compares keys that are already in the heap's own cache lines; only ties (equal keys) call the
//! full comparison, which reads the records' lines. An entry is three `u32`s (12 bytes, alignment 4: a
//! `(u64, u32)` pair would be padded to 16), and `pos` adds four bytes per slot.

use std::cmp::Ordering;

/// No position: the slot is not in the heap.
const NONE: u32 = u32::MAX;

/// One heap entry: a record's slot and its time key, split in halves to keep the entry at 12 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    key_hi: u32,
    key_lo: u32,
    pub slot: u32,
}

impl Entry {
    pub fn new(key: u64, slot: u32) -> Self {
        Entry { key_hi: (key >> 32) as u32, key_lo: key as u32, slot }
    }

    #[inline]
    pub fn key(&self) -> u64 {
        u64::from(self.key_hi) << 32 | u64::from(self.key_lo)
    }
}

/// The heap and each slot's position in it.
#[derive(Default)]
pub struct OrderHeap {
    entries: Vec<Entry>,
    /// `pos[slot]`: where the slot's entry is in `entries`, or `NONE`.
    pos: Vec<u32>,
}

impl OrderHeap {
    /// The least entry.
    pub fn peek(&self) -> Option<Entry> {
        self.entries.first().copied()
    }

    /// The key stored for `slot` (which must be in the heap).
    #[inline]
    pub fn key_of(&self, slot: u32) -> u64 {
        self.entries[self.pos[slot as usize] as usize].key()
    }

    /// Adds `slot` with `key`. `cmp` is the total order on entries (keys first, ties by the records).
    pub fn push(&mut self, slot: u32, key: u64, cmp: impl Fn(Entry, Entry) -> Ordering) {
        if self.pos.len() <= slot as usize {
            self.pos.resize(slot as usize + 1, NONE);
        }
        debug_assert_eq!(self.pos[slot as usize], NONE);
        self.entries.push(Entry::new(key, slot));
        self.pos[slot as usize] = (self.entries.len() - 1) as u32;
        self.sift_up(self.entries.len() - 1, &cmp);
    }

    /// `slot`'s record changed (its key is now `key`): restores the heap order around it.
    pub fn update(&mut self, slot: u32, key: u64, cmp: impl Fn(Entry, Entry) -> Ordering) {
        let i = self.pos[slot as usize] as usize;
        self.entries[i] = Entry::new(key, slot);
        self.restore(i, &cmp);
    }

    /// Takes `slot` out of the heap.
    pub fn remove(&mut self, slot: u32, cmp: impl Fn(Entry, Entry) -> Ordering) {
        let i = self.pos[slot as usize] as usize;
        self.pos[slot as usize] = NONE;
        let last = self.entries.pop().expect("slot is in the heap");
        if i < self.entries.len() {
            // The last entry fills the hole and moves whichever way its key says.
            self.entries[i] = last;
            self.pos[last.slot as usize] = i as u32;
            self.restore(i, &cmp);
        }
    }

    /// The entry at `i` changed: it goes up if it is now less than its parent, else down. (Having gone
    /// up, it is less than everything below where it came to rest: its old parent's whole subtree.)
    fn restore(&mut self, i: usize, cmp: &impl Fn(Entry, Entry) -> Ordering) {
        if self.sift_up(i, cmp) == i {
            self.sift_down(i, cmp);
        }
    }

    /// Bytes held by the heap and the position table (capacity, as allocated).
    pub fn bytes(&self) -> usize {
        self.entries.capacity() * size_of::<Entry>() + self.pos.capacity() * 4
    }

    /// The entries in heap order (for tests).
    #[cfg(test)]
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    fn sift_up(&mut self, mut i: usize, cmp: &impl Fn(Entry, Entry) -> Ordering) -> usize {
        let moving = self.entries[i];
        while i > 0 {
            let parent = (i - 1) / 2;
            if cmp(moving, self.entries[parent]) != Ordering::Less {
                break;
            }
            self.place(i, self.entries[parent]);
            i = parent;
        }
        self.place(i, moving);
        i
    }

    /// Moves the entry at `i` down to where it belongs, bottom-up (Wegener's variant of Floyd's sift): first
    /// down the path of lesser children all the way to a leaf, lifting each child one level (one
    /// comparison a level instead of two), then back up from the leaf to where the entry fits. An update
    /// usually gives a record the newest time of all, which belongs at the bottom: the climb back then
    /// stops at its first comparison, and the sift costs about log2(n) comparisons instead of 2 log2(n).
    fn sift_down(&mut self, i: usize, cmp: &impl Fn(Entry, Entry) -> Ordering) {
        let moving = self.entries[i];
        let n = self.entries.len();
        let mut hole = i;
        loop {
            let left = 2 * hole + 1;
            if left >= n {
                break;
            }
            let right = left + 1;
            let child =
                if right < n && cmp(self.entries[right], self.entries[left]) == Ordering::Less { right } else { left };
            self.place(hole, self.entries[child]);
            hole = child;
        }
        while hole > i {
            let parent = (hole - 1) / 2;
            if cmp(moving, self.entries[parent]) != Ordering::Less {
                break;
            }
            self.place(hole, self.entries[parent]);
            hole = parent;
        }
        self.place(hole, moving);
    }

    #[inline]
    fn place(&mut self, i: usize, e: Entry) {
        self.entries[i] = e;
        self.pos[e.slot as usize] = i as u32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by_key(a: Entry, b: Entry) -> Ordering {
        a.key().cmp(&b.key()).then(a.slot.cmp(&b.slot))
    }

    fn check(h: &OrderHeap) {
        for (i, e) in h.entries().iter().enumerate() {
            assert_eq!(h.pos[e.slot as usize] as usize, i, "position of slot {}", e.slot);
            if i > 0 {
                assert_ne!(by_key(h.entries()[(i - 1) / 2], *e), Ordering::Greater, "heap order at {i}");
            }
        }
    }

    #[test]
    fn pops_in_key_order_through_updates_and_removals() {
        let mut h = OrderHeap::default();
        // Keys from a fixed scramble (an independent, known permutation of 0..100).
        let key = |s: u32| u64::from((s * 37 + 11) % 100) << 40;
        for s in 0..100 {
            h.push(s, key(s), by_key);
            check(&h);
        }
        // The model: each slot's key, updated by hand alongside the heap.
        let mut model: std::collections::BTreeMap<u32, u64> = (0..100).map(|s| (s, key(s))).collect();
        for s in (0..100).step_by(3) {
            h.update(s, key(s) + (1 << 41), by_key); // later: sifts down
            model.insert(s, key(s) + (1 << 41));
            check(&h);
        }
        for s in (2..100).step_by(5) {
            h.update(s, key(s) >> 3, by_key); // earlier: sifts up
            model.insert(s, key(s) >> 3);
            check(&h);
        }
        for s in (1..100).step_by(7) {
            h.remove(s, by_key);
            model.remove(&s);
            check(&h);
        }
        let mut expected: Vec<(u64, u32)> = model.iter().map(|(&s, &k)| (k, s)).collect();
        expected.sort();
        let mut got = Vec::new();
        while let Some(e) = h.peek() {
            got.push((e.key(), e.slot));
            h.remove(e.slot, by_key);
            check(&h);
        }
        assert_eq!(got, expected);
    }

    #[test]
    fn an_entry_is_twelve_bytes() {
        assert_eq!(size_of::<Entry>(), 12);
    }

    /// The heap's bytes: 12 a heap entry and 4 a position, of what is allocated (capacity).
    #[test]
    fn bytes_count_twelve_an_entry_and_four_a_position() {
        let mut h = OrderHeap::default();
        assert_eq!(h.bytes(), 0);
        for s in [3, 0, 9] {
            h.push(s, u64::from(s), by_key);
        }
        assert!(h.entries.capacity() >= 3 && h.pos.capacity() >= 10);
        assert_eq!(h.bytes(), h.entries.capacity() * 12 + h.pos.capacity() * 4);
    }
}
