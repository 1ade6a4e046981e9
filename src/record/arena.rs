//! The line arena: every stored `AT` line lives here, once, in a chunk of a size class.
//!
//! # Why size classes
//!
//! A `Vec<u8>` per record costs a heap allocation per record: malloc's own header (8 to 16 bytes), its
//! rounding, and a 24-byte `Vec` handle that points to it. Here a line is copied into a *chunk* of its size
//! class instead: class `k` holds chunks of `(k + 1) * GRANULE` bytes, cut from pages of
//! `CHUNKS_PER_PAGE` chunks each. A chunk is named by its index inside its class (a `u32`); the class
//! follows from the line's length, which the record header keeps anyway, so a line costs its length rounded
//! up to [`GRANULE`] bytes (half a byte of rounding on average) and four bytes of address.
//!
//! # Why space is reused
//!
//! A freed chunk goes onto its class's free list, threaded through the free chunks themselves (the first
//! four bytes of a free chunk hold the index of the next free one), and the next line of that class takes it
//! before any fresh chunk is cut. So a class never holds more chunks than the most lines of its size it ever
//! held at once, whatever the number of updates: replacing lines of lengths drawn from a fixed distribution
//! settles at a little above the first pass (each class's population wanders around its mean; the finer
//! the granule, the more classes and the larger each one's relative wander: with lengths spread over 260
//! bytes, a granule of 2 costs about 7% over the first pass). Pages are never given back: the table's bound (`records.max`) bounds them.
//!
//! Pages are fixed-size boxes, never reallocated, so growing the arena copies nothing and leaves no freed
//! block behind in malloc's heap (a doubling `Vec` would copy the whole class and leave the old half as a
//! hole that the process's RSS keeps).

/// Chunk sizes are multiples of this many bytes.
pub const GRANULE: usize = 2;
/// The shortest line the arena stores: a free chunk holds the next free chunk's index.
pub const MIN_LEN: usize = 4;
/// The longest line the arena stores. An `AT` line is at most about 470 bytes under the protocol's field
/// limits (server name 64, time-diff about 22, client id 255, location 64, client time 40, plus "AT ",
/// five spaces and the LF); this leaves room without letting one record pin a large chunk.
pub const MAX_LEN: usize = 1024;
/// Chunks per page: a power of two, so that a chunk index splits into page and offset with a shift.
const CHUNKS_PER_PAGE: u32 = 128;
const PAGE_SHIFT: u32 = CHUNKS_PER_PAGE.trailing_zeros();
/// End of a free list.
const NONE: u32 = u32::MAX;

/// One size class: its pages, how many chunks were ever cut from them, and its free list.
#[derive(Default)]
struct Class {
    pages: Vec<Box<[u8]>>,
    /// Chunks handed out at least once; chunks at or past this index are not cut yet.
    cut: u32,
    /// Head of the free list (`NONE` when empty).
    free: u32,
    /// Chunks holding a line now.
    live: u32,
}

/// Where a line is: its chunk index inside the class that its length selects.
pub type Chunk = u32;

/// All stored lines, by size class.
pub struct LineArena {
    classes: Vec<Class>,
    /// Bytes of all pages.
    page_bytes: usize,
    /// Bytes of the lines held now (exact lengths).
    line_bytes: usize,
}

impl Default for LineArena {
    fn default() -> Self {
        LineArena {
            classes: (0..MAX_LEN / GRANULE).map(|_| Class { free: NONE, ..Class::default() }).collect(),
            page_bytes: 0,
            line_bytes: 0,
        }
    }
}

#[inline]
fn class_of(len: usize) -> (usize, usize) {
    debug_assert!((MIN_LEN..=MAX_LEN).contains(&len));
    let k = (len - 1) / GRANULE;
    (k, (k + 1) * GRANULE)
}

impl LineArena {
    /// Stores `line` ([`MIN_LEN`] to [`MAX_LEN`] bytes) and returns its chunk; find it again with the same length.
    pub fn alloc(&mut self, line: &[u8]) -> Chunk {
        let (k, size) = class_of(line.len());
        let class = &mut self.classes[k];
        let chunk = if class.free != NONE {
            let chunk = class.free;
            let at = locate(chunk, size);
            let next = &class.pages[at.0][at.1..at.1 + 4];
            class.free = u32::from_ne_bytes(next.try_into().expect("four bytes"));
            chunk
        } else {
            if class.cut >> PAGE_SHIFT == class.pages.len() as u32 {
                class.pages.push(vec![0u8; size * CHUNKS_PER_PAGE as usize].into_boxed_slice());
                self.page_bytes += size * CHUNKS_PER_PAGE as usize;
            }
            class.cut += 1;
            class.cut - 1
        };
        class.live += 1;
        let at = locate(chunk, size);
        class.pages[at.0][at.1..at.1 + line.len()].copy_from_slice(line);
        self.line_bytes += line.len();
        chunk
    }

