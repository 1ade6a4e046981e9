//! The line arena: every stored `AT` line lives here, once, in a chunk of a size class (a slab allocator).
//!
//! # Why size classes
//!
//! A `Vec<u8>` per record costs a heap allocation per record: malloc's own header (8 to 16 bytes), its
//! rounding, and a 24-byte `Vec` handle that points to it. Here a line is copied into a *chunk* of its size
//! class instead: class `k` holds chunks of `(k + 1) * GRANULE` bytes, cut from 16 KiB pages. A chunk is
//! named by a `u32` (page number and index in the page); the class follows from the line's length, which
//! the record header keeps anyway, so a line costs its length rounded up to [`GRANULE`] bytes (half a byte
//! on average) and four bytes of address.
//!
//! # Why space is reused
//!
//! Each page keeps its own free list, threaded through its free chunks (the first two bytes of a free
//! chunk hold the index of the next free one), and a count of live chunks. A class keeps the pages that
//! have room on a doubly linked list, and takes a chunk from one of them before it cuts a fresh page. So
//! a class never holds many more chunks than the most lines of its size it ever held at once, whatever the
//! number of updates (with lengths from a fixed distribution, each class's population wanders around its
//! mean; with lengths spread over 260 bytes this costs a few percent over the first pass).
//!
//! A page whose last chunk is freed goes back to a pool shared by all classes. That matters when the
//! lengths drift: client ids grow a digit (`c99999` then `c100000`), time-diffs get longer. Records
//! evicted oldest first empty their pages in the order they were filled, and those pages are cut again for
//! the new length, so a table bounded by `records.max` stays at its size instead of keeping one set of
//! pages per length it ever saw. Pages are never handed back to the allocator: the bound bounds them.
//!
//! Pages are fixed-size boxes, never reallocated, so growing the arena copies nothing and leaves no freed
//! block behind in malloc's heap (a doubling `Vec` would copy the whole arena and leave the old half as a
//! hole that the process's RSS keeps).

/// Chunk sizes are multiples of this many bytes.
pub const GRANULE: usize = 2;
/// The shortest line the arena stores: a free chunk holds the next free chunk's index.
pub const MIN_LEN: usize = 2;
/// The longest line the arena stores. An `AT` line is at most about 470 bytes under the protocol's field
/// limits (server name 64, time-diff about 22, client id 255, location 64, client time 40, plus "AT ",
/// five spaces and the LF); this leaves room without letting one record pin a large chunk.
pub const MAX_LEN: usize = 1024;
/// Bytes per page.
const PAGE_BYTES: usize = 16 * 1024;
/// A chunk address is `page << INDEX_BITS | index`: up to 2^12 chunks per page (the smallest chunks
/// are 4 bytes... 16 KiB / 4 = 4096) and 2^20 pages (16 GiB of lines).
const INDEX_BITS: u32 = 12;
const MAX_PAGES: usize = 1 << (32 - INDEX_BITS);
/// No page / no chunk.
const NONE: u32 = u32::MAX;
const NO_INDEX: u16 = u16::MAX;

/// Where a line is: its page and index there; find it again with its length.
pub type Chunk = u32;

/// What a page knows about itself.
#[derive(Debug, Clone, Copy)]
struct PageMeta {
    /// The class it is cut for (meaningless while pooled).
    class: u16,
    /// Chunks holding a line.
    live: u16,
    /// Chunks cut so far (the rest of the page has never been handed out).
    cut: u16,
    /// Head of the page's free list (`NO_INDEX` when empty).
    free: u16,
    /// The class's list of pages with room: `NONE`, or neighbours on it.
    prev: u32,
    next: u32,
    /// On its class's list of pages with room.
    listed: bool,
}

/// All stored lines.
pub struct LineArena {
    pages: Vec<Box<[u8]>>,
    meta: Vec<PageMeta>,
    /// Per class: the first page with room, or `NONE`.
    room: Vec<u32>,
    /// Pages with no live chunk, for any class.
    pool: Vec<u32>,
    /// Bytes of the lines held now (exact lengths).
    line_bytes: usize,
}

