//! Memory for `O_DIRECT` writes: a byte buffer whose first byte sits on a `BLOCK` boundary, and whose
//! storage always reaches the next boundary past its length, so that a write can be padded to whole
//! blocks in place.
//!
//! With `O_DIRECT` the kernel moves the bytes to the device straight from this memory instead of copying
//! them into the page cache first, and the writer thread pays neither that copy nor the page cache's
//! bookkeeping and writeback (about a fifth of its time, `perf record` on the writer thread; BENCHMARKS.md).
//! The price is alignment: the buffer's address, the file offset and the length of every write must all be
//! multiples of the device's block size. `BLOCK` (4 KiB) is a multiple of every logical block size Linux
//! devices use.

/// The alignment of `O_DIRECT` writes: memory address, file offset and length.
pub const BLOCK: usize = 4096;

/// One block of memory, aligned to `BLOCK`.
#[derive(Clone, Copy)]
#[repr(C, align(4096))]
struct Block([u8; BLOCK]);

/// A growable byte buffer starting on a block boundary. Only `len` bytes are the content; the storage
/// past them, up to the next block boundary, is there for padding.
pub struct AlignedBuf {
    blocks: Vec<Block>,
    len: usize,
}

impl AlignedBuf {
    pub fn new() -> AlignedBuf {
        AlignedBuf { blocks: Vec::new(), len: 0 }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Every block the content touches, padding included: `round_up(len)` bytes.
    fn storage(&self) -> &[u8] {
        // SAFETY: `Block` is `repr(C)` around a byte array, so the blocks are plain, initialised bytes laid
        // out one after another.
        unsafe { std::slice::from_raw_parts(self.blocks.as_ptr().cast::<u8>(), self.blocks.len() * BLOCK) }
    }

    fn storage_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `storage`, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.blocks.as_mut_ptr().cast::<u8>(), self.blocks.len() * BLOCK) }
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.storage()[..self.len]
    }

    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        let end = self.len + bytes.len();
        if end > self.blocks.len() * BLOCK {
            // Amortised doubling by `Vec`; new blocks are zeroed once, when first grown into.
            self.blocks.resize(end.div_ceil(BLOCK), Block([0; BLOCK]));
        }
        let start = self.len;
        self.storage_mut()[start..end].copy_from_slice(bytes);
        self.len = end;
    }

    /// The content from `from` to the end, zero-padded to the next block boundary: `from` rounded down
    /// and the end rounded up to `BLOCK`, ready for an `O_DIRECT` write.
    pub fn padded_from(&mut self, from: usize) -> &[u8] {
        let (start, end) = (from / BLOCK * BLOCK, self.len.next_multiple_of(BLOCK));
        let len = self.len;
        self.storage_mut()[len..end].fill(0);
        &self.storage()[start..end]
    }

    /// Drops the whole blocks before the last, partly filled one, moving that block's bytes to the front
    /// (at most `BLOCK - 1` bytes): what stays is the start of the block the next write begins in.
    pub fn keep_last_partial_block(&mut self) {
        let start = self.len / BLOCK * BLOCK;
        let len = self.len;
        self.storage_mut().copy_within(start..len, 0);
        self.len -= start;
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_buffer_starts_on_a_block_and_pads_to_one() {
        let mut buf = AlignedBuf::new();
        buf.extend_from_slice(b"HERDJNL1");
        for i in 0..1000u32 {
            buf.extend_from_slice(&i.to_le_bytes()); // grows past several blocks, moving the storage
            assert_eq!(buf.as_slice().as_ptr() as usize % BLOCK, 0);
        }
        assert_eq!(buf.len(), 4008);
        assert_eq!(&buf.as_slice()[..8], b"HERDJNL1");
        assert_eq!(&buf.as_slice()[8 + 999 * 4..], &999u32.to_le_bytes());

        // Dirty the padding, then ask for it: it comes back zeroed.
        buf.extend_from_slice(&[0xAA; 200]);
        buf.len -= 200;
        let content = buf.as_slice().to_vec();
        let padded = buf.padded_from(4000);
        assert_eq!(padded.len(), BLOCK, "4000 rounds down to 0, 4008 up to 4096");
        assert_eq!(&padded[..4008], &content[..]);
        assert!(padded[4008..].iter().all(|&b| b == 0));

        buf.extend_from_slice(&[7; 5000]); // 9008 bytes: two whole blocks and 816 more
        let tail: Vec<u8> = buf.as_slice()[2 * BLOCK..].to_vec();
        buf.keep_last_partial_block();
        assert_eq!(buf.as_slice(), &tail[..]);
        assert_eq!(buf.len(), 9008 - 2 * BLOCK);
        assert_eq!(buf.padded_from(buf.len()).len(), BLOCK, "the partial block is rewritten whole");
    }
}