    /// The line of `len` bytes in `chunk`.
    #[inline]
    pub fn get(&self, chunk: Chunk, len: usize) -> &[u8] {
        let (k, size) = class_of(len);
        let at = locate(chunk, size);
        &self.classes[k].pages[at.0][at.1..at.1 + len]
    }

    /// Replaces the line of `old_len` bytes in `chunk` by `line`: in place when both lengths select the same
    /// class, otherwise by freeing the old chunk and taking one of the new class. Returns the new chunk.
    pub fn replace(&mut self, chunk: Chunk, old_len: usize, line: &[u8]) -> Chunk {
        let (k, size) = class_of(line.len());
        if class_of(old_len).0 == k {
            let at = locate(chunk, size);
            self.classes[k].pages[at.0][at.1..at.1 + line.len()].copy_from_slice(line);
            self.line_bytes = self.line_bytes - old_len + line.len();
            return chunk;
        }
        self.free(chunk, old_len);
        self.alloc(line)
    }

    /// Gives back the chunk of a line of `len` bytes: it heads its class's free list.
    pub fn free(&mut self, chunk: Chunk, len: usize) {
        let (k, size) = class_of(len);
        let class = &mut self.classes[k];
        let at = locate(chunk, size);
        class.pages[at.0][at.1..at.1 + 4].copy_from_slice(&class.free.to_ne_bytes());
        class.free = chunk;
        class.live -= 1;
        self.line_bytes -= len;
    }

    /// Bytes of all pages (what the arena costs, free chunks included).
    pub fn page_bytes(&self) -> usize {
        self.page_bytes
    }

    /// Bytes of the lines held (what the arena would cost with no rounding and no free chunks).
    pub fn line_bytes(&self) -> usize {
        self.line_bytes
    }

    /// Chunks cut but free now, over all classes.
    #[cfg(test)]
    pub fn free_chunks(&self) -> u64 {
        self.classes.iter().map(|c| u64::from(c.cut - c.live)).sum()
    }
}

/// Page index and byte offset of `chunk` in a class of `size`-byte chunks.
#[inline]
fn locate(chunk: Chunk, size: usize) -> (usize, usize) {
    ((chunk >> PAGE_SHIFT) as usize, (chunk & (CHUNKS_PER_PAGE - 1)) as usize * size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(len: usize, fill: u8) -> Vec<u8> {
        vec![fill; len]
    }

    #[test]
    fn lines_come_back_byte_for_byte() {
        let mut a = LineArena::default();
        let lens = [4, 5, 6, 75, 76, 77, 300, MAX_LEN];
        let chunks: Vec<_> = lens.iter().enumerate().map(|(i, &n)| (a.alloc(&line(n, i as u8)), n)).collect();
        for (i, &(c, n)) in chunks.iter().enumerate() {
            assert_eq!(a.get(c, n), &line(n, i as u8)[..]);
        }
        assert_eq!(a.line_bytes(), lens.iter().sum::<usize>());
    }

    #[test]
    fn a_freed_chunk_is_the_next_one_of_its_class() {
        let mut a = LineArena::default();
        let x = a.alloc(&line(75, 1));
        let y = a.alloc(&line(76, 2)); // same class (75..=76)
        a.free(x, 75);
        assert_eq!(a.alloc(&line(76, 3)), x, "reused");
        assert_eq!(a.get(y, 76), &line(76, 2)[..], "the neighbour is untouched");
        assert_eq!(a.get(x, 76), &line(76, 3)[..]);
    }

    #[test]
    fn replacing_within_a_class_stays_in_place_and_across_classes_frees() {
        let mut a = LineArena::default();
        let x = a.alloc(&line(100, 1));
        assert_eq!(a.replace(x, 100, &line(99, 2)), x);
        let y = a.replace(x, 99, &line(200, 3));
        assert_eq!(a.get(y, 200), &line(200, 3)[..]);
        assert_eq!(a.free_chunks(), 1, "the 100-byte class keeps one free chunk");
        assert_eq!(a.alloc(&line(100, 4)), x);
        assert_eq!(a.free_chunks(), 0);
    }

    #[test]
    fn churn_within_fixed_lengths_cuts_no_new_pages() {
        let mut a = LineArena::default();
        let mut held: Vec<(Chunk, usize)> =
            (0..4 * 261).map(|i| (a.alloc(&line(40 + i % 261, 7)), 40 + i % 261)).collect();
        let pages = a.page_bytes();
        // Every record changes length many times, but the multiset of lengths held stays the same.
        for round in 1..50 {
            for (i, h) in held.iter_mut().enumerate() {
                let n = 40 + (i + round) % 261;
                *h = (a.replace(h.0, h.1, &line(n, round as u8)), n);
            }
        }
        assert_eq!(a.page_bytes(), pages);
        for (i, &(c, n)) in held.iter().enumerate() {
            assert_eq!(a.get(c, n), &line(n, 49)[..], "line {i}");
        }
    }
}