impl Default for LineArena {
    fn default() -> Self {
        LineArena {
            pages: Vec::new(),
            meta: Vec::new(),
            room: vec![NONE; MAX_LEN / GRANULE],
            pool: Vec::new(),
            line_bytes: 0,
        }
    }
}

/// The class of a line of `len` bytes, its chunk size, and how many chunks fit a page.
#[inline]
fn class_of(len: usize) -> (usize, usize, usize) {
    debug_assert!((MIN_LEN..=MAX_LEN).contains(&len));
    let k = (len - 1) / GRANULE;
    let size = ((k + 1) * GRANULE).max(4);
    (k, size, (PAGE_BYTES / size).min(1 << INDEX_BITS))
}

#[inline]
fn split(chunk: Chunk) -> (usize, usize) {
    ((chunk >> INDEX_BITS) as usize, (chunk & ((1 << INDEX_BITS) - 1)) as usize)
}

impl LineArena {
    /// Stores `line` ([`MIN_LEN`] to [`MAX_LEN`] bytes) and returns its chunk.
    pub fn alloc(&mut self, line: &[u8]) -> Chunk {
        let (k, size, per_page) = class_of(line.len());
        let page = match self.room[k] {
            NONE => self.new_page(k),
            page => page as usize,
        };
        let m = &mut self.meta[page];
        let index = if m.free != NO_INDEX {
            let index = usize::from(m.free);
            let link = &self.pages[page][index * size..index * size + 2];
            m.free = u16::from_ne_bytes([link[0], link[1]]);
            index
        } else {
            m.cut += 1;
            usize::from(m.cut) - 1
        };
        m.live += 1;
        if m.free == NO_INDEX && usize::from(m.cut) == per_page {
            self.unlist(page);
        }
        self.pages[page][index * size..index * size + line.len()].copy_from_slice(line);
        self.line_bytes += line.len();
        ((page as u32) << INDEX_BITS) | index as u32
    }

    /// The line of `len` bytes in `chunk`.
    #[inline]
    pub fn get(&self, chunk: Chunk, len: usize) -> &[u8] {
        let (_, size, _) = class_of(len);
        let (page, index) = split(chunk);
        &self.pages[page][index * size..index * size + len]
    }

    /// Replaces the line of `old_len` bytes in `chunk` by `line`: in place when both lengths select the same
    /// class, otherwise by freeing the old chunk and taking one of the new class. Returns the new chunk.
    pub fn replace(&mut self, chunk: Chunk, old_len: usize, line: &[u8]) -> Chunk {
        let (k, size, _) = class_of(line.len());
        if class_of(old_len).0 == k {
            let (page, index) = split(chunk);
            self.pages[page][index * size..index * size + line.len()].copy_from_slice(line);
            self.line_bytes = self.line_bytes - old_len + line.len();
            return chunk;
        }
        self.free(chunk, old_len);
        self.alloc(line)
    }

    /// Gives back the chunk of a line of `len` bytes. A page left with no line goes to the shared pool.
    pub fn free(&mut self, chunk: Chunk, len: usize) {
        let (k, size, _) = class_of(len);
        let (page, index) = split(chunk);
        let m = &mut self.meta[page];
        debug_assert_eq!(usize::from(m.class), k);
        let link = m.free.to_ne_bytes();
        self.pages[page][index * size..index * size + 2].copy_from_slice(&link);
        m.free = index as u16;
        m.live -= 1;
        self.line_bytes -= len;
        if m.live == 0 {
            if self.meta[page].listed {
                self.unlist(page);
            }
            self.pool.push(page as u32);
        } else if !m.listed {
            self.list(page);
        }
    }

    /// Bytes of all pages (what the arena costs, free chunks and pooled pages included).
    pub fn page_bytes(&self) -> usize {
        self.pages.len() * PAGE_BYTES
    }

    /// Bytes of the lines held (what the arena would cost with no rounding and no free chunks).
    pub fn line_bytes(&self) -> usize {
        self.line_bytes
    }

    /// Pages with no line, waiting to be cut again.
    #[cfg(test)]
    pub fn pooled_pages(&self) -> usize {
        self.pool.len()
    }

    /// A page for class `k`, from the pool or fresh, empty and on the class's list.
    fn new_page(&mut self, k: usize) -> usize {
        let page = match self.pool.pop() {
            Some(p) => p as usize,
            None => {
                assert!(self.pages.len() < MAX_PAGES, "the line arena holds at most 16 GiB");
                self.pages.push(vec![0u8; PAGE_BYTES].into_boxed_slice());
                self.meta.push(PageMeta {
                    class: 0,
                    live: 0,
                    cut: 0,
                    free: NO_INDEX,
                    prev: NONE,
                    next: NONE,
                    listed: false,
                });
                self.pages.len() - 1
            }
        };
        self.meta[page] =
            PageMeta { class: k as u16, live: 0, cut: 0, free: NO_INDEX, prev: NONE, next: NONE, listed: false };
        self.list(page);
        page
    }

    /// Puts `page` at the head of its class's list of pages with room.
    fn list(&mut self, page: usize) {
        let k = usize::from(self.meta[page].class);
        let head = self.room[k];
        if head != NONE {
            self.meta[head as usize].prev = page as u32;
        }
        let m = &mut self.meta[page];
        (m.prev, m.next, m.listed) = (NONE, head, true);
        self.room[k] = page as u32;
    }

    /// Takes `page` off its class's list.
    fn unlist(&mut self, page: usize) {
        let PageMeta { class, prev, next, .. } = self.meta[page];
        match prev {
            NONE => self.room[usize::from(class)] = next,
            p => self.meta[p as usize].next = next,
        }
        if next != NONE {
            self.meta[next as usize].prev = prev;
        }
        let m = &mut self.meta[page];
        (m.prev, m.next, m.listed) = (NONE, NONE, false);
    }
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
        let lens = [2, 3, 4, 5, 6, 75, 76, 77, 300, MAX_LEN];
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
        let keep = a.alloc(&line(100, 9)); // keeps the 100-byte page from going to the pool
        let x = a.alloc(&line(100, 1));
        assert_eq!(a.replace(x, 100, &line(99, 2)), x);
        let y = a.replace(x, 99, &line(200, 3));
        assert_eq!(a.get(y, 200), &line(200, 3)[..]);
        assert_eq!(a.alloc(&line(100, 4)), x, "the freed chunk is taken first");
        assert_eq!(a.get(keep, 100), &line(100, 9)[..]);
    }

    /// `line_bytes` is the sum of the exact lengths held, through replacements in place and across
    /// classes: kept by a model (a list of lengths) beside the arena.
    #[test]
    fn line_bytes_follow_every_replacement() {
        let mut a = LineArena::default();
        let mut held: Vec<(Chunk, usize)> = [10, 100, 101, 300].iter().map(|&n| (a.alloc(&line(n, 1)), n)).collect();
        // (which line, its new length): in place (same class) and across classes, longer and shorter.
        let steps = [(0, 9), (1, 99), (2, 102), (3, 299), (0, 40), (1, 2), (2, MAX_LEN), (3, 300), (1, 3)];
        for (i, n) in steps {
            let (c, old) = held[i];
            held[i] = (a.replace(c, old, &line(n, 2)), n);
            let model: usize = held.iter().map(|&(_, n)| n).sum();
            assert_eq!(a.line_bytes(), model, "after replacing line {i} by {n} bytes");
        }
        for &(c, n) in &held {
            assert_eq!(a.get(c, n), &line(n, 2)[..]);
        }
    }

    /// Pages are 16 KiB (the size the module doc and the memory figures assume): one line costs one page,
    /// and a page of 100-byte chunks holds 163 of them (16,384 / 100, by hand); the 164th cuts a second.
    #[test]
    fn pages_are_16_kib() {
        let mut a = LineArena::default();
        a.alloc(&line(100, 1));
        assert_eq!(a.page_bytes(), 16_384);
        for _ in 1..163 {
            a.alloc(&line(100, 1));
        }
        assert_eq!(a.page_bytes(), 16_384, "163 lines of 100 bytes fit one page");
        a.alloc(&line(100, 1));
        assert_eq!(a.page_bytes(), 2 * 16_384, "the 164th does not");
    }

    /// Every page the arena may cut (it refuses to cut more than `MAX_PAGES`) has chunk addresses that
    /// name it: the last page's first and last chunks split back into that page and index. And the bound
    /// is the 16 GiB the assertion's message promises.
    #[test]
    fn every_page_the_arena_may_cut_is_addressable() {
        let last = MAX_PAGES - 1;
        for index in [0, (1 << INDEX_BITS) - 1] {
            let chunk = ((last as u32) << INDEX_BITS) | index as u32;
            assert_eq!(split(chunk), (last, index));
        }
        assert_eq!(MAX_PAGES as u64 * PAGE_BYTES as u64, 16 << 30);
    }

    #[test]
    fn churn_within_fixed_lengths_cuts_no_new_pages() {
        let mut a = LineArena::default();
        let mut held: Vec<(Chunk, usize)> =
            (0..40 * 261).map(|i| (a.alloc(&line(40 + i % 261, 7)), 40 + i % 261)).collect();
        let pages = a.page_bytes();
        // Every record changes length many times, but the multiset of lengths held stays the same.
        for round in 1..20 {
            for (i, h) in held.iter_mut().enumerate() {
                let n = 40 + (i + round) % 261;
                *h = (a.replace(h.0, h.1, &line(n, round as u8)), n);
            }
        }
        assert!(a.page_bytes() <= pages + 131 * PAGE_BYTES, "at most a page more per class");
        for (i, &(c, n)) in held.iter().enumerate() {
            assert_eq!(a.get(c, n), &line(n, 19)[..], "line {i}");
        }
    }

    /// Lines evicted oldest first while new lines are a little longer: the old class's pages empty out in
    /// order and are cut again for the new class, so the arena does not grow.
    #[test]
    fn pages_emptied_by_a_drift_in_length_are_cut_again_for_the_new_length() {
        let mut a = LineArena::default();
        let n = 20_000;
        let mut fifo: std::collections::VecDeque<(Chunk, usize)> =
            (0..n).map(|_| (a.alloc(&line(72, 1)), 72)).collect();
        let full = a.page_bytes();
        for i in 0..3 * n {
            let (c, len) = fifo.pop_front().unwrap();
            a.free(c, len);
            let len = 75 + (i / n); // 75, then 76 (same class), then 77 (the next class)
            fifo.push_back((a.alloc(&line(len, 2)), len));
        }
        // The lines are longer now (78-byte chunks instead of 72), so they need more pages; beyond that, one
        // page per class may be partly used at any moment. Without the pool it would be three sets of pages.
        let (_, _, per_page) = class_of(77);
        let need = n.div_ceil(per_page) * PAGE_BYTES;
        assert!(
            a.page_bytes() <= need + 4 * PAGE_BYTES,
            "{} bytes of pages, {need} needed, {full} before",
            a.page_bytes()
        );
        for &(c, len) in &fifo {
            assert_eq!(a.get(c, len), &line(len, 2)[..]);
        }
        while let Some((c, len)) = fifo.pop_front() {
            a.free(c, len);
        }
        assert_eq!(a.pooled_pages() * PAGE_BYTES, a.page_bytes(), "every page is back in the pool");
        assert_eq!(a.line_bytes(), 0);
    }
}
